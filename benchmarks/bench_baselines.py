"""Crop-level IoU of the two model-free baselines on a folder of real cell crops.

Usage::

    python benchmarks/bench_baselines.py [FOLDER] [--per-pattern 300] [--calibrate]

``FOLDER`` holds one sub-folder per staining pattern with ``NNNNN.png`` crops and
their ``NNNNN_Mask.png`` cell masks (default: ``../shared/data/i3a-task1``
relative to the repository). For every pattern, ``--per-pattern`` crops evenly
spread over the folder are read; printed is the mean IoU with the true mask of

* the fixed centred ellipse (:func:`napari_atagan.metrics.ellipse_baseline`), and
* Otsu's threshold of the smoothed crop (:func:`napari_atagan.metrics.otsu_baseline`).

``--calibrate`` also prints the ellipse's mean IoU over all crops for a range of
sizes (the fraction of the crop side), which is how its default was chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.io import imread

from napari_atagan.metrics import ELLIPSE_FRACTION, ellipse_baseline, otsu_baseline, pixel_iou

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "i3a-task1"


def read_pattern(folder: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (crop, mask) pairs spread evenly over one pattern folder."""
    masks = sorted(folder.glob("*_Mask.png"))
    if not masks:
        return []
    pick = np.unique(np.linspace(0, len(masks) - 1, min(n, len(masks))).round().astype(int))
    pairs = []
    for i in pick:
        mask_path = masks[i]
        crop_path = mask_path.with_name(mask_path.name.replace("_Mask", ""))
        pairs.append((imread(crop_path), imread(mask_path) > 0))
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--per-pattern", type=int, default=300)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args(argv)
    patterns = sorted(p for p in args.folder.iterdir() if p.is_dir())
    if not patterns:
        raise SystemExit(f"no pattern folders in {args.folder}")
    print(f"{'pattern':<12} {'cells':>5} {'ellipse':>8} {'otsu':>6}")
    every = []
    for pattern in patterns:
        pairs = read_pattern(pattern, args.per_pattern)
        ell = [pixel_iou(ellipse_baseline(m.shape), m) for _, m in pairs]
        ots = [pixel_iou(otsu_baseline(_grey(c)) > 0, m) for c, m in pairs]
        every.extend(pairs)
        print(f"{pattern.name:<12} {len(pairs):>5} {np.mean(ell):>8.3f} {np.mean(ots):>6.3f}")
    ell = [pixel_iou(ellipse_baseline(m.shape), m) for _, m in every]
    ots = [pixel_iou(otsu_baseline(_grey(c)) > 0, m) for c, m in every]
    print(f"{'all':<12} {len(every):>5} {np.mean(ell):>8.3f} {np.mean(ots):>6.3f}"
          f"   (ellipse fraction {ELLIPSE_FRACTION})")
    if args.calibrate:
        for fraction in np.arange(0.60, 1.001, 0.025):
            iou = np.mean([pixel_iou(ellipse_baseline(m.shape, fraction), m) for _, m in every])
            print(f"ellipse fraction {fraction:.3f}: mean IoU {iou:.3f}")


def _grey(crop: np.ndarray) -> np.ndarray:
    return crop if crop.ndim == 2 else crop[..., :3].mean(axis=-1)


if __name__ == "__main__":
    main()
