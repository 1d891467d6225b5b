"""Evaluation helpers: hand-checkable answers on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_atagan.metrics import (
    attention_mass_inside,
    cell_contrast,
    classifier_features,
    ellipse_baseline,
    kid,
    lattice_ratio,
    match_objects,
    otsu_baseline,
    pixel_iou,
    pointing_game,
    power_spectrum,
    recall_by_contrast,
    sample_diversity,
    sliced_wasserstein,
    threshold_map,
)


# ---------------------------------------------------------------------------
# pixel IoU and object matching
# ---------------------------------------------------------------------------


def test_pixel_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True  # 3 pixels
    b[0, 1:] = True  # 3 pixels, 2 shared, union 4
    assert pixel_iou(a, b) == pytest.approx(0.5)
    assert pixel_iou(a, a) == 1.0
    assert pixel_iou(np.zeros_like(a), a) == 0.0
    assert pixel_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both empty: documented


def test_pixel_iou_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        pixel_iou(np.zeros((3, 3)), np.zeros((3, 4)))


def _two_cells() -> np.ndarray:
    lab = np.zeros((10, 20), np.uint16)
    lab[1:5, 1:5] = 7  # ids need not be consecutive
    lab[5:9, 12:18] = 3
    return lab


def test_perfect_labels():
    lab = _two_cells()
    r = match_objects(lab, lab)
    assert r == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 2, "fp": 0, "fn": 0,
                 "mean_matched_iou": 1.0}


def test_empty_prediction():
    r = match_objects(np.zeros((10, 20), int), _two_cells())
    assert (r["precision"], r["recall"], r["f1"], r["tp"], r["fn"]) == (0.0, 0.0, 0.0, 0, 2)


def test_both_empty_is_perfect():
    r = match_objects(np.zeros((5, 5), int), np.zeros((5, 5), int))
    assert r["f1"] == 1.0 and r["tp"] == r["fp"] == r["fn"] == 0


def test_one_match_one_miss_one_false_alarm():
    true = _two_cells()
    pred = np.zeros_like(true)
    pred[1:5, 1:4] = 1  # 12 of the 16 pixels of cell 7: IoU 0.75
    pred[0:2, 8:10] = 2  # a false alarm; cell 3 is missed
    r = match_objects(pred, true)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(0.5)
    assert r["f1"] == pytest.approx(0.5)
    assert r["mean_matched_iou"] == pytest.approx(0.75)
    # the same pair no longer counts above its IoU
    assert match_objects(pred, true, iou_threshold=0.8)["tp"] == 0


def test_low_threshold_is_one_to_one():
    """Two predicted halves of one cell: at IoU 0.3 only one of them may match."""
    true = np.zeros((4, 8), int)
    true[:, :] = 1
    pred = np.zeros_like(true)
    pred[:, :4] = 1
    pred[:, 4:] = 2
    r = match_objects(pred, true, iou_threshold=0.3)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    assert r["mean_matched_iou"] == pytest.approx(0.5)


def test_match_objects_refuses_bad_input():
    with pytest.raises(ValueError, match="iou_threshold"):
        match_objects(_two_cells(), _two_cells(), iou_threshold=0)
    with pytest.raises(ValueError, match="integer"):
        match_objects(_two_cells() + 0.5, _two_cells())


def _faint_and_bright():
    """Background 10 +- 1 (noise), a faint cell (+0.5) with id 4, a bright one (+5) with id 9."""
    rng = np.random.default_rng(0)
    image = rng.normal(10.0, 1.0, (64, 64))
    truth = np.zeros((64, 64), np.uint16)
    truth[5:15, 5:15] = 4
    image[5:15, 5:15] += 0.5
    truth[30:40, 30:40] = 9
    image[30:40, 30:40] += 5.0
    return image, truth


def test_cell_contrast_in_robust_sds_of_the_background():
    image, truth = _faint_and_bright()
    contrast = cell_contrast(image, truth)
    assert contrast.shape == (2,)  # in id order: 4, then 9
    assert 0.1 < contrast[0] < 1.0 and 4.0 < contrast[1] < 6.0
    # a noise-free background falls back to the standard deviation, then to 1
    flat = np.where(truth > 0, 3.0, 1.0)
    assert cell_contrast(flat, truth).tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="no background"):
        cell_contrast(image, np.ones((64, 64), int))
    with pytest.raises(ValueError, match="NaN"):
        cell_contrast(np.where(truth > 0, np.nan, image), truth)
    with pytest.raises(ValueError, match="same pixels"):
        cell_contrast(image[:-1], truth)


def test_recall_by_contrast_counts_found_cells_per_bin():
    image, truth = _faint_and_bright()
    pred = np.zeros_like(truth)
    pred[30:40, 31:40] = 5  # the bright cell, IoU 0.9
    pred[5:8, 5:8] = 6  # a piece of the faint one: IoU 0.09, not found
    pred[50:55, 50:55] = 7  # a false alarm
    bins = recall_by_contrast(pred, truth, image)
    assert [(b["low"], b["high"]) for b in bins] == [(None, 1.0), (1.0, 2.0), (2.0, 4.0),
                                                    (4.0, None)]
    assert [(b["cells"], b["found"]) for b in bins] == [(1, 0), (0, 0), (0, 0), (1, 1)]
    assert recall_by_contrast(truth, truth, image, edges=(3.0,)) == [
        {"low": None, "high": 3.0, "cells": 1, "found": 1},
        {"low": 3.0, "high": None, "cells": 1, "found": 1}]
    # the contrast, when already known, gives the same bins
    assert recall_by_contrast(pred, truth, contrast=cell_contrast(image, truth)) == bins
    with pytest.raises(ValueError, match="increasing"):
        recall_by_contrast(pred, truth, image, edges=(2.0, 1.0))
    with pytest.raises(ValueError, match="give the image"):
        recall_by_contrast(pred, truth)
    with pytest.raises(ValueError, match="one value per true cell \\(2\\), got 1"):
        recall_by_contrast(pred, truth, contrast=np.array([3.0]))


# ---------------------------------------------------------------------------
# thresholds and where attention goes
# ---------------------------------------------------------------------------


def test_threshold_map():
    rng = np.random.default_rng(0)
    blob = np.zeros((20, 20), bool)
    blob[5:12, 6:15] = True
    att = np.where(blob, 0.9, 0.1) + rng.uniform(-0.05, 0.05, blob.shape)
    assert np.array_equal(threshold_map(att), blob)
    a = np.array([[0.0, 0.1, 0.9, 1.0]])
    assert threshold_map(a, 0.05).tolist() == [[False, True, True, True]]
    assert not threshold_map(np.ones((3, 3))).any()
    with pytest.raises(ValueError, match="otsu"):
        threshold_map(a, "mean")


def test_pointing_game():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    att = np.zeros((3, 3))
    att[1, 1] = 2.0
    assert pointing_game(att, mask) is True
    att[0, 0] = 5.0
    assert pointing_game(att, mask) is False
    assert pointing_game(np.zeros((3, 3)), mask) is False  # a blank map points nowhere


def test_attention_mass_inside():
    att = np.array([[1.0, 3.0], [-2.0, 0.0]])  # the negative pixel counts as 0
    mask = np.array([[False, True], [True, False]])
    assert attention_mass_inside(att, mask) == pytest.approx(0.75)
    assert attention_mass_inside(np.zeros((2, 2)), mask) == 0.0


# ---------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------


def test_otsu_baseline_finds_discs():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:100, :120]
    img = rng.normal(20, 2, yy.shape)
    centres = [(25, 30), (70, 40), (50, 95)]
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] += 60
    img[5, 5] += 200  # a one-pixel speck: smoothed away or too small
    labels = otsu_baseline(img)
    assert labels.dtype == np.int32 and labels.max() == 3
    truth = np.zeros(yy.shape, int)
    for k, (cy, cx) in enumerate(centres, 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = k
    r = match_objects(labels, truth)
    assert r["f1"] == 1.0 and r["mean_matched_iou"] > 0.85
    assert not otsu_baseline(np.full((20, 20), 3.0)).any()


def test_otsu_baseline_fills_holes():
    yy, xx = np.mgrid[:60, :60]
    r2 = (yy - 30) ** 2 + (xx - 30) ** 2
    img = ((r2 <= 20**2) & (r2 >= 12**2)).astype(float) * 100  # a bright ring
    labels = otsu_baseline(img, sigma=1.0)
    assert labels[30, 30] == 1 and labels.max() == 1


def test_ellipse_baseline_geometry():
    disc = ellipse_baseline((100, 100), fraction=0.5)  # radius 25 about the centre
    assert disc[50, 50] and disc[50, 74] and not disc[50, 76]
    assert disc.sum() == pytest.approx(np.pi * 25**2, rel=0.03)
    assert np.array_equal(disc, disc[::-1]) and np.array_equal(disc, disc[:, ::-1])
    wide = ellipse_baseline((40, 80), fraction=1.0)  # touches all four sides
    assert wide[0, 40] and wide[20, 0] and not wide[0, 0]
    with pytest.raises(ValueError, match="fraction"):
        ellipse_baseline((10, 10), fraction=0)


# ---------------------------------------------------------------------------
# sample quality
# ---------------------------------------------------------------------------


def _blobs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 32, 32))
    x = ndi.gaussian_filter(x, (0, 1.0, 1.0))
    return np.clip(x / x.std(), -1, 1).astype(np.float32)


def test_swd_identical_sets_is_zero_and_blur_is_larger():
    a = _blobs(64, 0)
    kwargs = dict(levels=3, n_patches=4096, n_projections=64)
    same = sliced_wasserstein(a, a, **kwargs)
    assert len(same) == 4 and max(same) < 1e-6
    other = sliced_wasserstein(a, _blobs(64, 1), **kwargs)  # same distribution
    blurred = ndi.gaussian_filter(a, (0, 1.5, 1.5))
    far = sliced_wasserstein(a, blurred, **kwargs)
    assert far[0] > 3 * other[0]  # the finest level sees the lost detail
    assert far[-1] == pytest.approx(np.mean(far[:-1]))


def test_swd_refuses_too_many_levels():
    with pytest.raises(ValueError, match="fewer levels"):
        sliced_wasserstein(_blobs(2, 0), _blobs(2, 1), levels=4)


def test_kid_zero_for_same_features_and_larger_for_shifted():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (200, 16))
    b = rng.normal(0, 1, (200, 16))
    mean, std = kid(a, b, subsets=20, subset_size=100)
    assert abs(mean) < 0.05 and std >= 0
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=100)
    assert shifted > 10 * max(abs(mean), 0.01)
    with pytest.raises(ValueError, match="feature sizes"):
        kid(a, b[:, :8])


def test_classifier_features():
    from napari_atagan.gan.attention import PatternClassifier

    torch.manual_seed(0)
    model = PatternClassifier(3).train()
    imgs = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16)).astype(np.float32)
    f = classifier_features(model, imgs, batch_size=2)
    assert f.shape == (5, 512) and f.dtype == np.float32
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        ref = model.features(torch.from_numpy(imgs)[:, None]).mean(dim=(2, 3)).numpy()
    assert np.allclose(f, ref, atol=1e-5)


def test_lattice_ratio_known_answers():
    """A set against itself scores 1; lines of one frequency on top score their power
    over the cells' there; coarser lines than the period are not looked at; smoother
    cells score below 1."""
    rng = np.random.default_rng(0)
    cells = ndi.gaussian_filter(rng.standard_normal((200, 32, 32)), (0, 1.5, 1.5))
    x = np.arange(32)
    lines = np.broadcast_to(np.cos(2 * np.pi * 12 / 32 * x), (32, 32))  # period 2.7 px
    coarse = np.broadcast_to(np.cos(2 * np.pi * 2 / 32 * x), (32, 32))  # period 16 px
    assert lattice_ratio(cells, cells) == pytest.approx(1.0)
    assert lattice_ratio(cells, cells + 0.2 * lines) > 10
    assert lattice_ratio(cells, cells + 0.2 * coarse) == pytest.approx(1.0, abs=0.05)
    assert lattice_ratio(cells, ndi.gaussian_filter(cells, (0, 1, 1))) < 1
    # the power of the lines at their frequency, exactly: spectrum of the sum = sum
    # of the spectra plus a cross term that the mean over the set nearly cancels
    spectrum = power_spectrum(np.broadcast_to(lines, (1, 32, 32)))
    assert spectrum.argmax() in (12, 32 - 12)  # row 0, the line's own column
    assert power_spectrum(cells[:, None]) == pytest.approx(power_spectrum(cells))
    with pytest.raises(ValueError, match="N, H, W"):
        power_spectrum(cells[0])
    with pytest.raises(ValueError, match="NaN"):
        lattice_ratio(cells, cells * np.nan)
    with pytest.raises(ValueError, match="same image size"):
        lattice_ratio(cells, cells[:, :16, :16])
    with pytest.raises(ValueError, match="period"):
        lattice_ratio(cells, cells, period=2)
    with pytest.raises(ValueError, match="no power"):
        lattice_ratio(np.ones((2, 8, 8)), cells[:, :8, :8])  # flat images: nothing to compare


def test_lattice_ratio_of_simulated_cells_against_each_other():
    """The reference the docs give: two independent sets of the product's simulated cells,
    normalised as training crops, score 1.2-1.5 against each other (600 each), far
    below a lattice; fewer cells spread more."""
    from napari_atagan.data import from_arrays
    from napari_atagan.simulate import simulate_crops

    crops = simulate_crops(1200, size=64, seed=1)
    cells = from_arrays(crops.images, crops.masks, image_size=64).images
    score = lattice_ratio(cells[:600], cells[600:])
    assert 1.2 < score < 1.5


def test_sample_diversity_known_answers():
    rng = np.random.default_rng(0)
    cell = rng.random((16, 16))
    copies = np.stack([cell * a + b for a, b in [(1, 0), (2, 0.5), (0.3, -1)]])
    assert sample_diversity(copies) == pytest.approx(0.0, abs=1e-12)
    noise = rng.standard_normal((4000, 8, 8))
    assert sample_diversity(noise) == pytest.approx(1.0, abs=0.02)
    # two different images, each the negative of the other after standardising: spread 1
    a = np.array([[1.0, -1.0]])
    assert sample_diversity(np.stack([a, -a])) == pytest.approx(1.0)
    # a constant image counts as all zeros, not NaN
    assert np.isfinite(sample_diversity(np.stack([np.ones((4, 4)), cell[:4, :4]])))
    with pytest.raises(ValueError, match="N >= 2"):
        sample_diversity(cell[None])
    with pytest.raises(ValueError, match="NaN"):
        sample_diversity(np.stack([cell, cell * np.nan]))
