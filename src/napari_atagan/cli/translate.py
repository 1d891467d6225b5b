"""``napari-atagan translate``: attention-guided translation of cells (UAG-GAN).

::

    napari-atagan translate train --a dim/ --b bright/ --out runs/dim2bright \\
        [--steps N] [--quick] [--set NAME=VALUE ...] [--no-attention] \\
        [--mask-weight W] [--grey-levels shared|own|target] [--resume CHECKPOINT] \\
        [--device auto] [--seed N]
    napari-atagan translate apply --checkpoint runs/dim2bright/checkpoint.safetensors \\
        --image slide.tif --out results/ [--direction a2b|b2a] [--diameter PX|auto] \\
        [--channel N | --grey] [--composite soft|hard] [--tile-size N] [--device auto]

``train`` learns to translate cells of folder A into cells of folder B and
back (:func:`napari_atagan.translate.train_translation`); progress goes to
stderr, the final checkpoint's path to stdout. Ctrl-C or SIGTERM stops after
the current step and leaves a complete checkpoint to ``--resume`` (exit 130).

``apply`` translates one image, a crop or a whole slide, tile by tile
(:func:`napari_atagan.translate.translate_image`), and writes
``<stem>_translated.tif`` (the image's dtype and grey levels) and
``<stem>_translation_attention.tif`` (float32 in [0, 1]) into ``--out``, each
atomically; their paths go to stdout. Nothing is written when it fails.

User mistakes end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    CHANNEL_HELP,
    DEVICE_CHOICES,
    EXIT_STOPPED,
    channel_option,
    check_file,
    check_out_folder,
    diameter_or_auto,
    follow_training,
    non_negative_float,
    non_negative_int,
    positive_int,
    read_slide,
    report_interrupted,
    report_user_error,
    stop_on_signals,
)

TRANSLATED_SUFFIX = "_translated.tif"
ATTENTION_SUFFIX = "_translation_attention.tif"
MIN_TILE = 16
_LOSSES = {"d": "d", "g": "g", "cycle": "cycle", "attention_a": "att_a", "attention_b": "att_b"}
"""Losses shown on the progress line, and their short names."""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``translate`` subcommand (``train`` and ``apply``) to a sub-parser set."""
    p = subparsers.add_parser(
        "translate",
        help="attention-guided translation of cells between two domains (UAG-GAN)",
        description=(
            "Translate cells of one kind (domain A, e.g. dim stainings) into another "
            "(domain B, e.g. bright ones) and back, changing only the cells: an attention "
            "network decides where, so the background stays as it was. 'train' learns "
            "from two folders of cell crops that need not be paired; 'apply' translates "
            "a crop or a whole slide."
        ),
    )
    sub = p.add_subparsers(dest="translate_command", metavar="ACTION", required=True)
    _add_train(sub)
    _add_apply(sub)
    return p


# --------------------------------------------------------------------------- train
def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a translator between two folders of cell crops",
        description=(
            "Train an attention-guided translator between the cell crops of two folders. "
            "Each holds one sub-folder per staining pattern (or the images directly), "
            "each image NNNNN.png with an optional mask NNNNN_Mask.png. Writes "
            "RUN/checkpoint.safetensors (every checkpoint_every steps and at the end) and "
            "RUN/summary.json, and prints the checkpoint's path. Ctrl-C stops after the "
            "current step with a complete checkpoint that --resume continues."
        ),
    )
    p.add_argument("--a", required=True, metavar="DIR", help="cell crops of domain A")
    p.add_argument("--b", required=True, metavar="DIR", help="cell crops of domain B")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="output folder for the checkpoint and summary.json (created)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="training steps in all (default 10000, with --quick 2000; with "
                        "--resume: the run's own)")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast model for a laptop CPU (a first look in minutes)")
    p.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                   help="attention-guided translation (default); --no-attention trains the "
                        "plain CycleGAN baseline, which translates the whole image")
    p.add_argument("--mask-weight", type=non_negative_float, default=None, metavar="W",
                   help="teach the attention with the crops' cell masks, at this weight "
                        "(e.g. 1; default 0: the attention learns without them)")
    p.add_argument("--grey-levels", choices=("shared", "own", "target"), default=None,
                   help="shared (default): one grey scale for both domains, so brightness is "
                        "translated too (dim -> bright); own: every crop and image on its own "
                        "levels, brightness kept, only the stain's pattern translated (a "
                        "pattern pair, specimens of different brightness); target: trained "
                        "as own, the translated cells given the target domain's grey range "
                        "(dim -> bright on specimens dimmer than the training ones)")
    p.add_argument("--seed", type=non_negative_int, default=None, metavar="N",
                   help="random seed (default: 0)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to train (default: %(default)s = cuda > mps > cpu)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="options",
                   help="any other training option, value in JSON, e.g. --set batch_size=4 "
                        "--set widths=[16,32,64] (repeatable; applied last; the options are "
                        "the fields of napari_atagan.translate.TranslateConfig)")
    p.add_argument("--resume", metavar="CHECKPOINT", default=None,
                   help="continue an earlier run from its checkpoint (same data; the run "
                        "keeps its settings, --steps gives the new total)")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Execute ``translate train``: 0 done, 2 a user mistake, 130 stopped."""
    from .._checkpoint_file import CheckpointError

    try:
        return _train(args)
    except KeyboardInterrupt:
        return report_interrupted("translate train")
    except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
        return report_user_error("translate train", exc)


def _train(args: argparse.Namespace) -> int:
    from ..translate import train_translation

    check_out_folder(args.out)
    config, start = train_config(args)
    stop = threading.Event()
    events = train_translation(config, args.a, args.b, args.out, resume=args.resume, stop=stop)
    with stop_on_signals(stop, "stopping after the current step"):
        result = follow_training(events, config.steps, "translate", start=start,
                                 losses=_LOSSES)
    summary = result.summary
    if result.stopped:
        print(f"stopped at step {summary['steps']} of {summary['target_steps']}: the "
              f"checkpoint is complete; continue with --resume {result.checkpoint}",
              file=sys.stderr)
    else:
        losses = ", ".join(f"{_LOSSES[k]} {v:.3f}"
                           for k, v in summary.get("final_losses", {}).items() if k in _LOSSES)
        print(f"done: {summary['steps']} steps in {summary['seconds']:.1f} s "
              f"({summary['images_per_s']:.1f} img/s){'; ' + losses if losses else ''}; "
              f"summary: {Path(args.out) / 'summary.json'}", file=sys.stderr)
    print(result.checkpoint)
    return EXIT_STOPPED if result.stopped else 0


def train_config(args: argparse.Namespace) -> tuple[Any, int]:
    """The :class:`~napari_atagan.translate.TranslateConfig` the options ask for, and the
    step a resumed run starts from (0 for a new run).

    A resumed run keeps the settings of its checkpoint except how long and where it
    runs and how often it reports (``RUNTIME_FIELDS``); other options are said to be
    ignored on stderr. Raises ``ValueError`` for a bad ``--set`` or value.
    """
    from ..checkpoint import load_checkpoint
    from ..translate import RUNTIME_FIELDS, TranslateConfig

    changes: dict[str, Any] = {"device": args.device}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.attention is not None:
        changes["attention"] = args.attention
    if args.mask_weight is not None:
        changes["mask_weight"] = args.mask_weight
    if args.grey_levels is not None:
        changes["grey_levels"] = args.grey_levels
    if args.seed is not None:
        changes["seed"] = args.seed
    for text in args.options:
        try:
            name, value = TranslateConfig.parse_option(text)
        except ValueError as err:
            raise ValueError(f"--set {text}: {err}") from None
        changes[name] = value
    start = 0
    if args.resume is not None:
        check_file(args.resume, "--resume")
        resumed = load_checkpoint(args.resume, family=TranslateConfig.FAMILY)
        base, start = resumed.config, int(resumed.step)
        ignored = [name for name in changes if name not in RUNTIME_FIELDS]
        if args.quick:
            ignored.insert(0, "--quick")
        if ignored:
            print(f"--resume: the run keeps its own settings; ignored: {', '.join(ignored)}",
                  file=sys.stderr)
        changes = {k: v for k, v in changes.items() if k in RUNTIME_FIELDS}
    else:
        base = TranslateConfig.quick() if args.quick else TranslateConfig()
        changes["extra"] = {"command": command_line(args)}
    return base.replace(**changes), start


def command_line(args: argparse.Namespace) -> str:
    """The ``translate train`` command line that gives this run, quoted for a shell."""
    parts = ["napari-atagan", "translate", "train", "--a", str(args.a), "--b", str(args.b),
             "--out", str(args.out)]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    if args.quick:
        parts.append("--quick")
    if args.attention is not None:
        parts.append("--attention" if args.attention else "--no-attention")
    if args.mask_weight is not None:
        parts += ["--mask-weight", f"{args.mask_weight:g}"]
    if args.grey_levels is not None:
        parts += ["--grey-levels", args.grey_levels]
    if args.seed is not None:
        parts += ["--seed", str(args.seed)]
    if args.device != "auto":
        parts += ["--device", args.device]
    for text in args.options:
        parts += ["--set", text]
    if args.resume is not None:
        parts += ["--resume", str(args.resume)]
    return shlex.join(parts)


# --------------------------------------------------------------------------- apply
def _add_apply(sub: Any) -> None:
    p = sub.add_parser(
        "apply",
        help="translate a cell crop or a whole slide with a trained translator",
        description=(
            "Translate an image of domain A into domain B (or back, --direction b2a), "
            "tile by tile, so slides of any size fit in memory, without seams. Writes "
            "<stem>_translated.tif (the image's dtype and grey levels) and "
            "<stem>_translation_attention.tif (float32 in [0, 1]: where the cells were "
            "changed) into --out, and prints their paths."
        ),
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a translation checkpoint (from 'translate train')")
    p.add_argument("--image", required=True, metavar="FILE",
                   help="the image: TIFF (grey, colour or multi-channel), PNG or .npy")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--direction", choices=("a2b", "b2a"), default="a2b",
                   help="a2b: the image is of domain A (default); b2a: of domain B")
    p.add_argument("--diameter", type=diameter_or_auto, default=None, metavar="PX|auto",
                   help="typical cell diameter in the image, in pixels, so that its cells are "
                        "resized to those of the training crops; 'auto' estimates it. "
                        "Default: the image at its own scale (right for crops like the "
                        "training crops)")
    p.add_argument("--channel", type=non_negative_int, default=None, metavar="N",
                   help=CHANNEL_HELP)
    p.add_argument("--grey", action="store_true",
                   help="use the luminance of a colour (RGB) image instead of its stained "
                        "channel")
    p.add_argument("--composite", choices=("soft", "hard"), default=None,
                   help="soft (the paper's): every pixel blended with its translation by the "
                        "attention; hard: every pixel either translated (attention above 0.5) "
                        "or left as it is. Default: hard for a model trained with "
                        "--grey-levels target, soft otherwise")
    p.add_argument("--tile-size", type=int, default=None, metavar="N",
                   help="tile side at model scale in pixels; smaller needs less memory, the "
                        "result is the same (default: 1024 on a CUDA GPU, 512 elsewhere)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to run (default: %(default)s)")
    p.set_defaults(run=run_apply)


def run_apply(args: argparse.Namespace) -> int:
    """Execute ``translate apply``: 0 done, 2 a user mistake, 130 stopped."""
    from .._checkpoint_file import CheckpointError
    from ..translate import Stopped

    try:
        return _apply(args)
    except (Stopped, KeyboardInterrupt):
        return report_interrupted("translate apply")
    except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
        return report_user_error("translate apply", exc)


def output_paths(image: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """The files ``apply`` writes for ``image``, by kind."""
    stem, out = Path(image).stem, Path(out_dir)
    return {"translated": out / f"{stem}{TRANSLATED_SUFFIX}",
            "attention": out / f"{stem}{ATTENTION_SUFFIX}"}


def _apply(args: argparse.Namespace) -> int:
    from ..slides.attention import estimate_cell_diameter
    from ..translate import load_translator

    t0 = time.perf_counter()
    check_file(args.checkpoint, "--checkpoint")
    check_file(args.image, "--image")
    check_out_folder(args.out)
    if args.tile_size is not None and args.tile_size < MIN_TILE:
        raise ValueError(f"--tile-size must be at least {MIN_TILE} pixels, got {args.tile_size}")
    translator = load_translator(args.checkpoint)
    image, channel_info = read_slide(args.image, channel_option(args))
    src, dst = args.direction[0], args.direction[2]
    diameter, notes = args.diameter, []
    if diameter == "auto":
        if np.ndim(image) != 2:
            raise ValueError(f"--image {args.image!r} has shape {tuple(image.shape)}: "
                             "translate one 2-D image")
        diameter = estimate_cell_diameter(image)
        notes.append(f"estimated cell diameter: {diameter:.1f} px")
    args.composite = args.composite or translator.default_composite
    notes += _plan(args, translator, image, diameter, src, dst)

    out_dir = Path(args.out)
    created = not out_dir.exists()
    files = output_paths(args.image, out_dir)
    stop = threading.Event()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with stop_on_signals(stop, "stopping"):
            translated, attention, seconds = _translate(translator, image, channel_info, args,
                                                        diameter, stop, files, notes)
    except BaseException:
        if created:  # leave nothing behind, not even the folder
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise
    shape = tuple(int(s) for s in np.shape(translated))
    print(f"translated {shape[0]} x {shape[1]} px in {seconds:.1f} s "
          f"({shape[0] * shape[1] / 1e6 / max(seconds, 1e-9):.2f} Mpx/s); "
          f"{time.perf_counter() - t0:.1f} s in all", file=sys.stderr)
    for path in files.values():
        print(path)
    return 0


def _plan(args: argparse.Namespace, translator: Any, image: Any, diameter: Any,
          src: str, dst: str) -> list[str]:
    """What is translated and at which scale, in lines for the user."""
    shape = tuple(int(s) for s in np.shape(image))
    kind = "attention-guided" if translator.attention else "CycleGAN, no attention"
    lines = [f"{Path(args.image).name}: {' x '.join(map(str, shape))} px, "
             f"{np.dtype(image.dtype)}; {translator.domain_name(src)} -> "
             f"{translator.domain_name(dst)} ({kind}, step {translator.step})"]
    trained = translator.cell_diameter(src)
    if diameter is None:
        where = f"; the training cells were {trained:.0f} px across" if trained else ""
        lines.append(f"at the image's own scale (no --diameter){where}")
    else:
        lines.append(f"cells of {float(diameter):.1f} px resized to "
                     f"{translator.model_cell_diameter(src):.1f} px at model scale")
    levels = translator.config.grey_levels
    if levels == "target":
        lines.append(f"grey levels: each neighbourhood its own; translated cells given the "
                     f"grey range of {translator.domain_name(dst)}'s cells "
                     f"({translator.own_span(dst):g} above their background); composite "
                     f"{args.composite}")
    elif levels == "own":
        lines.append("grey levels: each neighbourhood its own (brightness kept)")
    return lines


def _translate(translator: Any, image: Any, channel_info: dict[str, Any],
               args: argparse.Namespace, diameter: Any, stop: threading.Event,
               files: dict[str, Path], notes: list[str]) -> tuple[Any, Any, float]:
    """Translate into scratch memory (files for a huge slide), then write both TIFFs.

    ``notes`` are said once the first tile is done: an image refused (too small,
    NaN, ...) gets only its one-line error."""
    from .. import __version__
    from ..export import save_attention_tiff
    from .._memmap import ScratchFolder, scratch_array
    from ..translate import default_tile_size, nothing_attended, translate_image
    from .common import TextProgress

    t0 = time.perf_counter()
    with ScratchFolder(files["translated"].parent) as scratch:
        shape = tuple(int(s) for s in np.shape(image))
        out = None
        if len(shape) == 2:  # translate_image says what is wrong with other shapes
            out = (scratch_array(shape, scratch, "translated.npy", np.dtype(image.dtype)),
                   scratch_array(shape, scratch, "attention.npy", np.float32))
        bar = TextProgress("translate")

        def progress(done: int, total: int) -> None:
            while notes:
                print(notes.pop(0), file=sys.stderr)
            bar(done, total)

        try:
            translated, attention = translate_image(
                translator, image, direction=args.direction, cell_diameter=diameter,
                tile_size=args.tile_size, device=args.device, progress=progress,
                stop=stop.is_set, out=out, composite=args.composite)
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        metadata = {
            "checkpoint": Path(args.checkpoint).name,
            "checkpoint_format_version": translator.checkpoint.metadata.get("format_version"),
            "checkpoint_step": translator.step,
            "image": Path(args.image).name,
            "direction": args.direction,
            "source_domain": translator.domain_name(args.direction[0]),
            "target_domain": translator.domain_name(args.direction[2]),
            "attention_guided": translator.attention,
            "composite": args.composite,
            "cell_diameter": None if diameter is None else float(diameter),
            "model_cell_diameter": translator.model_cell_diameter(args.direction[0]),
            "tile_size": int(args.tile_size or default_tile_size(args.device)),
            "software_version": __version__,
            **channel_info,
        }
        save_translated_tiff(files["translated"], translated, metadata=metadata)
        try:
            save_attention_tiff(files["attention"], attention,
                                metadata={**metadata, "kind": "translation attention"})
        except BaseException:
            files["translated"].unlink(missing_ok=True)  # both files or neither
            raise
        if args.composite == "hard" and nothing_attended(attention):  # before the scratch goes
            print("note: no pixel's attention is above 0.5, so the hard composite left the "
                  "image as it was; --composite soft blends it by the attention",
                  file=sys.stderr)
        return translated, attention, seconds


def save_translated_tiff(path: str | Path, translated: Any, *,
                         metadata: dict[str, Any] | None = None) -> Path:
    """Write a translation in its own dtype, atomically, with its metadata."""
    from ..export import save_image_tiff

    return save_image_tiff(path, translated, metadata={**(metadata or {}), "kind": "translation"})


# --------------------------------------------------------------------------- stopping
