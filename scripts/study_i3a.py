#!/usr/bin/env python
"""Score trained models on held-out real cells and write the results report.

The study behind ``docs/RESULTS.md``. It works on any folder in the I3A layout
(pattern sub-folders of ``NNNNN.png`` + ``NNNNN_Mask.png``) split by
``scripts/split_by_id.py`` into ``train/`` and ``val/``; models are trained on
``train/`` with ``napari-atagan train`` and scored here on ``val/`` only.

``evaluate RUN ...`` writes ``RUN/study.json`` for every run folder (a
``checkpoint.safetensors`` and the ``summary.json`` of ``train``):

* attention on the centred validation crops, per pattern, beside Otsu and a
  centred ellipse (:func:`napari_atagan.evaluation.evaluate.evaluate_crops`);
* attention on mosaics of validation cells at random positions, one set of
  mosaics per pattern (the same mosaics for every model), beside Otsu;
* sample quality per pattern: sliced Wasserstein distance, KID on the features
  of one shared pattern classifier (``--features``: a checkpoint trained with
  teacher ``classifier``; the same network scores every model), and the
  diversity ratio of :func:`napari_atagan.metrics.sample_diversity`, against
  the validation cells and, with ``--train``, against the training cells the
  generator imitates (validation cells come from other specimens, so the real
  training cells themselves are some distance from them: that distance is
  reported beside the models); and the share of generated cells that the same
  classifier calls by the pattern they were generated as ("own pattern");
* train-on-synthetic / test-on-real on the validation cells; with ``--train``
  the real-cell classifier it is compared with learns from training cells, as
  the generator did;
* training time and images/s from the run's summary.

``report RUN ... --out DIR`` turns the ``study.json`` files into markdown tables
(printed) and pictures in ``DIR``: real and generated cells per pattern, every
model's attention on the same real cells, every model's attention on its own
generated cells, and one mosaic with every model's labels.

Usage::

    scripts/study_i3a.py evaluate runs/real_mask runs/real_none --val runs/i3a/val \\
        --features runs/real_classifier/checkpoint.safetensors
    scripts/study_i3a.py report runs/real_mask runs/real_none --val runs/i3a/val --out docs/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_atagan.cli.evaluate import contrast_bin
from napari_atagan.evaluation.evaluate import (
    _pattern_accuracy,
    _swd_levels,
    evaluate_crops,
    evaluate_slide,
    train_on_synthetic,
)
from napari_atagan.metrics import classifier_features, kid, sample_diversity, sliced_wasserstein
from napari_atagan.evaluation.mosaic import make_mosaic
from napari_atagan.gan.synthesis import as_checkpoint, generate

MOSAIC_SHAPE = (1024, 1024)
MOSAIC_CELLS = 40
MOSAIC_SEEDS = (0, 1)
SAMPLES_PER_PATTERN = 500
SWD_PATCHES = 8192
BASELINES = ("model", "otsu", "image_local")


# --------------------------------------------------------------------------- evaluate
PARTS = ("crops", "mosaics", "samples", "tstr")


def evaluate_run(run: Path, val: Path, features: Path | None, device: str,
                 tstr_epochs: int, parts: tuple[str, ...] = PARTS,
                 train: Path | None = None) -> dict[str, Any]:
    """Score one run; ``parts`` less than all updates an earlier ``study.json``."""
    ckpt = as_checkpoint(run / "checkpoint.safetensors")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() \
        else {}
    earlier = run / "study.json"
    out: dict[str, Any] = json.loads(earlier.read_text()) if earlier.exists() else {}
    out.update({"run": run.name, "teacher": ckpt.config.teacher,
                "beta": ckpt.config.effective_beta, "config": ckpt.config.to_dict(),
                "training": _training_figures(summary, ckpt)})
    if "crops" in parts:
        out["crops"] = evaluate_crops(ckpt, val, per_pattern=True, device=device)
    if "mosaics" in parts:
        out["mosaics"] = _mosaics(ckpt, val, device)
    if "samples" in parts:
        out["samples"] = _samples(ckpt, val, features, device, train)
    if "tstr" in parts:
        # the real-cell classifier learns from the cells the generator learned from
        out["tstr"] = train_on_synthetic(ckpt, val, n_per_pattern=500, epochs=tstr_epochs,
                                         device=device, reference=train)
        out["tstr_epochs"] = tstr_epochs
    return out


def _training_figures(summary: dict[str, Any], ckpt: Any) -> dict[str, Any]:
    keys = ("steps", "seconds", "images_per_s", "device", "teacher_accuracy", "final_losses")
    found = {k: summary[k] for k in keys if k in summary}
    found.setdefault("steps", ckpt.step)
    return found


def _patterns(val: Path) -> list[str]:
    return sorted(p.name for p in val.iterdir() if p.is_dir())


def _mosaics(ckpt: Any, val: Path, device: str) -> dict[str, Any]:
    """Per pattern: the cells of MOSAIC_SEEDS mosaics pooled (objects) and averaged (pixels)."""
    per: dict[str, Any] = {}
    for pattern in _patterns(val):
        rows = []
        for seed in MOSAIC_SEEDS:
            m = make_mosaic(val / pattern, shape=MOSAIC_SHAPE, n_cells=MOSAIC_CELLS, seed=seed)
            rows.append(evaluate_slide(ckpt, m.image, m.labels, diameter=m.cell_diameter,
                                       device=device))
        per[pattern] = {who: _pool([r[who] for r in rows]) for who in BASELINES}
        per[pattern]["by_contrast"] = {who: _pool_contrast([r["by_contrast"][who] for r in rows])
                                       for who in BASELINES}
        per[pattern]["cell_diameter"] = round(float(np.mean([r["cell_diameter"] for r in rows])), 1)
    overall = {who: _pool([per[p][who] for p in per]) for who in BASELINES}
    overall["by_contrast"] = {who: _pool_contrast([per[p]["by_contrast"][who] for p in per])
                              for who in BASELINES}
    return {"overall": overall, "per_pattern": per, "shape": list(MOSAIC_SHAPE),
            "cells_per_mosaic": MOSAIC_CELLS, "seeds": list(MOSAIC_SEEDS)}


def _pool_contrast(tables: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Cells and cells found per contrast bin, summed over several mosaics."""
    return [dict(b, cells=sum(t[k]["cells"] for t in tables),
                 found=sum(t[k]["found"] for t in tables)) for k, b in enumerate(tables[0])]


def _pool(rows: list[dict[str, Any]]) -> dict[str, float]:
    tp, fp, fn = (int(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn,
            "pixel_iou": float(np.mean([r["pixel_iou"] for r in rows]))}


def _samples(ckpt: Any, val: Path, features: Path | None, device: str,
             train: Path | None = None) -> dict[str, Any]:
    from napari_atagan.data import load_folder

    size = int(ckpt.config.image_size)
    real = load_folder(val, image_size=size)
    seen = load_folder(train, image_size=size) if train else None
    net = _feature_net(features, device) if features else None
    net_names = as_checkpoint(features).class_names if features else []
    per: dict[str, Any] = {}
    for k, name in enumerate(ckpt.class_names):
        mine = real.images[real.labels == real.class_names.index(name)]
        fake = generate(ckpt, SAMPLES_PER_PATTERN, pattern=k, seed=100 + k, device=device).images
        levels = _swd_levels(fake.shape[-1])
        half = len(mine) // 2
        floor = sliced_wasserstein(mine[:half], mine[half:2 * half], levels=levels,
                                   n_patches=SWD_PATCHES, seed=k)[-1]
        feats = {"fake": _features_of(net, fake), "val": _features_of(net, mine)}
        row = {"swd_real_vs_real": floor,
               **_sample_scores(mine, fake, feats["val"], feats["fake"], levels, k)}
        if net is not None and name in net_names:
            row["own_pattern"] = _own_pattern(net, fake, net_names, name)
        if seen is not None:
            cells = seen.images[seen.labels == seen.class_names.index(name)]
            cells = cells[np.linspace(0, len(cells) - 1,
                                      min(len(cells), SAMPLES_PER_PATTERN)).astype(int)]
            feats["train"] = _features_of(net, cells)
            vs_train = _sample_scores(cells, fake, feats["train"], feats["fake"], levels, k)
            row.update({key + "_train": value for key, value in vs_train.items()})
            # how far the real training cells themselves are from the validation cells
            shift = _sample_scores(mine, cells, feats["val"], feats["train"], levels, k)
            row["swd_train_vs_val"] = shift["swd"]
            if "kid" in shift:
                row["kid_train_vs_val"] = shift["kid"]
        per[name] = row
    overall = {key: float(np.mean([r[key] for r in per.values()])) for key in next(iter(
        per.values())) if all(key in r for r in per.values())}
    return {"overall": overall, "per_pattern": per, "n_per_pattern": SAMPLES_PER_PATTERN,
            "kid_features": str(features) if features else None}


def _own_pattern(net: Any, images: np.ndarray, names: list[str], name: str) -> float:
    """Share of ``images`` (generated as pattern ``name``) that the feature network, a
    pattern classifier trained on real cells with patterns ``names``, calls ``name``."""
    import warnings
    from types import SimpleNamespace

    generated = SimpleNamespace(n=len(images), images=np.ascontiguousarray(images, np.float32),
                                labels=np.full(len(images), names.index(name)))
    with warnings.catch_warnings():  # the other patterns' accuracies: means of no cells
        warnings.simplefilter("ignore", RuntimeWarning)
        return _pattern_accuracy(net, generated, names)["accuracy"]


def _features_of(net: Any, images: np.ndarray) -> np.ndarray | None:
    return classifier_features(net, images) if net is not None else None


def _sample_scores(ref: np.ndarray, other: np.ndarray, f_ref: np.ndarray | None,
                   f_other: np.ndarray | None, levels: int, seed: int) -> dict[str, float]:
    """SWD, diversity ratio and (given features) KID of ``other`` against ``ref``."""
    out = {"swd": sliced_wasserstein(ref, other, levels=levels, n_patches=SWD_PATCHES,
                                     seed=seed)[-1],
           "diversity": sample_diversity(other) / sample_diversity(ref)}
    if f_ref is not None:
        out["kid"] = kid(f_ref, f_other, subsets=50,
                         subset_size=min(len(f_ref), len(f_other), 200), seed=seed)[0]
    return out


def _feature_net(path: Path, device: str):
    from napari_atagan.evaluation.evaluate import _teacher

    net, note = _teacher(as_checkpoint(path), device)
    if net is None:
        raise SystemExit(f"--features {path}: {note}")
    return net


# --------------------------------------------------------------------------- report
def report(runs: list[Path], val: Path, out: Path) -> str:
    results = [json.loads((r / "study.json").read_text()) for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    lines = [_overall_table(results), "", _contrast_table(results), _train_table(results),
             _pattern_tables(results)]
    from _study_figures import (
        attention_figure,
        generated_attention_figure,
        mosaic_figure,
        samples_figure,
    )

    samples_figure(runs, val, out / "samples.png")
    attention_figure(runs, val, out / "attention.png")
    generated_attention_figure(runs, out / "generated_attention.png")
    mosaic_figure(runs, val, out / "mosaic.png")
    return "\n".join(lines)


def _overall_table(results: list[dict[str, Any]]) -> str:
    head = ("| model | crop IoU | pointing | mosaic F1 | mosaic pixel IoU | SWD | KID | "
            "diversity | TSTR / TRTS | steps | training | images/s |")
    rows = [head, "|" + " --- |" * 12]
    for r in results:
        c, m, s = r["crops"]["overall"], r["mosaics"]["overall"]["model"], r["samples"]["overall"]
        t = r["training"]
        rows.append(
            f"| {_name(r)} | {c['iou']:.3f} | {c['pointing_game']:.2f} | {m['f1']:.3f} | "
            f"{m['pixel_iou']:.3f} | {s['swd']:.4f} | {_opt(s.get('kid'), '.4f')} | "
            f"{s['diversity']:.2f} | {_opt(r.get('tstr', {}).get('ratio'), '.2f')} | "
            f"{t.get('steps', '')} | "
            f"{_opt(t.get('seconds'), '.0f')} s | {_opt(t.get('images_per_s'), '.0f')} |")
    c, m = results[0]["crops"]["overall"], results[0]["mosaics"]["overall"]["otsu"]
    rows.append(f"| Otsu (no model) | {c['otsu_iou']:.3f} | | {m['f1']:.3f} | "
                f"{m['pixel_iou']:.3f} | | | | | | | |")
    m = results[0]["mosaics"]["overall"]["image_local"]
    rows.append(f"| per-cell labelling of the image (no model) | | | {m['f1']:.3f} | "
                f"{m['pixel_iou']:.3f} | | | | | | | |")
    rows.append(f"| centred ellipse (no model) | {c['ellipse_iou']:.3f} | | n/a | n/a "
                "| | | | | | | |")
    return "\n".join(rows)


def _contrast_table(results: list[dict[str, Any]]) -> str:
    """Mosaic cells found, by how far they stand out from the background; empty for
    study files scored before the contrast was recorded."""
    scored = [r for r in results if "by_contrast" in r["mosaics"]["overall"]]
    if not scored:
        return ""
    first = scored[0]["mosaics"]["overall"]["by_contrast"]
    bins = [contrast_bin(b["low"], b["high"]) for b in first["model"]]
    rows = ["### Mosaic cells found, by contrast", "",
            "Contrast: a cell's median above the background's, in robust standard "
            "deviations of the background. Cells found / cells.", "",
            "| model | " + " | ".join(bins) + " |", "|" + " --- |" * (len(bins) + 1)]

    def found(table: list[dict[str, Any]]) -> str:
        return " | ".join(f"{b['found']} / {b['cells']}" for b in table)

    for r in scored:
        rows.append(f"| {_name(r)} | {found(r['mosaics']['overall']['by_contrast']['model'])} |")
    rows.append(f"| Otsu (no model) | {found(first['otsu'])} |")
    rows.append(f"| per-cell labelling of the image (no model) | {found(first['image_local'])} |")
    return "\n".join(rows) + "\n"


def _train_table(results: list[dict[str, Any]]) -> str:
    """Sample quality against the training cells, beside the real training cells'
    own distance from the validation cells; empty without ``evaluate --train``."""
    scored = [r for r in results if "swd_train" in r["samples"]["overall"]]
    if not scored:
        return ""
    rows = ["### Samples against the training cells", "",
            "| model | SWD | KID | diversity | own pattern |", "|" + " --- |" * 5]
    for r in scored:
        s = r["samples"]["overall"]
        rows.append(f"| {_name(r)} | {s['swd_train']:.4f} | {_opt(s.get('kid_train'), '.4f')} | "
                    f"{s['diversity_train']:.2f} | {_opt(s.get('own_pattern'), '.2f')} |")
    s = scored[0]["samples"]["overall"]
    rows.append(f"| real training cells against the validation cells | {s['swd_train_vs_val']:.4f} "
                f"| {_opt(s.get('kid_train_vs_val'), '.4f')} | | |")
    return "\n".join(rows) + "\n"


def _pattern_tables(results: list[dict[str, Any]]) -> str:
    patterns = list(results[0]["mosaics"]["per_pattern"])
    out = []
    specs = [
        ("Mosaic object F1 (IoU 0.5)", lambda r, p: r["mosaics"]["per_pattern"][p]["model"]["f1"],
         lambda r, p: r["mosaics"]["per_pattern"][p]["otsu"]["f1"]),
        ("Mosaic pixel IoU", lambda r, p: r["mosaics"]["per_pattern"][p]["model"]["pixel_iou"],
         lambda r, p: r["mosaics"]["per_pattern"][p]["otsu"]["pixel_iou"]),
        ("Crop IoU", lambda r, p: r["crops"]["per_pattern"][p]["iou"],
         lambda r, p: r["crops"]["per_pattern"][p]["otsu_iou"]),
        ("SWD (lower is better)", lambda r, p: r["samples"]["per_pattern"][p]["swd"], None),
        ("KID (lower is better)", lambda r, p: r["samples"]["per_pattern"][p].get("kid"), None),
        ("Diversity (generated / real)",
         lambda r, p: r["samples"]["per_pattern"][p]["diversity"], None),
        ("Own pattern (generated cells the real-cell classifier calls by their pattern)",
         lambda r, p: r["samples"]["per_pattern"][p].get("own_pattern"), None),
        ("TSTR accuracy", lambda r, p: r.get("tstr", {}).get("tstr", {}).get(
            "per_pattern", {}).get(p),
         lambda r, p: r["tstr"]["trts"]["per_pattern"].get(p)),
    ]
    for title, model_value, baseline in specs:
        out += [f"### {title}", "", "| model | " + " | ".join(patterns) + " |",
                "|" + " --- |" * (len(patterns) + 1)]
        for r in results:
            out.append(f"| {_name(r)} | " + " | ".join(
                _opt(model_value(r, p), ".3f") for p in patterns) + " |")
        if baseline is not None:
            label = "trained on real cells" if title.startswith("TSTR") else "Otsu (no model)"
            ref = next((r for r in results if "tstr" in r), results[0])
            out.append(f"| {label} | " + " | ".join(
                _opt(baseline(ref, p), ".3f") for p in patterns) + " |")
        if title.startswith("Mosaic"):
            key = "f1" if "F1" in title else "pixel_iou"
            out.append("| per-cell labelling of the image (no model) | " + " | ".join(
                _opt(results[0]["mosaics"]["per_pattern"][p]["image_local"][key], ".3f")
                for p in patterns) + " |")
        out.append("")
    return "\n".join(out)


def _name(r: dict[str, Any]) -> str:
    return f"{r['run']} ({r['teacher']}, beta {r['beta']:g})"


def _opt(v: Any, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="score runs, writing RUN/study.json")
    e.add_argument("runs", nargs="+", type=Path)
    e.add_argument("--val", type=Path, required=True)
    e.add_argument("--features", type=Path, help="checkpoint whose classifier gives KID features")
    e.add_argument("--train", type=Path,
                   help="the training part: sample quality is also scored against its cells")
    e.add_argument("--device", default="auto")
    e.add_argument("--tstr-epochs", type=int, default=8)
    e.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated subset of " + ", ".join(PARTS))
    r = sub.add_parser("report", help="tables and pictures from RUN/study.json")
    r.add_argument("runs", nargs="+", type=Path)
    r.add_argument("--val", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.command == "evaluate":
        for run in a.runs:
            t0 = time.perf_counter()
            parts = tuple(x.strip() for x in a.parts.split(",") if x.strip())
            unknown = set(parts) - set(PARTS)
            if unknown:
                p.error(f"unknown --parts: {', '.join(sorted(unknown))}")
            result = evaluate_run(run, a.val, a.features, a.device, a.tstr_epochs, parts,
                                  a.train)
            (run / "study.json").write_text(json.dumps(result, indent=1))
            print(f"{run}: {', '.join(parts)} evaluated in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        print(report(a.runs, a.val, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
