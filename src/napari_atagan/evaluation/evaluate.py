"""Scoring a trained model: its attention against true cell masks, and its samples.

Every attention score stands beside baselines that need no model, so a number
can be read in context (see :mod:`napari_atagan.metrics`):

* :func:`evaluate_crops`: attention on centred real crops vs their masks. Beside
  Otsu's threshold of the crop and a fixed centred ellipse, which on centred
  crops is already a strong guess: crop-level numbers alone prove little.
* :func:`evaluate_slide`: cells found in a whole slide (or a mosaic of real
  cells, :mod:`napari_atagan.evaluation.mosaic`) vs its instance labels: object precision,
  recall and F1 at IoU 0.5 and pixel IoU, beside the classic pipeline (Otsu with
  touching cells split by a watershed at the known diameter) and plain Otsu.
  This is the real test: the cells can be anywhere.
* :func:`evaluate_samples`: generated cells vs real cells: sliced Wasserstein
  distance of their textures, and the kernel inception distance on the features
  of the checkpoint's own pattern classifier when it has one.
* :func:`train_on_synthetic`: train-on-synthetic / test-on-real. A pattern
  classifier trained on generated cells only, scored on held-out real cells,
  beside the same classifier trained on as many real cells.

All results are plain dicts of numbers and strings, ready for ``json.dump``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..slides.labels import drop_border_cells
from ..metrics import (
    attention_mass_inside,
    cell_contrast,
    classifier_features,
    ellipse_baseline,
    lattice_ratio,
    kid,
    match_objects,
    otsu_baseline,
    pixel_iou,
    pointing_game,
    recall_by_contrast,
    sliced_wasserstein,
    threshold_map,
)

__all__ = ["CROP_KEYS", "SLIDE_KEYS", "SLIDE_METHODS", "TSTR_TARGET", "drop_border_cells",
           "evaluate_crops", "evaluate_samples", "evaluate_slide", "default_min_size",
           "slide_cells", "train_on_synthetic"]

CROP_KEYS = ("n", "iou", "pointing_game", "mass_inside", "otsu_iou", "ellipse_iou")
"""Keys of every crop score: means over the crops (``n`` of them)."""
SLIDE_KEYS = ("precision", "recall", "f1", "tp", "fp", "fn", "mean_matched_iou", "pixel_iou",
              "n_objects")
"""Keys of the model's and the Otsu baseline's slide scores."""
ELLIPSE_NOTE = ("the centred-ellipse baseline applies to centred crops only, not to slides "
                "with cells anywhere")
_SWD_PATCH = 7
TSTR_TARGET = 0.8
"""Good generated cells train a classifier at least this good (TSTR / TRTS accuracy)."""
TSTR_TEST_FRACTION = 0.3
"""Share of every pattern's real cells (the last ones, by id) kept for testing."""
TSTR_CELLS, TSTR_EPOCHS = 500, 8
"""Defaults of :func:`train_on_synthetic`: training cells per pattern, and epochs."""


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
    :func:`napari_atagan.gan.synthesis.crop_attention` (which normalises them as in
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
    from ..gan.synthesis import as_checkpoint, crop_attention

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
    """Smallest object the Otsu baseline keeps, in pixels: a tenth of the area of a cell
    of ``diameter`` (the model's labels keep at least
    :func:`napari_atagan.slides.labels.min_cell_size`)."""
    return max(1, int(0.1 * math.pi * float(diameter) ** 2 / 4))


SLIDE_METHODS = ("model", "map", "blob", "classic", "classic_flat", "classic_split", "otsu",
                 "image_local")
"""The cell finders :func:`evaluate_slide` scores, in the order tables show them."""


def evaluate_slide(
    checkpoint: Any,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    diameter: float | None = None,
    threshold: str | float = "local",
    device: str = "auto",
    exclude_border: bool = False,
    background: str = "flatten",
    cut: float | str = "auto",
) -> dict[str, Any]:
    """Score the cells a model finds on a slide against the true instance labels.

    The discriminator's attention (:func:`napari_atagan.slides.attention.slide_attention`)
    is turned into cells two ways, each matched one-to-one to the true cells
    (:func:`napari_atagan.metrics.match_objects`, IoU >= 0.5):

    * ``"model"``: what ``napari-atagan attention`` writes: the map, averaged with
      the model-free blob map (:func:`napari_atagan.slides.segment.seed_map`), finds and
      seeds the cells, the image delineates them
      (:func:`napari_atagan.slides.segment.guided_labels`);
    * ``"map"``: the map alone (:func:`napari_atagan.slides.labels.attention_to_labels`
      with ``threshold``; with the cell diameter known, objects under
      :data:`napari_atagan.slides.labels.MIN_CELL_AREA` of a cell's area are dropped).

    Six baselines that need no model are scored the same way: ``"blob"`` (the model's
    labelling, with the model-free map of
    :func:`napari_atagan.slides.segment.blob_map` in place of the attention: the
    strongest of them on slides, and the one that says what the map adds), ``"classic"``
    (:func:`napari_atagan.slides.segment.classic_labels`: smoothed Otsu, holes filled,
    small objects dropped, touching cells split by a distance-transform
    watershed at the known diameter), ``"classic_flat"`` (the same on the slide
    with its background taken away as the model's labelling takes it),
    ``"classic_split"`` (that, with objects of several cells' area divided by the
    rule the model's labelling uses, :func:`napari_atagan.slides.segment.divide_large`,
    so that rule's gain is not credited to the model), ``"otsu"``
    (Otsu's threshold of the smoothed slide, touching cells not split) and
    ``"image_local"`` (the map's labelling applied to the flattened slide itself).
    ``diameter``: typical
    cell diameter in pixels; ``None`` estimates it from the image. A ground
    truth with a single value (a binary mask) is split into its connected
    objects first. ``exclude_border``: leave out cells touching the image
    border, both found and true (a cell cut by the border has no true outline).
    ``background``: what the model's labelling and ``"image_local"`` do with the
    slide's slowly varying background (:mod:`napari_atagan.slides.background`).
    ``cut``: where the model's labelling cuts each cell's edge, as ``attention --cut``
    (:func:`napari_atagan.slides.segment.guided_labels`); the fraction it used is
    returned as ``"cut_used"``.

    Returns a score dict per method (keys :data:`SLIDE_KEYS`; ``pixel_iou``
    compares the union of all cells), ``"by_contrast"``: for each, the true cells
    found per bin of contrast with the background
    (:func:`napari_atagan.metrics.recall_by_contrast`: are the missed cells the
    ones that barely stand out?), ``"ellipse": None`` with a ``"note"`` why, and
    the cell diameter used.
    """
    from ..slides.attention import estimate_cell_diameter
    from ..gan.synthesis import as_checkpoint

    img = np.asarray(image)
    truth, relabelled = _instance_labels(labels, img.shape)
    if diameter is None:
        diameter, source = estimate_cell_diameter(img), "estimated"
    else:
        diameter, source = float(diameter), "given"
    if not math.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"the cell diameter must be > 0 pixels, got {diameter}")
    ckpt = as_checkpoint(checkpoint)
    min_size = default_min_size(diameter)
    cut_info: dict[str, Any] = {}
    found = slide_cells(ckpt, img, diameter, threshold=threshold, device=device,
                        background=background, cut=cut, info=cut_info)
    if exclude_border:
        truth = drop_border_cells(truth)
        found = {k: drop_border_cells(v) for k, v in found.items()}
    contrast = cell_contrast(img, truth)
    result: dict[str, Any] = {
        "kind": "slide",
        "checkpoint": ckpt.path.name,
        "shape": list(img.shape),
        "n_true": int(len(np.unique(truth)) - (1 if (truth == 0).any() else 0)),
        "cell_diameter": round(diameter, 3),
        "diameter_source": source,
        "threshold": threshold,
        "background": background,
        "cut": cut,
        "cut_used": cut_info.get("cut"),
        "min_size": min_size,
        "exclude_border": bool(exclude_border),
        "truth_relabelled": relabelled,
    }
    for who in SLIDE_METHODS:
        result[who] = _slide_scores(found[who], truth)
    result["by_contrast"] = {who: recall_by_contrast(found[who], truth, contrast=contrast)
                             for who in SLIDE_METHODS}
    result["ellipse"] = None
    result["note"] = ELLIPSE_NOTE
    return result


def slide_cells(checkpoint: Any, image: np.ndarray, diameter: float, *,
                threshold: str | float = "local", device: str = "auto",
                background: str = "flatten", cut: float | str = "auto",
                info: dict | None = None) -> dict[str, np.ndarray]:
    """The cells every method of :data:`SLIDE_METHODS` finds on a 2-D slide.

    ``"model"`` is exactly what ``napari-atagan attention`` writes
    (:func:`napari_atagan.slides.segment.label_cells` with ``outline="image"``, on the
    slide with its background taken away as ``background`` says), ``"map"`` the
    same with ``outline="map"``; the baselines need no model: ``"blob"`` is the model's
    labelling with a model-free map in place of the attention
    (:func:`napari_atagan.slides.segment.blob_map`, the Laplacian of Gaussian of the
    slide's log contrast at the cells' size), so the difference to ``"model"`` is what the model's map adds. The
    attention map is computed once. ``"classic"`` and ``"otsu"`` see the slide as it is (they are
    the pipelines a reader would write without this product); ``"classic_flat"``
    is the classic pipeline on the slide as the model sees it (flattened, unless
    ``background="none"``), and so is ``"image_local"``. ``cut`` and ``info`` go to the
    model's labelling (``info`` receives the cut it used).
    """
    from ..slides.background import flatten_background
    from ..slides.labels import attention_to_labels, min_cell_size
    from ..slides.segment import classic_labels, divide_large, label_cells
    from ..slides.attention import slide_attention

    grey = np.asarray(image).astype(np.float32)
    flat = np.asarray(flatten_background(grey, diameter, background), np.float32)
    attention = slide_attention(checkpoint, flat, cell_diameter=diameter, device=device)
    min_size = default_min_size(diameter)
    options = dict(threshold=threshold, min_size=min_size, cell_diameter=diameter)
    found = {"map": attention_to_labels(attention, **options),
             "model": label_cells(attention, flat, outline="image", cut=cut, info=info,
                                  **options),
             "blob": label_cells(attention, flat, outline="image", cut=cut, find="blob",
                                 **options)}
    found["classic"] = classic_labels(grey, diameter)
    found["classic_flat"] = classic_labels(flat, diameter)
    found["classic_split"] = divide_large(found["classic_flat"], min_cell_size(diameter))
    found["otsu"] = otsu_baseline(grey, min_size=min_size)
    found["image_local"] = attention_to_labels(flat, **options)
    return found


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
    are drawn with :func:`napari_atagan.gan.synthesis.generate` (patterns at random
    for a model that knows patterns).

    * ``"swd"``: sliced Wasserstein distance per Laplacian-pyramid level
      (finest first) and their ``mean``; ``"swd_reference"`` is the same
      distance between two halves of the real cells, the floor a perfect
      generator would reach with this many cells.
    * ``"lattice"``: the strongest excess of the generated cells' power over the
      real cells' at one frequency finer than 8 px
      (:func:`napari_atagan.metrics.lattice_ratio`): near that of two sets of real
      cells (1.2-1.5 with 600 each) is right; far above, a lattice of lines.
    * ``"kid"``: ``{"mean", "std"}`` of the kernel inception distance on the
      features of the checkpoint's pattern classifier (its ``teacher.``
      weights), or ``None`` with the reason in ``"kid_note"``.
    * ``per_pattern`` (model and folder with patterns): the same per pattern,
      ``n`` generated cells of that pattern against up to ``n`` real ones.

    ``swd_patches``: neighbourhoods drawn per set and pyramid level (fewer is
    faster and noisier; keep it fixed when comparing models).
    """
    from ..data import load_folder
    from ..gan.synthesis import as_checkpoint

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
    from ..device import resolve_device
    from ..gan.checkpoint import load_teacher

    model = load_teacher(ckpt, resolve_device(device))
    if model is None:
        return None, ("the checkpoint holds no pattern classifier (trained with teacher "
                      f"'{ckpt.config.teacher}'), so there are no features for KID")
    return model, None


def _compare(ckpt: Any, real: np.ndarray, pattern: int | None, n: int, seed: int, *,
             device: str, teacher: torch.nn.Module | None, kid_note: str | None,
             patches: int) -> dict[str, Any]:
    from ..gan.synthesis import generate

    fake = generate(ckpt, n, pattern=pattern, seed=seed, device=device).images
    levels = _swd_levels(real.shape[-1])
    swd = sliced_wasserstein(real, fake, levels=levels, n_patches=patches, seed=seed)
    out: dict[str, Any] = {"n_real": int(len(real)), "n_fake": int(len(fake)),
                           "swd": {"levels": swd[:-1], "mean": swd[-1]},
                           "lattice": lattice_ratio(real, fake)}
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


# ---------------------------------------------------------------------------
# train on synthetic, test on real
# ---------------------------------------------------------------------------


def train_on_synthetic(
    checkpoint: Any,
    real_folder: str | os.PathLike,
    *,
    n_per_pattern: int = TSTR_CELLS,
    epochs: int = TSTR_EPOCHS,
    device: str = "auto",
    seed: int = 0,
    limit_real: int | None = None,
    batch_size: int = 64,
    reference: str | os.PathLike | None = None,
    jitter: bool = True,
) -> dict[str, Any]:
    """Train-on-synthetic / test-on-real (TSTR): are the generated cells good teachers?

    Two pattern classifiers (:class:`napari_atagan.gan.attention.PatternClassifier`,
    same epochs, seed and number of cells per pattern) are trained: one on cells
    generated by the checkpoint (TSTR), one on real cells (TRTS, the reference).
    Both are scored on the same held-out real cells: the last
    :data:`TSTR_TEST_FRACTION` of every pattern's cells in id order (neighbouring
    ids usually come from the same specimen, so a block of consecutive cells is
    a fairer test than a random pick).

    Real cells are read with :func:`napari_atagan.data.load_folder` at the model's
    image size (normalised as in training, in [-1, 1]). The generated cells are
    used exactly as the generator draws them: it learned to imitate those
    normalised crops, so normalising them again (or rendering and reading them
    back) would change them in a way real cells are not changed.

    Args:
        checkpoint: a pattern-conditional checkpoint (path or loaded).
        real_folder: pattern sub-folders of real crops; it must hold every
            pattern the model knows (names must match; other patterns are ignored).
        n_per_pattern: generated cells per pattern; fewer when a pattern has
            fewer real training cells (both classifiers see the same number).
        epochs: training epochs of both classifiers.
        limit_real: at most this many real cells per pattern (evenly spread over
            the ids, order kept), or ``None`` for all.
        batch_size: training batch size of both classifiers.
        reference: a folder of real cells that trains the real-cell classifier
            instead of the first cells of ``real_folder``; the generator's own
            training cells make the fair reference when ``real_folder`` holds
            other specimens (the test cells stay the same).
        jitter: train both classifiers on crops recorded anew (acquisition
            jitter, as the product's classifier teacher is trained), so that
            neither can tell a pattern by one specimen's exposure; False trains
            them on flipped and rotated crops only.

    Returns:
        ``"tstr"`` and ``"trts"`` (``{"accuracy", "per_pattern"}`` on the real
        test cells), ``"ratio"`` (TSTR / TRTS accuracy, ``None`` if TRTS is 0),
        ``"target_ratio"`` (:data:`TSTR_TARGET`), ``"chance"``, cell counts,
        settings and the seconds taken.
    """
    import time

    from ..data import CellData, load_folder
    from ..device import resolve_device
    from ..gan.synthesis import as_checkpoint, generate

    t0 = time.perf_counter()
    _check_tstr_numbers(n_per_pattern, epochs, limit_real, batch_size)
    ckpt = as_checkpoint(checkpoint)
    names = _pattern_names(ckpt, "train-on-synthetic needs")
    size = int(ckpt.config.image_size)
    real = _real_cells_for(load_folder(real_folder, image_size=size), names, real_folder,
                           limit_real)
    train_idx, test_idx = _tail_split(real.labels, len(names), TSTR_TEST_FRACTION)
    test = real.subset(np.concatenate(test_idx))
    if reference is not None:
        real = _real_cells_for(load_folder(reference, image_size=size), names, reference,
                               limit_real)
        train_idx = [np.flatnonzero(real.labels == k) for k in range(len(names))]
    n_each = min(int(n_per_pattern), min(idx.size for idx in train_idx))
    rng = np.random.default_rng(seed)
    real_train = real.subset(np.sort(np.concatenate(
        [rng.choice(idx, n_each, replace=False) for idx in train_idx])))

    syn_images, syn_labels = [], []
    for k in range(len(names)):
        syn = generate(ckpt, n_each, pattern=k, seed=seed + 1 + k, device=device)
        syn_images.append(syn.images)
        syn_labels.append(np.full(n_each, k, np.int64))
    synthetic = CellData(images=np.concatenate(syn_images), labels=np.concatenate(syn_labels),
                         class_names=names)

    dev = resolve_device(device)
    scores = {}
    for key, data in (("tstr", synthetic), ("trts", real_train)):
        model, _ = _train_pattern_classifier(data, epochs=epochs, batch_size=batch_size,
                                             device=dev, seed=seed, jitter=jitter)
        scores[key] = _pattern_accuracy(model, test, names)
    trts = scores["trts"]["accuracy"]
    return {
        "kind": "train_on_synthetic",
        "checkpoint": ckpt.path.name,
        "folder": str(real_folder),
        "image_size": size,
        "patterns": names,
        "n_per_pattern": n_each,
        "n_per_pattern_asked": int(n_per_pattern),
        "n_test": {name: int(idx.size) for name, idx in zip(names, test_idx)},
        "reference": str(reference) if reference is not None else None,
        "epochs": int(epochs),
        "seed": int(seed),
        "classifier_jitter": bool(jitter),
        "tstr": scores["tstr"],
        "trts": scores["trts"],
        "ratio": scores["tstr"]["accuracy"] / trts if trts > 0 else None,
        "target_ratio": TSTR_TARGET,
        "chance": 1.0 / len(names),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _pattern_names(ckpt: Any, purpose: str) -> list[str]:
    """The staining patterns a checkpoint generates; ``ValueError`` (saying that
    ``purpose`` needs a pattern-conditional model) when it knows fewer than 2."""
    names = list(ckpt.class_names)
    if len(names) < 2:
        raise ValueError(
            f"{ckpt.path.name} knows {len(names)} staining pattern(s): {purpose} a "
            "pattern-conditional model (trained on cells sorted into at least 2 pattern "
            "sub-folders)")
    return names


def _check_tstr_numbers(n_per_pattern: int, epochs: int, limit_real: int | None,
                        batch_size: int) -> None:
    if int(n_per_pattern) < 1:
        raise ValueError(f"n_per_pattern must be >= 1 generated cell, got {n_per_pattern}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if limit_real is not None and int(limit_real) < 2:
        raise ValueError(f"limit_real must be >= 2 cells per pattern (or None), got {limit_real}")
    if int(batch_size) < 2:
        raise ValueError(f"batch_size must be >= 2, got {batch_size}")


def _real_cells_for(real: Any, names: list[str], folder: Any, limit: int | None, *,
                    purpose: str = "train-on-synthetic", min_cells: int = 2) -> Any:
    """The real cells of the model's patterns, relabelled to the model's pattern order.

    Every pattern needs at least ``min_cells`` cells; ``purpose`` names what needs
    them in the error messages."""
    if not real.has_labels:
        raise ValueError(f"{str(folder)!r} holds no pattern sub-folders: {purpose} "
                         "needs real cells sorted into one sub-folder per pattern")
    missing = [n for n in names if n not in real.class_names]
    if missing:
        raise ValueError(
            f"{str(folder)!r} has no cells of the pattern(s) {', '.join(missing)} that the model "
            f"knows (it has: {', '.join(real.class_names)}); pattern folder names must match")
    keep, new_labels = [], []
    for k, name in enumerate(names):
        idx = np.flatnonzero(real.labels == real.class_names.index(name))
        if idx.size < min_cells:
            why = " (to train and to test)" if min_cells == 2 else ""
            raise ValueError(f"pattern {name!r} has {idx.size} real cell(s) in {str(folder)!r}; "
                             f"{purpose} needs at least {min_cells}{why}")
        if limit is not None and idx.size > limit:
            idx = idx[np.round(np.linspace(0, idx.size - 1, int(limit))).astype(np.int64)]
        keep.append(idx)
        new_labels.append(np.full(idx.size, k, np.int64))
    out = real.subset(np.concatenate(keep))
    out.labels, out.class_names = np.concatenate(new_labels), list(names)
    return out


def _tail_split(labels: np.ndarray, n_classes: int,
                fraction: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per pattern: the first cells (in id order) to train, the last ``fraction`` to test."""
    train, test = [], []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        n_test = min(max(int(round(fraction * idx.size)), 1), idx.size - 1)
        train.append(idx[: idx.size - n_test])
        test.append(idx[idx.size - n_test:])
    return train, test


def _train_pattern_classifier(data: Any, *, epochs: int, batch_size: int, device: Any,
                              seed: int, steps: int | None = None, progress: Any = None,
                              stop: Any = None, jitter: bool = True, start: Any = None
                              ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A classifier on all of ``data`` (no internal hold-out: the test set is separate).

    ``steps``: exactly that many optimisation steps instead of ``epochs`` passes;
    ``jitter``: acquisition jitter on every training crop (as the teacher's default)."""
    from ..gan.attention import train_classifier

    return train_classifier(data, epochs=int(epochs), batch_size=int(batch_size), device=device,
                            seed=int(seed), val_fraction=0.0, steps=steps, progress=progress,
                            stop=stop, jitter=bool(jitter), start=start)


@torch.no_grad()
def _pattern_accuracy(model: torch.nn.Module, test: Any, names: list[str],
                      batch_size: int = 256) -> dict[str, Any]:
    """Overall and per-pattern accuracy of ``model`` on the labelled cells ``test``, and the
    confusion matrix (row: true pattern, column: called pattern, in ``names`` order)."""
    called = _log_probabilities(model, test.images, batch_size).argmax(1)
    right = called == test.labels
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (np.asarray(test.labels), called), 1)
    return {
        "accuracy": float(right.mean()),
        "per_pattern": {name: float(right[test.labels == k].mean())
                        for k, name in enumerate(names)},
        "confusion": confusion.tolist(),
    }


def _log_probabilities(model: torch.nn.Module, images: np.ndarray,
                       batch_size: int = 256) -> np.ndarray:
    """``(N, patterns)`` log-probabilities of a pattern classifier on crops ``(N, S, S)``,
    in batches, without an autograd graph (a 64 px network's batch of 256 kept one)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(images[s:s + batch_size]).unsqueeze(1).to(device)
            out.append(torch.log_softmax(model(x).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
