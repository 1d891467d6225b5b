"""napari-atagan: attention-aware GANs for fluorescence microscopy.

The package is arranged by capability:

* shared pieces: ``data`` (reading and normalising cells and slides),
  ``channels`` (the stained channel of colour or multi-channel images),
  ``checkpoint`` (safe checkpoints of every model family), ``device``,
  ``events`` (the progress events of every training loop), ``metrics``,
  ``simulate`` (procedural cells and slides), ``export``/``zarr_export`` (files);
* ``gan/`` - ATA-GAN training and synthesis;
* ``slides/`` - attention over whole slides, labels, the cell table, archives;
* ``translate/`` - attention-guided translation of cells (UAG-GAN);
* ``evaluation/`` - scores and evaluation mosaics;
* front ends: ``cli/`` (the command line) and ``_widgets/`` (napari).

The engine is pure numpy/torch and never imports napari or Qt. The names most
scripts need can be imported from the package itself, e.g.
``from napari_atagan import TrainConfig, train, slide_attention``.
"""

__version__ = "0.2.0"

from pathlib import Path as _Path

from . import _moved
from ._lazy import lazy_exports as _lazy_exports

_moved.install()

_EXPORTS = {
    "load_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "CheckpointError": "checkpoint", "run_to_end": "events",
    "TrainConfig": "gan", "train": "gan", "generate": "gan", "write_dataset": "gan",
    "slide_attention": "slides", "label_cells": "slides", "classic_labels": "slides",
    "cell_table": "slides", "run_archive": "slides", "ArchiveOptions": "slides",
    "TranslateConfig": "translate", "train_translation": "translate",
    "translate_image": "translate", "load_translator": "translate",
    "evaluate_slide": "evaluation", "make_mosaic": "evaluation",
    "simulate_slide": "simulate", "simulate_crops": "simulate",
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS, globals())

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
