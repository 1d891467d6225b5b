"""Tests of the on-device augmentation."""

from __future__ import annotations

import pytest
import torch

from napari_atagan.gan.attention import mask_teacher_maps
from napari_atagan.gan.augment import (
    Augmenter,
    acquisition_jitter,
    affine,
    border_level,
    dihedral,
    dihedral_inverse,
)
from napari_atagan.gan.config import TrainConfig


S = 32


def disc_masks(n: int = 6, size: int = S, seed: int = 0) -> torch.Tensor:
    """(n, 1, size, size) 0/1 ellipses of random size and position near the centre."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = (size - 1) / 2 + (torch.rand(2, generator=g) * 4 - 2)
        ry, rx = size * (0.18 + 0.1 * torch.rand(2, generator=g))
        out.append((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).float())
    return torch.stack(out).unsqueeze(1)


def centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2) as (row, col)."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    m = x[:, 0]
    total = m.sum(dim=(1, 2))
    return torch.stack([(m * yy).sum(dim=(1, 2)) / total, (m * xx).sum(dim=(1, 2)) / total], 1)


def config(**kw) -> TrainConfig:
    return TrainConfig(image_size=S, g_channels=(64, 32, 16), **kw)


# --------------------------------------------------------------------------
# Dihedral group
# --------------------------------------------------------------------------
def test_dihedral_gives_8_distinct_transforms_and_inverses() -> None:
    x = torch.arange(S * S, dtype=torch.float32).view(1, 1, S, S)
    outs = [dihedral(x, k) for k in range(8)]
    flat = torch.stack([o.flatten() for o in outs])
    assert torch.unique(flat, dim=0).shape[0] == 8
    assert torch.equal(outs[0], x)
    for k in range(8):
        back = dihedral(outs[k], dihedral_inverse(k))
        assert torch.equal(back, x), k
    # closed under composition
    for a in range(8):
        for b in range(8):
            c = dihedral(dihedral(x, a), b)
            assert any(torch.equal(c, o) for o in outs)


def test_dihedral_per_sample_matches_scalar() -> None:
    x = torch.randn(8, 1, S, S)
    k = torch.arange(8)
    out = dihedral(x, k)
    for i in range(8):
        assert torch.equal(out[i], dihedral(x[i : i + 1], i)[0])
    inv = dihedral_inverse(k)
    assert torch.equal(dihedral(out, inv), x)
    with pytest.raises(ValueError):
        dihedral(x, 8)


# --------------------------------------------------------------------------
# Affine
# --------------------------------------------------------------------------
def test_translation_moves_centre_of_mass() -> None:
    m = disc_masks(4)
    shift = torch.tensor([[3.0, -2.0], [-5.0, 4.0], [0.0, 0.0], [2.5, 1.5]])  # (dx, dy)
    out = affine(m, shift, torch.ones(4))
    moved = centre_of_mass(out) - centre_of_mass(m)
    expected = shift.flip(1)  # (row, col) = (dy, dx)
    torch.testing.assert_close(moved, expected, atol=0.05, rtol=0)


def test_zoom_shrinks_area_by_zoom_squared() -> None:
    m = disc_masks(3)
    zoom = torch.tensor([0.6, 0.8, 1.0])
    out = affine(m, torch.zeros(3, 2), zoom)
    ratio = out.sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))
    torch.testing.assert_close(ratio, zoom**2, atol=0.03, rtol=0.03)
    # the zoom is about the image centre
    mid = (S - 1) / 2
    expected = mid + zoom[:, None] * (centre_of_mass(m) - mid)
    torch.testing.assert_close(centre_of_mass(out), expected, atol=0.1, rtol=0)


def test_affine_fill_value() -> None:
    x = torch.zeros(2, 1, S, S)
    shift = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    out = affine(x, shift, torch.tensor([1.0, 0.5]), torch.tensor([-1.0, 0.5]))
    assert torch.allclose(out[0, 0, :, :8], torch.tensor(-1.0))  # uncovered left edge
    assert torch.allclose(out[1, 0, 0], torch.tensor(0.5))  # zoomed-out border


def test_border_level() -> None:
    x = torch.full((2, 1, 16, 16), -0.8)
    x[1] = 0.3
    x[:, :, 4:12, 4:12] = 1.0
    torch.testing.assert_close(border_level(x), torch.tensor([-0.8, 0.3]))


# --------------------------------------------------------------------------
# Augmenter
# --------------------------------------------------------------------------
def test_shapes_and_device() -> None:
    aug = Augmenter(config(), "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, S, S) * 2 - 1
    maps = torch.rand(5, 1, S, S)
    xi, mi = aug(x, maps, generator=g)
    assert xi.shape == x.shape and mi.shape == maps.shape
    assert xi.device == x.device and xi.dtype == x.dtype
    assert xi.min() >= -1 and xi.max() <= 1
    xi, none = aug(x, generator=g, geometric=False)
    assert none is None and xi.shape == x.shape
    # maps of another resolution follow too
    _, small = aug(x, torch.rand(5, 1, 8, 8), generator=g)
    assert small.shape == (5, 1, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_runs_on_cuda() -> None:
    aug = Augmenter(config(), "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(4, 1, S, S, device="cuda")
    xi, mi = aug(x, x.clone(), generator=g)
    assert xi.is_cuda and mi.is_cuda


def test_same_transform_for_image_and_map() -> None:
    aug = Augmenter(config(aug_intensity=0.0, aug_translate=6.0, aug_zoom_min=0.6), "cpu")
    m = disc_masks(8)  # background 0, so the image fill (border level) is 0 too
    xi, mi = aug(m, m.clone(), generator=torch.Generator().manual_seed(3))
    assert torch.equal(xi, mi)
    assert not torch.equal(xi, m)


def test_deterministic_with_a_seeded_generator() -> None:
    aug = Augmenter(config(), "cpu")
    x = torch.rand(6, 1, S, S) * 2 - 1
    maps = torch.rand(6, 1, S, S)
    a = aug(x, maps, generator=torch.Generator().manual_seed(7))
    b = aug(x, maps, generator=torch.Generator().manual_seed(7))
    c = aug(x, maps, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_probability_zero_is_only_dihedral() -> None:
    aug = Augmenter(config(aug_p=0.0, aug_intensity=0.0), "cpu")
    x = torch.randn(8, 1, S, S)
    out, _ = aug(x, generator=torch.Generator().manual_seed(0))
    for i in range(8):
        assert any(torch.equal(out[i], dihedral(x[i : i + 1], k)[0]) for k in range(8))


def test_image_fill_is_background_level() -> None:
    aug = Augmenter(
        config(aug_dihedral=False, aug_intensity=0.0, aug_translate=0.0, aug_zoom_min=0.5), "cpu"
    )
    x = torch.full((4, 1, S, S), -0.7)
    x[:, :, 10:22, 10:22] = 0.9
    out, _ = aug(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, :, 0, :], torch.full((4, 1, S), -0.7))


# --------------------------------------------------------------------------
# The contract with the mask teacher
# --------------------------------------------------------------------------
SIGMA = 2.0


def teacher(m: torch.Tensor) -> torch.Tensor:
    return mask_teacher_maps(m[:, 0], SIGMA)


def test_mask_teacher_contract_dihedral() -> None:
    m = disc_masks(8)
    k = torch.arange(8)
    # transform the mask, then the teacher == teacher, then transform (exact up to float rounding)
    torch.testing.assert_close(teacher(dihedral(m, k)), dihedral(teacher(m), k), atol=1e-6, rtol=0)


@pytest.mark.parametrize("zoom_min", [1.0, 0.6])
def test_mask_teacher_contract_augmenter(zoom_min: float) -> None:
    """The map moved by the augmenter equals the teacher map of the moved mask."""
    cfg = TrainConfig(image_size=64, aug_intensity=0.0, aug_translate=12.0, aug_zoom_min=zoom_min)
    aug = Augmenter(cfg, "cpu")
    m = disc_masks(16, size=64)
    moved_mask, moved_map = aug(m, teacher(m), generator=torch.Generator().manual_seed(1))
    expected = teacher((moved_mask > 0.5).float())
    diff = (moved_map - expected).abs()
    # bilinear interpolation; with zoom-out the moved map is also a little sharper
    # (its blur shrinks with the cell), so allow a little more there
    assert diff.mean() < 0.01
    assert diff.max() < (0.12 if zoom_min == 1.0 else 0.22)
    inter = ((moved_map > 0.5) & (expected > 0.5)).sum()
    union = ((moved_map > 0.5) | (expected > 0.5)).sum()
    assert inter / union > 0.95


def test_acquisition_jitter_off_is_identity_and_on_keeps_the_order() -> None:
    x = disc_masks(4) * 1.6 - 0.8  # cells at 0.8, background at -0.8
    assert torch.allclose(acquisition_jitter(x, gamma=1.0, blur=0.0, noise=0.0), x, atol=1e-6)
    # a gamma alone: same shape and range, every pixel's rank within its cell kept
    ramp = torch.linspace(-1, 1, S * S).view(1, 1, S, S).repeat(3, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    y = acquisition_jitter(ramp, g, gamma=2.0, blur=0.0, noise=0.0)
    assert y.shape == ramp.shape and y.dtype == ramp.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert (y.flatten(1).diff(dim=1) >= 0).all()
    assert not torch.allclose(y, ramp)


def test_acquisition_jitter_blur_and_noise_are_per_cell_and_seeded() -> None:
    x = disc_masks(8) * 2 - 1
    a = acquisition_jitter(x, torch.Generator().manual_seed(3), gamma=1.0, blur=2.0, noise=0.0)
    b = acquisition_jitter(x, torch.Generator().manual_seed(3), gamma=1.0, blur=2.0, noise=0.0)
    assert torch.equal(a, b)
    # blur keeps the mean level (replicate padding, normalised kernel) and softens the edge
    assert torch.allclose(a.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.05)
    edge = (x - a).abs().flatten(1).amax(dim=1)
    # sigma is drawn per cell in [0, 1] px here: some edges stay sharp, some soften
    assert (edge > 0.3).sum() >= 2 and (edge < 0.05).sum() >= 2
    n = acquisition_jitter(torch.zeros(6, 1, S, S), torch.Generator().manual_seed(0),
                           gamma=1.0, blur=0.0, noise=0.1)
    std = n.flatten(1).std(dim=1)
    assert (std <= 0.21).all() and std.max() > 0.05 and std.std() > 0


def test_acquisition_jitter_needs_one_channel_batches() -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        acquisition_jitter(torch.zeros(2, 3, S, S))


def test_gaussian_kernels_match_the_mask_teachers_and_sigma_zero_is_an_impulse() -> None:
    from napari_atagan.gan.attention import gaussian_kernel
    from napari_atagan.gan.augment import gaussian_kernels

    k = gaussian_kernels(torch.tensor([0.0, 1.0, 2.0]), 6)
    assert k.shape == (3, 13) and torch.allclose(k.sum(dim=1), torch.ones(3))
    assert k[0, 6] == 1 and k[0].sum() == 1
    t = torch.arange(-6, 7).float()
    assert torch.allclose(k[2], torch.exp(-t ** 2 / 8) / torch.exp(-t ** 2 / 8).sum())
    assert torch.allclose(gaussian_kernel(2.0), k[2])
    assert gaussian_kernel(0.5).shape == (5,)  # radius ceil(3 sigma) = 2
