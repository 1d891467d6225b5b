"""The Train dock widget in a real napari viewer (needs a display, e.g. Xvfb).

Run with::

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python -m pytest tests/test_widgets_train.py -q
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.gan.training import CHECKPOINT_NAME

from ._gui_helpers import PLUGIN, TIMEOUT_MS, check_screenshot, dock
from .conftest import tiny_config

pytestmark = pytest.mark.gui

PATTERNS = ("Homogeneous", "NuMem", "Centromere")


@pytest.fixture(scope="module")
def crops():
    from napari_atagan.simulate import simulate_crops

    return simulate_crops(24, size=32, patterns=PATTERNS, seed=3)


def make_tiny(widget, out: Path, *, steps: int = 6, teacher: str = "mask") -> None:
    """Fill the form like a user would, with a model small enough for a test."""
    widget.base_config = tiny_config()
    widget.small_model.value = False
    widget.image_size.value = 16
    widget.steps.value = steps
    widget.batch_size.value = 8
    widget.teacher.value = teacher
    widget.device.value = "cpu"
    widget.out_folder.value = out


def add_crops(viewer, crops, *, masks: bool = True):
    image = viewer.add_image(crops.images, name="crops",
                             metadata={"patterns": crops.pattern_names,
                                       "pattern_names": list(PATTERNS)})
    labels = viewer.add_labels(crops.masks, name="crop masks") if masks else None
    return image, labels


def train_on_crops(make_napari_viewer, crops, out: Path, *, steps: int):
    """A viewer with the crop stack and its masks, and a Train widget set to train on them."""
    viewer = make_napari_viewer()
    image, labels = add_crops(viewer, crops)
    widget = dock(viewer, "Train")
    widget.image_layer.value = image
    widget.mask_layer.value = labels
    make_tiny(widget, out, steps=steps)
    return viewer, widget


def wait_idle(qtbot, widget, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)


def test_train_crop_stack_with_live_preview(make_napari_viewer, qtbot, tmp_path, crops, errors):
    viewer, widget = train_on_crops(make_napari_viewer, crops, tmp_path / "run", steps=12)
    widget.source.value = "layers"

    widget.start_button.click()
    assert widget.is_running and not widget.start_button.isEnabled()
    wait_idle(qtbot, widget)

    assert errors() == []
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ckpt.step == 12 and ckpt.class_names == list(PATTERNS)
    assert ckpt.config.teacher == "mask" and ckpt.config.image_size == 16
    assert widget.last_checkpoint == tmp_path / "run" / CHECKPOINT_NAME

    samples = viewer.layers["ATA-GAN samples"]
    assert samples._type_string == "image"
    assert samples.data.dtype == np.float32 and samples.data.ndim == 2
    # 3 patterns x 6 cells, 16 px each, 2 px apart
    assert samples.data.shape == (3 * 18 - 2, 6 * 18 - 2)
    assert -1.0 <= samples.data.min() < samples.data.max() <= 1.0
    assert samples.metadata["step"] == 12

    assert widget.loss_plot.steps == list(range(1, 13))  # every step, in order
    assert {"d", "g", "at"} <= set(widget.loss_plot.curves)
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert "finished" in widget.status.text()


def test_train_from_slide_and_labels(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_atagan.simulate import simulate_slide

    slide = simulate_slide((192, 192), n_cells=8, cell_diameter=28, seed=1)
    viewer = make_napari_viewer()
    image = viewer.add_image(slide.image, name="slide")
    cells = viewer.add_labels(slide.labels, name="cells")
    widget = dock(viewer, "Train")
    widget.image_layer.value = image
    widget.mask_layer.value = cells
    make_tiny(widget, tmp_path / "slide_run", steps=3, teacher="auto")
    widget.start_button.click()
    wait_idle(qtbot, widget)
    assert errors() == []
    ckpt = load_checkpoint(tmp_path / "slide_run" / CHECKPOINT_NAME)
    assert ckpt.config.teacher == "mask"  # auto: the labels give masks
    assert ckpt.metadata["data"]["n_cells"] == int(slide.labels.max())


def test_train_from_folder_of_pattern_subfolders(make_napari_viewer, qtbot, tmp_path, crops,
                                                   errors):
    from napari_atagan.simulate import write_crops_folder

    folder = write_crops_folder(crops, tmp_path / "cells")
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    widget.source.value = "folder"
    assert not widget.folder.native.isHidden() and widget.image_layer.native.isHidden()
    widget.folder.value = folder
    make_tiny(widget, tmp_path / "folder_run", steps=3, teacher="auto")
    widget.start_button.click()
    wait_idle(qtbot, widget)
    assert errors() == []
    ckpt = load_checkpoint(tmp_path / "folder_run" / CHECKPOINT_NAME)
    assert ckpt.config.teacher == "mask"  # auto: the folder has NNNNN_Mask.png files
    assert sorted(ckpt.class_names) == sorted(PATTERNS)


def test_small_model_is_the_quick_preset(make_napari_viewer, qtbot, tmp_path, crops, errors):
    from napari_atagan.gan.config import quick_config_changes

    _, widget = train_on_crops(make_napari_viewer, crops, tmp_path / "run", steps=2)
    widget.small_model.value = True
    widget.start_button.click()
    wait_idle(qtbot, widget)

    assert errors() == []
    config = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME).config
    quick = quick_config_changes()
    assert config.d_channels == quick["d_channels"]
    assert config.g_channels == quick["g_channels"][-2:]  # 16 px: two upsampling blocks
    assert config.g_padding == quick["g_padding"] == "reflect"


def test_responsive_gui_and_stop_twice_keeps_a_valid_checkpoint(make_napari_viewer, qtbot,
                                                                 tmp_path, crops, errors):
    from qtpy.QtCore import QTimer

    viewer, widget = train_on_crops(make_napari_viewer, crops, tmp_path / "run", steps=100_000)
    widget.start_button.click()
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 2, timeout=TIMEOUT_MS)

    # the GUI stays responsive while training: a 20 ms timer keeps ticking
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(1500)
    timer.stop()
    trained = widget.loss_plot.steps[-1]
    max_gap_ms = 1000 * float(np.diff(ticks).max())
    print(f"\nevent loop during training: {len(ticks)} ticks of 20 ms in 1.5 s, "
          f"max gap {max_gap_ms:.0f} ms; {trained} steps trained")
    assert widget.is_running and trained > 2
    assert max_gap_ms < 1000, "the GUI froze during training"

    widget.stop_button.click()
    widget.stop()  # a second press is harmless
    assert not widget.stop_button.isEnabled()
    wait_idle(qtbot, widget)
    widget.stop()  # and so is a press when idle

    assert errors() == []
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert 2 <= ckpt.step < 100_000
    assert "stopped" in widget.status.text()
    assert widget.start_button.isEnabled()

    # resume the stopped run for three more steps
    widget.resume.value = tmp_path / "run" / CHECKPOINT_NAME
    widget.out_folder.value = tmp_path / "resumed"
    widget.steps.value = ckpt.step + 3
    widget.start_button.click()
    wait_idle(qtbot, widget)
    assert errors() == []
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME).step == ckpt.step + 3


def test_bad_input_gives_notifications_and_widget_stays_usable(make_napari_viewer, qtbot,
                                                                tmp_path, crops, errors):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Train")
    make_tiny(widget, tmp_path / "run")

    widget.start_button.click()  # no layer at all
    assert len(errors()) == 1 and "image layer" in errors()[0]
    assert not widget.is_running

    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="colour", rgb=True)
    widget.image_layer.value = rgb
    widget.start_button.click()
    assert "RGB" in errors()[-1] and not widget.is_running

    widget.source.value = "folder"
    widget.folder.value = tmp_path / "does-not-exist"
    widget.start_button.click()  # fails in the worker thread
    wait_idle(qtbot, widget)
    assert "does not exist" in errors()[-1]

    # mask teacher without masks: the engine refuses, the widget returns to idle
    widget.source.value = "layers"
    image, _ = add_crops(viewer, crops, masks=False)
    widget.image_layer.value = image
    widget.mask_layer.value = None
    widget.start_button.click()
    wait_idle(qtbot, widget)
    assert "teacher 'mask' needs cell masks" in errors()[-1]
    assert widget.start_button.isEnabled() and widget.form.enabled
    assert len(errors()) == 4


def test_closing_the_viewer_during_training_leaves_a_checkpoint(make_napari_viewer, qtbot,
                                                                  tmp_path, crops):
    viewer, widget = train_on_crops(make_napari_viewer, crops, tmp_path / "run", steps=100_000)
    widget.start_button.click()
    worker = widget.worker
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 1, timeout=TIMEOUT_MS)
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    ckpt = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert 1 <= ckpt.step < 100_000


def test_screenshot(make_napari_viewer, qtbot, tmp_path):
    """The widget after a short run on the sample crops.

    ``ATAGAN_SCREENSHOT_STEPS=N`` trains a small 32 px model for N steps instead of
    the tiny test model (for the documentation figure), into
    ``$ATAGAN_SCREENSHOT_DIR/hep2-run``.
    """
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 850)
    image, masks = viewer.open_sample(PLUGIN, "hep2_crops")
    widget = dock(viewer, "Train")
    widget.image_layer.value = image
    widget.mask_layer.value = masks
    docs_steps = os.environ.get("ATAGAN_SCREENSHOT_STEPS")
    if docs_steps:
        widget.small_model.value = True
        widget.image_size.value = 32
        widget.batch_size.value = 32
        widget.steps.value = int(docs_steps)
        folder = Path(os.environ.get("ATAGAN_SCREENSHOT_DIR", tmp_path))
        widget.out_folder.value = folder / "hep2-run"
    else:
        make_tiny(widget, tmp_path / "run", steps=30)
    widget.start_button.click()
    wait_idle(qtbot, widget, timeout=3_600_000)
    samples = viewer.layers["ATA-GAN samples"]
    image.visible = masks.visible = False
    viewer.layers.selection.active = samples
    check_screenshot(viewer, qtbot, tmp_path / "widget_train.png")
