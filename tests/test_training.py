import copy
import threading

import numpy as np
import pytest
import torch

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.gan.config import TrainConfig
from napari_atagan.data import from_arrays
from napari_atagan.gan.training import (
    CheckpointSaved,
    Finished,
    Message,
    Progress,
    Samples,
    _captured,
    run_to_end,
    train,
)

from .conftest import tiny_config


def _tensors(path):
    ck = load_checkpoint(path)
    return {k: v for k, v in ck.tensors.items() if k.split(".")[0] in ("G", "G_ema", "D")}


def test_events_and_final_checkpoint(tmp_path, tiny_data):
    events = list(train(tiny_config(), tiny_data, tmp_path))
    kinds = {type(e) for e in events}
    assert {Message, Progress, Samples, CheckpointSaved, Finished} <= kinds
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.step for p in progress] == list(range(1, 7))
    assert set(progress[-1].losses) == {"d", "g", "at"}  # projection conditioning
    assert all(np.isfinite(v) for p in progress for v in p.losses.values())
    assert progress[-1].images_per_s > 0 and progress[-1].eta_s == pytest.approx(0, abs=1e-6)
    samples = [e for e in events if isinstance(e, Samples)]
    assert samples[0].images.shape == (18, 16, 16)  # 6 per pattern, 3 patterns
    assert samples[0].images.min() >= -1 and samples[0].images.max() <= 1
    assert list(samples[0].labels) == [0] * 6 + [1] * 6 + [2] * 6

    ck = load_checkpoint(events[-1].checkpoint)
    assert ck.step == 6
    assert ck.class_names == tiny_data.class_names
    assert ck.metadata["summary"]["finished"] is True
    assert ck.metadata["data"]["cell_diameter"] == pytest.approx(tiny_data.cell_diameter)
    assert (tmp_path / "summary.json").exists()


@pytest.mark.parametrize("teacher", ["none", "classifier"])
def test_other_teachers_train(tmp_path, tiny_data, teacher):
    seen = []
    fin = run_to_end(train(tiny_config(teacher=teacher, steps=2), tiny_data, tmp_path),
                     seen.append)
    ck = load_checkpoint(fin.checkpoint)
    assert ck.config.teacher == teacher
    losses = ck.metadata["summary"]["final_losses"]
    assert ("at" in losses) == (teacher != "none")
    if teacher == "classifier":
        assert 0.0 <= ck.metadata["teacher"]["val_accuracy"] <= 1.0
        assert any(k.startswith("teacher.") for k in ck.tensors)
        # the classifier's epochs are reported before the first GAN step
        texts = [e.text for e in seen if isinstance(e, Message)]
        epochs = [t for t in texts if t.startswith("classifier epoch ")]
        assert len(epochs) == ck.config.classifier_epochs
        assert "validation accuracy" in epochs[-1]
        first_progress = next(i for i, e in enumerate(seen) if isinstance(e, Progress))
        assert max(i for i, e in enumerate(seen) if getattr(e, "text", "") in epochs) < \
            first_progress


def test_stop_during_the_classifier_teacher_ends_it_early(tmp_path, tiny_data):
    calls = []

    def stop():  # asked before every classifier step, then before the first GAN step
        calls.append(1)
        return len(calls) > 3

    config = tiny_config(teacher="classifier", steps=5, classifier_epochs=50)
    seen = []
    fin = run_to_end(train(config, tiny_data, tmp_path, stop=stop), seen.append)
    assert fin.stopped and load_checkpoint(fin.checkpoint).step == 0
    info = load_checkpoint(fin.checkpoint).metadata["teacher"]
    assert info["stopped"] and info["epochs_completed"] < 50
    assert any("stopped while training the classifier" in getattr(e, "text", "") for e in seen)


def test_closing_during_the_classifier_teacher_ends_its_thread(tmp_path, tiny_data):
    config = tiny_config(teacher="classifier", steps=5, classifier_epochs=10_000)
    events = train(config, tiny_data, tmp_path)
    while "classifier epoch" not in getattr(next(events), "text", ""):
        pass
    events.close()  # as when the viewer closes: the classifier must not run on
    assert not any(t.name == "atagan-classifier" for t in threading.enumerate())


def test_classifier_errors_reach_the_caller(tmp_path, tiny_data, monkeypatch):
    from napari_atagan.gan import training

    def broken(*args, **kwargs):
        raise ValueError("the classifier broke")

    monkeypatch.setattr(training, "train_classifier", broken)
    with pytest.raises(ValueError, match="the classifier broke"):
        run_to_end(train(tiny_config(teacher="classifier", steps=2), tiny_data, tmp_path))


def test_unlabelled_data_trains_an_unconditional_model(tmp_path, tiny_data):
    data = from_arrays(tiny_data.images, tiny_data.masks, image_size=16)
    fin = run_to_end(train(tiny_config(steps=2), data, tmp_path))
    ck = load_checkpoint(fin.checkpoint)
    assert ck.class_names == [] and ck.n_classes == 0


def test_stop_keeps_a_loadable_checkpoint(tmp_path, tiny_data):
    stop = threading.Event()
    events = []
    for ev in train(tiny_config(steps=50), tiny_data, tmp_path, stop=stop):
        events.append(ev)
        if isinstance(ev, Progress) and ev.step == 3:
            stop.set()
    assert isinstance(events[-1], Finished) and events[-1].stopped
    assert load_checkpoint(events[-1].checkpoint).step == 3


def test_closing_the_generator_writes_a_checkpoint(tmp_path, tiny_data):
    gen = train(tiny_config(steps=50), tiny_data, tmp_path)
    for ev in gen:
        if isinstance(ev, Progress) and ev.step == 2:
            break
    gen.close()
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").step == 2


def test_resume_continues_bit_for_bit(tmp_path, tiny_data):
    cfg = tiny_config(steps=6)
    full = run_to_end(train(cfg, tiny_data, tmp_path / "full")).checkpoint

    stop = threading.Event()
    for ev in train(cfg, tiny_data, tmp_path / "part", stop=stop):
        if isinstance(ev, Progress) and ev.step == 3:
            stop.set()
    part = tmp_path / "part" / "checkpoint.safetensors"
    assert load_checkpoint(part).step == 3
    resumed = run_to_end(train(cfg, tiny_data, tmp_path / "resumed", resume=part)).checkpoint

    a, b = _tensors(full), _tensors(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "teacher, make, match",
    [
        ("mask", lambda d: from_arrays(d.images, None, list(d.labels), image_size=16), "mask"),
        ("classifier", lambda d: from_arrays(d.images, d.masks, image_size=16), "2 patterns"),
    ],
)
def test_teacher_needs_its_data(tmp_path, tiny_data, teacher, make, match):
    with pytest.raises(ValueError, match=match):
        list(train(tiny_config(teacher=teacher), make(tiny_data), tmp_path))


def test_wrong_image_size_is_explained(tmp_path, tiny_data):
    cfg = tiny_config(image_size=32, g_channels=(16, 8, 8))
    with pytest.raises(ValueError, match="image_size=32"):
        list(train(cfg, tiny_data, tmp_path))


def test_missing_gpu_is_a_clear_error(tmp_path, tiny_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        list(train(tiny_config(device="cuda"), tiny_data, tmp_path))


def test_out_of_memory_halves_the_batch(tmp_path, tiny_data, monkeypatch):
    import napari_atagan.gan.training as tr

    real_make_step = tr._make_step

    def make_step(*args, **kwargs):
        step = real_make_step(*args, **kwargs)
        calls = {"n": 0}

        def flaky():
            calls["n"] += 1
            if calls["n"] == 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return step()

        return flaky

    monkeypatch.setattr(tr, "_make_step", make_step)
    events = list(train(tiny_config(steps=3), tiny_data, tmp_path))
    assert any(isinstance(e, Message) and "batch size halved to 4" in e.text for e in events)
    assert events[-1].summary["steps"] == 3 and events[-1].summary["batch_size"] == 4


def test_batchnorm_statistics_come_from_real_cells(tiny_data):
    from napari_atagan.gan.models import Discriminator
    from napari_atagan.gan.training import recalibrate_batchnorm

    torch.manual_seed(0)
    D = Discriminator((8, 16, 16), image_size=16)
    x = torch.from_numpy(tiny_data.images).unsqueeze(1)
    recalibrate_batchnorm(D, x, batch_size=len(x))
    D.eval()
    eval_out = D.features(x)
    D.train()
    with torch.no_grad():
        train_out = D.features(x)  # normalised with this very batch's statistics
    # running variance is unbiased, batch variance biased: equal up to n/(n-1)
    torch.testing.assert_close(eval_out, train_out, rtol=0.05, atol=0.05)


def test_checkpoints_hold_the_averaged_generator_s_standing_statistics(tmp_path, tiny_data):
    import copy

    from napari_atagan.gan.models import standing_statistics

    events = list(train(tiny_config(steps=4), tiny_data, tmp_path))
    ckpt = load_checkpoint(events[-1].checkpoint)
    assert ckpt.metadata["generator_statistics"] == "standing"
    g = ckpt.generator()  # the stored statistics, used as they are
    stored = {k: v for k, v in g.state_dict().items() if "running" in k}
    fresh = standing_statistics(copy.deepcopy(g)).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in stored.items())
    # the previews show what the checkpoint will draw
    samples = [e for e in events if isinstance(e, Samples)][-1]
    from napari_atagan.gan.training import _fixed_latents

    z, y = _fixed_latents(tiny_config(), len(tiny_data.class_names), torch.device("cpu"))
    with torch.no_grad():
        np.testing.assert_array_equal(samples.images, g(z, y)[:, 0].numpy())


def test_auxiliary_conditioning_adds_a_pattern_loss(tmp_path, tiny_data):
    events = list(train(tiny_config(conditioning="auxiliary", steps=2), tiny_data, tmp_path))
    progress = [e for e in events if isinstance(e, Progress)]
    assert set(progress[-1].losses) == {"d", "d_cls", "g", "at"}


def test_periodic_checkpoints_and_their_steps(tmp_path, tiny_data):
    events = list(train(tiny_config(steps=5, checkpoint_every=2), tiny_data, tmp_path))
    assert [e.step for e in events if isinstance(e, CheckpointSaved)] == [2, 4, 5]
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").step == 5


def test_resumed_classifier_run_keeps_its_classifier(tmp_path, tiny_data):
    """A resumed run with the classifier teacher trains no new classifier: it loads the
    saved one, network description and weights, and saves it again unchanged."""
    cfg = tiny_config(teacher="classifier", steps=4)
    part = run_to_end(train(cfg.replace(steps=2), tiny_data, tmp_path / "part")).checkpoint
    seen = []
    done = run_to_end(train(cfg, tiny_data, tmp_path / "resumed", resume=part), seen.append)
    assert not [e for e in seen if getattr(e, "text", "").startswith("classifier epoch ")]
    before, after = load_checkpoint(part), load_checkpoint(done.checkpoint)
    assert after.step == 4 and after.hparams("teacher") == before.hparams("teacher")
    assert before.hparams("teacher") == {"n_classes": 3, "stem_pool": 1}
    for key, value in before.state_dict("teacher").items():
        assert torch.equal(value, after.state_dict("teacher")[key]), key


def test_resume_refuses_data_of_other_patterns(tmp_path, tiny_data):
    ck = run_to_end(train(tiny_config(steps=1), tiny_data, tmp_path / "a")).checkpoint
    other = from_arrays(tiny_data.images, tiny_data.masks,
                        ["Golgi" if i % 2 else "Speckled" for i in range(tiny_data.n)],
                        image_size=16)
    with pytest.raises(ValueError, match="cannot resume .* trained on patterns"):
        list(train(tiny_config(), other, tmp_path / "b", resume=ck))


def test_resumed_adam_moments_take_their_parameters_layout() -> None:
    # On CUDA the networks train in channels_last while checkpoints hold contiguous
    # tensors; fused Adam refuses moments whose layout differs from the parameter's.
    from napari_atagan.checkpoint import _match_layout

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(conv.parameters())
    conv(torch.rand(1, 3, 8, 8)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    for st in saved["state"].values():
        for k, v in st.items():
            if v.dim() == 4:
                st[k] = v.contiguous()
    opt.load_state_dict(saved)
    w = conv.weight
    assert opt.state[w]["exp_avg"].stride() != w.stride()
    before = opt.state[w]["exp_avg"].clone()
    _match_layout(opt)
    assert opt.state[w]["exp_avg"].stride() == w.stride()
    assert opt.state[w]["exp_avg_sq"].stride() == w.stride()
    assert torch.equal(opt.state[w]["exp_avg"], before)


def test_generator_step_leaves_the_discriminator_s_gradients_alone(tmp_path, tiny_data):
    """G's loss flows through D, but D's weights get no gradient from it: after
    a step, D's gradients are exactly those its own update used."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = []  # (optimizer, its gradients right after its update), in order

    def snapshot(opt, args, kwargs):
        grads = [p.grad.clone() for g in opt.param_groups for p in g["params"]]
        steps.append((opt, grads))

    handle = register_optimizer_step_post_hook(snapshot)
    try:
        run_to_end(train(tiny_config(steps=2), tiny_data, tmp_path))
    finally:
        handle.remove()
    (opt_d, grads_d), (opt_g, _) = steps[-2:]
    params_d = [p for g in opt_d.param_groups for p in g["params"]]
    assert {id(p) for p in params_d}.isdisjoint(
        id(p) for g in opt_g.param_groups for p in g["params"])
    assert all(p.requires_grad for p in params_d)
    for p, g in zip(params_d, grads_d, strict=True):
        assert torch.equal(p.grad, g)


def test_a_failing_generator_step_leaves_the_discriminator_trainable(tiny_data):
    import napari_atagan.gan.training as tr
    from napari_atagan.gan.augment import Augmenter

    cfg = tiny_config()
    G, D = tr.build_models(cfg, 3)
    state = tr._State(G=G, D=D, G_ema=copy.deepcopy(G), opt_G=torch.optim.Adam(G.parameters()),
                      opt_D=torch.optim.Adam(D.parameters()), gen=torch.Generator(),
                      batch_size=4)
    images = torch.from_numpy(tiny_data.images)[:, None]
    labels = torch.from_numpy(tiny_data.labels)
    maps = torch.rand(len(images), 1, 4, 4)
    step = tr._make_step(cfg, state, Augmenter(cfg, "cpu"), images, labels, maps, 3,
                         torch.device("cpu"))
    calls = {"n": 0}
    forward = D.forward

    def fail_on_generator_step(x):
        calls["n"] += 1
        if calls["n"] == 4:  # real, generated, moved real: then the G step
            raise torch.OutOfMemoryError("simulated")
        return forward(x)

    D.forward = fail_on_generator_step
    with pytest.raises(torch.OutOfMemoryError):
        step()
    assert all(p.requires_grad for p in D.parameters())
    D.forward = forward
    step()
    assert all(p.grad is not None for p in D.parameters())


def test_the_average_moves_alike_with_a_number_or_a_device_tensor():
    from napari_atagan.gan.training import _ema_weight, _move_average

    torch.manual_seed(0)
    current = [torch.randn(5, 3), torch.randn(7)]
    by_number = [torch.randn(5, 3), torch.randn(7)]
    by_tensor = [t.clone() for t in by_number]
    expected = [a + 0.25 * (c - a) for a, c in zip(by_number, current, strict=True)]
    _move_average(by_number, current, 0.25)
    _move_average(by_tensor, current, torch.tensor(0.25))
    for a, b, e in zip(by_number, by_tensor, expected, strict=True):
        torch.testing.assert_close(a, e)
        torch.testing.assert_close(b, e)
    # warm-up: the average follows G closely at first, then averages
    assert _ema_weight(0, 0.999) == pytest.approx(0.9)
    assert _ema_weight(10 ** 6, 0.999) == pytest.approx(0.001)


def test_training_seconds_leave_out_the_time_the_consumer_takes(tmp_path, tiny_data):
    import time

    t0 = time.perf_counter()
    for event in train(tiny_config(steps=4, log_every=1), tiny_data, tmp_path):
        if isinstance(event, Progress):
            time.sleep(0.5)  # a slow viewer, after every step
        if isinstance(event, Finished):
            summary = event.summary
    wall = time.perf_counter() - t0
    assert 0 < summary["seconds"] < wall - 2.0  # none of the viewer's 2 s
    assert summary["images_per_s"] == pytest.approx(  # (seconds are rounded to 1 ms)
        4 * summary["batch_size"] / summary["seconds"], rel=0.1)


def test_cuda_graph_is_for_cuda_alone_and_gives_way_to_compile():
    assert TrainConfig().cuda_graph  # the default
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _captured(TrainConfig(), cuda)
    assert not _captured(TrainConfig(), cpu)
    assert not _captured(TrainConfig(cuda_graph=False), cuda)
    assert not _captured(TrainConfig(compile=True), cuda)


def test_cuda_graph_without_a_gpu_trains_as_usual(tmp_path, tiny_data):
    events = list(train(tiny_config(steps=2, cuda_graph=True), tiny_data, tmp_path))
    assert not any(isinstance(e, Message) and "CUDA graph" in e.text for e in events)
    assert events[-1].summary["steps"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_graph_replays_the_same_training_as_the_eager_step(tmp_path, tiny_data,
                                                                monkeypatch):
    """Warm-up, capture and replays give the weights that the eager steps give."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    cfg = tiny_config(steps=8, device="cuda", amp=False, sample_every=1000)
    eager = run_to_end(train(cfg.replace(cuda_graph=False), tiny_data,
                             tmp_path / "eager")).checkpoint
    events = list(train(cfg.replace(cuda_graph=True), tiny_data, tmp_path / "graph"))
    assert any(isinstance(e, Message) and "captured as a CUDA graph at step 4" in e.text
               for e in events)
    a, b = _tensors(eager), _tensors(events[-1].checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)


def test_resume_updates_the_way_this_run_chose(tmp_path, tiny_data):
    """A checkpoint whose Adam ran another way (e.g. capturable, from a GPU run with
    a captured step) resumes with this run's own way of updating, moments kept."""
    from napari_atagan.checkpoint import load_optimizer_state, save_checkpoint

    lin = torch.nn.Linear(3, 2)
    plain = torch.optim.Adam(lin.parameters(), fused=True)
    lin(torch.rand(4, 3)).sum().backward()
    plain.step()
    path = save_checkpoint(tmp_path / "c.safetensors", config=tiny_config(), modules={"m": lin},
                           optimizers={"G": plain})
    ck = load_checkpoint(path)
    # as saved by a GPU run with a captured step (capturable Adam cannot step on a CPU)
    ck.metadata["optimizers"]["G"]["param_groups"][0].update(capturable=True, fused=None)

    again = torch.optim.Adam(lin.parameters(), fused=True)
    load_optimizer_state(ck, "G", again)
    group = again.param_groups[0]
    assert group["fused"] is True and group["capturable"] is False
    w = lin.weight
    assert torch.equal(again.state[w]["exp_avg"], plain.state[w]["exp_avg"])
    again.step()  # runs on the CPU


class _FakeCuda:
    """Stand-ins for the torch.cuda calls of the CUDA-graph step, recording what happens.

    A real capture records the step without running it and each replay runs it; here
    the fake graph keeps the captured step's output and counts replays.
    """

    def __init__(self, monkeypatch, fail_capture=None):
        import contextlib

        self.events, self.fail_capture = [], fail_capture
        fake = self

        class Graph:
            def __init__(self):
                self.generators = []

            def register_generator_state(self, gen):
                self.generators.append(gen)

            def replay(self):
                fake.events.append("replay")

        @contextlib.contextmanager
        def graph(g, stream=None, capture_error_mode="global"):
            fake.events.append(f"capture:{capture_error_mode}")
            yield
            if fake.fail_capture is not None:
                error, fake.fail_capture = fake.fail_capture, None
                raise error

        @contextlib.contextmanager
        def stream(s):
            fake.events.append("side stream")
            yield

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "stream", stream)
        monkeypatch.setattr(torch.cuda, "Stream", Stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
        monkeypatch.setattr(torch.cuda, "set_stream", lambda s: fake.events.append("restore"))


def _graph_step(monkeypatch, fail_capture=None):
    from types import SimpleNamespace

    from napari_atagan.gan.training import _CudaGraphStep

    fake = _FakeCuda(monkeypatch, fail_capture)
    state = SimpleNamespace(batch_size=8, step=0, gen=torch.Generator())

    def step(ema_weight=None):
        fake.events.append("step" if ema_weight is None else "step captured")
        return {"d": torch.tensor(float(state.step))}

    graphed = _CudaGraphStep(step, state, ema_decay=0.999)
    return graphed, state, fake


def _run(graphed, state, n):
    outs = []
    for _ in range(n):
        outs.append(graphed())
        state.step += 1
    return outs


def test_cuda_graph_step_warms_up_captures_once_then_replays(monkeypatch):
    from napari_atagan.gan.training import _ema_weight

    graphed, state, fake = _graph_step(monkeypatch)
    outs = _run(graphed, state, 6)
    assert fake.events == ["side stream", "step"] * 3 + [
        "capture:thread_local", "step captured", "replay", "replay", "replay"]
    assert "captured as a CUDA graph at step 4 (batch 8)" in graphed.notice
    assert outs[4] is outs[3] is graphed.out  # replays refill the captured outputs
    assert graphed.weight.item() == pytest.approx(_ema_weight(5, 0.999))
    assert graphed.graph.generators == [state.gen]

    # a smaller batch after running out of memory: warm up and capture afresh
    fake.events.clear()
    state.batch_size = 4
    _run(graphed, state, 5)
    assert fake.events == ["side stream", "step"] * 3 + [
        "capture:thread_local", "step captured", "replay", "replay"]


def test_cuda_graph_step_that_cannot_be_captured_goes_on_without(monkeypatch):
    graphed, state, fake = _graph_step(monkeypatch, RuntimeError("operation not permitted"))
    _run(graphed, state, 6)
    assert fake.events == ["side stream", "step"] * 3 + [
        "capture:thread_local", "step captured", "restore", "step", "step", "step"]
    assert "could not be captured as a CUDA graph (operation not permitted)" in graphed.notice


def test_cuda_graph_capture_out_of_memory_reaches_the_training_loop(monkeypatch):
    graphed, state, fake = _graph_step(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    _run(graphed, state, 3)
    with pytest.raises(torch.OutOfMemoryError):
        graphed()
    assert fake.events[-1] == "restore" and not graphed.failed
    state.batch_size = 4  # what the training loop does next
    _run(graphed, state, 4)
    assert fake.events[-3:] == ["capture:thread_local", "step captured", "replay"]
