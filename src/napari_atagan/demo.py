"""The main job on the shipped sample data: in napari, or headless into a folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_demo(out: Path, *, headless: bool) -> int:
    """Open napari with the sample data, or (headless) write it to ``out``."""
    if headless:
        return _headless(out)
    import napari

    viewer = napari.Viewer(title="napari-atagan")
    viewer.open_sample("napari-atagan", "hep2_crops")
    viewer.open_sample("napari-atagan", "hep2_slide")
    napari.run()
    return 0


def _headless(out: Path) -> int:
    from .simulate import make_sample_data

    files = make_sample_data(out)
    print(f"No display: wrote the simulated sample data to {out.resolve()}", file=sys.stderr)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0
