"""A lab's archive: the cell table, many slides at once, reruns, stops, kills and a cluster."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_atagan import default_model_path
from napari_atagan.slides.archive import (
    SLIDE_COLUMNS,
    ArchiveDone,
    ArchiveOptions,
    find_slides,
    is_complete,
    outputs_for,
    process_slide,
    run_archive,
)
from napari_atagan.slides.cells import BASE_COLUMNS, CellTable, cell_table, read_cells_csv
from napari_atagan.checkpoint import load_checkpoint, save_checkpoint
from napari_atagan.simulate import simulate_slide, write_slide
from napari_atagan.metrics import match_objects
from napari_atagan.slides.labels import drop_border_cells

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the cell table
def _two_cells():
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 10:20] = 1  # 100 px, centroid (9.5, 14.5)
    labels[20:30, 30:36] = 3  # 60 px, centroid (24.5, 32.5); id 2 is absent
    image = np.where(labels == 1, 10.0, np.where(labels == 3, 30.0, 1.0)).astype(np.float32)
    attention = np.zeros(labels.shape, np.float32)
    attention[labels == 1] = 0.2
    attention[7, 12] = 0.9
    attention[labels == 3] = 0.5
    return labels, image, attention


def test_cell_table_measures_known_cells():
    labels, image, attention = _two_cells()
    table = cell_table(labels, image, attention)
    assert list(table.columns) == list(BASE_COLUMNS) and len(table) == 2
    c = table.columns
    assert c["label"].tolist() == [1, 3] and c["area"].tolist() == [100, 60]
    np.testing.assert_allclose(c["centroid_y"], [9.5, 24.5])
    np.testing.assert_allclose(c["centroid_x"], [14.5, 32.5])
    np.testing.assert_allclose(c["mean_intensity"], [10.0, 30.0])
    np.testing.assert_allclose(c["mean_attention"], [(99 * 0.2 + 0.9) / 100, 0.5], rtol=1e-6)
    np.testing.assert_allclose(c["peak_attention"], [0.9, 0.5], rtol=1e-6)
    assert table.patterns == [] and table.summary()["pattern"] == ""
    assert table.summary()["median_area"] == 80.0


def test_cell_table_of_a_stack_and_in_bands(monkeypatch):
    import napari_atagan.slides.cells as cells

    labels, image, attention = _two_cells()
    stack_labels = np.stack([labels, np.where(labels > 0, labels + 3, 0)])
    table = cell_table(stack_labels, np.stack([image] * 2), np.stack([attention] * 2))
    assert table.columns["label"].tolist() == [1, 3, 4, 6]
    assert table.columns["plane"].tolist() == [0, 0, 1, 1]
    monkeypatch.setattr(cells, "_BAND_PIXELS", 50)  # one row at a time: the same figures
    banded = cell_table(stack_labels, np.stack([image] * 2), np.stack([attention] * 2))
    for name in table.columns:
        np.testing.assert_allclose(banded.columns[name], table.columns[name])


def test_cell_table_errors_and_empty():
    labels, image, attention = _two_cells()
    with pytest.raises(ValueError, match="same pixels"):
        cell_table(labels, image[:-1], attention)
    empty = cell_table(np.zeros((8, 8), np.uint16), np.ones((8, 8)), np.zeros((8, 8)))
    assert len(empty) == 0 and empty.summary()["cells"] == 0


def test_cell_csv_round_trip_and_slide_pattern(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]], np.float32)
    cols = {"label": np.array([1, 2, 5]), "centroid_y": np.array([1.0, 2.0, 3.0]),
            "centroid_x": np.array([4.0, 5.0, 6.0]), "area": np.array([10, 30, 20]),
            "mean_intensity": np.array([1.5, 2.5, 3.5]), "mean_attention": np.zeros(3),
            "peak_attention": np.ones(3)}
    names = ["A", "B", "C"]
    cols.update({f"p_{n}": probs[:, k] for k, n in enumerate(names)})
    cols["pattern"] = np.array(["A", "A", "B"], dtype=object)
    table = CellTable(cols, names, "classifier teacher")
    # two cells prefer A a little, one rules A out: the cells' evidence adds up in
    # logarithms, so B (geometric mean 0.363) beats A (0.348), though the arithmetic mean
    # would pick A (0.467 against 0.433)
    summary = table.summary()
    g = np.exp(np.log(probs.astype(np.float64)).mean(axis=0))
    assert summary["pattern"] == "B" and summary["confidence"] == pytest.approx(g[1] / g.sum())
    assert 0.44 < summary["confidence"] < 0.46
    # a cell with probability 0 does not veto a pattern alone
    cols0 = {**cols, "p_A": np.array([1.0, 1.0, 0.0], np.float32),
             "p_B": np.array([0.0, 0.0, 1.0], np.float32), "p_C": np.zeros(3, np.float32)}
    assert CellTable(cols0, names, "classifier teacher").summary()["pattern"] == "A"
    assert summary["median_area"] == 20.0 and summary["pattern_source"] == "classifier teacher"
    back = read_cells_csv(table.to_csv(tmp_path / "c.csv"))
    assert back.patterns == names and back.pattern_source == "classifier teacher"
    assert back.columns["label"].tolist() == [1, 2, 5] and back.columns["pattern"].tolist() == [
        "A", "A", "B"]
    np.testing.assert_allclose(back.probabilities, probs, atol=1e-4)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="not a cell table"):
        read_cells_csv(tmp_path / "bad.csv")


def test_patterns_from_the_discriminator_and_from_a_teacher(tmp_path):
    ckpt = load_checkpoint(default_model_path())
    sim = simulate_slide((256, 256), n_cells=6, cell_diameter=40, seed=2)
    labels = sim.labels
    att = np.ones(labels.shape, np.float32)
    table = cell_table(labels, sim.image, att, checkpoint=ckpt, cell_diameter=40)
    assert table.patterns == ckpt.class_names and table.pattern_source == (
        "discriminator features, linear probe")
    p = table.probabilities
    assert p.shape == (len(table), 6)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [ckpt.class_names[i] for i in p.argmax(axis=1)] == table.columns["pattern"].tolist()
    with pytest.raises(ValueError, match="cell diameter"):
        cell_table(labels, sim.image, att, checkpoint=ckpt)
    # a run trained with the classifier teacher keeps it: it names the patterns
    from napari_atagan.gan.attention import PatternClassifier

    torch.manual_seed(0)
    disc = ckpt.discriminator()
    teacher = PatternClassifier(6)
    path = save_checkpoint(tmp_path / "t.safetensors", config=ckpt.config,
                           modules={"D": disc, "teacher": teacher},
                           metadata={"class_names": ckpt.class_names,
                                     "data": ckpt.metadata.get("data", {})})
    with_teacher = load_checkpoint(path)
    model, source = with_teacher.pattern_model()
    assert source == "classifier teacher" and isinstance(model, PatternClassifier)
    table = cell_table(labels, sim.image, att, checkpoint=with_teacher, cell_diameter=40)
    assert table.pattern_source == "classifier teacher" and len(table) == len(np.unique(labels)) - 1


def _teacher_run(tmp_path) -> Path:
    """A checkpoint that names patterns with a (random) classifier teacher."""
    from napari_atagan.gan.attention import PatternClassifier

    ckpt = load_checkpoint(default_model_path())
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "namer.safetensors", config=ckpt.config,
                           modules={"D": ckpt.discriminator(), "teacher": PatternClassifier(6)},
                           metadata={"class_names": ckpt.class_names,
                                     "data": ckpt.metadata.get("data", {})})


def test_patterns_from_another_run(slides, tmp_path):
    """The cells of one model, named by another run's classifier: the same labels, other
    probabilities, said in the table, the metadata and the settings."""
    from napari_atagan.export import read_tiff_metadata

    namer = _teacher_run(tmp_path)
    paths = [slides / "s0.tif", slides / "s1.tif"]
    _, own = _events(paths, _options(tmp_path / "own"), workers=1)
    results, other = _events(paths, _options(tmp_path / "other", patterns_from=str(namer)),
                             workers=2)
    assert [r.status for r in results] == ["done", "done"]
    for p, a, b in zip(paths, own.rows, other.rows):
        assert a["pattern_source"] == "discriminator features, linear probe"
        assert b["pattern_source"] == "classifier teacher"
        fa, fb = outputs_for(p, tmp_path / "own"), outputs_for(p, tmp_path / "other")
        assert np.array_equal(tifffile.imread(fa["labels"]), tifffile.imread(fb["labels"]))
        ta, tb = read_cells_csv(fa["cells"]), read_cells_csv(fb["cells"])
        assert ta.columns["label"].tolist() == tb.columns["label"].tolist()
        assert not np.allclose(ta.probabilities, tb.probabilities)
        assert read_tiff_metadata(fb["labels"])["patterns_from"] == "namer.safetensors"
        assert "patterns_from" not in read_tiff_metadata(fa["labels"])
    # outputs named by the model itself are not those of a run that borrows a namer
    results, _ = _events(paths, _options(tmp_path / "own", patterns_from=str(namer)), workers=1)
    assert [r.status for r in results] == ["done", "done"]
    results, _ = _events(paths, _options(tmp_path / "own", patterns_from=str(namer)), workers=1)
    assert [r.status for r in results] == ["skipped", "skipped"]


def test_the_namer_is_opened_once_per_process(slides, tmp_path, monkeypatch):
    """The command checks the run before the first slide and the slides reuse it: one
    opening in all, until the file changes."""
    import napari_atagan.gan.checkpoint as gan_checkpoint
    from napari_atagan.cli.main import main

    namer = _teacher_run(tmp_path)
    opened, real = [], gan_checkpoint.open_classifier_run

    def counted(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(gan_checkpoint, "open_classifier_run", counted)
    argv = ["attention", "--checkpoint", str(default_model_path()), "--image", "{}",
            "--diameter", "40", "--out", str(tmp_path / "cli"), "--device", "cpu",
            "--workers", "1", "--patterns-from", str(namer)]
    assert main([a.format(slides / "s0.tif") for a in argv]) == 0  # one slide
    assert main([a.format(slides / "s*.tif") for a in argv]) == 0  # a glob of four
    assert opened == ["namer.safetensors"]
    os.utime(namer, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file changed
    _events([slides / "s1.tif"], _options(tmp_path / "o", patterns_from=str(namer),
                                          overwrite=True), workers=1)
    assert opened == ["namer.safetensors"] * 2


def test_patterns_from_a_run_that_cannot_name_them(slides, tmp_path):
    from napari_atagan.checkpoint import CheckpointError

    with pytest.raises(ValueError, match="cannot name patterns"):
        _events([slides / "s0.tif"], _options(tmp_path / "o",
                                              patterns_from=str(default_model_path())))
    with pytest.raises(CheckpointError):
        _events([slides / "s0.tif"], _options(tmp_path / "o",
                                              patterns_from=str(tmp_path / "none.safetensors")))
    assert not (tmp_path / "o" / "s0_cells.csv").exists()  # refused before any slide
    from napari_atagan.cli.main import main

    for extra in (["--patterns-from", str(default_model_path())],
                  ["--patterns-from", str(_teacher_run(tmp_path)), "--no-patterns"]):
        argv = ["attention", "--checkpoint", str(default_model_path()), "--image",
                str(slides / "s0.tif"), "--diameter", "40", "--out", str(tmp_path / "cli"),
                "--device", "cpu", *extra]
        assert main(argv) == 2


def test_a_checkpoint_builds_its_pattern_model_once_per_device(tmp_path):
    """Every slide of an archive is named with the same network, not a rebuilt one."""
    ckpt = load_checkpoint(_teacher_run(tmp_path))
    model, source = ckpt.pattern_model("cpu")
    assert source == "classifier teacher" and not model.training
    again, _ = ckpt.pattern_model(torch.device("cpu"))
    assert again is model
    fresh, _ = load_checkpoint(ckpt.path).pattern_model()
    assert fresh is not model  # another opening of the file builds its own
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


# --------------------------------------------------------------------------- finding slides
def test_find_slides_file_folder_and_glob(tmp_path):
    for name in ("b10.tif", "b2.tif", "a.png", "a_labels.tif", "a_attention.tif", "x_Mask.png",
                 ".hidden.tif", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.tif").write_bytes(b"")
    assert [p.name for p in find_slides(tmp_path)] == ["a.png", "b2.tif", "b10.tif"]
    assert [p.name for p in find_slides(str(tmp_path / "b*.tif"))] == ["b2.tif", "b10.tif"]
    assert [p.name for p in find_slides(str(tmp_path / "**" / "*.tif"))] == [
        "b2.tif", "b10.tif", "c.tif"]
    assert find_slides(tmp_path / "a_labels.tif") == [tmp_path / "a_labels.tif"]  # named: read
    with pytest.raises(ValueError, match="no slides"):
        find_slides(str(tmp_path / "z*.tif"))
    with pytest.raises(ValueError, match="does not exist"):
        find_slides(tmp_path / "missing.tif")
    (tmp_path / "b2.png").write_bytes(b"")
    with pytest.raises(ValueError, match="same outputs"):
        list(run_archive(find_slides(tmp_path), ArchiveOptions("c", str(tmp_path / "o"))))


def test_bmp_and_jpeg_slides_are_found_and_labelled(tmp_path):
    """Slides exported as BMP or JPEG (RGB, the stain in green) are slides of a folder too."""
    from PIL import Image

    folder = tmp_path / "slides"
    folder.mkdir()
    s = simulate_slide((200, 240), n_cells=6, cell_diameter=40, seed=3, bit_depth=8)
    rgb = np.zeros(s.image.shape + (3,), np.uint8)
    rgb[..., 1] = s.image
    Image.fromarray(rgb).save(folder / "a.bmp")
    Image.fromarray(rgb).save(folder / "b.JPG", quality=95)
    (folder / "notes.txt").write_text("not a slide")
    paths = find_slides(folder)
    assert [p.name for p in paths] == ["a.bmp", "b.JPG"]
    results, done = _events(paths, _options(tmp_path / "out"), workers=1)
    assert done.counts == {"done": 2, "skipped": 0, "failed": 0, "left": 0}
    for stem in ("a", "b"):
        labels = tifffile.imread(tmp_path / "out" / f"{stem}_labels.tif")
        assert labels.shape == s.image.shape and labels.dtype.kind == "u"
        found = match_objects(drop_border_cells(labels), drop_border_cells(s.labels), 0.5)
        assert found["tp"] >= 4, (stem, found)


# --------------------------------------------------------------------------- many slides
@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Four small simulated slides and one broken file."""
    folder = tmp_path_factory.mktemp("slides")
    for i in range(4):
        write_slide(simulate_slide((200, 240), n_cells=6, cell_diameter=40, seed=i), folder,
                    stem=f"s{i}")
    good = (folder / "s0.tif").read_bytes()
    (folder / "broken.tif").write_bytes(good[:3000])
    return folder


def _options(out, **kw):
    return ArchiveOptions(checkpoint=str(default_model_path()), out_dir=str(out), diameter=40.0,
                          device="cpu", **kw)


def _events(paths, options, **kw):
    events = list(run_archive(paths, options, **kw))
    assert isinstance(events[-1], ArchiveDone)
    return events[:-1], events[-1]


def test_archive_writes_every_slide_and_reports_failures(slides, tmp_path):
    results, done = _events(find_slides(slides), _options(tmp_path / "out"), workers=1)
    assert [r.index for r in results] == [1, 2, 3, 4, 5] and all(r.total == 5 for r in results)
    status = {r.path.name: r.status for r in results}
    assert status == {"broken.tif": "failed", **{f"s{i}.tif": "done" for i in range(4)}}
    assert done.counts == {"done": 4, "skipped": 0, "failed": 1, "left": 0}
    with open(done.slides_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SLIDE_COLUMNS
    assert [r["slide"] for r in rows] == ["broken.tif", "s0.tif", "s1.tif", "s2.tif", "s3.tif"]
    assert "truncated" in rows[0]["error"] and rows[0]["status"] == "failed"
    for r in rows[1:]:
        files = outputs_for(slides / r["slide"], tmp_path / "out")
        labels = tifffile.imread(files["labels"])
        table = read_cells_csv(files["cells"])
        assert int(r["cells"]) == len(table) == len(np.unique(labels)) - 1
        assert table.columns["label"].tolist() == sorted(set(np.unique(labels)) - {0})
        assert r["pattern"] in table.patterns and 0 < float(r["confidence"]) <= 1
        assert r["pattern_source"] == "discriminator features, linear probe"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_rerun_skips_complete_slides_and_overwrite_redoes_them(slides, tmp_path):
    paths = [slides / f"s{i}.tif" for i in range(3)]
    out = tmp_path / "out"
    _events(paths, _options(out), workers=1)
    cells = outputs_for(paths[1], out)["cells"]
    stamp = cells.stat().st_mtime_ns
    os.remove(outputs_for(paths[2], out)["labels"])  # as if stopped before its labels
    results, done = _events(paths, _options(out), workers=1)
    assert [r.status for r in results] == ["skipped", "skipped", "done"]
    assert cells.stat().st_mtime_ns == stamp
    assert done.counts["skipped"] == 2 and done.rows[1]["cells"] == len(read_cells_csv(cells))
    results, _ = _events(paths, _options(out, overwrite=True), workers=1)
    assert [r.status for r in results] == ["done"] * 3 and cells.stat().st_mtime_ns != stamp
    # outputs made with other settings are not this run's: redone, not skipped
    results, _ = _events(paths, _options(out, threshold="otsu"), workers=1)
    assert [r.status for r in results] == ["done"] * 3
    results, _ = _events(paths, _options(out, threshold="otsu"), workers=1)
    assert [r.status for r in results] == ["skipped"] * 3


def test_worker_processes_compute_what_one_process_does(slides, tmp_path):
    paths = find_slides(slides)
    _events(paths, _options(tmp_path / "one"), workers=1)
    results, done = _events(paths, _options(tmp_path / "two"), workers=2)
    assert done.counts == {"done": 4, "skipped": 0, "failed": 1, "left": 0}
    for p in paths[1:]:
        a = outputs_for(p, tmp_path / "one")
        b = outputs_for(p, tmp_path / "two")
        assert np.array_equal(tifffile.imread(a["labels"]), tifffile.imread(b["labels"]))
        assert a["cells"].read_text() == b["cells"].read_text()


def test_stop_leaves_complete_slides_and_the_rerun_finishes(slides, tmp_path):
    paths = [slides / f"s{i}.tif" for i in range(4)]
    stop = threading.Event()
    events = []
    for event in run_archive(paths, _options(tmp_path / "out"), workers=1, stop=stop):
        events.append(event)
        stop.set()  # after the first slide
    done = events[-1]
    assert done.stopped and done.counts["done"] == 1 and done.counts["left"] == 3
    assert [is_complete(p, _options(tmp_path / "out")) for p in paths] == [True, False, False,
                                                                            False]
    results, done = _events(paths, _options(tmp_path / "out"), workers=1)
    assert [r.status for r in results] == ["skipped", "done", "done", "done"]


def test_ome_zarr_outputs(slides, tmp_path):
    pytest.importorskip("ome_zarr")
    from napari_atagan.zarr_export import read_ome_zarr

    path = slides / "s1.tif"
    row = process_slide(path, _options(tmp_path / "z", zarr=True))
    files = outputs_for(path, tmp_path / "z", zarr=True)
    assert set(files) == {"zarr", "cells"} and is_complete(path, _options(tmp_path / "z", zarr=True))
    attention, labels, meta = read_ome_zarr(files["zarr"])
    tif = process_slide(path, _options(tmp_path / "t"))
    assert np.array_equal(labels, tifffile.imread(tif["_files"]["labels"]))
    assert attention.shape == labels.shape == (200, 240) and meta["cell_diameter"] == 40.0
    assert row["cells"] == tif["cells"]


def test_dask_cluster_runs_the_same_slides(slides, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    paths = [slides / f"s{i}.tif" for i in range(3)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        results, done = _events(paths, _options(tmp_path / "dask"),
                                scheduler=cluster.scheduler_address)
    assert done.counts["done"] == 3 and {r.status for r in results} == {"done"}
    _events(paths, _options(tmp_path / "here"), workers=1)
    for p in paths:
        assert (outputs_for(p, tmp_path / "dask")["cells"].read_text()
                == outputs_for(p, tmp_path / "here")["cells"].read_text())


def test_dask_workers_name_cells_with_a_relative_patterns_from(slides, tmp_path, monkeypatch):
    """A --patterns-from given relative to where the command runs reaches the workers
    (which run elsewhere) as an absolute path: the same tables as a local run."""
    distributed = pytest.importorskip("dask.distributed")
    namer = _teacher_run(tmp_path)
    paths = [slides / "s0.tif", slides / "s1.tif"]
    relative = dict(patterns_from=namer.name)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        monkeypatch.chdir(tmp_path)  # the worker started elsewhere: the name means nothing there
        results, done = _events(paths, _options(tmp_path / "dask", **relative),
                                scheduler=cluster.scheduler_address)
    assert done.counts["done"] == 2
    assert {r["pattern_source"] for r in done.rows} == {"classifier teacher"}
    _events(paths, _options(tmp_path / "here", **relative), workers=1)
    for p in paths:
        assert (outputs_for(p, tmp_path / "dask")["cells"].read_text()
                == outputs_for(p, tmp_path / "here")["cells"].read_text())


# --------------------------------------------------------------------------- the command
def _cli(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "napari_atagan", "attention", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, **kw)


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Fourteen slides: enough for a run to be stopped halfway."""
    folder = tmp_path_factory.mktemp("many")
    for i in range(14):
        write_slide(simulate_slide((384, 384), n_cells=12, cell_diameter=40, seed=10 + i),
                    folder, stem=f"m{i:02d}")
    return folder


def _argv(folder, out, *extra):
    return ["--checkpoint", str(default_model_path()), "--image", str(folder), "--diameter",
            "40", "--out", str(out), "--device", "cpu", *extra]


def _wait_for_outputs(out: Path, n: int, proc, timeout: float = 120.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        found = len(list(out.glob("*_cells.csv"))) if out.exists() else 0
        if found >= n or proc.poll() is not None:
            return found
        time.sleep(0.02)
    raise AssertionError("no outputs appeared")


def _assert_nothing_partial(out: Path) -> None:
    for f in out.glob("*.tif"):
        tifffile.imread(f)  # every TIFF under its real name is whole
    for f in out.glob("*_cells.csv"):
        read_cells_csv(f)


def test_cli_folder_run_summary_and_failures(slides, tmp_path):
    proc = _cli(*_argv(slides, tmp_path / "out"))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1  # one slide failed: said, counted, the others done
    summary = json.loads(stdout)
    assert summary["slides"] == 5 and summary["done"] == 4 and summary["failed"] == 1
    assert "broken.tif" in stderr and "truncated" in stderr and "Traceback" not in stderr
    assert Path(summary["slides_csv"]).is_file()


def test_sigterm_stops_the_run_and_the_rerun_finishes(many, tmp_path):
    out = tmp_path / "out"
    proc = _cli(*_argv(many, out, "--workers", "2"))
    before = _wait_for_outputs(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    finished = {p.name for p in out.glob("*_cells.csv")}
    assert before <= len(finished) < 14  # stopped halfway
    _assert_nothing_partial(out)
    stamps = {n: (out / n).stat().st_mtime_ns for n in finished}
    proc = _cli(*_argv(many, out))
    stdout, _ = proc.communicate(timeout=300)
    summary = json.loads(stdout)
    assert proc.returncode == 0 and summary["skipped"] == len(finished)
    assert summary["done"] == 14 - len(finished)
    assert all((out / n).stat().st_mtime_ns == s for n, s in stamps.items())  # not redone
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_killed_worker_costs_only_its_slide(many, tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "out"
    proc = _cli(*_argv(many, out, "--workers", "2"))
    _wait_for_outputs(out, 1, proc)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
               if "resource_tracker" not in " ".join(c.cmdline())]
    assert workers, "the run has worker processes"
    os.kill(workers[0].pid, signal.SIGKILL)
    left = 14 - len(list(out.glob("*_cells.csv")))
    stdout, stderr = proc.communicate(timeout=300)
    assert left > 0  # the kill came halfway
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["done"] == 14 and summary["failed"] == 0
    _assert_nothing_partial(out)



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_worker_keeps_freed_memory_for_the_next_slide():
    """The worker's settings take on glibc, and a slide's arrays, freed and taken
    again for the next slide, no longer come back as fresh pages (page faults)."""
    code = (
        "import resource, sys, numpy as np\n"
        "from napari_atagan.slides.archive import keep_freed_memory\n"
        "if sys.argv[1] == 'keep': assert keep_freed_memory()\n"
        "def slide():\n"
        "    held = [np.ones((1038, 1388), t) for t in [np.float32] * 6 + [np.int64] * 3]\n"
        "    return sum(float(a[0, 0]) for a in held)\n"
        "slide()\n"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(10): slide()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)\n")
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], check=True,
                                       capture_output=True, text=True).stdout)
              for mode in ("plain", "keep")}
    assert faults["plain"] > 10 * 1000  # a slide's 52 MB are 12,700 pages
    assert faults["keep"] < 500


def test_cells_are_named_alike_in_bfloat16_and_float32(slides, tmp_path, monkeypatch):
    """Where the chip computes in bfloat16 the classifier names cells in it: the same
    patterns as in float32, probabilities within a few hundredths."""
    import napari_atagan.device as device_module

    ckpt = load_checkpoint(_teacher_run(tmp_path))
    s = simulate_slide((256, 256), n_cells=8, cell_diameter=40.0, seed=3)
    labels = s.labels.astype(np.int32)
    tables = {}
    for fast in (False, True):
        monkeypatch.setattr(device_module, "fast_bfloat16", lambda device, f=fast: f)
        tables[fast] = cell_table(labels, s.image, np.zeros(labels.shape, np.float32),
                                  checkpoint=ckpt, cell_diameter=40.0)
    names = tables[False].patterns
    p32 = np.stack([tables[False].columns["p_" + n] for n in names], 1)
    p16 = np.stack([tables[True].columns["p_" + n] for n in names], 1)
    assert p32.shape == (int(labels.max()), 6)
    assert np.abs(p32 - p16).max() < 0.05
    assert list(tables[False].columns["pattern"]) == list(tables[True].columns["pattern"])


def test_fast_bfloat16_only_where_the_chip_has_it(monkeypatch):
    from napari_atagan.device import fast_bfloat16

    assert fast_bfloat16("meta") is False
    assert isinstance(fast_bfloat16("cpu"), bool)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert fast_bfloat16("cpu") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fast_bfloat16(torch.device("cpu")) is True

    def broken():
        raise RuntimeError("cannot probe")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert fast_bfloat16("cpu") is False


def test_pattern_probabilities_in_the_precision_asked(tmp_path, monkeypatch):
    """``bfloat16=False/True`` overrides what the chip would choose (the benchmark compares
    the two in one run)."""
    import napari_atagan.device as device_module
    from napari_atagan.slides.cells import pattern_probabilities

    ckpt = load_checkpoint(_teacher_run(tmp_path))
    model, _ = ckpt.pattern_model("cpu")
    s = simulate_slide((192, 192), n_cells=5, cell_diameter=40.0, seed=4)
    labels = s.labels.astype(np.int32)
    columns = cell_table(labels, s.image, np.zeros(labels.shape, np.float32)).columns
    monkeypatch.setattr(device_module, "fast_bfloat16", lambda device: True)
    full = pattern_probabilities(model, s.image, labels, columns, 40.0, ckpt, bfloat16=False)
    monkeypatch.setattr(device_module, "fast_bfloat16", lambda device: False)
    auto = pattern_probabilities(model, s.image, labels, columns, 40.0, ckpt)
    half = pattern_probabilities(model, s.image, labels, columns, 40.0, ckpt, bfloat16=True)
    assert np.array_equal(full, auto)  # asked for float32: float32 whatever the chip
    assert full.shape == (int(labels.max()), 6) and not np.array_equal(full, half)
    assert np.abs(full - half).max() < 0.05


def test_a_folder_run_refuses_a_bad_checkpoint_before_importing_torch(tmp_path):
    """The command's main process only hands the checkpoint to its workers: it checks the
    file from its bytes, and a bad one ends the run with a clear error, torch never loaded."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"s{i}.tif", np.zeros((64, 64), np.uint16))
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint at all, and long enough to look at")
    code = ("import sys; from napari_atagan.cli.main import main; "
            f"rc = main(['attention', '--checkpoint', {str(bad)!r}, '--image', {str(folder)!r}, "
            f"'--diameter', '20', '--out', {str(tmp_path / 'out')!r}]); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]
    assert "model.safetensors" in out.stderr and "not a valid" in out.stderr
    assert not any((tmp_path / "out").glob("*_labels.tif"))


def test_settings_key_keeps_earlier_outputs_valid_and_changes_with_find():
    """Outputs written before --find existed (their key stored in them) still count as
    complete for a run with the default; another --find changes the key, so a rerun
    redoes the slide. The two keys are those the previous version computed."""
    from napari_atagan.slides.archive import ArchiveOptions, settings_key

    plain = ArchiveOptions(checkpoint="missing.safetensors", out_dir="o")
    assert settings_key(plain) == "f3853c53f0e8bb05"
    assert settings_key(ArchiveOptions(checkpoint="missing.safetensors", out_dir="o",
                                       diameter=60.0, cut=0.35)) == "fb10ba00d171d6bd"
    assert settings_key(ArchiveOptions(checkpoint="missing.safetensors", out_dir="o",
                                       find="both")) == settings_key(plain)
    keys = {settings_key(ArchiveOptions(checkpoint="missing.safetensors", out_dir="o",
                                        find=find)) for find in ("both", "attention", "blob")}
    assert len(keys) == 3
