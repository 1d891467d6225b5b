"""The Translate dock widget in a real napari viewer (needs a display, e.g. Xvfb).

Run with::

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python -m pytest tests/test_widgets_translate.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_atagan.translate import (
    CHECKPOINT_NAME,
    SAMPLE_ROWS,
    TranslateConfig,
    load_translator,
    train_translation,
    translate_image,
)

from ._gui_helpers import TIMEOUT_MS, check_screenshot, dock

pytestmark = pytest.mark.gui

PATTERNS = ("Homogeneous", "NuMem")


def tiny(**changes) -> TranslateConfig:
    """Networks small enough to train a step in a few milliseconds."""
    base = dict(image_size=16, widths=(4, 8, 8), n_res_blocks=1, attention_widths=(4, 4),
                d_widths=(4, 8), batch_size=4, steps=4, device="cpu", log_every=1,
                sample_every=2, checkpoint_every=1000, attention_freeze_after=0.5)
    base.update(changes)
    return TranslateConfig(**base)


@pytest.fixture(scope="module")
def domains():
    """Dim and bright simulated cells, 32 px crops (uint8)."""
    from napari_atagan.simulate import simulate_crops

    return (simulate_crops(8, size=32, seed=1, intensity=0.3, patterns=PATTERNS),
            simulate_crops(8, size=32, seed=2, intensity=1.0, patterns=PATTERNS))


@pytest.fixture(scope="module")
def image(domains):
    """A 64 x 80 uint8 image of four dim cells on their background."""
    crops = domains[0].images
    return np.block([[crops[0], crops[1], crops[2][:, :16]],
                     [crops[3], crops[4], crops[5][:, :16]]])


@pytest.fixture(scope="module")
def checkpoint(domains, tmp_path_factory):
    """A tiny translation model trained outside the widget."""
    from napari_atagan.events import run_to_end

    out = tmp_path_factory.mktemp("translate_run")
    return run_to_end(train_translation(tiny(steps=3), domains[0], domains[1], out)).checkpoint


def set_tiny(widget, out: Path, *, steps: int = 4) -> None:
    """Fill the Train tab like a user would, with a model small enough for a test."""
    widget.base_config = tiny()
    widget.quick.value = False
    widget.steps.value = steps
    widget.train_device.value = "cpu"
    widget.out_folder.value = out


def wait_trained(qtbot, widget, timeout=TIMEOUT_MS):
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)


def translate_and_wait(qtbot, widget):
    assert widget.translate_button.isEnabled()
    widget.translate_button.click()
    qtbot.waitUntil(lambda: widget.apply_worker is None, timeout=TIMEOUT_MS)


def direction_labels(widget) -> list[str]:
    box = widget.direction.native
    return [box.itemText(i) for i in range(box.count())]


def apply_on(widget, layer, checkpoint=None, direction="a2b"):
    if checkpoint is not None:
        widget.checkpoint.value = checkpoint
    widget.image_layer.value = layer
    widget.direction.value = direction
    widget.apply_device.value = "cpu"


# --------------------------------------------------------------------------- no GUI
def test_config_follows_the_form_and_the_quick_preset():
    from napari_atagan._widgets._translate import DomainSource, translation_config

    a = DomainSource("layers", crops=np.zeros((2, 32, 32)), names=["dim"])
    b = DomainSource("folder", folder=Path("/data/bright"))
    settings = {"quick": True, "steps": 300, "attention": False, "device": "cpu"}
    config = translation_config(TranslateConfig(cycle_weight=5.0), settings, a, b)
    quick = TranslateConfig.quick()
    assert (config.widths, config.d_widths, config.image_size, config.batch_size) == (
        quick.widths, quick.d_widths, quick.image_size, quick.batch_size)
    assert config.cycle_weight == 5.0 and config.steps == 300 and not config.attention
    assert config.sample_every == 15 and config.device == "cpu"
    assert config.extra["domain_names"] == {"a": "dim", "b": "bright"}
    full = translation_config(tiny(), dict(settings, quick=False), a, b)
    assert full.widths == tiny().widths and full.image_size == 16
    assert full.mask_weight == 0.0
    taught = translation_config(tiny(), dict(settings, mask_teacher=True), a, b)
    assert taught.mask_weight == 1.0 and taught.grey_levels == "shared"
    own = translation_config(tiny(), dict(settings, grey_levels="own"), a, b)
    assert own.grey_levels == "own"
    target = translation_config(tiny(), dict(settings, grey_levels="target"), a, b)
    assert target.grey_levels == "target"


def test_sample_grid_puts_each_row_of_the_event_on_its_own_row():
    from napari_atagan._widgets._translate import sample_grid

    images = np.stack([np.full((4, 4), r / 10, np.float32) for r in range(6) for _ in range(3)])
    rows = np.repeat(np.arange(6), 3)
    rows[-1] = 4  # row 4 gets four images, row 5 two
    grid = sample_grid(images, rows)
    assert grid.shape == (6 * 6 - 2, 4 * 6 - 2)
    assert grid[0, 0] == 0.0 and grid[5 * 6, 0] == 0.5
    assert grid[4 * 6, 3 * 6] == 0.5  # the moved image, fourth in its row
    assert grid[5 * 6, 2 * 6] == -1.0  # an empty place


# --------------------------------------------------------------------------- GUI
def test_train_then_apply(make_napari_viewer, qtbot, tmp_path, domains, image, errors):
    viewer = make_napari_viewer()
    dim = viewer.add_image(domains[0].images, name="dim")
    bright = viewer.add_image(domains[1].images, name="bright")
    widget = dock(viewer, "Translate")
    assert not widget.translate_button.isEnabled()  # no model yet
    widget.a_layers.value = [dim]
    widget.b_layers.value = [bright]
    set_tiny(widget, tmp_path / "run")

    widget.start_button.click()
    assert widget.is_running and not widget.start_button.isEnabled()
    wait_trained(qtbot, widget)
    assert errors() == []

    path = tmp_path / "run" / CHECKPOINT_NAME
    translator = load_translator(path)
    assert translator.step == 4 and translator.config.image_size == 16
    assert widget.last_checkpoint == path
    samples = viewer.layers["translation samples"]
    assert samples.data.dtype == np.float32
    assert samples.data.shape == (6 * 18 - 2, 6 * 18 - 2)  # 6 rows of 6 crops of 16 px
    assert samples.metadata["step"] == 4 and samples.metadata["rows"] == list(SAMPLE_ROWS)
    assert widget.preview.step == 4 and widget.preview.rows == list(SAMPLE_ROWS)
    assert widget.preview.grab().width() > 0  # it paints
    assert widget.loss_plot.steps == [1, 2, 3, 4]
    assert {"d", "g", "cycle"} <= set(widget.loss_plot.curves)
    assert widget.progress_bar.value() == 4 and "finished" in widget.train_status.text()
    assert widget.start_button.isEnabled() and not widget.train_stop_button.isEnabled()

    # the new model is the Apply tab's, its directions named after the layers
    assert Path(widget.checkpoint.value) == path and widget.translator is not None
    assert direction_labels(widget) == [
        "dim (A) → bright (B)", "bright (B) → dim (A)"]
    assert "dim (A) ↔ bright (B)" in widget.apply_status.text()

    slide = viewer.add_image(image, name="slide", scale=(0.5, 0.5), contrast_limits=(0, 120))
    assert direction_labels(widget)[0] == "dim (A) → bright (B)"  # still, after a new layer
    apply_on(widget, slide)
    translate_and_wait(qtbot, widget)
    assert errors() == []
    translated = viewer.layers["slide translated"]
    attention = viewer.layers["slide translation attention"]
    cells = viewer.layers["slide attended cells"]
    direct, direct_att = translate_image(path, image, direction="a2b", device="cpu")
    assert translated.data.dtype == np.uint8 and translated.data.shape == image.shape
    np.testing.assert_array_equal(translated.data, direct)
    assert tuple(translated.contrast_limits) == (0, 120)
    assert attention.data.dtype == np.float32 and attention.data.shape == image.shape
    np.testing.assert_array_equal(attention.data, direct_att)
    assert 0.0 <= attention.data.min() and attention.data.max() <= 1.0
    assert attention.colormap.name == "magma" and attention.blending == "additive"
    assert cells._type_string == "labels" and cells.data.shape == image.shape
    assert cells.data.dtype in (np.uint16, np.uint32)
    for layer in (translated, attention, cells):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        assert layer.metadata["direction"] == "a2b" and layer.metadata["source_layer"] == "slide"
    assert "attended cell" in widget.apply_status.text()
    # the results and the preview are no training crops
    assert [name for name, _ in widget._crop_layer_choices()] == ["slide", "bright", "dim"]

    # again, the other way: the same three layers get the new results
    n_layers = len(viewer.layers)
    widget.direction.value = "b2a"
    translate_and_wait(qtbot, widget)
    assert len(viewer.layers) == n_layers and errors() == []
    np.testing.assert_array_equal(viewer.layers["slide translated"].data,
                                  translate_image(path, image, direction="b2a", device="cpu")[0])
    assert viewer.layers["slide attended cells"].metadata["direction"] == "b2a"
    assert viewer.layers["slide translated"].metadata["composite"] == "soft"
    tau = load_translator(path).config.attention_threshold  # blended: what D saw in training
    assert viewer.layers["slide attended cells"].metadata["attention_threshold"] == tau

    # each pixel translated or kept: the engine's hard composite, recorded with the layer
    from napari_atagan._widgets._translate import COMPOSITE_CHOICES

    assert [label for label, _ in COMPOSITE_CHOICES] == ["blend by the attention",
                                                         "translated or kept"]
    from napari_atagan.translate import COMPOSITES

    assert tuple(value for _, value in COMPOSITE_CHOICES) == COMPOSITES
    widget.composite.value = "hard"
    translate_and_wait(qtbot, widget)
    assert len(viewer.layers) == n_layers and errors() == []
    np.testing.assert_array_equal(
        viewer.layers["slide translated"].data,
        translate_image(path, image, direction="b2a", device="cpu", composite="hard")[0])
    assert viewer.layers["slide translated"].metadata["composite"] == "hard"
    # the attended cells are the pixels the hard composite translated: attention above 0.5
    assert viewer.layers["slide attended cells"].metadata["attention_threshold"] == 0.5
    attended = viewer.layers["slide translation attention"].data.max() > 0.5
    assert ("no pixel's attention is above 0.5" in widget.apply_status.text()) != attended


def test_an_atagan_model_is_refused(make_napari_viewer, tmp_path, image, errors):
    from napari_atagan import default_model_path

    viewer = make_napari_viewer()
    widget = dock(viewer, "Translate")
    apply_on(widget, viewer.add_image(image, name="slide"), default_model_path())
    assert widget.translator is None and not widget.translate_button.isEnabled()
    assert "is an ATA-GAN model" in widget.apply_status.text()
    widget.translate()
    assert len(errors()) == 1 and "ATA-GAN" in errors()[0]
    assert "slide translated" not in viewer.layers

    widget.checkpoint.value = tmp_path / "missing.safetensors"
    assert "no such file" in widget.apply_status.text()
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    widget.checkpoint.value = tmp_path / "junk.safetensors"
    assert "cannot use this model" in widget.apply_status.text()
    assert not widget.translate_button.isEnabled()


def test_stop_leaves_a_checkpoint(make_napari_viewer, qtbot, tmp_path, domains, errors):
    """Domain A from a folder, B from a list of 2-D layers; stopped early."""
    from napari_atagan.simulate import write_crops_folder

    folder = write_crops_folder(domains[0], tmp_path / "dim")
    viewer = make_napari_viewer()
    layers = [viewer.add_image(crop, name=f"bright {i}")
              for i, crop in enumerate(domains[1].images[:3])]
    widget = dock(viewer, "Translate")
    widget.a_source.value = "folder"
    assert widget.a_layers.native.isHidden() and not widget.a_folder.native.isHidden()
    widget.a_folder.value = folder
    widget.b_layers.value = layers
    set_tiny(widget, tmp_path / "run", steps=100_000)
    widget.mask_teacher.value = True  # the folder has masks, the layers none
    widget.start_button.click()
    qtbot.waitUntil(lambda: len(widget.loss_plot.steps) >= 2, timeout=TIMEOUT_MS)
    widget.train_stop_button.click()
    widget.stop()  # a second press is harmless
    wait_trained(qtbot, widget)
    assert errors() == []
    translator = load_translator(tmp_path / "run" / CHECKPOINT_NAME)
    assert 2 <= translator.step < 100_000 and translator.config.mask_weight == 1.0
    assert translator.domains["a"]["n_cells"] == 8 and translator.domains["b"]["n_cells"] == 3
    assert "stopped" in widget.train_status.text()
    assert widget.translator is not None and widget.start_button.isEnabled()
    assert direction_labels(widget)[0] == "dim (A) → bright 0 + bright 1 + bright 2 (B)"


def test_bad_training_input_is_reported(make_napari_viewer, qtbot, tmp_path, errors):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Translate")
    set_tiny(widget, tmp_path / "run")
    widget.start_button.click()
    assert "domain A" in errors()[-1] and not widget.is_running
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="colour", rgb=True)
    widget.a_layers.value = [rgb]
    widget.start_button.click()
    assert "RGB" in errors()[-1] and not widget.is_running
    crop = np.random.default_rng(0).integers(0, 255, (1, 32, 32), dtype=np.uint8)
    grey = viewer.add_image(crop, name="one crop")
    widget.a_layers.value = widget.b_layers.value = [grey]
    widget.start_button.click()  # fails in the worker thread: one crop per domain
    wait_trained(qtbot, widget)
    assert "at least 2" in errors()[-1] and widget.start_button.isEnabled()


def test_rgb_layer_uses_its_stained_channel(make_napari_viewer, qtbot, image, checkpoint,
                                            errors):
    rgb = np.zeros(image.shape + (3,), np.uint8)
    rgb[..., 1] = image
    rgb[..., 0] = image // 8
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="colour", rgb=True)
    widget = dock(viewer, "Translate")
    apply_on(widget, layer, checkpoint)
    translate_and_wait(qtbot, widget)
    assert errors() == []
    translated = viewer.layers["colour translated"]
    assert not translated.rgb and translated.data.dtype == np.uint8
    np.testing.assert_array_equal(translated.data, translate_image(checkpoint, image,
                                                                   device="cpu")[0])
    assert translated.metadata["channel_name"] == "green"
    assert translated.colormap.name == "green"
    assert viewer.layers["colour attended cells"].data.shape == image.shape
    assert "(green channel)" in widget.apply_status.text()


def test_a_model_without_attention_has_no_attended_cells(make_napari_viewer, qtbot, tmp_path,
                                                          domains, image, errors):
    from napari_atagan.events import run_to_end

    done = run_to_end(train_translation(tiny(steps=2, attention=False), domains[0], domains[1],
                                        tmp_path))
    viewer = make_napari_viewer()
    widget = dock(viewer, "Translate")
    apply_on(widget, viewer.add_image(image, name="slide"), done.checkpoint)
    assert "CycleGAN" in widget.apply_status.text()
    translate_and_wait(qtbot, widget)
    assert errors() == []
    assert (viewer.layers["slide translation attention"].data == 1).all()
    assert "slide attended cells" not in viewer.layers
    assert "no attended cells" in widget.apply_status.text()


def test_a_target_levels_model_is_applied_with_the_hard_composite(make_napari_viewer, qtbot,
                                                                  tmp_path, domains, image,
                                                                  checkpoint, errors):
    from napari_atagan.events import run_to_end

    done = run_to_end(train_translation(tiny(steps=2, grey_levels="target"), domains[0],
                                        domains[1], tmp_path))
    viewer = make_napari_viewer()
    widget = dock(viewer, "Translate")
    apply_on(widget, viewer.add_image(image, name="slide"), done.checkpoint)
    assert widget.composite.value == "hard"  # the model's own way
    translate_and_wait(qtbot, widget)
    assert errors() == []
    assert viewer.layers["slide translated"].data.dtype == image.dtype
    widget.checkpoint.value = checkpoint  # a model of one shared scale: the paper's blend
    assert widget.composite.value == "soft"


def test_screenshot(make_napari_viewer, qtbot, tmp_path, domains):
    """Train on dim and bright cells, then translate a dim slide.

    ``ATAGAN_SCREENSHOT_STEPS=N`` trains the quick preset for N steps on two
    folders of 64 px crops with masks, the attention taught by them, instead of
    the tiny test model on layers (for the documentation figure).
    """
    from napari_atagan.simulate import simulate_crops, simulate_slide

    docs_steps = os.environ.get("ATAGAN_SCREENSHOT_STEPS")
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 850)
    if docs_steps:
        size, n = 64, 96
        dim_set = simulate_crops(n, size=size, seed=1, intensity=0.3)
        bright_set = simulate_crops(n, size=size, seed=2, intensity=1.0)
        dim, bright = dim_set.images, bright_set.images
    else:
        dim, bright = domains[0].images, domains[1].images
    a = viewer.add_image(dim, name="dim cells")
    b = viewer.add_image(bright, name="bright cells")
    widget = dock(viewer, "Translate")
    widget.a_layers.value, widget.b_layers.value = [a], [b]
    if docs_steps:
        from napari_atagan.simulate import write_crops_folder

        for key, crops in (("a", dim_set), ("b", bright_set)):
            getattr(widget, f"{key}_source").value = "folder"
            getattr(widget, f"{key}_folder").value = write_crops_folder(
                crops, tmp_path / ("dim" if key == "a" else "bright"))
        widget.mask_teacher.value = True
        widget.steps.value = int(docs_steps)
        widget.out_folder.value = Path(os.environ.get("ATAGAN_SCREENSHOT_DIR", tmp_path)) / "run"
    else:
        set_tiny(widget, tmp_path / "run", steps=8)
    widget.start_button.click()
    wait_trained(qtbot, widget, timeout=3_600_000)

    slide = simulate_slide((384, 512), n_cells=14, cell_diameter=40, seed=4, intensity=0.3,
                           bit_depth=8)
    for layer in viewer.layers:
        layer.visible = False
    layer = viewer.add_image(slide.image, name="dim slide")
    apply_on(widget, layer)
    widget.cell_diameter.value = 40
    translate_and_wait(qtbot, widget)
    viewer.layers.selection.active = viewer.layers["dim slide translated"]
    widget.tabs.setCurrentIndex(1)  # the Train tab, beside the translation of the slide
    check_screenshot(viewer, qtbot, tmp_path / "widget_translate.png")
