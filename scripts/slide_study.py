#!/usr/bin/env python
"""Cells on slides: the model's labelling beside the classic pipeline, per pattern.

For every checkpoint, on three kinds of slides:

* touching-cell mosaics of real crops, one pattern per mosaic
  (``napari_atagan.evaluation.mosaic.make_mosaic(..., touching=True)``), built from a
  folder of crops in the I3A layout (``--crops``: use the *training* part to
  choose, the *validation* part to report);
* real slides with instance labels (``--slide IMAGE LABELS DIAMETER``), e.g.
  the shared real fluorescence slide;
* realistic simulated slides (``--simulated N``), all patterns mixed or one
  pattern a slide (``--simulated-patterns``), the pattern no model here was
  trained on (Cytoplasmic) among them.

``--zoom F`` asks how they hold at another magnification: a real slide (``--slide``) is
enlarged F times (cubic) with its labels (nearest) and its diameter. ``--intensity F``
and ``--jpeg Q`` ask how the figures hold on weakly stained slides and JPEG exports: the simulated slides are drawn with ``F`` of the light (the camera's
shot and read noise follow), a real slide (``--slide``) gets ``F`` of its light by
:func:`dimmed`; either is then saved as a JPEG of quality ``Q`` and read back.

Every method of :data:`napari_atagan.evaluation.evaluate.SLIDE_METHODS` is scored with
cells touching the border left out on both sides; counts are pooled over the
slides of a group before precision, recall and F1 are formed, and pixel IoU is
pooled over their pixels. Prints a markdown table and writes every number to
``--json``.

Usage:
  scripts/slide_study.py CKPT [CKPT ...] [--crops DIR] [--per-pattern 60] [--seed 0]
                         [--slide IMG LAB D ...] [--simulated N [--simulated-patterns NAME ...]]
                         [--zoom F] [--intensity F] [--jpeg Q] [--json FILE] [--device D]
                         [--background flatten|none]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_atagan.evaluation.evaluate import SLIDE_METHODS, slide_cells
from napari_atagan.slides.labels import drop_border_cells
from napari_atagan.metrics import match_objects


def counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    p, t = drop_border_cells(pred), drop_border_cells(truth)
    m = match_objects(p, t, 0.5)
    return {"tp": m["tp"], "fp": m["fp"], "fn": m["fn"],
            "inter": float(np.logical_and(p > 0, t > 0).sum()),
            "union": float(np.logical_or(p > 0, t > 0).sum()),
            "matched_iou_sum": m["mean_matched_iou"] * m["tp"] if m["tp"] else 0.0}


def pooled(rows: list[dict[str, float]]) -> dict[str, float]:
    tot = {k: sum(r[k] for r in rows) for k in rows[0]}
    tp, fp, fn = tot["tp"], tot["fp"], tot["fn"]
    return {"slides": len(rows), "true": int(tp + fn), "tp": int(tp), "fp": int(fp),
            "fn": int(fn), "f1": 2 * tp / max(2 * tp + fp + fn, 1),
            "pixel_iou": tot["inter"] / max(tot["union"], 1),
            "matched_iou": tot["matched_iou_sum"] / max(tp, 1)}


def mosaics(folder: Path, per_pattern: int, seed: int):
    from napari_atagan.evaluation.mosaic import make_mosaic

    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = make_mosaic(sub, shape=(1024, 1024), n_cells=per_pattern, seed=seed, touching=True)
        yield sub.name, m.image, m.labels, m.cell_diameter


def simulated(n: int, seed: int, pattern: str | None = None, intensity: float = 1.0,
              jpeg: int = 0):
    """Realistic simulated slides of 1388 x 1038 (cells of 75 px), of every pattern
    mixed or, with ``pattern``, of that one only (as a patient's slide is).
    ``intensity`` scales the light reaching the camera (0.3: a weakly positive,
    "intermediate" slide, fewer grey levels and more noise for the same cells);
    ``jpeg`` > 0 saves each slide as a JPEG of that quality and reads it back."""
    from napari_atagan.simulate import PATTERNS, simulate_slide

    for i in range(n):
        s = simulate_slide((1038, 1388), n_cells=45, cell_diameter=75.0, seed=seed + i,
                           bit_depth=8, realistic=True, intensity=intensity,
                           patterns=PATTERNS if pattern is None else (pattern,))
        group = "simulated" if pattern is None else f"simulated {pattern}"
        yield group, as_jpeg(s.image, jpeg), s.labels, s.cell_diameter


def dimmed(image: np.ndarray, fraction: float, seed: int = 0,
           photons: float = 3000.0, read_noise: float = 0.5) -> np.ndarray:
    """A real slide as it would look with ``fraction`` of its light: 8-bit, each pixel
    a Poisson draw of ``photons`` photo-electrons at full scale times its share of the
    light, plus ``read_noise`` grey levels of camera noise (the simulator's camera,
    ``simulate._camera``). ``fraction`` 1 returns the 8-bit slide unchanged."""
    from napari_atagan.simulate import _camera

    img = to_8bit(image)
    if fraction == 1:
        return img
    light = img.astype(np.float64) * (fraction / 255.0)
    return _camera(light, photons, read_noise, 8, np.random.default_rng(seed))


def zoomed(image: np.ndarray, labels: np.ndarray, factor: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """A slide and its labels as at ``factor`` times the magnification: the image
    enlarged by cubic interpolation (in its own dtype), the labels by repetition."""
    from skimage.transform import resize

    shape = (image.shape[0] * factor, image.shape[1] * factor)
    big = resize(image.astype(np.float32), shape, order=3, preserve_range=True,
                 anti_aliasing=False)
    if image.dtype.kind in "ui":
        info = np.iinfo(image.dtype)
        big = np.clip(np.rint(big), info.min, info.max)
    return (big.astype(image.dtype),
            np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1))


def to_8bit(image: np.ndarray) -> np.ndarray:
    """``image`` in 8 bits: as it is when it fits, else scaled so its maximum is 255."""
    top = float(np.max(image)) if image.size else 0.0
    if image.dtype == np.uint8:
        return image
    scale = 1.0 if top <= 255 else 255.0 / top
    return np.clip(np.rint(image * scale), 0, 255).astype(np.uint8)


def as_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` saved as a JPEG of ``quality`` (8-bit) and read back; 0: unchanged."""
    if not quality:
        return image
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_8bit(image)).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def main(argv: list[str] | None = None) -> int:
    from napari_atagan.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--crops", type=Path, default=None)
    ap.add_argument("--per-pattern", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slide", nargs=3, action="append", default=[],
                    metavar=("IMAGE", "LABELS", "DIAMETER"))
    ap.add_argument("--simulated", type=int, default=0)
    ap.add_argument("--simulated-patterns", nargs="+", default=[], metavar="NAME",
                    help="with --simulated N: N slides of each of these patterns alone, instead "
                         "of N slides of all six mixed (names of simulate.PATTERNS or "
                         "EXTRA_PATTERNS)")
    ap.add_argument("--intensity", type=float, default=1.0,
                    help="light on the slides (1; 0.3 for weakly positive slides): simulated "
                         "slides are drawn with it, real ones (--slide) dimmed by dimmed()")
    ap.add_argument("--zoom", type=int, default=1, metavar="F",
                    help="a real slide (--slide) enlarged F times with its labels and diameter, "
                         "as at a higher magnification (1: as it is)")
    ap.add_argument("--jpeg", type=int, default=0, metavar="QUALITY",
                    help="every slide saved as JPEG of this quality and read back (0: not)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    ap.add_argument("--background", default="flatten", choices=("flatten", "none"),
                    help="what the model's labelling does with the slide's background")
    args = ap.parse_args(argv)

    slides = []
    if args.crops is not None:
        slides += list(mosaics(args.crops, args.per_pattern, args.seed))
    for image, labels, d in args.slide:
        img = tifffile.imread(image)
        if img.ndim == 3:
            from napari_atagan.channels import grey_view

            img = np.asarray(grey_view(img)[0][:, :])
        truth = tifffile.imread(labels)
        if args.zoom != 1:
            img, truth = zoomed(img, truth, args.zoom)
        if args.intensity != 1 or args.jpeg:
            img = as_jpeg(dimmed(img, args.intensity), args.jpeg)
        slides.append((Path(image).stem, img, truth, float(d) * args.zoom))
    for pattern in args.simulated_patterns or [None]:
        slides += list(simulated(args.simulated, args.seed, pattern, args.intensity, args.jpeg))

    report = {}
    for path in args.checkpoints:
        ckpt = load_checkpoint(path)
        rows: dict[str, dict[str, list]] = {}
        t0 = time.perf_counter()
        for group, image, truth, d in slides:
            found = slide_cells(ckpt, image, d, device=args.device,
                                background=args.background)
            for who in SLIDE_METHODS:
                rows.setdefault(group, {}).setdefault(who, []).append(counts(found[who], truth))
        groups = {g: {who: pooled(r) for who, r in by.items()} for g, by in rows.items()}
        mosaic_groups = [g for g in rows if args.crops is not None and (args.crops / g).is_dir()]
        if mosaic_groups:
            groups["mosaics, all patterns"] = {
                who: pooled([r for g in mosaic_groups for r in rows[g][who]])
                for who in SLIDE_METHODS}
        report[str(path)] = groups
        print(f"\n{path} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        print(f"\n### {path.parent.name}/{path.name}\n")
        print("| slides | cells | " + " | ".join(f"{w} F1 / IoU" for w in SLIDE_METHODS) + " |")
        print("|---|---|" + "---|" * len(SLIDE_METHODS))
        for g, by in groups.items():
            print(f"| {g} | {by['model']['true']} | "
                  + " | ".join(f"{by[w]['f1']:.3f} / {by[w]['pixel_iou']:.3f}"
                               for w in SLIDE_METHODS) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
