"""Saving a slide's attention map and cell labels as one OME-Zarr store.

A TIFF of a whole slide is one long run of bytes: a viewer has to read all of
it to show a corner, and a 20,000 x 20,000 map has no zoomed-out version to
show first. OME-Zarr (OME-NGFF 0.4, on Zarr v2) stores the image in compressed
tiles with a multiscale pyramid, so napari (napari-ome-zarr), Fiji (Bio-Formats
/ the OME-Zarr reader, MoBIE) and other OME tools open big slides at once and
read only the tiles on screen. One store ``<stem>.ome.zarr`` holds:

* the root image: the attention map, ``float32``, axes ``(y, x)`` or, for a
  stack, ``(t, y, x)``; pyramid levels ``0, 1, ...`` each halve ``y`` and ``x``
  (bilinear, anti-aliased), down to a level that fits a tile (at least four
  levels when the image is big enough);
* ``labels/cells``: the cell labels as an OME-Zarr label image on the same grid
  (each cell one integer id, 0 = background): ``uint16`` for up to 65,535
  cells, ``uint32`` above; pyramid levels by nearest neighbour, so every pixel
  stays a valid id;
* in the root group's attributes, under ``"napari_atagan"``, a JSON description
  of how the results were made (checkpoint file, cell diameter, threshold,
  software version, ...), as in the TIFF files of :mod:`napari_atagan.export`.
  :func:`read_ome_zarr` reads it back.

Writing needs the ``zarr`` extra (``zarr``, ``ome-zarr``, ``dask``); this module
imports them only when it writes or reads. The data are copied tile by tile
(memory-mapped results of a whole slide included, whose pages are handed back
to the system after each tile), so memory stays at a few tiles per thread.

Stores are written atomically: into a temporary folder next to the target, then
moved into place (an existing store is renamed aside first and deleted once the
new one is in), so a store at the target path is always complete. Only an
existing Zarr store is replaced; any other file or folder at the target path is
left alone and reported as an error.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._memmap import release_pages
from .export import _json_default

LABELS_NAME = "cells"
"""Name of the label image inside the store (``labels/cells``)."""
METADATA_KEY = "napari_atagan"
"""Root-group attribute holding the provenance metadata."""

_MISSING = "writing OME-Zarr needs the 'zarr' extra: pip install 'napari-atagan[zarr]'"
_STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
_MIN_LEVELS = 4


def save_ome_zarr(
    path: str | os.PathLike,
    attention: Any,
    labels: Any,
    *,
    metadata: dict[str, Any] | None = None,
    chunk: int = 1024,
) -> Path:
    """Write an attention map and its cell labels as one OME-Zarr store; return its path.

    ``attention`` (numeric) and ``labels`` (integer, non-negative, 0 =
    background) have the same shape: a 2-D ``(Y, X)`` image or a ``(T, Y, X)``
    stack. Both may be numpy arrays, memory maps, dask arrays or lazy
    array-likes (``shape``, ``dtype`` and slicing); they are read tile by tile.
    ``chunk`` is the tile size in ``y`` and ``x`` (one plane deep for a stack).
    ``metadata`` (JSON-friendly values; numpy numbers and paths are converted)
    is stored under the root attribute ``"napari_atagan"`` with ``"software"``
    and ``"max_label"``. An existing Zarr store at ``path`` is replaced.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output folder does not exist: {path.parent}")
    attention = _as_array_like(attention)
    labels = _as_array_like(labels)
    shape = tuple(int(s) for s in attention.shape)
    if tuple(int(s) for s in labels.shape) != shape:
        raise ValueError(
            f"attention and labels must have the same shape, got {shape} and "
            f"{tuple(labels.shape)}")
    if len(shape) not in (2, 3) or min(shape, default=0) == 0:
        raise ValueError(
            f"expected a non-empty 2-D image (Y, X) or 3-D stack (T, Y, X), got shape {shape}")
    if np.dtype(attention.dtype).kind not in "biuf":
        raise ValueError(f"attention must be a numeric array, got dtype {attention.dtype}")
    if np.dtype(labels.dtype).kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if os.path.lexists(path) and not _is_zarr_store(path):
        raise ValueError(
            f"{path} exists and is not a Zarr store; not replacing it (remove it or pick "
            "another name)")
    mods = _modules()
    chunks = (int(chunk),) * 2 if len(shape) == 2 else (1, int(chunk), int(chunk))
    attention_lazy = _lazy(mods, attention, chunks)
    labels_lazy = _lazy(mods, labels, chunks)

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        try:
            low, top = (int(v) for v in mods["dask"].compute(
                labels_lazy.min(), labels_lazy.max(), scheduler="threads", pool=pool))
            if low < 0:
                raise ValueError(
                    "labels must not be negative (0 is background, 1..N are cells), "
                    f"got a minimum of {low}")
            label_dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
            meta = json.loads(json.dumps(
                {**(metadata or {}), "max_label": top, "software": f"napari-atagan {__version__}"},
                default=_json_default))
            _write_store(mods, tmp, attention_lazy.astype(np.float32),
                         labels_lazy.astype(label_dtype), meta, chunk, pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        _move_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_ome_zarr(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(attention, labels, metadata)`` of a store written by :func:`save_ome_zarr`.

    The full-resolution attention map and cell labels are read into memory
    (for a whole slide, open the store lazily with ``zarr`` or ``ome_zarr``
    instead); ``metadata`` is the ``"napari_atagan"`` attribute (``{}`` when
    absent).
    """
    zarr = _modules()["zarr"]
    path = Path(path)
    if not _is_zarr_store(path):
        raise ValueError(f"not a Zarr store: {path}")
    root = zarr.open_group(str(path), mode="r")
    attention = _full_resolution(root, "image")
    try:
        cells = root[f"labels/{LABELS_NAME}"]
    except KeyError:
        raise ValueError(f"{path} has no label image 'labels/{LABELS_NAME}'") from None
    labels = _full_resolution(cells, f"labels/{LABELS_NAME}")
    meta = root.attrs.asdict().get(METADATA_KEY, {})
    return attention, labels, dict(meta) if isinstance(meta, dict) else {}


def read_ome_zarr_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``"napari_atagan"`` metadata of a store, without reading its pixels."""
    zarr = _modules()["zarr"]
    path = Path(path)
    if not _is_zarr_store(path):
        raise ValueError(f"not a Zarr store: {path}")
    meta = zarr.open_group(str(path), mode="r").attrs.asdict().get(METADATA_KEY, {})
    return dict(meta) if isinstance(meta, dict) else {}


def _modules() -> dict[str, Any]:
    try:
        import dask
        import dask.array as da
        import numcodecs
        import zarr

        with warnings.catch_warnings():  # ome_zarr.writer builds a deprecated default
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="ome_zarr")
            import ome_zarr.format
            import ome_zarr.writer
    except ImportError as error:
        raise ImportError(_MISSING) from error
    return {"dask": dask, "da": da, "numcodecs": numcodecs, "format": ome_zarr.format,
            "writer": ome_zarr.writer, "zarr": zarr}


def _as_array_like(data: Any) -> Any:
    """Leave arrays and lazy array-likes unread; turn anything else into an array."""
    if hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__"):
        return data
    return np.asarray(data)


class _Tiles:
    """Array-like that reads a source region by region and hands its pages back."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self.shape = tuple(int(s) for s in source.shape)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        region = np.array(self._source[key])
        release_pages(self._source)
        return region


def _lazy(mods: dict[str, Any], data: Any, chunks: tuple[int, ...]) -> Any:
    da = mods["da"]
    if isinstance(data, da.Array):
        return data.rechunk(chunks)
    return da.from_array(_Tiles(data), chunks=chunks, name=False, asarray=True, fancy=False)


def _scale_factors(shape: tuple[int, ...], chunk: int) -> list[dict[str, int]]:
    """2x pyramid levels: at least four while the image allows, then down to one tile."""
    smallest, largest = min(shape[-2:]), max(shape[-2:])
    factors = []
    k = 1
    while smallest >> k >= 1 and (k <= _MIN_LEVELS or largest >> (k - 1) > chunk):
        factors.append({"y": 2**k, "x": 2**k})
        k += 1
    return factors


def _write_store(mods: dict[str, Any], tmp: Path, attention: Any, labels: Any,
                 meta: dict[str, Any], chunk: int, pool: ThreadPoolExecutor) -> None:
    writer, zarr = mods["writer"], mods["zarr"]
    fmt = mods["format"].FormatV04()
    axes = ["y", "x"] if attention.ndim == 2 else ["t", "y", "x"]
    factors = _scale_factors(attention.shape, chunk)
    blosc = mods["numcodecs"].Blosc
    options = {"compressor": blosc(cname="zstd", clevel=5, shuffle=blosc.SHUFFLE)}
    root = zarr.open_group(str(tmp), mode="w", zarr_format=fmt.zarr_format)
    jobs = writer.write_image(
        attention, root, scale_factors=factors, method="resize", fmt=fmt, axes=axes,
        storage_options=options, compute=False, name="attention")
    jobs += writer.write_labels(
        labels, root, name=LABELS_NAME, scaler=None, scale_factors=factors,
        method="nearest", fmt=fmt, axes=axes, storage_options=options, compute=False,
        label_metadata={"source": {"image": "../../"}})
    if jobs:
        mods["dask"].compute(*jobs, scheduler="threads", pool=pool)
    root.attrs[METADATA_KEY] = meta


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in _STORE_MARKERS)


def _move_into_place(tmp: Path, path: Path) -> None:
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    old = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    if old.is_symlink() or not old.is_dir():
        old.unlink(missing_ok=True)
    else:
        shutil.rmtree(old, ignore_errors=True)


def _full_resolution(group: Any, what: str) -> np.ndarray:
    attrs = group.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError(f"{what} of the store is not an OME-Zarr multiscale image")
    return np.asarray(group[multiscales[0]["datasets"][0]["path"]][...])
