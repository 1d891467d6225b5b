"""The *Attention* dock widget: where does a trained discriminator see cells on a slide?

It runs :func:`napari_atagan.slides.attention.slide_attention` (or ``slide_attention_stack``
for a ``(T, Y, X)`` stack) in a background thread, shows the map as a heat-map
overlay on the slide and turns it into a Labels layer of cells with
:func:`napari_atagan.slides.segment.label_cells`: the map (averaged with a model-free
blob map) finds the cells and the image outlines them (or, by choice, the map alone). Changing the threshold,
the outline or the minimum size only re-labels the kept map; the discriminator
is not run again.
An RGB layer is read through its stained channel
(:func:`napari_atagan.channels.pick_stain_channel`); the status line and the
result layers' metadata say which.

Every labelling is measured, in the same background thread, into a cell table
(:func:`napari_atagan.slides.cells.cell_table`): it becomes the Labels layer's
``features`` (hovering a cell shows its row; an ``index`` column holds the
cell's label, which is how napari finds a label's row) and its summary (the
slide's pattern and confidence) goes on the status line. When the checkpoint
knows staining patterns the cells can be coloured by their predicted pattern.
"Run on all image layers" runs the same computation over every image layer of
the viewer in turn (skipping the attention overlays this widget made).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QWidget

from napari_atagan import __version__
from napari_atagan.slides.labels import DEFAULT_MIN_SIZE
from napari_atagan.slides.segment import label_cells

from ._common import (
    Liveness,
    ProgressBar,
    Relay,
    channel_text,
    checkpoint_edit,
    device_combo,
    dock_layout,
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
FIND_BOTH = "attention + blob map"
FIND_ATTENTION = "attention"
FIND_BLOB = "blob map (no model)"
_FINDS = {FIND_BOTH: "both", FIND_ATTENTION: "attention", FIND_BLOB: "blob"}
CUT_AUTO = "auto (from the diameter)"
CUT_FIXED = "fixed fraction"
DEFAULT_DIAMETER = 40.0
PATTERN_COLOURS = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#cc79a7", "#d55e00",
                   "#0072b2", "#ffffff", "#a6761d", "#999999")
"""One colour per pattern, in the order of the checkpoint's patterns: Okabe-Ito
(colour-blind safe), its dark blue after the first six since it is dim on a dark
slide; they repeat after ten patterns."""
COLOUR_TOOLTIP = ("Colour every cell by its predicted staining pattern (one colour per "
                  "pattern; the legend below says which). Off: napari's usual colour per cell.")


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
    model: Any = None
    """The loaded checkpoint that names the cells' patterns when re-labelling (the
    checkpoint itself, or the run chosen under "patterns from")."""
    table: Any = None
    """The :class:`napari_atagan.slides.cells.CellTable` of the latest labelling."""
    top: float = 1.0
    """The map's largest value."""
    background: str = "flatten"
    """What was done with the slide's background (:mod:`napari_atagan.slides.background`)."""
    patterns_from: Path | None = None
    """The run whose classifier names the cells' patterns (None: the checkpoint's own)."""
    told: dict = field(default_factory=dict)
    """What the labelling said of the cells it outlined: ``"cut"``, the fraction used."""
    flat: Any = None
    """The slide as the map saw it (its background taken away unless ``background`` is
    ``"none"``): what outlines the cells when re-labelling."""


def label_and_measure(amap: np.ndarray, image: Any, flat: Any, checkpoint: Any, *,
                      outline: str, threshold: str | float, min_size: int,
                      cell_diameter: float, device: str, cut: str | float = "auto",
                      info: dict | None = None, find: str = "both") -> tuple[np.ndarray, Any]:
    """Cell labels of a kept map and their cell table (runs in the worker thread).

    The cells are outlined on ``flat``, the slide as the map saw it
    (:func:`napari_atagan.slides.background.flatten_background`); the table measures
    ``image``, the slide as it is. ``cut``, ``info`` (which receives the cut used) and
    ``find``: as :func:`napari_atagan.slides.segment.label_cells` takes them.
    """
    from napari_atagan.slides.cells import cell_table
    from napari_atagan.device import resolve_device

    labels = label_cells(amap, flat, outline=outline, threshold=threshold, min_size=min_size,
                         cell_diameter=cell_diameter, cut=cut, info=info, find=find)
    table = cell_table(labels, image, amap, checkpoint=checkpoint, cell_diameter=cell_diameter,
                       device=str(resolve_device(device)))
    return labels, table


def compute_attention(checkpoint: Path, image: Any, cell_diameter: float, device: str,
                      threshold: str | float, min_size: int, stop: threading.Event,
                      progress_cb: Any, outline: str = "image", background: str = "flatten",
                      patterns_from: Path | None = None, cut: str | float = "auto",
                      info: dict | None = None, find: str = "both"
                      ) -> tuple[np.ndarray, np.ndarray, Any, Any, Any, Any]:
    """Map, labels and cell table of a slide or a ``(T, Y, X)`` stack (worker thread).

    Returns the map, the labels, their :class:`~napari_atagan.slides.cells.CellTable`,
    the loaded checkpoint, the slide as the map saw it (flattened once here, kept
    for re-labelling) and the checkpoint that names the cells' patterns: the run of
    ``patterns_from`` (one with a classifier teacher) or the checkpoint itself.
    """
    from napari_atagan.checkpoint import load_checkpoint
    from napari_atagan.slides.archive import pattern_namer
    from napari_atagan.slides.attention import slide_attention, slide_attention_stack
    from napari_atagan.slides.background import flatten_background

    ckpt = load_checkpoint(checkpoint)
    namer = pattern_namer(patterns_from) if patterns_from is not None else ckpt
    run = slide_attention_stack if len(image.shape) == 3 else slide_attention
    flat = flatten_background(image, cell_diameter, background, stop=stop.is_set)
    amap = run(ckpt, flat, cell_diameter=cell_diameter, device=device, stop=stop.is_set,
               progress=progress_cb)
    labels, table = label_and_measure(amap, image, flat, namer, outline=outline,
                                      threshold=threshold, min_size=min_size,
                                      cell_diameter=cell_diameter, device=device, cut=cut,
                                      info=info, find=find)
    return amap, labels, table, ckpt, flat, namer


def cell_features(table: Any) -> dict[str, np.ndarray]:
    """A cell table as a Labels layer's ``features``: row i is the cell ``label[i]``.

    napari finds a label's row through the ``index`` column (without it, label
    ``k`` would show row ``k``), so it repeats the labels.
    """
    columns = table.as_features()
    return {"index": np.asarray(columns["label"]), **columns}


def pattern_colours(patterns: list[str]) -> dict[str, str]:
    """The colour of each pattern (hex), fixed by its place among the checkpoint's patterns."""
    return {name: PATTERN_COLOURS[i % len(PATTERN_COLOURS)] for i, name in enumerate(patterns)}


def pattern_colormap(table: Any) -> DirectLabelColormap:
    """Every cell in the colour of its predicted pattern; background and others transparent."""
    colours = pattern_colours(table.patterns)
    color_dict: dict[int | None, str] = {None: "transparent", 0: "transparent"}
    for label, name in zip(table.columns["label"].tolist(), table.columns["pattern"]):
        color_dict[int(label)] = colours[name]
    return DirectLabelColormap(color_dict=color_dict)


def is_attention_overlay(layer: Any) -> bool:
    """Whether ``layer`` is an attention map this widget made (not a slide to run on)."""
    source = layer.metadata.get("source_layer") if isinstance(layer.metadata, dict) else None
    return source is not None and layer.name == attention_name(source)


def summary_text(result: AttentionResult) -> str:
    """``"'slide': 42 cells · slide pattern Homogeneous (0.71, classifier teacher) ..."``."""
    summary = result.table.summary()
    text = f"'{result.source_name}'{channel_text(result.channel)}: {summary['cells']} cells"
    if summary["pattern"]:
        text += (f" · slide pattern {summary['pattern']} ({summary['confidence']:.2f}, "
                 f"{summary['pattern_source']})")
    cut = result.told.get("cut")
    if isinstance(cut, float):  # one plane outlined by the image (a stack has one per plane)
        text += f" · edge cut {cut:g}"
    return text + f" · attention 0 .. {result.top:.3g}"


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
        self._batch: list[Any] = []
        """Image layers still to run (after the one running now)."""
        self._batch_size = 0
        self._batch_done = 0
        self._batch_ok = 0
        self._batch_lines: list[str] = []
        self._batch_args: dict[str, Any] = {}
        self._plain_colormaps: dict[str, Any] = {}
        """The per-cell colormap of each Labels layer coloured by pattern (by layer name)."""
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
        self.run_all_button = push_button(
            "Run on all image layers", self.run_all,
            "Compute attention and cells of every image layer of the viewer in turn "
            "(each gets its own attention and cells layers; Stop stops them all).")
        self.stop_button = push_button("Stop", self.stop, enabled=False)
        self.status = status_label()
        self.legend = QLabel()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        self.legend.setToolTip("The colour of each pattern (and its number of cells).")
        self.legend.setVisible(False)
        dock_layout(self, self.form.native,
                    [self.run_button, self.run_all_button, self.stop_button],
                    self.status, self.legend)
        self._update_threshold_mode()
        self._check_checkpoint()

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
            tooltip="image: a map finds the cells (find cells in: by default the attention "
                    "averaged with a model-free blob map) and the image's own edges outline "
                    "them (touching cells split where they narrow). map: cells cut from the "
                    "attention map alone.")
        self.find = ComboBox(
            label="find cells in", choices=list(_FINDS), value=FIND_BOTH,
            tooltip="The map that finds and seeds the cells the image outlines. attention + "
                    "blob map: the model's attention averaged with a model-free blob "
                    "detector (default). attention: the model's map alone. blob map (no "
                    "model): the blob detector alone, which found cells best on slides of a "
                    "pattern the model never saw and on sparse nuclei; the attention layer "
                    "is still shown.")
        self.cut_mode = ComboBox(
            label="edge cut", choices=[CUT_AUTO, CUT_FIXED], value=CUT_AUTO,
            tooltip="Where each cell's edge is cut, as a fraction of the way from the "
                    "background to the cell's own level (outline by the image). auto: "
                    "between 0.25 and 0.5, so that the cells' median diameter comes "
                    "closest to the cell diameter above: cells come out as wide as you "
                    "measure them (whole cells or nuclei).")
        self.cut_value = FloatSpinBox(
            label="cut fraction", value=0.35, min=0.05, max=0.95, step=0.05, enabled=False,
            tooltip="The fixed fraction: higher cuts each cell tighter.")
        self.min_size = SpinBox(
            label="min size", value=DEFAULT_MIN_SIZE, min=0, max=10**9, step=10,
            tooltip="Objects smaller than this many pixels are dropped (and always those "
                    "under 0.4 of the area of a cell of the given diameter).")
        self.device = device_combo()
        self.colour_by_pattern = CheckBox(text="colour cells by pattern", value=False,
                                          tooltip=COLOUR_TOOLTIP)
        self.patterns_from = FileEdit(
            label="patterns from", mode="r", filter="*.safetensors", nullable=True, value=None,
            tooltip="Optional: a run trained with the classifier teacher, whose classifier "
                    "names the cells' patterns instead of the checkpoint's own (a model "
                    "trained with the mask teacher finds cells best but names patterns "
                    "poorly). Takes effect on the next run.")
        self.flatten = CheckBox(
            text="flatten background", value=True,
            tooltip="Take away the slide's slowly varying background (uneven illumination, "
                    "vignetting, haze) before looking for cells. Takes effect on the next run.")
        self.form = Container(widgets=[
            self.image_layer, self.checkpoint, self.cell_diameter, self.estimate_button,
            self.threshold_mode, self.threshold_value, self.outline, self.find, self.cut_mode,
            self.cut_value, self.min_size, self.device,
            self.flatten, self.patterns_from, self.colour_by_pattern,
        ])
        self.estimate_button.changed.connect(self.estimate_diameter)
        self.threshold_mode.changed.connect(self._update_threshold_mode)
        self.threshold_mode.changed.connect(self._schedule_relabel)
        self.threshold_value.changed.connect(self._schedule_relabel)
        self.min_size.changed.connect(self._schedule_relabel)
        self.outline.changed.connect(self._update_outline)
        self.outline.changed.connect(self._schedule_relabel)
        self.find.changed.connect(self._schedule_relabel)
        self.cut_mode.changed.connect(self._update_cut_mode)
        self.cut_mode.changed.connect(self._schedule_relabel)
        self.cut_value.changed.connect(self._schedule_relabel)
        self.checkpoint.changed.connect(self._check_checkpoint)
        self.colour_by_pattern.changed.connect(self._recolour)

    def reset_choices(self, *_: Any) -> None:
        """Refresh the layer drop-down (napari calls this when layers change)."""
        self.form.reset_choices()

    def _update_threshold_mode(self, *_: Any) -> None:
        self.threshold_value.enabled = self.threshold_mode.value == FIXED

    def threshold(self) -> str | float:
        """``"local"``, ``"otsu"`` or the fixed value, as :func:`attention_to_labels` takes it."""
        mode = _MODES.get(self.threshold_mode.value)
        return mode if mode is not None else float(self.threshold_value.value)

    def _update_cut_mode(self, *_: Any) -> None:
        self.cut_value.enabled = self.cut_mode.value == CUT_FIXED

    def cut(self) -> str | float:
        """``"auto"`` or the fixed fraction, as :func:`napari_atagan.slides.segment.label_cells`
        takes it."""
        return "auto" if self.cut_mode.value == CUT_AUTO else float(self.cut_value.value)

    def outline_choice(self) -> str:
        """``"image"`` or ``"map"``, as :func:`napari_atagan.slides.segment.label_cells` takes it."""
        return _OUTLINES[self.outline.value]

    def _update_outline(self, *_: Any) -> None:
        self.find.enabled = self.outline_choice() == "image"  # the map's outline is its own

    def find_choice(self) -> str:
        """``"both"``, ``"attention"`` or ``"blob"``, as
        :func:`napari_atagan.slides.segment.label_cells` takes it (``"both"`` while the
        map outlines the cells: then the choice is greyed out and does not apply)."""
        return _FINDS[self.find.value] if self.outline_choice() == "image" else "both"

    def _check_checkpoint(self, *_: Any) -> None:
        loaded = read_checkpoint(self.checkpoint.value, self.status)
        if loaded is not None:
            path, ckpt = loaded
            self.status.setText(
                f"model: {path.name} ({ckpt.config.image_size} px, step {ckpt.step})")
            self._allow_patterns(
                len(ckpt.class_names) >= 2,
                f"{path.name} knows no staining patterns (it was trained without pattern "
                "labels), so its cells cannot be coloured by pattern.")

    def _allow_patterns(self, allowed: bool, why: str = "") -> None:
        """Enable "colour cells by pattern", or switch it off and disable it saying ``why``."""
        box = self.colour_by_pattern
        if allowed:
            box.enabled = True
            box.tooltip = COLOUR_TOOLTIP
            return
        box.tooltip = why
        if box.value:
            box.value = False  # back to per-cell colours
        box.enabled = False

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
        from napari_atagan.slides.attention import estimate_cell_diameter

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
        self._run_layers([layer])

    def run_all(self) -> None:
        """Compute the attention map of every image layer of the viewer, one after another."""
        if self.worker is not None:
            return
        layers = []
        for layer in layers_of(self.viewer, Image):
            if is_attention_overlay(layer):
                continue
            try:
                check_image_layer(layer)
            except ValueError as exc:
                notify_info(f"skipped: {error_text(exc)}")
                continue
            layers.append(layer)
        if not layers:
            notify_error("there is no image layer to run on (a 2-D slide or a (T, Y, X) stack)")
            return
        self._run_layers(layers)

    def _run_layers(self, layers: list[Any]) -> None:
        """Start the computation of ``layers`` in turn, with the form's settings of now."""
        checkpoint = file_value(self.checkpoint.value)
        if checkpoint is None:
            notify_error("choose a checkpoint (.safetensors)")
            return
        patterns_from = file_value(self.patterns_from.value)
        if patterns_from is not None:
            from napari_atagan.slides.archive import pattern_namer

            try:  # once for the batch, not once per layer (the layers' runs reuse it)
                pattern_namer(patterns_from)
            except (ValueError, OSError) as exc:
                notify_error(f"patterns from: {error_text(exc)}")
                return
        self._batch_args = dict(checkpoint=checkpoint, diameter=float(self.cell_diameter.value),
                                device=self.device.value, threshold=self.threshold(),
                                min_size=int(self.min_size.value), outline=self.outline_choice(),
                                find=self.find_choice(), cut=self.cut(),
                                background="flatten" if self.flatten.value else "none",
                                patterns_from=patterns_from)
        self._batch = list(layers)
        self._batch_size, self._batch_done, self._batch_ok = len(layers), 0, 0
        self._batch_lines = []
        self._live.stop.clear()
        if len(layers) == 1:  # the bar goes over the tiles of the one layer
            self._pbar = ProgressBar(0, f"ATA-GAN attention: {layers[0].name}")
        else:  # over the layers
            self._pbar = ProgressBar(len(layers), f"ATA-GAN attention: {len(layers)} image layers")
        self.run_button.setEnabled(False)
        self.run_all_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self._start_next()

    def _start_next(self) -> None:
        """Start the worker of the next layer of the batch (or end the batch)."""
        args = self._batch_args
        while self._batch:
            layer = self._batch.pop(0)
            try:
                image, channel = layer_slide(layer)
            except ValueError as exc:
                notify_error(f"Attention failed on '{layer.name}': {error_text(exc)}")
                self._layer_done()
                continue
            if channel:
                from napari_atagan.channels import describe_channel

                notify_info(f"'{layer.name}' is RGB: using its {describe_channel(channel)}")
            told: dict[str, Any] = {}  # the cut used, filled in by the worker
            worker = run_function(compute_attention, args["checkpoint"], image, args["diameter"],
                                  args["device"], args["threshold"], args["min_size"],
                                  self._live.stop, self._relay.callback, args["outline"],
                                  args["background"], args["patterns_from"], args["cut"], told,
                                  args["find"])
            result = AttentionResult(source=layer, source_name=layer.name,
                                     attention=np.zeros(0, np.float32),
                                     checkpoint=args["checkpoint"],
                                     cell_diameter=args["diameter"], scale=tuple(layer.scale),
                                     translate=tuple(layer.translate), channel=channel,
                                     image=image, background=args["background"],
                                     patterns_from=args["patterns_from"], told=told)
            worker.returned.connect(lambda out, result=result: self._on_result(result, *out))
            worker.errored.connect(lambda exc, name=layer.name: self._on_error(exc, name))
            worker.finished.connect(self._on_finished)
            self.worker = worker
            where = (f" ({self._batch_done + 1} of {self._batch_size})"
                     if self._batch_size > 1 else "")
            self.status.setText(f"computing attention on '{layer.name}'{channel_text(channel)}"
                                f"{where} ...")
            worker.start()
            return
        self._end_batch()

    def stop(self) -> None:
        """Abort the running computation (between tiles) and the layers still to run."""
        if self.worker is not None:
            self._live.stop.set()
            self._batch = []
            self.stop_button.setEnabled(False)
            self.status.setText("stopping ...")

    def _on_progress(self, done: int, total: int) -> None:
        if self._pbar is not None and self._batch_size == 1:
            self._pbar.set(done, total)

    def _on_error(self, exc: BaseException, name: str = "") -> None:
        from napari_atagan.events import Stopped

        if isinstance(exc, Stopped):
            notify_info("Attention computation stopped.")
            if self._live.alive:
                self.status.setText("stopped")
        else:
            where = f" on '{name}'" if name else ""
            notify_error(f"Attention failed{where}: {error_text(exc)}")
            self._batch_lines.append(f"'{name}': failed")

    def _layer_done(self) -> None:
        self._batch_done += 1
        if self._pbar is not None and self._batch_size > 1:
            self._pbar.set(self._batch_done)

    def _on_finished(self) -> None:
        self.worker = None
        self._layer_done()
        if self._batch and self._live.alive and not self._live.stop.is_set():
            self._start_next()
        else:
            self._end_batch()

    def _end_batch(self) -> None:
        self._batch = []
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not self._live.alive:
            return
        self.run_button.setEnabled(True)
        self.run_all_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self._batch_size > 1:
            if self._live.stop.is_set():
                self.status.setText(f"stopped ({self._batch_ok} of {self._batch_size} "
                                    "image layers done)")
            else:
                self.status.setText(f"{self._batch_size} image layers: "
                                    + "; ".join(self._batch_lines))

    def _on_result(self, result: AttentionResult, amap: np.ndarray, labels: np.ndarray,
                   table: Any, ckpt: Any, flat: Any, namer: Any) -> None:
        if not self._live.alive:
            return
        result.attention, result.table, result.model, result.flat = amap, table, namer, flat
        result.top = float(np.max(amap)) if amap.size else 1.0
        self.results = [r for r in self.results if r.source_name != result.source_name]
        self.results.append(result)
        put_image(self.viewer, attention_name(result.source_name), amap, colormap="inferno",
                  blending="additive", opacity=0.5, contrast_limits=(0.0, max(result.top, 1e-6)),
                  scale=result.scale, translate=result.translate,
                  metadata=self._metadata(result, ckpt.step))
        args = self._batch_args
        self._show_labels(result, labels, args["threshold"], args["min_size"], args["outline"],
                          ckpt.step, cut=args["cut"], find=args["find"])
        if len(table) and not table.patterns:
            self._allow_patterns(False, f"{result.checkpoint.name} names no patterns (it "
                                        "keeps neither a pattern classifier nor a pattern "
                                        "head), so its cells cannot be coloured by pattern.")
        line = summary_text(result)
        self._batch_ok += 1
        self._batch_lines.append(line)
        self.status.setText(line)

    def _metadata(self, result: AttentionResult, step: int | None = None) -> dict[str, Any]:
        meta = {
            "source_layer": result.source_name,
            "checkpoint": str(result.checkpoint),
            "cell_diameter": result.cell_diameter,
            "background": result.background,
            "software": f"napari-atagan {__version__}",
        }
        if step is not None:
            meta["checkpoint_step"] = int(step)
        if result.patterns_from is not None:
            meta["patterns_from"] = str(result.patterns_from)
        meta.update(result.channel)
        return meta

    def _show_labels(self, result: AttentionResult, labels: np.ndarray,
                     threshold: str | float, min_size: int, outline: str,
                     step: int | None = None, cut: str | float = "auto",
                     find: str = "both") -> None:
        name = cells_name(result.source_name)
        meta = self._metadata(result, step)
        old = self.viewer.layers[name].metadata if name in self.viewer.layers else {}
        if step is None and "checkpoint_step" in old:
            meta["checkpoint_step"] = old["checkpoint_step"]
        meta.update(threshold=threshold, min_size=int(min_size), outline=outline)
        if outline == "image":  # the map's own outline has no cut, and finds its own cells
            meta.update(find=find, cut=cut, cut_used=result.told.get("cut"))
        layer = put_labels(self.viewer, name, labels, scale=result.scale,
                           translate=result.translate, metadata=meta,
                           features=cell_features(result.table))
        self._colour(result, layer)
        self._show_legend()

    # ------------------------------------------------------------------ colours
    def _recolour(self, *_: Any) -> None:
        """Colour the cells layers by pattern, or back to per-cell colours."""
        for result in self.results:
            layer = layer_named(self.viewer, cells_name(result.source_name))
            if isinstance(layer, Labels):
                self._colour(result, layer)
        self._show_legend()

    def _colour(self, result: AttentionResult, layer: Any) -> None:
        name = layer.name
        table = result.table
        if (self.colour_by_pattern.value and self.colour_by_pattern.enabled
                and table is not None and table.patterns):
            self._plain_colormaps.setdefault(name, layer.colormap)
            layer.colormap = pattern_colormap(table)
        elif name in self._plain_colormaps:  # coloured by pattern: back to what it was
            layer.colormap = self._plain_colormaps.pop(name)

    def _show_legend(self) -> None:
        """The pattern → colour legend (with cells per pattern) while colouring by pattern."""
        if not (self.colour_by_pattern.value and self.colour_by_pattern.enabled):
            self.legend.setVisible(False)
            return
        result = self.current_result()
        table = result.table if result is not None else None
        if table is None or not table.patterns:
            text = ("compute attention to colour the cells by pattern" if result is None
                    else f"'{result.source_name}': no cells to colour")
        else:
            names, counts = np.unique(np.asarray(table.columns["pattern"], dtype=str),
                                      return_counts=True)
            count = dict(zip(names.tolist(), counts.tolist()))
            text = " &nbsp; ".join(
                f'<span style="color:{colour}">&#9632;</span>&nbsp;{name}&nbsp;'
                f'({count.get(name, 0)})'
                for name, colour in pattern_colours(table.patterns).items())
        self.legend.setText(text)
        self.legend.setVisible(True)

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
        threshold, min_size, outline = self.threshold(), int(self.min_size.value), \
            self.outline_choice()
        cut, told, find = self.cut(), {}, self.find_choice()
        worker = run_function(label_and_measure, result.attention, result.image, result.flat,
                              result.model,
                              outline=outline, threshold=threshold, min_size=min_size,
                              cell_diameter=result.cell_diameter, device=self.device.value,
                              cut=cut, info=told, find=find)
        worker.returned.connect(
            lambda out: self._on_relabelled(result, *out, threshold, min_size, outline, cut,
                                            told, find))
        worker.errored.connect(lambda exc: notify_error(f"Labelling failed: {error_text(exc)}"))
        worker.finished.connect(self._on_relabel_finished)
        self.relabel_worker = worker
        worker.start()

    def _on_relabelled(self, result: AttentionResult, labels: np.ndarray, table: Any,
                       threshold: str | float, min_size: int, outline: str,
                       cut: str | float = "auto", told: dict | None = None,
                       find: str = "both") -> None:
        if not self._live.alive:
            return
        result.table, result.told = table, dict(told or {})
        self._show_labels(result, labels, threshold, min_size, outline, cut=cut, find=find)
        self.status.setText(summary_text(result))

    def _on_relabel_finished(self) -> None:
        self.relabel_worker = None
        if self._relabel_again and self._live.alive:
            self._relabel_again = False
            self.relabel()
