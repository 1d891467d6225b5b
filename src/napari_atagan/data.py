"""Reading single-cell crops and bringing them to the form the models see.

Every crop becomes a square ``image_size x image_size`` float32 image in [-1, 1]
with the cell in the middle:

1. **Centre**: the crop is padded to a square of side ``max(H, W)`` centred on the
   cell (the centre of the mask's bounding box when a mask exists, otherwise the
   centre of the crop). The margins mirror the crop's own edge strip, so they
   look like its background (the median border level where the strip would
   copy part of the cell). The cell is never cut.
2. **Resize** to ``image_size`` (``skimage.transform.resize``; anti-aliased for
   images, nearest neighbour for masks).
3. **Normalise per cell**: the 0.5th and 99.5th intensity percentiles of the
   original crop map to -1 and +1, values beyond are clipped. Staining intensity
   varies a lot between specimens; this makes every cell use the full range.

The dataset-level intensity statistics (typical low/high levels in the source
units) are kept in :attr:`CellData.intensity` so that :func:`render` can turn
model outputs back into images as dim as the real ones.

Folder layout read by :func:`load_folder`::

    cells/                      cells/
      Centromere/                 00001.png
        00001.png                 00001_Mask.png     (optional)
        00001_Mask.png            ...
      Golgi/ ...
    (one sub-folder per staining    (a flat folder: unlabelled cells)
     pattern: labelled cells)

Images are PNG or TIFF, 8- or 16-bit grey (colour is converted to grey with a
warning). Masks (``<name>_Mask.<ext>`` or ``<name>_mask.<ext>``) are optional but
must exist for all images or for none.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import resize

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff")
MIN_CROP_SIZE = 16
LO_PCT = 0.5
"""Per-cell low percentile, mapped to -1."""
HI_PCT = 99.5
"""Per-cell high percentile, mapped to +1."""
SLIDE_LO_PCT = 0.5
"""Default low percentile of :func:`normalise_slide` (dark background tail)."""
SLIDE_HI_PCT = 99.5
"""Default high percentile of :func:`normalise_slide` (brightest cell pixels)."""
_N_PAIRS = 200
_MASK_SUFFIX = re.compile(r"_mask$", re.IGNORECASE)


# --------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------
@dataclass
class CellData:
    """A set of centred, normalised single-cell crops.

    Attributes:
        images: float32 array (N, S, S), values in [-1, 1].
        masks: uint8 array (N, S, S) of 0/1, or ``None`` when there are no masks.
        labels: int64 array (N,) of pattern indices into ``class_names``, or ``None``.
        class_names: pattern names (``[]`` for unlabelled data).
        intensity: JSON-able statistics of the source intensities, used by
            :func:`render` (keys: ``dtype``, ``lo``, ``hi``, ``lo_spread``,
            ``hi_spread``, ``pairs``, ``lo_pct``, ``hi_pct``, ``background``).
        cell_diameter: median cell diameter in source pixels (equivalent
            diameter of the mask, or about 0.7 x the crop side without masks).
        model_cell_diameter: the same in model pixels, after the resize to
            ``image_size`` (what a slide must be rescaled to match).
        files: the image file of every cell, or ``None`` for in-memory data.
    """

    images: np.ndarray
    masks: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    intensity: dict[str, Any] = field(default_factory=dict)
    cell_diameter: float = float("nan")
    model_cell_diameter: float = float("nan")
    files: list[str] | None = None

    @property
    def n(self) -> int:
        """Number of cells."""
        return int(self.images.shape[0])

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def has_labels(self) -> bool:
        return self.labels is not None and len(self.class_names) > 0

    @property
    def image_size(self) -> int:
        """Side of the square crops (pixels)."""
        return int(self.images.shape[-1])

    def subset(self, idx: Sequence[int] | np.ndarray | slice) -> CellData:
        """A new :class:`CellData` with the cells selected by ``idx``.

        Dataset-level statistics (``intensity``, diameters, class names) are kept.
        """
        if isinstance(idx, slice):
            sel = np.arange(self.n)[idx]
        else:
            sel = np.asarray(idx)
            if sel.dtype == bool:
                sel = np.flatnonzero(sel)
        sel = sel.astype(np.int64)
        return CellData(
            images=self.images[sel],
            masks=None if self.masks is None else self.masks[sel],
            labels=None if self.labels is None else self.labels[sel],
            class_names=list(self.class_names),
            intensity=dict(self.intensity),
            cell_diameter=self.cell_diameter,
            model_cell_diameter=self.model_cell_diameter,
            files=None if self.files is None else [self.files[i] for i in sel],
        )

    def __repr__(self) -> str:
        return (
            f"CellData(n={self.n}, image_size={self.image_size}, "
            f"masks={self.has_masks}, classes={self.class_names}, "
            f"cell_diameter={self.cell_diameter:.1f})"
        )


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------
def load_folder(path: str | os.PathLike, *, image_size: int = 64) -> CellData:
    """Read a folder of single-cell crops (see the module docstring for the layout).

    Sub-folders become staining patterns (sorted by name); images directly in
    the folder make an unlabelled data set. Files are read in parallel.

    Raises:
        ValueError: for a missing or empty folder, no images, unreadable or
            invalid files (the message names the file), or masks present for
            only some images.
    """
    root = Path(path)
    _check_image_size(image_size)
    if not root.exists():
        raise ValueError(f"folder {str(root)!r} does not exist: check the path")
    if not root.is_dir():
        raise ValueError(
            f"{str(root)!r} is a file, not a folder: give the folder that holds the crops"
        )
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise ValueError(f"folder {str(root)!r} is empty: put the cell crops there")

    image_files, labels, class_names = _find_images(root, entries)
    mask_files = _find_masks(image_files)

    def read(i: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
        image, colour = _read_crop(image_files[i])
        mask = None if mask_files is None else _read_mask(mask_files[i])
        return image, mask, colour

    # Threads decode the files (I/O and zlib run outside the GIL) while this
    # thread centres and normalises the crops already read.
    results = []
    with ThreadPoolExecutor(max_workers=_n_workers()) as pool:
        for i, (image, mask, colour) in enumerate(pool.map(read, range(len(image_files)))):
            crop = _prepare(image, mask, str(image_files[i]), image_size)
            results.append((crop, image.dtype, colour))

    colour = [f for f, (_, _, c) in zip(image_files, results) if c]
    if colour:
        warnings.warn(
            f"{len(colour)} colour image(s) were converted to grey (e.g. {colour[0]}); "
            "save single-channel images to avoid this",
            stacklevel=2,
        )
    dtype = _source_dtype([np.empty(0, dtype=d) for _, d, _ in results])
    names = [str(f) for f in image_files]
    data = _assemble([r[0] for r in results], image_size, dtype, has_masks=mask_files is not None)
    data.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    data.class_names = class_names
    data.files = names
    return data


def from_arrays(
    images: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray] | None = None,
    labels: Sequence[int] | Sequence[str] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    image_size: int = 64,
) -> CellData:
    """Build a :class:`CellData` from in-memory crops.

    Args:
        images: an (N, H, W) array or a list of 2-D arrays (sizes may differ).
        masks: the same layout as ``images`` (any non-zero value is the cell), or ``None``.
        labels: one pattern per cell, as integers or as names, or ``None``.
        class_names: pattern names; with integer labels, ``labels[i]`` indexes it.
            With string labels they fix the order (default: sorted names).
        image_size: side of the square crops the models see.
    """
    _check_image_size(image_size)
    crops = _as_crop_list(images, "images")
    if not crops:
        raise ValueError("no images were given: pass at least one 2-D cell crop")
    mask_list = None
    if masks is not None:
        mask_list = _as_crop_list(masks, "masks")
        if len(mask_list) != len(crops):
            raise ValueError(
                f"got {len(mask_list)} masks for {len(crops)} images: give one mask per image"
            )
    names = [f"image {i}" for i in range(len(crops))]
    data = _build(crops, mask_list, names, image_size, _source_dtype(crops))
    if labels is not None:
        data.labels, data.class_names = _encode_labels(labels, class_names, len(crops))
    elif class_names:
        data.class_names = [str(c) for c in class_names]
    return data


def render(x: Any, intensity: dict[str, Any], *, seed: int | None = None) -> np.ndarray:
    """Turn model-scale images in [-1, 1] back into source-like intensities.

    ``-1`` maps to the data set's typical low level and ``+1`` to its typical
    high level, so generated cells are as dim as the real ones. Without a seed
    every image uses the median levels; with a seed every image draws its own
    (low, high) pair from the real cells, which reproduces their spread.

    Args:
        x: array or torch tensor whose last two axes are an image (any leading axes).
        intensity: :attr:`CellData.intensity`.
        seed: random seed for per-image levels, or ``None`` for the medians.

    Returns:
        An array of the source dtype (uint8 for 8-bit data, uint16 for 16-bit,
        float32 for float data) with the shape of ``x``.
    """
    arr = _to_numpy(x)
    if arr.ndim < 2:
        raise ValueError(f"render needs images (..., H, W), got shape {arr.shape}")
    flat = arr.reshape((-1,) + arr.shape[-2:])
    lo, hi = render_levels(intensity, flat.shape[0], seed)
    out = np.empty(flat.shape, rendered_dtype(intensity))
    render_into(out, flat, lo, hi)
    return out.reshape(arr.shape)


def rendered_dtype(intensity: dict[str, Any]) -> np.dtype:
    """The dtype :func:`render` returns for these intensity statistics."""
    dtype = np.dtype(intensity.get("dtype", "uint8"))
    return dtype if np.issubdtype(dtype, np.integer) else np.dtype(np.float32)


def render_into(out: np.ndarray, images: Any, lo: np.ndarray, hi: np.ndarray) -> None:
    """:func:`render` of images ``(N, H, W)`` into ``out``, with their levels ``lo``/``hi``
    (from :func:`render_levels`). The float64 temporaries are those of these images only."""
    if len(images) == 0:
        return
    x = np.clip(_to_numpy(images).astype(np.float64), -1.0, 1.0)
    values = lo[:, None, None] + (x + 1.0) * 0.5 * (hi - lo)[:, None, None]
    if np.issubdtype(out.dtype, np.integer):
        info = np.iinfo(out.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out[...] = values


def render_levels(intensity: dict[str, Any], n: int,
                  seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-image (low, high) source levels :func:`render` uses for ``n`` images.

    Drawn once for a whole set, they let :func:`render_into` render it in
    parts with the same result as one :func:`render` call.
    """
    if "lo" not in intensity or "hi" not in intensity:
        raise ValueError("intensity statistics need 'lo' and 'hi': use CellData.intensity")
    pairs = intensity.get("pairs") or []
    if seed is None or not pairs:
        lo = np.full(n, float(intensity["lo"]))
        hi = np.full(n, float(intensity["hi"]))
    else:
        table = np.asarray(pairs, dtype=np.float64)
        idx = np.random.default_rng(seed).integers(0, len(table), size=n)
        lo, hi = table[idx, 0], table[idx, 1]
    return lo, np.maximum(hi, lo + 1e-6)


def normalise_slide(
    image: np.ndarray, *, lo_pct: float = SLIDE_LO_PCT, hi_pct: float = SLIDE_HI_PCT
) -> np.ndarray:
    """Map a whole slide to roughly [-1, 1], like the per-cell crops.

    A crop maps its own 0.5th/99.5th percentiles to -1/+1. A slide has one
    mapping for all its cells, with the percentiles taken over the whole slide:
    the low one falls in the dark tail of the background, as in a crop, and the
    high one among the brightest cell pixels. The same 0.5/99.5 percentiles
    match the crops best: on mosaics of real crops of one pattern placed on
    their own background (cells covering 7-26 % of the area) the background
    median lands within 0.04 and the cell median within 0.1 of their per-crop
    values; 99.7-99.9 make cells too dark, 99.0 too bright. A slide with
    uneven staining maps its dim cells lower than their crops would.

    Large slides are sub-sampled (a regular grid of at most ~4 million pixels)
    to find the percentiles. Returns float32 clipped to [-1, 1].
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(
            f"a slide must be a 2-D grey image, got shape {arr.shape}; "
            "pick one channel or convert colour to grey first"
        )
    lo, hi = slide_levels(arr, lo_pct=lo_pct, hi_pct=hi_pct)
    if not np.isfinite(arr).all():
        raise ValueError("the slide contains NaN or infinite values: replace them first")
    return _map_unit(arr, lo, hi)


SLIDE_SAMPLE_PIXELS = 4_000_000
"""Most pixels read to find a slide's intensity levels."""


def slide_levels(
    slide: Any,
    *,
    lo_pct: float = SLIDE_LO_PCT,
    hi_pct: float = SLIDE_HI_PCT,
    after_band: Any = None,
) -> tuple[float, float]:
    """Robust low/high levels of a slide: the source values that map to -1 and +1.

    Percentiles of a regular sub-sample (every ``step``-th pixel both ways, at
    most :data:`SLIDE_SAMPLE_PIXELS`), read in bands of rows so that a
    memory-mapped or lazy slide (anything 2-D with ``shape`` and slicing) never
    has more than one band in memory; ``after_band()`` is called after each band
    (e.g. to release memory-mapped pages). When cells cover too little of the
    slide for the high percentile to reach them, the sample's maximum is used.
    """
    if not 0 <= lo_pct < hi_pct <= 100:
        raise ValueError(f"need 0 <= lo_pct < hi_pct <= 100, got {lo_pct}, {hi_pct}")
    sample = _slide_sample(slide, after_band)
    return _sample_levels(sample, lo_pct, hi_pct)


def _slide_sample(slide: Any, after_band: Any = None,
                  pixels: int = SLIDE_SAMPLE_PIXELS) -> np.ndarray:
    """Every ``step``-th pixel both ways (at most about ``pixels``), 2-D, read in bands
    of rows."""
    h, w = slide.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / pixels))))
    band = max(1, SLIDE_SAMPLE_PIXELS // (w * step)) * step
    parts = []
    for y in range(0, h, band):
        part = _strided_rows(slide, y, min(h, y + band), step)
        parts.append(part if _small_uint(part.dtype) else part.astype(np.float32))
        if after_band is not None:
            after_band()
    return np.concatenate(parts)


def _sample_levels(sample: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    if _small_uint(sample.dtype):  # 8- and 16-bit slides: counts, no sort
        lo, hi = _uint_percentiles(sample, lo_pct, hi_pct)
    else:
        if not np.isfinite(sample).all():
            raise ValueError("the slide contains NaN or infinite values: replace them first")
        lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    if hi <= lo:  # cells cover too little of the slide to reach the high percentile
        hi = sample.max()
    return float(lo), float(hi)


CELL_SAMPLE_PIXELS = 1_000_000
""":func:`cell_levels` looks at a regular sub-sample of at most about this many pixels
(cells 40 px wide on a 4,096^2 slide are still 10 px wide in it)."""
SPECK_SHARE = 0.25
""":func:`cell_levels` counts objects of at least this share of the size of the large ones
(the 90th percentile of the object sizes)."""
CELL_HI_PCT = 99.0
""":func:`cell_levels`: a cell's own bright level is this percentile of its pixels."""


def cell_levels(slide: Any, *, lo_pct: float = SLIDE_LO_PCT, after_band: Any = None
                ) -> tuple[float, float]:
    """Levels of a slide that map a *typical cell* as a training crop was mapped.

    A training crop maps its own low and high percentiles to -1 and +1, so every
    cell the discriminator learnt from spans the whole range. One slide-wide
    percentile cannot do that for a slide's cells: where a few very bright
    (mitotic, saturated) cells or a crowd of bright ones hold the top
    percentile, every ordinary cell lands far below +1 and looks dim and unreal.
    Here the low level is the slide's ``lo_pct`` percentile, as in
    :func:`slide_levels`; the high level is the **median over the slide's
    objects of each object's own** :data:`CELL_HI_PCT` **percentile**. Objects
    are found on a regular sub-sample of the slide (as in :func:`slide_levels`)
    by Otsu's threshold on a log scale relative to the background, on which dim
    and bright cells stand out alike. A handful of saturated cells moves a
    median of dozens of cells very little. The sub-sample holds at most
    :data:`CELL_SAMPLE_PIXELS`, so the cost does not grow with the slide.

    Falls back to :func:`slide_levels` where no objects are found.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from ._grouped import label_percentiles

    sample = _slide_sample(slide, after_band, CELL_SAMPLE_PIXELS)
    lo, hi = _sample_levels(sample, lo_pct, SLIDE_HI_PCT)
    values = sample.astype(np.float32)  # finite: _sample_levels checked
    base = np.clip(values, lo, None) - np.float32(lo)
    unit = max(float(np.median(base)), 1e-3 * float(base.max()), 1e-12)
    log = ndi.gaussian_filter(np.log1p(base / np.float32(unit)), 1.0)
    if float(log.max()) - float(log.min()) <= 1e-6:
        return lo, hi
    objects, n = ndi.label(log > threshold_otsu(log))
    if n == 0:
        return lo, hi
    sizes = np.bincount(objects.ravel())
    keep = np.flatnonzero(sizes >= 9)
    keep = keep[keep > 0]
    if keep.size == 0:
        return lo, hi
    # specks of glow or noise are not cells: objects under a quarter of the size of the
    # large ones are left out (a share, so the sampling step does not change who counts)
    keep = keep[sizes[keep] >= SPECK_SHARE * np.percentile(sizes[keep], 90)]
    tops = label_percentiles(values, objects, keep, CELL_HI_PCT)
    top = float(np.median(tops))
    return (lo, top) if top > lo else (lo, hi)


def _small_uint(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind == "u" and np.dtype(dtype).itemsize <= 2


def _uint_percentiles(sample: np.ndarray, *pcts: float) -> list[float]:
    """``np.percentile`` (linear method) of a uint8/uint16 sample from one pass of
    counts instead of a partial sort: the same values, about 10x faster on the
    4 million pixels of a large slide's sample."""
    below = np.cumsum(np.bincount(sample.ravel()))  # below[v]: how many values are <= v
    n = int(below[-1])
    out = []
    for p in pcts:
        pos = p / 100.0 * (n - 1)
        k = int(np.floor(pos))
        v0 = int(np.searchsorted(below, k, side="right"))  # the k-th smallest value (from 0)
        v1 = int(np.searchsorted(below, min(k + 1, n - 1), side="right"))
        out.append(float(v0 + (v1 - v0) * (pos - k)))
    return out


def _strided_rows(slide: Any, y0: int, y1: int, step: int) -> np.ndarray:
    """Every ``step``-th pixel of rows ``y0..y1-1``, also for arrays without step slicing."""
    try:
        return np.asarray(slide[y0:y1:step, ::step])
    except (TypeError, ValueError, IndexError, NotImplementedError):
        rows = [np.asarray(slide[y:y + 1, :])[:, ::step] for y in range(y0, y1, step)]
        return np.concatenate(rows)


def prepare_crop(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    image_size: int = 64,
    *,
    name: str = "crop",
    return_box: bool = False,
) -> tuple[Any, ...]:
    """Centre, pad, resize and normalise one crop, exactly as the training data.

    Args:
        image: a 2-D grey crop (at least 16 x 16 pixels).
        mask: its cell mask (non-zero = cell) or ``None``.
        image_size: side of the result.
        name: how error messages call the crop (e.g. its file name).
        return_box: also return where the crop lies in the square before resizing.

    Returns:
        ``(image, mask)``: float32 ``(S, S)`` in [-1, 1] and uint8 ``(S, S)`` 0/1 (or
        ``None``); with ``return_box`` also ``box = (side, top, left)``: the crop's
        pixel ``(r, c)`` sits at ``(top + r, left + c)`` of the ``side x side`` square
        that is then resized to ``image_size``. Without a mask the crop is centred,
        so ``top, left >= 0``; centring on a mask may cut the crop's far edge
        (negative offsets), never the cell.
    """
    crop = _prepare(image, mask, name, image_size)
    if return_box:
        return crop.image, crop.mask, crop.box
    return crop.image, crop.mask


# --------------------------------------------------------------------------
# Finding and reading files
# --------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _is_mask(p: Path) -> bool:
    return bool(_MASK_SUFFIX.search(p.stem))


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _list_images(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if _is_image(p) and not _is_mask(p)]
    return sorted(files, key=_natural_key)


def _find_images(
    root: Path, entries: list[Path]
) -> tuple[list[Path], list[int] | None, list[str]]:
    """Image files, their class indices (or ``None``) and the class names."""
    top = _list_images(root)
    sub = sorted((p for p in entries if p.is_dir()), key=lambda p: p.name)
    per_class = {d.name: _list_images(d) for d in sub}
    classes = [name for name, files in per_class.items() if files]
    if classes and top:
        raise ValueError(
            f"folder {str(root)!r} has both images and pattern sub-folders "
            f"({', '.join(classes)}): move the loose images (e.g. {top[0].name}) "
            "into a pattern folder, or point to a folder with only one layout"
        )
    if top:
        return top, None, []
    if not classes:
        raise ValueError(
            f"no images found in {str(root)!r} or its sub-folders: expected "
            f"{', '.join(IMAGE_EXTENSIONS)} files (masks alone are not enough)"
        )
    for name, files in per_class.items():
        if not files and not name.startswith("."):
            warnings.warn(f"pattern folder {name!r} has no images and is skipped", stacklevel=3)
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        files += per_class[name]
        labels += [k] * len(per_class[name])
    return files, labels, classes


def _find_masks(image_files: list[Path]) -> list[Path] | None:
    """The mask of every image, ``None`` when no image has one."""
    found: list[Path | None] = []
    for f in image_files:
        found.append(_mask_for(f))
    n_have = sum(m is not None for m in found)
    if n_have == 0:
        return None
    if n_have < len(found):
        missing = next(f for f, m in zip(image_files, found) if m is None)
        raise ValueError(
            f"{len(found) - n_have} of {len(found)} images have no mask, e.g. {missing}: "
            f"add '{missing.stem}_Mask.png' next to it, or remove all masks to train "
            "without them"
        )
    return [m for m in found if m is not None]


def _mask_for(image_file: Path) -> Path | None:
    for suffix in ("_Mask", "_mask"):
        for ext in (image_file.suffix,) + IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                cand = image_file.with_name(image_file.stem + suffix + e)
                if cand.is_file():
                    return cand
    return None


def _n_workers() -> int:
    return max(2, min(8, os.cpu_count() or 1))


def _read_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "1":
                    im = im.convert("L")
                arr = np.array(im)
    except Exception as err:  # noqa: BLE001 - any decoder error means "unreadable"
        raise ValueError(
            f"could not read {path}: {err}. The file may be corrupt or not an image; "
            "replace or remove it"
        ) from None
    return np.asarray(arr)


def _read_crop(path: Path) -> tuple[np.ndarray, bool]:
    """A 2-D grey crop and whether it had to be converted from colour."""
    arr = np.squeeze(_read_file(path))
    colour = False
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        arr, colour = _to_grey(arr), True
    if arr.ndim != 2:
        raise ValueError(
            f"{path} has shape {arr.shape}, but 2-D grey crops are expected: "
            "save one channel / one plane per cell"
        )
    return arr, colour


def _read_mask(path: Path) -> np.ndarray:
    arr = np.squeeze(_read_file(path))
    if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4):
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask {path} has shape {arr.shape}; masks must be 2-D")
    return arr


def _to_grey(arr: np.ndarray) -> np.ndarray:
    """Colour (H, W, 3|4) or grey+alpha (H, W, 2) to grey, keeping the dtype."""
    if arr.shape[-1] == 2:
        return arr[..., 0]
    rgb = arr[..., :3].astype(np.float64)
    grey = rgb @ np.array([0.2125, 0.7154, 0.0721])
    if np.issubdtype(arr.dtype, np.integer):
        return np.rint(grey).astype(arr.dtype)
    return grey.astype(arr.dtype)


# --------------------------------------------------------------------------
# Per-crop processing
# --------------------------------------------------------------------------
@dataclass
class _Crop:
    image: np.ndarray  # (S, S) float32 in [-1, 1]
    mask: np.ndarray | None  # (S, S) uint8
    lo: float
    hi: float
    diameter: float  # source pixels
    side: int  # source side of the square before resizing
    background: float  # normalised border level
    box: tuple[int, int, int]  # (side, top, left) of the crop in the square


def _check_image_size(image_size: int) -> None:
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")


def _as_crop_list(arrays: Any, what: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        if arrays.ndim == 2:
            raise ValueError(
                f"{what}: got one 2-D array of shape {arrays.shape}; pass a stack "
                "(N, H, W) or a list of 2-D crops (wrap a single crop in a list)"
            )
        if arrays.ndim != 3:
            raise ValueError(
                f"{what}: expected a stack of 2-D grey crops (N, H, W), got shape "
                f"{arrays.shape}; convert colour or multi-channel crops to grey first"
            )
        return list(arrays)
    out = [np.asarray(a) for a in arrays]
    for i, a in enumerate(out):
        if a.ndim != 2:
            raise ValueError(
                f"{what}[{i}] has shape {a.shape}, but 2-D grey crops are expected; "
                "convert colour or multi-channel crops to grey first"
            )
    return out


def _source_dtype(images: Sequence[np.ndarray]) -> str:
    dtypes = {np.dtype(a.dtype) for a in images}
    if all(np.issubdtype(d, np.integer) or d == np.bool_ for d in dtypes):
        widest = np.result_type(*dtypes)
        if widest == np.bool_:
            return "uint8"
        return np.dtype(widest).name
    return "float32"


def _build(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
    names: Sequence[str],
    image_size: int,
    dtype: str,
) -> CellData:
    """Process every crop and assemble a :class:`CellData`."""
    mask_list = masks if masks is not None else [None] * len(images)
    crops = [_prepare(a, m, n, image_size) for a, m, n in zip(images, mask_list, names)]
    return _assemble(crops, image_size, dtype, has_masks=masks is not None)


def _assemble(crops: Sequence[_Crop], image_size: int, dtype: str, *, has_masks: bool) -> CellData:
    imgs = np.stack([c.image for c in crops]).astype(np.float32)
    msk = np.stack([c.mask for c in crops]).astype(np.uint8) if has_masks else None
    diam = np.array([c.diameter for c in crops])
    model_diam = diam * image_size / np.array([c.side for c in crops])
    return CellData(
        images=imgs,
        masks=msk,
        intensity=_intensity_stats(crops, dtype),
        cell_diameter=float(np.median(diam)),
        model_cell_diameter=float(np.median(model_diam)),
    )


def _prepare(img: np.ndarray, mask: np.ndarray | None, name: str, size: int) -> _Crop:
    """Validate, centre, pad, resize and normalise one crop."""
    img = np.asarray(img)
    if img.ndim != 2:
        raise ValueError(
            f"{name} has shape {img.shape}; 2-D grey crops are expected "
            "(convert colour or multi-channel crops to grey first)"
        )
    if min(img.shape) < MIN_CROP_SIZE:
        raise ValueError(
            f"{name} is only {img.shape[0]}x{img.shape[1]} pixels; crops must be at least "
            f"{MIN_CROP_SIZE}x{MIN_CROP_SIZE}: remove it or crop a larger region"
        )
    img = img.astype(np.float32)
    if not np.isfinite(img).all():
        raise ValueError(f"{name} contains NaN or infinite values: replace or remove it")
    cell = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(
                f"the mask of {name} has shape {mask.shape} but the image has {img.shape}: "
                "a mask must have the image's shape"
            )
        cell = mask > 0
        if not cell.any():
            raise ValueError(
                f"the mask of {name} is all zero: mark the cell in it, or remove the image"
            )
    lo, hi = _percentiles(img, LO_PCT, HI_PCT)
    if hi <= lo:  # a nearly flat crop: use its full range
        hi = float(img.max())
    norm = _map_unit(img, lo, hi, clip=False)
    fill = _percentiles(_border(norm), 50.0)[0]
    if cell is not None:
        centre = _bbox_centre(cell)
    else:
        centre = ((img.shape[0] - 1) / 2.0, (img.shape[1] - 1) / 2.0)
    side = max(img.shape)
    # without a mask the cell is taken to be in the middle: the edge strips are background
    where_cell = cell if cell is not None else np.zeros(img.shape, dtype=bool)
    square, top, left = _centre_in_square(norm, centre, side, fill, where_cell)
    out = resize(square, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    out = np.clip(out, -1.0, 1.0).astype(np.float32)
    out_mask = None
    if cell is not None:
        sq_mask = _centre_in_square(cell.astype(np.uint8), centre, side, 0)[0]
        out_mask = _resize_nearest(sq_mask, size)
        diameter = float(np.sqrt(4.0 * cell.sum() / np.pi))
    else:
        diameter = 0.7 * float(np.sqrt(img.shape[0] * img.shape[1]))
    return _Crop(
        out, out_mask, float(lo), float(hi), diameter, side,
        float(np.clip(fill, -1, 1)), (side, top, left),
    )


def _percentiles(x: np.ndarray, *pcts: float) -> list[float]:
    """``np.percentile`` (linear method) by one partial sort: much faster on small crops."""
    flat = x.ravel()
    pos = [p / 100.0 * (flat.size - 1) for p in pcts]
    below = [int(np.floor(q)) for q in pos]
    ks = sorted(set(below) | {min(k + 1, flat.size - 1) for k in below})
    part = np.partition(flat, ks)
    out = []
    for q, k in zip(pos, below):
        k1 = min(k + 1, flat.size - 1)
        out.append(float(part[k] + (q - k) * (part[k1] - part[k])))
    return out


def _resize_nearest(x: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a square array (same result as skimage ``order=0``)."""
    side = x.shape[0]
    idx = np.minimum(((np.arange(size) + 0.5) * side / size).astype(np.int64), side - 1)
    return np.ascontiguousarray(x[np.ix_(idx, idx)])


def _map_unit(x: np.ndarray, lo: float, hi: float, *, clip: bool = True) -> np.ndarray:
    """Linear map of ``[lo, hi]`` to ``[-1, 1]`` (a flat image maps to -1)."""
    scale = 2.0 / max(hi - lo, 1e-6 * max(abs(hi), 1.0), 1e-12)
    out = (x.astype(np.float32) - np.float32(lo)) * np.float32(scale) - 1.0
    if clip:
        np.clip(out, -1.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def _border(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])


def _bbox_centre(cell: np.ndarray) -> tuple[float, float]:
    rows = np.flatnonzero(cell.any(axis=1))
    cols = np.flatnonzero(cell.any(axis=0))
    return (rows[0] + rows[-1]) / 2.0, (cols[0] + cols[-1]) / 2.0


def _centre_in_square(
    x: np.ndarray,
    centre: tuple[float, float],
    side: int,
    fill: float,
    cell: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Place ``x`` in a ``side x side`` square so that ``centre`` lands in its middle.

    The margins are a mirror image of the crop's own edge strip (so they carry
    the background's texture; a flat margin would be a give-away feature of
    real crops that a generator learns to copy). Where that strip touches the
    cell (``cell`` mask) or is too narrow, the margin is ``fill`` instead;
    ``cell=None`` (used for masks themselves) always pads with ``fill``.
    Returns the square and the offsets ``(top, left)`` of ``x`` in it.
    """
    mid = (side - 1) / 2.0
    r0 = int(np.floor(mid - centre[0] + 0.5))
    c0 = int(np.floor(mid - centre[1] + 0.5))
    h, w = x.shape
    # the part of x that falls inside the square, and the margins around it
    rows = slice(max(-r0, 0), h - max(r0 + h - side, 0))
    cols = slice(max(-c0, 0), w - max(c0 + w - side, 0))
    cut = x[rows, cols]
    ch, cw = cut.shape
    top, left = max(r0, 0), max(c0, 0)
    pads = ((top, side - top - ch), (left, side - left - cw))
    if cell is not None:
        cell = cell[rows, cols]
    mirror = cell is not None and _mirror_is_background(cell, pads)
    if mirror:
        square = np.pad(cut, pads, mode="reflect")
    else:
        square = np.pad(cut, pads, mode="constant", constant_values=fill)
    return square, r0, c0


def _mirror_is_background(cell: np.ndarray, pads: tuple[tuple[int, int], ...]) -> bool:
    """Whether mirroring the crop's edge strips into the margins copies no cell pixels."""
    (pt, pb), (pl, pr) = pads
    h, w = cell.shape
    if max(pt, pb) >= h or max(pl, pr) >= w:
        return False
    strips = [
        cell[1 : pt + 1],
        cell[h - 1 - pb : h - 1],
        cell[:, 1 : pl + 1],
        cell[:, w - 1 - pr : w - 1],
    ]
    return not any(s.any() for s in strips)


def _intensity_stats(crops: Sequence[_Crop], dtype: str) -> dict[str, Any]:
    lo = np.array([c.lo for c in crops])
    hi = np.array([c.hi for c in crops])
    rng = np.random.default_rng(0)
    pick = rng.choice(len(crops), size=min(_N_PAIRS, len(crops)), replace=False)
    return {
        "dtype": dtype,
        "lo_pct": LO_PCT,
        "hi_pct": HI_PCT,
        "lo": float(np.median(lo)),
        "hi": float(np.median(hi)),
        "lo_spread": [float(v) for v in np.percentile(lo, [10, 90])],
        "hi_spread": [float(v) for v in np.percentile(hi, [10, 90])],
        "pairs": [[float(lo[i]), float(hi[i])] for i in sorted(pick)],
        "background": float(np.median([c.background for c in crops])),
    }


def _encode_labels(
    labels: Any, class_names: Sequence[str] | None, n: int
) -> tuple[np.ndarray, list[str]]:
    values = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    if len(values) != n:
        raise ValueError(f"got {len(values)} labels for {n} images: give one label per image")
    if all(isinstance(v, str) for v in values):
        names = [str(c) for c in class_names] if class_names else sorted(set(values))
        lookup = {name: k for k, name in enumerate(names)}
        unknown = sorted(set(values) - set(lookup))
        if unknown:
            raise ValueError(f"labels {unknown} are not in class_names {names}: add them")
        return np.array([lookup[v] for v in values], dtype=np.int64), names
    try:
        ints = np.array([int(v) for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError("labels must be all integers or all pattern names (strings)") from None
    if not np.all(ints == np.asarray(values, dtype=np.float64)):
        raise ValueError("labels must be whole numbers or pattern names")
    if ints.size and ints.min() < 0:
        raise ValueError("integer labels must be >= 0")
    n_cls = int(ints.max()) + 1 if ints.size else 0
    if class_names:
        names = [str(c) for c in class_names]
        if n_cls > len(names):
            raise ValueError(
                f"label {n_cls - 1} has no name: class_names has only {len(names)} entries"
            )
    else:
        names = [str(k) for k in range(n_cls)]
    return ints, names


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)
