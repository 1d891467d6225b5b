"""``napari-atagan translate train`` and ``translate apply``."""

from __future__ import annotations

import contextlib
import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_atagan.cli import main
from napari_atagan.export import read_tiff_metadata
from napari_atagan.simulate import simulate_crops, simulate_slide, write_crops_folder
from napari_atagan.translate import load_translator, translate_image

PATTERNS = ("Homogeneous", "NuMem")
TINY = ["--device", "cpu", "--set", "image_size=16", "--set", "widths=[4,8,8]",
        "--set", "n_res_blocks=1", "--set", "attention_widths=[4,4]",
        "--set", "d_widths=[4,8]", "--set", "batch_size=4", "--set", "log_every=1",
        "--set", "sample_every=2", "--set", "checkpoint_every=2",
        "--set", "attention_freeze_after=0.5"]
"""A model small enough to train a few steps in about a second."""


def run_cli(args):
    """``main(args)`` with its stdout and stderr: ``(code, out, err)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def train_args(domains, out, *extra):
    return ["translate", "train", "--a", str(domains[0]), "--b", str(domains[1]),
            "--out", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    """Two folders of 32 px crops in the I3A layout (with masks): dim and bright cells."""
    root = tmp_path_factory.mktemp("domains")
    dim = simulate_crops(8, size=32, seed=1, intensity=0.3, patterns=PATTERNS)
    bright = simulate_crops(8, size=32, seed=2, intensity=1.0, patterns=PATTERNS)
    return write_crops_folder(dim, root / "dim"), write_crops_folder(bright, root / "bright")


@pytest.fixture(scope="module")
def trained(domains, tmp_path_factory):
    """``translate train`` for 4 steps: ``(code, stdout, stderr, run folder)``."""
    run = tmp_path_factory.mktemp("run")
    return (*run_cli(train_args(domains, run, "--steps", "4", "--seed", "3")), run)


@pytest.fixture(scope="module")
def checkpoint(trained):
    assert trained[0] == 0, trained[2]
    return trained[3] / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory):
    """A 16-bit 150 x 170 slide of simulated cells, as a TIFF."""
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    tifffile.imwrite(path, simulate_slide((150, 170), n_cells=12, cell_diameter=22, seed=3,
                                          bit_depth=16).image)
    return path


# --------------------------------------------------------------------------- help
@pytest.mark.parametrize("action", ["train", "apply"])
def test_help_documents_every_option(action):
    from napari_atagan.cli import build_parser

    translate = build_parser()._subparsers._group_actions[0].choices["translate"]
    sub = translate._subparsers._group_actions[0].choices[action]
    text = sub.format_help()
    for option in sub._actions:
        for flag in option.option_strings:
            assert flag in text
        if option.option_strings and option.dest != "help":
            assert option.help, f"translate {action} {option.option_strings} has no help"


# --------------------------------------------------------------------------- train
def test_train_prints_progress_and_the_checkpoint(trained, checkpoint, domains):
    code, out, err, run = trained
    assert out.strip() == str(checkpoint) and checkpoint.is_file()
    assert (run / "summary.json").is_file()
    assert "attention-guided translation on cpu: 8 cells of 'dim' <-> 8 cells of 'bright'" in err
    assert "4/4" in err and "cycle=" in err and "img/s" in err
    assert f"checkpoint: {checkpoint} (step 2)" in err and "done: 4 steps" in err
    translator = load_translator(checkpoint)
    assert translator.step == 4 and translator.attention
    config = translator.config
    assert config.widths == (4, 8, 8) and config.steps == 4 and config.seed == 3
    command = config.extra["command"]
    assert command.startswith(f"napari-atagan translate train --a {domains[0]} --b ")
    assert "--steps 4" in command and "--set 'widths=[4,8,8]'" in command


def test_resume_continues_to_the_new_total(checkpoint, domains, tmp_path):
    code, out, err = run_cli(train_args(domains, tmp_path, "--steps", "6", "--resume",
                                        str(checkpoint), "--no-attention"))
    assert code == 0, err
    assert "resumed from checkpoint.safetensors at step 4" in err
    assert "ignored: attention" in err  # a resumed run keeps its own settings
    resumed = load_translator(out.strip())
    assert resumed.step == 6 and resumed.attention
    assert resumed.config.extra == load_translator(checkpoint).config.extra


def test_mask_weight_teaches_the_attention_with_the_masks(domains, tmp_path):
    code, out, err = run_cli(train_args(domains, tmp_path / "run", "--steps", "2",
                                        "--mask-weight", "1.5"))
    assert code == 0, err
    assert "learns from the cell masks" in err
    translator = load_translator(out.strip())
    assert translator.config.mask_weight == 1.5
    assert "--mask-weight 1.5" in translator.config.extra["command"]
    with pytest.raises(SystemExit) as exc:
        run_cli(train_args(domains, tmp_path / "bad", "--mask-weight=-1"))
    assert exc.value.code == 2


def test_grey_levels_own_is_recorded_with_the_run(domains, tmp_path):
    code, out, err = run_cli(train_args(domains, tmp_path / "run", "--steps", "2",
                                        "--grey-levels", "own"))
    assert code == 0, err
    assert "every crop on its own grey levels" in err
    translator = load_translator(out.strip())
    assert translator.config.grey_levels == "own"
    assert "--grey-levels own" in translator.config.extra["command"]
    with pytest.raises(SystemExit) as exc:
        run_cli(train_args(domains, tmp_path / "bad", "--grey-levels", "auto"))
    assert exc.value.code == 2


def test_grey_levels_target_is_recorded_and_said_when_applied(domains, tmp_path, slide_file):
    code, out, err = run_cli(train_args(domains, tmp_path / "run", "--steps", "2",
                                        "--grey-levels", "target"))
    assert code == 0, err
    assert "translated cells on the target domain's grey range" in err
    translator = load_translator(out.strip())
    assert translator.config.grey_levels == "target"
    code, _, err = run_cli(["translate", "apply", "--checkpoint", out.strip(), "--image",
                            str(slide_file), "--out", str(tmp_path / "out"), "--device",
                            "cpu"])
    assert code == 0, err
    assert f"grey range of {translator.domain_name('b')}'s cells" in err
    assert "composite hard" in err  # the default for a model of target levels


def test_no_attention_trains_the_cyclegan_baseline(domains, tmp_path, slide_file):
    code, out, err = run_cli(train_args(domains, tmp_path / "run", "--steps", "2",
                                        "--no-attention"))
    assert code == 0, err
    assert "CycleGAN (no attention)" in err
    translator = load_translator(out.strip())
    assert not translator.attention and "--no-attention" in translator.config.extra["command"]
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(translator.path),
                              "--image", str(slide_file), "--out", str(tmp_path / "res"),
                              "--device", "cpu"])
    assert code == 0, err
    attention = tifffile.imread(out.split()[1])
    assert attention.dtype == np.float32 and np.all(attention == 1.0)


def test_sigterm_stops_after_the_step_with_a_complete_checkpoint(domains, tmp_path,
                                                                 monkeypatch):
    import napari_atagan.translate as translate
    from napari_atagan.events import Progress

    real = translate.train_translation

    def terminated_after_one_step(*args, **kwargs):
        for event in real(*args, **kwargs):
            yield event
            if isinstance(event, Progress) and event.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(translate, "train_translation", terminated_after_one_step)
    previous = signal.getsignal(signal.SIGTERM)
    code, out, err = run_cli(train_args(domains, tmp_path, "--steps", "50"))
    assert code == 130, err
    assert signal.getsignal(signal.SIGTERM) is previous
    assert "stopped at step" in err and "--resume" in err
    stopped = load_translator(out.strip())
    assert 1 <= stopped.step < 50
    assert stopped.checkpoint.metadata["summary"]["finished"] is False


@pytest.mark.parametrize("args, message", [
    (["--a", "/nonexistent/dim"], "/nonexistent/dim"),
    (["--set", "colour=1"], "--set colour=1: unknown translation option 'colour'"),
    (["--set", "steps=lots"], "steps must be int"),
    (["--set", "image_size=18"], "image_size must be a multiple of 4"),
    (["--resume", "/nonexistent/ckpt.safetensors"], "--resume"),
])
def test_train_mistakes_are_one_line(domains, tmp_path, args, message):
    base = ["translate", "train", "--a", str(domains[0]), "--b", str(domains[1]),
            "--out", str(tmp_path / "run"), "--steps", "2", "--device", "cpu"]
    code, out, err = run_cli(base + args)
    assert code == 2 and out == ""
    assert err.startswith("napari-atagan translate train: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_train_refuses_to_resume_an_atagan_checkpoint(domains, bad_inputs, tmp_path):
    code, out, err = run_cli(train_args(domains, tmp_path, "--resume",
                                        str(bad_inputs["atagan"])))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("napari-atagan translate train: error:") and "ATA-GAN" in err
    assert not (tmp_path / "checkpoint.safetensors").exists()


# --------------------------------------------------------------------------- apply
def test_apply_writes_both_tiffs_like_translate_image(checkpoint, slide_file, tmp_path):
    out_dir = tmp_path / "res"
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(checkpoint),
                              "--image", str(slide_file), "--out", str(out_dir),
                              "--tile-size", "48", "--device", "cpu"])
    assert code == 0, err
    translated_path = out_dir / "slide_translated.tif"
    attention_path = out_dir / "slide_translation_attention.tif"
    assert out.split() == [str(translated_path), str(attention_path)]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [translated_path.name, attention_path.name])  # no scratch or temporary left
    assert "slide.tif: 150 x 170 px, uint16; dim -> bright" in err
    assert "translate 16/16 (100%)" in err  # the progress over the tiles

    image = tifffile.imread(slide_file)
    translated, attention = tifffile.imread(translated_path), tifffile.imread(attention_path)
    assert translated.shape == attention.shape == image.shape
    assert translated.dtype == image.dtype and attention.dtype == np.float32
    assert 0.0 <= attention.min() and attention.max() <= 1.0
    want_t, want_a = translate_image(checkpoint, image, tile_size=48, device="cpu")
    np.testing.assert_array_equal(translated, want_t)
    np.testing.assert_array_equal(attention, want_a)
    whole, _ = translate_image(checkpoint, image, device="cpu")  # one tile: no seams
    assert np.abs(translated.astype(int) - whole.astype(int)).max() <= 1
    meta = read_tiff_metadata(translated_path)
    assert meta["kind"] == "translation" and meta["direction"] == "a2b"
    assert meta["source_domain"] == "dim" and meta["target_domain"] == "bright"
    assert read_tiff_metadata(attention_path)["checkpoint"] == checkpoint.name


def test_apply_b2a_at_a_cell_diameter(checkpoint, slide_file, tmp_path):
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(checkpoint),
                              "--image", str(slide_file), "--out", str(tmp_path),
                              "--direction", "b2a", "--diameter", "30", "--device", "cpu"])
    assert code == 0, err
    assert "bright -> dim" in err and "cells of 30.0 px resized to" in err
    image = tifffile.imread(slide_file)
    want, _ = translate_image(checkpoint, image, direction="b2a", cell_diameter=30,
                              device="cpu")
    np.testing.assert_array_equal(tifffile.imread(out.split()[0]), want)


def test_apply_hard_composite_is_translate_image_s_and_recorded(checkpoint, slide_file,
                                                                tmp_path):
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(checkpoint),
                              "--image", str(slide_file), "--out", str(tmp_path),
                              "--composite", "hard", "--device", "cpu"])
    assert code == 0, err
    image = tifffile.imread(slide_file)
    want, want_a = translate_image(checkpoint, image, device="cpu", composite="hard")
    translated_path, attention_path = (Path(p) for p in out.split())
    np.testing.assert_array_equal(tifffile.imread(translated_path), want)
    np.testing.assert_array_equal(tifffile.imread(attention_path), want_a)
    assert read_tiff_metadata(translated_path)["composite"] == "hard"
    # an attention above 0.5 nowhere leaves the image as it was: the user is told
    assert ("no pixel's attention is above 0.5" in err) == bool(want_a.max() <= 0.5)
    # the command offers the engine's composites (listed here without importing torch)
    from napari_atagan.cli.main import build_parser
    from napari_atagan.translate import COMPOSITES

    apply = build_parser()._subparsers._group_actions[0].choices["translate"]
    apply = apply._subparsers._group_actions[0].choices["apply"]
    assert tuple(next(a.choices for a in apply._actions if a.dest == "composite")) == COMPOSITES
    with pytest.raises(SystemExit) as refused:  # argparse: usage and the choices, exit 2
        run_cli(["translate", "apply", "--checkpoint", str(checkpoint), "--image",
                 str(slide_file), "--out", str(tmp_path / "x"), "--composite", "blend"])
    assert refused.value.code == 2 and not (tmp_path / "x").exists()


def test_apply_reads_the_stained_channel_of_rgb(checkpoint, tmp_path):
    import imageio.v3 as iio

    rgb = np.zeros((48, 56, 3), np.uint8)
    rgb[..., 1] = simulate_slide((48, 56), n_cells=3, cell_diameter=16, seed=4).image
    path = tmp_path / "rgb.png"
    iio.imwrite(path, rgb)
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(checkpoint),
                              "--image", str(path), "--out", str(tmp_path / "res"),
                              "--device", "cpu"])
    assert code == 0, err
    assert "rgb.png: channel 1 (green) of 3, chosen automatically" in err
    translated = tifffile.imread(out.split()[0])
    assert translated.shape == (48, 56) and translated.dtype == np.uint8
    assert read_tiff_metadata(out.split()[0])["channel"] == 1


def test_apply_keeps_a_float64_image_float64(checkpoint, tmp_path):
    image = simulate_slide((40, 40), n_cells=2, cell_diameter=16, seed=5).image
    path = tmp_path / "cells.npy"
    np.save(path, image.astype(np.float64))
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(checkpoint),
                              "--image", str(path), "--out", str(tmp_path / "res"),
                              "--device", "cpu"])
    assert code == 0, err
    translated = tifffile.imread(out.split()[0])
    assert translated.dtype == np.float64 and translated.shape == (40, 40)
    assert read_tiff_metadata(out.split()[0])["kind"] == "translation"


def test_apply_stopped_writes_nothing(checkpoint, slide_file, tmp_path, monkeypatch):
    import napari_atagan.translate as translate

    real = translate.translate_image

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(translate, "translate_image", terminated)
    out_dir = tmp_path / "res"
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(checkpoint),
                              "--image", str(slide_file), "--out", str(out_dir),
                              "--device", "cpu"])
    assert code == 130 and out == "" and "interrupted" in err
    assert not out_dir.exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Files that ``apply`` refuses, by name."""
    from napari_atagan.checkpoint import save_checkpoint
    from napari_atagan.gan.config import TrainConfig
    from napari_atagan.gan.models import build_models

    root = tmp_path_factory.mktemp("bad")
    files = {"grey": root / "grey.tif", "corrupt": root / "corrupt.tif",
             "rgb": root / "rgb.tif", "nan": root / "nan.tif", "small": root / "small.tif"}
    tifffile.imwrite(files["grey"], np.full((32, 32), 7, np.uint8))
    files["corrupt"].write_bytes(b"II*\x00" + b"\x17" * 200)
    tifffile.imwrite(files["rgb"], np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    nan = np.ones((32, 32), np.float32)
    nan[5, 5] = np.nan
    tifffile.imwrite(files["nan"], nan)
    tifffile.imwrite(files["small"], np.ones((10, 10), np.uint8))
    config = TrainConfig(image_size=16, z_dim=8, g_channels=(16, 8), d_channels=(8, 16))
    g, d = build_models(config, 0)
    files["atagan"] = save_checkpoint(root / "atagan", config=config, modules={"G": g, "D": d})
    return files


@pytest.mark.parametrize("image, extra, message", [
    ("missing", [], "--image"),
    ("corrupt", [], "could not read image"),
    ("grey", ["--checkpoint", "atagan"], "is an ATA-GAN checkpoint, not an attention-guided"),
    ("grey", ["--checkpoint", "missing"], "--checkpoint"),
    ("rgb", ["--channel", "5"], "channel 5 is out of range"),
    ("nan", [], "NaN"),
    ("small", [], "10 x 10 pixels"),
    ("grey", ["--tile-size", "8"], "--tile-size must be at least 16"),
])
def test_apply_mistakes_are_one_line_and_write_nothing(checkpoint, bad_inputs, tmp_path,
                                                       image, extra, message):
    out_dir = tmp_path / "res"
    path = bad_inputs.get(image, tmp_path / "missing.tif")
    ckpt = checkpoint
    if "--checkpoint" in extra:
        ckpt = bad_inputs.get(extra[1], tmp_path / "missing.safetensors")
        extra = []
    code, out, err = run_cli(["translate", "apply", "--checkpoint", str(ckpt), "--image",
                              str(path), "--out", str(out_dir), "--device", "cpu", *extra])
    assert code == 2 and out == ""
    lines = [line for line in err.strip().splitlines() if not line.startswith("rgb.tif:")]
    assert len(lines) == 1 and lines[0].startswith("napari-atagan translate apply: error:")
    assert message in lines[0]
    assert not out_dir.exists()
