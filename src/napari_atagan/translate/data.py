"""The two domains of a translation run, on one fixed grey scale.

Translation has to keep absolute brightness (a dim cell translated to a bright
domain must come out bright, and back), so the crops are *not* normalised one
by one as the ATA-GAN crops are (:mod:`napari_atagan.data`). Instead:

1. **Levels.** One pair of source grey levels ``lo``/``hi`` serves both
   domains: the 0.5th and 99.5th percentiles of all pixels of both domains
   pooled (a regular sub-sample of at most :data:`LEVEL_SAMPLE_PIXELS` pixels).
2. **Map.** Every crop is mapped linearly with that pair, ``lo -> -1`` and
   ``hi -> +1``; values beyond stay beyond and are clipped to
   [-:data:`CLIP`, +:data:`CLIP`].
3. **Square and resize** as for the ATA-GAN crops: padded to a square centred
   on the cell (the mask's bounding box, else the crop's centre) with the
   crop's own mirrored edge strip or its median border level, then resized to
   ``image_size`` (anti-aliased).

The levels are stored in the checkpoint, so a slide is mapped exactly as the
training crops were and the output is mapped back to the input's grey levels
(:class:`Levels`). Masks are optional; they only give the cell diameter (and
can serve evaluation).

With ``own_levels`` (a run's ``grey_levels="own"``) step 1 is taken for every
crop alone: each is mapped by its own 0.5th/99.5th percentiles, as ATA-GAN
crops are, and brightness is no longer part of what is translated (see
:attr:`napari_atagan.translate.TranslateConfig.grey_levels`). The pooled levels
are still measured and stored, for reference.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import resize

from .. import data as _cells

__all__ = [
    "CLIP",
    "DomainData",
    "LEVEL_SAMPLE_PIXELS",
    "Levels",
    "LocalLevels",
    "load_domains",
    "local_levels",
    "own_levels",
]

LO_PCT = 0.5
HI_PCT = 99.5
CLIP = 1.5
"""Model-scale values are clipped to [-CLIP, CLIP]."""
LEVEL_SAMPLE_PIXELS = 4_000_000
"""Most pixels (of both domains together) read to find the levels."""

LOCAL_BLOCKS = 16
"""Blocks across one crop side when a slide's own levels are found crop by crop
(:func:`local_levels`); each block keeps its brightest pixel."""
LOCAL_PCT = 95.0
"""The high level around a point: this percentile of the block maxima in a window of one
crop's side (about its brightest 0.5 % of pixels, as a crop's own 99.5th percentile)."""
LOCAL_FLOOR = 0.25
"""No window's high level is below ``lo + LOCAL_FLOOR * (hi - lo)`` of the slide's own
levels: a window of background only is not stretched as if it held a cell."""


@dataclass(frozen=True)
class Levels:
    """The source grey levels that map to -1 (``lo``) and +1 (``hi``)."""

    lo: float
    hi: float
    lo_pct: float = LO_PCT
    hi_pct: float = HI_PCT

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi <= self.lo:
            raise ValueError(f"intensity levels need finite lo < hi, got lo={self.lo}, "
                             f"hi={self.hi}")

    @property
    def scale(self) -> float:
        """Model units per grey level."""
        return 2.0 / (self.hi - self.lo)

    def to_model(self, x: Any) -> np.ndarray:
        """Grey levels to model units (float32, clipped to [-CLIP, CLIP])."""
        out = (np.asarray(x, dtype=np.float32) - np.float32(self.lo)) * np.float32(self.scale)
        out -= 1.0
        return np.clip(out, -CLIP, CLIP, out=out)

    def to_source(self, y: Any) -> np.ndarray:
        """Model units back to grey levels (float32)."""
        y = np.asarray(y, dtype=np.float32)
        return np.float32(self.lo) + (y + 1.0) * np.float32((self.hi - self.lo) / 2.0)

    def region(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi - lo)`` at pixels ``[rows, cols]`` (float32 scalars: one grey scale
        everywhere), as :meth:`LocalLevels.region` gives them per pixel."""
        return np.float32(self.lo), np.float32(self.hi - self.lo)

    def to_dict(self) -> dict[str, float]:
        return {"lo": float(self.lo), "hi": float(self.hi), "lo_pct": float(self.lo_pct),
                "hi_pct": float(self.hi_pct)}

    @classmethod
    def from_dict(cls, d: Any) -> Levels:
        if not isinstance(d, dict) or "lo" not in d or "hi" not in d:
            raise ValueError(f"intensity levels must be a dict with 'lo' and 'hi', got {d!r}")
        return cls(float(d["lo"]), float(d["hi"]), float(d.get("lo_pct", LO_PCT)),
                   float(d.get("hi_pct", HI_PCT)))


@dataclass
class DomainData:
    """The crops of one domain on the run's fixed grey scale.

    Attributes:
        name: the domain's name (its folder's name, or ``"A"``/``"B"``).
        images: float32 ``(N, S, S)`` in model units, within [-CLIP, CLIP].
        masks: uint8 ``(N, S, S)`` 0/1 cell masks, or ``None``.
        source: the folder the crops came from (``None`` for arrays).
        dtype: the crops' source dtype (``uint8``, ``uint16``, ``float32``).
        cell_diameter: median cell diameter in source pixels (equivalent
            diameter of the mask, else 0.7 x the crop side, as for ATA-GAN crops).
        model_cell_diameter: the same after the resize to ``image_size``.
        class_names: the pattern sub-folders, if any (kept for reference only).
        own_span: the median grey range of the crops, each on its own levels (99.5th
            minus 0.5th percentile, in source grey levels): how bright the domain's
            cells stand above their background, which a ``grey_levels="target"`` run
            gives the cells it translates into this domain.
    """

    name: str
    images: np.ndarray
    masks: np.ndarray | None
    source: str | None
    dtype: str
    cell_diameter: float
    model_cell_diameter: float
    class_names: list[str]
    own_span: float = float("nan")

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def info(self) -> dict[str, Any]:
        """JSON facts for the checkpoint."""
        return {
            "name": self.name,
            "folder": self.source,
            "n_cells": self.n,
            "dtype": self.dtype,
            "has_masks": self.has_masks,
            "cell_diameter": float(self.cell_diameter),
            "model_cell_diameter": float(self.model_cell_diameter),
            "class_names": list(self.class_names),
            "own_span": float(self.own_span) if math.isfinite(self.own_span) else None,
        }

    def __repr__(self) -> str:
        return (f"DomainData({self.name!r}, n={self.n}, image_size={self.image_size}, "
                f"masks={self.has_masks}, cell_diameter={self.cell_diameter:.1f})")


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


@dataclass
class _Raw:
    """The crops of a domain as read: grey values, not yet mapped."""

    name: str
    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    labels: list[str]
    source: str | None
    class_names: list[str]


def load_domains(
    a: Any,
    b: Any,
    *,
    image_size: int = 64,
    levels: Levels | None = None,
    own_levels: bool = False,
) -> tuple[DomainData, DomainData, Levels]:
    """Read both domains and bring them to one grey scale (see the module docstring).

    ``a`` and ``b`` are each a folder of crops in the layout of
    :func:`napari_atagan.data.load_folder` (pattern sub-folders or flat,
    ``NNNNN.png`` with optional ``NNNNN_Mask.png``), an ``(N, H, W)`` stack, a
    list of 2-D crops, or an object with ``images`` (and optionally ``masks``)
    such as :class:`napari_atagan.simulate.CropSet`. ``levels`` (e.g. those of a
    checkpoint being resumed) are used as given instead of being measured;
    ``own_levels`` maps every crop by its own levels (:func:`own_levels`) instead.

    Raises ``ValueError`` naming the problem: a missing or empty folder,
    unreadable or invalid crops, or crops that are already normalised.
    """
    _cells._check_image_size(image_size)
    raw_a = _read_domain(a, "A")
    raw_b = _read_domain(b, "B")
    if raw_a.name == raw_b.name:
        raw_a.name, raw_b.name = f"{raw_a.name} (A)", f"{raw_b.name} (B)"
    if levels is None:
        levels = pooled_levels(raw_a.images + raw_b.images)
    return (_prepare_domain(raw_a, image_size, levels, own_levels),
            _prepare_domain(raw_b, image_size, levels, own_levels), levels)


def own_levels(image: Any, *, name: str = "the image", lo_pct: float = LO_PCT,
               hi_pct: float = HI_PCT) -> Levels:
    """The ``lo_pct``/``hi_pct`` percentiles of one crop or slide, its own levels
    (a slide larger than a few million pixels is sub-sampled on a regular grid,
    read in bands, so a memory-mapped slide is not loaded whole). Where the high
    percentile equals the low one (a few bright pixels on a flat field), the
    maximum is used; a flat image is refused with ``ValueError``."""
    arr = image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)
    if len(arr.shape) != 2:
        raise ValueError(f"{name} must be 2-D to find its grey levels, got shape {arr.shape}")
    sample = np.asarray(_cells._slide_sample(arr), dtype=np.float32)
    return _levels_of(sample, lo_pct, hi_pct,
                      f"{name} contains NaN or infinite values: replace them first",
                      f"{name} has one grey value ({{lo:g}}) everywhere: there is nothing "
                      "to translate")


def pooled_levels(images: Sequence[np.ndarray], *, lo_pct: float = LO_PCT,
                  hi_pct: float = HI_PCT) -> Levels:
    """The ``lo_pct``/``hi_pct`` percentiles of all pixels of ``images`` together
    (each crop sub-sampled alike when there are more than :data:`LEVEL_SAMPLE_PIXELS`)."""
    total = sum(int(np.asarray(im).size) for im in images)
    if total == 0:
        raise ValueError("no pixels to find the intensity levels from")
    step = max(1, math.ceil(total / LEVEL_SAMPLE_PIXELS))
    sample = np.concatenate([np.asarray(im, dtype=np.float32).ravel()[::step] for im in images])
    return _levels_of(sample, lo_pct, hi_pct,
                      "the crops contain NaN or infinite values: replace or remove them",
                      "all crops of both domains have the same grey value ({lo:g}): there is "
                      "nothing to translate")


def _levels_of(sample: np.ndarray, lo_pct: float, hi_pct: float, nan: str,
               flat: str) -> Levels:
    """The percentiles of ``sample`` (its maximum where the high one equals the low one);
    ``ValueError(nan)`` for NaN or infinite values, ``ValueError(flat)`` (``{lo}`` filled
    in) for one grey value everywhere."""
    if not np.isfinite(sample).all():
        raise ValueError(nan)
    lo, hi = (float(v) for v in np.percentile(sample, [lo_pct, hi_pct]))
    if hi <= lo:
        hi = float(sample.max())
    if hi <= lo:
        raise ValueError(flat.format(lo=lo))
    return Levels(lo, hi, lo_pct, hi_pct)


def grey_of_parts(kept: Any, moved: Any, lo: Any, span: Any, out_span: float) -> np.ndarray:
    """Grey levels of a translation in the two parts of
    :func:`~napari_atagan.translate.models.compose_parts`: the kept part on the input's
    levels (``lo``, ``span``), the translated part on ``out_span`` above the same ``lo``
    (``grey_levels="target"``: the target domain's grey range)."""
    return (np.asarray(kept, np.float32) * (np.float32(span) / 2)
            + np.asarray(moved, np.float32) * np.float32(out_span / 2) + np.float32(lo))


@dataclass(frozen=True)
class LocalLevels:
    """A slide's own levels, neighbourhood by neighbourhood: ``lo`` for the whole
    slide, the high level on a coarse grid (:class:`napari_atagan.slides.background.Background`,
    interpolated bilinearly to every pixel)."""

    lo: float
    hi: Any

    def region(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi - lo)`` at pixels ``[rows, cols]`` (float32; ``lo`` a scalar array)."""
        return np.float32(self.lo), self.hi.region(rows, cols) - np.float32(self.lo)


def local_levels(image: Any, crop_side: float, *, name: str = "the image") -> LocalLevels:
    """The levels a slide's every neighbourhood would have had as a training crop.

    A run with ``grey_levels="own"`` learnt from crops each mapped by its own 0.5th and
    99.5th percentiles: the low one is the background, the high one the brightest pixels
    of the crop's cell. A whole slide mapped by its own percentiles would put a dim cell
    beside bright ones near the background, where no training crop had its cell. So the
    low level is the slide's own, and the high level is found in windows of one crop's
    side (``crop_side`` source pixels, the training crop at the slide's scale): the
    :data:`LOCAL_PCT` th percentile of the brightest pixels of :data:`LOCAL_BLOCKS` x
    :data:`LOCAL_BLOCKS` blocks, a window every half crop side, at least
    :data:`LOCAL_FLOOR` of the slide's own range, interpolated bilinearly between the
    windows (they overlap by half, so a cell between two is in both). The slide is read
    in bands of rows (a memory map stays on disk).
    """
    from ..slides.background import Background, _block_means, _window_percentiles

    glob = own_levels(image, name=name)
    h, w = (int(v) for v in image.shape)
    step = max(1, int(round(float(crop_side) / LOCAL_BLOCKS)))
    blocks = _block_means(image, h, w, step, brightest=True)
    k = max(1, LOCAL_BLOCKS // 2)  # windows every half crop side
    hi = _window_percentiles(blocks, LOCAL_PCT, k, LOCAL_BLOCKS)
    hi = np.maximum(hi, glob.lo + LOCAL_FLOOR * (glob.hi - glob.lo))
    return LocalLevels(glob.lo, Background(hi.astype(np.float32), k * step, (h, w), 0.0))


def _read_domain(source: Any, default_name: str) -> _Raw:
    if isinstance(source, _cells.CellData):
        raise ValueError(
            f"domain {default_name}: a CellData holds crops normalised one by one, which "
            "loses their brightness; pass the folder or the raw crops (arrays) instead")
    if isinstance(source, (str, os.PathLike)):
        return _read_folder(Path(source), default_name)
    masks = None
    if hasattr(source, "images") and not isinstance(source, np.ndarray):
        masks = getattr(source, "masks", None)
        source = source.images
    images = _as_list(source, f"domain {default_name}")
    mask_list = None
    if masks is not None:
        mask_list = _as_list(masks, f"domain {default_name} masks")
        if len(mask_list) != len(images):
            raise ValueError(f"domain {default_name}: {len(mask_list)} masks for "
                             f"{len(images)} crops: give one mask per crop")
    return _Raw(default_name, images, mask_list, [f"crop {i}" for i in range(len(images))],
                None, [])


def _as_list(arrays: Any, what: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        if arrays.ndim == 4 and arrays.shape[-1] in (3, 4):
            raise ValueError(f"{what}: the crops are colour, shape {arrays.shape}; pass one "
                             "channel (grey crops (N, H, W))")
        if arrays.ndim != 3:
            raise ValueError(f"{what}: expected a stack of 2-D grey crops (N, H, W), got "
                             f"shape {arrays.shape}")
        out = list(arrays)
    else:
        try:
            out = [np.asarray(x) for x in arrays]
        except TypeError:
            raise ValueError(f"{what}: expected a folder, a stack (N, H, W) or a list of "
                             f"2-D crops, got {type(arrays).__name__}") from None
    if not out:
        raise ValueError(f"{what}: no crops were given")
    for i, x in enumerate(out):
        if x.ndim != 2:
            raise ValueError(f"{what}: crop {i} has shape {x.shape}, but 2-D grey crops "
                             "are expected")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"{what}: crop {i} is not numeric (dtype {x.dtype})")
    return out


def _read_folder(root: Path, default_name: str) -> _Raw:
    if not root.exists():
        raise ValueError(f"domain {default_name}: folder {str(root)!r} does not exist: "
                         "check the path")
    if not root.is_dir():
        raise ValueError(f"domain {default_name}: {str(root)!r} is a file, not a folder: "
                         "give the folder that holds the crops")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise ValueError(f"domain {default_name}: folder {str(root)!r} is empty: put the "
                         "cell crops there")
    files, _, class_names = _cells._find_images(root, entries)
    mask_files = _cells._find_masks(files)

    def read(i: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
        image, colour = _cells._read_crop(files[i])
        mask = None if mask_files is None else _cells._read_mask(mask_files[i])
        return image, mask, colour

    with ThreadPoolExecutor(max_workers=_cells._n_workers()) as pool:
        results = list(pool.map(read, range(len(files))))
    colour = [f for f, (_, _, c) in zip(files, results) if c]
    if colour:
        warnings.warn(f"{len(colour)} colour image(s) were converted to grey (e.g. "
                      f"{colour[0]}); save single-channel images to avoid this", stacklevel=3)
    masks = None if mask_files is None else [m for _, m, _ in results]
    return _Raw(root.name or default_name, [im for im, _, _ in results], masks,
                [str(f) for f in files], str(root), list(class_names))


def _prepare_domain(raw: _Raw, size: int, levels: Levels, own: bool = False) -> DomainData:
    masks = raw.masks if raw.masks is not None else [None] * len(raw.images)
    # every crop's own levels, measured once: they map the crops of an own-level run (a
    # flat crop is refused there) and give the domain's grey range in any run
    own_of = [own_levels(im, name=name) if own else _own_or_none(im, name)
              for im, name in zip(raw.images, raw.labels)]
    crops = [_prepare(im, m, name, size, lv if own else levels)
             for im, m, name, lv in zip(raw.images, masks, raw.labels, own_of)]
    spans = [lv.hi - lv.lo for lv in own_of if lv is not None]
    diam = np.array([c[2] for c in crops])
    sides = np.array([c[3] for c in crops])
    return DomainData(
        name=raw.name,
        images=np.stack([c[0] for c in crops]).astype(np.float32),
        masks=None if raw.masks is None else np.stack([c[1] for c in crops]).astype(np.uint8),
        source=raw.source,
        dtype=_cells._source_dtype(raw.images),
        cell_diameter=float(np.median(diam)),
        model_cell_diameter=float(np.median(diam * size / sides)),
        class_names=raw.class_names,
        own_span=float(np.median(spans)) if spans else float("nan"),
    )


def _own_or_none(image: np.ndarray, name: str) -> Levels | None:
    """:func:`own_levels` of a crop of a shared-scale run, ``None`` where it has none (a
    flat crop, NaN; :func:`_prepare` says what is wrong with it)."""
    try:
        return own_levels(image, name=name)
    except ValueError:
        return None


def _prepare(img: np.ndarray, mask: np.ndarray | None, name: str, size: int,
             levels: Levels) -> tuple[np.ndarray, np.ndarray | None, float, int]:
    """One crop on the fixed scale: ``(image, mask, diameter, side)``."""
    img = np.asarray(img)
    if min(img.shape) < _cells.MIN_CROP_SIZE:
        raise ValueError(
            f"{name} is only {img.shape[0]}x{img.shape[1]} pixels; crops must be at least "
            f"{_cells.MIN_CROP_SIZE}x{_cells.MIN_CROP_SIZE}: remove it or crop a larger region")
    img = img.astype(np.float32)
    if not np.isfinite(img).all():
        raise ValueError(f"{name} contains NaN or infinite values: replace or remove it")
    cell = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(f"the mask of {name} has shape {mask.shape} but the image has "
                             f"{img.shape}: a mask must have the image's shape")
        cell = mask > 0
        if not cell.any():
            raise ValueError(f"the mask of {name} is all zero: mark the cell in it, or "
                             "remove the image")
    norm = _cells._map_unit(img, levels.lo, levels.hi, clip=False)
    fill = _cells._percentiles(_cells._border(norm), 50.0)[0]
    if cell is not None:
        centre = _cells._bbox_centre(cell)
    else:
        centre = ((img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0)
    side = max(img.shape)
    where_cell = cell if cell is not None else np.zeros(img.shape, dtype=bool)
    square = _cells._centre_in_square(norm, centre, side, fill, where_cell)[0]
    out = resize(square, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    out = np.clip(out, -CLIP, CLIP).astype(np.float32)
    out_mask = None
    if cell is not None:
        sq_mask = _cells._centre_in_square(cell.astype(np.uint8), centre, side, 0)[0]
        out_mask = _cells._resize_nearest(sq_mask, size)
        diameter = float(np.sqrt(4.0 * cell.sum() / np.pi))
    else:
        diameter = 0.7 * float(np.sqrt(img.shape[0] * img.shape[1]))
    return out, out_mask, diameter, side
