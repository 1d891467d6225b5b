"""The networks of attention-guided translation (UAG-GAN, Mejjati et al. 2018).

* :class:`TranslationGenerator` ``F``: a ResNet-style encoder/decoder (7x7
  stem, two stride-2 downsamplings, residual blocks, two nearest-neighbour
  upsamplings each followed by a 3x3 convolution, a 7x7 convolution and tanh).
  By default it predicts a change of its input (``skip``, an option of the
  authors' code): ``F(x) = 1.5 tanh(atanh(x / 1.5) + u(x))``, so an untrained
  generator is close to the identity. Without it, an untrained ``F`` is a flat grey,
  the cycle loss drives the attention to 0 everywhere before ``F`` has
  learned anything, and the attention never recovers (measured on simulated
  dim and bright cells: mean attention 0.01 after 400 steps).
* :class:`AttentionNetwork` ``A``: a smaller encoder/decoder of the same kind
  that ends in one sigmoid channel, the map in [0, 1] of what to change.
* :class:`PatchDiscriminator` ``D``: a PatchGAN (4x4 convolutions, LeakyReLU),
  one realness score per patch, trained with the least-squares (LSGAN) loss.

The translation of ``x`` is :func:`compose` ``(x, A(x), F(x)) =
A(x) * F(x) + (1 - A(x)) * x``: where the attention is 0 the input stays.

Normalisation: instance normalisation, as in CycleGAN. The generators' and
attention networks' layers also keep *standing statistics*
(:func:`standing_statistics`: the mean of the per-crop statistics over real
training crops). In eval mode they normalise with those, so a trained network
is a plain stack of convolutions: it runs on any image whose sides are
multiples of 4 and gives the same pixels whether an image is computed whole
or in overlapping tiles (see :attr:`TranslationGenerator.receptive_radius`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = [
    "COMPOSITES",
    "HARD_CUT",
    "AttentionNetwork",
    "PatchDiscriminator",
    "TranslationGenerator",
    "build_translation_models",
    "check_composite",
    "compose",
    "receptive_radius",
    "standing_statistics",
]

MULTIPLE = 4
"""Image sides must be multiples of this (two stride-2 downsamplings)."""
SKIP_RANGE = 1.5
"""Bound of a skip generator's output: the range of the model-scale crops."""
SKIP_LIMIT = 0.999
"""Inputs beyond this fraction of the range pass the skip as this fraction."""


def _norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=True)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                     padding_mode="reflect")


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2, mode="nearest"), _conv(c_in, c_out, 3), _norm(c_out),
            nn.ReLU(inplace=True)]


def _check_input(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"the {what} takes images of shape (B, 1, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % MULTIPLE or w % MULTIPLE or min(h, w) < 2 * MULTIPLE:
        raise ValueError(f"the {what} takes images whose sides are multiples of {MULTIPLE} "
                         f"and at least {2 * MULTIPLE}, got {h} x {w}")


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3), _norm(channels),
                                  nn.ReLU(inplace=True), _conv(channels, channels, 3),
                                  _norm(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TranslationGenerator(nn.Module):
    """``F``: a grey image in model units to one of the same size, within [-1.5, 1.5]
    (``skip``) or [-1, 1] (without)."""

    def __init__(self, widths: Iterable[int] = (32, 64, 128), n_res_blocks: int = 6,
                 skip: bool = True) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be 3 positive numbers, got {list(widths)}")
        if int(n_res_blocks) < 0:
            raise ValueError(f"n_res_blocks must be >= 0, got {n_res_blocks}")
        self.widths, self.n_res_blocks, self.skip = widths, int(n_res_blocks), bool(skip)
        c0, c1, c2 = widths
        self.net = nn.Sequential(
            _conv(1, c0, 7), _norm(c0), nn.ReLU(inplace=True),
            _conv(c0, c1, 3, stride=2), _norm(c1), nn.ReLU(inplace=True),
            _conv(c1, c2, 3, stride=2), _norm(c2), nn.ReLU(inplace=True),
            *[_ResBlock(c2) for _ in range(self.n_res_blocks)],
            *_up(c2, c1), *_up(c1, c0),
            _conv(c0, 1, 7),
        )
        init_weights(self)

    @property
    def hparams(self) -> dict:
        return {"widths": list(self.widths), "n_res_blocks": self.n_res_blocks,
                "skip": self.skip}

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each side that an output pixel can depend on (an upper bound)."""
        return receptive_radius(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "generator")
        change = self.net(x)
        if not self.skip:
            return torch.tanh(change)
        inner = torch.atanh((x / SKIP_RANGE).clamp(-SKIP_LIMIT, SKIP_LIMIT))
        return SKIP_RANGE * torch.tanh(inner + change)


class AttentionNetwork(nn.Module):
    """``A``: a grey image to a one-channel map in [0, 1] of its size."""

    def __init__(self, widths: Iterable[int] = (32, 64)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 2 or min(widths) < 1:
            raise ValueError(f"attention widths must be 2 positive numbers, got {list(widths)}")
        self.widths = widths
        a0, a1 = widths
        self.net = nn.Sequential(
            _conv(1, a0, 7, stride=2), _norm(a0), nn.ReLU(inplace=True),
            _conv(a0, a1, 3, stride=2), _norm(a1), nn.ReLU(inplace=True),
            _ResBlock(a1),
            *_up(a1, a1), *_up(a1, a0),
            _conv(a0, 1, 7),
        )
        init_weights(self)

    @property
    def hparams(self) -> dict:
        return {"widths": list(self.widths)}

    @property
    def receptive_radius(self) -> int:
        return receptive_radius(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "attention network")
        return torch.sigmoid(self.net(x))


class PatchDiscriminator(nn.Module):
    """``D``: realness scores of overlapping patches, ``(B, 1, h, w)``."""

    def __init__(self, widths: Iterable[int] = (64, 128, 256)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"discriminator widths must be positive numbers, got {list(widths)}")
        self.widths = widths
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                       nn.InstanceNorm2d(c_out, affine=True), nn.LeakyReLU(0.2, inplace=True)]
        last = widths[-1]
        layers += [nn.Conv2d(last, last, 4, stride=1, padding=1),
                   nn.InstanceNorm2d(last, affine=True), nn.LeakyReLU(0.2, inplace=True),
                   nn.Conv2d(last, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    @property
    def hparams(self) -> dict:
        return {"widths": list(self.widths)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


COMPOSITES = ("soft", "hard")
"""How a translation meets its input: ``"soft"``, the paper's blend by the attention;
``"hard"``, each pixel either translated (attention above :data:`HARD_CUT`) or kept."""
HARD_CUT = 0.5
"""The attention above which a pixel is the cell's in a ``"hard"`` composite: the level
at which the studies' attention IoU counts a pixel as the cell. (The Translate widget's
attended cells are cut here for a hard composite; for the blend, lower, at the config's
``attention_threshold``, where the discriminators look.)"""


def check_composite(composite: str) -> str:
    """``composite`` if it is one of :data:`COMPOSITES`, else a clear ValueError."""
    if composite not in COMPOSITES:
        raise ValueError(f"composite must be one of {', '.join(COMPOSITES)}, got {composite!r}")
    return composite


def compose(x: torch.Tensor, attention: torch.Tensor | None, translated: torch.Tensor,
            composite: str = "soft") -> torch.Tensor:
    """``attention * translated + (1 - attention) * x``; without attention, ``translated``.

    Where the attention is exactly 0 the result is exactly ``x``. ``composite="hard"``
    uses the attention cut at :data:`HARD_CUT` instead: a pixel is either the
    translation or the input, never a blend of the two (training always blends, as
    the paper does; the cut is a choice when applying a model).
    """
    if check_composite(composite) == "hard" and attention is not None:
        return torch.where(attention > HARD_CUT, translated, x)
    if attention is None:
        return translated
    return attention * translated + (1.0 - attention) * x


def compose_parts(x: torch.Tensor, attention: torch.Tensor | None, translated: torch.Tensor,
                  composite: str = "soft") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`compose` in two parts, each above the model range's floor of -1:
    ``(kept, moved) = ((1 - w) * (x + 1), w * (translated + 1))`` with ``w`` the
    composite's weight (the attention, the attention cut at :data:`HARD_CUT`, or 1
    without attention), so ``kept + moved - 1`` is ``compose(...)``. A translation whose
    kept and translated pixels go back to grey levels on different scales
    (``grey_levels="target"``) maps each part with its own."""
    if attention is None:
        w = torch.ones_like(translated)
    elif check_composite(composite) == "hard":
        w = (attention > HARD_CUT).to(translated.dtype)
    else:
        w = attention
    return (1.0 - w) * (x + 1.0), w * (translated + 1.0)


def init_weights(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02), biases 0; normalisation gains ~ N(1, 0.02) (as in CycleGAN)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.InstanceNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def receptive_radius(module: nn.Module) -> int:
    """An upper bound of the context (input pixels each side) an output pixel sees.

    Walks the convolutions and upsamplings in the order they were registered,
    which is the order they run in these networks (a residual block's
    convolutions lie on its longer path). Each layer adds its half-width at the
    current scale, plus one pixel at that scale for where a strided or
    upsampled grid cell sits.
    """
    radius, scale = 0.0, 1.0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            k = (m.kernel_size[0] - 1) * m.dilation[0]
            radius += math.ceil(k / 2) * scale
            if m.stride[0] > 1:
                radius += scale
                scale *= m.stride[0]
        elif isinstance(m, nn.Upsample):
            radius += scale
            scale /= float(m.scale_factor)
    return int(math.ceil(radius))


@torch.no_grad()
def standing_statistics(net: nn.Module, images: torch.Tensor, batch_size: int = 64,
                        n: int = 256) -> None:
    """Set the running statistics of ``net``'s instance norms to standing statistics.

    They become the mean, over up to ``n`` real crops ``(N, 1, S, S)`` spread
    evenly over ``images``, of every layer's per-crop mean and variance: what
    the layer normalises with in eval mode. Weights and random state are left
    untouched, and so is the mode (train or eval) of ``net``.
    """
    norms = [m for m in net.modules()
             if isinstance(m, nn.InstanceNorm2d) and m.track_running_stats]
    if not norms or len(images) == 0:
        return
    idx = torch.linspace(0, len(images) - 1, min(n, len(images)), device=images.device).long()
    momenta = [m.momentum for m in norms]
    was_training = net.training
    net.train()
    try:
        for m in norms:
            m.reset_running_stats()
        for k, chunk in enumerate(idx.split(max(1, batch_size))):
            for m in norms:
                m.momentum = 1.0 / (k + 1)  # the running value stays the mean of the batches
            net(images[chunk])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        net.train(was_training)


def build_translation_models(config) -> dict[str, nn.Module]:
    """The networks of a run: ``F_ab``, ``F_ba``, ``D_a``, ``D_b`` and, with
    attention, ``A_a``, ``A_b`` (``D_a`` judges domain A: real A against B
    translated to A)."""
    models: dict[str, nn.Module] = {
        "F_ab": TranslationGenerator(config.widths, config.n_res_blocks, config.generator_skip),
        "F_ba": TranslationGenerator(config.widths, config.n_res_blocks, config.generator_skip),
    }
    if config.attention:
        models["A_a"] = AttentionNetwork(config.attention_widths)
        models["A_b"] = AttentionNetwork(config.attention_widths)
    models["D_a"] = PatchDiscriminator(config.d_widths)
    models["D_b"] = PatchDiscriminator(config.d_widths)
    return models
