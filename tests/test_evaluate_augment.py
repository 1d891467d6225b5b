"""``evaluate_augment`` and ``napari-atagan evaluate augment``: real cells alone vs real +
generated cells, the same training budget, exact gains, determinism and user errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from napari_atagan.cli.evaluate import register
from napari_atagan.evaluation import evaluate_augment
from napari_atagan.evaluation.augment import (
    AUGMENT_BATCH,
    AUGMENT_COUNTS,
    AUGMENT_EPOCHS,
    AUGMENT_GENERATED,
    _resized,
)
from napari_atagan.simulate import simulate_crops, write_crops_folder

from .test_evaluate import _main  # the evaluate commands as the CLI parses them

PATTERNS = ("Homogeneous", "NuMem", "Centromere")  # those of conftest's tiny_checkpoint
SETTINGS = dict(generated_per_pattern=4, epochs=1, device="cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """5 real training cells and 3 test cells of every pattern."""
    root = tmp_path_factory.mktemp("augment")
    real = write_crops_folder(simulate_crops(15, size=32, patterns=PATTERNS, seed=5),
                              root / "real")
    test = write_crops_folder(simulate_crops(9, size=32, patterns=PATTERNS, seed=6),
                              root / "test")
    return real, test


@pytest.fixture(scope="module")
def result(tiny_checkpoint, folders):
    events = []
    r = evaluate_augment(tiny_checkpoint, *folders, counts=(6, 2), seeds=(0, 1),
                         progress=events.append, **SETTINGS)
    return r, events


def _in_unit(value):
    return 0.0 <= value <= 1.0


def test_rows_hold_both_arms_and_exact_gains(result, folders):
    r, events = result
    names = r["patterns"]
    assert sorted(names) == sorted(PATTERNS) and r["chance"] == pytest.approx(1 / 3)
    assert r["counts"] == [2, 6] and [row["count"] for row in r["rows"]] == [2, 6]
    assert r["n_available"] == {p: 5 for p in PATTERNS} and r["n_test"] == {p: 3 for p in PATTERNS}
    assert r["image_size"] == r["model_image_size"] == 16 and r["seeds"] == [0, 1]
    small, big = r["rows"]
    assert small["n_real"] == {p: 2 for p in PATTERNS} and small["capped"] == []
    # 6 asked, 5 there: all 5 used and said so
    assert big["n_real"] == {p: 5 for p in PATTERNS} and sorted(big["capped"]) == sorted(PATTERNS)
    assert "fewer real cells than asked" in r["note"]
    for row in r["rows"]:
        n_real = sum(row["n_real"].values())
        assert row["n_train"] == {"real": n_real, "augmented": n_real + 4 * 3}
        # the real-only classifier's steps: one pass over the real + generated cells; the
        # default (finetune) gives the other two half as many again
        assert row["batch_size"] == n_real
        assert row["steps"] == row["n_train"]["augmented"] // row["batch_size"]
        more = row["steps"] + row["steps"] // 2
        assert row["steps_per_arm"] == {"real": row["steps"], "augmented": more,
                                        "real_long": more}
        assert len(row["per_seed"]) == 2
        for part, cells in [(row, 18), *((s, 9) for s in row["per_seed"])]:
            for arm in ("real", "augmented", "real_long"):
                assert _in_unit(part[arm]["accuracy"])
                assert set(part[arm]["per_pattern"]) == set(PATTERNS)
                assert all(_in_unit(v) for v in part[arm]["per_pattern"].values())
                # 9 test cells: a seed's accuracy is a multiple of 1/9, the mean of two of 1/18
                share = part[arm]["accuracy"] * cells
                assert abs(share - round(share)) < 1e-9
            assert part["gain"]["accuracy"] == part["augmented"]["accuracy"] - part["real"]["accuracy"]
            assert part["gain_same_steps"]["accuracy"] == (part["augmented"]["accuracy"]
                                                          - part["real_long"]["accuracy"])
            for p in PATTERNS:
                assert part["gain"]["per_pattern"][p] == (part["augmented"]["per_pattern"][p]
                                                          - part["real"]["per_pattern"][p])
        seeds = row["per_seed"]
        assert row["real"]["accuracy"] == pytest.approx(
            (seeds[0]["real"]["accuracy"] + seeds[1]["real"]["accuracy"]) / 2)
        assert row["gain"]["accuracy_sd"] is not None
    scored = [e for e in events if e["stage"] == "scored"]
    assert [e["run"] for e in scored] == list(range(1, 13)) and scored[0]["runs"] == 12
    steps = {row["count"]: row["steps_per_arm"] for row in r["rows"]}
    assert all(e["steps"] == steps[e["count"]][e["arm"]] for e in scored)
    assert r["mix"] == "finetune"  # the default
    assert sum(e["stage"] == "generate" for e in events) == 2 * 3
    json.dumps(r)


def test_a_seed_gives_the_same_numbers_alone(result, tiny_checkpoint, folders):
    """Seed 1 and count 2 on their own: the same cells, the same classifiers."""
    again = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[1], **SETTINGS)
    row, before = again["rows"][0], result[0]["rows"][0]["per_seed"][1]
    assert row["per_seed"][0]["seed"] == before["seed"] == 1
    for key in ("real", "augmented", "gain"):
        assert row["per_seed"][0][key] == before[key]
    assert row["real"]["accuracy_sd"] is None  # one seed: no spread


def test_smaller_image_size_resizes_the_generated_cells(tiny_checkpoint, folders):
    images = torch.rand(3, 16, 16).numpy() * 2 - 1
    small = _resized(images, 8)
    assert small.shape == (3, 8, 8) and small.dtype == "float32"
    assert small.min() >= -1 and small.max() <= 1
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], image_size=8, **SETTINGS)
    assert r["image_size"] == 8 and r["model_image_size"] == 16


def test_classifiers_see_crops_recorded_anew_unless_asked(result, tiny_checkpoint, folders,
                                                          capsys, monkeypatch):
    assert result[0]["classifier_jitter"] is True
    import napari_atagan.gan.attention as attention

    seen, train = [], attention.train_classifier

    def spy(*args, **kwargs):
        seen.append(kwargs["jitter"])
        return train(*args, **kwargs)

    monkeypatch.setattr(attention, "train_classifier", spy)
    plain = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[1], jitter=False,
                             **SETTINGS)
    # real only, then the augmented one in two stages (generated cells, then real ones)
    assert plain["classifier_jitter"] is False and seen == [False] * 4  # real; generated, then real; real for longer
    real, test = folders
    assert _main(["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(real), "--test", str(test), "--counts", "2", "--generated", "4",
                  "--epochs", "1", "--seeds", "1", "--device", "cpu",
                  "--plain-classifiers"]) == 0
    out = capsys.readouterr().out
    assert "flipped and rotated crops only" in out and "recorded anew" not in out
    assert seen == [False] * 8
    evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[1], **SETTINGS)
    assert seen[8:] == [True] * 4


def _classifier_calls(monkeypatch) -> list:
    """Every classifier trained from now on, as (cells, steps, went on from another)."""
    import napari_atagan.gan.attention as attention

    calls, train = [], attention.train_classifier

    def spy(data, **kwargs):
        calls.append((data.n, kwargs["steps"], kwargs["start"] is not None))
        return train(data, **kwargs)

    monkeypatch.setattr(attention, "train_classifier", spy)
    return calls


def test_pretrain_then_real_cells_in_the_same_steps(tiny_checkpoint, folders, monkeypatch,
                                                    capsys):
    calls = _classifier_calls(monkeypatch)
    events = []
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0],
                         progress=events.append, mix="pretrain", **SETTINGS)
    row = r["rows"][0]
    assert r["mix"] == "pretrain" and row["n_train"] == {"real": 6, "augmented": 18}
    steps = row["steps"]
    # real only: all steps on the 6 real cells; augmented: half on the 12 generated cells
    # alone, then the rest on the same 6 real cells, going on from that classifier
    assert steps >= 2 and calls == [(6, steps, False), (12, steps // 2, False),
                                    (6, steps - steps // 2, True)]
    scored = [e for e in events if e["stage"] == "scored"]
    assert [e["steps"] for e in scored] == [steps, steps]
    with pytest.raises(ValueError, match="mix must be one of"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[2], mix="after", **SETTINGS)
    real, test = folders
    assert _main(["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(real), "--test", str(test), "--counts", "2", "--generated", "4",
                  "--epochs", "1", "--seeds", "0", "--device", "cpu", "--mix", "pretrain"]) == 0
    out = capsys.readouterr().out
    assert "first on the generated cells alone, then on the real cells" in out
    assert "as many steps" not in out
    calls.clear()
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0], mix="together",
                         **SETTINGS)
    assert r["mix"] == "together" and calls == [(6, steps, False), (18, steps, False)]
    assert _main(["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(real), "--test", str(test), "--counts", "2", "--generated", "4",
                  "--epochs", "1", "--seeds", "0", "--device", "cpu", "--mix", "together"]) == 0
    assert "real and generated cells mixed" in capsys.readouterr().out


def test_a_classifier_goes_on_only_with_its_own_patterns(tiny_data):
    from napari_atagan.gan.attention import PatternClassifier, train_classifier

    with pytest.raises(ValueError, match="knows 5 patterns"):
        train_classifier(tiny_data, start=PatternClassifier(5), steps=1, val_fraction=0.0)
    model = PatternClassifier(len(tiny_data.class_names))
    out, info = train_classifier(tiny_data, start=model, steps=2, val_fraction=0.0)
    assert out is model and info["steps"] == 2


def test_stop_raises_without_a_result(tiny_checkpoint, folders):
    from napari_atagan.slides.attention import Stopped

    with pytest.raises(Stopped):
        evaluate_augment(tiny_checkpoint, *folders, counts=[2], stop=lambda: True, **SETTINGS)


@pytest.mark.parametrize("asked", [3, 4])  # the real cells after the generated; the control
def test_stop_in_a_later_stage_raises_without_a_result(tiny_checkpoint, folders, monkeypatch,
                                                      asked):
    from napari_atagan.slides.attention import Stopped

    calls = _classifier_calls(monkeypatch)

    def stop():  # stop once the asked-for classifier stage has started
        return len(calls) >= asked

    with pytest.raises(Stopped):
        evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0], stop=stop,
                         **SETTINGS)
    assert len(calls) == asked  # nothing trained after the stop


def _translation_checkpoint(path):
    """A file of the translation family (only its family matters here)."""
    from napari_atagan.checkpoint import save_checkpoint
    from napari_atagan.translate import TranslateConfig

    for width in range(1, 10):
        file = save_checkpoint(path, config=TranslateConfig(),
                               modules={"attention": torch.nn.Linear(width, 3)})
        # a safetensors header of 640, 896, 1152 or 1408 bytes begins like a pickle and
        # is refused as one (napari_atagan.checkpoint._parse_tensors): avoid those here
        if file.read_bytes()[:1] != b"\x80":
            return file
    raise AssertionError("no translation checkpoint with an unambiguous header")


def _flat(root):
    """A folder with the crops directly in it: no patterns."""
    import shutil

    cells = write_crops_folder(simulate_crops(3, size=32, patterns=PATTERNS[:1], seed=3),
                               root / "one")
    (root / "flat").mkdir()
    for file in (cells / PATTERNS[0]).iterdir():
        shutil.copy(file, root / "flat" / file.name)
    return root / "flat"


def test_compared_cells_train_the_augmented_recipe_in_place_of_the_generated_ones(
        tiny_checkpoint, folders, tmp_path, monkeypatch, capsys):
    """--compare-cells: cells of another folder (here 3 simulated cells of each pattern)
    take the generated cells' place in the augmented recipe; all of them, the same for
    every count of a seed; its gain is exact and the CLI prints it."""
    import napari_atagan.gan.attention as attention
    from napari_atagan.data import load_folder

    other = write_crops_folder(simulate_crops(9, size=32, patterns=PATTERNS, seed=11),
                               tmp_path / "simulated")
    seen, train = [], attention.train_classifier

    def spy(data, **kwargs):
        seen.append((data.n, kwargs["steps"], {x.tobytes() for x in data.images}))
        return train(data, **kwargs)

    monkeypatch.setattr(attention, "train_classifier", spy)
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[1, 2], seeds=[0],
                         compare_cells=other, **SETTINGS)
    assert r["compare_cells"] == str(other) and r["n_compared"] == {p: 3 for p in PATTERNS}
    wanted = {x.tobytes() for x in load_folder(other, image_size=16).images}
    # per count: real; generated, real; real long; then the compared cells, then real
    for start in (0, 6):
        assert seen[start + 4][0] == 9 and seen[start + 4][2] == wanted
        assert seen[start + 5][2] == seen[start][2]  # the count's own real cells after
    for row in r["rows"]:
        assert row["steps_per_arm"]["compared"] == row["steps_per_arm"]["augmented"]
        assert row["gain_compared"]["accuracy"] == pytest.approx(
            row["compared"]["accuracy"] - row["real"]["accuracy"])
        assert _in_unit(row["compared"]["accuracy"])
    json.dumps(r)
    # two of the three per pattern, drawn by the seed
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[1], seeds=[0], compare_cells=other,
                         **{**SETTINGS, "generated_per_pattern": 2})
    assert r["n_compared"] == {p: 2 for p in PATTERNS} and seen[-2][0] == 6
    with pytest.raises(ValueError, match="does not exist"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[1], compare_cells=tmp_path / "no",
                         **SETTINGS)
    two = write_crops_folder(simulate_crops(6, size=32, patterns=PATTERNS[:2], seed=12),
                             tmp_path / "two")
    with pytest.raises(ValueError, match="no cells of Centromere"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[1], compare_cells=two, **SETTINGS)
    real, test = folders
    head = ["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real", str(real),
            "--test", str(test), "--counts", "1", "--generated", "4", "--epochs", "1",
            "--seeds", "0", "--device", "cpu", "--compare-cells"]
    assert _main(head + [str(other)]) == 0
    out = capsys.readouterr()
    header = next(line for line in out.out.splitlines() if line.startswith("real/pattern"))
    assert "real+compared" in header and "compared gain" in header
    assert f"cells of {other} in place of the generated ones" in out.out
    assert "real + --compare-cells in place of generated ones" in out.err
    assert _main(head + [str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "--compare-cells" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_data):
    from tests.conftest import tiny_config
    from napari_atagan.gan.training import run_to_end, train

    root = tmp_path_factory.mktemp("augment_bad")
    unlabelled = tiny_data.subset(slice(None))
    unlabelled.labels, unlabelled.class_names = None, []
    return {
        "two": write_crops_folder(simulate_crops(6, size=32, patterns=PATTERNS[:2], seed=1),
                                  root / "two"),
        "four": write_crops_folder(simulate_crops(8, size=32, patterns=PATTERNS + ("Golgi",),
                                                  seed=2), root / "four"),
        "flat": _flat(root),
        "uncond": run_to_end(train(tiny_config(steps=1), unlabelled, root / "uncond")).checkpoint,
        "translate": _translation_checkpoint(root / "translate"),
        "missing": root / "nowhere",
    }


def test_library_errors(tiny_checkpoint, folders, bad):
    from napari_atagan.checkpoint import CheckpointError

    real, test = folders
    cases = [
        (dict(real_folder=bad["two"]), "no cells of Centromere"),
        (dict(test_folder=bad["four"]), "does not know: Golgi"),
        (dict(test_folder=bad["missing"]), "does not exist"),
        (dict(checkpoint=bad["uncond"]), "pattern-conditional"),
        (dict(counts=[0]), "counts"),
        (dict(seeds=[]), "seeds"),
        (dict(epochs=0), "epochs"),
        (dict(image_size=32), "larger than the model's 16"),
    ]
    for change, match in cases:
        args = dict(checkpoint=tiny_checkpoint, real_folder=real, test_folder=test,
                    counts=[2], **SETTINGS)
        args.update(change)
        with pytest.raises(ValueError, match=match):
            evaluate_augment(**args)
    with pytest.raises(CheckpointError, match="translation"):
        evaluate_augment(bad["translate"], real, test, counts=[2], **SETTINGS)


# --------------------------------------------------------------------------- CLI


def test_cli_table_and_json(result, tiny_checkpoint, folders, tmp_path, capsys):
    real, test = folders
    report = tmp_path / "augment.json"
    assert _main(["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(real), "--test", str(test), "--counts", "2", "--generated", "4",
                  "--epochs", "1", "--seeds", "1", "--device", "cpu",
                  "--json", str(report)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("real/pattern"))
    assert "real only" in header and "real+gen" in header and "gain" in header
    assert "Homoge" in header and "NuMem" in header and "gain sd" not in header
    assert "Homoge = Homogeneous" in out and "seed 1" in out and "crops recorded anew" in out
    row = lines[lines.index(header) + 2].split()
    saved = json.loads(report.read_text())
    before = result[0]["rows"][0]["per_seed"][1]
    assert saved["rows"][0]["per_seed"][0]["gain"] == before["gain"]
    assert row[0] == "2" and int(row[1]) == saved["rows"][0]["steps"]
    assert float(row[4]) == pytest.approx(saved["rows"][0]["gain"]["accuracy"], abs=5e-4)
    assert "[2/3] 2 real cells per pattern, real + generated, seed 1: accuracy" in err
    assert "results written to" in err


@pytest.mark.parametrize("argv", [
    ["--real", "{missing}", "--test", "{test}"],
    ["--real", "{real}", "--test", "{four}"],  # a pattern the model does not know
    ["--real", "{two}", "--test", "{test}"],  # a pattern missing
    ["--real", "{flat}", "--test", "{test}"],  # no pattern sub-folders
    ["--real", "{real}", "--test", "{test}", "--checkpoint", "{translate}"],
    ["--real", "{real}", "--test", "{test}", "--checkpoint", "{uncond}"],
    ["--real", "{real}", "--test", "{test}", "--image-size", "64"],
])
def test_cli_user_errors_exit_2(argv, tiny_checkpoint, folders, bad, capsys):
    fill = {k: str(v) for k, v in bad.items()}
    fill.update(real=str(folders[0]), test=str(folders[1]))
    head = ["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--counts", "2",
            "--generated", "2", "--epochs", "1", "--device", "cpu"]
    assert _main(head + [a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and len(err.strip().splitlines()) == 1


def test_help_states_the_engine_defaults():
    parser = argparse.ArgumentParser(prog="napari-atagan")
    evaluate = register(parser.add_subparsers(dest="command"))[0]
    augment = evaluate._subparsers._group_actions[0].choices["augment"]
    defaults = {a.dest: a.default for a in augment._actions}
    assert defaults["counts"] == list(AUGMENT_COUNTS) and defaults["generated"] == AUGMENT_GENERATED
    assert defaults["epochs"] == AUGMENT_EPOCHS and defaults["batch_size"] == AUGMENT_BATCH
    text = augment.format_help()
    for action in augment._actions:
        for flag in action.option_strings:
            assert flag in text
        if action.option_strings and action.dest != "help":
            assert action.help
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["evaluate", "augment", "--checkpoint", "x", "--real", "y",
                           "--test", "z", "--counts", "0"])
    assert exc.value.code == 2


def test_finetune_gives_the_real_cells_all_their_steps_and_trains_a_control(
        tiny_checkpoint, folders, monkeypatch, capsys):
    calls = _classifier_calls(monkeypatch)
    events = []
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0, 1], mix="finetune",
                         progress=events.append, **SETTINGS)
    row = r["rows"][0]
    steps = row["steps"]
    more = steps + steps // 2
    # per seed: real only; generated first, then the real cells for all of the real-only
    # steps, going on from that classifier; real only for as many steps in all
    assert calls[:4] == [(6, steps, False), (12, steps // 2, False), (6, steps, True),
                         (6, more, False)]
    assert row["steps_per_arm"] == {"real": steps, "augmented": more, "real_long": more}
    scored = [e for e in events if e["stage"] == "scored"]
    assert [e["steps"] for e in scored] == [steps, more, more] * 2
    assert [e["runs"] for e in scored] == [6] * 6
    for k, seed in enumerate(row["per_seed"]):
        assert seed["gain_same_steps"]["accuracy"] == pytest.approx(
            seed["augmented"]["accuracy"] - seed["real_long"]["accuracy"])
    assert row["gain_same_steps"]["accuracy"] == pytest.approx(
        row["augmented"]["accuracy"] - row["real_long"]["accuracy"])
    assert row["gain_same_steps"]["accuracy_sd"] is not None
    assert "as many steps" in r["budget"]
    real, test = folders
    assert _main(["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(real), "--test", str(test), "--counts", "2", "--generated", "4",
                  "--epochs", "1", "--seeds", "0", "--device", "cpu"]) == 0  # the default
    out = capsys.readouterr()
    assert "real, as many steps" in out.out and "gain over it" in out.out
    assert "for all the real-only classifier's steps" in out.out
    assert "real only, as many steps" in out.err


def test_ceiling_trains_the_augmented_recipe_on_real_cells_no_count_draws(
        tiny_checkpoint, folders, monkeypatch, capsys):
    """The ceiling arm: other real cells of --real in place of the generated ones, never
    any count's own cells, the same for every count; its gain is exact."""
    import napari_atagan.gan.attention as attention

    seen, train = [], attention.train_classifier

    def spy(data, **kwargs):
        seen.append((data.n, kwargs["steps"], kwargs["start"] is not None,
                     {x.tobytes() for x in data.images}))
        return train(data, **kwargs)

    monkeypatch.setattr(attention, "train_classifier", spy)
    # 5 real cells of each pattern: count 1 takes one, the ceiling the other 4 (all asked)
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[1], seeds=[0], ceiling=True,
                         **SETTINGS)
    row = r["rows"][0]
    steps, more = row["steps"], row["steps"] + row["steps"] // 2
    assert r["ceiling"] is True and r["n_ceiling"] == {p: 4 for p in PATTERNS}
    assert r["note"] is None
    assert row["steps_per_arm"] == {"real": steps, "augmented": more, "real_long": more,
                                    "ceiling": more}
    # real, generated then real, real long, then the ceiling: other real cells, then real
    assert [c[:3] for c in seen] == [(3, steps, False), (12, steps // 2, False),
                                     (3, steps, True), (3, more, False),
                                     (12, steps // 2, False), (3, steps, True)]
    own, generated, others = seen[0][3], seen[1][3], seen[4][3]
    assert seen[5][3] == own and not (others & own) and not (others & generated)
    from napari_atagan.data import load_folder

    real_cells = {x.tobytes() for x in load_folder(folders[0], image_size=16).images}
    assert others <= real_cells and own <= real_cells
    part = row["per_seed"][0]
    assert part["gain_ceiling"]["accuracy"] == (part["ceiling"]["accuracy"]
                                                - part["real"]["accuracy"])
    assert row["gain_ceiling"]["accuracy"] == pytest.approx(
        row["ceiling"]["accuracy"] - row["real"]["accuracy"])
    json.dumps(r)
    # count 2 leaves 3 of the 4 asked: all used and said so
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0], ceiling=True,
                         **SETTINGS)
    assert r["n_ceiling"] == {p: 3 for p in PATTERNS}
    assert "fewer real cells left for the ceiling" in r["note"]
    with pytest.raises(ValueError, match="no real cells .* left for the ceiling"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[5], ceiling=True, **SETTINGS)
    real, test = folders
    assert _main(["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real",
                  str(real), "--test", str(test), "--counts", "1", "--generated", "4",
                  "--epochs", "1", "--seeds", "0", "--device", "cpu", "--ceiling"]) == 0
    out = capsys.readouterr()
    header = next(line for line in out.out.splitlines() if line.startswith("real/pattern"))
    assert "real+other real" in header and "ceiling gain" in header
    assert "a perfect generator's cells" in out.out and "(ceiling)" in out.err


def test_selected_cells_are_those_the_real_only_classifier_finds_most_likely_of_their_pattern(
        tiny_checkpoint, folders, monkeypatch, capsys):
    """--keep 0.5: twice as many cells drawn; the augmented arm gets the first half of each
    pattern's as drawn, the selected arm the half that the real-only classifier of the same
    count gives the highest probability of their own pattern; its gain is exact."""
    import napari_atagan.gan.attention as attention
    import napari_atagan.evaluation.augment as augment

    seen, models, train = [], [], attention.train_classifier

    def spy(data, **kwargs):
        model, info = train(data, **kwargs)
        seen.append(data)
        models.append(model)
        return model, info

    pools = []
    generated = augment._generated

    def keep_pool(*args, **kwargs):
        pool = generated(*args, **kwargs)
        pools.append(pool)
        return pool

    monkeypatch.setattr(attention, "train_classifier", spy)
    monkeypatch.setattr(augment, "_generated", keep_pool)
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0], keep=0.5,
                         **SETTINGS)
    assert r["keep"] == 0.5 and r["n_drawn"] == 8
    pool = pools[0]
    assert pool.n == 8 * len(PATTERNS)
    # real; generated, real; real long; selected, real
    augmented, selected = seen[1], seen[4]
    assert augmented.n == selected.n == 4 * len(PATTERNS)
    first = augment._first(pool, 4)
    assert {x.tobytes() for x in augmented.images} == {x.tobytes() for x in first.images}
    judge = models[0]
    with torch.inference_mode():
        logp = torch.log_softmax(judge(torch.from_numpy(pool.images).unsqueeze(1)), 1).numpy()
    own = logp[range(pool.n), pool.labels]
    for k in range(len(PATTERNS)):
        idx = (pool.labels == k).nonzero()[0]
        best = {pool.images[i].tobytes() for i in idx[own[idx].argsort()[::-1][:4]]}
        assert {x.tobytes() for x, y in zip(selected.images, selected.labels) if y == k} == best
    row = r["rows"][0]
    assert row["steps_per_arm"]["selected"] == row["steps_per_arm"]["augmented"]
    assert row["gain_selected"]["accuracy"] == pytest.approx(
        row["selected"]["accuracy"] - row["real"]["accuracy"])
    assert set(row["kept_called"]) == set(PATTERNS)
    assert all(_in_unit(v) for v in row["kept_called"].values())
    json.dumps(r)
    # select="called": of those, only the ones the real-only classifier calls by their pattern
    seen.clear(), models.clear(), pools.clear()
    r = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0], keep=0.5,
                         select="called", **SETTINGS)
    pool, judge = pools[0], models[0]
    with torch.inference_mode():
        logp = torch.log_softmax(judge(torch.from_numpy(pool.images).unsqueeze(1)), 1).numpy()
    own, called = logp[range(pool.n), pool.labels], logp.argmax(1) == pool.labels
    kept = {}
    for k, name in enumerate(r["patterns"]):
        idx = (pool.labels == k).nonzero()[0]
        best = idx[own[idx].argsort()[::-1][:4]]
        kept[name] = {pool.images[i].tobytes() for i in best if called[i]}
    assert r["select"] == "called"
    assert r["rows"][0]["per_seed"][0]["n_selected"] == {p: len(v) for p, v in kept.items()}
    if sum(len(v) for v in kept.values()):  # the selected arm trains on exactly those first
        assert {x.tobytes() for x in seen[4].images} == set().union(*kept.values())
    with pytest.raises(ValueError, match="select must be one of likely, called"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[2], keep=0.5, select="best",
                         **SETTINGS)
    # keep 1 (the default): no selected arm, as before
    plain = evaluate_augment(tiny_checkpoint, *folders, counts=[2], seeds=[0], **SETTINGS)
    assert "selected" not in plain["rows"][0] and plain["n_drawn"] == 4
    for bad_keep in (0, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="keep"):
            evaluate_augment(tiny_checkpoint, *folders, counts=[2], keep=bad_keep, **SETTINGS)
    real, test = folders
    head = ["evaluate", "augment", "--checkpoint", str(tiny_checkpoint), "--real", str(real),
            "--test", str(test), "--counts", "2", "--generated", "4", "--epochs", "1",
            "--seeds", "0", "--device", "cpu", "--keep"]
    assert _main(head + ["0.5"]) == 0
    out = capsys.readouterr()
    assert "real+selected" in out.out and "selected gain" in out.out
    assert "the 4 of 8 generated cells of every pattern" in out.out
    assert "real-only classifier of 2 real cells calls by their own pattern" in out.out
    # a keep that draws no extra cell, and a choice with nothing to choose from: clear errors
    with pytest.raises(ValueError, match="draws no extra cell"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[2], keep=0.9, **SETTINGS)
    with pytest.raises(ValueError, match="nothing to choose"):
        evaluate_augment(tiny_checkpoint, *folders, counts=[2], select="called", **SETTINGS)
    assert "selected by the real-only classifier" in out.err
    with pytest.raises(SystemExit) as exc:  # refused as argparse refuses a bad value
        _main(head + ["0"])
    assert exc.value.code == 2
    assert "argument --keep: expected a fraction in (0, 1], got '0'" in capsys.readouterr().err
