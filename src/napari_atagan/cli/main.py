"""The ``napari-atagan`` command line (also ``python -m napari_atagan``).

Every subcommand is a thin front end over the engine: it parses options,
drives an engine function or generator, prints progress on stderr and
results on stdout. User mistakes end with a one-line message on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..gan.config import quick_config_changes
from .common import (
    DEVICE_CHOICES,
    EXIT_STOPPED,
    non_negative_float,
    positive_int,
    follow_training,
    progress_bar,
    report_user_error,
)


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


# --------------------------------------------------------------------------- helpers
def has_display() -> bool:
    """True where a napari window can open (a desktop, or an X/Wayland display)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# --------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train an ATA-GAN on a folder of cell crops",
        description=(
            "Train an attention-aware GAN on cell crops. DIR holds one sub-folder per "
            "staining pattern (or images directly), each image NNNNN.png with an optional "
            "NNNNN_Mask.png. Writes OUT/checkpoint.safetensors (every --checkpoint-every "
            "steps and at the end) and OUT/summary.json."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="folder of cell crops")
    p.add_argument("--out", default="runs/atagan", metavar="DIR",
                   help="output folder for checkpoints and the summary (default: %(default)s)")
    p.add_argument("--teacher", choices=("classifier", "mask", "none"), default=None,
                   help="attention target: a pattern classifier trained on the crops, the "
                        "smoothed cell masks, or none (plain GAN). Default: mask when masks "
                        "exist, else classifier when there are >= 2 patterns, else none")
    p.add_argument("--beta", type=non_negative_float, default=None,
                   help="weight of the attention-transfer loss (default: from the config, 1.0)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, default=None,
                        help="training steps (default 4000)")
    length.add_argument("--epochs", type=non_negative_float, default=None,
                        help="training length in passes over the data (converted to steps)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="cells per step (128)")
    p.add_argument("--lr", type=non_negative_float, default=None,
                   help="learning rate of both networks (2e-4)")
    p.add_argument("--image-size", type=int, choices=(32, 64, 128), default=64,
                   help="model crop size in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to train (default: %(default)s = cuda > mps > cpu)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="steps between checkpoints (500)")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast configuration for a laptop CPU (a first look in minutes)")
    p.add_argument("--compile", action="store_true", help="use torch.compile (GPU)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="options",
                   help="any other training option, value in JSON, e.g. --set aug_p=0.5 "
                        "--set d_channels=[32,64,128,256] (repeatable; applied last; the "
                        "options are the fields of napari_atagan.gan.config.TrainConfig)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue an earlier run from its checkpoint (same data)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from ..gan.config import TrainConfig, generator_channels
    from ..data import load_folder
    from ..gan.training import train

    t0 = time.perf_counter()
    data = load_folder(args.data, image_size=args.image_size)
    print(f"read {data.n} cells from {args.data} in {time.perf_counter() - t0:.1f} s "
          f"({len(data.class_names) or 'no'} patterns, masks: {'yes' if data.has_masks else 'no'})",
          file=sys.stderr)
    teacher = args.teacher or (
        "mask" if data.has_masks else "classifier" if len(data.class_names) >= 2 else "none")
    changes: dict = {"teacher": teacher, "seed": args.seed, "device": args.device,
                     "compile": args.compile}
    if args.quick:
        changes.update(quick_config_changes())
    base = TrainConfig()
    g = generator_channels(args.image_size, changes.get("g_channels", base.g_channels))
    changes.update(image_size=args.image_size, g_channels=g)
    for opt, field_name in (("beta", "beta"), ("steps", "steps"),
                            ("batch_size", "batch_size"),
                            ("checkpoint_every", "checkpoint_every")):
        if getattr(args, opt) is not None:
            changes[field_name] = getattr(args, opt)
    if args.lr is not None:
        changes.update(lr_g=args.lr, lr_d=args.lr)
    if args.epochs is not None:
        bs = changes.get("batch_size", base.batch_size)
        changes["steps"] = max(1, math.ceil(args.epochs * data.n / bs))
    for text in args.options:
        try:
            name, value = TrainConfig.parse_option(text)
        except ValueError as err:
            raise UserError(f"--set {text}: {err}") from None
        changes[name] = value
    changes["extra"] = {"command": " ".join(["napari-atagan", *sys.argv[1:]])}
    config = base.replace(**changes)

    result = follow_training(train(config, data, args.out, resume=args.resume), config.steps,
                             "train")
    summary = dict(result.summary)
    summary.pop("history", None)
    summary["checkpoint"] = str(result.checkpoint)
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------- synth
def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic cells with attention masks",
        description=(
            "Generate N cells from a checkpoint, with the discriminator's attention map "
            "and a mask for each, and write them as a folder in the training layout "
            "(<pattern>/NNNNN.png + NNNNN_Mask.png, cells.csv) that `train` reads back."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a trained checkpoint")
    p.add_argument("-n", "--number", type=positive_int, default=100, dest="n",
                   help="number of cells (default: %(default)s)")
    p.add_argument("--pattern", default=None,
                   help="staining pattern of all cells (a name the checkpoint knows); "
                        "default: patterns drawn at random")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to run (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=1024,
                   help="cells per batch (default: %(default)s)")
    p.set_defaults(run=_run_synth)


def _run_synth(args) -> int:
    from ..gan.synthesis import generate, write_dataset

    t0 = time.perf_counter()
    bar = None  # shown with the first batch: a refused checkpoint or pattern is only its error

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(total, "synth")
        bar.update(done - bar.n)

    try:
        syn = generate(args.checkpoint, args.n, pattern=args.pattern, seed=args.seed,
                       device=args.device, batch_size=args.batch_size, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    out = write_dataset(syn, args.out)
    counts: dict[str, int] = {}
    for p in syn.patterns:
        counts[p or "(none)"] = counts.get(p or "(none)", 0) + 1
    print(json.dumps({"out": str(out), "cells": args.n, "patterns": counts,
                      "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return 0


# --------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a small model file for sharing (no optimizer state)",
        description=(
            "Write a small checkpoint with the averaged generator, the discriminator and "
            "all metadata, for synthesis and slide attention. It cannot resume training."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a training checkpoint")
    p.add_argument("--out", required=True, metavar="FILE", help="the model file to write")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from ..checkpoint import export_model

    path = export_model(args.checkpoint, args.out)
    print(json.dumps({"model": str(path), "bytes": path.stat().st_size}, indent=2))
    return 0


# --------------------------------------------------------------------------- probe
def _add_probe(sub) -> None:
    p = sub.add_parser(
        "probe",
        help="fit the discriminator's pattern probe, so a run names cells' patterns",
        description=(
            "A run without a classifier teacher (taught by masks, the default when cells "
            "come with masks) names a cell's pattern by a linear probe on its "
            "discriminator's features, fitted at every checkpoint. This fits one for a "
            "file saved without (or again, on other labelled cells) and writes the file "
            "again with it; nothing else in the file changes."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint or exported model")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="labelled cells: one sub-folder per pattern, named as the run names them")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write here (default: over --checkpoint, atomically)")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    p.set_defaults(run=_run_probe)


def _run_probe(args) -> int:
    from ..checkpoint import load_checkpoint
    from ..data import load_folder
    from ..gan.probe import probe_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    data = load_folder(args.data, image_size=int(ckpt.config.image_size))
    path, info = probe_checkpoint(ckpt, data, destination=args.out, device=args.device)
    print(json.dumps({"checkpoint": str(path), "class_names": ckpt.class_names, **info}, indent=2))
    return 0


# --------------------------------------------------------------------------- simulate
def _add_simulate(sub) -> None:
    from ..simulate import EXTRA_PATTERNS, PATTERNS

    p = sub.add_parser(
        "simulate",
        help="simulated IIF HEp-2 cells and slides with exact ground truth",
        description=(
            "Write simulated IIF HEp-2 data: the shipped sample data (--sample-data DIR), "
            "N single-cell crops in the training layout (--crops N --out DIR), or N slides "
            "with their nucleus labels (--slides N --out DIR: slide_000.tif + "
            "slide_000_labels.tif, ...). --realistic adds what real slides have: touching "
            "and overlapping cells, cytoplasmic glow, bright mitotic cells, vignetting, a "
            "background offset, camera noise and out-of-focus cells."
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sample-data", metavar="DIR",
                      help="(re)generate the sample data files into DIR")
    what.add_argument("--crops", type=positive_int, metavar="N",
                      help="number of single-cell crops to write (with --out)")
    what.add_argument("--slides", type=positive_int, metavar="N",
                      help="number of slides to write (with --out); slide k uses seed + k")
    p.add_argument("--out", metavar="DIR", help="output folder for --crops and --slides")
    p.add_argument("--size", type=positive_int, nargs="+", metavar="PX", default=None,
                   help="crop side (default: 64), or slide height and width "
                        "(default: 1024 1024; one number for a square slide)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8,
                   help="bits per pixel (default: %(default)s; RGB is always 8)")
    p.add_argument("--realistic", action="store_true",
                   help="crowded, touching cells, glow, mitoses, uneven illumination and "
                        "camera noise, with random amounts per slide (per crop for --crops)")
    p.add_argument("--rgb", action="store_true",
                   help="8-bit RGB images with the stain in the green channel")
    p.add_argument("--patterns", nargs="+", choices=PATTERNS + EXTRA_PATTERNS, default=None,
                   metavar="NAME",
                   help="staining patterns to draw, in turn (default: all six: "
                        f"{', '.join(PATTERNS)}); one name gives a slide of one pattern, as "
                        f"from one patient's serum; also {', '.join(EXTRA_PATTERNS)}, which no "
                        "model here is trained on (its labels are the whole stained cell)")
    p.add_argument("--cells", type=positive_int, default=60, metavar="N",
                   help="cells per slide (--slides; default: %(default)s)")
    p.add_argument("--diameter", type=float, default=None, metavar="D",
                   help="mean nucleus diameter in pixels (--slides; default: 40), or the whole "
                        "cell's for Cytoplasmic")
    p.set_defaults(run=_run_simulate)


def _run_simulate(args) -> int:
    from ..simulate import PATTERNS, make_sample_data, simulate_crops, simulate_slide, write_crops_folder, write_slide

    if args.sample_data:
        given = [name for name, on in (("--realistic", args.realistic), ("--rgb", args.rgb)) if on]
        if given:
            raise UserError(f"--sample-data always writes the same files: leave out {' '.join(given)}")
        files = make_sample_data(args.sample_data)
        print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
        return 0
    kind = "--crops" if args.crops else "--slides"
    if not args.out:
        raise UserError(f"{kind} needs --out DIR")
    if args.rgb and args.bit_depth != 8:
        raise UserError("--rgb writes 8-bit RGB images: leave out --bit-depth 16")
    patterns = tuple(args.patterns) if args.patterns else PATTERNS
    realism = dict(realistic=args.realistic, rgb=args.rgb)
    if args.crops:
        if args.diameter is not None:
            raise UserError("--diameter belongs to --slides: crop cells are 60-76 % of --size wide")
        if args.size is not None and len(args.size) != 1:
            raise UserError(f"--crops takes one --size (the crop side), got {len(args.size)} numbers")
        size = args.size[0] if args.size else 64
        crops = simulate_crops(args.crops, size=size, seed=args.seed, bit_depth=args.bit_depth,
                               patterns=patterns, **realism)
        out = write_crops_folder(crops, args.out)
        print(json.dumps({"out": str(out), "cells": int(len(crops.images))}, indent=2))
        return 0
    if args.size is not None and len(args.size) > 2:
        raise UserError(f"--slides takes --size H W (or one number), got {len(args.size)} numbers")
    shape = (1024, 1024) if args.size is None else (args.size[0], args.size[-1])
    diameter = 40.0 if args.diameter is None else args.diameter
    written = []
    for k in range(args.slides):
        slide = simulate_slide(shape, n_cells=args.cells, cell_diameter=diameter, patterns=patterns,
                               seed=args.seed + k, bit_depth=args.bit_depth, **realism)
        image, labels = write_slide(slide, args.out, f"slide_{k:03d}")
        written.append({"image": str(image), "labels": str(labels), "cells": len(slide.patterns),
                        "mitotic": int(sum(slide.mitotic)),
                        "cell_diameter": round(slide.cell_diameter, 2), "seed": args.seed + k})
        print(f"{image}  {len(slide.patterns)} cells, diameter {slide.cell_diameter:.1f} px",
              file=sys.stderr)
    print(json.dumps(written, indent=2))
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on the shipped sample data",
        description=(
            "Run the shipped default model over the simulated IIF HEp-2 sample slide "
            "(attention overlay, cell labels scored against the ground truth beside the "
            "Otsu baseline) and synthesize cells of every pattern. With a display the "
            "results open in napari with the three widgets docked; without one (or with "
            "--headless) they are written to --out as TIFF/PNG files and summary.json."
        ),
    )
    p.add_argument("--model", metavar="FILE", default=None,
                   help="a checkpoint to use instead of the shipped default model")
    p.add_argument("--out", default="out", metavar="DIR",
                   help="output folder for the headless run (default: %(default)s)")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(Path(args.out), headless=args.headless or not has_display(),
                    model=Path(args.model) if args.model else None)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-atagan",
        description="Attention-aware GANs (ATA-GAN) for fluorescence microscopy.",
    )
    parser.add_argument("--version", action="version", version=f"napari-atagan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_synth(sub)
    from .attention import register as _add_attention
    from .evaluate import register as _add_evaluate
    from .translate import register as _add_translate

    _add_attention(sub)
    _add_evaluate(sub)
    _add_translate(sub)
    _add_export(sub)
    _add_probe(sub)
    _add_simulate(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .._checkpoint_file import CheckpointError  # torch-free: every command passes here

    try:
        with _plain_warnings(args.command):
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_STOPPED
    except (UserError, CheckpointError, ValueError, FileNotFoundError, NotADirectoryError,
            RuntimeError) as exc:
        return report_user_error(args.command, exc)


@contextlib.contextmanager
def _plain_warnings(command: str):
    """This package's warnings as one line a user reads (``napari-atagan train: warning:
    ...``), not Python's with a file name and a line of source; others as Python shows them."""
    package = str(Path(__file__).resolve().parents[1])
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if str(Path(filename).resolve()).startswith(package):
                print(f"napari-atagan {command}: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
