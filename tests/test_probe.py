"""The linear probe on the discriminator's features: how a run without a classifier
teacher names patterns (fit, training, the shipped model, ``napari-atagan probe``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from napari_atagan import default_model_path
from napari_atagan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, with_module
from napari_atagan.cli.main import main
from napari_atagan.gan.checkpoint import PROBE_SOURCE, load_pattern_model, load_probe
from napari_atagan.gan.probe import (
    PatternProbe,
    ProbedDiscriminator,
    fit_pattern_probe,
    pooled_features,
    probe_checkpoint,
)


class _Mean(nn.Module):
    """A 'discriminator' whose one feature is a crop's brightness (and a BatchNorm, so
    that its mode is seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1, affine=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x if not self.training else self.norm(x)


def _cells(levels=(-0.8, 0.0, 0.8), per=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for k, level in enumerate(levels):
        images.append(level + 0.05 * torch.randn(per, 1, 8, 8, generator=g))
        labels += [k] * per
    return torch.cat(images), torch.tensor(labels)


def test_a_probe_separates_patterns_the_features_tell_apart():
    images, labels = _cells()
    disc = _Mean().train()
    probe, info = fit_pattern_probe(disc, images, labels, 3)
    assert disc.training  # its mode is left as it was
    assert info["cells"] == 60 and info["patterns"] == 3 and info["train_accuracy"] == 1.0
    test, truth = _cells(seed=1)
    called = ProbedDiscriminator(disc.eval(), probe)(test).argmax(1)
    assert torch.equal(called, truth)
    again, _ = fit_pattern_probe(disc, images, labels, 3)  # deterministic: the same numbers
    for a, b in zip(probe.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # a pattern with no cells is never the answer, and the rest still are
    probe4, info4 = fit_pattern_probe(disc, images, labels, 4)
    assert info4["patterns"] == 3
    assert torch.equal(ProbedDiscriminator(disc, probe4)(test).argmax(1), truth)


def test_pooled_features_leave_the_network_as_it_was():
    disc = _Mean().train()
    before = disc.norm.running_mean.clone()
    out = pooled_features(disc, torch.ones(5, 1, 8, 8))
    assert out.shape == (5, 1) and torch.allclose(out, torch.ones(5, 1))
    assert disc.training and torch.equal(disc.norm.running_mean, before)


@pytest.mark.parametrize("labels, n, match", [
    (torch.zeros(60, dtype=torch.long), 3, "two patterns"),
    (torch.full((60,), 3), 3, "pattern indices"),
    (torch.zeros(59, dtype=torch.long), 3, "N labels"),
    (torch.zeros(60, dtype=torch.long), 1, "at least two"),
])
def test_a_probe_refuses_labels_it_cannot_learn_from(labels, n, match):
    images, _ = _cells()
    with pytest.raises(ValueError, match=match):
        fit_pattern_probe(_Mean(), images, labels, n)
    with pytest.raises(ValueError, match="at least two patterns"):
        PatternProbe(4, 1)


def test_training_keeps_a_probe_that_names_the_patterns(tiny_checkpoint, tiny_data):
    """A run taught by masks on cells of three patterns: its file keeps a probe, fitted on
    its own cells, and the probe is what names the patterns."""
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.has("probe") and "probe" in ckpt.module_names
    info = ckpt.metadata["probe"]
    assert info["cells"] == tiny_data.n and info["patterns"] == 3
    assert 0 <= info["train_accuracy"] <= 1
    model, source = load_pattern_model(ckpt)
    assert source == PROBE_SOURCE and isinstance(model, ProbedDiscriminator)
    x = torch.from_numpy(tiny_data.images[:5]).unsqueeze(1)
    assert model(x).shape == (5, 3)
    # the probe is the one a fit on the same cells gives
    probe, _ = fit_pattern_probe(ckpt.discriminator(), x.new_tensor(tiny_data.images).unsqueeze(1),
                                 torch.from_numpy(tiny_data.labels), 3)
    torch.testing.assert_close(probe.linear.weight, load_probe(ckpt).linear.weight)


def test_a_file_without_a_probe_falls_back_on_the_projection_head(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    old = save_checkpoint(tiny_checkpoint.parent / "old.safetensors", config=ckpt.config,
                          modules={"G_ema": ckpt.generator(), "D": ckpt.discriminator()},
                          metadata={"class_names": ckpt.class_names})
    _, source = load_pattern_model(load_checkpoint(old))
    assert source == "discriminator projection head"


def test_the_shipped_model_names_patterns_by_its_probe():
    ckpt = load_checkpoint(default_model_path())
    _, source = ckpt.pattern_model()
    assert source == PROBE_SOURCE
    assert ckpt.metadata["probe"]["cells"] == 3000  # the simulated cells it was trained on


def test_export_keeps_the_probe(tiny_checkpoint, tmp_path):
    from napari_atagan.checkpoint import export_model

    out = export_model(tiny_checkpoint, tmp_path / "small.safetensors")
    small, full = load_checkpoint(out), load_checkpoint(tiny_checkpoint)
    assert small.module_names == ["D", "G_ema", "probe"]
    torch.testing.assert_close(load_probe(small).linear.weight, load_probe(full).linear.weight)


def test_with_module_keeps_everything_else(tiny_checkpoint, tmp_path):
    src = shutil.copy(tiny_checkpoint, tmp_path / "run.safetensors")
    before = load_checkpoint(src)
    probe = PatternProbe(16, 3)
    path = with_module(src, "probe", probe, metadata={"probe": {"note": 1}})
    after = load_checkpoint(path)  # the checksum and the config check out
    assert after.metadata["probe"] == {"note": 1}
    assert after.metadata["optimizers"] == before.metadata["optimizers"]
    assert after.metadata["created"] == before.metadata["created"]
    for key, value in before.tensors.items():
        if not key.startswith("probe."):
            assert torch.equal(after.tensors[key], value), key
    torch.testing.assert_close(after.state_dict("probe")["linear.weight"], probe.linear.weight)
    with pytest.raises(ValueError, match="written by the checkpoint itself"):
        with_module(src, "probe", probe, metadata={"checksum": "x"})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _folder(data, root, names=None):
    """The cells of ``data`` as a folder of crops, one sub-folder per pattern."""
    names = names or data.class_names
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        sub = root / names[int(label)]
        sub.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(sub / f"{i}.tif", ((image + 1) * 100).astype(np.uint8))
    return root


def test_cli_probe_fits_and_writes(tiny_checkpoint, tiny_data, tmp_path, capsys):
    src = shutil.copy(tiny_checkpoint, tmp_path / "run.safetensors")
    original = (tmp_path / "run.safetensors").read_bytes()
    cells = _folder(tiny_data, tmp_path / "cells")
    out = tmp_path / "named.safetensors"
    assert main(["probe", "--checkpoint", str(src), "--data", str(cells), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checkpoint"] == str(out) and report["cells"] == tiny_data.n
    assert report["class_names"] == tiny_data.class_names
    assert (tmp_path / "run.safetensors").read_bytes() == original  # --out: source untouched
    assert load_checkpoint(out).pattern_model()[1] == PROBE_SOURCE
    # over the file itself, by default
    assert main(["probe", "--checkpoint", str(src), "--data", str(cells)]) == 0
    assert load_checkpoint(src).metadata["probe"]["cells"] == tiny_data.n


def test_cli_probe_refuses_clearly(tiny_checkpoint, tiny_data, tmp_path, capsys):
    src = shutil.copy(tiny_checkpoint, tmp_path / "run.safetensors")
    original = (tmp_path / "run.safetensors").read_bytes()
    other = _folder(tiny_data, tmp_path / "other", names=["Homogeneous", "Golgi", "Centromere"])
    assert main(["probe", "--checkpoint", str(src), "--data", str(other)]) == 2
    assert "Golgi" in capsys.readouterr().err
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, image in enumerate(tiny_data.images[:4]):
        tifffile.imwrite(flat / f"{i}.tif", ((image + 1) * 100).astype(np.uint8))
    assert main(["probe", "--checkpoint", str(src), "--data", str(flat)]) == 2
    assert "no patterns" in capsys.readouterr().err
    assert (tmp_path / "run.safetensors").read_bytes() == original  # nothing lost
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(original[: len(original) // 2])
    assert main(["probe", "--checkpoint", str(bad), "--data", str(flat)]) == 2
    assert "bad.safetensors" in capsys.readouterr().err


def test_a_run_with_a_classifier_teacher_gets_no_probe(tiny_data, tmp_path):
    from napari_atagan.gan.attention import PatternClassifier

    ckpt = load_checkpoint(default_model_path())
    namer = save_checkpoint(tmp_path / "namer.safetensors", config=ckpt.config,
                            modules={"D": ckpt.discriminator(), "teacher": PatternClassifier(6)},
                            metadata={"class_names": ckpt.class_names})
    with pytest.raises(ValueError, match="classifier teacher"):
        probe_checkpoint(namer, tiny_data)
    with pytest.raises(CheckpointError):
        probe_checkpoint(tmp_path / "missing.safetensors", tiny_data)


def test_training_says_what_names_the_patterns(tiny_data, tmp_path):
    from tests.conftest import tiny_config
    from napari_atagan.events import Message
    from napari_atagan.gan.training import train

    events = list(train(tiny_config(steps=2), tiny_data, tmp_path / "mask"))
    said = [e.text for e in events if isinstance(e, Message) and "linear probe" in e.text]
    assert len(said) == 1 and "training cells right" in said[0]
    # a run with a classifier teacher names patterns by it, and keeps no probe
    events = list(train(tiny_config(steps=2, teacher="classifier"), tiny_data, tmp_path / "clf"))
    assert not [e for e in events if isinstance(e, Message) and "linear probe" in e.text]
    ckpt = load_checkpoint(tmp_path / "clf" / "checkpoint.safetensors")
    assert not ckpt.has("probe") and ckpt.pattern_model()[1] == "classifier teacher"


def test_fitting_the_probe_changes_nothing_in_training(tiny_data, tmp_path, monkeypatch):
    """A probe fitted at every checkpoint leaves the run as it would be without one:
    every weight, statistic, optimizer state and random state alike."""
    from tests.conftest import tiny_config
    from napari_atagan.events import run_to_end
    from napari_atagan.gan import training
    from napari_atagan.gan.training import train

    config = tiny_config(steps=6, checkpoint_every=2)
    fitted = load_checkpoint(run_to_end(train(config, tiny_data, tmp_path / "a")).checkpoint)
    monkeypatch.setattr(training, "fit_pattern_probe",
                        lambda d, images, labels, n: (PatternProbe(16, n), {"train_accuracy": 0}))
    stub = load_checkpoint(run_to_end(train(config, tiny_data, tmp_path / "b")).checkpoint)
    kept = sorted(k for k in stub.tensors if not k.startswith("probe."))
    assert kept == sorted(k for k in fitted.tensors if not k.startswith("probe."))
    assert any(k.startswith("rng.") for k in kept) and any(k.startswith("optim.") for k in kept)
    for key in kept:
        assert torch.equal(fitted.tensors[key], stub.tensors[key]), key
