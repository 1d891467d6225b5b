import json
import subprocess
import sys

import pytest

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.cli import build_parser, main


def _help(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return sub.format_help(), sub


@pytest.mark.parametrize("command", ["train", "synth", "attention", "evaluate", "mosaic", "export",
                                     "simulate", "demo"])
def test_help_documents_every_option(command):
    text, sub = _help(command)
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"


def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "napari_atagan", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("napari-atagan ")


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cells"
    assert main(["simulate", "--crops", "24", "--size", "32", "--out", str(out)]) == 0
    return out


def test_train_then_synth_round_trip(tmp_path, cells, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", str(cells), "--out", str(run), "--quick", "--steps", "2",
                 "--batch-size", "4", "--image-size", "32", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["finished"]
    ck = load_checkpoint(summary["checkpoint"])
    assert ck.config.teacher == "mask" and ck.config.image_size == 32
    assert len(ck.class_names) == 6

    synth = tmp_path / "synth"
    assert main(["synth", "--checkpoint", summary["checkpoint"], "-n", "5",
                 "--pattern", "Golgi", "--out", str(synth), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["patterns"] == {"Golgi": 5}
    assert len(list((synth / "Golgi").glob("*_Mask.png"))) == 5

    # the synthetic folder is training data again; resume extends the first run
    assert main(["train", "--data", str(synth), "--out", str(tmp_path / "again"), "--quick",
                 "--steps", "1", "--batch-size", "4", "--image-size", "32",
                 "--teacher", "none", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(cells), "--out", str(run), "--steps", "3",
                 "--image-size", "32", "--resume", summary["checkpoint"], "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
        (["synth", "--checkpoint", "/nonexistent.safetensors", "--out", "x"], "nonexistent"),
        (["simulate", "--crops", "3"], "--out"),
    ],
)
def test_user_errors_exit_2_without_traceback(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_corrupt_checkpoint_and_unknown_pattern(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["synth", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.safetensors" in err
    assert "0%" not in err  # the error alone, no progress bar before it
    assert main(["synth", "--checkpoint", str(tiny_checkpoint), "--pattern", "Golgi",
                 "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Golgi" in err and "0%" not in err


def test_package_warnings_are_one_plain_line(tmp_path, capsys):
    """A warning of this package reaches a command-line user as one line naming the
    command, not as Python's warning with a file name and a line of source."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "crops" / "Homogeneous"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"{i:05d}.png")
    assert main(["train", "--data", str(tmp_path / "crops"), "--out", str(tmp_path / "run"),
                 "--quick", "--steps", "1", "--batch-size", "4", "--image-size", "32",
                 "--teacher", "none", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "napari-atagan train: warning: 4 colour image(s) were converted to grey" in err
    assert "UserWarning" not in err and "load_folder(" not in err


def test_epochs_become_steps(tmp_path, cells, capsys):
    # 24 cells, batch 8: 1.5 passes over the data are 5 steps (rounded up)
    assert main(["train", "--data", str(cells), "--out", str(tmp_path), "--quick",
                 "--epochs", "1.5", "--batch-size", "8", "--image-size", "32",
                 "--teacher", "none", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5


def test_set_reaches_the_saved_config_and_refuses_typos(tmp_path, cells, capsys):
    assert main(["train", "--data", str(cells), "--out", str(tmp_path), "--quick",
                 "--steps", "1", "--batch-size", "4", "--image-size", "32", "--device", "cpu",
                 "--set", "aug_p=0.25", "--set", "lr_d=4e-4", "--set", "ema_decay=0.99"]) == 0
    config = load_checkpoint(json.loads(capsys.readouterr().out)["checkpoint"]).config
    assert (config.aug_p, config.lr_d, config.ema_decay) == (0.25, 4e-4, 0.99)
    for bad, message in [("aug_q=1", "unknown training option 'aug_q'"),
                         ("aug_p=2", "aug_p must be in [0, 1]"),
                         ("steps=many", "steps must be int")]:
        assert main(["train", "--data", str(cells), "--out", str(tmp_path), "--set", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_bad_option_values_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--checkpoint", "x", "-n", "-3", "--out", "o"])
    assert exc.value.code == 2
    assert ">= 1" in capsys.readouterr().err


def test_demo_headless_writes_every_layer_and_a_summary(tmp_path, capsys):
    import tifffile

    out = tmp_path / "demo"
    assert main(["demo", "--headless", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    slide = tifffile.imread(out / "slide.tif")
    assert slide.shape == (1024, 1024) and slide.dtype == "uint16"
    att = tifffile.imread(out / "slide_attention.tif")
    assert att.shape == slide.shape and att.dtype == "float32" and att.min() >= 0
    labels = tifffile.imread(out / "slide_labels.tif")
    assert labels.shape == slide.shape and labels.dtype == "uint16"
    assert summary["attention_labels"]["cells"] == labels.max()
    cells = tifffile.imread(out / "synthetic_cells.tif")
    assert cells.ndim == 3 and cells.shape[1:] == (64, 64)
    assert tifffile.imread(out / "synthetic_masks.tif").shape == cells.shape
    assert (out / "overview.png").stat().st_size > 10_000
    for key in ("attention_labels", "otsu_baseline"):
        assert 0 <= summary[key]["object_f1"] <= 1 and 0 <= summary[key]["pixel_iou"] <= 1


def test_tstr_help_states_the_engine_defaults():
    from napari_atagan.evaluation.evaluate import TSTR_CELLS, TSTR_EPOCHS

    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    samples = evaluate._subparsers._group_actions[0].choices["samples"]
    helps = {a.dest: a.help for a in samples._actions}
    assert f"default: {TSTR_CELLS})" in helps["tstr_per_pattern"]
    assert f"default: {TSTR_EPOCHS})" in helps["tstr_epochs"]
