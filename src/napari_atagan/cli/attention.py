"""``napari-atagan attention``: attention map, cell labels and cell table of slides.

::

    napari-atagan attention --checkpoint run.safetensors --image slide.tif \\
        --diameter 40 --out results/ [--threshold otsu|VALUE] [--min-size N] \\
        [--device auto] [--tile-size N] [--channel N | --grey] [--zarr]

writes ``results/slide_attention.tif`` (float32), ``results/slide_labels.tif``
(uint16 cell ids), both ImageJ TIFFs carrying how they were made, and
``results/slide_cells.csv`` (one row per cell: centroid, area, intensity,
attention and, where the checkpoint knows patterns, each pattern's
probability), plus ``results/slides.csv`` (one row per slide). ``--image`` may
also be a folder or a glob pattern: every slide is processed, in parallel
worker processes (``--workers``) or on a Dask cluster (``--scheduler``), see
:mod:`napari_atagan.slides.archive`. A rerun skips slides whose outputs are complete
(``--overwrite`` redoes them). A JSON summary goes to stdout, progress to
stderr. A 3-D TIFF is treated as a stack of planes, unless its last axis is
colour (RGB/RGBA) or the file says that its first axis holds channels: then
the stained channel is used (see :mod:`napari_atagan.channels`), or the one
``--channel`` names, and the summary and the TIFFs say which.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .common import (
    CHANNEL_HELP,
    CUT_HELP,
    DEVICE_CHOICES,
    THRESHOLD_HELP,
    TextProgress,
    channel_option,
    check_out_folder,
    cut_choice,
    diameter_or_auto,
    non_negative_int,
    positive_int,
    report_interrupted,
    report_user_error,
    threshold_choice,
)

EXIT_SOME_FAILED = 1


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``attention`` subcommand to an argparse sub-parser set."""
    p = subparsers.add_parser(
        "attention",
        help="attention map, cell labels and cell table of slides",
        description=(
            "Run a trained discriminator over whole slides (no sliding window, tiled to "
            "bound memory), and write for each its attention map and the cells found in "
            "it as ImageJ TIFFs, <stem>_attention.tif and <stem>_labels.tif, and a table "
            "of its cells, <stem>_cells.csv, in --out; and slides.csv, one row per slide "
            "with its pattern. A rerun skips slides whose outputs are complete. Exit "
            "status 1 when some slides failed (each says why on stderr and in slides.csv)."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a trained checkpoint")
    p.add_argument("--image", required=True, metavar="FILE|DIR|GLOB",
                   help="a slide (TIFF: 2-D, a 3-D stack, colour or multi-channel; PNG, BMP, "
                        "JPEG or .npy), a folder of slides, or a glob pattern in quotes "
                        "(\"plate*/*.tif\"); files ending in _labels, _attention or _mask "
                        "are not slides")
    p.add_argument("--diameter", required=True, type=diameter_or_auto, metavar="PIXELS",
                   help="typical cell diameter in the slide, in pixels, or 'auto' to estimate it")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--threshold", type=threshold_choice, default="local", help=THRESHOLD_HELP)
    p.add_argument("--outline", choices=("image", "map"), default="image",
                   help="'image' (default): a map finds and seeds the cells (--find; by "
                        "default the attention averaged with a model-free blob map, the "
                        "Laplacian of Gaussian of the slide's log contrast at the cell size), "
                        "the slide's own edges outline them and split touching ones; 'map': "
                        "cells cut from the attention map alone")
    p.add_argument("--find", choices=("both", "attention", "blob"), default="both",
                   help="with --outline image, the map the cells are found in: 'both' "
                        "(default) the model's attention averaged with the blob map; "
                        "'attention' the model's map alone; 'blob' the blob map alone, with "
                        "no model in the cells (it found cells best on slides of a pattern "
                        "the model never saw and on sparse nuclei; the attention map is "
                        "still written)")
    p.add_argument("--cut", type=cut_choice, default="auto", metavar="auto|FRACTION",
                   help=CUT_HELP)
    p.add_argument("--background", choices=("flatten", "none"), default="flatten",
                   help="'flatten' (default): take away the slide's slowly varying background "
                        "(uneven illumination, vignetting, haze), found as a low percentile "
                        "over windows four cell diameters wide, before looking for cells; "
                        "'none': use the slide as it is")
    p.add_argument("--min-size", type=int, default=None, metavar="N",
                   help="smallest cell kept, in pixels (never less than 0.4 of the area of a cell "
                        "of the given diameter, which is the default)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to run (default: %(default)s)")
    p.add_argument("--tile-size", type=int, default=None, metavar="N",
                   help="tile side at model scale in pixels; smaller needs less memory "
                        "(default: 2048 on a CUDA GPU, 1024 elsewhere)")
    p.add_argument("--channel", type=non_negative_int, default=None, metavar="N",
                   help=CHANNEL_HELP)
    p.add_argument("--grey", action="store_true",
                   help="use the luminance of a colour (RGB) image instead of its stained "
                        "channel")
    p.add_argument("--overwrite", action="store_true",
                   help="redo slides whose outputs already exist (default: skip them)")
    p.add_argument("--zarr", action="store_true",
                   help="write the attention map and labels of each slide as one OME-Zarr "
                        "store, <stem>.ome.zarr, instead of two TIFFs (for big slides; "
                        "napari and the OME tools read it)")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="slides processed at once, each in its own process (default: one "
                        "per CPU core; 1: in this process)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing Dask distributed cluster instead, e.g. "
                        "tcp://10.0.0.5:8786 (slides, checkpoint and --out must be on a file "
                        "system the workers share)")
    p.add_argument("--no-patterns", dest="patterns", action="store_false",
                   help="leave the pattern columns out of the cell tables")
    p.add_argument("--patterns-from", default="", metavar="FILE",
                   help="name the cells' patterns with the pattern classifier of this run "
                        "(trained with --teacher classifier) instead of the checkpoint's own; "
                        "for a checkpoint trained with the mask teacher, whose "
                        "discriminator names patterns poorly")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; 0 on success, 2 for a user mistake, 130 when interrupted."""
    from .._checkpoint_file import CheckpointError  # no torch to report a mistake
    from ..events import Stopped

    try:
        return _run(args)
    except (Stopped, KeyboardInterrupt):
        return report_interrupted("attention")
    except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
        return report_user_error("attention", exc)


# ---------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from ..slides.archive import ArchiveOptions, find_slides

    _check_args(args)
    slides = find_slides(args.image)
    options = ArchiveOptions(
        checkpoint=args.checkpoint, out_dir=args.out, diameter=args.diameter,
        threshold=args.threshold, outline=args.outline, find=args.find, cut=args.cut,
        min_size=args.min_size,
        device=args.device, tile_size=args.tile_size, channel=channel_option(args),
        zarr=args.zarr, overwrite=args.overwrite, patterns=args.patterns,
        background=args.background, patterns_from=args.patterns_from)
    if args.patterns_from and not args.patterns:
        raise ValueError("--patterns-from names the cells' patterns: leave out --no-patterns")
    if args.patterns_from:
        from ..slides.archive import pattern_namer

        pattern_namer(args.patterns_from)  # before the first slide (and kept for them)
    if Path(args.image).is_file():
        return _one_slide(slides[0], options)
    return _many_slides(slides, options, args.workers, args.scheduler)


def _one_slide(path: Path, options: Any) -> int:
    """One slide, in this process, with a progress bar over its tiles."""
    from ..slides.archive import SLIDES_CSV, completed_row, is_complete, process_slide, write_slides_csv
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(options.checkpoint)  # a bad checkpoint is the run's mistake
    if not options.overwrite and is_complete(path, options):
        row = completed_row(path, options)
        print(f"{path.name}: outputs complete in {options.out_dir}, skipped (--overwrite "
              "redoes them)", file=sys.stderr)
        write_slides_csv(Path(options.out_dir) / SLIDES_CSV, [row])
        print(json.dumps({"skipped": str(path), "cells": row["cells"]}, indent=2))
        return 0
    bar = TextProgress("attention")
    try:
        row = process_slide(path, options, ckpt, progress=bar)
    finally:
        bar.close()
    public = {k: v for k, v in row.items() if not k.startswith("_")}
    write_slides_csv(Path(options.out_dir) / SLIDES_CSV, [public])
    files = row["_files"]
    summary = {
        **{k: files[k] for k in ("attention", "labels", "zarr") if k in files},
        "table": files["cells"],
        "cells": row["cells"],
        "outline": row["_outline"],
        **({"find": row["_find"]} if row["_outline"] == "image" else {}),
        "cut": row["_cut"],
        "cell_diameter": row["cell_diameter"],
        **row["_channel"],
    }
    if row["pattern"]:
        summary.update(pattern=row["pattern"], confidence=round(row["confidence"], 3),
                       pattern_source=row["pattern_source"])
    summary.update(seconds=round(row["seconds"], 2), megapixels_per_s=row["_megapixels_per_s"])
    print(json.dumps(summary, indent=2))
    return 0


def _many_slides(slides: list[Path], options: Any, workers: int | None,
                 scheduler: str | None) -> int:
    """Every slide, one progress line over them; failures said and counted, not fatal."""
    from ..slides.archive import ArchiveDone, SlideResult, run_archive
    from .._checkpoint_file import check_checkpoint

    # A bad checkpoint is the run's mistake, not each slide's. Checked from its bytes: the
    # worker processes open it with torch, and importing torch here first cost the run
    # seconds before any worker started.
    check_checkpoint(options.checkpoint)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a clean stop, like Ctrl-C
    bar = TextProgress("slides")
    done = None
    try:
        for event in run_archive(slides, options, workers=workers, scheduler=scheduler,
                                 stop=stop):
            if isinstance(event, SlideResult):
                if event.status == "failed":
                    bar.close()
                    print(f"{event.path}: {event.row['error']}", file=sys.stderr)
                bar(event.index, event.total)
            elif isinstance(event, ArchiveDone):
                done = event
    except KeyboardInterrupt:
        stop.set()
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, previous)
    if done is None or done.stopped:
        left = "" if done is None else f" ({done.counts['left']} slides left for a rerun)"
        print(f"napari-atagan attention: stopped{left}", file=sys.stderr)
        return 130
    n = len(slides)
    print(json.dumps({
        "slides": n,
        **done.counts,
        "cells": int(sum(r["cells"] or 0 for r in done.rows if r["status"] != "failed")),
        "slides_csv": str(done.slides_csv),
        "seconds": round(done.seconds, 2),
        "slides_per_s": round(n / max(done.seconds, 1e-9), 2),
    }, indent=2))
    return EXIT_SOME_FAILED if done.counts["failed"] else 0


def _check_args(args: argparse.Namespace) -> None:
    if args.tile_size is not None and args.tile_size < 16:
        raise ValueError(f"--tile-size must be at least 16 pixels, got {args.tile_size}")
    if args.min_size is not None and args.min_size < 0:
        raise ValueError(f"--min-size must be >= 0 pixels, got {args.min_size}")
    if args.outline == "map" and args.find != "both":
        raise ValueError(f"--find {args.find} chooses the map that seeds the slide's own "
                         "outlines: it needs --outline image (--outline map cuts the cells "
                         "from the attention map itself)")
    check_out_folder(args.out)


def open_image(path: Path) -> Any:
    """Open a slide without reading it into memory where the format allows it.

    Uncompressed TIFF and ``.npy`` files are memory-mapped; other TIFFs and PNGs
    are read whole. Leading axes of length 1 are dropped. An unreadable file
    (empty, damaged, truncated) raises ``ValueError`` naming it. See
    :func:`napari_atagan.channels.open_image_file`, which also says which axis
    is which.
    """
    from ..channels import open_image_file

    return open_image_file(path).data
