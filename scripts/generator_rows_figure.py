"""Cells of several models side by side, one row per model, and a row of real cells.

Each row holds ``--per-pattern`` cells of every pattern the first model knows (same
seed for every model), then, with ``--real``, a row of training cells of the same
patterns, laid out by the study figures' sheet (``_study_figures._sheet``, titled
rows and columns). Each cell is shown on the [-1, 1] scale the models draw in,
enlarged by whole pixels so a lattice stays visible. Used for the lattice pictures of
``docs/RESULTS.md``::

    python scripts/generator_rows_figure.py CKPT [CKPT ...] --real runs/sim_cells \\
        --out docs/results/lattice_rows.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _study_figures import _sheet

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

    def tiles(cells: np.ndarray) -> list[np.ndarray]:
        zoom = np.ones((args.zoom, args.zoom), np.float32)
        return [((np.kron(c, zoom) + 1) * 127.5).clip(0, 255).astype(np.uint8) for c in cells]

    rows, titles = [], []
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        rows.append([t for k, name in enumerate(names) for t in tiles(
            generate(ck, args.per_pattern, pattern=name, seed=args.seed + k,
                     device="cpu").images)])
        titles.append(Path(path).stem)
    if args.real:
        real = load_folder(args.real, image_size=first.config.image_size)
        rng = np.random.default_rng(args.seed)
        picks = [rng.choice(np.flatnonzero(real.labels == real.class_names.index(name)),
                            args.per_pattern, replace=False) for name in names]
        rows.append(tiles(real.images[np.concatenate(picks)]))
        titles.append("training cells")
    columns = [t for name in names for t in [name] + [""] * (args.per_pattern - 1)]
    side = first.config.image_size * args.zoom
    _sheet(rows, columns, titles, left=8 * max(map(len, titles)), tile=side).save(args.out)
    print(f"wrote {args.out}: rows {', '.join(args.checkpoints)}"
          + (f", real cells of {args.real}" if args.real else "") + f"; columns {names}")


if __name__ == "__main__":
    main()
