"""What the dock-widget tests share: docking a widget and checking a screenshot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

PLUGIN = "napari-atagan"
TIMEOUT_MS = 60_000


def dock(viewer, name: str):
    """Dock the plugin's widget ``name`` ("Train", "Synthesize", "Attention") and return it."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def check_screenshot(viewer, qtbot, path: Path) -> None:
    """Screenshot the whole window into ``path``; it must show more than a blank window."""
    viewer.reset_view()
    qtbot.wait(300)
    shot = np.asarray(viewer.screenshot(path=str(path), canvas_only=False, flash=False))
    assert path.is_file()
    assert shot.shape[0] > 200 and shot[..., :3].std() > 10
    keep_screenshot(path)


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to $ATAGAN_SCREENSHOT_DIR when set (to pick figures for the docs)."""
    folder = os.environ.get("ATAGAN_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)
