"""The *Attention* dock widget: where does a trained discriminator see cells on a slide?

It runs :func:`napari_atagan.slide.slide_attention` (or ``slide_attention_stack``
for a ``(T, Y, X)`` stack) in a background thread, shows the map as a heat-map
overlay on the slide and turns it into a Labels layer of cells with
:func:`napari_atagan.segment.label_cells`: the map finds the cells and the
image outlines them (or, by choice, the map alone). Changing the threshold,
the outline or the minimum size only re-labels the kept map; the discriminator
is not run again.
An RGB layer is read through its stained channel
(:func:`napari_atagan.channels.pick_stain_channel`); the status line and the
result layers' metadata say which.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, PushButton, SpinBox
from napari.layers import Image
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from napari_atagan import __version__
from napari_atagan.labels import DEFAULT_MIN_SIZE
from napari_atagan.segment import label_cells

from ._common import (
    Liveness,
    ProgressBar,
    Relay,
    checkpoint_edit,
    device_combo,
    dock_layout,
    error_text,
    file_value,
    layer_choices,
    notify_error,
    notify_info,
    push_button,
    put_image,
    put_labels,
    read_checkpoint,
    run_function,
    status_label,
)

LOCAL = "per cell (auto)"
OTSU = "Otsu (whole image)"
FIXED = "value"
_MODES = {LOCAL: "local", OTSU: "otsu"}
OUTLINE_IMAGE = "by the image"
OUTLINE_MAP = "by the map"
_OUTLINES = {OUTLINE_IMAGE: "image", OUTLINE_MAP: "map"}
DEFAULT_DIAMETER = 40.0


def attention_name(source_name: str) -> str:
    return f"{source_name} attention"


def cells_name(source_name: str) -> str:
    return f"{source_name} cells"


@dataclass
class AttentionResult:
    """One computed map and where it came from (kept so that re-labelling is cheap)."""

    source: Any
    """The image layer the map was computed from."""
    source_name: str
    attention: np.ndarray
    """float32 map of the source's shape."""
    checkpoint: Path
    cell_diameter: float
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    channel: dict[str, Any] = field(default_factory=dict)
    """Which channel of an RGB source was used (:func:`napari_atagan.channels.grey_view`)."""
    image: Any = None
    """The grey slide the map was computed from (outlines the cells when re-labelling)."""


def compute_attention(checkpoint: Path, image: Any, cell_diameter: float, device: str,
                      threshold: str | float, min_size: int, stop: threading.Event,
                      progress_cb: Any, outline: str = "image"
                      ) -> tuple[np.ndarray, np.ndarray, int]:
    """Map and labels of a slide or a ``(T, Y, X)`` stack (runs in the worker thread).

    Returns the map, the labels and the checkpoint's training step.
    """
    from napari_atagan.checkpoint import load_checkpoint
    from napari_atagan.slide import slide_attention, slide_attention_stack

    ckpt = load_checkpoint(checkpoint)
    run = slide_attention_stack if len(image.shape) == 3 else slide_attention
    amap = run(ckpt, image, cell_diameter=cell_diameter, device=device, stop=stop.is_set,
               progress=progress_cb)
    labels = label_cells(amap, image, outline=outline, threshold=threshold, min_size=min_size,
                         cell_diameter=cell_diameter)
    return amap, labels, ckpt.step


def check_image_layer(layer: Any) -> None:
    """``ValueError`` unless ``layer`` is a 2-D slide or a ``(T, Y, X)`` stack (grey or RGB)."""
    if layer is None:
        raise ValueError("choose an image layer (a 2-D slide or a (T, Y, X) stack)")
    if layer.multiscale:
        raise ValueError(f"layer '{layer.name}' is multiscale: open its full-resolution level "
                         "as a plain image layer")
    if layer.ndim not in (2, 3):
        raise ValueError(f"layer '{layer.name}' is {layer.ndim}-D, shape "
                         f"{tuple(layer.data.shape)}: use a 2-D slide or a (T, Y, X) stack "
                         "(pick one channel / z plane first)")


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


class AttentionWidget(QWidget):
    """Attention map of a trained discriminator on a slide, thresholded into cell labels."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.results: list[AttentionResult] = []
        self.worker: Any = None
        self.relabel_worker: Any = None
        self._relabel_again = False
        self._pbar: Any = None
        self._live = Liveness()
        self.destroyed.connect(self._live.dead)
        self._relay = Relay()
        self._relay.progressed.connect(self._on_progress)
        self._relabel_timer = QTimer(self)
        self._relabel_timer.setSingleShot(True)
        self._relabel_timer.setInterval(200)
        self._relabel_timer.timeout.connect(self.relabel)

        self._build_form()
        self.run_button = push_button(
            "Compute attention", self.run,
            "Run the discriminator over the image (in the background).")
        self.stop_button = push_button("Stop", self.stop, enabled=False)
        self.status = status_label()
        dock_layout(self, self.form.native, [self.run_button, self.stop_button], self.status)
        self._update_threshold_mode()

    # ------------------------------------------------------------------ form
    def _build_form(self) -> None:
        self.image_layer = ComboBox(
            label="image", choices=layer_choices(self.viewer, Image), nullable=True,
            tooltip="A 2-D slide (Y, X) or a stack of slides (T, Y, X); of an RGB image the "
                    "stained channel is used.")
        self.checkpoint = checkpoint_edit()
        self.cell_diameter = FloatSpinBox(
            label="cell diameter", value=DEFAULT_DIAMETER, min=2.0, max=100_000.0, step=1.0,
            tooltip="Typical cell (nucleus) diameter in pixels of this image: the image is "
                    "rescaled so its cells match the training cells.")
        self.estimate_button = PushButton(
            text="Estimate diameter", tooltip="Measure typical cell size from the image "
                                              "(Otsu threshold of the smoothed image).")
        self.threshold_mode = ComboBox(
            label="threshold", choices=[LOCAL, OTSU, FIXED], value=LOCAL,
            tooltip="per cell: every cell is cut at a quarter of its own peak attention, so "
                    "dim cells count as much as bright ones. Otsu: one automatic level for "
                    "the whole image. value: a fixed attention level.")
        self.threshold_value = FloatSpinBox(
            label="threshold value", value=0.5, min=0.0, max=1e9, step=0.01,
            tooltip="Attention above this value is a cell (see the attention layer's values).")
        self.threshold_value.native.setDecimals(4)
        self.outline = ComboBox(
            label="outline", choices=[OUTLINE_IMAGE, OUTLINE_MAP], value=OUTLINE_IMAGE,
            tooltip="image: the attention finds the cells and the image's own edges outline "
                    "them (touching cells split where they narrow). map: cells cut from the "
                    "attention map alone.")
        self.min_size = SpinBox(
            label="min size", value=DEFAULT_MIN_SIZE, min=0, max=10**9, step=10,
            tooltip="Objects smaller than this many pixels are dropped (and always those "
                    "under 0.4 of the area of a cell of the given diameter).")
        self.device = device_combo()
        self.form = Container(widgets=[
            self.image_layer, self.checkpoint, self.cell_diameter, self.estimate_button,
            self.threshold_mode, self.threshold_value, self.outline, self.min_size, self.device,
        ])
        self.estimate_button.changed.connect(self.estimate_diameter)
        self.threshold_mode.changed.connect(self._update_threshold_mode)
        self.threshold_mode.changed.connect(self._schedule_relabel)
        self.threshold_value.changed.connect(self._schedule_relabel)
        self.min_size.changed.connect(self._schedule_relabel)
        self.outline.changed.connect(self._schedule_relabel)
        self.checkpoint.changed.connect(self._check_checkpoint)

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer drop-down (napari calls this when layers change)."""
        self.form.reset_choices()

    def _update_threshold_mode(self, *_: Any) -> None:
        self.threshold_value.enabled = self.threshold_mode.value == FIXED

    def threshold(self) -> str | float:
        """``"local"``, ``"otsu"`` or the fixed value, as :func:`attention_to_labels` takes it."""
        mode = _MODES.get(self.threshold_mode.value)
        return mode if mode is not None else float(self.threshold_value.value)

    def outline_choice(self) -> str:
        """``"image"`` or ``"map"``, as :func:`napari_atagan.segment.label_cells` takes it."""
        return _OUTLINES[self.outline.value]

    def _check_checkpoint(self, *_: Any) -> None:
        loaded = read_checkpoint(self.checkpoint.value, self.status)
        if loaded is not None:
            path, ckpt = loaded
            self.status.setText(
                f"model: {path.name} ({ckpt.config.image_size} px, step {ckpt.step})")

    def _chosen_layer(self) -> Any | None:
        """The chosen image layer when it can be used, else None (after saying why)."""
        layer = self.image_layer.value
        try:
            check_image_layer(layer)
        except ValueError as exc:
            notify_error(error_text(exc))
            return None
        return layer

    # ------------------------------------------------------------------ diameter
    def estimate_diameter(self, *_: Any) -> None:
        """Estimate the cell diameter from the chosen image (in the background)."""
        from napari_atagan.slide import estimate_cell_diameter

        layer = self._chosen_layer()
        if layer is None:
            return
        try:
            image, _ = layer_slide(layer)
        except ValueError as exc:
            notify_error(error_text(exc))
            return
        if layer.ndim == 3:
            image = image[int(self.viewer.dims.current_step[0]) % image.shape[0]]
        worker = run_function(estimate_cell_diameter, image)
        worker.returned.connect(self._set_diameter)
        worker.errored.connect(lambda exc: notify_error(
            f"Could not estimate the cell diameter: {error_text(exc)}"))
        worker.finished.connect(lambda: setattr(self, "estimate_worker", None))
        self.estimate_worker = worker
        worker.start()

    def _set_diameter(self, value: float) -> None:
        if self._live.alive:
            self.cell_diameter.value = round(float(value), 1)
            self.status.setText(f"estimated cell diameter: {value:.1f} px")

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        """Compute the attention map of the chosen image in a background thread."""
        if self.worker is not None:
            return
        layer = self._chosen_layer()
        if layer is None:
            return
        checkpoint = file_value(self.checkpoint.value)
        if checkpoint is None:
            notify_error("choose a checkpoint (.safetensors)")
            return
        diameter = float(self.cell_diameter.value)
        try:
            image, channel = layer_slide(layer)
        except ValueError as exc:
            notify_error(error_text(exc))
            return
        if channel:
            from napari_atagan.channels import describe_channel

            notify_info(f"'{layer.name}' is RGB: using its {describe_channel(channel)}")
        self._live.stop.clear()
        self._pbar = ProgressBar(0, f"ATA-GAN attention: {layer.name}")
        worker = run_function(compute_attention, checkpoint, image, diameter,
                              self.device.value, self.threshold(), int(self.min_size.value),
                              self._live.stop, self._relay.callback, self.outline_choice())
        result = AttentionResult(source=layer, source_name=layer.name,
                                 attention=np.zeros(0, np.float32), checkpoint=checkpoint,
                                 cell_diameter=diameter, scale=tuple(layer.scale),
                                 translate=tuple(layer.translate), channel=channel, image=image)
        worker.returned.connect(lambda out: self._on_result(result, *out))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._pbar.close)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText(f"computing attention on '{layer.name}'{channel_text(channel)} ...")
        worker.start()

    def stop(self) -> None:
        """Abort the running computation (between tiles)."""
        if self.worker is not None:
            self._live.stop.set()
            self.stop_button.setEnabled(False)
            self.status.setText("stopping ...")

    def _on_progress(self, done: int, total: int) -> None:
        if self._pbar is not None:
            self._pbar.set(done, total)

    def _on_error(self, exc: BaseException) -> None:
        from napari_atagan.slide import Stopped

        if isinstance(exc, Stopped):
            notify_info("Attention computation stopped.")
            if self._live.alive:
                self.status.setText("stopped")
        else:
            notify_error(f"Attention failed: {error_text(exc)}")

    def _on_finished(self) -> None:
        self.worker = None
        self._pbar = None
        if self._live.alive:
            self.run_button.setEnabled(True)
            self.stop_button.setEnabled(False)

    def _on_result(self, result: AttentionResult, amap: np.ndarray, labels: np.ndarray,
                   step: int) -> None:
        if not self._live.alive:
            return
        result.attention = amap
        self.results = [r for r in self.results if r.source_name != result.source_name]
        self.results.append(result)
        top = float(np.max(amap)) if amap.size else 1.0
        put_image(self.viewer, attention_name(result.source_name), amap, colormap="inferno",
                  blending="additive", opacity=0.5, contrast_limits=(0.0, max(top, 1e-6)),
                  scale=result.scale, translate=result.translate,
                  metadata=self._metadata(result, step))
        self._show_labels(result, labels, self.threshold(), int(self.min_size.value), step)
        n = int(labels.max()) if labels.size else 0
        self.status.setText(f"'{result.source_name}'{channel_text(result.channel)}: {n} cells "
                            f"(attention 0 .. {top:.3g})")

    def _metadata(self, result: AttentionResult, step: int | None = None) -> dict[str, Any]:
        meta = {
            "source_layer": result.source_name,
            "checkpoint": str(result.checkpoint),
            "cell_diameter": result.cell_diameter,
            "software": f"napari-atagan {__version__}",
        }
        if step is not None:
            meta["checkpoint_step"] = int(step)
        meta.update(result.channel)
        return meta

    def _show_labels(self, result: AttentionResult, labels: np.ndarray,
                     threshold: str | float, min_size: int, step: int | None = None) -> None:
        name = cells_name(result.source_name)
        meta = self._metadata(result, step)
        old = self.viewer.layers[name].metadata if name in self.viewer.layers else {}
        if step is None and "checkpoint_step" in old:
            meta["checkpoint_step"] = old["checkpoint_step"]
        meta.update(threshold=threshold, min_size=int(min_size), outline=self.outline_choice())
        put_labels(self.viewer, name, labels, scale=result.scale, translate=result.translate,
                   metadata=meta)

    # ------------------------------------------------------------------ re-labelling
    def _schedule_relabel(self, *_: Any) -> None:
        if self.results:
            self._relabel_timer.start()

    def current_result(self) -> AttentionResult | None:
        """The result of the image chosen in the form, else the latest one."""
        layer = self.image_layer.value
        for r in self.results:
            if layer is not None and r.source == layer:
                return r
        return self.results[-1] if self.results else None

    def relabel(self) -> None:
        """Re-threshold the kept map with the current threshold and minimum size."""
        result = self.current_result()
        if result is None:
            return
        if self.relabel_worker is not None:
            self._relabel_again = True
            return
        threshold, min_size = self.threshold(), int(self.min_size.value)
        worker = run_function(label_cells, result.attention, result.image,
                              outline=self.outline_choice(), threshold=threshold,
                              min_size=min_size, cell_diameter=result.cell_diameter)
        worker.returned.connect(
            lambda labels: self._live.alive and self._show_labels(result, labels, threshold,
                                                                  min_size))
        worker.errored.connect(lambda exc: notify_error(f"Labelling failed: {error_text(exc)}"))
        worker.finished.connect(self._on_relabel_finished)
        self.relabel_worker = worker
        worker.start()

    def _on_relabel_finished(self) -> None:
        self.relabel_worker = None
        if self._relabel_again and self._live.alive:
            self._relabel_again = False
            self.relabel()
