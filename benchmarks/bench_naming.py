"""Naming cells' patterns in bfloat16 against float32, in the same run.

Usage::

    python benchmarks/bench_naming.py --patterns-from RUN.safetensors   # a classifier run
    python benchmarks/bench_naming.py                                    # a stand-in teacher

``--slides`` simulated 1388 x 1038 slides (``--cells`` cells of ``--diameter`` px, seeds
0..) are named cell by cell as the archive names them
(:func:`napari_atagan.slides.cells.pattern_probabilities`, on the slides' true cells, so
only the naming is timed), alternately in float32 and in bfloat16, ``--repeats`` times.
Printed as JSON: seconds per slide for each (the best repeat), their ratio, and how
alike the two name the cells (the share of equal calls, the largest difference of a
probability). Without ``--patterns-from`` the classifier is the teacher network with
random weights: the timing holds, the agreement says little. On a chip without native
bfloat16 (no AVX-512 BF16 or AMX) the archive stays in float32 and so would a user.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def stand_in(folder: Path) -> Path:
    """The shipped model with a (random) classifier teacher of the default size."""
    import torch

    from napari_atagan import default_model_path
    from napari_atagan.checkpoint import load_checkpoint, save_checkpoint
    from napari_atagan.gan.attention import PatternClassifier

    ckpt = load_checkpoint(default_model_path())
    torch.manual_seed(0)
    return save_checkpoint(folder / "stand_in.safetensors", config=ckpt.config,
                           modules={"D": ckpt.discriminator(),
                                    "teacher": PatternClassifier(len(ckpt.class_names))},
                           metadata={"class_names": ckpt.class_names,
                                     "data": ckpt.metadata.get("data", {})})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patterns-from", default="", metavar="RUN")
    p.add_argument("--slides", type=int, default=6)
    p.add_argument("--cells", type=int, default=60)
    p.add_argument("--diameter", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from napari_atagan.checkpoint import load_checkpoint
    from napari_atagan.device import fast_bfloat16, resolve_device
    from napari_atagan.simulate import simulate_slide
    from napari_atagan.slides.cells import cell_table, pattern_probabilities

    device = str(resolve_device(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.patterns_from or stand_in(Path(tmp))
        ckpt = load_checkpoint(path)
        model, source = ckpt.pattern_model(device)
        slides = []
        for seed in range(args.slides):
            s = simulate_slide((1038, 1388), n_cells=args.cells, cell_diameter=args.diameter,
                               seed=seed)
            labels = s.labels.astype(np.int32)
            table = cell_table(labels, s.image, np.zeros(labels.shape, np.float32))
            slides.append((s.image, labels, table.columns))

        def name_all(half: bool) -> tuple[float, np.ndarray]:
            t0 = time.perf_counter()
            probs = [pattern_probabilities(model, image, labels, columns, args.diameter, ckpt,
                                           device=device, bfloat16=half)
                     for image, labels, columns in slides]
            return time.perf_counter() - t0, np.concatenate(probs)

        name_all(False)  # warm-up
        best = {False: float("inf"), True: float("inf")}
        probs = {}
        for _ in range(args.repeats):
            for half in (False, True):
                seconds, probs[half] = name_all(half)
                best[half] = min(best[half], seconds)
    n = len(slides)
    report = {
        "namer": source, "patterns_from": args.patterns_from or "stand-in (random weights)",
        "device": device, "native_bfloat16": fast_bfloat16(device), "slides": n,
        "cells": int(len(probs[False])), "repeats": args.repeats,
        "float32_s_per_slide": round(best[False] / n, 4),
        "bfloat16_s_per_slide": round(best[True] / n, 4),
        "float32_over_bfloat16": round(best[False] / best[True], 2),
        "same_calls": round(float(np.mean(probs[False].argmax(1) == probs[True].argmax(1))), 4),
        "max_probability_difference": round(float(np.abs(probs[False] - probs[True]).max()), 4),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
