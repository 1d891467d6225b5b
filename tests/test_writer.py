"""The Labels writer contribution: ImageJ TIFF that keeps the layer's metadata."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_atagan._writer import labels_metadata, write_labels
from napari_atagan.export import read_tiff_metadata


@pytest.fixture
def labels():
    lab = np.zeros((40, 50), np.int32)
    lab[5:15, 5:15] = 1
    lab[20:30, 30:45] = 2
    return lab


def test_write_labels_stores_uint16_imagej_with_metadata(tmp_path, labels):
    attributes = {
        "name": "slide cells",
        "scale": (0.5, 0.5),
        "translate": (10.0, 0.0),
        "metadata": {"checkpoint": "/models/m.safetensors", "threshold": "otsu", "min_size": 30,
                     "cell_diameter": 40.0},
    }
    written = write_labels(str(tmp_path / "cells.tif"), labels, attributes)
    assert written == [str(tmp_path / "cells.tif")]
    with tifffile.TiffFile(written[0]) as tif:
        assert tif.is_imagej
        data = tif.asarray()
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, labels)
    meta = read_tiff_metadata(written[0])
    assert meta["checkpoint"] == "/models/m.safetensors"
    assert meta["threshold"] == "otsu" and meta["min_size"] == 30
    assert meta["layer_name"] == "slide cells"
    assert meta["layer_scale"] == [0.5, 0.5]
    assert meta["max_label"] == 2


def test_write_labels_adds_the_suffix_and_takes_a_stack(tmp_path, labels):
    stack = np.stack([labels, labels * 2])
    written = write_labels(str(tmp_path / "stack"), stack, {"metadata": {}})
    assert written == [str(tmp_path / "stack.tif")]
    np.testing.assert_array_equal(tifffile.imread(written[0]), stack)


def test_metadata_keeps_the_layers_own_keys():
    meta = labels_metadata({"name": "x", "scale": np.array([1.0, 2.0]),
                            "metadata": {"layer_name": "kept"}})
    assert meta == {"layer_name": "kept", "layer_scale": [1.0, 2.0]}


def test_bad_labels_raise_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="integer"):
        write_labels(str(tmp_path / "f.tif"), np.zeros((4, 4), np.float32), {})
    with pytest.raises(ValueError, match="does not exist"):
        write_labels(str(tmp_path / "missing" / "f.tif"), np.zeros((4, 4), np.uint8), {})


def test_napari_finds_the_writer_through_the_manifest(tmp_path, labels):
    napari = pytest.importorskip("napari")
    from napari.layers import Labels
    from npe2 import PluginManager

    PluginManager.instance().discover()  # as napari does when it starts

    layer = Labels(labels, name="cells", metadata={"threshold": 0.25, "min_size": 12})
    path = tmp_path / "via_napari.tif"
    written = napari.save_layers(str(path), [layer], plugin="napari-atagan")
    assert [str(p) for p in written] == [str(path)]
    meta = read_tiff_metadata(path)
    assert meta["threshold"] == 0.25 and meta["min_size"] == 12 and meta["layer_name"] == "cells"
