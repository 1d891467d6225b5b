"""Training attention-guided translation: one generator of progress events.

``train_translation(config, a, b, out_dir)`` yields the same events as ATA-GAN
training (:mod:`napari_atagan.events`): :class:`Message`, :class:`Progress`,
:class:`Samples`, :class:`CheckpointSaved` and, last, :class:`Finished`, so
the command line and the widget drive it the same way. Asking it to stop
(``stop`` callable or event, or closing the generator) ends it after the
current step and always leaves a complete checkpoint.

One step (Mejjati et al., NeurIPS 2018), for a batch of real crops ``a`` of
domain A and ``b`` of domain B:

* translations ``a' = A_a(a) * F_ab(a) + (1 - A_a(a)) * a`` and likewise
  ``b'``; the cycle ``a'' = A_b(a') * F_ba(a') + (1 - A_b(a')) * a'`` and ``b''``;
* generators and attention networks: the least-squares adversarial loss of
  ``D_b(a')`` and ``D_a(b')`` plus ``cycle_weight *`` the L1 distances
  ``|a'' - a| + |b'' - b|`` (of both sides blurred by ``cycle_sigma``, where it is set);
* discriminators: least squares, real crops against the translations.

After ``attention_freeze_after`` of the steps the attention networks are
frozen, and the discriminators see only the attended region: real and
translated crops are multiplied by their attention thresholded at
``attention_threshold``. With ``attention=False`` the same generators and
discriminators train as a plain CycleGAN (``a' = F_ab(a)``).

All data lives on the training device and all randomness comes from one
seeded ``torch.Generator``, so a resumed run continues exactly on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from .._atomic import write_text_atomically
from ..checkpoint import (
    load_checkpoint,
    load_module_state,
    load_optimizer_state,
    restore_rng,
    save_checkpoint,
)
from ..device import describe, resolve_device, synchronize
from ..events import (
    CHECKPOINT_NAME,
    CheckpointSaved,
    Event,
    Finished,
    Message,
    Progress,
    Samples,
    StopSignal,
    should_stop as _should_stop,
)
from .config import RUNTIME_FIELDS, TranslateConfig
from .data import DomainData, Levels, load_domains
from .models import build_translation_models, compose, standing_statistics

__all__ = ["CHECKPOINT_NAME", "SAMPLE_ROWS", "train_translation"]

SAMPLE_ROWS = ("A", "attention A", "A to B", "B", "attention B", "B to A")
"""What each row of a :class:`Samples` event shows; ``Samples.labels`` holds each
image's row. Attention rows are mapped from [0, 1] to [-1, 1]."""
SAMPLES_PER_ROW = 6
STANDING_CROPS = 256
"""Real crops per domain whose statistics the networks normalise with in eval mode
(in a checkpoint)."""
PREVIEW_STANDING_CROPS = 64
"""The same for the preview of a :class:`Samples` event (cheaper, a little rougher)."""


@dataclass
class _State:
    """Everything that changes during training and goes into a checkpoint."""

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    gen: torch.Generator
    step: int = 0
    batch_size: int = 0
    seconds: float = 0.0
    frozen_at: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def attention(self) -> bool:
        return "A_a" in self.nets


def train_translation(
    config: TranslateConfig,
    a: Any,
    b: Any,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    stop: StopSignal = None,
) -> Iterator[Event]:
    """Train a translator between domains ``a`` and ``b``; checkpoints go to ``out_dir``.

    ``a``/``b``: folders of crops (the layout of
    :func:`napari_atagan.data.load_folder`), stacks or lists of raw crops, or
    objects with ``images``/``masks`` (see :func:`napari_atagan.translate.load_domains`).
    ``resume`` continues a checkpoint of an earlier run on the same data. Its
    config wins over ``config`` except for the fields in
    :data:`napari_atagan.translate.config.RUNTIME_FIELDS` (``steps``, the new
    total, the device and how often to report); its intensity levels are
    reused. Yields events; the last one is :class:`Finished`.
    """
    out_dir = Path(out_dir)
    if not isinstance(config, TranslateConfig):
        raise ValueError(f"config must be a TranslateConfig, got {type(config).__name__}")
    resumed = None
    levels = None
    if resume is not None:
        resumed = load_checkpoint(resume, family=TranslateConfig.FAMILY)
        runtime = {name: getattr(config, name) for name in RUNTIME_FIELDS}
        config = resumed.config.replace(**runtime)
        levels = Levels.from_dict(resumed.metadata.get("levels"))
    config.validate()
    own = config.own_levels
    dom_a, dom_b, levels = load_domains(a, b, image_size=config.image_size, levels=levels,
                                        own_levels=own)
    for dom in (dom_a, dom_b):
        if dom.n < 2:
            raise ValueError(f"domain {dom.name!r} has {dom.n} crop(s); training needs at "
                             "least 2 per domain")
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    device = resolve_device(config.device)
    kind = "attention-guided translation" if config.attention else "CycleGAN (no attention)"
    scale = ("every crop on its own grey levels (brightness is kept)"
             if config.grey_levels == "own" else
             "every crop on its own grey levels, translated cells on the target domain's "
             f"grey range ({dom_a.own_span:g} for {dom_a.name!r}, {dom_b.own_span:g} for "
             f"{dom_b.name!r})" if own else
             f"grey levels {levels.lo:g} -> -1, {levels.hi:g} -> +1")
    yield Message(f"{kind} on {describe(device)}: {dom_a.n} cells of {dom_a.name!r} <-> "
                  f"{dom_b.n} cells of {dom_b.name!r}; {scale}")

    torch.manual_seed(config.seed)
    nets = build_translation_models(config)
    for net in nets.values():
        net.to(device).train()
    adam = {"lr": config.lr, "betas": tuple(config.betas)}
    optimizers = {
        "G": torch.optim.Adam([p for k in ("F_ab", "F_ba") for p in nets[k].parameters()],
                              **adam),
        "D": torch.optim.Adam([p for k in ("D_a", "D_b") for p in nets[k].parameters()],
                              **adam),
    }
    if config.attention:
        optimizers["A"] = torch.optim.Adam(
            [p for k in ("A_a", "A_b") for p in nets[k].parameters()], **adam)
    state = _State(nets=nets, optimizers=optimizers, gen=torch.Generator(device=device),
                   batch_size=config.batch_size)
    state.gen.manual_seed(config.seed)
    if resumed is not None:
        _restore(state, resumed, device)
        _check_resumed_data(resumed, dom_a, dom_b)
        yield Message(f"resumed from {resumed.path.name} at step {state.step}")
        if state.step >= config.steps:
            yield Message(f"the checkpoint is already at step {state.step} of {config.steps}: "
                          "give a larger number of steps to train on")

    images_a = torch.from_numpy(dom_a.images).to(device).unsqueeze(1)
    images_b = torch.from_numpy(dom_b.images).to(device).unsqueeze(1)
    masks = {}
    if config.attention and config.mask_weight > 0:
        for key, dom in (("a", dom_a), ("b", dom_b)):
            if dom.has_masks:
                masks[key] = torch.from_numpy(dom.masks).to(device, torch.float32).unsqueeze(1)
        taught = [dom.name for key, dom in (("a", dom_a), ("b", dom_b)) if key in masks]
        yield Message("the attention learns from the cell masks of "
                      + (" and ".join(repr(n) for n in taught) if taught else
                         "neither domain (no masks given): mask_weight has no effect"))
    step_fn = _make_step(config, state, images_a, images_b, device, masks)
    fixed_a = images_a[_spread(dom_a.n, SAMPLES_PER_ROW)]
    fixed_b = images_b[_spread(dom_b.n, SAMPLES_PER_ROW)]
    metadata = _metadata_base(dom_a, dom_b, levels, device)

    settled = [(-1, 0)]  # (step, crops) of the statistics the networks hold

    def settle(n: int = STANDING_CROPS) -> None:
        """Standing statistics of the translating networks from ``n`` crops per domain
        (they do not change training, which normalises every crop by its own)."""
        if settled[0][0] != state.step or settled[0][1] < n:
            for name, images in (("F_ab", images_a), ("F_ba", images_b), ("A_a", images_a),
                                 ("A_b", images_b)):
                if name in state.nets:
                    standing_statistics(state.nets[name], images, 32, n)
            settled[0] = (state.step, n)

    def save(final: bool = False) -> Path:
        settle()
        meta = dict(metadata)
        meta.update(
            step=state.step,
            attention_frozen_at=state.frozen_at,
            timings={"seconds": state.seconds, "images_per_s": _rate(state)},
            summary=_summary(state, config, final),
        )
        extra = {"rng.data": state.gen.get_state(),
                 "train.batch_size": torch.tensor([state.batch_size])}
        return save_checkpoint(ckpt_path, config=config, modules=state.nets, metadata=meta,
                               optimizers=state.optimizers, extra_tensors=extra)

    stopped = False
    last_log, t_log = state.step, time.perf_counter()
    t_run = time.perf_counter()

    def lap() -> None:
        nonlocal t_run
        synchronize(device)
        now = time.perf_counter()
        state.seconds += now - t_run
        t_run = now

    try:
        while state.step < config.steps:
            if _should_stop(stop):
                stopped = True
                break
            if state.frozen_at is None and config.freeze_step is not None \
                    and state.step >= config.freeze_step:
                _freeze(state)
                lap()
                yield Message(f"attention frozen at step {state.step}: from here on the "
                              f"discriminators see only the attended region "
                              f"(attention > {config.attention_threshold:g})")
                t_run = time.perf_counter()
            try:
                losses = step_fn()
            except torch.OutOfMemoryError:
                if state.batch_size <= 1:
                    raise
                state.batch_size = max(1, state.batch_size // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                yield Message(f"out of memory: batch size halved to {state.batch_size}")
                continue
            state.step += 1
            last = state.step == config.steps
            if state.step % config.log_every == 0 or last:
                vals = {k: float(v) for k, v in losses.items()}
                lap()
                state.history.append({"step": state.step, **vals})
                now = time.perf_counter()
                rate = (state.step - last_log) * state.batch_size / max(now - t_log, 1e-9)
                last_log, t_log = state.step, now
                left = (config.steps - state.step) * state.batch_size / max(rate, 1e-9)
                yield Progress(state.step, config.steps, vals, rate, left, state.seconds,
                               state.batch_size)
                t_run = time.perf_counter()
            if state.step % config.sample_every == 0 or last:
                lap()
                settle(PREVIEW_STANDING_CROPS)
                yield Samples(state.step, *_samples(state, fixed_a, fixed_b))
                t_run = time.perf_counter()
            if state.step % config.checkpoint_every == 0 and not last:
                lap()
                yield CheckpointSaved(state.step, save())
                t_run = time.perf_counter()
        lap()
    except GeneratorExit:  # closed at a yield: save what there is, then end
        save(final=True)
        raise
    path = save(final=True)
    yield CheckpointSaved(state.step, path)
    summary = _summary(state, config, True)
    write_text_atomically(out_dir / "summary.json", _json(summary))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    yield Finished(path, summary, stopped)


# --------------------------------------------------------------------------- one step
def _make_step(config: TranslateConfig, state: _State, images_a: torch.Tensor,
               images_b: torch.Tensor, device: torch.device,
               masks: dict[str, torch.Tensor] | None = None):
    """One training step. ``masks``: the cell masks of domain ``"a"`` and/or ``"b"``
    (aligned with the images) that teach the attention (``config.mask_weight``)."""
    masks = masks or {}
    nets = state.nets
    F_ab, F_ba, D_a, D_b = nets["F_ab"], nets["F_ba"], nets["D_a"], nets["D_b"]
    A_a, A_b = nets.get("A_a"), nets.get("A_b")
    opt_G, opt_D, opt_A = (state.optimizers["G"], state.optimizers["D"],
                           state.optimizers.get("A"))
    d_params = list(D_a.parameters()) + list(D_b.parameters())
    tau = float(config.attention_threshold)
    n_a, n_b = len(images_a), len(images_b)

    def attend(net: nn.Module | None, x: torch.Tensor) -> torch.Tensor | None:
        return None if net is None else net(x)

    low = _low_pass(float(config.cycle_sigma), device)

    def step() -> dict[str, torch.Tensor]:
        gen, bs = state.gen, state.batch_size
        _set_lr(state, config)
        idx_a = torch.randint(n_a, (bs,), device=device, generator=gen)
        idx_b = torch.randint(n_b, (bs,), device=device, generator=gen)
        real_a, real_b = images_a[idx_a], images_b[idx_b]
        # A domain's masks ride along as a second channel, so they turn with the crops.
        if "a" in masks:
            real_a = torch.cat([real_a, masks["a"][idx_a]], 1)
        if "b" in masks:
            real_b = torch.cat([real_b, masks["b"][idx_b]], 1)
        if config.aug_dihedral:
            real_a = _dihedral(real_a, gen)
            real_b = _dihedral(real_b, gen)
        real_a, mask_true_a = real_a[:, :1], (real_a[:, 1:] if "a" in masks else None)
        real_b, mask_true_b = real_b[:, :1], (real_b[:, 1:] if "b" in masks else None)
        frozen = state.frozen_at is not None

        # --- generators and attention networks (D is not trained here)
        for p in d_params:
            p.requires_grad_(False)
        att_a, att_b = attend(A_a, real_a), attend(A_b, real_b)
        fake_b = compose(real_a, att_a, F_ab(real_a))
        fake_a = compose(real_b, att_b, F_ba(real_b))
        rec_a = compose(fake_b, attend(A_b, fake_b), F_ba(fake_b))
        rec_b = compose(fake_a, attend(A_a, fake_a), F_ab(fake_a))
        if frozen:  # the discriminators see the attended region only
            mask_a = (att_a > tau).to(real_a.dtype)
            mask_b = (att_b > tau).to(real_b.dtype)
            seen_real_a, seen_real_b = real_a * mask_a, real_b * mask_b
            seen_fake_b, seen_fake_a = fake_b * mask_a, fake_a * mask_b
        else:
            seen_real_a, seen_real_b, seen_fake_b, seen_fake_a = real_a, real_b, fake_b, fake_a
        loss_adv = _lsgan(D_b(seen_fake_b), 1.0) + _lsgan(D_a(seen_fake_a), 1.0)
        loss_cycle = (F.l1_loss(low(rec_a), low(real_a)) + F.l1_loss(low(rec_b), low(real_b)))
        loss_g = loss_adv + config.cycle_weight * loss_cycle
        loss_mask = None
        for att, truth in ((att_a, mask_true_a), (att_b, mask_true_b)):
            if att is not None and truth is not None:
                term = F.binary_cross_entropy(att.float().clamp(1e-6, 1 - 1e-6), truth)
                loss_mask = term if loss_mask is None else loss_mask + term
        if loss_mask is not None and not frozen:
            loss_g = loss_g + config.mask_weight * loss_mask
        opt_G.zero_grad(set_to_none=True)
        if opt_A is not None:
            opt_A.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_G.step()
        if opt_A is not None and not frozen:
            opt_A.step()

        # --- discriminators
        for p in d_params:
            p.requires_grad_(True)
        loss_d_a = 0.5 * (_lsgan(D_a(seen_real_a), 1.0) + _lsgan(D_a(seen_fake_a.detach()), 0.0))
        loss_d_b = 0.5 * (_lsgan(D_b(seen_real_b), 1.0) + _lsgan(D_b(seen_fake_b.detach()), 0.0))
        opt_D.zero_grad(set_to_none=True)
        (loss_d_a + loss_d_b).backward()
        opt_D.step()

        out = {"d": (loss_d_a + loss_d_b).detach(), "g": loss_adv.detach(),
               "cycle": loss_cycle.detach(), "d_a": loss_d_a.detach(),
               "d_b": loss_d_b.detach()}
        if loss_mask is not None:
            out["mask"] = loss_mask.detach()
        if att_a is not None:
            out["attention_a"] = att_a.detach().mean()
            out["attention_b"] = att_b.detach().mean()
        return out

    return step


def _low_pass(sigma: float, device: torch.device):
    """A Gaussian blur of ``(B, 1, H, W)`` crops (reflected at the edges), or the identity
    for ``sigma`` 0."""
    if sigma <= 0:
        return lambda x: x
    from ..gan.attention import gaussian_kernel

    kernel = gaussian_kernel(sigma, device)
    radius = kernel.numel() // 2
    rows, cols = kernel.view(1, 1, -1, 1), kernel.view(1, 1, 1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
        return F.conv2d(F.conv2d(x, rows.to(x.dtype)), cols.to(x.dtype))

    return blur


def _lsgan(prediction: torch.Tensor, target: float) -> torch.Tensor:
    return ((prediction - target) ** 2).mean()


def _dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One of the 8 flips / quarter turns per crop, drawn from ``gen``."""
    k = torch.randint(8, (x.shape[0],), device=x.device, generator=gen)
    flip = (k >= 4).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(-1), x)
    turns = k % 4
    out = x
    for t in (1, 2, 3):  # square crops: every turn keeps the shape
        out = torch.where((turns == t).view(-1, 1, 1, 1), torch.rot90(x, t, (-2, -1)), out)
    return out


def _set_lr(state: _State, config: TranslateConfig) -> None:
    """Constant, then falling linearly to 0 over the last part of the steps."""
    start = config.lr_decay_after * config.steps
    if state.step < start or config.lr_decay_after >= 1:
        lr = config.lr
    else:
        lr = config.lr * max(0.0, (config.steps - state.step) / max(config.steps - start, 1))
    for opt in state.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = lr


def _freeze(state: _State) -> None:
    state.frozen_at = state.step
    for name in ("A_a", "A_b"):
        state.nets[name].requires_grad_(False)


# --------------------------------------------------------------------------- helpers
def _spread(n: int, k: int) -> torch.Tensor:
    return torch.linspace(0, n - 1, min(k, n)).round().long()


@torch.no_grad()
def _samples(state: _State, fixed_a: torch.Tensor, fixed_b: torch.Tensor
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of :data:`SAMPLE_ROWS` in eval mode (the networks as they translate)."""
    nets = state.nets
    rows = []
    for x, gen, att_net in ((fixed_a, nets["F_ab"], nets.get("A_a")),
                            (fixed_b, nets["F_ba"], nets.get("A_b"))):
        used = [m for m in (gen, att_net) if m is not None]
        for m in used:
            m.eval()
        try:
            att = None if att_net is None else att_net(x)
            y = compose(x, att, gen(x))
        finally:
            for m in used:
                m.train()
        rows += [x, (torch.ones_like(x) if att is None else att) * 2 - 1, y]
    images = torch.cat([r[:, 0] for r in rows]).clamp(-1, 1).float().cpu().numpy()
    labels = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    return images, labels


def _restore(state: _State, ckpt, device: torch.device) -> None:
    for name, net in state.nets.items():
        load_module_state(net, ckpt.state_dict(name), what=name, path=ckpt.path)
    for name, opt in state.optimizers.items():
        load_optimizer_state(ckpt, name, opt)
    restore_rng(ckpt)
    if "rng.data" in ckpt.tensors and device.type == ckpt.metadata.get("device_type", "cpu"):
        state.gen.set_state(ckpt.tensors["rng.data"])
    state.step = int(ckpt.step)
    if "train.batch_size" in ckpt.tensors:
        state.batch_size = int(ckpt.tensors["train.batch_size"][0])
    state.seconds = float((ckpt.metadata.get("timings") or {}).get("seconds", 0.0))
    frozen = ckpt.metadata.get("attention_frozen_at")
    if isinstance(frozen, int) and state.attention:
        _freeze(state)
        state.frozen_at = frozen
    state.history = list((ckpt.metadata.get("summary") or {}).get("history", []))


def _check_resumed_data(ckpt, dom_a: DomainData, dom_b: DomainData) -> None:
    saved = ckpt.metadata.get("domains") or {}
    for key, dom in (("a", dom_a), ("b", dom_b)):
        n = (saved.get(key) or {}).get("n_cells")
        if isinstance(n, int) and n != dom.n:
            raise ValueError(
                f"cannot resume {ckpt.path.name}: domain {key.upper()} had {n} cells, the "
                f"data given has {dom.n}: resume with the same data")


def _rate(state: _State) -> float:
    return state.step * state.batch_size / state.seconds if state.seconds else 0.0


def _metadata_base(dom_a: DomainData, dom_b: DomainData, levels: Levels,
                   device: torch.device) -> dict[str, Any]:
    return {
        "levels": levels.to_dict(),
        "domains": {"a": dom_a.info(), "b": dom_b.info()},
        "data": {"image_size": dom_a.image_size},
        "device_type": device.type,
        "device": describe(device),
        "napari_atagan_version": __version__,
    }


def _summary(state: _State, config: TranslateConfig, final: bool) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "steps": state.step,
        "target_steps": config.steps,
        "finished": final and state.step >= config.steps,
        "seconds": round(state.seconds, 3),
        "images_per_s": round(_rate(state), 1),
        "steps_per_s": round(state.step / state.seconds, 3) if state.seconds else 0.0,
        "batch_size": state.batch_size,
        "attention": bool(config.attention),
        "attention_frozen_at": state.frozen_at,
        "final_losses": {k: v for k, v in last.items() if k != "step"},
        "history": state.history[-200:],
    }


def _json(summary: dict[str, Any]) -> str:
    import json

    return json.dumps(summary, indent=2)
