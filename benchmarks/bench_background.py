"""Speed and memory of taking a slide's background away (``--background flatten``).

Usage::

    python benchmarks/bench_background.py                 # 1388 x 1038, cells of 24 / 60 px
    python benchmarks/bench_background.py --big 8192      # and an 8192^2 uint16 slide on disk

For a simulated 1388 x 1038 slide at each ``--diameters`` cell size, the best of
three runs of :func:`napari_atagan.slides.background.flatten_background` read whole
(``np.asarray``), beside, in the same run, the first form of the background alone
(a percentile *filter* over every block instead of one window per diameter).
``bench_archive.py --background none`` gives what flattening costs end to end.

``--big N`` writes an N x N uint16 slide to a temporary ``.npy`` file and, in
fresh processes, reads it as a memory map and flattens it region by region
(bands of 1024 rows, each band's pages handed back, as the tiled attention reads a
slide too large to keep),
then, for reference, whole (one float32 array, as a slide under
:data:`~napari_atagan.slides.background.KEEP_PIXELS` is kept); each reports
seconds and the process's peak resident memory (Linux VmHWM, the mapped
slide's pages included).
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


def best_of(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def first_form(image: np.ndarray, d: float) -> np.ndarray:
    """The background as first written: a percentile filter over every block."""
    from scipy import ndimage as ndi

    from napari_atagan.slides import background as bg

    step = max(1, int(round(d / bg.BLOCKS_PER_DIAMETER)))
    h, w = image.shape
    blocks = bg._block_means(image, h, w, step)
    size = max(3, int(round(bg.BACKGROUND_WINDOW * d / step)) | 1)
    grid = ndi.percentile_filter(blocks, bg.BACKGROUND_PCT, size=size, mode="reflect")
    return ndi.gaussian_filter(grid, bg.BACKGROUND_SMOOTH * d / step, mode="reflect")


def big(n: int) -> dict:
    """Flatten an n x n memmapped slide by bands and whole, each in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.npy"
        rng = np.random.default_rng(0)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n, n))
        for y in range(0, n, 1024):
            out[y:y + 1024] = rng.integers(100, 4000, (min(1024, n - y), n), dtype=np.uint16)
        out.flush()
        del out
        report = {"size": n, "slide_mb": round(n * n * 2 / 2**20, 1)}
        for how, keep in (("by_bands", 0), ("whole", n * n)):
            code = ("import json, time, numpy as np\n"
                    "from napari_atagan.slides import background as bg\n"
                    f"bg.KEEP_PIXELS = {keep}\n"
                    f"s = np.load({str(path)!r}, mmap_mode='r')\n"
                    "t0 = time.perf_counter()\n"
                    "f = bg.flatten_background(s, 40.0)\n"
                    "total = 0.0\n"
                    "from napari_atagan._memmap import release_pages\n"
                    "for y in range(0, s.shape[0], 1024):\n"
                    "    total += float(f[y:y + 1024, :].mean())\n"
                    "    release_pages(f)  # as the tiled attention does after each tile\n"
                    "sec = time.perf_counter() - t0\n"
                    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
                    "print(json.dumps({'seconds': sec, 'peak_mb': int(hwm.split()[1]) / 1024}))\n")
            res = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                            capture_output=True, text=True).stdout)
            report[how] = {"seconds": round(res["seconds"], 2),
                           "peak_resident_mb": round(res["peak_mb"], 1)}
        report["peak_by_bands_over_whole"] = round(
            report["by_bands"]["peak_resident_mb"] / report["whole"]["peak_resident_mb"], 2)
        return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diameters", type=float, nargs="+", default=[24.0, 60.0])
    p.add_argument("--big", type=int, default=0, help="also an N x N slide on disk")
    args = p.parse_args(argv)

    from napari_atagan.simulate import simulate_slide
    from napari_atagan.slides.background import flatten_background

    report: dict = {"slide": [1038, 1388], "rows": []}
    for d in args.diameters:
        image = simulate_slide((1038, 1388), n_cells=45, cell_diameter=d, seed=0, bit_depth=8,
                               realistic=True).image
        flat = best_of(lambda: np.asarray(flatten_background(image, d)))
        first = best_of(lambda: first_form(image, d))
        report["rows"].append({"diameter": d, "flatten_s": round(flat, 4),
                               "first_form_background_only_s": round(first, 4),
                               "first_form_over_flatten": round(first / max(flat, 1e-9), 1)})
    if args.big:
        report["big"] = big(args.big)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
