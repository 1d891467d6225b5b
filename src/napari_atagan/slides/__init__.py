"""Whole slides: attention, cells, the per-cell table and a lab's archive.

* :mod:`.attention` - :func:`slide_attention`: the discriminator's soft-CAM over a
  slide of any size, tiled with invisible seams, in bounded memory;
* :mod:`.labels` - attention map -> instance labels;
* :mod:`.segment` - :func:`label_cells`: cells found by the map and outlined by the
  image, and :func:`classic_labels`, the model-free pipeline;
* :mod:`.cells` - :func:`cell_table`: centroid, area, intensity, attention, pattern;
* :mod:`.archive` - :func:`run_archive`: many slides in worker processes or on a
  Dask cluster, resumable.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "Stopped": "attention", "slide_attention": "attention",
    "slide_attention_stack": "attention", "estimate_cell_diameter": "attention",
    "discriminator_attention": "attention",
    "attention_to_labels": "labels", "attention_to_labels_tiled": "labels",
    "drop_border_cells": "labels",
    "label_cells": "segment", "classic_labels": "segment", "guided_labels": "segment",
    "proposed_cells": "segment",
    "CellTable": "cells", "cell_table": "cells", "read_cells_csv": "cells",
    "ArchiveOptions": "archive", "run_archive": "archive", "process_slide": "archive",
    "find_slides": "archive",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
