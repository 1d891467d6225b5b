"""Cells of several models side by side, one row per model, and a row of real cells.

Each row holds ``--per-pattern`` cells of every pattern the first model knows (same
seed for every model), then, with ``--real``, a row of training cells of the same
patterns. Each cell is shown on the [-1, 1] scale the models draw in, enlarged by
whole pixels so a lattice stays visible. Used for the lattice pictures of
``docs/RESULTS.md``::

    python scripts/generator_rows_figure.py CKPT [CKPT ...] --real runs/sim_cells \\
        --out docs/results/lattice_rows.png
"""

from __future__ import annotations

import argparse

import numpy as np
from skimage import io

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.data import load_folder
from napari_atagan.gan.synthesis import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--real", default=None, help="a folder of the training cells")
    ap.add_argument("--per-pattern", type=int, default=2)
    ap.add_argument("--zoom", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    first = load_checkpoint(args.checkpoints[0])
    names = list(first.class_names)
    rows = []
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        cells = [generate(ck, args.per_pattern, pattern=name, seed=args.seed + k,
                          device="cpu").images for k, name in enumerate(names)]
        rows.append(np.concatenate([c for group in cells for c in group], axis=1))
    if args.real:
        real = load_folder(args.real, image_size=first.config.image_size)
        rng = np.random.default_rng(args.seed)
        picks = []
        for name in names:
            idx = np.flatnonzero(real.labels == real.class_names.index(name))
            picks += list(real.images[rng.choice(idx, args.per_pattern, replace=False)])
        rows.append(np.concatenate(picks, axis=1))
    sheet = np.concatenate(rows, axis=0)
    sheet = np.kron(sheet, np.ones((args.zoom, args.zoom), np.float32))
    io.imsave(args.out, ((sheet + 1) * 127.5).clip(0, 255).astype(np.uint8),
              check_contrast=False)
    print(f"wrote {args.out}: rows {', '.join(args.checkpoints)}"
          + (f", real cells of {args.real}" if args.real else "") + f"; columns {names}")


if __name__ == "__main__":
    main()
