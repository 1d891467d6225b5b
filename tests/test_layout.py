"""The package's layout: capability folders whose imports run one way."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import napari_atagan

PACKAGE = Path(napari_atagan.__file__).resolve().parent

RANK = {"shared": 0, "gan": 1, "slides": 2, "translate": 3, "evaluation": 4, "front": 5}
"""A module may import modules of its own rank or below, never above."""
FRONT = {"cli", "_widgets", "demo", "_sample_data", "_writer", "__main__"}


def _area(module: str) -> str:
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else ""
    if first in FRONT:
        return "front"
    if first in RANK:
        return first
    return "shared"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Every package module ``path`` imports, at the top or inside a function."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("napari_atagan"):
                out.append(target)
                out += [f"{target}.{a.name}" for a in node.names
                        if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).exists()
                        or (PACKAGE.parent / (f"{target}.{a.name}".replace(".", "/") + ".py")).exists()]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("napari_atagan")]
    return out


def test_imports_run_from_front_ends_to_shared_pieces():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        for target in _imports(path):
            if RANK[_area(target)] > RANK[_area(me)]:
                wrong.append(f"{me} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_engine_never_imports_napari_or_qt():
    for path in sorted(PACKAGE.rglob("*.py")):
        if _area(_module_name(path)) == "front":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.split(".")[0] in {"napari", "qtpy", "PyQt6", "magicgui"}, \
                    f"{path.name} imports {name}"


def test_the_main_names_import_from_the_package():
    from napari_atagan import (
        TrainConfig, cell_table, generate, label_cells, load_checkpoint, run_archive,
        run_to_end, slide_attention, train, translate_image,
    )
    from napari_atagan.gan.training import train as train_itself
    from napari_atagan.slides.attention import slide_attention as slide_itself

    assert train is train_itself and slide_attention is slide_itself
    assert TrainConfig().image_size > 0
    assert all(callable(f) for f in (cell_table, generate, label_cells, load_checkpoint,
                                     run_archive, run_to_end, translate_image))
    assert "slide_attention" in dir(napari_atagan) and "__version__" in dir(napari_atagan)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        napari_atagan.nonsense  # noqa: B018


def test_old_module_paths_still_import_the_same_modules_with_a_warning():
    import importlib
    import sys

    from napari_atagan._moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(f"napari_atagan.{old}", None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(f"napari_atagan.{old}")
        assert module is importlib.import_module(f"napari_atagan.{new}")
        assert any(issubclass(w.category, DeprecationWarning)
                   and f"napari_atagan.{new}" in str(w.message) for w in caught), old
