"""Real microscope inputs: colour and multi-channel images, and files that cannot be read."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_atagan import default_model_path
from napari_atagan.channels import (
    SAMPLE_PIXELS,
    ChannelView,
    channel_axis,
    grey_view,
    open_image,
    open_image_file,
    pick_stain_channel,
)
from napari_atagan.cli import main
from napari_atagan.export import read_tiff_metadata

DIAMETER = 24


@pytest.fixture(scope="module")
def slide():
    from napari_atagan.simulate import simulate_slide

    return simulate_slide((128, 128), n_cells=6, cell_diameter=DIAMETER, seed=5)


@pytest.fixture(scope="module")
def grey8(slide):
    """The simulated slide as an 8-bit image, as a camera's RGB file would hold it."""
    img = slide.image.astype(np.float64)
    return np.round(255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)


def _colour(grey, stain, n=3, seed=0):
    """An RGB(A) image with ``grey`` in channel ``stain`` and faint noise elsewhere."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 4, (*grey.shape, n)).astype(np.uint8)
    out[..., stain] = grey
    if n == 4:
        out[..., 3] = 255
    return out


# --------------------------------------------------------------------------- choosing


@pytest.mark.parametrize("stain, name", [(0, "red"), (1, "green"), (2, "blue")])
def test_the_stained_channel_is_chosen(grey8, stain, name):
    index, got, reason = pick_stain_channel(_colour(grey8, stain))
    assert (index, got) == (stain, name)
    assert "spread" in reason and name in reason


def test_rgba_never_picks_alpha(grey8):
    rgba = _colour(grey8, 0, n=4)
    rgba[..., 3] = np.random.default_rng(1).integers(0, 256, grey8.shape)  # a wild alpha
    assert pick_stain_channel(rgba)[:2] == (0, "red")
    view, info = grey_view(_colour(grey8, 1, n=4))
    assert info["channel"] == 1 and info["channels"] == 4
    np.testing.assert_array_equal(view, grey8)


def test_a_copy_of_the_stain_ties_and_green_wins(grey8):
    rgb = np.zeros((*grey8.shape, 3), np.uint8)
    rgb[..., 0] = rgb[..., 1] = grey8  # red is a copy of green, blue is empty
    assert pick_stain_channel(rgb)[:2] == (1, "green")


def test_grey_saved_as_colour_uses_the_luminance(grey8):
    rgb = np.stack([grey8] * 3, axis=-1)
    index, name, reason = pick_stain_channel(rgb)
    assert index is None and name == "luminance" and "near-identical" in reason
    view, info = grey_view(rgb)
    assert info["channel"] is None and info["channel_source"] == "auto"
    np.testing.assert_allclose(np.asarray(view), grey8, atol=1e-3)
    flat = np.full((5, 6, 3), 9, np.uint8)  # no stain anywhere: same answer, no error
    assert pick_stain_channel(flat)[0] is None


def test_nan_is_left_out_of_the_choice(grey8):
    rgb = _colour(grey8, 1).astype(np.float32)
    rgb[:10, :10, 1] = np.nan
    assert pick_stain_channel(rgb)[:2] == (1, "green")
    all_nan = np.full((8, 8, 3), np.nan, np.float32)
    assert pick_stain_channel(all_nan)[0] is None


def test_grey_view_keeps_a_memmap_a_view(tmp_path, grey8):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, _colour(grey8, 1), photometric="rgb")
    opened = open_image_file(path)
    assert isinstance(opened.data, np.memmap) and opened.axes == "YXS"
    view, info = grey_view(opened.data, axes=opened.axes)
    assert isinstance(view, np.memmap) and np.shares_memory(view, opened.data)
    assert (info["channel"], info["channel_name"]) == (1, "green")
    np.testing.assert_array_equal(view, grey8)


class _Recorder:
    """A huge colour array-like that records which regions are read."""

    def __init__(self, shape):
        self.shape, self.dtype, self.keys = shape, np.dtype(np.uint8), []
        self._data = np.broadcast_to(np.zeros((), np.uint8), shape)

    def __getitem__(self, key):
        self.keys.append(key)
        return self._data[key]


def test_choosing_reads_a_subsample_and_the_view_reads_regions():
    huge = _Recorder((40_000, 30_000, 3))
    view, info = grey_view(huge, "auto")
    (key,) = huge.keys
    assert key[0].step > 1 and key[1].step > 1
    assert huge._data[key].size <= 3 * SAMPLE_PIXELS * 1.01
    assert isinstance(view, ChannelView) and view.shape == (40_000, 30_000)
    huge.keys.clear()
    assert view[100:110, 200:230].shape == (10, 30)
    assert huge.keys == [(slice(100, 110), slice(200, 230), slice(None))]  # luminance


class _NoSteps:
    """An array-like that reads only plain slices (as some lazy arrays do)."""

    def __init__(self, data):
        self._data, self.shape, self.dtype = data, data.shape, data.dtype

    def __getitem__(self, key):
        if any(isinstance(k, slice) and (k.step or 1) != 1 for k in key):
            raise NotImplementedError("no step slicing")
        return self._data[key]


def test_choosing_without_step_slicing(grey8, monkeypatch):
    import napari_atagan.channels as channels

    monkeypatch.setattr(channels, "SAMPLE_PIXELS", 1000)  # every 4th pixel of 128 x 128
    stack = np.stack([_colour(grey8, 2), _colour(grey8, 2, seed=1)])
    for image in (_colour(grey8, 2), stack):
        assert pick_stain_channel(_NoSteps(image))[:2] == (2, "blue")
        assert pick_stain_channel(image)[2] == pick_stain_channel(_NoSteps(image))[2]


def test_colour_stack_and_ellipsis(grey8):
    stack = np.stack([_colour(grey8, 1), _colour(grey8[::-1], 1)])
    view, info = grey_view(stack, "grey")
    assert isinstance(view, ChannelView) and view.shape == (2, *grey8.shape)
    assert view[1].shape == grey8.shape and view[..., 5].shape == (2, grey8.shape[0])
    np.testing.assert_allclose(view[1, :4, :4], stack[1, :4, :4, :3].astype(np.float32)
                               @ np.array([0.2125, 0.7154, 0.0721], np.float32))
    view, info = grey_view(stack)
    assert info["channel"] == 1
    np.testing.assert_array_equal(view[1], grey8[::-1])


def test_channel_axis_from_the_file_or_the_shape():
    assert channel_axis((64, 64, 3)) == 2 and channel_axis((2, 64, 64, 4)) == 3
    assert channel_axis((3, 64, 64)) is None  # a stack of three planes
    assert channel_axis((3, 64, 64), "CYX") == 0 and channel_axis((2, 3, 64, 64), "TCYX") == 1
    assert channel_axis((12, 64, 64), "CYX") is None  # too many for channels: planes
    assert channel_axis((64, 64, 3), "TYX") is None


def test_channel_first_imagej_tiff(tmp_path, grey8):
    rng = np.random.default_rng(2)
    planes = np.stack([rng.integers(0, 5, grey8.shape), grey8.astype(np.int64) * 200,
                       grey8.astype(np.int64) * 20]).astype(np.uint16)
    path = tmp_path / "channels.tif"
    tifffile.imwrite(path, planes, imagej=True, metadata={"axes": "CYX"})
    opened = open_image_file(path)
    assert opened.axes == "CYX" and opened.data.shape == planes.shape
    view, info = grey_view(opened.data, axes=opened.axes)
    assert (info["channel"], info["channel_name"], info["channel_source"]) == \
        (1, "channel 1", "auto")
    np.testing.assert_array_equal(view, planes[1])
    view, info = grey_view(opened.data, 2, axes=opened.axes)
    assert info["channel_source"] == "given"
    np.testing.assert_array_equal(view, planes[2])
    with pytest.raises(ValueError, match=r"channel 3 is out of range: the image has 3 channels"):
        grey_view(opened.data, 3, axes=opened.axes)
    with pytest.raises(ValueError, match="not red, green and blue"):
        grey_view(opened.data, "grey", axes=opened.axes)


def test_stacks_stay_stacks_and_grey_images_have_one_channel(tmp_path, grey8):
    stack = np.stack([grey8, grey8, grey8])
    tifffile.imwrite(tmp_path / "t.tif", stack, imagej=True, metadata={"axes": "TYX"})
    opened = open_image_file(tmp_path / "t.tif")
    view, info = grey_view(opened.data, axes=opened.axes)
    assert view.shape == stack.shape and info == {}
    with pytest.raises(ValueError, match="stack of 3 time points, not channels"):
        grey_view(opened.data, 1, axes=opened.axes)
    view, info = grey_view(grey8, 0)
    assert view is grey8 and info["channel"] == 0
    with pytest.raises(ValueError, match="channel 1 is out of range: the image has one channel"):
        grey_view(grey8, 1)
    with pytest.raises(ValueError, match=">= 0"):
        grey_view(grey8, -1)
    rgb = _colour(grey8, 1)
    with pytest.raises(ValueError, match=r"3 channels \(0 red, 1 green, 2 blue\)"):
        grey_view(rgb, 3)


# --------------------------------------------------------------------------- files that fail


def _bad_files(tmp_path, grey8):
    tifffile.imwrite(tmp_path / "good.tif", grey8.astype(np.uint16))
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "random.tif").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "half.tif").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "header.tif").write_bytes(data[:60])
    tifffile.imwrite(tmp_path / "zip.tif", grey8, compression="zlib", tile=(32, 32))
    zipped = (tmp_path / "zip.tif").read_bytes()
    (tmp_path / "halfzip.tif").write_bytes(zipped[: len(zipped) * 2 // 3])
    from PIL import Image

    Image.fromarray(_colour(grey8, 1)).save(tmp_path / "rgb.png")
    png = (tmp_path / "rgb.png").read_bytes()
    (tmp_path / "half.png").write_bytes(png[: len(png) // 2])
    np.save(tmp_path / "good.npy", grey8)
    npy = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "half.npy").write_bytes(npy[: len(npy) // 2])
    return ["random.tif", "half.tif", "empty.tif", "header.tif", "halfzip.tif", "half.png",
            "half.npy"]


def test_unreadable_files_raise_one_line_value_errors(tmp_path, grey8):
    for name in _bad_files(tmp_path, grey8):
        with pytest.raises(ValueError) as caught:
            open_image(tmp_path / name)
        message = str(caught.value)
        assert name in message and "\n" not in message, message
    assert "empty" in str(pytest.raises(ValueError, open_image, tmp_path / "empty.tif").value)
    assert "truncated" in str(pytest.raises(ValueError, open_image, tmp_path / "half.tif").value)
    assert "not a TIFF" in str(pytest.raises(ValueError, open_image,
                                             tmp_path / "random.tif").value)
    png = open_image_file(tmp_path / "rgb.png")
    assert png.axes == "YXS" and png.data.shape == (*grey8.shape, 3)


def test_cli_reports_unreadable_files_in_one_line(tmp_path, grey8, capsys):
    names = _bad_files(tmp_path, grey8)
    for name in names:
        for argv in (["attention", "--diameter", "20", "--out", str(tmp_path / "out")],
                     ["evaluate", "attention", "--labels", str(tmp_path / "good.npy")]):
            code = main([*argv, "--checkpoint", str(default_model_path()), "--image",
                         str(tmp_path / name), "--device", "cpu"])
            err = capsys.readouterr().err
            assert code == 2, (name, err)
            assert name in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("image, message", [
    (np.full((40, 40), np.nan, np.float32), "NaN"),
    (np.zeros((1, 1), np.uint16), "1 x 1 pixels"),
    (np.zeros((1, 1, 3), np.uint8), "1 x 1 pixels"),
])
def test_cli_nan_and_tiny_images(tmp_path, capsys, image, message):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, image, photometric="rgb" if image.ndim == 3 else None)
    code = main(["attention", "--checkpoint", str(default_model_path()), "--image", str(path),
                 "--diameter", "20", "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


# --------------------------------------------------------------------------- command line


def _attention(tmp_path, image, *extra):
    out = tmp_path / "out"
    code = main(["attention", "--checkpoint", str(default_model_path()), "--image", str(image),
                 "--diameter", str(DIAMETER), "--out", str(out), "--device", "cpu", *extra])
    return code, out


def test_cli_runs_an_rgb_slide_on_its_stained_channel(tmp_path, grey8, capsys):
    tifffile.imwrite(tmp_path / "grey.tif", grey8)
    tifffile.imwrite(tmp_path / "rgb.tif", _colour(grey8, 1), photometric="rgb")
    code, out = _attention(tmp_path, tmp_path / "grey.tif")
    assert code == 0
    grey_summary = json.loads(capsys.readouterr().out)
    assert "channel" not in grey_summary and grey_summary["cells"] > 0
    code, out = _attention(tmp_path, tmp_path / "rgb.tif")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert (summary["channel"], summary["channel_name"], summary["channel_source"]) == \
        (1, "green", "auto")
    assert summary["cells"] == grey_summary["cells"]
    assert "rgb.tif: channel 1 (green) of 3, chosen automatically" in captured.err
    for kind in ("attention", "labels"):
        meta = read_tiff_metadata(out / f"rgb_{kind}.tif")
        assert meta["channel"] == 1 and meta["channel_name"] == "green"
        assert meta["channel_source"] == "auto"
    np.testing.assert_array_equal(tifffile.imread(out / "rgb_attention.tif"),
                                  tifffile.imread(out / "grey_attention.tif"))

    code, out = _attention(tmp_path, tmp_path / "rgb.tif", "--channel", "0")
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["channel_name"] == "red" and summary["channel_source"] == "given"
    code, out = _attention(tmp_path, tmp_path / "rgb.tif", "--grey")
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["channel_name"] == "luminance" and summary["channel"] is None
    code, _ = _attention(tmp_path, tmp_path / "rgb.tif", "--grey", "--channel", "1")
    assert code == 2 and "exclude each other" in capsys.readouterr().err
    code, _ = _attention(tmp_path, tmp_path / "rgb.tif", "--channel", "3")
    err = capsys.readouterr().err
    assert code == 2 and "channel 3 is out of range" in err and len(err.splitlines()) == 1


def test_cli_png_and_channel_first_tiff(tmp_path, grey8, capsys):
    from PIL import Image

    Image.fromarray(_colour(grey8, 1)).save(tmp_path / "slide.png")
    code, _ = _attention(tmp_path, tmp_path / "slide.png")
    assert code == 0 and json.loads(capsys.readouterr().out)["channel_name"] == "green"

    planes = np.stack([np.zeros_like(grey8), grey8, grey8 // 4]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ch.tif", planes, imagej=True, metadata={"axes": "CYX"})
    code, out = _attention(tmp_path, tmp_path / "ch.tif")
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["channel"] == 1 and summary["channel_source"] == "auto"
    assert tifffile.imread(out / "ch_labels.tif").shape == grey8.shape
    code, out = _attention(tmp_path, tmp_path / "ch.tif", "--channel", "2")
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and (summary["channel"], summary["channel_source"]) == (2, "given")
    assert read_tiff_metadata(out / "ch_labels.tif")["channel"] == 2
    code, _ = _attention(tmp_path, tmp_path / "ch.tif", "--channel", "5")
    err = capsys.readouterr().err
    assert code == 2 and "channel 5 is out of range: the image has 3 channels" in err


def test_cli_evaluate_attention_on_an_rgb_slide(tmp_path, slide, grey8, capsys):
    tifffile.imwrite(tmp_path / "rgb.tif", _colour(grey8, 1), photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", slide.labels)
    results = tmp_path / "results.json"
    code = main(["evaluate", "attention", "--checkpoint", str(default_model_path()), "--image",
                 str(tmp_path / "rgb.tif"), "--labels", str(tmp_path / "truth.tif"),
                 "--diameter", str(DIAMETER), "--device", "cpu", "--json", str(results)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads(results.read_text())
    assert saved["channel"] == 1 and saved["channel_name"] == "green"
    assert saved["n_true"] == 6 and saved["model"]["tp"] > 0
    assert "channel 1 (green)" in captured.err


def test_engine_module_stays_light():
    code = ("import sys, napari_atagan.channels; "
            "print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert not loaded & {"napari", "qtpy", "PyQt5", "PyQt6", "magicgui"}
