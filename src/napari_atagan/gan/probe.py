"""How a run without a classifier teacher names a cell's pattern: a linear probe.

A run taught by masks (the default when cells come with masks) keeps no pattern
classifier. Its discriminator's projection head scores how well a cell fits a
pattern *as a real cell rather than a generated one*; taken as a classifier it is
near chance (32.7 % of held-out I3A cells right, most called Speckled). The
discriminator's pooled features do tell patterns apart: a linear classifier on them,
fitted on the run's own labelled training cells once the discriminator is trained
(multinomial logistic regression, the features standardised, classes weighted by
the inverse of their counts, an L2 penalty of :data:`PROBE_WEIGHT_DECAY`), named
0.686 of the same held-out cells right (docs/experiments.md, *Naming patterns
without a classifier teacher*). The probe changes nothing in training; it is fitted
at every checkpoint, and ``napari-atagan probe`` adds one to a file saved without.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PROBE_WEIGHT_DECAY = 1e-3
"""L2 penalty on the probe's weights (chosen on a split of the training part by id
over 1e-4 and 1e-2; docs/experiments.md)."""

PROBE_ITERATIONS = 300
"""At most this many L-BFGS iterations (the problem is convex: the fit is the same
from any start; it starts from zero weights)."""

FEATURE_BATCH = 256


class PatternProbe(nn.Module):
    """Class logits from a discriminator's pooled features ``(B, C)``."""

    def __init__(self, in_features: int, n_classes: int) -> None:
        super().__init__()
        if in_features < 1 or n_classes < 2:
            raise ValueError(f"a probe needs features and at least two patterns, got "
                             f"{in_features} features and {n_classes} patterns")
        self.in_features, self.n_classes = int(in_features), int(n_classes)
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))
        self.linear = nn.Linear(in_features, n_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @property
    def hparams(self) -> dict[str, int]:
        return {"in_features": self.in_features, "n_classes": self.n_classes}

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear((pooled - self.mean) / self.scale)


class ProbedDiscriminator(nn.Module):
    """A discriminator and its probe seen as a pattern classifier: crops in, logits out."""

    def __init__(self, discriminator: nn.Module, probe: PatternProbe) -> None:
        super().__init__()
        self.discriminator, self.probe = discriminator, probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe(_pooled(self.discriminator, x).to(self.probe.mean.dtype))


def _pooled(discriminator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the discriminator's heads see: its last conv output, averaged over
    the map (as :meth:`~napari_atagan.gan.models.Discriminator.heads` pools it)."""
    return discriminator.features(x).mean(dim=(2, 3))


def probe_from_hparams(hparams: dict) -> PatternProbe:
    return PatternProbe(int(hparams["in_features"]), int(hparams["n_classes"]))


def pooled_features(discriminator: nn.Module, images: torch.Tensor,
                    batch_size: int = FEATURE_BATCH) -> torch.Tensor:
    """The discriminator's globally pooled features ``(N, C)`` (float32) of ``images``
    ``(N, 1, S, S)``, as it sees cells at inference (eval mode; its training mode,
    weights and statistics are left as they were)."""
    was_training = discriminator.training
    discriminator.eval()
    try:
        with torch.inference_mode():
            parts = [_pooled(discriminator, images[k:k + batch_size]).float()
                     for k in range(0, len(images), batch_size)]
    finally:
        discriminator.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def fit_pattern_probe(discriminator: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      n_classes: int, *, weight_decay: float = PROBE_WEIGHT_DECAY,
                      ) -> tuple[PatternProbe, dict[str, Any]]:
    """Fit a :class:`PatternProbe` to the discriminator's features of labelled cells.

    ``images``: ``(N, 1, S, S)`` prepared crops; ``labels``: ``(N,)`` pattern indices
    below ``n_classes``. Returns the probe (on the images' device, eval mode) and a
    summary (cells, patterns seen, training accuracy, seconds). Deterministic.
    """
    t0 = time.perf_counter()
    labels = torch.as_tensor(labels).long().reshape(-1)
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"expected (N, 1, S, S) images and N labels, got shapes "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if n_classes < 2:
        raise ValueError(f"a probe needs at least two patterns, got {n_classes}")
    if len(labels) == 0 or int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be pattern indices 0..{n_classes - 1}")
    counts = torch.bincount(labels.cpu(), minlength=n_classes)
    if int((counts > 0).sum()) < 2:
        raise ValueError("a probe needs cells of at least two patterns")
    features = pooled_features(discriminator, images).clone()  # a plain tensor for autograd
    device = features.device
    y = labels.to(device)
    mean = features.mean(dim=0)
    scale = features.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (features - mean) / scale
    present = counts > 0
    weight = torch.zeros(n_classes)
    weight[present] = counts.sum() / counts[present].float() / int(present.sum())
    weight = weight.to(device)
    probe = PatternProbe(features.shape[1], n_classes).to(device)
    probe.mean.copy_(mean)
    probe.scale.copy_(scale)
    params = list(probe.linear.parameters())
    optimizer = torch.optim.LBFGS(params, max_iter=PROBE_ITERATIONS,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = probe.linear(x)
        loss = F.cross_entropy(logits, y, weight=weight)
        loss = loss + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    probe.eval()
    with torch.inference_mode():
        accuracy = float((probe.linear(x).argmax(dim=1) == y).float().mean())
    return probe, {"cells": int(len(labels)), "patterns": int(present.sum()),
                   "train_accuracy": round(accuracy, 4),
                   "weight_decay": weight_decay,
                   "seconds": round(time.perf_counter() - t0, 2)}


def probe_checkpoint(checkpoint: Any, data: Any, *, destination: Any = None,
                     device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Fit the probe of a saved run on labelled cells and write the run again with it.

    ``checkpoint``: a path or an opened ATA-GAN checkpoint; ``data``: a
    :class:`~napari_atagan.data.CellData` prepared at the checkpoint's image size, its
    patterns named as the checkpoint names them (any order, any subset of two or
    more). ``destination``: where to write (default: over the checkpoint, atomically).
    Returns the path written and the probe's summary. A run that keeps a classifier
    teacher names its patterns with it and gets no probe (ValueError), as does one
    that knows fewer than two patterns.
    """
    import numpy as np

    from ..checkpoint import Checkpoint, load_checkpoint, with_module
    from ..device import resolve_device
    from .checkpoint import load_discriminator

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    names = ckpt.class_names
    if len(names) < 2:
        raise ValueError(f"{ckpt.path.name} knows {len(names)} pattern(s): a probe names "
                         "cells among two patterns or more")
    if ckpt.has("teacher"):
        raise ValueError(f"{ckpt.path.name} names patterns with its own classifier teacher "
                         "and needs no probe")
    if not data.has_labels:
        raise ValueError("the cells have no patterns: put them in one sub-folder per pattern")
    unknown = sorted(set(data.class_names) - set(names))
    if unknown:
        raise ValueError(f"the cells' pattern(s) {', '.join(unknown)} are not among the "
                         f"checkpoint's: {', '.join(names)}")
    size = int(ckpt.config.image_size)
    if data.images.shape[-1] != size:
        raise ValueError(f"the cells are prepared at {data.images.shape[-1]} px but the "
                         f"checkpoint works at {size} px")
    index = np.array([names.index(n) for n in data.class_names])
    labels = torch.from_numpy(index[np.asarray(data.labels)])
    dev = resolve_device(device)
    disc = load_discriminator(ckpt, dev)
    images = torch.from_numpy(np.asarray(data.images, np.float32)).unsqueeze(1).to(dev)
    probe, info = fit_pattern_probe(disc, images, labels, len(names))
    path = with_module(ckpt, "probe", probe.cpu(), metadata={"probe": info},
                       destination=destination)
    return path, info


__all__ = ["PROBE_WEIGHT_DECAY", "PatternProbe", "ProbedDiscriminator", "fit_pattern_probe",
           "pooled_features", "probe_checkpoint", "probe_from_hparams"]
