"""napari writer: Labels layers as ImageJ-compatible TIFF files that keep their metadata.

napari's own TIFF writer drops a layer's ``metadata``; this one stores it (for
example the checkpoint, cell diameter, threshold and minimum size that the
*Attention* widget records) as JSON inside the file, next to the layer's name,
scale and translate. Read it back with
:func:`napari_atagan.export.read_tiff_metadata`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_atagan.export import save_labels_tiff

TIFF_SUFFIXES = (".tif", ".tiff")


def labels_metadata(attributes: dict[str, Any]) -> dict[str, Any]:
    """What goes into the file: the layer's metadata plus its name, scale and translate."""
    meta = dict(attributes.get("metadata") or {})
    for key in ("name", "scale", "translate"):
        if attributes.get(key) is not None:
            meta.setdefault(f"layer_{key}", _plain(attributes[key]))
    return meta


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one Labels layer to ``path`` (``.tif`` is added when the suffix is missing).

    Labels are stored as ``uint16`` ImageJ TIFF (``uint32`` standard TIFF beyond
    65,535 cells). Returns the list with the written path, as napari expects.
    """
    target = Path(path)
    if target.suffix.lower() not in TIFF_SUFFIXES:
        target = target.with_name(target.name + ".tif")
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    labels = np.asarray(data)
    written = save_labels_tiff(target, labels, metadata=labels_metadata(attributes))
    return [str(written)]


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
