"""Evaluation engine and CLI: documented keys, value ranges, sanity checks, user errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from napari_atagan.cli.evaluate import register
from napari_atagan.evaluation.evaluate import (
    CROP_KEYS,
    SLIDE_KEYS,
    SLIDE_METHODS,
    default_min_size,
    evaluate_crops,
    evaluate_samples,
    evaluate_slide,
    train_on_synthetic,
)
from napari_atagan.metrics import match_objects, pixel_iou
from napari_atagan.evaluation.mosaic import make_mosaic, write_mosaic
from napari_atagan.simulate import simulate_crops, write_crops_folder

PATTERNS = ("Homogeneous", "NuMem", "Centromere")


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory):
    crops = simulate_crops(12, size=32, patterns=PATTERNS, seed=7)
    return write_crops_folder(crops, tmp_path_factory.mktemp("evaluate") / "cells")


@pytest.fixture(scope="module")
def mosaic(crops_dir):
    return make_mosaic(crops_dir, shape=(160, 160), n_cells=6, seed=1)


def _in_unit(value):
    return 0.0 <= value <= 1.0


def test_evaluate_crops_keys_and_ranges(tiny_checkpoint, crops_dir):
    r = evaluate_crops(tiny_checkpoint, crops_dir, per_pattern=True, limit=2, device="cpu")
    assert set(r["overall"]) == set(CROP_KEYS)
    assert r["overall"]["n"] == 6
    assert set(r["per_pattern"]) == set(PATTERNS)
    for scores in [r["overall"], *r["per_pattern"].values()]:
        assert all(_in_unit(scores[k]) for k in CROP_KEYS[1:])
    assert r["overall"]["ellipse_iou"] > 0.5  # the centred guess is strong on crops
    json.dumps(r)


def test_evaluate_slide_keys_and_ranges(tiny_checkpoint, mosaic):
    r = evaluate_slide(tiny_checkpoint, mosaic.image, mosaic.labels,
                       diameter=mosaic.cell_diameter, device="cpu")
    assert r["n_true"] == 6 and r["diameter_source"] == "given"
    assert r["ellipse"] is None and "ellipse" in r["note"]
    assert r["background"] == "flatten"
    for method in SLIDE_METHODS:
        assert set(r[method]) == set(SLIDE_KEYS)
        for key in ("precision", "recall", "f1", "pixel_iou", "mean_matched_iou"):
            assert _in_unit(r[method][key])
        assert r[method]["tp"] + r[method]["fn"] == 6
        bins = r["by_contrast"][method]
        assert sum(b["cells"] for b in bins) == 6
        assert sum(b["found"] for b in bins) == r[method]["tp"]
    json.dumps(r)
    # without flattening, the classic pipeline on "the flattened slide" is the classic one
    r = evaluate_slide(tiny_checkpoint, mosaic.image, mosaic.labels,
                       diameter=mosaic.cell_diameter, device="cpu", background="none")
    assert r["background"] == "none" and r["classic_flat"] == r["classic"]


def test_evaluate_slide_scores_the_cut_asked_for(tiny_checkpoint, mosaic):
    """The model's row is what `attention --cut` writes: a fixed fraction is used as given,
    "auto" picks one in the range, and the result says which."""
    from napari_atagan.slides.attention import slide_attention
    from napari_atagan.slides.background import flatten_background
    from napari_atagan.slides.segment import CUT_RANGE, label_cells

    d = mosaic.cell_diameter
    auto = evaluate_slide(tiny_checkpoint, mosaic.image, mosaic.labels, diameter=d, device="cpu")
    assert auto["cut"] == "auto" and CUT_RANGE[0] <= auto["cut_used"] <= CUT_RANGE[1]
    fixed = evaluate_slide(tiny_checkpoint, mosaic.image, mosaic.labels, diameter=d,
                           device="cpu", cut=0.45)
    assert fixed["cut"] == fixed["cut_used"] == 0.45
    flat = np.asarray(flatten_background(np.asarray(mosaic.image, np.float32), d, "flatten"))
    att = slide_attention(tiny_checkpoint, flat, cell_diameter=d, device="cpu")
    cells = label_cells(att, flat, outline="image", min_size=default_min_size(d),
                        cell_diameter=d, cut=0.45)
    assert fixed["model"]["n_objects"] == len(np.unique(cells)) - 1
    assert fixed["classic"] == auto["classic"]  # the baselines have no cut


def test_evaluate_slide_binary_truth_and_shape_errors(tiny_checkpoint, mosaic):
    r = evaluate_slide(tiny_checkpoint, mosaic.image, (mosaic.labels > 0).astype(np.uint8),
                       diameter=mosaic.cell_diameter, device="cpu")
    assert r["truth_relabelled"] and r["n_true"] == 6
    with pytest.raises(ValueError, match="same pixels"):
        evaluate_slide(tiny_checkpoint, mosaic.image, mosaic.labels[:-1], diameter=20.0)


def test_perfect_prediction_scores_one(mosaic):
    """The ground truth against itself (ids shuffled) is a perfect score."""
    perm = np.concatenate([[0], np.random.default_rng(0).permutation(6) + 1])
    pred = perm[mosaic.labels]
    scores = match_objects(pred, mosaic.labels)
    assert scores["f1"] == scores["precision"] == scores["recall"] == 1.0
    assert scores["mean_matched_iou"] == 1.0
    assert pixel_iou(pred > 0, mosaic.labels > 0) == 1.0


def test_evaluate_samples_keys(tiny_checkpoint, tiny_data, tmp_path):
    folder = write_crops_folder(simulate_crops(9, size=32, patterns=PATTERNS, seed=2),
                                tmp_path / "real")
    r = evaluate_samples(tiny_checkpoint, folder, n=6, device="cpu", per_pattern=True,
                         swd_patches=256)
    assert r["n_real"] == 6 and r["n_fake"] == 6 and r["image_size"] == 16
    assert len(r["swd"]["levels"]) >= 1 and r["swd"]["mean"] >= 0
    assert r["swd_reference"] is not None
    assert r["lattice"] > 0
    assert r["kid"] is None and "no pattern classifier" in r["kid_note"]
    assert set(r["per_pattern"]) == set(PATTERNS)
    json.dumps(r)


def test_evaluate_samples_with_classifier_gives_kid(tiny_data, tmp_path_factory, tmp_path):
    from tests.conftest import tiny_config
    from napari_atagan.gan.training import run_to_end, train

    run = run_to_end(train(tiny_config(teacher="classifier", steps=2), tiny_data,
                           tmp_path_factory.mktemp("clf")))
    folder = write_crops_folder(simulate_crops(6, size=32, patterns=PATTERNS, seed=2),
                                tmp_path / "real")
    r = evaluate_samples(run.checkpoint, folder, n=4, device="cpu", swd_patches=256)
    assert r["kid"] is not None and np.isfinite(r["kid"]["mean"]) and r["kid_note"] is None


# --------------------------------------------------------------------------- TSTR


@pytest.fixture(scope="module")
def tstr_real(tmp_path_factory):
    """8 real-like cells per pattern, plus a pattern the tiny model does not know."""
    crops = simulate_crops(32, size=32, patterns=PATTERNS + ("Golgi",), seed=5)
    return write_crops_folder(crops, tmp_path_factory.mktemp("tstr") / "real")


def test_train_on_synthetic_keys_and_ranges(tiny_checkpoint, tstr_real):
    r = train_on_synthetic(tiny_checkpoint, tstr_real, n_per_pattern=4, epochs=1,
                           device="cpu", batch_size=4)
    assert sorted(r["patterns"]) == sorted(PATTERNS)  # Golgi, unknown to the model, is left out
    assert r["n_per_pattern"] == 4 and r["epochs"] == 1 and r["image_size"] == 16
    # the last 30 % of every pattern's 8 cells are the test part
    assert r["n_test"] == {p: 2 for p in PATTERNS}
    for key in ("tstr", "trts"):
        assert _in_unit(r[key]["accuracy"])
        assert set(r[key]["per_pattern"]) == set(PATTERNS)
        assert all(_in_unit(v) for v in r[key]["per_pattern"].values())
        # 6 test cells: accuracies are multiples of 1/6
        assert round(r[key]["accuracy"] * 6, 6) == round(r[key]["accuracy"] * 6)
    assert r["ratio"] is None or r["ratio"] >= 0
    assert r["target_ratio"] == 0.8 and r["chance"] == pytest.approx(1 / 3)
    json.dumps(r)


def test_train_on_synthetic_with_a_reference_folder(tiny_checkpoint, tstr_real, tmp_path):
    own = train_on_synthetic(tiny_checkpoint, tstr_real, n_per_pattern=4, epochs=1,
                             device="cpu", batch_size=4)
    # the real-cell classifier learns from another folder; TSTR and the test cells stay
    crops = simulate_crops(60, size=32, patterns=PATTERNS, seed=8)
    other = write_crops_folder(crops, tmp_path / "other")
    r = train_on_synthetic(tiny_checkpoint, tstr_real, n_per_pattern=4, epochs=1,
                           device="cpu", batch_size=4, reference=other)
    assert r["reference"] == str(other) and own["reference"] is None
    assert r["n_test"] == own["n_test"] and r["tstr"] == own["tstr"]
    assert r["n_per_pattern"] == 4
    missing = write_crops_folder(simulate_crops(12, size=32, patterns=PATTERNS[:2], seed=9),
                                 tmp_path / "missing")
    with pytest.raises(ValueError, match=PATTERNS[2]):
        train_on_synthetic(tiny_checkpoint, tstr_real, n_per_pattern=4, epochs=1,
                           device="cpu", reference=missing)


def test_train_on_synthetic_same_cells_per_pattern(tiny_checkpoint, tstr_real):
    """Asking for more cells than the real training part holds uses that many for both."""
    r = train_on_synthetic(tiny_checkpoint, tstr_real, n_per_pattern=50, epochs=1,
                           device="cpu", limit_real=5, batch_size=4)
    assert r["n_per_pattern_asked"] == 50
    assert r["n_test"] == {p: 2 for p in PATTERNS}  # round(0.3 * 5)
    assert r["n_per_pattern"] == 3


def test_train_on_synthetic_errors(tiny_checkpoint, tiny_data, tstr_real, tmp_path):
    from tests.conftest import tiny_config
    from napari_atagan.gan.training import run_to_end, train

    few = write_crops_folder(simulate_crops(6, size=32, patterns=("Homogeneous", "NuMem"),
                                            seed=1), tmp_path / "two")
    with pytest.raises(ValueError, match="Centromere"):
        train_on_synthetic(tiny_checkpoint, few, n_per_pattern=2, epochs=1, device="cpu")
    with pytest.raises(ValueError, match="epochs"):
        train_on_synthetic(tiny_checkpoint, tstr_real, epochs=0, device="cpu")

    unlabelled = tiny_data.subset(slice(None))
    unlabelled.labels, unlabelled.class_names = None, []
    run = run_to_end(train(tiny_config(steps=1), unlabelled, tmp_path / "uncond"))
    with pytest.raises(ValueError, match="pattern-conditional"):
        train_on_synthetic(run.checkpoint, tstr_real, n_per_pattern=2, epochs=1, device="cpu")


# --------------------------------------------------------------------------- CLI


def _main(argv):
    parser = argparse.ArgumentParser(prog="napari-atagan")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.run(args)


def test_cli_mosaic_then_evaluate(tiny_checkpoint, crops_dir, tmp_path, capsys):
    out = tmp_path / "mosaics"
    assert _main(["mosaic", "--crops", str(crops_dir), "--out", str(out), "--n-cells", "5",
                  "--size", "160", "160", "--count", "2", "--seed", "4"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert len(written) == 2 and written[1]["seed"] == 5
    report = tmp_path / "slide.json"
    assert _main(["evaluate", "attention", "--checkpoint", str(tiny_checkpoint),
                  "--image", written[0]["image"], "--labels", written[0]["labels"],
                  "--diameter", str(written[0]["cell_diameter"]), "--device", "cpu",
                  "--json", str(report), "--cut", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "F1" in text and "Otsu" in text and "given, edge cut 0.4)" in text
    assert "true cells found, by contrast" in text and ">= 4" in text
    saved = json.loads(report.read_text())
    assert saved["n_true"] == 5 and saved["cut"] == saved["cut_used"] == 0.4
    assert sum(b["cells"] for b in saved["by_contrast"]["model"]) == 5

    assert _main(["evaluate", "attention", "--checkpoint", str(tiny_checkpoint), "--crops",
                  str(crops_dir), "--per-pattern", "--limit", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "ellipse IoU" in text and "NuMem" in text


def test_cli_samples_with_tstr(tiny_checkpoint, tstr_real, tmp_path, capsys):
    report = tmp_path / "samples.json"
    assert _main(["evaluate", "samples", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(tstr_real), "-n", "4", "--device", "cpu", "--tstr",
                  "--tstr-per-pattern", "4", "--tstr-epochs", "1", "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "TSTR/TRTS" in text and "Centromere" in text
    saved = json.loads(report.read_text())
    header = next(line for line in text.splitlines() if line.startswith("cells"))
    assert header.split()[-2:] == ["lattice", "KID"] and saved["lattice"] > 0
    tstr = saved["train_on_synthetic"]
    assert tstr["n_per_pattern"] == 4 and tstr["epochs"] == 1
    assert "trained on the first 70% of every pattern's real cells" in text
    assert tstr["classifier_jitter"] is True and "crops recorded anew" in text
    assert _main(["evaluate", "samples", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(tstr_real), "-n", "4", "--device", "cpu", "--tstr",
                  "--tstr-per-pattern", "4", "--tstr-epochs", "1",
                  "--tstr-reference", str(tstr_real), "--plain-classifiers"]) == 0
    text = capsys.readouterr().out
    assert f"trained on cells of {tstr_real}" in text and "flipped and rotated crops only" in text


@pytest.mark.parametrize("argv", [
    ["evaluate", "attention", "--checkpoint", "{ckpt}", "--image", "{img}"],  # no --labels
    ["evaluate", "attention", "--checkpoint", "missing.safetensors", "--crops", "{crops}"],
    ["evaluate", "attention", "--checkpoint", "{ckpt}", "--crops", "{empty}"],
    ["evaluate", "samples", "--checkpoint", "{ckpt}", "--real", "{empty}", "-n", "4"],
    ["evaluate", "samples", "--checkpoint", "{ckpt}", "--real", "{crops}", "-n", "4",
     "--tstr-epochs", "1"],  # belongs to --tstr
    ["evaluate", "samples", "--checkpoint", "{ckpt}", "--real", "{crops}", "-n", "4",
     "--tstr-reference", "{crops}"],  # belongs to --tstr
    ["evaluate", "samples", "--checkpoint", "{ckpt}", "--real", "{crops}", "-n", "4",
     "--plain-classifiers"],  # belongs to --tstr
    ["evaluate", "samples", "--checkpoint", "{ckpt}", "--real", "{crops}", "-n", "4",
     "--tstr", "--tstr-epochs", "1", "--tstr-reference", "{empty}"],  # no cells there
    ["mosaic", "--crops", "{empty}", "--out", "{tmp}/m"],
    ["mosaic", "--crops", "{crops}", "--out", "{tmp}/m", "--size", "64", "64",
     "--n-cells", "50"],
])
def test_cli_user_errors_exit_2(argv, tiny_checkpoint, crops_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    img = tmp_path / "img.npy"
    np.save(img, np.zeros((40, 40), np.uint8))
    fill = {"ckpt": str(tiny_checkpoint), "crops": str(crops_dir), "empty": str(empty),
            "img": str(img), "tmp": str(tmp_path)}
    assert _main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and len(err.strip().splitlines()) == 1


def test_cli_bad_options_exit_2(capsys):
    for argv in (["evaluate", "samples", "--checkpoint", "x", "--real", "y", "-n", "1"],
                 ["evaluate", "attention", "--checkpoint", "x"],
                 ["mosaic", "--crops", "x", "--out", "y", "--size", "10"]):
        with pytest.raises(SystemExit) as exc:
            _main(argv)
        assert exc.value.code == 2


def test_help_documents_every_option():
    parser = argparse.ArgumentParser(prog="napari-atagan")
    sub = parser.add_subparsers(dest="command")
    evaluate, mosaic = register(sub)
    what = evaluate._subparsers._group_actions[0].choices
    for p in (what["attention"], what["samples"], mosaic):
        text = p.format_help()
        for action in p._actions:
            for flag in action.option_strings:
                assert flag in text
            if action.option_strings and action.dest != "help":
                assert action.help


def test_pattern_accuracy_counts_every_call_in_a_confusion_matrix() -> None:
    import torch

    from napari_atagan.data import CellData
    from napari_atagan.evaluation.evaluate import _pattern_accuracy

    class FirstPixel(torch.nn.Module):
        """Calls a cell by the value of its first pixel (0, 1 or 2)."""

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float() + self.w

    called = np.array([0, 0, 1, 2, 2, 2, 1])
    truth = np.array([0, 1, 1, 2, 2, 0, 1])
    images = np.zeros((7, 4, 4), np.float32)
    images[:, 0, 0] = called
    test = CellData(images=images, labels=truth, class_names=["A", "B", "C"])
    r = _pattern_accuracy(FirstPixel(), test, ["A", "B", "C"], batch_size=3)
    assert r["confusion"] == [[1, 0, 1], [1, 2, 0], [0, 0, 2]]
    assert r["accuracy"] == pytest.approx(5 / 7)
    assert r["per_pattern"] == pytest.approx({"A": 0.5, "B": 2 / 3, "C": 1.0})
