"""Memory-mapped arrays: handing the pages a process touched back to the system."""

from __future__ import annotations

import mmap
from typing import Any


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
