"""Cells from the image: the classic pipeline, map-guided outlines, robust slide levels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_atagan.data import cell_levels, slide_levels
from napari_atagan.evaluation.evaluate import drop_border_cells
from napari_atagan.metrics import match_objects
from napari_atagan.slides.segment import (
    blob_map,
    classic_labels,
    fill_concave,
    guided_labels,
    label_cells,
    seed_map,
)


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _scene(cells, shape=(160, 200), glow=0.0, noise=2.0, seed=0):
    """Nuclei of the given (cy, cx, r, brightness) on a dim background, with their truth."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, 20.0)
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx, r, b) in enumerate(cells, start=1):
        if glow:
            image[_disc(shape, cy, cx, 1.8 * r) & (truth == 0)] += glow * b
        d = _disc(shape, cy, cx, r) & (truth == 0)
        image[d] = 20.0 + b
        truth[d] = i
    image = ndi.gaussian_filter(image, 1.0) + rng.normal(0, noise, shape)
    return image.astype(np.float32), truth


def _coarse_map(truth, cell=8):
    """A map like the discriminator's: one blurred blob per cell, coarse and shrunk."""
    m = ndi.gaussian_filter(ndi.binary_erosion(truth > 0, iterations=3).astype(np.float32), 4.0)
    small = m[cell // 2::cell, cell // 2::cell]
    big = np.kron(small, np.ones((cell, cell), np.float32))
    pad = [(0, max(0, n - b)) for n, b in zip(truth.shape, big.shape)]
    return np.pad(big, pad, mode="edge")[:truth.shape[0], :truth.shape[1]]


def _ious(pred, truth):
    m = match_objects(pred, truth, 0.5)
    return m["tp"], m["fp"], m["fn"], m["mean_matched_iou"]


def test_classic_splits_two_touching_cells_and_drops_specks():
    image, truth = _scene([(60, 60, 15, 100), (60, 89, 15, 100), (120, 150, 2, 100)])
    truth[truth == 3] = 0
    labels = classic_labels(image, 30)
    assert labels.dtype == np.uint16
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (2, 0, 0)
    assert iou > 0.8


def test_classic_keeps_a_single_cell_whole():
    image, truth = _scene([(80, 100, 18, 80)])
    labels = classic_labels(image, 36)
    assert int(labels.max()) == 1
    assert _ious(labels, truth)[3] > 0.85


def test_classic_constant_image_has_no_cells():
    assert classic_labels(np.full((50, 60), 7.0), 10).max() == 0


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10, 3)), "2-D"),
    (np.full((10, 10), np.nan), "NaN"),
    (np.zeros((1, 10)), "too small"),
])
def test_classic_refuses_bad_images(bad, message):
    with pytest.raises(ValueError, match=message):
        classic_labels(bad, 5)


def test_classic_refuses_a_bad_diameter():
    with pytest.raises(ValueError, match="cell_diameter"):
        classic_labels(np.zeros((10, 10)), 0)


def test_guided_outlines_follow_the_image_not_the_coarse_map():
    image, truth = _scene([(50, 50, 16, 90), (50, 81, 15, 90), (115, 140, 17, 60)])
    att = _coarse_map(truth)
    labels = guided_labels(image, att, 32)
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (3, 0, 0)
    assert iou > 0.85
    # the map alone outlines them coarsely
    from napari_atagan.slides.labels import attention_to_labels

    map_iou = _ious(attention_to_labels(att, threshold="local", cell_diameter=32), truth)[3]
    assert iou > map_iou


def test_guided_cuts_each_cell_at_its_own_level_and_leaves_the_glow_out():
    cells = [(45, 50, 15, 2000), (45, 140, 15, 40), (115, 60, 15, 300), (115, 140, 15, 90)]
    image, truth = _scene(cells, glow=0.2)
    labels = guided_labels(image, _coarse_map(truth), 30)
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (4, 0, 0)
    assert iou > 0.8  # a glow as wide as the cell would halve it


def test_guided_skips_bright_blobs_the_map_does_not_call_cells():
    image, truth = _scene([(60, 60, 15, 100), (60, 150, 15, 100)])
    keep = truth == 1
    att = _coarse_map(np.where(keep, 1, 0))
    labels = guided_labels(image, att, 30)
    assert int(labels.max()) == 1
    assert _ious(labels, np.where(keep, 1, 0))[0] == 1


def test_guided_drops_a_seed_where_the_image_shows_nothing():
    """A map that sees a cell where the slide holds only background noise (a weak, wrong
    map) makes no cell: without this, each such seed became a blob of noise."""
    image = np.random.default_rng(1).normal(20, 1, (100, 100)).astype(np.float32)
    truth = _disc((100, 100), 50, 50, 14).astype(np.int32)
    assert guided_labels(image, _coarse_map(truth), 28).max() == 0


@pytest.mark.parametrize("brightness, found", [(0.5, 0), (3.0, 1)])
def test_guided_keeps_a_faint_cell_that_stands_out_of_the_noise(brightness, found):
    """Noise of sd 2, smoothed (sigma 1.5) to about 0.38: a cell 3 grey levels above the
    background stands out by some 8 sds and is kept; one 0.5 above, by under 3, is not."""
    image, truth = _scene([(60, 60, 15, brightness), (60, 150, 15, 100)], noise=2.0, seed=3)
    labels = guided_labels(image, _coarse_map(truth), 30)
    assert _ious(labels, truth)[0] == 1 + found


def test_guided_with_an_empty_map_finds_nothing():
    image, _ = _scene([(60, 60, 15, 100)])
    assert guided_labels(image, np.zeros_like(image), 30).max() == 0


def test_guided_refuses_a_map_of_another_shape():
    with pytest.raises(ValueError, match="same pixels"):
        guided_labels(np.zeros((20, 20)), np.zeros((20, 21)), 5)


def test_cell_levels_ignore_a_few_saturated_cells():
    rng = np.random.default_rng(0)
    shape = (400, 400)
    image = np.full(shape, 10.0)
    centres = [(40 + 80 * (i // 5), 40 + 80 * (i % 5)) for i in range(25)]
    for k, (cy, cx) in enumerate(centres):
        image[_disc(shape, cy, cx, 25)] = 255.0 if k < 3 else 100.0
    image = np.clip(image + rng.normal(0, 2, shape), 0, 255).astype(np.uint8)
    lo, hi = cell_levels(image)
    assert hi == pytest.approx(104, abs=4)  # the ordinary cells' bright level
    assert slide_levels(image)[1] > 250  # a slide-wide percentile sits on the saturated ones
    assert lo < 15


def test_cell_levels_fall_back_on_a_constant_slide():
    image = np.full((64, 64), 5, np.uint16)
    assert cell_levels(image) == slide_levels(image)


def test_drop_border_cells():
    lab = np.zeros((10, 10), np.int32)
    lab[0:2, 3:5] = 1
    lab[4:6, 4:6] = 2
    out = drop_border_cells(lab)
    assert set(np.unique(out)) == {0, 2}


def test_label_cells_numbers_a_stack_and_matches_each_plane():
    a, ta = _scene([(60, 60, 15, 100), (60, 89, 15, 100)])
    b, tb = _scene([(80, 120, 16, 70)], seed=1)
    maps = np.stack([_coarse_map(ta), _coarse_map(tb)])
    stack = label_cells(maps, np.stack([a, b]), threshold="local", cell_diameter=30)
    assert stack.shape == (2, *a.shape) and stack.dtype == np.uint16
    first = guided_labels(a, seed_map(maps[0], a, 30), 30)  # each plane's map and blob map
    np.testing.assert_array_equal(stack[0], first)
    second = guided_labels(b, seed_map(maps[1], b, 30), 30)
    np.testing.assert_array_equal(stack[1] > 0, second > 0)
    assert set(np.unique(stack[1])) - {0} == set(range(int(first.max()) + 1,
                                                        int(first.max()) + 1 + int(second.max())))


def test_label_cells_by_the_map_is_the_maps_labelling():
    from napari_atagan.slides.labels import attention_to_labels

    image, truth = _scene([(60, 60, 15, 100)])
    att = _coarse_map(truth)
    np.testing.assert_array_equal(
        label_cells(att, image, outline="map", threshold="local", cell_diameter=30),
        attention_to_labels(att, threshold="local", cell_diameter=30))


def test_label_cells_finds_the_cells_in_the_map_it_is_told():
    """find="blob": the blob map alone seeds the cells (the attention is not read), the
    same cells as the blob map handed in as the map; "attention": the map handed in alone;
    "both" (the default): their mean, seed_map."""
    image, truth = _scene([(60, 60, 15, 100), (60, 140, 15, 60), (120, 100, 15, 150)])
    att = _coarse_map(truth)
    blob = label_cells(np.zeros_like(att), image, cell_diameter=30, find="blob")
    np.testing.assert_array_equal(
        blob, label_cells(blob_map(image, 30), image, cell_diameter=30, find="attention"))
    np.testing.assert_array_equal(blob, label_cells(att, image, cell_diameter=30, find="blob"))
    tp, fp, fn, _ = _ious(blob, truth)
    assert (tp, fp, fn) == (3, 0, 0)
    np.testing.assert_array_equal(
        label_cells(att, image, cell_diameter=30),
        label_cells(seed_map(att, image, 30), image, cell_diameter=30, find="attention"))
    # a map of another shape is refused here as by seed_map
    with pytest.raises(ValueError, match="same pixels"):
        label_cells(att[:, :-1], image, cell_diameter=30, find="blob")


@pytest.mark.parametrize("kwargs, message", [
    ({"outline": "edges", "cell_diameter": 30}, "outline must be one of"),
    ({"outline": "image"}, "needs the cell diameter"),
    ({"find": "edges", "cell_diameter": 30}, "find must be one of"),
    ({"outline": "map", "find": "blob", "cell_diameter": 30}, "needs outline='image'"),
])
def test_label_cells_refuses_bad_options(kwargs, message):
    image, truth = _scene([(60, 60, 15, 100)])
    with pytest.raises(ValueError, match=message):
        label_cells(_coarse_map(truth), image, **kwargs)


def test_guided_keeps_the_cell_area_floor_of_the_maps_labelling():
    from napari_atagan.slides.labels import min_cell_size

    image, truth = _scene([(60, 60, 15, 100), (120, 150, 6, 100)])  # a speck of 110 px
    labels = guided_labels(image, _coarse_map(truth), 30, min_size=10)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.size and sizes.min() >= min_cell_size(30)


def test_label_percentiles_equal_numpys_per_object():
    from napari_atagan._grouped import label_percentiles

    rng = np.random.default_rng(1)
    values = rng.random((120, 130))
    objects = ndi.label(values > 0.6)[0]
    ids = np.arange(1, objects.max() + 2)  # the last id has no pixels
    got = label_percentiles(values, objects, ids, 99.0)
    want = [np.percentile(values[objects == i], 99.0) for i in ids[:-1]]
    np.testing.assert_allclose(got[:-1], want, rtol=0, atol=1e-12)
    assert np.isnan(got[-1])


def test_cell_levels_do_not_depend_on_the_sampling_step(monkeypatch):
    import napari_atagan.data as data

    rng = np.random.default_rng(2)
    shape = (600, 600)
    image = np.full(shape, 10.0)
    for k in range(36):
        cy, cx = 50 + 100 * (k // 6), 50 + 100 * (k % 6)
        image[_disc(shape, cy, cx, 22)] = 60.0 + 40.0 * rng.random()
    for _ in range(100):  # specks of glow: objects of their own at fine sampling only
        cy, cx = rng.integers(5, 595, 2)
        image[_disc(shape, cy, cx, 3) & (image == 10.0)] = 40.0
    image = np.clip(image + rng.normal(0, 2, shape), 0, 255).astype(np.uint8)
    levels = []
    for pixels in (400_000, 100_000, 25_000):
        monkeypatch.setattr(data, "CELL_SAMPLE_PIXELS", pixels)
        levels.append(cell_levels(image)[1])
    assert max(levels) / min(levels) < 1.1, levels
    assert min(levels) > 75  # the cells' level (60-100), not the specks' (40)


def _pressed_pair_scene():
    """Four single nuclei and two pressed together over a long edge: their union has no
    neck, so the distance watershed sees one cell."""
    shape = (200, 260)
    truth = np.zeros(shape, np.int32)
    singles = [(40, 40, 16), (40, 130, 15), (40, 215, 17), (150, 40, 16)]
    for i, (cy, cx, r) in enumerate(singles, start=1):
        truth[_disc(shape, cy, cx, r)] = i
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    pair = ((yy - 150) / 16.0) ** 2 + ((xx - 160) / 32.0) ** 2 <= 1  # a 2:1 ellipse
    truth[pair & (xx < 160)] = 5
    truth[pair & (xx >= 160)] = 6
    image = ndi.gaussian_filter(np.where(truth > 0, 120.0, 20.0), 1.0)
    image += np.random.default_rng(0).normal(0, 2.0, shape)
    return image.astype(np.float32), truth


def test_split_large_divides_an_object_the_size_of_two_cells_and_leaves_the_rest():
    from napari_atagan.slides.segment import split_large

    _, truth = _pressed_pair_scene()
    joined = np.where(truth == 6, 5, truth)
    out = split_large(joined)
    assert out.shape == joined.shape and out.dtype.kind in "iu"
    for i in range(1, 5):  # the single cells keep their ids and pixels
        assert np.array_equal(out == i, joined == i)
    assert set(np.unique(out[joined == 5])) == {5, 6}  # one part keeps the id
    tp, fp, fn, iou = _ious(out, truth)
    assert (tp, fp, fn) == (6, 0, 0)
    assert iou > 0.9
    assert np.array_equal(split_large(joined), out)  # seeded: the same every time
    mine = joined.copy()
    assert split_large(mine, in_place=True) is mine and np.array_equal(mine, out)
    small = joined.astype(np.uint8)  # holds the new id too
    assert split_large(small, in_place=True) is small
    tight = np.where(joined > 0, joined + 250, 0).astype(np.uint8)  # ids up to 255: no room
    wider = split_large(tight, in_place=True)
    assert wider is not tight and wider.dtype == np.uint16 and int(wider.max()) == 256


def test_split_large_leaves_cells_of_ordinary_size_alone():
    from napari_atagan.slides.segment import split_large

    shape = (120, 400)
    labels = np.zeros(shape, np.int32)
    for i, r in enumerate([12, 14, 15, 16, 18], start=1):  # areas 0.64-1.44 x the median
        labels[_disc(shape, 60, 70 * i - 20, r)] = i
    assert np.array_equal(split_large(labels), labels)
    assert split_large(np.zeros((8, 8), np.int32)).max() == 0
    with pytest.raises(ValueError, match="2-D"):
        split_large(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(ValueError, match="ratio"):
        split_large(labels, ratio=1.0)
    with pytest.raises(ValueError, match="positive cell ids, found -1"):
        split_large(np.where(labels > 0, labels, -1))
    with pytest.raises(ValueError, match="integer cell ids"):
        split_large(labels.astype(np.float32))


def test_guided_divides_cells_pressed_together_without_a_neck():
    image, truth = _pressed_pair_scene()
    labels = guided_labels(image, _coarse_map(truth), 32)
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (6, 0, 0)
    assert iou > 0.8
    # the classic pipeline's distance watershed keeps the pair as one object
    classic = classic_labels(image, 32)
    assert np.unique(classic[(truth >= 5) & (classic > 0)]).size == 1


def test_divide_large_gives_the_classic_pipeline_the_same_rule():
    """The model-free reference for the size rule: the classic pipeline's pair divided, the
    parts numbered 1..N as the labellings return cells."""
    from napari_atagan.slides.labels import min_cell_size
    from napari_atagan.slides.segment import divide_large

    image, truth = _pressed_pair_scene()
    classic = classic_labels(image, 32)
    divided = divide_large(classic, min_cell_size(32))
    assert divided.dtype == np.uint16
    assert np.array_equal(np.unique(divided), np.arange(int(divided.max()) + 1))
    assert _ious(divided, truth)[:3] == (6, 0, 0)
    assert np.array_equal(divided > 0, classic > 0)  # the same pixels, only divided


def test_the_map_proposes_dim_cells_below_its_own_floor_and_the_image_confirms_them():
    """A map whose background is a smooth, cloudy field (as the discriminator's is on a
    dim, noisy slide): the cells' peaks lie under the 3 robust spreads a map standing
    alone needs, but above the 1.5 of a map that only proposes."""
    from napari_atagan.slides.labels import attention_to_labels
    from napari_atagan.slides.segment import PROPOSAL_MADS

    centres = [(40 + 80 * i, 40 + 80 * j) for i in range(3) for j in range(4)]
    image, truth = _scene([(cy, cx, 14, 60) for cy, cx in centres], shape=(240, 320))
    rng = np.random.default_rng(3)
    cloud = ndi.gaussian_filter(rng.normal(size=(240, 320)), 12)
    cloud *= 0.15 / cloud.std()
    bumps = ndi.gaussian_filter((truth > 0).astype(np.float32), 6)
    decoy = np.exp(-((np.arange(240)[:, None] - 80) ** 2 + (np.arange(320)[None, :] - 80) ** 2) / 200.0)
    att = (1.0 + cloud + bumps + decoy).astype(np.float32)  # the decoy lies between cells
    alone = attention_to_labels(att, threshold="local", cell_diameter=28)
    assert PROPOSAL_MADS < 3
    assert _ious(alone, truth)[2] >= 3  # a map on its own misses the cells on the cloud's low parts
    labels = label_cells(att, image, outline="image", threshold="local", cell_diameter=28,
                         find="attention")
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (12, 0, 0) and iou > 0.8  # every cell, and the decoy the image does not show is none
    np.testing.assert_array_equal(labels, guided_labels(image, att, 28))
    # with the blob map beside the attention (the default) the same cells are found
    both = label_cells(att, image, outline="image", threshold="local", cell_diameter=28)
    assert _ious(both, truth)[:3] == (12, 0, 0)
    np.testing.assert_array_equal(both, guided_labels(image, seed_map(att, image, 28), 28))



# ---------------------------------------------------------------------------
# where a cell's edge is cut: from the diameter, or fixed


def _soft_cells(radius=12.0, edge=4.0, rows=3, cols=4, noise=1.0, seed=0):
    """Discs of one radius whose edges are blurred by a Gaussian of ``edge`` pixels: the
    contour at a fraction f of the way up lies at radius - edge * Phi^-1(f), so a cut at
    0.5 outlines the disc itself (diameter 24) and lower cuts wider (0.25: about 29.4)."""
    rng = np.random.default_rng(seed)
    shape = (60 * rows, 60 * cols)
    truth = np.zeros(shape, np.int32)
    for i in range(rows):
        for j in range(cols):
            truth[_disc(shape, 30 + 60 * i, 30 + 60 * j, radius)] = i * cols + j + 1
    image = 20.0 + 90.0 * ndi.gaussian_filter((truth > 0).astype(np.float64), edge)
    image += rng.normal(0, noise, shape)
    return image.astype(np.float32), truth


def _median_diameter(labels):
    areas = np.bincount(labels.ravel())[1:]
    return float(np.median(np.sqrt(4 * areas[areas > 0] / np.pi)))


def test_the_cut_follows_the_diameter_the_cells_are_measured_at():
    image, truth = _soft_cells()
    att = _coarse_map(truth)
    told_tight, told_wide = {}, {}
    labels = guided_labels(image, att, 24, info=told_tight)  # the discs as drawn
    assert told_tight["cut"] == 0.5  # the edge of a blurred cell
    assert abs(_median_diameter(labels) - 24) < 1.0
    assert told_tight["median_diameter"] == pytest.approx(_median_diameter(labels))
    wide = guided_labels(image, att, 29.5, info=told_wide)  # the same cells measured generously
    assert told_wide["cut"] == 0.25
    assert abs(_median_diameter(wide) - 29.5) < 1.0
    for found in (labels, wide):  # the same twelve cells either way
        tp, fp, fn, _ = _ious(found, truth)
        assert (tp, fp, fn) == (12, 0, 0)


def test_a_fixed_cut_is_kept_and_reported():
    image, truth = _soft_cells()
    att = _coarse_map(truth)
    told = {}
    fixed = guided_labels(image, att, 24, cut=0.35, info=told)
    assert told["cut"] == 0.35
    assert 26 < _median_diameter(fixed) < 28.5  # 24 + 2 * 4 * 0.385, a little wider than 0.5
    same = label_cells(att, image, threshold="local", cell_diameter=24, cut="0.35", find="attention")
    np.testing.assert_array_equal(same, fixed)
    told = {}
    label_cells(att, image, threshold="local", cell_diameter=24, cut=0.35, info=told)
    assert told["cut"] == 0.35
    np.testing.assert_array_equal(guided_labels(image, att, 24, cut=np.float32(0.35)), fixed)


def test_too_few_cells_to_measure_keep_the_fixed_cut():
    image, truth = _soft_cells(rows=1, cols=3)
    told = {}
    guided_labels(image, _coarse_map(truth), 24, info=told)
    assert told["cut"] == 0.35


@pytest.mark.parametrize("bad", ["half", 0, 1, 1.5, -0.2, True, None])
def test_a_bad_cut_is_a_clear_error(bad):
    image, truth = _soft_cells(rows=1, cols=2)
    with pytest.raises(ValueError, match="cut must be 'auto' or a fraction"):
        guided_labels(image, _coarse_map(truth), 24, cut=bad)
    with pytest.raises(ValueError, match="cut must be 'auto' or a fraction"):
        label_cells(_coarse_map(truth), image, cell_diameter=24, cut=bad)


def test_a_stack_reports_the_cut_of_every_plane():
    a, truth = _soft_cells()
    b = np.ascontiguousarray(a[:, ::-1])
    maps = np.stack([_coarse_map(truth), _coarse_map(truth[:, ::-1])])
    told = {}
    label_cells(maps, np.stack([a, b]), threshold="local", cell_diameter=29.5, info=told)
    assert told["cut"] == [0.25, 0.25]
    assert len(told["median_diameter"]) == 2


def test_blob_map_answers_at_the_cells_and_nowhere_else():
    """The model-free map: highest at the centre of each disc of the given diameter, 0 far
    from them, float32 of the slide's shape; the labelling turns it into those cells."""
    yy, xx = np.mgrid[:160, :200]
    centres = [(40, 50), (110, 140), (50, 150)]
    img = np.full((160, 200), 10.0)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12 ** 2] = 100.0
    m = blob_map(img.astype(np.uint16), 24)
    assert m.dtype == np.float32 and m.shape == img.shape and m.min() == 0.0
    for cy, cx in centres:
        window = m[cy - 6:cy + 7, cx - 6:cx + 7]
        assert window.max() == m[cy - 20:cy + 21, cx - 20:cx + 21].max()  # the peak is central
    assert m[5:15, 5:15].max() < 0.01 * m.max() and m[140:, :20].max() < 0.01 * m.max()
    cells = label_cells(m, img, outline="image", cell_diameter=24)
    truth = np.zeros(img.shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12 ** 2] = k
    assert match_objects(cells, truth, 0.5)["f1"] == 1.0
    with pytest.raises(ValueError, match="2-D"):
        blob_map(np.zeros((2, 8, 8)), 24)


def test_seed_map_is_the_mean_of_the_attention_and_the_blob_map():
    """Each map over its own 99.5th percentile, then their mean; an attention that is 0
    everywhere leaves the blob map alone, and maps of other shapes are refused."""
    image, truth = _soft_cells()
    att = _coarse_map(truth)
    blob = blob_map(image, 24)
    both = seed_map(att, image, 24)
    expected = 0.5 * att / np.percentile(att[::4, ::4], 99.5) \
        + 0.5 * blob / np.percentile(blob[::4, ::4], 99.5)
    np.testing.assert_allclose(both, expected, rtol=1e-5, atol=1e-7)
    alone = seed_map(np.zeros_like(att), image, 24)
    np.testing.assert_allclose(alone, 0.5 * blob / np.percentile(blob[::4, ::4], 99.5),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="same pixels"):
        seed_map(att[:-1], image, 24)


@pytest.mark.parametrize("turn", ["row", "diagonal"])
def test_guided_splits_a_pressed_pair_in_every_direction_alike(turn):
    """Two cells of diameter 30 pressed together (centres 19 px apart): split whichever way
    the pair lies. skimage's spacing (the classic pipeline's) reaches 1.41 times as far
    along a diagonal, so it keeps the diagonal pair as one cell and splits the row."""
    offset = (0, 19) if turn == "row" else (13, 13)
    cells = [(60, 70, 15, 60), (60 + offset[0], 70 + offset[1], 15, 60)]
    image, truth = _scene(cells, shape=(140, 160), noise=1.0)
    labels = guided_labels(image, _coarse_map(truth), 30, cut=0.35)
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (2, 0, 0)
    assert iou > 0.7
    classic = np.unique(classic_labels(image, 30)[truth > 0])
    assert classic[classic > 0].size == (2 if turn == "row" else 1)


def test_guided_keeps_a_long_single_cell_whole():
    """A cell 1.4 times as long as wide (the most an interphase nucleus is) stays one."""
    yy, xx = np.ogrid[:120, :140]
    cell = ((yy - 60) / 14.0) ** 2 + ((xx - 70) / 20.0) ** 2 <= 1
    image = ndi.gaussian_filter(np.where(cell, 80.0, 20.0), 1.0).astype(np.float32)
    truth = cell.astype(np.int32)
    labels = guided_labels(image, _coarse_map(truth), 34, cut=0.35)
    assert labels.max() == 1
    assert _ious(labels, truth)[3] > 0.8


def test_round_spacing_keeps_the_highest_first_and_none_nearer_than_the_distance():
    from napari_atagan.slides.segment import _spaced_round

    rng = np.random.default_rng(3)
    coords = rng.integers(0, 60, size=(200, 2))
    kept = _spaced_round(coords, 9)
    expected = []  # greedy, in the given (best-first) order, Euclidean
    for c in coords:
        if all(((c - k) ** 2).sum() >= 81 for k in expected):
            expected.append(c)
    np.testing.assert_array_equal(kept, np.array(expected))
    gaps = np.sqrt(((kept[:, None] - kept[None]) ** 2).sum(-1))
    assert gaps[np.triu_indices(len(kept), 1)].min() >= 9
    # a point 9.2 px away but only 7 along either axis is kept; skimage's rule would drop it
    np.testing.assert_array_equal(_spaced_round(np.array([[20, 20], [26, 27]]), 9), [[20, 20], [26, 27]])


@pytest.mark.parametrize("brightness", [8, 20])
def test_blob_map_finds_a_dim_cell_beside_a_bright_one(brightness):
    """On the slide itself a cell 10-25 times dimmer than its touching neighbour answers
    too little to be proposed; on the log of its contrast it stands out like the others."""
    cells = [(60, 60, 15, 200), (60, 140, 15, 200), (150, 100, 15, 200),
             (150, 133, 15, brightness), (240, 100, 15, 200)]
    image, truth = _scene(cells, shape=(300, 220), noise=2.0, seed=1)
    labels = label_cells(blob_map(image, 30), image, cell_diameter=30, find="attention", cut=0.35)
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (5, 0, 0)
    assert iou > 0.85


def test_log_contrast_is_zero_below_the_background_and_grows_with_the_log_above_it():
    from napari_atagan.slides.segment import log_contrast

    rng = np.random.default_rng(0)
    image = (100 + rng.normal(0, 2, (64, 64))).astype(np.float32)
    image[10:20, 10:20] = 100 + 20  # 10 noise units above the background
    image[40:50, 40:50] = 100 + 200  # 100 units
    out = log_contrast(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() == 0 and np.median(out) < 0.1
    np.testing.assert_allclose(out[15, 15], np.log1p(10), rtol=0.1)
    np.testing.assert_allclose(out[45, 45], np.log1p(100), rtol=0.05)
    flat = np.full((32, 32), 7.0, np.float32)
    flat[5:9, 5:9] = 9.0  # a background that does not vary at all
    assert np.isfinite(log_contrast(flat)).all() and log_contrast(flat)[6, 6] > 0


@pytest.mark.parametrize("bad, message", [
    (np.zeros((10, 10, 3)), "2-D"),
    (np.full((10, 10), np.nan), "NaN"),
    (np.zeros((1, 10)), "too small"),
])
def test_blob_map_and_log_contrast_refuse_bad_images(bad, message):
    from napari_atagan.slides.segment import log_contrast

    with pytest.raises(ValueError, match=message):
        blob_map(bad, 5)
    with pytest.raises(ValueError, match=message):
        log_contrast(bad)


def test_fill_concave_fills_a_crescent_to_its_hull_and_leaves_round_cells():
    shape = (100, 160)
    crescent = _disc(shape, 50, 40, 20) & ~_disc(shape, 50, 50, 14)  # an open ring
    round_cell = _disc(shape, 50, 110, 18)
    labels = np.zeros(shape, np.uint16)
    labels[crescent] = 1
    labels[round_cell] = 2
    labels[45:55, 58:62] = 3  # a neighbour inside the crescent's hull keeps its pixels
    filled = fill_concave(labels)
    assert filled is not labels and labels[crescent].all()  # a copy; the input as it was
    assert np.array_equal(filled == 2, round_cell)  # convex: unchanged
    assert np.array_equal(filled == 3, labels == 3)
    whole = _disc(shape, 50, 40, 20)
    iou = ((filled == 1) & whole).sum() / ((filled == 1) | whole).sum()
    assert iou > 0.85 and ((labels == 1) & whole).sum() / whole.sum() < 0.6
    # below the solidity asked for only: the crescent is 0.53 of its hull
    assert np.array_equal(fill_concave(labels, solidity=0.5), labels)
    # and only a hull no larger than max_area (this one has 1,000-1,300 pixels)
    assert np.array_equal(fill_concave(labels, max_area=1000), labels)
    assert np.array_equal(fill_concave(labels, max_area=1300), filled)
    same = labels.copy()
    assert fill_concave(same, in_place=True) is same and np.array_equal(same, filled)


@pytest.mark.parametrize("labels, kwargs, message", [
    (np.zeros((4, 4, 4), np.uint16), {}, "2-D"),
    (np.zeros((8, 8), np.float32), {}, "integer"),
    (np.zeros((8, 8), np.uint16), {"solidity": 0.0}, "solidity"),
])
def test_fill_concave_refuses_bad_input(labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fill_concave(labels, **kwargs)


def test_a_cytoplasmic_cell_is_outlined_whole_not_as_a_crescent(monkeypatch):
    """A stain in the cytoplasm around a dark nucleus that lies off centre: the cut at the
    ring's level leaves an open crescent, which is filled to the whole cell."""
    shape = (140, 180)
    rng = np.random.default_rng(0)
    image = np.full(shape, 20.0)
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate([(70, 50), (70, 125)], start=1):
        cell = _disc(shape, cy, cx, 22)
        image[cell] = 120.0
        image[_disc(shape, cy, cx + 10, 14)] = 35.0  # the nucleus, barely stained
        truth[cell] = i
    image = (ndi.gaussian_filter(image, 1.0) + rng.normal(0, 2.0, shape)).astype(np.float32)
    att = _coarse_map(truth)
    for cut in ("auto", 0.5, 0.25):
        tp, fp, fn, iou = _ious(label_cells(att, image, cell_diameter=44, cut=cut), truth)
        assert (tp, fp, fn) == (2, 0, 0) and iou > 0.8
    import napari_atagan.slides.segment as segment

    monkeypatch.setattr(segment, "fill_concave", lambda labels, **_: labels)
    assert _ious(label_cells(att, image, cell_diameter=44), truth)[3] < 0.7  # crescents


def test_working_step_follows_the_cell_diameter_and_keeps_small_images_whole():
    from napari_atagan.slides.segment import WORK_DIAMETER, working_step

    assert WORK_DIAMETER == 30.0
    assert [working_step(d) for d in (12, 24, 59.9, 60, 75, 90, 300)] == [1, 1, 1, 2, 2, 3, 10]
    assert working_step(300, (1038, 1388)) == 10
    assert working_step(300, (64, 1000)) == 4  # a sixteenth of the shorter side
    assert working_step(300, (10, 10)) == 1
    with pytest.raises(ValueError, match="positive number"):
        working_step(0)


def test_block_mean_and_repeat_keep_the_slide_shape():
    from napari_atagan.slides.segment import _block_mean, _block_repeat

    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    m = _block_mean(a, 2)
    assert m.dtype == np.float32 and m.shape == (2, 3)
    # the last column is repeated to fill its blocks: (4 + 4 + 9 + 9) / 4
    np.testing.assert_allclose(m, [[3.0, 5.0, 6.5], [13.0, 15.0, 16.5]])
    assert _block_mean(a, 1) is a
    labels = np.array([[1, 0, 2], [0, 3, 0]], np.uint16)
    up = _block_repeat(labels, 2, (4, 5))
    assert up.dtype == np.uint16 and up.shape == (4, 5)
    np.testing.assert_array_equal(up[:, 4], [2, 2, 0, 0])
    np.testing.assert_array_equal(up[2:, 2:4], 3)


def test_large_cells_are_proposed_on_blocks_and_outlined_at_every_pixel(monkeypatch):
    """Cells of 64 px: the map's proposals are found on 2 x 2 blocks; the outlines are
    the image's at full resolution, the same cells as when every pixel is labelled."""
    import napari_atagan.slides.segment as segment

    centres = [(50, 50), (50, 150), (50, 250), (150, 50), (150, 250), (250, 150), (250, 250)]
    image, truth = _scene([(cy, cx, 32, 80 + 10 * i) for i, (cy, cx) in enumerate(centres)],
                          shape=(300, 320), noise=2.0)
    amap = _coarse_map(truth)
    calls = []
    real = segment.proposed_cells

    def spy(m, **options):
        calls.append((m.shape, options["cell_diameter"]))
        return real(m, **options)

    monkeypatch.setattr(segment, "proposed_cells", spy)
    info = {}
    labels = label_cells(amap, image, cell_diameter=64, info=info)
    assert calls == [((150, 160), 32.0)]
    assert labels.dtype == np.uint16 and labels.shape == image.shape
    assert info["cut"] > 0 and 55 < info["median_diameter"] < 70
    tp, fp, fn, iou = _ious(labels, truth)
    assert (tp, fp, fn) == (7, 0, 0) and iou > 0.9
    # an outline that steps by one pixel, not by the blocks: some cell edge lies on an
    # odd column
    edges = np.flatnonzero(np.diff((labels[150] > 0).astype(np.int8)))
    assert np.any(edges % 2 == 0)
    monkeypatch.setattr(segment, "WORK_DIAMETER", 1000.0)
    calls.clear()
    every = label_cells(amap, image, cell_diameter=64)
    assert calls == [((300, 320), 64)]
    np.testing.assert_array_equal(labels, every)


def test_zones_are_found_on_blocks_only_where_the_proposals_are_drawn_in_blocks():
    from napari_atagan.slides.segment import _block_repeat, _zones, _zones_on_grid

    small = np.zeros((40, 48), np.uint16)
    small[5:12, 6:14] = 1
    small[20:30, 20:27] = 2
    small[22:29, 28:34] = 3  # touches 2
    big = _block_repeat(small, 2, (79, 95))  # cells of 64 px: blocks of 2
    zones, regions = _zones_on_grid(big, 64.0)
    assert zones.shape == big.shape and zones.dtype == big.dtype
    assert np.all(zones[big > 0] == big[big > 0])  # every proposal lies in its own zone
    reach = 0.25 * 64
    for i in (1, 2, 3):
        dist = ndi.distance_transform_edt(big != i)
        # within the reach, give or take a block, and nowhere beyond it
        assert dist[zones == i].max() <= reach + 2
    covered = np.zeros(big.shape, bool)
    for box, inside in regions:
        assert inside.shape == big[box].shape
        covered[box] |= inside
    assert np.all(covered[zones > 0])
    # proposals not drawn in blocks: the zones of every pixel, as before
    odd = big.copy()
    odd[40, 90] = 1  # one pixel, not a block
    z1, r1 = _zones_on_grid(odd, 64.0)
    z2, r2 = _zones(odd, 64.0)
    np.testing.assert_array_equal(z1, z2)
    assert [b for b, _ in r1] == [b for b, _ in r2]
