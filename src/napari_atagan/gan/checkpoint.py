"""ATA-GAN networks rebuilt from a checkpoint: generator, discriminator, pattern model.

:class:`napari_atagan.checkpoint.Checkpoint` reads any family's file; its
``generator()``, ``discriminator()`` and ``pattern_model()`` call these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoint import GENERATOR_STATISTICS, Checkpoint, checkpoint_error, load_module_state
from .models import (
    Discriminator,
    Generator,
    discriminator_from_hparams,
    generator_from_hparams,
    standing_statistics,
)
from .probe import PatternProbe, ProbedDiscriminator, probe_from_hparams

__all__ = ["PROBE_SOURCE", "load_classifier_run", "load_discriminator", "load_generator",
           "load_pattern_model", "load_probe", "load_teacher", "open_classifier_run"]


def load_generator(ckpt: Checkpoint, device: str | torch.device = "cpu", ema: bool = True
                   ) -> Generator:
    """The generator in eval mode: the moving average ``G_ema`` when stored
    (and ``ema`` is true), else the raw ``G``. A ``G_ema`` saved without
    standing statistics gets them here. The stored ``arch`` picks the class
    (``dcgan`` for files that name none)."""
    name = "G_ema" if ema and ckpt.has("G_ema") else "G"
    if not ckpt.has(name):
        raise checkpoint_error(ckpt.path, "contains no generator weights (no 'G.' tensors)")
    hparams = ckpt.hparams(name) or {
        "arch": getattr(ckpt.config, "arch", "dcgan"),
        "z_dim": ckpt.config.z_dim,
        "channels": ckpt.config.g_channels,
        "image_size": ckpt.config.image_size,
        "n_classes": len(ckpt.class_names),
        "padding": ckpt.config.g_padding,
    }
    model = _build(ckpt, generator_from_hparams, hparams, name)
    load_module_state(model, ckpt.state_dict(name), what=f"generator ({name})", path=ckpt.path)
    model.to(device).eval()
    if name == "G_ema" and ckpt.metadata.get("generator_statistics") != GENERATOR_STATISTICS:
        if ckpt._standing is None:  # computed once per loaded checkpoint
            standing_statistics(model)
            ckpt._standing = {k: v.detach().to("cpu", copy=True)
                              for k, v in model.named_buffers()}
        else:
            for key, value in model.named_buffers():
                value.copy_(ckpt._standing[key])
    return model


def load_discriminator(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Discriminator:
    """The discriminator in eval mode."""
    if not ckpt.has("D"):
        raise checkpoint_error(ckpt.path, "contains no discriminator weights (no 'D.' tensors)")
    hparams = ckpt.hparams("D") or {
        "arch": getattr(ckpt.config, "arch", "dcgan"),
        "channels": ckpt.config.d_channels,
        "image_size": ckpt.config.image_size,
        "n_classes": len(ckpt.class_names),
        "spectral_norm": ckpt.config.spectral_norm,
    }
    model = _build(ckpt, discriminator_from_hparams, hparams, "D")
    load_module_state(model, ckpt.state_dict("D"), what="discriminator (D)", path=ckpt.path)
    return model.to(device).eval()


def load_pattern_model(ckpt: Checkpoint, device: str | torch.device = "cpu"
                       ) -> tuple[nn.Module, str] | None:
    """What names a cell's pattern: ``(model, source)``, or ``None`` without patterns.

    The pattern classifier the run trained as its teacher, when the file keeps
    it (``source = "classifier teacher"``); else the linear probe on the
    discriminator's features (``"discriminator features, linear probe"``,
    :mod:`napari_atagan.gan.probe`), when the file keeps one; else the
    discriminator's pattern head (``"discriminator projection head"``, or
    ``"discriminator auxiliary head"`` for AC-GAN conditioning). Each maps a batch of
    prepared crops ``(B, 1, S, S)`` in [-1, 1] to class logits ``(B, K)``, in
    the order of the checkpoint's ``class_names``.
    """
    names = ckpt.class_names
    if len(names) < 2:
        return None
    teacher = load_teacher(ckpt, device)
    if teacher is not None:
        return teacher, "classifier teacher"
    disc = load_discriminator(ckpt, device)
    probe = load_probe(ckpt, device)
    if probe is not None and probe.n_classes == len(names):
        return ProbedDiscriminator(disc, probe).eval(), PROBE_SOURCE
    if disc.classifier is None or disc.n_classes != len(names):
        return None
    conditioning = getattr(ckpt.config, "conditioning", "projection")
    return _PatternHead(disc).eval(), f"discriminator {conditioning} head"


PROBE_SOURCE = "discriminator features, linear probe"
"""How :func:`load_pattern_model` names a probe (in cell tables and summaries)."""


def load_probe(ckpt: Checkpoint, device: str | torch.device = "cpu") -> PatternProbe | None:
    """The linear probe on the discriminator's features, in eval mode, or ``None``
    when the file keeps none (:mod:`napari_atagan.gan.probe`)."""
    if not ckpt.has("probe"):
        return None
    hparams = ckpt.hparams("probe")
    if hparams is None:
        raise checkpoint_error(ckpt.path, "keeps a pattern probe without its stored size")
    model = _build(ckpt, probe_from_hparams, hparams, "probe")
    load_module_state(model, ckpt.state_dict("probe"), what="pattern probe", path=ckpt.path)
    return model.to(device).eval()


def load_teacher(ckpt: Checkpoint, device: str | torch.device = "cpu") -> nn.Module | None:
    """The pattern classifier the run trained as its teacher, in eval mode, or ``None``
    when the file keeps none (a mask teacher, or no teacher). Its stored
    hyper-parameters rebuild it; a file saved before it had any holds the network
    with an unpooled stem, its patterns counted by its last layer."""
    if not ckpt.has("teacher"):
        return None
    from .attention import classifier_from_hparams

    state = ckpt.state_dict("teacher")
    hparams = ckpt.hparams("teacher")
    if hparams is None:
        fc = state.get("net.fc.weight")
        n_classes = int(fc.shape[0]) if fc is not None else len(ckpt.class_names)
        hparams = {"n_classes": n_classes, "stem_pool": 1}
    model = _build(ckpt, classifier_from_hparams, hparams, "teacher")
    load_module_state(model, state, what="teacher", path=ckpt.path)
    return model.to(device).eval()


def load_classifier_run(path: Any, device: str | torch.device = "cpu"
                        ) -> tuple[Checkpoint, nn.Module]:
    """A run that keeps a pattern classifier (trained with teacher ``classifier``): its
    checkpoint and the classifier in eval mode. What reuses another run's classifier
    (``train --set teacher_from``, ``attention --patterns-from``) opens it here; a file
    that keeps none gets a ValueError naming it (a missing or corrupt one, a
    :class:`~napari_atagan.checkpoint.CheckpointError`)."""
    ckpt = open_classifier_run(path)
    return ckpt, load_teacher(ckpt, device)


def open_classifier_run(path: Any) -> Checkpoint:
    """:func:`load_classifier_run` without building the classifier: the checkpoint, once
    it is known to keep one (for a caller that builds it where it is used, e.g.
    :meth:`~napari_atagan.checkpoint.Checkpoint.pattern_model`)."""
    from ..checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if len(ckpt.class_names) < 2 or not ckpt.has("teacher"):
        teacher = getattr(ckpt.config, "teacher", None)
        raise ValueError(f"{ckpt.path.name} holds no classifier teacher, so it cannot name "
                         "patterns" + (f" (it was trained with teacher {teacher!r})"
                                       if teacher else "")
                         + ": choose a run trained with --teacher classifier on cells "
                         "sorted by pattern")
    return ckpt


def _build(ckpt: Checkpoint, build: Callable[[dict], nn.Module], hparams: dict,
           name: str) -> nn.Module:
    """``build(hparams)``; a file whose stored architecture this version cannot
    build (e.g. an ``arch`` it does not know) gets an error naming the file."""
    try:
        return build(hparams)
    except (TypeError, ValueError) as exc:
        problem = f"cannot rebuild {name} from its stored architecture: {exc}"
        raise checkpoint_error(ckpt.path, problem) from exc


class _PatternHead(nn.Module):
    """A discriminator seen as a pattern classifier: crops in, class logits out."""

    def __init__(self, discriminator: Discriminator) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, class_logits, _ = self.discriminator(x)
        return class_logits
