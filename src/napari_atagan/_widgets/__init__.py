"""The napari dock widgets of napari-atagan: Train, Synthesize, Attention and Translate.

They translate layers to arrays and engine events to layers; all computation
happens in the engine, in background threads.
"""

from ._attention import AttentionWidget
from ._synthesize import SynthesizeWidget
from ._train import TrainWidget
from ._translate import TranslateWidget

__all__ = ["AttentionWidget", "SynthesizeWidget", "TrainWidget", "TranslateWidget"]
