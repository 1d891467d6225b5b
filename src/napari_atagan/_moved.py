"""Module paths from before the package was arranged by capability.

``import napari_atagan.slide`` still works and gives
``napari_atagan.slides.attention`` itself (the same module object, so patching one
patches the other), with a ``DeprecationWarning`` naming the new path. README,
*Layout*, lists every move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED = {
    "config": "gan.config", "models": "gan.models", "attention": "gan.attention",
    "augment": "gan.augment", "training": "gan.training", "synthesis": "gan.synthesis",
    "slide": "slides.attention", "labels": "slides.labels", "segment": "slides.segment",
    "cells": "slides.cells", "archive": "slides.archive",
    "evaluate": "evaluation.evaluate", "mosaic": "evaluation.mosaic",
    "cli_attention": "cli.attention", "cli_evaluate": "cli.evaluate",
    "_cli_common": "cli.common",
}
"""Old module (under ``napari_atagan``) -> where it lives now."""

_PACKAGE = __name__.rpartition(".")[0]


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path, target=None):
        package, _, old = fullname.rpartition(".")
        if package != _PACKAGE or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        new = f"{_PACKAGE}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there",
                      DeprecationWarning, stacklevel=4)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module already ran under its new name."""


def install() -> None:
    """Let the old module paths import (once per interpreter)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
