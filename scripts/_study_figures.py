"""Pictures of the results study (see ``study_i3a.py``): numpy, scikit-image and Pillow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.segmentation import find_boundaries
from skimage.transform import resize

from napari_atagan.slides.labels import attention_to_labels
from napari_atagan.metrics import otsu_baseline
from napari_atagan.evaluation.mosaic import make_mosaic, read_raw_crops
from napari_atagan.evaluation.evaluate import default_min_size
from napari_atagan.slides.attention import slide_attention
from napari_atagan.gan.synthesis import as_checkpoint, crop_attention, generate

TILE = 72
GAP = 6
HEAD = 22
_HEAT = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float64)


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def _name(run: Path) -> str:
    """Teacher and beta: short enough for a column title."""
    study = json.loads((run / "study.json").read_text())
    return "none (plain GAN)" if study["teacher"] == "none" else \
        f"{study['teacher']}, beta {study['beta']:g}"


def grey(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Contrast-stretched uint8 RGB (1st-99.8th percentile)."""
    a = np.asarray(a, np.float64)
    lo, hi = np.percentile(a, [1, 99.8])
    g = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def heat(a: np.ndarray, top: float | None = None) -> np.ndarray:
    """A map in [0, top] (default: its max) as RGB with a perceptual dark-to-bright ramp."""
    a = np.asarray(a, np.float64)
    top = a.max() if top is None else top
    a = a / top if top > 0 else a
    pos = np.clip(a, 0, 1) * (len(_HEAT) - 1)
    i = np.minimum(pos.astype(int), len(_HEAT) - 2)
    f = (pos - i)[..., None]
    return ((1 - f) * _HEAT[i] + f * _HEAT[i + 1]).astype(np.uint8)


def outline(rgb: np.ndarray, labels: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    out = rgb.copy()
    out[find_boundaries(labels, mode="inner")] = colour
    return out


def colour_labels(labels: np.ndarray, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lut = rng.integers(60, 256, (int(labels.max()) + 1, 3)).astype(np.uint8)
    lut[0] = 0
    return lut[labels]


def fit(rgb: np.ndarray, side: int = TILE) -> np.ndarray:
    return (resize(rgb, (side, side), order=1, preserve_range=True, anti_aliasing=True)
            .astype(np.uint8))


def _sheet(rows: list[list[np.ndarray]], col_titles: list[str], row_titles: list[str],
           left: int = 110, tile: int = TILE, tile_h: int | None = None) -> Image.Image:
    """Pictures in titled rows and columns, ``tile`` wide and ``tile_h`` (default ``tile``)
    high."""
    tile_h = tile if tile_h is None else tile_h
    n_cols = max(len(r) for r in rows)
    w = left + n_cols * (tile + GAP)
    h = HEAD + len(rows) * (tile_h + GAP)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for j, title in enumerate(col_titles):
        draw.text((left + j * (tile + GAP), 3), title, fill=(0, 0, 0), font=font)
    for i, (row, title) in enumerate(zip(rows, row_titles, strict=True)):
        y = HEAD + i * (tile_h + GAP)
        draw.text((4, y + tile_h // 2 - 8), title, fill=(0, 0, 0), font=font)
        for j, img in enumerate(row):
            canvas.paste(Image.fromarray(img), (left + j * (tile + GAP), y))
    return canvas


def _typical_cells(val: Path, per_pattern: int, seed: int = 0):
    crops = read_raw_crops(val, per_pattern=per_pattern, seed=seed)
    patterns = list(dict.fromkeys(c.pattern for c in crops))
    return patterns, {p: [c for c in crops if c.pattern == p] for p in patterns}


def samples_figure(runs: list[Path], val: Path, out: Path, per: int = 4) -> None:
    """Rows: patterns. Columns: ``per`` real validation cells, then ``per`` cells of each model."""
    patterns, cells = _typical_cells(val, per)
    gens = {}
    for run in runs:
        ckpt = as_checkpoint(run / "checkpoint.safetensors")
        gens[run] = {p: generate(ckpt, per, pattern=p, seed=7, device="cpu").images
                     for p in patterns}
    rows = []
    for p in patterns:
        row = [fit(grey(c.image)) for c in cells[p]]
        for run in runs:
            row += [fit(grey(g)) for g in gens[run][p]]
        rows.append(row)
    titles = ["real (validation)"] + [""] * (per - 1)
    for run in runs:
        titles += [_name(run)] + [""] * (per - 1)
    _sheet(rows, titles, patterns).save(out)


def attention_figure(runs: list[Path], val: Path, out: Path) -> None:
    """Rows: one real validation cell per pattern. Columns: the cell with its true outline,
    then every model's attention on it."""
    patterns, cells = _typical_cells(val, 1, seed=5)
    rows = []
    maps = {}
    for run in runs:
        ckpt = as_checkpoint(run / "checkpoint.safetensors")
        maps[run] = crop_attention(ckpt, [cells[p][0].image for p in patterns], device="cpu")
    for k, p in enumerate(patterns):
        c = cells[p][0]
        row = [fit(outline(grey(c.image), c.mask.astype(int)), 124)]
        row += [fit(outline(heat(maps[run][k]), c.mask.astype(int), (0, 255, 255)), 124)
                for run in runs]
        rows.append(row)
    _sheet(rows, ["cell + mask"] + [_name(r) for r in runs], patterns, tile=124).save(out)


def generated_attention_figure(runs: list[Path], out: Path, per: int = 2) -> None:
    """Rows: patterns. Columns: for every model, ``per`` of its generated cells, each
    followed by its discriminator's attention on it (with the mask made from it)."""
    ckpts = {run: as_checkpoint(run / "checkpoint.safetensors") for run in runs}
    patterns = list(next(iter(ckpts.values())).class_names)
    rows = []
    for p in patterns:
        row = []
        for run in runs:
            syn = generate(ckpts[run], per, pattern=p, seed=11, device="cpu")
            for img, cam, mask in zip(syn.images, syn.attention, syn.masks, strict=True):
                row += [fit(grey(img)), fit(outline(heat(cam), mask.astype(int), (0, 255, 255)))]
        rows.append(row)
    titles = []
    for run in runs:
        titles += [_name(run)] + [""] * (2 * per - 1)
    _sheet(rows, titles, patterns).save(out)


def mosaic_figure(runs: list[Path], val: Path, out: Path, side: int = 768) -> None:
    """A mosaic of validation cells of every pattern: the slide, its true cells, Otsu's cells
    and every model's attention and cells."""
    m = make_mosaic(val, shape=(side, side), n_cells=24, seed=11)
    min_size = default_min_size(m.cell_diameter)
    panels = [(grey(m.image), "mosaic of real cells"),
              (outline(grey(m.image), m.labels), "true cells"),
              (outline(grey(m.image), otsu_baseline(m.image.astype(np.float32),
                                                    min_size=min_size)), "Otsu")]
    for run in runs:
        ckpt = as_checkpoint(run / "checkpoint.safetensors")
        att = slide_attention(ckpt, m.image, cell_diameter=m.cell_diameter, device="cpu")
        lab = attention_to_labels(att, min_size=min_size)
        panels.append((heat(att), f"{_name(run)}: attention"))
        panels.append((outline(grey(m.image), lab), f"{_name(run)}: cells"))
    tile = 300
    cols = 3
    n_rows = -(-len(panels) // cols)
    canvas = Image.new("RGB", (cols * (tile + GAP), n_rows * (tile + HEAD + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for k, (img, title) in enumerate(panels):
        x, y = (k % cols) * (tile + GAP), (k // cols) * (tile + HEAD + GAP)
        draw.text((x + 2, y + 3), title, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(fit(img, tile)), (x, y + HEAD))
    canvas.save(out)
