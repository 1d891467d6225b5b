"""Speed and memory of translating a whole slide, beside the networks run on it at once.

Usage::

    python benchmarks/bench_translate.py                  # 1024^2 on the CPU, 4096^2 on a GPU
    python benchmarks/bench_translate.py --quick          # the quick preset's networks
    python benchmarks/bench_translate.py --size 2048 --device cpu
    python benchmarks/bench_translate.py --big 16384      # a uint16 TIFF read as a memory map

The networks are those of the default translation configuration (``--quick``:
the quick preset) after one training step on simulated crops, so their weights
are close to their initial ones: speed and memory do not depend on the weights.
A synthetic uint16 slide (cells on a dark field) is translated at model scale
(no resampling), A -> B. Reported:

* ``tiled``: :func:`napari_atagan.translate.translate_image` with its default
  tile (megapixels per second, the best of ``--repeat`` runs after a warm-up;
  ``first_seconds``, the first of them), peak host memory (the RSS high-water
  mark during the run, Linux VmHWM reset just before it, beside the process's
  resident memory before it) and peak GPU memory;
* ``whole``, the reference measured in the same run: the generator and the
  attention network applied to the whole slide as one tensor (normalised as
  ``translate_image`` does), the fastest a single forward pass can be when memory
  is no object; ``tiled_over_whole`` is the ratio of their speeds and
  ``max_difference`` the largest difference of the two translations in grey
  levels (the tiles carry enough context to be exact: 0, or 1 where a value
  rounds the other way);
* ``tiled_own``: the same networks trained with ``grey_levels="own"``, whose
  slide is mapped neighbourhood by neighbourhood (one more pass over the slide for
  its levels, a level map per tile); ``own_over_shared`` is its speed over
  ``tiled``'s, measured in the same run;
* ``tiled_target``: the same networks trained with ``grey_levels="target"`` (mapped
  as own levels; the kept and the translated part of each pixel resampled back
  apart and given their own grey ranges), with its default, hard composite;
  ``target_over_own`` is its speed over the own-level model's with the hard
  composite (``tiled_own_hard``), measured in the same run;
* ``tiled_hard``: the same model and slide with ``composite="hard"`` (each pixel
  translated or kept); ``hard_over_soft`` is its speed over ``tiled``'s, measured in
  the same run;
* ``--big N``: an N x N uint16 TIFF is written into a temporary folder and
  translated in a fresh process (a clean high-water mark) from a memory map into
  memory-mapped outputs, as the CLI does for large slides: seconds, Mpx/s, the
  peak RSS (which counts the pages of the mapped files that were touched: the
  kernel can drop or write them back at any time) beside the bytes of the slide
  and of its two outputs, and the peak of the memory the process itself holds
  (``peak_anonymous_mb``, RssAnon sampled every 20 ms): what bounds a run;
  ``big_own``: the same slide through the own-level model (its levels read from
  the memory map in bands), ``big_own_over_shared`` its speed over ``big``'s;
  ``big_target`` the same through the target-level model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _profiling import peak_rss_mb, reset_peak_rss, rss_mb, status_mb  # benchmarks/, beside this script


def make_model(folder: Path, quick: bool, device: str, grey_levels: str = "shared") -> Path:
    """A translation checkpoint of the chosen networks, one step from their initial weights."""
    from napari_atagan.events import Finished
    from napari_atagan.simulate import simulate_crops
    from napari_atagan.translate import TranslateConfig, train_translation

    config = TranslateConfig.quick() if quick else TranslateConfig()
    config = config.replace(steps=1, batch_size=2, device=device, checkpoint_every=1,
                            sample_every=1000, log_every=1, grey_levels=grey_levels)
    size = config.image_size
    a = simulate_crops(8, size=size, seed=1, intensity=0.4).images
    b = simulate_crops(8, size=size, seed=2, intensity=1.0).images
    done = [e for e in train_translation(config, a, b, folder) if isinstance(e, Finished)]
    return Path(done[-1].checkpoint)


def synthetic_slide(size: int, seed: int = 0) -> np.ndarray:
    """A uint16 slide: bright round cells of about 40 px on a dim, noisy field."""
    rng = np.random.default_rng(seed)
    image = rng.normal(400.0, 30.0, (size, size)).astype(np.float32)
    yy, xx = np.ogrid[-20:21, -20:21]
    disc = (yy**2 + xx**2 <= 400) * 2000.0
    for _ in range(max(1, size * size // 6000)):
        y, x = rng.integers(0, size - 41, 2)
        image[y:y + 41, x:x + 41] += disc * rng.uniform(0.3, 1.0)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" \
        else None


def timed(run, image: np.ndarray, device: torch.device, repeat: int) -> tuple[dict, np.ndarray]:
    """``run()`` ``repeat`` times: the best speed, the first run's seconds, peak memory."""
    before = rss_mb()
    reset_peak_rss()
    _gpu_reset(device)
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        result = run()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"mpx_per_s": round(image.size / 1e6 / min(times), 2),
            "seconds": round(min(times), 3), "first_seconds": round(times[0], 3),
            "host_before_mb": round(before, 1), "peak_host_mb": round(peak_rss_mb(), 1),
            "peak_gpu_mb": _gpu_peak_mb(device)}, result


def tiled(translator, image: np.ndarray, device: torch.device, repeat: int,
          composite: str = "soft") -> tuple[dict, np.ndarray]:
    from napari_atagan.translate import translate_image

    translate_image(translator, image[:256, :256], device=device, composite=composite)  # warm-up
    return timed(lambda: translate_image(translator, image, device=device,
                                         composite=composite)[0], image, device, repeat)


def whole(translator, image: np.ndarray, device: torch.device, repeat: int) -> tuple[dict, np.ndarray]:
    """The networks on the whole slide at once (edge repeated up to a multiple of 4)."""
    from napari_atagan.translate.data import CLIP
    from napari_atagan.translate.models import compose

    generator, attention = translator.networks("a2b", device)
    levels = translator.levels
    h, w = image.shape
    pad = ((0, -h % 4), (0, -w % 4))
    lo, scale = float(np.float32(levels.lo)), float(np.float32(levels.scale))

    def once() -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.pad(image, pad, mode="edge").astype(np.float32)).to(device)
            x = x.sub_(lo).mul_(scale).sub_(1.0).clamp_(-CLIP, CLIP)[None, None]
            att = None if attention is None else attention(x)
            y = compose(x, att, generator(x))[0, 0, :h, :w].float().cpu().numpy()
        return np.clip(np.rint(levels.to_source(y)), 0, 65535).astype(np.uint16)

    if image.size <= 1 << 20:  # a warm-up where it is cheap
        once()
    return timed(once, image, device, repeat)


def measure_big(slide: str, checkpoint: str, device: str) -> dict:
    """In a fresh process: a memory-mapped TIFF in, memory-mapped outputs out."""
    import tifffile

    from napari_atagan.translate import load_translator, translate_image

    image = tifffile.memmap(slide, mode="r")
    folder = Path(slide).parent
    out_t = np.lib.format.open_memmap(folder / "translated.npy", "w+", image.dtype, image.shape)
    out_a = np.lib.format.open_memmap(folder / "attention.npy", "w+", np.float32, image.shape)
    translator = load_translator(checkpoint)
    dev = torch.device(device)
    translate_image(translator, np.asarray(image[:256, :256]), device=dev)  # warm-up
    before = rss_mb()
    anon_before = status_mb("RssAnon") or 0.0
    reset_peak_rss()
    _sync(dev)
    with _PeakSampler("RssAnon") as anon:
        t0 = time.perf_counter()
        translate_image(translator, image, device=dev, out=(out_t, out_a))
        _sync(dev)
        seconds = time.perf_counter() - t0
    out_t.flush()
    out_a.flush()
    mib = 2**20
    return {"size": list(image.shape), "seconds": round(seconds, 2),
            "mpx_per_s": round(image.size / 1e6 / seconds, 2),
            "host_before_mb": round(before, 1), "peak_host_mb": round(peak_rss_mb(), 1),
            "slide_mb": round(image.nbytes / mib, 1),
            "outputs_mb": round((out_t.nbytes + out_a.nbytes) / mib, 1),
            "peak_over_slide": round((peak_rss_mb() - before) / (image.nbytes / mib), 3),
            "anonymous_before_mb": round(anon_before, 1),
            "peak_anonymous_mb": round(anon.peak, 1)}


class _PeakSampler:
    """The highest value of a /proc/self/status figure while the block runs, sampled
    every 20 ms (for figures the kernel keeps no high-water mark of)."""

    def __init__(self, key: str) -> None:
        import threading

        self.key, self.peak = key, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, status_mb(self.key) or 0.0)

    def __enter__(self) -> "_PeakSampler":
        self.peak = status_mb(self.key) or 0.0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mb(self.key) or 0.0)


def run_big(size: int, checkpoint: Path, device: str, folder: Path) -> dict:
    import tifffile

    path = folder / "big.tif"
    rows = 1024
    if not path.exists():
        with tifffile.TiffWriter(path, bigtiff=True) as tif:  # in bands: never all in memory
            tif.write(shape=(size, size), dtype=np.uint16,
                      data=(_band(size, y, min(rows, size - y)) for y in range(0, size, rows)))
    cmd = [sys.executable, __file__, "--_measure-big", str(path), str(checkpoint), device]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"big-slide measurement failed:\n{result.stderr}")
    return json.loads(result.stdout)


def _band(width: int, y0: int, rows: int) -> np.ndarray:
    """``rows`` rows of a big slide from row ``y0``: noise and a row of 30 px cells."""
    rng = np.random.default_rng(y0)
    band = rng.normal(400.0, 30.0, (rows, width)).clip(0, 65535).astype(np.uint16)
    for yc in range(40, rows - 40, 120):
        for xc in range(40, width - 40, 120):
            band[yc - 15:yc + 15, xc - 15:xc + 15] += np.uint16(rng.integers(500, 2000))
    return band


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_measure-big":
        print(json.dumps(measure_big(*sys.argv[2:5])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--size", type=int, default=None,
                   help="side of the square slide (default 1024 on the CPU, 4096 on a GPU)")
    p.add_argument("--quick", action="store_true", help="the quick preset's networks")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each (best counts)")
    p.add_argument("--big", type=int, default=None, metavar="N",
                   help="also an N x N uint16 TIFF read as a memory map, in a fresh process")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    from napari_atagan.device import describe, resolve_device
    from napari_atagan.translate import load_translator

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    size = args.size or (4096 if device.type == "cuda" else 1024)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = make_model(tmp / "model", args.quick, str(device))
        translator = load_translator(checkpoint)
        image = synthetic_slide(size)
        report: dict = {"device": describe(device), "threads": torch.get_num_threads(),
                        "networks": "quick" if args.quick else "default",
                        "slide": [size, size]}
        report["tiled"], t_result = tiled(translator, image, device, args.repeat)
        report["whole"], w_result = whole(translator, image, device, args.repeat)
        report["tiled_over_whole"] = round(report["tiled"]["mpx_per_s"]
                                           / report["whole"]["mpx_per_s"], 2)
        report["max_difference"] = int(np.abs(t_result.astype(np.int64) - w_result).max())
        report["tiled_hard"], _ = tiled(translator, image, device, args.repeat, "hard")
        report["hard_over_soft"] = round(report["tiled_hard"]["mpx_per_s"]
                                         / report["tiled"]["mpx_per_s"], 2)
        own_checkpoint = make_model(tmp / "model_own", args.quick, str(device), "own")
        own = load_translator(own_checkpoint)
        report["tiled_own"], _ = tiled(own, image, device, args.repeat)
        report["own_over_shared"] = round(report["tiled_own"]["mpx_per_s"]
                                          / report["tiled"]["mpx_per_s"], 2)
        target_checkpoint = make_model(tmp / "model_target", args.quick, str(device), "target")
        report["tiled_own_hard"], _ = tiled(own, image, device, args.repeat, "hard")
        report["tiled_target"], _ = tiled(load_translator(target_checkpoint), image, device,
                                          args.repeat, "hard")  # such a model's default
        report["target_over_own"] = round(report["tiled_target"]["mpx_per_s"]
                                          / report["tiled_own_hard"]["mpx_per_s"], 2)
        if args.big:
            report["big"] = run_big(args.big, checkpoint, str(device), tmp)
            report["big_own"] = run_big(args.big, own_checkpoint, str(device), tmp)
            report["big_own_over_shared"] = round(report["big_own"]["mpx_per_s"]
                                                  / report["big"]["mpx_per_s"], 2)
            report["big_target"] = run_big(args.big, target_checkpoint, str(device), tmp)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
