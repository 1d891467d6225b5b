"""Names a package offers, imported on first use.

A package ``__init__`` lists which of its modules defines each public name;
``import napari_atagan.slides.labels`` then costs only that module, while
``from napari_atagan.slides import run_archive`` still works.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], namespace: Mapping[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public
    name to the submodule (relative to ``package``) that defines it; ``namespace`` is
    the package's ``globals()``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(namespace))

    return __getattr__, __dir__
