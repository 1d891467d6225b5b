"""The Synthesize dock widget in a real napari viewer (needs a display, e.g. Xvfb).

Run with::

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python -m pytest tests/test_widgets_synth.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ._gui_helpers import TIMEOUT_MS, check_screenshot, dock

pytestmark = pytest.mark.gui


def generate(qtbot, widget):
    widget.generate_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def test_generate_pushes_three_aligned_layers_and_exports(make_napari_viewer, qtbot, tmp_path,
                                                          tiny_checkpoint, errors, monkeypatch):
    from napari_atagan.checkpoint import load_checkpoint
    from napari_atagan.data import load_folder

    names = load_checkpoint(tiny_checkpoint).class_names
    viewer = make_napari_viewer()
    widget = dock(viewer, "Synthesize")
    widget.checkpoint.value = tiny_checkpoint
    assert list(widget.pattern.choices) == ["any", *names]
    widget.n_cells.value = 10
    widget.pattern.value = names[1]
    widget.seed.value = 7
    widget.device.value = "cpu"
    assert not widget.export_button.isEnabled()
    generate(qtbot, widget)
    assert errors() == []

    cells = viewer.layers["synthetic cells"]
    attention = viewer.layers["synthetic attention"]
    masks = viewer.layers["synthetic masks"]
    assert cells._type_string == "image" and attention._type_string == "image"
    assert masks._type_string == "labels"
    for layer in (cells, attention, masks):
        assert layer.data.shape == (10, 16, 16)
    assert cells.data.dtype in (np.uint8, np.uint16) and cells.data.max() > cells.data.min()
    assert attention.data.dtype == np.float32 and attention.data.min() >= 0
    assert attention.colormap.name == "inferno" and attention.blending == "additive"
    assert attention.opacity == pytest.approx(0.5)
    assert masks.data.dtype == np.uint16
    for i, plane in enumerate(masks.data):  # cell i has id i + 1
        assert set(np.unique(plane)) <= {0, i + 1}
    assert masks.data.max() > 0
    assert list(masks.features["pattern"][1:]) == [names[1]] * 10
    assert widget.result.patterns == [names[1]] * 10

    # the same seed gives the same cells
    first = cells.data.copy()
    generate(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["synthetic cells"].data, first)
    assert len(viewer.layers) == 3  # updated in place, not added again

    # Export dataset... writes a training folder that load_folder (Train widget, CLI) reads
    out = tmp_path / "synthetic"
    monkeypatch.setattr("napari_atagan._widgets._synthesize.ask_folder",
                        lambda parent, title: str(out))
    assert widget.export_button.isEnabled()
    widget.export_button.click()
    data = load_folder(out, image_size=16)
    assert data.n == 10 and data.has_masks and data.class_names == [names[1]]
    assert (out / "cells.csv").is_file()

    # a second export into the now non-empty folder is refused
    widget.export_button.click()
    assert "not empty" in errors()[-1]


def test_corrupt_checkpoint_gives_a_notification(make_napari_viewer, qtbot, tmp_path,
                                                 tiny_checkpoint, errors):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a model")
    viewer = make_napari_viewer()
    widget = dock(viewer, "Synthesize")
    widget.checkpoint.value = bad
    assert len(errors()) == 1 and "broken.safetensors" in errors()[0]
    assert list(widget.pattern.choices) == ["any"]
    generate(qtbot, widget)
    assert len(errors()) == 2 and "Synthesis failed" in errors()[1]
    assert len(viewer.layers) == 0 and widget.generate_button.isEnabled()

    widget.checkpoint.value = None
    widget.generate_button.click()
    assert "choose a checkpoint" in errors()[-1]

    assert not widget.export_button.isEnabled()
    assert widget.export_dataset(tmp_path / "nothing") is None  # nothing generated yet
    assert "generate cells first" in errors()[-1]


def test_default_model_is_preselected(make_napari_viewer):
    from napari_atagan._widgets._common import default_checkpoint

    viewer = make_napari_viewer()
    widget = dock(viewer, "Synthesize")
    expected = default_checkpoint()
    if expected is None:
        assert widget.checkpoint.value is None
    else:
        assert Path(widget.checkpoint.value) == expected
        assert widget.pattern.choices[0] == "any"


def test_screenshot(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint):
    """``ATAGAN_SCREENSHOT_CHECKPOINT`` picks the model (default: the shipped one)."""
    from napari_atagan._widgets._common import default_checkpoint

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 850)
    widget = dock(viewer, "Synthesize")
    widget.checkpoint.value = (os.environ.get("ATAGAN_SCREENSHOT_CHECKPOINT")
                               or default_checkpoint() or tiny_checkpoint)
    widget.n_cells.value = 16
    widget.seed.value = 3
    generate(qtbot, widget)
    check_screenshot(viewer, qtbot, tmp_path / "widget_synthesize.png")
