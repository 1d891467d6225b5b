"""Mosaics of real-like crops: determinism, placement, ground truth, background, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_atagan.evaluation.mosaic import make_mosaic, read_raw_crops, write_mosaic
from napari_atagan.simulate import simulate_crops, write_crops_folder

SHAPE = (256, 256)


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory):
    crops = simulate_crops(18, size=40, patterns=("Homogeneous", "NuMem", "Golgi"), seed=5)
    return write_crops_folder(crops, tmp_path_factory.mktemp("mosaic") / "cells")


@pytest.fixture(scope="module")
def mosaic(crops_dir):
    return make_mosaic(crops_dir, shape=SHAPE, n_cells=12, seed=3)


def test_deterministic_per_seed(crops_dir, mosaic):
    again = make_mosaic(crops_dir, shape=SHAPE, n_cells=12, seed=3)
    assert np.array_equal(again.image, mosaic.image)
    assert np.array_equal(again.labels, mosaic.labels)
    other = make_mosaic(crops_dir, shape=SHAPE, n_cells=12, seed=4)
    assert not np.array_equal(other.labels, mosaic.labels)


def test_shapes_dtypes_and_patterns(mosaic):
    assert mosaic.image.shape == SHAPE and mosaic.image.dtype == np.uint8
    assert mosaic.labels.shape == SHAPE and mosaic.labels.dtype == np.uint16
    assert len(mosaic.patterns) == 12
    assert set(mosaic.patterns) == {"Homogeneous", "NuMem", "Golgi"}
    assert 15 < mosaic.cell_diameter < 40


def test_labels_unique_connected_and_not_touching(mosaic):
    ids = np.unique(mosaic.labels)
    assert list(ids) == list(range(13))  # 0 and one id per pasted cell
    for i in ids[1:]:
        cell = mosaic.labels == i
        assert ndi.label(cell)[1] == 1
        # no other cell within two pixels: footprints did not overlap
        ring = ndi.binary_dilation(cell, iterations=2) & ~cell
        assert not (mosaic.labels[ring] > 0).any()


def test_labels_match_the_pasted_cells(crops_dir, mosaic):
    """Cells are brighter than the background right around them."""
    crops = read_raw_crops(crops_dir)
    areas = sorted(int(c.mask.sum()) for c in crops)
    for i in range(1, 13):
        cell = mosaic.labels == i
        assert areas[0] <= cell.sum() <= areas[-1]
        ring = ndi.binary_dilation(cell, iterations=6) & ~ndi.binary_dilation(cell, iterations=3)
        assert np.median(mosaic.image[cell]) > np.median(mosaic.image[ring])


def test_background_matches_the_crops(crops_dir, mosaic):
    crops = read_raw_crops(crops_dir)
    bg = [c.image[~ndi.binary_dilation(c.mask, iterations=4)].astype(float) for c in crops]
    level = np.median([np.median(b) for b in bg])
    spread = np.median([1.4826 * np.median(np.abs(b - np.median(b))) for b in bg])
    far = ~ndi.binary_dilation(mosaic.labels > 0, iterations=8)
    canvas = mosaic.image[far].astype(float)
    assert abs(np.median(canvas) - level) <= max(1.0, 0.1 * level)
    robust = 1.4826 * np.median(np.abs(canvas - np.median(canvas)))
    assert 0.5 * spread - 1 <= robust <= 2 * spread + 1


def test_scale_shrinks_cells(crops_dir, mosaic):
    half = make_mosaic(crops_dir, shape=SHAPE, n_cells=12, seed=3, scale=0.5)
    assert half.cell_diameter == pytest.approx(mosaic.cell_diameter / 2, rel=0.15)


def test_celldata_input(tiny_data):
    m = make_mosaic(tiny_data, shape=(128, 128), n_cells=6, seed=0)
    assert m.labels.max() == 6 and m.image.dtype == np.uint8


def test_write_mosaic(tmp_path, mosaic):
    from napari_atagan.export import read_tiff_metadata
    import tifffile

    image_path, labels_path = write_mosaic(mosaic, tmp_path, "m")
    assert image_path.name == "m.tif" and labels_path.name == "m_labels.tif"
    assert np.array_equal(tifffile.imread(image_path), mosaic.image)
    assert np.array_equal(tifffile.imread(labels_path), mosaic.labels)
    meta = read_tiff_metadata(labels_path)
    assert meta["patterns"] == mosaic.patterns and meta["cell_diameter"] > 0


def test_folder_without_masks(tmp_path, crops_dir):
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(crops_dir, plain)
    for f in plain.rglob("*_Mask.png"):
        f.unlink()
    with pytest.raises(ValueError, match="no masks"):
        make_mosaic(plain, shape=SHAPE, n_cells=3)


def test_too_many_cells_says_how_many_fit(crops_dir):
    with pytest.raises(ValueError, match=r"about \d+ cells"):
        make_mosaic(crops_dir, shape=(64, 64), n_cells=40)


@pytest.mark.parametrize("shape", [(10, 300), (256,), "big", (256.5, 256)])
def test_bad_shapes(crops_dir, shape):
    with pytest.raises(ValueError, match="shape"):
        make_mosaic(crops_dir, shape=shape, n_cells=3)


@pytest.mark.parametrize("kwargs", [{"n_cells": 0}, {"scale": 0}, {"seed": -1}])
def test_bad_settings(crops_dir, kwargs):
    with pytest.raises(ValueError):
        make_mosaic(crops_dir, shape=SHAPE, **{"n_cells": 3, **kwargs})


# --------------------------------------------------------------------------- touching cells
def _touching_cells(labels: np.ndarray) -> set[int]:
    """Labels that are 4-adjacent to another label."""
    cells: set[int] = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        hit = (a > 0) & (b > 0) & (a != b)
        cells |= set(a[hit].tolist()) | set(b[hit].tolist())
    return cells


@pytest.fixture(scope="module")
def touching(crops_dir):
    return make_mosaic(crops_dir, shape=SHAPE, n_cells=16, seed=3, touching=True)


def test_touching_mosaic_packs_cells_against_each_other(touching):
    assert list(np.unique(touching.labels)) == list(range(17))
    assert len(_touching_cells(touching.labels)) >= 0.4 * 16


def test_touching_masks_never_overlap(crops_dir, touching):
    """Every label is one whole pasted mask: none lost pixels to a neighbour."""
    from napari_atagan.evaluation.mosaic import _choose_crops, _transform

    rng = np.random.default_rng(3)  # make_mosaic's own draws: crops first, then their transforms
    crops = _choose_crops(crops_dir, 16, rng)
    cells = [_transform(c, rng, 1.0) for c in crops]
    for i, cell in enumerate(cells, start=1):
        label = touching.labels == i
        assert label.sum() == cell.mask.sum()
        assert ndi.label(label)[1] == ndi.label(cell.mask)[1]


def test_touching_cells_stay_brighter_than_the_background(touching):
    far = ~ndi.binary_dilation(touching.labels > 0, iterations=6)
    background = np.median(touching.image[far])
    means = ndi.mean(touching.image.astype(float), touching.labels, index=np.arange(1, 17))
    assert np.median(means) > background


def test_touching_is_deterministic_and_off_by_default(crops_dir, mosaic, touching):
    again = make_mosaic(crops_dir, shape=SHAPE, n_cells=16, seed=3, touching=True)
    assert np.array_equal(again.image, touching.image) and np.array_equal(again.labels, touching.labels)
    plain = make_mosaic(crops_dir, shape=SHAPE, n_cells=12, seed=3, touching=False)
    assert np.array_equal(plain.image, mosaic.image) and np.array_equal(plain.labels, mosaic.labels)
    assert not _touching_cells(mosaic.labels)


def test_touching_mosaic_of_many_cells(crops_dir):
    m = make_mosaic(crops_dir, shape=(384, 384), n_cells=40, seed=1, touching=True)
    assert m.labels.max() == 40
    assert len(_touching_cells(m.labels)) >= 0.6 * 40


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_touching_must_be_a_bool(crops_dir, value):
    with pytest.raises(ValueError, match="touching"):
        make_mosaic(crops_dir, shape=SHAPE, n_cells=3, touching=value)


def test_cli_mosaic_touching(crops_dir, tmp_path, capsys):
    import json

    import tifffile

    from napari_atagan.cli import main

    out = tmp_path / "m"
    assert main(["mosaic", "--crops", str(crops_dir), "--out", str(out), "--n-cells", "16",
                 "--size", "256", "256", "--seed", "3", "--touching"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written[0]["touching"] is True and written[0]["cells"] == 16
    labels = tifffile.imread(out / "mosaic_000_labels.tif")
    expected = make_mosaic(crops_dir, shape=SHAPE, n_cells=16, seed=3, touching=True)
    assert np.array_equal(labels, expected.labels)
    assert np.array_equal(tifffile.imread(out / "mosaic_000.tif"), expected.image)
    # without --touching: the cells are kept apart, as before
    assert main(["mosaic", "--crops", str(crops_dir), "--out", str(tmp_path / "p"), "--n-cells", "12",
                 "--size", "256", "256", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["touching"] is False
    assert np.array_equal(tifffile.imread(tmp_path / "p" / "mosaic_000_labels.tif"),
                          make_mosaic(crops_dir, shape=SHAPE, n_cells=12, seed=3).labels)


def test_context_pastes_the_crops_surroundings(crops_dir):
    from napari_atagan.evaluation.mosaic import _soft_alpha

    mask = np.zeros((41, 41), bool)
    mask[14:27, 14:27] = True  # a 13 px square cell: d ~ 14.7 px
    plain, wide = _soft_alpha(mask), _soft_alpha(mask, context=0.3)
    assert (plain[mask] == 1).all() and (wide[mask] == 1).all()
    assert plain[20, 30] == 0 and wide[20, 30] == pytest.approx(1.0)  # 4 px out: kept
    assert wide[0, 20] == 0 and wide[20, 40] == 0  # fades to nothing at the crop's edge
    a = make_mosaic(crops_dir, shape=SHAPE, n_cells=8, seed=3)
    b = make_mosaic(crops_dir, shape=SHAPE, n_cells=8, seed=3, context=0.3)
    areas = [sorted(np.bincount(m.labels.ravel())[1:]) for m in (a, b)]
    assert areas[0] == areas[1]  # the truth is still the cells' masks

    def around(m):  # how far the pixels just outside the cells stand from the background
        ring = ndi.binary_dilation(m.labels > 0, iterations=4) & (m.labels == 0)
        return np.abs(m.image[ring].astype(float) - np.median(m.image[m.labels == 0])).mean()

    assert around(b) > around(a) + 0.5


@pytest.mark.parametrize("kwargs, message", [({"context": -0.1}, "between 0 and 2"),
                                             ({"context": "x"}, "between 0 and 2"),
                                             ({"context": 0.3, "touching": True}, "choose one")])
def test_bad_context(crops_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_mosaic(crops_dir, shape=SHAPE, n_cells=4, **kwargs)
