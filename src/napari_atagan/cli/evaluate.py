"""``napari-atagan evaluate`` and ``napari-atagan mosaic``: scoring a model honestly.

::

    napari-atagan evaluate attention --checkpoint F --crops DIR [--per-pattern] [--limit N]
    napari-atagan evaluate attention --checkpoint F --image slide.tif --labels gt.tif [--diameter D]
                                     [--channel N | --grey]
    napari-atagan evaluate samples --checkpoint F --real DIR [-n N] [--per-pattern]
                                   [--tstr [--tstr-per-pattern N] [--tstr-epochs E]
                                           [--tstr-reference DIR]]
    napari-atagan evaluate augment --checkpoint F --real DIR --test DIR [--counts 25 100 400]
                                   [--generated N] [--epochs E] [--seeds 0 1] [--image-size S]
    napari-atagan mosaic --crops DIR --out DIR [--n-cells N] [--size H W] [--seed S] [--count K]
                         [--touching]

The evaluate commands print a table on stdout (and write every number to
``--json``); ``mosaic`` writes ``mosaic_000.tif`` + ``mosaic_000_labels.tif``, ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from .common import (
    CHANNEL_HELP,
    CUT_HELP,
    DEVICE_CHOICES,
    THRESHOLD_HELP,
    channel_option,
    check_file,
    check_out_folder,
    cut_choice,
    diameter_or_auto,
    non_negative_int,
    positive_int,
    read_slide,
    report_interrupted,
    report_user_error,
    threshold_choice,
)


def register(subparsers: Any) -> list[argparse.ArgumentParser]:
    """Add the ``evaluate`` and ``mosaic`` subcommands to an argparse sub-parser set."""
    return [_add_evaluate(subparsers), _add_mosaic(subparsers)]


def run(args: argparse.Namespace) -> int:
    """Execute a subcommand; 0 on success, 2 for a user mistake, 130 when interrupted."""
    from .._checkpoint_file import CheckpointError

    name = getattr(args, "command", None) or "evaluate"
    try:
        return args.action(args)
    except KeyboardInterrupt:
        return report_interrupted(name)
    except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
        return report_user_error(name, exc)


# --------------------------------------------------------------------------- parsers


def _add_evaluate(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="score a model: attention vs true masks, samples vs real cells",
        description=(
            "Score a trained checkpoint. 'attention' compares the discriminator's attention "
            "with true cell masks (beside baselines that need no model); 'samples' compares "
            "generated cells with real ones; 'augment' measures whether generated cells "
            "added to a few real ones train a better pattern classifier."
        ),
    )
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    a = sub.add_parser(
        "attention",
        help="attention vs true masks, on centred crops or on a slide/mosaic",
        description=(
            "With --crops: attention on centred real crops vs their masks (pixel IoU after "
            "Otsu's threshold, pointing game, attention mass inside), beside Otsu and a "
            "centred ellipse. With --image/--labels: cells found on a slide vs its instance "
            "labels (object precision/recall/F1 at IoU 0.5, pixel IoU), beside Otsu and "
            "the same labelling applied to the image."
        ),
    )
    _common(a)
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--crops", metavar="DIR",
                     help="folder of crops with masks (pattern sub-folders, NNNNN.png + "
                          "NNNNN_Mask.png)")
    src.add_argument("--image", metavar="FILE",
                     help="a slide or mosaic (TIFF, PNG or .npy; grey, colour or multi-channel)")
    a.add_argument("--labels", metavar="FILE",
                   help="true instance labels of --image (same shape; 0 = background)")
    a.add_argument("--diameter", type=diameter_or_auto, default="auto", metavar="PIXELS",
                   help="typical cell diameter in --image, in pixels, or 'auto' to estimate "
                        "it (default: %(default)s)")
    a.add_argument("--threshold", type=threshold_choice, default="local",
                   help="on a slide: " + THRESHOLD_HELP)
    a.add_argument("--channel", type=non_negative_int, default=None, metavar="N",
                   help="with --image: " + CHANNEL_HELP)
    a.add_argument("--grey", action="store_true",
                   help="with --image: use the luminance of a colour (RGB) image instead of "
                        "its stained channel")
    a.add_argument("--background", choices=("flatten", "none"), default="flatten",
                   help="slide: what the model's labelling does with the slide's slowly "
                        "varying background, as `attention --background` (default: "
                        "%(default)s; the classic and Otsu baselines see the slide as it is)")
    a.add_argument("--cut", type=cut_choice, default="auto", metavar="auto|FRACTION",
                   help="slide: " + CUT_HELP.replace(" (with --outline image)", "")
                   + "; as `attention --cut`")
    a.add_argument("--exclude-border", action="store_true",
                   help="slide: leave out the cells that touch the image border, found and true")
    a.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="with --crops: at most N crops of every pattern, drawn at random "
                        "(default: all)")
    a.set_defaults(run=run, action=_run_attention)

    s = sub.add_parser(
        "samples",
        help="generated cells vs real cells (sliced Wasserstein distance, KID)",
        description=(
            "Generate N cells and compare them with N real cells: sliced Wasserstein "
            "distance on Laplacian pyramids (per level and mean, beside the distance "
            "between two halves of the real cells), and KID on the features of the "
            "checkpoint's pattern classifier when it has one."
        ),
    )
    _common(s)
    s.add_argument("--real", required=True, metavar="DIR", help="folder of real cell crops")
    s.add_argument("-n", "--number", type=_at_least_two, default=1000, dest="n",
                   help="cells to generate and to compare with (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    s.add_argument("--tstr", action="store_true",
                   help="also train-on-synthetic / test-on-real: a pattern classifier trained "
                        "on generated cells, scored on the last 30%% of every pattern's real "
                        "cells, beside one trained on as many real cells (needs a model "
                        "that knows patterns)")
    s.add_argument("--tstr-per-pattern", type=positive_int, default=None, metavar="N",
                   help="with --tstr: training cells per pattern for both classifiers "
                        "(fewer if the real training part is smaller; default: 500)")
    s.add_argument("--tstr-epochs", type=positive_int, default=None, metavar="E",
                   help="with --tstr: training epochs of both classifiers "
                        "(default: 8)")
    s.add_argument("--tstr-reference", type=Path, default=None, metavar="DIR",
                   help="with --tstr: real cells (pattern sub-folders) that train the "
                        "real-cell classifier instead of the first 70%% of --real, e.g. the "
                        "model's own training cells when --real holds other specimens")
    _plain_classifiers_option(s, "with --tstr: ")
    s.set_defaults(run=run, action=_run_samples)

    g = sub.add_parser(
        "augment",
        help="do generated cells added to few real ones train a better pattern classifier?",
        description=(
            "For every count N, draw N real cells of every pattern from --real and train the "
            "pattern classifier twice: on those cells alone, and on the same cells plus "
            "--generated cells of every pattern from the model (both with the same number of "
            "training steps). Both are scored on every cell of --test (other specimens): "
            "accuracy overall and per pattern, and the gain from the generated cells. Prints "
            "one row per count; --json keeps every number, per seed too."
        ),
    )
    _common(g, per_pattern=False)
    g.add_argument("--real", required=True, metavar="DIR",
                   help="real cells to draw the training cells from (one sub-folder per "
                        "pattern, the model's patterns)")
    g.add_argument("--test", required=True, metavar="DIR",
                   help="real cells of other specimens to score on (the same patterns)")
    g.add_argument("--counts", type=positive_int, nargs="+", default=[25, 100, 400],
                   metavar="N",
                   help="real training cells per pattern, one row each; a pattern with fewer "
                        "cells uses all it has (default: 25 100 400)")
    g.add_argument("--generated", type=positive_int, default=400, metavar="N",
                   help="generated cells of every pattern added to the real ones "
                        "(default: %(default)s)")
    g.add_argument("--epochs", type=positive_int, default=8, metavar="E",
                   help="training passes over the real + generated cells; the real-only "
                        "classifier takes as many steps (default: %(default)s)")
    g.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0], metavar="S",
                   help="one measurement per seed (real cells drawn, generated cells, "
                        "training); the table shows the mean (default: 0)")
    g.add_argument("--image-size", type=positive_int, default=None, metavar="PIXELS",
                   help="side of the cells the classifiers see, at most the model's "
                        "(default: the model's; smaller is faster)")
    g.add_argument("--batch-size", type=_batch_size, default=64, metavar="B",
                   help="training batch size of both classifiers (default: %(default)s)")
    g.add_argument("--mix", choices=("finetune", "pretrain", "together"), default="finetune",
                   help="finetune: the augmented classifier trains on the generated cells, "
                        "then on the real cells for all the steps the real-only one takes (and "
                        "a real-only classifier of as many steps in all is trained as a "
                        "control); pretrain: on the generated cells for the first half of the "
                        "real-only classifier's steps, then on the real cells; together: on "
                        "real and generated cells mixed (default: %(default)s)")
    g.add_argument("--ceiling", action="store_true",
                   help="also train the augmented classifier with --generated other real "
                        "cells of every pattern from --real in place of the generated ones: "
                        "the cells of a perfect generator, so its gain is the most generated "
                        "cells could add here")
    g.add_argument("--compare-cells", default=None, metavar="DIR",
                   help="also train the augmented classifier with --generated cells of every "
                        "pattern from DIR (sorted by pattern, e.g. simulated cells or another "
                        "lab's) in place of the generated ones: does the generator add more "
                        "than those cells would?")
    g.add_argument("--keep", type=_keep_fraction, default=1.0, metavar="F",
                   help="below 1, also train the augmented classifier with the generated "
                        "cells selected by the real-only classifier: --generated / F cells "
                        "of every pattern are drawn and the --generated it finds most "
                        "likely of their own pattern kept (default: %(default)s, none "
                        "selected)")
    g.add_argument("--select", choices=("likely", "called"), default="likely",
                   help="with --keep below 1: likely keeps the cells described there; called "
                        "keeps of those only the ones the real-only classifier calls by their "
                        "own pattern, so a pattern may keep fewer (default: %(default)s)")
    _plain_classifiers_option(g)
    g.set_defaults(run=run, action=_run_augment)
    return p


def _plain_classifiers_option(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument("--plain-classifiers", action="store_true",
                   help=prefix + "train the classifiers on flipped and rotated crops only; "
                        "by default every training crop is also recorded anew (gamma, "
                        "defocus, camera noise), as the classifier teacher is, so they hold "
                        "on other specimens")


def _common(p: argparse.ArgumentParser, *, per_pattern: bool = True) -> None:
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a trained checkpoint")
    if per_pattern:
        p.add_argument("--per-pattern", action="store_true",
                       help="also score every staining pattern on its own")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write all results to this JSON file")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to run (default: %(default)s)")


def _add_mosaic(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "mosaic",
        help="evaluation slides of real cells at random positions, with true labels",
        description=(
            "Place real crops (with masks) at random non-overlapping positions on a "
            "background with the crops' own background level and noise, and write "
            "<stem>_NNN.tif and <stem>_NNN_labels.tif (the pasted masks, one id per cell) "
            "into --out."
        ),
    )
    p.add_argument("--crops", required=True, metavar="DIR",
                   help="folder of crops with masks (pattern sub-folders, NNNNN.png + "
                        "NNNNN_Mask.png)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--n-cells", type=positive_int, default=60, metavar="N",
                   help="cells per mosaic (default: %(default)s)")
    p.add_argument("--size", type=positive_int, nargs=2, default=[1024, 1024],
                   metavar=("H", "W"), help="height and width in pixels (default: 1024 1024)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="random seed of the first mosaic; mosaic k uses seed + k "
                        "(default: %(default)s)")
    p.add_argument("--count", type=positive_int, default=1, metavar="K",
                   help="number of mosaics to write (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize factor of the crops, e.g. 0.5 for cells half as large "
                        "(default: %(default)s)")
    p.add_argument("--touching", action="store_true",
                   help="pack the cells densely: most in clusters of 2-6 whose masks touch "
                        "(never overlap), for slides of touching cells")
    p.add_argument("--context", type=float, default=0.0, metavar="F",
                   help="also paste F cell diameters of each crop around its cell (e.g. 0.3), "
                        "so stain outside the nucleus (Golgi, a nuclear rim) stays with it "
                        "(default: 0, the cell and a thin soft edge)")
    p.add_argument("--stem", default="mosaic",
                   help="file name prefix (default: %(default)s)")
    p.set_defaults(run=run, action=_run_mosaic)
    return p


def _at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 cells, got {value}")
    return value


def _batch_size(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected a batch size of at least 2, got {value}")
    return value


def _keep_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


# --------------------------------------------------------------------------- actions


def _run_attention(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_crops, evaluate_slide

    check_file(args.checkpoint, "--checkpoint")
    if args.crops:
        if args.labels:
            raise ValueError("--labels belongs to --image, not to --crops")
        if args.channel is not None or args.grey:
            raise ValueError("--channel and --grey belong to --image, not to --crops")
        result = evaluate_crops(args.checkpoint, args.crops, per_pattern=args.per_pattern,
                                limit=args.limit, device=args.device)
        _finish(args, result, _crop_table(result))
        return 0
    if not args.labels:
        raise ValueError("--image needs --labels FILE (the true instance labels)")
    if args.per_pattern:
        raise ValueError("--per-pattern applies to --crops only")
    image, channel_info = _read_slide(args.image, channel_option(args))
    labels = _read_image(args.labels, "--labels")
    diameter = None if args.diameter == "auto" else float(args.diameter)
    result = evaluate_slide(args.checkpoint, image, labels, diameter=diameter,
                            threshold=args.threshold, device=args.device,
                            exclude_border=args.exclude_border,
                            background=args.background, cut=args.cut)
    result["image"], result["labels"] = str(args.image), str(args.labels)
    result.update(channel_info)
    _finish(args, result, _slide_table(result))
    return 0


def _run_samples(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_samples, train_on_synthetic

    from ..gan.synthesis import as_checkpoint

    check_file(args.checkpoint, "--checkpoint")
    for option, value in (("--tstr-per-pattern", args.tstr_per_pattern),
                          ("--tstr-epochs", args.tstr_epochs),
                          ("--tstr-reference", args.tstr_reference),
                          ("--plain-classifiers", args.plain_classifiers or None)):
        if value is not None and not args.tstr:
            raise ValueError(f"{option} belongs to --tstr: add --tstr or leave it out")
    ckpt = as_checkpoint(args.checkpoint)
    if args.tstr and len(ckpt.class_names) < 2:
        raise ValueError(f"--tstr needs a pattern-conditional model; {ckpt.path.name} knows "
                         f"{len(ckpt.class_names)} staining pattern(s)")
    result = evaluate_samples(ckpt, args.real, n=args.n, device=args.device,
                              per_pattern=args.per_pattern, seed=args.seed)
    table = _samples_table(result)
    if args.tstr:
        given = {"n_per_pattern": args.tstr_per_pattern, "epochs": args.tstr_epochs,
                 "reference": args.tstr_reference, "jitter": not args.plain_classifiers}
        tstr = train_on_synthetic(ckpt, args.real, device=args.device, seed=args.seed,
                                  **{k: v for k, v in given.items() if v is not None})
        result["train_on_synthetic"] = tstr
        table += "\n\n" + _tstr_table(tstr)
    _finish(args, result, table)
    return 0


def _run_augment(args: argparse.Namespace) -> int:
    from ..evaluation.augment import evaluate_augment

    check_file(args.checkpoint, "--checkpoint")
    for option, folder in (("--real", args.real), ("--test", args.test),
                           ("--compare-cells", args.compare_cells)):
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise ValueError(f"{option} {folder!r} does not exist or is not a folder")
    result = evaluate_augment(args.checkpoint, args.real, args.test, counts=args.counts,
                              generated_per_pattern=args.generated, epochs=args.epochs,
                              image_size=args.image_size, seeds=args.seeds,
                              batch_size=args.batch_size, device=args.device,
                              progress=_augment_progress, jitter=not args.plain_classifiers,
                              mix=args.mix, ceiling=args.ceiling,
                              compare_cells=args.compare_cells, keep=args.keep,
                              select=args.select)
    _finish(args, result, _augment_table(result))
    return 0


def _augment_progress(event: dict) -> None:
    """One line on stderr per pattern generated and per classifier scored."""
    if event.get("stage") == "generate":
        print(f"seed {event['seed']}: {event['cells']} generated cells of {event['pattern']}",
              file=sys.stderr, flush=True)
    elif event.get("stage") == "scored":
        arm = {"augmented": "real + generated",
               "real_long": "real only, as many steps",
               "ceiling": "real + other real cells in place of generated ones (ceiling)",
               "compared": "real + --compare-cells in place of generated ones",
               "selected": "real + generated cells selected by the real-only classifier",
               }.get(event["arm"], "real only")
        print(f"[{event['run']}/{event['runs']}] {event['count']} real cells per pattern, "
              f"{arm}, seed {event['seed']}: accuracy {event['accuracy']:.3f} "
              f"({event['steps']} steps, {event['seconds']:.1f} s)", file=sys.stderr,
              flush=True)


def _run_mosaic(args: argparse.Namespace) -> int:
    from ..evaluation.mosaic import make_mosaic, write_mosaic

    if not math.isfinite(args.scale) or args.scale <= 0:
        raise ValueError(f"--scale must be a number > 0, got {args.scale}")
    check_out_folder(args.out)
    out = Path(args.out)
    written = []
    for k in range(args.count):
        m = make_mosaic(args.crops, shape=tuple(args.size), n_cells=args.n_cells,
                        seed=args.seed + k, scale=args.scale, touching=args.touching,
                        context=args.context)
        image, labels = write_mosaic(m, out, f"{args.stem}_{k:03d}")
        written.append({"image": str(image), "labels": str(labels), "cells": len(m.patterns),
                        "cell_diameter": round(m.cell_diameter, 2), "seed": args.seed + k,
                        "touching": bool(args.touching)})
        print(f"{image}  {len(m.patterns)} cells, diameter {m.cell_diameter:.1f} px",
              file=sys.stderr)
    print(json.dumps(written, indent=2))
    return 0


def _read_image(path: str, option: str) -> Any:
    import numpy as np

    from .attention import open_image

    check_file(path, option)
    return np.asarray(open_image(Path(path)))


def _read_slide(path: str, channel: int | str | None) -> tuple[Any, dict[str, Any]]:
    """The grey slide of ``--image`` (one channel of a colour image) and which channel."""
    import numpy as np

    check_file(path, "--image")
    view, info = read_slide(path, channel)
    if len(view.shape) != 2:
        raise ValueError(f"--image {path!r} must be one 2-D slide, got shape "
                         f"{tuple(view.shape)}" + (" after choosing a channel" if info else ""))
    return np.asarray(view), info


def _finish(args: argparse.Namespace, result: dict, table: str) -> None:
    print(table)
    if args.json:
        target = Path(args.json)
        if not target.parent.is_dir():
            raise ValueError(f"--json: folder {str(target.parent)!r} does not exist")
        target.write_text(json.dumps(result, indent=2, default=_plain) + "\n")
        print(f"results written to {target}", file=sys.stderr)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- tables


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """Plain-text columns: the first left-aligned, the others right-aligned."""
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _crop_table(result: dict) -> str:
    header = ["crops", "n", "IoU", "pointing", "mass in", "Otsu IoU", "ellipse IoU"]
    groups = [("all", result["overall"])] + list((result.get("per_pattern") or {}).items())
    rows = [[name, s["n"], s["iou"], s["pointing_game"], s["mass_inside"], s["otsu_iou"],
             s["ellipse_iou"]] for name, s in groups]
    return (f"attention on centred crops ({result['checkpoint']})\n"
            + format_table(header, rows))


SLIDE_METHOD_NAMES = {
    "model": "model (maps find, image outlines)",
    "map": "model's map alone",
    "blob": "blob map finds, image outlines (--find blob)",
    "classic": "classic (Otsu + watershed split)",
    "classic_flat": "classic on the flattened slide",
    "classic_split": "the same, large objects divided",
    "otsu": "Otsu, touching cells not split",
    "image_local": "map's labelling of the image",
}
"""Row names of the slide table, keyed as :data:`napari_atagan.evaluation.evaluate.SLIDE_METHODS`."""


def _slide_table(result: dict) -> str:
    from ..evaluation.evaluate import SLIDE_METHODS

    header = ["method", "cells", "TP", "FP", "FN", "precision", "recall", "F1", "pixel IoU"]
    rows = [[SLIDE_METHOD_NAMES[who], s["n_objects"], s["tp"], s["fp"], s["fn"],
             s["precision"], s["recall"], s["f1"], s["pixel_iou"]]
            for who in SLIDE_METHODS if (s := result.get(who)) is not None]
    border = ", cells on the border left out" if result.get("exclude_border") else ""
    cut = result.get("cut_used")
    edge = "" if cut is None else (f", edge cut {cut:g}"
                                   + (" (auto)" if result.get("cut") == "auto" else ""))
    return (f"cells on the slide ({result['n_true']} true cells, diameter "
            f"{result['cell_diameter']:.1f} px, {result['diameter_source']}{edge}{border})\n"
            + format_table(header, rows) + "\n\n" + _contrast_table(result["by_contrast"])
            + f"\nnote: {result['note']}")


def _contrast_table(by_contrast: dict) -> str:
    """True cells found by each method, by how far they stand out from the background."""
    from ..evaluation.evaluate import SLIDE_METHODS

    methods = [who for who in SLIDE_METHODS if who in by_contrast]
    header = ["contrast", "cells", *methods]
    rows = [[contrast_bin(b["low"], b["high"]), b["cells"]]
            + [f"{by_contrast[who][k]['found']}" for who in methods]
            for k, b in enumerate(by_contrast["model"])]
    return ("true cells found, by contrast (cell median above the background's, in robust "
            "standard deviations of the background)\n" + format_table(header, rows))


def contrast_bin(low: float | None, high: float | None) -> str:
    """``"< 1"``, ``"1-2"``, ``">= 4"``: names a bin of
    :func:`napari_atagan.metrics.recall_by_contrast`."""
    if low is None:
        return f"< {high:g}"
    return f">= {low:g}" if high is None else f"{low:g}-{high:g}"


def _samples_table(result: dict) -> str:
    groups = [("all", result)] + list((result.get("per_pattern") or {}).items())
    n_levels = len(result["swd"]["levels"])
    header = (["cells", "real", "fake"] + [f"SWD {i}" for i in range(n_levels)]
              + ["SWD mean", "real/real", "lattice", "KID"])
    rows = []
    for name, s in groups:
        k = s["kid"]["mean"] if s.get("kid") else None
        rows.append([name, s["n_real"], s["n_fake"], *s["swd"]["levels"], s["swd"]["mean"],
                     s["swd_reference"], s["lattice"], k])
    lines = [f"generated vs real cells ({result['checkpoint']}, "
             f"{result['image_size']} px; SWD level 0 = finest detail; lattice = the largest "
             "excess of generated over real power at one frequency finer than 8 px: real "
             "cells against real cells give 1.2-1.5, a lattice of lines far more)",
             format_table(header, rows)]
    if result.get("kid_note"):
        lines.append(f"KID: {result['kid_note']}")
    if result.get("per_pattern_note"):
        lines.append(result["per_pattern_note"])
    return "\n".join(lines)


def _tstr_table(result: dict) -> str:
    header = ["test cells", "n", "TSTR", "TRTS"]
    rows = [["all", sum(result["n_test"].values()), result["tstr"]["accuracy"],
             result["trts"]["accuracy"]]]
    rows += [[name, result["n_test"][name], result["tstr"]["per_pattern"][name],
              result["trts"]["per_pattern"][name]] for name in result["patterns"]]
    ratio = result["ratio"]
    verdict = "-" if ratio is None else f"{ratio:.3f}"
    return "\n".join([
        f"train on synthetic, test on real ({result['n_per_pattern']} cells per pattern, "
        f"{result['epochs']} epochs{_jitter_note(result)}; accuracy on the last 30% of every "
        "pattern's real cells)",
        format_table(header, rows),
        f"TSTR/TRTS: {verdict} (target >= {result['target_ratio']:.1f}; "
        f"chance {result['chance']:.3f}); TRTS classifier trained on "
        + (f"cells of {result['reference']}" if result.get("reference")
           else "the first 70% of every pattern's real cells"),
    ])


def _jitter_note(result: dict) -> str:
    jitter = result.get("classifier_jitter")
    return ("" if jitter is None else ", crops recorded anew" if jitter
            else ", flipped and rotated crops only")


def _augment_table(result: dict) -> str:
    names = result["patterns"]
    short = short_names(names)
    several = len(result["seeds"]) > 1
    long = result.get("mix") == "finetune"
    top = bool(result.get("ceiling"))
    other = bool(result.get("compare_cells"))
    chosen = any("selected" in row for row in result["rows"])
    header = (["real/pattern", "steps", "real only", "real+gen", "gain"]
              + (["gain sd"] if several else [])
              + (["real, as many steps", "gain over it"] if long else [])
              + (["real+other real", "ceiling gain"] if top else [])
              + (["real+compared", "compared gain"] if other else [])
              + (["real+selected", "selected gain"] if chosen else []) + short)
    rows = []
    for row in result["rows"]:
        gain = row["gain"]
        rows.append([str(row["count"]), row["steps"], row["real"]["accuracy"],
                     row["augmented"]["accuracy"],
                     _signed(gain["accuracy"])] + ([gain["accuracy_sd"]] if several else [])
                    + ([row["real_long"]["accuracy"],
                        _signed(row["gain_same_steps"]["accuracy"])] if long else [])
                    + ([row["ceiling"]["accuracy"],
                        _signed(row["gain_ceiling"]["accuracy"])] if top else [])
                    + ([row["compared"]["accuracy"],
                        _signed(row["gain_compared"]["accuracy"])] if other else [])
                    + ([row["selected"]["accuracy"],
                        _signed(row["gain_selected"]["accuracy"])] if chosen else [])
                    + [_signed(gain["per_pattern"][p]) for p in names])
    seeds = ", ".join(str(s) for s in result["seeds"])
    epochs = f"{result['epochs']} epoch" + ("s" if result["epochs"] != 1 else "")
    lines = [
        f"generated cells as extra training data ({result['checkpoint']}, "
        f"{result['image_size']} px): {result['generated_per_pattern']} generated cells per "
        f"pattern added to the real ones; {epochs} over real + generated cells, the same "
        f"number of steps for the real-only classifier{_jitter_note(result)}"
        + ("; the augmented one first on the generated cells alone, then on the real cells"
           if result.get("mix") == "pretrain" else
           "; the augmented one first on the generated cells alone for half as many steps "
           "again, then on the real cells for all the real-only classifier's steps"
           if long else
           "; the augmented one on real and generated cells mixed"
           if result.get("mix") == "together" else ""),
        f"accuracy on {sum(result['n_test'].values())} test cells of {result['test_folder']} "
        f"(chance {result['chance']:.3f}); " + (f"mean over seeds {seeds}" if several
                                                 else f"seed {seeds}"),
        format_table(header, rows),
        "gain: real+gen minus real only; per-pattern columns: the gain in that pattern's "
        "recall",
    ]
    if top:
        lines.append("ceiling: the augmented recipe with other real cells of --real in place "
                     "of the generated ones (a perfect generator's cells); its gain is the "
                     "most generated cells could add here")
    if other:
        lines.append(f"compared: the augmented recipe with cells of {result['compare_cells']} "
                     "in place of the generated ones")
    if chosen:
        lines.append(f"selected: the augmented recipe with the {result['generated_per_pattern']} "
                     f"of {result['n_drawn']} generated cells of every pattern that the real-only "
                     "classifier finds most likely of their own pattern"
                     + (", those it calls by it only" if result.get("select") == "called"
                        else ""))
        for row in result["rows"]:  # each count has its own real-only classifier
            lines.append(f"  share of the drawn cells the real-only classifier of {row['count']} "
                         "real cells calls by their own pattern: "
                         + ", ".join(f"{s} {row['kept_called'][n]:.2f}"
                                     for s, n in zip(short, names)))
    if short != names:
        lines.append("patterns: " + ", ".join(f"{s} = {n}" for s, n in zip(short, names)
                                              if s != n))
    if result.get("note"):
        lines.append(f"note: {result['note']}")
    return "\n".join(lines)


def short_names(names: list[str], width: int = 6) -> list[str]:
    """Pattern names cut to ``width`` characters for table columns, or whole where
    cutting would make two of them the same."""
    cut = [n[:width] for n in names]
    return cut if len(set(cut)) == len(cut) else list(names)


def _signed(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-" if value is None else "nan"
    return f"{value:+.3f}"
