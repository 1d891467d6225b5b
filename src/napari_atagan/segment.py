"""Cells on a slide from the image itself, with or without the discriminator's map.

Two labellings live here, both pure functions of numpy arrays:

* :func:`classic_labels`: the model-free pipeline a careful engineer writes in
  ten lines, and the baseline every slide figure stands beside: Otsu's threshold
  of the smoothed slide, holes filled, objects under :data:`MIN_CELL_AREA` of a
  cell's area dropped, touching cells split by a watershed on the distance to
  the object edge, seeded by distance maxima at least a cell radius apart.
* :func:`guided_labels`: the map decides *where* cells are, the image decides
  *where their edge is*. The discriminator's soft-CAM finds cells well but holds
  one value per feature cell (8 model pixels), so an outline cut from the map
  alone is blocky and shrunk; the image has the edge at full resolution but no
  idea which bright blob is a cell and which is glow, debris or a merged pair.
  The steps:

  1. **Seeds from the map.** The map is labelled as by
     :func:`napari_atagan.labels.attention_to_labels` with the ``"local"`` rule
     (one object per cell, neighbouring basins of one cell merged); the core of
     each object (its pixels above half of its own peak) is one seed.
  2. **Each cell cut at its own level**, so a few saturated cells skew no one
     else's outline. Every pixel within a quarter of a cell diameter of a map
     cell belongs to the nearest one (its zone); within that zone the cell is the
     pixels of the smoothed image above :data:`CUT_FRACTION` of the way from
     the background (the median of the pixels in no zone) to the cell's own
     level (the median of the image in its seed). A cell's glow into the
     cytoplasm, much dimmer than the nucleus, falls below its cut, and a dim
     cell is cut as cleanly as a bright one.
  3. **Touching cells split where the image narrows.** The cells' pixels are
     divided by a watershed on the distance to their edge, seeded by maxima of
     that distance at least half a cell diameter apart, as in the classic
     pipeline: two touching nuclei part at their neck. (One marker per map
     seed instead was tried: at the map's coarse grid two touching cells often
     make one seed, and object F1 on touching mosaics was 0.71 against 0.77;
     the classic pipeline scored 0.42 there.)
  4. Holes filled, objects under :data:`MIN_CELL_AREA` of a cell's area dropped.

  A seed whose zone holds no pixel above its cut (a cell the map sees but the
  image barely shows) keeps the map's own outline. The choices and their
  figures are in ``docs/experiments.md`` (*Cells on slides*).

Both return ``uint16`` labels numbered 1..N (``uint32`` above 65,535 cells).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import relabel_sequential, watershed

from .labels import (
    _narrow,
    _remove_small,
    attention_to_labels,
    effective_min_size,
    fill_holes_each,
    label_percentiles,
    min_cell_size,
    number_planes,
)
from .metrics import otsu_baseline

__all__ = ["CLASSIC_SIGMA", "OUTLINES", "classic_labels", "guided_labels", "label_cells"]

OUTLINES = ("image", "map")
"""What outlines the cells in :func:`label_cells`: the slide (seeded by the map) or the map."""

CLASSIC_SIGMA = 2.0
"""Gaussian sigma (pixels) of the classic pipeline's smoothing."""
SEED_FRACTION = 0.5
"""A seed is the part of a map cell above this fraction of the cell's peak."""
ZONE_GROWTH = 0.25
"""A seed's zone reaches this many cell diameters beyond the map's cell."""
CUT_FRACTION = 0.35
"""A cell keeps the pixels above this fraction of the way from the background to its own
level."""
BRIGHT_PCT = 50.0
"""A cell's own level: this percentile of the smoothed image inside its seed (50: the
median, so a few bright nucleoli or speckles do not raise it)."""


def classic_labels(image: Any, cell_diameter: float, *, sigma: float = CLASSIC_SIGMA,
                   min_size: int | None = None) -> np.ndarray:
    """Model-free cells: Otsu, holes filled, small objects dropped, watershed split.

    Parameters
    ----------
    image:
        2-D grey slide (any numeric dtype).
    cell_diameter:
        Typical cell diameter in pixels: objects under :data:`MIN_CELL_AREA` of
        a disc of that diameter are dropped, and touching cells are split by a
        watershed on the distance to the object edge whose seeds (maxima of that
        distance) are at least half a diameter apart.
    sigma:
        Gaussian smoothing in pixels before Otsu's threshold.
    min_size:
        Smallest object kept, in pixels; default :func:`~napari_atagan.labels.min_cell_size`.
    """
    img = _grey(image)
    d = _diameter(cell_diameter)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}")
    min_size = min_cell_size(d) if min_size is None else int(min_size)
    objects = otsu_baseline(img, sigma=float(sigma), min_size=min_size)  # no cells if constant
    return _finish(_remove_small(_distance_split(objects > 0, d), min_size))


def guided_labels(image: Any, attention_map: Any, cell_diameter: float, *,
                  min_size: int | None = None, sigma: float | None = None,
                  map_labels: np.ndarray | None = None) -> np.ndarray:
    """Cells found by the map and delineated by the image (see the module notes).

    Parameters
    ----------
    image:
        2-D grey slide.
    attention_map:
        The discriminator's attention on that slide, same shape
        (:func:`napari_atagan.slide.slide_attention`).
    cell_diameter:
        Typical cell diameter in pixels.
    min_size:
        Smallest cell kept, in pixels; never less than
        :func:`~napari_atagan.labels.min_cell_size`, as in the map's own labelling.
    sigma:
        Smoothing of the image in pixels; default a twentieth of the diameter
        (at least 1): enough to even out a cell's speckles, little against its edge.
    map_labels:
        The map's own cells, if already computed (``attention_to_labels(map,
        threshold="local", cell_diameter=...)``); computed here otherwise.
    """
    img = _grey(image)
    att = _grey(attention_map, "attention map")
    if att.shape != img.shape:
        raise ValueError(f"the attention map has shape {att.shape} but the image has "
                         f"{img.shape}: they must cover the same pixels")
    d = _diameter(cell_diameter)
    min_size = effective_min_size(min_size or 0, d)  # the floor the map's labelling keeps
    sigma = max(1.0, d / 20.0) if sigma is None else float(sigma)
    if map_labels is None:
        map_labels = attention_to_labels(att, threshold="local", cell_diameter=d,
                                         min_size=min_size)
    elif map_labels.shape != img.shape:
        raise ValueError(f"map_labels has shape {map_labels.shape}, the image {img.shape}")
    n = int(map_labels.max())
    if n == 0 or _constant(img):
        return _finish(np.asarray(map_labels, np.int64))
    level = ndi.gaussian_filter(img, sigma)
    seeds = _seeds(map_labels, att, n)
    zones = _zones(map_labels, d)
    background = float(np.median(level[zones == 0])) if (zones == 0).any() else float(level.min())
    bright = np.zeros(n + 1)
    bright[1:] = label_percentiles(level, seeds, np.arange(1, n + 1), BRIGHT_PCT)
    cut = background + CUT_FRACTION * (bright - background)
    cut[0] = np.inf
    inside = level > cut[zones]
    cells = np.where(inside, zones, 0)
    # seeds the image does not show keep the map's own outline
    shown = np.bincount(cells.ravel(), minlength=n + 1) > 0
    unseen = ~shown
    unseen[0] = False
    cells = np.where((cells == 0) & unseen[map_labels], map_labels, cells)
    labels = _distance_split(fill_holes_each(cells) > 0, d)
    return _finish(_remove_small(labels, min_size))


def label_cells(attention_map: Any, image: Any, *, outline: str = "image",
                threshold: str | float = "auto", min_size: int = 0,
                cell_diameter: float | None = None) -> np.ndarray:
    """The cells of a slide (or of every plane of a ``(T, Y, X)`` stack) from its map.

    ``outline="image"``: :func:`guided_labels` (needs ``cell_diameter``; the map's
    own cells are found with ``threshold`` and ``min_size`` and then outlined by
    the image); ``"map"``: :func:`napari_atagan.labels.attention_to_labels`
    alone. Ids are unique over a stack. The one labelling the CLI and the
    napari widget share.
    """
    if outline not in OUTLINES:
        raise ValueError(f"outline must be one of {', '.join(OUTLINES)}, got {outline!r}")
    att = np.asarray(attention_map)
    options = dict(threshold=threshold, min_size=min_size, cell_diameter=cell_diameter)
    if outline == "map":
        return attention_to_labels(att, **options)
    if cell_diameter is None:
        raise ValueError("outlining cells by the image needs the cell diameter")
    if att.ndim == 2:
        return guided_labels(np.asarray(image), att, cell_diameter, min_size=min_size,
                             map_labels=attention_to_labels(att, **options))
    if att.ndim != 3:
        raise ValueError(f"attention map must be 2-D or a (T, Y, X) stack, got shape {att.shape}")
    planes = (guided_labels(np.asarray(image[t]), att[t], cell_diameter, min_size=min_size,
                            map_labels=attention_to_labels(att[t], **options))
              for t in range(att.shape[0]))
    return number_planes(planes, att.shape)


# ---------------------------------------------------------------------------


def _distance_split(mask: np.ndarray, d: float) -> np.ndarray:
    """Watershed on the distance to the edge, seeded by its maxima half a diameter apart."""
    distance = ndi.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=max(1, int(round(d / 2))),
                           labels=ndi.label(mask)[0], exclude_border=False)
    markers = np.zeros(mask.shape, np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    # an object whose distance maxima all fell to a larger neighbour's exclusion zone
    rest = ndi.label(mask & (labels == 0))[0]
    return np.where(labels > 0, labels, np.where(rest > 0, rest + labels.max(), 0))


def _seeds(map_labels: np.ndarray, att: np.ndarray, n: int) -> np.ndarray:
    """Each map cell's core: its pixels above SEED_FRACTION of its own peak."""
    labels = np.asarray(map_labels, np.int64)
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, labels.ravel(), att.ravel())
    seeds = np.where((labels > 0) & (att >= SEED_FRACTION * peak[labels]), labels, 0)
    return seeds


def _zones(map_labels: np.ndarray, d: float) -> np.ndarray:
    """Every pixel within ZONE_GROWTH diameters of a map cell, given to the nearest one.

    One distance transform with its nearest-pixel indices; a watershed of the map
    from the seeds drew the same zones (object F1 0.795 against 0.794 on the
    training-part touching mosaics) at 1.5 times the cost of the whole labelling.
    """
    distance, (iy, ix) = ndi.distance_transform_edt(map_labels == 0, return_indices=True)
    return np.where(distance <= ZONE_GROWTH * d, map_labels[iy, ix], 0)


def _finish(labels: np.ndarray) -> np.ndarray:
    """Cells numbered 1..N, ``uint16`` (``uint32`` beyond 65,535 cells)."""
    return _narrow(relabel_sequential(np.asarray(labels, np.int64))[0])


def _grey(image: Any, what: str = "image") -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"the {what} must be 2-D (Y, X), got shape {img.shape}: pick one "
                         "plane (and one channel of a colour image)")
    if img.dtype.kind not in "biuf":
        raise ValueError(f"the {what} must be numeric, got dtype {img.dtype}")
    if min(img.shape) < 2:
        raise ValueError(f"the {what} is {img.shape[0]} x {img.shape[1]} pixels: too small")
    img = img.astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise ValueError(f"the {what} contains NaN or infinite values: replace them first")
    return img


def _diameter(cell_diameter: Any) -> float:
    try:
        d = float(cell_diameter)
    except (TypeError, ValueError):
        d = float("nan")
    if not math.isfinite(d) or d <= 0:
        raise ValueError(f"cell_diameter must be a positive number of pixels, got {cell_diameter!r}")
    return d


def _constant(img: np.ndarray) -> bool:
    return float(img.max()) - float(img.min()) <= 1e-12
