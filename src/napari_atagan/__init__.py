"""napari-atagan: attention-aware GANs for fluorescence microscopy.

The engine (``data``, ``models``, ``attention``, ``training``, ``synthesis``,
``slide``, ``checkpoint``, ``simulate``) is pure numpy/torch and never imports
napari or Qt; ``_widgets`` and ``cli`` are thin front ends over it.
"""

__version__ = "0.1.0"

from pathlib import Path as _Path

DEFAULT_MODEL_NAME = "default_model.safetensors"


def sample_data_dir() -> _Path:
    """The folder of the shipped sample data (inside a wheel, or the repository's)."""
    here = _Path(__file__).resolve().parent
    for candidate in (here / "sample_data", here.parents[1] / "sample_data"):
        if candidate.is_dir():
            return candidate
    return here / "sample_data"


def default_model_path() -> _Path | None:
    """The shipped default checkpoint (trained on simulated cells), or None if absent."""
    path = sample_data_dir() / DEFAULT_MODEL_NAME
    return path if path.is_file() else None
