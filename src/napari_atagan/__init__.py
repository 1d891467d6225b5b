"""napari-atagan: attention-aware GANs for fluorescence microscopy.

The engine (``data``, ``models``, ``attention``, ``training``, ``synthesis``,
``slide``, ``checkpoint``, ``simulate``) is pure numpy/torch and never imports
napari or Qt; ``_widgets`` and ``cli`` are thin front ends over it.
"""

__version__ = "0.1.0"
