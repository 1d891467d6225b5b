"""The ``napari-atagan`` command line (also ``python -m napari_atagan``).

:mod:`.main` builds the parser and runs the ATA-GAN subcommands; each other
front end has its module: :mod:`.attention` (slides and archives),
:mod:`.evaluate` (scores), :mod:`.translate` (attention-guided translation);
:mod:`.common` holds what they share.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
