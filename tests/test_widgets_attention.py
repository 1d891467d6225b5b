"""The Attention dock widget in a real napari viewer (needs a display, e.g. Xvfb).

Run with::

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python -m pytest tests/test_widgets_attention.py -q
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from ._gui_helpers import PLUGIN, TIMEOUT_MS, check_screenshot, dock

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def slide():
    from napari_atagan.simulate import simulate_slide

    return simulate_slide((256, 256), n_cells=10, cell_diameter=30, seed=5)


@pytest.fixture
def engine_calls(monkeypatch):
    """Count the discriminator runs over slides (to prove re-labelling does not rerun them)."""
    from napari_atagan.slides import attention as slide_module

    calls = []
    for name in ("slide_attention", "slide_attention_stack"):
        real = getattr(slide_module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(slide_module, name, counted)
    return calls


@pytest.fixture
def flattenings(monkeypatch):
    """Count the slides whose background is taken away (once per run, not per re-labelling)."""
    from napari_atagan.slides import background as background_module

    calls = []
    real = background_module.flatten_background

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(background_module, "flatten_background", counted)
    return calls


def run_and_wait(qtbot, widget):
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)


def attention_on(viewer, layer, checkpoint):
    """The docked Attention widget, set to run ``checkpoint`` over ``layer`` on the CPU."""
    widget = dock(viewer, "Attention")
    widget.image_layer.value = layer
    widget.checkpoint.value = checkpoint
    widget.device.value = "cpu"
    return widget


def estimate_and_wait(qtbot, widget):
    widget.estimate_button.clicked()
    qtbot.waitUntil(lambda: getattr(widget, "estimate_worker", None) is None, timeout=TIMEOUT_MS)


def test_attention_overlay_and_labels_follow_the_source(make_napari_viewer, qtbot, tmp_path,
                                                        slide, tiny_checkpoint, errors,
                                                        engine_calls, flattenings):
    viewer = make_napari_viewer()
    image = viewer.add_image(slide.image, name="slide", scale=(0.5, 0.5), translate=(10, 20))
    other = viewer.add_image(slide.image[:64, :64], name="other")
    widget = attention_on(viewer, image, tiny_checkpoint)

    estimate_and_wait(qtbot, widget)
    from napari_atagan.slides.attention import estimate_cell_diameter

    expected = estimate_cell_diameter(slide.image)
    assert widget.cell_diameter.value == pytest.approx(expected, abs=0.05)
    widget.cell_diameter.value = 30  # the simulated cells' size

    widget.run_button.click()
    widget.image_layer.value = other  # the user picks another layer meanwhile
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert errors() == []
    assert engine_calls == ["slide_attention"]

    amap = viewer.layers["slide attention"]
    cells = viewer.layers["slide cells"]
    assert "other attention" not in viewer.layers
    assert amap._type_string == "image" and cells._type_string == "labels"
    assert amap.data.shape == cells.data.shape == slide.image.shape
    assert amap.data.dtype == np.float32 and np.isfinite(amap.data).all()
    assert amap.data.max() > max(amap.data.min(), 0)
    assert amap.colormap.name == "inferno" and amap.blending == "additive"
    assert cells.data.dtype in (np.uint16, np.uint32)
    for layer in (amap, cells):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        np.testing.assert_allclose(layer.translate, (10, 20))
    meta = cells.metadata
    assert meta["checkpoint"] == str(tiny_checkpoint) and meta["threshold"] == "local"
    assert meta["min_size"] == widget.min_size.value and meta["source_layer"] == "slide"
    assert meta["cell_diameter"] == pytest.approx(widget.cell_diameter.value)
    assert meta["outline"] == "image" and meta["background"] == "flatten"
    assert widget.flatten.value is True
    assert cells.data.max() >= 1

    # the outline by the map alone re-labels the kept map, as the engine labels it
    from napari_atagan.slides.segment import label_cells

    widget.image_layer.value = image
    first = cells.data.copy()
    widget.outline.value = "by the map"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "outline", "map")
    expected = label_cells(amap.data, slide.image, outline="map", threshold="local",
                           min_size=widget.min_size.value,
                           cell_diameter=widget.cell_diameter.value)
    np.testing.assert_array_equal(viewer.layers["slide cells"].data, expected)
    assert widget.find.enabled is False  # the map's outline finds its own cells
    widget.outline.value = "by the image"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "outline", "image")
    np.testing.assert_array_equal(viewer.layers["slide cells"].data, first)
    assert widget.find.enabled is True and meta["find"] == "both"

    # the cells found in the model-free blob map alone, outlined by the same slide
    widget.find.value = "blob map (no model)"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "find", "blob")
    expected = label_cells(amap.data, widget.results[-1].flat, outline="image",
                           threshold="local", min_size=widget.min_size.value,
                           cell_diameter=widget.cell_diameter.value, find="blob")
    np.testing.assert_array_equal(viewer.layers["slide cells"].data, expected)
    widget.outline.value = "by the map"  # the choice left on blob: greyed out, not in the way
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "outline", "map")
    assert errors() == [] and "find" not in viewer.layers["slide cells"].metadata
    widget.outline.value = "by the image"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "outline", "image")
    widget.find.value = "attention + blob map"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "find", "both")
    np.testing.assert_array_equal(viewer.layers["slide cells"].data, first)

    # the edge cut: chosen from the diameter (and recorded), or a fixed fraction
    assert meta["cut"] == "auto" and 0.25 <= meta["cut_used"] <= 0.5
    assert widget.cut_value.enabled is False
    widget.cut_mode.value = "fixed fraction"
    assert widget.cut_value.enabled is True
    widget.cut_value.value = 0.45
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "cut", 0.45)
    assert viewer.layers["slide cells"].metadata["cut_used"] == 0.45
    assert "· edge cut 0.45 ·" in widget.status.text()
    expected = label_cells(amap.data, widget.results[-1].flat, outline="image",
                           threshold="local", min_size=widget.min_size.value,
                           cell_diameter=widget.cell_diameter.value, cut=0.45)
    np.testing.assert_array_equal(viewer.layers["slide cells"].data, expected)
    widget.cut_mode.value = "auto (from the diameter)"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "cut", "auto")
    np.testing.assert_array_equal(viewer.layers["slide cells"].data, first)

    # a new threshold re-labels the kept map; the discriminator does not run again
    before = cells.data.copy()
    widget.threshold_mode.value = "Otsu (whole image)"
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "threshold", "otsu")
    widget.threshold_mode.value = "value"
    widget.threshold_value.value = float(np.quantile(amap.data, 0.98))
    qtbot.waitUntil(lambda: viewer.layers["slide cells"].metadata["threshold"] != "otsu",
                    timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.relabel_worker is None, timeout=TIMEOUT_MS)
    after = viewer.layers["slide cells"]
    assert after.metadata["threshold"] == pytest.approx(widget.threshold_value.value)
    assert (after.data > 0).sum() < (before > 0).sum()
    widget.min_size.value = 10_000  # nothing is that large
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "min_size", 10_000)
    assert viewer.layers["slide cells"].data.max() == 0
    assert engine_calls == ["slide_attention"]
    assert len(flattenings) == 1  # re-labelling outlines on the slide the run flattened
    assert len(viewer.layers) == 4

    # the plugin's writer keeps the parameters in the TIFF
    from napari_atagan.export import read_tiff_metadata

    path = tmp_path / "cells.tif"
    viewer.layers.selection = {viewer.layers["slide cells"]}
    assert viewer.layers.save(str(path), selected=True, plugin="napari-atagan") == [str(path)]
    saved = read_tiff_metadata(path)
    assert saved["threshold"] == pytest.approx(widget.threshold_value.value)
    assert saved["min_size"] == 10_000 and saved["checkpoint"] == str(tiny_checkpoint)
    assert saved["layer_name"] == "slide cells"


def test_stack_of_slides(make_napari_viewer, qtbot, slide, tiny_checkpoint, errors,
                         engine_calls):
    viewer = make_napari_viewer()
    stack = np.stack([slide.image[:128, :128], slide.image[128:, 128:]])
    layer = viewer.add_image(stack, name="movie")
    widget = dock(viewer, "Attention")
    widget.image_layer.value = layer
    widget.checkpoint.value = tiny_checkpoint
    widget.cell_diameter.value = 30
    run_and_wait(qtbot, widget)
    assert errors() == [] and engine_calls == ["slide_attention_stack"]
    assert viewer.layers["movie attention"].data.shape == stack.shape
    cells = viewer.layers["movie cells"].data
    assert cells.shape == stack.shape
    ids0, ids1 = set(np.unique(cells[0])) - {0}, set(np.unique(cells[1])) - {0}
    assert not ids0 & ids1  # ids are unique over the whole stack


def test_stop(make_napari_viewer, qtbot, slide, tiny_checkpoint, monkeypatch):
    from napari.utils.notifications import notification_manager

    from napari_atagan.slides import attention as slide_module

    real = slide_module.slide_attention

    def waits_for_stop(*args, stop, **kwargs):
        while not stop():
            time.sleep(0.01)
        return real(*args, stop=stop, **kwargs)

    monkeypatch.setattr(slide_module, "slide_attention", waits_for_stop)
    viewer = make_napari_viewer()
    layer = viewer.add_image(slide.image, name="slide")
    widget = dock(viewer, "Attention")
    widget.image_layer.value = layer
    widget.checkpoint.value = tiny_checkpoint
    start = len(notification_manager.records)
    widget.run_button.click()
    assert widget.stop_button.isEnabled()
    widget.stop_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    messages = [str(r.message) for r in notification_manager.records[start:]]
    assert messages == ["Attention computation stopped."]
    assert "slide attention" not in viewer.layers
    assert widget.run_button.isEnabled() and not widget.stop_button.isEnabled()


def test_bad_input_gives_notifications(make_napari_viewer, qtbot, tmp_path, slide,
                                       tiny_checkpoint, errors):
    viewer = make_napari_viewer()
    widget = dock(viewer, "Attention")
    widget.checkpoint.value = tiny_checkpoint

    widget.run_button.click()  # no image layer
    assert "choose an image layer" in errors()[-1]

    four_d = viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="hyperstack")
    widget.image_layer.value = four_d
    widget.run_button.click()
    assert "4-D" in errors()[-1]

    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 100)
    n = len(errors())
    widget.checkpoint.value = bad  # noticed as soon as it is chosen
    assert len(errors()) == n + 1 and "corrupt.safetensors" in errors()[-1]
    layer = viewer.add_image(slide.image, name="slide")
    widget.image_layer.value = layer
    run_and_wait(qtbot, widget)  # and again when run
    assert len(errors()) == n + 2 and "Attention failed" in errors()[-1]
    assert "slide attention" not in viewer.layers
    assert widget.run_button.isEnabled()
    assert len(errors()) == 4


def test_rgb_layer_runs_on_its_stained_channel(make_napari_viewer, qtbot, slide,
                                               tiny_checkpoint, errors, engine_calls):
    from napari.utils.notifications import notification_manager

    img = slide.image.astype(np.float64)
    green = np.round(255 * (img - img.min()) / (img.max() - img.min())).astype(np.uint8)
    rgb = np.random.default_rng(0).integers(0, 4, (*green.shape, 3)).astype(np.uint8)
    rgb[..., 1] = green  # an IIF slide saved as RGB: the stain in green, noise elsewhere
    viewer = make_napari_viewer(show=True)
    colour = viewer.add_image(rgb, name="colour", rgb=True)
    assert colour.rgb
    widget = attention_on(viewer, colour, tiny_checkpoint)

    estimate_and_wait(qtbot, widget)
    from napari_atagan.slides.attention import estimate_cell_diameter

    assert widget.cell_diameter.value == pytest.approx(estimate_cell_diameter(green), abs=0.05)
    widget.cell_diameter.value = 30
    start = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    assert errors() == [] and engine_calls == ["slide_attention"]
    messages = [str(r.message) for r in notification_manager.records[start:]]
    assert any("'colour' is RGB: using its channel 1 (green)" in m for m in messages), messages
    assert "(green channel)" in widget.status.text()
    amap, cells = viewer.layers["colour attention"], viewer.layers["colour cells"]
    assert amap.data.shape == cells.data.shape == green.shape
    for layer in (amap, cells):
        meta = layer.metadata
        assert (meta["channel"], meta["channel_name"], meta["channel_source"]) == \
            (1, "green", "auto")
    assert cells.data.max() >= 1

    # the same map as the green channel on its own
    alone = viewer.add_image(green, name="green")
    widget.image_layer.value = alone
    run_and_wait(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["green attention"].data, amap.data)
    assert "channel" not in viewer.layers["green cells"].metadata
    assert errors() == []


# --------------------------------------------------------------------------- cell tables
def wait_for_relabel(qtbot, widget, viewer, name, key, value):
    """Wait until the Labels layer ``name`` was re-labelled with ``metadata[key] == value``."""
    qtbot.waitUntil(lambda: viewer.layers[name].metadata[key] == value, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: widget.relabel_worker is None, timeout=TIMEOUT_MS)


def cell_ids(labels):
    ids = np.unique(labels)
    return ids[ids > 0]


@pytest.fixture(scope="module")
def patternless_checkpoint(tmp_path_factory, tiny_data):
    """A tiny model trained on unlabelled crops: it knows no patterns."""
    from napari_atagan.data import from_arrays
    from napari_atagan.gan.training import run_to_end, train

    from .conftest import tiny_config

    data = from_arrays(tiny_data.images, tiny_data.masks, image_size=16)
    out = tmp_path_factory.mktemp("patternless_run")
    return run_to_end(train(tiny_config(steps=2), data, out)).checkpoint


@pytest.fixture
def fixed_patterns(monkeypatch):
    """Cells get pattern ``label % K`` (the tiny model may call every cell alike)."""
    from napari_atagan.slides import cells as cells_module

    def fake(model, image, labels, columns, cell_diameter, checkpoint, *, device="cpu"):
        k = len(checkpoint.class_names)
        probs = np.full((len(columns["label"]), k), 0.2 / (k - 1), np.float32)
        probs[np.arange(len(probs)), np.asarray(columns["label"]) % k] = 0.8
        return probs

    monkeypatch.setattr(cells_module, "pattern_probabilities", fake)


def test_cell_table_is_the_labels_features(make_napari_viewer, qtbot, slide, tiny_checkpoint,
                                           errors):
    from napari_atagan.slides.cells import BASE_COLUMNS, cell_table
    from napari_atagan.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    viewer = make_napari_viewer()
    image = viewer.add_image(slide.image, name="slide")
    widget = attention_on(viewer, image, tiny_checkpoint)
    widget.cell_diameter.value = 30
    run_and_wait(qtbot, widget)
    assert errors() == []
    cells, amap = viewer.layers["slide cells"], viewer.layers["slide attention"]
    ids = cell_ids(cells.data)
    assert len(ids) >= 2
    features = cells.features
    patterns = [f"p_{name}" for name in ckpt.class_names]
    assert set(BASE_COLUMNS) | set(patterns) | {"pattern"} <= set(features.columns)
    assert len(features) == len(ids)
    np.testing.assert_array_equal(features["label"], ids)  # row i is label ids[i]
    np.testing.assert_array_equal(features["index"], ids)  # how napari finds a label's row

    direct = cell_table(cells.data, slide.image, amap.data, checkpoint=ckpt, cell_diameter=30)
    for name, column in direct.columns.items():
        if name == "pattern":
            assert features[name].tolist() == column.tolist()
        else:
            np.testing.assert_allclose(features[name].to_numpy(float), column, rtol=1e-5,
                                       atol=1e-6, err_msg=name)
    summary = direct.summary()
    assert (f"{len(ids)} cells · slide pattern {summary['pattern']} "
            f"({summary['confidence']:.2f}, discriminator features, linear probe)"
            in widget.status.text())

    # hovering a cell shows its own row
    last = int(ids[-1])
    y, x = np.argwhere(cells.data == last)[0]
    assert f"label: {last}," in cells.get_status((y, x))["coordinates"]

    # a new minimum size re-labels, and the table follows
    min_size = int(np.median(features["area"])) + 1
    widget.min_size.value = min_size
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "min_size", min_size)
    after = viewer.layers["slide cells"]
    new_ids = cell_ids(after.data)
    assert 0 < len(new_ids) < len(ids)
    assert len(after.features) == len(new_ids)
    np.testing.assert_array_equal(after.features["label"], new_ids)
    assert (after.features["area"] >= min_size).all()
    assert widget.status.text().startswith(f"'slide': {len(new_ids)} cells · slide pattern ")
    assert errors() == []


def test_patterns_from_another_run(make_napari_viewer, qtbot, slide, tiny_checkpoint,
                                   tiny_data, tmp_path, errors):
    """Cells of the chosen checkpoint, named by another run's classifier teacher, also
    when re-labelled; a run that cannot name patterns is refused with a message."""
    from napari_atagan.gan.training import run_to_end, train

    from .conftest import tiny_config

    namer = run_to_end(train(tiny_config(teacher="classifier", steps=2), tiny_data,
                             tmp_path / "namer")).checkpoint
    viewer = make_napari_viewer()
    image = viewer.add_image(slide.image, name="slide")
    widget = attention_on(viewer, image, tiny_checkpoint)
    widget.cell_diameter.value = 30
    widget.patterns_from.value = tiny_checkpoint  # a mask-teacher run: no classifier
    run_and_wait(qtbot, widget)
    assert "cannot name patterns" in errors()[-1] and "slide cells" not in viewer.layers
    n = len(errors())
    widget.patterns_from.value = namer
    run_and_wait(qtbot, widget)
    assert len(errors()) == n
    cells = viewer.layers["slide cells"]
    assert "classifier teacher)" in widget.status.text()
    assert cells.metadata["patterns_from"] == str(namer)
    assert {"p_Homogeneous", "pattern"} <= set(cells.features.columns)
    min_size = int(np.median(cells.features["area"])) + 1
    widget.min_size.value = min_size
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "min_size", min_size)
    assert "classifier teacher)" in widget.status.text()
    assert errors()[n:] == []


def default_labels_colours():
    from napari.layers import Labels

    return Labels(np.zeros((2, 2), np.uint8)).colormap


def test_colour_cells_by_pattern(make_napari_viewer, qtbot, slide, tiny_checkpoint, errors,
                                 fixed_patterns):
    from napari.utils.colormaps import CyclicLabelColormap, DirectLabelColormap

    viewer = make_napari_viewer()
    image = viewer.add_image(slide.image, name="slide")
    widget = attention_on(viewer, image, tiny_checkpoint)
    widget.cell_diameter.value = 30
    assert widget.colour_by_pattern.enabled and not widget.colour_by_pattern.value
    run_and_wait(qtbot, widget)
    cells = viewer.layers["slide cells"]
    assert isinstance(cells.colormap, CyclicLabelColormap)
    plain = cells.colormap.colors.copy()
    np.testing.assert_allclose(plain, default_labels_colours().colors)
    assert not widget.legend.isVisible()

    def colours_by_pattern(layer):
        table = layer.features
        by_pattern = {}
        for label, pattern in zip(table["label"], table["pattern"]):
            by_pattern.setdefault(pattern, set()).add(tuple(layer.colormap.map(int(label))))
        return by_pattern

    widget.colour_by_pattern.value = True
    assert isinstance(cells.colormap, DirectLabelColormap)
    by_pattern = colours_by_pattern(cells)
    assert len(by_pattern) >= 2
    assert all(len(c) == 1 for c in by_pattern.values())  # one colour per pattern
    colours = [next(iter(c)) for c in by_pattern.values()]
    assert len(set(colours)) == len(colours)  # a different one for each
    assert all(c[3] == 1 for c in colours)
    assert cells.colormap.map(0)[3] == 0  # the background stays transparent
    legend = widget.legend.text()
    assert widget.legend.isVisibleTo(widget)
    assert all(name in legend for name in by_pattern)

    # a re-labelling is coloured by its own table
    min_size = int(np.median(cells.features["area"])) + 1
    widget.min_size.value = min_size
    wait_for_relabel(qtbot, widget, viewer, "slide cells", "min_size", min_size)
    cells = viewer.layers["slide cells"]
    by_pattern = colours_by_pattern(cells)
    assert set(cells.features["label"]) == set(cell_ids(cells.data))
    assert all(len(c) == 1 for c in by_pattern.values())

    widget.colour_by_pattern.value = False
    assert isinstance(cells.colormap, CyclicLabelColormap)
    np.testing.assert_allclose(cells.colormap.colors, plain)
    assert not widget.legend.isVisibleTo(widget)
    assert errors() == []


def test_no_patterns_no_colouring(make_napari_viewer, qtbot, slide, tiny_checkpoint,
                                  patternless_checkpoint, errors):
    viewer = make_napari_viewer()
    image = viewer.add_image(slide.image, name="slide")
    widget = attention_on(viewer, image, tiny_checkpoint)
    widget.colour_by_pattern.value = True
    widget.checkpoint.value = patternless_checkpoint
    box = widget.colour_by_pattern
    assert not box.enabled and not box.value
    assert "knows no staining patterns" in box.tooltip
    widget.cell_diameter.value = 30
    run_and_wait(qtbot, widget)
    cells = viewer.layers["slide cells"]
    assert not any(c.startswith("p_") or c == "pattern" for c in cells.features.columns)
    assert len(cells.features) == len(cell_ids(cells.data))
    assert "cells" in widget.status.text() and "pattern" not in widget.status.text()
    widget.checkpoint.value = tiny_checkpoint
    assert box.enabled
    assert errors() == []


def test_run_on_all_image_layers(make_napari_viewer, qtbot, slide, tiny_checkpoint, errors,
                                 engine_calls):
    viewer = make_napari_viewer()
    viewer.add_image(slide.image[:128, :128], name="a")
    viewer.add_image(slide.image[128:, 128:], name="b")
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="drawn")
    widget = attention_on(viewer, None, tiny_checkpoint)
    widget.cell_diameter.value = 30
    widget.run_all_button.click()
    assert not widget.run_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert errors() == [] and engine_calls == ["slide_attention"] * 2
    for name in ("a", "b"):
        amap, cells = viewer.layers[f"{name} attention"], viewer.layers[f"{name} cells"]
        assert amap.data.shape == cells.data.shape == (128, 128)
        assert cells.metadata["source_layer"] == name
        assert len(cells.features) == len(cell_ids(cells.data))
        assert f"'{name}': " in widget.status.text()
    assert widget.status.text().startswith("2 image layers: ")
    assert widget.run_button.isEnabled() and widget.run_all_button.isEnabled()

    widget.run_all_button.click()  # again: the attention overlays are not slides to run on
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert engine_calls == ["slide_attention"] * 4
    labels = sorted(layer.name for layer in viewer.layers if layer._type_string == "labels")
    assert labels == ["a cells", "b cells", "drawn"]
    assert len(viewer.layers) == 7
    assert errors() == []


def test_stop_stops_the_whole_batch(make_napari_viewer, qtbot, slide, tiny_checkpoint,
                                    monkeypatch, errors):
    from napari_atagan.slides import attention as slide_module

    real, calls = slide_module.slide_attention, []

    def waits_for_stop(*args, stop, **kwargs):
        calls.append(1)
        while not stop():
            time.sleep(0.01)
        return real(*args, stop=stop, **kwargs)

    monkeypatch.setattr(slide_module, "slide_attention", waits_for_stop)
    viewer = make_napari_viewer()
    for name in ("a", "b", "c"):
        viewer.add_image(slide.image[:64, :64], name=name)
    widget = attention_on(viewer, None, tiny_checkpoint)
    widget.run_all_button.click()
    widget.stop_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    assert calls == [1] and errors() == []
    assert [layer.name for layer in viewer.layers] == ["a", "b", "c"]
    assert widget.status.text() == "stopped (0 of 3 image layers done)"
    assert widget.run_all_button.isEnabled() and not widget.stop_button.isEnabled()


def test_screenshot(make_napari_viewer, qtbot, tmp_path, tiny_checkpoint):
    """``ATAGAN_SCREENSHOT_CHECKPOINT`` picks the model (default: the shipped one)."""
    from napari_atagan._widgets._common import default_checkpoint

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1400, 850)
    slide, truth = viewer.open_sample(PLUGIN, "hep2_slide")
    truth.visible = False
    widget = dock(viewer, "Attention")
    widget.image_layer.value = slide
    widget.checkpoint.value = (os.environ.get("ATAGAN_SCREENSHOT_CHECKPOINT")
                               or default_checkpoint() or tiny_checkpoint)
    widget.cell_diameter.value = 40  # the sample slide's nuclei
    run_and_wait(qtbot, widget)
    cells = viewer.layers[f"{slide.name} cells"]
    cells.contour = 2
    assert cells.data.max() > 0
    check_screenshot(viewer, qtbot, tmp_path / "widget_attention.png")
