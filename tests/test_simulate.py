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
        (simulate_slide, {"patterns": ["Cytoplasm"]}, "patterns"),
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


# --------------------------------------------------------------------------- realism
REALISM_OFF = dict(crowding=0.0, overlap=0.0, glow=0.0, mitotic=0.0, vignetting=0.0, background=0.0,
                   photons=5000.0, read_noise=0.5, defocus=0.0)


def _touching_pairs(labels: np.ndarray) -> dict[tuple[int, int], int]:
    """Pairs of different labels that are 4-adjacent, with the number of adjacent pixel pairs."""
    pairs: dict[tuple[int, int], int] = {}
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        hit = (a > 0) & (b > 0) & (a != b)
        for x, y in zip(a[hit].tolist(), b[hit].tolist()):
            key = (min(x, y), max(x, y))
            pairs[key] = pairs.get(key, 0) + 1
    return pairs


@pytest.fixture(scope="module")
def real_slide() -> Slide:
    return simulate_slide((384, 384), n_cells=40, cell_diameter=32, seed=0, realistic=True, bit_depth=8)


def test_realism_options_off_are_the_default_bit_for_bit():
    plain = simulate_slide((200, 240), n_cells=8, cell_diameter=30, seed=9)
    off = simulate_slide((200, 240), n_cells=8, cell_diameter=30, seed=9, realistic=False, rgb=False, **REALISM_OFF)
    np.testing.assert_array_equal(plain.image, off.image)
    np.testing.assert_array_equal(plain.labels, off.labels)
    assert plain.mitotic == [False] * 8
    crops = simulate_crops(4, size=32, seed=2)
    np.testing.assert_array_equal(crops.images, simulate_crops(4, size=32, seed=2, **REALISM_OFF).images)


def test_realistic_slide_has_touching_cells(real_slide):
    assert real_slide.image.shape == (384, 384) and real_slide.image.dtype == np.uint8
    assert list(np.unique(real_slide.labels)) == list(range(41))  # every cell keeps a label
    pairs = _touching_pairs(real_slide.labels)
    touching = {c for pair in pairs for c in pair}
    assert len(pairs) >= 10 and len(touching) >= 0.4 * 40
    for i in range(1, 41):  # an overlap of at most 10 % never cuts a nucleus in two
        assert ndi.label(real_slide.labels == i)[1] == 1
    plain = simulate_slide((384, 384), n_cells=40, cell_diameter=32, seed=0)
    assert len(_touching_pairs(plain.labels)) < len(pairs)


def test_crowding_and_overlap():
    touching = simulate_slide((320, 320), n_cells=30, cell_diameter=30, seed=3, crowding=1.0)
    overlapping = simulate_slide((320, 320), n_cells=30, cell_diameter=30, seed=3, crowding=1.0, overlap=0.25)
    for s in (touching, overlapping):
        cells = {c for pair in _touching_pairs(s.labels) for c in pair}
        assert len(cells) >= 0.8 * 30
    # overlapping nuclei share a chord, longer than the few pixels where touching ones meet
    mean_contact = [np.mean(list(_touching_pairs(s.labels).values())) for s in (touching, overlapping)]
    assert mean_contact[1] > 1.2 * mean_contact[0]


def test_glow_outside_the_labels_is_brighter_than_far_background():
    def ring_and_far(s):
        dist = ndi.distance_transform_edt(s.labels == 0)
        image = s.image.astype(float)
        return np.median(image[(dist > 3) & (dist <= 12)]), np.median(image[dist > 48])

    ring0, far0 = ring_and_far(simulate_slide((384, 384), n_cells=12, cell_diameter=32, seed=4))
    ring, far = ring_and_far(simulate_slide((384, 384), n_cells=12, cell_diameter=32, seed=4, glow=0.4))
    assert ring > 1.08 * far
    assert ring - far > 2 * (ring0 - far0)


def test_mitotic_cells_saturate_the_8_bit_range():
    s = simulate_slide((256, 256), n_cells=14, cell_diameter=30, seed=1, realistic=True, bit_depth=8,
                       mitotic=0.3, intensity=3.0, patterns=["Homogeneous"])
    ids = [i + 1 for i, m in enumerate(s.mitotic) if m]
    assert len(ids) >= 2 and len(s.mitotic) == 14
    saturated = s.image == 255
    near = ndi.binary_dilation(np.isin(s.labels, ids), iterations=3)
    assert saturated.sum() > 20
    assert (saturated & near).sum() >= 0.95 * saturated.sum()  # only mitotic cells saturate
    peaks = ndi.maximum(s.image, s.labels, ids)
    assert np.mean(np.asarray(peaks) == 255) >= 0.5
    # mitotic cells are smaller than interphase nuclei, and labelled as cells
    areas = np.bincount(s.labels.ravel(), minlength=15)[1:]
    others = [i for i in range(1, 15) if i not in ids]
    assert np.median(areas[np.array(ids) - 1]) < 0.7 * np.median(areas[np.array(others) - 1])


def test_vignetting_darkens_the_corners():
    s = simulate_slide((256, 256), n_cells=1, cell_diameter=20, seed=2, vignetting=0.5, bit_depth=16)
    image = s.image.astype(float)
    centre = np.median(image[96:160, 96:160][s.labels[96:160, 96:160] == 0])
    corners = np.median(np.concatenate([image[:24, :24].ravel(), image[-24:, -24:].ravel(),
                                        image[:24, -24:].ravel(), image[-24:, :24].ravel()]))
    assert corners < 0.8 * centre


def test_photons_set_the_noise():
    def noise(s):
        image = s.image.astype(float)
        residual = image - ndi.uniform_filter(image, 5)
        return residual[ndi.distance_transform_edt(s.labels == 0) > 20].std()

    quiet = simulate_slide((192, 192), n_cells=2, cell_diameter=24, seed=1, bit_depth=8, photons=50000, read_noise=0)
    noisy = simulate_slide((192, 192), n_cells=2, cell_diameter=24, seed=1, bit_depth=8, photons=500)
    assert noise(noisy) > 2.5 * noise(quiet)


def test_defocus_blurs_cells():
    sharp = simulate_slide((256, 256), n_cells=10, cell_diameter=30, seed=6, patterns=["Centromere"])
    blurred = simulate_slide((256, 256), n_cells=10, cell_diameter=30, seed=6, patterns=["Centromere"], defocus=1.0)
    np.testing.assert_array_equal(sharp.labels, blurred.labels)

    def detail(s):
        image = s.image.astype(float)
        return np.abs(ndi.laplace(ndi.gaussian_filter(image, 1.0)))[s.labels > 0].mean()

    assert detail(blurred) < 0.6 * detail(sharp)


def test_rgb_slide_has_the_stain_in_green(real_slide):
    rgb = simulate_slide((384, 384), n_cells=40, cell_diameter=32, seed=0, realistic=True, rgb=True)
    assert rgb.image.shape == (384, 384, 3) and rgb.image.dtype == np.uint8
    np.testing.assert_array_equal(rgb.image[..., 1], real_slide.image)  # green is the grey slide
    np.testing.assert_array_equal(rgb.labels, real_slide.labels)
    cells, background = rgb.labels > 0, ndi.distance_transform_edt(rgb.labels == 0) > 20
    green = rgb.image[..., 1].astype(float)
    for c in (0, 2):
        other = rgb.image[..., c].astype(float)
        assert other.mean() < 0.6 * green.mean()
        # a little crosstalk: the cells show faintly, far less than in green
        contrast = other[cells].mean() - other[background].mean()
        assert 0 < contrast < 0.3 * (green[cells].mean() - green[background].mean())
        assert other.std() > 0


def test_realistic_slides_are_deterministic(real_slide):
    again = simulate_slide((384, 384), n_cells=40, cell_diameter=32, seed=0, realistic=True, bit_depth=8)
    np.testing.assert_array_equal(again.image, real_slide.image)
    np.testing.assert_array_equal(again.labels, real_slide.labels)
    assert again.mitotic == real_slide.mitotic and again.patterns == real_slide.patterns
    other = simulate_slide((384, 384), n_cells=40, cell_diameter=32, seed=1, realistic=True, bit_depth=8)
    assert not np.array_equal(other.labels, real_slide.labels)


def test_realistic_crops_depend_only_on_seed_and_index():
    a = simulate_crops(7, size=48, seed=11, realistic=True)
    np.testing.assert_array_equal(simulate_crops(3, size=48, seed=11, realistic=True).images, a.images[:3])
    np.testing.assert_array_equal(simulate_crops(7, size=48, seed=11, realistic=True).images, a.images)
    assert not np.array_equal(simulate_crops(7, size=48, seed=12, realistic=True).images, a.images)
    assert not np.array_equal(simulate_crops(7, size=48, seed=11).images, a.images)
    assert a.images.shape == (7, 48, 48) and a.images.dtype == np.uint8


def test_realistic_crops_mask_the_whole_centred_nucleus():
    crops = simulate_crops(24, size=64, seed=4, realistic=True, crowding=1.0, overlap=0.1)
    for image, mask in zip(crops.images, crops.masks):
        assert set(np.unique(mask)) <= {0, 1} and ndi.label(mask)[1] == 1
        diameter = 2 * np.sqrt(mask.sum() / np.pi)
        assert 0.5 * 64 < diameter < 0.85 * 64  # the centred cell lies on top: its mask is whole
        cy, cx = ndi.center_of_mass(mask)
        assert abs(cy - 31.5) < 6 and abs(cx - 31.5) < 6
    # crowded crops show touching neighbours: bright stain right outside the mask, on some side
    def rims(crops):
        out = []
        for image, mask in zip(crops.images.astype(float), crops.masks > 0):
            ring = ndi.binary_dilation(mask, iterations=4) & ~ndi.binary_dilation(mask, iterations=1)
            out.append(np.percentile(image[ring], 95) - np.median(image[~ndi.binary_dilation(mask, iterations=4)]))
        return np.array(out)

    apart = simulate_crops(24, size=64, seed=4, realistic=True, crowding=0.0, overlap=0.1)
    np.testing.assert_array_equal(apart.masks, crops.masks)  # the same centred cells
    assert np.median(rims(crops)) > 2 * np.median(rims(apart))


def test_rgb_crops():
    crops = simulate_crops(4, size=32, seed=3, realistic=True, rgb=True)
    assert crops.images.shape == (4, 32, 32, 3) and crops.images.dtype == np.uint8
    grey = simulate_crops(4, size=32, seed=3, realistic=True)
    np.testing.assert_array_equal(crops.images[..., 1], grey.images)
    np.testing.assert_array_equal(crops.masks, grey.masks)


def test_write_slide_and_rgb_crops(tmp_path):
    from napari_atagan.export import read_tiff_metadata

    s = simulate_slide((128, 160), n_cells=6, cell_diameter=24, seed=2, realistic=True, rgb=True, mitotic=0.5)
    image_path, labels_path = simulate.write_slide(s, tmp_path / "out", "slide_000")
    assert image_path.name == "slide_000.tif" and labels_path.name == "slide_000_labels.tif"
    with tifffile.TiffFile(image_path) as tif:
        assert tif.is_imagej
        np.testing.assert_array_equal(tif.asarray(), s.image)
    np.testing.assert_array_equal(tifffile.imread(labels_path), s.labels)
    meta = read_tiff_metadata(labels_path)
    assert meta["patterns"] == s.patterns and meta["cell_diameter"] > 0
    assert meta["mitotic"] == [i + 1 for i, m in enumerate(s.mitotic) if m]
    with pytest.raises(ValueError, match="stem"):
        simulate.write_slide(s, tmp_path, "a/b")
    crops = simulate_crops(2, size=24, seed=1, rgb=True, patterns=["Golgi"])
    write_crops_folder(crops, tmp_path / "crops")
    np.testing.assert_array_equal(iio.imread(tmp_path / "crops" / "Golgi" / "00002.png"), crops.images[1])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"crowding": 1.5}, "crowding"),
        ({"overlap": 0.5}, "overlap"),
        ({"glow": -0.1}, "glow"),
        ({"mitotic": 0.9}, "mitotic"),
        ({"vignetting": 1.0}, "vignetting"),
        ({"background": float("inf")}, "background"),
        ({"photons": 0}, "photons"),
        ({"read_noise": -1}, "read_noise"),
        ({"defocus": 2}, "defocus"),
        ({"glow": "0.3"}, "glow"),
        ({"realistic": "yes"}, "realistic"),
        ({"rgb": 1}, "rgb"),
        ({"rgb": True, "bit_depth": 16}, "rgb"),
    ],
)
def test_bad_realism_options_raise_value_error(kwargs, name):
    with pytest.raises(ValueError, match=name):
        simulate_slide((128, 128), n_cells=2, cell_diameter=20, **kwargs)
    with pytest.raises(ValueError, match=name):
        simulate_crops(2, size=32, **kwargs)


def test_crowded_slide_that_cannot_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer or smaller cells or a larger shape"):
        simulate_slide((128, 128), n_cells=30, cell_diameter=30, realistic=True)


# --------------------------------------------------------------------------- command line
def test_cli_writes_realistic_slides_and_crops(tmp_path, capsys):
    import json

    from napari_atagan.cli import main

    rc = main(["simulate", "--slides", "2", "--realistic", "--rgb", "--size", "128", "160", "--diameter", "24",
               "--cells", "8", "--seed", "3", "--out", str(tmp_path / "slides")])
    assert rc == 0
    written = json.loads(capsys.readouterr().out)
    assert [w["seed"] for w in written] == [3, 4]
    image = tifffile.imread(tmp_path / "slides" / "slide_001.tif")
    labels = tifffile.imread(tmp_path / "slides" / "slide_001_labels.tif")
    expected = simulate_slide((128, 160), n_cells=8, cell_diameter=24, seed=4, realistic=True, rgb=True)
    np.testing.assert_array_equal(image, expected.image)
    np.testing.assert_array_equal(labels, expected.labels)

    assert main(["simulate", "--crops", "4", "--realistic", "--size", "32", "--patterns", "NuMem",
                 "--out", str(tmp_path / "crops")]) == 0
    written = sorted(p.name for p in (tmp_path / "crops" / "NuMem").iterdir())
    assert written[:2] == ["00001.png", "00001_Mask.png"] and len(written) == 8
    np.testing.assert_array_equal(iio.imread(tmp_path / "crops" / "NuMem" / "00004.png"),
                                  simulate_crops(4, size=32, seed=0, realistic=True, patterns=["NuMem"]).images[3])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slides", "1"], "--out"),
        (["--crops", "2", "--size", "32", "32", "--out", "x"], "--size"),
        (["--slides", "1", "--size", "64", "64", "64", "--out", "x"], "--size"),
        (["--crops", "2", "--diameter", "20", "--out", "x"], "--diameter"),
        (["--slides", "1", "--rgb", "--bit-depth", "16", "--out", "x"], "--rgb"),
        (["--sample-data", "x", "--realistic"], "--realistic"),
    ],
)
def test_cli_simulate_mistakes(tmp_path, capsys, monkeypatch, argv, message):
    from napari_atagan.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["simulate", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cytoplasmic_cells_are_whole_stained_cells_around_a_dark_nucleus():
    from napari_atagan.simulate import EXTRA_PATTERNS

    assert "Cytoplasmic" in EXTRA_PATTERNS and "Cytoplasmic" not in PATTERNS  # never drawn by default
    s = simulate_slide((384, 384), n_cells=10, cell_diameter=60, seed=2, patterns=["Cytoplasmic"],
                       realistic=True, mitotic=0.5, glow=0.4, bit_depth=16)
    assert s.patterns == ["Cytoplasmic"] * 10 and not any(s.mitotic)  # no stained chromatin to show
    assert 54 < s.cell_diameter < 66  # the labels are the whole cell, at the diameter asked for
    image = s.image.astype(float)
    smooth = ndi.gaussian_filter(image, 3)
    background = np.median(image[ndi.distance_transform_edt(s.labels == 0) > 20])
    for k in range(1, 11):
        cell = s.labels == k
        depth = ndi.distance_transform_edt(cell)
        stained = np.percentile(image[cell & (depth > 3)], 75) - background
        nucleus = smooth[cell & (depth > 0.4 * depth.max())].min() - background  # the darkest place inside
        assert stained > 0.1 * background and nucleus < 0.5 * stained
    # no glow body around them: just outside a cell is as dark as the background
    near = (ndi.distance_transform_edt(s.labels == 0) > 8) & (ndi.distance_transform_edt(s.labels == 0) < 14)
    assert np.median(image[near]) - background < 0.2 * (np.median(image[s.labels > 0]) - background)


def test_cli_simulates_cytoplasmic_slides(tmp_path, capsys):
    from napari_atagan.cli import main

    assert main(["simulate", "--slides", "1", "--patterns", "Cytoplasmic", "--size", "160", "--diameter", "40",
                 "--cells", "4", "--out", str(tmp_path)]) == 0
    expected = simulate_slide((160, 160), n_cells=4, cell_diameter=40, patterns=["Cytoplasmic"], bit_depth=8)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "slide_000.tif"), expected.image)
    with pytest.raises(ValueError, match="Cytoplasmic"):
        simulate_slide((160, 160), n_cells=4, cell_diameter=40, patterns=["Cytoplasm"])
