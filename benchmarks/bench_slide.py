"""Speed and memory of whole-slide attention, beside a sliding-window baseline.

Usage::

    python benchmarks/bench_slide.py                 # 4096^2 on a GPU, 1024^2 on the CPU
    python benchmarks/bench_slide.py --device cpu --size 2048
    python benchmarks/bench_slide.py --big           # 20,000^2 uint16 TIFF memmap
    python benchmarks/bench_slide.py --profile       # also: where the tiled path's time goes
    python benchmarks/bench_slide.py --kernels --variants  # operations; bf16, channels-last

A default discriminator with random weights runs at model scale (factor 1) on a
synthetic uint16 slide. Reported:

* the fully convolutional tiled path (:func:`napari_atagan.slides.attention.discriminator_attention`,
  default tile: 2048 on CUDA, 1024 elsewhere): megapixels per second at model
  scale (the best of ``--repeat`` runs after a warm-up on a small region;
  ``first_seconds``: the first of them, which also allocates the map and the
  buffers), peak host memory (RSS high-water mark during the run, Linux VmHWM
  reset just before it; resident memory of the process before the run, mostly
  the torch runtime, is given beside it) and peak GPU memory;
* on CUDA, ``pinned_map_allocation``: seconds to allocate the map in page-locked
  memory, in a fresh process (the first run's extra cost) and from torch's cache;
* the same path with the map at the discriminator's own stride (8) instead of
  the default :data:`napari_atagan.slides.attention.CAM_STRIDE` (4), and ``cam_stride_cost``:
  how many times longer the default takes;
* the sliding-window baseline: 64x64 windows every 16 pixels, batched through
  ``D.soft_cam``, overlapping maps averaged; and the speed ratio of the two.

``--profile`` adds a breakdown of the tiled path by stage (``"profile"``), in
seconds summed over tiles / bands: ``levels`` (the intensity percentiles, on the
host), ``read`` (reading the regions into the host staging buffer, with any cast
of float64 to float32), ``to_device`` (the copies to the device), ``normalise``
(conversion to float, normalisation, NaN/inf flags and resampling to model
scale, on the device), ``model`` (the discriminator and the soft-CAM),
``check`` (the one wait for the NaN/inf flags), ``upsample`` (the map onto the
slide's pixels, on the device) and ``to_host`` (copying it into the output);
``other_s`` is the rest. The device is synchronised before and after every
stage, so the stages no longer overlap: the profiled run is slower than the
plain one, and the difference is what overlapping host and device work gains.

``--kernels`` profiles one tiled run with torch.profiler (``"kernels"``): tensor
operations issued and the operations that take the most host and device time.
``--variants`` times the tiled path writing into a float32 array that the caller
allocates for every run (``caller_float32_out``, as the CLI does), and under
runtime settings the product does not use (yet): bf16 autocast, a channels-last
discriminator, and both; beside them
``model_only``, the discriminator and CAM on the whole slide at once, already on
the device (no reading, tiling or output): the speed the tiled path could reach.

``--big`` writes a 20,000 x 20,000 uint16 TIFF into a temporary folder, then
measures the tiled path in a fresh process reading it as a memory map and writing
into a memory-mapped output (the host peak then includes the mapped file pages
that were touched).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _profiling import op_summary, peak_rss_mb, reset_peak_rss, rss_mb  # benchmarks/, beside this script

from napari_atagan.slides import attention as slide_module
from napari_atagan.device import describe, resolve_device, synchronize
from napari_atagan.gan.models import Discriminator
from napari_atagan.slides.attention import default_tile_size, discriminator_attention


def _gpu_peak_mb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _model(device: torch.device) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator().to(device).eval()


def _synthetic(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, size=(size, size), dtype=np.uint16)


def time_tiled(disc, image, device, tile_size: int, caller_out: bool = False,
               repeat: int = 1, cam_stride: int | None = None) -> dict:
    """Best of ``repeat`` timed runs of the fully convolutional path (after a warm-up on a
    small region), and the first of them (which also allocates the map and buffers).

    ``caller_out``: each run writes into a new ``np.zeros`` float32 array, as a caller
    that allocates the map itself (the CLI) does, instead of a map allocated by the run.
    """
    discriminator_attention(disc, image[:256, :256], device=device, tile_size=tile_size,
                            cam_stride=cam_stride)
    synchronize(device)
    _reset_gpu_peak(device)
    host_before = rss_mb()
    reset_peak_rss()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = np.zeros(image.shape, np.float32) if caller_out else None
        discriminator_attention(disc, image, device=device, tile_size=tile_size, out=out,
                                cam_stride=cam_stride)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    pixels = image.shape[0] * image.shape[1]
    seconds = min(times)
    return {"seconds": round(seconds, 3), "mpx_per_s": round(pixels / seconds / 1e6, 2),
            "first_seconds": round(times[0], 3),
            "host_rss_before_mb": round(host_before, 1),
            "peak_host_mb": round(peak_rss_mb(), 1), "peak_gpu_mb": _round(_gpu_peak_mb(device))}


_PINNING = """
import json, sys, time, torch
torch.empty(1, pin_memory=True)  # the CUDA context and the host allocator exist
seconds = []
for _ in range(2):
    t0 = time.perf_counter()
    block = torch.empty(int(sys.argv[1]), dtype=torch.float32, pin_memory=True)
    seconds.append(round(time.perf_counter() - t0, 4))
    del block
print(json.dumps({"first_s": seconds[0], "cached_s": seconds[1]}))
"""


def _time_pinning(shape: tuple[int, int]) -> dict:
    """Seconds to allocate a float32 map of ``shape`` in page-locked memory, the first
    time and again from torch's host cache (in a fresh process, so that no block of
    this process's runs is cached yet)."""
    cmd = [sys.executable, "-c", _PINNING, str(shape[0] * shape[1])]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def profile_tiled(disc, image, device, tile_size: int, repeat: int = 1) -> dict:
    """Seconds per stage of the tiled path (the fastest of ``repeat`` profiled runs).

    ``stages_s`` sums each stage over all tiles / bands (see ``slide._profile``);
    ``other_s`` is the rest of the run (tile geometry, callbacks, Python).
    """
    discriminator_attention(disc, image[:256, :256], device=device, tile_size=tile_size)
    synchronize(device)
    best = (math.inf, {})
    for _ in range(repeat):
        stages: dict[str, float] = {}
        slide_module._profile = stages
        try:
            t0 = time.perf_counter()
            discriminator_attention(disc, image, device=device, tile_size=tile_size)
            synchronize(device)
            seconds = time.perf_counter() - t0
        finally:
            slide_module._profile = None
        best = min(best, (seconds, stages), key=lambda run: run[0])
    seconds, stages = best
    pixels = image.shape[0] * image.shape[1]
    return {"seconds": round(seconds, 3), "mpx_per_s": round(pixels / seconds / 1e6, 2),
            "stages_s": {name: round(t, 4) for name, t in stages.items()},
            "other_s": round(seconds - sum(stages.values()), 4)}


def kernels_tiled(disc, image, device, tile_size: int, top: int = 12) -> dict:
    """torch.profiler over one tiled run (after a warm-up): what it issues and where time goes."""
    from torch.profiler import ProfilerActivity, profile

    discriminator_attention(disc, image, device=device, tile_size=tile_size)
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        discriminator_attention(disc, image, device=device, tile_size=tile_size)
        synchronize(device)
    return op_summary(prof.key_averages(), 1, top, cuda, unit="run")


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def time_variants(disc, image, device, tile_size: int, repeat: int) -> dict:
    """The tiled path under bf16 autocast and/or a channels-last discriminator, and the
    model alone on the whole slide (input already on the device)."""
    last = copy.deepcopy(disc).to(memory_format=torch.channels_last)
    out = {"caller_float32_out": time_tiled(disc, image, device, tile_size, caller_out=True,
                                            repeat=repeat)}
    for name, model, ctx in (("bf16_autocast", disc, _autocast),
                             ("channels_last", last, lambda d: contextlib.nullcontext()),
                             ("bf16_channels_last", last, _autocast)):
        with ctx(device):
            out[name] = time_tiled(model, image, device, tile_size, repeat=repeat)
    for name, model, ctx in (("model_only_fp32", disc, lambda d: contextlib.nullcontext()),
                             ("model_only_bf16_channels_last", last, _autocast)):
        with ctx(device):
            out[name] = time_model_only(model, image.shape, device, repeat)
    return out


def time_model_only(disc, shape: tuple[int, int], device, repeat: int) -> dict:
    """Best of ``repeat`` runs of ``D.features`` and the CAM over one whole slide."""
    x = torch.rand((1, 1, *shape), device=device) * 2 - 1
    with torch.inference_mode():
        disc.cam_map(disc.features(x[..., :256, :256]))
        synchronize(device)
        seconds = math.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            disc.cam_map(disc.features(x))
            synchronize(device)
            seconds = min(seconds, time.perf_counter() - t0)
    return {"seconds": round(seconds, 4),
            "mpx_per_s": round(shape[0] * shape[1] / seconds / 1e6, 2)}


def sliding_window(disc, image: np.ndarray, device, window: int = 64, step: int = 16,
                   batch: int = 512) -> np.ndarray:
    """Soft-CAM of every ``window`` crop every ``step`` pixels, overlaps averaged."""
    lo, hi = np.percentile(image[::4, ::4], [0.5, 99.8])
    x = torch.from_numpy(image.astype(np.float32)).to(device)
    x = ((x - float(lo)) * (2.0 / (float(hi) - float(lo))) - 1.0).clamp_(-1, 1)
    h, w = x.shape
    patches = x.unfold(0, window, step).unfold(1, window, step)  # (ny, nx, win, win) view
    ny, nx = patches.shape[:2]
    acc = torch.zeros((h, w), device=device)
    rows_per_pass = max(1, batch // nx)
    with torch.inference_mode():
        for r0 in range(0, ny, rows_per_pass):
            r1 = min(ny, r0 + rows_per_pass)
            crops = patches[r0:r1].reshape(-1, 1, window, window)
            maps = torch.cat([disc.soft_cam(crops[i:i + batch])
                              for i in range(0, crops.shape[0], batch)])
            cols = maps.reshape(r1 - r0, nx, window * window).permute(0, 2, 1)
            for k in range(r1 - r0):  # fold one window row at a time
                strip = F.fold(cols[k:k + 1], (window, (nx - 1) * step + window),
                               kernel_size=window, stride=step)[0, 0]
                y = (r0 + k) * step
                acc[y:y + window, : strip.shape[1]] += strip
    ones = torch.ones((1, window * window, ny * nx), device=device)
    count = F.fold(ones, ((ny - 1) * step + window, (nx - 1) * step + window),
                   kernel_size=window, stride=step)[0, 0]
    acc[: count.shape[0], : count.shape[1]] /= count.clamp(min=1)
    return acc.cpu().numpy()


def time_sliding(disc, image, device, repeat: int = 1) -> dict:
    sliding_window(disc, image[:256, :256], device)
    synchronize(device)
    seconds = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        sliding_window(disc, image, device)
        synchronize(device)
        seconds = min(seconds, time.perf_counter() - t0)
    pixels = image.shape[0] * image.shape[1]
    return {"seconds": round(seconds, 3), "mpx_per_s": round(pixels / seconds / 1e6, 2)}


def _round(v):
    return None if v is None else round(v, 1)


def run_standard(device: torch.device, size: int, tile_size: int, repeat: int,
                 profile: bool = False, kernels: bool = False, variants: bool = False) -> dict:
    disc = _model(device)
    image = _synthetic(size)
    pinning = _time_pinning(image.shape) if device.type == "cuda" else None
    tiled = time_tiled(disc, image, device, tile_size, repeat=repeat)
    own = time_tiled(disc, image, device, tile_size, repeat=repeat, cam_stride=disc.stride)
    sliding = time_sliding(disc, image, device, repeat=repeat)
    report = {
        "device": describe(device), "size": size, "tile_size": tile_size, "repeat": repeat,
        "cam_stride": slide_module.CAM_STRIDE,
        "fully_convolutional": tiled, "pinned_map_allocation": pinning,
        f"fully_convolutional_cam_stride_{disc.stride}": own,
        "cam_stride_cost": round(tiled["seconds"] / own["seconds"], 2),
        "sliding_window_64_stride_16": sliding,
        "speedup": round(sliding["seconds"] / tiled["seconds"], 1),
    }
    if profile:
        report["profile"] = profile_tiled(disc, image, device, tile_size, repeat=repeat)
    if kernels:
        report["kernels"] = kernels_tiled(disc, image, device, tile_size)
    if variants:
        report["variants"] = time_variants(disc, image, device, tile_size, repeat)
    return report


def run_big(device: torch.device, size: int, tile_size: int) -> dict:
    """Write the big TIFF here, measure in a fresh process (clean memory high-water mark)."""
    import tifffile

    with tempfile.TemporaryDirectory(prefix="bench-slide-") as tmp:
        path = Path(tmp) / "big.tif"
        t0 = time.perf_counter()
        _write_big_tiff(path, size)
        write_s = time.perf_counter() - t0
        tifffile.TiffFile(path).close()
        cmd = [sys.executable, __file__, "--device", str(device), "--tile-size", str(tile_size),
               "--_measure-big", str(path)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"big-slide measurement failed:\n{result.stderr}")
        report = json.loads(result.stdout)
    report["tiff_write_seconds"] = round(write_s, 1)
    return report


def _write_big_tiff(path: Path, size: int) -> None:
    import tifffile

    mm = tifffile.memmap(path, shape=(size, size), dtype=np.uint16)
    rng = np.random.default_rng(0)
    band = 1024
    for y in range(0, size, band):
        mm[y:y + band] = rng.integers(0, 4096, size=(min(band, size - y), size), dtype=np.uint16)
    mm.flush()
    del mm


def _measure_big(path: str, device: torch.device, tile_size: int) -> dict:
    import tifffile

    image = tifffile.memmap(path, mode="r")
    disc = _model(device)
    with tempfile.TemporaryDirectory(prefix="bench-out-", dir=os.path.dirname(path)) as tmp:
        out = np.lib.format.open_memmap(Path(tmp) / "att.npy", mode="w+", dtype=np.float32,
                                        shape=image.shape)
        _reset_gpu_peak(device)
        host_before = rss_mb()
        reset_peak_rss()
        t0 = time.perf_counter()
        discriminator_attention(disc, image, device=device, tile_size=tile_size, out=out)
        synchronize(device)
        seconds = time.perf_counter() - t0
        finite = bool(np.isfinite(out[:: 997, :: 991]).all())
        del out
    pixels = image.shape[0] * image.shape[1]
    return {
        "device": describe(device), "size": list(image.shape), "dtype": str(image.dtype),
        "tile_size": tile_size, "seconds": round(seconds, 1),
        "mpx_per_s": round(pixels / seconds / 1e6, 2),
        "host_rss_before_mb": round(host_before, 1),
        "peak_host_mb": round(peak_rss_mb(), 1), "peak_gpu_mb": _round(_gpu_peak_mb(device)),
        "finite": finite,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the synthetic slide (default: 4096 on GPU, 1024 on CPU)")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="tile side (model pixels; default: 2048 on CUDA, 1024 elsewhere)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs of each method; the fastest counts (default: 3)")
    parser.add_argument("--big", action="store_true",
                        help="also measure a 20,000^2 uint16 TIFF memmap (tiled path only)")
    parser.add_argument("--profile", action="store_true",
                        help="also time the tiled path stage by stage (device synchronised)")
    parser.add_argument("--kernels", action="store_true",
                        help="also profile one tiled run with torch.profiler (top operations)")
    parser.add_argument("--variants", action="store_true",
                        help="also time bf16 autocast, channels-last, and the model alone")
    parser.add_argument("--_measure-big", dest="measure_big", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.tile_size = args.tile_size or default_tile_size(device)
    if args.measure_big:
        print(json.dumps(_measure_big(args.measure_big, device, args.tile_size)))
        return 0
    size = args.size or (4096 if device.type == "cuda" else 1024)
    report = {"standard": run_standard(device, size, args.tile_size, max(1, args.repeat),
                                       profile=args.profile, kernels=args.kernels,
                                       variants=args.variants)}
    print(json.dumps(report["standard"], indent=2), flush=True)
    if args.big:
        report["big"] = run_big(device, 20_000, args.tile_size)
        print(json.dumps(report["big"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
