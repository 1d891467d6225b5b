"""How well the archive names a slide's pattern: mosaics of one pattern each, held-out cells.

Usage::

    python scripts/archive_pattern_study.py --checkpoint RUN.safetensors \\
        --val SPLIT/val --out study/ [--per-pattern 5] [--cells 40] [--touching] \\
        [--patterns-from CLASSIFIER_RUN.safetensors]

For every pattern of the checkpoint, ``--per-pattern`` mosaics (seeds 0..K-1)
are built from the held-out cells of that pattern only (``--val``: the I3A
layout, one sub-folder per pattern, cells never trained on), so the truth of
every slide and of every cell on it is known. The whole set then runs through
:func:`napari_atagan.slides.archive.run_archive`, as ``napari-atagan attention
--image DIR`` does, at the cells' own diameter. Reported:

* **slide accuracy**: the slide's pattern (highest mean log-probability over its
  cells) is the mosaic's pattern; per pattern and over all;
* **per-cell accuracy** on the slides: found cells whose centroid lies in a
  true cell, called by their own pattern;
* **the classifier's own accuracy** on the same held-out cells as I3A crops
  them (each crop prepared as in training), the ceiling of the per-cell figure.

Writes ``pattern_study.json`` and ``pattern_study.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--val", required=True, type=Path, help="held-out cells, pattern sub-folders")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--per-pattern", type=int, default=5)
    p.add_argument("--cells", type=int, default=40, help="cells per mosaic (40)")
    p.add_argument("--size", type=int, nargs=2, default=(1038, 1388), metavar=("H", "W"))
    p.add_argument("--touching", action="store_true", help="pack the cells so most touch")
    p.add_argument("--context", type=float, default=0.0,
                   help="cell diameters of each crop pasted around its cell (see mosaic)")
    p.add_argument("--patterns-from", default="",
                   help="name the cells with this run's classifier teacher (as attention "
                        "--patterns-from)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    import tifffile

    from napari_atagan.slides.archive import ArchiveOptions, ArchiveDone, outputs_for, run_archive
    from napari_atagan.slides.cells import read_cells_csv
    from napari_atagan.checkpoint import load_checkpoint
    from napari_atagan.evaluation.mosaic import make_mosaic, write_mosaic

    ckpt = load_checkpoint(args.checkpoint)
    namer = load_checkpoint(args.patterns_from) if args.patterns_from else ckpt
    patterns = namer.class_names
    found = namer.pattern_model()
    if found is None:
        print("the checkpoint knows no patterns", file=sys.stderr)
        return 2
    model, source = found
    mosaics = args.out / "mosaics"
    truth: dict[str, str] = {}
    diameters = []
    for pattern in patterns:
        for k in range(args.per_pattern):
            stem = f"{pattern}_{k:02d}"
            if not (mosaics / f"{stem}.tif").exists():
                m = make_mosaic(args.val / pattern, shape=tuple(args.size), n_cells=args.cells,
                                seed=k, touching=args.touching, context=args.context)
                write_mosaic(m, mosaics, stem)
                diameters.append(m.cell_diameter)
            truth[stem] = pattern
    diameter = float(ckpt.metadata.get("data", {}).get("cell_diameter") or np.median(diameters))
    options = ArchiveOptions(checkpoint=str(args.checkpoint), out_dir=str(args.out / "cells"),
                             diameter=diameter, device=args.device,
                             patterns_from=args.patterns_from)
    paths = [mosaics / f"{s}.tif" for s in truth]
    done = None
    for event in run_archive(paths, options, workers=args.workers):
        if isinstance(event, ArchiveDone):
            done = event
    per_pattern: dict[str, dict[str, float]] = {}
    slide_right, cell_right, cell_total = {}, {}, {}
    for row in done.rows:
        stem = Path(row["slide"]).stem
        want = truth[stem]
        slide_right.setdefault(want, []).append(row["pattern"] == want)
        table = read_cells_csv(outputs_for(mosaics / row["slide"], options.out_dir)["cells"])
        true_labels = tifffile.imread(mosaics / f"{stem}_labels.tif")
        cy = np.clip(np.rint(table.columns["centroid_y"]).astype(int), 0, true_labels.shape[0] - 1)
        cx = np.clip(np.rint(table.columns["centroid_x"]).astype(int), 0, true_labels.shape[1] - 1)
        on_cell = true_labels[cy, cx] > 0
        calls = table.columns["pattern"][on_cell] if len(table) else np.array([])
        cell_right[want] = cell_right.get(want, 0) + int(np.sum(calls == want))
        cell_total[want] = cell_total.get(want, 0) + int(on_cell.sum())
    crop_acc = _crop_accuracy(model, args.val, patterns, int(namer.config.image_size))
    for pattern in patterns:
        per_pattern[pattern] = {
            "slide_accuracy": float(np.mean(slide_right.get(pattern, [False]))),
            "cell_accuracy": cell_right.get(pattern, 0) / max(1, cell_total.get(pattern, 0)),
            "cells": cell_total.get(pattern, 0),
            "crop_accuracy": crop_acc[pattern],
        }
    all_slides = [v for vals in slide_right.values() for v in vals]
    report = {
        "checkpoint": str(args.checkpoint),
        "patterns_from": args.patterns_from or None,
        "pattern_source": source,
        "slides": len(all_slides),
        "cell_diameter": diameter,
        "touching": args.touching,
        "context": args.context,
        "slide_accuracy": float(np.mean(all_slides)),
        "cell_accuracy": sum(cell_right.values()) / max(1, sum(cell_total.values())),
        "crop_accuracy": float(np.mean([crop_acc[p] for p in patterns])),
        "seconds": round(done.seconds, 1),
        "per_pattern": per_pattern,
    }
    (args.out / "pattern_study.json").write_text(json.dumps(report, indent=2))
    lines = [f"Pattern named by the {source}; {report['slides']} mosaics of held-out cells, "
             f"{args.per_pattern} per pattern, {args.cells} cells each, context "
             f"{args.context}.", "",
             "| pattern | slide accuracy | per-cell accuracy on slides | cells | "
             "classifier on crops |", "|---|---|---|---|---|"]
    for pattern, r in per_pattern.items():
        lines.append(f"| {pattern} | {r['slide_accuracy']:.2f} | {r['cell_accuracy']:.3f} | "
                     f"{r['cells']} | {r['crop_accuracy']:.3f} |")
    lines.append(f"| **all** | **{report['slide_accuracy']:.2f}** | "
                 f"**{report['cell_accuracy']:.3f}** | {sum(cell_total.values())} | "
                 f"**{report['crop_accuracy']:.3f}** (mean of patterns) |")
    (args.out / "pattern_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _crop_accuracy(model, val: Path, patterns: list[str], image_size: int) -> dict[str, float]:
    """The pattern model on held-out crops prepared as in training, per pattern."""
    import torch

    from napari_atagan.data import load_folder

    data = load_folder(val, image_size=image_size)
    index = [patterns.index(n) for n in data.class_names]
    truth = np.array([index[i] for i in data.labels])
    preds = []
    with torch.inference_mode():
        for k in range(0, data.n, 256):
            x = torch.from_numpy(data.images[k:k + 256][:, None])
            preds.append(model(x).argmax(dim=1).numpy())
    pred = np.concatenate(preds)
    return {p: float(np.mean(pred[truth == i] == i)) if np.any(truth == i) else float("nan")
            for i, p in enumerate(patterns)}


if __name__ == "__main__":
    sys.exit(main())
