"""Attention map -> labels, TIFF export, and the ``attention`` subcommand."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from napari_atagan import __version__
from napari_atagan.checkpoint import save_checkpoint
from napari_atagan.cli.attention import register, run
from napari_atagan.gan.config import TrainConfig
from napari_atagan.export import read_tiff_metadata, save_attention_tiff, save_labels_tiff
from napari_atagan.slides.labels import attention_to_labels, attention_to_labels_tiled
from napari_atagan.metrics import match_objects
from napari_atagan.slides.attention import Stopped
from napari_atagan.gan.models import build_models


def _disc_map(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, np.float32)
    for cy, cx in centres:
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return m


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------


def test_one_unique_label_per_separate_cell():
    m = _disc_map((100, 120), [(25, 25), (25, 90), (75, 50)], 10)
    lab = attention_to_labels(m, threshold=0.5)
    assert lab.dtype == np.uint16
    assert sorted(np.unique(lab)) == [0, 1, 2, 3]
    for cy, cx in [(25, 25), (25, 90), (75, 50)]:
        assert lab[cy, cx] > 0
    assert len({lab[25, 25], lab[25, 90], lab[75, 50]}) == 3


def test_touching_discs_are_split():
    m = _disc_map((80, 120), [(40, 45), (40, 75)], 17)  # overlapping by 4 px
    from scipy import ndimage as ndi

    assert ndi.label(m > 0.5)[1] == 1  # one connected blob
    lab = attention_to_labels(m, threshold=0.5)
    assert lab.max() == 2
    assert lab[40, 40] != lab[40, 80] and lab[40, 40] > 0 and lab[40, 80] > 0
    no_split = attention_to_labels(m, threshold=0.5, split_touching=False)
    assert no_split.max() == 1


def test_known_cell_diameter_splits_only_objects_of_several_cells():
    # a kidney-shaped cell (two lobes, one cell's area) beside two touching round cells
    m = _disc_map((100, 200), [(50, 40), (50, 62)], 13)
    kidney = (m > 0).sum()
    m = np.maximum(m, _disc_map((100, 200), [(50, 125), (50, 158)], 17))
    cell_area = kidney  # the typical cell: as large as the kidney
    diameter = 2 * np.sqrt(cell_area / np.pi)
    lab = attention_to_labels(m, threshold=0.5, cell_diameter=diameter)
    assert lab.max() == 3
    assert lab[50, 40] == lab[50, 62] > 0  # the kidney stays whole
    assert len({lab[50, 40], lab[50, 120], lab[50, 163]}) == 3  # the pair is split
    # without the diameter every object is split at its neck
    assert attention_to_labels(m, threshold=0.5).max() == 4


def test_otsu_on_the_square_root_keeps_dim_cells():
    # attention grows with brightness: one bright cell, three dim ones
    m = _disc_map((100, 200), [(50, 30)], 12) * 1.0
    for cx in (80, 130, 175):
        m = np.maximum(m, _disc_map((100, 200), [(50, cx)], 12) * 0.2)
    m += np.random.default_rng(0).uniform(0, 0.004, m.shape).astype(np.float32)
    assert attention_to_labels(m, gamma=1).max() == 1
    assert attention_to_labels(m).max() == 4  # gamma 0.5, the default
    with pytest.raises(ValueError, match="gamma"):
        attention_to_labels(m, gamma=0)
    with pytest.raises(ValueError, match="cell_diameter"):
        attention_to_labels(m, cell_diameter=-3)


def test_elongated_cell_is_not_split():
    m = np.zeros((60, 120), np.float32)
    yy, xx = np.mgrid[:60, :120]
    m[((yy - 30) / 12.0) ** 2 + ((xx - 60) / 35.0) ** 2 <= 1] = 1
    assert attention_to_labels(m, threshold=0.5).max() == 1


def test_holes_are_filled():
    m = _disc_map((60, 60), [(30, 30)], 15)
    m[25:35, 25:35] = 0
    lab = attention_to_labels(m, threshold=0.5, smooth=0)
    assert lab.max() == 1 and lab[30, 30] == 1


def test_min_size_removes_small_objects():
    m = _disc_map((60, 100), [(30, 25)], 12)
    m[28:31, 80:83] = 1  # 9 pixels
    assert attention_to_labels(m, threshold=0.5, smooth=0, min_size=1).max() == 2
    lab = attention_to_labels(m, threshold=0.5, smooth=0, min_size=20)
    assert lab.max() == 1 and lab[29, 81] == 0


def test_otsu_threshold_on_soft_map():
    m = _disc_map((80, 80), [(40, 40)], 15) * 0.8 + 0.1
    m += np.random.default_rng(0).normal(0, 0.02, m.shape).astype(np.float32)
    lab = attention_to_labels(m)
    assert lab.max() == 1
    area = (lab > 0).sum()
    assert abs(area - np.pi * 15**2) < 0.15 * np.pi * 15**2


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_constant_map_has_no_labels(value):
    lab = attention_to_labels(np.full((40, 50), value, np.float32))
    assert lab.shape == (40, 50) and lab.dtype == np.uint16 and not lab.any()


def test_many_labels_become_uint32():
    m = np.zeros((520, 520), np.float32)
    m[::2, ::2] = 1  # 67,600 isolated pixels
    lab = attention_to_labels(m, threshold=0.5, min_size=1, smooth=0, split_touching=False)
    assert lab.dtype == np.uint32 and lab.max() == 260 * 260


def test_relabelled_sequentially():
    m = _disc_map((60, 200), [(30, 20), (30, 100), (30, 180)], 10)
    m[28:31, 55:58] = 1  # removed by min_size, must leave no gap in the ids
    lab = attention_to_labels(m, threshold=0.5, min_size=50)
    assert sorted(np.unique(lab)) == [0, 1, 2, 3]


def test_stack_labels_are_unique_over_planes():
    m = np.stack([_disc_map((50, 50), [(25, 25)], 10)] * 3)
    lab = attention_to_labels(m, threshold=0.5)
    assert lab.shape == m.shape
    assert [lab[t, 25, 25] for t in range(3)] == [1, 2, 3]


def test_pure_function_of_the_map():
    m = _disc_map((60, 60), [(30, 30)], 10)
    before = m.copy()
    attention_to_labels(m, threshold=0.5)
    assert np.array_equal(m, before)


@pytest.mark.parametrize("kwargs", [{"threshold": "mean"}, {"threshold": float("nan")},
                                    {"min_size": -1}, {"smooth": -1.0}, {"noise_mads": 0.0},
                                    {"noise_mads": float("nan")}])
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        attention_to_labels(np.zeros((10, 10)), **kwargs)


def test_bad_map():
    with pytest.raises(ValueError, match="2-D"):
        attention_to_labels(np.zeros(10))
    bad = np.ones((10, 10))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        attention_to_labels(bad)


# ---------------------------------------------------------------------------
# tiled labelling of huge maps
# ---------------------------------------------------------------------------


def _blob_map(shape, n, seed):
    """Soft Gaussian blobs (radius 5-9 px) with noise; some touch, many cross tile borders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, np.float32)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        sigma = rng.uniform(5, 9) / 1.5
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)) * rng.uniform(0.5, 1)
        np.maximum(m, blob.astype(np.float32), out=m)
    return m + rng.normal(0, 0.03, shape).astype(np.float32)


def _same_up_to_ids(a, b):
    """True when a and b hold the same objects, whatever their ids (a one-to-one map)."""
    pairs = np.unique(np.stack([a.ravel().astype(np.int64), b.ravel().astype(np.int64)]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
            and not ((pairs[0] == 0) ^ (pairs[1] == 0)).any())


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_tiled_equals_untiled(seed):
    # on the plain map (gamma 1) the blobs form no crowded clusters: an exact match
    m = _blob_map((200, 230), 45, seed)
    whole = attention_to_labels(m, gamma=1)
    tiled = attention_to_labels_tiled(m, tile=64, max_cell_diameter=20, gamma=1)
    assert whole.max() > 20
    assert _same_up_to_ids(whole, tiled)
    score = match_objects(tiled, whole, iou_threshold=1.0)
    assert score["f1"] == 1.0 and score["mean_matched_iou"] == 1.0


@pytest.mark.parametrize("seed", [1, 3, 5])
def test_tiled_square_root_threshold_equals_untiled(seed):
    # the default square-root scale lowers the threshold, so blobs merge into crowded
    # clusters, where tiles may split a touching cell or two differently
    m = _blob_map((200, 230), 45, seed)
    whole = attention_to_labels(m)
    tiled = attention_to_labels_tiled(m, tile=64, max_cell_diameter=20)
    assert (whole > 0).sum() > (attention_to_labels(m, gamma=1) > 0).sum()
    # the same threshold: the pixels differ only where fragments of a split differ
    assert ((whole > 0) != (tiled > 0)).mean() < 0.005
    assert match_objects(tiled, whole)["f1"] >= 0.95


def test_tiled_close_to_untiled_on_crowded_map():
    # crowded clusters: watershed ties may resolve differently in a tile (a few cells)
    m = _blob_map((200, 230), 45, 7)
    score = match_objects(attention_to_labels_tiled(m, tile=64, max_cell_diameter=20),
                          attention_to_labels(m), iou_threshold=0.5)
    assert score["f1"] >= 0.9


def test_tiled_equals_untiled_fixed_threshold_and_cells_on_tile_corners():
    centres = [(64, 64), (64, 128), (128, 64), (40, 100), (40, 117), (150, 150)]  # 2 touch
    m = _disc_map((190, 200), centres, 9)
    for kwargs in ({"threshold": 0.5}, {"threshold": 0.5, "split_touching": False},
                   {"threshold": "otsu", "smooth": 0.0}):
        whole = attention_to_labels(m, **kwargs)
        tiled = attention_to_labels_tiled(m, tile=64, overlap=40, **kwargs)
        assert _same_up_to_ids(whole, tiled), kwargs


def test_tiled_ids_unique_and_sequential():
    m = _blob_map((150, 170), 30, 11)
    lab = attention_to_labels_tiled(m, tile=50, max_cell_diameter=20)
    ids = np.unique(lab)
    assert lab.dtype == np.uint16 and list(ids) == list(range(int(ids.max()) + 1))
    from scipy import ndimage as ndi

    for i in ids[1:]:  # one connected object per id
        assert ndi.label(lab == i)[1] == 1


def test_tiled_widens_to_uint32_and_fills_given_out(tmp_path):
    m = np.zeros((520, 520), np.float32)
    m[::2, ::2] = 1  # 67,600 isolated pixels
    opts = dict(threshold=0.5, min_size=1, smooth=0, split_touching=False, tile=128, overlap=4)
    lab = attention_to_labels_tiled(m, **opts)
    assert lab.dtype == np.uint32 and lab.max() == 260 * 260
    assert np.array_equal(np.unique(lab), np.arange(260 * 260 + 1))
    out = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=np.uint32,
                                    shape=m.shape)
    out[:] = 7  # old content is overwritten
    got = attention_to_labels_tiled(m, out=out, **opts)
    assert got is out and np.array_equal(np.asarray(out), lab)
    with pytest.raises(ValueError, match="uint32"):
        attention_to_labels_tiled(m, out=np.zeros(m.shape, np.uint16), **opts)


def test_tiled_reads_a_memmap_and_a_stack(tmp_path):
    m = _blob_map((120, 130), 15, 2)
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32,
                                   shape=(2, *m.shape))
    mm[0], mm[1] = m, m[::-1]
    lab = attention_to_labels_tiled(np.load(tmp_path / "m.npy", mmap_mode="r"), tile=48,
                                    max_cell_diameter=20, gamma=1)
    whole = attention_to_labels(np.stack([m, m[::-1]]), gamma=1)
    assert _same_up_to_ids(whole, lab)
    assert lab[1].max() > lab[0].max() and set(np.unique(lab[1])[1:]).isdisjoint(
        np.unique(lab[0])[1:])


def test_tiled_progress_and_stop():
    m = _blob_map((100, 100), 10, 4)
    calls = []
    attention_to_labels_tiled(m, tile=40, progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert [d for d, _ in calls] == list(range(1, total + 1)) and total >= 9
    constant = []
    attention_to_labels_tiled(np.zeros((100, 100), np.float32), tile=40,
                              progress=lambda d, t: constant.append((d, t)))
    assert constant[-1][0] == constant[-1][1]
    with pytest.raises(Stopped):
        attention_to_labels_tiled(m, tile=40, stop=lambda: len(calls) > 0)
    asked = []
    with pytest.raises(Stopped):
        attention_to_labels_tiled(m, tile=40, stop=lambda: asked.append(1) or len(asked) > 5)


def test_tiled_constant_map_is_empty():
    lab = attention_to_labels_tiled(np.full((70, 90), 0.3, np.float32), tile=32)
    assert lab.shape == (70, 90) and not lab.any()


@pytest.mark.parametrize("kwargs, message", [
    ({"tile": 8}, "tile"), ({"overlap": -1}, "overlap"), ({"max_cell_diameter": 0}, "diameter"),
    ({"threshold": "mean"}, "otsu"), ({"min_size": -1}, "min_size"),
    ({"out": np.zeros((5, 5), np.uint16)}, "shape"),
    ({"out": np.zeros((40, 40), np.float32)}, "integer"),
])
def test_tiled_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        attention_to_labels_tiled(np.zeros((40, 40), np.float32), **kwargs)


def test_tiled_bad_map():
    with pytest.raises(ValueError, match="2-D"):
        attention_to_labels_tiled(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="array"):
        attention_to_labels_tiled([[0.0, 1.0]])
    bad = np.ones((40, 40), np.float32)
    bad[30, 30] = np.inf
    with pytest.raises(ValueError, match="NaN"):
        attention_to_labels_tiled(bad, tile=16)


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------

META = {"checkpoint": "run.safetensors", "checkpoint_format_version": 1, "cell_diameter": 40.0,
        "threshold": "otsu", "min_size": 30, "diameter_np": np.float32(12.5)}


def test_labels_tiff_round_trip(tmp_path):
    lab = np.zeros((50, 70), np.uint16)
    lab[5:15, 5:15] = 1
    lab[30:40, 40:60] = 2
    path = save_labels_tiff(tmp_path / "labels.tif", lab, metadata=META)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        back = tif.asarray()
    assert back.dtype == np.uint16 and back.shape == lab.shape and np.array_equal(back, lab)
    meta = read_tiff_metadata(path)
    assert meta["checkpoint"] == "run.safetensors" and meta["threshold"] == "otsu"
    assert meta["cell_diameter"] == 40.0 and meta["diameter_np"] == 12.5
    assert meta["kind"] == "labels" and meta["max_label"] == 2
    assert meta["software"] == f"napari-atagan {__version__}"


def test_int64_labels_are_saved_as_uint16(tmp_path):
    lab = np.arange(12, dtype=np.int64).reshape(3, 4)
    path = save_labels_tiff(tmp_path / "l.tif", lab, metadata={})
    back = tifffile.imread(path)
    assert back.dtype == np.uint16 and np.array_equal(back, lab)


def test_labels_beyond_uint16_are_uint32(tmp_path):
    lab = np.zeros((4, 5), np.uint32)
    lab[1, 1] = 70_000
    path = save_labels_tiff(tmp_path / "big.tif", lab, metadata={"a": 1})
    back = tifffile.imread(path)
    assert back.dtype == np.uint32 and back[1, 1] == 70_000
    assert read_tiff_metadata(path)["a"] == 1


def test_attention_tiff_round_trip(tmp_path):
    att = np.random.default_rng(0).random((3, 20, 30)).astype(np.float32)
    path = save_attention_tiff(tmp_path / "att.tif", att, metadata=META)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TYX"
        back = tif.asarray()
    assert back.dtype == np.float32 and np.array_equal(back, att)
    assert read_tiff_metadata(path)["kind"] == "attention"


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "l.tif"
    save_labels_tiff(path, np.ones((5, 5), np.uint16), metadata={"v": 1})
    save_labels_tiff(path, np.full((6, 6), 2, np.uint16), metadata={"v": 2})
    assert tifffile.imread(path).shape == (6, 6)
    assert read_tiff_metadata(path)["v"] == 2
    assert os.listdir(tmp_path) == ["l.tif"]  # no temporary files left


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_labels_tiff(tmp_path / "l.tif", np.ones((5, 5), np.uint16), metadata={"v": 1})

    def broken(file, *args, **kwargs):
        with open(file, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        save_labels_tiff(path, np.zeros((5, 5), np.uint16), metadata={"v": 2})
    assert os.listdir(tmp_path) == ["l.tif"]
    assert read_tiff_metadata(path)["v"] == 1


def test_export_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="integer"):
        save_labels_tiff(tmp_path / "l.tif", np.ones((5, 5), np.float32))
    with pytest.raises(ValueError, match="negative"):
        save_labels_tiff(tmp_path / "l.tif", -np.ones((5, 5), np.int32))
    with pytest.raises(ValueError, match="does not exist"):
        save_attention_tiff(tmp_path / "missing" / "a.tif", np.ones((5, 5)))
    with pytest.raises(ValueError, match="2-D"):
        save_attention_tiff(tmp_path / "a.tif", np.ones(5))


def test_metadata_of_foreign_tiff_is_empty(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    assert read_tiff_metadata(tmp_path / "x.tif") == {}


# ---------------------------------------------------------------------------
# the ``attention`` subcommand
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    cfg = TrainConfig(image_size=16, g_channels=(8, 4), d_channels=(8, 16, 16),
                      steps=1, batch_size=2, device="cpu")
    torch.manual_seed(0)
    gen, disc = build_models(cfg, 0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, config=cfg, modules={"G": gen, "D": disc},
                           metadata={"data": {"cell_diameter": 20.0, "image_size": 16,
                                              "model_cell_diameter": 10.0}})


def _parse(argv):
    parser = argparse.ArgumentParser(prog="napari-atagan")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _slide_file(tmp_path, shape=(96, 112), name="slide.tif"):
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in [(30, 30), (60, 80)]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] += 300
    path = tmp_path / name
    tifffile.imwrite(path, img.astype(np.uint16))
    return path


def test_cli_writes_attention_and_labels(tmp_path, ckpt_path, capsys):
    image = _slide_file(tmp_path)
    args = _parse(["attention", "--checkpoint", str(ckpt_path), "--image", str(image),
                   "--diameter", "20", "--out", str(tmp_path / "out"), "--device", "cpu",
                   "--tile-size", "32", "--min-size", "5"])
    assert args.run is run
    assert run(args) == 0
    att = tifffile.imread(tmp_path / "out" / "slide_attention.tif")
    lab = tifffile.imread(tmp_path / "out" / "slide_labels.tif")
    assert att.shape == lab.shape == (96, 112)
    assert att.dtype == np.float32 and lab.dtype == np.uint16
    meta = read_tiff_metadata(tmp_path / "out" / "slide_labels.tif")
    assert meta["checkpoint"] == "tiny.safetensors" and meta["cell_diameter"] == 20.0
    assert meta["threshold"] == "local" and meta["min_size"] == 5
    assert meta["min_size_in_effect"] == 125  # 0.4 of a 20-px disc: the labelling's floor
    assert meta["tile_size"] == 32
    assert meta["cut"] == "auto" and meta["cut_used"] == 0.35  # two cells: too few to fit the cut
    assert 10 < meta["median_cell_diameter"] < 40  # two discs of radius 10, cut at 0.35
    out = capsys.readouterr().out
    assert '"cells"' in out and "megapixels_per_s" in out and '"cut"' in out
    assert sorted(os.listdir(tmp_path / "out")) == ["slide_attention.tif", "slide_cells.csv",
                                                    "slide_labels.tif", "slides.csv"]


def test_cli_labels_a_large_map_in_tiles(tmp_path, ckpt_path, monkeypatch):
    import napari_atagan.slides.archive as cli

    image = _slide_file(tmp_path)
    argv = ["attention", "--checkpoint", str(ckpt_path), "--image", str(image),
            "--diameter", "20", "--device", "cpu", "--tile-size", "32", "--min-size", "5",
            "--outline", "map"]
    assert run(_parse([*argv, "--out", str(tmp_path / "small")])) == 0
    no_tile = [a for a in argv if a not in ("--tile-size", "32")]
    assert run(_parse([*no_tile, "--out", str(tmp_path / "default")])) == 0
    meta = read_tiff_metadata(tmp_path / "default" / "slide_labels.tif")
    assert meta["tile_size"] == 1024  # the CPU's default tile
    np.testing.assert_allclose(tifffile.imread(tmp_path / "default" / "slide_attention.tif"),
                               tifffile.imread(tmp_path / "small" / "slide_attention.tif"),
                               rtol=0, atol=1e-5)
    monkeypatch.setattr(cli, "_MEMMAP_PIXELS", 100)  # every map counts as large
    assert run(_parse([*argv, "--out", str(tmp_path / "large")])) == 0
    small = tifffile.imread(tmp_path / "small" / "slide_labels.tif")
    large = tifffile.imread(tmp_path / "large" / "slide_labels.tif")
    assert large.dtype == np.uint16 and np.array_equal(small > 0, large > 0)
    assert sorted(os.listdir(tmp_path / "large")) == ["slide_attention.tif", "slide_cells.csv",
                                                      "slide_labels.tif", "slides.csv"]
    # outlined by the slide where it fits in memory; a map too large is labelled alone, and says so
    image_argv = [a for a in argv if a not in ("--outline", "map")]
    assert run(_parse([*image_argv, "--out", str(tmp_path / "large_image")])) == 0
    meta = read_tiff_metadata(tmp_path / "large_image" / "slide_labels.tif")
    assert meta["outline"].startswith("map (the slide is too large")
    assert meta["cut_used"] is None  # the map's own outline has no cut
    monkeypatch.setattr(cli, "_MEMMAP_PIXELS", 1 << 27)
    assert run(_parse([*image_argv, "--out", str(tmp_path / "fits")])) == 0
    assert read_tiff_metadata(tmp_path / "fits" / "slide_labels.tif")["outline"] == "image"


def test_cli_stack_and_auto_diameter(tmp_path, ckpt_path):
    stack = np.stack([tifffile.imread(_slide_file(tmp_path, name=f"p{i}.tif")) for i in range(2)])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    args = _parse(["attention", "--checkpoint", str(ckpt_path), "--image",
                   str(tmp_path / "stack.tif"), "--diameter", "auto", "--out",
                   str(tmp_path), "--device", "cpu", "--threshold", "0.0"])
    assert run(args) == 0
    assert tifffile.imread(tmp_path / "stack_labels.tif").shape == (2, 96, 112)


def test_cli_finds_cells_in_the_blob_map_alone_on_request(tmp_path, ckpt_path, capsys):
    """--find blob: the cells of the model-free blob map, outlined by the slide as always;
    said in the summary and the labels' metadata. A rerun with another --find redoes the
    slide; the same --find skips it."""
    import json

    from napari_atagan.slides.background import flatten_background
    from napari_atagan.slides.segment import label_cells

    image = _slide_file(tmp_path)
    out = tmp_path / "out"
    base = ["attention", "--checkpoint", str(ckpt_path), "--image", str(image), "--diameter",
            "20", "--out", str(out), "--device", "cpu", "--min-size", "5"]
    assert run(_parse([*base, "--find", "blob"])) == 0
    assert json.loads(capsys.readouterr().out)["find"] == "blob"
    assert read_tiff_metadata(out / "slide_labels.tif")["find"] == "blob"
    flat = flatten_background(tifffile.imread(image).astype(np.float32), 20.0, "flatten")
    expected = label_cells(np.zeros(flat.shape, np.float32), flat, threshold="local",
                           min_size=5, cell_diameter=20.0, find="blob")
    labels = tifffile.imread(out / "slide_labels.tif")
    assert labels.max() == 2  # the two discs
    np.testing.assert_array_equal(labels, expected)
    assert run(_parse([*base, "--find", "blob"])) == 0
    assert "skipped" in capsys.readouterr().err
    assert run(_parse(base)) == 0  # the default finds them in the mean of both maps
    assert "skipped" not in capsys.readouterr().err
    assert read_tiff_metadata(out / "slide_labels.tif")["find"] == "both"


@pytest.mark.parametrize("change, message", [
    ({"--diameter": "500"}, "smaller than one training crop"),
    ({"--image": "missing.tif"}, "does not exist"),
    ({"--checkpoint": "nope.safetensors"}, "no such file"),
    ({"--tile-size": "4"}, "tile-size"),
    ({"--outline": "map", "--find": "blob"}, "needs --outline image"),
])
def test_cli_user_mistakes_return_2(tmp_path, ckpt_path, capsys, change, message):
    image = _slide_file(tmp_path)
    opts = {"--checkpoint": str(ckpt_path), "--image": str(image), "--diameter": "20",
            "--out": str(tmp_path / "out"), "--device": "cpu"}
    opts.update({k: (str(tmp_path / v) if k in ("--image", "--checkpoint") else v)
                 for k, v in change.items()})
    args = _parse(["attention", *[x for kv in opts.items() for x in kv]])
    assert run(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_reads_grey_saved_as_colour_through_its_luminance(tmp_path, ckpt_path, capsys):
    grey = tifffile.imread(_slide_file(tmp_path))
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    base = ["attention", "--checkpoint", str(ckpt_path), "--image", str(tmp_path / "rgb.tif"),
            "--diameter", "20", "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert run(_parse(base)) == 0
    assert "near-identical" in capsys.readouterr().err
    assert read_tiff_metadata(tmp_path / "o" / "rgb_labels.tif")["channel_name"] == "luminance"
    assert run(_parse([*base, "--grey", "--overwrite"])) == 0


@pytest.mark.parametrize("argv", [["--diameter", "-3"], ["--diameter", "x"],
                                  ["--threshold", "high"], ["--cut", "1.5"], ["--cut", "0"],
                                  ["--cut", "tight"]])
def test_cli_bad_option_values_are_argparse_errors(argv, capsys):
    base = {"--checkpoint": "c", "--image": "i", "--diameter": "20", "--out": "o"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    with pytest.raises(SystemExit) as exc:
        _parse(["attention", *[x for kv in base.items() for x in kv]])
    assert exc.value.code == 2


def _bright_and_dim_cells():
    """One bright and three dim discs (radius 12) on a faintly noisy background."""
    m = _disc_map((100, 220), [(50, 30)], 12)
    for cx in (85, 140, 195):
        m = np.maximum(m, _disc_map((100, 220), [(50, cx)], 12) * 0.08)
    return m + np.random.default_rng(0).uniform(0, 0.004, m.shape).astype(np.float32)


def test_local_threshold_cuts_every_cell_at_its_own_peak():
    m = _bright_and_dim_cells()
    assert attention_to_labels(m, threshold="otsu").max() == 1  # global: dim cells lost
    lab = attention_to_labels(m, cell_diameter=24)  # "auto" with a diameter is "local"
    assert lab.max() == 4
    for k, cx in enumerate((30, 85, 140, 195)):
        disc = _disc_map((100, 220), [(50, cx)], 12) > 0
        cell = lab == lab[50, cx]
        assert (cell & disc).sum() / (cell | disc).sum() > 0.8, k
    np.testing.assert_array_equal(lab, attention_to_labels(m, threshold="local",
                                                           cell_diameter=24))
    flat = attention_to_labels(np.full((50, 50), 0.3, np.float32), cell_diameter=24)
    assert flat.max() == 0


def test_local_threshold_needs_a_diameter_and_names_the_choices():
    m = _bright_and_dim_cells()
    with pytest.raises(ValueError, match="needs the cell diameter"):
        attention_to_labels(m, threshold="local")
    with pytest.raises(ValueError, match="auto, local, otsu"):
        attention_to_labels(m, threshold="mean")


@pytest.mark.parametrize("seed", [1, 3])
def test_tiled_local_threshold_equals_untiled(seed):
    m = _blob_map((200, 230), 45, seed)
    whole = attention_to_labels(m, cell_diameter=14)
    tiled = attention_to_labels_tiled(m, tile=64, cell_diameter=14)
    assert whole.max() > 20
    assert match_objects(tiled, whole, iou_threshold=0.99)["f1"] >= 0.95


@pytest.mark.parametrize("top", [900, 70_000])
def test_large_images_are_written_band_by_band(tmp_path, monkeypatch, top):
    from napari_atagan import export

    monkeypatch.setattr(export, "STREAM_BYTES", 1000)  # everything here counts as large
    monkeypatch.setattr(export, "_BAND_BYTES", 512)
    labels = np.lib.format.open_memmap(tmp_path / "l.npy", mode="w+", dtype=np.uint32,
                                       shape=(2, 50, 64))
    labels[:] = np.arange(2 * 50 * 64).reshape(labels.shape) % (top + 1)
    labels[1, -1, -1] = top
    att = np.random.default_rng(0).random((50, 64)).astype(np.float64)
    lab_path = save_labels_tiff(tmp_path / "cells.tif", labels, metadata={"threshold": "local"})
    att_path = save_attention_tiff(tmp_path / "att.tif", att)
    back = tifffile.imread(lab_path)
    assert back.dtype == (np.uint16 if top < 65536 else np.uint32)
    np.testing.assert_array_equal(back, labels)
    meta = read_tiff_metadata(lab_path)
    assert meta["max_label"] == top and meta["threshold"] == "local"
    with tifffile.TiffFile(lab_path) as tif:
        assert tif.is_imagej == (top < 65536)
    np.testing.assert_array_equal(tifffile.imread(att_path), att.astype(np.float32))
    assert read_tiff_metadata(att_path)["kind"] == "attention"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["att.tif", "cells.tif", "l.npy"]


def test_local_threshold_keeps_a_cell_inside_a_ring_of_another():
    yy, xx = np.mgrid[:120, :120]
    r = np.hypot(yy - 60, xx - 60)
    theta = np.arctan2(yy - 60, xx - 60)
    ring = 0.2 + 0.05 * np.cos(theta) - 0.002 * np.abs(r - 35)  # one peak, at the right
    m = np.where((r > 30) & (r < 40), ring, 0.0).astype(np.float32)  # a dim ring
    m[(r < 12)] = 1.0  # a bright cell in its middle, apart from the ring
    lab = attention_to_labels(m, cell_diameter=24, min_size=10)
    centre, ring = lab[60, 60], lab[60, 25]
    assert centre > 0 and ring > 0 and centre != ring
    assert (lab == centre).sum() < 700  # the bright cell, not the filled ring


def _bumps(shape, centres, sigma, heights=None):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, np.float32)
    for k, (cy, cx) in enumerate(centres):
        h = 1.0 if heights is None else heights[k]
        m = np.maximum(m, h * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return m


def test_local_threshold_keeps_a_cell_with_two_bright_spots_whole():
    # a nuclear rim seen from the side: one cell (diameter 24) bright at two ends, 14 px
    # apart (more than the third of a diameter that lets each seed a basin)
    cell = 0.7 * _disc_map((80, 80), [(40, 40)], 12)
    m = np.maximum(ndi.gaussian_filter(cell, 2), _bumps((80, 80), [(40, 33), (40, 47)], 3))
    lab = attention_to_labels(m, cell_diameter=24)
    assert lab.max() == 1 and lab[40, 33] == lab[40, 47] == 1
    disc = cell > 0
    assert ((lab > 0) & disc).sum() / ((lab > 0) | disc).sum() > 0.8


def test_local_threshold_still_splits_touching_cells():
    # two cells of diameter 24 side by side: the valley between them is under half their peaks
    two = _bumps((80, 110), [(40, 40), (40, 66)], 6, heights=(1.0, 0.6))
    lab = attention_to_labels(two, cell_diameter=24)
    assert lab.max() == 2 and lab[40, 40] != lab[40, 66]
    # no valley, but together far larger than one cell (a cluster): not merged either
    wide = _bumps((80, 110), [(40, 40), (40, 66)], 12)
    assert wide[40, 53] > 0.5 * wide[40, 40]
    lab = attention_to_labels(wide, cell_diameter=24)
    assert lab.max() == 2 and lab[40, 40] != lab[40, 66]


def test_objects_under_the_minimum_cell_area_are_dropped_when_the_diameter_is_known():
    from napari_atagan.slides.labels import MIN_CELL_AREA

    yy, xx = np.mgrid[:200, :200]
    amap = np.zeros((200, 200), np.float32)
    amap[(yy - 60) ** 2 + (xx - 60) ** 2 <= 20 ** 2] = 1.0  # a cell of diameter 40
    amap[(yy - 150) ** 2 + (xx - 150) ** 2 <= 8 ** 2] = 1.0  # ~200 px: 16 % of a cell
    assert 200 < MIN_CELL_AREA * np.pi / 4 * 40 ** 2
    without = attention_to_labels(amap, threshold=0.5, smooth=0)
    assert without.max() == 2  # both objects are above min_size (30 px)
    known = attention_to_labels(amap, threshold=0.5, smooth=0, cell_diameter=40)
    assert known.max() == 1 and known[60, 60] == 1 and known[150, 150] == 0


def test_effective_min_size_is_the_floor_the_labelling_applies():
    from napari_atagan.slides.labels import effective_min_size, min_cell_size

    assert min_cell_size(40) == int(0.4 * np.pi / 4 * 40 ** 2) == 502
    assert effective_min_size(30, None) == 30
    assert effective_min_size(30, 40) == 502 and effective_min_size(900, 40) == 900
    yy, xx = np.mgrid[:200, :200]
    amap = np.zeros((200, 200), np.float32)
    amap[(yy - 60) ** 2 + (xx - 60) ** 2 <= 20 ** 2] = 1.0  # 1,257 px
    amap[(yy - 150) ** 2 + (xx - 150) ** 2 <= 13 ** 2] = 1.0  # 529 px: just above 502
    assert attention_to_labels(amap, threshold=0.5, smooth=0, cell_diameter=40).max() == 2
    assert attention_to_labels(amap, threshold=0.5, smooth=0, cell_diameter=40,
                               min_size=600).max() == 1


def test_saving_a_copy_on_write_memmap_keeps_its_unsaved_changes(tmp_path, monkeypatch):
    # Big images are written band by band, handing pages back after each band;
    # a copy-on-write map's changes live only in those pages and must survive.
    import napari_atagan.export as export

    src = tmp_path / "att.npy"
    np.save(src, np.zeros((64, 80), np.float32))
    att = np.load(src, mmap_mode="c")
    att[10:20] = 5.0  # changed in memory only
    monkeypatch.setattr(export, "STREAM_BYTES", 0)  # take the band-by-band path
    monkeypatch.setattr(export, "_BAND_BYTES", 80 * 4 * 8)  # 8 rows per band
    path = save_attention_tiff(tmp_path / "a.tif", att)
    back = tifffile.imread(path)
    assert back[10:20].min() == 5.0 and back[:10].max() == 0.0 and back[20:].max() == 0.0
