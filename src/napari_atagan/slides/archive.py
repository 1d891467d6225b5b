"""A lab's archive: every slide of a folder through attention, labels and the cell table.

For each slide (:func:`process_slide`): read it (the stained channel of a
colour image), run the discriminator's attention, find and outline the cells
(:func:`napari_atagan.slides.segment.label_cells`), measure them with their patterns
(:func:`napari_atagan.slides.cells.cell_table`) and write, in the output folder,

* ``<stem>_attention.tif`` and ``<stem>_labels.tif`` (ImageJ TIFFs carrying how
  they were made), or with ``zarr=True`` one ``<stem>.ome.zarr`` holding both
  (:mod:`napari_atagan.zarr_export`), for slides too big for TIFF tools;
* ``<stem>_cells.csv``: one row per cell (:class:`napari_atagan.slides.cells.CellTable`).

:func:`run_archive` does this for many slides and ends with ``slides.csv``:
one row per slide (cells found, median cell area, the slide's pattern and its
confidence, or why it failed). It is a generator of progress events
(:class:`SlideResult`, then :class:`ArchiveDone`), like training: the CLI
prints them, a widget could show them.

Safe to stop at any moment: every file is written atomically (a temporary
name, then one rename), and the cell table is written last, so a slide whose
outputs all exist is complete. A rerun skips complete slides (``overwrite``
redoes them) and a slide that fails (unreadable, too small, ...) is one line
in ``slides.csv`` while the others go on.

Where the work runs:

* by default, in parallel worker processes on this machine (labelling is
  CPU-bound and holds the interpreter; attention is a small share on a CPU and
  a tiny one on a GPU), each with its own share of the cores;
* with ``scheduler=ADDRESS``, on an existing Dask distributed cluster
  (``dask.distributed.Client(ADDRESS)``): each task reads and writes its
  slide itself, so the slides, the checkpoint and the output folder must be on
  a file system the workers share; a worker with a GPU uses it (``device="auto"``).

A worker process that dies (killed, out of memory) costs only the slides it
held: they are tried again in fresh workers, and a slide that kills its
worker twice is reported as failed.
"""

from __future__ import annotations

import csv
import glob
import io
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import remove_stale_temporaries, write_text_atomically
from .._memmap import SCRATCH_PIXELS, ScratchFolder, remove_stale_scratch, scratch_array

__all__ = [
    "SLIDES_CSV",
    "ArchiveDone",
    "ArchiveOptions",
    "SlideResult",
    "find_slides",
    "outputs_for",
    "process_slide",
    "run_archive",
]

SLIDES_CSV = "slides.csv"
SLIDE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg", ".npy")
"""Files of a folder that are read as slides (older microscope software writes BMP or
JPEG; JPEG's compression blurs a cell's edge, so a TIFF is better where there is one)."""
OUTPUT_ENDINGS = ("_labels", "_attention", "_mask")
"""Stems that are results or masks, never slides (the truth beside simulated slides, too)."""
SLIDE_COLUMNS = ("slide", "status", "cells", "median_area", "pattern", "confidence",
                 "pattern_source", "cell_diameter", "seconds", "error")
MAX_POOL_RESTARTS = 2
"""Fresh worker pools after a worker died, before the rest of the slides count as failed."""
_MEMMAP_PIXELS = SCRATCH_PIXELS
"""Attention maps larger than this (512 MB of float32) are staged in a file, not in RAM."""
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ArchiveOptions:
    """How every slide of a run is processed (one per run, saved in the outputs' metadata)."""

    checkpoint: str
    out_dir: str
    diameter: float | str = "auto"
    """Cell diameter in pixels, or ``"auto"`` (estimated per slide)."""
    threshold: str | float = "local"
    outline: str = "image"
    find: str = "both"
    """Which map finds the cells the image outlines (:data:`napari_atagan.slides.segment.FINDS`):
    ``"both"``, ``"attention"`` or ``"blob"`` (model-free)."""
    cut: str | float = "auto"
    """Where a cell's edge is cut (:func:`napari_atagan.slides.segment.guided_labels`):
    ``"auto"`` per slide, from the diameter, or a fixed fraction."""
    min_size: int | None = None
    device: str = "auto"
    tile_size: int | None = None
    channel: int | str | None = None
    """``None``: the stained channel of a colour image; an index; or ``"grey"``."""
    zarr: bool = False
    overwrite: bool = False
    patterns: bool = True
    """Name each cell's pattern when the checkpoint knows patterns."""
    patterns_from: str = ""
    """A checkpoint whose classifier teacher names the cells' patterns instead of
    ``checkpoint``'s own pattern model: a run trained with the mask teacher finds cells
    best, and its discriminator's pattern head is no classifier
    (``docs/experiments.md``, *Naming a slide's pattern*)."""
    background: str = "flatten"
    """``"flatten"``: the slide's slowly varying background is taken away before its
    cells are looked for (:mod:`napari_atagan.slides.background`); ``"none"``."""


@dataclass
class SlideResult:
    """One slide is finished: ``status`` is ``"done"``, ``"skipped"`` (complete
    outputs were there) or ``"failed"`` (``row["error"]`` says why)."""

    index: int
    total: int
    path: Path
    status: str
    row: dict[str, Any]


@dataclass
class ArchiveDone:
    """Every slide is finished (or the run was stopped): the rows of ``slides.csv``."""

    slides_csv: Path
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    seconds: float
    stopped: bool = False


Event = SlideResult | ArchiveDone


# --------------------------------------------------------------------------- finding slides
def find_slides(spec: str | os.PathLike) -> list[Path]:
    """The slides named by ``spec``: one file, a folder (its image files, not its
    sub-folders) or a glob pattern (``"plates/*/A*.tif"``), in natural order.

    Results and masks (names ending in ``_labels``, ``_attention``, ``_mask``)
    are never slides. Raises ValueError when nothing matches.
    """
    text = os.fspath(spec)
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and _is_slide(p)]
        where = f"folder {text!r}"
    elif _GLOB_CHARS & set(text):
        found = [Path(p) for p in glob.glob(text, recursive=True)]
        found = [p for p in found if p.is_file() and _is_slide(p)]
        where = f"pattern {text!r}"
    else:
        raise ValueError(f"--image {text!r} does not exist (expected a slide file, a folder "
                         "of slides or a glob pattern)")
    if not found:
        raise ValueError(f"no slides in {where} (looked for "
                         f"{', '.join(SLIDE_SUFFIXES)} files)")
    return sorted(found, key=_natural_key)


def _is_slide(p: Path) -> bool:
    name = p.name.lower()
    if p.name.startswith(".") or not name.endswith(SLIDE_SUFFIXES):
        return False
    stem = name[:-len(".ome.tif")] if name.endswith(".ome.tif") else p.stem.lower()
    return not stem.endswith(OUTPUT_ENDINGS)


def _natural_key(p: Path) -> list[Any]:
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(p))]


def _check_stems(paths: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen:
            raise ValueError(f"{seen[p.stem]} and {p} would write the same outputs "
                             f"({p.stem}_labels.tif, ...): rename one, or run them into "
                             "different --out folders")
        seen[p.stem] = p


# --------------------------------------------------------------------------- one slide
def outputs_for(image: str | os.PathLike, out_dir: str | os.PathLike, *,
                zarr: bool = False) -> dict[str, Path]:
    """The files one slide writes, by kind (``cells`` is written last)."""
    stem, out = Path(image).stem, Path(out_dir)
    files = ({"zarr": out / f"{stem}.ome.zarr"} if zarr else
             {"attention": out / f"{stem}_attention.tif", "labels": out / f"{stem}_labels.tif"})
    files["cells"] = out / f"{stem}_cells.csv"
    return files


def is_complete(image: str | os.PathLike, options: ArchiveOptions) -> bool:
    """Whether every output of the slide exists (each is written atomically) and was
    made with these settings (a rerun with another threshold, channel, ... redoes it)."""
    files = outputs_for(image, options.out_dir, zarr=options.zarr)
    if not all(p.exists() for p in files.values()):
        return False
    try:
        return _stored_metadata(files).get("settings") == settings_key(options)
    except (OSError, ValueError, KeyError):
        return False


def settings_key(options: ArchiveOptions) -> str:
    """A short fingerprint of what decides a slide's outputs (not where or how fast
    they are computed), stored in them, so that a rerun knows whether they still hold."""
    import hashlib
    import json

    ckpt = Path(options.checkpoint)
    size = ckpt.stat().st_size if ckpt.exists() else None
    decisive = {"checkpoint": [ckpt.name, size], "diameter": options.diameter,
                "threshold": options.threshold, "outline": options.outline, "cut": options.cut,
                "min_size": options.min_size, "channel": options.channel,
                "zarr": options.zarr, "patterns": options.patterns,
                "background": options.background}
    if options.find != "both":  # outputs of runs before the choice existed stay valid
        decisive["find"] = options.find
    if options.patterns_from and options.patterns:
        namer = Path(options.patterns_from)
        decisive["patterns_from"] = [namer.name,
                                     namer.stat().st_size if namer.exists() else None]
    return hashlib.sha1(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def _stored_metadata(files: dict[str, Path]) -> dict[str, Any]:
    if "labels" in files:
        from ..export import read_tiff_metadata

        return read_tiff_metadata(files["labels"])
    from ..zarr_export import read_ome_zarr_metadata

    return read_ome_zarr_metadata(files["zarr"])


def process_slide(path: str | os.PathLike, options: ArchiveOptions,
                  checkpoint: Any = None, *, progress: Callable[[int, int], None] | None = None,
                  stop: Any = None) -> dict[str, Any]:
    """Read one slide, find its cells, write its outputs; its row of ``slides.csv``.

    ``checkpoint``: an opened checkpoint (loaded from ``options.checkpoint``
    when ``None``). Raises ValueError / OSError for a slide that cannot be
    processed (unreadable, too small, NaN, ...), with a message naming it.
    """
    from .. import __version__
    from ..channels import read_grey
    from .cells import cell_table
    from ..checkpoint import load_checkpoint
    from .background import flatten_background
    from .labels import effective_min_size, min_cell_size
    from .attention import (
        default_tile_size,
        estimate_cell_diameter,
        model_cell_diameter,
        slide_attention,
        slide_attention_stack,
    )

    t0 = time.perf_counter()
    image_path = Path(path)
    out_dir = Path(options.out_dir)
    files = outputs_for(image_path, out_dir, zarr=options.zarr)
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(options.checkpoint)
    image, channel_info = read_grey(image_path, options.channel,
                                    say=lambda text: print(text, file=sys.stderr))
    stack = np.ndim(image) == 3
    diameter = options.diameter
    if diameter == "auto":
        diameter = estimate_cell_diameter(image[0] if stack else image)
    diameter = float(diameter)
    min_size = options.min_size if options.min_size is not None else min_cell_size(diameter)
    tile_size = options.tile_size or default_tile_size(options.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(np.shape(image)[:3] if stack else np.shape(image)[:2])
    with ScratchFolder(out_dir) as scratch:
        out = scratch_array(shape, scratch, "attention.npy", np.float32, above=_MEMMAP_PIXELS)
        flat = flatten_background(image, diameter, options.background, stop=stop)
        compute = slide_attention_stack if stack else slide_attention
        attention = compute(ckpt, flat, cell_diameter=diameter, tile_size=tile_size,
                            device=options.device, progress=progress, out=out, stop=stop)
        seconds_map = time.perf_counter() - t0
        cut: dict[str, Any] = {}
        labels, outline = _labels(attention, flat, scratch, options.outline, options.cut, cut,
                                  find=options.find, threshold=options.threshold,
                                  min_size=min_size, cell_diameter=diameter)
        metadata = {
            "checkpoint": Path(options.checkpoint).name,
            "checkpoint_format_version": ckpt.metadata.get("format_version"),
            "image": image_path.name,
            "cell_diameter": diameter,
            "model_cell_diameter": model_cell_diameter(ckpt),
            "threshold": options.threshold,
            "outline": outline,
            "find": options.find if outline == "image" else None,
            "cut": options.cut,
            "cut_used": cut.get("cut"),  # the fraction (per plane of a stack); None: map outlines
            # how wide the cells came out, beside the cell_diameter they were asked for
            "median_cell_diameter": _rounded(cut.get("median_diameter")),
            "background": options.background,
            "min_size": int(min_size),
            # the labelling never keeps objects under the cell-area floor
            "min_size_in_effect": effective_min_size(min_size, diameter),
            "tile_size": int(tile_size),
            "software_version": __version__,
            "settings": settings_key(options),
            **channel_info,
        }
        namer = pattern_checkpoint(options, ckpt)
        if namer is not None and namer is not ckpt:
            metadata["patterns_from"] = Path(options.patterns_from).name
        table = cell_table(labels, image, attention, checkpoint=namer,
                           cell_diameter=diameter, device=_table_device(options.device))
        if options.zarr:
            from ..zarr_export import save_ome_zarr

            save_ome_zarr(files["zarr"], attention, labels, metadata=metadata)
        else:
            from ..export import save_attention_tiff, save_labels_tiff

            save_attention_tiff(files["attention"], attention, metadata=metadata)
            save_labels_tiff(files["labels"], labels, metadata=metadata)
        table.to_csv(files["cells"])  # last: its presence marks the slide complete
        del attention, out, labels
    summary = table.summary()
    return {
        "slide": image_path.name,
        "status": "done",
        **summary,
        "cell_diameter": round(diameter, 2),
        "seconds": round(time.perf_counter() - t0, 3),
        "error": "",
        # for the single-slide report
        "_outline": outline,
        "_find": options.find,
        "_cut": cut.get("cut"),
        "_channel": channel_info,
        "_files": {k: str(v) for k, v in files.items()},
        "_megapixels_per_s": round(math.prod(shape) / 1e6 / max(seconds_map, 1e-9), 2),
    }


def pattern_checkpoint(options: ArchiveOptions, checkpoint: Any) -> Any:
    """The checkpoint that names the cells' patterns: ``None`` when patterns are off,
    the classifier run of ``options.patterns_from`` (:func:`pattern_namer`), or
    ``checkpoint`` itself."""
    if not options.patterns:
        return None
    if not options.patterns_from:
        return checkpoint
    return pattern_namer(options.patterns_from)


def pattern_namer(path: str | os.PathLike) -> Any:
    """The run at ``path`` that names cells' patterns with its classifier teacher,
    opened once per process (:func:`napari_atagan.gan.checkpoint.open_classifier_run`:
    a ValueError for a run that keeps none). The classifier itself is built on the
    first slide, once per device (:meth:`~napari_atagan.checkpoint.Checkpoint.pattern_model`)."""
    from ..gan.checkpoint import open_classifier_run

    return opened_once("patterns", path, open_classifier_run)


_OPENED: dict[str, tuple[tuple[str, int | None], Any]] = {}


def opened_once(kind: str, path: str | os.PathLike, opener: Callable[[Path], Any]) -> Any:
    """``opener(path)``, done once per process while the file stays the same (its
    resolved path and modification time); the latest file of each ``kind`` is kept.
    A worker process opens its checkpoints on its first slide, not on every one."""
    p = Path(path)
    try:
        stamp: int | None = p.stat().st_mtime_ns
    except OSError:
        stamp = None  # the opener says what is wrong with it
    key = (str(p.resolve()), stamp)
    held = _OPENED.get(kind)
    if held is None or held[0] != key:
        _OPENED.pop(kind, None)
        _OPENED[kind] = (key, opener(p))
    return _OPENED[kind][1]


def _table_device(device: str) -> str:
    from ..device import resolve_device

    return str(resolve_device(device))


def completed_row(path: Path, options: ArchiveOptions) -> dict[str, Any]:
    """The ``slides.csv`` row of a slide whose outputs are complete, from its files."""
    from .cells import read_cells_csv

    files = outputs_for(path, options.out_dir, zarr=options.zarr)
    summary = read_cells_csv(files["cells"]).summary()
    try:
        diameter = round(float(_stored_metadata(files).get("cell_diameter")), 2)
    except (TypeError, ValueError, OSError):
        diameter = ""
    return {"slide": path.name, "status": "skipped", **summary, "cell_diameter": diameter,
            "seconds": "", "error": ""}


def failed_row(path: Path, message: str) -> dict[str, Any]:
    return {"slide": path.name, "status": "failed", "cells": "", "median_area": "",
            "pattern": "", "confidence": "", "pattern_source": "", "cell_diameter": "",
            "seconds": "", "error": message}


def _rounded(value: Any) -> Any:
    """A diameter (or a stack's list of them) to 0.01 px for the metadata; NaN as None."""
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return None if value is None or not math.isfinite(value) else round(float(value), 2)


def _labels(attention: np.ndarray, image: Any, scratch: Path, outline: str,
            cut: str | float, info: dict, find: str = "both",
            **options: Any) -> tuple[np.ndarray, str]:
    """Cell labels of the map (:func:`napari_atagan.slides.segment.label_cells`) and what
    outlined them; ``info`` receives the cut used. A map too large for memory is
    labelled from the map alone, tile by tile into a file, and the returned outline
    says so."""
    from .labels import attention_to_labels_tiled
    from .segment import label_cells

    if math.prod(attention.shape) > _MEMMAP_PIXELS:
        out = scratch_array(tuple(attention.shape), scratch, "labels.npy", np.uint32,
                            above=_MEMMAP_PIXELS)
        used = "map" if outline == "map" else "map (the slide is too large to outline from)"
        return attention_to_labels_tiled(attention, out=out, **options), used
    return label_cells(np.asarray(attention), image, outline=outline, cut=cut, info=info,
                       find=find, **options), outline


# --------------------------------------------------------------------------- many slides
def run_archive(paths: Sequence[str | os.PathLike], options: ArchiveOptions, *,
                workers: int | None = None, scheduler: str | None = None,
                stop: Any = None) -> Iterator[Event]:
    """Process every slide; yields a :class:`SlideResult` per slide, then :class:`ArchiveDone`.

    ``workers``: worker processes on this machine (default: one per core, at
    most one per slide; ``1`` runs in this process). ``scheduler``: the address
    of a Dask distributed scheduler to run on instead. ``stop``: a callable or
    ``threading.Event``; when set, running slides are abandoned (their outputs
    are never partial), the rest are left for a rerun, and ``slides.csv`` lists
    what was finished.
    """
    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no slides to process")
    _check_stems(paths)
    if options.patterns and options.patterns_from:
        pattern_namer(options.patterns_from)  # before any slide (and kept for them)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    remove_stale_scratch(out_dir)
    total = len(paths)
    rows: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    k = 0
    for i, p in enumerate(paths):
        if not options.overwrite and is_complete(p, options):
            try:
                rows[i] = completed_row(p, options)
            except (OSError, ValueError):
                todo.append(i)  # its table is unreadable: do it again
                continue
            k += 1
            yield SlideResult(k, total, p, "skipped", rows[i])
        else:
            todo.append(i)
    stopped = False
    if todo:
        if scheduler:
            run = _run_on_cluster(scheduler, paths, todo, options, stop)
        elif _n_workers(workers, len(todo)) <= 1:
            run = _run_here(paths, todo, options, stop)
        else:
            run = _run_in_pool(paths, todo, options, _n_workers(workers, len(todo)), stop)
        for i, row in run:
            if row is None:  # stopped
                stopped = True
                break
            rows[i] = row
            k += 1
            yield SlideResult(k, total, paths[i], row["status"], _public(row))
    ordered = [_public(rows[i]) for i in sorted(rows)]
    csv_path = write_slides_csv(out_dir / SLIDES_CSV, ordered)
    counts = {s: sum(r["status"] == s for r in ordered) for s in ("done", "skipped", "failed")}
    counts["left"] = total - len(ordered)
    yield ArchiveDone(csv_path, ordered, counts, time.perf_counter() - t0, stopped)


def write_slides_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """``slides.csv``: one row per slide (see :data:`SLIDE_COLUMNS`), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SLIDE_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k, "")) for k in SLIDE_COLUMNS})
    return write_text_atomically(path, buf.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _n_workers(workers: int | None, n_slides: int) -> int:
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return min(workers, n_slides)
    return max(1, min(_cores(), n_slides))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _should_stop(stop: Any) -> bool:
    if stop is None:
        return False
    return bool(stop.is_set() if hasattr(stop, "is_set") else stop())


def _attempt(path: Path, options: ArchiveOptions, checkpoint: Any) -> dict[str, Any]:
    """One slide, its failure turned into a row (the run goes on)."""
    from ..checkpoint import CheckpointError
    from ..events import Stopped

    try:
        return process_slide(path, options, checkpoint)
    except Stopped:
        raise
    except (ValueError, OSError, CheckpointError) as exc:
        return failed_row(path, str(exc))
    except MemoryError:
        return failed_row(path, "out of memory: use a smaller --tile-size, or fewer workers")
    except Exception as exc:  # noqa: BLE001 - one slide's bug must not end a lab's run
        if "out of memory" in str(exc).lower():
            return failed_row(path, f"out of memory ({type(exc).__name__}): use a smaller "
                              "--tile-size, or fewer workers")
        return failed_row(path, f"{type(exc).__name__}: {exc}")


def _run_here(paths, todo, options, stop):
    from ..checkpoint import load_checkpoint
    from ..events import Stopped

    ckpt = load_checkpoint(options.checkpoint)
    for i in todo:
        if _should_stop(stop):
            yield i, None
            return
        try:
            yield i, _attempt(paths[i], options, ckpt)
        except Stopped:
            yield i, None
            return


# -- local worker processes --------------------------------------------------------------
KEEP_FREED_BYTES = 256 << 20
"""How much freed memory a worker process keeps for its next slide (see keep_freed_memory)."""
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest allowed M_MMAP_THRESHOLD on 64-bit


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of one slide for the next (glibc only).

    Every slide allocates the same few dozen full-slide arrays (a 1388 x 1038
    float32 map is 5.8 MB). By default glibc gives each such block back to the
    system when it is freed and the next slide's block comes back as fresh
    zeroed pages: with two worker processes a tenth of the run went on page
    faults in the kernel (sys time). Here blocks up to 32 MB come from the heap,
    and up to :data:`KEEP_FREED_BYTES` of freed heap stays with the process;
    larger blocks (slides over about 8 Mpx) are still mapped and returned at
    once, so a worker's memory never grows with the slide beyond what it uses.
    Returns whether the settings took (False on other C libraries).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(mallopt(option, value) == 1 for option, value in (
        (m_mmap_threshold, _MMAP_THRESHOLD_MAX), (m_trim_threshold, KEEP_FREED_BYTES),
        (m_top_pad, 16 << 20)))


_WORKER: dict[str, Any] = {}


def _init_worker(options: ArchiveOptions, threads: int) -> None:
    import torch

    from ..checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    keep_freed_memory()
    _WORKER["checkpoint"] = load_checkpoint(options.checkpoint)
    _WORKER["options"] = options


def _work(path: str) -> dict[str, Any]:
    return _attempt(Path(path), _WORKER["options"], _WORKER["checkpoint"])


def _run_in_pool(paths, todo, options, n_workers, stop):
    threads = max(1, _cores() // n_workers)
    pending = list(todo)
    restarts = 0
    context = multiprocessing.get_context("spawn")  # no forked torch threads or CUDA state
    while pending:
        pool = ProcessPoolExecutor(n_workers, mp_context=context, initializer=_init_worker,
                                   initargs=(options, threads))
        futures = {pool.submit(_work, str(paths[i])): i for i in pending}
        broken = False
        try:
            while futures:
                done, _ = wait(list(futures), timeout=0.2, return_when=FIRST_COMPLETED)
                if _should_stop(stop):
                    _terminate(pool)
                    yield -1, None
                    return
                for fut in done:
                    i = futures.pop(fut)
                    try:
                        row = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        futures[fut] = i  # not done: tried again below
                        break
                    pending.remove(i)
                    yield i, row
                if broken:
                    break
        except BaseException:
            _terminate(pool)
            raise
        if not broken:
            pool.shutdown()
            return
        _terminate(pool)
        restarts += 1
        if restarts > MAX_POOL_RESTARTS:
            for i in list(pending):
                pending.remove(i)
                yield i, failed_row(paths[i], "its worker process died (killed, or out of "
                                              "memory) on every try")
            return


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop now: cancel what has not started and end the workers (outputs are atomic)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)


# -- a Dask cluster --------------------------------------------------------------------
def _cluster_task(path: str, options: ArchiveOptions) -> dict[str, Any]:
    """One slide on a Dask worker; the checkpoint is opened once per worker process."""
    from ..checkpoint import load_checkpoint

    ckpt = opened_once("checkpoint", options.checkpoint, load_checkpoint)
    return _attempt(Path(path), options, ckpt)


def _run_on_cluster(address, paths, todo, options, stop):
    try:
        from dask.distributed import Client, as_completed
    except ImportError as exc:
        raise ImportError("--scheduler needs Dask distributed: pip install "
                          "'napari-atagan[cluster]'") from exc
    # the workers may run elsewhere: absolute paths, which a shared file system resolves
    options = replace(options, checkpoint=str(Path(options.checkpoint).resolve()),
                      patterns_from=(str(Path(options.patterns_from).resolve())
                                     if options.patterns_from else ""),
                      out_dir=str(Path(options.out_dir).resolve()))
    client = address if isinstance(address, Client) else Client(address, timeout="20s")
    try:
        futures = {client.submit(_cluster_task, str(paths[i].resolve()), options, pure=False,
                                 retries=1, key=f"napari-atagan-slide-{i}-{time.time_ns()}"): i
                   for i in todo}
        for fut in as_completed(list(futures)):
            if _should_stop(stop):
                client.cancel(list(futures))
                yield -1, None
                return
            i = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker lost twice
                row = failed_row(paths[i], f"{type(exc).__name__} on the cluster: {exc}")
            yield i, row
    finally:
        if client is not address:
            client.close()


def options_dict(options: ArchiveOptions) -> dict[str, Any]:
    """The options as JSON types (for the run's report)."""
    return asdict(options)

