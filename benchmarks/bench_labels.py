"""Speed and memory of turning a huge attention map into cell labels, tile by tile.

Usage::

    python benchmarks/bench_labels.py                # 4096^2 map
    python benchmarks/bench_labels.py --size 20000   # 20,000^2 map (1.6 GB float32 file)

A synthetic attention map is written to a temporary ``.npy`` file: one soft
blob per cell (diameter ``--diameter``, 40 px) on a jittered grid, peak
heights spread over a factor of 10 as on slides with bright and dim cells, plus
faint noise. Each labelling rule of
:func:`napari_atagan.slides.labels.attention_to_labels_tiled` then runs in a fresh
process that reads the map as a memory map and writes the labels into a
memory-mapped file, and reports seconds, megapixels per second, cells found
(against the cells drawn), the seconds to save the labels as a TIFF (written
band by band, as the ``attention`` command does) and the process's peak
resident memory over both (Linux VmHWM). The
per-cell rule (``local``, the default with a known diameter) is compared with
the one global Otsu level (``otsu``) measured in the same run.

``--outlines`` times, in memory, what ``attention`` does to a slide that fits
in memory (``--outline image``, the default: :func:`napari_atagan.slides.segment.label_cells`)
beside the map alone (``--outline map``) and the classic pipeline, on a
simulated slide like the sample slide (``--size`` square, cells of
``--diameter`` covering a fifth of it) and the shipped default model's map of
it; the best of three runs each, and the cells each found. ``image_fixed_cut`` is the
same labelling with the edge cut fixed at 0.35 instead of chosen from the diameter
(``auto_cut_over_fixed``: what choosing it costs; ``cut_used``: the fraction chosen).
``image_every_pixel`` finds the map's proposals and their zones at every pixel instead of on
blocks of ``d // 30`` (``grid_over_every_pixel``: what the grid saves; 1 for cells under 60
px). ``image_attention_only`` finds the cells in the attention alone instead of its mean with
the model-free blob map (``label_cells(..., find="attention")``; ``blob_map_over_attention_only``:
what the blob map costs). ``image_no_fill`` leaves out the crescents' convex fill
(``convex_fill_over_none``: what the fill costs).
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
from scipy import ndimage as ndi

from _profiling import peak_rss_mb  # benchmarks/, beside this script


def write_map(path: Path, size: int, diameter: float, seed: int = 0) -> int:
    """Write the synthetic map band by band; returns the number of cells drawn."""
    rng = np.random.default_rng(seed)
    spacing = 2.2 * diameter
    n_side = int(size // spacing)
    centres = (np.arange(n_side) + 0.5) * spacing
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cy = (cy + rng.uniform(-0.3, 0.3, cy.shape) * diameter).ravel()
    cx = (cx + rng.uniform(-0.3, 0.3, cx.shape) * diameter).ravel()
    height = rng.uniform(0.1, 1.0, cy.size)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, size))
    sigma = diameter / 4
    halo = int(4 * sigma) + 1
    band = 1024
    for y0 in range(0, size, band):
        y1 = min(size, y0 + band)
        a0, a1 = max(0, y0 - halo), min(size, y1 + halo)
        impulses = np.zeros((a1 - a0, size), np.float32)
        sel = (cy >= a0) & (cy < a1)
        impulses[(cy[sel] - a0).astype(int), cx[sel].astype(int)] = height[sel]
        blobs = ndi.gaussian_filter(impulses, sigma) * (2 * np.pi * sigma**2)
        noise = rng.uniform(0, 0.01, blobs.shape).astype(np.float32)
        out[y0:y1] = (blobs + noise)[y0 - a0:y1 - a0]
    out.flush()
    del out
    return int(cy.size)


def measure(path: str, threshold: str, diameter: float) -> dict:
    from napari_atagan.evaluation.evaluate import default_min_size
    from napari_atagan.export import read_tiff_metadata, save_labels_tiff
    from napari_atagan.slides.labels import attention_to_labels_tiled

    amap = np.load(path, mmap_mode="r")
    with tempfile.TemporaryDirectory(dir=Path(path).parent) as tmp:
        out = np.lib.format.open_memmap(Path(tmp) / "labels.npy", mode="w+", dtype=np.uint32,
                                        shape=amap.shape)
        t0 = time.perf_counter()
        attention_to_labels_tiled(amap, threshold=threshold, cell_diameter=diameter,
                                  min_size=default_min_size(diameter), out=out)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        saved = save_labels_tiff(Path(tmp) / "labels.tif", out)
        write_seconds = time.perf_counter() - t1
        cells = int(read_tiff_metadata(saved)["max_label"])
        del out
    return {"threshold": threshold, "seconds": round(seconds, 1),
            "tiff_write_seconds": round(write_seconds, 1),
            "mpx_per_s": round(amap.size / seconds / 1e6, 2), "cells": cells,
            "peak_host_mb": round(peak_rss_mb(), 1)}


def outlines(size: int, diameter: float) -> dict:
    """Seconds of the slide labellings on one realistic simulated slide (best of 3)."""
    from napari_atagan import default_model_path
    from napari_atagan.slides.labels import min_cell_size
    from napari_atagan.slides.segment import CUT_FRACTION, classic_labels, label_cells
    from napari_atagan.simulate import simulate_slide
    from napari_atagan.slides.attention import slide_attention

    n_cells = max(1, int(0.2 * size * size / (np.pi * diameter**2 / 4)))
    # cells like the sample slide's, which the shipped model finds (on the realistic
    # simulated slides it finds few: the timing would be that of an empty map)
    sim = simulate_slide((size, size), n_cells=n_cells, cell_diameter=diameter, seed=0)
    image = sim.image.astype(np.float32)
    amap = slide_attention(default_model_path(), image, cell_diameter=diameter, device="cpu")
    options = dict(threshold="local", min_size=min_cell_size(diameter), cell_diameter=diameter)
    told: dict = {}
    runs = {
        "image": lambda: label_cells(amap, image, outline="image", info=told, **options),
        # the edge cut fixed instead of chosen from the diameter: what choosing it costs
        "image_fixed_cut": lambda: label_cells(amap, image, outline="image", cut=CUT_FRACTION,
                                               **options),
        # the cells found in the attention alone: what the blob map beside it costs
        "image_attention_only": lambda: label_cells(amap, image, outline="image", find="attention",
                                                    **options),
        # the same without crescents filled to their hull: what the convex fill costs
        "image_no_fill": lambda: _without_fill(
            lambda: label_cells(amap, image, outline="image", **options)),
        # the map's proposals and zones at every pixel, not on blocks of d // 30: what the
        # grid saves (the same as "image" for cells under 60 px)
        "image_every_pixel": lambda: _every_pixel(
            lambda: label_cells(amap, image, outline="image", **options)),
        "map": lambda: label_cells(amap, image, outline="map", **options),
        "classic": lambda: classic_labels(image, diameter),
    }
    report: dict = {"size": size, "diameter": diameter, "cells_drawn": len(sim.patterns)}
    for name, run in runs.items():
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            cells = int(run().max())
            best = min(best, time.perf_counter() - t0)
        report[name] = {"seconds": round(best, 3), "mpx_per_s": round(image.size / best / 1e6, 2),
                        "cells": cells}
    report["image_seconds_over_map"] = round(report["image"]["seconds"]
                                             / report["map"]["seconds"], 2)
    report["image"]["cut_used"] = told.get("cut")
    report["auto_cut_over_fixed"] = round(report["image"]["seconds"]
                                          / report["image_fixed_cut"]["seconds"], 2)
    report["blob_map_over_attention_only"] = round(
        report["image"]["seconds"] / report["image_attention_only"]["seconds"], 2)
    report["convex_fill_over_none"] = round(
        report["image"]["seconds"] / report["image_no_fill"]["seconds"], 2)
    report["grid_over_every_pixel"] = round(
        report["image"]["seconds"] / report["image_every_pixel"]["seconds"], 2)
    return report


def _every_pixel(run):
    """``run()`` with the map's proposals and zones found at every pixel."""
    from unittest import mock

    with mock.patch("napari_atagan.slides.segment.WORK_DIAMETER", float("inf")):
        return run()


def _without_fill(run):
    """``run()`` with :func:`napari_atagan.slides.segment.fill_concave` left out."""
    from unittest import mock

    with mock.patch("napari_atagan.slides.segment.fill_concave", lambda labels, **_: labels):
        return run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="map side in pixels (4096)")
    p.add_argument("--diameter", type=float, default=40.0, help="cell diameter in pixels (40)")
    p.add_argument("--outlines", action="store_true",
                   help="time the in-memory slide labellings instead (outline by the image, by "
                        "the map, classic pipeline) on a simulated slide")
    p.add_argument("--_measure", nargs=2, metavar=("PATH", "THRESHOLD"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.outlines:
        print(json.dumps(outlines(a.size, a.diameter), indent=1))
        return 0
    if a._measure:
        print(json.dumps(measure(a._measure[0], a._measure[1], a.diameter)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        path = Path(tmp) / "map.npy"
        t0 = time.perf_counter()
        drawn = write_map(path, a.size, a.diameter)
        report = {"size": a.size, "diameter": a.diameter, "cells_drawn": drawn,
                  "map_write_seconds": round(time.perf_counter() - t0, 1)}
        for threshold in ("local", "otsu"):
            cmd = [sys.executable, __file__, "--diameter", str(a.diameter),
                   "--_measure", str(path), threshold]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode:
                raise SystemExit(f"measuring {threshold} failed:\n{run.stderr}")
            report[threshold] = json.loads(run.stdout)
    report["local_seconds_over_otsu"] = round(
        report["local"]["seconds"] / report["otsu"]["seconds"], 2)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
