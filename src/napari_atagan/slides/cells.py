"""The cells of a slide as a table: where each is, how big, how bright, which pattern.

:func:`cell_table` measures every labelled cell of a slide (a 2-D image or a
``(T, Y, X)`` stack): its id, centroid, area in pixels, mean intensity of the
slide, mean and peak attention and, when the checkpoint knows staining
patterns, the probability of each pattern and the most probable one.

A cell's pattern is read the way the model learnt patterns: a window around the
cell, as large as a training crop relative to the cell (the cell diameter
times ``image_size / model cell diameter``), is centred on the cell's mask,
normalised and resized exactly like a training crop
(:func:`napari_atagan.data.prepare_crop`) and classified by the run's pattern
classifier teacher when the checkpoint keeps it, else by the linear probe on the
discriminator's features that training fits (:mod:`napari_atagan.gan.probe`), else
(files saved before probes) by the discriminator's pattern head (its projection
head, or the auxiliary classifier of AC-GAN conditioning)
(:meth:`napari_atagan.checkpoint.Checkpoint.pattern_model`); the table says which.

The slide's own pattern (:meth:`CellTable.summary`) is the pattern that explains
all its cells best: the highest mean log-probability over its cells (the
geometric mean of each pattern's probabilities). A patient's antibodies stain
every cell of a slide alike, so the cells are so many independent looks at one
pattern, and evidence from independent looks adds up in logarithms: a cell that
rules a pattern out (0.1) counts more than two that merely prefer another over
it (0.7 against 0.2). Its confidence is that pattern's share of the geometric
means. On mosaics of held-out I3A cells that the classifier teacher never saw,
this named 25 of 30 slides where the arithmetic mean named 24 and a majority of
the cells' calls 24 (``docs/experiments.md``, *Naming a slide's pattern*).

The same table is the CSV of ``napari-atagan attention`` (``<stem>_cells.csv``)
and the ``features`` of the Labels layer in napari.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import write_text_atomically

__all__ = ["BASE_COLUMNS", "CellTable", "cell_table", "pattern_probabilities", "read_cells_csv"]

BASE_COLUMNS = ("label", "centroid_y", "centroid_x", "area", "mean_intensity",
                "mean_attention", "peak_attention")
"""The columns every table has (a stack adds ``plane`` after ``label``)."""
PROBABILITY_FLOOR = 1e-6
"""A cell's probability of a pattern counts as at least this in the slide's pattern (so
one cell's 0 cannot veto a pattern alone); 1e-9 to 1e-2 named the same slides."""
PATTERN_BATCH = 256
"""Cells classified per batch."""
_BAND_PIXELS = 1 << 24
"""Pixels measured at a time, so a memory-mapped whole slide is read band by band."""
_PROB_PREFIX = "p_"


@dataclass
class CellTable:
    """Columns of equal length, one row per cell, in label order.

    ``patterns``: the pattern names of the ``p_<name>`` columns (empty when the
    checkpoint knows none); ``pattern_source``: what named them (``"classifier
    teacher"``, ``"discriminator features, linear probe"``, ...), ``None`` without patterns.
    """

    columns: dict[str, np.ndarray]
    patterns: list[str] = field(default_factory=list)
    pattern_source: str | None = None

    def __len__(self) -> int:
        return len(self.columns["label"])

    @property
    def probabilities(self) -> np.ndarray:
        """``(n_cells, n_patterns)`` pattern probabilities (``(n, 0)`` without patterns)."""
        if not self.patterns:
            return np.zeros((len(self), 0), np.float32)
        return np.stack([self.columns[_PROB_PREFIX + p] for p in self.patterns], axis=1)

    def summary(self) -> dict[str, Any]:
        """One slide in a few numbers: cells, median area, its pattern and confidence
        (see the module notes: the highest mean log-probability over the cells)."""
        n = len(self)
        out: dict[str, Any] = {
            "cells": n,
            "median_area": float(np.median(self.columns["area"])) if n else 0.0,
            "pattern": "",
            "confidence": float("nan"),
            "pattern_source": self.pattern_source or "",
        }
        if n and self.patterns:
            p = self.probabilities.astype(np.float64)
            mean_log = np.log(np.clip(p, PROBABILITY_FLOOR, 1.0)).mean(axis=0)
            geometric = np.exp(mean_log - mean_log.max())
            best = int(np.argmax(mean_log))
            out["pattern"] = self.patterns[best]
            out["confidence"] = float(geometric[best] / geometric.sum())
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the table as CSV, atomically (a half-written table never exists).

        With patterns, a last column ``pattern_source`` says what named them.
        """
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        names = list(self.columns)
        source = [self.pattern_source] if self.pattern_source else []
        writer.writerow(names + (["pattern_source"] if source else []))
        formats = [_format_of(name) for name in names]
        for i in range(len(self)):
            writer.writerow([fmt(self.columns[name][i]) for name, fmt in zip(names, formats)]
                            + source)
        return write_text_atomically(path, buf.getvalue())

    def as_features(self) -> dict[str, np.ndarray]:
        """The columns as a plain dict, for a napari Labels layer's ``features``."""
        return {name: np.asarray(col) for name, col in self.columns.items()}


def read_cells_csv(path: str | os.PathLike) -> CellTable:
    """Read a table written by :meth:`CellTable.to_csv` (raises ValueError if it is not one)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:1] != ["label"]:
        raise ValueError(f"{path} is not a cell table (its first column is not 'label')")
    names = rows[0]
    body = rows[1:]
    if any(len(r) != len(names) for r in body):
        raise ValueError(f"{path} is not a complete cell table (rows of unequal length)")
    source = None
    if names[-1] == "pattern_source":
        source = body[0][-1] if body else None
        names, body = names[:-1], [r[:-1] for r in body]
    columns: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        values = [r[j] for r in body]
        if name == "pattern":
            columns[name] = np.array(values, dtype=object)
        elif name in ("label", "plane", "area"):
            columns[name] = np.array(values, dtype=np.int64)
        else:
            columns[name] = np.array(values, dtype=np.float64)
    patterns = [n[len(_PROB_PREFIX):] for n in names if n.startswith(_PROB_PREFIX)]
    return CellTable(columns, patterns, source)


def cell_table(labels: Any, image: Any, attention: Any, *, checkpoint: Any = None,
               cell_diameter: float | None = None, device: str = "cpu") -> CellTable:
    """Measure every cell of ``labels`` (2-D, or a ``(T, Y, X)`` stack with unique ids).

    ``image`` (the grey slide) and ``attention`` (its map) have the labels' shape.
    With a ``checkpoint`` that knows patterns (and the ``cell_diameter`` in
    pixels) each cell also gets its pattern probabilities; see the module notes.
    Arrays may be memory-mapped: they are read in bands.
    """
    labels_shape = tuple(np.shape(labels))
    for name, arr in (("image", image), ("attention map", attention)):
        if tuple(np.shape(arr)) != labels_shape:
            raise ValueError(f"the {name} has shape {tuple(np.shape(arr))} but the labels "
                             f"{labels_shape}: they must cover the same pixels")
    if len(labels_shape) not in (2, 3):
        raise ValueError(f"labels must be 2-D or a (T, Y, X) stack, got shape {labels_shape}")
    columns = _measure(labels, image, attention)
    table = CellTable(columns)
    if checkpoint is not None and len(table):
        found = checkpoint.pattern_model(device)
        if found is not None:
            if cell_diameter is None:
                raise ValueError("naming the cells' patterns needs the cell diameter")
            model, source = found
            probs = pattern_probabilities(model, image, labels, columns, cell_diameter,
                                          checkpoint, device=device)
            table.patterns = list(checkpoint.class_names)
            table.pattern_source = source
            for k, name in enumerate(table.patterns):
                table.columns[_PROB_PREFIX + name] = probs[:, k]
            table.columns["pattern"] = np.array(
                [table.patterns[i] for i in probs.argmax(axis=1)], dtype=object)
    return table


def pattern_probabilities(model: Any, image: Any, labels: Any, columns: dict[str, np.ndarray],
                          cell_diameter: float, checkpoint: Any, *,
                          device: str = "cpu", bfloat16: bool | None = None) -> np.ndarray:
    """``(n_cells, n_patterns)`` softmax probabilities of each measured cell.

    ``bfloat16``: classify in bfloat16 (``None``: where the chip computes in it,
    :func:`napari_atagan.device.fast_bfloat16`)."""
    import torch

    from ..data import prepare_crop
    from ..device import fast_bfloat16
    from .attention import model_cell_diameter

    size = int(checkpoint.config.image_size)
    side = max(16, int(round(float(cell_diameter) * size / model_cell_diameter(checkpoint))))
    stack = np.ndim(labels) == 3
    crops = np.empty((len(columns["label"]), 1, size, size), np.float32)
    for i, lab in enumerate(columns["label"]):
        t = int(columns["plane"][i]) if stack else None
        img_plane = image[t] if stack else image
        lab_plane = labels[t] if stack else labels
        window, mask = _window(img_plane, lab_plane, columns["centroid_y"][i],
                               columns["centroid_x"][i], side, int(lab))
        crops[i, 0] = prepare_crop(window, mask, size, name=f"cell {int(lab)}")[0]
    out = []
    dev = torch.device(device)
    # bfloat16 where the chip computes in it: on the 32 px I3A classifier teacher, 2176
    # held-out cells on one CPU core took 19 s instead of 38, 99.8 % of the cells were
    # named alike and accuracy moved from 0.782 to 0.781
    half = fast_bfloat16(dev) if bfloat16 is None else bool(bfloat16)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=half):
        for k in range(0, len(crops), PATTERN_BATCH):
            x = torch.from_numpy(crops[k:k + PATTERN_BATCH]).to(dev)
            out.append(model(x).float().softmax(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------


def _window(image: Any, labels: Any, cy: float, cx: float, side: int,
            label: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``side``-pixel window of the slide around a cell (cut at the slide's edge)
    and that cell's mask in it."""
    h, w = np.shape(labels)[-2:]
    half = side / 2.0
    y0, x0 = max(0, int(math.floor(cy - half))), max(0, int(math.floor(cx - half)))
    y1, x1 = min(h, y0 + side), min(w, x0 + side)
    y0, x0 = max(0, y1 - side), max(0, x1 - side)
    window = np.asarray(image[y0:y1, x0:x1], np.float32)
    mask = np.asarray(labels[y0:y1, x0:x1]) == label
    if min(window.shape) < 16:  # a slide thinner than a crop: pad it
        pad = [(0, max(0, 16 - n)) for n in window.shape]
        window, mask = np.pad(window, pad, mode="edge"), np.pad(mask, pad)
    if not mask.any():  # a sliver of a cell whose centroid lies outside it
        mask = None
    return window, mask


def _measure(labels: Any, image: Any, attention: Any) -> dict[str, np.ndarray]:
    """Area, centroid, mean intensity, mean and peak attention of every label > 0."""
    shape = np.shape(labels)
    stack = len(shape) == 3
    planes = range(shape[0]) if stack else [None]
    n = 0
    for t in planes:  # the largest id, band by band
        for band in _bands(shape[-2:], shape[-1]):
            part = np.asarray(labels[t][band] if stack else labels[band])
            n = max(n, int(part.max()) if part.size else 0)
    area = np.zeros(n + 1, np.int64)
    sums = {k: np.zeros(n + 1) for k in ("y", "x", "plane", "intensity", "attention")}
    peak = np.full(n + 1, -np.inf)
    for t in planes:
        lab_plane = labels[t] if stack else labels
        img_plane = image[t] if stack else image
        att_plane = attention[t] if stack else attention
        for band in _bands(shape[-2:], shape[-1]):
            lab = np.asarray(lab_plane[band]).ravel()
            cell = lab > 0
            if not cell.any():
                continue
            ids = lab[cell].astype(np.int64)
            rows = band[0]
            yy, xx = np.nonzero(cell.reshape(rows.stop - rows.start, shape[-1]))
            area += np.bincount(ids, minlength=n + 1)
            sums["y"] += np.bincount(ids, yy + rows.start, minlength=n + 1)
            sums["x"] += np.bincount(ids, xx, minlength=n + 1)
            if stack:
                sums["plane"] += np.bincount(ids, np.full(len(ids), float(t)), minlength=n + 1)
            img = np.asarray(img_plane[band], np.float64).ravel()[cell]
            att = np.asarray(att_plane[band], np.float64).ravel()[cell]
            sums["intensity"] += np.bincount(ids, img, minlength=n + 1)
            sums["attention"] += np.bincount(ids, att, minlength=n + 1)
            np.maximum.at(peak, ids, att)
    present = np.flatnonzero(area[1:] > 0) + 1
    a = area[present].astype(np.float64)
    columns: dict[str, np.ndarray] = {"label": present.astype(np.int64)}
    if stack:
        columns["plane"] = np.rint(sums["plane"][present] / a).astype(np.int64)
    columns.update({
        "centroid_y": sums["y"][present] / a,
        "centroid_x": sums["x"][present] / a,
        "area": area[present],
        "mean_intensity": sums["intensity"][present] / a,
        "mean_attention": sums["attention"][present] / a,
        "peak_attention": peak[present],
    })
    return columns


def _bands(plane_shape: tuple[int, int], width: int):
    rows = max(1, _BAND_PIXELS // max(1, width))
    for y in range(0, plane_shape[0], rows):
        yield (slice(y, min(y + rows, plane_shape[0])), slice(None))


def _format_of(name: str):
    if name in ("label", "plane", "area"):
        return lambda v: str(int(v))
    if name == "pattern":
        return str
    if name.startswith(_PROB_PREFIX):
        return lambda v: f"{float(v):.4f}"
    if name.startswith("centroid"):
        return lambda v: f"{float(v):.2f}"
    return lambda v: f"{float(v):.6g}"
