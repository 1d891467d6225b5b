"""Tests of the procedural IIF HEp-2 simulator (napari_atagan.simulate)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import disk, white_tophat

from napari_atagan import simulate
from napari_atagan.simulate import (
    PATTERNS,
    CropSet,
    Slide,
    make_sample_data,
    simulate_crops,
    simulate_slide,
    write_crops_folder,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crops16() -> CropSet:
    """Ten clean 16-bit crops per pattern (no neighbouring cells) for the measurements."""
    return simulate_crops(60, seed=3, bit_depth=16, neighbours=False)


@pytest.fixture(scope="module")
def slide() -> Slide:
    return simulate_slide((512, 512), n_cells=30, cell_diameter=36, seed=5)


def _by_pattern(crops: CropSet, name: str):
    k = crops.patterns.index(name)
    return [(im.astype(float), m > 0) for im, m, lab in zip(crops.images, crops.masks, crops.labels) if lab == k]


def _background(image: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(image[~ndi.binary_dilation(mask, iterations=3)]))


# --------------------------------------------------------------------------- crops
def test_crops_shapes_dtypes_and_balance():
    crops = simulate_crops(13, size=48, seed=1)
    assert crops.images.shape == (13, 48, 48) and crops.images.dtype == np.uint8
    assert crops.masks.shape == (13, 48, 48) and crops.masks.dtype == np.uint8
    assert set(np.unique(crops.masks)) <= {0, 1}
    assert crops.labels.dtype == np.int64 and crops.labels.shape == (13,)
    assert crops.patterns == PATTERNS
    counts = np.bincount(crops.labels, minlength=len(PATTERNS))
    assert counts.max() - counts.min() <= 1  # balanced
    assert len(crops) == 13 and crops.pattern_names[1] == PATTERNS[crops.labels[1]]


def test_every_pattern_is_produced():
    crops = simulate_crops(12, seed=0)
    assert sorted(set(crops.pattern_names)) == sorted(PATTERNS)


def test_pattern_subset_and_16_bit():
    crops = simulate_crops(4, size=32, patterns=("NuMem", "Golgi"), bit_depth=16)
    assert crops.images.dtype == np.uint16
    assert crops.patterns == ("NuMem", "Golgi")
    assert list(crops.labels) == [0, 1, 0, 1]
    assert crops.images.max() > 255  # really uses the 16-bit range


def test_cell_is_centred_with_realistic_size(crops16):
    size = crops16.images.shape[-1]
    for mask in crops16.masks:
        diameter = 2 * np.sqrt(mask.sum() / np.pi)
        assert 0.5 * size < diameter < 0.8 * size
        cy, cx = ndi.center_of_mass(mask)
        assert abs(cy - size / 2) < 0.1 * size and abs(cx - size / 2) < 0.1 * size
        assert ndi.label(mask)[1] == 1  # one connected nucleus


def test_masks_match_the_cells():
    """Inside the mask the image is clearly brighter than the background around it.

    Golgi stains the cytoplasm around a dim nucleus (as in real Golgi crops the
    nucleus can be darker than its surroundings), so there the nucleus is
    compared with the unstained background and the stained region as a whole
    (nucleus plus perinuclear band) with its surroundings.
    """
    crops = simulate_crops(60, seed=2, bit_depth=16)
    for image, mask, name in zip(crops.images.astype(float), crops.masks > 0, crops.pattern_names):
        outside = ~ndi.binary_dilation(mask, iterations=2)
        if name == "Golgi":
            assert image[mask].mean() > 1.05 * np.percentile(image[outside], 10)
            cell = ndi.binary_dilation(mask, iterations=6)
            assert image[cell].mean() > 1.03 * np.median(image[~cell])
        else:
            assert image[mask].mean() > 1.03 * np.median(image[outside])


def test_default_intensity_is_dim_like_real_iif():
    crops = simulate_crops(30, seed=4)
    assert 8 <= np.median(crops.images) <= 40
    brighter = simulate_crops(30, seed=4, intensity=3.0)
    assert np.median(brighter.images) > 2 * np.median(crops.images)


def test_crops_are_reproducible_bit_for_bit():
    a = simulate_crops(7, seed=11)
    b = simulate_crops(7, seed=11)
    c = simulate_crops(7, seed=12)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    # crop i does not depend on how many crops are asked for
    np.testing.assert_array_equal(simulate_crops(3, seed=11).images, a.images[:3])


# --------------------------------------------------------------------------- patterns
def test_numem_rim_brighter_than_centre(crops16):
    def rim_ratio(image, mask):
        core = ndi.binary_erosion(mask, iterations=8)
        band = ndi.binary_erosion(mask, iterations=1) & ~ndi.binary_erosion(mask, iterations=4)
        return image[band].mean() / image[core].mean()

    numem = [rim_ratio(*c) for c in _by_pattern(crops16, "NuMem")]
    homogeneous = [rim_ratio(*c) for c in _by_pattern(crops16, "Homogeneous")]
    assert np.mean(np.array(numem) > 1.0) >= 0.8
    assert np.median(numem) > np.median(homogeneous) + 0.1


def _n_dots(image, mask):
    """Small bright spots clearly above their surroundings (top-hat peaks over the noise)."""
    outside = ~ndi.binary_dilation(mask, iterations=3)
    noise = np.std(image[outside] - ndi.gaussian_filter(image, 2)[outside])
    tophat = white_tophat(ndi.gaussian_filter(image, 0.7), disk(3))
    return len(peak_local_max(tophat, min_distance=1, threshold_abs=4 * noise, labels=mask.astype(int)))


def test_centromere_has_many_discrete_dots(crops16):
    centromere = [_n_dots(*c) for c in _by_pattern(crops16, "Centromere")]
    homogeneous = [_n_dots(*c) for c in _by_pattern(crops16, "Homogeneous")]
    nucleolar = [_n_dots(*c) for c in _by_pattern(crops16, "Nucleolar")]
    assert min(centromere) >= 10 and np.median(centromere) >= 15
    assert np.median(centromere) > 3 * max(np.median(homogeneous), np.median(nucleolar), 1)


def test_golgi_stain_is_off_centre(crops16):
    def offset(image, mask):
        weight = np.clip(image - _background(image, mask), 0, None) * ndi.binary_dilation(mask, iterations=8)
        radius = np.sqrt(mask.sum() / np.pi)
        return np.hypot(*np.subtract(ndi.center_of_mass(weight), ndi.center_of_mass(mask))) / radius

    golgi = [offset(*c) for c in _by_pattern(crops16, "Golgi")]
    others = [offset(*c) for p in PATTERNS if p != "Golgi" for c in _by_pattern(crops16, p)]
    assert min(golgi) > 0.3
    assert np.median(golgi) > 3 * np.median(others)


def test_nucleolar_has_few_bright_blobs_over_dim_nucleoplasm(crops16):
    for image, mask in _by_pattern(crops16, "Nucleolar"):
        bg = _background(image, mask)
        inside = image[mask] - bg
        assert np.percentile(inside, 99.5) > 2.5 * np.median(inside)


# --------------------------------------------------------------------------- slides
def test_slide_labels_unique_and_non_overlapping(slide):
    assert slide.image.shape == (512, 512) and slide.image.dtype == np.uint16
    assert slide.labels.shape == (512, 512) and slide.labels.dtype == np.uint16
    ids = np.unique(slide.labels)
    assert list(ids) == list(range(31))  # background + 30 cells, ids 1..30
    assert len(slide.patterns) == 30 and set(slide.patterns) == set(PATTERNS)
    # every label is one whole, connected nucleus: none was cut by a later cell
    areas = np.bincount(slide.labels.ravel())[1:]
    smallest = np.pi * (0.75 * 36 / 2) ** 2 / 1.35  # smallest diameter factor and largest aspect
    assert areas.min() > 0.9 * smallest
    for i in range(1, 31):
        assert ndi.label(slide.labels == i)[1] == 1
    assert 30 < slide.cell_diameter < 42


def test_slide_cells_are_brighter_than_background(slide):
    image = slide.image.astype(float)
    background = np.median(image[ndi.binary_dilation(slide.labels > 0, iterations=10) == 0])
    means = ndi.mean(image, slide.labels, index=np.arange(1, 31))
    assert np.all(means > 1.03 * background)


def test_slide_number_of_cells_and_8_bit():
    s = simulate_slide((256, 384), n_cells=12, cell_diameter=30, bit_depth=8, seed=1, patterns=["Speckled"])
    assert s.image.dtype == np.uint8 and s.image.shape == (256, 384)
    assert s.labels.max() == 12 and len(np.unique(s.labels)) == 13
    assert s.patterns == ["Speckled"] * 12


def test_slide_reproducible_bit_for_bit():
    a = simulate_slide((200, 200), n_cells=8, cell_diameter=30, seed=9)
    b = simulate_slide((200, 200), n_cells=8, cell_diameter=30, seed=9)
    c = simulate_slide((200, 200), n_cells=8, cell_diameter=30, seed=10)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.patterns == b.patterns
    assert not np.array_equal(a.image, c.image)


def test_slide_is_fast():
    simulate_slide((256, 256), n_cells=10, seed=0)  # warm-up (imports, caches)
    start = time.perf_counter()
    simulate_slide((1024, 1024), n_cells=60, cell_diameter=40, seed=1)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- files
def test_write_crops_folder_layout(tmp_path):
    crops = simulate_crops(8, size=32, seed=1)
    out = write_crops_folder(crops, tmp_path / "set")
    assert out == tmp_path / "set"
    assert sorted(p.name for p in out.iterdir()) == sorted(PATTERNS)
    for i in range(8):
        folder = out / crops.patterns[crops.labels[i]]
        image = iio.imread(folder / f"{i + 1:05d}.png")
        mask = iio.imread(folder / f"{i + 1:05d}_Mask.png")
        np.testing.assert_array_equal(image, crops.images[i])
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, crops.masks[i] > 0)
    assert len(list(out.rglob("*.png"))) == 16


def test_write_crops_folder_keeps_16_bit(tmp_path):
    crops = simulate_crops(2, size=24, seed=1, bit_depth=16, patterns=["Centromere"])
    write_crops_folder(crops, tmp_path)
    image = iio.imread(tmp_path / "Centromere" / "00002.png")
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, crops.images[1])


def test_make_sample_data(tmp_path):
    files = make_sample_data(tmp_path)
    slide_image = tifffile.imread(files["slide"])
    slide_labels = tifffile.imread(files["slide_labels"])
    assert slide_image.shape == (1024, 1024) and slide_image.dtype == np.uint16
    assert slide_labels.shape == (1024, 1024) and slide_labels.dtype == np.uint16
    assert slide_labels.max() == simulate.SAMPLE_SLIDE_CELLS
    crops = tifffile.imread(files["crops"])
    masks = tifffile.imread(files["crops_masks"])
    assert crops.shape == (240, 64, 64) and crops.dtype == np.uint8
    assert masks.shape == (240, 64, 64) and masks.dtype == np.uint8
    with open(files["crops_csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 240 and rows[0].keys() == {"index", "pattern", "seed"}
    assert {r["pattern"] for r in rows} == set(PATTERNS)
    assert "napari-atagan simulate --sample-data sample_data/" in files["readme"].read_text()
    assert sum(p.stat().st_size for p in files.values()) < 3_000_000

    committed = REPO / "sample_data"
    if (committed / "hep2_slide.tif").is_file():  # the shipped files are what the code makes
        np.testing.assert_array_equal(tifffile.imread(committed / "hep2_slide_labels.tif"), slide_labels)
        np.testing.assert_array_equal(tifffile.imread(committed / "hep2_crops_masks.tif"), masks)
        for name, new in (("hep2_slide.tif", slide_image), ("hep2_crops.tif", crops)):
            old = tifffile.imread(committed / name)
            diff = np.abs(old.astype(np.int64) - new)
            assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, f"sample_data/{name} is stale: regenerate it"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("call", "kwargs", "name"),
    [
        (simulate_crops, {"n": 0}, "n"),
        (simulate_crops, {"n": -3}, "n"),
        (simulate_crops, {"n": 2.5}, "n"),
        (simulate_crops, {"n": 2, "size": 8}, "size"),
        (simulate_crops, {"n": 2, "patterns": ("Speckled", "Mitotic")}, "patterns"),
        (simulate_crops, {"n": 2, "patterns": ()}, "patterns"),
        (simulate_crops, {"n": 2, "patterns": ("Golgi", "Golgi")}, "patterns"),
        (simulate_crops, {"n": 2, "bit_depth": 12}, "bit_depth"),
        (simulate_crops, {"n": 2, "intensity": 0}, "intensity"),
        (simulate_crops, {"n": 2, "intensity": -1.0}, "intensity"),
        (simulate_crops, {"n": 2, "intensity": float("nan")}, "intensity"),
        (simulate_crops, {"n": 2, "seed": -1}, "seed"),
        (simulate_slide, {"shape": (8, 512)}, "shape"),
        (simulate_slide, {"shape": (512,)}, "shape"),
        (simulate_slide, {"n_cells": 0}, "n_cells"),
        (simulate_slide, {"cell_diameter": 0}, "cell_diameter"),
        (simulate_slide, {"shape": (64, 64), "cell_diameter": 60}, "cell_diameter"),
        (simulate_slide, {"patterns": ["Cytoplasmic"]}, "patterns"),
        (simulate_slide, {"bit_depth": 32}, "bit_depth"),
        (simulate_slide, {"intensity": 0.0}, "intensity"),
        (simulate_slide, {"shape": (128, 128), "n_cells": 40, "cell_diameter": 30}, "n_cells"),
    ],
)
def test_bad_parameters_raise_value_error(call, kwargs, name):
    kwargs = dict(kwargs)
    args = (kwargs.pop("n"),) if "n" in kwargs else ()
    with pytest.raises(ValueError, match=name):
        call(*args, **kwargs)


def test_crowded_slide_error_says_what_to_do():
    with pytest.raises(ValueError, match="fewer or smaller cells or a larger shape"):
        simulate_slide((128, 128), n_cells=40, cell_diameter=30)


def test_write_crops_folder_rejects_inconsistent_crops(tmp_path):
    crops = simulate_crops(2, size=16)
    bad = CropSet(images=crops.images, masks=crops.masks[:1], labels=crops.labels, patterns=crops.patterns)
    with pytest.raises(ValueError, match="crops"):
        write_crops_folder(bad, tmp_path)


def test_slide_placement_failure_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(simulate, "_try_place", lambda labels, cell, label: False)
    with pytest.raises(ValueError, match=r"could only place 0 of n_cells=3"):
        simulate_slide((256, 256), n_cells=3, cell_diameter=30)


def test_single_large_cell_fits():
    s = simulate_slide((60, 60), n_cells=1, cell_diameter=45)
    assert s.labels.max() == 1
