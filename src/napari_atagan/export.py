"""Saving attention maps and cell labels as TIFF files that ImageJ/Fiji opens.

* Labels: ``uint16`` ImageJ TIFF (each cell one integer id, 0 = background).
  A label image with more than 65,535 cells is ``uint32``, which the ImageJ
  TIFF flavour cannot hold; it is written as a standard TIFF instead (Fiji opens
  it through Bio-Formats).
* Attention maps: ``float32`` ImageJ TIFF.
* Images (e.g. a translated slide): their own dtype, ImageJ where the flavour
  holds it (uint8, uint16, int16, float32), a standard TIFF otherwise.

Both carry a JSON description of how they were made (checkpoint file, its format
version, cell diameter, threshold, minimum size, software version, ...): in the
ImageJ ``Info`` property (Fiji: *Image > Show Info*) of ImageJ files, in the TIFF
image description otherwise. :func:`read_tiff_metadata` reads it back.

Files are written atomically: to a temporary file in the same folder, then
renamed over the target, so a crash never leaves a half-written TIFF behind.
Large images (more than :data:`STREAM_BYTES`, e.g. memory-mapped results of a
whole slide) are copied into the file band by band, and the pages of both the
source and the file are handed back to the system after each band, so writing
a 20,000 x 20,000 map needs tens of megabytes, not gigabytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from . import __version__
from ._atomic import atomic_target
from ._memmap import release_pages

_IMAGEJ_MAX_BYTES = 2**32 - 2**25
"""Classic (non-Big) TIFF, which ImageJ needs, stops at 4 GB; keep a margin for headers."""
STREAM_BYTES = 2**28
"""Images larger than this (256 MB) are written band by band."""
_BAND_BYTES = 2**25
_IMAGEJ_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32))
"""What the ImageJ TIFF flavour holds; other dtypes are written as standard TIFFs."""


def save_labels_tiff(
    path: str | os.PathLike, labels: np.ndarray, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a label image (2-D, or a ``T, Y, X`` stack) and return the path written.

    Integer labels of up to 65,535 cells are stored as ``uint16``; larger ids as
    ``uint32`` (standard TIFF, not the ImageJ flavour).
    """
    labels = labels if isinstance(labels, np.memmap) else np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    low, top = _range(labels)
    if labels.dtype.kind == "i" and low < 0:
        raise ValueError("labels must not be negative (0 is background, 1..N are cells)")
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    meta = {**(metadata or {}), "kind": "labels", "max_label": top}
    return _write(path, labels, meta, dtype)


def save_attention_tiff(
    path: str | os.PathLike, attention: np.ndarray, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write an attention map (2-D, or a ``T, Y, X`` stack) as ``float32``."""
    attention = attention if isinstance(attention, np.memmap) else np.asarray(attention)
    if attention.dtype.kind not in "biuf":
        raise ValueError(f"attention must be a numeric array, got dtype {attention.dtype}")
    return _write(path, attention, {**(metadata or {}), "kind": "attention"}, np.float32)


def save_image_tiff(
    path: str | os.PathLike, image: np.ndarray, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a grey image (2-D, or a ``T, Y, X`` stack) in its own dtype.

    uint8, uint16, int16 and float32 become ImageJ TIFFs; other numeric dtypes
    (float64, int32, ...) a standard TIFF with the same JSON description.
    """
    image = image if isinstance(image, np.memmap) else np.asarray(image)
    if image.dtype.kind not in "iuf":
        raise ValueError(f"an image must be numeric, got dtype {image.dtype}")
    return _write(path, image, {"kind": "image", **(metadata or {})}, image.dtype)


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


def _write(path: str | os.PathLike, data: np.ndarray, metadata: dict[str, Any],
           dtype: Any) -> Path:
    path = Path(path)
    if data.ndim not in (2, 3) or min(data.shape, default=0) == 0:
        raise ValueError(f"expected a non-empty 2-D image or 3-D stack, got shape {data.shape}")
    if not path.parent.is_dir():
        raise ValueError(f"output folder does not exist: {path.parent}")
    info = json.dumps({"software": f"napari-atagan {__version__}", **metadata},
                      default=_json_default, sort_keys=True)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(data.shape)) * dtype.itemsize
    imagej = dtype in _IMAGEJ_DTYPES and nbytes < _IMAGEJ_MAX_BYTES
    options: dict[str, Any] = (
        {"imagej": True, "metadata": {"axes": "YX" if data.ndim == 2 else "TYX", "Info": info}}
        if imagej else
        {"bigtiff": nbytes >= _IMAGEJ_MAX_BYTES, "description": info, "metadata": None})
    with atomic_target(path) as tmp:
        if nbytes <= STREAM_BYTES:
            tifffile.imwrite(tmp, np.asarray(data).astype(dtype, copy=False), **options)
        else:
            _write_in_bands(tmp, data, dtype, options)
    return path


def _bands(data: np.ndarray):
    """Index tuples of bands of rows (per plane of a stack) of about _BAND_BYTES each."""
    rows = max(1, _BAND_BYTES // max(1, data.shape[-1] * data.dtype.itemsize))
    planes = [()] if data.ndim == 2 else [(t,) for t in range(data.shape[0])]
    for plane in planes:
        for y in range(0, data.shape[-2], rows):
            yield (*plane, slice(y, y + rows))


def _range(data: np.ndarray) -> tuple[int, int]:
    """(min, max) of an integer array, read band by band (0, 0 when empty)."""
    if data.size == 0:
        return 0, 0
    low, top = None, None
    for band in _bands(data):
        part = data[band]
        low = int(part.min()) if low is None else min(low, int(part.min()))
        top = int(part.max()) if top is None else max(top, int(part.max()))
        release_pages(data)
    return low, top


def _write_in_bands(tmp: Path, data: np.ndarray, dtype: np.dtype,
                    options: dict[str, Any]) -> None:
    out = tifffile.memmap(tmp, shape=data.shape, dtype=dtype, **options)
    try:
        for band in _bands(data):
            out[band] = data[band]
            out.flush()
            release_pages(out)
            release_pages(data)
    finally:
        del out


def _json_default(value: Any) -> Any:
    """Make numpy numbers, paths and tuples JSON-friendly."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
