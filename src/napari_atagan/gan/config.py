"""The one description of a training run.

A :class:`TrainConfig` is saved inside every checkpoint (as JSON) and is what
``train --resume``, synthesis, slide attention and every widget read back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._config import RunConfig, check_device

TEACHERS = ("classifier", "mask", "none")
CONDITIONINGS = ("projection", "auxiliary")
G_PADDINGS = ("zeros", "reflect")
G_UPSAMPLES = ("nearest", "bilinear")
ARCHS = ("dcgan", "resnet")


SAVED_BEFORE_OPTION: dict[str, Any] = {"classifier_jitter": False}
"""Options whose default changed when they were added, with the value a run saved
before them was trained with: :meth:`TrainConfig.from_dict` reads a saved config that
lacks one as that value, not as today's default."""


@dataclass
class TrainConfig(RunConfig):
    """Hyper-parameters of one ATA-GAN training run (all plain JSON types)."""

    KIND: ClassVar[str] = "training"
    SAVED_BEFORE: ClassVar[dict[str, Any]] = SAVED_BEFORE_OPTION

    # --- data ---------------------------------------------------------------
    image_size: int = 64
    """Side of the square crops the models see (64 default; 128 supported)."""

    # --- models -------------------------------------------------------------
    arch: str = "dcgan"
    """Network family: ``dcgan`` (the paper's plain conv stacks) or ``resnet``
    (residual up-blocks in G; residual down-blocks without normalisation in D, which
    keeps the same global pooling, realness unit and CAM). Widths, padding and
    spectral normalisation mean the same for both."""
    z_dim: int = 100
    g_channels: tuple[int, ...] = (256, 128, 64, 32)
    """Generator widths after the 4x4 seed, one per nearest-x2 upsampling block."""
    d_channels: tuple[int, ...] = (32, 64, 128, 256)
    """Discriminator widths, one per stride-2 block; the last block feeds the CAM."""
    g_padding: str = "zeros"
    """How the generator's 3x3 convolutions pad the edge: ``zeros`` or ``reflect``."""
    g_upsample: str = "nearest"
    """How each generator block doubles its size before the 3x3 conv: ``nearest``
    (the paper's) or ``bilinear``. Nearest copies leave mirror images of the
    features' spectrum near the finest frequencies (a feature at 0.1 cycles per
    pixel also appears at 0.4), which the conv must learn to cancel; bilinear
    interpolation damps them (the anti-aliasing of StyleGAN2/3)."""
    g_noise: bool = False
    """Per-pixel noise inputs in every generator block, one learned strength per
    channel (StyleGAN), and white noise of one learned strength on the image
    itself (a camera's noise): fine random texture can then come from noise
    rather than from a fixed pattern of the weights."""
    spectral_norm: bool = False

    # --- attention transfer ---------------------------------------------------
    teacher: str = "mask"
    """``classifier`` (pattern CNN soft-CAM), ``mask`` (smoothed cell mask) or ``none``."""
    beta: float = 1.0
    """Weight of the attention-transfer loss; forced to 0 for teacher ``none``."""
    mask_sigma: float = 2.0
    """Gaussian smoothing (pixels at model scale) of masks used as attention targets."""
    classifier_epochs: int = 8
    teacher_from: str = ""
    """A checkpoint whose classifier teacher this run takes instead of training its own
    (teacher ``classifier``; the patterns and crop size must be the same). Training the
    teacher is the longest part of a short run on a CPU; a lab trains it once and
    reuses it. The teacher is saved in the new checkpoint too."""
    classifier_jitter: bool = True
    """Train the classifier teacher on crops recorded anew (random gamma, defocus,
    camera noise: :func:`~napari_atagan.gan.augment.acquisition_jitter`); it names more
    cells of other specimens right (``docs/experiments.md``, *The teacher on other
    specimens*). Runs saved before the option read ``False``, as they were trained."""
    conditioning: str = "projection"
    """How D learns the patterns: ``projection`` (its pattern head is added to the
    realness of a cell's own pattern) or ``auxiliary`` (AC-GAN: a pattern loss)."""
    pattern_weight_g: float = 1.0
    """Weight of the pattern loss on generated cells (``auxiliary`` only)."""
    pattern_guidance: float = 0.0
    """Weight of the frozen classifier teacher's cross-entropy on the generator's cells
    against the pattern each was drawn for (teacher ``classifier`` only; 0 turns it
    off). The generator is then also taught to draw cells that a classifier trained
    on the real cells names right (a quarter of each step's cells, each in a random
    dihedral view), while D keeps them real-looking. At CPU scale it lowered TSTR on
    both seeds tried (``docs/experiments.md``, *A teacher that guides the generator*): the
    generator learned to satisfy the teacher, not to draw the pattern."""

    # --- augmentation (on the training device) --------------------------------
    aug_dihedral: bool = True
    aug_translate: float = 16.0
    """Largest shift, in pixels at model scale, of a real cell seen by the transfer loss."""
    aug_zoom_min: float = 0.6
    """Smallest zoom factor (< 1 zooms out) of a real cell seen by the transfer loss."""
    aug_intensity: float = 0.1
    """Mild multiplicative/additive intensity jitter."""
    aug_p: float = 1.0
    """Probability that a real cell in the transfer batch gets translation/zoom."""
    ada_target: float = 0.0
    """Adaptive augmentation (as in StyleGAN2-ADA); 0 turns it off. When on, every
    cell the adversarial loss shows D, real and generated alike, is also moved and
    zoomed (``aug_translate``, ``aug_zoom_min``) with a probability ``p`` that starts
    at 0 and follows D's overconfidence: ``r = E[sign(D(real))]`` over ``ada_interval``
    steps raises ``p`` when above this target (0.6 is the usual choice) and lowers it
    otherwise. Augmenting real and generated cells alike is what keeps the moves out
    of the generator's cells (StyleGAN2-ADA found such transforms leak-free below a
    probability of about 0.8). The transfer batch keeps ``aug_p``."""
    ada_interval: int = 4
    """Steps between two adjustments of the adaptive probability."""
    ada_kimg: float = 100.0
    """Thousands of real images after which a steadily overconfident D has taken the
    adaptive probability from 0 to 1 (sets the speed of the adjustment)."""

    # --- optimisation ----------------------------------------------------------
    steps: int = 4000
    batch_size: int = 128
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    r1_gamma: float = 0.0
    """R1 penalty ``gamma / 2 * |grad_x D(x)|^2`` on real cells (the realness logit as
    D sees it, computed in float32 outside autocast); 0 turns it off. A penalty on
    turns ``cuda_graph`` off: its second backward pass, on some steps only, does
    not fit a captured step."""
    r2_gamma: float = 0.0
    """The same penalty on generated cells (R2); 0 turns it off."""
    penalty_every: int = 1
    """Apply R1/R2 every this many steps only (lazy regularisation), scaled by it so
    the average strength is that of ``r1_gamma`` / ``r2_gamma`` every step."""
    ema_decay: float = 0.999
    seed: int = 0

    # --- runtime ---------------------------------------------------------------
    device: str = "auto"
    amp: bool = True
    """bf16 autocast and channels_last on CUDA (ignored on CPU)."""
    compile: bool = False
    cuda_graph: bool = True
    """Capture the whole training step once as a CUDA graph and replay it: one launch
    per step instead of hundreds (CUDA only, ignored elsewhere; ``compile`` replaces it)."""
    checkpoint_every: int = 500
    sample_every: int = 100
    log_every: int = 10

    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes (e.g. the command that produced the run)."""

    def __post_init__(self) -> None:
        self.g_channels = tuple(int(c) for c in self.g_channels)
        self.d_channels = tuple(int(c) for c in self.d_channels)
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {self.teacher!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(
                f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}"
            )
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.g_padding not in G_PADDINGS:
            raise ValueError(f"g_padding must be one of {G_PADDINGS}, got {self.g_padding!r}")
        if self.g_upsample not in G_UPSAMPLES:
            raise ValueError(
                f"g_upsample must be one of {G_UPSAMPLES}, got {self.g_upsample!r}")
        check_device(self.device)
        if self.image_size < 16 or self.image_size % 16:
            raise ValueError(
                f"image_size must be a multiple of 16 and at least 16, got {self.image_size}"
            )
        if self.image_size != 4 * 2 ** len(self.g_channels):
            raise ValueError(
                f"image_size {self.image_size} needs {_log2(self.image_size // 4)} generator "
                f"blocks (g_channels), got {len(self.g_channels)}"
            )
        for name in ("steps", "batch_size", "z_dim", "penalty_every", "ada_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.aug_zoom_min <= 1:
            raise ValueError(f"aug_zoom_min must be in (0, 1], got {self.aug_zoom_min}")
        if not 0 <= self.aug_p <= 1:
            raise ValueError(f"aug_p must be in [0, 1], got {self.aug_p}")
        for name in ("r1_gamma", "r2_gamma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        if not 0 <= self.ada_target < 1:
            raise ValueError(
                f"ada_target must be in [0, 1) (0 turns adaptive augmentation off, 0.6 is "
                f"usual), got {self.ada_target}")
        if not self.ada_kimg > 0:
            raise ValueError(f"ada_kimg must be > 0, got {self.ada_kimg}")
        if self.ada_target > 0 and self.aug_translate <= 0 and self.aug_zoom_min >= 1:
            raise ValueError(
                "ada_target > 0 adapts how often cells are moved and zoomed, but "
                "aug_translate is 0 and aug_zoom_min is 1: allow a shift or a zoom-out")
        if self.teacher_from and self.teacher != "classifier":
            raise ValueError(
                f"teacher_from reuses a classifier teacher: it needs teacher 'classifier', "
                f"got teacher {self.teacher!r}")
        if not self.pattern_guidance >= 0:
            raise ValueError(
                f"pattern_guidance must be >= 0 (0 turns it off), got {self.pattern_guidance}")
        if self.pattern_guidance > 0 and self.teacher != "classifier":
            raise ValueError(
                "pattern_guidance needs the classifier teacher (teacher 'classifier'): it is "
                f"the teacher that names the generated cells' patterns, got teacher "
                f"{self.teacher!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @property
    def effective_beta(self) -> float:
        return 0.0 if self.teacher == "none" else float(self.beta)

    @property
    def penalized(self) -> bool:
        """Whether an R1 or R2 gradient penalty is on."""
        return self.r1_gamma > 0 or self.r2_gamma > 0

    @property
    def adaptive(self) -> bool:
        """Whether adaptive augmentation (ADA) is on."""
        return self.ada_target > 0




def quick_model_changes() -> dict:
    """The quick preset's networks (the command line's ``--quick``, the Train widget's small model):
    narrow widths, and a generator that pads by mirroring (with zero padding its
    cells carry a frame along the crop's edge; ``docs/experiments.md``,
    *Generator padding*)."""
    return dict(g_channels=(128, 64, 32, 16), d_channels=(16, 32, 64, 128), g_padding="reflect")


def quick_config_changes() -> dict:
    """Smaller networks and batches that give cell-like samples in minutes on a CPU."""
    return dict(quick_model_changes(), batch_size=32, steps=1500, checkpoint_every=250,
                sample_every=250)


def generator_channels(image_size: int, widths: tuple[int, ...] = (256, 128, 64, 32)
                       ) -> tuple[int, ...]:
    """Generator widths for ``image_size``: one block per doubling from 4x4.

    Extra blocks for larger sizes halve the last width (down to 8); smaller
    sizes drop the widest blocks.
    """
    n = _log2(image_size // 4)
    out = list(widths)
    while len(out) < n:
        out.append(max(out[-1] // 2, 8))
    return tuple(out[len(out) - n:])


def _log2(n: int) -> int:
    return max(n.bit_length() - 1, 0)
