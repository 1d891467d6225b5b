"""The main job on the shipped sample data and default model.

1. attention of the default model's discriminator over the simulated slide,
   turned into instance labels and scored against the slide's ground truth
   (beside the Otsu baseline, which needs no model);
2. synthetic cells of every pattern with their attention maps and masks.

With a display the results open in napari with the three dock widgets;
headless (``napari-atagan demo --out DIR``) they are written as TIFF/PNG files
with a ``summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class DemoResult:
    slide: np.ndarray
    truth: np.ndarray
    attention: np.ndarray
    labels: np.ndarray
    cells: Any  # synthesis.Synthesis
    summary: dict[str, Any] = field(default_factory=dict)


def run_pipeline(model: Path | None = None, *, n_per_pattern: int = 12, device: str = "auto"
                 ) -> DemoResult:
    """Slide attention, labels, scores and synthetic cells with the default model."""
    from . import default_model_path
    from ._sample_data import load_slide
    from .slides.labels import min_cell_size
    from .metrics import match_objects, otsu_baseline, pixel_iou
    from .slides.background import flatten_background
    from .slides.segment import classic_labels, label_cells
    from .slides.attention import estimate_cell_diameter, slide_attention
    from .gan.synthesis import as_checkpoint

    model = model or default_model_path()
    if model is None:
        raise FileNotFoundError(
            "the default model (sample_data/default_model.safetensors) is missing: train one "
            "with `napari-atagan train` and pass it with --model"
        )
    ckpt = as_checkpoint(model)
    slide, truth = load_slide()
    diameter = estimate_cell_diameter(slide)
    t0 = time.perf_counter()
    flat = np.asarray(flatten_background(slide, diameter))
    attention = slide_attention(ckpt, flat, cell_diameter=diameter, device=device)
    t_map = time.perf_counter() - t0
    labels = label_cells(attention, flat, outline="image", threshold="local",
                         min_size=min_cell_size(diameter), cell_diameter=diameter)
    otsu = otsu_baseline(slide)
    classic = classic_labels(slide, diameter)

    def scores(pred):
        m = match_objects(pred, truth)
        return {"object_f1": round(m["f1"], 3), "precision": round(m["precision"], 3),
                "recall": round(m["recall"], 3),
                "pixel_iou": round(pixel_iou(pred > 0, truth > 0), 3), "cells": int(pred.max())}

    cells = _cells_per_pattern(ckpt, n_per_pattern, device)
    summary = {
        "model": str(Path(ckpt.path).name),
        "slide": {"shape": list(slide.shape), "true_cells": int(truth.max()),
                  "estimated_cell_diameter_px": round(float(diameter), 1),
                  "attention_seconds": round(t_map, 2),
                  "megapixels_per_s": round(slide.size / 1e6 / max(t_map, 1e-9), 2)},
        "attention_labels": scores(labels),
        "classic_baseline": scores(classic),
        "otsu_baseline": scores(otsu),
        "note": ("object F1 at IoU 0.5 and pixel IoU against the simulated ground truth; "
                 "the classic baseline is smoothed Otsu with touching cells split by a "
                 "distance watershed at the cell diameter; a centred-ellipse baseline does "
                 "not apply to cells at unknown positions"),
        "synthetic_cells": {"n": int(len(cells.images)), "patterns": sorted(set(cells.patterns))},
    }
    return DemoResult(slide, truth, attention, labels, cells, summary)


def _cells_per_pattern(ckpt, n: int, device: str):
    """``n`` synthetic cells of every pattern the model knows, one pattern after another."""
    from .gan.synthesis import Synthesis, generate

    names = ckpt.class_names or [None]
    parts = [generate(ckpt, n, pattern=name, seed=i, device=device)
             for i, name in enumerate(names)]
    if len(parts) == 1:
        return parts[0]
    join = {f: np.concatenate([getattr(p, f) for p in parts])
            for f in ("images", "rendered", "attention", "masks", "labels")}
    return Synthesis(**join, class_names=parts[0].class_names, seed=0)


def run_demo(out: Path, *, headless: bool, model: Path | None = None) -> int:
    result = run_pipeline(model)
    if headless:
        write_results(result, out)
        print(f"No display: wrote the results to {out.resolve()}", file=sys.stderr)
        print(json.dumps(result.summary, indent=2))
        return 0
    show_in_napari(result)
    return 0


def write_results(result: DemoResult, out: Path) -> None:
    """TIFFs of every layer, an overview PNG and summary.json in ``out``."""
    import tifffile
    from skimage.io import imsave

    from .export import save_attention_tiff, save_labels_tiff

    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": result.summary["model"], "source": "simulated sample slide"}
    tifffile.imwrite(out / "slide.tif", result.slide, compression="zlib")
    save_attention_tiff(out / "slide_attention.tif", result.attention, metadata=meta)
    save_labels_tiff(out / "slide_labels.tif", result.labels, metadata=meta)
    cells = result.cells
    tifffile.imwrite(out / "synthetic_cells.tif", cells.rendered)
    tifffile.imwrite(out / "synthetic_attention.tif", cells.attention.astype(np.float32))
    save_labels_tiff(out / "synthetic_masks.tif",
                     (cells.masks * np.arange(1, len(cells.masks) + 1)[:, None, None])
                     .astype(np.uint16), metadata=meta)
    imsave(out / "overview.png", overview(result), check_contrast=False)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2))


def overview(result: DemoResult) -> np.ndarray:
    """RGB picture: slide | attention overlay | labels | ground truth, and the cells."""
    from skimage.color import label2rgb
    from skimage.transform import resize

    def grey(a):
        lo, hi = np.percentile(a, (0.5, 99.8))
        return np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)

    side = 512
    g = resize(grey(result.slide.astype(np.float32)), (side, side), anti_aliasing=True)
    att = resize(result.attention / max(float(result.attention.max()), 1e-9), (side, side))
    heat = np.stack([att, att ** 2, np.zeros_like(att)], -1)
    panels = [
        np.stack([g] * 3, -1),
        np.clip(0.7 * np.stack([g] * 3, -1) + heat, 0, 1),
        label2rgb(resize(result.labels, (side, side), order=0, preserve_range=True,
                         anti_aliasing=False).astype(int), image=g, bg_label=0, alpha=0.35),
        label2rgb(resize(result.truth, (side, side), order=0, preserve_range=True,
                         anti_aliasing=False).astype(int), image=g, bg_label=0, alpha=0.35),
    ]
    gap = np.ones((side, 6, 3))
    top = np.concatenate(sum(([p, gap] for p in panels), [])[:-1], 1)
    cells = result.cells
    n = len(cells.images)
    cols = n // max(len(set(cells.patterns)), 1) or n
    shown = (cells.images + 1) / 2  # the generator's own range, shared by all cells
    tiles = [np.concatenate(list(shown[r * cols:(r + 1) * cols]), 1) for r in range(n // cols)]
    strip = np.concatenate(tiles, 0) if tiles else np.zeros((8, 8))
    strip = np.stack([strip] * 3, -1)
    scale = top.shape[1] / strip.shape[1]
    strip = resize(strip, (int(strip.shape[0] * scale), top.shape[1]), order=0)
    img = np.concatenate([top, np.ones((6, top.shape[1], 3)), strip], 0)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def show_in_napari(result: DemoResult) -> None:
    """Open napari with the results and the three widgets docked, until it is closed."""
    import napari

    populate_viewer(napari.Viewer(title="napari-atagan"), result)
    napari.run()


def populate_viewer(viewer, result: DemoResult) -> None:
    """The results as layers, with the Train, Synthesize and Attention widgets docked."""
    lo, hi = np.percentile(result.slide, (0.5, 99.8))
    viewer.add_image(result.slide, name="HEp-2 slide (simulated)", contrast_limits=(lo, hi))
    viewer.add_image(result.attention, name="HEp-2 slide (simulated) attention",
                     colormap="inferno", blending="additive", opacity=0.6)
    viewer.add_labels(result.labels, name="HEp-2 slide (simulated) cells", opacity=0.4)
    viewer.add_labels(result.truth, name="ground truth", opacity=0.4, visible=False)
    # the synthetic cells sit to the right of the slide, enlarged, one cell per slider step
    c = result.cells
    place = {"scale": (1, 6, 6), "translate": (0, 0, result.slide.shape[1] + 64)}
    viewer.add_image(c.rendered, name="synthetic cells", **place)
    viewer.add_image(c.attention, name="synthetic attention", colormap="inferno",
                     blending="additive", opacity=0.5, **place)
    viewer.add_labels((c.masks * np.arange(1, len(c.masks) + 1)[:, None, None]).astype(np.uint16),
                      name="synthetic masks", opacity=0.3, **place)
    for name in ("Attention", "Synthesize", "Train"):
        viewer.window.add_plugin_dock_widget("napari-atagan", name)
    viewer.reset_view()
