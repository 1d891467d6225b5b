"""ATA-GAN: the attention-aware GAN of cells, from training to synthetic cells.

* :mod:`.config` - :class:`TrainConfig`, one dataclass per run (saved with the weights);
* :mod:`.models` - the class-conditional generator and the fully convolutional
  discriminator whose realness unit gives the soft-CAM;
* :mod:`.attention` - the attention-transfer loss and the teachers (masks, a
  pattern classifier);
* :mod:`.augment` - augmentation on the device;
* :mod:`.training` - :func:`train`, a generator of progress events
  (:mod:`napari_atagan.events`);
* :mod:`.synthesis` - :func:`generate`: synthetic cells with attention maps and masks;
* :mod:`.checkpoint` - the networks rebuilt from a checkpoint file.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "config",
    "Generator": "models", "Discriminator": "models", "build_models": "models",
    "PatternClassifier": "attention", "train_classifier": "attention",
    "Augmenter": "augment",
    "train": "training", "run_to_end": "training",
    "Synthesis": "synthesis", "generate": "synthesis", "write_dataset": "synthesis",
    "load_generator": "checkpoint", "load_discriminator": "checkpoint",
    "load_pattern_model": "checkpoint",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
