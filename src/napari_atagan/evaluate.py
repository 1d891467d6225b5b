"""Scoring a trained model: its attention against true cell masks, and its samples.

Every attention score stands beside baselines that need no model, so a number
can be read in context (see :mod:`napari_atagan.metrics`):

* :func:`evaluate_crops`: attention on centred real crops vs their masks. Beside
  Otsu's threshold of the crop and a fixed centred ellipse, which on centred
  crops is already a strong guess: crop-level numbers alone prove little.
* :func:`evaluate_slide`: cells found in a whole slide (or a mosaic of real
  cells, :mod:`napari_atagan.mosaic`) vs its instance labels: object precision,
  recall and F1 at IoU 0.5 and pixel IoU, beside Otsu on the slide. This is the
  real test: the cells can be anywhere.
* :func:`evaluate_samples`: generated cells vs real cells: sliced Wasserstein
  distance of their textures, and the kernel inception distance on the features
  of the checkpoint's own pattern classifier when it has one.

All results are plain dicts of numbers and strings, ready for ``json.dump``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from .metrics import (
    attention_mass_inside,
    classifier_features,
    ellipse_baseline,
    kid,
    match_objects,
    otsu_baseline,
    pixel_iou,
    pointing_game,
    sliced_wasserstein,
    threshold_map,
)

__all__ = ["CROP_KEYS", "SLIDE_KEYS", "evaluate_crops", "evaluate_samples", "evaluate_slide",
           "default_min_size"]

CROP_KEYS = ("n", "iou", "pointing_game", "mass_inside", "otsu_iou", "ellipse_iou")
"""Keys of every crop score: means over the crops (``n`` of them)."""
SLIDE_KEYS = ("precision", "recall", "f1", "tp", "fp", "fn", "mean_matched_iou", "pixel_iou",
              "n_objects")
"""Keys of the model's and the Otsu baseline's slide scores."""
ELLIPSE_NOTE = ("the centred-ellipse baseline applies to centred crops only, not to slides "
                "with cells anywhere")
_SWD_PATCH = 7


# ---------------------------------------------------------------------------
# attention on crops
# ---------------------------------------------------------------------------


def evaluate_crops(
    checkpoint: Any,
    folder: str | os.PathLike,
    *,
    per_pattern: bool = False,
    limit: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Score the discriminator's attention on real, centred crops against their masks.

    ``folder`` holds crops with masks (pattern sub-folders of ``NNNNN.png`` +
    ``NNNNN_Mask.png``); the raw crops are given to
    :func:`napari_atagan.synthesis.crop_attention` (which normalises them as in
    training). ``limit`` keeps at most that many crops of every pattern (drawn at
    random, always the same ones).

    Per crop: ``iou`` (the map thresholded by Otsu vs the mask),
    ``pointing_game`` (the most attended pixel is on the cell), ``mass_inside``
    (share of the attention on the cell); baselines ``otsu_iou`` (Otsu of the
    smoothed crop) and ``ellipse_iou`` (a centred ellipse). The result holds the
    means in ``"overall"`` (keys :data:`CROP_KEYS`) and, with ``per_pattern``,
    one such dict per pattern in ``"per_pattern"``.
    """
    from .mosaic import read_raw_crops
    from .synthesis import as_checkpoint, crop_attention

    ckpt = as_checkpoint(checkpoint)
    crops = read_raw_crops(folder, per_pattern=limit)
    maps = crop_attention(ckpt, [c.image for c in crops], device=device)
    rows = [_crop_scores(c.image, c.mask, m) for c, m in zip(crops, maps, strict=True)]
    result: dict[str, Any] = {
        "kind": "crops",
        "checkpoint": ckpt.path.name,
        "folder": str(folder),
        "overall": _mean_scores(rows),
    }
    if per_pattern:
        result["per_pattern"] = {
            (p or "(none)"): _mean_scores([r for r, c in zip(rows, crops) if c.pattern == p])
            for p in dict.fromkeys(c.pattern for c in crops)
        }
    return result


def _crop_scores(image: np.ndarray, mask: np.ndarray, cam: np.ndarray) -> dict[str, float]:
    return {
        "iou": pixel_iou(threshold_map(cam, "otsu"), mask),
        "pointing_game": float(pointing_game(cam, mask)),
        "mass_inside": attention_mass_inside(cam, mask),
        "otsu_iou": pixel_iou(otsu_baseline(image) > 0, mask),
        "ellipse_iou": pixel_iou(ellipse_baseline(image.shape), mask),
    }


def _mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {"n": len(rows)}
    for key in CROP_KEYS[1:]:
        out[key] = float(np.mean([r[key] for r in rows])) if rows else float("nan")
    return out


# ---------------------------------------------------------------------------
# attention on a slide
# ---------------------------------------------------------------------------


def default_min_size(diameter: float) -> int:
    """Smallest object kept, in pixels: a tenth of the area of a cell of ``diameter``."""
    return max(1, int(0.1 * math.pi * float(diameter) ** 2 / 4))


def evaluate_slide(
    checkpoint: Any,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    diameter: float | None = None,
    threshold: str | float = "otsu",
    device: str = "auto",
) -> dict[str, Any]:
    """Score the cells a model finds on a slide against the true instance labels.

    The discriminator's attention (:func:`napari_atagan.slide.slide_attention`)
    is turned into cells by :func:`napari_atagan.labels.attention_to_labels`
    (``threshold``; objects under a tenth of a cell's area are dropped), then
    matched one-to-one to the true cells (:func:`napari_atagan.metrics.match_objects`,
    IoU >= 0.5). The Otsu baseline (Otsu's threshold of the smoothed slide) is
    scored the same way. ``diameter``: typical cell diameter in pixels; ``None``
    estimates it from the image. A ground truth with a single value (a binary
    mask) is split into its connected objects first.

    Returns ``"model"`` and ``"otsu"`` score dicts (keys :data:`SLIDE_KEYS`;
    ``pixel_iou`` compares the union of all cells), ``"ellipse": None`` with a
    ``"note"`` why, and the cell diameter used.
    """
    from .labels import attention_to_labels
    from .slide import estimate_cell_diameter, slide_attention
    from .synthesis import as_checkpoint

    img = np.asarray(image)
    truth, relabelled = _instance_labels(labels, img.shape)
    if diameter is None:
        diameter, source = estimate_cell_diameter(img), "estimated"
    else:
        diameter, source = float(diameter), "given"
    if not math.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"the cell diameter must be > 0 pixels, got {diameter}")
    ckpt = as_checkpoint(checkpoint)
    attention = slide_attention(ckpt, img, cell_diameter=diameter, device=device)
    min_size = default_min_size(diameter)
    predicted = attention_to_labels(attention, threshold=threshold, min_size=min_size)
    otsu = otsu_baseline(img.astype(np.float32), min_size=min_size)
    return {
        "kind": "slide",
        "checkpoint": ckpt.path.name,
        "shape": list(img.shape),
        "n_true": int(len(np.unique(truth)) - (1 if (truth == 0).any() else 0)),
        "cell_diameter": round(diameter, 3),
        "diameter_source": source,
        "threshold": threshold,
        "min_size": min_size,
        "truth_relabelled": relabelled,
        "model": _slide_scores(predicted, truth),
        "otsu": _slide_scores(otsu, truth),
        "ellipse": None,
        "note": ELLIPSE_NOTE,
    }


def _instance_labels(labels: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    truth = np.asarray(labels)
    if truth.ndim != 2 or len(shape) != 2:
        raise ValueError(f"image and labels must be 2-D, got shapes {shape} and {truth.shape}")
    if truth.shape != tuple(shape):
        raise ValueError(f"the labels have shape {truth.shape} but the image has {shape}: "
                         "they must cover the same pixels")
    if truth.dtype.kind not in "biu":
        raise ValueError(f"labels must hold integer cell ids, got dtype {truth.dtype}")
    values = np.unique(truth)
    values = values[values != 0]
    if values.size == 1:  # a binary mask: one object per connected region
        return ndi.label(truth != 0)[0], True
    return truth, False


def _slide_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    scores: dict[str, Any] = dict(match_objects(predicted, truth, 0.5))
    scores["pixel_iou"] = pixel_iou(predicted > 0, truth > 0)
    scores["n_objects"] = int(len(np.unique(predicted)) - (1 if (predicted == 0).any() else 0))
    return scores


# ---------------------------------------------------------------------------
# sample quality
# ---------------------------------------------------------------------------


def evaluate_samples(
    checkpoint: Any,
    real_folder: str | os.PathLike,
    *,
    n: int = 1000,
    device: str = "auto",
    per_pattern: bool = False,
    seed: int = 0,
    swd_patches: int = 16384,
) -> dict[str, Any]:
    """Compare ``n`` generated cells with ``n`` real cells (fewer if the folder has fewer).

    Real cells are read with :func:`napari_atagan.data.load_folder` at the
    model's image size (normalised as in training, in [-1, 1]); generated cells
    are drawn with :func:`napari_atagan.synthesis.generate` (patterns at random
    for a model that knows patterns).

    * ``"swd"``: sliced Wasserstein distance per Laplacian-pyramid level
      (finest first) and their ``mean``; ``"swd_reference"`` is the same
      distance between two halves of the real cells, the floor a perfect
      generator would reach with this many cells.
    * ``"kid"``: ``{"mean", "std"}`` of the kernel inception distance on the
      features of the checkpoint's pattern classifier (its ``teacher.``
      weights), or ``None`` with the reason in ``"kid_note"``.
    * ``per_pattern`` (model and folder with patterns): the same per pattern,
      ``n`` generated cells of that pattern against up to ``n`` real ones.

    ``swd_patches``: neighbourhoods drawn per set and pyramid level (fewer is
    faster and noisier; keep it fixed when comparing models).
    """
    from .data import load_folder
    from .synthesis import as_checkpoint

    n = int(n)
    if n < 2:
        raise ValueError(f"n must be at least 2 cells, got {n}")
    ckpt = as_checkpoint(checkpoint)
    size = int(ckpt.config.image_size)
    real = load_folder(real_folder, image_size=size)
    if per_pattern and not ckpt.class_names:
        raise ValueError(f"{ckpt.path.name} was trained without patterns: leave out per_pattern")
    teacher, kid_note = _teacher(ckpt, device)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(real.n, min(n, real.n), replace=False))
    result: dict[str, Any] = {"kind": "samples", "checkpoint": ckpt.path.name,
                              "folder": str(real_folder), "image_size": size}
    opts = {"device": device, "teacher": teacher, "kid_note": kid_note,
            "patches": int(swd_patches)}
    result.update(_compare(ckpt, real.images[pick], None, n, seed, **opts))
    if per_pattern:
        result["per_pattern"], missing = {}, []
        for k, name in enumerate(ckpt.class_names):
            if name not in real.class_names:
                missing.append(name)
                continue
            mine = np.flatnonzero(real.labels == real.class_names.index(name))
            if mine.size < 2:
                missing.append(name)
                continue
            sel = np.sort(rng.choice(mine, min(n, mine.size), replace=False))
            result["per_pattern"][name] = _compare(ckpt, real.images[sel], k, n, seed + 1 + k,
                                                   **opts)
        if missing:
            result["per_pattern_note"] = ("patterns with fewer than 2 real cells in the folder "
                                          "are left out: " + ", ".join(missing))
    return result


def _teacher(ckpt: Any, device: str) -> tuple[torch.nn.Module | None, str | None]:
    """The checkpoint's pattern classifier, or None and why there is none."""
    from .attention import PatternClassifier
    from .checkpoint import load_module_state
    from .device import resolve_device

    if not ckpt.has("teacher"):
        return None, ("the checkpoint holds no pattern classifier (trained with teacher "
                      f"'{ckpt.config.teacher}'), so there are no features for KID")
    state = ckpt.state_dict("teacher")
    n_classes = int(state["net.fc.weight"].shape[0])
    model = PatternClassifier(n_classes)
    load_module_state(model, state, what="teacher", path=ckpt.path)
    return model.to(resolve_device(device)).eval(), None


def _compare(ckpt: Any, real: np.ndarray, pattern: int | None, n: int, seed: int, *,
             device: str, teacher: torch.nn.Module | None, kid_note: str | None,
             patches: int) -> dict[str, Any]:
    from .synthesis import generate

    fake = generate(ckpt, n, pattern=pattern, seed=seed, device=device).images
    levels = _swd_levels(real.shape[-1])
    swd = sliced_wasserstein(real, fake, levels=levels, n_patches=patches, seed=seed)
    out: dict[str, Any] = {"n_real": int(len(real)), "n_fake": int(len(fake)),
                           "swd": {"levels": swd[:-1], "mean": swd[-1]}}
    half = len(real) // 2
    out["swd_reference"] = None
    if half >= 1:
        out["swd_reference"] = sliced_wasserstein(real[:half], real[half:2 * half], levels=levels,
                                                  n_patches=patches, seed=seed)[-1]
    if teacher is None:
        out["kid"], out["kid_note"] = None, kid_note
    else:
        fr, ff = classifier_features(teacher, real), classifier_features(teacher, fake)
        mean, std = kid(fr, ff, subsets=100, subset_size=1000, seed=seed)
        out["kid"], out["kid_note"] = {"mean": mean, "std": std}, None
    return out


def _swd_levels(size: int) -> int:
    """Up to 4 pyramid levels, as many as keep the coarsest level >= the patch size."""
    levels = 1
    while levels < 4 and size / 2 ** levels >= _SWD_PATCH:
        levels += 1
    return levels
