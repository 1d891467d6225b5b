#!/usr/bin/env python
"""How well the pattern classifier (the teacher) names cells of specimens it never saw.

Usage::

    python scripts/teacher_study.py --split SPLIT --out OUT [--image-size 32]
        [--epochs 3] [--seed 0] [--variant plain|jitter]

Trains :func:`napari_atagan.gan.attention.train_classifier` on ``SPLIT/train``
(the I3A layout, one sub-folder per pattern) with no internal hold-out, and
scores it on every cell of ``SPLIT/val`` (other specimens), per pattern, with
the confusion matrix. ``--variant jitter`` adds the acquisition jitter (random
gamma, defocus and camera noise per crop) to the training crops. Writes
``OUT/teacher_<variant>_s<seed>_<size>px.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", required=True, type=Path, help="folder with train/ and val/")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=("plain", "jitter"), default="plain")
    p.add_argument("--stem-pool", type=int, choices=(1, 2), default=1,
                   help="max-pool after the stem (2: the blocks at half resolution)")
    args = p.parse_args(argv)

    from napari_atagan._atomic import write_text_atomically
    from napari_atagan.data import load_folder
    from napari_atagan.evaluation.evaluate import _pattern_accuracy
    from napari_atagan.gan.attention import train_classifier

    train = load_folder(args.split / "train", image_size=args.image_size)
    val = load_folder(args.split / "val", image_size=args.image_size)
    if train.class_names != val.class_names:
        raise SystemExit(f"train and val patterns differ: {train.class_names} / {val.class_names}")
    names = list(train.class_names)

    def progress(info: dict) -> None:
        print(f"epoch {info['epoch']}/{info['epochs']}: loss {info['loss']:.3f}, "
              f"train {info['train_accuracy']:.3f} ({info['seconds']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    model, info = train_classifier(train, epochs=args.epochs, seed=args.seed, val_fraction=0.0,
                                   jitter=args.variant == "jitter", stem_pool=args.stem_pool,
                                   progress=progress)
    scores = _pattern_accuracy(model, val, names)
    result = {
        "variant": args.variant, "seed": args.seed, "image_size": args.image_size,
        "stem_pool": args.stem_pool,
        "epochs": args.epochs, "n_train": int(train.n), "n_val": int(val.n),
        **scores, "mean_of_patterns": float(np.mean(list(scores["per_pattern"].values()))),
        "patterns": names, "seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / (f"teacher_{args.variant}_s{args.seed}_{args.image_size}px"
                      + (f"_pool{args.stem_pool}" if args.stem_pool > 1 else "") + ".json")
    write_text_atomically(out, json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("accuracy", "mean_of_patterns", "per_pattern")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
