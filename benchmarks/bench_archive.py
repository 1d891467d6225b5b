"""End-to-end throughput of a lab's archive: read, attention, labels, cell table, write.

Usage::

    python benchmarks/bench_archive.py                     # 200 slides of 1388 x 1038, CPU
    python benchmarks/bench_archive.py --count 40 --device cuda
    python benchmarks/bench_archive.py --slides DIR        # reuse (or keep) the simulated slides
    python benchmarks/bench_archive.py --patterns-from RUN # cells named by another run's classifier

``--count`` simulated slides (1388 x 1038, the size of a 40x HEp-2 IIF field,
``--cells`` cells of ``--diameter`` px, seeds 0..count-1) are written once
(into ``--slides`` when given, else a temporary folder). The shipped default
model then processes the whole folder twice, each into its own output folder:

1. **sequential**: one in-process loop of :func:`napari_atagan.slides.archive.process_slide`
   over the slides, torch using every core; the checkpoint opened once, as a
   careful script would;
2. **archive**: ``napari-atagan attention --image DIR`` as a user runs it, in a
   fresh process, end to end (start-up, worker processes, ``slides.csv``
   included), with its default parallel workers (``--workers`` to change).

It prints both rates in slides per second and their ratio, the cells found,
and whether both runs wrote the same cells (they must: the parallel run changes
where the work runs, not what it computes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (1038, 1388)


def make_slides(folder: Path, count: int, cells: int, diameter: float, realistic: bool) -> list[Path]:
    """The simulated slides (those missing), made in parallel on every core: 0.7 s a slide
    on one core, so 200 of them would take minutes of a GPU machine's time one by one."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"slide_{i:04d}.tif" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    jobs = [(folder, paths[i].stem, cells, diameter, i, realistic) for i in missing]
    if len(jobs) > 1 and (os.cpu_count() or 1) > 1:
        with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
            list(pool.map(_make_slide, jobs))
    else:
        for job in jobs:
            _make_slide(job)
    return paths


def _make_slide(job: tuple) -> None:
    from napari_atagan.simulate import simulate_slide, write_slide

    folder, stem, cells, diameter, seed, realistic = job
    sim = simulate_slide(SHAPE, n_cells=cells, cell_diameter=diameter, seed=seed,
                         realistic=realistic)
    write_slide(sim, folder, stem=stem)


def sequential(paths: list[Path], options) -> float:
    import torch

    from napari_atagan.slides.archive import process_slide
    from napari_atagan.checkpoint import load_checkpoint

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(options.checkpoint)
    for p in paths:
        process_slide(p, options, ckpt)
    return time.perf_counter() - t0


def archive_cli(folder: Path, out: Path, diameter: float, device: str, workers: int | None,
                background: str = "flatten", patterns_from: str = "") -> float:
    from napari_atagan import default_model_path

    cmd = [sys.executable, "-m", "napari_atagan", "attention", "--checkpoint",
           str(default_model_path()), "--image", str(folder), "--diameter", str(diameter),
           "--out", str(out), "--device", device, "--background", background]
    if workers:
        cmd += ["--workers", str(workers)]
    if patterns_from:
        cmd += ["--patterns-from", patterns_from]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cells_of(out: Path) -> dict[str, int]:
    import csv

    with open(out / "slides.csv", newline="") as fh:
        return {r["slide"]: int(r["cells"] or 0) for r in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=200, help="slides (200)")
    p.add_argument("--cells", type=int, default=60, help="cells per slide (60)")
    p.add_argument("--diameter", type=float, default=60.0, help="cell diameter in px (60)")
    p.add_argument("--realistic", action="store_true", help="realistic simulated slides")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the archive run (default: its own, one per core)")
    p.add_argument("--slides", type=Path, default=None, help="folder for the simulated slides")
    p.add_argument("--background", choices=("flatten", "none"), default="flatten",
                   help="what both runs do with the slides' background (default: flatten)")
    p.add_argument("--patterns-from", default="", metavar="RUN",
                   help="both runs name the cells with this run's classifier teacher")
    p.add_argument("--skip-sequential", action="store_true",
                   help="time only the archive run (e.g. on a GPU machine, to save time)")
    args = p.parse_args(argv)

    from napari_atagan import default_model_path
    from napari_atagan.slides.archive import ArchiveOptions

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.slides or tmp / "slides"
        t0 = time.perf_counter()
        paths = make_slides(folder, args.count, args.cells, args.diameter, args.realistic)
        made = time.perf_counter() - t0
        report: dict = {"slides": len(paths), "shape": list(SHAPE), "cells_per_slide": args.cells,
                        "diameter": args.diameter, "realistic": args.realistic,
                        "device": args.device, "cores": os.cpu_count(),
                        "background": args.background,
                        "patterns_from": args.patterns_from or None,
                        "simulate_seconds": round(made, 1)}
        archive_s = archive_cli(folder, tmp / "archive", args.diameter, args.device, args.workers,
                                args.background, args.patterns_from)
        report["archive"] = {"seconds": round(archive_s, 2),
                             "slides_per_s": round(len(paths) / archive_s, 2)}
        found = cells_of(tmp / "archive")
        report["cells_found"] = int(sum(found.values()))
        if not args.skip_sequential:
            options = ArchiveOptions(checkpoint=str(default_model_path()),
                                     out_dir=str(tmp / "sequential"), diameter=args.diameter,
                                     device=args.device, background=args.background,
                                     patterns_from=args.patterns_from)
            seq_s = sequential(paths, options)
            report["sequential"] = {"seconds": round(seq_s, 2),
                                    "slides_per_s": round(len(paths) / seq_s, 2)}
            report["archive_over_sequential"] = round(seq_s / archive_s, 2)
            same = all(
                np.array_equal(_labels(tmp / "archive", q.stem), _labels(tmp / "sequential", q.stem))
                for q in paths[:: max(1, len(paths) // 10)])
            report["same_cells"] = bool(same)
    print(json.dumps(report, indent=2))
    return 0


def _labels(out: Path, stem: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(out / f"{stem}_labels.tif")


if __name__ == "__main__":
    sys.exit(main())
