#!/usr/bin/env python
"""Attention-guided translation of real I3A cells, beside the CycleGAN baseline.

Two experiments on the cells of a split made by ``scripts/split_by_id.py``
(training part to learn, validation part - other specimens - to score):

* ``pattern``: Homogeneous <-> Speckled. Both stain the whole nucleus, so the
  cell's outline and its background are the same in both domains and only the
  texture inside must change; they are also the pair most often confused.
* ``dim`` / ``dimh``: dim -> bright. A cell's contrast is the median grey level inside its
  mask minus the median outside; the lowest quarter of the training cells (all
  patterns; ``dimh``: Homogeneous cells only) is domain A, the highest quarter
  domain B, and the validation cells are cut at the same two levels.

For each experiment the same networks train twice, with the attention (UAG-GAN)
and without it (CycleGAN), with the same seed, and are scored on the validation
cells of domain A (and of B for the pattern pair) at model scale:

* background change: mean |x' - x| outside the true cell mask, as a fraction of
  the grey range the two domains were mapped with (``lo``..``hi``); and the same
  away from every cell (:func:`other_cells`: a crop's mask marks one cell, and a
  neighbouring cell the crop cuts is changed as a cell should be);
* success: for the pattern pair, the share of translated cells that a pattern
  classifier (trained on the training part, 6 patterns, seed 0) calls the target
  pattern; for dim -> bright, the median contrast of the translated cells against
  the bright validation cells' median;
* SWD (grey levels, Laplacian pyramid patches) and KID (classifier features) of
  the translated cells against real validation cells of the target domain;
* the learned attention against the true masks (pixel IoU of attention > 0.5),
  beside the ATA-GAN discriminator's soft-CAM on the same crops (``--atagan``).

Usage::

    scripts/translate_study.py --split /path/split --out RUNS [--steps 2000] [--seed 0]
        [--experiments pattern dim] [--atagan CKPT] [--threads 1] [--judge jitter|plain]
        [--judge-from CLASSIFIER_RUN] [--composite soft|hard] [--score-only]
        [--device cuda --scale full]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_atagan.data import load_folder, prepare_crop
from napari_atagan.events import Finished, Progress, run_to_end
from napari_atagan.metrics import classifier_features, kid, pixel_iou, sliced_wasserstein
from napari_atagan.translate import TranslateConfig, load_domains, load_translator, train_translation
from napari_atagan.translate.models import compose

PAIR = ("Homogeneous", "Speckled")
DIM_PATTERN = "Homogeneous"
"""``dimh`` cuts dim and bright within this pattern: its stain fills the nucleus, so a
low contrast of the mask is a dim cell, not stain that lies outside the mask."""
QUARTER = 0.25
JUDGE_SIZE = 32
"""The judging classifier sees cells at 32 px (ResNet-18 at 64 px is hours per epoch
on a laptop CPU)."""
JUDGE_EPOCHS = 4


# --------------------------------------------------------------------------- data
def _cells(folder: Path, patterns: list[str] | None = None):
    """Raw crops, masks and pattern names of a split part (8-bit, as stored)."""
    from skimage.io import imread

    images, masks, names = [], [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if patterns and sub.name not in patterns:
            continue
        for f in sorted(sub.glob("[0-9]*.png")):
            if f.stem.endswith(("_Mask", "_mask")):
                continue
            m = f.with_name(f"{f.stem}_Mask.png")
            images.append(np.asarray(imread(f)))
            masks.append(np.asarray(imread(m)) > 0)
            names.append(sub.name)
    return images, masks, names


def contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Median grey level inside the cell minus the median outside it."""
    inside, outside = image[mask], image[~mask]
    if not inside.size or not outside.size:
        return float("nan")
    return float(np.median(inside) - np.median(outside))


def domains(split: Path, experiment: str) -> dict:
    """Training and validation crops of domains A and B."""
    if experiment == "pattern":
        out = {}
        for part in ("train", "val"):
            for key, pattern in zip("ab", PAIR):
                im, ma, _ = _cells(split / part, [pattern])
                out[f"{part}_{key}"] = (im, ma)
        out["names"] = PAIR
        return out
    if experiment not in ("dim", "dimh"):
        raise SystemExit(f"unknown experiment {experiment!r}")
    only = [DIM_PATTERN] if experiment == "dimh" else None
    tr_im, tr_ma, _ = _cells(split / "train", only)
    va_im, va_ma, _ = _cells(split / "val", only)
    tr_c = np.array([contrast(i, m) for i, m in zip(tr_im, tr_ma)])
    va_c = np.array([contrast(i, m) for i, m in zip(va_im, va_ma)])
    lo, hi = np.nanquantile(tr_c, QUARTER), np.nanquantile(tr_c, 1 - QUARTER)

    def pick(ims, mas, c, keep):
        idx = np.flatnonzero(keep)
        return [ims[i] for i in idx], [mas[i] for i in idx]

    return {"train_a": pick(tr_im, tr_ma, tr_c, tr_c <= lo),
            "train_b": pick(tr_im, tr_ma, tr_c, tr_c >= hi),
            "val_a": pick(va_im, va_ma, va_c, va_c <= lo),
            "val_b": pick(va_im, va_ma, va_c, va_c >= hi),
            "names": ("dim", "bright"), "cut": [float(lo), float(hi)]}


class _Set:
    def __init__(self, images, masks):
        self.images, self.masks = images, masks


# --------------------------------------------------------------------------- models
JUDGES = {"jitter": True, "plain": False}
"""The judge's training crops: recorded anew (the product's teacher since
``classifier_jitter``) or as stored (the judge of the first figures)."""


def classifier(split: Path, out: Path, device: str, judge: str = "jitter",
               epochs: int = JUDGE_EPOCHS):
    """The 6-pattern classifier that judges translated cells (trained once, seed 0)."""
    from napari_atagan.gan.attention import PatternClassifier, train_classifier

    stem = "classifier" if judge == "plain" else f"classifier_{judge}"
    path = out / f"{stem}.pt"
    train = load_folder(split / "train", image_size=JUDGE_SIZE)
    val = load_folder(split / "val", image_size=JUDGE_SIZE)
    if path.is_file():
        model = PatternClassifier(len(train.class_names))
        model.load_state_dict(torch.load(path, weights_only=True))
        info = json.loads((out / f"{stem}.json").read_text())
    else:
        t0 = time.time()
        model, info = train_classifier(train, epochs=epochs, device=device, seed=0,
                                       jitter=JUDGES[judge])
        info["seconds"] = time.time() - t0
        model = model.cpu()
        pred = _predict(model, val.images)
        info["val_part_accuracy"] = float(np.mean(pred == val.labels))
        info["val_part_per_pattern"] = {
            n: float(np.mean(pred[val.labels == k] == k)) for k, n in enumerate(val.class_names)}
        torch.save(model.state_dict(), path)
        (out / f"{stem}.json").write_text(json.dumps(info, indent=1, default=float))
    info["judge"] = judge
    return model.eval(), train.class_names, info


def run_judge(path: Path, split: Path):
    """A classifier run's pattern teacher as the judge (what ``attention --patterns-from``
    names cells with), and its accuracy on the validation part."""
    from napari_atagan.gan.checkpoint import load_classifier_run

    ckpt, model = load_classifier_run(path)
    size = int(ckpt.config.image_size)
    val = load_folder(split / "val", image_size=size)
    pred = _predict(model, val.images)
    info = {"judge": f"run {path}", "size": size,
            "val_part_accuracy": float(np.mean(pred == val.labels)),
            "val_part_per_pattern": {n: float(np.mean(pred[val.labels == k] == k))
                                     for k, n in enumerate(val.class_names)}}
    return model.cpu().eval(), list(ckpt.class_names), info, size


@torch.no_grad()
def _predict(model, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    return np.concatenate([model(x[i:i + 256]).argmax(1).numpy() for i in range(0, len(x), 256)])


VARIANTS = {"uag": dict(attention=True), "cyclegan": dict(attention=False),
            "uagmask": dict(attention=True, mask_weight=1.0),
            "uagmask_low": dict(attention=True, mask_weight=1.0, cycle_sigma=2.0),
            "uagmask_own": dict(attention=True, mask_weight=1.0, grey_levels="own"),
            "cyclegan_own": dict(attention=False, grey_levels="own"),
            "uagmask_own_cyc3": dict(attention=True, mask_weight=1.0, grey_levels="own",
                                     cycle_weight=3.0),
            "uagmask_target_cyc3": dict(attention=True, mask_weight=1.0, grey_levels="target",
                                        cycle_weight=3.0),
            "uag_own": dict(attention=True, grey_levels="own"),
            "uagmask_target": dict(attention=True, mask_weight=1.0, grey_levels="target"),
            "cyclegan_target": dict(attention=False, grey_levels="target")}
"""UAG-GAN as in the paper, the same networks without attention, and UAG-GAN whose
attention is also taught by the training cells' masks; ``_low``: a low-pass cycle loss;
``_own``: every crop on its own grey levels (brightness kept); ``_target``: trained as
``_own``, the output on the target domain's grey range; ``_cyc3``: a cycle loss of weight 3
instead of 10."""


SCALES = ("quick", "full")
"""``quick``: :meth:`TranslateConfig.quick` (the CPU-scale figures); ``full``: the default
networks and batch of :class:`TranslateConfig` (for a GPU)."""


def train_run(data: dict, run: Path, variant: str, steps: int, seed: int,
              device: str = "cpu", scale: str = "quick") -> Path:
    ckpt = run / "checkpoint.safetensors"
    resume = None
    if ckpt.is_file():
        if load_translator(ckpt).step >= steps:
            return ckpt
        resume = ckpt  # an interrupted run goes on (to the new total of steps)
    make = TranslateConfig.quick if scale == "quick" else TranslateConfig
    config = make(steps=steps, seed=seed, device=device, **VARIANTS[variant])

    def show(ev):
        if isinstance(ev, Progress) and ev.step % 200 == 0:
            print(f"  {run.name} step {ev.step}/{ev.total_steps} "
                  f"{ev.images_per_s:.1f} img/s", file=sys.stderr, flush=True)

    done: Finished = run_to_end(train_translation(
        config, _Set(*data["train_a"]), _Set(*data["train_b"]), run, resume=resume), show)
    return done.checkpoint


# --------------------------------------------------------------------------- scoring
@torch.no_grad()
def translate_crops(translator, x: np.ndarray, direction: str, composite: str = "soft"):
    g, a = translator.networks(direction)
    t = torch.from_numpy(x)[:, None]
    outs, atts = [], []
    for i in range(0, len(t), 128):
        xb = t[i:i + 128]
        att = a(xb) if a is not None else None
        outs.append(compose(xb, att, g(xb), composite)[:, 0].numpy())
        atts.append(att[:, 0].numpy() if att is not None else np.ones_like(xb[:, 0].numpy()))
    return np.concatenate(outs), np.concatenate(atts)


def to_classifier(levels, crops: np.ndarray, masks: np.ndarray,
                  size: int = JUDGE_SIZE) -> np.ndarray:
    """Model-scale translated crops, back in grey levels, prepared as training crops."""
    return np.stack([prepare_crop(levels.to_source(c), m, size)[0]
                     for c, m in zip(crops, masks)])


def _on_target_levels(tr, data: dict, src: str, dst: str, direction: str, composite: str):
    """A ``grey_levels="target"`` run on the validation crops, as ``translate_image`` does
    it (input on its own levels, translated pixels on the target domain's grey range),
    brought to the run's pooled levels like the shared-scale runs' crops: ``(x, y, att,
    dom_s, dom_t)``, all scored as those are."""
    from napari_atagan.translate.data import grey_of_parts, own_levels
    from napari_atagan.translate.models import compose_parts

    levels, span_out = tr.levels, tr.own_span(direction[2])
    dom_s, dom_t, _ = load_domains(_Set(*data[src]), _Set(*data[dst]), image_size=64,
                                   levels=levels, own_levels=True)
    g, a = tr.networks(direction)
    t = torch.from_numpy(dom_s.images)[:, None]
    with torch.no_grad():
        att = a(t) if a is not None else None
        kept, moved = (p[:, 0].numpy() for p in compose_parts(t, att, g(t), composite))
    lv_s = [own_levels(im) for im in data[src][0]]
    lv_t = [own_levels(im) for im in data[dst][0]]
    grey_x = np.stack([lv.to_source(c) for lv, c in zip(lv_s, dom_s.images)])
    grey_y = np.stack([grey_of_parts(k, mv, lv.lo, lv.hi - lv.lo, span_out)
                       for lv, k, mv in zip(lv_s, kept, moved)])
    dom_t.images = np.stack([levels.to_model(lv.to_source(c))
                             for lv, c in zip(lv_t, dom_t.images)])
    att = att[:, 0].numpy() if att is not None else np.ones_like(kept)
    return levels.to_model(grey_x), levels.to_model(grey_y), att, dom_s, dom_t


def stretched(data: dict, src: str, dst: str, levels, span_out: float):
    """The model-free dim -> bright: the cell the classic pipeline finds in each crop
    (smoothed Otsu, holes filled, touching cells split at the crops' median diameter)
    stretched above the crop's own floor to ``span_out`` (the bright training cells'
    median grey range), every other pixel kept. ``(x, y, found, dom_s, dom_t)`` on the
    pooled levels, as :func:`_on_target_levels`."""
    from napari_atagan.slides.segment import classic_labels
    from napari_atagan.translate.data import own_levels

    dom_s, dom_t, _ = load_domains(_Set(*data[src]), _Set(*data[dst]), image_size=64,
                                   levels=levels)
    grey_x = np.stack([levels.to_source(c) for c in dom_s.images])
    d = float(np.median([_diameter(mm) for mm in dom_s.masks.astype(bool) if mm.any()]))
    ys, found = [], []
    for raw, c in zip(data[src][0], grey_x):
        lv = own_levels(raw)
        cell = classic_labels(c, d) > 0
        ys.append(np.where(cell, lv.lo + (c - lv.lo) * span_out / (lv.hi - lv.lo), c))
        found.append(cell.astype(np.float32))
    return dom_s.images, levels.to_model(np.stack(ys)), np.stack(found), dom_s, dom_t


def score(ckpt: Path | None, data: dict, clf, class_names: list[str], exp: str,
          size: int = JUDGE_SIZE, composite: str = "soft",
          stretch_npz: Path | None = None) -> dict:
    """The figures of one run (``ckpt``), or of the model-free stretch (``ckpt=None``:
    dim -> bright only; its first crops go to ``stretch_npz``)."""
    if ckpt is None:  # the levels and bright range a run on these domains would record
        _, dom_b, levels = load_domains(_Set(*data["train_a"]), _Set(*data["train_b"]),
                                        image_size=64)
        span_b = dom_b.own_span
        res: dict = {"attention": False, "steps": 0, "model_free": "classic cell stretched",
                     "span_out": span_b}
    else:
        tr = load_translator(ckpt)
        levels = tr.levels
        summary = tr.checkpoint.metadata.get("summary") or {}
        res = {"attention": tr.attention, "steps": tr.step,
               "train_seconds": summary.get("seconds"),
               "steps_per_s": summary.get("steps_per_s")}
    directions = [("a2b", "val_a", "val_b", 1)] + ([("b2a", "val_b", "val_a", 0)]
                                                    if exp == "pattern" else [])
    for direction, src, dst, target_i in directions:
        if ckpt is None:
            x, y, att, dom_s, dom_t = stretched(data, src, dst, levels, span_b)
        elif tr.config.grey_levels == "target":
            x, y, att, dom_s, dom_t = _on_target_levels(tr, data, src, dst, direction,
                                                        composite)
        else:
            dom_s, dom_t, _ = load_domains(_Set(*data[src]), _Set(*data[dst]), image_size=64,
                                           levels=levels, own_levels=tr.config.own_levels)
            x = dom_s.images
            y, att = translate_crops(tr, x, direction, composite)
        m = dom_s.masks.astype(bool)
        bg = ~m
        change = np.abs(y - x)
        away = bg & ~other_cells(x, m)
        r: dict = {
            "n": int(len(x)),
            "background_change": float(change[bg].mean() / 2),
            "background_change_away": float(change[away].mean() / 2),
            "near_cell_change": float(change[bg & ~away].mean() / 2) if (bg & ~away).any() else 0.0,
            "away_share": float(away.sum() / max(bg.sum(), 1)),
            "cell_change": float(change[m].mean() / 2),
            "attention_iou": float(np.mean([pixel_iou(a > 0.5, mm) for a, mm in zip(att, m)])),
            "attention_inside": float(att[m].mean()), "attention_outside": float(att[bg].mean()),
        }
        real_t = dom_t.images
        r["classic_iou"] = classic_iou(x, m)
        r["swd"] = float(sliced_wasserstein(y, real_t, seed=0)[-1])
        r["swd_identity"] = float(sliced_wasserstein(x, real_t, seed=0)[-1])
        prep_y = to_classifier(levels, y, dom_s.masks, size)
        prep_x = to_classifier(levels, x, dom_s.masks, size)
        prep_t = to_classifier(levels, real_t, dom_t.masks, size)
        f_y, f_x, f_t = (classifier_features(clf, p) for p in (prep_y, prep_x, prep_t))
        subset = min(len(f_y), len(f_t), 1000)
        r["kid"] = float(kid(f_y, f_t, subset_size=subset)[0])
        r["kid_identity"] = float(kid(f_x, f_t, subset_size=subset)[0])
        if exp == "pattern":
            target = class_names.index(PAIR[target_i])
            r["target"] = PAIR[target_i]
            r["success"] = float(np.mean(_predict(clf, prep_y) == target))
            r["success_identity"] = float(np.mean(_predict(clf, prep_x) == target))
            r["classifier_on_real_target"] = float(np.mean(_predict(clf, prep_t) == target))
        else:
            raw_x = [levels.to_source(c) for c in x]
            raw_y = [levels.to_source(c) for c in y]
            raw_t = [levels.to_source(c) for c in real_t]
            c_y = np.array([contrast(c, mm) for c, mm in zip(raw_y, m)])
            c_x = np.array([contrast(c, mm) for c, mm in zip(raw_x, m)])
            c_t = np.array([contrast(c, mm.astype(bool)) for c, mm in zip(raw_t, dom_t.masks)])
            r["contrast_input_median"] = float(np.median(c_x))
            r["contrast_translated_median"] = float(np.median(c_y))
            r["contrast_bright_median"] = float(np.median(c_t))
            r["reaches_bright_median"] = float(np.mean(c_y >= np.median(c_t)))
        res[direction] = r
        tag = "" if composite == "soft" else f"_{composite}"  # the figures' crops
        dest = ckpt.parent / f"val_{direction}{tag}.npz" if ckpt is not None else stretch_npz
        if dest is not None:
            np.savez_compressed(dest, x=x[:16], y=y[:16], att=att[:16], m=m[:16])
    return res


def other_cells(crops: np.ndarray, masks: np.ndarray, grow: int = 2) -> np.ndarray:
    """What else a crop holds besides its own cell: the objects the model-free pipeline
    finds in the input crop, and the crop's own mask, each grown by ``grow`` pixels (their
    blurred edges). The background change *away from every cell* is taken outside these:
    a neighbouring cell cut by the crop's edge is a cell, and a translator that changes it
    does what it should, but the true masks mark one cell a crop."""
    from napari_atagan.slides.segment import classic_labels

    d = float(np.median([_diameter(mm) for mm in masks if mm.any()]))
    found = np.stack([(classic_labels(c, d) > 0) | mm for c, mm in zip(crops, masks)])
    return np.stack([ndi.binary_dilation(f, iterations=grow) for f in found])


def _diameter(mask: np.ndarray) -> float:
    return float(2.0 * np.sqrt(mask.sum() / np.pi))


def classic_iou(crops: np.ndarray, masks: np.ndarray) -> float:
    """Pixel IoU of the model-free pipeline (smoothed Otsu, holes filled, small objects
    dropped, touching cells split at the known diameter) against the true masks: what
    an attention map must beat to be worth learning."""
    from napari_atagan.slides.segment import classic_labels

    d = float(np.median([_diameter(mm) for mm in masks if mm.any()]))
    return float(np.mean([pixel_iou(classic_labels(c, d) > 0, mm) for c, mm in zip(crops, masks)]))


def real_slide(ckpt: Path, folder: Path, direction: str = "a2b", composite: str = "soft") -> dict:
    """The translator on a real fluorescence slide with labelled nuclei (other
    laboratory, other microscope): background and cell change at the slide's own
    median nucleus diameter, and the attention against the labels beside the
    model-free pipeline's cells."""
    import tifffile
    from napari_atagan.slides.segment import classic_labels
    from napari_atagan.translate import translate_image
    from napari_atagan.translate.data import own_levels

    image = tifffile.imread(folder / "nuclei.tif")
    cells = tifffile.imread(folder / "nuclei_labels.tif") > 0
    from skimage.measure import label, regionprops

    d = float(np.median([r.equivalent_diameter_area for r in regionprops(label(cells))]))
    tr = load_translator(ckpt)
    y, att = translate_image(tr, image, direction=direction, cell_diameter=d, device="cpu",
                             composite=composite)
    lv = own_levels(image) if tr.config.own_levels else tr.levels
    change = np.abs(y.astype(np.float64) - image) / (lv.hi - lv.lo)
    truth = tifffile.imread(folder / "nuclei_labels.tif")
    classic = classic_labels(image, d)
    res = {"diameter": d, "background_change": float(change[~cells].mean()),
           "cell_change": float(change[cells].mean()),
           "attention_iou": float(pixel_iou(att > 0.5, cells)),
           "classic_iou": float(pixel_iou(classic > 0, cells)),
           "classic_objects": _objects(classic, truth)}
    if tr.attention:  # the attended cells the Translate widget shows
        from napari_atagan.slides.labels import DEFAULT_MIN_SIZE, attention_to_labels

        attended = attention_to_labels(att, threshold=float(tr.config.attention_threshold),
                                       min_size=DEFAULT_MIN_SIZE, cell_diameter=d)
        res["attended_objects"] = _objects(attended, truth)
    return res


DIM_FRACTIONS = (1.0, 0.3, 0.1)
"""The real slide's light for :func:`dim_slide`: as recorded, and a third and a tenth of it."""
BRIGHT_MEDIAN = 31.1
"""The median contrast of the bright training cells of the ``dimh`` split (grey levels)."""


def dim_slide(runs: dict[str, Path], folder: Path, fractions=DIM_FRACTIONS) -> dict:
    """Dim -> bright models of target grey levels on a real slide of another laboratory
    (``nuclei.tif`` and its labels), dimmed to ``fractions`` of its light by the
    simulator's camera (``slide_study.dimmed``: 8-bit, photon and read noise), at the
    slide's median nucleus diameter, each with its own default composite; beside the
    model-free stretch of the classic pipeline's nuclei to the same range. Contrast: the
    median over nuclei of their median minus the median of every pixel 3 or more pixels
    from any nucleus; background change: mean |x' - x| there, as a fraction of the bright
    domain's grey range."""
    import tifffile
    from skimage.measure import label, regionprops
    from slide_study import dimmed

    from napari_atagan.slides.segment import classic_labels
    from napari_atagan.translate import translate_image
    from napari_atagan.translate.data import local_levels

    image = tifffile.imread(folder / "nuclei.tif")
    truth = tifffile.imread(folder / "nuclei_labels.tif")
    cells = truth > 0
    away = ~ndi.binary_dilation(cells, iterations=3)
    ids = [k for k in np.unique(truth) if k]
    d = float(np.median([r.equivalent_diameter_area for r in regionprops(label(cells))]))
    first = load_translator(next(iter(runs.values())))
    span_b = first.own_span("b")

    def figures(y: np.ndarray, x: np.ndarray) -> dict:
        bg = np.median(y[away])
        per = np.array([np.median(y[truth == k]) - bg for k in ids])
        return {"contrast": float(np.median(per)),
                "nuclei_at_bright_median": float(np.mean(per >= BRIGHT_MEDIAN)),
                "background_change": float(np.abs(y - x)[away].mean() / span_b)}

    out: dict = {"diameter": d, "span_b": span_b}
    for frac in fractions:
        x = dimmed(image, frac).astype(np.float32)
        res: dict = {"input": figures(x, x)}
        for name, ckpt in runs.items():
            tr = load_translator(ckpt)
            y, att = translate_image(tr, x, cell_diameter=d, device="cpu")
            res[name] = figures(y, x)
            if tr.attention:
                res[name]["attention_iou"] = float(pixel_iou(att > 0.5, cells))
        lv = local_levels(x, first.config.image_size * d / first.model_cell_diameter("a"))
        lo, span = lv.region(slice(0, x.shape[0]), slice(0, x.shape[1]))
        found = classic_labels(x, d) > 0
        res["stretch"] = figures(np.where(found, lo + (x - lo) * span_b / span, x), x)
        res["stretch"]["classic_iou"] = float(pixel_iou(found, cells))
        out[str(frac)] = res
        print(f"light {frac}: " + json.dumps(res, default=float), file=sys.stderr, flush=True)
    return out


def _objects(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Object F1 at IoU 0.5 and pixel IoU, cells on the image border left out on both
    sides (as the slide study scores them)."""
    from napari_atagan.metrics import match_objects
    from napari_atagan.slides.labels import drop_border_cells

    p, t = drop_border_cells(pred), drop_border_cells(truth)
    m = match_objects(p, t, 0.5)
    return {"f1": float(m["f1"]), "tp": int(m["tp"]), "fp": int(m["fp"]), "fn": int(m["fn"]),
            "pixel_iou": float(pixel_iou(p > 0, t > 0))}


def atagan_iou(ckpt_path: str, data: dict) -> float:
    """Pixel IoU of an ATA-GAN discriminator's soft-CAM (cut at each map's Otsu
    level, as ``evaluate attention`` does) against the true masks of the same
    validation crops of domain A."""
    from napari_atagan.gan.synthesis import crop_attention
    from napari_atagan.metrics import threshold_map

    images, masks = data["val_a"]
    maps = crop_attention(ckpt_path, images, device="cpu")
    return float(np.mean([pixel_iou(threshold_map(a), m) for a, m in zip(maps, masks)]))


def figure(out: Path, exp: str, seed: int, direction: str = "a2b", n: int = 6) -> Path | None:
    """Rows of validation cells: the input, then for each attention model its map
    ("att") and output (UAG: UAG-GAN, UAG+m: with the mask teacher), the CycleGAN
    output, and the |change| of each ("chg"), all on the run's one grey
    scale (no per-panel stretch)."""
    from _study_figures import _sheet, fit, heat

    names = {"uag": "UAG", "uagmask": "UAG+m", "uagmask_low": "UAG+m, low-pass cycle", "uagmask_own": "UAG+m, own levels",
             "cyclegan": "Cycle"}
    runs = {v: out / f"{exp}_{v}_s{seed}" / f"val_{direction}.npz" for v in names}
    runs = {v: np.load(f) for v, f in runs.items() if f.is_file()}
    if "cyclegan" not in runs or len(runs) < 2:
        return None

    def g(a):  # model units [-1, 1.5] -> grey, the same for every panel
        u = np.clip((np.asarray(a) + 1.0) / 2.5, 0, 1)
        return fit(np.repeat((u * 255).astype(np.uint8)[..., None], 3, axis=2))

    def d(a, b):  # |change|, 0 .. half the grey range
        return fit(heat(np.abs(a - b) / 2, top=0.5))

    attended = [v for v in ("uag", "uagmask", "uagmask_low") if v in runs]
    hard = {}  # the same models scored with --composite hard: their outputs after the soft ones
    for v in attended:
        f = out / f"{exp}_{v}_s{seed}" / f"val_{direction}_hard.npz"
        if f.is_file():
            hard[v] = np.load(f)
    columns = ["input"]
    for v in attended:
        columns += [f"att {names[v]}", names[v]] + (["hard"] if v in hard else [])
    columns += ["Cycle"] + [f"chg {names[v]}" for v in (*attended, "cyclegan")]
    columns += ["chg hard" for v in hard]
    first = runs["cyclegan"]
    rows = []
    for i in range(min(n, len(first["x"]))):
        x = first["x"][i]
        row = [g(x)]
        for v in attended:
            row += [fit(heat(runs[v]["att"][i], top=1.0)), g(runs[v]["y"][i])]
            row += [g(hard[v]["y"][i])] if v in hard else []
        row += [g(first["y"][i])] + [d(runs[v]["y"][i], x) for v in (*attended, "cyclegan")]
        row += [d(hard[v]["y"][i], x) for v in hard]
        rows.append(row)
    labels = {"pattern": PAIR, "dim": ("dim", "bright"), "dimh": ("dim", "bright")}[exp]
    src, dst = (labels if direction == "a2b" else labels[::-1])
    sheet = _sheet(rows, columns, [f"{src} {i + 1}" for i in range(len(rows))], left=118)
    dest = out / f"translate_{exp}_{direction}.png"
    sheet.save(dest)
    print(f"figure: {dest} ({src} -> {dst})", file=sys.stderr)
    return dest


def target_figure(out: Path, exp: str, seed: int, n: int = 6) -> Path | None:
    """Dim -> bright on the target domain's grey range: rows of held-out dim cells, the
    input, UAG + masks' attention and output (hard composite), CycleGAN's output, the
    model-free stretch, then each one's |change|; one grey scale (the run's pooled
    levels) for every panel."""
    from _study_figures import _sheet, fit, heat

    files = {"UAG+m": out / f"{exp}_uagmask_target_s{seed}" / "val_a2b_hard.npz",
             "Cycle": out / f"{exp}_cyclegan_target_s{seed}" / "val_a2b.npz",
             "stretch": out / f"{exp}_stretch_val_a2b.npz"}
    if not all(f.is_file() for f in files.values()):
        return None
    runs = {k: np.load(f) for k, f in files.items()}

    def g(a):
        u = np.clip((np.asarray(a) + 1.0) / 2.5, 0, 1)
        return fit(np.repeat((u * 255).astype(np.uint8)[..., None], 3, axis=2))

    columns = ["input", "att UAG+m", *runs, *(f"chg {k}" for k in runs)]
    rows = []
    for i in range(min(n, len(runs["UAG+m"]["x"]))):
        x = runs["UAG+m"]["x"][i]
        rows.append([g(x), fit(heat(runs["UAG+m"]["att"][i], top=1.0)),
                     *(g(r["y"][i]) for r in runs.values()),
                     *(fit(heat(np.abs(r["y"][i] - x) / 2, top=0.5)) for r in runs.values())])
    sheet = _sheet(rows, columns, [f"dim {i + 1}" for i in range(len(rows))], left=118)
    dest = out / f"translate_{exp}_target.png"
    sheet.save(dest)
    print(f"figure: {dest}", file=sys.stderr)
    return dest


def runs_figure(runs: dict[str, Path], direction: str, dest: Path, n: int = 6) -> Path:
    """Rows of validation cells: the input, then each run's attention, output and
    |change|, on one grey scale; ``runs`` maps a column label to a run folder (its
    ``val_<direction>.npz``), e.g. the same variant at two lengths."""
    from _study_figures import _sheet, fit, heat

    data = {label: np.load(Path(folder) / f"val_{direction}.npz") for label, folder in runs.items()}
    g = lambda a: fit(np.repeat((np.clip((np.asarray(a) + 1.0) / 2.5, 0, 1) * 255)  # noqa: E731
                                .astype(np.uint8)[..., None], 3, axis=2))
    first = next(iter(data.values()))
    columns = ["input"] + [f"{c} {label}" for label in data for c in ("att", "out", "chg")]
    rows = []
    for i in range(min(n, len(first["x"]))):
        x = first["x"][i]
        row = [g(x)]
        for run in data.values():
            row += [fit(heat(run["att"][i], top=1.0)), g(run["y"][i]),
                    fit(heat(np.abs(run["y"][i] - x) / 2, top=0.5))]
        rows.append(row)
    src = PAIR[0] if direction == "a2b" else PAIR[1]
    _sheet(rows, columns, [f"{src} {i + 1}" for i in range(len(rows))], left=118).save(dest)
    print(f"figure: {dest}", file=sys.stderr)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--experiments", nargs="+", default=["pattern", "dim"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--atagan", default=None, help="an ATA-GAN checkpoint for the CAM IoU")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu",
                   help="where the runs and the judge train (cpu, cuda, auto); scoring runs "
                        "on the CPU")
    p.add_argument("--scale", choices=SCALES, default="quick",
                   help="quick networks (default, the CPU figures) or the full default ones")
    p.add_argument("--judge", choices=list(JUDGES), default="jitter",
                   help="the judging classifier: trained with the acquisition jitter (as the "
                        "product's teacher) or on the crops as stored")
    p.add_argument("--judge-epochs", type=int, default=JUDGE_EPOCHS,
                   help=f"training passes of the judging classifier ({JUDGE_EPOCHS})")
    p.add_argument("--judge-from", type=Path, default=None, metavar="RUN",
                   help="judge with this classifier run's pattern teacher instead (a "
                        "checkpoint trained with --teacher classifier, as attention "
                        "--patterns-from uses)")
    p.add_argument("--real-slide", type=Path, default=None,
                   help="a folder with nuclei.tif and nuclei_labels.tif: the pattern models "
                        "are also applied to that real slide")
    p.add_argument("--score-only", action="store_true")
    p.add_argument("--composite", choices=("soft", "hard"), default="soft",
                   help="how translations meet their crops when scored (translate_image's "
                        "composite); hard writes scores_<judge>_hard.json")
    p.add_argument("--figure-runs", nargs="+", metavar="LABEL=RUN", default=None,
                   help="only draw RUNs side by side (e.g. 1k=OUT/pattern_uagmask_s0 "
                        "4k=OUT4K/pattern_uagmask_s0) into --out, both directions")
    p.add_argument("--train-only", action="store_true", help="train the runs, score nothing")
    p.add_argument("--pair", nargs=2, default=None, metavar=("A", "B"),
                   help="the pattern pair (default: Homogeneous Speckled); give another "
                        "pair its own --out")
    p.add_argument("--dim-slide", type=Path, default=None, metavar="FOLDER",
                   help="dim -> bright: apply the target-level runs of --out (seed --seed and "
                        "seed + 1) to this real slide (nuclei.tif, nuclei_labels.tif) dimmed "
                        "to 1, 0.3 and 0.1 of its light; writes dimh_slide.json")
    p.add_argument("--stretch", action="store_true",
                   help="dim -> bright: also score the model-free stretch (the classic "
                        "pipeline's cell stretched to the bright cells' grey range)")
    args = p.parse_args(argv)
    if args.pair:
        globals()["PAIR"] = tuple(args.pair)
    if args.dim_slide:
        runs = {f"{v}_s{seed}": args.out / f"dimh_{v}_s{seed}" / "checkpoint.safetensors"
                for v in ("uagmask_target", "cyclegan_target")
                for seed in (args.seed, args.seed + 1)}
        runs = {k: v for k, v in runs.items() if v.is_file()}
        res = dim_slide(runs, args.dim_slide)
        (args.out / "dimh_slide.json").write_text(json.dumps(res, indent=1, default=float))
        return 0
    if args.figure_runs:
        runs = dict(item.split("=", 1) for item in args.figure_runs)
        for direction in ("a2b", "b2a"):
            runs_figure(runs, direction, args.out / f"translate_runs_{direction}.png")
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    size, judge_name = JUDGE_SIZE, args.judge
    if not args.train_only and args.judge_from:
        clf, names, clf_info, size = run_judge(args.judge_from, args.split)
        judge_name = "run"
    elif not args.train_only:
        clf, names, clf_info = classifier(args.split, args.out, args.device, args.judge,
                                          args.judge_epochs)
        print(f"classifier: validation-part accuracy {clf_info.get('val_part_accuracy'):.3f}",
              file=sys.stderr)
    for exp in args.experiments:
        data = domains(args.split, exp)
        print(f"{exp}: train {len(data['train_a'][0])} / {len(data['train_b'][0])}, "
              f"val {len(data['val_a'][0])} / {len(data['val_b'][0])}", file=sys.stderr)
        if args.stretch and exp != "pattern" and not args.train_only:
            res = score(None, data, clf, names, exp, size,
                        stretch_npz=args.out / f"{exp}_stretch_val_a2b.npz")
            res.update(experiment=exp, variant="stretch", domains=list(data["names"]),
                       cut=data.get("cut"), classifier=clf_info)
            (args.out / f"{exp}_stretch_{judge_name}.json").write_text(
                json.dumps(res, indent=1, default=float))
            print(json.dumps({k: v for k, v in res.items() if k != "classifier"},
                             default=float), flush=True)
        for variant in args.variants:
            run = args.out / f"{exp}_{variant}_s{args.seed}"
            ckpt = run / "checkpoint.safetensors"
            if not args.score_only:
                ckpt = train_run(data, run, variant, args.steps, args.seed, args.device,
                                 args.scale)
            if not ckpt.is_file() or args.train_only:
                continue
            res = score(ckpt, data, clf, names, exp, size, args.composite)
            res.update(experiment=exp, variant=variant, seed=args.seed, scale=args.scale,
                       pair=list(PAIR) if exp == "pattern" else None,
                       domains=list(data["names"]), cut=data.get("cut"),
                       classifier=clf_info, n_train=[len(data["train_a"][0]),
                                                     len(data["train_b"][0])])
            if args.real_slide and exp == "pattern":
                res["real_slide"] = real_slide(ckpt, args.real_slide, composite=args.composite)
            if args.atagan and variant != "cyclegan":
                res["atagan_cam_iou"] = atagan_iou(args.atagan, data)
            res["composite"] = args.composite
            tag = "" if args.composite == "soft" else f"_{args.composite}"
            (run / f"scores_{judge_name}{tag}.json").write_text(json.dumps(res, indent=1,
                                                                           default=float))
            print(json.dumps({k: v for k, v in res.items() if k != "classifier"},
                             default=float), flush=True)
        for direction in ("a2b", "b2a") if exp == "pattern" else ("a2b",):
            figure(args.out, exp, args.seed, direction)
        if exp != "pattern":
            target_figure(args.out, exp, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
