"""A slide's slowly varying background, found and taken away.

Real fluorescence slides are not evenly lit: the corners of a wide field are
darker than its centre (vignetting), the excitation light is patchy, and an
out-of-focus haze sits under the cells. None of this is a cell, and all of it
varies over many cell diameters, while a cell is one diameter across. Left in,
it moves every level that the labelling takes from the slide as a whole: the
slide's levels that map a typical cell to the training crops' range (a bright
centre makes the dark corners' cells look like background, a dim slide's haze
makes the whole field look like one cell), and the background level that each
cell is cut against.

:func:`estimate_background` finds it the way a microscopist's flat-field
correction without a reference image would: the slide's mean in blocks of a
quarter of a cell diameter, the :data:`BACKGROUND_PCT` th percentile of those
blocks in windows :data:`BACKGROUND_WINDOW` cell diameters wide (a window that
wide always holds the gaps between cells, unless the slide is confluent), one
window a diameter, then smoothed by a Gaussian of :data:`BACKGROUND_SMOOTH`
cell diameters.
:func:`flatten_background` subtracts it, bilinearly interpolated to every
pixel, and adds back its median, so the flattened slide keeps the raw slide's
grey levels where the background is typical. The result is a lazy view: a
region is flattened when it is read, so a slide on disk larger than memory
stays on disk.

The choices and their figures are in ``docs/experiments.md`` (*Flattening the
background*).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .._memmap import StackPlane, release_pages
from .labels import _check_stop

__all__ = ["BACKGROUNDS", "BACKGROUND_PCT", "BACKGROUND_SMOOTH", "BACKGROUND_WINDOW",
           "Background", "FlatSlide", "estimate_background", "flatten_background"]

BACKGROUNDS = ("flatten", "none")
"""What is done with a slide's background before its cells are looked for."""
BACKGROUND_PCT = 10.0
"""The background of a window is this percentile of its blocks' means."""
BACKGROUND_WINDOW = 4.0
"""Width of the windows, in cell diameters."""
BACKGROUND_SMOOTH = 1.0
"""Sigma of the Gaussian that smooths the background, in cell diameters."""
BLOCKS_PER_DIAMETER = 4
"""Blocks across one cell diameter (a block is at least one pixel)."""
_BAND_PIXELS = 4_000_000
KEEP_PIXELS = 16_000_000
"""A flattened slide of at most this many pixels is computed whole on its first read and
kept (64 MB of float32); a larger one is flattened region by region at every read."""


@dataclass(frozen=True)
class Background:
    """The background of a 2-D slide on a coarse grid of nodes.

    ``grid[i, j]`` is the background at the centre of the square of pixels
    ``[i * step, (i + 1) * step) x [j * step, (j + 1) * step)``.
    ``level``: the grid's median, added back by :meth:`region`.
    """

    grid: np.ndarray
    step: int
    shape: tuple[int, int]
    level: float

    def region(self, rows: slice, cols: slice) -> np.ndarray:
        """``background - level`` at pixels ``[rows, cols]`` (slices with any step), float32."""
        ys = np.arange(*rows.indices(self.shape[0]))
        xs = np.arange(*cols.indices(self.shape[1]))
        wy = _taps(ys, self.step, self.grid.shape[0])
        wx = _taps(xs, self.step, self.grid.shape[1])
        g = self.grid - np.float32(self.level)
        by_row = g[wy[0]] * wy[2][:, None] + g[wy[1]] * (1 - wy[2])[:, None]  # (ny, W)
        return (by_row[:, wx[0]] * wx[2][None, :]
                + by_row[:, wx[1]] * (1 - wx[2])[None, :]).astype(np.float32)


def _taps(coords: np.ndarray, step: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps on a grid of block centres: (lower index, upper index, lower weight)."""
    pos = np.clip((coords + 0.5) / step - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (1.0 - (pos - lo)).astype(np.float32)


def estimate_background(slide: Any, cell_diameter: float, *,
                        stop: Callable[[], bool] | None = None) -> Background:
    """The slowly varying background of a 2-D slide (see the module notes).

    ``slide``: a 2-D array or any array-like that can be sliced (a memmap, a lazy
    view); it is read in bands of rows, and a memory-mapped slide's pages are
    handed back after each. Raises ValueError for NaN or infinite pixels and for a
    cell diameter that is not a positive number; ``Stopped`` between bands once
    ``stop()`` is true (a slide read in one band is never stopped here: what reads it
    next heeds the stop).
    """
    d = float(cell_diameter)
    if not np.isfinite(d) or d <= 0:
        raise ValueError(f"cell_diameter must be a positive number of pixels, got {cell_diameter!r}")
    if len(slide.shape) != 2:
        raise ValueError(f"a slide must be 2-D, got shape {tuple(slide.shape)}")
    h, w = (int(s) for s in slide.shape)
    step = max(1, int(round(d / BLOCKS_PER_DIAMETER)))
    blocks = _block_means(slide, h, w, step, stop)
    if not np.isfinite(blocks).all():
        raise ValueError("the slide contains NaN or infinite values: replace them first")
    grid = _window_percentiles(blocks)
    node = BLOCKS_PER_DIAMETER * step  # about one diameter between the grid's nodes
    grid = ndi.gaussian_filter(grid, BACKGROUND_SMOOTH * d / node, mode="reflect")
    return Background(grid.astype(np.float32), node, (h, w), float(np.median(grid)))


def _window_percentiles(blocks: np.ndarray, pct: float = BACKGROUND_PCT,
                        k: int = BLOCKS_PER_DIAMETER,
                        size: int = int(round(BACKGROUND_WINDOW * BLOCKS_PER_DIAMETER))
                        ) -> np.ndarray:
    """``pct`` th percentile of the blocks in a window ``size`` blocks wide around every
    group of ``k x k`` blocks, the slide's edges mirrored (by default: the
    :data:`BACKGROUND_PCT` th percentile in windows :data:`BACKGROUND_WINDOW` diameters
    wide, one value per diameter).

    One value per group, not per block: the background changes over many
    diameters, and it costs ``k**2`` times less than a percentile filter."""
    before = (size - k) // 2
    groups = [-(-n // k) for n in blocks.shape]
    pad = [(before, k * g + size - k - before - n) for g, n in zip(groups, blocks.shape)]
    padded = np.pad(blocks, pad, mode="symmetric")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size))[::k, ::k]
    windows = windows[: groups[0], : groups[1]].reshape(groups[0], groups[1], -1)
    return np.percentile(windows, pct, axis=-1).astype(np.float32)


def _block_means(slide: Any, h: int, w: int, step: int,
                 stop: Callable[[], bool] | None = None, *, brightest: bool = False
                 ) -> np.ndarray:
    """Mean of every ``step x step`` block (the last row and column of blocks may be
    smaller), read in bands of whole block rows; with ``brightest``, each block's
    brightest pixel instead."""
    H, W = -(-h // step), -(-w // step)
    out = np.empty((H, W), np.float64)
    rows = max(1, _BAND_PIXELS // max(w * step, 1)) * step
    edges = np.arange(0, w, step)
    widths = np.diff(np.append(edges, w))
    for y0 in range(0, h, rows):
        if y0:  # between bands: a slide of one band runs on
            _check_stop(stop)
        y1 = min(h, y0 + rows)
        band = np.asarray(slide[y0:y1, :], dtype=np.float32 if brightest else np.float64)
        release_pages(slide)
        starts = np.arange(0, y1 - y0, step)
        rows_out = slice(y0 // step, y0 // step + len(starts))
        if brightest:
            out[rows_out] = np.maximum.reduceat(np.maximum.reduceat(band, starts, axis=0),
                                                edges, axis=1)
            continue
        heights = np.diff(np.append(starts, y1 - y0))
        sums = np.add.reduceat(np.add.reduceat(band, starts, axis=0), edges, axis=1)
        out[rows_out] = sums / np.outer(heights, widths)
    return out.astype(np.float32)


class FlatSlide:
    """A 2-D slide with its background taken away, flattened region by region as it is read.

    Behaves like a read-only float32 array for slicing (``view[y0:y1, x0:x1]``,
    steps included) and ``np.asarray(view)``; ``raw`` is the slide as given and
    ``background`` what is taken away.
    """

    def __init__(self, slide: Any, background: Background) -> None:
        self.raw, self.background = slide, background
        self.base_array = getattr(slide, "base_array", slide)
        self.shape = tuple(background.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self._whole: np.ndarray | None = None

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2:
            raise IndexError(f"a slide has 2 axes, got the index {key!r}")
        if self._whole is None and self.shape[0] * self.shape[1] <= KEEP_PIXELS:
            self._whole = self._flat(slice(None), slice(None))
        if self._whole is not None:
            return self._whole[key].copy()
        rows, cols = (k if isinstance(k, slice) else slice(int(k), int(k) + 1) for k in key)
        flat = self._flat(rows, cols)
        squeeze = tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
        return flat.squeeze(squeeze) if squeeze else flat

    def forget(self) -> None:
        """Let the kept flattened pixels go (they are worked out again when read)."""
        self._whole = None

    def _flat(self, rows: slice, cols: slice) -> np.ndarray:
        """The flattened region, worked out in bands of rows (a whole slide at once
        would make several slide-sized temporaries, and take several times as long)."""
        ys = range(*rows.indices(self.shape[0]))
        width = len(range(*cols.indices(self.shape[1])))
        out = np.empty((len(ys), width), np.float32)
        chunk = max(1, _BAND_PIXELS // max(width, 1))
        for i in range(0, len(ys), chunk):
            part = ys[i:i + chunk]
            band = slice(part.start, part.start + part.step * len(part), part.step)
            if band.stop < 0:  # a band of a reversed slice that reaches row 0
                band = slice(part.start, None, part.step)
            out[i:i + len(part)] = self.raw[band, cols]
            out[i:i + len(part)] -= self.background.region(band, cols)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        flat = self[:, :]
        return flat if dtype is None else flat.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


class _FlatStack:
    """A ``(T, Y, X)`` stack whose every plane is flattened on its own.

    Only the plane read last keeps its flattened pixels (see :data:`KEEP_PIXELS`): the
    planes are worked through one after the other, and a stack need not fit in memory.
    """

    def __init__(self, stack: Any, cell_diameter: float,
                 stop: Callable[[], bool] | None = None) -> None:
        self.raw = stack
        planes = [StackPlane(stack, t) for t in range(int(stack.shape[0]))]
        self.planes = [FlatSlide(p, estimate_background(p, cell_diameter, stop=stop))
                       for p in planes]
        self._last: int | None = None
        self.base_array = getattr(stack, "base_array", stack)
        self.shape = tuple(int(s) for s in stack.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        t, rest = key[0], key[1:]
        if isinstance(t, slice):
            return np.stack([self._plane(i)[rest] for i in range(*t.indices(len(self.planes)))])
        return self._plane(int(t))[rest]

    def _plane(self, t: int) -> FlatSlide:
        t = range(len(self.planes))[t]
        if self._last is not None and self._last != t:
            self.planes[self._last].forget()  # the plane before lets its pixels go
        self._last = t
        return self.planes[t]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        flat = self[:]
        return flat if dtype is None else flat.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


def flatten_background(image: Any, cell_diameter: float, background: str = "flatten", *,
                       stop: Callable[[], bool] | None = None) -> Any:
    """``image`` with its background taken away (a lazy float32 view), or as it is.

    ``image``: a 2-D slide or a ``(T, Y, X)`` stack (each plane on its own).
    ``background``: ``"flatten"`` (default) or ``"none"`` (the image is returned as
    it is). ``stop``: checked while the background is found (a huge slide takes
    seconds); ``Stopped`` once it is true.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, "
                         f"got {background!r}")
    if background == "none":
        return image
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if np.dtype(image.dtype).kind not in "biuf":
        raise ValueError(f"the image must be numeric, got dtype {image.dtype}")
    if len(image.shape) == 3:
        return _FlatStack(image, cell_diameter, stop)
    return FlatSlide(image, estimate_background(image, cell_diameter, stop=stop))
