"""Pieces shared by the dock widgets: notifications, layer look-ups, threads, a loss plot.

Nothing here is an algorithm: these helpers move arrays between napari layers
and the engine, and run engine calls in a background thread so the viewer
stays responsive.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, FileEdit
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import notifications
from qtpy.QtCore import QObject, QPointF, Qt, Signal
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .._config import DEVICES as DEVICE_CHOICES

NO_LAYER = "(none)"


# --------------------------------------------------------------------------- messages
def notify_error(message: str) -> None:
    """Show an error as a napari notification (bottom-right pop-up and log)."""
    notifications.show_error(message)


def notify_info(message: str) -> None:
    """Show an information notification."""
    notifications.show_info(message)


def error_text(exc: BaseException) -> str:
    """A one-line message for the user: the exception text, or its type if empty."""
    text = str(exc).strip()
    return text or type(exc).__name__


# --------------------------------------------------------------------------- files
def default_checkpoint() -> Path | None:
    """The model shipped with the plugin, or None when it is not installed."""
    import napari_atagan

    finder = getattr(napari_atagan, "default_model_path", None)
    if finder is None:
        return None
    try:
        path = finder()
    except Exception:  # a broken installation must not break the widget
        return None
    return Path(path) if path else None


def ask_folder(parent: QWidget | None, title: str) -> str:
    """Ask the user for a folder with a file dialog; ``""`` when cancelled."""
    return QFileDialog.getExistingDirectory(parent, title)


def file_value(value: Any) -> Path | None:
    """The path held by a magicgui ``FileEdit`` (None when empty)."""
    if value is None:
        return None
    text = str(value).strip()
    if text in ("", "."):
        return None
    return Path(text).expanduser()


def device_description(name: str) -> str:
    """What ``auto``/``cuda``/``mps``/``cpu`` resolves to here, or ``"not available"``."""
    from napari_atagan.device import describe, resolve_device

    try:
        return describe(resolve_device(name))
    except (RuntimeError, ValueError):
        return "not available"


def device_choices() -> list[tuple[str, str]]:
    """Drop-down items that show where each choice runs, e.g. ``("auto: cpu", "auto")``."""
    items = []
    for name in DEVICE_CHOICES:
        where = device_description(name)
        items.append((name if where == name else f"{name}: {where}", name))
    return items


DEVICE_TOOLTIP = ("Where to compute. auto: a CUDA GPU, else Apple MPS, else the CPU "
                  "(the drop-down shows what each choice uses on this computer).")


# --------------------------------------------------------------------------- form parts
def device_combo() -> ComboBox:
    """The ``device`` drop-down (auto, cuda, mps, cpu), showing what each choice uses here."""
    return ComboBox(label="device", choices=device_choices(), value="auto",
                    tooltip=DEVICE_TOOLTIP)


def checkpoint_edit() -> FileEdit:
    """The ``checkpoint`` file field, preset to the model shipped with the plugin."""
    return FileEdit(
        label="checkpoint", mode="r", filter="*.safetensors", nullable=True,
        value=default_checkpoint(),
        tooltip="A trained model (.safetensors). Default: the model shipped with the plugin.")


def read_checkpoint(value: Any, status: QLabel) -> tuple[Path, Any] | None:
    """Load the checkpoint chosen in a ``FileEdit``; None when there is none to load.

    A path that is not (yet) a file is reported on the ``status`` line, an
    unreadable checkpoint as an error notification.
    """
    from napari_atagan.checkpoint import load_checkpoint

    path = file_value(value)
    if path is None:
        return None
    if not path.is_file():  # perhaps still being typed
        status.setText(f"checkpoint: no such file {path}")
        return None
    try:
        return path, load_checkpoint(path)
    except ValueError as exc:
        notify_error(error_text(exc))
        return None


def push_button(text: str, on_click: Callable[..., Any], tooltip: str = "", *,
                enabled: bool = True) -> QPushButton:
    """A Qt push button that calls ``on_click`` when pressed."""
    button = QPushButton(text)
    if tooltip:
        button.setToolTip(tooltip)
    button.setEnabled(enabled)
    button.clicked.connect(on_click)
    return button


def status_label(text: str = "") -> QLabel:
    """A word-wrapped line of text that tells the user what the widget is doing."""
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def dock_layout(widget: QWidget, form: QWidget, buttons: Sequence[QWidget],
                *below: QWidget) -> None:
    """Stack a dock widget: the form, a row of ``buttons``, then ``below`` top to bottom."""
    row = QHBoxLayout()
    for button in buttons:
        row.addWidget(button)
    layout = QVBoxLayout(widget)
    layout.addWidget(form)
    layout.addLayout(row)
    for part in below:
        layout.addWidget(part)


# --------------------------------------------------------------------------- layers
def layers_of(viewer: Any, kind: type) -> list[Any]:
    """The viewer's layers of one type (e.g. ``napari.layers.Image``), top first."""
    return [layer for layer in reversed(list(viewer.layers)) if isinstance(layer, kind)]


def layer_named(viewer: Any, name: str) -> Any | None:
    """The layer called ``name``, or None."""
    return viewer.layers[name] if name in viewer.layers else None


def put_image(viewer: Any, name: str, data: np.ndarray, **kwargs: Any) -> Any:
    """Replace the data of the image layer ``name`` or add it as a new layer."""
    from napari.layers import Image

    layer = layer_named(viewer, name)
    if isinstance(layer, Image) and layer.ndim == data.ndim and not layer.rgb:
        layer.data = data
        for key in ("contrast_limits", "scale", "translate", "metadata"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_image(data, name=name, **kwargs)


def put_labels(viewer: Any, name: str, data: np.ndarray, **kwargs: Any) -> Any:
    """Replace the data of the Labels layer ``name`` or add it as a new layer."""
    from napari.layers import Labels

    layer = layer_named(viewer, name)
    if isinstance(layer, Labels) and layer.ndim == data.ndim:
        layer.data = data
        for key in ("scale", "translate", "metadata", "features"):
            if key in kwargs:
                setattr(layer, key, kwargs[key])
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    return viewer.add_labels(data, name=name, **kwargs)


def display_range(image: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5th to the 99.9th percentile (IIF images are dim)."""
    sample = np.asarray(image).ravel()
    if sample.size > 2_000_000:
        sample = sample[:: sample.size // 1_000_000]
    lo, hi = np.percentile(sample, [0.5, 99.9])
    return float(lo), float(max(hi, lo + 1e-6))


def tile_grid(images: np.ndarray, columns: int | None = None, gap: int = 2,
              fill: float = -1.0) -> np.ndarray:
    """Lay out ``(n, S, S)`` images as one picture, ``columns`` per row, ``gap`` px apart."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    cols = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), fill, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img
    return out


def crops_from_labels(image: np.ndarray, labels: np.ndarray, margin: float = 0.25
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut one crop (and its mask) around every labelled cell of a slide.

    Each crop is the cell's bounding box grown by ``margin`` times its larger
    side on every edge (clipped at the slide border); the mask is 1 where the
    label is that cell's id.
    """
    from scipy import ndimage as ndi

    if image.shape != labels.shape:
        raise ValueError(
            f"the image {image.shape} and the cell labels {labels.shape} must have the same shape"
        )
    crops, masks = [], []
    for i, box in enumerate(ndi.find_objects(np.asarray(labels)), start=1):
        if box is None:
            continue
        ys, xs = box
        pad = int(round(margin * max(ys.stop - ys.start, xs.stop - xs.start)))
        y0, y1 = max(ys.start - pad, 0), min(ys.stop + pad, image.shape[0])
        x0, x1 = max(xs.start - pad, 0), min(xs.stop + pad, image.shape[1])
        crops.append(np.asarray(image[y0:y1, x0:x1]))
        masks.append((labels[y0:y1, x0:x1] == i).astype(np.uint8))
    if not crops:
        raise ValueError("the Labels layer has no cells (all zero): label some cells first")
    return crops, masks


def layer_slide(layer: Any) -> tuple[Any, dict[str, Any]]:
    """The grey data of an image layer and, for an RGB layer, which channel it is.

    An RGB(A) layer is read through its stained channel, chosen on a sub-sample
    (:func:`napari_atagan.channels.grey_view`); a grey layer is returned as it is.
    """
    if not layer.rgb:
        return layer.data, {}
    from napari_atagan.channels import grey_view

    axes = "YXS" if len(layer.data.shape) == 3 else "TYXS"
    return grey_view(layer.data, axes=axes)


def channel_text(info: dict[str, Any]) -> str:
    """``" (green channel)"`` for an RGB source, ``""`` for a grey one."""
    if not info:
        return ""
    name = info.get("channel_name", "")
    return f" ({name})" if name == "luminance" else f" ({name} channel)"


def duration_text(seconds: float) -> str:
    """A time left for a status line: ``"40 s"``, ``"12 min"``, ``"1.5 h"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------- threads
class Relay(QObject):
    """Carries ``progress(done, total)`` calls from a worker thread to the GUI thread."""

    progressed = Signal(int, int)

    def callback(self, done: int, total: int) -> None:
        """Safe to call from any thread."""
        self.progressed.emit(int(done), int(total))


class ClosingGeneratorWorker(GeneratorWorker):
    """A generator worker that closes its generator when it stops early.

    napari aborts running workers when the viewer closes; closing the generator
    lets the engine finish cleanly (training writes a last checkpoint).
    """

    def work(self):  # noqa: D102 - see GeneratorWorker.work
        try:
            return super().work()
        finally:
            self._gen.close()


def run_generator(func: Callable[..., Any], *args: Any, **kwargs: Any) -> ClosingGeneratorWorker:
    """A (not yet started) napari worker for a generator function.

    Errors are not re-raised: connect ``worker.errored`` to show them.
    """
    return create_worker(func, *args, _worker_class=ClosingGeneratorWorker, _ignore_errors=True,
                         **kwargs)


def run_function(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A (not yet started) napari worker for a plain function (connect ``errored``)."""
    return create_worker(func, *args, _ignore_errors=True, **kwargs)


class Liveness:
    """Remembers whether a widget still exists (its C++ side may be deleted first).

    ``stop`` is set when the widget goes away, so background work ends too.
    """

    def __init__(self) -> None:
        self.alive = True
        self.stop = threading.Event()

    def dead(self, *_: Any) -> None:
        self.alive = False
        self.stop.set()


class TrainingRun:
    """A dock widget's background training run: the worker, Stop, the napari
    progress bar, and the events every training widget shows the same way
    (messages and checkpoints on the status line, errors as notifications).

    What differs between widgets comes as callbacks: ``on_progress(Progress)``
    (which should call :meth:`set_step` last), ``on_samples(Samples)``,
    ``on_done(Finished)``, ``set_running(bool)`` and ``on_idle()`` (the run
    ended without a checkpoint).
    """

    def __init__(self, live: Liveness, status: QLabel, stop_button: QPushButton, title: str,
                 stop: threading.Event, *, on_progress: Callable[[Any], None],
                 on_samples: Callable[[Any], None], on_done: Callable[[Any], None],
                 set_running: Callable[[bool], None],
                 on_idle: Callable[[], None] | None = None) -> None:
        self.live, self.status, self.stop_button, self.title = live, status, stop_button, title
        self.stop_event = stop
        self.on_progress, self.on_samples, self.on_done = on_progress, on_samples, on_done
        self.set_running, self.on_idle = set_running, on_idle
        self.worker: Any = None
        self.last_checkpoint: Path | None = None
        self._pbar: ProgressBar | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, function: Callable[..., Any], *args: Any, total: int, out_dir: Path) -> None:
        """Run ``function(*args, stop_event)`` (a generator of events) in the background."""
        self.stop_event.clear()
        self.last_checkpoint = None
        self._pbar = ProgressBar(total, self.title)
        worker = run_generator(function, *args, self.stop_event)
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._pbar.close)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.set_running(True)
        self.status.setText(f"Starting; writing to {out_dir}")
        worker.start()

    def stop(self) -> None:
        """Ask the run to stop after the current step (pressing again does nothing more)."""
        if not self.running:
            return
        self.stop_event.set()
        self.stop_button.setEnabled(False)
        self.status.setText("Stopping after the current step ...")

    def set_step(self, step: int) -> None:
        """Move the napari progress bar; last in ``on_progress``, as it may handle
        further events while it redraws."""
        if self._pbar is not None:
            self._pbar.set(step)

    def _on_event(self, event: Any) -> None:
        from napari_atagan.events import CheckpointSaved, Finished, Message, Progress, Samples

        if not self.live.alive:
            return
        if isinstance(event, Progress):
            self.on_progress(event)
        elif isinstance(event, Samples):
            self.on_samples(event)
        elif isinstance(event, Message):
            self.status.setText(event.text)
        elif isinstance(event, CheckpointSaved):
            self.last_checkpoint = Path(event.path)
            self.status.setText(f"checkpoint saved at step {event.step}: {event.path}")
        elif isinstance(event, Finished):
            self.last_checkpoint = Path(event.checkpoint)
            self.on_done(event)

    def _on_error(self, exc: BaseException) -> None:
        notify_error(f"Training failed: {error_text(exc)}")

    def _on_finished(self) -> None:
        self.worker = None
        self._pbar = None
        if self.live.alive:
            self.set_running(False)
            if self.last_checkpoint is None:
                if self.on_idle is not None:
                    self.on_idle()
                self.status.setText("Idle (no checkpoint was written).")


class RunsTraining:
    """What a dock widget with a :class:`TrainingRun` (``self.run``) offers its users
    and tests: whether it is running, the last checkpoint, and Stop."""

    run: TrainingRun

    @property
    def is_running(self) -> bool:
        """Whether a training run is in progress."""
        return self.run.running

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint of the last training run (``None`` before one is written)."""
        return self.run.last_checkpoint

    def stop(self) -> None:
        """Ask training to stop after the current step (pressing again does nothing more)."""
        self.run.stop()


class ProgressBar:
    """A napari progress bar (activity dock) moved to absolute positions.

    napari's bar processes pending Qt events while it redraws, so the next
    worker events can arrive *inside* :meth:`set`. A re-entrant call only
    records its target; the outer call catches up, so calls never nest deeper.
    """

    def __init__(self, total: int, desc: str) -> None:
        from napari.utils import progress

        self._bar = progress(total=int(total), desc=desc)
        self._target = 0
        self._total = int(total)
        self._busy = False

    @property
    def n(self) -> int:
        return int(self._bar.n)

    def set(self, done: int, total: int | None = None) -> None:
        """Move the bar to ``done`` (of ``total``, when given); never moves back."""
        self._target = max(self._target, int(done))
        if total is not None:
            self._total = int(total)
        if self._busy:
            return
        self._busy = True
        try:
            while True:
                total, target = self._total, self._target
                if self._bar.total != total:
                    self._bar.total = total
                if self._bar.n < target:
                    self._bar.update(target - self._bar.n)
                if (total, target) == (self._total, self._target):
                    break  # no newer call arrived while the bar redrew
        finally:
            self._busy = False

    def close(self) -> None:
        self._bar.close()


# --------------------------------------------------------------------------- loss plot
class LossPlot(QWidget):
    """A small line plot of the training losses (drawn with QPainter, no extra packages).

    Each curve is scaled to its own min..max so that curves of different sizes
    stay readable; the legend shows each curve's latest value.
    """

    COLOURS = {"d": "#4fc3f7", "g": "#ffb74d", "at": "#e57373", "d_cls": "#81c784"}
    LABELS = {"d": "D", "g": "G", "at": "attention", "d_cls": "D pattern"}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.curves: dict[str, list[float]] = {}
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training losses per step: D (discriminator), G (generator) and the "
                        "attention-transfer loss; each curve is scaled to its own range.")

    def clear(self) -> None:
        self.steps.clear()
        self.curves.clear()
        self.update()

    def add(self, step: int, losses: dict[str, float]) -> None:
        """Append one logged step (keys ``d``, ``g``, ``at`` ...); older steps are ignored."""
        if self.steps and step <= self.steps[-1]:
            return
        self.steps.append(int(step))
        for key, value in losses.items():
            self.curves.setdefault(key, [math.nan] * (len(self.steps) - 1)).append(float(value))
        for values in self.curves.values():
            values.extend([math.nan] * (len(self.steps) - len(values)))
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(4, 4, -4, -4)
        painter.fillRect(self.rect(), QColor("#262930"))
        painter.setPen(QPen(QColor("#5a626c"), 1))
        painter.drawRect(rect)
        legend_x = rect.left() + 6
        for key in sorted(self.curves, key=lambda k: list(self.COLOURS).index(k)
                          if k in self.COLOURS else 99):
            values = np.asarray(self.curves[key], dtype=float)
            colour = QColor(self.COLOURS.get(key, "#dddddd"))
            self._draw_curve(painter, rect, values, colour)
            last = values[np.isfinite(values)]
            text = f"{self.LABELS.get(key, key)} {last[-1]:.3g}" if last.size else key
            painter.setPen(colour)
            painter.drawText(legend_x, rect.top() + 14, text)
            legend_x += painter.fontMetrics().horizontalAdvance(text) + 12
        if self.steps:
            painter.setPen(QColor("#aaaaaa"))
            painter.drawText(rect.adjusted(0, 0, -4, -3),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom,
                             f"step {self.steps[-1]}")
        painter.end()

    def _draw_curve(self, painter: QPainter, rect: Any, values: np.ndarray, colour: QColor
                    ) -> None:
        ok = np.isfinite(values)
        if ok.sum() < 2:
            return
        lo, hi = float(values[ok].min()), float(values[ok].max())
        span = hi - lo or 1.0
        n = len(values)
        top, height = rect.top() + 20, rect.height() - 26
        path = QPainterPath()
        started = False
        for i, v in enumerate(values):
            if not math.isfinite(v):
                continue
            x = rect.left() + rect.width() * i / max(n - 1, 1)
            y = top + height * (1.0 - (v - lo) / span)
            if started:
                path.lineTo(QPointF(x, y))
            else:
                path.moveTo(QPointF(x, y))
                started = True
        painter.setPen(QPen(colour, 1.5))
        painter.drawPath(path)


def layer_choices(viewer: Any, kind: type, *, optional: bool = False
                  ) -> Callable[[Any], Sequence[Any]]:
    """A magicgui ``choices`` callable listing the viewer's layers of one type."""

    def choices(_widget: Any = None) -> list[Any]:
        items: list[Any] = [(NO_LAYER, None)] if optional else []
        items += [(layer.name, layer) for layer in layers_of(viewer, kind)]
        return items

    return choices
