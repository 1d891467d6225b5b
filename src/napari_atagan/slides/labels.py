"""From an attention map to instance labels: one integer id per cell.

:func:`attention_to_labels` is a pure function of the map: changing the
threshold or the minimum size only re-runs these few array operations, never
the discriminator.

The steps, in order:

1. optional Gaussian smoothing of the map (``smooth``, in pixels);
2. threshold, one of
   * ``"local"`` (needs ``cell_diameter``): every cell is cut at a fraction
     (:data:`LOCAL_FRACTION`) of its own peak. Peaks of the map at least a
     third of a cell diameter apart that rise above the background's noise (median plus
     :data:`NOISE_MADS` robust standard deviations of the map) seed a
     watershed of the map. Neighbouring basins that no real valley separates
     (the ridge between them is at least :data:`MERGE_RIDGE` of the lower
     peak) and that together are no larger than :data:`SPLIT_AREA` cells are
     one cell with two bright spots (a nuclear rim, two nucleoli) and are
     merged. Each cell keeps the pixels above its fraction of its highest
     peak. The discriminator's attention grows with a cell's brightness, and
     a slide holds bright and dim cells: one global threshold loses the dim
     ones;
   * ``"otsu"``: Otsu's threshold of the (smoothed) map raised to the power
     ``gamma`` (0.5: its square root, on which dim cells stand out from the
     background better than on the plain map);
   * a fixed value;
3. fill holes inside each object;
4. drop objects smaller than ``min_size`` pixels (with a known ``cell_diameter``,
   also those smaller than :data:`MIN_CELL_AREA` of a typical cell's area);
5. split touching cells: a watershed on the distance to the object edge, seeded
   by the centres of the object (maxima of that distance that stand at least
   ``split_depth`` pixels above the neck that joins them to a neighbour). When
   the typical ``cell_diameter`` is known, only objects larger than
   :data:`SPLIT_AREA` cells are split (and ``split_depth`` defaults to an
   eighth of the diameter): the outline of a single cell in the map is rarely
   round enough for the watershed to leave it whole;
6. drop fragments smaller than ``min_size`` again and number the cells
   1, 2, 3, ... with no gaps.

Chosen on mosaics of real HEp-2 cells of the training part of I3A (12 mosaics
of 40 cells, 6 patterns; ``docs/RESULTS.md``): object F1 0.36 with plain Otsu
splitting every object, 0.46 with the square-root Otsu threshold and
size-gated splitting, 0.70 with ``"local"`` (fraction 0.2-0.3 and 3 robust
standard deviations were best); with a full-scale model, dropping objects
under 0.4 of a cell's area then took F1 from 0.59 to 0.76 on such mosaics
(0.2 / 0.3 / 0.4 / 0.5 / 0.6 of the area: 0.67 / 0.71 / 0.76 / 0.77 / 0.77; 0.4
is the largest that lost no found cell). Merging the basins of one cell
took F1 on such mosaics from 0.76 to 0.785 and from 0.75 to 0.80 (two sets of
mosaics, full-scale model), from 0.78 to 0.82 (CPU-scale model); ridge
fractions of 0.4-0.6 gave the same.

The result is ``uint16``, or ``uint32`` when there are more than 65,535 cells.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from .._memmap import StackPlane, release_pages

DEFAULT_MIN_SIZE = 30
"""Default smallest object (pixels) kept; smaller specks are noise, not cells."""
LOCAL_FRACTION = 0.25
"""``threshold="local"``: a cell keeps the pixels above this fraction of its own peak."""
NOISE_MADS = 3.0
"""``threshold="local"``: peaks must rise this many robust standard deviations above the
map's median (the background) to seed a cell."""
_NOISE_SAMPLE = 1_000_000
"""At most about this many pixels (a regular grid) give the median and spread of a map."""
THRESHOLDS = ("auto", "local", "otsu")
DEFAULT_GAMMA = 0.5
"""Power applied to the map before Otsu's threshold is found (1: the plain map)."""
SPLIT_AREA = 1.5
"""With a known cell diameter, only objects larger than this many cells' area are split."""
MIN_CELL_AREA = 0.4
"""With a known cell diameter, objects smaller than this fraction of a typical cell's
area (a disc of that diameter) are dropped: they cannot overlap a cell of typical size
with an IoU of 0.5 or more."""
MERGE_RIDGE = 0.5
"""``threshold="local"``: two neighbouring basins of the map whose ridge is at least this
fraction of the lower peak (and that together are no larger than :data:`SPLIT_AREA`
cells) are one cell."""


def min_cell_size(cell_diameter: float) -> int:
    """The smallest object (pixels) kept when the cell diameter is known:
    :data:`MIN_CELL_AREA` of the area of a disc of that diameter."""
    return max(1, int(MIN_CELL_AREA * math.pi * float(cell_diameter) ** 2 / 4))


def effective_min_size(min_size: int, cell_diameter: float | None) -> int:
    """The smallest object (pixels) :func:`attention_to_labels` keeps for these options:
    ``min_size``, raised to :func:`min_cell_size` when the cell diameter is known."""
    if cell_diameter is None:
        return int(min_size)
    return max(int(min_size), min_cell_size(cell_diameter))


def attention_to_labels(
    attention_map: np.ndarray,
    *,
    threshold: str | float = "auto",
    min_size: int = DEFAULT_MIN_SIZE,
    smooth: float = 1.0,
    split_touching: bool = True,
    split_depth: float | None = None,
    cell_diameter: float | None = None,
    gamma: float = DEFAULT_GAMMA,
    noise_mads: float = NOISE_MADS,
) -> np.ndarray:
    """Turn an attention map into a label image (0 = background, 1..N = cells).

    Parameters
    ----------
    attention_map:
        2-D map (``Y, X``), or a stack ``T, Y, X`` that is labelled plane by plane
        with ids that stay unique over the whole stack.
    threshold:
        ``"local"`` (per cell; needs ``cell_diameter``), ``"otsu"`` (per
        plane, on the ``gamma`` scale), ``"auto"`` (``"local"`` when
        ``cell_diameter`` is given, else ``"otsu"``) or a number in the map's
        own units: pixels whose (smoothed) attention is above it belong to
        cells.
    min_size:
        Objects (and fragments after splitting) with fewer pixels are removed;
        with ``cell_diameter``, at least :data:`MIN_CELL_AREA` of a disc of
        that diameter.
    smooth:
        Gaussian sigma in pixels applied to the map before thresholding (0:
        none); ``"local"`` smooths by at least a sixteenth of ``cell_diameter``.
    split_touching:
        Split cells that touch by a watershed on the distance to the object edge.
    split_depth:
        How many pixels deeper the centre of each of two touching cells must lie
        than the neck between them for them to be split; larger values split less.
        Default: an eighth of ``cell_diameter``, or 2 pixels without it.
    cell_diameter:
        Typical cell diameter in pixels, if known: then only objects larger
        than :data:`SPLIT_AREA` cells are split.
    gamma:
        Power (> 0) of the map on which Otsu's threshold is found; 1 uses the
        plain map. It changes where the automatic threshold falls, not the map.
    noise_mads:
        ``"local"``: how many robust standard deviations above the map's median a
        peak must rise to seed a cell (> 0). The default suits a map that stands
        alone; :func:`napari_atagan.slides.segment.label_cells` asks for fewer,
        because there the image confirms every seed.

    A constant map (for example all zeros) has no cells and gives all zeros.
    """
    m = np.asarray(attention_map)
    options = _options(threshold, min_size, smooth, split_touching, split_depth, cell_diameter,
                       gamma, noise_mads)
    if m.ndim == 3:
        return _label_stack(m, **options)
    if m.ndim != 2:
        raise ValueError(
            f"attention map must be 2-D (Y, X) or a 3-D stack (T, Y, X), got shape {m.shape}"
        )
    return _narrow(_label_plane(m, **options))


def _label_stack(stack: np.ndarray, **options) -> np.ndarray:
    return number_planes((_label_plane(plane, **options) for plane in stack), stack.shape)


def number_planes(planes: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Stack per-plane label images (each numbered from 1) with ids unique over the stack.

    ``planes`` is an iterable of 2-D label images; ``shape`` the stack's shape
    (for an empty stack). ``uint16``, or ``uint32`` beyond 65,535 cells.
    """
    out, offset = [], 0
    for lab in planes:
        lab = np.asarray(lab, dtype=np.int64)
        lab[lab > 0] += offset
        offset = max(offset, int(lab.max()) if lab.size else 0)
        out.append(lab)
    if not out:
        return np.zeros(shape, dtype=np.uint16)
    return _narrow(np.stack(out))


def _options(threshold, min_size, smooth, split_touching, split_depth, cell_diameter,
             gamma, noise_mads=NOISE_MADS) -> dict[str, Any]:
    """Checked labelling options, with ``split_depth`` and the split area resolved."""
    if isinstance(threshold, str):
        threshold = threshold.lower()
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS)} or a number, "
                             f"got {threshold!r}")
        if threshold == "auto":
            threshold = "otsu" if cell_diameter is None else "local"
        if threshold == "local" and cell_diameter is None:
            raise ValueError("threshold 'local' needs the cell diameter (cell_diameter)")
    elif not np.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0 pixels, got {smooth}")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not (np.isfinite(noise_mads) and noise_mads > 0):
        raise ValueError(f"noise_mads must be > 0, got {noise_mads}")
    split_area = 0.0
    if cell_diameter is not None:
        if not (np.isfinite(cell_diameter) and cell_diameter > 0):
            raise ValueError(f"cell_diameter must be > 0 pixels, got {cell_diameter}")
        split_area = SPLIT_AREA * math.pi * float(cell_diameter) ** 2 / 4
        min_size = effective_min_size(min_size, cell_diameter)
        if split_depth is None:
            split_depth = max(1.0, float(cell_diameter) / 8)
    if split_depth is None:
        split_depth = 2.0
    if split_depth <= 0:
        raise ValueError(f"split_depth must be > 0 pixels, got {split_depth}")
    peak_distance = 1
    if threshold == "local":
        smooth = max(float(smooth), float(cell_diameter) / 16)
        peak_distance = max(1, int(float(cell_diameter) / 3))
    return dict(peak_distance=peak_distance, threshold=threshold, min_size=int(min_size), smooth=float(smooth),
                split_touching=bool(split_touching), split_depth=float(split_depth),
                split_area=split_area, gamma=float(gamma), noise_mads=float(noise_mads))


def _label_plane(m, *, threshold, min_size, smooth, split_touching, split_depth, split_area,
                 gamma, peak_distance, noise_mads=NOISE_MADS) -> np.ndarray:
    m = m.astype(np.float32, copy=False)
    if not np.all(np.isfinite(m)):
        raise ValueError("attention map contains NaN or infinite values")
    if m.size == 0 or float(m.max()) - float(m.min()) <= 1e-12:
        return np.zeros(m.shape, dtype=np.int64)
    if smooth > 0:
        m = ndi.gaussian_filter(m, sigma=float(smooth))
    if threshold == "local":
        labels = _local_cells(m, _noise_floor(_grid_sample(m), noise_mads), peak_distance,
                              min_size, split_area)
    else:
        level = _otsu(m, gamma) if threshold == "otsu" else float(threshold)
        return _sequential(_segment(m > level, min_size, split_touching, split_depth,
                                    split_area))
    return labels


def _grid_sample(m: np.ndarray) -> np.ndarray:
    """Every ``step``-th pixel both ways (rows and columns counted from 0)."""
    step = _sample_step(m.shape)
    return m[::step, ::step]


def _sample_step(shape: tuple[int, int]) -> int:
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / _NOISE_SAMPLE))))


def _noise_floor(sample: np.ndarray, mads: float = NOISE_MADS) -> float:
    """Median plus ``mads`` robust standard deviations: the top of the background."""
    return _floor_above(*_robust_level(sample), mads)


def _floor_above(med: float, sd: float, mads: float = NOISE_MADS) -> float:
    """:func:`_noise_floor` from the median and robust standard deviation already measured."""
    return med + mads * max(sd, 1e-12)


def _robust_level(sample: np.ndarray) -> tuple[float, float]:
    """The median of ``sample`` and its robust standard deviation (1.4826 MADs)."""
    med = float(np.median(sample))
    return med, float(np.median(np.abs(sample - np.asarray(med, sample.dtype)))) * 1.4826


def _local_cells(m: np.ndarray, floor: float, peak_distance: int, min_size: int,
                 max_area: float) -> np.ndarray:
    """Each cell cut at LOCAL_FRACTION of its own peak, numbered 1..N in the order of
    their peaks (highest first), those under ``min_size`` pixels dropped.

    The peaks and the watershed are those of ``peak_local_max(m, min_distance=
    peak_distance, threshold_abs=floor, exclude_border=False)`` and ``watershed(-m,
    markers, mask=m > floor)`` over the whole map, found piece by piece of the mask
    (:func:`_map_peaks`, :func:`_flood`).
    """
    mask = m > floor
    pieces, _ = ndi.label(mask)
    boxes = ndi.find_objects(pieces)
    peaks = _map_peaks(m, floor, peak_distance, pieces, boxes)
    if len(peaks) == 0:
        return np.zeros(m.shape, dtype=np.int64)
    basins = _flood(m, peaks, mask, pieces, boxes)
    del mask, pieces, boxes  # large tiles: keep the memory down
    top = np.zeros(len(peaks) + 1, dtype=np.float32)
    top[1:] = m[tuple(peaks.T)]
    inner = np.flatnonzero(basins)  # only the flooded pixels can be cells
    own, level = basins.ravel()[inner], m.ravel()[inner]
    root = _merged_roots(basins, m, top, max_area, own, level)[own]
    keep = level >= LOCAL_FRACTION * top[root]
    cells = np.zeros(m.shape, dtype=np.int32)
    cells.ravel()[inner[keep]] = root[keep]
    del basins, inner, own, level, root, keep
    return _sequential(fill_holes_each(cells), min_size)


def fill_holes_each(cells: np.ndarray) -> np.ndarray:
    """Fill the holes of every labelled object, never over another object inside a
    ring-shaped one (a copy; 0 = background).

    A hole of one object is background that cannot reach the image border without
    crossing that object, so it is background that cannot reach the border at all
    (a hole of all the objects together), and it lies inside that object's box. Most
    such holes touch one object only and lie in no other object's box: that object
    alone encloses them and they are filled with it at once. Only the objects whose
    box holds another hole are filled one by one, in the order of their ids (where
    rings nest, the higher id wins).
    """
    filled = cells.copy()
    background, enclosed = _enclosed(cells == 0)
    if not enclosed.any():
        return filled
    boxes = ndi.find_objects(cells)
    if cells.ndim == 2 and (cells.dtype.kind == "u" or cells.min() >= 0):
        one_by_one = _fill_plain_holes(filled, background, enclosed, boxes)
    else:
        holes = enclosed[background]
        one_by_one = [i for i, box in enumerate(boxes, start=1)
                      if box is not None and holes[box].any()]
    for i in one_by_one:
        box = boxes[i - 1]
        region = filled[box]
        region[_holes(cells[box] == i) & (cells[box] == 0)] = i
    return filled


def _fill_plain_holes(filled: np.ndarray, background: np.ndarray, enclosed: np.ndarray,
                      boxes: list) -> list[int]:
    """Fill (in ``filled``, still a copy of the objects) each hole of a 2-D image that
    touches one object only and lies in no other object's box; returns the ids of the
    objects whose box holds one of the other holes, in increasing order.

    ``background`` labels the background, ``enclosed`` tells its pieces that cannot
    reach the border (which holes, so none touches the border: all four neighbours of
    a hole pixel are in the image).
    """
    cells = filled.ravel()
    at = np.flatnonzero(enclosed[background])
    hole = background.ravel()[at]
    width = filled.shape[1]
    near = [cells[at + step] for step in (-width, -1, 1, width)]
    pairs = np.unique(np.concatenate([hole[v > 0].astype(np.int64) * (len(boxes) + 1)
                                      + v[v > 0].astype(np.int64) for v in near]))
    hole_of, obj_of = pairs // (len(boxes) + 1), pairs % (len(boxes) + 1)
    ids, first, count = np.unique(hole_of, return_index=True, return_counts=True)
    rows, cols = at // width, at % width
    lo_r = np.full(len(enclosed), filled.shape[0]); np.minimum.at(lo_r, hole, rows)
    hi_r = np.full(len(enclosed), -1); np.maximum.at(hi_r, hole, rows)
    lo_c = np.full(len(enclosed), width); np.minimum.at(lo_c, hole, cols)
    hi_c = np.full(len(enclosed), -1); np.maximum.at(hi_c, hole, cols)
    box = np.array([(b[0].start, b[0].stop, b[1].start, b[1].stop) if b is not None
                    else (0, 0, 0, 0) for b in boxes]).reshape(-1, 4)
    value = np.zeros(len(enclosed), np.int64)  # the one object filling a plain hole
    others = set()
    for h, j, c in zip(ids.tolist(), first.tolist(), count.tolist()):
        inside = np.flatnonzero((box[:, 0] <= lo_r[h]) & (box[:, 1] > hi_r[h])
                                & (box[:, 2] <= lo_c[h]) & (box[:, 3] > hi_c[h])) + 1
        if c == 1 and len(inside) == 1:
            value[h] = obj_of[j]
        else:
            others.update(inside.tolist())
    plain = value[hole] > 0
    cells[at[plain]] = value[hole[plain]]
    return sorted(others)


def _holes(obj: np.ndarray) -> np.ndarray:
    """``binary_fill_holes(obj) & ~obj``, from one labelling rather than
    ``binary_fill_holes``' repeated dilations."""
    outside, enclosed = _enclosed(~obj)
    return enclosed[outside]


def _enclosed(free: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 4-connected pieces of ``free`` (labels) and, by label, whether each one
    cannot reach the border of the array."""
    pieces, count = ndi.label(free)
    edge = np.concatenate([np.take(pieces, [0, -1], axis=axis).ravel()
                           for axis in range(pieces.ndim)])
    enclosed = np.ones(count + 1, dtype=bool)
    enclosed[0] = False
    enclosed[edge] = False
    return pieces, enclosed


def drop_border_cells(labels: np.ndarray) -> np.ndarray:
    """The labels without the objects that touch the image border (set to 0)."""
    lab = np.asarray(labels)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    edge = edge[edge != 0]
    return np.where(np.isin(lab, edge), 0, lab) if edge.size else lab


def _merged_roots(basins: np.ndarray, m: np.ndarray, top: np.ndarray, max_area: float,
                  own: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Join neighbouring basins of one cell: the id each basin ends up with (that of the
    highest peak of its group), by basin id.

    Pairs are taken from the highest ridge down. Two groups join when their
    ridge is at least MERGE_RIDGE of the lower group's peak and their pixels
    above LOCAL_FRACTION of their own peaks are together at most ``max_area``.
    ``own`` and ``level`` are the basin and the value of ``m`` of every flooded pixel.
    """
    root = np.arange(len(top))
    pairs, ridges = _ridges(basins, m)
    if not len(pairs):
        return root
    area = np.bincount(own[level >= LOCAL_FRACTION * top[own]],
                       minlength=len(top)).astype(np.float64)

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    order = np.argsort(-ridges)
    for (a, b), ridge in zip(pairs[order], ridges[order]):
        a, b = find(a), find(b)
        if a == b or ridge < MERGE_RIDGE * min(top[a], top[b]) or area[a] + area[b] > max_area:
            continue
        keep, drop = (a, b) if top[a] >= top[b] else (b, a)
        root[drop] = keep
        area[keep] += area[drop]
    return np.array([find(i) for i in range(len(top))])


def _ridges(basins: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbouring basin pairs ``(n, 2)`` and the highest pass between each pair.

    The pass between two 4-neighbour pixels of different basins is the lower of
    their two values; a pair's ridge is its highest pass.
    """
    keys, values = [], []
    n = int(basins.max()) + 1
    for a, b, va, vb in ((basins[:, :-1], basins[:, 1:], m[:, :-1], m[:, 1:]),
                         (basins[:-1], basins[1:], m[:-1], m[1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[edge], b[edge]), np.maximum(a[edge], b[edge])
        keys.append(lo.astype(np.int64) * n + hi)
        values.append(np.minimum(va[edge], vb[edge]))
    keys, values = np.concatenate(keys), np.concatenate(values)
    if not keys.size:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    unique, inverse = np.unique(keys, return_inverse=True)
    ridges = np.full(len(unique), -np.inf, dtype=np.float64)
    np.maximum.at(ridges, inverse, values)
    return np.stack([unique // n, unique % n], axis=1), ridges


def _segment(mask: np.ndarray, min_size: int, split_touching: bool,
             split_depth: float, split_area: float = 0.0) -> np.ndarray:
    """Steps 3 to 6 on a thresholded mask: fill, clean, split, clean (ids not sequential)."""
    mask = ndi.binary_fill_holes(mask)
    labels = _remove_small(ndi.label(mask)[0], min_size)
    if split_touching:
        labels = _split_large(labels, split_depth, split_area)
    return _remove_small(labels, min_size)


def _otsu(m: np.ndarray, gamma: float) -> float:
    """Otsu's threshold of ``(m - min) ** gamma``, in the units of ``m``."""
    lo = float(m.min())
    if gamma == 1:
        return float(threshold_otsu(m))
    level = float(threshold_otsu((m - lo) ** gamma))
    return lo + level ** (1.0 / gamma)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every labelled object with fewer than ``min_size`` pixels."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    too_small = sizes < min_size
    too_small[0] = False
    ids = np.arange(len(sizes), dtype=labels.dtype)
    ids[too_small] = 0
    return ids[labels]


def _split_large(labels: np.ndarray, split_depth: float, split_area: float) -> np.ndarray:
    """Split the objects of more than ``split_area`` pixels (all, for 0) with :func:`_split`."""
    if split_area <= 0:
        return _split(labels > 0, split_depth)
    if labels.max() == 0:
        return labels
    large = np.flatnonzero(np.bincount(labels.ravel()) > split_area)
    large = large[large > 0]
    if large.size == 0:
        return labels
    where = np.isin(labels, large)
    parts = _split(where, split_depth)
    out = labels.copy()
    out[where] = parts[where] + int(labels.max())
    return out


def _split(mask: np.ndarray, split_depth: float) -> np.ndarray:
    """Watershed on the distance to the edge, one seed per sufficiently deep centre."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int64)
    distance = ndi.distance_transform_edt(mask)
    seeds = ndi.label(h_maxima(distance, split_depth))[0]
    labels = watershed(-distance, seeds, mask=mask)
    # Objects too thin to hold a deep enough centre got no seed: keep them whole.
    leftover = ndi.label(mask & (labels == 0))[0]
    leftover[leftover > 0] += int(labels.max())
    return np.where(labels > 0, labels, leftover)


def _sequential(labels: np.ndarray, min_size: int = 0, narrow: bool = False) -> np.ndarray:
    """``relabel_sequential(labels)[0]`` (int64; with ``narrow``, as :func:`_narrow`
    makes it) of non-negative labels, after dropping the objects smaller than
    ``min_size`` pixels as :func:`_remove_small` does.

    The ids left, in increasing order, become 1, 2, 3, ... (0 stays 0): a lookup table
    from one ``bincount``, where ``relabel_sequential`` sorts every pixel.
    """
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(labels.shape, dtype=np.uint16 if narrow else np.int64)
    sizes = np.bincount(flat)
    keep = sizes > 0
    if min_size > 1:
        keep &= sizes >= min_size
    keep[0] = False
    ids = np.cumsum(keep)
    ids[~keep] = 0
    if narrow:
        ids = ids.astype(np.uint16 if ids.max() <= np.iinfo(np.uint16).max else np.uint32)
    return np.take(ids, labels)


def _grown(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` widened by ``margin`` pixels on every side, clipped to ``shape``."""
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin))
                 for s, n in zip(box, shape))


def _within(box: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``box`` in the coordinates of the crop ``outer`` that holds it."""
    return tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))


def _map_peaks(m: np.ndarray, floor: float, min_distance: int, pieces: np.ndarray,
               boxes: list) -> np.ndarray:
    """``peak_local_max(m, min_distance=min_distance, threshold_abs=floor,
    exclude_border=False)``, looked for only on the pieces of ``m > floor``.

    A peak is a pixel above ``floor`` equal to the largest value of ``m`` in its
    square of side ``2 * min_distance + 1`` (cut at the map's edge); peaks are then
    taken from the highest down (ties in raster order), each dropping the others
    nearer than ``min_distance`` (:func:`_spaced`). The square of a pixel reaches only
    ``min_distance`` pixels out, so the maximum filter runs on each piece's box
    widened by that much, not on the background that is most of a slide.
    ``pieces`` labels the 4-connected pieces of ``m > floor``, ``boxes`` their
    ``find_objects``.
    """
    if m.size <= 1 or float(m.min()) == float(m.max()):  # skimage's special cases
        return peak_local_max(m, min_distance=min_distance, threshold_abs=floor,
                              exclude_border=False)
    footprint = np.ones((2 * min_distance + 1,) * 2, dtype=bool)
    crops = [(k, box, _grown(box, min_distance, m.shape))
             for k, box in enumerate(boxes, start=1) if box is not None]
    if sum(math.prod(s.stop - s.start for s in grown) for _, _, grown in crops) > m.size / 2:
        # the widened boxes cover much of the map: one filter of the whole map is cheaper
        flat = np.flatnonzero((m == ndi.maximum_filter(m, footprint=footprint, mode="nearest"))
                              & (pieces > 0))
    else:
        found = [np.zeros(0, dtype=np.intp)]
        for k, box, grown in crops:
            crop = m[grown]
            inner = _within(box, grown)
            top = ndi.maximum_filter(crop, footprint=footprint, mode="nearest")[inner]
            ys, xs = np.nonzero((crop[inner] == top) & (pieces[box] == k))
            found.append((ys + box[0].start) * m.shape[1] + xs + box[1].start)
        flat = np.concatenate(found)
    flat = flat[np.lexsort((flat, -m.ravel()[flat]))]
    return _spaced(np.stack(np.unravel_index(flat, m.shape), axis=1), min_distance)


def _spaced(coords: np.ndarray, min_distance: int) -> np.ndarray:
    """skimage's ``ensure_spacing`` (Chebyshev distance) for ``peak_local_max``: of
    ``coords`` sorted best first, each is kept unless it lies nearer than
    ``min_distance`` to one kept before it (none is dropped for ``min_distance`` 1)."""
    if min_distance <= 1 or len(coords) < 2:
        return coords
    reach = min_distance - 1
    low = coords.min(axis=0)
    taken = np.zeros(tuple(coords.max(axis=0) - low + 1), dtype=bool)
    keep = np.zeros(len(coords), dtype=bool)
    for i, (y, x) in enumerate((coords - low).tolist()):
        if not taken[y, x]:
            keep[i] = True
            taken[max(0, y - reach):y + reach + 1, max(0, x - reach):x + reach + 1] = True
    return coords[keep]


@functools.lru_cache(maxsize=None)
def _markers_enter_at_their_level() -> bool:
    """Whether skimage's watershed queues each marker at its own level (0.26; 0.25
    queued them all at -inf, which left their order to the heap of the whole image)."""
    flooded = watershed(np.arange(6.0), np.array([1, 0, 0, 0, 0, 2]))
    return bool(np.array_equal(flooded, [1, 1, 1, 1, 1, 2]))


def _apart(piece_of: np.ndarray, level: np.ndarray) -> bool:
    """Whether the pieces of a mask can all be flooded together in any crop that holds
    them whole (see :func:`_flood_piece`): no piece holds two markers of the same
    ``level`` (``piece_of`` and ``level`` by marker; piece 0 is outside the mask), and
    skimage queues markers at their level."""
    level = np.asarray(level, dtype=np.float64)
    order = np.lexsort((level, piece_of))
    piece_of, level = piece_of[order], level[order]
    same = (piece_of[1:] == piece_of[:-1]) & (level[1:] == level[:-1]) & (piece_of[1:] > 0)
    return not same.any() and _markers_enter_at_their_level()


def _flood(height: np.ndarray, peaks: np.ndarray, mask: np.ndarray, pieces: np.ndarray,
           boxes: list) -> np.ndarray:
    """``watershed(-height, markers, mask=mask)`` with markers 1, 2, ... at ``peaks``
    (rows of ``(row, col)``), flooded one piece of the mask at a time
    (:func:`_flood_piece`; the whole mask at once where a piece cannot be).

    ``pieces`` labels the 4-connected pieces of ``mask``, ``boxes`` their
    ``find_objects``. Small queues and crops make this faster than one flood.
    """
    markers = np.zeros(mask.shape, dtype=np.int32)  # int32 ids: half the memory traffic
    at = tuple(np.asarray(peaks).T)
    markers[at] = np.arange(1, len(peaks) + 1)
    piece_of = pieces[at]
    out = np.zeros(mask.shape, dtype=np.int32)
    ids, first, count = np.unique(piece_of, return_index=True, return_counts=True)
    for k, i, c in zip(ids.tolist(), first.tolist(), count.tolist()):
        if k == 0:
            continue
        box = boxes[k - 1]
        piece = pieces[box] == k
        if c == 1:  # a piece with one marker is all that marker's basin
            out[box][piece] = i + 1
            continue
        flooded = _flood_piece(-height[box], markers[box], piece)
        if flooded is None:
            return watershed(-height, markers, mask=mask)
        out[box][piece] = flooded[piece]
    return out


_MAX_ORDERS = 6
"""At most this many orders of a piece's same-level markers are tried by :func:`_flood_piece`."""


def _flood_piece(surface: np.ndarray, markers: np.ndarray, piece: np.ndarray) -> np.ndarray | None:
    """``watershed(surface, markers, mask=piece)`` of one 4-connected piece of a mask,
    as that piece comes out of the flood of the whole mask; None where that is not
    known (then flood the whole mask).

    No flood crosses from one piece to another, and skimage's queue serves entries by
    (level, time of entry), the time being unique except for the markers, which all
    enter first: a piece's pixels leave the queue in an order set by the piece alone,
    so it floods alone as in the whole image -- except for the order among markers of
    the same level, which the heap of the whole image sets. Each such order is forced
    here by lowering the earlier markers' levels by a few units in the last place (no
    other pixel of the piece lies at those levels, so no other comparison changes); when
    every order gives the same piece, that is the piece.
    """
    if not _markers_enter_at_their_level():
        return None
    at = np.nonzero(piece & (markers != 0))
    level = surface[at].astype(np.float64)  # watershed floods in float64
    _, group, count = np.unique(level, return_inverse=True, return_counts=True)
    tied = [np.flatnonzero(group == g).tolist() for g in np.flatnonzero(count > 1)]
    if not tied:
        return watershed(surface, markers, mask=piece)
    if math.prod(math.factorial(len(g)) for g in tied) > _MAX_ORDERS:
        return None
    orders = itertools.product(*(itertools.permutations(g) for g in tied))
    levels = surface[piece].astype(np.float64)
    flooded = None
    for order in orders:
        forced = surface.astype(np.float64)
        for same in order:
            for rank, i in enumerate(same):  # the first to leave the queue lowest
                value = level[i]
                for _ in range(len(same) - 1 - rank):
                    value = np.nextafter(value, -np.inf)
                if rank < len(same) - 1 and np.isin(value, levels):
                    return None
                forced[at[0][i], at[1][i]] = value
        this = watershed(forced, markers, mask=piece)
        if flooded is None:
            flooded = this
        elif not np.array_equal(this, flooded):
            return None
    return flooded


def _narrow(labels: np.ndarray) -> np.ndarray:
    """uint16 when the ids fit, else uint32."""
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


# ---------------------------------------------------------------------------
# huge maps: the same labelling tile by tile, in bounded memory
# ---------------------------------------------------------------------------

DEFAULT_TILE = 4096
"""Side (pixels) of the core of one tile in :func:`attention_to_labels_tiled`."""
_HIST_BINS = 256  # as skimage.filters.threshold_otsu
_TRUNCATE = 4.0  # as scipy.ndimage.gaussian_filter


def attention_to_labels_tiled(
    attention_map: Any,
    *,
    threshold: str | float = "auto",
    min_size: int = DEFAULT_MIN_SIZE,
    smooth: float = 1.0,
    split_touching: bool = True,
    split_depth: float | None = None,
    cell_diameter: float | None = None,
    gamma: float = DEFAULT_GAMMA,
    max_cell_diameter: float | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    out: np.ndarray | None = None,
    progress: Callable[[int, int], Any] | None = None,
    stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """:func:`attention_to_labels` for maps too large for memory, tile by tile.

    The map (a numpy array, ``numpy.memmap`` or any array-like with ``shape``
    and slicing) is never copied whole:

    1. it is read in bands of rows to find its range and, for ``"otsu"``, the
       histogram of the smoothed map, from which Otsu's threshold is taken
       exactly as :func:`attention_to_labels` takes it from the whole map;
    2. it is then labelled in square tiles of ``tile`` pixels, each read with a
       margin of ``overlap`` pixels on every side (the *halo*) so that cells
       crossing the tile border are seen whole; a cell is kept only by the tile
       whose core holds its centre (centroid), so no cell is lost or counted
       twice;
    3. kept cells are written into ``out`` with ids that run on from tile to
       tile: 1..N, unique over the whole map (and over the planes of a stack).

    For maps whose cells (and clusters of touching cells) are smaller than the
    halo, the result is the same as :func:`attention_to_labels` up to the
    numbering of the cells, with one known exception: in crowded clusters the
    watershed may split a few touching cells differently inside a tile than in
    the whole map (measured: 2-3 of ~90 cells on crowded test maps, object F1
    0.95-0.98 between the two; sparse maps match exactly).

    Parameters
    ----------
    attention_map, threshold, min_size, smooth, split_touching, split_depth, cell_diameter, gamma:
        As in :func:`attention_to_labels` (2-D map, or a ``T, Y, X`` stack).
    max_cell_diameter:
        Largest cell diameter in pixels. Default: twice the diameter of a disc
        of ``10 * min_size`` pixels (``min_size`` is usually a tenth of a cell).
    tile:
        Side of a tile's core in pixels (bounds the memory: about 40 bytes per
        pixel of tile plus halo are used while a tile is labelled).
    overlap:
        Halo width in pixels; default: twice ``max_cell_diameter`` plus the
        reach of the smoothing.
    out:
        Optional integer array (or ``numpy.memmap``) of the map's shape that
        receives the labels and is returned; it is overwritten. Without it an
        in-memory ``uint16`` array is made, widened to ``uint32`` once there are
        more than 65,535 cells.
    progress:
        Called as ``progress(done, total)`` after every band and tile.
    stop:
        Called between bands and tiles; when it returns True,
        :class:`napari_atagan.slides.attention.Stopped` is raised.
    """
    shape = _map_shape(attention_map)
    options = _options(threshold, min_size, smooth, split_touching, split_depth, cell_diameter,
                       gamma)
    if max_cell_diameter is None and cell_diameter is not None:
        max_cell_diameter = 2.0 * float(cell_diameter)
    tile, overlap = _tiling(tile, overlap, max_cell_diameter, options["min_size"],
                            options["smooth"])  # as resolved: the rule's own smoothing
    result = _Output(out, shape)
    planes = [attention_map] if len(shape) == 2 else [StackPlane(attention_map, t)
                                                        for t in range(shape[0])]
    ticker = _Ticker(progress, len(planes) * _n_steps(shape[-2:], tile, options["threshold"]))
    offset = 0
    for t, plane in enumerate(planes):
        offset = _label_plane_tiled(plane, result, None if len(shape) == 2 else t, offset,
                                    tile, overlap, options, ticker, stop)
    return result.array


def _map_shape(attention_map: Any) -> tuple[int, ...]:
    if not hasattr(attention_map, "shape") or not hasattr(attention_map, "dtype"):
        raise ValueError(
            "attention_map must be an array (numpy array or memmap) of shape (Y, X) or "
            f"(T, Y, X), got {type(attention_map).__name__}"
        )
    shape = tuple(int(n) for n in attention_map.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"attention map must be 2-D (Y, X) or a 3-D stack (T, Y, X), got shape {shape}"
        )
    if np.dtype(attention_map.dtype).kind not in "biuf":
        raise ValueError(f"attention map must be numeric, got dtype {attention_map.dtype}")
    return shape


def _tiling(tile: int, overlap: int | None, max_cell_diameter: float | None, min_size: int,
            smooth: float) -> tuple[int, int]:
    """Checked tile side and halo width."""
    if int(tile) != tile or tile < 16:
        raise ValueError(f"tile must be a whole number of pixels >= 16, got {tile}")
    if overlap is None:
        if max_cell_diameter is None:
            max_cell_diameter = 2.0 * math.sqrt(4.0 * 10 * max(min_size, 1) / math.pi)
        if not math.isfinite(max_cell_diameter) or max_cell_diameter <= 0:
            raise ValueError(f"max_cell_diameter must be > 0 pixels, got {max_cell_diameter}")
        overlap = math.ceil(2 * max_cell_diameter) + _smooth_radius(smooth)
    if int(overlap) != overlap or overlap < 0:
        raise ValueError(f"overlap must be a whole number of pixels >= 0, got {overlap}")
    return int(tile), int(overlap)


def _smooth_radius(smooth: float) -> int:
    """How far (pixels) the Gaussian smoothing reaches, as in scipy."""
    return int(_TRUNCATE * float(smooth) + 0.5) if smooth > 0 else 0


class _Output:
    """The label array being filled; an in-memory one of our own may grow to uint32."""

    def __init__(self, out: np.ndarray | None, shape: tuple[int, ...]) -> None:
        self.growable = out is None
        if out is None:
            out = np.zeros(shape, dtype=np.uint16)
        elif tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)} but the map has shape {shape}")
        elif np.dtype(out.dtype).kind not in "iu" or np.dtype(out.dtype).itemsize < 2:
            raise ValueError(
                "out must be an integer array of at least 16 bits (uint16, uint32), "
                f"got dtype {out.dtype}"
            )
        self.array = out

    def plane(self, t: int | None) -> np.ndarray:
        return self.array if t is None else self.array[t]

    def make_room(self, top_id: int) -> None:
        """Make sure ids up to ``top_id`` fit, widening our own array to uint32."""
        if top_id <= np.iinfo(self.array.dtype).max:
            return
        if not self.growable or top_id > np.iinfo(np.uint32).max:
            raise ValueError(
                f"{top_id} cells do not fit in out of dtype {self.array.dtype}: pass an out "
                "of dtype uint32"
            )
        self.array = self.array.astype(np.uint32)


def _n_steps(shape: tuple[int, int], tile: int, threshold: str | float) -> int:
    bands = -(-shape[0] // _band_rows(shape, tile))
    tiles = -(-shape[0] // tile) * -(-shape[1] // tile)
    return bands * (2 if isinstance(threshold, str) else 1) + tiles


def _band_rows(shape: tuple[int, int], tile: int) -> int:
    """Rows per band: about as many pixels as one tile."""
    return max(16, tile * tile // max(shape[1], 1))


class _Ticker:
    """Counts steps and reports them to a ``progress(done, total)`` callback."""

    def __init__(self, progress: Callable[[int, int], Any] | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def _check_stop(stop: Callable[[], bool] | None) -> None:
    if stop is not None and stop():
        from ..events import Stopped

        raise Stopped("stopped on request")


def _label_plane_tiled(plane, result: _Output, t: int | None, offset: int, tile: int,
                       overlap: int, options: dict, ticker: _Ticker, stop) -> int:
    """Label one 2-D plane into ``result``; returns the id offset for the next plane."""
    h, w = plane.shape
    rows = _band_rows((h, w), tile)
    for y in range(0, h, rows):  # a given out may hold old labels
        result.plane(t)[y:y + rows] = 0
    if h * w == 0:
        return offset
    smooth = options["smooth"]
    raw_range, smooth_range = _ranges(plane, tile, smooth, ticker, stop)
    if raw_range[1] - raw_range[0] <= 1e-12:  # constant: no cells, skip the other steps
        for _ in range(_n_steps((h, w), tile, options["threshold"]) - -(-h // rows)):
            ticker.tick()
        return offset
    level = options["threshold"]
    if level == "local":
        level = _noise_floor(_banded_sample(plane, tile, smooth, ticker, stop))
    elif level == "otsu":
        level = _banded_otsu(plane, tile, smooth, smooth_range, options["gamma"], ticker, stop)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            _check_stop(stop)
            core = (y0, min(h, y0 + tile), x0, min(w, x0 + tile))
            cells, origin = _label_tile(plane, core, overlap, float(level), options)
            mapped, count = _owned(cells, origin, core, offset)
            result.make_room(offset + count)
            _paste(mapped, origin, result.plane(t))
            offset += count
            release_pages(plane)
            release_pages(result.array)
            ticker.tick()
    return offset


def _read(plane: Any, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    region = np.asarray(plane[y0:y1, x0:x1]).astype(np.float32, copy=False)
    if not np.all(np.isfinite(region)):
        raise ValueError(
            f"attention map contains NaN or infinite values (rows {y0}-{y1}, "
            f"columns {x0}-{x1})"
        )
    return region


def _smoothed_rows(plane: Any, y0: int, y1: int, smooth: float) -> np.ndarray:
    """Rows ``y0..y1-1`` of the smoothed map, computed from a band with a margin."""
    h, w = plane.shape
    r = _smooth_radius(smooth)
    a0, a1 = max(0, y0 - r), min(h, y1 + r)
    band = _read(plane, a0, a1, 0, w)
    if smooth > 0:
        band = ndi.gaussian_filter(band, sigma=smooth)
    return band[y0 - a0:y1 - a0]


def _ranges(plane, tile, smooth, ticker, stop):
    """(min, max) of the raw map and of the smoothed map, band by band."""
    h, w = plane.shape
    raw = [np.inf, -np.inf]
    smoothed = [np.float32(np.inf), np.float32(-np.inf)]
    for y0 in range(0, h, _band_rows((h, w), tile)):
        _check_stop(stop)
        y1 = min(h, y0 + _band_rows((h, w), tile))
        band = _read(plane, y0, y1, 0, w)
        raw = [min(raw[0], float(band.min())), max(raw[1], float(band.max()))]
        sm = _smoothed_rows(plane, y0, y1, smooth) if smooth > 0 else band
        smoothed = [min(smoothed[0], sm.min()), max(smoothed[1], sm.max())]
        release_pages(plane)
        ticker.tick()
    return raw, smoothed


def _banded_sample(plane, tile, smooth, ticker, stop) -> np.ndarray:
    """:func:`_grid_sample` of the whole smoothed map, band by band."""
    h, w = plane.shape
    step = _sample_step((h, w))
    rows = _band_rows((h, w), tile)
    parts = []
    for y0 in range(0, h, rows):
        _check_stop(stop)
        y1 = min(h, y0 + rows)
        first = -y0 % step  # the band's first row on the grid
        parts.append(_smoothed_rows(plane, y0, y1, smooth)[first::step, ::step].copy())
        release_pages(plane)
        ticker.tick()
    return np.concatenate(parts)


def _banded_otsu(plane, tile, smooth, smooth_range, gamma, ticker, stop) -> float:
    """:func:`_otsu` of the whole smoothed map from a histogram summed over bands.

    The bins are those :func:`skimage.filters.threshold_otsu` uses on the whole
    map (256 bins over its range, on the ``gamma`` scale), so the threshold is
    the same.
    """
    h, w = plane.shape
    lo, hi = (float(v) for v in smooth_range)
    if lo == hi:
        return lo

    def scale(x):
        return x if gamma == 1 else (x - np.float32(lo)) ** gamma

    top = float(scale(np.array([hi], np.float32))[0])  # as float32 as on the whole map
    bottom = lo if gamma == 1 else 0.0
    counts = np.zeros(_HIST_BINS, dtype=np.int64)
    edges = None
    for y0 in range(0, h, _band_rows((h, w), tile)):
        _check_stop(stop)
        y1 = min(h, y0 + _band_rows((h, w), tile))
        c, edges = np.histogram(scale(_smoothed_rows(plane, y0, y1, smooth)), bins=_HIST_BINS,
                                range=(bottom, top))
        counts += c
        release_pages(plane)
        ticker.tick()
    centres = (edges[:-1] + edges[1:]) / 2.0
    level = float(threshold_otsu(hist=(counts, centres)))
    return level if gamma == 1 else lo + level ** (1.0 / gamma)


def _label_tile(plane, core, overlap, level, options):
    """Label a tile's core plus halo; returns (labels, (row, col) of their origin)."""
    h, w = plane.shape
    y0, y1, x0, x1 = core
    oy0, oy1 = max(0, y0 - overlap), min(h, y1 + overlap)
    ox0, ox1 = max(0, x0 - overlap), min(w, x1 + overlap)
    r = _smooth_radius(options["smooth"])
    ry0, ry1, rx0, rx1 = max(0, oy0 - r), min(h, oy1 + r), max(0, ox0 - r), min(w, ox1 + r)
    m = _read(plane, ry0, ry1, rx0, rx1)
    if options["smooth"] > 0:
        m = ndi.gaussian_filter(m, sigma=options["smooth"])
    m = m[oy0 - ry0:oy1 - ry0, ox0 - rx0:ox1 - rx0]
    if options["threshold"] == "local":
        labels = _local_cells(m, level, options["peak_distance"], options["min_size"],
                              options["split_area"])
    else:
        labels = _segment(m > level, options["min_size"], options["split_touching"],
                          options["split_depth"], options["split_area"])
    return labels, (oy0, ox0)


def _owned(labels: np.ndarray, origin: tuple[int, int], core, offset: int):
    """Renumber the cells whose centroid lies in ``core`` as ``offset + 1, ...``.

    Returns ``(ids, count)``: ``ids`` has the tile's shape, 0 everywhere except
    on the owned cells.
    """
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(labels.shape, dtype=np.int64), 0
    flat = labels.ravel()
    rows, cols = np.indices(labels.shape)
    area = np.bincount(flat, minlength=n + 1)
    sum_y = np.bincount(flat, weights=rows.ravel(), minlength=n + 1)
    sum_x = np.bincount(flat, weights=cols.ravel(), minlength=n + 1)
    del rows, cols
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.floor(sum_y / area) + origin[0]
        cx = np.floor(sum_x / area) + origin[1]
    y0, y1, x0, x1 = core
    owned = (area > 0) & (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    owned[0] = False
    count = int(owned.sum())
    new_ids = np.zeros(n + 1, dtype=np.int64)
    new_ids[owned] = offset + np.arange(1, count + 1)
    return new_ids[labels], count


def _paste(ids: np.ndarray, origin: tuple[int, int], out: np.ndarray) -> None:
    """Write the non-zero ``ids`` into ``out`` at ``origin`` (other pixels untouched)."""
    ys, xs = np.nonzero(ids)
    if ys.size:
        region = out[origin[0]:origin[0] + ids.shape[0], origin[1]:origin[1] + ids.shape[1]]
        region[ys, xs] = ids[ys, xs].astype(out.dtype)
