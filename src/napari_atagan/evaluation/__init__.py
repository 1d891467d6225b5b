"""How well it works: scores against ground truth, and the slides to score on.

* :mod:`.evaluate` - :func:`evaluate_crops`, :func:`evaluate_slide` (beside the
  model-free baselines), :func:`evaluate_samples` (SWD, KID, diversity, TSTR);
* :mod:`.augment` - :func:`evaluate_augment`: does adding generated cells to few
  real ones train a better pattern classifier?
* :mod:`.mosaic` - :func:`make_mosaic`: evaluation slides of real cell crops with
  their instance ground truth.

The measures themselves live in :mod:`napari_atagan.metrics`.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "evaluate_crops": "evaluate", "evaluate_slide": "evaluate",
    "evaluate_samples": "evaluate", "train_on_synthetic": "evaluate",
    "evaluate_augment": "augment",
    "Mosaic": "mosaic", "make_mosaic": "mosaic", "write_mosaic": "mosaic",
    "read_raw_crops": "mosaic",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
