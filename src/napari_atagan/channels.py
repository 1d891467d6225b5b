"""Real microscope files: opening them, and which channel holds the stain.

IIF slides often come as 8-bit RGB files with the stain in one channel (green
for FITC) and the other channels near zero or copies of it; multi-channel
TIFFs hold one stain per channel. The attention engine reads one grey plane,
so:

* :func:`open_image_file` opens a slide file (TIFF, PNG, ``.npy``) without
  reading it into memory where the format allows it, and says which axis is
  which when the file tells (ImageJ ``channels``, OME or tifffile series axes,
  a PNG's colour mode). Every unreadable file (empty, not an image, damaged,
  truncated in the middle of its pixel data) raises ``ValueError`` with a
  one-line message that names the file.
* :func:`pick_stain_channel` chooses the stained channel.
* :func:`grey_view` turns an image with channels into the 2-D slide (or 3-D
  stack) the engine reads, lazily: a memory-mapped file is still read region by
  region.

Pure numpy, tifffile and Pillow: no napari, Qt or torch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_CHANNELS",
    "ChannelView",
    "ImageFile",
    "channel_axis",
    "describe_channel",
    "grey_view",
    "open_image",
    "open_image_file",
    "pick_stain_channel",
    "read_grey",
]

MAX_CHANNELS = 8
"""An axis counts as channels only up to this length (longer ones are planes of a stack)."""
RGB_NAMES = ("red", "green", "blue", "alpha")
LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
"""Luminance weights of red, green and blue (the engine's ``rgb="grey"`` uses the same)."""
SPREAD_PERCENTILES = (1.0, 99.5)
"""The robust signal spread of a channel is the difference of these percentiles."""
SAMPLE_PIXELS = 1 << 20
"""Pixels per channel looked at when choosing one (a regular sub-sample)."""
TIE = 0.99
"""Channels whose spread is within 1 % of the largest count as equally stained."""
IDENTICAL = 0.02
"""Channels differ by less than this fraction of their spread: a grey image in colour."""
_PREFERENCE = (1, 0, 2)
"""On a tie between colour channels: green (FITC, the usual IIF stain), then red, blue."""


# --------------------------------------------------------------------------- opening files


@dataclass
class ImageFile:
    """An opened image file: its pixels and, where the file says, its axes."""

    data: Any
    """A numpy array, or a read-only ``numpy.memmap`` of the file."""
    axes: str | None
    """One letter per axis of ``data`` (``"YX"``, ``"YXS"``, ``"CYX"``, ``"TYX"``, ...),
    as tifffile names them (``S``: colour samples, ``C``: channels); ``None`` when
    the file does not say (``.npy``)."""
    path: Path


def open_image(path: str | os.PathLike) -> Any:
    """The pixels of an image file (see :func:`open_image_file`), axes not kept."""
    return open_image_file(path).data


def open_image_file(path: str | os.PathLike) -> ImageFile:
    """Open a slide without reading it into memory where the format allows it.

    Uncompressed TIFF and ``.npy`` files are memory-mapped; other TIFFs and
    PNGs (and any format Pillow reads) are read whole. Leading axes of length 1
    are dropped (never rows or columns, where the file names its axes). Raises
    ``ValueError`` with a one-line message naming the file when it cannot be
    read: an empty file, one that is not an image of its kind, a damaged one,
    one truncated inside its pixel data, or one too large to read whole.
    """
    path = Path(path)
    where = f"could not read image {str(path)!r}"
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc}") from None
    if size == 0:
        raise ValueError(f"{where}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            data, axes = _open_tiff(path, size)
        elif suffix == ".npy":
            data, axes = np.load(path, mmap_mode="r", allow_pickle=False), None
        else:
            data, axes = _open_pillow(path)
    except MemoryError:
        raise ValueError(f"{where}: it does not fit in memory (save it as an uncompressed "
                         "TIFF, which is read piece by piece)") from None
    except Exception as exc:  # readers of damaged files raise anything (IndexError, zlib.error)
        raise ValueError(f"{where}: {_one_line(exc)}") from None
    if not hasattr(data, "shape") or np.dtype(data.dtype).kind not in "biuf":
        raise ValueError(f"{where}: its pixels are not numbers "
                         f"(dtype {getattr(data, 'dtype', None)})")
    if axes is not None and len(axes) != len(data.shape):
        axes = None
    while len(data.shape) > 2 and data.shape[0] == 1 and (axes is None or axes[0] not in "YX"):
        data, axes = data[0], (axes[1:] if axes else None)
    return ImageFile(data=data, axes=axes, path=path)


def _open_tiff(path: Path, size: int) -> tuple[Any, str | None]:
    import tifffile

    # tifffile logs its doubts about damaged metadata; a damaged file gets one clear
    # error below instead, and one whose pixels read is fine
    with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError("the file holds no images")
        series = tif.series[0]
        axes = series.axes  # ImageJ's "channels" and OME's axes become "C" here
        _check_length(series, size)
    try:
        return tifffile.memmap(path, mode="r"), axes
    except (ValueError, OSError):  # compressed or tiled: no memory map possible
        pass
    return tifffile.imread(path), axes


@contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_length(series: Any, size: int) -> None:
    """``ValueError`` when the file ends before the end of the first series' pixel data."""
    offset = series.dataoffset
    if offset is not None:  # stored contiguously: one range
        end = int(offset) + int(series.nbytes)
    else:
        end = 0
        for page in series.pages:
            for start, count in zip(getattr(page, "dataoffsets", ()),
                                    getattr(page, "databytecounts", ())):
                if count:
                    end = max(end, int(start) + int(count))
    if end > size:
        raise ValueError(f"the file is truncated: its pixel data end at byte {end:,} "
                         f"but the file has {size:,} bytes")


def _open_pillow(path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        elif im.mode == "LA":
            im = im.convert("L")
        data = np.asarray(im)
    return data, ("YXS" if data.ndim == 3 else "YX")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("not a TIFF file"):
        return "not a TIFF file (no TIFF header at its start)"
    return text


# --------------------------------------------------------------------------- channels


def channel_axis(shape: tuple[int, ...], axes: str | None = None) -> int | None:
    """The axis of ``shape`` that holds channels, or ``None`` (a grey slide or a stack).

    With ``axes`` from the file, the axis named ``C`` (channels) or ``S`` (colour
    samples) of at most :data:`MAX_CHANNELS`, or none; without, the last axis of
    a 3-D or 4-D image when it has 3 or 4 entries (RGB or RGBA, ``(Y, X, 3)`` or
    a colour stack ``(T, Y, X, 3)``). A ``(T, Y, X)`` stack has no channel axis.
    """
    shape = tuple(int(s) for s in shape)
    if axes is not None and len(axes) == len(shape):
        for letter in "CS":
            if letter in axes:
                axis = axes.index(letter)
                if shape[axis] <= MAX_CHANNELS and len(shape) in (3, 4):
                    return axis
        return None  # the file names its axes, and none of them is channels
    if len(shape) in (3, 4) and shape[-1] in (3, 4):
        return len(shape) - 1
    return None


def _colour(shape: tuple[int, ...], axis: int, axes: str | None) -> bool:
    """Are the channels red, green, blue (and alpha)?"""
    if shape[axis] not in (3, 4):
        return False
    if axes is None or len(axes) != len(shape):
        return axis == len(shape) - 1  # (Y, X, 3): RGB; (3, Y, X) unnamed: channels
    return axes[axis] == "S"


def _names(n: int, colour: bool) -> list[str]:
    return list(RGB_NAMES[:n]) if colour else [f"channel {i}" for i in range(n)]


def pick_stain_channel(image: Any, *, channel_axis: int = -1,
                       names: list[str] | None = None) -> tuple[int | None, str, str]:
    """The channel that holds the stain: ``(index, name, reason)``.

    Rule: the channel with the **largest robust signal spread**, the 99.5th
    minus the 1st percentile of its values. A stained channel spans from the
    dark background to the bright cells; a channel near zero, a constant alpha
    channel or a faint bleed-through spans little, and the percentiles (rather
    than the minimum and maximum) ignore a few hot pixels or a saturated spot.
    The percentiles are taken on a regular sub-sample of at most
    :data:`SAMPLE_PIXELS` pixels per channel, so a huge (memory-mapped) image is
    never read whole; NaN and infinite values are left out. Channels within 1 %
    of the largest spread tie; among colour channels green wins a tie (FITC, the
    usual IIF stain), then red, then blue; otherwise the first channel.

    When all channels are near-identical (they differ by less than
    :data:`IDENTICAL` of their spread: a grey image saved as colour), no channel
    is better than another: ``index`` is ``None`` and ``name`` is
    ``"luminance"`` for colour channels (use their luminance); for other
    channels the first one is returned. An alpha channel (the 4th of RGBA) is
    never chosen. ``names`` defaults to red/green/blue/alpha for 3 or 4
    channels on the last axis and ``channel 0``, ``channel 1``, ... otherwise.
    """
    shape = tuple(int(s) for s in image.shape)
    axis = channel_axis % len(shape)
    n = shape[axis]
    if n < 1:
        raise ValueError(f"the image has no channels (shape {shape})")
    if names is None:
        names = _names(n, n in (3, 4) and axis == len(shape) - 1)
    names = list(names)
    colour = names[:3] == list(RGB_NAMES[:3])
    candidates = list(range(3 if colour and n == 4 else n))
    if len(candidates) == 1:
        return 0, names[0], "the image has one channel"
    sample = _sample(image, axis)[..., candidates]
    spreads = _spreads(sample)
    top = max(spreads)
    listed = ", ".join(f"{names[c]} {s:.3g}" for c, s in zip(candidates, spreads))
    if _near_identical(sample, top):
        why = f"the channels are near-identical (a grey image saved as colour; spreads {listed})"
        if colour:
            return None, "luminance", why + ": their luminance is used"
        return 0, names[0], why + f": {names[0]} is used"
    tied = [c for c, s in zip(candidates, spreads) if s >= TIE * top]
    order = [c for c in _PREFERENCE if c in tied] if colour else tied
    best = order[0]
    reason = (f"largest signal spread ({SPREAD_PERCENTILES[1]:g}th minus "
              f"{SPREAD_PERCENTILES[0]:g}st percentile): {listed}")
    return best, names[best], reason


def _sample(image: Any, axis: int) -> np.ndarray:
    """A regular sub-sample of every channel, ``(pixels, channels)`` float32."""
    shape = tuple(int(s) for s in image.shape)
    rest = [i for i in range(len(shape)) if i != axis]
    planes = rest[:-2]  # leading axes of a stack: a few planes spread over it
    key: list[Any] = [slice(None)] * len(shape)
    n_planes = 1
    for i in planes:
        k = min(shape[i], 4)
        key[i] = np.unique(np.linspace(0, shape[i] - 1, k).round().astype(int))
        n_planes *= len(key[i])
    y, x = rest[-2], rest[-1]
    step = max(1, math.ceil(math.sqrt(shape[y] * shape[x] * n_planes / SAMPLE_PIXELS)))
    key[y], key[x] = slice(None, None, step), slice(None, None, step)
    region = _read(image, key)
    from ._memmap import release_pages

    release_pages(image)
    region = np.moveaxis(np.asarray(region), axis, -1)
    return region.reshape(-1, shape[axis]).astype(np.float32)


def _read(image: Any, key: list[Any]) -> Any:
    """``image[key]`` with at most one index array (the others taken one by one)."""
    arrays = [i for i, k in enumerate(key) if isinstance(k, np.ndarray)]
    if not arrays:
        try:
            return np.asarray(image[tuple(key)])
        except (TypeError, ValueError, IndexError, NotImplementedError):
            y = next((i for i, k in enumerate(key) if (k.step or 1) > 1), None)
            if y is None:
                raise
        # an array-like without step slicing: every sampled row read on its own
        whole = tuple(slice(k.start, k.stop) for k in key)
        local = tuple(slice(None, None, None if i == y else k.step) for i, k in enumerate(key))
        rows = []
        for t in range(*key[y].indices(int(image.shape[y]))):
            row = whole[:y] + (slice(t, t + 1),) + whole[y + 1:]
            rows.append(np.asarray(image[row])[local])
        return np.concatenate(rows, axis=y)
    i = arrays[0]
    parts = []
    for t in key[i]:
        sub = list(key)
        sub[i] = slice(int(t), int(t) + 1)
        parts.append(_read(image, sub))
    return np.concatenate(parts, axis=i)


def _spreads(sample: np.ndarray) -> list[float]:
    out = []
    for c in range(sample.shape[1]):
        values = sample[:, c]
        values = values[np.isfinite(values)]
        if values.size == 0:
            out.append(0.0)
            continue
        lo, hi = np.percentile(values, SPREAD_PERCENTILES)
        out.append(float(hi - lo))
    return out


def _near_identical(sample: np.ndarray, top: float) -> bool:
    if top <= 0:
        return True  # every channel is flat
    first = sample[:, 0]
    for c in range(1, sample.shape[1]):
        diff = np.abs(sample[:, c] - first)
        diff = diff[np.isfinite(diff)]
        if diff.size and float(np.percentile(diff, 99.0)) > IDENTICAL * top:
            return False
    return True


class ChannelView:
    """One channel (or the luminance of the colour channels) of an image, read lazily.

    ``view[key]`` reads only the region ``key`` of the underlying array, with
    all its channels when the luminance is wanted; ``shape`` is the image's
    without the channel axis. A plain numpy array or memmap needs no such view
    for one channel (basic slicing is already one); this one serves the
    luminance and array-likes such as dask or zarr arrays.
    """

    def __init__(self, image: Any, axis: int, index: int | None) -> None:
        self._image, self._index = image, index
        ndim = len(image.shape)
        self._axis = axis % ndim
        self.base_array = getattr(image, "base_array", image)
        self.shape = tuple(int(s) for i, s in enumerate(image.shape) if i != self._axis)
        self.dtype = np.dtype(image.dtype) if index is not None else np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[(slice(None),) * self.ndim]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _full_key(key, self.ndim)
        a = self._axis
        if self._index is not None:
            return np.asarray(self._image[key[:a] + (self._index,) + key[a:]])
        region = np.asarray(self._image[key[:a] + (slice(None),) + key[a:]])
        at = a - sum(1 for k in key[:a] if not isinstance(k, slice))  # ints drop axes
        region = np.moveaxis(region, at, -1)[..., :3].astype(np.float32)
        return region @ LUMA


def _full_key(key: Any, ndim: int) -> tuple[Any, ...]:
    """``key`` as a tuple of ``ndim`` ints / slices (an ``Ellipsis`` expanded)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices ({len(key)}) for a {ndim}-D image")
    return tuple(key) + (slice(None),) * (ndim - len(key))


def grey_view(image: Any, channel: int | str | None = None, *,
              axes: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The grey slide ``(Y, X)`` or stack ``(T, Y, X)`` that the engine reads, and how.

    ``channel`` is ``None`` or ``"auto"`` (the stained channel, chosen by
    :func:`pick_stain_channel`), a 0-based channel index, or ``"grey"`` (the
    luminance of the colour channels). The channel axis is the one
    :func:`channel_axis` finds from ``axes`` (the file's, see
    :func:`open_image_file`) or the shape. An image without one (a grey slide, a
    stack) is returned as it is, except that an index asks for a channel: a
    3-D image whose first axis is short (at most :data:`MAX_CHANNELS`) and not
    known to be time or depth is then read as ``(C, Y, X)``; index 0 of a 2-D
    image is the image itself.

    Nothing is read but the sub-sample that chooses the channel: for a numpy
    array or memmap one channel is a view of it, otherwise a
    :class:`ChannelView`. Returns ``(view, info)``; ``info`` is empty for a grey
    image and otherwise holds ``channel`` (the index, ``None`` for the
    luminance), ``channel_name``, ``channel_source`` (``"auto"`` or
    ``"given"``), ``channels`` (how many) and ``channel_reason``. Raises
    ``ValueError`` for a channel out of range or a layout the engine cannot
    read (more than one axis of planes).
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    mode = _channel_mode(channel)
    axis = channel_axis(shape, axes)
    if axis is None and isinstance(mode, int):
        axis = _asked_axis(shape, axes, mode)
        if axis is None:
            return image, {"channel": 0, "channel_name": "grey", "channel_source": "given",
                           "channels": 1, "channel_reason": "the image has one channel"}
    if axis is None:
        if len(shape) not in (2, 3):
            raise ValueError(f"the image is {len(shape)}-D, shape {shape}"
                             + (f" (axes {axes})" if axes else "")
                             + ": use a 2-D slide, a (T, Y, X) stack or a colour image")
        return image, {}
    n = shape[axis]
    if len(shape) - 1 not in (2, 3):
        raise ValueError(f"the image is {len(shape)}-D, shape {shape}"
                         + (f" (axes {axes})" if axes else "")
                         + ": with its channels it must hold a 2-D slide or a (T, Y, X) stack")
    colour = _colour(shape, axis, axes)
    names = _names(n, colour)
    if isinstance(mode, int):
        if mode >= n:
            listed = ", ".join(f"{i} {name}" if colour else str(i)
                               for i, name in enumerate(names))
            raise ValueError(f"channel {mode} is out of range: the image has {n} channels "
                             f"({listed}), shape {shape}")
        index, name, source, reason = mode, names[mode], "given", "asked for"
    elif mode == "grey":
        if not colour:
            raise ValueError(f"the image has {n} channels that are not red, green and blue "
                             f"(shape {shape}): choose one channel instead of the luminance")
        index, name, source = None, "luminance", "given"
        reason = "the luminance of red, green and blue"
    else:
        index, name, reason = pick_stain_channel(image, channel_axis=axis, names=names)
        source = "auto"
    info = {"channel": index, "channel_name": name, "channel_source": source,
            "channels": n, "channel_reason": reason}
    if index is not None and isinstance(image, np.ndarray):
        view = image[(slice(None),) * axis + (index,)]
    else:
        view = ChannelView(image, axis, index)
    return view, info


def _channel_mode(channel: int | str | None) -> int | str:
    if channel is None:
        return "auto"
    if isinstance(channel, str):
        text = channel.strip().lower()
        if text in ("auto", "grey", "gray", "luminance"):
            return "grey" if text != "auto" else "auto"
        try:
            channel = int(text)
        except ValueError:
            raise ValueError(f"channel must be 'auto', 'grey' or a number >= 0, "
                             f"got {channel!r}") from None
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise ValueError(f"channel must be 'auto', 'grey' or a number >= 0, got {channel!r}")
    if channel < 0:
        raise ValueError(f"channel must be >= 0 (the first channel is 0), got {channel}")
    return int(channel)


def _asked_axis(shape: tuple[int, ...], axes: str | None, index: int) -> int | None:
    """The channel axis of an image that has none by its file when a channel is asked for."""
    if len(shape) == 2:
        if index == 0:
            return None
        raise ValueError(f"channel {index} is out of range: the image has one channel "
                         f"(0), shape {shape}")
    known = axes[0] if axes is not None and len(axes) == len(shape) else "Q"
    if len(shape) == 3 and shape[0] <= MAX_CHANNELS and known in "QI":
        return 0
    what = {"T": "time points", "Z": "depth planes"}.get(known, "planes")
    raise ValueError(f"the image has no channel axis: shape {shape}"
                     + (f" (axes {axes})" if axes else "")
                     + f" is a stack of {shape[0]} {what}, not channels")


def describe_channel(info: dict[str, Any]) -> str:
    """One line for the user: which channel :func:`grey_view` used and why."""
    if not info:
        return "grey image"
    index, name = info.get("channel"), info.get("channel_name", "")
    what = name if index is None or name == f"channel {index}" else f"channel {index} ({name})"
    how = "chosen automatically" if info.get("channel_source") == "auto" else "as asked"
    reason = info.get("channel_reason")
    return f"{what} of {info.get('channels')}, {how}" + (f": {reason}" if reason else "")


def read_grey(path: str | os.PathLike, channel: int | str | None = None, *,
              say: Callable[[str], Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """The grey slide (or stack) of an image file and which channel it is.

    ``channel``: ``None`` (the stained channel of a colour or multi-channel
    image, chosen automatically), an index, or ``"grey"`` (the luminance). The
    dict is empty for a grey file; ``say`` gets one line naming the channel chosen.
    The pixels stay on disk where the format allows it.
    """
    opened = open_image_file(Path(path))
    image, info = grey_view(opened.data, channel, axes=opened.axes)
    if info and say is not None:
        say(f"{Path(path).name}: {describe_channel(info)}")
    return image, info
