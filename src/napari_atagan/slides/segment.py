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

  0. **The map the cells are found in** is the discriminator's, averaged with the
     model-free :func:`blob_map` (:func:`seed_map`, the default of :func:`label_cells`;
     its ``find`` takes either map alone): the two miss different cells. On slides the
     blob map alone does as well as the mean or better, but for the mosaics of real I3A
     cells, where the mean leads (docs/experiments.md, *The map the labelling needs*,
     *The log of the contrast*).
  1. **Seeds from the map.** The map is labelled as by
     :func:`napari_atagan.slides.labels.attention_to_labels` with the ``"local"`` rule
     (one object per cell, neighbouring basins of one cell merged), its peaks
     taken from :data:`PROPOSAL_MADS` robust standard deviations above the
     map's median, not the 3 of a map that stands alone: here the map only
     proposes, and the image confirms every seed (the last paragraph). The
     map's background is not white noise but a smooth, cloudy field that falls
     off at the slide's border, so 3 of its spreads lay above the peaks of
     many dim cells that the slide shows clearly. The core of each object (its
     pixels above half of its own peak) is one seed. For cells of 60 px or more the
     map is labelled on blocks of ``d // 30`` pixels (:data:`WORK_DIAMETER`).
  2. **Each cell cut at its own level**, so a few saturated cells skew no one
     else's outline. Every pixel within a quarter of a cell diameter of a map
     cell belongs to the nearest one (its zone); within that zone the cell is the
     pixels of the smoothed image above a fraction of the way from the
     background (the median of the pixels in no zone) to the cell's own level
     (the median of the image in its seed). A cell's glow into the cytoplasm,
     much dimmer than the nucleus, falls below its cut, and a dim cell is cut as
     cleanly as a bright one. The fraction is one per slide, chosen within
     :data:`CUT_RANGE` so that the slide's median cell has the diameter the
     labelling was given (``cut="auto"``, the default; or fixed): where a cell
     ends is a convention of the person who outlines it (whole stained cells,
     or tight nuclei), and the diameter they measured states it.
  3. **Touching cells split where the image narrows.** The cells' pixels are
     divided by a watershed on the distance to their edge, seeded by maxima of
     that distance at least half a cell diameter apart, as in the classic
     pipeline: two touching nuclei part at their neck. Half a diameter is measured
     in every direction alike (:func:`_round_peaks`); skimage's ``peak_local_max``,
     which the classic pipeline keeps, compares along the axes and so needs 0.71
     diameters between two cells lying diagonally. (One marker per map
     seed instead was tried: at the map's coarse grid two touching cells often
     make one seed, and object F1 on touching mosaics was 0.71 against 0.77;
     the classic pipeline scored 0.42 there.)
  4. **Objects the size of several cells divided by their size.** Cells pressed
     together over a long edge leave no neck, and glow and blur join them above
     any cut, so the distance watershed sees one cell. An object of at least
     :data:`SPLIT_AREA` times the slide's median object holds ``round(area /
     median)`` cells: its pixels are divided among that many centres by k-means
     (:func:`split_large`). One slide's cells vary little in size (the largest
     true cell is 1.4-1.8 times the median on every slide the choice was made
     on), so a single cell is left alone, and an object of two cells' area that
     is round (less than :data:`PAIR_ELONGATION` times as long as wide) is one
     large cell, not two side by side.
  5. Holes filled, objects under :data:`MIN_CELL_AREA` of a cell's area dropped.
  6. **A cell far from convex is filled to its convex hull** (:func:`fill_concave`):
     interphase cells and their nuclei are convex to a first approximation, so a cell
     less than :data:`CONCAVE_SOLIDITY` of its hull is one whose dim part fell under
     its cut, as the dark nucleus of a cytoplasmic stain or the dim nucleoplasm beside
     a bright cap leaves a crescent whose open ring no hole filling closes. The hull's
     pixels that no other cell holds join it, where the hull is no larger than
     :data:`CONCAVE_MAX_CELLS` cells of the given diameter (a larger one spans cells).

  A seed whose own level is not above the image's noise floor (the median of
  the pixels in no zone plus :data:`~napari_atagan.slides.labels.NOISE_MADS` of
  their robust standard deviations, the rule the map's own floor follows) is no
  cell: the map sees something the image does not show, and a cut there would
  outline noise. (A weak map that is exactly 0 over half the slide has a noise
  floor of 0, and each of its faint specks became a cell.) Every other seed has
  pixels above its cut: its own. The choices and their figures are in
  ``docs/experiments.md`` (*Cells on slides*).

Both return ``uint16`` labels numbered 1..N (``uint32`` above 65,535 cells).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from .labels import (
    _apart,
    _flood,
    _flood_piece,
    _floor_above,
    _grown,
    _robust_level,
    _sequential,
    _spaced,
    _within,
    attention_to_labels,
    effective_min_size,
    fill_holes_each,
    min_cell_size,
    number_planes,
)
from .._grouped import grouped_percentiles
from ..metrics import otsu_baseline

__all__ = ["CLASSIC_SIGMA", "CONCAVE_MAX_CELLS", "CONCAVE_SOLIDITY", "CUT_FRACTION", "CUT_RANGE",
           "FINDS", "OUTLINES", "PROPOSAL_MADS", "SPLIT_AREA", "WORK_DIAMETER", "blob_map",
           "classic_labels", "divide_large", "fill_concave", "guided_labels", "label_cells",
           "log_contrast", "median_diameter", "proposed_cells", "seed_map", "split_large",
           "working_step"]

OUTLINES = ("image", "map")
"""What outlines the cells in :func:`label_cells`: the slide (seeded by the map) or the map."""
FINDS = ("both", "attention", "blob")
"""Which map finds and seeds the cells that the image outlines (:func:`label_cells`):
the mean of the discriminator's attention and the model-free blob map (:func:`seed_map`),
the attention alone, or the blob map alone (:func:`blob_map`; no model in the cells)."""

BLOB_BLOCK = 4
""":func:`blob_map` works on blocks of ``sigma / BLOB_BLOCK`` pixels."""
CLASSIC_SIGMA = 2.0
"""Gaussian sigma (pixels) of the classic pipeline's smoothing."""
SEED_FRACTION = 0.5
"""A seed is the part of a map cell above this fraction of the cell's peak."""
ZONE_GROWTH = 0.25
"""A seed's zone reaches this many cell diameters beyond the map's cell."""
CUT_FRACTION = 0.35
"""A cell keeps the pixels above this fraction of the way from the background to its own
level, when the cut is fixed (``cut=CUT_FRACTION``; see :data:`CUT_RANGE` for ``"auto"``)."""
CUT_RANGE = (0.25, 0.5)
"""``cut="auto"`` cuts each slide within this range of fractions, where its cells' median
diameter comes closest to the diameter the labelling was given. 0.5 is half-way to the
cell's level: the steepest point of a blurred step edge, the physical edge of the cell;
cutting higher would outline less than the cell. The given diameter says how wide the
user's cells are as they would outline them: generously, as I3A's masks draw whole cells,
or tightly, as nuclei are drawn (see :func:`guided_labels`)."""
MEASURE_STEP_DIAMETER = 12.0
"""``cut="auto"`` measures the cells' diameters on every ``d // 12``-th pixel of each axis
(``d``: the given diameter), so that a cell spans at least 12 of them: about 110 samples of
its area, and the median over the slide's cells is a fraction of a pixel of that grid."""
CONCAVE_SOLIDITY = 0.8
"""A cell with less than this share of its convex hull's area is filled to the hull
(:func:`fill_concave`). Chosen on the choice sets over 0.85, 0.9 and 0.95 and no filling:
the one level at which no kind of slide lost object F1 with any of three models
(docs/experiments.md, *Crescents filled to their convex hull*)."""
CONCAVE_MAX_CELLS = 1.5
"""...but only where the hull is at most this many times the area of a cell of the given
diameter: a crescent's hull is its own cell, and a slide's largest cells are 1.4-1.8 times
its median one; a larger hull spans the notch between cells pressed together."""
FIT_MIN_CELLS = 5
"""``cut="auto"`` needs at least this many cells on the slide, outlined at the top of
:data:`CUT_RANGE` (else the fixed :data:`CUT_FRACTION`): the median diameter of fewer
says little."""
SPLIT_AREA = 1.7
"""An object of at least this many times the slide's median object is divided into
``round(area / median)`` cells (:func:`split_large`)."""
PAIR_ELONGATION = 1.3
"""An object :func:`split_large` would divide in two must be at least this many times as
long as wide: two cells side by side are (2.2 for two touching discs), one large cell is
round."""
BRIGHT_PCT = 50.0
"""A cell's own level: this percentile of the smoothed image inside its seed (50: the
median, so a few bright nucleoli or speckles do not raise it)."""
WORK_DIAMETER = 30.0
""":func:`label_cells` finds the cells the map proposes (:func:`proposed_cells`), and the
zones they may reach, on blocks of ``f = d // 30`` pixels (block means of the map) for cells
of diameter ``d``, and draws them back at the slide's size: a cell spans 30 to 60 of the
pixels they are found on, whatever the magnification. The map holds one value per 8 model
pixels and is smoothed by a sixteenth of a diameter before it is labelled, so finer pixels
add work, not cells: on the study's slide sets object F1 moved by 0.015 or less, and the
archive of slides of 60 px cells ran faster (docs/experiments.md, *Proposals on a grid of
the cells' size*). The image still outlines the cells at every pixel (labelling it on the
blocks too lost 0.01 of object F1 on the mixed simulated slides)."""
WORK_MIN_SIDE = 16
"""...and the blocks are no larger than a sixteenth of the image's shorter side."""
PROPOSAL_MADS = 1.5
"""The map proposes cells from this many robust standard deviations above its median
(:func:`napari_atagan.slides.labels.attention_to_labels`'s ``noise_mads``); the image
then confirms each at :data:`~napari_atagan.slides.labels.NOISE_MADS` of its own."""


def blob_map(image: Any, cell_diameter: float) -> np.ndarray:
    """A map of where cells are, with no model: the blob detector at the cells' size.

    The negative Laplacian of Gaussian at ``sigma = d / (2 sqrt 2)``, the scale at which
    it answers most to a disc of diameter ``d``, clipped at 0 (float32, the slide's
    shape), of the slide's contrast on a log scale (:func:`log_contrast`): on the slide
    itself a dim cell beside bright ones answers a tenth as much and is not proposed; on
    the log scale dim and bright cells stand out alike, as they do for the slide's grey
    levels (:func:`napari_atagan.data.cell_levels`). :func:`label_cells` with
    ``find="blob"`` finds the cells in it alone: the same labelling with a model-free
    map, the baseline that says how much of a slide's figures the model's map adds.
    :func:`seed_map` averages it with the attention.
    """
    from skimage.transform import downscale_local_mean

    img = log_contrast(image)  # checks the image too
    d = _diameter(cell_diameter)
    sigma = d / (2.0 * math.sqrt(2.0))
    # a map this smooth is computed on blocks of sigma / 4 pixels and resampled: 0.027 s
    # for a 1388 x 1038 slide with cells of 60 px against 0.40 s at every pixel, and the
    # same cells (choice sets, docs/experiments.md, *The map the labelling needs*)
    f = max(1, min(int(sigma // BLOB_BLOCK), min(img.shape) // 8))
    small = img if f == 1 else downscale_local_mean(img, (f, f)).astype(np.float32)
    response = np.clip(-ndi.gaussian_laplace(small, sigma / f), 0.0, None)
    if f > 1:
        for axis, n in enumerate(img.shape):
            response = _linear_resample(response, n, axis)
    return response.astype(np.float32, copy=False)


def log_contrast(image: Any) -> np.ndarray:
    """``log(1 + (x - background) / noise)``, 0 at and below the background (float32).

    The background is the median of the slide (every 4th pixel each way) and the noise its
    robust standard deviation (1.4826 MADs): a cell's value grows with the log of its
    contrast in units of the background's noise, so a cell ten times as bright as its
    neighbour stands out about as much. (A slide whose background does not vary at all
    takes a thousandth of its brightest contrast as the unit.)
    """
    img = _grey(image).astype(np.float32, copy=False)
    sample = img[::4, ::4]
    background = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - np.float32(background))))
    above = img - np.float32(background)  # a new array: the steps below work in place
    np.maximum(above, 0.0, out=above)
    if noise <= 0:
        noise = max(1e-3 * float(above.max()), 1e-12)
    above *= np.float32(1.0 / noise)
    above += 1.0
    return np.log(above, out=above)  # log(1 + x): a third of log1p's time, the same map


def _linear_resample(m: np.ndarray, n: int, axis: int) -> np.ndarray:
    """``m`` resampled linearly to ``n`` pixels along ``axis``, pixel centres onto pixel
    centres, the edge values held beyond the outermost centres (as a bilinear resize of
    the whole map, one axis at a time: 0.01 s for a slide where ``skimage`` took 0.05)."""
    k = m.shape[axis]
    x = np.clip((np.arange(n) + 0.5) * (k / n) - 0.5, 0, k - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, k - 1)
    shape = [1] * m.ndim
    shape[axis] = n
    w = (x - lo).astype(np.float32).reshape(shape)
    a = np.take(m, lo, axis=axis)
    return a + (np.take(m, hi, axis=axis) - a) * w


def seed_map(attention_map: Any, image: Any, cell_diameter: float) -> np.ndarray:
    """The map :func:`label_cells` finds the cells in: the mean of the discriminator's
    attention and the model-free :func:`blob_map`, each over its own 99.5th percentile.

    The learned map and the blob detector miss different cells. On the choice sets the
    mean led the mosaics of real I3A cells for three models; the blob map alone (since it
    is taken of the log contrast) led the one-pattern, Cytoplasmic and real nuclei slides
    (docs/experiments.md, *The map the labelling needs*, *The log of the contrast*).
    """
    att = _grey(attention_map, "attention map").astype(np.float32, copy=False)
    blob = _blob_beside(att, image, cell_diameter)
    return (0.5 / _map_scale(att)) * att + (0.5 / _map_scale(blob)) * blob


def _blob_beside(att: np.ndarray, image: Any, cell_diameter: float) -> np.ndarray:
    """:func:`blob_map` of ``image``, refused unless it covers the pixels of ``att``."""
    blob = blob_map(image, cell_diameter)
    if blob.shape != np.shape(att):
        raise ValueError(f"the attention map has shape {np.shape(att)} but the image has "
                         f"{blob.shape}: they must cover the same pixels")
    return blob


def _map_scale(m: np.ndarray) -> float:
    """A map's 99.5th percentile (on every 4th pixel each way); its maximum where that is
    0 (a map that is 0 almost everywhere), and 1 for a map that is 0 everywhere."""
    level = float(np.percentile(m[::4, ::4], 99.5))
    if level > 0:
        return level
    top = float(m.max())
    return top if top > 0 else 1.0


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
        distance) are at least half a diameter apart, along both axes, as skimage's
        ``peak_local_max`` spaces them (its square window keeps a diagonal neighbour
        only from 0.71 diameters; :func:`guided_labels` spaces its seeds in every
        direction alike).
    sigma:
        Gaussian smoothing in pixels before Otsu's threshold.
    min_size:
        Smallest object kept, in pixels; default :func:`~napari_atagan.slides.labels.min_cell_size`.

    The same with objects of several cells' area divided as :func:`guided_labels`
    divides them (to compare that rule without a model):
    ``divide_large(classic_labels(image, d), min_cell_size(d))``.
    """
    img = _grey(image)
    d = _diameter(cell_diameter)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}")
    min_size = min_cell_size(d) if min_size is None else int(min_size)
    objects = otsu_baseline(img, sigma=float(sigma), min_size=min_size)  # no cells if constant
    return _finish(_distance_split(objects > 0, d, rule="square"), min_size)


def guided_labels(image: Any, attention_map: Any, cell_diameter: float, *,
                  min_size: int | None = None, sigma: float | None = None,
                  map_labels: np.ndarray | None = None, cut: float | str = "auto",
                  info: dict | None = None) -> np.ndarray:
    """Cells found by the map and delineated by the image (see the module notes).

    Parameters
    ----------
    image:
        2-D grey slide.
    attention_map:
        The discriminator's attention on that slide, same shape
        (:func:`napari_atagan.slides.attention.slide_attention`).
    cell_diameter:
        Typical cell diameter in pixels.
    min_size:
        Smallest cell kept, in pixels; never less than
        :func:`~napari_atagan.slides.labels.min_cell_size`, as in the map's own labelling.
    sigma:
        Smoothing of the image in pixels; default a twentieth of the diameter
        (at least 1): enough to even out a cell's speckles, little against its edge.
    map_labels:
        The cells the map proposes, if already computed (:func:`proposed_cells`);
        computed here otherwise, with the ``"local"`` rule, as :func:`label_cells`
        finds them (on blocks of :func:`working_step` pixels).
    cut:
        Where a cell's edge is, as a fraction of the way from the background to the
        cell's own level; ``"auto"`` (the default) chooses it per slide within
        :data:`CUT_RANGE`: the fraction at which the median diameter of the slide's
        cells (those clear of the image border) comes closest to ``cell_diameter``.
        Cutting higher outlines each cell tighter, so the same slide gives generous
        or tight outlines as the diameter asks: a lab that measures its cells
        generously gets them so, one that gives the diameter of the nucleus gets
        nuclei. With fewer than :data:`FIT_MIN_CELLS` cells it is
        :data:`CUT_FRACTION`. The fractions tried are 0.5 first (the edge of a
        blurred cell), then 0.35, then 0.25 or 0.425; each is measured on the zones'
        cuts with their holes filled (the splits that follow change few cells), and
        the slide is labelled once, at the fraction chosen.
    info:
        A dict that receives ``"cut"`` (the fraction used) and ``"median_diameter"``
        (of the cells clear of the border, pixels; NaN with none).
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
        map_labels = _proposed_on_grid(att, dict(threshold="local", cell_diameter=d,
                                                  min_size=min_size))
    elif map_labels.shape != img.shape:
        raise ValueError(f"map_labels has shape {map_labels.shape}, the image {img.shape}")
    fixed = _check_cut(cut)
    n = int(map_labels.max())
    if n == 0 or _constant(img):
        found = _finish(np.asarray(map_labels, np.int64))
        _tell(info, CUT_FRACTION if fixed is None else fixed, found)
        return found
    level = ndi.gaussian_filter(img, sigma)
    zones, regions = _zones_on_grid(map_labels, d)
    free = level[zones == 0]
    if free.size:
        background, sd = _robust_level(free)  # two medians of up to a whole slide: once
        floor = _floor_above(background, sd)
    else:  # zones cover the slide: no background to measure the noise of
        background = floor = float(level.min())
    own = _cell_levels(level, att, map_labels, n)

    def outlined(fraction: float) -> np.ndarray:
        cells = _cut(level, zones, own, background, floor, fraction)
        return fill_concave(divide_large(_split_cells(cells, regions, d), min_size,
                                         in_place=True),
                            max_area=CONCAVE_MAX_CELLS * math.pi * d * d / 4, in_place=True)

    step = max(1, int(d // MEASURE_STEP_DIAMETER))
    grid = (slice(None, None, step),) * 2
    level_grid, zones_grid = level[grid], zones[grid]

    def measured(fraction: float) -> tuple[float, int]:
        """The cells' median diameter and count at ``fraction``, from the zones' cuts
        with their holes filled (the labelling's but for the splits, which part few
        cells), on every ``step``-th pixel of each axis."""
        cells = fill_holes_each(_cut(level_grid, zones_grid, own, background, floor, fraction))
        count = int(np.count_nonzero(np.bincount(cells.ravel())[1:]))
        return median_diameter(cells) * step, count

    if fixed is not None:
        fraction = fixed
    elif n < FIT_MIN_CELLS:
        fraction = CUT_FRACTION
    else:
        fraction = _fitted_cut(measured, d)
    found = outlined(fraction)
    _tell(info, fraction, found)
    return found


def _check_cut(cut: float | str) -> float | None:
    """The fixed fraction ``cut`` names, or None for ``"auto"``."""
    if isinstance(cut, str):
        if cut == "auto":
            return None
        try:
            cut = float(cut)
        except ValueError:
            raise ValueError(f"cut must be 'auto' or a fraction between 0 and 1, got {cut!r}") from None
    if isinstance(cut, bool) or not isinstance(cut, numbers.Real) or not 0 < float(cut) < 1:
        raise ValueError(f"cut must be 'auto' or a fraction between 0 and 1, got {cut!r}")
    return float(cut)


def _fitted_cut(measured: Any, d: float) -> float:
    """The fraction of :data:`CUT_RANGE` (tried: 0.5; 0.35; then 0.25 or 0.425) whose
    cells' median diameter comes closest to ``d`` (in ratio); :data:`CUT_FRACTION`
    with fewer than :data:`FIT_MIN_CELLS` cells. ``measured(fraction)``: the median
    diameter and the number of cells. A higher cut never widens a cell, so the search
    walks down from the top."""
    low, high = CUT_RANGE
    widths: dict[float, float] = {}
    widths[high], count = measured(high)
    if count < FIT_MIN_CELLS:  # too few cells to measure
        return CUT_FRACTION
    if not widths[high] < d:  # as wide as asked even at the cell's edge
        return high
    middle = CUT_FRACTION
    widths[middle] = measured(middle)[0]
    last = low if widths[middle] <= d else (middle + high) / 2
    widths[last] = measured(last)[0]

    def miss(fraction: float) -> float:
        m = widths[fraction]
        return abs(math.log(m / d)) if m > 0 else math.inf

    return min(sorted(widths), key=miss)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter (pixels) of the cells that do not touch the image
    border (all cells where none is clear of it); NaN without cells."""
    from .labels import drop_border_cells

    for cells in (drop_border_cells(labels), labels):
        areas = np.bincount(np.asarray(cells).ravel())[1:]
        areas = areas[areas > 0]
        if areas.size:
            return float(np.median(np.sqrt(4.0 * areas / math.pi)))
    return float("nan")


def _tell(info: dict | None, fraction: float, labels: np.ndarray) -> None:
    if info is not None:
        info["cut"] = round(float(fraction), 4)
        info["median_diameter"] = median_diameter(labels)


def proposed_cells(attention_map: np.ndarray, **options: Any) -> np.ndarray:
    """The cells the map proposes for :func:`guided_labels` to outline:
    :func:`~napari_atagan.slides.labels.attention_to_labels` with ``options``, its peaks
    taken from :data:`PROPOSAL_MADS` robust spreads above the map's median (the image
    confirms every one)."""
    return attention_to_labels(attention_map, noise_mads=PROPOSAL_MADS, **options)


def label_cells(attention_map: Any, image: Any, *, outline: str = "image",
                threshold: str | float = "auto", min_size: int = 0,
                cell_diameter: float | None = None, cut: float | str = "auto",
                info: dict | None = None, find: str = "both") -> np.ndarray:
    """The cells of a slide (or of every plane of a ``(T, Y, X)`` stack) from its map.

    ``outline="image"``: :func:`guided_labels` (needs ``cell_diameter``; the cells
    the map proposes are found with ``threshold`` and ``min_size``, :func:`proposed_cells`,
    and then outlined by the image); ``"map"``: :func:`napari_atagan.slides.labels.attention_to_labels`
    alone. Ids are unique over a stack. The one labelling the CLI and the
    napari widget share. ``cut`` and ``info``: as :func:`guided_labels` takes them
    (with a stack, ``info`` gets a list per key, one value per plane; the map's own
    labelling has no cut). ``find`` (with ``outline="image"``): the map the cells are
    found and seeded in, one of :data:`FINDS`: ``"both"`` (the default), :func:`seed_map`
    of the attention and the model-free blob map; ``"attention"``, the attention alone;
    ``"blob"``, :func:`blob_map` alone, so no model decides which cells there are (the
    attention map is then not used). On slides of a pattern the model never saw, and on
    sparse nuclei, the blob map alone found cells best (docs/RESULTS.md, *The map the
    labelling needs*).

    With ``outline="image"`` and cells at least twice :data:`WORK_DIAMETER` pixels
    across, the map's proposals and their zones are found on blocks of :func:`working_step`
    pixels; the image outlines the cells at every pixel.
    """
    if outline not in OUTLINES:
        raise ValueError(f"outline must be one of {', '.join(OUTLINES)}, got {outline!r}")
    if find not in FINDS:
        raise ValueError(f"find must be one of {', '.join(FINDS)}, got {find!r}")
    if outline == "map" and find != "both":
        raise ValueError(f"find={find!r} chooses the map that seeds the image's outlines: "
                         "it needs outline='image' (outline='map' cuts the cells from the "
                         "attention map itself)")
    att = np.asarray(attention_map)
    options = dict(threshold=threshold, min_size=min_size, cell_diameter=cell_diameter)
    if outline == "map":
        return attention_to_labels(att, **options)
    if cell_diameter is None:
        raise ValueError("outlining cells by the image needs the cell diameter")
    _check_cut(cut)

    def outlined(a: Any, img: Any, told: dict | None) -> np.ndarray:
        img = np.asarray(img)
        if find == "both":
            m = seed_map(a, img, cell_diameter)
        elif find == "blob":
            m = _blob_beside(a, img, cell_diameter)
        else:
            m = a
        return guided_labels(img, m, cell_diameter, min_size=min_size, cut=cut, info=told,
                             map_labels=_proposed_on_grid(m, options))

    if att.ndim == 2:
        return outlined(att, image, info)
    if att.ndim != 3:
        raise ValueError(f"attention map must be 2-D or a (T, Y, X) stack, got shape {att.shape}")
    told: list[dict] = []

    def plane(t: int) -> np.ndarray:
        told.append({})
        return outlined(att[t], image[t], told[-1])

    labels = number_planes((plane(t) for t in range(att.shape[0])), att.shape)
    if info is not None:
        info.update({key: [each[key] for each in told] for key in ("cut", "median_diameter")})
    return labels


def _proposed_on_grid(m: Any, options: dict[str, Any]) -> np.ndarray:
    """:func:`proposed_cells` of the map ``m`` with ``options``, found on blocks of
    :func:`working_step` pixels (the map's block means; the diameter and the smallest
    cell scaled to match) and drawn back at the map's size."""
    m = _grey(m, "attention map")
    f = working_step(options["cell_diameter"], m.shape)
    if f == 1:
        return proposed_cells(m, **options)
    small = -(-int(options["min_size"]) // (f * f))  # the same area on the grid, rounded up
    found = proposed_cells(_block_mean(m, f), **{**options, "min_size": small,
                                                 "cell_diameter": float(options["cell_diameter"]) / f})
    return _block_repeat(found, f, m.shape)


def working_step(cell_diameter: float, shape: tuple[int, ...] = ()) -> int:
    """The side ``f`` (pixels) of the blocks on which :func:`label_cells` finds the cells
    the map proposes: ``d // WORK_DIAMETER`` for cells of diameter ``d``, at least 1,
    and small enough that each side of ``shape`` keeps :data:`WORK_MIN_SIDE` blocks."""
    f = max(1, int(_diameter(cell_diameter) // WORK_DIAMETER))
    for n in shape:
        f = max(1, min(f, int(n) // WORK_MIN_SIDE))
    return f


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """The means of ``f x f`` blocks of a 2-D float32 array (the last row and column
    repeated to fill the blocks at its end); ``a`` itself when ``f`` is 1."""
    if f == 1:
        return a
    pad = ((0, -a.shape[0] % f), (0, -a.shape[1] % f))
    if any(p for _, p in pad):
        a = np.pad(a, pad, mode="edge")
    h, w = a.shape[0] // f, a.shape[1] // f
    return a.reshape(h, f, w, f).mean(axis=(1, 3), dtype=np.float32)


def _block_repeat(labels: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    """Labels of ``f x f`` blocks drawn back at ``shape``: every pixel takes its block's."""
    if f == 1:
        return labels
    full = np.repeat(np.repeat(labels, f, axis=0), f, axis=1)[:shape[0], :shape[1]]
    return np.ascontiguousarray(full)


def split_large(labels: np.ndarray, min_size: int = 0, *,
                ratio: float = SPLIT_AREA, in_place: bool = False) -> np.ndarray:
    """Objects of at least ``ratio`` times the median object divided into ``k`` cells.

    ``k = round(area / median)`` (at most ``area // min_size``): the object's pixels
    go to the nearest of ``k`` centres placed by k-means on their coordinates
    (seeded, so the result is the same every time). An object of two parts must be
    :data:`PAIR_ELONGATION` times as long as wide. The median is taken over the
    objects of at least ``min_size`` pixels. Only the divided objects change: each
    keeps its id for one part, the others get ids above the largest one. Meant for
    one slide (or one plane): its cells are of one kind and vary little in size.
    ``in_place``: write into ``labels`` where its dtype holds the new ids (no copy of a
    large slide's labels).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must hold integer cell ids, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
        raise ValueError("labels must be 0 (background) or positive cell ids, "
                         f"found {int(labels.min())}")
    if labels.dtype.kind == "b" or labels.dtype == np.uint64:
        labels = labels.astype(np.int64)
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    counted = areas[areas >= max(int(min_size), 1)]
    if counted.size == 0:
        return labels
    typical = float(np.median(counted))
    parts = np.round(areas / typical).astype(np.int64)
    if min_size > 1:
        parts = np.minimum(parts, areas // int(min_size))
    large = np.flatnonzero((areas >= ratio * typical) & (parts >= 2))
    if large.size == 0:
        return labels
    from scipy.cluster.vq import kmeans2

    extra = int((parts[large] - 1).sum())
    top = areas.size - 1  # the largest id
    need = np.min_scalar_type(top + extra)
    out = (labels if in_place and np.can_cast(need, labels.dtype)
           else labels.astype(np.result_type(labels.dtype, need)))
    boxes = ndi.find_objects(labels)
    following = top + 1
    for i in large:
        box = boxes[i - 1]
        inside = labels[box] == i
        yx = np.argwhere(inside).astype(np.float64)
        k = int(parts[i])
        if k == 2 and _elongation(yx) < PAIR_ELONGATION:  # one large round cell
            continue
        with warnings.catch_warnings():  # a centre left without pixels only loses its id
            warnings.simplefilter("ignore")
            _, which = kmeans2(yx, k, iter=20, minit="++", seed=np.random.default_rng(0))
        ids = np.concatenate([[i], np.arange(following, following + k - 1)])
        out[box][inside] = ids[which]
        following += k - 1
    return out


def divide_large(labels: np.ndarray, min_size: int = 0, *, in_place: bool = False
                 ) -> np.ndarray:
    """:func:`split_large`, then parts under ``min_size`` pixels dropped and the cells
    numbered 1..N (``uint16``; ``uint32`` above 65,535 cells), as the labellings here
    return them."""
    return _finish(split_large(labels, min_size, in_place=in_place), min_size)


def fill_concave(labels: np.ndarray, solidity: float = CONCAVE_SOLIDITY, *,
                 max_area: float | None = None, in_place: bool = False) -> np.ndarray:
    """Every cell whose area is less than ``solidity`` of its convex hull's gets the
    pixels of that hull that are background (no other cell's pixel changes); with
    ``max_area``, only a cell whose hull is no larger than that many pixels.

    The hull is that of the cell's pixel squares (the corners at each row's two ends
    span it); a pixel joins where its centre lies inside. Cells are taken in id order,
    each against the labels as the cells before it left them. ``in_place``: write into
    ``labels`` (2-D, integer ids) rather than a copy.
    """
    from scipy.spatial import ConvexHull, QhullError
    from skimage.draw import polygon

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must hold integer cell ids, got dtype {labels.dtype}")
    if not 0 < solidity <= 1:
        raise ValueError(f"solidity must be in (0, 1], got {solidity}")
    out = labels if in_place else labels.copy()
    for i, box in enumerate(ndi.find_objects(labels), 1):
        if box is None:
            continue
        view = out[box]
        cell = view == i
        rows = np.flatnonzero(cell.any(axis=1))
        if rows.size < 2:
            continue
        ends = cell[rows]
        first = ends.argmax(axis=1)
        last = ends.shape[1] - 1 - ends[:, ::-1].argmax(axis=1)
        corners = np.empty((4, rows.size, 2))  # both ends of each row, both its edges
        corners[:, :, 0] = rows + np.array([-0.5, 0.5, -0.5, 0.5])[:, None]
        corners[:2, :, 1] = first - 0.5
        corners[2:, :, 1] = last + 0.5
        corners = corners.reshape(-1, 2)
        try:
            hull = ConvexHull(corners)
        except QhullError:  # a single column: no area
            continue
        if np.count_nonzero(cell) >= solidity * hull.volume:  # 2-D: volume is the area
            continue
        if max_area is not None and hull.volume > max_area:  # the notch between cells
            continue
        vertices = corners[hull.vertices]
        rr, cc = polygon(vertices[:, 0], vertices[:, 1], shape=cell.shape)
        inside = np.zeros(cell.shape, dtype=bool)
        inside[rr, cc] = True
        view[inside & (view == 0)] = i
    return out


def _elongation(yx: np.ndarray) -> float:
    """Length over width of a set of pixel coordinates (square root of the ratio of the
    eigenvalues of their covariance): 1 for a disc, 2.2 for two touching discs."""
    low, high = np.linalg.eigvalsh(np.cov(yx.T))
    return float(np.sqrt(high / max(low, 1e-12)))


# ---------------------------------------------------------------------------


def _cell_levels(level: np.ndarray, att: np.ndarray, map_labels: np.ndarray,
                 n: int) -> np.ndarray:
    """Step 1 of the module notes: each map cell's own level (index 0 unused), the
    :data:`BRIGHT_PCT` percentile of the smoothed image in its seed."""
    inner = np.flatnonzero(map_labels > 0)
    own = map_labels.ravel()[inner].astype(np.int64)
    att_own = att.ravel()[inner]
    peak = np.zeros(n + 1, np.float32)
    np.maximum.at(peak, own, att_own)
    seed = att_own >= SEED_FRACTION * peak[own]  # a seed: the core of its map cell
    bright = np.zeros(n + 1)
    bright[1:] = grouped_percentiles(level.ravel()[inner[seed]], own[seed], np.arange(1, n + 1),
                                     BRIGHT_PCT)
    return bright


def _cut(level: np.ndarray, zones: np.ndarray, bright: np.ndarray, background: float,
         floor: float, fraction: float) -> np.ndarray:
    """Step 2 of the module notes: each zone's pixels above ``fraction`` of the way from
    the ``background`` to its cell's level ``bright``; seeds whose own level is not above
    the image's noise ``floor`` are no cells.

    Only the zones can hold cells, so only their pixels are looked at.
    """
    cut = background + fraction * (bright - background)
    cut[bright <= floor] = np.inf  # the image shows nothing there
    cut[0] = np.inf
    reach = np.flatnonzero(zones)
    zone = zones.ravel()[reach]
    above = level.ravel()[reach] > cut[zone]
    cells = np.zeros(zones.shape, zones.dtype)
    flat = cells.ravel()
    flat[reach[above]] = zone[above]
    return cells


def _split_cells(cells: np.ndarray, regions: list | None, d: float) -> np.ndarray:
    """``_distance_split(fill_holes_each(cells) > 0, d)``, region by region of the zones.

    A cell lies in its zone, a hole of it in its box and so in its region: each
    region's cells are filled and split on their own, over the region's box (and one
    pixel around it). Only the numbering spans regions: the pieces of the mask are
    ordered as ``ndi.label`` numbers them, by their first pixel in raster order, and
    their peaks, in that order, number the markers. A piece with one marker is that
    marker's basin; the others are flooded as in
    :func:`~napari_atagan.slides.labels._flood_piece`.
    """
    if regions is None:
        return _distance_split(fill_holes_each(cells) > 0, d)
    min_distance = _seed_spacing(d)
    parts = []
    for box, inside in regions:
        crop = _grown(box, 1, cells.shape)
        own = np.zeros(tuple(s.stop - s.start for s in crop), bool)
        own[_within(box, crop)] = inside
        mask = fill_holes_each(np.where(own, cells[crop], 0)) > 0
        if mask.all():  # the region fills the image: no background to measure to
            return _distance_split(fill_holes_each(cells) > 0, d)
        part = _Part(crop, mask, min_distance, cells.shape[1])
        if part.count:
            parts.append(part)
    labels = np.zeros(cells.shape, np.int32)
    if not parts:
        return labels
    # number the markers and the unmarked pieces as in the whole image
    first = np.concatenate([part.first for part in parts])
    which = np.concatenate([np.full(part.count, i) for i, part in enumerate(parts)])
    local = np.concatenate([np.arange(1, part.count + 1) for part in parts])
    order = np.argsort(first)
    sizes = np.array([len(parts[i].peaks[j - 1]) for i, j in zip(which[order], local[order])])
    start = np.zeros(len(order), np.int64)
    start[order] = np.cumsum(sizes) - sizes  # markers before each piece's own
    total = int(sizes.sum())
    unmarked = np.zeros(len(order), np.int64)
    unmarked[order] = total + np.cumsum(sizes == 0)
    for i, part in enumerate(parts):
        lo = np.flatnonzero(which == i)
        part.number(start[lo], unmarked[lo])
    floods = []
    for part in parts:
        floods.append(part.flood())
        if floods[-1] is None:
            break
    if floods[-1] is not None:
        for part, flooded in zip(parts, floods):
            labels[part.crop][part.mask] = flooded[part.mask]
    else:  # markers of one level whose order in the whole image's heap matters
        mask = np.zeros(cells.shape, bool)
        distance = np.zeros(cells.shape)
        markers = np.zeros(cells.shape, np.int32)
        for part in parts:
            mask[part.crop] |= part.mask
            distance[part.crop][part.mask] = part.dist[part.mask]
            markers[part.crop][part.mask] = part.markers[part.mask]
        labels = watershed(-distance, markers, mask=mask)
    for part in parts:
        part.fill_unmarked(labels)
    return labels


class _Part:
    """One region's mask for :func:`_split_cells`: its pieces, distance transform and
    peaks (in the crop's coordinates, which reach a pixel beyond every piece's box),
    then its markers once they are numbered."""

    def __init__(self, crop: tuple[slice, slice], mask: np.ndarray, min_distance: int,
                 width: int) -> None:
        self.crop, self.mask = crop, mask
        self.pieces, self.count = ndi.label(mask)
        if not self.count:
            return
        self.boxes = ndi.find_objects(self.pieces)
        self.dist = np.zeros(mask.shape)
        self.peaks, first = [], []
        for k, box in enumerate(self.boxes, start=1):
            # as in _distance_split: a piece's nearest background is within a pixel of its box
            grown = _grown(box, 1, mask.shape)
            piece = self.pieces[grown] == k
            self.dist[grown][piece] = ndi.distance_transform_edt(piece)[piece]
            inside = self.pieces[box] == k
            found = _round_peaks(self.dist[box], inside, min_distance)
            self.peaks.append(found + [box[0].start, box[1].start])
            col = int(np.argmax(inside[0]))  # the piece's first pixel, in raster order
            first.append((crop[0].start + box[0].start) * width + crop[1].start
                         + box[1].start + col)
        self.first = np.array(first, np.int64)

    def number(self, start: np.ndarray, unmarked: np.ndarray) -> None:
        """Markers ``start[k] + 1, ...`` at the peaks of piece ``k + 1``; ``unmarked[k]``
        the id of the piece if it has no peak."""
        self.markers = np.zeros(self.mask.shape, np.int32)
        level = []
        for k, found in enumerate(self.peaks):
            self.markers[tuple(found.T)] = start[k] + np.arange(1, len(found) + 1)
            level.append(self.dist[tuple(found.T)])
        self.unmarked = unmarked
        at = tuple(np.concatenate(self.peaks).T)
        self.apart = _apart(self.pieces[at], np.concatenate(level))

    def flood(self) -> np.ndarray | None:
        """The part flooded as in the whole image (None: not known, see
        :func:`~napari_atagan.slides.labels._flood_piece`)."""
        out = np.zeros(self.mask.shape, np.int32)
        several = []
        for k, box in enumerate(self.boxes, start=1):
            if len(self.peaks[k - 1]) == 1:  # one marker: the whole piece is its basin
                out[box][self.pieces[box] == k] = self.markers[tuple(self.peaks[k - 1][0])]
            elif len(self.peaks[k - 1]):
                several.append(k)
        if not several:
            return out
        surface = -self.dist
        if self.apart:  # all those pieces at once, in the box that holds them
            box = tuple(slice(min(self.boxes[k - 1][a].start for k in several),
                              max(self.boxes[k - 1][a].stop for k in several)) for a in (0, 1))
            chosen = np.zeros(self.count + 1, bool)
            chosen[several] = True
            inside = chosen[self.pieces[box]]
            out[box][inside] = watershed(surface[box], self.markers[box], mask=inside)[inside]
            return out
        for k in several:
            box = self.boxes[k - 1]
            piece = self.pieces[box] == k
            flooded = _flood_piece(surface[box], self.markers[box], piece)
            if flooded is None:
                return None
            out[box][piece] = flooded[piece]
        return out

    def fill_unmarked(self, labels: np.ndarray) -> None:
        """Give each piece without a peak its own id (in ``labels``, the whole image)."""
        for k, found in enumerate(self.peaks):
            if not len(found):
                box = self.boxes[k]
                view = labels[self.crop][box]
                view[self.pieces[box] == k + 1] = self.unmarked[k]


def _seed_spacing(d: float) -> int:
    """How far apart (pixels) the distance split's seeds lie at least: half a diameter."""
    return max(1, int(round(d / 2)))


def _distance_split(mask: np.ndarray, d: float, *, rule: str = "round") -> np.ndarray:
    """Watershed on the distance to the edge, seeded by its maxima half a diameter apart.

    ``rule="square"`` spaces the seeds as skimage does, and the split is
    ``watershed(-distance, markers, mask=mask)`` with the markers of
    ``peak_local_max(distance, min_distance=..., labels=ndi.label(mask)[0],
    exclude_border=False)`` on the whole image (``distance`` its
    ``distance_transform_edt``); ``"round"`` (:func:`guided_labels`' rule) spaces them in
    every direction alike (:func:`_round_peaks`). Either is found piece by piece of the
    mask: a piece's nearest background pixels all lie within one pixel of its box (the
    open disc up to the nearest one is inside the piece), peaks are found object by
    object anyway, and :func:`~napari_atagan.slides.labels._flood` floods pieces apart.
    """
    peaks_of = {"square": _object_peaks, "round": _round_peaks}[rule]
    min_distance = _seed_spacing(d)
    pieces, n = ndi.label(mask)
    if n == 0:
        return np.zeros(mask.shape, np.int64)
    if mask.all():  # no background: the distance transform has nothing to measure to
        return _distance_split_whole(mask, min_distance, peaks_of)
    boxes = ndi.find_objects(pieces)
    distance = np.zeros(mask.shape)
    found = []
    for k, box in enumerate(boxes, start=1):
        grown = _grown(box, 1, mask.shape)
        piece = pieces[grown] == k
        dist = ndi.distance_transform_edt(piece)
        distance[grown][piece] = dist[piece]
        inner = _within(box, grown)
        peaks = peaks_of(dist[inner], piece[inner], min_distance)
        found.append(peaks + [box[0].start, box[1].start])
    peaks = np.concatenate(found)
    labels = _flood(distance, peaks, mask, pieces, boxes)
    # an object whose distance maxima all fell to a larger neighbour's exclusion zone
    unmarked = np.ones(n + 1, bool)
    unmarked[pieces[tuple(peaks.T)]] = False
    unmarked[0] = False
    for rank, k in enumerate(np.flatnonzero(unmarked).tolist(), start=1):
        box = boxes[k - 1]
        labels[box][pieces[box] == k] = len(peaks) + rank
    return labels


def _object_peaks(dist: np.ndarray, inside: np.ndarray, min_distance: int) -> np.ndarray:
    """The peaks ``peak_local_max`` finds with ``labels`` in one object: ``dist`` is
    the distance inside the object's box, ``inside`` the object there.

    Maxima of the distance over the object's part of a square of side
    ``2 * min_distance + 1`` that are above 0 (the smallest distance in the image),
    best first (ties in raster order), then spaced as :func:`~napari_atagan.slides.labels._spaced`.
    """
    return _spaced(_square_maxima(dist, inside, min_distance), min_distance)


def _round_peaks(dist: np.ndarray, inside: np.ndarray, min_distance: int) -> np.ndarray:
    """The distance split's seeds in one object, at least ``min_distance`` apart in every
    direction: the maxima over squares inscribed in a circle of that radius (the
    highest first), each kept unless it lies nearer than ``min_distance`` to one kept
    before it.

    skimage's rule (:func:`_object_peaks`) compares along the axes: its square window
    and its spacing reach ``min_distance`` along a row but 1.41 times as far along a
    diagonal, so of two touching cells that lie diagonally, pressed a little together,
    the dimmer peak was lost and the pair left as one cell.
    """
    inscribed = max(1, int(min_distance / math.sqrt(2)))
    return _spaced_round(_square_maxima(dist, inside, inscribed), min_distance)


def _square_maxima(dist: np.ndarray, inside: np.ndarray, reach: int) -> np.ndarray:
    """Maxima of ``dist`` over the object's part of a square of side ``2 * reach + 1``,
    above 0, best first (ties in raster order), as ``peak_local_max`` finds them before
    spacing them."""
    img = np.where(inside, dist, np.finfo(dist.dtype).min)
    if img.size == 1:
        found = img > 0
    else:  # the square footprint of skimage, as a size (the same maxima, fewer checks)
        found = img == ndi.maximum_filter(img, size=2 * reach + 1, mode="nearest")
        if np.all(found[inside]):  # skimage's flat object: its isolated pixels
            found[:] = False
            found[np.logical_xor(inside, ndi.binary_opening(inside))] = True
        found &= img > 0
    ys, xs = np.nonzero(found)
    return np.stack([ys, xs], axis=1)[np.argsort(-img[ys, xs], kind="stable")]


def _spaced_round(coords: np.ndarray, min_distance: int) -> np.ndarray:
    """Of ``coords`` sorted best first, each kept unless it lies nearer than
    ``min_distance`` (Euclidean) to one kept before it."""
    if min_distance <= 1 or len(coords) < 2:
        return coords
    r = min_distance
    y, x = np.ogrid[1 - r:r, 1 - r:r]
    near = y * y + x * x < r * r
    low = coords.min(axis=0) - (r - 1)
    taken = np.zeros(tuple(coords.max(axis=0) + r - low), dtype=bool)
    keep = np.zeros(len(coords), dtype=bool)
    for i, (cy, cx) in enumerate((coords - low).tolist()):
        if not taken[cy, cx]:
            keep[i] = True
            taken[cy - r + 1:cy + r, cx - r + 1:cx + r] |= near
    return coords[keep]


def _distance_split_whole(mask: np.ndarray, min_distance: int, peaks_of) -> np.ndarray:
    """:func:`_distance_split` the plain way, on the whole image at once (``peaks_of``:
    the rule for one object's seeds; skimage's own ``peak_local_max`` for
    :func:`_object_peaks`)."""
    distance = ndi.distance_transform_edt(mask)
    if peaks_of is _object_peaks:
        peaks = peak_local_max(distance, min_distance=min_distance, labels=ndi.label(mask)[0],
                               exclude_border=False)
    else:
        peaks = peaks_of(distance, mask, min_distance)
    markers = np.zeros(mask.shape, np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=mask)
    rest = ndi.label(mask & (labels == 0))[0]
    return np.where(labels > 0, labels, np.where(rest > 0, rest + labels.max(), 0))


def _zones(map_labels: np.ndarray, d: float) -> np.ndarray:
    """Every pixel within ZONE_GROWTH diameters of a map cell, given to the nearest one;
    and the regions (box, pixels in the box) that hold them (None: not worked out).

    One distance transform with its nearest-pixel indices; a watershed of the map
    from the seeds drew the same zones (object F1 0.795 against 0.794 on the
    training-part touching mosaics) at 1.5 times the cost of the whole labelling.

    The transform runs on the boxes of *regions*, not on the whole slide: a region
    joins the cells whose boxes, widened by the zone's reach, overlap or touch. A
    pixel within reach of a cell lies in that cell's widened box, so every cell within
    reach of a pixel (every candidate for its nearest) is in the pixel's region; the
    transform picks the nearest pixel among those alone (of equally near ones, the one
    of the lowest column, then row), so the crop gives each zone pixel the cell that
    the whole image gives it.
    """
    reach = ZONE_GROWTH * d
    labels = np.asarray(map_labels)
    if labels.dtype.kind not in "iu":
        distance, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        return np.where(distance <= reach, labels[iy, ix], 0), None
    margin = int(math.floor(reach))  # a pixel within reach is at most this far along each axis
    widened = [_grown(box, margin, labels.shape) for box in ndi.find_objects(labels)
               if box is not None]
    cover = np.zeros(labels.shape, bool)
    for box in widened:
        cover[box] = True
    regions, count = ndi.label(cover)
    # a region's box: that of its cells' widened boxes (each holds its own first pixel)
    corner = np.array([[b[0].start, b[0].stop, b[1].start, b[1].stop] for b in widened])
    which = regions[corner[:, 0], corner[:, 2]]
    low = np.full((count + 1, 2), np.iinfo(np.int64).max)
    high = np.zeros((count + 1, 2), np.int64)
    np.minimum.at(low, which, corner[:, [0, 2]])
    np.maximum.at(high, which, corner[:, [1, 3]])
    # distance_transform_edt's distance is sqrt(float(dy**2 + dx**2)): within reach up to
    # this many squared pixels
    within = int(math.floor(reach * reach)) + 2
    while within >= 0 and math.sqrt(float(within)) > reach:
        within -= 1
    wide = np.int64 if max(labels.shape) > 30000 else np.int32  # no overflow of dy**2 + dx**2
    zones = np.zeros(labels.shape, labels.dtype)
    found = []
    for k in range(1, count + 1):
        box = (slice(int(low[k, 0]), int(high[k, 0])), slice(int(low[k, 1]), int(high[k, 1])))
        near = labels[box]
        inside = regions[box] == k
        iy, ix = ndi.distance_transform_edt(near == 0, return_distances=False,
                                            return_indices=True).astype(wide, copy=False)
        dy = iy - np.arange(near.shape[0], dtype=wide)[:, None]
        dx = ix - np.arange(near.shape[1], dtype=wide)[None, :]
        take = (dy * dy + dx * dx <= within) & inside
        zones[box][take] = near[iy[take], ix[take]]
        found.append((box, inside))
    return zones, found


def _zones_on_grid(map_labels: np.ndarray, d: float) -> tuple[np.ndarray, list | None]:
    """:func:`_zones`, found on blocks of :func:`working_step` pixels where the map's cells
    are drawn in such blocks (as :func:`label_cells` proposes them) and drawn back: the
    zones' edges step by a block, as the proposals' do."""
    shape = map_labels.shape
    f = working_step(d, shape)
    if f == 1:
        return _zones(map_labels, d)
    small = np.ascontiguousarray(map_labels[::f, ::f])
    if not np.array_equal(_block_repeat(small, f, shape), map_labels):
        return _zones(map_labels, d)
    zones, regions = _zones(small, d / f)
    if regions is None:
        return _block_repeat(zones, f, shape), None
    drawn = []
    for box, inside in regions:
        big = tuple(slice(b.start * f, min(b.stop * f, n)) for b, n in zip(box, shape))
        inside = np.repeat(np.repeat(inside, f, axis=0), f, axis=1)
        drawn.append((big, inside[:big[0].stop - big[0].start, :big[1].stop - big[1].start]))
    return _block_repeat(zones, f, shape), drawn


def _finish(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Cells of at least ``min_size`` pixels numbered 1..N, ``uint16`` (``uint32``
    beyond 65,535 cells)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.dtype == np.uint64:  # as bincount takes them
        labels = labels.astype(np.int64)
    return _sequential(labels, min_size, narrow=True)


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
