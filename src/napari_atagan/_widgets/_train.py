"""The *Train* dock widget: train an ATA-GAN on cells shown in napari or kept in a folder.

The widget gathers the training cells (a crop stack, a slide with a Labels layer
of its cells, or a folder), turns the form into a :class:`TrainConfig`, and runs
:func:`napari_atagan.gan.training.train` in a background thread. Its events drive a
progress bar, a loss plot and a live image layer of generated cells.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, SpinBox
from napari.layers import Image, Labels
from qtpy.QtWidgets import QWidget

from napari_atagan.gan.config import quick_model_changes
from napari_atagan.gan.config import TrainConfig, generator_channels
from napari_atagan.data import CellData
from napari_atagan.gan.training import (
    Event,
    Finished,
    Message,
    Progress,
    Samples,
    train,
)

from ._common import (
    Liveness,
    LossPlot,
    RunsTraining,
    TrainingRun,
    crops_from_labels,
    device_combo,
    device_description,
    dock_layout,
    duration_text,
    error_text,
    file_value,
    layer_choices,
    notify_error,
    notify_info,
    push_button,
    put_image,
    status_label,
    tile_grid,
)

SAMPLES_LAYER = "ATA-GAN samples"
"""Name of the live preview layer of generated cells."""
SOURCE_LAYERS = "layers"
SOURCE_FOLDER = "folder"


@dataclass
class TrainingSource:
    """Where the training cells come from, captured in the GUI thread.

    ``kind`` is ``"folder"`` (read with :func:`load_folder`), ``"stack"`` (an
    ``(N, H, W)`` crop stack with optional masks and patterns) or ``"slide"``
    (a 2-D image whose cells are cut out around each label of ``masks``).
    """

    kind: str
    folder: Path | None = None
    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    patterns: list[str] | None = None
    pattern_names: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.kind == "folder":
            return f"folder {self.folder}"
        return f"{self.kind} of shape {tuple(self.images.shape)}"

    def load(self, image_size: int) -> CellData:
        """The cells, prepared at ``image_size`` (runs in the worker thread)."""
        from napari_atagan.data import from_arrays, load_folder

        if self.kind == "folder":
            return load_folder(self.folder, image_size=image_size)
        if self.kind == "slide":
            crops, masks = crops_from_labels(self.images, self.masks)
            return from_arrays(crops, masks, image_size=image_size)
        labels = names = None
        if self.patterns is not None:
            present = set(self.patterns)
            names = [p for p in self.pattern_names if p in present] or sorted(present)
            labels = self.patterns
        return from_arrays(self.images, self.masks, labels, names, image_size=image_size)


def patterns_of(layer: Any, n: int) -> tuple[list[str] | None, list[str]]:
    """Per-crop pattern names from ``layer.metadata`` (``patterns``), if it has ``n`` of them.

    Integer entries index ``metadata["pattern_names"]``. Returns the per-crop
    names (or None) and the ordered list of all pattern names.
    """
    meta = dict(layer.metadata or {})
    patterns = meta.get("patterns")
    names = [str(p) for p in (meta.get("pattern_names") or meta.get("class_names") or [])]
    if patterns is None or len(patterns) != n:
        return None, names
    patterns = list(patterns)
    if all(isinstance(p, int | np.integer) for p in patterns) and names:
        patterns = [names[int(p)] for p in patterns]
    return [str(p) for p in patterns], names


def choose_teacher(choice: str, data: CellData) -> str:
    """The teacher for ``auto``: masks when there are masks, else the pattern
    classifier when there are at least 2 patterns, else none (a plain GAN)."""
    if choice != "auto":
        return choice
    if data.has_masks:
        return "mask"
    return "classifier" if len(data.class_names) >= 2 else "none"


def run_training(source: TrainingSource, settings: dict[str, Any], base: TrainConfig,
                 out_dir: Path, resume: Path | None, stop: threading.Event) -> Iterator[Event]:
    """Read the cells, build the config and train: the generator the worker thread runs.

    ``settings`` are the form's values (see :meth:`TrainWidget.settings`); they
    override ``base``. With ``small_model`` the networks are those of the
    command line's ``--quick`` preset (:func:`napari_atagan.gan.config.quick_model_changes`).
    """
    yield Message(f"reading cells from the {source.describe()} ...")
    settings = dict(settings)
    data = source.load(settings["image_size"])
    model = quick_model_changes()
    if not settings.pop("small_model"):
        model = {name: getattr(base, name) for name in model}
    model["g_channels"] = generator_channels(settings["image_size"], model["g_channels"])
    lr = settings.pop("lr")
    teacher = choose_teacher(settings.pop("teacher"), data)
    steps = settings["steps"]
    config = base.replace(
        **settings,
        **model,
        teacher=teacher,
        lr_g=lr,
        lr_d=lr,
        sample_every=max(1, min(base.sample_every, steps // 20)),
        extra={**base.extra, "source": f"napari: {source.describe()}"},
    )
    yield from train(config, data, out_dir, resume=resume, stop=stop)


def default_run_folder() -> Path:
    """A fresh, time-stamped folder under ``~/napari-atagan/runs``."""
    return Path.home() / "napari-atagan" / "runs" / time.strftime("run-%Y%m%d-%H%M%S")


class TrainWidget(RunsTraining, QWidget):
    """Train an ATA-GAN from the viewer: data, options, Start/Stop, live samples and losses.

    ``base_config`` holds the settings that the form does not show (network
    widths, augmentation, checkpoint interval ...); the form's values override it.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.base_config = TrainConfig()
        self.out_dir: Path | None = None
        self._live = Liveness()
        self.destroyed.connect(self._live.dead)

        self._build_form()
        self.loss_plot = LossPlot()
        self.start_button = push_button(
            "Start training", self.start, "Train in the background; the viewer stays usable.")
        self.stop_button = push_button(
            "Stop", self.stop, "Stop after the current step; a checkpoint is always saved.",
            enabled=False)
        self.status = status_label("Idle.")
        self.run = TrainingRun(self._live, self.status, self.stop_button, "ATA-GAN training",
                               self._live.stop, on_progress=self._on_progress,
                               on_samples=self._show_samples, on_done=self._on_done,
                               set_running=self._set_running)
        dock_layout(self, self.form.native, [self.start_button, self.stop_button],
                    self.loss_plot, self.status)
        self._update_source()

    # ------------------------------------------------------------------ form
    def _build_form(self) -> None:
        self.source = ComboBox(
            label="data from", choices=[SOURCE_LAYERS, SOURCE_FOLDER], value=SOURCE_LAYERS,
            tooltip="layers: an image layer of crops (N, H, W) with optional masks, or a slide "
                    "with a Labels layer of its cells.\nfolder: one sub-folder per staining "
                    "pattern with NNNNN.png (+ NNNNN_Mask.png).")
        self.image_layer = ComboBox(
            label="image", choices=layer_choices(self.viewer, Image), nullable=True,
            tooltip="A stack of single-cell crops (N, H, W), or a 2-D slide.")
        self.mask_layer = ComboBox(
            label="masks / cells", choices=layer_choices(self.viewer, Labels, optional=True),
            nullable=True,
            tooltip="For a crop stack: its cell masks (same shape), optional.\nFor a slide: "
                    "the Labels layer of its cells (needed: a crop is cut around each cell).")
        self.folder = FileEdit(
            label="folder", mode="d", nullable=True,
            tooltip="Folder of crops: class sub-folders become staining patterns.")
        self.teacher = ComboBox(
            label="teacher", choices=["auto", "mask", "classifier", "none"], value="auto",
            tooltip="Where the discriminator should look:\nmask: the smoothed cell masks\n"
                    "classifier: a pattern classifier trained on the crops (needs >= 2 "
                    "patterns)\nnone: a plain GAN (no attention transfer)\nauto: mask if "
                    "there are masks, else classifier, else none.")
        self.beta = FloatSpinBox(
            label="beta", value=self.base_config.beta, min=0.0, max=100.0, step=0.1,
            tooltip="Weight of the attention-transfer loss (0 = plain GAN).")
        self.image_size = ComboBox(
            label="image size", choices=[16, 32, 64, 128], value=self.base_config.image_size,
            tooltip="Side in pixels of the square crops the networks see.")
        on_cpu = device_description("auto") == "cpu"
        self.small_model = CheckBox(
            label="small model", value=on_cpu,
            tooltip="Narrower networks that train in minutes on a CPU (default without a GPU).")
        self.steps = SpinBox(
            label="steps", value=self.base_config.steps, min=1, max=10_000_000, step=100,
            tooltip="Training steps (one discriminator and one generator update each).")
        self.batch_size = SpinBox(
            label="batch size", value=self.base_config.batch_size, min=1, max=65_536,
            tooltip="Cells per step; halved automatically if the GPU runs out of memory.")
        self.lr = FloatSpinBox(
            label="learning rate", value=self.base_config.lr_g, min=1e-6, max=0.1, step=1e-5,
            tooltip="Adam learning rate of both networks.")
        self.lr.native.setDecimals(6)
        self.seed = SpinBox(label="seed", value=self.base_config.seed, min=0, max=2**31 - 1,
                            tooltip="Random seed: the same seed and data give the same run.")
        self.device = device_combo()
        self.out_folder = FileEdit(
            label="output folder", mode="d", nullable=True,
            tooltip="Where checkpoint.safetensors and summary.json are written.\nEmpty: a new "
                    "time-stamped folder under ~/napari-atagan/runs.")
        self.resume = FileEdit(
            label="resume from", mode="r", filter="*.safetensors", nullable=True,
            tooltip="Continue an earlier run (same data) from its checkpoint; 'steps' is the "
                    "new total.")
        self.form = Container(widgets=[
            self.source, self.image_layer, self.mask_layer, self.folder, self.teacher,
            self.beta, self.image_size, self.small_model, self.steps, self.batch_size, self.lr,
            self.seed, self.device, self.out_folder, self.resume,
        ])
        self.source.changed.connect(self._update_source)

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer drop-downs (napari calls this when layers change)."""
        self.form.reset_choices()

    def _update_source(self, *_: Any) -> None:
        from_layers = self.source.value == SOURCE_LAYERS
        self.image_layer.visible = from_layers
        self.mask_layer.visible = from_layers
        self.folder.visible = not from_layers

    # ------------------------------------------------------------------ data
    def training_source(self) -> TrainingSource:
        """The cells chosen in the form; ``ValueError`` says what is missing or wrong."""
        if self.source.value == SOURCE_FOLDER:
            folder = file_value(self.folder.value)
            if folder is None:
                raise ValueError("choose the folder of training crops")
            return TrainingSource("folder", folder=folder)
        layer = self.image_layer.value
        if layer is None:
            raise ValueError("choose an image layer with the training cells (or a folder)")
        if layer.rgb:
            raise ValueError(f"layer '{layer.name}' is RGB: training needs grey images "
                             "(split the channels first)")
        images = np.asarray(layer.data)
        labels = self.mask_layer.value
        masks = None if labels is None else np.asarray(labels.data)
        if masks is not None and masks.shape != images.shape:
            raise ValueError(f"the masks '{labels.name}' {masks.shape} do not match the image "
                             f"'{layer.name}' {images.shape}: pick matching layers")
        if images.ndim == 2:
            if masks is None:
                raise ValueError(f"'{layer.name}' is a single 2-D image: pick the Labels layer "
                                 "of its cells so that a crop can be cut around each cell")
            return TrainingSource("slide", images=images, masks=masks)
        if images.ndim != 3:
            raise ValueError(f"'{layer.name}' has shape {images.shape}: use a crop stack "
                             "(N, H, W) or a 2-D slide")
        patterns, names = patterns_of(layer, images.shape[0])
        return TrainingSource("stack", images=images, masks=masks, patterns=patterns,
                              pattern_names=names)

    def settings(self) -> dict[str, Any]:
        """The form's training options (keys of :class:`TrainConfig` plus a few)."""
        return {
            "teacher": self.teacher.value,
            "beta": float(self.beta.value),
            "image_size": int(self.image_size.value),
            "small_model": bool(self.small_model.value),
            "steps": int(self.steps.value),
            "batch_size": int(self.batch_size.value),
            "lr": float(self.lr.value),
            "seed": int(self.seed.value),
            "device": self.device.value,
        }

    # ------------------------------------------------------------------ run
    @property
    def worker(self) -> Any:
        """The background worker of the run in progress (``None`` when idle)."""
        return self.run.worker

    def start(self) -> None:
        """Start training in a background thread (errors become notifications)."""
        if self.is_running:
            return
        try:
            source = self.training_source()
            settings = self.settings()
        except ValueError as exc:
            notify_error(error_text(exc))
            return
        self.out_dir = file_value(self.out_folder.value) or default_run_folder()
        resume = file_value(self.resume.value)
        self.loss_plot.clear()
        self.run.start(run_training, source, settings, self.base_config, self.out_dir, resume,
                       total=settings["steps"], out_dir=self.out_dir)

    def _set_running(self, running: bool) -> None:
        self.form.enabled = not running
        self.start_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    # ------------------------------------------------------------------ events
    def _on_done(self, event: Finished) -> None:
        what = "stopped" if event.stopped else "finished"
        steps = event.summary.get("steps")
        self.status.setText(f"Training {what} at step {steps}.\nCheckpoint: {event.checkpoint}")
        notify_info(f"ATA-GAN training {what} at step {steps}; checkpoint: {event.checkpoint}")

    def _on_progress(self, ev: Progress) -> None:
        shown = {k: v for k, v in ev.losses.items() if k in ("d", "g", "at")}
        self.loss_plot.add(ev.step, shown)
        losses = ", ".join(f"{LossPlot.LABELS.get(k, k)} {v:.3f}" for k, v in shown.items())
        self.status.setText(f"step {ev.step}/{ev.total_steps}: {losses}\n"
                            f"{ev.images_per_s:.0f} cells/s, about {duration_text(ev.eta_s)} left")
        self.run.set_step(ev.step)  # last: it may handle further events while it redraws

    def _show_samples(self, ev: Samples) -> None:
        columns = 6 if ev.labels is not None and len(ev.images) % 6 == 0 else None
        grid = tile_grid(ev.images, columns)
        put_image(self.viewer, SAMPLES_LAYER, grid, colormap="gray",
                  contrast_limits=(-1.0, 1.0),
                  metadata={"step": int(ev.step), "n_cells": int(len(ev.images))})
