"""Generator and discriminator: shapes, conditioning, the soft-CAM and geometry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_atagan.gan.config import TrainConfig
from napari_atagan.gan.models import (
    Discriminator,
    Generator,
    build_models,
    count_parameters,
    init_weights,
    recompute_batchnorm,
    standing_statistics,
)

D_CHANNELS = (8, 16, 16, 32)  # stride 8, like the default discriminator


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_generator(n_classes: int = 0) -> Generator:
    return Generator(z_dim=8, channels=(16, 8), image_size=16, n_classes=n_classes)


# ---------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------


def test_unconditional_generator_shape_dtype_range():
    g = tiny_generator()
    x = g(torch.randn(5, 8))
    assert x.shape == (5, 1, 16, 16)
    assert x.dtype == torch.float32
    assert x.abs().max() <= 1.0


def test_default_generator_makes_64px_images():
    g = Generator()
    assert g(torch.randn(2, 100)).shape == (2, 1, 64, 64)
    assert Generator(channels=(64, 32, 16, 8, 8), image_size=128)(torch.randn(2, 100)).shape == (
        2, 1, 128, 128,
    )


def test_conditional_generator_shape_and_label_response():
    g = tiny_generator(n_classes=4).eval()
    z = torch.randn(1, 8).repeat(4, 1)
    x = g(z, torch.arange(4))
    assert x.shape == (4, 1, 16, 16)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(x[i], x[j]), f"labels {i} and {j} give the same image"
    # same label, same z: same image
    assert torch.equal(g(z[:2], torch.tensor([1, 1]))[0], g(z[:2], torch.tensor([1, 1]))[1])


def test_conditional_generator_accepts_int32_labels():
    g = tiny_generator(n_classes=3).eval()
    z = torch.randn(3, 8)
    assert torch.equal(g(z, torch.tensor([0, 1, 2], dtype=torch.int32)), g(z, torch.arange(3)))


@pytest.mark.parametrize(
    "labels, match",
    [
        (None, "pass labels"),
        (torch.tensor([0, 3]), r"\[0, 2\]"),
        (torch.tensor([-1, 0]), r"\[0, 2\]"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([0, 1, 2]), "shape"),
    ],
)
def test_conditional_generator_label_errors(labels, match):
    g = tiny_generator(n_classes=3)
    with pytest.raises(ValueError, match=match):
        g(torch.randn(2, 8), labels)


def test_unconditional_generator_refuses_labels_and_bad_noise():
    g = tiny_generator()
    with pytest.raises(ValueError, match="without labels"):
        g(torch.randn(2, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        g(torch.randn(2, 9))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=(16, 8, 4), image_size=16), "needs 2 widths"),
        (dict(channels=(16,), image_size=64), "needs 4 widths"),
        (dict(channels=(16, 8), image_size=24), "power of two"),
        (dict(z_dim=0), "z_dim"),
        (dict(padding="circular"), "padding must be one of"),
    ],
)
def test_generator_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Generator(**kwargs)


def test_recompute_batchnorm_gives_the_exact_statistics_of_the_batches():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    net = nn.Sequential(bn)
    a, b = torch.randn(4, 3, 5, 5) * 2 + 1, torch.randn(6, 3, 5, 5) - 3
    recompute_batchnorm(net.eval(), [(a,), (torch.randn(1, 3, 5, 5),), (b,)])
    # the cumulative average of the two batches' means and unbiased variances;
    # the single-sample batch is skipped
    mean = (a.mean((0, 2, 3)) + b.mean((0, 2, 3))) / 2
    var = (a.transpose(0, 1).flatten(1).var(1) + b.transpose(0, 1).flatten(1).var(1)) / 2
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and not net.training  # settings and mode kept


def test_standing_statistics_match_the_generator_s_own_batches():
    g = tiny_generator(n_classes=3)
    with torch.no_grad():  # weights that no longer match the stored statistics
        for p in g.parameters():
            p.mul_(1.7)
    weights = {k: v.clone() for k, v in g.named_parameters()}
    z = torch.randn(512, 8)
    y = torch.arange(512) % 3
    rng = torch.get_rng_state()
    with torch.no_grad():
        g.train()
        in_train_mode = g(z, y)
        g.eval()
        before = (g(z, y) - in_train_mode).abs().mean()
        standing_statistics(g, n=2048)
        after = (g(z, y) - in_train_mode).abs().mean()
    assert not g.training
    assert after < 0.2 * before and after < 0.02  # eval mode now draws what training drew
    assert all(torch.equal(v, weights[k]) for k, v in g.named_parameters())
    torch.testing.assert_close(torch.get_rng_state(), rng)  # global random state untouched
    first = g.state_dict()["seed_norm.bn.running_var"].clone()
    standing_statistics(g, n=2048)  # deterministic
    assert torch.equal(first, g.state_dict()["seed_norm.bn.running_var"])


def test_standing_statistics_of_an_unconditional_generator():
    g = tiny_generator()
    before = g.seed_norm.bn.running_var.clone()
    standing_statistics(g, n=300, batch_size=128)  # batches of 128, 128 and 44
    assert not torch.equal(before, g.seed_norm.bn.running_var)
    assert int(g.seed_norm.bn.num_batches_tracked) == 3


def test_generator_labels_on_the_cpu_are_range_checked():
    g = tiny_generator(n_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        g(torch.randn(2, 8), torch.tensor([0, 3]))


# ---------------------------------------------------------------------------
# discriminator
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (16, 24)])
def test_discriminator_is_fully_convolutional(size):
    d = Discriminator(channels=D_CHANNELS, image_size=64)
    assert d.stride == 8
    logit, class_logits, a = d(torch.randn(3, 1, *size))
    assert logit.shape == (3,)
    assert class_logits is None and d.classifier is None
    assert a.shape == (3, 32, size[0] // 8, size[1] // 8)


def test_discriminator_with_classifier_head():
    d = Discriminator(channels=D_CHANNELS, n_classes=6)
    logit, class_logits, a = d(torch.randn(2, 1, 64, 64))
    assert isinstance(d.classifier, nn.Linear) and d.classifier.out_features == 6
    assert class_logits.shape == (2, 6)
    # the realness unit (and hence the CAM) stays class-free
    assert d.realness.weight.shape == (1, 32)


def test_soft_cam_equals_hand_computation():
    d = Discriminator(channels=D_CHANNELS).eval()
    x = torch.randn(2, 1, 64, 96)
    a = d.features(x)
    w, b = d.realness.weight[0], d.realness.bias
    logit = a.mean(dim=(2, 3)) @ w + b
    cam = torch.einsum("c,bchw->bhw", w, a)
    expected = torch.sigmoid(logit)[:, None, None] * cam
    expected = F.interpolate(
        expected[:, None], size=(64, 96), mode="bilinear", align_corners=False
    )[:, 0]
    got = d.soft_cam(x)
    assert got.shape == (2, 64, 96)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    at_feature_size = torch.sigmoid(logit)[:, None, None] * cam
    torch.testing.assert_close(d.soft_cam(x, size=(8, 12)), at_feature_size)


def test_cam_mean_plus_bias_is_the_logit():
    d = Discriminator(channels=D_CHANNELS).eval()
    logit, _, a = d(torch.randn(4, 1, 64, 64))
    cam = d.cam_map(a)
    assert cam.shape == (4, 8, 8)
    torch.testing.assert_close(cam.mean(dim=(1, 2)) + d.realness.bias, logit, rtol=1e-5, atol=1e-6)


def test_soft_cam_is_differentiable():
    d = Discriminator(channels=D_CHANNELS).train()
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    d.soft_cam(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())


def test_soft_cam_from_matches_soft_cam():
    d = Discriminator(channels=D_CHANNELS).eval()
    x = torch.randn(2, 1, 64, 64)
    logit, _, a = d(x)
    torch.testing.assert_close(d.soft_cam_from(a, logit, (64, 64)), d.soft_cam(x))


@pytest.mark.parametrize(
    "channels, stride, field",
    [((32, 64, 128, 256), 8, 31), ((8, 16), 2, 7), ((8, 16, 16, 32, 32), 16, 63)],
)
def test_stride_and_receptive_field_values(channels, stride, field):
    d = Discriminator(channels=channels, image_size=64)
    assert (d.stride, d.receptive_field) == (stride, field)


def test_receptive_field_matches_gradient_support():
    """The pixels that influence one central feature cell span exactly the receptive field."""
    d = Discriminator(channels=D_CHANNELS).eval()
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    a = d.features(x)
    a[0, :, 4, 4].sum().backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(dim=1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(dim=0)).flatten()
    assert int(rows.max() - rows.min() + 1) == d.receptive_field
    assert int(cols.max() - cols.min() + 1) == d.receptive_field


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 64, 64), "one-channel"),
        ((1, 1, 60, 64), "multiples of 8"),
        ((1, 1, 8, 8), "at least 16"),
        ((64, 64), "one-channel"),
    ],
)
def test_discriminator_input_errors(shape, match):
    d = Discriminator(channels=D_CHANNELS)
    with pytest.raises(ValueError, match=match):
        d(torch.randn(*shape))


def test_discriminator_argument_errors():
    with pytest.raises(ValueError, match="multiple of the discriminator's stride"):
        Discriminator(channels=(8, 16, 16, 32, 32), image_size=24)
    with pytest.raises(ValueError, match="positive widths"):
        Discriminator(channels=())


def test_spectral_norm_variant():
    d = Discriminator(channels=D_CHANNELS, n_classes=3, spectral_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    for m in d.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.nn.utils.parametrize.is_parametrized(m, "weight")
    x = torch.randn(4, 1, 32, 48)
    logit, class_logits, a = d(x)
    assert logit.shape == (4,) and class_logits.shape == (4, 3) and a.shape == (4, 32, 4, 6)
    cam = d.soft_cam(x)
    assert cam.shape == (4, 32, 48) and torch.isfinite(cam).all()
    cam.mean().backward()
    d.eval()
    logit, _, a = d(x)
    gap = d.cam_map(a).mean(dim=(1, 2)) + d.realness.bias
    torch.testing.assert_close(gap, logit, rtol=1e-5, atol=1e-6)


def test_batchnorm_layout():
    d = Discriminator(channels=D_CHANNELS)
    norms = [isinstance(b.norm, nn.BatchNorm2d) for b in d.blocks]
    assert norms == [False, True, True, False]  # not on the raw image, not on the CAM features


def test_bf16_autocast_runs():
    g, d = tiny_generator(n_classes=2), Discriminator(channels=(8, 16), image_size=16, n_classes=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = g(torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))
        cam = d.soft_cam(x)
    assert cam.shape == (4, 16, 16) and torch.isfinite(cam.float()).all()


# ---------------------------------------------------------------------------
# from a config
# ---------------------------------------------------------------------------


def test_build_models_from_config():
    config = TrainConfig(
        image_size=16, z_dim=8, g_channels=(16, 8), d_channels=(8, 16), spectral_norm=True
    )
    g, d = build_models(config, n_classes=3)
    assert (g.z_dim, g.image_size, g.n_classes, g.channels) == (8, 16, 3, (16, 8))
    assert (d.channels, d.n_classes, d.spectral_norm) == ((8, 16), 3, True)
    assert g(torch.randn(2, 8), torch.tensor([0, 2])).shape == (2, 1, 16, 16)
    g0, d0 = build_models(config.replace(spectral_norm=False), n_classes=0)
    assert g0.n_classes == 0 and d0.classifier is None


def test_default_models_are_small():
    g, d = build_models(TrainConfig(), n_classes=0)
    assert count_parameters(g) < 2_000_000
    assert count_parameters(d) < 1_000_000


def test_init_weights_is_dcgan_style():
    torch.manual_seed(1)
    g = Generator()
    w = g.blocks[0].conv.weight.detach()
    assert abs(float(w.mean())) < 2e-3 and abs(float(w.std()) - 0.02) < 2e-3
    bn = g.blocks[0].norm.bn.requires_grad_(False)
    assert abs(float(bn.weight.mean()) - 1.0) < 0.01 and float(bn.bias.abs().max()) == 0.0
    conv = nn.Conv2d(4, 4, 3)
    conv.apply(init_weights)
    assert float(conv.bias.detach().abs().max()) == 0.0


@pytest.mark.parametrize("stride", [4, 2])
def test_dense_discriminator_samples_the_same_features_finer(stride):
    from napari_atagan.gan.models import dense_discriminator

    torch.manual_seed(0)
    disc = Discriminator(channels=(8, 16, 16, 32)).eval()
    x = torch.randn(2, 1, 64, 80)
    dense = dense_discriminator(disc, stride)
    assert dense.stride == stride and dense.receptive_field == disc.receptive_field
    with torch.no_grad():
        a, b = disc.features(x), dense.features(x)
    k = disc.stride // stride
    assert b.shape[-2:] == (64 // stride, 80 // stride)
    torch.testing.assert_close(b[..., ::k, ::k], a, rtol=0, atol=1e-5)
    # in between: the original on the input shifted by `stride` pixels
    with torch.no_grad():
        shifted = disc.features(x[..., stride:, stride:][..., :56, :72])  # 7 x 9 cells
    between = b[..., 1::k, 1::k][..., :7, :9]
    torch.testing.assert_close(between[..., 2:-2, 2:-2], shifted[..., 2:-2, 2:-2],
                               rtol=0, atol=1e-5)  # away from the zero padding
    assert dense_discriminator(disc, disc.stride) is disc
    assert disc.blocks[2].conv.stride == (2, 2)  # the original is untouched


@pytest.mark.parametrize("stride", [3, 16, 0])
def test_dense_discriminator_refuses_strides_that_do_not_divide(stride):
    from napari_atagan.gan.models import dense_discriminator

    with pytest.raises(ValueError, match="power of two"):
        dense_discriminator(Discriminator(), stride)
