"""The *Translate* dock widget: attention-guided translation of cells between two stainings.

Two tabs:

* **Apply** runs a translation model (:func:`napari_atagan.translate.translate_image`)
  over an image layer in a background thread and shows three layers: the
  translated image (the input's dtype, shape and contrast limits, so that
  toggling it against the input compares them), the attention (where the model
  changed the image) and the attended cells as a Labels layer.
* **Train** trains a model between two domains of single-cell crops, each from
  a folder or from image layers (:func:`napari_atagan.translate.train_translation`),
  with the same events as the Train widget: a progress bar, a loss plot and a
  live preview (a layer, and drawn in the widget with the names of its rows,
  :data:`napari_atagan.translate.SAMPLE_ROWS`). The finished model becomes the
  Apply tab's model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Select, SpinBox
from napari.layers import Image
from qtpy.QtCore import QRectF, QSize, Qt
from qtpy.QtGui import QColor, QImage, QPainter
from qtpy.QtWidgets import QProgressBar, QSizePolicy, QTabWidget, QVBoxLayout, QWidget

from napari_atagan import __version__
from napari_atagan.events import Event, Finished, Message, Progress, Samples
from napari_atagan.slides.labels import DEFAULT_MIN_SIZE
from napari_atagan.translate import SAMPLE_ROWS, TranslateConfig

from ._common import (
    Liveness,
    LossPlot,
    ProgressBar,
    Relay,
    RunsTraining,
    TrainingRun,
    channel_text,
    device_combo,
    display_range,
    dock_layout,
    duration_text,
    error_text,
    file_value,
    layer_choices,
    layer_named,
    layer_slide,
    layers_of,
    notify_error,
    notify_info,
    push_button,
    put_image,
    put_labels,
    run_function,
    status_label,
)

SAMPLES_LAYER = "translation samples"
"""Name of the live preview layer of the training run."""
SOURCE_LAYERS = "layers"
SOURCE_FOLDER = "folder"
QUICK_MODEL_FIELDS = ("image_size", "widths", "n_res_blocks", "attention_widths", "d_widths",
                      "batch_size")
"""What the quick preset changes: the size of the crops, the networks and the batch."""
QUICK_STEPS = TranslateConfig.quick().steps
FULL_STEPS = TranslateConfig().steps
PREVIEW_GAP = 2
"""Pixels between the preview's tiles."""
TRANSLATE_LOSSES = {"d": ("D", "#4fc3f7"), "g": ("G", "#ffb74d"), "cycle": ("cycle", "#e57373")}
"""The losses the plot shows: label and colour."""


def translated_name(source: str) -> str:
    return f"{source} translated"


def attention_name(source: str) -> str:
    return f"{source} translation attention"


def cells_name(source: str) -> str:
    return f"{source} attended cells"


# --------------------------------------------------------------------------- models
class NotATranslationModel(ValueError):
    """The chosen checkpoint is not a translation model (e.g. an ATA-GAN)."""


def open_translator(path: Path) -> Any:
    """The :class:`~napari_atagan.translate.Translator` of ``path``.

    Raises :class:`NotATranslationModel` for a checkpoint of another family,
    ``ValueError`` (a :class:`~napari_atagan.checkpoint.CheckpointError`) for a
    missing or damaged file.
    """
    from napari_atagan.checkpoint import load_checkpoint
    from napari_atagan.translate import load_translator

    ckpt = load_checkpoint(path, family=None)
    if ckpt.family != TranslateConfig.FAMILY:
        raise NotATranslationModel(
            f"{path.name} is an ATA-GAN model (it generates cells and finds them on slides, "
            "in the Train, Synthesize and Attention widgets), not a translation model: "
            "choose a checkpoint trained in the Train tab of this widget")
    return load_translator(ckpt)


def domain_label(translator: Any, key: str) -> str:
    """A domain's name for the user: ``"dim (A)"``, or ``"A"`` when it has none.

    Domains read from arrays are called A and B by the engine; a run started
    here keeps the names of their layers in ``config.extra["domain_names"]``.
    """
    name = translator.domain_name(key)
    letter = key.upper()
    if name in (letter, f"{letter} ({letter})"):
        name = str((translator.config.extra.get("domain_names") or {}).get(key) or "")
    return f"{name} ({letter})" if name and name != letter else letter


COMPOSITE_CHOICES = [("blend by the attention", "soft"), ("translated or kept", "hard")]
"""The composite drop-down (:func:`napari_atagan.translate.translate_image`)."""
GREY_LEVEL_CHOICES = [("one scale for both domains", "shared"),
                      ("keep each cell's brightness", "own"),
                      ("the target domain's brightness", "target")]
"""The grey levels drop-down (:attr:`napari_atagan.translate.TranslateConfig.grey_levels`)."""


def direction_choices(translator: Any | None) -> list[tuple[str, str]]:
    """The direction drop-down: ``("dim (A) → bright (B)", "a2b")`` and back."""
    if translator is None:
        a, b = "A", "B"
    else:
        a, b = domain_label(translator, "a"), domain_label(translator, "b")
    return [(f"{a} → {b}", "a2b"), (f"{b} → {a}", "b2a")]


def model_text(path: Path, translator: Any) -> str:
    """One line about a translation model for the Apply tab's status line."""
    kind = "attention-guided" if translator.attention else "CycleGAN (no attention)"
    a, b = domain_label(translator, "a"), domain_label(translator, "b")
    text = (f"model: {path.name} · {a} ↔ {b} · {kind} · {translator.config.image_size} px "
            f"crops · step {translator.step}")
    sizes = [f"{domain_label(translator, k)} {d:.0f} px" for k in ("a", "b")
             if (d := translator.cell_diameter(k)) is not None]
    if sizes:
        text += "\ntraining cells were about " + ", ".join(sizes) + " across"
    return text


# --------------------------------------------------------------------------- apply
def attended_cells(translator: Any, attention: np.ndarray, direction: str,
                   cell_diameter: float | None, composite: str = "soft") -> np.ndarray:
    """The attended cells: the attention thresholded at the model's own ``attention_threshold``
    (with the hard composite at :func:`attended_level`'s 0.5: the pixels it translated).

    Why :func:`~napari_atagan.slides.labels.attention_to_labels` on a fixed level and
    not :func:`~napari_atagan.slides.segment.label_cells`: ``label_cells`` is made
    for the ATA-GAN discriminator's map, which is coarse (one value per 8 model
    pixels) and has no absolute scale, so it seeds cells at each one's own peak
    and takes their outline from the image's edges. The translation attention is
    a per-pixel gate in [0, 1] at full resolution (the share of each pixel the
    generator replaced), and the model itself calls a pixel attended when it
    exceeds ``attention_threshold`` (what its discriminators saw in training):
    thresholding the map there outlines exactly the region the model translated,
    which is what these labels are meant to show, rather than the nucleus the
    image outlines. The cell diameter (the given one, else the training cells' at
    model scale, which is the image's own scale then) only sets the smallest
    object kept and which touching objects are split.
    """
    from napari_atagan.slides.labels import attention_to_labels

    diameter = cell_diameter or translator.model_cell_diameter(direction[0])
    return attention_to_labels(attention, threshold=attended_level(translator, composite),
                               min_size=DEFAULT_MIN_SIZE, cell_diameter=float(diameter))


def attended_level(translator: Any, composite: str = "soft") -> float:
    """The attention above which a pixel was translated: the model's
    ``attention_threshold`` for the blend, the hard composite's cut otherwise."""
    from napari_atagan.translate import HARD_CUT

    return float(HARD_CUT if composite == "hard" else translator.config.attention_threshold)


def apply_translation(translator: Any, image: Any, direction: str, cell_diameter: float | None,
                      device: str, stop: threading.Event, progress: Any,
                      composite: str = "soft"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Translation, attention and attended cells of an image (runs in the worker thread).

    The cells are ``None`` for a model trained without attention (it translates
    the whole image: there are no attended cells to show).
    """
    from napari_atagan.translate import translate_image

    translated, attention = translate_image(translator, image, direction=direction,
                                            cell_diameter=cell_diameter, device=device,
                                            progress=progress, stop=stop.is_set,
                                            composite=composite)
    labels = None
    if translator.attention:
        labels = attended_cells(translator, attention, direction, cell_diameter, composite)
    return translated, attention, labels


def is_own_output(layer: Any) -> bool:
    """Whether ``layer`` is a result or the preview of this widget (no training crops)."""
    if layer.name == SAMPLES_LAYER:
        return True
    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    source = meta.get("source_layer")
    return source is not None and layer.name in (translated_name(source), attention_name(source))


def check_translate_layer(layer: Any) -> None:
    """``ValueError`` unless ``layer`` is a 2-D image (grey, or RGB: its stained channel)."""
    if layer is None:
        raise ValueError("choose an image layer to translate")
    if layer.multiscale:
        raise ValueError(f"layer '{layer.name}' is multiscale: open its full-resolution level "
                         "as a plain image layer")
    if layer.ndim != 2:
        raise ValueError(f"layer '{layer.name}' is {layer.ndim}-D, shape "
                         f"{tuple(layer.data.shape)}: translation works on one 2-D image "
                         "(pick one plane or channel first)")


def _colormap_of(layer: Any, channel: dict[str, Any]) -> Any:
    """The translated layer's colormap: the input's, or the RGB channel's colour."""
    if not channel:
        return layer.colormap
    name = channel.get("channel_name")
    return name if name in ("red", "green", "blue") else "gray"


# --------------------------------------------------------------------------- train
@dataclass
class DomainSource:
    """The crops of one domain, captured in the GUI thread.

    ``kind`` is ``"folder"`` (read by the engine) or ``"layers"``: ``crops`` is an
    ``(N, H, W)`` stack (one layer) or a list of 2-D crops (several layers).
    """

    kind: str
    folder: Path | None = None
    crops: Any = None
    names: list[str] = field(default_factory=list)

    @property
    def data(self) -> Any:
        """What :func:`~napari_atagan.translate.train_translation` takes for this domain."""
        return self.folder if self.kind == SOURCE_FOLDER else self.crops

    @property
    def name(self) -> str:
        if self.kind == SOURCE_FOLDER:
            return self.folder.name
        if len(self.names) > 3:
            return f"{self.names[0]} + {len(self.names) - 1} more layers"
        return " + ".join(self.names)

    def describe(self) -> str:
        if self.kind == SOURCE_FOLDER:
            return f"folder {self.folder}"
        return f"layer{'s' if len(self.names) > 1 else ''} {', '.join(map(repr, self.names))}"


def layer_crops(layers: list[Any], domain: str) -> tuple[Any, list[str]]:
    """The grey crops of some image layers: a stack (one layer) or a list of 2-D crops."""
    if not layers:
        raise ValueError(f"choose the image layer(s) with the crops of domain {domain} "
                         "(or a folder)")
    crops: list[np.ndarray] = []
    for layer in layers:
        if layer.rgb:
            raise ValueError(f"layer '{layer.name}' is RGB: training needs grey crops "
                             "(split the channels first)")
        if layer.multiscale or layer.ndim not in (2, 3):
            raise ValueError(f"layer '{layer.name}' has shape {tuple(layer.data.shape)}: use "
                             "a stack of crops (N, H, W) or 2-D crops")
        data = np.asarray(layer.data)
        crops.extend([data] if data.ndim == 2 else list(data))
    names = [layer.name for layer in layers]
    if len(layers) == 1 and np.asarray(layers[0].data).ndim == 3:
        return np.asarray(layers[0].data), names
    return crops, names


def translation_config(base: TranslateConfig, settings: dict[str, Any],
                       a: DomainSource, b: DomainSource) -> TranslateConfig:
    """The run's config: ``base`` with the form's values (``quick``, ``steps``, ...)."""
    model = {}
    if settings["quick"]:
        quick = TranslateConfig.quick()
        model = {name: getattr(quick, name) for name in QUICK_MODEL_FIELDS}
    steps = int(settings["steps"])
    return base.replace(
        **model,
        steps=steps,
        attention=bool(settings["attention"]),
        mask_weight=1.0 if settings.get("mask_teacher") else base.mask_weight,
        grey_levels=settings.get("grey_levels") or base.grey_levels,
        device=settings["device"],
        sample_every=max(1, min(base.sample_every, steps // 20)),
        extra={**base.extra, "source": f"napari: A {a.describe()}, B {b.describe()}",
               "domain_names": {"a": a.name, "b": b.name}},
    )


def run_translation_training(a: DomainSource, b: DomainSource, config: TranslateConfig,
                             out_dir: Path, stop: threading.Event) -> Iterator[Event]:
    """The generator the worker thread runs: read both domains, then train."""
    from napari_atagan.translate import train_translation

    yield Message(f"reading the crops: A from the {a.describe()}, B from the {b.describe()} ...")
    yield from train_translation(config, a.data, b.data, out_dir, stop=stop)


def default_run_folder() -> Path:
    """A fresh, time-stamped folder under ``~/napari-atagan/runs``."""
    return Path.home() / "napari-atagan" / "runs" / time.strftime("translate-%Y%m%d-%H%M%S")


def sample_grid(images: np.ndarray, rows: np.ndarray | None, n_rows: int = len(SAMPLE_ROWS),
                gap: int = PREVIEW_GAP) -> np.ndarray:
    """The preview: row ``r`` holds the images whose ``rows`` entry is ``r``, left to right.

    Empty places (a domain with fewer crops than the others) stay at -1 (black).
    """
    images = np.asarray(images, dtype=np.float32)
    n, h, w = images.shape
    rows = np.zeros(n, int) if rows is None else np.asarray(rows, dtype=int)
    n_rows = max(n_rows, int(rows.max()) + 1 if n else 1)
    columns = max(1, max(int((rows == r).sum()) for r in range(n_rows)))
    out = np.full((n_rows * (h + gap) - gap, columns * (w + gap) - gap), -1.0, np.float32)
    for r in range(n_rows):
        for c, img in enumerate(images[rows == r]):
            out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = img
    return out


class SamplePreview(QWidget):
    """The latest preview of a training run, drawn in the widget with the name of each row.

    The same grid is the viewer's preview layer; here it is always in sight, beside
    the loss plot, and says which row is which (:data:`SAMPLE_ROWS`).
    """

    MAX_HEIGHT = 300

    def __init__(self, rows: tuple[str, ...] = SAMPLE_ROWS, parent: QWidget | None = None
                 ) -> None:
        super().__init__(parent)
        self.rows = list(rows)
        self.step: int | None = None
        self._pixels: np.ndarray | None = None
        self._image: QImage | None = None
        self._side = 1
        self.setMinimumHeight(150)
        policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)
        self.setToolTip("The latest preview of the model in training: real crops of A, where "
                        "the model attends in them, their translation to B; the same for B. "
                        "Also the viewer's layer 'translation samples'.")

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(320, self.heightForWidth(320))

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt override
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt override
        """As tall as the grid needs at this width, between 150 and :data:`MAX_HEIGHT` px."""
        if self._pixels is None:
            return 150
        metrics = self.fontMetrics()
        names = max(metrics.horizontalAdvance(name) for name in self.rows) + 10
        grid_h, grid_w = self._pixels.shape
        needed = metrics.height() + 8 + (width - names - 4) * grid_h / max(grid_w, 1)
        return int(min(max(needed, 150), self.MAX_HEIGHT))

    def clear(self) -> None:
        self.step, self._pixels, self._image = None, None, None
        self.update()

    def show_samples(self, grid: np.ndarray, side: int, step: int) -> None:
        """Show a :func:`sample_grid` (values in [-1, 1]) of tiles ``side`` px wide."""
        pixels = np.clip((np.asarray(grid, np.float32) + 1.0) * 127.5, 0, 255)
        self._pixels = np.ascontiguousarray(pixels.astype(np.uint8))  # the QImage's memory
        h, w = self._pixels.shape
        self._image = QImage(self._pixels.data, w, h, w, QImage.Format.Format_Grayscale8)
        self._side, self.step = int(side), int(step)
        self.updateGeometry()
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#262930"))
        metrics = painter.fontMetrics()
        if self._image is None:
            painter.setPen(QColor("#aaaaaa"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter,
                             "The preview of the model in training appears here.")
            painter.end()
            return
        top = metrics.height() + 4
        names = max(metrics.horizontalAdvance(name) for name in self.rows) + 10
        img_h, img_w = self._pixels.shape
        scale = min((self.width() - names - 4) / img_w, (self.height() - top - 4) / img_h)
        scale = max(scale, 0.01)
        target = QRectF(names, top, img_w * scale, img_h * scale)
        painter.drawImage(target, self._image)
        painter.setPen(QColor("#dddddd"))
        pitch = (self._side + PREVIEW_GAP) * scale
        for r, name in enumerate(self.rows):
            box = QRectF(0, top + r * pitch, names - 6, self._side * scale)
            painter.drawText(box, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                             name)
        painter.setPen(QColor("#aaaaaa"))
        painter.drawText(QRectF(names, 0, target.width(), top),
                         Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                         f"preview at step {self.step}")
        painter.end()


# --------------------------------------------------------------------------- the widget
class TranslateWidget(RunsTraining, QWidget):
    """Translate images between two stainings with a trained model, or train one.

    ``base_config`` holds the training settings that the form does not show
    (network widths, learning rate, checkpoint interval ...); the form's values
    override it, and the quick preset its crop size, networks and batch size.
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.base_config = TranslateConfig()
        self.translator: Any = None
        self.apply_worker: Any = None
        self.out_dir: Path | None = None
        self._apply_pbar: Any = None
        self._live = Liveness()
        self._train_stop = threading.Event()
        self.destroyed.connect(self._live.dead)
        self.destroyed.connect(lambda *_: self._train_stop.set())
        self._relay = Relay()
        self._relay.progressed.connect(self._on_apply_progress)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_apply(), "Apply")
        self.tabs.addTab(self._build_train(), "Train")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self._update_sources()
        self._check_checkpoint()

    # ------------------------------------------------------------------ apply: form
    def _build_apply(self) -> QWidget:
        self.checkpoint = FileEdit(
            label="model", mode="r", filter="*.safetensors", nullable=True,
            tooltip="A translation model (.safetensors), e.g. the checkpoint of a run of the "
                    "Train tab. ATA-GAN models are refused.")
        self.image_layer = ComboBox(
            label="image", choices=layer_choices(self.viewer, Image), nullable=True,
            tooltip="A 2-D image: a crop or a whole slide; of an RGB image the stained "
                    "channel is translated.")
        self.direction = ComboBox(
            label="direction", choices=lambda _=None: direction_choices(self.translator),
            value="a2b",
            tooltip="Which way to translate: the image's cells are of the first domain.")
        self.cell_diameter = FloatSpinBox(
            label="cell diameter", value=0.0, min=0.0, max=100_000.0, step=1.0,
            tooltip="Typical cell (nucleus) diameter in pixels of this image: the image is "
                    "rescaled so its cells match the training cells, and the results scaled "
                    "back.\n0: translate the image at its own scale (right for crops like "
                    "the training crops).")
        self.composite = ComboBox(
            label="composite", choices=COMPOSITE_CHOICES, value="soft",
            tooltip="How the translation meets the image: blended pixel by pixel by the "
                    "attention (the paper's), or each pixel either translated (attention "
                    "above 0.5) or left as it is.")
        self.apply_device = device_combo()
        self.apply_form = Container(widgets=[self.checkpoint, self.image_layer, self.direction,
                                             self.cell_diameter, self.composite,
                                             self.apply_device])
        self.checkpoint.changed.connect(self._check_checkpoint)
        self.translate_button = push_button(
            "Translate", self.translate,
            "Translate the image in the background; adds the translated image, the "
            "attention and the attended cells as layers.")
        self.apply_stop_button = push_button("Stop", self.stop_apply, enabled=False)
        self.apply_status = status_label()
        page = QWidget()
        dock_layout(page, self.apply_form.native, [self.translate_button, self.apply_stop_button],
                    self.apply_status)
        page.layout().addStretch(1)
        return page

    def _check_checkpoint(self, *_: Any) -> None:
        """Open the chosen model; say in the widget why one cannot be used."""
        self.translator = None
        path = file_value(self.checkpoint.value)
        if path is None:
            self.apply_status.setText("Choose a translation model, or train one in the Train "
                                      "tab.")
        elif not path.is_file():  # perhaps still being typed
            self.apply_status.setText(f"model: no such file {path}")
        else:
            try:
                self.translator = open_translator(path)
            except NotATranslationModel as exc:
                self.apply_status.setText(f"⚠ {exc}.")
            except ValueError as exc:
                self.apply_status.setText(f"⚠ cannot use this model: {error_text(exc)}")
            else:
                self.apply_status.setText(model_text(path, self.translator))
                self.composite.value = self.translator.default_composite
        self.direction.reset_choices()  # named after the model's domains
        self._update_apply_buttons()

    def _update_apply_buttons(self) -> None:
        running = self.apply_worker is not None
        self.translate_button.setEnabled(self.translator is not None and not running)
        self.apply_stop_button.setEnabled(running)

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer drop-downs (napari calls this when layers change)."""
        self.apply_form.reset_choices()
        self.train_form.reset_choices()

    # ------------------------------------------------------------------ apply: run
    def translate(self) -> None:
        """Translate the chosen image layer in a background thread."""
        if self.apply_worker is not None:
            return
        if self.translator is None:
            notify_error(self.apply_status.text() if self.apply_status.text().startswith("⚠")
                         else "choose a translation model (.safetensors)")
            return
        layer = self.image_layer.value
        try:
            check_translate_layer(layer)
            image, channel = layer_slide(layer)
        except ValueError as exc:
            notify_error(error_text(exc))
            return
        if channel:
            from napari_atagan.channels import describe_channel

            notify_info(f"'{layer.name}' is RGB: translating its {describe_channel(channel)}")
        direction = self.direction.value
        diameter = float(self.cell_diameter.value) or None
        composite = self.composite.value
        translator = self.translator
        self._live.stop.clear()
        self._apply_pbar = ProgressBar(0, f"translation: {layer.name}")
        worker = run_function(apply_translation, translator, image, direction, diameter,
                              self.apply_device.value, self._live.stop, self._relay.callback,
                              composite)
        started = time.perf_counter()
        worker.returned.connect(lambda out: self._on_translated(
            layer, channel, translator, direction, diameter, time.perf_counter() - started, *out,
            composite=composite))
        worker.errored.connect(lambda exc: self._on_apply_error(exc, layer.name))
        worker.finished.connect(self._on_apply_finished)
        self.apply_worker = worker
        self._update_apply_buttons()
        self.apply_status.setText(f"translating '{layer.name}'{channel_text(channel)} "
                                  f"{self.direction.current_choice} ...")
        worker.start()

    def stop_apply(self) -> None:
        """Abort the running translation (between tiles)."""
        if self.apply_worker is not None:
            self._live.stop.set()
            self.apply_stop_button.setEnabled(False)
            self.apply_status.setText("stopping ...")

    def _on_apply_progress(self, done: int, total: int) -> None:
        if self._apply_pbar is not None:
            self._apply_pbar.set(done, total)

    def _on_apply_error(self, exc: BaseException, name: str) -> None:
        from napari_atagan.translate import Stopped

        if isinstance(exc, Stopped):
            notify_info("Translation stopped.")
            if self._live.alive:
                self.apply_status.setText("stopped")
        else:
            notify_error(f"Translation of '{name}' failed: {error_text(exc)}")
            if self._live.alive:
                self.apply_status.setText(f"translation of '{name}' failed")

    def _on_apply_finished(self) -> None:
        self.apply_worker = None
        if self._apply_pbar is not None:
            self._apply_pbar.close()
            self._apply_pbar = None
        if self._live.alive:
            self._update_apply_buttons()

    def _on_translated(self, layer: Any, channel: dict[str, Any], translator: Any,
                       direction: str, diameter: float | None, seconds: float,
                       translated: np.ndarray, attention: np.ndarray,
                       labels: np.ndarray | None, *, composite: str = "soft") -> None:
        if not self._live.alive:
            return
        name = layer.name
        where = {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}
        meta = {"source_layer": name, "checkpoint": str(translator.path),
                "checkpoint_step": int(translator.step), "direction": direction,
                "cell_diameter": diameter, "composite": composite,
                "software": f"napari-atagan {__version__}", **channel}
        limits = tuple(layer.contrast_limits)
        if channel and np.dtype(translated.dtype) != np.dtype(layer.dtype):
            limits = display_range(translated)
        put_image(self.viewer, translated_name(name), translated, contrast_limits=limits,
                  colormap=_colormap_of(layer, channel), metadata=meta, **where)
        put_image(self.viewer, attention_name(name), attention, colormap="magma",
                  blending="additive", opacity=0.5, contrast_limits=(0.0, 1.0),
                  metadata=meta, **where)
        text = (f"'{name}'{channel_text(channel)}: translated "
                f"{_label_of(direction_choices(translator), direction)} in {seconds:.1f} s")
        if labels is None:
            stale = layer_named(self.viewer, cells_name(name))
            if stale is not None:
                self.viewer.layers.remove(stale)
            text += " · no attended cells: the model translates the whole image (no attention)"
        else:
            level = attended_level(translator, composite)
            cells = put_labels(self.viewer, cells_name(name), labels,
                               metadata={**meta, "attention_threshold": level}, **where)
            cells.contour = 2  # outlines: the translated image stays visible inside
            n = int(labels.max()) if labels.size else 0
            text += f" · {n} attended cell{'s' if n != 1 else ''} (attention > {level:g})"
        if composite == "hard" and translator.attention:
            from napari_atagan.translate import nothing_attended

            if nothing_attended(attention):
                text += (" · no pixel's attention is above 0.5: the hard composite left the "
                         "image as it was (choose 'blend by the attention')")
        self.apply_status.setText(text)

    # ------------------------------------------------------------------ train: form
    def _build_train(self) -> QWidget:
        self.a_source, self.a_layers, self.a_folder = self._domain_fields("A")
        self.b_source, self.b_layers, self.b_folder = self._domain_fields("B")
        self.out_folder = FileEdit(
            label="output folder", mode="d", nullable=True,
            tooltip="Where checkpoint.safetensors and summary.json are written.\nEmpty: a new "
                    "time-stamped folder under ~/napari-atagan/runs.")
        self.quick = CheckBox(
            text="quick preset", value=True,
            tooltip="Small networks on 64 px crops that train in minutes on a CPU (about 9 "
                    "minutes for 2,000 steps). Off: the full model (a GPU is advised).")
        self.steps = SpinBox(
            label="steps", value=QUICK_STEPS, min=1, max=10_000_000, step=100,
            tooltip="Training steps (one update of the generators and one of the "
                    "discriminators each).")
        self.attention = CheckBox(
            text="attention", value=True,
            tooltip="Attention-guided translation: attention networks learn where the cells "
                    "are and only those pixels change, the background is kept.\nOff: the "
                    "plain CycleGAN baseline, which translates the whole image.")
        self.mask_teacher = CheckBox(
            text="attention learns from masks", value=False,
            tooltip="Where a folder of crops has cell masks (NNNNN_Mask.png), teach the "
                    "attention with them too (mask_weight 1): on real cells it keeps the "
                    "background far better. Crops from layers have no masks.")
        self.grey_levels = ComboBox(
            label="grey levels", choices=GREY_LEVEL_CHOICES, value="shared",
            tooltip="One scale for both domains: brightness is translated too, as learnt "
                    "from the training cells.\nKeep each cell's brightness: every crop (and "
                    "later every image) on its own grey levels, only the stain's pattern "
                    "translated: for two patterns whose specimens differ in brightness.\n"
                    "The target domain's brightness: as the last, and the translated cells "
                    "get the target domain's grey range: dim -> bright on specimens dimmer "
                    "than the training ones.")
        self.train_device = device_combo()
        self.train_form = Container(widgets=[
            self.a_source, self.a_layers, self.a_folder, self.b_source, self.b_layers,
            self.b_folder, self.out_folder, self.quick, self.steps, self.attention,
            self.mask_teacher, self.grey_levels, self.train_device,
        ])
        for box in (self.a_source, self.b_source):
            box.changed.connect(self._update_sources)
        self.quick.changed.connect(self._update_steps)
        self.start_button = push_button(
            "Start training", self.start, "Train in the background; the viewer stays usable.")
        self.train_stop_button = push_button(
            "Stop", self.stop, "Stop after the current step; a checkpoint is always saved.",
            enabled=False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("idle")
        self.progress_bar.setTextVisible(True)
        self.preview = SamplePreview()
        self.loss_plot = LossPlot()
        self.loss_plot.COLOURS = {k: colour for k, (_, colour) in TRANSLATE_LOSSES.items()}
        self.loss_plot.LABELS = {k: label for k, (label, _) in TRANSLATE_LOSSES.items()}
        self.loss_plot.setToolTip(
            "Training losses per step: D (both discriminators), G (the generators' "
            "adversarial loss) and cycle (how well A → B → A gives A back); each curve is "
            "scaled to its own range.")
        self.train_status = status_label("Idle.")
        self.run = TrainingRun(self._live, self.train_status, self.train_stop_button,
                               "translation training", self._train_stop,
                               on_progress=self._on_progress, on_samples=self._show_samples,
                               on_done=self._on_done, set_running=self._set_running,
                               on_idle=lambda: self.progress_bar.setFormat("idle"))
        page = QWidget()
        dock_layout(page, self.train_form.native, [self.start_button, self.train_stop_button],
                    self.progress_bar, self.preview, self.loss_plot, self.train_status)
        page.layout().addStretch(1)
        return page

    def _domain_fields(self, domain: str) -> tuple[ComboBox, Select, FileEdit]:
        source = ComboBox(
            label=f"domain {domain} from", choices=[SOURCE_LAYERS, SOURCE_FOLDER],
            value=SOURCE_LAYERS,
            tooltip=f"Where the crops of domain {domain} come from.\nlayers: an image layer "
                    "holding a stack of crops (N, H, W), or several layers of 2-D crops.\n"
                    "folder: crops as NNNNN.png (+ NNNNN_Mask.png), flat or in pattern "
                    "sub-folders.")
        layers = Select(
            label=f"domain {domain}", choices=self._crop_layer_choices,
            tooltip=f"The layer(s) with the crops of domain {domain}: one stack (N, H, W) or "
                    "several 2-D crops (Ctrl-click to choose more than one).")
        # Three rows: enough to see what is chosen, short enough for the dock.
        rows = layers.native.fontMetrics().height() + 8
        layers.native.setFixedHeight(3 * rows + 2 * layers.native.frameWidth())
        folder = FileEdit(label=f"domain {domain} folder", mode="d", nullable=True,
                          tooltip=f"The folder of the crops of domain {domain}.")
        return source, layers, folder

    def _crop_layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        """Image layers that can hold training crops: not the ones this widget made."""
        return [(layer.name, layer) for layer in layers_of(self.viewer, Image)
                if not is_own_output(layer)]

    def _update_sources(self, *_: Any) -> None:
        for source, layers, folder in ((self.a_source, self.a_layers, self.a_folder),
                                       (self.b_source, self.b_layers, self.b_folder)):
            from_layers = source.value == SOURCE_LAYERS
            layers.visible = from_layers
            folder.visible = not from_layers

    def _update_steps(self, *_: Any) -> None:
        """Follow the preset's number of steps unless the user changed it."""
        before, after = (FULL_STEPS, QUICK_STEPS) if self.quick.value else (QUICK_STEPS,
                                                                             FULL_STEPS)
        if self.steps.value == before:
            self.steps.value = after

    # ------------------------------------------------------------------ train: data
    def domain_source(self, domain: str) -> DomainSource:
        """The crops of domain ``"A"`` or ``"B"`` chosen in the form (``ValueError`` if none)."""
        source, layers, folder = ((self.a_source, self.a_layers, self.a_folder) if domain == "A"
                                  else (self.b_source, self.b_layers, self.b_folder))
        if source.value == SOURCE_FOLDER:
            path = file_value(folder.value)
            if path is None:
                raise ValueError(f"choose the folder of the crops of domain {domain}")
            return DomainSource(SOURCE_FOLDER, folder=path)
        order = list(self.viewer.layers)
        chosen = sorted(layers.value or [], key=lambda layer: order.index(layer)
                        if layer in order else len(order))  # the order they were added
        crops, names = layer_crops(chosen, domain)
        return DomainSource(SOURCE_LAYERS, crops=crops, names=names)

    def settings(self) -> dict[str, Any]:
        """The form's training options."""
        return {"quick": bool(self.quick.value), "steps": int(self.steps.value),
                "attention": bool(self.attention.value),
                "mask_teacher": bool(self.mask_teacher.value),
                "grey_levels": self.grey_levels.value, "device": self.train_device.value}

    # ------------------------------------------------------------------ train: run
    @property
    def train_worker(self) -> Any:
        """The background worker of the training run in progress (``None`` when idle)."""
        return self.run.worker

    def start(self) -> None:
        """Start training in a background thread (errors become notifications)."""
        if self.is_running:
            return
        try:
            a, b = self.domain_source("A"), self.domain_source("B")
            config = translation_config(self.base_config, self.settings(), a, b)
        except ValueError as exc:
            notify_error(error_text(exc))
            return
        self.out_dir = file_value(self.out_folder.value) or default_run_folder()
        self.loss_plot.clear()
        self.preview.clear()
        self.progress_bar.setRange(0, config.steps)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting ...")
        self.run.start(run_translation_training, a, b, config, self.out_dir,
                       total=config.steps, out_dir=self.out_dir)

    def _set_running(self, running: bool) -> None:
        self.train_form.enabled = not running
        self.start_button.setEnabled(not running)
        self.train_stop_button.setEnabled(running)

    def _on_progress(self, ev: Progress) -> None:
        shown = {k: v for k, v in ev.losses.items() if k in TRANSLATE_LOSSES}
        self.loss_plot.add(ev.step, shown)
        losses = ", ".join(f"{TRANSLATE_LOSSES[k][0]} {v:.3f}" for k, v in shown.items())
        left = duration_text(ev.eta_s)
        self.train_status.setText(f"step {ev.step}/{ev.total_steps}: {losses}\n"
                                  f"{ev.images_per_s:.0f} crops/s, about {left} left")
        self.progress_bar.setRange(0, ev.total_steps)
        self.progress_bar.setValue(ev.step)
        self.progress_bar.setFormat(f"step %v of %m · about {left} left")
        self.run.set_step(ev.step)  # last: it may handle further events while it redraws

    def _show_samples(self, ev: Samples) -> None:
        grid = sample_grid(ev.images, ev.labels)
        side = int(ev.images.shape[-1])
        put_image(self.viewer, SAMPLES_LAYER, grid, colormap="gray", contrast_limits=(-1.0, 1.0),
                  metadata={"step": int(ev.step), "rows": list(SAMPLE_ROWS)})
        self.preview.show_samples(grid, side, ev.step)

    def _on_done(self, event: Finished) -> None:
        what = "stopped" if event.stopped else "finished"
        steps = event.summary.get("steps")
        self.progress_bar.setFormat(f"{what} at step {steps}")
        self.train_status.setText(f"Training {what} at step {steps}.\nCheckpoint: "
                                  f"{event.checkpoint}\nThe Apply tab now uses this model.")
        if file_value(self.checkpoint.value) == self.last_checkpoint:
            self._check_checkpoint()  # the same file, new weights: open it again
        else:
            self.checkpoint.value = self.last_checkpoint
        notify_info(f"Translation training {what} at step {steps}; checkpoint: "
                    f"{event.checkpoint}")


def _label_of(choices: list[tuple[str, str]], value: str) -> str:
    return next(label for label, v in choices if v == value)
