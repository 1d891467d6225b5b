"""Cells on realistic simulated slides, with and without the background taken away.

One row per slide (``simulate_slide(..., realistic=True)``, 1388 x 1038, cells 75 px,
8 bit, seeds ``--seed``, ``--seed`` + 1, ...): the slide as it is; its attention
and cells (magenta) without flattening; the same with flattening (the default of
``napari-atagan attention``); the classic pipeline (blue). True cells green
throughout. Laid out by the study figures' sheet. Used for
``docs/results/slide_cells.png``::

    python scripts/slide_cells_figure.py sample_data/default_model.safetensors \\
        --seed 100 --slides 3 --out docs/results/slide_cells.png

``--real DIR`` draws a real slide instead (``DIR/nuclei.tif`` with its true cells in
``DIR/nuclei_labels.tif``, at their median diameter): the slide, the attention, the
cells this product writes, the same labelling with the model-free blob map alone, and
the classic pipeline, each titled with its object F1 / pixel IoU (cells on the border
left out on both sides). Used for ``docs/results/real_slide_cells.png``::

    python scripts/slide_cells_figure.py sample_data/default_model.safetensors \\
        --real ../shared/data/real-slides --width 512 --out docs/results/real_slide_cells.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _study_figures import _sheet, grey, heat, outline

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.evaluation.evaluate import slide_cells
from napari_atagan.metrics import match_objects, pixel_iou
from napari_atagan.simulate import simulate_slide
from napari_atagan.slides.attention import slide_attention
from napari_atagan.slides.background import flatten_background
from napari_atagan.slides.labels import drop_border_cells
from napari_atagan.slides.segment import median_diameter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--slides", type=int, default=3)
    ap.add_argument("--width", type=int, default=420, help="width of each picture in pixels")
    ap.add_argument("--real", help="a folder with nuclei.tif and nuclei_labels.tif")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    if args.real:
        return real_slide(ckpt, Path(args.real), args.width, args.out)
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


def real_slide(ckpt, folder: Path, width: int, out: str) -> None:
    """One row: a real slide, its attention, and the cells of three methods on it."""
    import tifffile

    image = tifffile.imread(folder / "nuclei.tif")
    truth = drop_border_cells(tifffile.imread(folder / "nuclei_labels.tif"))
    d = median_diameter(truth)
    flat = np.asarray(flatten_background(image.astype(np.float32), d, "flatten"))
    found = slide_cells(ckpt, image, d, device="cpu")
    small = _Shrink(image.shape, width)
    row, titles = [small(grey(image)), small(heat(slide_attention(ckpt, flat, cell_diameter=d,
                                                                   device="cpu")))], []
    names = {"model": "cells (this product)", "blob": "blob map alone (no model)",
             "classic": "classic pipeline (no model)"}
    for key, colour in (("model", (255, 0, 255)), ("blob", (255, 160, 0)),
                        ("classic", (60, 120, 255))):
        cells = drop_border_cells(found[key])
        score = match_objects(cells, truth, 0.5)
        iou = pixel_iou(cells > 0, truth > 0)
        row.append(outline(outline(small(grey(image)), small.labels(truth)),
                           small.labels(cells), colour))
        titles.append(f"{names[key]}: F1 {score['f1']:.3f}, IoU {iou:.3f}")
    sheet = _sheet([row], ["slide", "attention"] + titles,
                   [f"{folder.name}\n{len(np.unique(truth)) - 1} nuclei\nd {d:.1f} px"],
                   left=100, tile=width, tile_h=row[0].shape[0])
    sheet.save(out)
    print(f"wrote {out}")
    for t in titles:
        print(t)


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
