"""Translating a crop or a whole slide, tile by tile, in bounded memory.

What is computed
----------------
For a 2-D grey image and a direction (``a2b``: ``F_ab`` and ``A_a``; ``b2a``:
``F_ba`` and ``A_b``):

1. **Scale.** With ``cell_diameter`` the image is resampled so that its cells
   have the size the input domain's cells had in the training crops at model
   scale (``model_cell_diameter / cell_diameter``; anti-aliased when shrinking,
   bilinear when enlarging); without it the image is used as it is. The model
   grid is extended to a multiple of 4 by repeating the edge.
2. **Grey levels.** The checkpoint's fixed levels (the same for both domains)
   map the image to model units, ``lo -> -1`` and ``hi -> +1``, clipped to
   [-1.5, 1.5], exactly as the training crops were mapped. A model trained with
   ``grey_levels="own"`` maps every neighbourhood of one training crop's size by
   its own levels instead, as its training crops each were
   (:func:`napari_atagan.translate.data.local_levels`); one trained with
   ``grey_levels="target"`` maps its input so and sends its translated pixels back
   through the target domain's grey range (step 4).
3. **Translation.** ``x' = A(x) * F(x) + (1 - A(x)) * x`` (``F(x)`` without
   attention; with ``composite="hard"``, ``F(x)`` where ``A(x) > 0.5`` and ``x``
   elsewhere: :func:`~napari_atagan.translate.models.compose`), computed in
   tiles. The networks normalise with their standing statistics, so they are
   plain convolutions: every tile is computed with a halo at least as wide as
   their receptive field, its origin on a multiple of 4 (the networks' stride),
   and only its centre is kept. The pixels do not
   depend on the tiling, so there are no seams at all.
4. **Back.** The translated image and the attention are resampled back to the
   image's own pixel grid; the translation is mapped back to grey levels with
   the same levels and returned in the input's dtype (integers rounded and
   clipped to the dtype's range). With ``grey_levels="target"`` the kept part of
   each pixel goes back through the input's levels and the translated part through
   the input's low level plus the target domain's median grey range
   (:func:`~napari_atagan.translate.models.compose_parts`).

Memory: one tile (plus halo) of the image is read and on the device at a time;
the results are written tile by tile into ``out`` (preallocated arrays or
``numpy.memmap``), so a slide larger than memory can be translated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._memmap import release_pages
from ..device import resolve_device
from ..events import Stopped
from ..slides.attention import _AxisTaps, _check_diameter, _too_small
from .data import CLIP, Levels, LocalLevels, grey_of_parts, local_levels
from .models import HARD_CUT, MULTIPLE, check_composite, compose, compose_parts
from .translator import check_direction, load_translator

__all__ = ["MIN_SIDE", "Stopped", "default_tile_size", "nothing_attended", "translate_image"]

MIN_SIDE = 16
"""Smallest image side (source and model pixels) that is translated."""
MAX_MODEL_PIXELS = 2**34
"""Refuse images that would exceed this many pixels at model scale (a typo'd diameter)."""
_CHECK_BAND_PIXELS = 1 << 22

Progress = Callable[[int, int], Any]
Stop = Callable[[], bool]


def nothing_attended(attention: Any) -> bool:
    """Whether no pixel's attention is above :data:`~napari_atagan.translate.models.HARD_CUT`:
    then a ``composite="hard"`` translation is the input itself (a model whose attention
    stays low everywhere, such as the paper's UAG-GAN without masks on I3A cells: 0.27-0.30
    inside the cells on average, above 0.5 nowhere)."""
    return not float(np.max(attention, initial=0.0)) > HARD_CUT


def default_tile_size(device: str | torch.device) -> int:
    """Tile side (model pixels) used when none is given: 1024 on CUDA, 512 elsewhere."""
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    return 1024 if dev.type == "cuda" else 512


def translate_image(
    checkpoint: Any,
    image: Any,
    *,
    direction: str = "a2b",
    cell_diameter: float | None = None,
    tile_size: int | None = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    stop: Stop | None = None,
    out: tuple[np.ndarray | None, np.ndarray | None] | None = None,
    composite: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Translate a 2-D grey image (a crop or a whole slide) to the other domain.

    Parameters
    ----------
    checkpoint:
        Path of a translation checkpoint, a loaded one, or a
        :class:`~napari_atagan.translate.Translator`.
    image:
        2-D grey image ``(Y, X)`` of at least 16 x 16 pixels, of any numeric
        dtype: a numpy array, a ``numpy.memmap`` or any array-like with
        ``shape``, ``dtype`` and slicing (dask, zarr); it is read tile by tile.
    direction:
        ``"a2b"`` (the image is of domain A) or ``"b2a"``.
    cell_diameter:
        Typical cell diameter in the image, in pixels: the image is rescaled so
        its cells match the training crops, and the results resized back.
        ``None`` translates the image at its own scale (right for crops of the
        training size).
    tile_size:
        Side of a tile at model scale, in pixels (bounds the memory); default
        :func:`default_tile_size`. The result does not depend on it.
    device:
        ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
    progress:
        Called as ``progress(done, total)`` after every tile.
    stop:
        Called between tiles; when it returns True, :class:`Stopped` is raised
        (``out`` then holds the tiles done so far).
    out:
        ``(translated, attention)``: preallocated arrays (or memmaps) of the
        image's shape that receive the results (either may be ``None``); the
        translation must have the image's dtype, the attention a float dtype.
    composite:
        ``"soft"`` (the paper's): every pixel blended by its attention; ``"hard"``:
        every pixel either translated (attention above 0.5) or kept as it is. On
        held-out I3A cells the hard composite changed the background less and
        translated further in both studies (``docs/RESULTS.md``). The attention
        returned is the soft map either way. ``None`` (default): the model's own
        (:attr:`~napari_atagan.translate.Translator.default_composite`: ``"hard"`` for a
        model of ``grey_levels="target"``, else ``"soft"``).

    Returns
    -------
    ``(translated, attention)``: the translation in the image's dtype and grey
    levels, and the attention as float32 in [0, 1] (all ones for a model trained
    without attention), both of the image's shape.
    """
    translator = load_translator(checkpoint)
    check_direction(direction)
    composite = check_composite(composite or translator.default_composite)
    img = _as_image(image)
    factor = 1.0
    if cell_diameter is not None:
        factor = translator.model_cell_diameter(direction[0]) / _check_diameter(cell_diameter)
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    generator, attention = translator.networks(direction, dev)
    halo = max(generator.receptive_radius,
               attention.receptive_radius if attention is not None else 0)
    plan = _plan(img.shape, factor, _tile_size(tile_size, dev), _round_up(halo))
    out_t, out_a = _outputs(out, img.shape, np.dtype(img.dtype))
    _check_finite(img)
    levels: Levels | LocalLevels = translator.levels
    if translator.config.own_levels:  # crops of the training size, each its own
        levels = local_levels(img, translator.config.image_size / factor)
    out_span = None
    if translator.config.grey_levels == "target":
        out_span = translator.own_span(direction[2])
    runner = _Runner(levels, generator, attention, img, plan, dev, composite, out_span)
    tiles = plan.tiles
    with torch.inference_mode():
        for done, tile in enumerate(tiles, start=1):
            if stop is not None and stop():
                raise Stopped("stopped on request")
            runner.run(tile, out_t, out_a)
            release_pages(img)
            if progress is not None:
                progress(done, len(tiles))
    return out_t, out_a


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def _as_image(image: Any) -> Any:
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 3 and shape[-1] in (3, 4):
        raise ValueError(
            f"the image looks like colour (RGB/RGBA), shape {shape}: translate one grey "
            "channel, e.g. the stained one (image[..., 1] for green)")
    if len(shape) == 3:
        raise ValueError(f"the image is 3-D, shape {shape}: translate a stack one 2-D plane "
                         "at a time")
    if len(shape) != 2:
        raise ValueError(f"the image must be a 2-D grey image (Y, X), got {len(shape)}-D "
                         f"shape {shape}")
    if np.dtype(image.dtype).kind not in "iuf":
        raise ValueError(f"the image must hold numeric grey levels, got dtype {image.dtype}")
    if min(shape) < MIN_SIDE:
        raise ValueError(f"the image is only {shape[0]} x {shape[1]} pixels; translation "
                         f"needs at least {MIN_SIDE} x {MIN_SIDE}")
    return image


def _tile_size(tile_size: Any, device: torch.device) -> int:
    if tile_size is None:
        return default_tile_size(device)
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) \
            or tile_size < MIN_SIDE:
        raise ValueError(f"tile_size must be a whole number of pixels >= {MIN_SIDE}, "
                         f"got {tile_size!r}")
    return int(tile_size) // MULTIPLE * MULTIPLE


def _check_finite(image: Any) -> None:
    """Refuse NaN or infinite values before anything is computed (floats only)."""
    if np.dtype(image.dtype).kind != "f":
        return
    h, w = image.shape
    band = max(1, _CHECK_BAND_PIXELS // w)
    for y0 in range(0, h, band):
        part = np.asarray(image[y0:y0 + band])
        if not np.isfinite(part).all():
            raise ValueError(f"the image contains NaN or infinite values (near rows "
                             f"{y0}-{min(h, y0 + band)}): replace them first")
        release_pages(image)


def _outputs(out: Any, shape: tuple[int, int], dtype: np.dtype
             ) -> tuple[np.ndarray, np.ndarray]:
    given_t = given_a = None
    if out is not None:
        try:
            given_t, given_a = out
        except (TypeError, ValueError):
            raise ValueError("out must be a pair (translated, attention) of arrays or None"
                             ) from None
    for name, arr in (("translated", given_t), ("attention", given_a)):
        if arr is not None and tuple(arr.shape) != tuple(shape):
            raise ValueError(f"out {name} has shape {tuple(arr.shape)} but the image has "
                             f"{tuple(shape)}")
    if given_t is not None and np.dtype(given_t.dtype) != dtype:
        raise ValueError(f"out translated has dtype {given_t.dtype} but the image has {dtype}: "
                         "the translation keeps the image's dtype")
    if given_a is not None and np.dtype(given_a.dtype).kind != "f":
        raise ValueError(f"out attention must be a float array, got dtype {given_a.dtype}")
    out_t = given_t if given_t is not None else np.empty(shape, dtype)
    out_a = given_a if given_a is not None else np.empty(shape, np.float32)
    return out_t, out_a


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


def _round_up(n: float, multiple: int = MULTIPLE) -> int:
    return int(math.ceil(n / multiple)) * multiple


@dataclass(frozen=True)
class _Plan:
    """How an image maps to model scale and into tiles."""

    shape: tuple[int, int]  # source pixels (Y, X)
    model: tuple[int, int]  # model pixels of the image
    padded: tuple[int, int]  # model pixels, a multiple of 4 (edge repeated)
    halo: int  # model pixels of context each side, a multiple of 4
    source_tile: tuple[int, int]  # source pixels per output tile (Y, X)

    @property
    def tiles(self) -> list[tuple[int, int, int, int]]:
        (h, w), (ty, tx) = self.shape, self.source_tile
        return [(y, min(y + ty, h), x, min(x + tx, w))
                for y in range(0, h, ty) for x in range(0, w, tx)]

    def chunk(self, first: int, stop: int, axis: int) -> tuple[int, int]:
        """Model range to compute so that model pixels ``[first, stop)`` are exact."""
        n = self.padded[axis]
        a0 = max(0, first // MULTIPLE * MULTIPLE - self.halo)
        a1 = min(n, _round_up(stop) + self.halo)
        while a1 - a0 < MIN_SIDE:
            a0, a1 = max(0, a0 - MULTIPLE), min(n, a1 + MULTIPLE)
        return a0, a1


def _plan(shape: tuple[int, int], factor: float, tile_size: int, halo: int) -> _Plan:
    h, w = (int(s) for s in shape)
    model = (max(1, round(h * factor)), max(1, round(w * factor)))
    if model[0] * model[1] > MAX_MODEL_PIXELS:
        raise ValueError(
            f"at this cell diameter the {h} x {w} image would be enlarged {factor:.1f} times "
            f"to {model[0]} x {model[1]} pixels: check the cell diameter (it is too small)")
    if min(model) < MIN_SIDE:
        raise ValueError(_too_small("image", (h, w), model, factor, f"{MIN_SIDE} x {MIN_SIDE}"))
    padded = (_round_up(model[0]), _round_up(model[1]))
    source_tile = tuple(max(MULTIPLE, int(tile_size * s / m)) for s, m in zip((h, w), model))
    return _Plan((h, w), model, padded, halo, source_tile)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# the computation
# ---------------------------------------------------------------------------


class _Runner:
    """Computes one output tile: read, map, translate, resample back, write."""

    def __init__(self, levels: Levels | LocalLevels, generator, attention, image, plan: _Plan,
                 device: torch.device, composite: str = "soft",
                 out_span: float | None = None) -> None:
        self.generator, self.attention, self.composite = generator, attention, composite
        self.out_span = out_span
        self.image, self.plan, self.device = image, plan, device
        self.levels = levels
        self.dtype = np.dtype(image.dtype)
        self._taps: dict[tuple, _AxisTaps] = {}

    def _axis(self, key: tuple, start: int, stop: int, scale: float, n_src: int) -> _AxisTaps:
        if key not in self._taps:  # tiles of one row (column) share their taps
            self._taps[key] = _AxisTaps.build(start, stop, scale, n_src, self.device)
        return self._taps[key]

    def run(self, tile: tuple[int, int, int, int], out_t: np.ndarray, out_a: np.ndarray) -> None:
        y0, y1, x0, x1 = tile
        plan = self.plan
        (h, w), (mh, mw) = plan.shape, plan.model
        # model pixels the output pixels are resampled from, and the chunk computed for them
        back_y = self._axis(("back", 0, y0, y1), y0, y1, mh / h, mh)
        back_x = self._axis(("back", 1, x0, x1), x0, x1, mw / w, mw)
        cy = plan.chunk(back_y.start, back_y.stop, 0)
        cx = plan.chunk(back_x.start, back_x.stop, 1)
        fwd_y = self._axis(("fwd", 0, *cy), cy[0], cy[1], h / mh, h)
        fwd_x = self._axis(("fwd", 1, *cx), cx[0], cx[1], w / mw, w)
        rows_in, cols_in = slice(fwd_y.start, fwd_y.stop), slice(fwd_x.start, fwd_x.stop)
        # a copy: the image (float32, or a writable memmap) is never changed in place
        x = torch.from_numpy(np.array(self.image[rows_in, cols_in], dtype=np.float32))
        lo, span = self.levels.region(rows_in, cols_in)
        scale = np.float32(2.0) / span  # a number for one grey scale, per pixel for own levels
        # mapped on the device, like the networks; a number goes with the kernel, not by a copy
        scale = float(scale) if scale.ndim == 0 else torch.from_numpy(scale).to(self.device)
        x = x.to(self.device).sub_(float(lo)).mul_(scale).sub_(1.0)
        x = fwd_x.apply(fwd_y.apply(x, 0), 1).clamp_(-CLIP, CLIP)[None, None]

        att = None if self.attention is None else self.attention(x)
        rows = slice(back_y.start - cy[0], back_y.stop - cy[0])
        cols = slice(back_x.start - cx[0], back_x.stop - cx[0])

        def back(t: torch.Tensor) -> torch.Tensor:
            return back_x.apply(back_y.apply(t[0, 0, rows, cols], 0), 1)

        if self.out_span is None:
            y = back(compose(x, att, self.generator(x), self.composite))
        else:  # kept pixels on the input's levels, translated ones on the target's range
            kept, moved = compose_parts(x, att, self.generator(x), self.composite)
            kept, moved = back(kept).float().cpu().numpy(), back(moved).float().cpu().numpy()
        if att is None:
            a = np.ones((y1 - y0, x1 - x0), np.float32)
        else:
            a = back_x.apply(back_y.apply(att[0, 0, rows, cols], 0), 1).clamp_(0.0, 1.0)
            a = a.float().cpu().numpy()
        lo, span = self.levels.region(slice(y0, y1), slice(x0, x1))
        if self.out_span is None:
            values = (y.float().cpu().numpy() + 1.0) * (span / 2.0) + lo
        else:
            values = grey_of_parts(kept, moved, lo, span, self.out_span)
        out_t[y0:y1, x0:x1] = self._to_dtype(values)
        out_a[y0:y1, x0:x1] = a
        release_pages(out_t)
        release_pages(out_a)

    def _to_dtype(self, values: np.ndarray) -> np.ndarray:
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(values), info.min, info.max).astype(self.dtype)
        return values.astype(self.dtype)
