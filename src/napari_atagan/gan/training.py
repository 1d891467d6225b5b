"""The ATA-GAN training loop: one generator of progress events for every front end.

``train(config, data, out_dir)`` yields :class:`Progress`, :class:`Samples`,
:class:`Message` and :class:`CheckpointSaved` events and ends with
:class:`Finished`. The command line prints them; the napari widget runs the
same generator in a worker thread. Asking it to stop (``stop`` callable or
event, or closing the generator) ends it after the current step and always
leaves a complete checkpoint behind.

One step, as in ATA-GAN (Kastaniotis et al. 2018) with the additions the
design notes ask for:

* discriminator: non-saturating GAN loss on real crops (dihedral + mild
  intensity jitter only: the symmetries of the data, which cannot leak into
  the generator) and on generated cells; an auxiliary pattern head on real
  cells when the data is labelled; and ``beta *`` the attention-transfer loss
  between D's CAM and the frozen teacher's map on real cells that were moved
  and zoomed out (with the teacher map moved identically), so D learns where a
  cell is anywhere in a window, not only at the centre;
* generator: non-saturating loss plus the pattern head on its cells;
* an exponential moving average of the generator is kept for sampling;
* optional: R1 / R2 gradient penalties on D (:func:`gradient_penalty`), and
  adaptive augmentation of everything the adversarial loss shows D
  (:class:`~napari_atagan.gan.augment.AdaptiveAugment`).

All data lives on the training device and all randomness comes from one
seeded ``torch.Generator``, so a run resumed from a checkpoint continues bit
for bit on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__
from .attention import (
    PatternClassifier,
    at_loss,
    classifier_maps,
    classifier_options,
    teacher_maps,
    train_classifier,
)
from .augment import AdaptiveAugment, Augmenter, dihedral
from ..checkpoint import (
    GENERATOR_STATISTICS,
    load_checkpoint,
    load_module_state,
    load_optimizer_state,
    restore_rng,
    save_checkpoint,
)
from .checkpoint import load_classifier_run, load_teacher
from .config import TrainConfig
from ..data import CellData
from ..device import describe, resolve_device, synchronize
from .models import build_models, recompute_batchnorm, standing_statistics
from .probe import fit_pattern_probe
from ..events import (
    CHECKPOINT_NAME,
    CheckpointSaved,
    Event,
    Finished,
    Message,
    Progress,
    Samples,
    StopSignal,
    run_to_end,
    should_stop as _should_stop,
)

# --------------------------------------------------------------------------- state
@dataclass
class _State:
    """Everything that changes during training and goes into a checkpoint."""

    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0
    batch_size: int = 0
    seconds: float = 0.0
    teacher: PatternClassifier | None = None
    teacher_info: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    ada: AdaptiveAugment | None = None


def train(
    config: TrainConfig,
    data: CellData,
    out_dir: str | Path,
    *,
    resume: str | Path | None = None,
    stop: StopSignal = None,
) -> Iterator[Event]:
    """Train an ATA-GAN on ``data`` and write checkpoints into ``out_dir``.

    ``resume`` continues from a checkpoint of an earlier run with the same data;
    its config wins over ``config`` except for ``steps`` (the new total), so a
    run can be extended. Yields events; the last one is :class:`Finished`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    resumed = None
    if resume is not None:
        resumed = load_checkpoint(resume)
        config = resumed.config.replace(steps=config.steps)
        _check_resume_data(resumed, data)
    config.validate()
    _check_data(config, data)

    device = resolve_device(config.device)
    yield Message(f"training on {describe(device)}: {data.n} cells, "
                  f"{len(data.class_names) or 'no'} patterns, teacher '{config.teacher}'")

    torch.manual_seed(config.seed)
    n_classes = len(data.class_names) if data.has_labels else 0
    G, D = build_models(config, n_classes)
    G.to(device)
    D.to(device)
    if config.amp and device.type == "cuda":
        for m in (G, D):
            m.to(memory_format=torch.channels_last)
    # One fused kernel updates all of a network's parameters (CUDA and CPU alike);
    # a captured step keeps Adam's step counts on the device.
    graphed = _captured(config, device)
    fused = {"fused": True, "capturable": graphed}
    state = _State(
        G=G,
        D=D,
        G_ema=copy.deepcopy(G).eval().requires_grad_(False),
        opt_G=torch.optim.Adam(G.parameters(), lr=config.lr_g, betas=config.adam_betas, **fused),
        opt_D=torch.optim.Adam(D.parameters(), lr=config.lr_d, betas=config.adam_betas, **fused),
        gen=torch.Generator(device=device),
        batch_size=config.batch_size,
        ada=AdaptiveAugment.from_config(config, device) if config.adaptive else None,
    )
    state.gen.manual_seed(config.seed)
    if config.penalized and config.cuda_graph and not config.compile and device.type == "cuda":
        yield Message("R1/R2 penalty on: the training step runs without a CUDA graph")

    # The teacher's maps: computed once per cell, then moved with every augmentation.
    if resumed is not None:
        _restore(state, resumed, device)
        yield Message(f"resumed from {resumed.path.name} at step {state.step}")
    maps, state.teacher, state.teacher_info = yield from _teacher(config, data, device, resumed,
                                                                  stop)
    if state.teacher_info.get("val_accuracy") is not None:
        yield Message(
            f"pattern classifier (teacher) validation accuracy: "
            f"{state.teacher_info['val_accuracy']:.1%}"
        )

    images = torch.from_numpy(data.images).to(device).unsqueeze(1)
    labels = torch.from_numpy(data.labels).to(device) if n_classes else None
    if maps is not None:
        # D's CAM lives on the feature grid: compare there (cheap, no upsampling per step).
        grid = config.image_size // state.D.stride
        maps = F.adaptive_avg_pool2d(maps, grid)
    augment = Augmenter(config, device)
    step_fn = _make_step(config, state, augment, images, labels, maps, n_classes, device)
    if graphed:
        step_fn = _CudaGraphStep(step_fn, state, config.ema_decay)

    fixed_z, fixed_y = _fixed_latents(config, n_classes, device)
    metadata = _metadata_base(config, data, device)

    settled_at = [-1]
    # cells of two patterns or more and no classifier: name patterns by a probe on D
    probed = labels is not None and n_classes >= 2 and np.unique(data.labels).size >= 2
    probe_info: dict[str, Any] = {}  # the last probe's summary

    def settle_generator() -> None:
        """Standing statistics for the averaged generator, once per step at most."""
        if settled_at[0] != state.step:
            standing_statistics(state.G_ema)
            settled_at[0] = state.step

    def save(final: bool = False) -> Path:
        recalibrate_batchnorm(state.D, images, config.batch_size)
        settle_generator()
        meta = dict(metadata)
        meta.update(
            step=state.step,
            teacher=state.teacher_info,
            timings={"seconds": state.seconds,
                     "images_per_s": _rate(state)},
            summary=_summary(state, config, final),
        )
        modules = {"G": state.G, "G_ema": state.G_ema, "D": state.D}
        if state.teacher is not None:
            modules["teacher"] = state.teacher
        elif probed:
            # no classifier to name patterns: a linear probe on D's features (gan.probe)
            modules["probe"], meta["probe"] = fit_pattern_probe(state.D, images, labels,
                                                                n_classes)
            probe_info.update(meta["probe"])
        extra = {"rng.data": state.gen.get_state(),
                 "train.batch_size": torch.tensor([state.batch_size])}
        if state.ada is not None:
            extra["train.ada"] = state.ada.state()
        return save_checkpoint(
            ckpt_path, config=config, modules=modules, metadata=meta,
            optimizers={"G": state.opt_G, "D": state.opt_D}, extra_tensors=extra,
        )

    stopped = False
    last_log = state.step
    t_log = time.perf_counter()
    # state.seconds: time spent in training steps. The device runs behind the host
    # (a replayed CUDA graph returns at once), so a stretch of steps ends only once
    # the device has finished it; samples, checkpoints and the consumer's handling
    # of events fall between stretches and are not counted.
    clock = _StepClock(state, device)
    try:
        while state.step < config.steps:
            if _should_stop(stop):
                stopped = True
                break
            try:
                losses = step_fn()
            except torch.OutOfMemoryError:
                if state.batch_size <= 1:
                    raise
                state.batch_size = max(1, state.batch_size // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                with clock.paused():
                    yield Message(f"out of GPU memory: batch size halved to {state.batch_size}")
                continue
            state.step += 1
            if state.ada is not None and state.step % config.ada_interval == 0:
                state.ada.update()  # outside the step (and its graph), on the device
            if getattr(step_fn, "notice", None):
                with clock.paused():
                    yield Message(step_fn.notice)
                step_fn.notice = None

            if state.step % config.log_every == 0 or state.step == config.steps:
                vals = {k: float(v) for k, v in losses.items()}  # one host sync per log
                with clock.paused():
                    state.history.append({"step": state.step, **vals})
                    now = time.perf_counter()
                    rate = (state.step - last_log) * state.batch_size / max(now - t_log, 1e-9)
                    last_log, t_log = state.step, now
                    left = (config.steps - state.step) * state.batch_size / max(rate, 1e-9)
                    yield Progress(state.step, config.steps, vals, rate, left,
                                   state.seconds, state.batch_size)
            if state.step % config.sample_every == 0 or state.step == config.steps:
                with clock.paused():
                    settle_generator()
                    yield Samples(state.step, _sample(state.G_ema, fixed_z, fixed_y),
                                  None if fixed_y is None else fixed_y.cpu().numpy())
            if state.step % config.checkpoint_every == 0 and state.step < config.steps:
                with clock.paused():
                    yield CheckpointSaved(state.step, save())
        clock.lap()
    except GeneratorExit:  # (at a yield: no stretch of steps is running)
        save(final=True)
        _release(device)
        raise
    path = save(final=True)
    if probe_info:
        yield Message("no classifier teacher: patterns are named by a linear probe on the "
                      f"discriminator's features ({probe_info['train_accuracy']:.1%} of the "
                      "training cells right)")
    yield CheckpointSaved(state.step, path)
    summary = _summary(state, config, True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _release(device)
    yield Finished(path, summary, stopped)


# --------------------------------------------------------------------------- one step
GUIDED_FRACTION = 4
"""Pattern guidance names one in this many of each step's generated cells."""


def _captured(config: TrainConfig, device: torch.device) -> bool:
    """Whether the step is captured as a CUDA graph: on CUDA, unless it is compiled
    or a gradient penalty is on (its double backward runs on some steps only, and
    one captured graph replays the same work every step)."""
    return (config.cuda_graph and not config.compile and device.type == "cuda"
            and not config.penalized)


def gradient_penalty(realness: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """``gamma / 2 * E_x |grad_x realness(x)|^2``: R1 on real cells, R2 on generated ones.

    ``realness`` maps a batch to its logits ``(B,)`` (as D sees them, pattern
    term included). It runs in float32 with autocast off: under bf16 the
    gradient would keep about three significant digits, and its square fewer.
    The result keeps its graph (``create_graph``), so ``backward`` reaches D's
    weights through the gradient (a double backward). ``x`` itself is not changed.
    """
    x = x.detach().float().requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):
        logits = realness(x).float()
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        return 0.5 * float(gamma) * grad.square().flatten(1).sum(1).mean()


def _make_step(config, state: _State, augment, images, labels, maps, n_classes, device):
    """Build the closure that runs one D step and one G step and returns losses (tensors)."""
    beta = config.effective_beta
    use_amp = config.amp and device.type == "cuda"
    # A captured step recasts the weights at every replay: torch asks for autocast
    # without its cache of casts inside CUDA graphs.
    cache = not _captured(config, device)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
           if use_amp else torch.autocast(device.type, enabled=False))
    ema_decay = config.ema_decay
    projection = bool(n_classes) and config.conditioning == "projection"
    auxiliary = bool(n_classes) and config.conditioning == "auxiliary"
    n = images.shape[0]
    G, D, G_ema = state.G, state.D, state.G_ema
    g_step = torch.compile(G) if config.compile else G
    d_step = torch.compile(D) if config.compile else D
    ema_params, g_params = list(G_ema.parameters()), list(G.parameters())
    ema_buffers, g_buffers = list(G_ema.buffers()), list(G.buffers())
    assert len(ema_params) == len(g_params) and len(ema_buffers) == len(g_buffers)
    ada = state.ada
    penalties = {name: float(gamma) for name, gamma in
                 (("r1", config.r1_gamma), ("r2", config.r2_gamma)) if gamma > 0}
    every = int(config.penalty_every)
    # the latest value of each penalty, reported on the steps between lazy ones
    last_penalty = {name: torch.zeros((), device=device) for name in penalties}
    guide = state.teacher if (config.pattern_guidance > 0 and n_classes) else None
    if guide is not None:
        guide.eval().requires_grad_(False)

    def realness(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """D's realness logit as the adversarial loss sees it (eager D: a compiled
        module cannot run a double backward)."""
        logit, cls, _ = D(x)
        logit = logit.float()
        return logit + _own_pattern(cls, y) if projection else logit

    def step(ema_weight: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One step; ``ema_weight`` (default: from the step count) moves the average."""
        b = state.batch_size
        gen = state.gen
        idx = torch.randint(n, (b,), device=device, generator=gen)
        real = images[idx]
        y_real = labels[idx] if labels is not None else None
        real_adv, _ = augment(real, None, generator=gen, geometric=False)
        z = torch.randn(b, config.z_dim, device=device, generator=gen)
        y_fake = (torch.randint(n_classes, (b,), device=device, generator=gen)
                  if n_classes else None)
        if beta > 0:
            real_at, map_at = augment(real, maps[idx], generator=gen, geometric=True)

        # --- discriminator. Real, generated and moved real cells go through D in
        # separate batches, so batch normalisation never lets D tell real from
        # generated by what else is in the batch.
        with amp:
            fake = g_step(z, y_fake, generator=gen)
        if ada is not None:
            # the same moves, at the same adaptive rate, for real and generated cells
            # (and the generator's step sees its cells moved as D saw them here)
            # (in float32: bf16 sampling positions would be off by a tenth of a pixel)
            real_adv = augment.move(real_adv, ada.p, generator=gen)
            fake = augment.move(fake.float(), ada.p, generator=gen)
        with amp:
            l_real, cls, _ = d_step(real_adv)
            l_fake, cls_fake, _ = d_step(fake.detach())
            if beta > 0:
                feats_at = d_step(real_at)[2]
        l_real, l_fake = l_real.float(), l_fake.float()
        if projection:
            l_real = l_real + _own_pattern(cls, y_real)
            l_fake = l_fake + _own_pattern(cls_fake, y_fake)
        loss_d = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
        out = {"d": loss_d.detach()}
        if ada is not None:
            ada.observe(l_real)
            out["ada_p"] = ada.p.detach().clone()
        if penalties and state.step % every == 0:
            # lazy: every `every` steps, `every` times as strong
            inputs = {"r1": (real_adv, y_real), "r2": (fake.detach(), y_fake)}
            for name, gamma in penalties.items():
                x, y = inputs[name]
                penalty = gradient_penalty(lambda v, y=y: realness(v, y), x, gamma)
                loss_d = loss_d + every * penalty
                last_penalty[name] = penalty.detach()
        out.update(last_penalty)
        if auxiliary:
            loss_cls = F.cross_entropy(cls.float(), y_real)
            loss_d = loss_d + loss_cls
            out["d_cls"] = loss_cls.detach()
        if beta > 0:
            # The soft-CAM's sigmoid(logit) factor cancels after L2 normalisation,
            # so the transfer compares the class activation map itself.
            cam = D.cam_map(feats_at.float())
            loss_at = at_loss(cam, map_at[:, 0])
            loss_d = loss_d + beta * loss_at
            out["at"] = loss_at.detach()
        state.opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        state.opt_D.step()

        # --- generator. D's weights need no gradient here: the D step has used
        # its own, and the next one starts afresh.
        D.requires_grad_(False)
        try:
            with amp:
                logit_g, cls_g, _ = d_step(fake)
            logit_g = logit_g.float()
            if projection:
                logit_g = logit_g + _own_pattern(cls_g, y_fake)
            loss_g = F.softplus(-logit_g).mean()
            out["g"] = loss_g.detach()
            if auxiliary:
                loss_g = loss_g + config.pattern_weight_g * F.cross_entropy(cls_g.float(),
                                                                            y_fake)
            if guide is not None:
                # a quarter of the batch: the teacher's backward pass costs several
                # times the generator's, and the batch's cells are drawn at random
                m = max(2, fake.shape[0] // GUIDED_FRACTION)
                view = torch.randint(0, 8, (m,), device=device, generator=gen)
                with amp:
                    named = guide(dihedral(fake[:m], view))
                loss_pat = F.cross_entropy(named.float(), y_fake[:m])
                loss_g = loss_g + config.pattern_guidance * loss_pat
                out["g_pat"] = loss_pat.detach()
            state.opt_G.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            D.requires_grad_(True)
        state.opt_G.step()

        with torch.no_grad():
            if ema_weight is None:
                ema_weight = _ema_weight(state.step, ema_decay)
            _move_average(ema_params, g_params, ema_weight)
            torch._foreach_copy_(ema_buffers, g_buffers)
        return out

    return step


def _ema_weight(step: int, decay: float) -> float:
    """How far the average moves towards G at ``step``. Warm-up: early on the
    average follows G closely, later it averages over about 1 / (1 - decay) steps."""
    return 1.0 - min(decay, (1 + step) / (10 + step))


def _move_average(average: list[torch.Tensor], current: list[torch.Tensor],
                  weight: float | torch.Tensor) -> None:
    """``average += weight * (current - average)``, in place. ``weight`` is a number,
    or a 0-d tensor on the device that a CUDA graph reads afresh at every replay
    (a number would stay the value it had at capture)."""
    if torch.is_tensor(weight):
        step = torch._foreach_sub(current, average)
        torch._foreach_mul_(step, weight)
        torch._foreach_add_(average, step)
    else:
        torch._foreach_lerp_(average, current, weight)


class _CudaGraphStep:
    """The whole training step, both updates and the average, captured once as a
    CUDA graph and then replayed: one launch per step instead of hundreds.

    The first :attr:`WARMUP` steps of a batch size run as usual on a side stream
    (they create Adam's moments and settle the convolution algorithms); the
    next one is captured and run by a replay. Replays draw fresh random numbers
    from the run's generator (it is registered with the graph) and read the
    average's weight from a device tensor set before each replay. A new batch
    size (after running out of memory) is captured afresh. If the capture fails
    for another reason, training goes on without a graph; ``notice`` says so
    (and says when the graph starts), for the training loop to pass on.
    """

    WARMUP = 3

    def __init__(self, step: Callable, state: _State, ema_decay: float) -> None:
        self.step, self.state, self.ema_decay = step, state, ema_decay
        device = state.gen.device
        self.stream = torch.cuda.Stream(device)
        self.weight = torch.zeros((), device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: dict[str, torch.Tensor] = {}
        self.batch = 0
        self.warm = 0
        self.failed = False
        self.notice: str | None = None

    def __call__(self) -> dict[str, torch.Tensor]:
        state = self.state
        if self.failed:
            return self.step()
        if self.batch != state.batch_size:
            self.graph, self.out, self.warm = None, {}, 0
            self.batch = state.batch_size
        if self.graph is None and self.warm < self.WARMUP:
            self.warm += 1
            current = torch.cuda.current_stream()
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                out = self.step()
            current.wait_stream(self.stream)
            return out
        if self.graph is None:
            self._capture()
            if self.failed:
                return self.step()
        self.weight.fill_(_ema_weight(state.step, self.ema_decay))
        self.graph.replay()
        return self.out

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.state.gen)
        entry = torch.cuda.current_stream()
        try:
            # thread_local: a napari viewer may use the GPU from its own thread meanwhile
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                out = self.step(self.weight)
        except torch.OutOfMemoryError:
            torch.cuda.set_stream(entry)
            raise  # the training loop halves the batch; that size is captured afresh
        except RuntimeError as exc:
            # a failing end of capture leaves the capture stream current
            torch.cuda.set_stream(entry)
            self.failed = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.notice = (f"the training step could not be captured as a CUDA graph "
                           f"({first}); training goes on without one")
            return
        self.graph, self.out = graph, out
        self.notice = (f"training step captured as a CUDA graph at step {self.state.step + 1} "
                       f"(batch {self.batch}): from here on one launch per step")


# --------------------------------------------------------------------------- helpers
def _own_pattern(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Projection conditioning: D's pattern head evaluated at each cell's own pattern."""
    return class_logits.float().gather(1, labels[:, None])[:, 0]


def _check_data(config: TrainConfig, data: CellData) -> None:
    if data.n < 2:
        raise ValueError(f"training needs at least 2 cells, got {data.n}")
    if data.image_size != config.image_size:
        raise ValueError(
            f"the cells were prepared at {data.image_size} px but the config asks for "
            f"{config.image_size} px: load them with image_size={config.image_size}"
        )
    if config.teacher == "mask" and not data.has_masks:
        raise ValueError(
            "teacher 'mask' needs cell masks (NNNNN_Mask.png beside each image, or a mask "
            "stack): add masks or choose teacher 'classifier' or 'none'"
        )
    if config.teacher == "classifier" and len(data.class_names) < 2:
        raise ValueError(
            "teacher 'classifier' needs cells of at least 2 patterns (class sub-folders): "
            "choose teacher 'mask' or 'none'"
        )


def _check_resume_data(ckpt, data: CellData) -> None:
    names = ckpt.class_names
    if names and names != list(data.class_names):
        raise ValueError(
            f"cannot resume {ckpt.path.name}: it was trained on patterns {names}, "
            f"the data has {list(data.class_names)}"
        )


def _teacher(config, data, device, resumed, stop: StopSignal = None):
    """The frozen teacher: its maps (N,1,S,S) on ``device``, the model (classifier only)
    and a JSON-able summary, as the return value of a generator that yields a
    :class:`Message` after every epoch of the classifier's training. A resumed
    classifier run reuses the saved classifier. ``stop`` ends the classifier's
    training early (the run then stops before its first step)."""
    if config.effective_beta == 0:
        return None, None, {"kind": config.teacher}
    if config.teacher != "classifier":
        maps, info = teacher_maps(config, data, device)
        return maps, None, {"kind": config.teacher, **info}
    model = load_teacher(resumed, device) if resumed is not None else None
    if model is not None:  # a resumed classifier run keeps its classifier
        info = dict(resumed.metadata.get("teacher", {}))
    elif config.teacher_from:
        model, info = _borrowed_teacher(config, data, device)
        yield Message(f"pattern classifier (teacher) taken from {config.teacher_from}")
    else:
        model, info = yield from _train_classifier_with_messages(config, data, device, stop)
        info = {"kind": "classifier", **info}
    model.to(device).eval()
    maps = classifier_maps(model, torch.from_numpy(data.images)).to(device)
    return maps, model, info


def _borrowed_teacher(config, data, device):
    """The classifier teacher of ``config.teacher_from`` and its summary; ValueError when
    that file has none, or knows other patterns or another crop size than this run."""
    source, model = load_classifier_run(config.teacher_from, device)
    if list(source.class_names) != list(data.class_names):
        raise ValueError(f"the teacher of {source.path.name} knows the patterns "
                         f"{list(source.class_names)}, the data has {list(data.class_names)}")
    size = int(source.config.image_size)
    if size != config.image_size:
        raise ValueError(f"the teacher of {source.path.name} was trained on {size} px crops, "
                         f"this run uses {config.image_size} px")
    info = dict(source.metadata.get("teacher", {}))
    return model, {**info, "kind": "classifier", "from": str(config.teacher_from)}


def _train_classifier_with_messages(config, data, device, stop: StopSignal = None):
    """:func:`train_classifier` in a helper thread, its epochs reported as messages.

    Training the classifier teacher takes minutes on a CPU before the first GAN
    step; the front ends show these messages meanwhile. A stop request ends it
    at its next step; closing this generator also ends the thread before
    returning, so no work is left running behind a closed run.
    """
    import queue

    reports: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}
    closed = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = train_classifier(
                data, device=device, progress=reports.put,
                stop=lambda: closed.is_set() or _should_stop(stop), **classifier_options(config))
        except BaseException as exc:  # re-raised in the training thread below
            outcome["error"] = exc
        finally:
            reports.put(None)

    yield Message(f"training the pattern classifier (teacher): {config.classifier_epochs} "
                  f"epochs on {data.n} cells")
    worker = threading.Thread(target=work, name="atagan-classifier", daemon=True)
    worker.start()
    try:
        while (report := reports.get()) is not None:
            val = report.get("val_accuracy")
            yield Message(
                f"classifier epoch {report['epoch']}/{report['epochs']}: loss "
                f"{report['loss']:.3f}, training accuracy {report['train_accuracy']:.1%}"
                + (f", validation accuracy {val:.1%}" if val is not None else "")
                + f" ({report['seconds']:.0f} s)")
    finally:
        closed.set()  # a no-op once the thread is done; ends it early when closed
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    if outcome["result"][1].get("stopped"):
        yield Message(f"stopped while training the classifier, after "
                      f"{outcome['result'][1]['epochs_completed']} complete epoch(s)")
    return outcome["result"]


def _restore(state: _State, ckpt, device) -> None:
    load_module_state(state.G, ckpt.state_dict("G."), what="generator", path=ckpt.path)
    load_module_state(state.D, ckpt.state_dict("D."), what="discriminator", path=ckpt.path)
    load_module_state(state.G_ema, ckpt.state_dict("G_ema."), what="generator (EMA)",
                      path=ckpt.path)
    load_optimizer_state(ckpt, "G", state.opt_G)
    load_optimizer_state(ckpt, "D", state.opt_D)
    restore_rng(ckpt)
    if "rng.data" in ckpt.tensors and device.type == ckpt.metadata.get("device_type", "cpu"):
        state.gen.set_state(ckpt.tensors["rng.data"])
    state.step = int(ckpt.step)
    if "train.batch_size" in ckpt.tensors:
        state.batch_size = int(ckpt.tensors["train.batch_size"][0])
    if state.ada is not None:
        if "train.ada" in ckpt.tensors:
            state.ada.load_state(ckpt.tensors["train.ada"])
        elif "ada_p" in ckpt.metadata.get("summary", {}):
            state.ada.p.fill_(float(ckpt.metadata["summary"]["ada_p"]))
    timings = ckpt.metadata.get("timings", {})
    state.seconds = float(timings.get("seconds", 0.0))
    state.history = list(ckpt.metadata.get("summary", {}).get("history", []))


def _fixed_latents(config, n_classes, device, per_class: int = 6):
    g = torch.Generator(device="cpu").manual_seed(config.seed + 1)
    n = per_class * max(n_classes, 1) if n_classes else 36
    z = torch.randn(n, config.z_dim, generator=g).to(device)
    y = (torch.arange(n_classes).repeat_interleave(per_class).to(device)
         if n_classes else None)
    return z, y


@torch.no_grad()
def _sample(G_ema, z, y, seed: int = 0) -> np.ndarray:
    """The preview cells; a model with noise inputs draws the same noise each time."""
    gen = torch.Generator(device=z.device).manual_seed(seed)
    return G_ema(z, y, generator=gen)[:, 0].float().cpu().numpy()


class _StepClock:
    """Adds the wall time of stretches of training steps to ``state.seconds``.

    :meth:`lap` ends a stretch (waiting for the device to finish its queued work)
    and adds its time; a second :meth:`lap` adds nothing. ``with clock.paused():``
    ends the stretch and begins the next one after the block.
    """

    def __init__(self, state: _State, device: torch.device) -> None:
        self.state, self.device = state, device
        self.t0: float | None = time.perf_counter()

    def lap(self) -> None:
        if self.t0 is None:
            return
        synchronize(self.device)  # the device runs behind the host
        self.state.seconds += time.perf_counter() - self.t0
        self.t0 = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.lap()
        try:
            yield
        finally:
            self.t0 = time.perf_counter()


def _rate(state: _State) -> float:
    return state.step * state.batch_size / state.seconds if state.seconds else 0.0


def _metadata_base(config, data: CellData, device) -> dict[str, Any]:
    return {
        "class_names": list(data.class_names),
        "intensity": data.intensity,
        "data": {
            "cell_diameter": float(data.cell_diameter),
            "model_cell_diameter": float(data.model_cell_diameter),
            "image_size": int(data.image_size),
            "n_cells": int(data.n),
            "has_masks": bool(data.has_masks),
        },
        # G_ema's BatchNorm statistics are its own (standing statistics)
        "generator_statistics": GENERATOR_STATISTICS,
        "device_type": device.type,
        "device": describe(device),
        "versions": {
            "napari_atagan": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _summary(state: _State, config: TrainConfig, final: bool) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "steps": state.step,
        "target_steps": config.steps,
        "finished": final and state.step >= config.steps,
        "seconds": round(state.seconds, 3),
        "images_per_s": round(_rate(state), 1),
        "batch_size": state.batch_size,
        "final_losses": {k: v for k, v in last.items() if k != "step"},
        "history": state.history[-200:],
        "teacher": {k: v for k, v in state.teacher_info.items()
                    if isinstance(v, int | float | str | bool | type(None))},
        **({"ada_p": float(state.ada.p)} if state.ada is not None else {}),
    }


def recalibrate_batchnorm(D: torch.nn.Module, images: torch.Tensor, batch_size: int,
                          n: int = 4096) -> None:
    """Set D's batch-norm running statistics to those of real cells.

    During training the running averages drift towards whatever D saw last
    (mostly generated cells). At inference D only ever sees real images (crops
    and slides), so its statistics are recomputed from up to ``n`` real cells,
    spread evenly over the data set, before every checkpoint. Deterministic, and
    it leaves the training state (weights, RNG) untouched.
    """
    idx = torch.linspace(0, len(images) - 1, min(n, len(images)), device=images.device).long()
    recompute_batchnorm(D, ((images[chunk],) for chunk in idx.split(max(batch_size, 2))))


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointSaved",
    "Event",
    "Finished",
    "Message",
    "Progress",
    "Samples",
    "run_to_end",
    "train",
]
