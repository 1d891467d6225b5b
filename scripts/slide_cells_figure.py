"""Cells on realistic simulated slides, with and without the background taken away.

One row per slide (``simulate_slide(..., realistic=True)``, 1388 x 1038, cells 75 px,
8 bit, seeds ``--seed``, ``--seed`` + 1, ...): the slide as it is; its attention
and cells (magenta) without flattening; the same with flattening (the default of
``napari-atagan attention``); the classic pipeline (blue). True cells green
throughout. Laid out by the study figures' sheet. Used for
``docs/results/slide_cells.png``::

    python scripts/slide_cells_figure.py sample_data/default_model.safetensors \\
        --seed 100 --slides 3 --out docs/results/slide_cells.png
"""

from __future__ import annotations

import argparse

import numpy as np
from _study_figures import _sheet, grey, heat, outline

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.evaluation.evaluate import slide_cells
from napari_atagan.metrics import match_objects
from napari_atagan.simulate import simulate_slide
from napari_atagan.slides.attention import slide_attention
from napari_atagan.slides.background import flatten_background
from napari_atagan.slides.labels import drop_border_cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--width", type=int, default=420, help="width of each picture in pixels")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    rows, titles = [], []
    for seed in range(args.seed, args.seed + args.slides):
        s = simulate_slide((1038, 1388), n_cells=45, cell_diameter=75.0, seed=seed, bit_depth=8,
                           realistic=True)
        truth = drop_border_cells(s.labels)
        small = _Shrink(s.image.shape, args.width)
        row, f1 = [small(grey(s.image))], {}
        for background in ("none", "flatten"):
            flat = np.asarray(flatten_background(s.image.astype(np.float32), 75.0, background))
            att = slide_attention(ckpt, flat, cell_diameter=75.0, device="cpu")
            found = slide_cells(ckpt, s.image, 75.0, device="cpu", background=background)
            cells = drop_border_cells(found["model"])
            f1[background] = match_objects(cells, truth, 0.5)["f1"]
            row += [small(heat(att)), outline(outline(small(grey(flat)), small.labels(truth)),
                                              small.labels(cells), (255, 0, 255))]
        classic = drop_border_cells(found["classic"])
        f1["classic"] = match_objects(classic, truth, 0.5)["f1"]
        row.append(outline(outline(small(grey(s.image)), small.labels(truth)),
                           small.labels(classic), (60, 120, 255)))
        rows.append(row)
        titles.append(f"seed {seed}\nobject F1\nas it is {f1['none']:.2f}\n"
                      f"flattened {f1['flatten']:.2f}\nclassic {f1['classic']:.2f}")
    tile_h = rows[0][0].shape[0]
    sheet = _sheet(rows, ["slide", "attention, as it is", "cells, as it is",
                          "attention, flattened", "cells, flattened", "classic pipeline"],
                   titles, left=100, tile=args.width, tile_h=tile_h)
    sheet.save(args.out)
    print(f"wrote {args.out}")


class _Shrink:
    """Pictures and labels of one slide at ``width`` pixels wide."""

    def __init__(self, shape: tuple[int, int], width: int) -> None:
        self.size = (int(round(shape[0] * width / shape[1])), width)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        return resize(rgb, self.size, order=1, preserve_range=True,
                      anti_aliasing=True).astype(np.uint8)

    def labels(self, labels: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        return resize(labels, self.size, order=0, preserve_range=True,
                      anti_aliasing=False).astype(labels.dtype)


if __name__ == "__main__":
    main()
