"""Evaluation slides ("mosaics") built from real single-cell crops with masks.

A model that localises cells must find them anywhere on a slide, not only in
the middle of a crop. Real slides with instance masks are rare; crops with
masks are common. :func:`make_mosaic` places crops at random positions on a
large canvas and keeps their masks as the instance ground truth:

1. **Cells.** ``n_cells`` crops are drawn at random, balanced over the staining
   patterns (one sub-folder per pattern, ``NNNNN.png`` + ``NNNNN_Mask.png``).
   The raw files are read with their original grey levels. Each crop gets a
   random one of the 8 dihedral transforms (rotations by 90 degrees, mirror)
   and is optionally rescaled by ``scale``.
2. **Background.** The pixels outside the (dilated) masks of the chosen crops
   give the background level (median of the crops' background medians) and
   spread (median of their robust standard deviations). The canvas is filled
   with that level plus a smooth haze and fine noise of that spread.
3. **Pasting.** Each crop is shifted additively so that its own background
   median lands on the canvas level (the cell keeps its contrast), and blended
   in with a soft alpha: 1 on the mask, fading to 0 over a few pixels around
   it. Neighbouring cells cut at the crop's edges and the crop's border never
   show.
4. **Positions.** Random, by rejection sampling: a cell's footprint (where its
   alpha is above zero) may not overlap another's. The whole crop stays on
   the canvas.

With ``touching=True`` the cells are packed as on a dense real slide instead:
most of them in clusters of 2-6 whose masks touch (4-connected neighbours
with different labels) but never overlap. A cluster grows by sliding a new
crop towards a random member until the masks meet; the soft edge of a crop
never paints over another cell's mask.

The same folder, settings and ``seed`` always give the same mosaic.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..data import CellData

__all__ = ["Mosaic", "RawCrop", "make_mosaic", "read_raw_crops", "write_mosaic"]

MAX_FILL = 0.5
"""Random non-overlapping placement jams at about half the canvas covered by footprints."""
_ATTEMPTS = 400
"""Random positions tried per cell before giving up on it."""
_MAD_TO_STD = 1.4826


@dataclass
class Mosaic:
    """An evaluation slide and its instance ground truth.

    Attributes:
        image: ``(H, W)`` uint8 or uint16 (the crops' own dtype) slide.
        labels: ``(H, W)`` uint16: 0 background, cell ``i`` has label ``i + 1``.
        patterns: the staining pattern of label ``i + 1`` at position ``i``
            (``""`` for crops without a pattern folder).
        cell_diameter: median equivalent diameter of the pasted cells, in pixels
            (what :func:`napari_atagan.slides.attention.slide_attention` needs).
    """

    image: np.ndarray
    labels: np.ndarray
    patterns: list[str]
    cell_diameter: float


@dataclass
class RawCrop:
    """One crop as stored on disk: original grey levels and its cell mask."""

    image: np.ndarray
    mask: np.ndarray
    """bool, True on the cell."""
    pattern: str
    file: str


# ---------------------------------------------------------------------------
# reading crops
# ---------------------------------------------------------------------------


def read_raw_crops(
    folder: str | os.PathLike,
    *,
    per_pattern: int | None = None,
    seed: int = 0,
) -> list[RawCrop]:
    """Read crops with masks from a folder, keeping their original grey levels.

    ``per_pattern`` keeps at most that many crops of every pattern (of the
    whole folder when it has no pattern sub-folders), drawn at random with
    ``seed``; ``None`` reads all. Raises ``ValueError`` when the folder holds no
    masks.
    """
    files = _list_crops(folder)
    if per_pattern is not None:
        if int(per_pattern) < 1:
            raise ValueError(f"per_pattern must be >= 1, got {per_pattern}")
        rng = np.random.default_rng(seed)
        chosen = []
        for pattern in _patterns_in_order(files):
            group = [f for f in files if f[2] == pattern]
            k = min(int(per_pattern), len(group))
            chosen += [group[i] for i in sorted(rng.choice(len(group), k, replace=False))]
        files = chosen
    return [_read_pair(*f) for f in files]


def _list_crops(folder: str | os.PathLike) -> list[tuple[Path, Path, str]]:
    """(image file, mask file, pattern) of every crop; errors for a folder without masks."""
    from ..data import _find_images, _find_masks

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"crop folder {str(root)!r} does not exist or is not a folder")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise ValueError(f"crop folder {str(root)!r} is empty")
    images, labels, names = _find_images(root, entries)
    masks = _find_masks(images)
    if masks is None:
        raise ValueError(
            f"the crops in {str(root)!r} have no masks: mosaics and attention scores need "
            "a cell mask NNNNN_Mask.png beside every image NNNNN.png"
        )
    patterns = [names[k] for k in labels] if labels is not None else [""] * len(images)
    return list(zip(images, masks, patterns))


def _patterns_in_order(files: list[tuple[Any, Any, str]]) -> list[str]:
    return list(dict.fromkeys(f[2] for f in files))


def _read_pair(image_file: Path, mask_file: Path, pattern: str) -> RawCrop:
    from ..data import _read_crop, _read_mask

    image, _ = _read_crop(Path(image_file))
    mask = _read_mask(Path(mask_file)) > 0
    if mask.shape != image.shape:
        raise ValueError(f"the mask of {image_file} has shape {mask.shape} but the image has "
                         f"{image.shape}: a mask must have the image's shape")
    if not mask.any():
        raise ValueError(f"the mask of {image_file} is all zero: mark the cell or remove it")
    return RawCrop(image=image, mask=mask, pattern=pattern, file=str(image_file))


def _crops_from_celldata(data: CellData, n: int, rng: np.random.Generator) -> list[RawCrop]:
    """Crops of an in-memory data set: from its files when known, else de-normalised."""
    if not data.has_masks:
        raise ValueError("the cells have no masks: mosaics need a cell mask per crop")
    idx = _balanced_choice(data.labels if data.has_labels else np.zeros(data.n, int), n, rng)
    names = data.class_names
    out = []
    for i in idx:
        pattern = names[int(data.labels[i])] if data.has_labels else ""
        if data.files is not None:
            from ..data import _mask_for

            mask_file = _mask_for(Path(data.files[i]))
            if mask_file is not None:
                out.append(_read_pair(Path(data.files[i]), mask_file, pattern))
                continue
        lo = float(data.intensity.get("lo", 0.0))
        hi = float(data.intensity.get("hi", 255.0))
        grey = lo + (data.images[i] + 1.0) / 2.0 * max(hi - lo, 1.0)
        dtype = np.uint16 if data.intensity.get("dtype") == "uint16" else np.uint8
        top = np.iinfo(dtype).max
        out.append(RawCrop(np.clip(np.rint(grey), 0, top).astype(dtype), data.masks[i] > 0,
                           pattern, f"cell {int(i)}"))
    return out


def _balanced_choice(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices, patterns taken in turn, cells of a pattern drawn without replacement
    (with replacement once a pattern runs out)."""
    groups = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    order = [rng.permutation(g) for g in groups]
    out = []
    for j in range(n):
        k = j % len(groups)
        turn = j // len(groups)
        g = order[k]
        out.append(g[turn] if turn < len(g) else g[rng.integers(len(g))])
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------------
# building a mosaic
# ---------------------------------------------------------------------------


def make_mosaic(
    folder_or_celldata: str | os.PathLike | CellData,
    *,
    shape: tuple[int, int] = (1024, 1024),
    n_cells: int = 60,
    seed: int = 0,
    scale: float = 1.0,
    touching: bool = False,
    context: float = 0.0,
) -> Mosaic:
    """Build an evaluation slide of ``n_cells`` real cells at random positions.

    Parameters
    ----------
    folder_or_celldata:
        A folder of crops with masks (pattern sub-folders of ``NNNNN.png`` +
        ``NNNNN_Mask.png``, or a flat folder), or a :class:`CellData` with masks
        (its files are read again for the raw grey levels when it has them).
    shape:
        ``(height, width)`` of the slide in pixels.
    n_cells:
        Number of cells to place.
    seed:
        Random seed: choice of crops, transforms, positions and noise.
    scale:
        Resize factor of the crops (0.5 halves the cells' size).
    touching:
        Pack the cells densely: most in clusters of 2-6 whose masks touch their
        neighbours' (never overlapping), for evaluation slides of touching cells.
        ``False`` (the default) keeps every cell apart.
    context:
        How much of each crop around its cell is pasted with it, in cell
        diameters beyond the mask (0, the default: the cell and a thin soft
        edge). Patterns whose stain lies outside the nucleus (Golgi's
        perinuclear clumps, a nuclear rim's outer half) keep it with a context
        of about 0.3; the labels stay the cells' masks. Not with ``touching``.

    Raises ``ValueError`` for crops without masks, a bad shape or scale, or more
    cells than fit on the canvas (the message says about how many fit).
    """
    h, w = _check_shape(shape)
    n_cells = _check_count(n_cells)
    scale = _check_scale(scale)
    if not isinstance(touching, (bool, np.bool_)):
        raise ValueError(f"touching must be True or False, got {touching!r}")
    try:
        context = float(context)
    except (TypeError, ValueError):
        context = float("nan")
    if not (0.0 <= context <= 2.0):
        raise ValueError(f"context must be between 0 and 2 cell diameters, got {context!r}")
    if context and touching:
        raise ValueError("context keeps each cell's surroundings, which touching cells "
                         "cannot have: choose one")
    rng = np.random.default_rng(_check_seed(seed))
    crops = _choose_crops(folder_or_celldata, n_cells, rng)
    cells = [_transform(c, rng, scale, context) for c in crops]
    _check_fits(cells, (h, w), n_cells)
    level, spread = _background_stats(cells)
    dtype = np.result_type(*[c.image.dtype for c in crops])
    diameter = float(np.median([math.sqrt(4.0 * c.mask.sum() / math.pi) for c in cells]))
    canvas = _background((h, w), level, spread, diameter, rng)
    labels = np.zeros((h, w), np.uint16)
    occupied = np.zeros((h, w), bool)
    placed = 0
    if touching:
        placed = _place_touching(canvas, labels, cells, rng)
    else:
        for i, cell in enumerate(cells):
            where = _find_spot(occupied, cell, rng)
            if where is None:
                continue
            _paste(canvas, labels, occupied, cell, where, level, i + 1)
            placed += 1
    if placed < n_cells:
        raise ValueError(
            f"only {placed} of {n_cells} cells fitted on a {h}x{w} canvas without overlapping: "
            f"ask for at most about {placed} cells or a larger --size"
        )
    top = np.iinfo(dtype).max if dtype.kind in "ui" else float(canvas.max())
    image = np.clip(np.rint(canvas), 0, top).astype(dtype)
    return Mosaic(image=image, labels=labels, patterns=[c.pattern for c in crops],
                  cell_diameter=diameter)


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width) in pixels, got {shape!r}") from None
    if (h, w) != tuple(shape) or h < 32 or w < 32:
        raise ValueError(f"shape must be two whole numbers >= 32 pixels, got {tuple(shape)}")
    if h * w > 2**31:
        raise ValueError(f"shape {(h, w)} is too large for a mosaic (at most 2**31 pixels)")
    return h, w


def _check_count(n_cells: Any) -> int:
    if isinstance(n_cells, bool) or int(n_cells) != n_cells or int(n_cells) < 1:
        raise ValueError(f"n_cells must be a whole number >= 1, got {n_cells!r}")
    return int(n_cells)


def _check_scale(scale: Any) -> float:
    value = float(scale)
    if not math.isfinite(value) or not 0.05 <= value <= 20:
        raise ValueError(f"scale must be a number between 0.05 and 20, got {scale!r}")
    return value


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or int(seed) != seed or int(seed) < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def _choose_crops(source: Any, n: int, rng: np.random.Generator) -> list[RawCrop]:
    if isinstance(source, CellData):
        return _crops_from_celldata(source, n, rng)
    files = _list_crops(source)
    patterns = _patterns_in_order(files)
    labels = np.array([patterns.index(f[2]) for f in files])
    return [_read_pair(*files[i]) for i in _balanced_choice(labels, n, rng)]


@dataclass
class _Cell:
    """A crop ready to paste: float grey levels, mask, soft alpha, own background level."""

    image: np.ndarray
    mask: np.ndarray
    alpha: np.ndarray
    footprint: np.ndarray
    background: float
    spread: float
    pattern: str


def _transform(crop: RawCrop, rng: np.random.Generator, scale: float,
               context: float = 0.0) -> _Cell:
    """Random dihedral transform, optional rescale, soft alpha and background statistics."""
    k = int(rng.integers(8))
    image = np.rot90(crop.image.astype(np.float32), k % 4)
    mask = np.rot90(crop.mask, k % 4)
    if k >= 4:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if scale != 1.0:
        from skimage.transform import rescale

        image = rescale(image, scale, order=1, anti_aliasing=scale < 1, preserve_range=True)
        mask = rescale(mask.astype(np.float32), scale, order=1, anti_aliasing=False) >= 0.5
        if not mask.any():
            raise ValueError(f"scale {scale} shrinks the cell of {crop.file} to nothing")
    image, mask = np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask)
    alpha = _soft_alpha(mask, context)
    outside = alpha == 0
    if outside.sum() < 16:  # the cell fills the crop: use its border
        outside = np.zeros_like(mask)
        outside[[0, -1], :] = outside[:, [0, -1]] = True
        outside &= ~mask
    bg = image[outside] if outside.any() else image[~mask] if (~mask).any() else image.ravel()
    med = float(np.median(bg))
    spread = _MAD_TO_STD * float(np.median(np.abs(bg - med)))
    return _Cell(image, mask, alpha, alpha > 0, med, spread, crop.pattern)


def _soft_alpha(mask: np.ndarray, context: float = 0.0) -> np.ndarray:
    """1 on the cell (and ``context`` diameters around it), fading smoothly to exactly
    0 a few pixels further out."""
    d = math.sqrt(4.0 * mask.sum() / math.pi)
    ring = max(2.0, 0.08 * d)
    dist = ndi.distance_transform_edt(~mask)
    t = np.clip((dist - context * d) / ring, 0.0, 1.0)
    alpha = 0.5 * (1.0 + np.cos(np.pi * t))  # 1 at the edge, 0 at `ring`
    if context:  # a context reaching the crop's own edge fades there too: no boxes
        h, w = mask.shape
        yy, xx = np.ogrid[:h, :w]
        edge = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
        fade = 0.5 * (1.0 - np.cos(np.pi * np.clip(edge / ring, 0.0, 1.0)))
        alpha = np.where(mask, 1.0, alpha * fade)
    return alpha.astype(np.float32)


def _check_fits(cells: list[_Cell], shape: tuple[int, int], n: int) -> None:
    h, w = shape
    big = max(max(c.image.shape) for c in cells)
    if big > min(h, w):
        raise ValueError(f"the crops are up to {big} px wide, larger than the {h}x{w} canvas: "
                         "use a larger shape or a smaller scale")
    area = float(np.mean([c.footprint.sum() for c in cells]))
    fit = int(MAX_FILL * h * w / area)
    if n > fit:
        raise ValueError(f"{n} cells do not fit on a {h}x{w} canvas: about {fit} cells of this "
                         "size fit without overlapping; ask for fewer cells or a larger shape")


def _background_stats(cells: list[_Cell]) -> tuple[float, float]:
    """Typical background level and pixel spread of the crops (robust medians)."""
    return (float(np.median([c.background for c in cells])),
            float(np.median([c.spread for c in cells])))


def _background(shape: tuple[int, int], level: float, spread: float, diameter: float,
                rng: np.random.Generator) -> np.ndarray:
    """Canvas: ``level`` plus a smooth haze and fine noise, ``spread`` in total (std)."""
    haze = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(diameter, 1.0))
    haze *= 0.5 * spread / max(float(haze.std()), 1e-12)
    fine = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.7)
    fine *= math.sqrt(0.75) * spread / max(float(fine.std()), 1e-12)
    return level + haze + fine


def _find_spot(occupied: np.ndarray, cell: _Cell,
               rng: np.random.Generator) -> tuple[int, int] | None:
    """A random top-left corner where the cell's footprint overlaps no other; None if none."""
    ch, cw = cell.footprint.shape
    h, w = occupied.shape
    for _ in range(_ATTEMPTS):
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        if not (occupied[y:y + ch, x:x + cw] & cell.footprint).any():
            return y, x
    return None


_CLUSTER_SIZES = np.array([1, 2, 3, 4, 5, 6])
_CLUSTER_P = np.array([0.12, 0.26, 0.22, 0.18, 0.12, 0.1])
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def _place_touching(canvas: np.ndarray, labels: np.ndarray, cells: list[_Cell],
                    rng: np.random.Generator) -> int:
    """Paste the cells in touching clusters; returns how many were placed.

    A cluster starts at a random free spot (its footprint clear of every other
    mask) and grows by pushing the next crop against a random member, along a
    random direction, until its mask is 4-adjacent to the member's mask without
    overlapping any mask. Labels are ``i + 1`` for ``cells[i]``; the cells that
    found no room are left out (and counted as missing).
    """
    h, w = labels.shape
    placed = 0
    members: list[tuple[int, int, int, int]] = []  # (label, centre y, centre x, radius) of the cluster
    wanted = 0
    for i, cell in enumerate(cells):
        where = None
        if wanted > 0 and members:
            for _attempt in range(8):
                anchor = members[int(rng.integers(len(members)))]
                where = _slide_against(labels, cell, anchor, rng)
                if where is not None:
                    break
            if where is None:
                wanted = 0  # the cluster is boxed in: start a new one
        if where is None:
            where = _free_spot(labels, cell, rng)
            if where is None:
                continue
            members = []
            wanted = int(rng.choice(_CLUSTER_SIZES, p=_CLUSTER_P))
        _paste_over_background(canvas, labels, cell, where, i + 1)
        ch, cw = cell.mask.shape
        cy, cx = _mask_centre(cell.mask)
        members.append((i + 1, where[0] + cy, where[1] + cx, max(ch, cw) // 2))
        wanted -= 1
        placed += 1
    return placed


def _mask_centre(mask: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(mask)
    return int(round(ys.mean())), int(round(xs.mean()))


def _free_spot(labels: np.ndarray, cell: _Cell, rng: np.random.Generator) -> tuple[int, int] | None:
    """A random top-left corner where the cell's footprint covers no mask; None if none."""
    ch, cw = cell.footprint.shape
    h, w = labels.shape
    for _ in range(_ATTEMPTS):
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        if not (labels[y:y + ch, x:x + cw][cell.footprint] > 0).any():
            return y, x
    return None


def _slide_against(labels: np.ndarray, cell: _Cell, anchor: tuple[int, int, int, int],
                   rng: np.random.Generator) -> tuple[int, int] | None:
    """Top-left corner where the cell's mask touches the anchor's mask (4-adjacent)
    and overlaps no mask, reached along a random direction; None if blocked."""
    label, ay, ax, radius = anchor
    ch, cw = cell.mask.shape
    h, w = labels.shape
    my, mx = _mask_centre(cell.mask)
    phi = rng.uniform(-math.pi, math.pi)
    sy, sx = math.sin(phi), math.cos(phi)

    def corner(t: float) -> tuple[int, int]:
        return int(round(ay + t * sy)) - my, int(round(ax + t * sx)) - mx

    def hits(y: int, x: int) -> bool:
        return bool((labels[y:y + ch, x:x + cw][cell.mask] > 0).any())

    def on_canvas(y: int, x: int) -> bool:
        return 0 <= y <= h - ch and 0 <= x <= w - cw

    hi = float(radius + max(ch, cw) + 2)
    y, x = corner(hi)
    if not on_canvas(y, x) or hits(y, x):
        return None
    lo = 0.0
    while hi - lo > 0.5:
        mid = 0.5 * (lo + hi)
        y, x = corner(mid)
        if on_canvas(y, x) and not hits(y, x):
            hi = mid
        else:
            lo = mid
    y, x = corner(hi)
    # the last step may leave a gap of a pixel: close it by a unit move that keeps the masks apart
    for dy, dx in ((0, 0), (round(-sy), 0), (0, round(-sx)), (round(-sy), round(-sx)),
                   (-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = y + int(dy), x + int(dx)
        if on_canvas(yy, xx) and not hits(yy, xx) and _touches(labels, cell.mask, yy, xx, label):
            return yy, xx
    return None


def _touches(labels: np.ndarray, mask: np.ndarray, y: int, x: int, label: int) -> bool:
    """Whether the mask placed at (y, x) is 4-adjacent to the pixels of ``label``."""
    ch, cw = mask.shape
    h, w = labels.shape
    y0, x0 = max(y - 1, 0), max(x - 1, 0)
    y1, x1 = min(y + ch + 1, h), min(x + cw + 1, w)
    grown = np.zeros((ch + 2, cw + 2), bool)
    grown[1:-1, 1:-1] = mask
    grown = ndi.binary_dilation(grown, _CROSS)
    grown = grown[y0 - (y - 1):y1 - (y - 1), x0 - (x - 1):x1 - (x - 1)]
    return bool((labels[y0:y1, x0:x1][grown] == label).any())


def _paste_over_background(canvas: np.ndarray, labels: np.ndarray, cell: _Cell,
                           where: tuple[int, int], label: int) -> None:
    """Paste like :func:`_paste`, but the soft edge leaves other cells' masks alone."""
    y, x = where
    ch, cw = cell.image.shape
    box = (slice(y, y + ch), slice(x, x + cw))
    under = canvas[box]
    alpha = np.where(labels[box] > 0, 0.0, cell.alpha)
    alpha[cell.mask] = 1.0
    canvas[box] = alpha * (cell.image - cell.background + under) + (1.0 - alpha) * under
    labels[box][cell.mask] = label


def _paste(canvas: np.ndarray, labels: np.ndarray, occupied: np.ndarray, cell: _Cell,
           where: tuple[int, int], level: float, label: int) -> None:
    y, x = where
    ch, cw = cell.image.shape
    box = (slice(y, y + ch), slice(x, x + cw))
    under = canvas[box]
    # the crop's background moved onto the canvas level, riding on the local haze
    shifted = cell.image - cell.background + under
    canvas[box] = cell.alpha * shifted + (1.0 - cell.alpha) * under
    labels[box][cell.mask] = label
    occupied[box] |= cell.footprint


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def write_mosaic(mosaic: Mosaic, out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.tif`` (the slide) and ``<stem>_labels.tif`` (ground truth) into ``out_dir``.

    Both are ImageJ TIFFs; the labels carry the cell diameter and the pattern
    of every label in their metadata
    (:func:`napari_atagan.export.read_tiff_metadata`). Returns both paths.
    """
    import tifffile

    from .. import __version__
    from ..export import save_labels_tiff

    out = Path(out_dir)
    if not stem or any(c in stem for c in "/\\"):
        raise ValueError(f"stem must be a plain file name without folders, got {stem!r}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "mosaic", "cell_diameter": round(float(mosaic.cell_diameter), 3),
            "n_cells": len(mosaic.patterns), "patterns": list(mosaic.patterns)}
    image_path = out / f"{stem}.tif"
    info = json.dumps({"software": f"napari-atagan {__version__}", **meta})
    tifffile.imwrite(image_path, mosaic.image, imagej=True, metadata={"axes": "YX", "Info": info})
    labels_path = save_labels_tiff(out / f"{stem}_labels.tif", mosaic.labels, metadata=meta)
    return image_path, labels_path
