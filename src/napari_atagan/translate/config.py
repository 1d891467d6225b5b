"""The one description of an attention-guided translation run.

A :class:`TranslateConfig` is saved inside every translation checkpoint (as
JSON, under the model family ``"translate"``) and is what a resumed run and
:func:`napari_atagan.translate.translate_image` read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._config import RunConfig, check_device

GREY_LEVELS = ("shared", "own", "target")
"""How crops and images are brought to model units: see :attr:`TranslateConfig.grey_levels`."""
MIN_IMAGE_SIZE = 16

RUNTIME_FIELDS = ("steps", "device", "checkpoint_every", "log_every", "sample_every")
"""Fields a resumed run takes from its new config: how long and where it runs and
how often it reports, not what it learns."""


@dataclass
class TranslateConfig(RunConfig):
    """Hyper-parameters of one translation run between two domains A and B
    (all plain JSON types).

    The networks (Mejjati et al., NeurIPS 2018): generators ``F_ab``/``F_ba``,
    attention networks ``A_a``/``A_b`` and PatchGAN discriminators ``D_a``/``D_b``;
    a cell ``x`` of A becomes ``A_a(x) * F_ab(x) + (1 - A_a(x)) * x``.
    """

    FAMILY: ClassVar[str] = "translate"
    KIND: ClassVar[str] = "translation"
    """Model family written into checkpoints (see :data:`napari_atagan.checkpoint.FAMILIES`)."""

    # --- data ---------------------------------------------------------------
    image_size: int = 64
    """Side of the square training crops (a multiple of 4, at least 16)."""
    grey_levels: str = "shared"
    """``"shared"``: one pair of grey levels for both domains (their pixels pooled), so
    brightness is part of what is translated, as dim -> bright needs. ``"own"``: every
    crop, and at apply time every image, is mapped by its own 0.5th/99.5th percentiles
    (as ATA-GAN's crops and slides are) and the output goes back through the same
    levels, so brightness is kept and only the stain's shape is translated: for a
    pattern pair, whose specimens differ in brightness (in I3A the training part's
    cells are about four times dimmer than the held-out ones). Measured on
    Homogeneous <-> Speckled (4,000 quick steps, UAG + masks, held-out cells, seeds 0
    and 1): called Homogeneous 0.70 / 0.71 against 0.22 with shared levels (real
    Homogeneous cells: 0.71), Speckled 0.53 / 0.60 against 0.65 (real Speckled cells:
    0.42), attention IoU 0.87-0.88 and 0.65 / 0.76 against 0.75 and 0.50
    (``docs/experiments.md``). A slide is mapped neighbourhood by neighbourhood
    (:func:`napari_atagan.translate.data.local_levels`). ``"target"``: trained as
    ``"own"``, but the translated pixels go back through the *target* domain's grey
    range (its crops' median 0.5th-99.5th percentile span, stored with the run) above
    the input's own low level, so a translated cell has the target domain's brightness
    whatever the input's, and what the networks learn is the look of the cells: for
    dim -> bright across specimens, where a translator on one shared scale moves a dim
    cell by the brightening it learnt and lands short on dimmer specimens than it saw.
    Kept pixels stay the input's; apply it with ``composite="hard"`` (a blend lets the
    attention's low background values through on the bright range, amplifying the
    background's noise). Measured on held-out dim Homogeneous specimens (4,000 quick
    steps, UAG + masks, hard composite, seeds 0 and 1): median contrast 4.7 -> 35.0 /
    34.6 grey levels against the bright training cells' 31.1 (one shared scale: 26.8 /
    29.2), background away from the cells 0.011 / 0.007; a model-free stretch of the
    classic pipeline's cell to the same range did as well (``docs/experiments.md``)."""

    @property
    def own_levels(self) -> bool:
        """Whether every crop (and image) is mapped by its own levels (``"own"`` and
        ``"target"``)."""
        return self.grey_levels in ("own", "target")

    # --- models -------------------------------------------------------------
    widths: tuple[int, ...] = (32, 64, 128)
    """Generator widths: the 7x7 stem, after the first and after the second
    stride-2 downsampling (the residual blocks run at the last width)."""
    n_res_blocks: int = 6
    generator_skip: bool = True
    """Generators predict a change of their input (close to the identity when untrained); see
    :class:`napari_atagan.translate.TranslationGenerator`."""
    attention_widths: tuple[int, ...] = (32, 64)
    """Attention network widths: after its first and its second downsampling."""
    d_widths: tuple[int, ...] = (64, 128, 256)
    """Discriminator widths, one per stride-2 4x4 convolution (PatchGAN)."""

    # --- the method -----------------------------------------------------------
    attention: bool = True
    """Attention-guided translation; ``False`` trains the same generators and
    discriminators as a plain CycleGAN (``x' = F(x)``), the baseline."""
    attention_threshold: float = 0.1
    """tau: once the attention is frozen, the discriminators see only pixels whose
    attention exceeds it (real and translated images times their thresholded map)."""
    attention_freeze_after: float = 0.3
    """Fraction of the steps after which the attention networks are frozen (the
    paper: 30 of 100 epochs); 1.0 never freezes them."""
    cycle_weight: float = 10.0
    """Weight of the L1 cycle-consistency loss (on the composed outputs); 10 is the paper's.
    The cycle asks for what one direction must remove (a nucleus's inner stain on the way
    to NuMem) to come back, and so holds the translation short. Measured at 3 on held-out
    I3A cells (quick networks, 4,000 steps, own levels, UAG + masks, hard composite, seeds 0
    and 1): called the target by the product's classifier Homogeneous -> NuMem 0.942 / 0.942
    against 0.687 / 0.416, Homogeneous -> Speckled 0.672 / 0.707 against 0.634 / 0.624,
    Speckled -> Homogeneous 0.711 / 0.812 against 0.547 / 0.680, NuMem -> Homogeneous
    0.365 / 0.620 against 0.391 / 0.465, the background as well kept; dim -> bright (target
    levels) level, 34.0 / 34.6 grey levels against 35.0 / 34.6 (``docs/experiments.md``).
    The default stays 10 until the full networks are measured with it."""
    cycle_sigma: float = 0.0
    """Gaussian sigma (pixels at the crop size) of a low-pass applied to both sides of the
    cycle loss; 0: the paper's loss on every pixel. With it, fine texture that one direction
    must remove (Speckled -> Homogeneous drops the speckles) need not come back through the
    cycle; the cell's shape and brightness still must. Measured at 2 pixels (64 px crops, 4,000
    quick steps, UAG + masks): both directions changed the cells less and were called the
    target less often (Homogeneous -> Speckled 0.29 against 0.65, back 0.19 against 0.22), so
    the default stays 0 (``docs/experiments.md``)."""
    mask_weight: float = 0.0
    """Weight of a mask teacher for the attention networks: where a domain's crops
    have cell masks, its attention is also pulled toward them (binary cross-entropy),
    as ATA-GAN's mask teacher guides its discriminator's attention. 0 (the paper's
    method): the attention learns from the adversarial and cycle losses alone."""
    aug_dihedral: bool = True
    """Random flips and quarter turns of the real crops (the symmetries of cells)."""

    # --- optimisation ----------------------------------------------------------
    lr: float = 2e-4
    betas: tuple[float, ...] = (0.5, 0.999)
    lr_decay_after: float = 0.5
    """Fraction of the steps after which the learning rate falls linearly to 0
    (as in CycleGAN); 1.0 keeps it constant."""
    batch_size: int = 8
    steps: int = 10000
    seed: int = 0

    # --- runtime ---------------------------------------------------------------
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: int = 10
    sample_every: int = 100

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes (e.g. the command that produced the run)."""

    def __post_init__(self) -> None:
        self.widths = _ints("widths", self.widths)
        self.attention_widths = _ints("attention_widths", self.attention_widths)
        self.d_widths = _ints("d_widths", self.d_widths)
        try:
            self.betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be two numbers, got {self.betas!r}") from None
        self.validate()

    @classmethod
    def quick(cls, **changes: Any) -> TranslateConfig:
        """A small model for a first run on a laptop CPU: 2,000 steps of 64 px crops
        (batch 2). Measured at about 4.3 steps/s on one core of a shared 2-core CPU
        (torch with one thread), so a run takes about 8-9 minutes with its
        checkpoints and previews."""
        base: dict[str, Any] = dict(
            image_size=64, widths=(16, 32, 64), n_res_blocks=2, attention_widths=(8, 16),
            d_widths=(16, 32, 64), batch_size=2, steps=2000, checkpoint_every=500,
            sample_every=100, log_every=10,
        )
        base.update(changes)
        return cls(**base)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        for name in ("attention", "aug_dihedral", "generator_skip"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("image_size", "n_res_blocks", "batch_size", "steps", "seed",
                     "checkpoint_every", "log_every", "sample_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        if self.image_size < MIN_IMAGE_SIZE or self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and at least "
                             f"{MIN_IMAGE_SIZE}, got {self.image_size}")
        if len(self.widths) != 3:
            raise ValueError(f"widths must be 3 numbers (stem, first and second downsampling), "
                             f"got {list(self.widths)}")
        if len(self.attention_widths) != 2:
            raise ValueError(f"attention_widths must be 2 numbers (first and second "
                             f"downsampling), got {list(self.attention_widths)}")
        if not 1 <= len(self.d_widths) <= 5:
            raise ValueError(f"d_widths must be 1 to 5 numbers, got {list(self.d_widths)}")
        patches = self.image_size // 2 ** len(self.d_widths)
        if patches < 3:
            raise ValueError(
                f"image_size {self.image_size} is too small for {len(self.d_widths)} "
                f"discriminator blocks (d_widths): it needs image_size >= "
                f"{3 * 2 ** len(self.d_widths)}, or fewer d_widths")
        for name in ("n_res_blocks", "batch_size", "steps", "checkpoint_every", "log_every",
                     "sample_every"):
            low = 0 if name == "n_res_blocks" else 1
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.attention_threshold < 1:
            raise ValueError(f"attention_threshold must be in [0, 1), got "
                             f"{self.attention_threshold}")
        if not 0 < self.attention_freeze_after <= 1:
            raise ValueError(f"attention_freeze_after must be in (0, 1] (a fraction of the "
                             f"steps), got {self.attention_freeze_after}")
        if not 0 <= self.lr_decay_after <= 1:
            raise ValueError(f"lr_decay_after must be in [0, 1] (a fraction of the steps), "
                             f"got {self.lr_decay_after}")
        if self.cycle_weight < 0:
            raise ValueError(f"cycle_weight must be >= 0, got {self.cycle_weight}")
        if not self.cycle_sigma >= 0:
            raise ValueError(f"cycle_sigma must be >= 0 pixels, got {self.cycle_sigma}")
        if math.ceil(3 * self.cycle_sigma) >= self.image_size:  # the blur reflects at the edge
            raise ValueError(f"cycle_sigma {self.cycle_sigma} blurs {math.ceil(3 * self.cycle_sigma)} "
                             f"pixels each way, as far as the {self.image_size}-pixel crop or "
                             f"farther: use less than {self.image_size / 3:g}")
        if not self.mask_weight >= 0:
            raise ValueError(f"mask_weight must be >= 0, got {self.mask_weight}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.grey_levels not in GREY_LEVELS:
            raise ValueError(f"grey_levels must be one of {', '.join(GREY_LEVELS)}, got "
                             f"{self.grey_levels!r}")
        check_device(self.device)
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict, got {type(self.extra).__name__}")

    @property
    def freeze_step(self) -> int | None:
        """The step after which the attention networks are frozen (``None``: never)."""
        if not self.attention or self.attention_freeze_after >= 1:
            return None
        return max(1, round(self.attention_freeze_after * self.steps))


def _ints(name: str, values: Any) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a list of whole numbers, got {values!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in out):
        raise ValueError(f"{name} must be whole numbers >= 1, got {list(out)}")
    return out
