"""Evaluation: attention maps against masks, baselines, and sample quality.

Three families of measures, all on plain arrays (numpy; torch only where it
makes the work fast):

* **Masks and objects.** :func:`pixel_iou` compares two binary masks;
  :func:`match_objects` pairs the cells of two label images one-to-one by their
  overlap and counts hits and misses (object precision, recall and F1 at an
  IoU threshold, 0.5 by default); :func:`recall_by_contrast` splits the true
  cells found by how far they stand out from the background
  (:func:`cell_contrast`). :func:`threshold_map` turns an attention map into a
  mask.
* **Where the attention goes.** :func:`pointing_game` asks whether the most
  attended pixel lies on the cell; :func:`attention_mass_inside` measures how
  much of the attention falls on it.
* **Baselines that need no model**, to put every number in context:
  :func:`otsu_baseline` (Otsu threshold of the smoothed image) and
  :func:`ellipse_baseline` (a fixed centred ellipse, a strong guess on crops
  that are centred on a cell).
* **Sample quality.** :func:`sliced_wasserstein` compares the local texture of
  two image sets at several scales (needs no trained network);
  :func:`kid` is the kernel inception distance on feature vectors, for instance
  those of the product's own pattern classifier (:func:`classifier_features`);
  :func:`lattice_ratio` finds a periodic artifact (a lattice of lines) in
  generated cells as an excess of power at one fine frequency.

Conventions: masks are boolean (any non-zero value counts as inside); label
images hold 0 for background and a positive integer per object.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

__all__ = [
    "CONTRAST_EDGES",
    "ELLIPSE_FRACTION",
    "attention_mass_inside",
    "cell_contrast",
    "classifier_features",
    "ellipse_baseline",
    "kid",
    "match_objects",
    "otsu_baseline",
    "pixel_iou",
    "pointing_game",
    "recall_by_contrast",
    "lattice_ratio",
    "power_spectrum",
    "sample_diversity",
    "sliced_wasserstein",
    "threshold_map",
]

ELLIPSE_FRACTION = 0.7
"""Diameter of :func:`ellipse_baseline`'s ellipse as a fraction of the crop side.

Calibrated on the cell masks of real centred HEp-2 crops (I3A task 1, 300 cells
of each of the six patterns): 0.70-0.71 maximises the mean IoU with the true
mask (0.885 there; Otsu's threshold of the smoothed crop gets 0.64). Crop-level
numbers therefore prove little on their own: compare on slides or mosaics."""

OTSU_MIN_SIZE = 30
"""Default smallest object (pixels) that :func:`otsu_baseline` keeps."""


# ---------------------------------------------------------------------------
# masks and objects
# ---------------------------------------------------------------------------


def pixel_iou(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Intersection over union of two binary masks of the same shape.

    Non-zero pixels count as inside. When both masks are empty the prediction
    is perfect ("no cell here" is right), and the result is 1.0.
    """
    pred, true = _same_shape(pred_mask, true_mask, "pred_mask", "true_mask")
    pred, true = pred != 0, true != 0
    union = np.count_nonzero(pred | true)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & true) / union


def match_objects(
    pred_labels: np.ndarray, true_labels: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Match predicted cells to true cells one-to-one by IoU and score the result.

    A predicted and a true object match when their IoU is at least
    ``iou_threshold``; each object takes part in at most one match. Above 0.5 a
    match is necessarily unique (two objects cannot both overlap a third by more
    than half), otherwise the matching that maximises the summed IoU is used
    (Hungarian algorithm).

    Returns a dict with ``tp`` (matched pairs), ``fp`` (unmatched predictions),
    ``fn`` (unmatched true cells), ``precision = tp / (tp + fp)``,
    ``recall = tp / (tp + fn)``, ``f1`` and ``mean_matched_iou`` (mean IoU of the
    matched pairs; 0.0 when nothing matched). With no predictions precision,
    recall and F1 are 0; when neither image has any object all three are 1.0.
    """
    pred, true = _same_shape(pred_labels, true_labels, "pred_labels", "true_labels")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pred, n_pred = _compact_labels(pred, "pred_labels")
    true, n_true = _compact_labels(true, "true_labels")
    p_idx, t_idx, iou = _pair_ious(pred, n_pred, true, n_true)
    matched = _matches(p_idx, t_idx, iou, float(iou_threshold))[1]
    tp = int(matched.size)
    fp, fn = n_pred - tp, n_true - tp
    if n_pred == 0 and n_true == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (n_pred + n_true)
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "tp": tp,
        "fp": int(fp),
        "fn": int(fn),
        "mean_matched_iou": float(matched.mean()) if tp else 0.0,
    }


def _compact_labels(labels: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """Renumber the objects 1..n (0 stays background); return the image and n."""
    if labels.dtype.kind not in "biu":
        if labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer object ids, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} must not hold negative ids (0 is background)")
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    if ids.size and ids[0] != 0:  # no background pixel at all: ids start at 1
        inverse = inverse + 1
    n = int(ids.size - (1 if ids.size and ids[0] == 0 else 0))
    return inverse.reshape(labels.shape).astype(np.int64), n


def _pair_ious(pred: np.ndarray, n_pred: int, true: np.ndarray,
               n_true: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (pred, true) pair that overlaps, from one sparse contingency table.

    Returns 0-based object indices and the IoUs, one entry per overlapping pair.
    """
    area_p = np.bincount(pred.ravel(), minlength=n_pred + 1)
    area_t = np.bincount(true.ravel(), minlength=n_true + 1)
    both = (pred > 0) & (true > 0)
    pair = pred[both] * (n_true + 1) + true[both]
    keys, inter = np.unique(pair, return_counts=True)
    p, t = keys // (n_true + 1), keys % (n_true + 1)
    iou = inter / (area_p[p] + area_t[t] - inter)
    return p - 1, t - 1, iou


def _matches(p: np.ndarray, t: np.ndarray, iou: np.ndarray,
             threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matches among candidate pairs with IoU >= threshold:
    the matched true objects' 0-based indices and the matches' IoUs."""
    keep = iou >= threshold
    p, t, iou = p[keep], t[keep], iou[keep]
    if iou.size == 0 or threshold > 0.5:
        return t, iou  # each object is in at most one candidate pair
    rows, p = np.unique(p, return_inverse=True)
    cols, t = np.unique(t, return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    weight[p, t] = iou
    r, c = linear_sum_assignment(weight, maximize=True)
    chosen = weight[r, c] >= threshold
    return cols[c[chosen]], weight[r, c][chosen]


CONTRAST_EDGES = (1.0, 2.0, 4.0)
"""Bin edges of :func:`recall_by_contrast`, in robust standard deviations of the background."""


def cell_contrast(image: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """How far each true cell stands out from the background of ``image``.

    The median of the cell's pixels minus the median of the background (label 0),
    in robust standard deviations of the background (1.4826 x its median absolute
    deviation; its standard deviation if that is 0, and 1 if both are). Element
    ``i`` belongs to the ``i``-th object in increasing id order. A cell below 1
    is hardly brighter than the background noise: intensity alone cannot find it.
    """
    labels, img = _same_shape(true_labels, image, "true_labels", "image")
    img = _finite_map(img, "image").astype(np.float64)
    true, n = _compact_labels(labels, "true_labels")
    background = img[true == 0]
    if background.size == 0:
        raise ValueError("the labels leave no background pixel to compare the cells with")
    level = float(np.median(background))
    spread = 1.4826 * float(np.median(np.abs(background - level)))
    spread = spread or float(background.std()) or 1.0
    medians = ndi.median(img, true, np.arange(1, n + 1)) if n else []
    return (np.asarray(medians, dtype=np.float64).reshape(n) - level) / spread


def recall_by_contrast(pred_labels: np.ndarray, true_labels: np.ndarray,
                       image: np.ndarray | None = None, *,
                       contrast: np.ndarray | None = None,
                       edges: tuple[float, ...] = CONTRAST_EDGES,
                       iou_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Which true cells were found (matched as in :func:`match_objects`), by contrast.

    The true cells are binned by :func:`cell_contrast` of ``image`` at ``edges``
    (or by ``contrast``, that function's result when it is already known, e.g. to
    score several predictions of one slide); each bin gives its range (``low``
    inclusive, ``high`` exclusive, ``None`` for unbounded), the number of
    ``cells`` and how many were ``found``. Shows whether missed cells are the
    ones that barely stand out from the background.
    """
    pred, true = _same_shape(pred_labels, true_labels, "pred_labels", "true_labels")
    if list(edges) != sorted(set(float(e) for e in edges)):
        raise ValueError(f"edges must be increasing numbers, got {edges}")
    if contrast is None:
        if image is None:
            raise ValueError("give the image (or the cells' contrast) to bin the cells by")
        contrast = cell_contrast(image, true)
    pred, n_pred = _compact_labels(pred, "pred_labels")
    true, n_true = _compact_labels(true, "true_labels")
    contrast = np.asarray(contrast, dtype=np.float64)
    if contrast.shape != (n_true,):
        raise ValueError(
            f"contrast must hold one value per true cell ({n_true}), got {contrast.size}")
    p_idx, t_idx, iou = _pair_ious(pred, n_pred, true, n_true)
    found = np.zeros(n_true, dtype=bool)
    found[_matches(p_idx, t_idx, iou, float(iou_threshold))[0]] = True
    which = np.searchsorted(np.asarray(edges, dtype=np.float64), contrast, side="right")
    bounds = [None, *map(float, edges), None]
    return [{"low": bounds[k], "high": bounds[k + 1], "cells": int((which == k).sum()),
             "found": int(found[which == k].sum())} for k in range(len(bounds) - 1)]


def threshold_map(attention: np.ndarray, method: str | float = "otsu") -> np.ndarray:
    """Binary mask of the pixels whose attention lies above a threshold.

    ``method`` is ``"otsu"`` (Otsu's automatic threshold of the map's histogram)
    or a number (a fixed threshold). A constant map gives an empty mask with
    ``"otsu"``.
    """
    a = _finite_map(attention, "attention")
    if isinstance(method, str):
        if method.lower() != "otsu":
            raise ValueError(f"method must be 'otsu' or a number, got {method!r}")
        if a.size == 0 or float(a.max()) - float(a.min()) <= 0:
            return np.zeros(a.shape, dtype=bool)
        from skimage.filters import threshold_otsu

        return a > threshold_otsu(a)
    try:
        level = float(method)
    except (TypeError, ValueError):
        raise ValueError(f"method must be 'otsu' or a number, got {method!r}") from None
    if not math.isfinite(level):
        raise ValueError(f"the threshold must be a finite number, got {method!r}")
    return a > level


# ---------------------------------------------------------------------------
# where the attention goes
# ---------------------------------------------------------------------------


def pointing_game(attention: np.ndarray, true_mask: np.ndarray) -> bool:
    """True when the most attended pixel lies inside the mask.

    On ties the first maximum (in row-major order) counts. A constant map points
    nowhere and gives False.
    """
    a, mask = _same_shape(attention, true_mask, "attention", "true_mask")
    a = _finite_map(a, "attention")
    if a.size == 0 or float(a.max()) - float(a.min()) <= 0:
        return False
    return bool(mask.ravel()[int(np.argmax(a))] != 0)


def attention_mass_inside(attention: np.ndarray, true_mask: np.ndarray) -> float:
    """Fraction of the (non-negative part of the) attention that falls inside the mask.

    Negative values count as 0. A map without any positive attention gives 0.0.
    """
    a, mask = _same_shape(attention, true_mask, "attention", "true_mask")
    a = np.clip(_finite_map(a, "attention").astype(np.float64), 0.0, None)
    total = float(a.sum())
    if total <= 0:
        return 0.0
    return float(a[mask != 0].sum()) / total


# ---------------------------------------------------------------------------
# baselines that need no model
# ---------------------------------------------------------------------------


def otsu_baseline(image: np.ndarray, sigma: float = 2.0,
                  min_size: int = OTSU_MIN_SIZE) -> np.ndarray:
    """Instance labels from Otsu's threshold of the Gaussian-smoothed image.

    Steps: smooth by ``sigma`` pixels, keep the pixels above Otsu's threshold,
    fill holes, drop objects under ``min_size`` pixels, and number the connected
    objects 1, 2, ... (touching cells stay one object). A constant image gives
    no objects. Returns an ``int32`` label image of the image's shape.
    """
    img = _finite_map(image, "image").astype(np.float32)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0 pixels, got {sigma}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0 pixels, got {min_size}")
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (Y, X), got shape {img.shape}")
    smooth = ndi.gaussian_filter(img, float(sigma)) if sigma > 0 else img
    mask = ndi.binary_fill_holes(threshold_map(smooth, "otsu"))
    labels, n = ndi.label(mask)
    if n:
        areas = np.bincount(labels.ravel())
        small = areas < min_size
        small[0] = True
        labels[small[labels]] = 0
        labels, _ = ndi.label(labels > 0)
    return labels.astype(np.int32)


def ellipse_baseline(shape: tuple[int, int], fraction: float = ELLIPSE_FRACTION) -> np.ndarray:
    """A fixed ellipse centred in an image of ``shape``: the "cell in the middle" guess.

    The ellipse's axes are ``fraction`` times the image's height and width (a
    disc in a square crop). The default is calibrated on real centred crops (see
    :data:`ELLIPSE_FRACTION`), so on such crops this is a fair, hard-to-beat
    baseline; on slides with cells anywhere it is meaningless, as it should be.
    """
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width), got {shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"shape must be positive, got {(h, w)}")
    if not 0 < float(fraction) <= 2:
        raise ValueError(f"fraction must be in (0, 2], got {fraction}")
    yy = (np.arange(h) - (h - 1) / 2) / (fraction * h / 2)
    xx = (np.arange(w) - (w - 1) / 2) / (fraction * w / 2)
    return yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0


# ---------------------------------------------------------------------------
# sample quality
# ---------------------------------------------------------------------------


def _grey_stack(images: Any, what: str, *, min_count: int = 1, min_side: int = 1) -> np.ndarray:
    """``images`` as a numpy stack ``(N, H, W)`` (a ``(N, 1, H, W)`` stack loses its
    channel axis), unconverted; ValueError naming ``what`` for another shape, too few or
    too small images, or NaN and infinite values."""
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[0] < min_count or min(x.shape[1:]) < min_side:
        raise ValueError(f"{what} needs a stack of grey images (N, H, W) with N >= {min_count}"
                         f" of at least {min_side} x {min_side} pixels, got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{what}: the images must be numeric, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{what}: the images contain NaN or infinite values")
    return x


def sample_diversity(images: Any) -> float:
    """How different the images of a set are from one another, in [0, ~1].

    Every image is standardised on its own (zero mean, unit standard deviation,
    so a brighter copy of a cell counts as the same cell); the result is the
    standard deviation across the set at each pixel, averaged over the pixels.
    A set of copies (or of copies at other intensities) scores 0, images of
    independent noise about 1. Compare generated cells with real cells of the
    same kind: the ratio shows partial mode collapse, which SWD can miss.
    """
    x = _grey_stack(images, "sample_diversity", min_count=2).astype(np.float64)
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    spread = flat.std(axis=1, keepdims=True)
    flat = np.divide(flat, spread, out=np.zeros_like(flat), where=spread > 0)
    return float(flat.std(axis=0).mean())


LATTICE_PERIOD = 8.0
""":func:`lattice_ratio` looks at structure finer than this many pixels (coarser
frequencies hold the cells' shapes, which rightly differ from set to set)."""


def power_spectrum(images: Any) -> np.ndarray:
    """The mean power spectrum ``(H, W)`` of a set of images (``numpy.fft`` order).

    Every image has its mean removed and is tapered by a 2-D periodic Hann window, so
    its edges add no false detail and a pure wave keeps its power within one
    frequency step of its own.
    """
    x = _grey_stack(images, "a power spectrum", min_side=4)
    h, w = x.shape[1:]
    taper = np.hanning(h + 1)[:-1, None] * np.hanning(w + 1)[None, :-1]  # periodic
    power = np.zeros((h, w))
    for start in range(0, len(x), 256):  # float64 a slice at a time: bounded memory
        part = x[start:start + 256].astype(np.float64)
        part = (part - part.mean(axis=(1, 2), keepdims=True)) * taper
        power += (np.abs(np.fft.fft2(part)) ** 2).sum(axis=0)
    return power / len(x)


def lattice_ratio(real: Any, fake: Any, period: float = LATTICE_PERIOD) -> float:
    """The strongest excess of ``fake``'s power over ``real``'s at one spatial frequency.

    Over every frequency finer than ``period`` pixels, the ratio of the two sets'
    mean power spectra (:func:`power_spectrum`); the result is its maximum. A
    periodic artifact (a lattice of lines, a checkerboard) puts its power at a few
    frequencies and scores far above 1; generated cells whose fine texture matches
    the real cells' score near the value of two sets of real cells (1.2-1.5 for
    600 simulated cells against 600 others). Both sets must have the same image size.
    """
    pa, pb = power_spectrum(real), power_spectrum(fake)
    if pa.shape != pb.shape:
        raise ValueError(f"the two sets must have the same image size, got {pa.shape} "
                         f"and {pb.shape}")
    if not period > 2:
        raise ValueError(f"period must be above 2 pixels (the finest there is), got {period}")
    h, w = pa.shape
    fine = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]) >= 1.0 / period
    if not (pa[fine] > 0).all():
        raise ValueError("the real images have no power at some fine frequency: nothing to "
                         "compare to")
    return float((pb[fine] / pa[fine]).max())


def sliced_wasserstein(
    a: Any,
    b: Any,
    *,
    levels: int = 4,
    patch: int = 7,
    n_patches: int = 16384,
    n_projections: int = 512,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Multi-scale sliced Wasserstein distance (SWD) between two sets of grey images.

    ``a`` and ``b`` are ``(N, H, W)`` arrays (or tensors) in [-1, 1], of the same
    image size. Each image is split into a Laplacian pyramid of ``levels``
    levels (finest detail first, the blurred, halved image last). At every
    level, ``n_patches`` random ``patch x patch`` neighbourhoods are drawn from
    each set (at the same positions in both); both sets are standardised by the mean and standard deviation of
    the pair, projected on ``n_projections`` random unit directions, and the
    1-D Wasserstein distance of every projection (mean absolute difference of
    the sorted values) is averaged.

    Small numbers mean the sets share their texture at that scale; identical
    sets give 0. The same ``seed`` gives the same patches and directions, so
    numbers of different models are comparable.

    Returns ``levels + 1`` floats: one per level (finest first), then their mean.
    """
    dev = torch.device(device)
    x, y = _image_set(a, "a", dev), _image_set(b, "b", dev)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"a and b must have the same image size, got {tuple(x.shape[2:])} "
                         f"and {tuple(y.shape[2:])}")
    if levels < 1 or patch < 1 or n_patches < 1 or n_projections < 1:
        raise ValueError("levels, patch, n_patches and n_projections must all be >= 1")
    smallest = min(x.shape[2:]) / 2 ** (levels - 1)
    if smallest < patch:
        raise ValueError(
            f"{levels} pyramid levels shrink {tuple(x.shape[2:])} images to about "
            f"{smallest:.0f} px, smaller than the {patch}x{patch} patches: use fewer levels"
        )
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = []
    for lx, ly in zip(_laplacian_pyramid(x, levels), _laplacian_pyramid(y, levels)):
        where = _patch_positions(lx.shape[2:], patch, n_patches, gen)
        pa = _patches(lx, patch, where)
        pb = _patches(ly, patch, where)
        out.append(_sliced_distance(pa, pb, n_projections, gen))
    return out + [float(np.mean(out))]


def _image_set(images: Any, name: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 3 or t.shape[0] < 1:
        raise ValueError(f"{name} must be a set of grey images (N, H, W), got shape "
                         f"{tuple(t.shape)}")
    t = t.to(device=device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t[:, None]


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial (Gaussian-like) blur with mirrored edges; ``x`` is (N, 1, H, W)."""
    k = _BINOMIAL.to(x.device)
    kernel = (k[:, None] * k[None, :])[None, None]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel)


def _laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels (finest first) and the low-pass remainder last."""
    out = []
    for _ in range(levels - 1):
        small = _blur(x)[:, :, ::2, ::2]
        up = torch.zeros_like(x)
        up[:, :, ::2, ::2] = small
        out.append(x - 4.0 * _blur(up))
        x = small
    out.append(x)
    return out


def _patch_positions(size: tuple[int, int], patch: int, n: int,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patch positions: image (as a fraction of the set), top row, left column."""
    h, w = size
    which = torch.rand(n, generator=gen, dtype=torch.float64)
    ys = torch.randint(h - patch + 1, (n,), generator=gen)
    xs = torch.randint(w - patch + 1, (n,), generator=gen)
    return which, ys, xs


def _patches(x: torch.Tensor, patch: int,
             where: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The ``patch x patch`` neighbourhoods at ``where``, flattened: (n, patch**2).

    Both sets are cut at the same positions (and the same image ranks), so two
    identical sets give exactly the same patches.
    """
    which, ys, xs = (t.to(x.device) for t in where)
    idx = (which * x.shape[0]).long().clamp_max(x.shape[0] - 1)
    offs = torch.arange(patch, device=x.device)
    rows = (ys[:, None] + offs[None, :])[:, :, None]  # (n, p, 1)
    cols = (xs[:, None] + offs[None, :])[:, None, :]  # (n, 1, p)
    return x[idx[:, None, None], 0, rows, cols].reshape(-1, patch * patch)


def _sliced_distance(pa: torch.Tensor, pb: torch.Tensor, n_projections: int,
                     gen: torch.Generator) -> float:
    both = torch.cat([pa, pb])
    mean, std = both.mean(), both.std().clamp_min(1e-8)
    pa, pb = (pa - mean) / std, (pb - mean) / std
    dirs = torch.randn(pa.shape[1], n_projections, generator=gen).to(pa.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    proj_a, _ = torch.sort(pa @ dirs, dim=0)
    proj_b, _ = torch.sort(pb @ dirs, dim=0)
    return float((proj_a - proj_b).abs().mean())


def kid(
    feat_a: np.ndarray,
    feat_b: np.ndarray,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance between two sets of feature vectors ``(N, D)``.

    The unbiased estimate of the squared maximum mean discrepancy with the
    polynomial kernel ``k(x, y) = (x . y / D + 1) ** 3``, averaged over
    ``subsets`` random subsets of ``subset_size`` vectors from each set (at most
    the smaller set's size). Returns ``(mean, standard deviation)`` over the
    subsets. About 0 (it can be slightly negative) when both sets come from the
    same distribution.
    """
    x = _features(feat_a, "feat_a")
    y = _features(feat_b, "feat_b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("kid needs at least 2 feature vectors in each set")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    values = []
    for _ in range(int(subsets)):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                      - 2 * kxy.mean())
    values = np.asarray(values)
    return float(values.mean()), float(values.std())


def _features(feat: Any, name: str) -> np.ndarray:
    f = np.asarray(feat, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D) of feature vectors, got shape "
                         f"{f.shape}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return f


def classifier_features(model: torch.nn.Module, images: Any, batch_size: int = 256) -> np.ndarray:
    """Feature vectors of a pattern classifier for a set of crops, for :func:`kid`.

    ``model`` is a :class:`napari_atagan.gan.attention.PatternClassifier` (anything
    with a ``features(x)`` method that returns ``(B, K, h, w)`` maps); the maps
    are averaged over space. ``images``: ``(N, H, W)`` or ``(N, 1, H, W)`` crops
    normalised as the classifier was trained (in [-1, 1]). Runs on the model's
    device, in eval mode, in batches of ``batch_size``. Returns ``(N, K)`` float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = next(model.parameters()).device
    x = _image_set(images, "images", torch.device("cpu"))
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, x.shape[0], batch_size):
                maps = model.features(x[i:i + batch_size].to(dev))
                out.append(maps.float().mean(dim=(2, 3)).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------


def _same_shape(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}: "
                         "they must cover the same pixels")
    return a, b


def _finite_map(a: Any, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a
