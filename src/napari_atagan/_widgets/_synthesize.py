"""The *Synthesize* dock widget: new annotated cells from a trained checkpoint.

It calls :func:`napari_atagan.gan.synthesis.generate` in a background thread and
shows three aligned layers: the cells (with the training data's intensities),
the discriminator's attention on each cell (an additive heat-map overlay) and
the cell masks (a Labels layer, one id per cell, with the pattern of each cell
as a feature). *Export dataset...* writes them as a training folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, SpinBox
from qtpy.QtWidgets import QWidget

from ._common import (
    Liveness,
    ProgressBar,
    Relay,
    ask_folder,
    checkpoint_edit,
    device_combo,
    display_range,
    dock_layout,
    error_text,
    file_value,
    notify_error,
    notify_info,
    push_button,
    put_image,
    put_labels,
    read_checkpoint,
    run_function,
    status_label,
)

ANY_PATTERN = "any"
CELLS_LAYER = "synthetic cells"
ATTENTION_LAYER = "synthetic attention"
MASKS_LAYER = "synthetic masks"


class SynthesizeWidget(QWidget):
    """Generate cells, their attention maps and masks; export them as a training folder."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.result: Any = None
        """The last :class:`~napari_atagan.gan.synthesis.Synthesis` (None before the first run)."""
        self.worker: Any = None
        self._pbar: Any = None
        self._live = Liveness()
        self.destroyed.connect(self._live.dead)
        self._relay = Relay()
        self._relay.progressed.connect(self._on_progress)

        self.checkpoint = checkpoint_edit()
        self.n_cells = SpinBox(label="cells", value=64, min=1, max=1_000_000,
                               tooltip="How many cells to generate.")
        self.pattern = ComboBox(label="pattern", choices=[ANY_PATTERN], value=ANY_PATTERN,
                                tooltip="Staining pattern of all cells; 'any' draws patterns "
                                        "at random.")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1,
                            tooltip="The same seed gives the same cells.")
        self.device = device_combo()
        self.form = Container(widgets=[self.checkpoint, self.n_cells, self.pattern, self.seed,
                                       self.device])
        self.checkpoint.changed.connect(self._load_patterns)

        self.generate_button = push_button(
            "Generate", self.generate, "Draw new cells with their attention maps and masks.")
        self.export_button = push_button(
            "Export dataset...", self._export_clicked,
            "Write the cells and masks as a training folder "
            "(<pattern>/NNNNN.png + NNNNN_Mask.png).", enabled=False)
        self.status = status_label()
        dock_layout(self, self.form.native, [self.generate_button, self.export_button],
                    self.status)
        self._load_patterns()

    # ------------------------------------------------------------------ form
    def _load_patterns(self, *_: Any) -> None:
        """Fill the pattern drop-down from the chosen checkpoint."""
        names: list[str] = []
        loaded = read_checkpoint(self.checkpoint.value, self.status)
        if loaded is not None:
            path, ckpt = loaded
            names = ckpt.class_names
            self.status.setText(f"model: {path.name}, {ckpt.config.image_size} px, "
                                f"step {ckpt.step}, patterns: {', '.join(names) or 'none'}")
        self.pattern.choices = [ANY_PATTERN, *names]
        self.pattern.value = ANY_PATTERN

    # ------------------------------------------------------------------ run
    def generate(self) -> None:
        """Generate cells in a background thread; the layers appear when done."""
        from napari_atagan.gan.synthesis import generate

        if self.worker is not None:
            return
        path = file_value(self.checkpoint.value)
        if path is None:
            notify_error("choose a checkpoint (.safetensors) to generate cells from")
            return
        pattern = None if self.pattern.value == ANY_PATTERN else self.pattern.value
        n = int(self.n_cells.value)
        self._pbar = ProgressBar(n, "ATA-GAN synthesis")
        worker = run_function(generate, path, n, pattern=pattern, seed=int(self.seed.value),
                              device=self.device.value, progress=self._relay.callback)
        worker.returned.connect(self._on_result)
        worker.errored.connect(lambda exc: notify_error(f"Synthesis failed: {error_text(exc)}"))
        worker.finished.connect(self._pbar.close)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.generate_button.setEnabled(False)
        self.status.setText(f"generating {n} cells ...")
        worker.start()

    def _on_progress(self, done: int, total: int) -> None:
        if self._pbar is not None:
            self._pbar.set(done, total)

    def _on_finished(self) -> None:
        self.worker = None
        self._pbar = None
        if self._live.alive:
            self.generate_button.setEnabled(True)

    def _on_result(self, syn: Any) -> None:
        if not self._live.alive:
            return
        self.result = syn
        self.show_result(syn)
        self.export_button.setEnabled(True)
        counts: dict[str, int] = {}
        for p in syn.patterns:
            counts[p or "cells"] = counts.get(p or "cells", 0) + 1
        self.status.setText(f"{len(syn.images)} cells: "
                            + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))

    def show_result(self, syn: Any) -> None:
        """Show cells, attention and masks as three aligned layers."""
        n = len(syn.images)
        dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
        masks = syn.masks.astype(dtype) * np.arange(1, n + 1, dtype=dtype)[:, None, None]
        patterns = syn.patterns
        meta = {"seed": int(syn.seed), "patterns": patterns,
                "checkpoint": str(file_value(self.checkpoint.value))}
        put_image(self.viewer, CELLS_LAYER, syn.rendered, colormap="gray",
                  contrast_limits=display_range(syn.rendered), metadata=meta)
        top = float(syn.attention.max()) if syn.attention.size else 1.0
        put_image(self.viewer, ATTENTION_LAYER, syn.attention, colormap="inferno",
                  blending="additive", opacity=0.5, contrast_limits=(0.0, max(top, 1e-6)),
                  metadata=meta)
        features = {"index": np.arange(0, n + 1),
                    "pattern": ["background", *[p or "cell" for p in patterns]]}
        layer = put_labels(self.viewer, MASKS_LAYER, masks, metadata=meta, features=features)
        layer.contour = 1
        self.viewer.dims.set_current_step(0, 0)

    # ------------------------------------------------------------------ export
    def _export_clicked(self) -> None:
        folder = ask_folder(self, "Export synthetic dataset to an empty folder")
        if folder:
            self.export_dataset(folder)

    def export_dataset(self, folder: str | Path) -> Path | None:
        """Write the last result in the training layout; refuses a non-empty folder."""
        from napari_atagan.gan.synthesis import write_dataset

        if self.result is None:
            notify_error("generate cells first, then export them")
            return None
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            notify_error(f"{folder} is not empty: choose an empty or new folder so the "
                         "dataset holds only these cells")
            return None
        try:
            out = write_dataset(self.result, folder)
        except (OSError, ValueError) as exc:
            notify_error(f"Export failed: {error_text(exc)}")
            return None
        notify_info(f"{len(self.result.images)} cells written to {out}")
        self.status.setText(f"exported to {out}")
        return out
