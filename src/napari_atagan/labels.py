"""From an attention map to instance labels: one integer id per cell.

:func:`attention_to_labels` is a pure function of the map: changing the
threshold or the minimum size only re-runs these few array operations, never
the discriminator.

The steps, in order:

1. optional Gaussian smoothing of the map (``smooth``, in pixels);
2. threshold: Otsu's threshold of the (smoothed) map, or a fixed value;
3. fill holes inside each object;
4. drop objects smaller than ``min_size`` pixels;
5. split touching cells: a watershed on the distance to the object edge, seeded
   by the centres of the object (maxima of that distance that stand at least
   ``split_depth`` pixels above the neck that joins them to a neighbour);
6. drop fragments smaller than ``min_size`` again and number the cells
   1, 2, 3, ... with no gaps.

The result is ``uint16``, or ``uint32`` when there are more than 65,535 cells.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

DEFAULT_MIN_SIZE = 30
"""Default smallest object (pixels) kept; smaller specks are noise, not cells."""


def attention_to_labels(
    attention_map: np.ndarray,
    *,
    threshold: str | float = "otsu",
    min_size: int = DEFAULT_MIN_SIZE,
    smooth: float = 1.0,
    split_touching: bool = True,
    split_depth: float = 2.0,
) -> np.ndarray:
    """Turn an attention map into a label image (0 = background, 1..N = cells).

    Parameters
    ----------
    attention_map:
        2-D map (``Y, X``), or a stack ``T, Y, X`` that is labelled plane by plane
        with ids that stay unique over the whole stack.
    threshold:
        ``"otsu"`` (automatic, per plane) or a number: pixels whose (smoothed)
        attention is above it belong to cells.
    min_size:
        Objects (and fragments after splitting) with fewer pixels are removed.
    smooth:
        Gaussian sigma in pixels applied to the map before thresholding (0: none).
    split_touching:
        Split cells that touch by a watershed on the distance to the object edge.
    split_depth:
        How many pixels deeper the centre of each of two touching cells must lie
        than the neck between them for them to be split; larger values split less.

    A constant map (for example all zeros) has no cells and gives all zeros.
    """
    m = np.asarray(attention_map)
    if m.ndim == 3:
        return _label_stack(m, threshold=threshold, min_size=min_size, smooth=smooth,
                            split_touching=split_touching, split_depth=split_depth)
    if m.ndim != 2:
        raise ValueError(
            f"attention map must be 2-D (Y, X) or a 3-D stack (T, Y, X), got shape {m.shape}"
        )
    _check_options(threshold, min_size, smooth, split_depth)
    labels = _label_plane(m, threshold, min_size, smooth, split_touching, split_depth)
    return _narrow(labels)


def _label_stack(stack: np.ndarray, **options) -> np.ndarray:
    planes = []
    offset = 0
    for plane in stack:
        lab = attention_to_labels(plane, **options).astype(np.int64)
        lab[lab > 0] += offset
        offset = max(offset, int(lab.max()))
        planes.append(lab)
    if not planes:
        return np.zeros(stack.shape, dtype=np.uint16)
    return _narrow(np.stack(planes))


def _check_options(threshold, min_size, smooth, split_depth) -> None:
    if isinstance(threshold, str):
        if threshold.lower() != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a number, got {threshold!r}")
    elif not np.isfinite(float(threshold)):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0 pixels, got {smooth}")
    if split_depth <= 0:
        raise ValueError(f"split_depth must be > 0 pixels, got {split_depth}")


def _label_plane(m, threshold, min_size, smooth, split_touching, split_depth) -> np.ndarray:
    m = m.astype(np.float32, copy=False)
    if not np.all(np.isfinite(m)):
        raise ValueError("attention map contains NaN or infinite values")
    if m.size == 0 or float(m.max()) - float(m.min()) <= 1e-12:
        return np.zeros(m.shape, dtype=np.int64)
    if smooth > 0:
        m = ndi.gaussian_filter(m, sigma=float(smooth))
    mask = m > _threshold_value(m, threshold)
    mask = ndi.binary_fill_holes(mask)
    mask = _remove_small(ndi.label(mask)[0], min_size) > 0
    if split_touching:
        labels = _split(mask, split_depth)
    else:
        labels = ndi.label(mask)[0]
    labels = _remove_small(labels, min_size)
    return relabel_sequential(labels)[0]


def _threshold_value(m: np.ndarray, threshold: str | float) -> float:
    if isinstance(threshold, str):
        return float(threshold_otsu(m))
    return float(threshold)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero every labelled object with fewer than ``min_size`` pixels."""
    if min_size <= 1 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    too_small = sizes < min_size
    too_small[0] = False
    labels = labels.copy()
    labels[too_small[labels]] = 0
    return labels


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


def _narrow(labels: np.ndarray) -> np.ndarray:
    """uint16 when the ids fit, else uint32."""
    top = int(labels.max()) if labels.size else 0
    return labels.astype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)
