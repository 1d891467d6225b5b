"""Saving attention maps and cell labels as TIFF files that ImageJ/Fiji opens.

* Labels: ``uint16`` ImageJ TIFF (each cell one integer id, 0 = background).
  A label image with more than 65,535 cells is ``uint32``, which the ImageJ
  TIFF flavour cannot hold; it is written as a standard TIFF instead (Fiji opens
  it through Bio-Formats).
* Attention maps: ``float32`` ImageJ TIFF.

Both carry a JSON description of how they were made (checkpoint file, its format
version, cell diameter, threshold, minimum size, software version, ...): in the
ImageJ ``Info`` property (Fiji: *Image > Show Info*) of ImageJ files, in the TIFF
image description otherwise. :func:`read_tiff_metadata` reads it back.

Files are written atomically: to a temporary file in the same folder, then
renamed over the target, so a crash never leaves a half-written TIFF behind.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import __version__

_IMAGEJ_MAX_BYTES = 2**32 - 2**25
"""Classic (non-Big) TIFF, which ImageJ needs, stops at 4 GB; keep a margin for headers."""


def save_labels_tiff(
    path: str | os.PathLike, labels: np.ndarray, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a label image (2-D, or a ``T, Y, X`` stack) and return the path written.

    Integer labels of up to 65,535 cells are stored as ``uint16``; larger ids as
    ``uint32`` (standard TIFF, not the ImageJ flavour).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("labels must not be negative (0 is background, 1..N are cells)")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    meta = {**(metadata or {}), "kind": "labels", "max_label": top}
    return _write(path, labels.astype(dtype, copy=False), meta)


def save_attention_tiff(
    path: str | os.PathLike, attention: np.ndarray, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write an attention map (2-D, or a ``T, Y, X`` stack) as ``float32``."""
    attention = np.asarray(attention)
    if attention.dtype.kind not in "biuf":
        raise ValueError(f"attention must be a numeric array, got dtype {attention.dtype}")
    return _write(path, attention.astype(np.float32, copy=False),
                  {**(metadata or {}), "kind": "attention"})


def read_tiff_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata written by this module (``{}`` for other TIFF files)."""
    with tifffile.TiffFile(path) as tif:
        ij = tif.imagej_metadata or {}
        text = ij.get("Info") or tif.pages.first.description or ""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        return {}
    ours = isinstance(meta, dict) and str(meta.get("software", "")).startswith("napari-atagan")
    return meta if ours else {}


def _write(path: str | os.PathLike, data: np.ndarray, metadata: dict[str, Any]) -> Path:
    path = Path(path)
    if data.ndim not in (2, 3) or min(data.shape, default=0) == 0:
        raise ValueError(f"expected a non-empty 2-D image or 3-D stack, got shape {data.shape}")
    if not path.parent.is_dir():
        raise ValueError(f"output folder does not exist: {path.parent}")
    info = json.dumps({"software": f"napari-atagan {__version__}", **metadata},
                      default=_json_default, sort_keys=True)
    imagej = data.dtype != np.uint32 and data.nbytes < _IMAGEJ_MAX_BYTES
    axes = "YX" if data.ndim == 2 else "TYX"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if imagej:
            tifffile.imwrite(tmp, data, imagej=True, metadata={"axes": axes, "Info": info})
        else:
            tifffile.imwrite(tmp, data, bigtiff=data.nbytes >= _IMAGEJ_MAX_BYTES,
                             description=info, metadata=None)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    """Make numpy numbers, paths and tuples JSON-friendly."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
