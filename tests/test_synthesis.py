import numpy as np
import pytest

from napari_atagan.data import load_folder
from napari_atagan.gan.synthesis import cam_to_mask, crop_attention, generate, write_dataset


def test_generate_shapes_dtypes_and_alignment(tiny_checkpoint):
    syn = generate(tiny_checkpoint, 10, seed=1, device="cpu", batch_size=4)
    assert syn.images.shape == syn.attention.shape == syn.masks.shape == (10, 16, 16)
    assert syn.images.dtype == np.float32 and syn.attention.dtype == np.float32
    assert syn.masks.dtype == np.uint8 and set(np.unique(syn.masks)) <= {0, 1}
    assert syn.rendered.shape == (10, 16, 16) and syn.rendered.dtype in (np.uint8, np.uint16)
    assert syn.images.min() >= -1 and syn.images.max() <= 1
    assert (syn.attention >= 0).all()
    assert syn.labels.shape == (10,) and syn.labels.max() < 3
    # the same seed gives the same cells; batching does not change them
    again = generate(tiny_checkpoint, 10, seed=1, device="cpu", batch_size=10)
    np.testing.assert_allclose(again.images, syn.images, atol=1e-5)


def test_pattern_choice(tiny_checkpoint):
    syn = generate(tiny_checkpoint, 6, pattern="numem", device="cpu")
    assert syn.patterns == ["NuMem"] * 6
    with pytest.raises(ValueError, match="does not know the pattern 'Golgi'.*Centromere"):
        generate(tiny_checkpoint, 2, pattern="Golgi", device="cpu")
    with pytest.raises(ValueError, match="n"):
        generate(tiny_checkpoint, 0, device="cpu")


def test_written_dataset_reads_back(tmp_path, tiny_checkpoint):
    syn = generate(tiny_checkpoint, 9, seed=2, device="cpu")
    out = write_dataset(syn, tmp_path / "synth")
    data = load_folder(out, image_size=16)
    assert data.n == 9 and data.has_masks
    assert set(data.class_names) == set(syn.patterns)
    lines = (out / "cells.csv").read_text().splitlines()
    assert lines[0] == "file,pattern,seed,index" and len(lines) == 10


def test_cam_to_mask_known_answer():
    cam = np.zeros((32, 32), np.float32)
    yy, xx = np.mgrid[:32, :32]
    cam[(yy - 16) ** 2 + (xx - 16) ** 2 < 64] = 1.0  # a disc of radius 8
    cam[14:18, 14:18] = 0.0                           # a hole, filled in the mask
    cam[0:2, 0:2] = 1.0                               # a small blob, dropped
    mask = cam_to_mask(cam)
    disc = (yy - 16) ** 2 + (xx - 16) ** 2 < 64
    np.testing.assert_array_equal(mask.astype(bool), disc)
    assert cam_to_mask(np.zeros((8, 8))).sum() == 0
    with pytest.raises(ValueError, match="NaN"):
        cam_to_mask(np.full((8, 8), np.nan))


def test_crop_attention_returns_maps_of_each_crop_shape(tiny_checkpoint, rng):
    crops = [rng.integers(0, 255, (20, 30)).astype(np.uint8), rng.random((40, 40))]
    maps = crop_attention(tiny_checkpoint, crops, device="cpu")
    assert [m.shape for m in maps] == [(20, 30), (40, 40)]
    assert all(m.dtype == np.float32 and (m >= 0).all() for m in maps)
    with pytest.raises(ValueError, match="2-D"):
        crop_attention(tiny_checkpoint, [np.zeros((4, 20, 20))], device="cpu")


def test_stacked_masks_equal_one_map_at_a_time(rng):
    """The stacked masks equal threshold, largest component and fill holes map by map."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from napari_atagan.gan.synthesis import _otsu_per_map, cams_to_masks

    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 20)
    cams = (rng.random((60, 40, 40)) * 0.5).astype(np.float32)
    cams[:20] += np.exp(-(r / 9.0) ** 2)                # blobs
    cams[20:40] += ((r > 5) & (r < 12)).astype(np.float32)  # rings: a hole to fill
    cams[40:] = ndi.gaussian_filter(cams[40:], (0, 3, 3))   # smooth noise, several objects
    cams[-1] = 0.0                                         # no attention at all

    # Otsu's thresholds: scikit-image's, up to one bin on numerical near-ties
    t = _otsu_per_map(cams[:-1])
    ref = np.array([threshold_otsu(c) for c in cams[:-1]])
    bin_width = (cams[:-1].max((1, 2)) - cams[:-1].min((1, 2))) / 256
    assert np.all(np.abs(t - ref) <= bin_width * 1.001)
    assert np.mean(t == ref.astype(np.float32)) > 0.9

    def one(cam, threshold):
        if cam.max() <= 0:
            return np.zeros(cam.shape, np.uint8)
        fg = cam > threshold
        lab, k = ndi.label(fg)
        if k > 1:
            fg = lab == 1 + int(np.argmax(ndi.sum_labels(fg, lab, np.arange(1, k + 1))))
        return ndi.binary_fill_holes(fg).astype(np.uint8)

    thresholds = np.append(t, 0.0)
    np.testing.assert_array_equal(cams_to_masks(cams),
                                  np.stack([one(c, u) for c, u in zip(cams, thresholds)]))
    assert cams_to_masks(cams)[20:40, 20, 20].all()  # ring holes filled
    half = cams_to_masks(cams[:5], threshold=0.5)
    np.testing.assert_array_equal(half, np.stack([one(c, 0.5 * c.max()) for c in cams[:5]]))
    with pytest.raises(ValueError, match="N, H, W"):
        cams_to_masks(np.zeros((4, 4)))


def _both_masks(cams, threshold="otsu"):
    import torch

    from napari_atagan.gan.synthesis import cams_to_masks, cams_to_masks_torch

    cams = np.ascontiguousarray(cams, np.float32)
    got = cams_to_masks_torch(torch.from_numpy(cams), threshold)
    assert got.dtype == torch.uint8 and got.shape == cams.shape
    return got.numpy(), cams_to_masks(cams, threshold)


def test_torch_masks_equal_scipy_masks_on_smooth_random_maps(rng):
    """Otsu thresholds and masks of the torch version are those of the scipy one."""
    import torch
    from scipy import ndimage as ndi

    from napari_atagan.gan.synthesis import _otsu_per_map, _otsu_per_map_torch

    cams = ndi.gaussian_filter(rng.random((300, 40, 48)), (0, 2.5, 2.5)).astype(np.float32)
    cams[:100] -= 0.45          # many objects and holes of every size
    cams[100:200] = np.clip(cams[100:200] - 0.5, 0, None)  # mostly zero, a few objects
    cams[200:] *= 1e-30         # tiny values
    cams[-1] *= 1e-13           # denormal: np.linspace's bin width underflows to 0
    np.testing.assert_array_equal(_otsu_per_map_torch(torch.from_numpy(cams)).numpy(),
                                  _otsu_per_map(cams))
    for threshold in ("otsu", 0.5, 0.9):
        got, want = _both_masks(cams, threshold)
        np.testing.assert_array_equal(got, want)
    assert 0 < want.mean() < 1


def test_torch_masks_equal_scipy_masks_on_the_default_model():
    from napari_atagan import default_model_path

    syn = generate(default_model_path(), 256, seed=5, device="cpu", batch_size=256)
    got, want = _both_masks(syn.attention)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, syn.masks)
    assert 0.05 < want.mean() < 0.95


def _spiral(n):
    """A square spiral one pixel wide, with one pixel between its turns."""
    on = np.zeros((n, n), bool)
    y, x, dy, dx = 0, 0, 0, 1
    on[0, 0] = True
    while True:
        for _ in range(2):  # go straight on, or turn right once
            ay, ax, by, bx = y + dy, x + dx, y + 2 * dy, x + 2 * dx
            if (0 <= ay < n and 0 <= ax < n and not on[ay, ax]
                    and not (0 <= by < n and 0 <= bx < n and on[by, bx])):
                break
            dy, dx = dx, -dy
        else:
            return on
        y, x = ay, ax
        on[y, x] = True


def test_torch_masks_hand_made_cases():
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 16, xx - 16)
    cams = np.zeros((9, 32, 32), np.float32)
    cams[0][r < 6] = 1.0                                   # two blobs: the larger one stays
    cams[0][2:5, 25:29] = 1.0
    cams[1] = ((r > 5) & (r < 10)).astype(np.float32)      # a ring: its hole is filled
    cams[2] = 0.0                                          # nothing at all
    cams[3] = np.where(r < 7, 1.0 + 0.1 * np.sin(xx), -2.0)  # a negative part
    cams[4] = -1.0                                          # only negative values
    cams[5, 3:7, 20:24] = cams[5, 10:14, 2:6] = cams[5, 20:24, 12:16] = 1.0  # equal sizes
    cams[6, 20:23, 0:4] = 1.0                               # equal: the first in scan order
    cams[6, 8:10, 25:31] = 1.0                              # starts earlier, stays
    cams[7] = 0.5                                           # constant: Otsu selects nothing
    spiral = _spiral(32)                                    # a path with 60 turns
    cams[8] = spiral
    got, want = _both_masks(cams)
    np.testing.assert_array_equal(got, want)
    assert got[0].sum() == (r < 6).sum() and got[1].sum() == (r < 10).sum()
    assert got[2].sum() == got[4].sum() == got[7].sum() == 0
    assert got[3].sum() == (r < 7).sum()
    assert got[5, 3:7, 20:24].all() and got[5].sum() == 16
    assert got[6, 8:10, 25:31].all() and got[6].sum() == 12
    np.testing.assert_array_equal(got[8], spiral)  # background winds out: no hole
    single = np.zeros((3, 1, 7), np.float32)                # one-pixel-wide maps
    single[:, 0, 1:3] = single[:, 0, 4:5] = 1.0
    np.testing.assert_array_equal(*_both_masks(single))
    np.testing.assert_array_equal(*_both_masks(single.transpose(0, 2, 1)))


def test_torch_masks_reject_what_the_scipy_version_rejects():
    import torch

    from napari_atagan.gan.synthesis import cams_to_masks_torch

    with pytest.raises(ValueError, match="NaN"):
        cams_to_masks_torch(torch.full((1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="N, H, W"):
        cams_to_masks_torch(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="threshold"):
        cams_to_masks_torch(torch.ones(1, 4, 4), threshold="mean")
    assert cams_to_masks_torch(torch.zeros(0, 4, 4)).shape == (0, 4, 4)


def test_generate_with_device_masks_and_batched_rendering(tiny_checkpoint, monkeypatch):
    """The torch masks in generate (used on a GPU) equal the CPU's; rendering per batch
    equals rendering the whole set at once."""
    from napari_atagan.gan import synthesis
    from napari_atagan.data import render

    ref = generate(tiny_checkpoint, 23, seed=4, device="cpu", batch_size=5)
    intensity = synthesis.as_checkpoint(tiny_checkpoint).metadata["intensity"]
    np.testing.assert_array_equal(ref.rendered, render(ref.images, intensity, seed=4))
    monkeypatch.setattr(synthesis, "_masks_on_device", lambda dev: True)
    syn = generate(tiny_checkpoint, 23, seed=4, device="cpu", batch_size=5)
    np.testing.assert_array_equal(syn.masks, ref.masks)
    np.testing.assert_array_equal(syn.rendered, ref.rendered)
    np.testing.assert_array_equal(syn.attention, ref.attention)
    with pytest.raises(ValueError, match="threshold"):
        generate(tiny_checkpoint, 2, device="cpu", threshold="mean")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("seed", [None, 3])
def test_render_in_pieces_equals_render(rng, dtype, seed):
    from napari_atagan.data import render, render_into, render_levels, rendered_dtype

    scale = {"uint8": 1, "uint16": 200, "float32": 0.01}[dtype]
    pairs = (rng.random((50, 2)) * [30, 200] + [5, 40]) * scale
    intensity = {"dtype": dtype, "lo": 20 * scale, "hi": 150 * scale, "pairs": pairs.tolist()}
    x = np.clip(rng.normal(0, 0.7, (37, 9, 9)), -1.2, 1.2).astype(np.float32)
    want = render(x, intensity, seed=seed)
    out = np.empty(x.shape, rendered_dtype(intensity))
    lo, hi = render_levels(intensity, len(x), seed)
    for i in range(0, len(x), 8):
        render_into(out[i:i + 8], x[i:i + 8], lo[i:i + 8], hi[i:i + 8])
    assert out.dtype == want.dtype
    np.testing.assert_array_equal(out, want)
