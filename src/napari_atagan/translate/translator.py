"""A trained translator: its checkpoint opened, its networks rebuilt on demand."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint, load_module_state
from .config import TranslateConfig
from .data import Levels
from .models import AttentionNetwork, TranslationGenerator

__all__ = ["DIRECTIONS", "Translator", "load_translator"]

FAMILY = TranslateConfig.FAMILY
DIRECTIONS = ("a2b", "b2a")
CELL_FRACTION = 0.7
"""Cell diameter / crop side assumed where a checkpoint records no diameter."""


def check_direction(direction: Any) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'a2b' (domain A to B) or 'b2a' (B to A), "
                         f"got {direction!r}")
    return direction


@dataclass
class Translator:
    """A translation checkpoint, ready to translate in either direction.

    ``direction`` is ``"a2b"`` (uses ``F_ab`` and ``A_a``) or ``"b2a"``
    (``F_ba``, ``A_b``). Networks are built once per direction and device and
    come in eval mode, normalising with their standing statistics.
    """

    checkpoint: Checkpoint
    _cache: dict[tuple[str, str], tuple[nn.Module, nn.Module | None]] = field(
        default_factory=dict, repr=False, compare=False)

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def config(self) -> TranslateConfig:
        return self.checkpoint.config

    @property
    def step(self) -> int:
        return self.checkpoint.step

    @property
    def attention(self) -> bool:
        """Whether the model is attention-guided (``False``: a plain CycleGAN)."""
        return bool(self.config.attention)

    @property
    def default_composite(self) -> str:
        """How this model's translations meet their image unless told otherwise:
        ``"hard"`` for an attention model of ``grey_levels="target"`` (a blend would let
        the attention's low background values through on the target's brighter range:
        0.042 of the grey range changed away from the cells on held-out I3A specimens,
        against 0.007-0.011 cut at 0.5), else ``"soft"``, the paper's blend."""
        return "hard" if self.attention and self.config.grey_levels == "target" else "soft"

    @property
    def levels(self) -> Levels:
        """The grey levels both domains were mapped with (lo -> -1, hi -> +1)."""
        try:
            return Levels.from_dict(self.checkpoint.metadata.get("levels"))
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {str(self.path)!r}: has no valid intensity "
                                  f"levels: {exc}") from exc

    @property
    def domains(self) -> dict[str, dict[str, Any]]:
        """Facts about the training domains, under ``"a"`` and ``"b"`` (name,
        folder, n_cells, dtype, has_masks, cell_diameter, model_cell_diameter, ...)."""
        return dict(self.checkpoint.metadata.get("domains") or {})

    def domain_name(self, domain: str) -> str:
        return str((self.domains.get(domain) or {}).get("name") or domain.upper())

    def cell_diameter(self, domain: str) -> float | None:
        """Median cell diameter of a training domain's crops, in their source pixels."""
        value = (self.domains.get(domain) or {}).get("cell_diameter")
        return float(value) if _positive(value) else None

    def own_span(self, domain: str) -> float:
        """Median grey range of a training domain's crops, each on its own levels (what a
        ``grey_levels="target"`` run gives the cells it translates into ``domain``)."""
        value = (self.domains.get(domain) or {}).get("own_span")
        if not _positive(value):
            raise CheckpointError(f"checkpoint {str(self.path)!r}: has no grey range for "
                                  f"domain {domain.upper()}, which grey_levels 'target' needs")
        return float(value)

    def model_cell_diameter(self, domain: str) -> float:
        """Median cell diameter of a training domain at model scale (pixels)."""
        value = (self.domains.get(domain) or {}).get("model_cell_diameter")
        if _positive(value):
            return float(value)
        return CELL_FRACTION * self.config.image_size

    def networks(self, direction: str = "a2b", device: str | torch.device = "cpu"
                 ) -> tuple[nn.Module, nn.Module | None]:
        """``(generator, attention network or None)`` of ``direction``, in eval mode."""
        check_direction(direction)
        key = (direction, str(device))
        if key not in self._cache:
            source = direction[0]
            generator = self._module(f"F_{direction[0]}{direction[2]}", TranslationGenerator,
                                     {"widths": self.config.widths,
                                      "n_res_blocks": self.config.n_res_blocks,
                                      "skip": self.config.generator_skip})
            attention = None
            if self.attention:
                attention = self._module(f"A_{source}", AttentionNetwork,
                                         {"widths": self.config.attention_widths})
                attention.to(device).eval().requires_grad_(False)
            generator.to(device).eval().requires_grad_(False)
            self._cache[key] = (generator, attention)
        return self._cache[key]

    def _module(self, name: str, cls: type, fallback: dict[str, Any]) -> nn.Module:
        ckpt = self.checkpoint
        if not ckpt.has(name):
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: contains no {name} weights")
        record = (ckpt.metadata.get("modules") or {}).get(name) or {}
        hparams = record.get("hparams") if isinstance(record.get("hparams"), dict) else fallback
        try:
            module = cls(**hparams)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r}: cannot rebuild {name} "
                                  f"from its stored architecture: {exc}") from exc
        load_module_state(module, ckpt.state_dict(name), what=name, path=ckpt.path)
        return module


def load_translator(checkpoint: str | os.PathLike | Checkpoint | Translator) -> Translator:
    """Open a translation checkpoint (a path, a loaded checkpoint or a translator).

    Raises :class:`~napari_atagan.checkpoint.CheckpointError` naming the file when
    it is missing, damaged, or of another model family (an ATA-GAN checkpoint).
    """
    if isinstance(checkpoint, Translator):
        return checkpoint
    if isinstance(checkpoint, Checkpoint):
        if checkpoint.family != FAMILY:
            raise CheckpointError(
                f"checkpoint {str(checkpoint.path)!r}: is an ATA-GAN checkpoint, not an "
                "attention-guided translation checkpoint: train one with "
                "napari_atagan.translate.train_translation")
        ckpt = checkpoint
    else:
        ckpt = load_checkpoint(checkpoint, family=FAMILY)
    translator = Translator(ckpt)
    translator.levels  # noqa: B018 - refuse a file without levels now, not at first use
    return translator


def _positive(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)
