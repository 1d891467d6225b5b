"""The residual network family, R1/R2 gradient penalties and adaptive augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_atagan.checkpoint import (
    GENERATOR_STATISTICS,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from napari_atagan.gan.augment import AdaptiveAugment, Augmenter, ada_adjust
from napari_atagan.gan.checkpoint import load_discriminator, load_generator
from napari_atagan.gan.config import (
    TrainConfig,
    generator_channels,
    quick_config_changes,
    quick_model_changes,
)
from napari_atagan.gan.models import (
    Discriminator,
    Generator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_models,
    dense_discriminator,
)
from napari_atagan.gan.training import (
    Finished,
    Progress,
    Samples,
    _captured,
    _fixed_latents,
    gradient_penalty,
    train,
)

from .conftest import tiny_config

NEW_FIELDS = ("arch", "r1_gamma", "r2_gamma", "penalty_every", "ada_target", "ada_interval",
              "ada_kimg")


def _small(arch: str, size: int, **changes) -> TrainConfig:
    return TrainConfig(arch=arch, image_size=size, z_dim=8,
                       g_channels=generator_channels(size, (16, 16, 8, 8)),
                       d_channels=(8, 8, 16, 16), device="cpu", **changes)


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_both_families_have_the_same_shapes(arch, size):
    torch.manual_seed(0)
    G, D = build_models(_small(arch, size), n_classes=3)
    assert isinstance(G, Generator) and isinstance(D, Discriminator)
    assert (type(G) is ResNetGenerator) == (arch == "resnet")
    assert (type(D) is ResNetDiscriminator) == (arch == "resnet")
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    x = G(z, y)
    assert x.shape == (4, 1, size, size)
    assert x.min() >= -1 and x.max() <= 1
    logit, classes, a = D(x)
    assert logit.shape == (4,) and classes.shape == (4, 3)
    assert D.stride == 8  # what the training loop's feature grid assumes
    assert a.shape == (4, 16, size // 8, size // 8)
    with pytest.raises(ValueError, match="labels"):
        G(z)


def test_resnet_soft_cam_shape_and_range():
    torch.manual_seed(0)
    D = build_models(_small("resnet", 32), n_classes=0)[1].eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        logit, _, a = D(x)
        cam = D.cam_map(a)
        soft = D.soft_cam(x)
        soft_at_64 = D.soft_cam(x, size=(64, 64))
    assert cam.shape == (3, 4, 4) and soft.shape == (3, 32, 32)
    assert soft_at_64.shape == (3, 64, 64)
    assert torch.isfinite(soft).all()
    # the CAM's mean plus the bias is the realness logit (global average pooling)
    torch.testing.assert_close(cam.mean((1, 2)) + D.realness.bias, logit)
    # sigmoid(logit) in (0, 1) scales the map; bilinear upsampling stays within it
    bound = (torch.sigmoid(logit)[:, None] * cam.flatten(1).abs()).amax(1)
    assert (soft.flatten(1).abs().amax(1) <= bound + 1e-6).all()


def test_resnet_discriminator_densifies_exactly():
    torch.manual_seed(0)
    D = build_models(_small("resnet", 32), n_classes=0)[1].eval()
    x = torch.randn(1, 1, 160, 160)
    with torch.no_grad():
        a = D.features(x)
        dense = dense_discriminator(D, 4)
        assert dense.stride == 4 and dense.receptive_field == D.receptive_field
        ad = dense.features(x)
        assert ad.shape[-1] == 2 * a.shape[-1]
        torch.testing.assert_close(ad[..., ::2, ::2], a, rtol=1e-4, atol=1e-5)
        # between them: the cells of the input shifted by 4 pixels (away from the edge)
        shifted = D.features(x[..., 4:156, 4:156])
        m = 5
        torch.testing.assert_close(ad[..., 1::2, 1::2][..., :19, :19][..., m:-m, m:-m],
                                   shifted[..., m:-m, m:-m], rtol=1e-4, atol=1e-5)


def test_resnet_spectral_norm_and_padding_are_honoured():
    from torch.nn.utils import parametrize

    G, D = build_models(_small("resnet", 32, spectral_norm=True, g_padding="reflect"), 0)
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    g_convs = [m for m in G.modules() if isinstance(m, torch.nn.Conv2d)
               and m.kernel_size == (3, 3)]
    assert g_convs and all(m.padding_mode == "reflect" for m in g_convs)
    assert D(torch.zeros(2, 1, 32, 32))[0].shape == (2,)
    assert D.hparams["arch"] == "resnet" and D.hparams["spectral_norm"] is True
    assert G.hparams["arch"] == "resnet" and "arch" not in Generator().hparams


# --------------------------------------------------------------------------- penalties
def test_r1_of_a_linear_discriminator_is_known():
    """D(x) = <w, x> + b has gradient w everywhere: the penalty is gamma / 2 * |w|^2,
    and its gradient with respect to w is gamma * w."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 1)
    x = torch.randn(5, 1, 4, 4)

    def realness(v):
        return lin(v.flatten(1))[:, 0]

    with torch.autocast("cpu", dtype=torch.bfloat16):  # ignored inside: float32
        penalty = gradient_penalty(realness, x, gamma=3.0)
    w = lin.weight.detach()
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, 1.5 * w.square().sum(), rtol=1e-6, atol=0)
    penalty.backward()
    torch.testing.assert_close(lin.weight.grad, 3.0 * w, rtol=1e-6, atol=1e-7)
    assert not x.requires_grad


def test_r1_of_a_quadratic_discriminator():
    """D(x) = sum(x^2) / 2 has gradient x: the penalty is gamma / 2 * E|x|^2."""
    x = torch.randn(6, 1, 4, 4)
    penalty = gradient_penalty(lambda v: 0.5 * v.square().flatten(1).sum(1), x, gamma=2.0)
    torch.testing.assert_close(penalty, x.square().flatten(1).sum(1).mean())


# --------------------------------------------------------------------------- ADA
def test_ada_adjust_moves_p_by_images_over_kimg():
    # overconfident D (r above the target): up by batch * interval / (kimg * 1000)
    assert float(ada_adjust(0.1, 0.9, 0.6, 64 * 4, 100)) == pytest.approx(0.1 + 256 / 1e5)
    assert float(ada_adjust(0.1, 0.2, 0.6, 64 * 4, 100)) == pytest.approx(0.1 - 256 / 1e5)
    assert float(ada_adjust(0.999, 1.0, 0.6, 1000, 1)) == 1.0  # clipped
    assert float(ada_adjust(0.0, -1.0, 0.6, 1000, 1)) == 0.0
    assert float(ada_adjust(0.3, 0.6, 0.6, 1000, 1)) == pytest.approx(0.3)


def test_adaptive_augment_rises_while_d_is_overconfident():
    ada = AdaptiveAugment(target=0.6, interval=2, kimg=0.04, device="cpu")  # 40 images: 0 -> 1
    assert float(ada.p) == 0.0
    p = ada.p
    for _ in range(2):  # one interval of two batches of 4, all called real
        ada.observe(torch.full((4,), 3.0))
    ada.update()
    assert ada.p is p  # in place: a captured graph keeps reading the same tensor
    assert float(ada.p) == pytest.approx(8 / 40)
    assert float(ada.count) == 0 and float(ada.signs) == 0
    for _ in range(10):
        ada.observe(torch.tensor([1.0, 2.0, 3.0, -1.0]))  # r = 0.5 < 0.6: down
        ada.update()
    assert float(ada.p) == 0.0
    ada.observe(torch.ones(4))
    state = ada.state()
    again = AdaptiveAugment(0.6, 2, 0.04, "cpu")
    again.load_state(state)
    assert torch.equal(again.state(), state)


def test_move_follows_p_and_passes_gradients():
    aug = Augmenter(tiny_config(aug_translate=4.0), "cpu")
    x = torch.rand(6, 1, 16, 16, requires_grad=True)
    same = aug.move(x, torch.tensor(0.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, x)
    moved = aug.move(x, torch.tensor(1.0), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(moved, x)
    moved.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- training
def _run(cfg, data, out, resume=None):
    events = list(train(cfg, data, out, resume=resume))
    assert isinstance(events[-1], Finished)
    return events


def test_resnet_with_penalties_and_ada_trains_and_reloads(tmp_path, tiny_data):
    cfg = tiny_config(arch="resnet", r1_gamma=1.0, r2_gamma=0.5, penalty_every=2,
                      ada_target=0.6, ada_interval=1, ada_kimg=0.05, batch_size=4, steps=3,
                      sample_every=3)
    events = _run(cfg, tiny_data, tmp_path)
    progress = [e for e in events if isinstance(e, Progress)]
    assert {"d", "g", "at", "ada_p", "r1", "r2"} <= set(progress[-1].losses)
    assert all(np.isfinite(v) for p in progress for v in p.losses.values())
    assert progress[0].losses["r1"] > 0 and progress[0].losses["r2"] > 0
    assert all(0.0 <= p.losses["ada_p"] <= 1.0 for p in progress)

    ck = load_checkpoint(events[-1].checkpoint)
    assert ck.config.arch == "resnet" and ck.config.ada_target == 0.6
    assert ck.metadata["summary"]["ada_p"] == pytest.approx(float(ck.tensors["train.ada"][0]))
    G = load_generator(ck)
    D = load_discriminator(ck)
    assert type(G) is ResNetGenerator and type(D) is ResNetDiscriminator
    # the reloaded averaged generator draws exactly the last preview
    z, y = _fixed_latents(ck.config, len(tiny_data.class_names), torch.device("cpu"))
    last = [e for e in events if isinstance(e, Samples)][-1]
    with torch.no_grad():
        np.testing.assert_array_equal(G(z, y)[:, 0].numpy(), last.images)
    for key, value in D.state_dict().items():
        assert torch.equal(value, ck.tensors[f"D.{key}"]), key
    # and again through a re-saved file (export keeps the architecture)
    from napari_atagan.checkpoint import export_model

    again = load_checkpoint(export_model(ck, tmp_path / "shared.safetensors"))
    with torch.no_grad():
        assert torch.equal(again.generator()(z, y), G(z, y))
        x = torch.rand(2, 1, 16, 16) * 2 - 1
        assert torch.equal(again.discriminator().soft_cam(x), D.soft_cam(x))


def test_penalties_and_ada_resume_bit_for_bit(tmp_path, tiny_data):
    cfg = tiny_config(arch="resnet", r1_gamma=1.0, r2_gamma=1.0, penalty_every=2,
                      ada_target=0.1, ada_interval=3, ada_kimg=0.02, batch_size=4, steps=4,
                      sample_every=1000, teacher="none")
    whole = _run(cfg, tiny_data, tmp_path / "whole")[-1].checkpoint
    first = _run(cfg.replace(steps=2), tiny_data, tmp_path / "a")[-1].checkpoint
    resumed = _run(cfg, tiny_data, tmp_path / "b", resume=first)[-1].checkpoint
    a, b = load_checkpoint(whole), load_checkpoint(resumed)
    assert torch.equal(a.tensors["train.ada"], b.tensors["train.ada"])
    # saved mid-interval: the cells counted since the last update came along
    assert float(a.tensors["train.ada"][2]) == 4
    for key in a.tensors:
        if key.split(".")[0] in ("G", "G_ema", "D"):
            assert torch.equal(a.tensors[key], b.tensors[key]), key


def test_penalties_turn_the_cuda_graph_off_but_ada_keeps_it():
    cuda = torch.device("cuda")
    assert _captured(TrainConfig(), cuda)
    assert _captured(TrainConfig(ada_target=0.6), cuda)
    assert not _captured(TrainConfig(r1_gamma=1.0), cuda)
    assert not _captured(TrainConfig(r2_gamma=1.0), cuda)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("changes, match", [
    (dict(arch="vgg"), r"arch must be one of \('dcgan', 'resnet'\), got 'vgg'"),
    (dict(r1_gamma=-1.0), "r1_gamma must be >= 0"),
    (dict(r2_gamma=-0.5), "r2_gamma must be >= 0"),
    (dict(r1_gamma=float("nan")), "r1_gamma must be >= 0"),
    (dict(penalty_every=0), "penalty_every must be >= 1"),
    (dict(ada_target=1.0), r"ada_target must be in \[0, 1\)"),
    (dict(ada_target=-0.1), r"ada_target must be in \[0, 1\)"),
    (dict(ada_interval=0), "ada_interval must be >= 1"),
    (dict(ada_kimg=0.0), "ada_kimg must be > 0"),
    (dict(ada_target=0.6, aug_translate=0.0, aug_zoom_min=1.0), "allow a shift or a zoom"),
])
def test_bad_options_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_defaults_and_quick_presets_are_unchanged():
    cfg = TrainConfig()
    assert (cfg.arch, cfg.r1_gamma, cfg.r2_gamma, cfg.penalty_every) == ("dcgan", 0.0, 0.0, 1)
    assert (cfg.ada_target, cfg.ada_interval, cfg.ada_kimg) == (0.0, 4, 100.0)
    assert not cfg.penalized and not cfg.adaptive
    for preset in (quick_model_changes(), quick_config_changes()):
        assert not set(preset) & set(NEW_FIELDS)
    assert TrainConfig.parse_option("arch=resnet") == ("arch", "resnet")
    assert TrainConfig.parse_option("r1_gamma=1") == ("r1_gamma", 1.0)
    assert TrainConfig.parse_option("ada_kimg=20") == ("ada_kimg", 20.0)


class _OldConfig:
    """A config as files written before the new options saved it."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def to_dict(self) -> dict:
        return {k: v for k, v in self.config.to_dict().items() if k not in NEW_FIELDS}


def test_old_checkpoints_load_as_dcgan(tmp_path):
    cfg = _small("dcgan", 32)
    old = cfg.to_dict()
    for name in NEW_FIELDS:
        old.pop(name)
    assert TrainConfig.from_dict(old) == cfg
    torch.manual_seed(0)
    G, D = build_models(cfg, 2)
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 1])
    x = torch.rand(2, 1, 32, 32)
    # (statistics marked as the generator's own: loading keeps them as saved)
    meta = {"class_names": ["a", "b"], "generator_statistics": GENERATOR_STATISTICS}
    # with architectures stored (no "arch" in them), and as bare state dicts
    for name, modules in (("hparams", {"G_ema": G, "D": D}),
                          ("bare", {"G_ema": G.state_dict(), "D": D.state_dict()})):
        ck = load_checkpoint(save_checkpoint(tmp_path / name, config=_OldConfig(cfg),
                                             modules=modules, metadata=meta))
        assert ck.config.arch == "dcgan"
        G2, D2 = load_generator(ck), load_discriminator(ck)
        assert type(G2) is Generator and type(D2) is Discriminator
        with torch.no_grad():
            assert torch.equal(G2(z, y), G.eval()(z, y))
            assert torch.equal(D2(x)[0], D.eval()(x)[0])


def test_a_resnet_file_without_stored_architectures_follows_its_config(tmp_path):
    cfg = _small("resnet", 32)
    G, D = build_models(cfg, 0)
    ck = load_checkpoint(save_checkpoint(tmp_path / "c", config=cfg,
                                         modules={"G": G.state_dict(), "D": D.state_dict()}))
    assert type(load_generator(ck)) is ResNetGenerator
    assert type(load_discriminator(ck)) is ResNetDiscriminator


def test_an_unknown_stored_arch_is_a_clear_error(tmp_path):
    cfg = _small("resnet", 32)
    G, D = build_models(cfg, 0)
    ck = load_checkpoint(save_checkpoint(tmp_path / "c", config=cfg, modules={"G": G, "D": D}))
    ck.metadata["modules"]["D"]["hparams"]["arch"] = "vit"
    with pytest.raises(CheckpointError, match="cannot rebuild D .*unknown discriminator arch"):
        load_discriminator(ck)
