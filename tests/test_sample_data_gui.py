"""The sample data opened through napari (needs a display, e.g. Xvfb).

Run with::

    QT_QPA_PLATFORM=xcb xvfb-run -a .venv/bin/python -m pytest tests/test_sample_data_gui.py -q
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

PLUGIN = "napari-atagan"


def _save_screenshot(viewer, qtbot, path: Path) -> np.ndarray:
    qtbot.wait(300)
    shot = viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    assert path.is_file()
    return np.asarray(shot)


def test_open_slide_sample(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample(PLUGIN, "hep2_slide")
    assert [layer.name for layer in viewer.layers] == ["HEp-2 slide (simulated)", "HEp-2 cells (ground truth)"]
    assert len(layers) == 2
    image, labels = viewer.layers
    assert image._type_string == "image" and labels._type_string == "labels"
    assert image.data.shape == (1024, 1024) and image.data.dtype == np.uint16
    assert labels.data.shape == (1024, 1024) and labels.data.dtype == np.uint16
    assert labels.data.max() == 60
    lo, hi = image.contrast_limits
    assert image.data.min() <= lo < hi <= image.data.max()
    assert image.colormap.name == "gray"

    shot = _save_screenshot(viewer, qtbot, tmp_path / "slide.png")
    assert shot.ndim == 3 and shot.shape[0] > 100 and shot.shape[1] > 100
    assert shot[..., :3].std() > 10  # not blank


def test_open_crops_sample(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "hep2_crops")
    assert [layer.name for layer in viewer.layers] == ["HEp-2 crops (simulated)", "HEp-2 crop masks"]
    image, masks = viewer.layers
    assert image._type_string == "image" and masks._type_string == "labels"
    assert image.data.shape == (240, 64, 64) and image.data.dtype == np.uint8
    assert masks.data.shape == (240, 64, 64) and masks.data.dtype == np.uint8
    patterns = image.metadata["patterns"]
    assert len(patterns) == 240
    assert set(patterns) == set(image.metadata["pattern_names"])
    assert viewer.dims.ndim == 3  # a stack to scroll through

    shot = _save_screenshot(viewer, qtbot, tmp_path / "crops.png")
    assert shot[..., :3].std() > 10


def test_sample_functions_fall_back_to_simulation(monkeypatch, tmp_path):
    """Without the committed files (e.g. an installed wheel) the same data is simulated."""
    from napari_atagan import _sample_data

    committed = _sample_data.slide_sample()
    monkeypatch.setattr(_sample_data, "SAMPLE_DIR", tmp_path / "missing")
    simulated = _sample_data.slide_sample()
    np.testing.assert_array_equal(committed[1][0], simulated[1][0])
    assert committed[0][1]["name"] == simulated[0][1]["name"]
    crops = _sample_data.crops_sample()
    assert crops[0][0].shape == (240, 64, 64) and len(crops[0][1]["metadata"]["patterns"]) == 240


def test_npe2_validate_manifest():
    npe2 = Path(sys.executable).with_name("npe2")
    command = [str(npe2)] if npe2.exists() else [shutil.which("npe2") or "npe2"]
    result = subprocess.run([*command, "validate", PLUGIN, "--imports"], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert "valid" in output.lower(), output
