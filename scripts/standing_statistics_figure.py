#!/usr/bin/env python
"""Cells drawn with copied and with standing BatchNorm statistics, beside real ones.

One row per pattern: real training cells, then the averaged generator's cells
with the running statistics copied from the trained generator, then the same
noise with standing statistics (:func:`napari_atagan.gan.models.standing_statistics`).
Every tile maps -1..1 to black..white (no per-tile stretching), so brightness
differences show as they are.

Usage: scripts/standing_statistics_figure.py CHECKPOINT TRAIN_FOLDER OUT.png [--n 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from _study_figures import GAP, HEAD, TILE, _font  # noqa: E402

from napari_atagan.data import load_folder  # noqa: E402
from napari_atagan.gan.models import standing_statistics  # noqa: E402
from napari_atagan.gan.synthesis import as_checkpoint  # noqa: E402

LEFT = 110


def tile(image: np.ndarray) -> Image.Image:
    grey = np.clip((np.asarray(image, np.float64) + 1) / 2, 0, 1)
    return Image.fromarray((grey * 255).astype(np.uint8)).resize((TILE, TILE), Image.NEAREST)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("train", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=4, help="cells per group")
    a = p.parse_args(argv)
    ckpt = as_checkpoint(a.checkpoint)
    copied = ckpt.generator()
    copied.load_state_dict(ckpt.state_dict("G_ema"))  # the statistics as stored
    copied.eval()
    standing = standing_statistics(copy.deepcopy(copied))
    real = load_folder(a.train, image_size=int(ckpt.config.image_size))
    names = list(ckpt.class_names)
    groups = ("real training cells", "copied statistics", "standing statistics")
    width = LEFT + len(groups) * (a.n * (TILE + GAP) + GAP)
    canvas = Image.new("RGB", (width, HEAD + len(names) * (TILE + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    for g, title in enumerate(groups):
        draw.text((LEFT + g * (a.n * (TILE + GAP) + GAP), 4), title, fill="black", font=_font())
    gen = torch.Generator().manual_seed(0)
    for k, name in enumerate(names):
        y0 = HEAD + k * (TILE + GAP)
        draw.text((4, y0 + TILE // 2 - 7), name, fill="black", font=_font())
        cells = real.images[real.labels == real.class_names.index(name)]
        pick = cells[np.linspace(0, len(cells) - 1, a.n).astype(int)]
        z = torch.randn(a.n, copied.z_dim, generator=gen)
        y = torch.full((a.n,), k)
        with torch.no_grad():
            rows = (pick, copied(z, y)[:, 0].numpy(), standing(z, y)[:, 0].numpy())
        for g, images in enumerate(rows):
            for i, image in enumerate(images):
                x0 = LEFT + g * (a.n * (TILE + GAP) + GAP) + i * (TILE + GAP)
                canvas.paste(tile(image), (x0, y0))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
