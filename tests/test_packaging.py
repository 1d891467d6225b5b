"""The wheel carries the manifest napari loads and the sample data."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_manifest_and_sample_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("napari_atagan-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        manifest = z.read("napari_atagan/napari.yaml")
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (REPO / "napari.yaml").read_bytes()
    assert "napari-atagan = napari_atagan:napari.yaml" in entry_points
    assert "napari-atagan = napari_atagan.cli:main" in entry_points
    for name in ("hep2_slide.tif", "hep2_slide_labels.tif", "hep2_crops.tif",
                 "default_model.safetensors"):
        assert f"napari_atagan/sample_data/{name}" in names
