"""Attention transfer: the loss, and the teachers whose attention D learns.

* :func:`at_loss` compares two attention maps after L2 normalisation
  (Zagoruyko & Komodakis 2017), so only *where* a map is high matters, not how high.
* Teachers (frozen; their map of every cell is computed once, see :func:`teacher_maps`):

  - ``mask``: the cell mask, smoothed with a Gaussian (:func:`mask_teacher_maps`);
  - ``classifier``: a staining-pattern CNN (:class:`PatternClassifier`, trained
    here from scratch on the labelled crops) and its soft class activation map:
    the class maps weighted by the predicted class probabilities;
  - ``none``: no teacher (plain GAN).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import acquisition_jitter, dihedral, gaussian_kernels
from .config import TrainConfig
from ..data import CellData
from .models import recompute_batchnorm

__all__ = [
    "at_loss",
    "mask_teacher_maps",
    "PatternClassifier",
    "classifier_from_hparams",
    "train_classifier",
    "classifier_options",
    "classifier_maps",
    "teacher_maps",
]

Progress = Callable[[dict[str, Any]], None]


# --------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------
def at_loss(q_d: torch.Tensor, q_t: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Attention-transfer loss between two batches of maps.

    Each map (``(B, H, W)`` or ``(B, 1, H, W)``) is flattened and divided by its
    L2 norm; the loss is the batch mean of the squared L2 distance between the
    normalised maps. It is 0 when the maps are proportional and at most 4.
    ``q_t`` is resized (bilinear) to ``q_d``'s size when they differ.
    """
    q_d = _as_b1hw(q_d, "q_d")
    q_t = _as_b1hw(q_t, "q_t")
    if q_d.shape[0] != q_t.shape[0]:
        raise ValueError(f"batch sizes differ: {q_d.shape[0]} vs {q_t.shape[0]}")
    if q_t.shape[-2:] != q_d.shape[-2:]:
        q_t = F.interpolate(q_t, size=q_d.shape[-2:], mode="bilinear", align_corners=False)
    a = F.normalize(q_d.flatten(1).float(), dim=1, eps=eps)
    b = F.normalize(q_t.flatten(1).float(), dim=1, eps=eps)
    return (a - b).pow(2).sum(dim=1).mean()


def _as_b1hw(q: torch.Tensor, name: str) -> torch.Tensor:
    if q.dim() == 3:
        return q.unsqueeze(1)
    if q.dim() == 4 and q.shape[1] == 1:
        return q
    raise ValueError(f"{name} must be (B, H, W) or (B, 1, H, W), got {tuple(q.shape)}")


# --------------------------------------------------------------------------
# Mask teacher
# --------------------------------------------------------------------------
def gaussian_kernel(sigma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius ``ceil(3 sigma)``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    return gaussian_kernels(torch.tensor([float(sigma)], device=device), radius)[0]


def mask_teacher_maps(masks: torch.Tensor | np.ndarray, sigma: float) -> torch.Tensor:
    """Smoothed cell masks as attention maps: ``(N, 1, S, S)`` float32 in [0, 1].

    ``masks`` is ``(N, S, S)`` or ``(N, 1, S, S)`` (non-zero = cell), a tensor (the
    result stays on its device) or an array. The Gaussian (``sigma`` in pixels;
    0 = no smoothing) treats everything outside the crop as background.
    """
    m = torch.as_tensor(masks)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"masks must be (N, S, S) or (N, 1, S, S), got {tuple(m.shape)}")
    m = (m > 0).float()
    if sigma <= 0:
        return m
    k = gaussian_kernel(float(sigma), m.device)
    r = k.numel() // 2
    out = F.conv2d(m, k.view(1, 1, 1, -1), padding=(0, r))
    out = F.conv2d(out, k.view(1, 1, -1, 1), padding=(r, 0))
    return out.clamp_(0, 1)


# --------------------------------------------------------------------------
# Classifier teacher
# --------------------------------------------------------------------------
class PatternClassifier(nn.Module):
    """ResNet-18 for one-channel crops, with a class activation map.

    The stem is a 3x3 stride-1 convolution, so its filters see every pixel of the
    crop: the few-pixel dots and speckles that tell the nuclear patterns apart.
    ``stem_pool`` 2 then max-pools by 2 (where torchvision's ResNet pools by 2
    after a stride-2 stem), so the residual blocks work at half the crop's
    resolution: a 64x64 crop costs what a 32x32 crop costs without the pool, and
    gives a 4x4 map in the last block (8x8 with ``stem_pool`` 1). Weights start
    random: no pretrained weights are used.
    """

    def __init__(self, n_classes: int, stem_pool: int = 1) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if stem_pool not in STEM_POOLS:
            raise ValueError(f"stem_pool must be one of {STEM_POOLS}, got {stem_pool!r}")
        # Imported here, not at module level: torchvision pulls in triton, whose
        # bundled LLVM crashes in a process where a software OpenGL driver (Mesa
        # llvmpipe, e.g. napari on a remote desktop) has loaded its own first.
        # Only the classifier teacher needs it.
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=n_classes)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.MaxPool2d(stem_pool) if stem_pool > 1 else nn.Identity()
        self.net = net
        self.n_classes = int(n_classes)
        self.stem_pool = int(stem_pool)

    @property
    def hparams(self) -> dict:
        """What rebuilds this network (saved with its weights): :func:`classifier_from_hparams`."""
        return {"n_classes": self.n_classes, "stem_pool": self.stem_pool}

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's feature maps ``A``: ``(B, 512, S/8, S/8)``."""
        n = self.net
        x = n.relu(n.bn1(n.conv1(x)))
        x = n.layer4(n.layer3(n.layer2(n.layer1(n.maxpool(x)))))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes)``."""
        return self.fc(self.features(x).mean(dim=(2, 3)))

    def soft_cam(self, x: torch.Tensor, size: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Soft class activation map ``(B, H, W)``.

        ``sum_c p_c * CAM_c`` with ``CAM_c = sum_k W[c, k] * A_k`` (``A``: last
        features, ``W``: final layer weights) and ``p = softmax(logits)``; then
        ReLU and bilinear upsampling to ``size`` (default: the input size).
        """
        a = self.features(x)
        logits = self.fc(a.mean(dim=(2, 3)))
        p = logits.float().softmax(dim=1)
        weights = p @ self.fc.weight.float()  # (B, K): sum_c p_c W[c, k]
        cam = torch.einsum("bk,bkhw->bhw", weights, a.float()).relu()
        size = size or tuple(x.shape[-2:])
        cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        return cam.squeeze(1)


STEM_POOLS = (1, 2)
"""The stem's max-pooling factors :class:`PatternClassifier` supports."""


def classifier_from_hparams(hparams: dict) -> PatternClassifier:
    """An untrained :class:`PatternClassifier` as its saved ``hparams`` describe it
    (:attr:`PatternClassifier.hparams`); ``stem_pool`` defaults to 1, the network of
    files saved before it existed."""
    return PatternClassifier(int(hparams["n_classes"]), int(hparams.get("stem_pool", 1)))


def _block_split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last ``val_fraction`` of every class's cells (in data order).

    Neighbouring cells usually come from the same specimen, so a block of
    consecutive cells is a fairer test than a random pick.
    """
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(val_fraction * idx.size))
        if val_fraction > 0 and idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        else:
            n_val = 0
        train.append(idx[: idx.size - n_val])
        val.append(idx[idx.size - n_val :])
    return np.concatenate(train), np.concatenate(val)


def classifier_options(config: TrainConfig) -> dict[str, Any]:
    """The :func:`train_classifier` arguments a run's configuration sets (its teacher)."""
    return dict(epochs=config.classifier_epochs, seed=config.seed, jitter=config.classifier_jitter)


def train_classifier(
    data: CellData,
    *,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
    seed: int = 0,
    val_fraction: float = 0.15,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    steps: int | None = None,
    jitter: bool = False,
    stem_pool: int = 1,
    start: PatternClassifier | None = None,
) -> tuple[PatternClassifier, dict[str, Any]]:
    """Train a :class:`PatternClassifier` on the labelled crops of ``data``.

    Training uses random dihedral transforms (flips / 90-degree rotations),
    Adam and a one-cycle learning rate (short warm-up, cosine decay); bf16
    autocast on CUDA. The last ``val_fraction`` of every
    pattern's cells (consecutive, i.e. mostly other specimens) is held out.

    ``steps``: train exactly this many optimisation steps instead of ``epochs``
    full passes (the passes it takes, the last one cut short); two data sets of
    different sizes then get the same training budget.

    ``jitter``: each training crop is also recorded anew
    (:func:`~napari_atagan.gan.augment.acquisition_jitter`: gamma, defocus, camera
    noise), so the classifier cannot tell a pattern by one specimen's exposure.

    ``stem_pool``: see :class:`PatternClassifier`.

    ``start``: go on training this classifier (its patterns must be ``data``'s)
    instead of a new one, e.g. to fine-tune on real cells one trained on generated ones.

    Returns:
        The model in eval mode and ``{"val_accuracy", "train_accuracy", "epochs",
        "epochs_completed", "steps", "stopped", "n_train", "n_val", "seconds"}``
        (``epochs``: the passes planned, ``steps``: the steps taken);
        ``train_accuracy`` is measured on the augmented batches of the last
        epoch, ``val_accuracy`` is ``None`` without a held-out set. ``progress``
        (optional) receives a dict after every epoch; ``stop`` (optional) is
        asked before every step, and training ends early (the model as it is
        then) once it returns True.
    """
    if not data.has_labels:
        raise ValueError(
            "the classifier teacher needs cells labelled by pattern (one sub-folder per "
            "pattern); use teacher 'mask' or 'none' for unlabelled cells"
        )
    labels = np.asarray(data.labels, dtype=np.int64)
    present = np.unique(labels)
    if present.size < 2:
        raise ValueError(
            f"the classifier teacher needs at least 2 staining patterns, found {present.size}; "
            "use teacher 'mask' or 'none'"
        )
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1 (or None), got {steps}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    device = torch.device(device)
    t0 = time.perf_counter()
    train_idx, val_idx = _block_split(labels, val_fraction)
    x = torch.from_numpy(data.images).to(device).unsqueeze(1)
    y = torch.from_numpy(labels).to(device)
    tr, va = torch.from_numpy(train_idx).to(device), torch.from_numpy(val_idx).to(device)
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]

    if start is not None:
        if start.n_classes != len(data.class_names):
            raise ValueError(f"the classifier to go on from knows {start.n_classes} patterns, "
                             f"the cells {len(data.class_names)}")
        model = start.to(device)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = PatternClassifier(len(data.class_names), stem_pool).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    bs = max(2, min(batch_size, x_tr.shape[0]))
    steps_per_epoch = max(1, x_tr.shape[0] // bs)
    if steps is None:
        total_steps = epochs * steps_per_epoch
    else:
        total_steps = int(steps)
        epochs = math.ceil(total_steps / steps_per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total_steps, pct_start=0.15
    )
    amp = device.type == "cuda"
    train_acc = 0.0
    val_acc: float | None = None
    stopped = False
    completed = 0
    taken = 0
    for epoch in range(epochs):
        if stopped:
            break
        model.train()
        perm = torch.randperm(x_tr.shape[0], generator=gen, device=device)
        correct = torch.zeros((), device=device)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for s in range(min(steps_per_epoch, total_steps - taken)):
            if stop is not None and stop():
                stopped = True
                break
            idx = perm[s * bs : (s + 1) * bs]
            k = torch.randint(0, 8, (idx.numel(),), generator=gen, device=device)
            xb, yb = dihedral(x_tr[idx], k), y_tr[idx]
            if jitter:
                xb = acquisition_jitter(xb, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            taken += 1
            correct += (logits.argmax(1) == yb).sum()
            loss_sum += loss.detach() * idx.numel()
            seen += idx.numel()
        if stopped and seen == 0:
            break
        completed += not stopped
        train_acc = float(correct) / seen
        if val_idx.size:
            val_acc = _accuracy(model, x_va, y_va, amp=amp)
        if progress is not None:
            progress(
                {
                    "stage": "classifier",
                    "epoch": epoch + 1,
                    "epochs": epochs,
                    "loss": float(loss_sum) / seen,
                    "train_accuracy": train_acc,
                    "val_accuracy": val_acc,
                    "seconds": time.perf_counter() - t0,
                }
            )
    _recalibrate_batchnorm(model, x_tr)
    if val_idx.size:
        val_acc = _accuracy(model, x_va, y_va, amp=amp)
    model.eval()
    info = {
        "val_accuracy": val_acc,
        "train_accuracy": train_acc,
        "epochs": epochs,
        "epochs_completed": completed,
        "steps": taken,
        "stopped": stopped,
        "n_train": int(train_idx.size),
        "n_val": int(val_idx.size),
        "seconds": time.perf_counter() - t0,
    }
    return model, info


def _recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Set the BatchNorm running statistics to exact averages over ``x``.

    The running averages kept during training lag behind the weights (badly so
    after few steps); one pass over the training crops fixes them for eval mode.
    """
    recompute_batchnorm(model, ((x[s:s + batch_size],) for s in range(0, x.shape[0], batch_size)))
    model.eval()


@torch.no_grad()
def _accuracy(
    model: PatternClassifier, x: torch.Tensor, y: torch.Tensor, *, amp: bool, batch_size: int = 512
) -> float:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=x.device)
    for s in range(0, x.shape[0], batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x[s : s + batch_size])
        correct += (logits.argmax(1) == y[s : s + batch_size]).sum()
    model.train(was_training)
    return float(correct) / x.shape[0]


@torch.no_grad()
def classifier_maps(
    model: PatternClassifier, images: torch.Tensor | np.ndarray, *, batch_size: int = 256
) -> torch.Tensor:
    """Soft-CAM of every image, each scaled to a maximum of 1: ``(N, 1, S, S)`` float32.

    ``images`` is ``(N, S, S)`` or ``(N, 1, S, S)`` in [-1, 1]; the maps are
    computed on the model's device and returned there.
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(device, dtype=torch.float32)
        cam = model.soft_cam(xb).float()
        peak = cam.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1)
        out.append((cam / peak).unsqueeze(1))
    model.train(was_training)
    return torch.cat(out)


# --------------------------------------------------------------------------
# One entry point for the trainer
# --------------------------------------------------------------------------
def teacher_maps(
    config: TrainConfig,
    data: CellData,
    device: torch.device | str,
    *,
    progress: Progress | None = None,
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """The frozen teacher's attention map of every (centred) cell, computed once.

    Returns ``(maps, info)``: maps ``(N, 1, S, S)`` float32 on ``device`` (``None``
    for teacher ``none``) and a JSON-able summary (the classifier's accuracy for
    teacher ``classifier``).
    """
    device = torch.device(device)
    if config.teacher == "none":
        return None, {}
    if config.teacher == "mask":
        if not data.has_masks:
            raise ValueError(
                "teacher 'mask' needs cell masks (<name>_Mask.png next to every crop); "
                "use teacher 'classifier' (pattern sub-folders) or 'none'"
            )
        t0 = time.perf_counter()
        maps = mask_teacher_maps(torch.from_numpy(data.masks).to(device), config.mask_sigma)
        return maps, {
            "teacher": "mask",
            "sigma": float(config.mask_sigma),
            "seconds": time.perf_counter() - t0,
        }
    if config.teacher == "classifier":
        model, info = train_classifier(data, device=device, progress=progress,
                                       **classifier_options(config))
        t0 = time.perf_counter()
        maps = classifier_maps(model, torch.from_numpy(data.images))
        info = {"teacher": "classifier", **info, "map_seconds": time.perf_counter() - t0}
        return maps.to(device), info
    raise ValueError(f"unknown teacher {config.teacher!r}: use 'classifier', 'mask' or 'none'")
