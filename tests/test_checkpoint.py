"""Checkpoints: round trip, exact resume, atomic writes and every refusal."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

import napari_atagan
from napari_atagan import checkpoint as ckpt_mod
from napari_atagan.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    Checkpoint,
    CheckpointError,
    check_checkpoint,
    load_checkpoint,
    load_module_state,
    load_optimizer_state,
    restore_rng,
    rng_tensors,
    save_checkpoint,
)
from napari_atagan.gan.config import TrainConfig
from napari_atagan.gan.models import Discriminator, Generator, build_models

CLASSES = ["Centromere", "Golgi", "Homogeneous"]


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(image_size=16, z_dim=8, g_channels=(16, 8), d_channels=(8, 16), **changes)


def adam(module: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=1e-3, betas=(0.5, 0.999))


def train_step(g: Generator, d: Discriminator, opt_g, opt_d, seed: int) -> None:
    """One small D and G update with fixed inputs (enough to fill Adam's state)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(4, g.z_dim, generator=gen)
    labels = torch.arange(4) % max(g.n_classes, 1) if g.n_classes else None
    real = torch.rand(4, 1, g.image_size, g.image_size, generator=gen) * 2 - 1
    opt_d.zero_grad()
    d_loss = d(g(z, labels).detach())[0].mean() - d(real)[0].mean()
    d_loss.backward()
    opt_d.step()
    opt_g.zero_grad()
    (-d(g(z, labels))[0].mean()).backward()
    opt_g.step()


def make_run(n_classes: int = 3, **config_changes):
    torch.manual_seed(0)
    config = tiny_config(**config_changes)
    g, d = build_models(config, n_classes)
    g_ema = copy.deepcopy(g)
    opt_g, opt_d = adam(g), adam(d)
    for step in range(2):
        train_step(g, d, opt_g, opt_d, seed=step)
    return config, g, g_ema, d, opt_g, opt_d


def save_run(path, run, step: int = 2, **kwargs) -> Path:
    config, g, g_ema, d, opt_g, opt_d = run
    metadata = {
        "class_names": CLASSES[: g.n_classes] if g.n_classes else [],
        "intensity": {"low": 0.5, "high": 99.5},
        "data": {"cell_diameter": 40.0},
        "teacher": {"kind": "mask"},
        "step": step,
        "summary": {"d_loss": [0.5, 0.25]},
        "generator_statistics": "standing",
    }
    metadata.update(kwargs.pop("metadata", {}))
    return save_checkpoint(
        path,
        config=config,
        modules={"G": g, "G_ema": g_ema, "D": d},
        metadata=metadata,
        optimizers={"G": opt_g, "D": opt_d},
        **kwargs,
    )


@pytest.fixture
def run():
    return make_run()


@pytest.fixture
def saved(tmp_path, run) -> Path:
    return save_run(tmp_path / "run.safetensors", run)


def rewrite(src: Path, dst: Path, *, tensors=None, document=None, raw_metadata=None) -> Path:
    """Copy a checkpoint with edited tensors / metadata (checksum dropped)."""
    data = src.read_bytes()
    original = safetensors.torch.load(data)
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    doc = json.loads(header["__metadata__"][METADATA_KEY])
    doc.pop("checksum")
    new_tensors = tensors(original) if tensors else original
    new_doc = document(doc) if document else doc
    meta = raw_metadata if raw_metadata is not None else {METADATA_KEY: json.dumps(new_doc)}
    dst.write_bytes(safetensors.torch.save(new_tensors, metadata=meta))
    return dst


def refused(path, match: str | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert Path(path).name in message
    if match:
        assert match in message, message
    with pytest.raises(CheckpointError) as checked:  # the torch-free check refuses it alike
        check_checkpoint(path)
    assert str(checked.value) == message
    return message


# ---------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------


def test_round_trip_models_config_metadata(saved, run):
    config, g, g_ema, d, _, _ = run
    ckpt = load_checkpoint(saved)
    assert isinstance(ckpt, Checkpoint) and ckpt.path == saved
    assert ckpt.config == config
    assert ckpt.class_names == CLASSES and ckpt.n_classes == 3 and ckpt.step == 2
    assert ckpt.metadata["data"] == {"cell_diameter": 40.0}
    assert ckpt.metadata["intensity"] == {"low": 0.5, "high": 99.5}
    assert ckpt.metadata["summary"] == {"d_loss": [0.5, 0.25]}
    assert ckpt.metadata["format_version"] == FORMAT_VERSION
    assert ckpt.metadata["versions"]["napari_atagan"] == napari_atagan.__version__
    assert ckpt.module_names == ["D", "G", "G_ema"]

    z, labels = torch.randn(3, 8), torch.tensor([0, 2, 1])
    g_loaded, d_loaded = ckpt.generator(), ckpt.discriminator()
    assert not g_loaded.training and not d_loaded.training
    assert torch.equal(g_loaded(z, labels), g_ema.eval()(z, labels))
    assert torch.equal(ckpt.generator(ema=False)(z, labels), g.eval()(z, labels))
    x = torch.randn(2, 1, 16, 16)
    for got, want in zip(d_loaded(x), d.eval()(x)):
        assert torch.equal(got, want)
    assert torch.equal(d_loaded.soft_cam(x), d.soft_cam(x))


def test_an_averaged_generator_saved_without_standing_statistics_gets_them(tmp_path, run,
                                                                           monkeypatch):
    import copy

    import napari_atagan.gan.checkpoint as ckmod

    from napari_atagan.checkpoint import export_model
    from napari_atagan.gan.models import standing_statistics

    _, _, g_ema, _, _, _ = run
    path = save_run(tmp_path / "old.safetensors", run, metadata={"generator_statistics": None})
    loaded = load_checkpoint(path).generator()
    z, labels = torch.randn(3, 8), torch.tensor([0, 2, 1])
    with torch.no_grad():
        want = standing_statistics(copy.deepcopy(g_ema)).eval()(z, labels)
        stored = copy.deepcopy(g_ema).eval()(z, labels)
        got = loaded(z, labels)
    assert torch.equal(got, want) and not torch.equal(got, stored)
    # computed once per loaded checkpoint: a second generator reuses them
    ckpt = load_checkpoint(path)
    first = ckpt.generator()
    calls = []
    monkeypatch.setattr(ckmod, "standing_statistics", lambda g, **kw: calls.append(g))
    with torch.no_grad():
        assert torch.equal(ckpt.generator()(z, labels), first(z, labels))
    assert calls == []
    monkeypatch.undo()
    exported = load_checkpoint(export_model(path, tmp_path / "shared.safetensors"))
    assert exported.metadata["generator_statistics"] == "standing"
    with torch.no_grad():
        assert torch.equal(exported.generator()(z, labels), want)  # computed once, then kept


def test_state_dict_strips_prefix(saved, run):
    ckpt = load_checkpoint(saved)
    sd = ckpt.state_dict("D")
    assert sd.keys() == run[3].state_dict().keys()
    assert ckpt.state_dict("D.").keys() == sd.keys()
    assert ckpt.has("G_ema") and not ckpt.has("teacher")


def test_generator_falls_back_to_raw_weights_without_ema(tmp_path, run):
    config, g, _, d, _, _ = run
    path = save_checkpoint(tmp_path / "no_ema", config=config, modules={"G": g, "D": d})
    assert path.name == "no_ema.safetensors"
    z, labels = torch.randn(2, 8), torch.tensor([0, 1])
    assert torch.equal(load_checkpoint(path).generator()(z, labels), g.eval()(z, labels))


def test_unconditional_and_spectral_norm_round_trip(tmp_path):
    run = make_run(n_classes=0, spectral_norm=True)
    path = save_run(tmp_path / "sn.safetensors", run)
    ckpt = load_checkpoint(path)
    assert ckpt.n_classes == 0 and ckpt.class_names == []
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(ckpt.discriminator()(x)[0], run[3].eval()(x)[0])
    z = torch.randn(2, 8)
    assert torch.equal(ckpt.generator()(z), run[2].eval()(z))


def test_reflect_padded_generator_round_trip(tmp_path):
    run = make_run(n_classes=0, g_padding="reflect")
    assert run[1].to_image.padding_mode == "reflect"
    path = save_run(tmp_path / "reflect.safetensors", run)
    ckpt = load_checkpoint(path)
    assert ckpt.metadata["modules"]["G"]["hparams"]["padding"] == "reflect"
    z = torch.randn(2, 8)
    g = ckpt.generator(ema=False)
    assert g.padding == "reflect" and torch.equal(g(z), run[1].eval()(z))


def test_a_generator_recorded_without_padding_is_zero_padded(tmp_path):
    run = make_run(n_classes=0)
    path = save_run(tmp_path / "old.safetensors", run)
    ckpt = load_checkpoint(path)
    for name in ("G", "G_ema"):  # as written before the option existed
        del ckpt.metadata["modules"][name]["hparams"]["padding"]
    z = torch.randn(2, 8)
    g = ckpt.generator(ema=False)
    assert g.padding == "zeros" and torch.equal(g(z), run[1].eval()(z))


def test_teacher_and_extra_tensors(tmp_path, run):
    config, g, _, d, _, _ = run
    teacher = torch.nn.Conv2d(1, 2, 3)
    gen = torch.Generator().manual_seed(5)
    torch.rand(3, generator=gen)
    path = save_checkpoint(
        tmp_path / "t.safetensors", config=config, modules={"G": g, "D": d, "teacher": teacher},
        extra_tensors={"rng.data": gen.get_state(), "teacher_maps.mean": torch.ones(2)},
    )
    ckpt = load_checkpoint(path)
    fresh = torch.nn.Conv2d(1, 2, 3)
    load_module_state(fresh, ckpt.state_dict("teacher"), what="teacher", path=path)
    assert torch.equal(fresh.weight, teacher.weight)
    assert ckpt.metadata["modules"]["teacher"] == {"class": "Conv2d"}
    resumed = torch.Generator()
    resumed.set_state(ckpt.tensors["rng.data"])
    assert torch.equal(torch.rand(4, generator=resumed), torch.rand(4, generator=gen))


@pytest.mark.parametrize("stem_pool", [1, 2])
def test_classifier_teacher_is_rebuilt_from_its_stored_network(tmp_path, run, stem_pool):
    """The pattern classifier keeps its network description beside its weights, so a
    pooled stem comes back pooled and names cells as it did when saved; a file saved
    before the description existed rebuilds the unpooled network it held."""
    from napari_atagan.gan.attention import PatternClassifier
    from napari_atagan.gan.checkpoint import load_teacher

    config, g, _, d, _, _ = run
    torch.manual_seed(1)
    teacher = PatternClassifier(3, stem_pool=stem_pool).eval()
    path = save_checkpoint(tmp_path / "t.safetensors", config=config,
                           modules={"G": g, "D": d, "teacher": teacher},
                           metadata={"class_names": CLASSES})
    ckpt = load_checkpoint(path)
    assert ckpt.hparams("teacher") == {"n_classes": 3, "stem_pool": stem_pool}
    back = load_teacher(ckpt)
    x = torch.randn(2, 1, 16, 16)
    assert back.stem_pool == stem_pool and not back.training
    assert back.features(x).shape[-1] == 2 // stem_pool
    assert torch.allclose(back(x), teacher(x), atol=1e-6)
    model, source = ckpt.pattern_model()
    assert source == "classifier teacher" and torch.allclose(model(x), teacher(x), atol=1e-6)
    del ckpt.metadata["modules"]["teacher"]["hparams"]  # as files were written before
    assert load_teacher(ckpt).stem_pool == 1
    with pytest.raises(ValueError, match="stem_pool"):
        PatternClassifier(3, stem_pool=3)
    assert load_teacher(load_checkpoint(save_run(tmp_path / "mask.safetensors", run))) is None


def test_reserved_metadata_is_rewritten_on_resave(tmp_path, saved):
    ckpt = load_checkpoint(saved)
    document = dict(ckpt.metadata, step=7, config={"bogus": 1}, format_version=99)
    path = save_checkpoint(
        tmp_path / "again.safetensors", config=ckpt.config,
        modules={"G": ckpt.generator(), "D": ckpt.discriminator()}, metadata=document,
    )
    again = load_checkpoint(path)
    assert again.step == 7 and again.metadata["format_version"] == FORMAT_VERSION
    assert again.config == ckpt.config


def test_save_refuses_bad_input(tmp_path, run):
    config, g, _, d, _, _ = run
    with pytest.raises(ValueError, match="without dots"):
        save_checkpoint(tmp_path / "a", config=config, modules={"G.x": g})
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "a", config=config, modules={"G": g}, metadata={"x": object()})
    with pytest.raises(ValueError, match="given twice"):
        save_checkpoint(tmp_path / "a", config=config, modules={"G": g},
                        extra_tensors={"G.seed.weight": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# optimizer and RNG state: exact resume
# ---------------------------------------------------------------------------


def test_optimizer_state_round_trip(saved, run):
    _, g, _, d, opt_g, opt_d = run
    ckpt = load_checkpoint(saved)
    for name, module, original in (("G", g, opt_g), ("D", d, opt_d)):
        restored = adam(module)
        load_optimizer_state(ckpt, name, restored)
        a, b = original.state_dict(), restored.state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert a["state"].keys() == b["state"].keys()
        for index in a["state"]:
            for key, value in a["state"][index].items():
                assert torch.equal(value, b["state"][index][key]), (name, index, key)
                assert value.dtype == b["state"][index][key].dtype


def test_adam_step_after_reload_is_identical(saved, run):
    config, g, _, d, opt_g, opt_d = run
    ckpt = load_checkpoint(saved)
    g2, d2 = ckpt.generator(ema=False).train(), ckpt.discriminator().train()
    opt_g2, opt_d2 = adam(g2), adam(d2)
    load_optimizer_state(ckpt, "G", opt_g2)
    load_optimizer_state(ckpt, "D", opt_d2)
    g.train(), d.train()
    train_step(g, d, opt_g, opt_d, seed=11)
    train_step(g2, d2, opt_g2, opt_d2, seed=11)
    for a, b in zip(list(g.state_dict().values()) + list(d.state_dict().values()),
                    list(g2.state_dict().values()) + list(d2.state_dict().values())):
        assert torch.equal(a, b)


def test_optimizer_errors(saved, run):
    ckpt = load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="no state for optimizer 'E'") as info:
        load_optimizer_state(ckpt, "E", adam(run[1]))
    assert saved.name in str(info.value)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_optimizer_state(ckpt, "G", adam(torch.nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match="saved as Adam"):
        load_optimizer_state(ckpt, "G", torch.optim.SGD(run[1].parameters(), lr=0.1))
    # the same parameters split into two groups: the groups are named, not paired off
    params = list(run[1].parameters())
    split = torch.optim.Adam([{"params": params[:1]}, {"params": params[1:]}])
    with pytest.raises(CheckpointError, match=r"1 parameter group\(s\) saved, 2 in this"):
        load_optimizer_state(ckpt, "G", split)


def test_global_rng_is_saved_and_restored(tmp_path, run):
    config, g, *_ = run
    torch.manual_seed(123)
    torch.rand(5)
    path = save_checkpoint(tmp_path / "rng", config=config, modules={"G": g})
    expected = torch.rand(10)
    torch.manual_seed(999)
    assert restore_rng(load_checkpoint(path)) == ["rng.torch"]
    assert torch.equal(torch.rand(10), expected)
    assert set(rng_tensors()) >= {"rng.torch"}


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, run, monkeypatch):
    path = save_run(tmp_path / "run.safetensors", run, step=1)

    def crashing_write(file, data):
        file.write(data[: len(data) // 2])
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod, "_write_all", crashing_write)
    with pytest.raises(OSError, match="simulated"):
        save_run(path, run, step=2)
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]
    assert load_checkpoint(path).step == 1

    monkeypatch.undo()
    save_run(path, run, step=2)
    assert load_checkpoint(path).step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]


def test_new_file_gets_normal_permissions(saved):
    if os.name == "posix":
        assert saved.stat().st_mode & 0o644 == 0o644


# ---------------------------------------------------------------------------
# refusals, each naming the file
# ---------------------------------------------------------------------------


def test_missing_file_and_folder(tmp_path):
    refused(tmp_path / "nothing.safetensors", "no such file")
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    refused(folder, "folder")


def test_pickle_and_torch_save_files_are_refused(tmp_path, run):
    pickled = tmp_path / "weights.pkl"
    pickled.write_bytes(pickle.dumps({"G": {"w": [1.0, 2.0]}}))
    refused(pickled, "pickle")
    torch_file = tmp_path / "weights.pt"
    torch.save(run[1].state_dict(), torch_file)
    refused(torch_file, "pickle")
    old_pickle = tmp_path / "old.pkl"
    old_pickle.write_bytes(pickle.dumps([1, 2], protocol=0))
    refused(old_pickle, "not a valid")


@pytest.mark.parametrize("header_len", [640, 896, 1152, 1408, 640 + 65536])
def test_a_safetensors_header_length_that_begins_like_pickle_is_not_refused(tmp_path, header_len):
    """The 8-byte header length of 640, 896, 1152 or 1408 (mod 65536) starts with
    pickle's protocol bytes; the JSON header after it says it is safetensors."""
    path = tmp_path / "model.safetensors"
    for pad in range(header_len + 8):
        path.write_bytes(safetensors.torch.save({"w": torch.zeros(2)}, metadata={"pad": "x" * pad}))
        if struct.unpack("<Q", path.read_bytes()[:8])[0] == header_len:
            break
    else:
        pytest.fail(f"no metadata padding gives a header of {header_len} bytes")
    assert path.read_bytes()[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
    message = refused(path, "not a napari-atagan checkpoint")
    assert "pickle" not in message


def test_random_empty_and_truncated_files_are_refused(tmp_path, saved):
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(4096))
    refused(noise, "not a valid")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    refused(empty, "not a valid")
    data = saved.read_bytes()
    for n, cut in enumerate((len(data) - 1, len(data) // 2, 100, 7)):
        truncated = tmp_path / f"cut{n}.safetensors"
        truncated.write_bytes(data[:cut])
        refused(truncated, "not a valid")


def test_corrupt_tensor_bytes_fail_the_checksum(tmp_path, saved):
    data = bytearray(saved.read_bytes())
    data[-20] ^= 0xFF
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(data))
    refused(corrupt, "checksum")


def test_foreign_safetensors_is_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, foreign, metadata={"format": "pt"})
    refused(foreign, "not a napari-atagan checkpoint")
    bad_json = tmp_path / "badjson.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, bad_json, metadata={METADATA_KEY: "{oops"})
    refused(bad_json, "invalid JSON")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: dict(d, format_version=FORMAT_VERSION + 1), "newer"),
        (lambda d: dict(d, format_version="one"), "unknown checkpoint format"),
        (lambda d: {k: v for k, v in d.items() if k != "format_version"}, "unknown checkpoint"),
        (lambda d: dict(d, config=dict(d["config"], learning_speed=3)), "learning_speed"),
        (lambda d: dict(d, config=dict(d["config"], image_size=17)), "image_size"),
        (lambda d: {k: v for k, v in d.items() if k != "config"}, "no training config"),
        (lambda d: dict(d, class_names="Golgi"), "class_names"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, saved, edit, match):
    refused(rewrite(saved, tmp_path / "edited.safetensors", document=edit), match)


def test_checkpoint_without_checksum_still_loads(tmp_path, saved):
    ckpt = load_checkpoint(rewrite(saved, tmp_path / "plain.safetensors"))
    assert ckpt.step == 2


def _drop(key):
    return lambda t: {k: v for k, v in t.items() if k != key}


@pytest.mark.parametrize(
    "edit, match",
    [
        (_drop("D.blocks.0.conv.weight"), "missing: blocks.0.conv.weight"),
        (lambda t: dict(t, **{"D.extra.weight": torch.zeros(1)}), "unexpected: extra.weight"),
        (lambda t: dict(t, **{"D.realness.weight": torch.zeros(1, 9)}), "wrong shape: realness"),
    ],
)
def test_tensors_that_do_not_fit_the_model(tmp_path, saved, edit, match):
    ckpt = load_checkpoint(rewrite(saved, tmp_path / "misfit.safetensors", tensors=edit))
    with pytest.raises(CheckpointError) as info:
        ckpt.discriminator()
    message = str(info.value)
    assert "misfit.safetensors" in message and "discriminator" in message
    assert match in message, message


def test_many_missing_keys_are_summarised(tmp_path, saved):
    path = rewrite(saved, tmp_path / "noema.safetensors",
                   tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("G.blocks")
                                      or k.startswith("G_ema")})
    ckpt = load_checkpoint(path)
    ckpt.generator()  # the EMA copy is complete
    with pytest.raises(CheckpointError, match=r"missing: .*more\)") as info:
        ckpt.generator(ema=False)
    assert "noema.safetensors" in str(info.value)


def test_no_generator_weights(tmp_path, run):
    config, _, _, d, _, _ = run
    path = save_checkpoint(tmp_path / "d_only", config=config, modules={"D": d})
    with pytest.raises(CheckpointError, match="no generator weights") as info:
        load_checkpoint(path).generator()
    assert "d_only.safetensors" in str(info.value)


def test_bad_stored_architecture(tmp_path, saved):
    def edit(d):
        d["modules"]["D"]["hparams"]["channels"] = []
        return d

    ckpt = load_checkpoint(rewrite(saved, tmp_path / "arch.safetensors", document=edit))
    with pytest.raises(CheckpointError, match="cannot rebuild D"):
        ckpt.discriminator()


def test_the_torch_free_check_hashes_every_dtype_as_the_writer_did(tmp_path, run):
    config, g, _, d, _, _ = run
    extra = {"x.flag": torch.tensor([True, False]), "x.half": torch.ones(3, dtype=torch.float16),
             "x.brain": torch.full((2, 2), 0.3, dtype=torch.bfloat16), "x.ids": torch.arange(4),
             "x.scalar": torch.tensor(3.0), "x.empty": torch.zeros(0, 3),
             "x.bytes": torch.arange(5, dtype=torch.uint8)}
    path = save_checkpoint(tmp_path / "dtypes.safetensors", config=config,
                           modules={"G": g, "D": d}, extra_tensors=extra)
    assert check_checkpoint(path) == load_checkpoint(path).config == config
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    refused(tmp_path / "flipped.safetensors", "checksum")


def test_a_checkpoint_is_checked_without_importing_torch(saved):
    import subprocess
    import sys

    code = ("import sys; from napari_atagan._checkpoint_file import check_checkpoint; "
            f"config = check_checkpoint({str(saved)!r}); "
            "print(type(config).__name__, config.image_size, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["TrainConfig", "16", "False"]


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_no_unsafe_loading_in_the_package():
    """Nothing in the package unpickles: no torch.load, no pickle.load(s)."""
    unsafe = re.compile(
        r"(?<!safetensors\.)\btorch\s*\.\s*load\b|from\s+torch\s+import\s+[^\n]*\bload\b"
        r"|\bpickle\s*\.\s*loads?\b"
    )
    src = Path(napari_atagan.__file__).parent
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if unsafe.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert unsafe.search("state = torch.load(f)") and unsafe.search("pickle.loads(b)")
    assert not unsafe.search("safetensors.torch.load(data)")


def test_exported_model_is_small_and_gives_the_same_cells(tmp_path, tiny_checkpoint):
    import numpy as np

    from napari_atagan.checkpoint import export_model
    from napari_atagan.gan.synthesis import generate

    small = export_model(tiny_checkpoint, tmp_path / "model")
    assert small.name == "model.safetensors"
    assert small.stat().st_size < tiny_checkpoint.stat().st_size / 2
    ck = load_checkpoint(small)
    assert ck.module_names == ["D", "G_ema", "probe"] and not ck.has("optim")
    a = generate(tiny_checkpoint, 4, seed=5, device="cpu")
    b = generate(small, 4, seed=5, device="cpu")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.attention, b.attention)
    assert ck.class_names == a.class_names and ck.metadata["exported_from"] == tiny_checkpoint.name
