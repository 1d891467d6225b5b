"""``napari-atagan attention``: attention map and cell labels of a whole slide.

::

    napari-atagan attention --checkpoint run.safetensors --image slide.tif \\
        --diameter 40 --out results/ [--threshold otsu|VALUE] [--min-size N] \\
        [--device auto] [--tile-size N] [--channel N | --grey]

writes ``results/slide_attention.tif`` (float32) and ``results/slide_labels.tif``
(uint16 cell ids), both ImageJ TIFFs carrying how they were made, and prints a
JSON summary (cells found, seconds, megapixels per second) on stdout. Progress
goes to stderr. A 3-D TIFF is treated as a stack of planes, unless its last axis
is colour (RGB/RGBA) or the file says that its first axis holds channels: then
the stained channel is used (see :mod:`napari_atagan.channels`), or the one
``--channel`` names, and the summary and the TIFFs say which.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_common import (
    CHANNEL_HELP,
    DEVICE_CHOICES,
    THRESHOLD_HELP,
    channel_option,
    check_file,
    check_out_folder,
    diameter_or_auto,
    non_negative_int,
    read_slide,
    report_interrupted,
    report_user_error,
    threshold_choice,
)

_MEMMAP_PIXELS = 1 << 27
"""Attention maps larger than this (512 MB of float32) are staged in a file, not in RAM."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``attention`` subcommand to an argparse sub-parser set."""
    p = subparsers.add_parser(
        "attention",
        help="attention map and cell labels of a whole slide",
        description=(
            "Run a trained discriminator over a whole slide (no sliding window, tiled to "
            "bound memory), and write its attention map and the cells found in it as "
            "ImageJ TIFFs: <stem>_attention.tif and <stem>_labels.tif in --out."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a trained checkpoint")
    p.add_argument("--image", required=True, metavar="FILE",
                   help="the slide: TIFF (2-D, a 3-D stack, colour or multi-channel), PNG "
                        "or .npy")
    p.add_argument("--diameter", required=True, type=diameter_or_auto, metavar="PIXELS",
                   help="typical cell diameter in the slide, in pixels, or 'auto' to estimate it")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--threshold", type=threshold_choice, default="local", help=THRESHOLD_HELP)
    p.add_argument("--outline", choices=("image", "map"), default="image",
                   help="'image' (default): the map finds and seeds the cells, the slide's own "
                        "edges outline them and split touching ones; 'map': cells cut from the "
                        "attention map alone")
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
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; 0 on success, 2 for a user mistake, 130 when interrupted."""
    from .checkpoint import CheckpointError
    from .slide import Stopped

    try:
        return _run(args)
    except (Stopped, KeyboardInterrupt):
        return report_interrupted("attention")
    except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
        return report_user_error("attention", exc)


# ---------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from . import __version__
    from .checkpoint import load_checkpoint
    from .export import read_tiff_metadata, save_attention_tiff, save_labels_tiff
    from .labels import effective_min_size, min_cell_size
    from .slide import (
        default_tile_size,
        estimate_cell_diameter,
        model_cell_diameter,
        slide_attention,
        slide_attention_stack,
    )

    _check_args(args)
    out_dir = Path(args.out)
    image_path = Path(args.image)
    image, channel_info = read_slide(image_path, channel_option(args))
    rgb = None  # colour is already resolved into one channel (or the luminance)
    stack = _is_stack(image.shape)
    ckpt = load_checkpoint(args.checkpoint)
    diameter = args.diameter
    if diameter == "auto":
        diameter = estimate_cell_diameter(image[0] if stack else image, rgb=rgb)
        print(f"estimated cell diameter: {diameter:.1f} px", file=sys.stderr)
    min_size = args.min_size if args.min_size is not None else min_cell_size(diameter)
    tile_size = args.tile_size or default_tile_size(args.device)
    out_dir.mkdir(parents=True, exist_ok=True)

    shape = tuple(image.shape[:3] if stack else image.shape[:2])
    bar = _TextProgress("attention")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".attention-") as scratch:
        out = _allocate(shape, Path(scratch))
        compute = slide_attention_stack if stack else slide_attention
        try:
            attention = compute(ckpt, image, cell_diameter=diameter, tile_size=tile_size,
                                device=args.device, progress=bar, out=out, rgb=rgb)
        finally:
            bar.close()
        seconds_map = time.perf_counter() - t0
        labels, outline = _labels(attention, image, Path(scratch), args.outline,
                                  threshold=args.threshold, min_size=min_size,
                                  cell_diameter=diameter)
        metadata = {
            "checkpoint": Path(args.checkpoint).name,
            "checkpoint_format_version": ckpt.metadata.get("format_version"),
            "image": image_path.name,
            "cell_diameter": float(diameter),
            "model_cell_diameter": model_cell_diameter(ckpt),
            "threshold": args.threshold,
            "outline": outline,
            "min_size": int(min_size),
            # the labelling never keeps objects under the cell-area floor
            "min_size_in_effect": effective_min_size(min_size, diameter),
            "tile_size": int(tile_size),
            "software_version": __version__,
        }
        metadata.update(channel_info)
        stem = image_path.stem
        att_path = save_attention_tiff(out_dir / f"{stem}_attention.tif", attention,
                                       metadata=metadata)
        lab_path = save_labels_tiff(out_dir / f"{stem}_labels.tif", labels, metadata=metadata)
        n_cells = int(read_tiff_metadata(lab_path)["max_label"])  # not the whole array again
        del attention, out, labels
    seconds = time.perf_counter() - t0
    n_pixels = int(np.prod(shape))
    print(json.dumps({
        "attention": str(att_path),
        "labels": str(lab_path),
        "cells": n_cells,
        "outline": outline,
        "cell_diameter": round(float(diameter), 2),
        **channel_info,
        "seconds": round(seconds, 2),
        "megapixels_per_s": round(n_pixels / 1e6 / max(seconds_map, 1e-9), 2),
    }, indent=2))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.tile_size is not None and args.tile_size < 16:
        raise ValueError(f"--tile-size must be at least 16 pixels, got {args.tile_size}")
    if args.min_size is not None and args.min_size < 0:
        raise ValueError(f"--min-size must be >= 0 pixels, got {args.min_size}")
    check_file(args.image, "image")
    check_out_folder(args.out)


def _is_stack(shape: tuple[int, ...]) -> bool:
    """Is the grey image that :func:`read_slide` returns a ``(T, Y, X)`` stack?"""
    return len(shape) == 3


def _allocate(shape: tuple[int, ...], scratch: Path) -> np.ndarray | None:
    """A file-backed float32 memmap for a large map; ``None`` lets the engine allocate
    a smaller one (in page-locked memory on CUDA, which the GPU fills fastest)."""
    if int(np.prod(shape)) <= _MEMMAP_PIXELS:
        return None
    return np.lib.format.open_memmap(scratch / "attention.npy", mode="w+", dtype=np.float32,
                                     shape=shape)


def _labels(attention: np.ndarray, image: Any, scratch: Path, outline: str,
            **options: Any) -> tuple[np.ndarray, str]:
    """Cell labels of the map (:func:`napari_atagan.segment.label_cells`) and what
    outlined them. A map too large for memory is labelled from the map alone,
    tile by tile into a file, and the returned outline says so."""
    from .labels import attention_to_labels_tiled
    from .segment import label_cells

    if int(np.prod(attention.shape)) > _MEMMAP_PIXELS:
        out = np.lib.format.open_memmap(scratch / "labels.npy", mode="w+", dtype=np.uint32,
                                        shape=tuple(attention.shape))
        used = "map" if outline == "map" else "map (the slide is too large to outline from)"
        return attention_to_labels_tiled(attention, out=out, **options), used
    return label_cells(np.asarray(attention), image, outline=outline, **options), outline


def open_image(path: Path) -> Any:
    """Open a slide without reading it into memory where the format allows it.

    Uncompressed TIFF and ``.npy`` files are memory-mapped; other TIFFs and PNGs
    are read whole. Leading axes of length 1 are dropped. An unreadable file
    (empty, damaged, truncated) raises ``ValueError`` naming it. See
    :func:`napari_atagan.channels.open_image_file`, which also says which axis
    is which.
    """
    from .channels import open_image_file

    return open_image_file(path).data


class _TextProgress:
    """``label  37/120 (31%)`` on stderr, rewritten in place; quiet when not a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = -1.0
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if not self.tty and done < total:
            return
        if done < total and pct - self.last < 1.0:
            return
        self.last = pct
        print(f"\r{self.label} {done}/{total} ({pct:.0f}%)", end="", file=sys.stderr,
              flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)
            self.shown = False
