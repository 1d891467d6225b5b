"""Pattern guidance (the classifier teacher names the generator's cells) and a
classifier teacher borrowed from an earlier run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_atagan.checkpoint import load_checkpoint
from napari_atagan.gan.config import TrainConfig
from napari_atagan.gan.training import Finished, Progress, run_to_end, train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_data):
    """A tiny run with its own classifier teacher."""
    out = tmp_path_factory.mktemp("teacher_run")
    return run_to_end(train(tiny_config(teacher="classifier", steps=2), tiny_data, out)).checkpoint


def _events(cfg, data, out):
    events = list(train(cfg, data, out))
    assert isinstance(events[-1], Finished)
    return events


@pytest.mark.parametrize("changes, words", [
    ({"pattern_guidance": -1.0}, "pattern_guidance must be >= 0"),
    ({"pattern_guidance": float("nan"), "teacher": "classifier"}, "pattern_guidance must be"),
    ({"pattern_guidance": 1.0, "teacher": "mask"}, "needs the classifier teacher"),
    ({"teacher_from": "run.safetensors", "teacher": "mask"}, "needs teacher 'classifier'"),
])
def test_bad_settings_are_refused_by_name(changes, words):
    with pytest.raises(ValueError, match=words):
        tiny_config(**changes)


def test_old_runs_read_without_guidance():
    cfg = TrainConfig.from_dict({"teacher": "classifier"})
    assert cfg.pattern_guidance == 0.0 and cfg.teacher_from == ""


def test_borrowed_teacher_guides_and_is_saved(tmp_path, tiny_data, classifier_run):
    source = load_checkpoint(classifier_run)
    cfg = tiny_config(teacher="classifier", teacher_from=str(classifier_run),
                      pattern_guidance=1.0, steps=3)
    events = _events(cfg, tiny_data, tmp_path)
    messages = [str(getattr(e, "text", "")) for e in events]
    assert any("taken from" in m for m in messages)
    assert not any("training the pattern classifier" in m for m in messages)
    progress = [e for e in events if isinstance(e, Progress)]
    assert all("g_pat" in p.losses and np.isfinite(p.losses["g_pat"]) for p in progress)
    # cross-entropy over 3 patterns of an untrained generator: near log(3), never 0
    assert 0.05 < progress[0].losses["g_pat"] < 5.0
    ck = load_checkpoint(events[-1].checkpoint)
    assert ck.config.pattern_guidance == 1.0
    assert ck.metadata["teacher"]["from"] == str(classifier_run)
    mine, theirs = ck.state_dict("teacher"), source.state_dict("teacher")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_guidance_changes_the_generator_step(tmp_path, tiny_data, classifier_run):
    """The same run with and without guidance: G's first update differs, D's does not
    (the guidance is a generator loss only)."""
    base = dict(teacher="classifier", teacher_from=str(classifier_run), steps=1,
                sample_every=1000)
    a = load_checkpoint(_events(tiny_config(**base), tiny_data, tmp_path / "a")[-1].checkpoint)
    b = load_checkpoint(_events(tiny_config(pattern_guidance=2.0, **base), tiny_data,
                                tmp_path / "b")[-1].checkpoint)
    ga, gb = a.state_dict("G"), b.state_dict("G")
    assert any(not torch.equal(ga[k], gb[k]) for k in ga if ga[k].is_floating_point())
    da, db = a.state_dict("D"), b.state_dict("D")
    assert all(torch.equal(da[k], db[k]) for k in da if "running" not in k)


def test_borrowing_from_the_wrong_run_says_why(tmp_path, tiny_data, tiny_checkpoint,
                                               classifier_run):
    with pytest.raises(ValueError, match="holds no classifier teacher"):
        _events(tiny_config(teacher="classifier", teacher_from=str(tiny_checkpoint)),
                tiny_data, tmp_path / "mask")
    two = tiny_data.subset(np.flatnonzero(tiny_data.labels < 2))
    two.class_names = list(tiny_data.class_names[:2])
    with pytest.raises(ValueError, match="knows the patterns"):
        _events(tiny_config(teacher="classifier", teacher_from=str(classifier_run)), two,
                tmp_path / "patterns")
    from napari_atagan.data import from_arrays
    from napari_atagan.simulate import simulate_crops

    crops = simulate_crops(12, size=32, patterns=tuple(tiny_data.class_names), seed=4)
    big = from_arrays(crops.images, crops.masks,
                      [list(crops.patterns)[i] for i in crops.labels], image_size=32)
    cfg = tiny_config(teacher="classifier", teacher_from=str(classifier_run), image_size=32,
                      g_channels=(16, 8, 8))
    with pytest.raises(ValueError, match="16 px crops, this run uses 32 px"):
        _events(cfg, big, tmp_path / "size")
    with pytest.raises(Exception, match="missing.safetensors|does not exist|not found"):
        _events(tiny_config(teacher="classifier", teacher_from=str(tmp_path / "missing.safetensors")),
                tiny_data, tmp_path / "missing")
