"""Atomic file writes: a file at its final name is always complete.

Every output is first written to a hidden temporary sibling
(``.<name>.<pid>.<random>.tmp``) and then renamed over the target, which the
file system does in one step. A crash, a kill or a full disk leaves at most a
temporary file, never a half-written file under the real name; a rerun can
therefore trust any output that exists. :func:`remove_stale_temporaries` tidies
what killed runs left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_target", "remove_stale_temporaries", "write_text_atomically"]

_TMP_SUFFIX = ".tmp"


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside ``path`` for its content while it is written."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one step.

    On any exception (or interruption) the temporary file is removed and the
    exception propagates; ``path`` keeps whatever it held before.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    path = Path(path)
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporary files that killed writers left in ``folder``; their number.

    Only files named by :func:`temporary_sibling` whose writer process is gone
    are removed, so a run writing into the same folder keeps its own.
    """
    removed = 0
    for tmp in Path(folder).glob(f".*{_TMP_SUFFIX}"):
        parts = tmp.name.rsplit(".", 3)  # [".<name>", pid, random, "tmp"]
        if len(parts) != 4 or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
