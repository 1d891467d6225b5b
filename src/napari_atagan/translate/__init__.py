"""Attention-guided image-to-image translation of cells (UAG-GAN).

Two unpaired domains A and B of single-cell crops (e.g. dim and bright
stainings) are translated into each other by generators ``F_ab``/``F_ba``;
attention networks ``A_a``/``A_b`` decide where: a cell ``x`` of A becomes
``A_a(x) * F_ab(x) + (1 - A_a(x)) * x``, so the background stays as it was
(Mejjati et al., NeurIPS 2018, "Unsupervised attention-guided image-to-image
translation"). ``attention=False`` trains the plain CycleGAN baseline.

Brightness is kept: both domains share one fixed grey scale, stored in the
checkpoint, and :func:`translate_image` returns grey levels of the input's
dtype. With ``grey_levels="own"`` every crop and image is mapped by its own
levels instead, so brightness is not translated, only the stain's pattern; with
``grey_levels="target"`` the translated cells are given the target domain's grey
range, whatever the input's brightness (dim -> bright across specimens). Like
the rest of the engine this package uses only torch and numpy.

Typical use::

    from napari_atagan.translate import TranslateConfig, train_translation, translate_image
    from napari_atagan.events import run_to_end

    done = run_to_end(train_translation(TranslateConfig.quick(), "dim/", "bright/", "run/"))
    bright, attention = translate_image(done.checkpoint, slide, cell_diameter=40)
"""

from .apply import Stopped, default_tile_size, nothing_attended, translate_image
from .config import RUNTIME_FIELDS, TranslateConfig
from .data import DomainData, Levels, load_domains, own_levels
from .models import (
    COMPOSITES,
    HARD_CUT,
    AttentionNetwork,
    PatchDiscriminator,
    TranslationGenerator,
    build_translation_models,
    compose,
    compose_parts,
    standing_statistics,
)
from .training import CHECKPOINT_NAME, SAMPLE_ROWS, train_translation
from .translator import DIRECTIONS, Translator, load_translator

__all__ = [
    "CHECKPOINT_NAME",
    "COMPOSITES",
    "DIRECTIONS",
    "HARD_CUT",
    "RUNTIME_FIELDS",
    "SAMPLE_ROWS",
    "AttentionNetwork",
    "DomainData",
    "Levels",
    "PatchDiscriminator",
    "Stopped",
    "TranslateConfig",
    "TranslationGenerator",
    "Translator",
    "build_translation_models",
    "compose",
    "compose_parts",
    "default_tile_size",
    "load_domains",
    "load_translator",
    "nothing_attended",
    "own_levels",
    "standing_statistics",
    "train_translation",
    "translate_image",
]
