"""napari sample data: a simulated IIF HEp-2 slide and simulated cell crops.

Both are read from the ``sample_data/`` folder of the repository when it is
there, and otherwise simulated on the fly with the same seeds (for example in
an installed wheel), which gives the same pixels. The functions return napari
``LayerDataTuple``s and do not import napari.
"""

from __future__ import annotations

import csv
import numpy as np

from napari_atagan import sample_data_dir, simulate

SAMPLE_DIR = sample_data_dir()
"""The shipped sample data (the repository's ``sample_data/``, or its copy in a wheel)."""


def _read_tif(name: str) -> np.ndarray | None:
    """The array in ``SAMPLE_DIR/name``, or None when the file is missing or unreadable."""
    path = SAMPLE_DIR / name
    if not path.is_file():
        return None
    try:
        import tifffile

        return tifffile.imread(path)
    except Exception:  # a damaged file: simulate instead
        return None


def _contrast_limits(image: np.ndarray) -> list[float]:
    """Display range from the 0.5th to the 99.9th percentile (IIF images are dim)."""
    lo, hi = np.percentile(image, [0.5, 99.9])
    return [float(lo), float(max(hi, lo + 1))]


def load_slide() -> tuple[np.ndarray, np.ndarray]:
    """The simulated sample slide (uint16) and its ground-truth nucleus labels."""
    image = _read_tif("hep2_slide.tif")
    labels = _read_tif("hep2_slide_labels.tif")
    if image is None or labels is None or image.shape != labels.shape:
        slide = simulate.sample_slide()
        image, labels = slide.image, slide.labels
    return image, labels


def slide_sample() -> list[tuple]:
    """A simulated 1024 x 1024 IIF slide (uint16) and its ground-truth nucleus labels."""
    image, labels = load_slide()
    return [
        (image, {"name": "HEp-2 slide (simulated)", "contrast_limits": _contrast_limits(image),
                 "colormap": "gray"}, "image"),
        (labels, {"name": "HEp-2 cells (ground truth)", "opacity": 0.4}, "labels"),
    ]


def _crop_patterns(n: int) -> list[str] | None:
    """Pattern names of the committed crops, from ``hep2_crops.csv``."""
    path = SAMPLE_DIR / "hep2_crops.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        names = [row["pattern"] for row in csv.DictReader(handle)]
    return names if len(names) == n else None


def crops_sample() -> list[tuple]:
    """A stack of simulated single-cell crops (N, 64, 64, uint8) and their nucleus masks.

    The image layer's ``metadata`` holds ``patterns`` (the pattern of every
    crop, in stack order) and ``pattern_names`` (the six pattern names).
    """
    images = _read_tif("hep2_crops.tif")
    masks = _read_tif("hep2_crops_masks.tif")
    patterns = None if images is None else _crop_patterns(len(images))
    if images is None or masks is None or images.shape != masks.shape or patterns is None:
        crops = simulate.sample_crops()
        images, masks, patterns = crops.images, crops.masks, crops.pattern_names
    metadata = {"patterns": patterns, "pattern_names": list(simulate.PATTERNS)}
    return [
        (images, {"name": "HEp-2 crops (simulated)", "contrast_limits": _contrast_limits(images),
                  "colormap": "gray", "metadata": metadata}, "image"),
        (masks, {"name": "HEp-2 crop masks", "opacity": 0.4}, "labels"),
    ]
