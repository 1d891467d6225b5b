"""Memory-mapped arrays: scratch files for results too big for memory, and handing
the pages a process touched back to the system."""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

SCRATCH_PIXELS = 1 << 27
"""Results above this many pixels go to a scratch file (:func:`scratch_array`)."""


class StackPlane:
    """Plane ``t`` of a ``(T, Y, X)`` stack, read lazily: slicing reads only that region
    of that plane. Names the stack as its ``base_array`` (see :func:`release_pages`)."""

    def __init__(self, stack: Any, t: int) -> None:
        self._stack, self._t = stack, t
        self.base_array = getattr(stack, "base_array", stack)
        self.shape = tuple(int(s) for s in stack.shape[1:])
        self.dtype = np.dtype(stack.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self._stack[(self._t, *key)])


def release_pages(array: Any) -> None:
    """Drop the touched pages of a memory-mapped array from this process's memory.

    Reading a ``numpy.memmap`` (or a ``tifffile.memmap``) piece by piece, or
    writing into one, would otherwise keep every page that was touched resident
    until the end. The data stays in the file (written pages included: the
    mapping is shared) and is mapped in again on the next access. A lazy view
    (a plane of a stack, a colour slide read as grey) names its array as
    ``base_array``. Anything that is not a shared file mapping is left alone;
    above all copy-on-write maps (mode ``"c"``), whose changes live only in
    these pages and would be lost.
    """
    array = getattr(array, "base_array", array)
    handle = getattr(array, "_mmap", None)
    if handle is None or getattr(array, "mode", "c") not in ("r", "r+", "w+"):
        return
    if not hasattr(mmap, "MADV_DONTNEED") or not hasattr(handle, "madvise"):
        return
    try:
        handle.madvise(mmap.MADV_DONTNEED)
    except (OSError, ValueError):
        pass


class ScratchFolder:
    """A private scratch folder in ``out_dir`` for maps too big for memory,
    named by the process so that a later run can tell a killed run's leftovers."""

    def __init__(self, out_dir: Path) -> None:
        import tempfile

        self._dir = tempfile.TemporaryDirectory(dir=out_dir, prefix=f".scratch-{os.getpid()}-")

    def __enter__(self) -> Path:
        return Path(self._dir.name)

    def __exit__(self, *exc: Any) -> None:
        self._dir.cleanup()


def remove_stale_scratch(out_dir: Path) -> None:
    """Remove the scratch folders that killed processes left in ``out_dir``."""
    import shutil

    from ._atomic import _alive

    for d in out_dir.glob(".scratch-*-*"):
        pid = d.name.split("-")[1]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def scratch_array(shape: tuple[int, ...], scratch: Path, name: str, dtype: Any, *,
                  above: int = SCRATCH_PIXELS) -> np.ndarray | None:
    """A file-backed memmap in ``scratch`` for a result of more than ``above`` pixels;
    ``None`` lets the engine allocate a smaller one (in page-locked memory on CUDA,
    which the GPU fills fastest)."""
    if math.prod(shape) <= above:
        return None
    return np.lib.format.open_memmap(scratch / name, mode="w+", dtype=dtype, shape=shape)
