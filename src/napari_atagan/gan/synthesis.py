"""Synthetic cells with their attention maps and masks, and attention on real crops.

``generate`` draws cells from a checkpoint's averaged generator (optionally of
one staining pattern), asks the discriminator where it looks (its soft-CAM),
and turns each map into a mask: ready-made annotated training data.
``write_dataset`` stores them in the same folder layout the trainer reads.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.transform import resize

from ..checkpoint import Checkpoint, load_checkpoint
from ..data import render_into, render_levels, rendered_dtype
from ..device import resolve_device

NOISE_SEED_OFFSET = 7919
"""A model with per-pixel noise inputs draws that noise from ``seed + NOISE_SEED_OFFSET``."""


@dataclass
class Synthesis:
    """N synthetic cells, all arrays aligned along the first axis."""

    images: np.ndarray
    """float32 (N, S, S) in [-1, 1], as the generator drew them."""
    rendered: np.ndarray
    """uint8/uint16 (N, S, S) with the training data's typical intensities."""
    attention: np.ndarray
    """float32 (N, S, S) >= 0: the discriminator's soft-CAM of each cell."""
    masks: np.ndarray
    """uint8 (N, S, S): 1 inside the cell (thresholded attention)."""
    labels: np.ndarray | None
    """int64 (N,) pattern index per cell, or None for an unconditional model."""
    class_names: list[str]
    seed: int

    @property
    def patterns(self) -> list[str]:
        if self.labels is None:
            return ["" for _ in range(len(self.images))]
        return [self.class_names[i] for i in self.labels]


def as_checkpoint(checkpoint: str | os.PathLike | Checkpoint) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def _pattern_labels(ckpt: Checkpoint, n: int, pattern: str | int | None, gen: torch.Generator):
    names = ckpt.class_names
    if not names:
        if pattern not in (None, ""):
            raise ValueError(
                f"{ckpt.path.name} was trained without patterns, so pattern {pattern!r} "
                "cannot be chosen: leave the pattern empty"
            )
        return None
    if pattern in (None, "", "all", "any"):
        return torch.randint(len(names), (n,), generator=gen)
    if isinstance(pattern, int) or (isinstance(pattern, str) and pattern.isdigit()):
        k = int(pattern)
        if not 0 <= k < len(names):
            raise ValueError(f"pattern index {k} is out of range 0..{len(names) - 1}")
        return torch.full((n,), k, dtype=torch.int64)
    lower = [c.lower() for c in names]
    if pattern.lower() not in lower:
        raise ValueError(
            f"{ckpt.path.name} does not know the pattern {pattern!r}; it knows: "
            + ", ".join(names)
        )
    return torch.full((n,), lower.index(pattern.lower()), dtype=torch.int64)


@torch.no_grad()
def generate(
    checkpoint: str | os.PathLike | Checkpoint,
    n: int,
    *,
    pattern: str | int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    device: str = "auto",
    threshold: str | float = "otsu",
    progress: Callable[[int, int], None] | None = None,
) -> Synthesis:
    """Generate ``n`` cells with attention maps and masks.

    Work is streamed in batches of ``batch_size``: only the final arrays are
    kept (float images, rendered images, attention maps, masks), so 100,000
    cells of 64 x 64 need about 100,000 x 64 x 64 x 10 bytes (11 for 16-bit
    data) plus one batch of temporaries. On a CUDA GPU the masks are made on
    the GPU (:func:`cams_to_masks_torch`), elsewhere by :func:`cams_to_masks`
    (the same masks; scipy is faster than torch on a CPU); the host renders one
    batch while the device computes the next.

    The same ``seed`` gives the same cells. A model with per-pixel noise inputs
    (``g_noise``) draws that noise batch by batch on the device, so its cells also
    depend on ``batch_size`` and on the kind of device; every other model's do not.
    """
    if int(n) < 1:
        raise ValueError(f"n (number of cells) must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_threshold(threshold)
    ckpt = as_checkpoint(checkpoint)
    dev = resolve_device(device)
    G = ckpt.generator(dev, ema=True)
    D = ckpt.discriminator(dev)
    gen = torch.Generator().manual_seed(int(seed))
    # A model with noise inputs draws its per-pixel noise from a stream of its own,
    # so the cells' z (and every model without noise) do not depend on batch_size;
    # on the model's device, so no batch's noise is copied there from the host.
    pixel_gen = (torch.Generator(device=dev).manual_seed(int(seed) + NOISE_SEED_OFFSET)
                 if getattr(G, "noise", False) else None)
    labels = _pattern_labels(ckpt, n, pattern, gen)
    z_dim = ckpt.config.z_dim
    s = ckpt.config.image_size
    intensity = ckpt.metadata.get("intensity", {})
    # the levels render(images, intensity, seed=seed) draws for the whole set,
    # so that rendering batch by batch gives the same values as one call
    lo, hi = render_levels(intensity, n, seed)
    on_device = _masks_on_device(dev)

    images = np.empty((n, s, s), np.float32)
    cams = np.empty((n, s, s), np.float32)
    masks = np.empty((n, s, s), np.uint8)
    rendered = np.empty((n, s, s), rendered_dtype(intensity))
    done = 0  # cells rendered so far
    for i in range(0, n, batch_size):
        j = min(n, i + batch_size)
        z = torch.randn(j - i, z_dim, generator=gen).to(dev)
        y = labels[i:j].to(dev) if labels is not None else None
        x = G(z, y, generator=pixel_gen)
        cam = D.soft_cam(x).clamp_min(0)
        # a GPU works through the queue on its own: render the previous batch meanwhile
        render_into(rendered[done:i], images[done:i], lo[done:i], hi[done:i])
        done = i
        mask = cams_to_masks_torch(cam, threshold) if on_device else None
        # everything of this batch is queued: copy the results straight into place
        torch.from_numpy(images[i:j]).copy_(x[:, 0])
        torch.from_numpy(cams[i:j]).copy_(cam)
        if mask is not None:
            torch.from_numpy(masks[i:j]).copy_(mask)
        else:
            masks[i:j] = cams_to_masks(cams[i:j], threshold=threshold)
        del x, cam, mask
        if progress is not None:
            progress(j, n)
    render_into(rendered[done:], images[done:], lo[done:], hi[done:])
    return Synthesis(
        images=images,
        rendered=rendered,
        attention=cams,
        masks=masks,
        labels=None if labels is None else labels.numpy().astype(np.int64),
        class_names=list(ckpt.class_names),
        seed=int(seed),
    )


def _masks_on_device(dev: torch.device) -> bool:
    """Whether ``generate`` makes the masks with torch on ``dev``.

    Only on CUDA: on a CPU the scipy version is 2-3x faster (0.10 s against
    0.19-0.35 s per 1,024 maps of 64 x 64 with one thread, and torch's many
    small steps get far slower when its threads share busy cores), and Apple
    MPS has no float64, which the Otsu search uses.
    """
    return dev.type == "cuda"


def _check_threshold(threshold) -> None:
    if threshold == "otsu":
        return
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        raise ValueError(f"threshold must be 'otsu' or a fraction in (0, 1), got {threshold!r}")


def cam_to_mask(cam: np.ndarray, threshold: str | float = "otsu") -> np.ndarray:
    """One cell's mask from its attention map: threshold, largest component, holes filled."""
    return cams_to_masks(np.asarray(cam)[None], threshold)[0]


def cams_to_masks(cams: np.ndarray, threshold: str | float = "otsu") -> np.ndarray:
    """Masks ``(N, H, W)`` uint8 of a stack of attention maps, all at once.

    Each map is thresholded (Otsu's threshold of that map, or ``threshold`` x its
    maximum), only its largest connected object is kept, and holes in it are
    filled; a map without positive values gives an empty mask. The stack is
    processed as one 3-D array whose planes are not connected to each other, so
    100,000 maps take a few seconds, not a Python loop over cells.
    """
    cams = np.asarray(cams, np.float32)
    if cams.ndim != 3:
        raise ValueError(f"expected a stack of maps (N, H, W), got shape {cams.shape}")
    if not np.isfinite(cams).all():
        raise ValueError("the attention map contains NaN or infinite values")
    if len(cams) > _MASK_CHUNK:  # bound the temporary arrays (labels, histograms)
        return np.concatenate([cams_to_masks(cams[i:i + _MASK_CHUNK], threshold)
                               for i in range(0, len(cams), _MASK_CHUNK)])
    if cams.size == 0:
        return np.zeros(cams.shape, np.uint8)
    _check_threshold(threshold)
    peak = cams.max(axis=(1, 2))
    if threshold == "otsu":
        t = _otsu_per_map(cams)
    else:
        t = np.float32(threshold) * peak  # a fraction of each map's maximum
    fg = (cams > t[:, None, None]) & (peak > 0)[:, None, None]
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    lab, k = ndi.label(fg, structure=in_plane)
    if k == 0:
        return np.zeros(cams.shape, np.uint8)
    sizes = np.bincount(lab.ravel(), minlength=k + 1)
    plane_of = np.zeros(k + 1, np.int64)
    plane_of[lab.ravel()] = np.repeat(np.arange(len(cams)), lab[0].size)
    # the largest object of each map (the first one on ties, as argmax would)
    ids = np.arange(1, k + 1)
    order = np.lexsort((ids, -sizes[1:], plane_of[1:]))
    first = np.unique(plane_of[1:][order], return_index=True)[1]
    keep = np.zeros(k + 1, bool)
    keep[ids[order][first]] = True
    cell = keep[lab]
    # holes: background pieces of a map that do not reach that map's border
    back, _ = ndi.label(~cell, structure=in_plane)
    outside = np.unique(np.concatenate([back[:, 0].ravel(), back[:, -1].ravel(),
                                        back[:, :, 0].ravel(), back[:, :, -1].ravel()]))
    is_hole = np.ones(back.max() + 1, bool)
    is_hole[outside] = False
    is_hole[0] = False
    return (cell | is_hole[back]).astype(np.uint8)


_MASK_CHUNK = 4096


def _otsu_per_map(cams: np.ndarray, nbins: int = 256) -> np.ndarray:
    """Otsu's threshold of every map, computed as ``skimage.filters.threshold_otsu`` does.

    The 256-bin histogram follows numpy's for float32 data (edges, bin indices
    and their one-ulp corrections), so the counts are identical; where two
    neighbouring bins are within rounding of the best split, the choice may fall
    on the other one (one bin width apart). A constant map gets its own value as
    threshold, so it selects nothing.
    """
    n = len(cams)
    flat = cams.reshape(n, -1)
    lo, hi = flat.min(1), flat.max(1)
    flat_map = hi <= lo
    lo_e = np.where(flat_map, lo - np.float32(0.5), lo)[:, None]
    hi_e = np.where(flat_map, hi + np.float32(0.5), hi)[:, None]
    edges = np.linspace(lo_e, hi_e, nbins + 1, dtype=np.float32, axis=1)[:, :, 0]
    idx = (((flat - lo_e) / (hi_e - lo_e)) * nbins).astype(np.intp)
    idx[idx == nbins] -= 1
    idx[flat < np.take_along_axis(edges, idx, 1)] -= 1
    idx[(flat >= np.take_along_axis(edges, idx + 1, 1)) & (idx != nbins - 1)] += 1
    idx += (np.arange(n) * nbins)[:, None]
    counts = np.bincount(idx.ravel(), minlength=n * nbins).reshape(n, nbins)
    centers = (edges[:, :-1] + edges[:, 1:]) / 2
    w1 = np.cumsum(counts, 1)
    w2 = np.cumsum(counts[:, ::-1], 1)[:, ::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.cumsum(counts * centers, 1) / w1
        m2 = (np.cumsum((counts * centers)[:, ::-1], 1) / w2[:, ::-1])[:, ::-1]
        between = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    best = np.argmax(np.nan_to_num(between, nan=-np.inf), axis=1)
    t = centers[np.arange(n), best]
    return np.where(flat_map, hi, t).astype(np.float32)


@torch.no_grad()
def cams_to_masks_torch(cams: torch.Tensor, threshold: str | float = "otsu") -> torch.Tensor:
    """:func:`cams_to_masks` in torch, on the device of ``cams``: uint8 ``(N, H, W)``.

    The same masks as the scipy version: the Otsu threshold of every map is
    computed with the same histogram, float32/float64 arithmetic and tie rule
    (on a GPU the float64 running sums are added in another order, which can
    only matter on exact near-ties), the largest 4-connected object is kept (of
    equal ones the first in scan order, as ``ndi.label`` numbers them) and its
    holes are filled (background not 4-connected to the border). Connected
    pieces are found by spreading labels along rows and columns (see
    :func:`_spread_max`), a few host syncs per batch.
    """
    if cams.ndim != 3:
        raise ValueError(f"expected a stack of maps (N, H, W), got shape {tuple(cams.shape)}")
    cams = cams.float()
    if not bool(torch.isfinite(cams).all()):
        raise ValueError("the attention map contains NaN or infinite values")
    if len(cams) > _MASK_CHUNK:  # bound the temporary arrays, as cams_to_masks does
        return torch.cat([cams_to_masks_torch(cams[i:i + _MASK_CHUNK], threshold)
                          for i in range(0, len(cams), _MASK_CHUNK)])
    if cams.numel() == 0:
        return torch.zeros(cams.shape, dtype=torch.uint8, device=cams.device)
    _check_threshold(threshold)
    n, h, w = cams.shape
    hw = h * w
    peak = cams.amax((1, 2))
    if threshold == "otsu":
        t = _otsu_per_map_torch(cams)
    else:
        t = torch.tensor(float(threshold), dtype=torch.float32, device=cams.device) * peak
    fg = (cams > t[:, None, None]) & (peak > 0)[:, None, None]

    # label every object by its first pixel in scan order (the highest id)
    ids = hw - torch.arange(hw, device=cams.device, dtype=_id_dtype(hw)).view(1, h, w)
    lab = _spread_max(ids * fg, fg)
    # the largest object of each map, the first one on ties (the highest id)
    bins = (lab + (torch.arange(n, device=cams.device) * (hw + 1))[:, None, None]).ravel()
    size = torch.bincount(bins, minlength=n * (hw + 1))[bins].view(n, h, w)
    key = (size * (hw + 1) + lab) * fg
    cell = fg & (key == key.amax((1, 2), keepdim=True))

    # holes: background that cannot reach the border through background
    back = ~cell
    border = torch.ones((1, h, w), dtype=torch.bool, device=cams.device)
    border[:, 1:-1, 1:-1] = False
    outside = _spread_max(back & border, back)
    return (~outside).to(torch.uint8)


def _id_dtype(hw: int) -> torch.dtype:
    """The smallest integer type for pixel ids 1..hw: int16 is 5x faster on a CPU."""
    return torch.int16 if hw < 2**15 else torch.int32


def _otsu_per_map_torch(cams: torch.Tensor, nbins: int = 256) -> torch.Tensor:
    """:func:`_otsu_per_map` in torch: the same bins, sums and first-maximum rule.

    Step by step as numpy does it: ``np.linspace`` edges in float32 (``k *
    step + lo``, the last edge set to the maximum; ``k / nbins * delta`` if any
    step underflows to 0), bin indices with numpy's one-ulp corrections, and
    the between-class variance in float64 (numpy promotes the int64 counts
    times the float32 centres).
    """
    n = len(cams)
    flat = cams.reshape(n, -1)
    lo, hi = flat.aminmax(dim=1)
    flat_map = hi <= lo
    lo_e = torch.where(flat_map, lo - 0.5, lo)[:, None]
    hi_e = torch.where(flat_map, hi + 0.5, hi)[:, None]
    delta = hi_e - lo_e
    step = delta / nbins
    k = torch.arange(nbins + 1, dtype=torch.float32, device=cams.device)
    edges = torch.where((step == 0).any(), k / nbins * delta, k * step) + lo_e
    edges[:, -1] = hi_e[:, 0]
    idx = ((flat - lo_e) / delta * nbins).long().clamp_max_(nbins - 1)
    idx -= (flat < edges.gather(1, idx)).long()
    idx += ((flat >= edges.gather(1, idx + 1)) & (idx != nbins - 1)).long()
    idx += (torch.arange(n, device=cams.device) * nbins)[:, None]
    counts = torch.bincount(idx.ravel(), minlength=n * nbins).view(n, nbins)
    centers = (edges[:, :-1] + edges[:, 1:]) / 2
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    mass = counts * centers.double()
    m1 = mass.cumsum(1) / w1
    m2 = (mass.flip(1).cumsum(1) / w2.flip(1)).flip(1)
    d = m1[:, :-1] - m2[:, 1:]
    between = (w1[:, :-1] * w2[:, 1:]) * (d * d)
    best = torch.nan_to_num(between, nan=-torch.inf).argmax(1)  # the first maximum
    t = centers.gather(1, best[:, None])[:, 0]
    return torch.where(flat_map, hi, t)


def _spread_max(v: torch.Tensor, inside: torch.Tensor, check_every: int = 2) -> torch.Tensor:
    """The maximum of ``v`` over each 4-connected piece of ``inside``, in all its pixels.

    ``v`` (>= 0, 0 outside) is spread along whole row runs, then whole column
    runs (:func:`_run_max`), and so on until nothing changes: one such sweep
    per two turns of the path a value has to travel (2-5 sweeps for cells).
    Convergence is checked every ``check_every`` sweeps (one host sync), and
    only the maps still changing are swept again.
    """
    out, live = v, None
    while True:
        rows, cols = _runs(inside, 2, v.dtype), _runs(inside, 1, v.dtype)
        before = v
        for _ in range(check_every):
            v = _run_max(_run_max(v, rows, 2), cols, 1)
        if live is None:
            out = v
        else:
            out.index_copy_(0, live, v)
        changed = (v != before).flatten(1).any(1).nonzero()[:, 0]
        if len(changed) == 0:
            return out
        live = changed if live is None else live[changed]
        v, inside = v[changed], inside[changed]


def _runs(inside: torch.Tensor, dim: int, dtype: torch.dtype) -> list:
    """``[(s, joined_s)]`` for s = 1, 2, 4, ...

    ``joined_s[i]`` (along ``dim``, as 0/1 of ``dtype``) says whether ``inside``
    holds all the way from i to i + s.
    """
    size = inside.shape[dim]
    out, s = [], 1
    joined = inside.narrow(dim, 0, size - 1) & inside.narrow(dim, 1, size - 1)
    while s < size:
        out.append((s, joined.to(dtype)))
        if 2 * s < size:
            joined = joined.narrow(dim, 0, size - 2 * s) & joined.narrow(dim, s, size - 2 * s)
        s *= 2
    return out


def _run_max(v: torch.Tensor, runs: list, dim: int) -> torch.Tensor:
    """The maximum of ``v`` over each run of joined pixels along ``dim``.

    Doubling steps: after the step of s every pixel holds the maximum within
    2s - 1 joined pixels either way, so log2(size) steps cover whole runs.
    """
    size = v.shape[dim]
    for s, joined in runs:
        new = v.clone()
        ahead = new.narrow(dim, s, size - s)
        torch.maximum(ahead, v.narrow(dim, 0, size - s) * joined, out=ahead)
        behind = new.narrow(dim, 0, size - s)
        torch.maximum(behind, v.narrow(dim, s, size - s) * joined, out=behind)
        v = new
    return v


@torch.no_grad()
def crop_attention(
    checkpoint: str | os.PathLike | Checkpoint,
    crops: np.ndarray | Sequence[np.ndarray],
    *,
    device: str = "auto",
    batch_size: int = 512,
) -> list[np.ndarray]:
    """The discriminator's soft-CAM for real crops of any size.

    Each crop is normalised and resized like the training data (per-cell robust
    percentiles, padded to a square, resized to the model size); the map is
    brought back to the crop's own shape. Returns one float32 map per crop.
    """
    from ..data import prepare_crop

    ckpt = as_checkpoint(checkpoint)
    dev = resolve_device(device)
    D = ckpt.discriminator(dev)
    s = ckpt.config.image_size
    crops = [np.asarray(c) for c in crops]
    prepared, boxes = [], []
    for i, c in enumerate(crops):
        if c.ndim != 2:
            raise ValueError(f"crop {i} has shape {c.shape}: 2-D grey crops are expected")
        x, box = prepare_crop(c, None, s, return_box=True)[0::2]
        prepared.append(x)
        boxes.append(box)
    out: list[np.ndarray] = []
    arr = np.stack(prepared) if prepared else np.zeros((0, s, s), np.float32)
    for i in range(0, len(arr), batch_size):
        x = torch.from_numpy(arr[i:i + batch_size]).to(dev).unsqueeze(1)
        out.extend(D.soft_cam(x).clamp_min(0).float().cpu().numpy())
    return [_unpad(m, box, c.shape) for m, box, c in zip(out, boxes, crops, strict=True)]


def _unpad(cam: np.ndarray, box, shape) -> np.ndarray:
    """Map a model-size map back onto the crop: undo the resize, then the padding."""
    side, top, left = box
    sq = resize(cam, (side, side), order=1, preserve_range=True, anti_aliasing=False)
    return np.ascontiguousarray(sq[top:top + shape[0], left:left + shape[1]], np.float32)


def write_dataset(syn: Synthesis, out_dir: str | os.PathLike) -> Path:
    """Write cells in the training layout: ``<pattern>/NNNNN.png`` + ``NNNNN_Mask.png``.

    An unconditional model writes a flat folder. ``cells.csv`` lists file,
    pattern and seed of every cell.
    """
    from skimage.io import imsave

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, mask, pat) in enumerate(zip(syn.rendered, syn.masks, syn.patterns, strict=True)):
        folder = out / pat if pat else out
        folder.mkdir(exist_ok=True)
        name = f"{i + 1:05d}"
        imsave(folder / f"{name}.png", img, check_contrast=False)
        imsave(folder / f"{name}_Mask.png", (mask * 255).astype(np.uint8), check_contrast=False)
        rows.append({"file": str((folder / f"{name}.png").relative_to(out)),
                     "pattern": pat, "seed": syn.seed, "index": i})
    with open(out / "cells.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "pattern", "seed", "index"])
        w.writeheader()
        w.writerows(rows)
    return out


__all__ = ["Synthesis", "cam_to_mask", "cams_to_masks", "cams_to_masks_torch", "crop_attention",
           "generate", "write_dataset"]
