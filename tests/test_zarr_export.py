"""The OME-Zarr writer: round trips, the OME layout, atomic writes, input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

from napari_atagan import __version__  # noqa: E402
from napari_atagan.zarr_export import read_ome_zarr, save_ome_zarr  # noqa: E402


def _results(shape, max_label=40, seed=0):
    rng = np.random.default_rng(seed)
    attention = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, max_label + 1, size=shape)
    labels.flat[0] = max_label
    return attention, labels


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_2d_with_metadata(tmp_path):
    attention, labels = _results((64, 80))
    meta = {"checkpoint": tmp_path / "model.safetensors", "diameter": np.float32(12.5),
            "threshold": np.float64(0.25), "min_size": np.int64(20), "tile": (256, 256)}
    path = save_ome_zarr(tmp_path / "slide.ome.zarr", attention, labels, metadata=meta,
                         chunk=32)
    assert path == tmp_path / "slide.ome.zarr"
    got_attention, got_labels, got_meta = read_ome_zarr(path)
    assert got_attention.dtype == np.float32 and got_labels.dtype == np.uint16
    np.testing.assert_array_equal(got_attention, attention)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_meta == {"checkpoint": str(tmp_path / "model.safetensors"), "diameter": 12.5,
                        "threshold": 0.25, "min_size": 20, "tile": [256, 256],
                        "max_label": 40, "software": f"napari-atagan {__version__}"}
    assert _siblings(tmp_path) == ["slide.ome.zarr"]


def test_round_trip_3d_memmap_uint32(tmp_path):
    attention, labels = _results((2, 64, 80), max_label=70_000, seed=1)
    source = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.int64,
                                       shape=labels.shape)
    source[:] = labels
    source.flush()
    source = np.load(tmp_path / "labels.npy", mmap_mode="r")
    path = save_ome_zarr(tmp_path / "stack.ome.zarr", attention.astype(np.float64), source)
    got_attention, got_labels, got_meta = read_ome_zarr(path)
    assert got_attention.dtype == np.float32 and got_labels.dtype == np.uint32
    assert got_attention.shape == got_labels.shape == (2, 64, 80)
    np.testing.assert_array_equal(got_attention, attention)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_meta["max_label"] == 70_000


def test_ome_tools_see_an_image_with_a_label_image(tmp_path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Labels, Multiscales, Reader

    attention, labels = _results((2, 64, 80))
    path = save_ome_zarr(tmp_path / "slide.ome.zarr", attention, labels)
    nodes = list(Reader(parse_url(str(path), fmt=FormatV04()))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert len(image.data) > 1
    assert image.data[0].shape == (2, 64, 80) and image.data[1].shape == (2, 32, 40)
    assert [axis["name"] for axis in image.metadata["axes"]] == ["t", "y", "x"]
    np.testing.assert_array_equal(np.asarray(image.data[0]), attention)
    assert any(isinstance(spec, Labels) for node in nodes for spec in node.specs)
    cells = [node for node in nodes if any(isinstance(s, Label) for s in node.specs)]
    assert len(cells) == 1
    np.testing.assert_array_equal(np.asarray(cells[0].data[0]), labels)
    # nearest-neighbour levels hold only ids that exist at full resolution
    assert set(np.unique(np.asarray(cells[0].data[1]))) <= set(np.unique(labels))


def test_overwrite_leaves_only_the_new_store(tmp_path):
    target = tmp_path / "slide.ome.zarr"
    save_ome_zarr(target, *_results((2, 64, 80), seed=2), metadata={"run": 1})
    attention, labels = _results((48, 40), seed=3)
    save_ome_zarr(target, attention, labels, metadata={"run": 2})
    got_attention, got_labels, got_meta = read_ome_zarr(target)
    np.testing.assert_array_equal(got_attention, attention)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_meta["run"] == 2
    assert not (target / "s0" / "1").exists()  # no second plane left from the old stack
    assert _siblings(tmp_path) == ["slide.ome.zarr"]


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import ome_zarr.writer

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ome_zarr.writer, "write_labels", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_ome_zarr(tmp_path / "slide.ome.zarr", *_results((64, 80)))
    assert _siblings(tmp_path) == []


def test_failure_keeps_the_existing_store(tmp_path, monkeypatch):
    import ome_zarr.writer

    target = tmp_path / "slide.ome.zarr"
    attention, labels = _results((64, 80), seed=4)
    save_ome_zarr(target, attention, labels, metadata={"run": 1})

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ome_zarr.writer, "write_labels", broken)
    with pytest.raises(RuntimeError):
        save_ome_zarr(target, *_results((64, 80), seed=5), metadata={"run": 2})
    got_attention, got_labels, got_meta = read_ome_zarr(target)
    np.testing.assert_array_equal(got_attention, attention)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_meta["run"] == 1
    assert _siblings(tmp_path) == ["slide.ome.zarr"]


@pytest.mark.parametrize("attention, labels, match", [
    (np.zeros((8, 8)), np.zeros((8, 9), np.uint16), "same shape"),
    (np.zeros(8), np.zeros(8, np.uint16), "2-D image"),
    (np.zeros((1, 2, 8, 8)), np.zeros((1, 2, 8, 8), np.uint16), "2-D image"),
    (np.zeros((0, 8)), np.zeros((0, 8), np.uint16), "non-empty"),
    (np.zeros((8, 8)), np.zeros((8, 8), np.float32), "labels must be an integer"),
    (np.zeros((8, 8), "U1"), np.zeros((8, 8), np.uint16), "attention must be a numeric"),
    (np.zeros((8, 8)), np.full((8, 8), -1, np.int32), "must not be negative"),
])
def test_bad_input(tmp_path, attention, labels, match):
    with pytest.raises(ValueError, match=match):
        save_ome_zarr(tmp_path / "bad.ome.zarr", attention, labels)
    assert _siblings(tmp_path) == []


def test_bad_target(tmp_path):
    attention, labels = _results((8, 8))
    with pytest.raises(ValueError, match="output folder does not exist"):
        save_ome_zarr(tmp_path / "missing" / "slide.ome.zarr", attention, labels)
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        save_ome_zarr(tmp_path / "slide.ome.zarr", attention, labels, chunk=0)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a Zarr store"):
        save_ome_zarr(tmp_path / "notes", attention, labels)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert _siblings(tmp_path) == ["notes"]


def test_missing_zarr_extra_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_zarr(name, *args, **kwargs):
        if name.split(".")[0] in ("zarr", "ome_zarr"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zarr)
    with pytest.raises(ImportError, match=r"pip install 'napari-atagan\[zarr\]'"):
        save_ome_zarr(tmp_path / "slide.ome.zarr", *_results((8, 8)))
