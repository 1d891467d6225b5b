"""The discriminator's attention on whole slides, tile by tile, in bounded memory.

What is computed
----------------
The discriminator ``D`` is convolutional up to its global average pooling, so it
needs no sliding window. For a slide:

1. **Scale.** The slide is resampled so that its cells have the size cells had in
   the training crops at model scale: ``factor = model_cell_diameter / cell_diameter``
   (see :func:`model_cell_diameter`). Downscaling is anti-aliased (a triangle
   filter as wide as the scale step), upscaling is bilinear.
2. **Intensity.** Like the training crops, the slide is mapped linearly to
   [-1, 1], then clipped: its 0.5 % percentile (the dark background) becomes -1
   and the bright level of a *typical cell* becomes +1
   (:func:`napari_atagan.data.cell_levels`: the median over the slide's objects
   of each object's 99th percentile), so a few saturated mitotic cells cannot
   push every ordinary cell down into the dark. ``intensity="percentiles"``
   uses the slide's 0.5 % / 99.5 % percentiles instead
   (:func:`napari_atagan.data.slide_levels`). The levels are found on a regular
   sub-sample of at most ~4 million pixels, so a huge slide is never loaded whole.
3. **Features.** ``D.features`` runs once over the rescaled slide. This is done in
   tiles with a halo wider than ``D``'s receptive field and origins on multiples
   of ``D.stride``, so the result does not depend on the tiling: a tile's feature
   cells are exactly those of the untiled slide.
4. **Window realness.** The realness logit of every feature cell,
   ``l = w . A + b``, is averaged over windows the size of one training crop
   (``image_size / stride`` cells, centred on the cell). ``D``'s logit on a crop is
   exactly such an average, so this is "how real does the crop around here look".
   At the slide edge the window holds only the cells inside the slide (no
   padding is counted).
5. **Soft-CAM.** ``sigmoid(window logit) * cam``, with ``cam = sum_k w_k A_k``,
   per feature cell; background far from any cell gets a small value because its
   window looks unreal. Negative values (the weighted features can sum to
   less than zero where ``D`` sees evidence *against* a cell) mean "not a cell"
   and are set to 0, as for synthesized cells, so maps are never negative.
   The feature-cell map is finally resampled bilinearly to
   the slide's own pixel grid (feature cell ``j`` covers model pixels
   ``[j * stride, (j + 1) * stride)``, as in ``D.soft_cam``).

Memory and speed
----------------
Only one tile of the slide (plus halo) is read at a time, into a reused host
buffer, and sent to the device as it is stored (integers raw, floats as
float32); the conversion to float, the normalisation and the resampling run
on the device. On CUDA the buffer is pinned and the copy asynchronous, so the
CPU reads the next tile while the GPU works on this one (two buffers take
turns).
The feature-cell map is small (``stride**2`` times fewer cells than the rescaled
slide). The full-resolution result is written band by band into ``out``, which
can be a preallocated array or a ``numpy.memmap`` for slides whose float32 map
does not fit in memory. On CUDA the bands leave the device asynchronously: a map
allocated here (up to 256 MB) is page-locked and receives them directly; any
other ``out`` receives each band from one of two page-locked buffers, copied by
the CPU while the device computes the next band.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .._memmap import StackPlane, release_pages
from ..data import cell_levels, slide_levels
from ..device import resolve_device, synchronize
from ..events import Stopped

__all__ = [
    "Stopped",
    "default_tile_size",
    "discriminator_attention",
    "estimate_cell_diameter",
    "model_cell_diameter",
    "slide_attention",
    "slide_attention_stack",
]

CELL_FRACTION = 0.7
"""Cell diameter / crop side assumed when a checkpoint does not record the cell
diameter at model scale (median 0.67 for the I3A HEp-2 crops with masks)."""
MIN_INPUT = 16
"""Smallest side (model pixels) the discriminator accepts."""
MAX_MODEL_PIXELS = 2**34
"""Refuse slides that would exceed this many pixels at model scale (a typo'd diameter)."""
_OUT_BAND_PIXELS = 1 << 22
_PINNED_OUT_BYTES = 1 << 28
"""On CUDA, a map allocated here of at most this many bytes (an 8192 x 8192 slide)
lives in page-locked host memory, which the device writes into without staging."""
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)

Progress = Callable[[int, int], Any]
Stop = Callable[[], bool]

_profile: dict[str, float] | None = None
"""Seconds spent per stage of a run, summed; ``None`` (the default) times nothing.

Benchmarks set it to a dict (``benchmarks/bench_slide.py --profile``). Every
stage then synchronises the device before and after itself, so the stages no
longer overlap and the run is slower than an untimed one."""


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def slide_attention(
    checkpoint: Any,
    image: Any,
    *,
    cell_diameter: float,
    tile_size: int | None = None,
    device: str | torch.device = "auto",
    stop: Stop | None = None,
    progress: Progress | None = None,
    out: np.ndarray | None = None,
    intensity: tuple[float, float] | str | None = None,
    rgb: str | None = None,
    cam_stride: int | None = None,
) -> np.ndarray:
    """Attention map of a trained discriminator over a whole 2-D slide.

    Parameters
    ----------
    checkpoint:
        Path of a checkpoint, or a loaded :class:`~napari_atagan.checkpoint.Checkpoint`.
    image:
        2-D grey slide ``(Y, X)`` of any numeric dtype: a numpy array, a
        ``numpy.memmap`` / ``tifffile.memmap``, or any array-like with ``.shape``,
        ``.dtype`` and slicing (dask, zarr); it is read region by region.
    cell_diameter:
        Typical cell diameter in the slide, in pixels (see :func:`estimate_cell_diameter`).
    tile_size:
        Side of a tile at model scale, in pixels (bounds host and GPU memory);
        default: :func:`default_tile_size` of the device.
    device:
        ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
    stop:
        Called between tiles; when it returns True, :class:`Stopped` is raised.
    progress:
        Called as ``progress(done, total)`` after every tile / output band.
    out:
        Optional preallocated float array (or memmap) of the slide's shape that
        receives the map; it is also returned.
    intensity:
        ``(low, high)`` source levels that map to -1 and +1, or how to find them:
        ``"cells"`` (default; a typical cell's own levels,
        :func:`napari_atagan.data.cell_levels`) or ``"percentiles"`` (the
        slide's 0.5 % / 99.5 % percentiles, :func:`napari_atagan.data.slide_levels`).
    rgb:
        ``"grey"`` converts an RGB(A) image ``(Y, X, 3|4)`` to luminance; colour
        images are refused otherwise.
    cam_stride:
        Model pixels between the map's feature cells: the discriminator's own
        stride (8 for four blocks), or a power of two below it for a finer map
        of the same soft-CAM (:func:`napari_atagan.gan.models.dense_discriminator`;
        stride 4 costs about 3 times the computation). Default: :data:`CAM_STRIDE`.

    Returns
    -------
    float32 array of the slide's shape (``out`` when given), never negative
    (the soft-CAM's negative part means "not a cell" and is shown as 0). A
    constant image gives all zeros. On CUDA a map of up to 256 MB allocated
    here lives in page-locked host memory (torch keeps such memory for reuse
    once the array is freed).
    """
    slide = _as_slide(image, rgb)
    ckpt = _load(checkpoint)
    factor = model_cell_diameter(ckpt) / _check_diameter(cell_diameter)
    dev = resolve_device(str(device))
    return _attention(_slide_discriminator(ckpt, dev, cam_stride), slide, factor, tile_size, dev,
                      stop, progress, out, intensity)


def slide_attention_stack(
    checkpoint: Any,
    stack: Any,
    *,
    cell_diameter: float,
    tile_size: int | None = None,
    device: str | torch.device = "auto",
    stop: Stop | None = None,
    progress: Progress | None = None,
    out: np.ndarray | None = None,
    rgb: str | None = None,
    cam_stride: int | None = None,
) -> np.ndarray:
    """Attention maps of a stack ``(T, Y, X)``, plane by plane.

    Every plane is treated as its own slide (its own intensity levels).
    ``progress`` counts over the whole stack. ``rgb="grey"`` also accepts a
    colour stack ``(T, Y, X, 3|4)``. Other parameters as in :func:`slide_attention`.
    """
    if not hasattr(stack, "shape") or not hasattr(stack, "dtype"):
        stack = np.asarray(stack)
    ndim = len(stack.shape)
    is_rgb = ndim == 4 and stack.shape[-1] in (3, 4)
    if ndim == 3 and stack.shape[-1] in (3, 4) and min(stack.shape[:2]) > 4:
        raise ValueError(
            f"shape {tuple(stack.shape)} looks like one colour image, not a stack: use "
            "slide_attention(..., rgb='grey')"
        )
    if ndim != 3 and not (is_rgb and rgb == "grey"):
        raise ValueError(
            f"a stack must be 3-D (T, Y, X), got shape {tuple(stack.shape)}"
            + ("; for colour planes pass rgb='grey'" if is_rgb else "")
        )
    n = int(stack.shape[0])
    if n == 0:
        raise ValueError("the stack has no planes")
    planes = [_as_slide(StackPlane(stack, t), "grey" if is_rgb else None) for t in range(n)]
    ckpt = _load(checkpoint)
    factor = model_cell_diameter(ckpt) / _check_diameter(cell_diameter)
    dev = resolve_device(str(device))
    disc = _slide_discriminator(ckpt, dev, cam_stride)
    shape = (n, *planes[0].shape)
    out = _output(out, shape, dev)
    plans = [_plan(disc, p.shape, factor, _tile(tile_size, dev)) for p in planes]
    total = sum(p.n_steps for p in plans)
    done = 0
    for t, (plane, plan) in enumerate(zip(planes, plans)):
        offset = done

        def plane_progress(k: int, _total: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + k, total)

        _run(disc, plane, plan, out[t], dev, stop, plane_progress, None)
        done += plan.n_steps
    return out


def discriminator_attention(
    discriminator: torch.nn.Module,
    image: Any,
    *,
    factor: float = 1.0,
    tile_size: int | None = None,
    device: str | torch.device | None = None,
    stop: Stop | None = None,
    progress: Progress | None = None,
    out: np.ndarray | None = None,
    intensity: tuple[float, float] | str | None = None,
    cam_stride: int | None = None,
) -> np.ndarray:
    """The engine of :func:`slide_attention` for a bare discriminator.

    ``factor`` is the resampling factor to model scale (``> 1`` enlarges the
    slide). ``discriminator`` must offer ``features``, ``cam_map``,
    ``realness_weight``, ``stride``, ``receptive_field`` and ``image_size``; it is
    moved to ``device`` (default: where its weights are) and put in eval mode.
    """
    slide = _as_slide(image, None)
    if device is None:
        dev = next(discriminator.parameters()).device
    else:
        dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    discriminator = _cpu_layout(_at_stride(discriminator.to(dev).eval(), cam_stride), dev)
    return _attention(discriminator, slide, factor, tile_size, dev, stop, progress, out, intensity)


def _attention(disc, slide, factor, tile_size, dev, stop, progress, out, intensity) -> np.ndarray:
    """The map of ``slide`` from a discriminator prepared for slides (:func:`_slide_discriminator`)."""
    plan = _plan(disc, slide.shape, factor, _tile(tile_size, dev))
    return _run(disc, slide, plan, _output(out, slide.shape, dev), dev, stop, progress, intensity)


def _slide_discriminator(ckpt: Any, dev: torch.device, cam_stride: int | None) -> Any:
    """The checkpoint's discriminator as slides use it (eval mode, at the CAM stride,
    channels-last on a CPU), built once per checkpoint, device and stride.

    Built afresh for every slide, it cost an archive's worker 0.02-0.03 s a slide on a
    CPU (about 4 % of a 1388 x 1038 slide's whole work); the weights of a loaded
    checkpoint never change, so the one built first serves every later slide.
    """
    def build() -> Any:
        return _cpu_layout(_at_stride(ckpt.discriminator(dev), cam_stride), dev)

    return ckpt.built_once(("slide discriminator", str(dev), cam_stride), build)


CAM_STRIDE: int | None = 4
"""Default ``cam_stride`` of :func:`slide_attention` (``None``: the discriminator's own). On
touching mosaics of training-part I3A cells, cells outlined from the map at stride 4 scored
object F1 0.77 against 0.74 at stride 8 (the classic pipeline: 0.42), at 2.5 times the
discriminator's computation on a CPU (``benchmarks/bench_slide.py``)."""


def _at_stride(disc: Any, cam_stride: int | None) -> Any:
    if cam_stride is None:  # the default never asks a small discriminator for more
        if CAM_STRIDE is None or int(disc.stride) <= CAM_STRIDE:
            return disc
        cam_stride = CAM_STRIDE
    from ..gan.models import dense_discriminator

    return dense_discriminator(disc, cam_stride)


def _cpu_layout(disc: Any, dev: torch.device) -> Any:
    """On a CPU, a copy of ``disc`` whose weights are channels-last.

    oneDNN's convolutions run on channels-last tensors without reordering them:
    the default model's discriminator at stride 4 computed a 1388 x 1038 slide
    20 % faster on one core (0.101 s against 0.127 s), the features equal to
    1e-5. The copy leaves the caller's module as it was. Elsewhere ``disc``
    itself (on a GPU the layout has not been measured).
    """
    if dev.type != "cpu":
        return disc
    import copy

    return copy.deepcopy(disc).to(memory_format=torch.channels_last)


def default_tile_size(device: str | torch.device) -> int:
    """Tile side (model pixels) used when none is given: 2048 on CUDA, 1024 elsewhere.

    On an H100, tiles of 2048 computed a 4096 x 4096 slide at 810 Mpx/s against
    550 for tiles of 1024 (fewer, larger launches; 0.4 GB of GPU memory at most).
    On a CPU the size hardly changes the speed and smaller tiles need less memory.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    return 2048 if dev.type == "cuda" else 1024


def _tile(tile_size: int | None, device: torch.device) -> int:
    return default_tile_size(device) if tile_size is None else tile_size


def model_cell_diameter(checkpoint: Any) -> float:
    """Typical cell diameter, in pixels at model scale, of the checkpoint's training crops.

    Training crops of different source sizes were all resized to ``image_size``,
    so a cell's model-scale diameter is its source diameter times
    ``image_size / crop side``. Checkpoints record the median of that as
    ``metadata["data"]["model_cell_diameter"]``; where it is missing it is taken
    as ``CELL_FRACTION * image_size`` (cells fill about 70 % of a crop's side).
    """
    ckpt = _load(checkpoint)
    data = ckpt.metadata.get("data") or {}
    value = data.get("model_cell_diameter")
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    size = int(data.get("image_size") or ckpt.config.image_size)
    return CELL_FRACTION * size


def estimate_cell_diameter(image: Any, *, rgb: str | None = None, max_side: int = 2048) -> float:
    """Rough typical cell diameter (pixels) of a fluorescence slide, for a starting value.

    How it works:

    1. **Compress the grey levels.** The image is clipped to its 1 % and 99.5 %
       percentiles and log-transformed relative to its median background, so that
       dim cells and bright cells, and bright speckles inside a cell and the
       cell's own dimmer nucleoplasm, all end up at similar levels.
    2. **Segment at several scales.** For Gaussian smoothing sigmas of 1, 1.4, 2,
       2.8, ... pixels, objects are found by Otsu's threshold, holes filled and
       touching cells split (:func:`napari_atagan.slides.labels.attention_to_labels`);
       the diameter at that scale is the median equivalent diameter of the
       objects that are not tiny and do not touch the image edge.
    3. **Pick the stable scale.** Too little smoothing leaves textured cells in
       pieces, too much merges neighbours; in between the diameter hardly
       changes with sigma. Among the scales where the objects are at least
       ``10 * sigma`` wide (smoothing small against the cell), the answer is the
       diameter where two neighbouring scales agree best.

    Only a central region of at most ``max_side`` pixels is looked at.
    Raises ``ValueError`` when no cell-like objects are found.
    """
    slide = _as_slide(image, rgb)
    h, w = slide.shape
    y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    region = np.asarray(slide[y0:y0 + max_side, x0:x0 + max_side], dtype=np.float32)
    if not np.isfinite(region).all():
        raise ValueError("the image contains NaN or infinite values: replace them first")
    if float(region.max()) - float(region.min()) <= 0:
        raise ValueError("the image is constant: there are no cells to measure")
    region = _compress_levels(region)
    curve = _diameter_curve(region)
    if not curve:
        raise ValueError(
            "no cell-like objects were found: enter the cell diameter by hand "
            "(measure a few cells in pixels)"
        )
    return _stable_diameter(curve)


_SCALE_RATIO = 10.0
"""Objects must be at least this many smoothing sigmas wide for a scale to count."""


def _compress_levels(region: np.ndarray) -> np.ndarray:
    """Percentile-clip and log-transform a slide region (see :func:`estimate_cell_diameter`).

    Levels are measured from the 1 % percentile (the darkest background) in
    units of the median (the typical background above it), so the result is
    about 0 to 1 on the background and grows only logarithmically inside cells.
    """
    lo, hi = np.percentile(region, [1.0, 99.5])
    if hi <= lo:  # cells cover less than 0.5 % of the region
        hi = float(region.max())
    shifted = np.clip(region, lo, hi) - np.float32(lo)
    unit = max(float(np.median(shifted)), 1e-3 * float(hi - lo))
    return np.log1p(shifted / np.float32(unit))


def _diameter_curve(region: np.ndarray) -> list[tuple[float, float]]:
    """``(sigma, median diameter)`` for sigma = 1, sqrt(2), 2, ... (scales with objects)."""
    curve = []
    sigma, misses = 1.0, 0  # misses: failing scales after a valid one
    while sigma <= max(region.shape) / 12 and misses < 3:
        try:
            diameter = _diameter_at(region, sigma)
        except ValueError:
            diameter = 0.0
        if diameter > 0:
            curve.append((sigma, diameter))
        # past the cell size, objects only merge: stop after a few scales that fail
        if diameter >= _SCALE_RATIO * sigma:
            misses = 0
        elif any(d >= _SCALE_RATIO * s for s, d in curve):
            misses += 1
        sigma *= math.sqrt(2)
    return curve


def _stable_diameter(curve: list[tuple[float, float]]) -> float:
    """The diameter where it changes least between neighbouring valid scales."""
    valid = [d for s, d in curve if d >= _SCALE_RATIO * s]
    if not valid:
        return curve[0][1]  # objects smaller than 10 px: the least smoothing is best
    if len(valid) == 1:
        return valid[0]
    changes = [abs(math.log(b / a)) for a, b in zip(valid, valid[1:])]
    i = int(np.argmin(changes))
    return math.sqrt(valid[i] * valid[i + 1])


def _diameter_at(region: np.ndarray, sigma: float) -> float:
    """Median equivalent diameter of the objects found after smoothing by ``sigma``."""
    from scipy import ndimage as ndi
    from skimage.transform import downscale_local_mean

    from .labels import attention_to_labels, drop_border_cells

    shrink = max(1, min(int(sigma // 2), min(region.shape) // 64))
    work = downscale_local_mean(region, (shrink, shrink)) if shrink > 1 else region
    smooth = ndi.gaussian_filter(work, sigma=sigma / shrink)
    labels = attention_to_labels(smooth, threshold="otsu", min_size=max(4, 20 // shrink**2),
                                 smooth=0, split_depth=max(1.0, sigma / shrink / 2))
    inner = drop_border_cells(labels)
    use = inner if inner.max() > 0 else labels
    areas = np.bincount(use.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        raise ValueError(
            "no cell-like objects were found: enter the cell diameter by hand "
            "(measure a few cells in pixels)"
        )
    return float(np.median(np.sqrt(4.0 * areas / np.pi))) * shrink


# ---------------------------------------------------------------------------
# input checks and lazy views
# ---------------------------------------------------------------------------


class _Grey:
    """Luminance view of an RGB(A) array ``(Y, X, 3|4)``, computed region by region."""

    def __init__(self, rgb: Any) -> None:
        self._rgb = rgb
        self.base_array = getattr(rgb, "base_array", rgb)
        self.shape = tuple(rgb.shape[:2])
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        region = np.asarray(self._rgb[key])
        return region[..., :3].astype(np.float32) @ _LUMA


def _as_slide(image: Any, rgb: str | None) -> Any:
    """Check a slide's shape and dtype; return a 2-D array-like (no data read)."""
    if rgb not in (None, "grey"):
        raise ValueError(f"rgb must be None or 'grey', got {rgb!r}")
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(s) for s in image.shape)
    is_rgb = len(shape) == 3 and shape[-1] in (3, 4)
    if is_rgb:
        if rgb != "grey":
            raise ValueError(
                f"the image looks like colour (RGB/RGBA), shape {shape}: pass rgb='grey' "
                "to use its luminance, or pick one channel"
            )
        image, shape = _Grey(image), shape[:2]
    elif len(shape) == 3:
        raise ValueError(
            f"the image is 3-D, shape {shape}: use slide_attention_stack for a (T, Y, X) "
            "stack, or pick one plane"
        )
    elif len(shape) != 2:
        raise ValueError(
            f"a slide must be a 2-D grey image (Y, X), got {len(shape)}-D shape {shape}: "
            "pick one plane and one channel"
        )
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise ValueError(f"the image must be numeric, got dtype {image.dtype}")
    if min(shape) < 2:
        raise ValueError(
            f"the image is {shape[0]} x {shape[1]} pixels: a slide must be at least "
            "2 pixels in both directions (and hold at least one cell)"
        )
    return image


def _check_diameter(cell_diameter: float) -> float:
    message = f"cell_diameter must be a positive number of pixels, got {cell_diameter!r}"
    try:
        d = float(cell_diameter)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not math.isfinite(d) or d <= 0:
        raise ValueError(message)
    return d


def _load(checkpoint: Any) -> Any:
    if isinstance(checkpoint, (str, os.PathLike)):
        from ..checkpoint import load_checkpoint

        return load_checkpoint(checkpoint)
    return checkpoint


def _output(out: np.ndarray | None, shape: tuple[int, ...], device: torch.device) -> np.ndarray:
    if out is None:
        if device.type == "cuda" and 4 * math.prod(shape) <= _PINNED_OUT_BYTES:
            try:  # every pixel is written, band by band: no need to clear it first
                return torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy()
            except RuntimeError:  # no page-locked memory to be had: ordinary memory will do
                pass
        return np.zeros(shape, dtype=np.float32)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)} but the result has shape {shape}")
    if np.dtype(out.dtype).kind != "f":
        raise ValueError(f"out must be a float array, got dtype {out.dtype}")
    return out


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """How one slide maps to model scale and into tiles."""

    shape: tuple[int, int]  # source pixels (Y, X)
    factor: float  # model pixels per source pixel
    stride: int  # model pixels per feature cell
    window: int  # feature cells per training crop side
    halo: int  # feature cells of context for exact convolution
    grid: tuple[int, int]  # feature cells (Y, X)
    core: int  # feature cells per tile side
    band: int  # source rows per output band

    @property
    def tiles(self) -> list[tuple[int, int, int, int]]:
        ys = range(0, self.grid[0], self.core)
        xs = range(0, self.grid[1], self.core)
        return [(y, min(y + self.core, self.grid[0]), x, min(x + self.core, self.grid[1]))
                for y in ys for x in xs]

    @property
    def n_bands(self) -> int:
        return -(-self.shape[0] // self.band)

    @property
    def n_steps(self) -> int:
        return len(self.tiles) + self.n_bands


def _plan(disc: Any, shape: tuple[int, int], factor: float, tile_size: int) -> _Plan:
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"the scale factor must be a positive number, got {factor}")
    if int(tile_size) < 1:
        raise ValueError(f"tile_size must be a positive number of pixels, got {tile_size}")
    stride = int(disc.stride)
    crop = int(disc.image_size)
    h, w = shape
    model = (max(1, round(h * factor)), max(1, round(w * factor)))
    if model[0] * model[1] > MAX_MODEL_PIXELS:
        raise ValueError(
            f"at this cell diameter the {h} x {w} slide would be enlarged {factor:.1f} times "
            f"to {model[0]} x {model[1]} pixels: check the cell diameter (it is too small)"
        )
    if min(model) < crop:
        raise ValueError(_too_small("slide", (h, w), model, factor,
                                    f"one training crop ({crop} x {crop})"))
    halo = -(-int(disc.receptive_field) // stride)
    core = max(1, int(tile_size) // stride)
    grid = (-(-model[0] // stride), -(-model[1] // stride))
    band = max(1, _OUT_BAND_PIXELS // w)
    return _Plan(shape, factor, stride, crop // stride, halo, grid, core, band)


def _taps(start: int, stop: int, scale: float, n_src: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resampling taps for destination pixels ``start..stop-1``.

    Destination pixel ``i`` sits at source coordinate ``(i + 0.5) * scale - 0.5``
    (``scale`` = source pixels per destination pixel). A triangle filter of
    half-width ``max(1, scale)`` gives bilinear interpolation when enlarging and
    anti-aliased averaging when shrinking; indices beyond the source are clamped
    (edge pixels repeat). Returns ``(index, weight)``, both ``(n, taps)``.
    """
    x = (torch.arange(start, stop, dtype=torch.float64) + 0.5) * scale - 0.5
    radius = max(1.0, float(scale))
    first = torch.floor(x - radius) + 1
    n_taps = int(math.ceil(2 * radius)) + 1
    idx = first[:, None] + torch.arange(n_taps, dtype=torch.float64)[None]
    weight = (1 - (x[:, None] - idx).abs() / radius).clamp(min=0)
    keep = weight.sum(0) > 0
    idx, weight = idx[:, keep], weight[:, keep]
    weight = weight / weight.sum(1, keepdim=True)
    return idx.clamp(0, n_src - 1).long(), weight.float()


@dataclass(frozen=True)
class _AxisTaps:
    """Resampling taps of one side of a region, ready on the device.

    ``start``/``stop``: the source pixels they read. ``index`` (relative to
    ``start``) and ``weight`` as in :func:`_taps`, or both ``None`` where every
    destination pixel is one source pixel with weight 1 (model scale, away from
    the slide's far edge), so that there is nothing to resample.
    """

    start: int
    stop: int
    index: torch.Tensor | None
    weight: torch.Tensor | None

    @classmethod
    def build(cls, start: int, stop: int, scale: float, n_src: int, device) -> _AxisTaps:
        idx, weight = _taps(start, stop, scale, n_src)
        first, last = int(idx.min()), int(idx.max()) + 1
        idx -= first
        identity = (idx.shape[1] == 1 and bool((weight == 1).all())
                    and torch.equal(idx[:, 0], torch.arange(last - first)))
        if identity:
            return cls(first, last, None, None)
        return cls(first, last, _to_device(idx, device), _to_device(weight, device))

    def apply(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """``x`` (the source pixels ``start..stop-1`` along ``dim``) resampled."""
        return x if self.index is None else _resample(x, self.index, self.weight, dim)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``, without waiting for the device's queued work.

    A blocking copy to a CUDA device returns only once the stream has finished
    everything queued before it, so the CPU could not run ahead of the GPU. An
    asynchronous copy needs pinned memory; this block comes from torch's caching
    host allocator, which does not hand it out again before the copy is done.
    """
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _resample(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Weighted gather of ``x`` along ``dim`` (0 rows, 1 columns) with taps from :func:`_taps`."""
    out = None
    for t in range(idx.shape[1]):
        part = x.index_select(dim, idx[:, t])
        w = weight[:, t, None] if dim == 0 else weight[None, :, t]
        out = part * w if out is None else out.addcmul_(part, w)
    return out


# ---------------------------------------------------------------------------
# the computation
# ---------------------------------------------------------------------------


class _Stage:
    """``with _Stage("name", device):`` adds the block's time to :data:`_profile`."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device

    def __enter__(self) -> None:
        if _profile is not None:
            synchronize(self.device)
            self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        if _profile is not None:
            synchronize(self.device)
            _profile[self.name] = _profile.get(self.name, 0.0) + time.perf_counter() - self.t0


def _run(disc, slide, plan: _Plan, out, device, stop, progress, intensity) -> np.ndarray:
    with _Stage("levels", device):
        lo, hi = _levels(slide, intensity)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"intensity levels must be finite, got {(lo, hi)}")
    total = plan.n_steps
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        out[...] = 0  # a constant image holds no cells
        if progress is not None:
            progress(total, total)
        return out
    reader = _ModelScaleReader(slide, plan, lo, hi, device)
    cells = torch.zeros(plan.grid, dtype=torch.float32, device=device)
    done = 0
    with torch.inference_mode(), parametrize.cached():  # one spectral-norm weight per run
        for tile in plan.tiles:
            _check_stop(stop)
            y0, y1, x0, x1 = tile
            cells[y0:y1, x0:x1] = _tile_soft_cam(disc, reader, plan, tile)
            release_pages(slide)
            done += 1
            if progress is not None:
                progress(done, total)
        with _Stage("check", device):
            reader.check_finite()  # before anything is written into out
        _upsample_into(cells, plan, out, stop, progress, done, total)
    return out


def _too_small(what: str, shape: tuple[int, int], model: tuple[int, int], factor: float,
               needed: str) -> str:
    """Why an image is too small at model scale: the diameter, or the image itself."""
    (h, w), (mh, mw) = shape, model
    if factor < 1:
        return (f"at this cell diameter the {h} x {w} {what} shrinks to {mh} x {mw} pixels at "
                f"model scale, smaller than {needed}: check the cell diameter (it is too large "
                "for this image)")
    return (f"the {h} x {w} {what} is too small: even enlarged {factor:.1f} times to model "
            f"scale it is {mh} x {mw} pixels, smaller than {needed}")


def _check_stop(stop: Stop | None) -> None:
    if stop is not None and stop():
        raise Stopped("stopped on request")


LEVELS = ("cells", "percentiles")
"""How a slide's grey levels are found when none are given (see :func:`slide_attention`)."""


def _levels(slide: Any, intensity: Any) -> tuple[float, float]:
    """``(lo, hi)``: given, or found by the named rule (default ``"cells"``)."""
    if intensity is None:
        intensity = "cells"
    if isinstance(intensity, str):
        def after() -> None:
            release_pages(slide)

        if intensity == "cells":
            return cell_levels(slide, after_band=after)
        if intensity == "percentiles":
            return slide_levels(slide, after_band=after)
        raise ValueError(f"intensity must be (low, high) or one of {', '.join(LEVELS)}, "
                         f"got {intensity!r}")
    lo, hi = intensity
    return float(lo), float(hi)


class _ModelScaleReader:
    """Reads regions of the slide resampled to model scale and normalised to [-1, 1].

    The host only reads each region into a staging buffer (:class:`_Staging`), in
    a dtype that the device takes as it is: integers raw, floats as float32. The
    conversion to float32, the normalisation ``(x - lo) * scale - 1``, the NaN/inf
    check and the resampling run on the device. The resampling taps of a tile
    row or column are built once per run and kept on the device.
    """

    def __init__(self, slide, plan: _Plan, lo: float, hi: float, device) -> None:
        self.slide, self.plan, self.device = slide, plan, device
        # float32 like the pixels, so that the arithmetic is that of float32 numpy
        self.lo = float(np.float32(lo))
        self.scale = float(np.float32(2.0 / (hi - lo)))
        self.staging = _Staging(device, slide.dtype)
        self.floats = np.dtype(slide.dtype).kind == "f"
        self._taps: dict[tuple[int, int, int], _AxisTaps] = {}
        self._nan_sums: list[tuple[torch.Tensor, tuple[int, int, int, int]]] = []

    def read(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Model pixels ``[y0, y1) x [x0, x1)`` as a ``(1, 1, h, w)`` tensor on the device.

        On the CPU the result may share memory with the staging buffer: it is
        valid until the next-but-one read.
        """
        ty, tx = self._axis_taps(0, y0, y1), self._axis_taps(1, x0, x1)
        box = (ty.start, ty.stop, tx.start, tx.stop)
        with _Stage("read", self.device):
            host = self.staging.fill(np.asarray(self.slide[ty.start:ty.stop, tx.start:tx.stop]))
        with _Stage("to_device", self.device):
            raw = self.staging.send(host)
        with _Stage("normalise", self.device):
            x = self._normalise(raw, box)
            x = tx.apply(ty.apply(x, 0), 1)
            return x.clamp_(-1.0, 1.0)[None, None]

    def check_finite(self) -> None:
        """Raise ``ValueError`` if a region read so far holds NaN or infinite values.

        The regions' sums stay on the device until here, so this waits for the
        device once per run instead of once per tile.
        """
        if not self._nan_sums:
            return
        bad = np.isnan(torch.stack([v for v, _ in self._nan_sums]).cpu().numpy())
        if bad.any():
            r0, r1, c0, c1 = self._nan_sums[int(np.argmax(bad))][1]
            raise ValueError(
                f"the slide contains NaN or infinite values (near rows {r0}-{r1}, "
                f"columns {c0}-{c1}): replace them first"
            )

    def _axis_taps(self, axis: int, start: int, stop: int) -> _AxisTaps:
        key = (axis, start, stop)
        if key not in self._taps:  # tiles of one row (column) share their row (column) taps
            self._taps[key] = _AxisTaps.build(start, stop, 1.0 / self.plan.factor,
                                              self.plan.shape[axis], self.device)
        return self._taps[key]

    def _normalise(self, raw: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
        """``(x - lo) * scale - 1`` in float32; NaN/inf noted for :meth:`check_finite`.

        Works in place where it can: ``raw`` is the reader's own (the staging
        buffer on the CPU, its copy elsewhere), never the caller's slide.
        """
        if self.staging.mask is not None:  # uint16 / uint32 sent as int16 / int32
            wide = torch.int32 if raw.element_size() == 2 else torch.int64
            x = raw.to(wide).bitwise_and_(self.staging.mask).to(torch.float32)
        else:
            x = raw.to(torch.float32)  # float32 data: x is raw itself
        if self.floats:
            # x * 0 is 0 where x is finite and NaN where it is not, so the sum is NaN
            # exactly when the region holds NaN or inf (and, unlike x's sum, never
            # overflows); cheaper than isfinite(x).all()
            self._nan_sums.append((torch.mul(x, 0.0).sum(), box))
        return x.sub_(self.lo).mul_(self.scale).sub_(1.0)


def _wire_dtypes(dtype: Any) -> tuple[np.dtype, np.dtype, int | None]:
    """How regions of a slide of ``dtype`` travel to the device: ``(host, sent, mask)``.

    A region is copied into the staging buffer as ``host`` (native byte order;
    float data and integers torch lacks become float32 in this copy, as numpy's
    ``astype`` would convert them) and its bytes go to the device as ``sent``,
    a dtype that torch takes on every device and version: uint16 and uint32 go
    as int16 / int32 of the same bits, and on the device, widened to int32 /
    int64, ``& mask`` makes them unsigned again.
    """
    dtype = np.dtype(dtype)
    kind, size = dtype.kind, dtype.itemsize
    if kind == "u" and size in (2, 4):
        return np.dtype(f"u{size}"), np.dtype(f"i{size}"), (1 << (8 * size)) - 1
    if (kind == "i" and size in (1, 2, 4, 8)) or (kind == "u" and size == 1):
        native = dtype.newbyteorder("=")
        return native, native, None
    return np.dtype(np.float32), np.dtype(np.float32), None


class _HostBuffers:
    """Two host buffers handed out in turn, page-locked on CUDA.

    :meth:`take` waits until the device has finished the copy last recorded on
    the buffer (:meth:`record`) before handing it out again, so an asynchronous
    copy never reads or writes a buffer that is being reused.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._events: list[Any] = [None, None]  # torch.cuda.Event of each buffer's last copy
        self._turn = 0

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        """The next buffer's index and its first ``nbytes`` bytes (uint8)."""
        i, self._turn = self._turn, 1 - self._turn
        if self._events[i] is not None:
            self._events[i].synchronize()
            self._events[i] = None
        if self._buffers[i] is None or self._buffers[i].numel() < nbytes:
            self._buffers[i] = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
        return i, self._buffers[i][:nbytes]

    def record(self, i: int) -> Any:
        """Mark the copy just queued on buffer ``i`` (CUDA); returns its event."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._events[i] = event
        return event


class _Staging:
    """Two host buffers that carry slide regions to the device, in turn.

    :meth:`fill` copies a region into the next buffer (this is where the slide is
    read), :meth:`send` puts it on the device. On CUDA the buffers are pinned and
    the copy is asynchronous, so the CPU reads the next region while the GPU
    works on this one; an event recorded after each copy is waited for before
    that buffer is filled again, which also keeps the CPU at most two regions
    ahead. Elsewhere the copy is synchronous (on the CPU the region stays in the
    buffer) and the same code runs without events.
    """

    def __init__(self, device: torch.device, dtype: Any) -> None:
        self.device = device
        self.host_dtype, sent, self.mask = _wire_dtypes(dtype)
        self.sent_dtype = torch.from_numpy(np.empty(0, sent)).dtype
        self._buffers = _HostBuffers(device)
        self._filled = 0  # the buffer that fill() used last

    def fill(self, region: np.ndarray) -> torch.Tensor:
        """Copy ``region`` into the next buffer; return that buffer as a tensor of its shape."""
        self._filled, raw = self._buffers.take(region.size * self.sent_dtype.itemsize)
        host = raw.view(self.sent_dtype).view(region.shape)
        np.copyto(host.numpy().view(self.host_dtype), region, casting="unsafe")
        return host

    def send(self, host: torch.Tensor) -> torch.Tensor:
        """The buffer just filled, on the device."""
        if not self._buffers.pinned:
            return host.to(self.device)
        x = host.to(self.device, non_blocking=True)
        self._buffers.record(self._filled)
        return x


def _tile_soft_cam(disc, reader: _ModelScaleReader, plan: _Plan, tile) -> torch.Tensor:
    """Soft-CAM of the core feature cells ``tile = (y0, y1, x0, x1)``."""
    (y0, y1, x0, x1), s = tile, plan.stride
    p = plan.window // 2  # window cells before the centre cell
    q = plan.window - 1 - p  # window cells after it
    # feature cells the window pooling needs, and the chunk computed for them
    fy = (max(0, y0 - p), min(plan.grid[0], y1 + q))
    fx = (max(0, x0 - p), min(plan.grid[1], x1 + q))
    ay = _chunk(fy, plan.halo, plan.grid[0], s)
    ax = _chunk(fx, plan.halo, plan.grid[1], s)
    x = reader.read(ay[0] * s, ay[1] * s, ax[0] * s, ax[1] * s)
    with _Stage("model", reader.device):
        cam = disc.cam_map(disc.features(x))[0]
        _, bias = disc.realness_weight()
        logit = cam[fy[0] - ay[0]:fy[1] - ay[0], fx[0] - ax[0]:fx[1] - ax[0]] + bias.to(cam.dtype)
        # cells of the window range [y0 - p, y1 + q) that lie outside the slide
        missing_y = (fy[0] - (y0 - p), (y1 + q) - fy[1])
        missing_x = (fx[0] - (x0 - p), (x1 + q) - fx[1])
        window_logit = _window_mean(logit, missing_y, missing_x, plan.window)
        core = cam[y0 - ay[0]:y1 - ay[0], x0 - ax[0]:x1 - ax[0]]
        # the negative part of the soft-CAM means "not a cell": shown as 0
        return (torch.sigmoid(window_logit) * core).clamp_(min=0.0)


def _chunk(cells: tuple[int, int], halo: int, n: int, stride: int) -> tuple[int, int]:
    """Feature-cell range to compute so that ``cells`` are exact (halo, >= 16 pixels)."""
    a0, a1 = max(0, cells[0] - halo), min(n, cells[1] + halo)
    while (a1 - a0) * stride < MIN_INPUT and (a0 > 0 or a1 < n):
        a0, a1 = max(0, a0 - 1), min(n, a1 + 1)
    return a0, a1


def _window_mean(logit: torch.Tensor, missing_y: tuple[int, int], missing_x: tuple[int, int],
                 window: int) -> torch.Tensor:
    """Mean of ``logit`` over ``window x window`` cells, counting only cells that exist.

    ``missing_y``/``missing_x``: how many cells of the needed range lie beyond the
    slide before and after ``logit``; they are padded and left out of the mean.
    """
    pads = (missing_x[0], missing_x[1], missing_y[0], missing_y[1])
    value = F.pad(logit[None, None], pads)
    count = F.pad(torch.ones_like(logit)[None, None], pads)
    total = _box_mean(value, window)
    n = _box_mean(count, window)
    return (total / n)[0, 0]


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """``F.avg_pool2d(x, window, stride=1)`` as a column pass then a row pass: the
    same means (to float rounding) at 2 / ``window`` of the work."""
    return F.avg_pool2d(F.avg_pool2d(x, (window, 1), stride=1), (1, window), stride=1)


def _upsample_into(cells: torch.Tensor, plan: _Plan, out, stop, progress, done: int,
                   total: int) -> None:
    """Bilinear resampling of the feature-cell map onto the slide's pixels, band by band."""
    h, w = plan.shape
    device = cells.device
    scale = plan.factor / plan.stride  # feature cells per source pixel
    cols = _AxisTaps.build(0, w, scale, plan.grid[1], device)
    writer = _BandWriter(out, device)
    for y0 in range(0, h, plan.band):
        _check_stop(stop)
        y1 = min(h, y0 + plan.band)
        rows = _AxisTaps.build(y0, y1, scale, plan.grid[0], device)
        with _Stage("upsample", device):
            band = cols.apply(rows.apply(cells[rows.start:rows.stop], 0), 1)
        with _Stage("to_host", device):
            writer.write(y0, y1, band)
        done += 1
        if progress is not None:
            progress(done, total)
    with _Stage("to_host", device):
        writer.close()


def _float32_view(out: Any) -> bool:
    """Whether ``out`` is a writeable float32 array that torch can write into in place
    (torch takes no negative strides)."""
    return (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.writeable
            and all(s >= 0 for s in out.strides))


class _BandWriter:
    """Writes the map's bands from the device into ``out``, in order.

    On CUDA the copies are asynchronous. A page-locked float32 ``out`` (see
    :func:`_output`) receives each band directly. Any other ``out`` receives it
    through two page-locked buffers in turn: band ``k`` is copied into one while
    the CPU moves band ``k - 1`` from the other into ``out``. Elsewhere a band is
    copied straight into ``out`` (a float32 array) or converted on the way.
    :meth:`close` returns once everything is in ``out``.
    """

    def __init__(self, out: Any, device: torch.device) -> None:
        self.out, self.device = out, device
        self.cuda = device.type == "cuda"
        self.direct = _float32_view(out) and (
            not self.cuda or torch.from_numpy(out).is_pinned())
        self._buffers = _HostBuffers(device)
        self._pending: tuple[torch.Tensor, Any, int, int] | None = None

    def write(self, y0: int, y1: int, band: torch.Tensor) -> None:
        if self.direct:  # a view of out: no intermediate host copy
            torch.from_numpy(self.out[y0:y1]).copy_(band, non_blocking=self.cuda)
            if not self.cuda:  # (a page-locked out is never a memory map)
                release_pages(self.out)
        elif not self.cuda:
            self.out[y0:y1] = band.cpu().numpy()
            release_pages(self.out)
        else:
            i, raw = self._buffers.take(band.numel() * 4)
            landing = raw.view(torch.float32).view(band.shape)
            landing.copy_(band, non_blocking=True)
            event = self._buffers.record(i)
            self._flush()  # the previous band, while the device copies this one
            self._pending = (landing, event, y0, y1)

    def close(self) -> None:
        self._flush()
        if self.direct and self.cuda:
            torch.cuda.current_stream(self.device).synchronize()

    def _flush(self) -> None:
        if self._pending is not None:
            landing, event, y0, y1 = self._pending
            self._pending = None
            event.synchronize()
            self.out[y0:y1] = landing.numpy()
            release_pages(self.out)
