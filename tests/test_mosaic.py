"""Mosaics of real-like crops: determinism, placement, ground truth, background, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_atagan.mosaic import make_mosaic, read_raw_crops, write_mosaic
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
