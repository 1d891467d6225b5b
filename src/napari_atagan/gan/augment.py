"""Augmentation of cell batches on the training device (torch only).

All random numbers come from a ``torch.Generator`` on the batch's device, so a
run is reproducible and no work happens on the host between steps.

* **Dihedral** (:func:`dihedral`): the 8 flips / 90-degree rotations of a square.
  A fluorescence cell has no preferred orientation, so these are always valid.
* **Translation and zoom-out** (:func:`affine`): the cell is shifted by up to
  ``aug_translate`` pixels and shrunk to a factor in ``[aug_zoom_min, 1]``, so the
  discriminator also sees off-centre and smaller cells, as on a slide. Uncovered
  image area is filled with the image's own border (background) level, uncovered
  map area with 0.
* **Intensity jitter** (images only): a mild random gain and offset.
* **Acquisition jitter** (:func:`acquisition_jitter`, the classifier teacher): a
  random gamma, focus blur and camera noise per cell, so that a pattern is told by
  its shapes and not by how one specimen happened to be exposed, focused and
  recorded.

The *same* geometric transform is applied to a cell and to its attention map.

**Adaptive augmentation** (:class:`AdaptiveAugment`, StyleGAN2-ADA): when
``ada_target > 0``, :meth:`Augmenter.move` applies the translation and zoom-out
to every cell the adversarial loss shows the discriminator, real and generated
alike, with a probability ``p`` that follows how overconfident D is on real cells.
``p`` lives in a device tensor, so a captured CUDA graph reads its present value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import TrainConfig

__all__ = ["AdaptiveAugment", "Augmenter", "acquisition_jitter", "ada_adjust", "affine",
           "border_level", "dihedral", "dihedral_inverse", "gaussian_kernels"]


def dihedral(x: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Apply dihedral transform ``k`` (0..7) to square images ``(..., S, S)``.

    ``k`` encodes three steps, applied in this order: bit 0 flips left-right,
    bit 1 flips up-down, bit 2 transposes (swaps rows and columns). ``k = 0`` is
    the identity; together they give all 8 symmetries of the square.

    ``k`` may be an int (same transform for all) or a tensor of shape ``(B,)``
    giving one transform per sample of a batch ``(B, ...)``; the per-sample form
    needs no host synchronisation. The result is exact (pixels are only moved).
    """
    if isinstance(k, int):
        if not 0 <= k < 8:
            raise ValueError(f"dihedral index k must be in 0..7, got {k}")
        if k & 1:
            x = x.flip(-1)
        if k & 2:
            x = x.flip(-2)
        if k & 4:
            x = x.transpose(-1, -2)
        return x.contiguous()
    k = k.to(device=x.device, dtype=torch.long)
    if k.shape != (x.shape[0],):
        raise ValueError(f"per-sample k must have shape ({x.shape[0]},), got {tuple(k.shape)}")
    shape = (-1,) + (1,) * (x.dim() - 1)
    steps = (
        (1, lambda t: t.flip(-1)),
        (2, lambda t: t.flip(-2)),
        (4, lambda t: t.transpose(-1, -2)),
    )
    for bit, op in steps:
        sel = ((k & bit) > 0).view(shape)
        x = torch.where(sel, op(x), x)
    return x.contiguous()


def dihedral_inverse(k: int | torch.Tensor) -> int | torch.Tensor:
    """The index that undoes :func:`dihedral` transform ``k``.

    Flips alone are their own inverse; with the transpose the two flips swap
    roles (transposing turns a left-right flip into an up-down flip).
    """
    if isinstance(k, int):
        if k & 4:
            return 4 | ((k & 1) << 1) | ((k & 2) >> 1)
        return k
    swapped = 4 | ((k & 1) << 1) | ((k & 2) >> 1)
    return torch.where((k & 4) > 0, swapped, k)


def affine(
    x: torch.Tensor,
    shift: torch.Tensor,
    zoom: torch.Tensor,
    fill: torch.Tensor | float = 0.0,
    *,
    image_size: int | None = None,
) -> torch.Tensor:
    """Zoom about the centre, then shift, a batch ``(B, C, H, W)`` (bilinear).

    Args:
        x: the batch.
        shift: ``(B, 2)`` shift ``(dx, dy)`` in pixels of ``image_size`` (right, down).
        zoom: ``(B,)`` scale factor; ``< 1`` shrinks the content (zoom-out).
        fill: value of the area uncovered by the transform, a number or ``(B,)``.
        image_size: the side that ``shift`` is measured in (default: ``x``'s width),
            so a map of another resolution moves by the same fraction.
    """
    b, _, h, w = x.shape
    size = float(image_size or w)
    shift = shift.to(device=x.device, dtype=torch.float32)
    zoom = zoom.to(device=x.device, dtype=torch.float32)
    # affine_grid maps output coordinates to input coordinates (normalised to
    # [-1, 1]; one pixel is 2/size): input = (output - t) / zoom.
    inv = 1.0 / zoom
    tx = 2.0 * shift[:, 0] / size
    ty = 2.0 * shift[:, 1] / size
    zeros = torch.zeros_like(inv)
    theta = torch.stack(
        [torch.stack([inv, zeros, -tx * inv], 1), torch.stack([zeros, inv, -ty * inv], 1)], 1
    )
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    # a number stays a number: a tensor made from it would be a copy to the device
    fill_t = fill.view(-1, 1, 1, 1).to(x.dtype) if torch.is_tensor(fill) else float(fill)
    out = F.grid_sample(
        x - fill_t, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out + fill_t


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussians of radius ``radius``, one per sigma: ``(B, 2 radius + 1)``.

    ``sigma`` is a 1-D tensor (pixels; on the kernels' device). A sigma near 0 gives a
    unit impulse, so "no blur" is one of the kernels and needs no special case.
    """
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.float().clamp_min(1e-3).view(-1, 1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def acquisition_jitter(x: torch.Tensor, generator: torch.Generator | None = None, *,
                       gamma: float = 1.6, blur: float = 1.0, noise: float = 0.04) -> torch.Tensor:
    """Each cell of ``(B, 1, S, S)`` in [-1, 1] as another microscope might have recorded it.

    Per cell, drawn independently: a gamma in ``[1/gamma, gamma]`` (log-uniform) on
    the [0, 1] intensities, a Gaussian blur of sigma in ``[0, blur]`` pixels per 64
    pixels of crop (defocus), and Gaussian noise of standard deviation in ``[0,
    noise]`` of the intensity range (camera noise). The result is clipped to [-1, 1].
    The order of the intensities is kept, so bright speckles stay bright and a dark
    nucleolus stays dark; only the look of one acquisition changes.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, S, S) batch, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    u = ((x.float() + 1) / 2).clamp_(0, 1)
    if gamma > 1:
        g = torch.exp((2 * rand(b) - 1) * math.log(gamma))
        u = u.pow(g.view(b, 1, 1, 1))
    if blur > 0:
        sigma = rand(b) * (blur * max(h, w) / 64)
        r = max(1, math.ceil(3 * blur * max(h, w) / 64))
        k = gaussian_kernels(sigma, r).view(b, 1, 1, -1)
        v = F.pad(u.view(1, b, h, w), (r, r, r, r), mode="replicate")
        v = F.conv2d(v, k, groups=b)
        u = F.conv2d(v, k.transpose(2, 3), groups=b).view(b, 1, h, w)
    if noise > 0:
        std = rand(b).mul_(noise).view(b, 1, 1, 1)
        u = u + std * torch.randn(u.shape, generator=generator, device=dev)
    return (u * 2 - 1).clamp_(-1, 1).to(x.dtype)


def border_level(x: torch.Tensor) -> torch.Tensor:
    """Median of the border pixels of every image in ``(B, C, H, W)``: shape ``(B,)``."""
    border = torch.cat(
        [x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1
    )
    return border.flatten(1).median(dim=1).values


class Augmenter:
    """Random augmentation of real cells (and their teacher maps) on the device.

    Args:
        config: uses ``aug_dihedral``, ``aug_translate``, ``aug_zoom_min``,
            ``aug_intensity``, ``aug_p`` and ``image_size``.
        device: the training device (batches and the generator live there).

    Call it with ``(images, maps, generator=g)``; ``images`` and ``maps`` are
    ``(B, 1, S, S)`` tensors (maps may have another resolution or be ``None``).
    """

    def __init__(self, config: TrainConfig, device: torch.device | str) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dihedral = bool(config.aug_dihedral)
        self.translate = float(config.aug_translate)
        self.zoom_min = float(config.aug_zoom_min)
        self.intensity = float(config.aug_intensity)
        self.p = float(config.aug_p)
        self.image_size = int(config.image_size)

    def __call__(
        self,
        images: torch.Tensor,
        maps: torch.Tensor | None = None,
        *,
        generator: torch.Generator,
        geometric: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return augmented ``(images, maps)``; ``maps`` stays ``None`` when not given.

        ``geometric=False`` skips translation/zoom (dihedral and intensity
        jitter still apply), e.g. for the batch the adversarial loss sees.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 1, S, S), got shape {tuple(images.shape)}")
        if maps is not None and maps.shape[0] != images.shape[0]:
            raise ValueError(
                f"got {maps.shape[0]} maps for {images.shape[0]} images: one map per image"
            )
        b, dev = images.shape[0], images.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=dev)

        if self.dihedral:
            k = torch.randint(0, 8, (b,), generator=generator, device=dev)
            images = dihedral(images, k)
            if maps is not None:
                maps = dihedral(maps, k)

        if geometric and self.moves and self.p > 0:
            images, maps = self._move(images, maps, self.p, generator)

        if self.intensity > 0:
            gain = 1 + (rand(b) * 2 - 1).view(-1, 1, 1, 1) * self.intensity
            offset = (rand(b) * 2 - 1).view(-1, 1, 1, 1) * self.intensity
            images = ((images + 1) * gain - 1 + offset).clamp(-1, 1)
        return images, maps

    @property
    def moves(self) -> bool:
        """Whether translation or zoom-out is allowed at all."""
        return self.translate > 0 or self.zoom_min < 1

    def move(self, images: torch.Tensor, p: float | torch.Tensor, *,
             generator: torch.Generator) -> torch.Tensor:
        """Translate and zoom out each image with probability ``p`` (differentiable).

        For adaptive augmentation: ``p`` may be a 0-d tensor on the device (read
        at run time; a captured CUDA graph sees its present value). Random numbers
        are drawn whatever ``p`` is, so the sequence does not depend on it.
        """
        if not self.moves:
            return images
        return self._move(images, None, p, generator)[0]

    def _move(self, images: torch.Tensor, maps: torch.Tensor | None,
              p: float | torch.Tensor, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, dev = images.shape[0], images.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=dev)

        apply = rand(b) < p
        shift = (rand(b, 2) * 2 - 1) * self.translate
        zoom = self.zoom_min + (1 - self.zoom_min) * rand(b)
        sel = apply.view(-1, 1, 1, 1)
        fill = border_level(images)
        size = images.shape[-1]
        images = torch.where(sel, affine(images, shift, zoom, fill, image_size=size), images)
        if maps is not None:
            moved = affine(maps, shift, zoom, 0.0, image_size=size)
            maps = torch.where(sel, moved, maps)
        return images, maps


def ada_adjust(p: float | torch.Tensor, r: float | torch.Tensor, target: float,
               images: float | torch.Tensor, kimg: float) -> torch.Tensor:
    """One adjustment of the adaptive probability: ``clip(p + sign(r - target) *
    images / (kimg * 1000), 0, 1)``.

    ``r`` is ``E[sign(D(real))]`` over the ``images`` real cells seen since the
    last adjustment: near 1 when D calls almost every real cell real (it is
    overfitting them), near 0 when it cannot tell. A D that stays overconfident
    takes ``p`` from 0 to 1 in ``kimg`` thousand images; at ``r == target`` it stays.
    """
    p, r = torch.as_tensor(p, dtype=torch.float32), torch.as_tensor(r, dtype=torch.float32)
    step = torch.sign(r - float(target)) * (torch.as_tensor(images, dtype=torch.float32)
                                            / (float(kimg) * 1000.0))
    return (p + step).clamp(0.0, 1.0)


class AdaptiveAugment:
    """The adaptive probability of :meth:`Augmenter.move` and what sets it.

    Inside a training step :meth:`observe` adds up the signs of D's realness
    logits on real cells (in device tensors, so a captured step can do it);
    every ``interval`` steps, outside the step, :meth:`update` moves :attr:`p`
    by :func:`ada_adjust` and starts counting afresh. Both work in place on
    tensors that never change identity, for a CUDA graph captured once.

    :meth:`state` and :meth:`load_state` carry ``p`` and the partial counts
    through a checkpoint, so a resumed run continues as if never stopped.
    """

    def __init__(self, target: float, interval: int, kimg: float,
                 device: torch.device | str, p: float = 0.0) -> None:
        if not 0 < target < 1:
            raise ValueError(f"the adaptive augmentation target must be in (0, 1), got {target}")
        if interval < 1 or not kimg > 0:
            raise ValueError(f"interval must be >= 1 and kimg > 0, got {interval} and {kimg}")
        self.target, self.interval, self.kimg = float(target), int(interval), float(kimg)
        self.p = torch.full((), float(p), device=device)
        self.signs = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)

    @classmethod
    def from_config(cls, config: TrainConfig, device: torch.device | str) -> AdaptiveAugment:
        return cls(config.ada_target, config.ada_interval, config.ada_kimg, device)

    @torch.no_grad()
    def observe(self, real_logits: torch.Tensor) -> None:
        """Count D's verdicts on a batch of real cells (no host synchronisation)."""
        self.signs.add_(torch.sign(real_logits.detach().float()).sum())
        self.count.add_(real_logits.numel())

    @torch.no_grad()
    def update(self) -> None:
        """Move :attr:`p` once by the verdicts counted since the last update."""
        r = self.signs / self.count.clamp_min(1.0)  # no cells counted: no move
        self.p.copy_(ada_adjust(self.p, r, self.target, self.count, self.kimg))
        self.signs.zero_()
        self.count.zero_()

    def state(self) -> torch.Tensor:
        """``[p, sum of signs, count]`` for a checkpoint."""
        return torch.stack([self.p, self.signs, self.count]).detach().clone()

    def load_state(self, state: torch.Tensor) -> None:
        state = state.to(self.p.device, torch.float32).reshape(-1)
        if state.numel() != 3:
            raise ValueError(f"adaptive augmentation state must hold 3 numbers, got {state.numel()}")
        self.p.copy_(state[0])
        self.signs.copy_(state[1])
        self.count.copy_(state[2])
