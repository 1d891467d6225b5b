"""What importing the package loads: the engine stays free of napari and Qt, and the
widgets stay free of torchvision (triton's LLVM clashes with software OpenGL)."""

import subprocess
import sys

ENGINE = ["config", "device", "simulate", "data", "augment", "models", "attention",
          "checkpoint", "training", "synthesis", "slide", "labels", "export", "metrics",
          "mosaic", "evaluate", "cli"]


def _loaded_after(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return {name.split(".")[0] for name in out.stdout.split()}


def test_engine_never_imports_napari_or_qt():
    loaded = _loaded_after("; ".join(f"import napari_atagan.{m}" for m in ENGINE))
    assert not loaded & {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui"}


def test_widgets_do_not_load_torchvision():
    assert "torchvision" not in _loaded_after("import napari_atagan._widgets")


def test_stopped_is_one_class_wherever_it_is_imported_from():
    """A stop raised by any engine is caught by every front end's ``except Stopped``."""
    import napari_atagan.events as events
    import napari_atagan.slides.attention as slide_attention
    import napari_atagan.translate as translate

    assert slide_attention.Stopped is events.Stopped is translate.Stopped
