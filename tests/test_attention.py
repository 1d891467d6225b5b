"""Tests of the attention-transfer loss and the teachers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_atagan.gan.attention import (
    PatternClassifier,
    at_loss,
    classifier_maps,
    mask_teacher_maps,
    teacher_maps,
    train_classifier,
)
from napari_atagan.gan.config import TrainConfig
from napari_atagan.data import from_arrays



# --------------------------------------------------------------------------
# at_loss
# --------------------------------------------------------------------------
def test_at_loss_zero_for_proportional_maps() -> None:
    q = torch.rand(4, 8, 8)
    for scale in (1e-3, 0.5, 1.0, 7.0, 1e4):
        assert at_loss(q * scale, q).item() == pytest.approx(0.0, abs=1e-6)
    # per-sample scales, and the (B, 1, H, W) layout
    scales = torch.tensor([0.1, 2.0, 30.0, 1.0]).view(-1, 1, 1)
    assert at_loss((q * scales).unsqueeze(1), q).item() == pytest.approx(0.0, abs=1e-6)


def test_at_loss_positive_and_symmetric() -> None:
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    ab, ba = at_loss(a, b), at_loss(b, a)
    assert ab.item() > 0
    assert ab.item() == pytest.approx(ba.item(), rel=1e-6)
    # disjoint maps are as far apart as non-negative maps can be
    left = torch.zeros(1, 4, 4)
    left[..., :2] = 1
    right = torch.zeros(1, 4, 4)
    right[..., 2:] = 1
    assert at_loss(left, right).item() == pytest.approx(2.0)


def test_at_loss_resizes_the_teacher_map() -> None:
    q_t = torch.rand(2, 1, 32, 32)
    q_d = F.interpolate(q_t, size=(8, 8), mode="bilinear", align_corners=False)
    assert at_loss(q_d, q_t).item() == pytest.approx(0.0, abs=1e-6)


def test_at_loss_gradient_flows() -> None:
    q_d = torch.rand(2, 8, 8, requires_grad=True)
    loss = at_loss(q_d, torch.rand(2, 8, 8))
    loss.backward()
    assert q_d.grad is not None and q_d.grad.abs().sum() > 0
    # an all-zero map does not give NaN
    z = torch.zeros(2, 8, 8, requires_grad=True)
    at_loss(z, torch.rand(2, 8, 8)).backward()
    assert torch.isfinite(z.grad).all()


def test_at_loss_bad_shapes() -> None:
    with pytest.raises(ValueError):
        at_loss(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8))
    with pytest.raises(ValueError, match="batch sizes"):
        at_loss(torch.rand(2, 8, 8), torch.rand(3, 8, 8))


# --------------------------------------------------------------------------
# Mask teacher
# --------------------------------------------------------------------------
def test_mask_teacher_maps() -> None:
    m = np.zeros((2, 32, 32), np.uint8)
    m[:, 8:24, 8:24] = 1
    maps = mask_teacher_maps(torch.from_numpy(m), sigma=2.0)
    assert maps.shape == (2, 1, 32, 32) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps[0, 0, 16, 16] > 0.99 and maps[0, 0, 0, 0] < 1e-3
    assert 0.3 < maps[0, 0, 16, 8] < 0.7  # the edge is soft
    assert torch.equal(mask_teacher_maps(m, 0.0)[:, 0], torch.from_numpy(m).float())
    # a cell touching the crop edge fades out there (outside counts as background)
    edge = np.zeros((1, 32, 32), np.uint8)
    edge[:, :, :10] = 1
    assert mask_teacher_maps(edge, 2.0)[0, 0, 16, 0] < 0.9


# --------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------
def test_soft_cam_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = PatternClassifier(3).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = model.features(x)
        assert a.shape == (2, 512, 4, 4)  # stride 8
        logits = model(x)
        p = logits.softmax(dim=1)
        w = model.fc.weight
        hand = torch.zeros(2, 4, 4)
        for b in range(2):
            for c in range(3):
                cam_c = (w[c].view(-1, 1, 1) * a[b]).sum(dim=0)
                hand[b] += p[b, c] * cam_c
        hand = F.interpolate(hand.relu().unsqueeze(1), size=(32, 32), mode="bilinear")[:, 0]
        cam = model.soft_cam(x)
    assert cam.shape == (2, 32, 32)
    torch.testing.assert_close(cam, hand, atol=1e-4, rtol=1e-4)
    assert model.soft_cam(x, size=8).shape == (2, 8, 8)


def test_64px_input_gives_8x8_features() -> None:
    model = PatternClassifier(6).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 1, 64, 64)).shape[-2:] == (8, 8)
        assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 6)


def disc_vs_ring(n: int, size: int = 24, seed: int = 0):
    """An easy two-pattern set: filled discs and thin rings, alternating."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images, masks, labels = [], [], []
    for i in range(n):
        r = np.hypot(yy - rng.normal(0, 1), xx - rng.normal(0, 1))
        radius = rng.uniform(0.28, 0.38) * size
        cell = r < radius
        signal = cell if i % 2 == 0 else cell & (r > radius - 2)
        img = 20 + 80 * signal + rng.normal(0, 3, (size, size))
        images.append(img.astype(np.float32))
        masks.append(cell.astype(np.uint8))
        labels.append("disc" if i % 2 == 0 else "ring")
    return images, masks, labels


@pytest.fixture(scope="module")
def easy_data():
    images, masks, labels = disc_vs_ring(64)
    return from_arrays(images, masks, labels, image_size=16)


def test_train_classifier_learns_an_easy_task(easy_data) -> None:
    events = []
    model, info = train_classifier(
        easy_data, epochs=2, batch_size=16, lr=2e-3, seed=0, progress=events.append
    )
    assert not model.training
    assert info["val_accuracy"] >= 0.9
    assert info["n_train"] + info["n_val"] == easy_data.n
    assert info["n_val"] == 10  # 15 % of each pattern's 32 cells, in one block
    assert set(info) >= {"val_accuracy", "train_accuracy", "epochs", "n_train", "n_val", "seconds"}
    assert [e["epoch"] for e in events] == [1, 2]
    maps = classifier_maps(model, easy_data.images)
    assert maps.shape == (easy_data.n, 1, 16, 16)
    peak = maps.flatten(1).amax(dim=1)
    assert torch.all((peak == 0) | ((peak - 1).abs() < 1e-5))


def test_train_classifier_takes_exactly_the_steps_asked(easy_data) -> None:
    events = []
    _, info = train_classifier(easy_data, epochs=1, batch_size=16, val_fraction=0.0,
                               steps=5, progress=events.append)
    # 64 cells in batches of 16: 4 steps a pass, so 5 steps take a second, short pass
    assert info["steps"] == 5 and info["epochs"] == 2 and [e["epoch"] for e in events] == [1, 2]
    _, info = train_classifier(easy_data, epochs=1, batch_size=16, val_fraction=0.0)
    assert info["steps"] == 4 and info["epochs"] == 1
    with pytest.raises(ValueError, match="steps"):
        train_classifier(easy_data, steps=0)


def test_classifier_needs_two_patterns() -> None:
    images, masks, _ = disc_vs_ring(6)
    one = from_arrays(images, masks, ["disc"] * 6, image_size=16)
    with pytest.raises(ValueError, match="at least 2.*'mask' or 'none'"):
        train_classifier(one, epochs=1)
    unlabelled = from_arrays(images, masks, image_size=16)
    with pytest.raises(ValueError, match="'mask' or 'none'"):
        train_classifier(unlabelled, epochs=1)


# --------------------------------------------------------------------------
# teacher_maps
# --------------------------------------------------------------------------
def cfg(**kw) -> TrainConfig:
    return TrainConfig(image_size=16, g_channels=(32, 16), **kw)


def test_teacher_maps_mask(easy_data) -> None:
    maps, info = teacher_maps(cfg(teacher="mask", mask_sigma=1.0), easy_data, "cpu")
    assert maps.shape == (easy_data.n, 1, 16, 16) and maps.dtype == torch.float32
    assert info["teacher"] == "mask"
    torch.testing.assert_close(
        maps, mask_teacher_maps(torch.from_numpy(easy_data.masks), 1.0)
    )


def test_teacher_maps_none(easy_data) -> None:
    assert teacher_maps(cfg(teacher="none"), easy_data, "cpu") == (None, {})


def test_mask_teacher_without_masks() -> None:
    images, _, labels = disc_vs_ring(4)
    data = from_arrays(images, labels=labels, image_size=16)
    with pytest.raises(ValueError, match="'classifier'.*'none'"):
        teacher_maps(cfg(teacher="mask"), data, "cpu")


@pytest.mark.parametrize("jitter", [True, False])
def test_the_teacher_records_crops_anew_as_its_config_says(easy_data, monkeypatch,
                                                         jitter: bool) -> None:
    """Both places that train the teacher (here and the training thread) read the
    configuration through one helper; the jitter runs once per step when on."""
    import napari_atagan.gan.attention as attention

    calls = []
    real = attention.acquisition_jitter
    monkeypatch.setattr(attention, "acquisition_jitter",
                        lambda x, g: calls.append(x.shape) or real(x, g))
    config = cfg(teacher="classifier", classifier_epochs=2, classifier_jitter=jitter, seed=3)
    assert attention.classifier_options(config) == dict(epochs=2, seed=3, jitter=jitter)
    _, info = teacher_maps(config, easy_data.subset(range(24)), "cpu")
    assert len(calls) == (info["steps"] if jitter else 0) and info["steps"] >= 2


def test_teacher_maps_classifier(easy_data) -> None:
    maps, info = teacher_maps(
        cfg(teacher="classifier", classifier_epochs=1), easy_data.subset(range(24)), "cpu"
    )
    assert maps.shape == (24, 1, 16, 16)
    assert info["teacher"] == "classifier" and info["epochs"] == 1
    assert float(maps.max()) <= 1.0 + 1e-6 and float(maps.min()) >= 0.0
