"""The two ATA-GAN networks: a DCGAN-style generator and a CAM-ready discriminator.

Generator ``G``
    noise ``z`` (and, for a pattern-conditional model, the staining-pattern label)
    -> a 4x4 seed -> repeated (nearest x2 upsample, 3x3 conv, BatchNorm, ReLU)
    -> 3x3 conv to one channel -> ``tanh``.  Output: one-channel images in [-1, 1].

Discriminator ``D``
    3x3 convolutions (LeakyReLU 0.2, BatchNorm or spectral normalisation), every
    block but the last halving the resolution.  The last convolution has no
    activation; its output ``A`` (the *features*) is averaged over space (global
    average pooling) and fed to one linear *realness* unit.  Because of that, the
    realness weights ``w`` turn ``A`` into a class activation map (CAM),
    ``cam = sum_k w_k A_k``, and the *soft-CAM* of ATA-GAN is
    ``sigmoid(logit) * cam``: regions that look like a real cell light up, and a
    window of pure background gets a small map because its realness is low.

    Everything up to the pooling is convolutional, so :meth:`Discriminator.features`
    runs on a whole slide at once (any size that is a multiple of ``D.stride``).

``arch="resnet"`` (:class:`ResNetGenerator`, :class:`ResNetDiscriminator`) swaps
both stacks for residual blocks (BigGAN / R3GAN style) and keeps every interface:
same inputs and outputs, same stride, and D keeps its pooling, realness unit and
CAM, so the soft-CAM, the attention transfer and slide attention work unchanged.

A pattern-conditional model (``n_classes > 0``) feeds the label to ``G`` through
class-conditional BatchNorm gains/biases in every block, so the label reaches
every resolution while ``z`` alone sets the seed.  ``D`` gets an
auxiliary pattern classifier on the same pooled features (AC-GAN); the realness
unit, and therefore the CAM, stays class-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .config import G_PADDINGS, G_UPSAMPLES, TrainConfig

__all__ = [
    "AvgPool2x2",
    "ClassBatchNorm2d",
    "DISCRIMINATORS",
    "Discriminator",
    "GENERATORS",
    "Generator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "build_models",
    "count_parameters",
    "dense_discriminator",
    "describe_models",
    "discriminator_from_hparams",
    "generator_from_hparams",
    "init_weights",
    "recompute_batchnorm",
    "standing_statistics",
]

LEAKY_SLOPE = 0.2
MIN_INPUT_SIZE = 16
STANDING_SAMPLES = 256
"""Generated images whose batch statistics become the averaged generator's: one
batch, cheap enough for every training preview (0.6 s for the quick generator on
2 CPU cores). 8,192 change a full-scale model's images by 0.008 on average (range
2); the copied statistics were 0.052 away."""


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


class ClassBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are chosen by the class label.

    With ``n_classes == 0`` it is an ordinary :class:`torch.nn.BatchNorm2d`.
    Otherwise the normalisation itself has no parameters and each class owns one
    row of ``gain`` and ``bias`` (shape ``(n_classes, channels)``).
    """

    def __init__(self, channels: int, n_classes: int = 0) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.bn = nn.BatchNorm2d(channels, affine=n_classes == 0)
        if n_classes > 0:
            self.gain = nn.Parameter(torch.ones(n_classes, channels))
            self.bias = nn.Parameter(torch.zeros(n_classes, channels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.bn(x)
        if self.n_classes == 0:
            return x
        gain = self.gain[labels].to(x.dtype)[:, :, None, None]
        bias = self.bias[labels].to(x.dtype)[:, :, None, None]
        return x * gain + bias


def _conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = True,
             padding: str = "zeros") -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=bias,
                     padding_mode=padding)


def init_weights(module: nn.Module) -> None:
    """DCGAN-style initialisation, for use with ``model.apply(init_weights)``.

    Convolutions and linear layers: weights ~ N(0, 0.02), biases 0.
    BatchNorm (and class-conditional BatchNorm) gains ~ N(1, 0.02), biases 0.
    Spectrally normalised layers are initialised through their original weight.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        weight = _raw_weight(module)
        nn.init.normal_(weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ClassBatchNorm2d) and module.n_classes > 0:
        nn.init.normal_(module.gain, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _raw_weight(module: nn.Module) -> torch.Tensor:
    """The trainable weight tensor, also under a spectral-norm parametrisation."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _log2_exact(n: int) -> int | None:
    """``log2(n)`` when ``n`` is a positive power of two, else ``None``."""
    if n < 1 or n & (n - 1):
        return None
    return n.bit_length() - 1


# ---------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------


def _pixel_noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of shape ``(B, 1, H, W)`` for features ``x``, drawn
    from ``generator`` (on its own device, then moved) or the global state."""
    shape = (x.shape[0], 1, *x.shape[-2:])
    if generator is None:
        return torch.randn(shape, device=x.device, dtype=x.dtype)
    noise = torch.randn(shape, device=generator.device, generator=generator)
    return noise.to(device=x.device, dtype=x.dtype)


class _NoiseInput(nn.Module):
    """Adds per-pixel noise, one learned strength per channel (StyleGAN's noise
    inputs). The strengths start at 0, so a new model begins without noise."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return x + self.strength.to(x.dtype) * _pixel_noise(x, generator)


def _upsample2(x: torch.Tensor, mode: str) -> torch.Tensor:
    """``x`` at twice its size, by nearest copies or bilinear interpolation."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class _UpBlock(nn.Module):
    """x2 upsample, 3x3 conv, (class-)BatchNorm, [per-pixel noise], ReLU."""

    def __init__(self, c_in: int, c_out: int, n_classes: int, padding: str = "zeros",
                 noise: bool = False, upsample: str = "nearest") -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = _conv3x3(c_in, c_out, bias=False, padding=padding)
        self.norm = ClassBatchNorm2d(c_out, n_classes)
        self.noise = _NoiseInput(c_out) if noise else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.norm(self.conv(_upsample2(x, self.upsample)), labels)
        if self.noise is not None:
            x = self.noise(x, generator)
        return F.relu(x)


class Generator(nn.Module):
    """Maps noise ``z`` (and optionally a pattern label) to a one-channel image.

    Parameters
    ----------
    z_dim:
        Length of the noise vector.
    channels:
        Width of the 4x4 seed (the first entry) and of each upsampling block;
        ``len(channels)`` must equal ``log2(image_size / 4)`` (4 for 64x64).
    image_size:
        Side of the square output images.
    n_classes:
        Number of staining patterns to condition on; 0 for an unconditional model.
    padding:
        How the 3x3 convolutions pad the image's edge: ``"zeros"`` or
        ``"reflect"`` (mirrored pixels, so the edge of a crop looks like its
        inside and no frame is drawn along it).
    noise:
        Per-pixel noise inputs in every block (StyleGAN) and on the image itself
        (as a camera adds it), each with learned strengths: fine random detail
        comes from noise instead of from a fixed pattern of the weights.
        Each call draws new noise, from the ``generator`` passed to
        :meth:`forward` (reproducible) or else from the global random state.
    upsample:
        How each block doubles the size: ``"nearest"`` or ``"bilinear"``.
    """

    def __init__(
        self,
        z_dim: int = 100,
        channels: tuple[int, ...] = (256, 128, 64, 32),
        image_size: int = 64,
        n_classes: int = 0,
        padding: str = "zeros",
        noise: bool = False,
        upsample: str = "nearest",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        _check_generator_args(z_dim, channels, image_size, n_classes, padding)
        self.z_dim = int(z_dim)
        self.channels = channels
        self.image_size = int(image_size)
        self.n_classes = int(n_classes)
        self.padding = padding
        self.noise = bool(noise)
        if upsample not in G_UPSAMPLES:
            raise ValueError(f"generator upsample must be one of {G_UPSAMPLES}, got {upsample!r}")
        self.upsample = upsample

        self._build_layers()
        self.apply(init_weights)

    arch = "dcgan"
    """The network family (:data:`napari_atagan.gan.config.ARCHS`)."""

    def _build_layers(self) -> None:
        """Create the layers (a subclass builds another stack on the same interface)."""
        seed_width = self.channels[0]
        # The pattern enters only through class-conditional BatchNorm. A class
        # embedding joined to z made the generator ignore z and draw one cell per
        # pattern (measured: sample diversity fell from 0.6 to 0.15 within 300 steps).
        self.seed = nn.Linear(self.z_dim, 4 * 4 * seed_width, bias=False)
        self.seed_norm = ClassBatchNorm2d(seed_width, self.n_classes)
        widths = (seed_width, *self.channels)
        self.blocks = nn.ModuleList(
            _UpBlock(c_in, c_out, self.n_classes, self.padding, self.noise, self.upsample)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.to_image = _conv3x3(self.channels[-1], 1, padding=self.padding)
        self.out_noise = _NoiseInput(1) if self.noise else None

    @property
    def hparams(self) -> dict:
        """The constructor arguments, as plain JSON types (saved in checkpoints).

        The DCGAN generator stores no ``arch`` key, as in files written before
        other families existed, and ``noise`` and ``upsample`` only when not the
        default;
        :func:`generator_from_hparams` reads both.
        """
        hparams = {
            "z_dim": self.z_dim,
            "channels": list(self.channels),
            "image_size": self.image_size,
            "n_classes": self.n_classes,
            "padding": self.padding,
        }
        if self.noise:
            hparams["noise"] = True
        if self.upsample != "nearest":
            hparams["upsample"] = self.upsample
        return hparams

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(B, 1, S, S)`` in [-1, 1] from noise ``z`` of shape ``(B, z_dim)``.

        ``labels`` (integer pattern ids, shape ``(B,)``) are required when the model
        is conditional (``n_classes > 0``) and refused when it is not. ``generator``
        draws the per-pixel noise of a model with ``noise=True`` (else unused).
        """
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"the generator expects noise of shape (batch, {self.z_dim}), "
                f"got {tuple(z.shape)}"
            )
        labels = self._check_labels(labels, z.shape[0])
        return self._decode(z, labels, generator)

    def _decode(self, z: torch.Tensor, labels: torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """The image from checked noise and labels."""
        x = self.seed(z).view(z.shape[0], self.channels[0], 4, 4)
        x = F.relu(self.seed_norm(x, labels))
        for block in self.blocks:
            x = block(x, labels, generator)
        return torch.tanh(self._camera_noise(self.to_image(x), generator))

    def _camera_noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """White noise on the image itself, of one learned strength (before ``tanh``)."""
        return x if self.out_noise is None else self.out_noise(x, generator)

    def _check_labels(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.n_classes == 0:
            if labels is not None:
                raise ValueError(
                    "this generator is not pattern-conditional (n_classes=0): "
                    "call it without labels"
                )
            return None
        if labels is None:
            raise ValueError(
                f"this generator is conditioned on {self.n_classes} patterns: pass labels, "
                f"a tensor of {batch} integer pattern ids in [0, {self.n_classes - 1}]"
            )
        if labels.shape != (batch,) or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"labels must be an integer tensor of shape ({batch},), "
                f"got {labels.dtype} of shape {tuple(labels.shape)}"
            )
        labels = labels.long()
        # On an accelerator reading the range would wait for the device's whole
        # queue (in every training step); the entry points check pattern ids first.
        if batch and labels.device.type == "cpu" and not torch.compiler.is_compiling():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.n_classes:
                raise ValueError(
                    f"labels must lie in [0, {self.n_classes - 1}] "
                    f"(one per pattern), got values from {low} to {high}"
                )
        return labels


@torch.no_grad()
def recompute_batchnorm(module: nn.Module, batches: Iterable[tuple],
                        forward: Callable[..., object] | None = None) -> None:
    """Set every BatchNorm running statistic of ``module`` to its exact average
    over ``batches`` (each a tuple of ``module``'s positional arguments, passed to
    ``forward`` when given, e.g. to add keyword arguments, else to ``module``).

    Running statistics kept during training are a moving average of past batches
    of past weights; in eval mode a network should see the statistics of its
    present weights on the inputs it is meant for. Batches of one sample are
    skipped (their variance is undefined). The module's train/eval mode is kept.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = module.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    module.train()
    try:
        for args in batches:
            if args[0].shape[0] > 1:
                (module if forward is None else forward)(*args)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        module.train(was_training)


def standing_statistics(G: Generator, n: int = STANDING_SAMPLES, batch_size: int = 256,
                        seed: int = 0) -> Generator:
    """Give the generator the BatchNorm statistics of its own present weights.

    The averaged generator (``G_ema``) holds a moving average of the trained
    generator's weights, but running statistics copied from the trained one.
    The two do not match, and in eval mode the mismatch flattens the images
    (standing statistics, as in BigGAN, fix it): the brightest 0.5 % of the
    pixels of a full-scale model's cells averaged +0.74, +0.84 with standing
    statistics, +0.93 in the real training cells (``docs/RESULTS.md``).
    ``n`` images from a fixed seed, every pattern equally often, set the
    statistics (deterministic; no global random state is used, per-pixel noise
    included). Returns ``G``, in its previous train/eval mode.
    """
    device = next(G.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))

    def batches():
        for start in range(0, int(n), int(batch_size)):
            b = min(int(batch_size), int(n) - start)
            z = torch.randn(b, G.z_dim, generator=gen, device=device)
            y = ((torch.arange(start, start + b, device=device) % G.n_classes)
                 if G.n_classes else None)
            yield (z, y)

    recompute_batchnorm(G, batches(), lambda z, y: G(z, y, generator=gen))
    return G


def _check_generator_args(
    z_dim: int, channels: tuple[int, ...], image_size: int, n_classes: int, padding: str
) -> None:
    if padding not in G_PADDINGS:
        raise ValueError(f"generator padding must be one of {G_PADDINGS}, got {padding!r}")
    if z_dim < 1:
        raise ValueError(f"z_dim must be >= 1, got {z_dim}")
    if n_classes < 0:
        raise ValueError(f"n_classes must be >= 0, got {n_classes}")
    if not channels or min(channels) < 1:
        raise ValueError(f"generator channels must be positive widths, got {channels}")
    blocks = _log2_exact(image_size // 4) if image_size % 4 == 0 else None
    if blocks is None or blocks < 1:
        raise ValueError(
            f"image_size must be 4 times a power of two (e.g. 64 or 128), got {image_size}"
        )
    if len(channels) != blocks:
        raise ValueError(
            f"a {image_size}x{image_size} generator needs {blocks} widths "
            f"(log2({image_size}/4)), got {len(channels)}: {channels}"
        )


# ---------------------------------------------------------------------------
# discriminator
# ---------------------------------------------------------------------------


class _DownBlock(nn.Module):
    """3x3 conv (stride 1 or 2), optional BatchNorm, optional LeakyReLU(0.2)."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, batch_norm: bool, activation: bool
    ) -> None:
        super().__init__()
        self.conv = _conv3x3(c_in, c_out, stride=stride, bias=not batch_norm)
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, LEAKY_SLOPE) if self.activation else x


class Discriminator(nn.Module):
    """Tells real cells from generated ones and shows where it looks (its CAM).

    Parameters
    ----------
    channels:
        Width of each 3x3-conv block.  Every block but the last halves the
        resolution, so 4 widths turn a 64x64 crop into an 8x8 feature map.
    image_size:
        Side of the training crops (the network itself accepts any size that is a
        multiple of :attr:`stride` and at least 16).
    n_classes:
        Number of staining patterns for the auxiliary classifier head; 0 for none.
    spectral_norm:
        Spectral normalisation on every conv and linear layer instead of BatchNorm.

    Attributes
    ----------
    stride:
        Total downsampling from input pixels to feature-map cells.
    receptive_field:
        Side, in input pixels, of the window one feature-map cell sees.
    realness:
        The one linear realness unit; its weights make the CAM.
    classifier:
        The auxiliary pattern head, or ``None`` when ``n_classes == 0``.

    BatchNorm follows every conv except the first (on the raw image, as in DCGAN)
    and the last (whose output is the CAM's feature map).
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        image_size: int = 64,
        n_classes: int = 0,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"discriminator channels must be positive widths, got {channels}")
        if n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {n_classes}")
        self.channels = channels
        self.image_size = int(image_size)
        self.n_classes = int(n_classes)
        self.spectral_norm = bool(spectral_norm)

        self.blocks = self._build_trunk()
        self.feature_channels = channels[-1]
        self.realness = nn.Linear(self.feature_channels, 1)
        self.classifier = (
            nn.Linear(self.feature_channels, self.n_classes) if self.n_classes else None
        )
        self.stride, self.receptive_field = _conv_geometry(self)
        self._check_image_size()
        self.apply(init_weights)
        self._init_trunk()
        if self.spectral_norm:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    _spectral_norm(module)

    arch = "dcgan"
    """The network family (:data:`napari_atagan.gan.config.ARCHS`)."""

    def _build_trunk(self) -> nn.ModuleList:
        """The convolutional blocks from the image to the features ``A``, run in order
        by :meth:`features`. A subclass builds another trunk; everything after it
        (pooling, realness unit, pattern head, CAM) is shared."""
        last = len(self.channels) - 1
        widths = (1, *self.channels)
        return nn.ModuleList(
            _DownBlock(
                c_in,
                c_out,
                stride=1 if i == last else 2,
                batch_norm=not self.spectral_norm and 0 < i < last,
                activation=i != last,
            )
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))
        )

    def _init_trunk(self) -> None:
        """Initialise the trunk after the DCGAN initialisation of every layer (here: keep it)."""

    def _check_image_size(self) -> None:
        size = self.image_size
        if size < MIN_INPUT_SIZE or size % self.stride:
            raise ValueError(
                f"image_size must be at least {MIN_INPUT_SIZE} and a multiple of the "
                f"discriminator's stride {self.stride} ({len(self.channels)} widths), got {size}"
            )

    @property
    def hparams(self) -> dict:
        """The constructor arguments, as plain JSON types (saved in checkpoints;
        the DCGAN discriminator stores no ``arch`` key, as in older files)."""
        return {
            "channels": list(self.channels),
            "image_size": self.image_size,
            "n_classes": self.n_classes,
            "spectral_norm": self.spectral_norm,
        }

    # -- the convolutional part ----------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv output ``A`` of shape ``(B, C, H / stride, W / stride)``.

        ``x`` is ``(B, 1, H, W)`` with H and W multiples of :attr:`stride`, >= 16.
        """
        self._check_input(x)
        for block in self.blocks:
            x = block(x)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(
                f"the discriminator expects one-channel images (batch, 1, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if min(h, w) < MIN_INPUT_SIZE or h % self.stride or w % self.stride:
            raise ValueError(
                f"image height and width must be multiples of {self.stride} and at least "
                f"{MIN_INPUT_SIZE}, got {h}x{w}: pad or crop the image first"
            )

    # -- heads -----------------------------------------------------------------

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(logit (B,), class_logits (B, n_classes) or None, features A)``."""
        a = self.features(x)
        logit, class_logits = self.heads(a)
        return logit, class_logits, a

    def heads(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Realness logit ``(B,)`` and class logits from features ``A`` (pooled here)."""
        pooled = a.mean(dim=(2, 3))
        weight, bias = self.realness_weight()
        logit = F.linear(pooled, weight.to(pooled.dtype), bias.to(pooled.dtype)).squeeze(1)
        class_logits = self.classifier(pooled) if self.classifier is not None else None
        return logit, class_logits

    def realness_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``(1, C)`` and bias ``(1,)`` of the realness unit."""
        return self.realness.weight, self.realness.bias

    def cam_map(self, a: torch.Tensor) -> torch.Tensor:
        """Class activation map ``sum_k w_k A_k`` of shape ``(B, h, w)`` (no bias, no sigmoid).

        Its spatial mean plus the realness bias equals the realness logit.
        """
        weight, _ = self.realness_weight()
        return torch.einsum("bchw,c->bhw", a, weight[0].to(a.dtype))

    def soft_cam(
        self, x: torch.Tensor, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """ATA-GAN soft-CAM ``sigmoid(logit) * cam_map(A)``, upsampled to ``x`` (or ``size``).

        Returns ``(B, H, W)``; differentiable (the attention-transfer loss uses it).
        """
        # one spectral-norm weight for logit and map alike (no second power iteration)
        with parametrize.cached():
            logit, _, a = self(x)
            return self.soft_cam_from(a, logit, size or tuple(x.shape[-2:]))

    def soft_cam_from(
        self, a: torch.Tensor, logit: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Soft-CAM from features ``A`` and logits already computed (saves a forward pass)."""
        cam = torch.sigmoid(logit).to(a.dtype)[:, None, None] * self.cam_map(a)
        return F.interpolate(
            cam[:, None], size=tuple(size), mode="bilinear", align_corners=False
        )[:, 0]


def dense_discriminator(discriminator: Discriminator, stride: int) -> Discriminator:
    """The same discriminator, its feature map (and so its CAM) sampled every ``stride`` pixels.

    The *a trous* construction: the last strided convolutions keep stride 1 and
    every convolution after them is dilated by the stride given up, so the
    result holds the original feature cells at every ``discriminator.stride /
    stride``-th position and, between them, exactly the cells the original
    would compute on the input shifted by a multiple of ``stride`` pixels. Same
    weights, same realness unit, same soft-CAM; ``(discriminator.stride / stride)**2``
    times as many feature cells. ``stride`` must divide the discriminator's
    stride (a power of two); the original stride returns the discriminator itself.
    """
    import copy

    full = int(discriminator.stride)
    stride = int(stride)
    if stride < 1 or full % stride or stride & (stride - 1):
        raise ValueError(f"the CAM stride must be a power of two that divides the "
                         f"discriminator's stride {full}, got {stride}")
    if stride == full:
        return discriminator
    dense = copy.deepcopy(discriminator)
    kept, dilation = 1, 1
    for module in dense.modules():
        if not isinstance(module, nn.Conv2d | AvgPool2x2):
            continue
        if dilation > 1:
            module.dilation = (module.dilation[0] * dilation, module.dilation[1] * dilation)
            if isinstance(module, nn.Conv2d):  # the pool pads by its dilation itself
                module.padding = (module.padding[0] * dilation, module.padding[1] * dilation)
        step = module.stride[0]
        if step > 1 and kept * step > stride:
            module.stride = (1, 1)
            dilation *= step
        else:
            kept *= step
    dense.stride, dense.receptive_field = _conv_geometry(dense)
    return dense


def _conv_geometry(model: nn.Module) -> tuple[int, int]:
    """Total stride and receptive field (pixels) of the model's conv stack, in order.

    Convolutions and :class:`AvgPool2x2` count, in the order they were registered
    (for a residual block: the main path's convolutions, the 1x1 shortcut, then the
    pool that follows their sum), so the field is that of the longest path.
    """
    stride, field = 1, 1
    for module in model.modules():
        if isinstance(module, nn.Conv2d | AvgPool2x2):
            k, s = module.kernel_size[0], module.stride[0]
            field += (k - 1) * module.dilation[0] * stride
            stride *= s
    return stride, field


# ---------------------------------------------------------------------------
# residual networks (``arch="resnet"``)
# ---------------------------------------------------------------------------


class AvgPool2x2(nn.Module):
    """2x2 average pooling that, like a convolution, has a stride and a dilation.

    With the default stride 2 and dilation 1 it is ``F.avg_pool2d(x, 2)``. It
    exists so that :func:`dense_discriminator` can turn it *a trous* as it turns
    strided convolutions: stride 1 and dilation ``d`` average ``x[i]``,
    ``x[i + d]`` (in both axes), zero beyond the bottom and right edge, so the
    output keeps the input's size and holds the pooled cells of the strided
    original at every ``d``-th position.
    """

    kernel_size = (2, 2)

    def __init__(self) -> None:
        super().__init__()
        self.stride = (2, 2)
        self.dilation = (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (2, 2) and self.dilation == (1, 1):
            return F.avg_pool2d(x, 2)
        dy, dx = self.dilation
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, dx, 0, dy))
        out = (padded[..., :h, :w] + padded[..., dy:dy + h, :w]
               + padded[..., :h, dx:dx + w] + padded[..., dy:dy + h, dx:dx + w]) * 0.25
        return out[..., :: self.stride[0], :: self.stride[1]]


class _ResUpBlock(nn.Module):
    """Residual x2 up-block: (class-)BN, ReLU, x2 upsample, 3x3 conv, (class-)BN,
    ReLU, 3x3 conv; plus a 1x1-conv shortcut upsampled alike (BigGAN-style)."""

    def __init__(self, c_in: int, c_out: int, n_classes: int, padding: str = "zeros",
                 noise: bool = False, upsample: str = "nearest") -> None:
        super().__init__()
        self.upsample = upsample
        self.norm1 = ClassBatchNorm2d(c_in, n_classes)
        self.conv1 = _conv3x3(c_in, c_out, bias=False, padding=padding)
        self.norm2 = ClassBatchNorm2d(c_out, n_classes)
        self.noise = _NoiseInput(c_out) if noise else None
        self.conv2 = _conv3x3(c_out, c_out, padding=padding)
        self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        h = _upsample2(F.relu(self.norm1(x, labels)), self.upsample)
        h = self.norm2(self.conv1(h), labels)
        if self.noise is not None:
            h = self.noise(h, generator)
        h = self.conv2(F.relu(h))
        # a 1x1 conv and upsampling commute (both linear): convolve the smaller map
        return h + _upsample2(self.shortcut(x), self.upsample)


class ResNetGenerator(Generator):
    """The generator built from residual up-blocks (``arch="resnet"``).

    Same interface as :class:`Generator` (noise and labels in, one-channel images
    in [-1, 1] out, ``len(channels) == log2(image_size / 4)``, padding honoured),
    so synthesis and checkpoints treat both alike. The pattern still enters only
    through class-conditional BatchNorm, now twice per block: the seed is a plain
    linear map of ``z`` to 4x4, then each block doubles the size, and a last
    (class-)BN, ReLU and 3x3 conv make the image.
    """

    arch = "resnet"

    def _build_layers(self) -> None:
        seed_width = self.channels[0]
        self.seed = nn.Linear(self.z_dim, 4 * 4 * seed_width)
        widths = (seed_width, *self.channels)
        self.blocks = nn.ModuleList(
            _ResUpBlock(c_in, c_out, self.n_classes, self.padding, self.noise, self.upsample)
            for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.out_norm = ClassBatchNorm2d(self.channels[-1], self.n_classes)
        self.to_image = _conv3x3(self.channels[-1], 1, padding=self.padding)
        self.out_noise = _NoiseInput(1) if self.noise else None

    @property
    def hparams(self) -> dict:
        return {**super().hparams, "arch": self.arch}

    def _decode(self, z: torch.Tensor, labels: torch.Tensor | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.seed(z).view(z.shape[0], self.channels[0], 4, 4)
        for block in self.blocks:
            x = block(x, labels, generator)
        x = self.to_image(F.relu(self.out_norm(x, labels)))
        return torch.tanh(self._camera_noise(x, generator))


class _ResDownBlock(nn.Module):
    """Residual down-block: [LeakyReLU], 3x3 conv, LeakyReLU, 3x3 conv, plus a
    shortcut (1x1 conv where the width or size changes), then 2x2 average pooling
    of the sum (pooling each path alike; no pooling in the last block). No
    normalisation: D's output for one cell never depends on the rest of the batch.

    The first block skips the leading activation (it sees the raw image); the
    last block's sum is not activated, like the DCGAN discriminator's last conv,
    because it is the CAM's feature map ``A``.
    """

    def __init__(self, c_in: int, c_out: int, *, first: bool, down: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1 = _conv3x3(c_in, c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.shortcut = (nn.Conv2d(c_in, c_out, kernel_size=1)
                         if c_in != c_out or down else None)
        self.pool = AvgPool2x2() if down else None  # registered last: see _conv_geometry

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.leaky_relu(x, LEAKY_SLOPE)
        h = self.conv2(F.leaky_relu(self.conv1(h), LEAKY_SLOPE))
        h = h + (x if self.shortcut is None else self.shortcut(x))
        return h if self.pool is None else self.pool(h)


class ResNetDiscriminator(Discriminator):
    """The discriminator with a residual trunk (``arch="resnet"``).

    Only the trunk differs from :class:`Discriminator`: one residual down-block
    per width, every block but the last halving the resolution by average
    pooling, LeakyReLU(0.2), no BatchNorm. Global average pooling, the one
    realness unit, the pattern head, the (soft-)CAM and :func:`dense_discriminator`
    are the same, and so are :attr:`stride` (``2 ** (len(channels) - 1)``, 8 for
    4 widths) and the feature grid the training loop compares maps on.
    ``spectral_norm`` normalises every conv and linear layer, as for DCGAN.

    The trunk's convolutions start from He initialisation for LeakyReLU: without
    normalisation, the DCGAN initialisation (N(0, 0.02)) would shrink the signal
    about threefold per convolution.
    """

    arch = "resnet"

    def _build_trunk(self) -> nn.ModuleList:
        last = len(self.channels) - 1
        widths = (1, *self.channels)
        return nn.ModuleList(
            _ResDownBlock(c_in, c_out, first=i == 0, down=i != last)
            for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))
        )

    def _init_trunk(self) -> None:
        for module in self.blocks.modules():
            if isinstance(module, nn.Conv2d):
                if module.kernel_size[0] == 1:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
                else:
                    nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE,
                                            nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def hparams(self) -> dict:
        return {**super().hparams, "arch": self.arch}


GENERATORS: dict[str, type[Generator]] = {"dcgan": Generator, "resnet": ResNetGenerator}
DISCRIMINATORS: dict[str, type[Discriminator]] = {
    "dcgan": Discriminator, "resnet": ResNetDiscriminator}


def _family(table: dict, arch: str, what: str) -> type:
    if arch not in table:
        raise ValueError(f"unknown {what} arch {arch!r}; choose one of {tuple(table)}")
    return table[arch]


def generator_from_hparams(hparams: dict) -> Generator:
    """A generator built from stored constructor arguments; their ``arch``
    (``dcgan`` when absent, as in older files) picks the class."""
    hparams = dict(hparams)
    cls = _family(GENERATORS, hparams.pop("arch", "dcgan"), "generator")
    return cls(**hparams)


def discriminator_from_hparams(hparams: dict) -> Discriminator:
    """A discriminator built from stored constructor arguments (see
    :func:`generator_from_hparams`)."""
    hparams = dict(hparams)
    cls = _family(DISCRIMINATORS, hparams.pop("arch", "dcgan"), "discriminator")
    return cls(**hparams)


# ---------------------------------------------------------------------------
# from a config
# ---------------------------------------------------------------------------


def build_models(config: TrainConfig, n_classes: int) -> tuple[Generator, Discriminator]:
    """A freshly initialised (DCGAN init) generator and discriminator for ``config``.

    ``n_classes`` > 0 makes both pattern-conditional (G takes labels, D gets an
    auxiliary classifier); 0 makes an unconditional pair. ``config.arch`` picks
    the family (the residual discriminator's trunk starts from He initialisation).
    """
    generator = _family(GENERATORS, config.arch, "generator")(
        z_dim=config.z_dim,
        channels=config.g_channels,
        image_size=config.image_size,
        n_classes=n_classes,
        padding=config.g_padding,
        noise=config.g_noise,
        upsample=config.g_upsample,
    )
    discriminator = _family(DISCRIMINATORS, config.arch, "discriminator")(
        channels=config.d_channels,
        image_size=config.image_size,
        n_classes=n_classes,
        spectral_norm=config.spectral_norm,
    )
    return generator, discriminator


def describe_models(generator: Generator, discriminator: Discriminator) -> str:
    """One line with parameter counts and the discriminator's geometry."""
    return (
        f"G {count_parameters(generator) / 1e6:.2f} M parameters, "
        f"D {count_parameters(discriminator) / 1e6:.2f} M parameters "
        f"(stride {discriminator.stride}, receptive field {discriminator.receptive_field} px)"
    )

