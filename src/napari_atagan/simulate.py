"""Procedural simulator of indirect-immunofluorescence (IIF) HEp-2 cell images.

It draws nuclei of the six staining patterns of the ICPR HEp-2 contests and the
optics and camera around them, so that the rest of the product can be tried,
tested and demonstrated without any real (and license-bound) data:

* ``Homogeneous`` - the whole nucleus evenly stained, with a faint texture;
* ``Speckled``    - fine or coarse dots all over the nucleus, nucleoli spared;
* ``Nucleolar``   - a few large bright nucleoli over a dim nucleoplasm;
* ``Centromere``  - 40-80 small discrete bright dots on a dark nucleus;
* ``NuMem``       - a bright nuclear rim (membrane) around a dimmer inside;
* ``Golgi``       - bright perinuclear clumps on one side of a dim nucleus.

Every nucleus is an irregular ellipse (random axes, orientation and a wobbly
boundary). Cells are drawn one by one in a small box around each, then the
whole field gets the microscope's blur (a Gaussian point-spread function), a
background haze with uneven illumination and out-of-focus glow, and
Poisson-Gaussian camera noise, and is quantised to 8 or 16 bit. At
``intensity=1`` the grey levels resemble real IIF crops, which are dim
(background about 15-30 of 255, nuclei a few to a few tens of levels above).

The masks and labels are the nuclei (as in the I3A data set), not the
cytoplasm. Everything is deterministic for a given seed, bit for bit.

By default the fields are tidy: few cells touch, a faint halo, mild
illumination changes. Real whole slides are harder, and ``realistic=True`` (or
the single options it turns on) adds what they have: crowded cells in touching
and slightly overlapping clusters, a dim cytoplasmic glow around every nucleus,
a few very bright mitotic cells, vignetting and a smooth background offset,
camera noise from quiet to noisy, out-of-focus cells, specimens stained more or
less strongly, and an 8-bit RGB variant with the stain in the green channel.
Realistic crops are cut from the same model.

Main entry points: :func:`simulate_crops` (single-cell crops, like a training
set), :func:`simulate_slide` (a field of view with many cells and an instance
label image), :func:`write_crops_folder` (the I3A folder layout),
:func:`write_slide` (a slide and its labels as ImageJ TIFFs) and
:func:`make_sample_data` (the sample data shipped with the product).
"""

from __future__ import annotations

import csv
import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "PATTERNS",
    "EXTRA_PATTERNS",
    "CropSet",
    "Slide",
    "simulate_crops",
    "simulate_slide",
    "write_crops_folder",
    "write_slide",
    "make_sample_data",
]

PATTERNS: tuple[str, ...] = ("Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi")
"""The six staining patterns, spelled as the pattern folders of the I3A data set."""

EXTRA_PATTERNS: tuple[str, ...] = ("Cytoplasmic",)
"""Patterns drawn only when asked for by name, never by default: none of the
models here is trained on them, so they show how the labelling holds on a
pattern a model never saw. A Cytoplasmic cell is stained around an unstained
nucleus, and its label is the whole cell."""

# Settings of the sample data shipped in ``sample_data/`` (see make_sample_data).
SAMPLE_SLIDE_SHAPE = (1024, 1024)
SAMPLE_SLIDE_CELLS = 60
SAMPLE_SLIDE_DIAMETER = 40.0
SAMPLE_SLIDE_SEED = 2014
SAMPLE_CROPS_PER_PATTERN = 40
SAMPLE_CROPS_SIZE = 64
SAMPLE_CROPS_SEED = 1802

# Nucleus radius (pixels) at which the feature sizes below are tuned; features
# scale with the actual radius so that a larger cell looks like a zoomed one.
_REF_RADIUS = 21.0
# Grey levels as fractions of the full scale, at intensity=1.
_DARK_OFFSET = 2.0 / 255  # camera offset, not scaled by the intensity
_HAZE_LEVEL = 19.0 / 255  # mean background (autofluorescence + stray light)
_SIGNAL_UNIT = 11.0 / 255  # grey level of one unit of stain above the haze
_PHOTONS_FULL_SCALE = 5000.0  # photo-electrons at full scale (sets shot noise)
_READ_NOISE = 0.5 / 255  # camera read noise (std)


# --------------------------------------------------------------------------- #
# Public containers
# --------------------------------------------------------------------------- #
@dataclass
class CropSet:
    """Single-cell crops with their nucleus masks and pattern labels.

    Attributes:
        images: ``(N, S, S)`` uint8 or uint16 crops, one cell roughly centred in each
            (``(N, S, S, 3)`` uint8 for RGB crops, the stain in green).
        masks: ``(N, S, S)`` uint8 nucleus masks of the centred cell (0 or 1).
        labels: ``(N,)`` int64 index of each crop's pattern in ``patterns``.
        patterns: the pattern names that ``labels`` index into.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    patterns: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def pattern_names(self) -> list[str]:
        """The pattern name of every crop, in order."""
        return [self.patterns[int(i)] for i in self.labels]


@dataclass
class Slide:
    """A simulated field of view with many cells.

    Attributes:
        image: ``(H, W)`` uint16 or uint8 image (``(H, W, 3)`` uint8 for RGB, the
            stain in green).
        labels: ``(H, W)`` uint16 instance labels of the nuclei (0 = background,
            cell ``i`` has label ``i + 1``); nuclei never overlap by default. Where
            nuclei overlap (``overlap > 0``), the overlap belongs to the upper cell,
            the one with the higher label.
        patterns: the pattern name of label ``i + 1`` at position ``i``.
        cell_diameter: mean equivalent diameter of the nuclei, in pixels.
        mitotic: whether label ``i + 1`` is a mitotic cell, at position ``i``.
    """

    image: np.ndarray
    labels: np.ndarray
    patterns: list[str]
    cell_diameter: float
    mitotic: list[bool] = field(default_factory=list)


# --------------------------------------------------------------------------- #
# Parameter validation
# --------------------------------------------------------------------------- #
def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as int, or raise a ValueError naming ``name`` and the range."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    return value


def _check_positive(name: str, value: object, high: float) -> float:
    """Return ``value`` as float in (0, high], or raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a number in (0, {high:g}], got {value!r}")
    value = float(value)
    if not 0 < value <= high:
        raise ValueError(f"{name} must be a number in (0, {high:g}], got {value:g}")
    return value


def _check_patterns(patterns: object) -> tuple[str, ...]:
    """Return the patterns as a tuple of known, distinct names."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    known = PATTERNS + EXTRA_PATTERNS
    if not isinstance(patterns, Sequence) or len(patterns) == 0:
        raise ValueError(f"patterns must be a non-empty sequence of names from {known}, got {patterns!r}")
    unknown = [p for p in patterns if p not in known]
    if unknown:
        raise ValueError(f"patterns: unknown pattern name(s) {unknown}; allowed: {', '.join(known)}")
    if len(set(patterns)) != len(patterns):
        raise ValueError(f"patterns must not repeat a name, got {list(patterns)}")
    return tuple(patterns)


def _check_bit_depth(bit_depth: object) -> int:
    if isinstance(bit_depth, bool) or bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    return int(bit_depth)


def _check_range(name: str, value: object, low: float, high: float) -> float:
    """Return ``value`` as float in [low, high], or raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or not low <= float(value) <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# Realism: what real whole slides have and the tidy default fields lack
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Realism:
    """The amounts of every realism feature (all off by default)."""

    crowding: float = 0.0  # expected share of cells in touching clusters of 2-5
    overlap: float = 0.0  # largest overlap of touching nuclei, fraction of the smaller one
    glow: float = 0.0  # cytoplasmic glow, at most this fraction of the nucleus' brightness
    mitotic: float = 0.0  # share of mitotic cells
    vignetting: float = 0.0  # illumination lost in the corners (fraction)
    background: float = 0.0  # smooth additive background offset, up to +- this fraction of the haze
    photons: float = _PHOTONS_FULL_SCALE  # photo-electrons at full scale (shot noise)
    read_noise: float = _READ_NOISE * 255  # camera read noise, std in 8-bit grey levels
    defocus: float = 0.0  # share of out-of-focus cells
    rgb: bool = False
    specimen: float = 1.0  # how strongly the slide is stained (realistic slides only)

    @property
    def plain(self) -> bool:
        """True when nothing is turned on: the default simulator, bit for bit."""
        return self == _Realism()


# name: (lowest, highest allowed value)
_REALISM_OPTIONS: dict[str, tuple[float, float]] = {
    "crowding": (0.0, 1.0),
    "overlap": (0.0, 0.25),
    "glow": (0.0, 1.0),
    "mitotic": (0.0, 0.5),
    "vignetting": (0.0, 0.9),
    "background": (0.0, 10.0),
    "photons": (10.0, 1e7),
    "read_noise": (0.0, 50.0),
    "defocus": (0.0, 1.0),
}


def _realistic_amounts(rng: np.random.Generator) -> dict[str, float]:
    """Random amounts of every feature for one realistic slide (or crop)."""
    return {
        "crowding": rng.uniform(0.5, 0.85),  # most cells touch a neighbour
        "overlap": 0.1,  # up to 10 % of the smaller nucleus
        "glow": rng.uniform(0.1, 0.4),  # cytoplasm at up to 10-40 % of the nucleus
        "mitotic": rng.uniform(0.02, 0.05),
        "vignetting": rng.uniform(0.3, 0.5),  # corners 30-50 % darker
        "background": rng.uniform(0.1, 0.6),
        # from quiet cameras (the I3A crops: about 0.7 grey levels of noise) to noisy ones (about 2.5)
        "photons": math.exp(rng.uniform(math.log(1000.0), math.log(30000.0))),
        "read_noise": rng.uniform(0.2, 0.8),
        "defocus": rng.uniform(0.03, 0.12),
        "specimen": rng.lognormal(0.15, 0.5),  # specimens differ in how strongly they are stained
    }


def _check_realism(realistic: object, rgb: object, given: dict[str, object]) -> None:
    """Validate the realism options (the values that are not None)."""
    for name, value in (("realistic", realistic), ("rgb", rgb)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    for name, value in given.items():
        if value is not None:
            _check_range(name, value, *_REALISM_OPTIONS[name])


def _resolve_realism(realistic: bool, rgb: bool, given: dict[str, object],
                     rng: np.random.Generator | None) -> _Realism:
    """The amounts to use: an option given wins, else the preset's draw when
    ``realistic``, else off. ``rng`` draws the preset (needed when ``realistic``)."""
    preset = _realistic_amounts(rng) if realistic else {}
    amounts = {}
    for name, value in given.items():
        if value is not None:
            amounts[name] = float(value)
        elif name in preset:
            amounts[name] = float(preset[name])
    if realistic:
        amounts["specimen"] = float(preset["specimen"])
    return _Realism(rgb=bool(rgb), **amounts)


# --------------------------------------------------------------------------- #
# Cell geometry
# --------------------------------------------------------------------------- #
@dataclass
class _Cell:
    """One nucleus: an ellipse with a wobbly boundary, and its stain."""

    cy: float
    cx: float
    ry: float  # semi-axis along the rotated y axis (px)
    rx: float  # semi-axis along the rotated x axis (px)
    angle: float  # rotation (radians)
    wobble_amp: np.ndarray  # amplitudes of the boundary harmonics k = 2..5
    wobble_phase: np.ndarray
    pattern: str
    brightness: float
    seed: int  # seed of the cell's own texture generator
    mitosis: int = 0  # 0 interphase, 1 metaphase plate, 2 two daughter plates (anaphase / telophase)
    glow: float = 0.0  # cytoplasmic glow, as a fraction of the nucleus' brightness
    defocus: float = 0.0  # extra blur (px) of a cell out of the focal plane

    @property
    def radius(self) -> float:
        """Mean radius (px): the geometric mean of the semi-axes."""
        return math.sqrt(self.rx * self.ry)

    @property
    def extent(self) -> float:
        """Largest distance (px) of the nucleus boundary from its centre."""
        return max(self.rx, self.ry) * (1.0 + float(np.sum(self.wobble_amp)))


def _random_cell(rng: np.random.Generator, cy: float, cx: float, diameter: float, pattern: str,
                 brightness: float) -> _Cell:
    """Draw a nucleus of about ``diameter`` px at (cy, cx)."""
    aspect = rng.uniform(1.0, 1.35)
    radius = diameter / 2.0
    return _Cell(
        cy=cy,
        cx=cx,
        ry=radius / math.sqrt(aspect),
        rx=radius * math.sqrt(aspect),
        angle=rng.uniform(0.0, math.pi),
        wobble_amp=rng.uniform(0.0, 1.0, 4) * np.array([0.035, 0.025, 0.015, 0.01]),
        wobble_phase=rng.uniform(0.0, 2 * math.pi, 4),
        pattern=pattern,
        brightness=brightness,
        seed=int(rng.integers(2**62)),
    )


def _box(cell: _Cell, margin: float, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """Pixel box around the cell (``margin`` times its extent), clipped to ``shape``."""
    half = cell.extent * margin + 2.0
    y0, y1 = max(int(math.floor(cell.cy - half)), 0), min(int(math.ceil(cell.cy + half)) + 1, shape[0])
    x0, x1 = max(int(math.floor(cell.cx - half)), 0), min(int(math.ceil(cell.cx + half)) + 1, shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


@dataclass
class _Frame:
    """Coordinates of a box around one cell.

    ``dy, dx``: pixel offsets from the cell centre; ``q``: normalised radius
    (1 on the nucleus boundary); ``theta``: angle in the cell's own frame.
    """

    dy: np.ndarray
    dx: np.ndarray
    q: np.ndarray
    theta: np.ndarray


def _frame(cell: _Cell, box: tuple[slice, slice]) -> _Frame:
    dy = np.arange(box[0].start, box[0].stop, dtype=np.float64)[:, None] - cell.cy
    dx = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :] - cell.cx
    c, s = math.cos(cell.angle), math.sin(cell.angle)
    u = (dx * c + dy * s) / cell.rx
    v = (-dx * s + dy * c) / cell.ry
    theta = np.arctan2(v, u)
    dy, dx = np.broadcast_arrays(dy, dx)
    return _Frame(dy=dy, dx=dx, q=np.hypot(u, v) / _boundary(cell, theta), theta=theta)


def _boundary(cell: _Cell, theta: np.ndarray) -> np.ndarray:
    """Boundary radius (in units of the ellipse) at angle ``theta``."""
    r = np.ones_like(theta)
    for k, (amp, phase) in enumerate(zip(cell.wobble_amp, cell.wobble_phase), start=2):
        r += amp * np.cos(k * theta + phase)
    return r


def _cell_points(cell: _Cell, u_radius: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets (dy, dx) from the centre of points given in the cell's own frame.

    ``u_radius`` is the normalised radius (1 = boundary), ``theta`` the angle.
    """
    rho = u_radius * _boundary(cell, theta)
    u, v = rho * np.cos(theta), rho * np.sin(theta)
    c, s = math.cos(cell.angle), math.sin(cell.angle)
    dx = u * cell.rx * c - v * cell.ry * s
    dy = u * cell.rx * s + v * cell.ry * c
    return dy, dx


def _random_points(cell: _Cell, rng: np.random.Generator, n: int, q_max: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points spread uniformly over the nucleus up to normalised radius ``q_max``."""
    return _cell_points(cell, q_max * np.sqrt(rng.uniform(0, 1, n)), rng.uniform(-math.pi, math.pi, n))


# --------------------------------------------------------------------------- #
# Drawing helpers
# --------------------------------------------------------------------------- #
def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field with zero mean and (about) unit standard deviation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field * (2.0 * math.sqrt(math.pi) * sigma)  # std of 2-D blurred white noise is 1/(2 sqrt(pi) sigma)


def _dots(f: _Frame, ys: np.ndarray, xs: np.ndarray, amps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian dots of peak ``amps`` and width ``sigma`` at offsets (ys, xs) from the centre.

    Splats every dot bilinearly onto the pixel grid and blurs once, which costs
    the same for 10 or 1000 dots.
    """
    shape = f.q.shape
    out = np.zeros(shape)
    py = ys - f.dy[0, 0]
    px = xs - f.dx[0, 0]
    iy, ix = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    wy, wx = py - iy, px - ix
    weight = amps * 2.0 * math.pi * sigma**2
    for oy, ox, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yy, xx = iy + oy, ix + ox
        ok = (yy >= 0) & (yy < shape[0]) & (xx >= 0) & (xx < shape[1])
        np.add.at(out, (yy[ok], xx[ok]), (weight * w)[ok])
    return ndi.gaussian_filter(out, sigma, mode="constant")


def _blob(f: _Frame, y: float, x: float, sigma_y: float, sigma_x: float | None = None) -> np.ndarray:
    """One Gaussian blob of peak 1 (axis-aligned) at offset (y, x)."""
    sigma_x = sigma_y if sigma_x is None else sigma_x
    return np.exp(-0.5 * (((f.dy - y) / sigma_y) ** 2 + ((f.dx - x) / sigma_x) ** 2))


# --------------------------------------------------------------------------- #
# The six staining patterns.
# Each returns the stain of one cell in its box, in "units" (about 1 for an
# evenly stained nucleus), before the optics. ``r`` is the radius (px), ``s``
# the feature scale (r / _REF_RADIUS), ``inside`` the nucleus with a soft edge
# and ``dome`` a gentle centre-bright profile (nuclei are thicker there).
# --------------------------------------------------------------------------- #
def _homogeneous(f, inside, dome, r, s, rng, cell):
    texture = (1.0 + 0.1 * _smooth_noise(f.q.shape, 3.0 * s, rng) + 0.12 * _smooth_noise(f.q.shape, 1.5 * s, rng)
               + 0.05 * _smooth_noise(f.q.shape, 0.7 * s, rng))
    rim = np.exp(-0.5 * (((1.0 - f.q) * r - 2.0 * s) / (2.0 * s)) ** 2)
    stain = 1.1 * inside * (dome * texture + rng.uniform(0.0, 0.25) * rim)
    for _ in range(rng.integers(0, 4)):  # nucleoli show as faintly darker patches
        y, x = _random_points(cell, rng, 1, 0.6)
        stain *= 1.0 - 0.2 * _blob(f, y[0], x[0], rng.uniform(0.08, 0.14) * r)
    return stain


def _speckled(f, inside, dome, r, s, rng, cell):
    coarse = rng.uniform() < 0.35
    area = math.pi * r * r
    n = int(area / ((14.0 if coarse else 7.0) * s * s))
    ys, xs = _random_points(cell, rng, n, 0.95)
    amps = rng.lognormal(math.log(1.4 if coarse else 1.0), 0.5, n)
    speckles = _dots(f, ys, xs, amps, (1.1 if coarse else 0.75) * s)
    base = 0.55 * dome * (1.0 + 0.12 * _smooth_noise(f.q.shape, 2.0 * s, rng))
    stain = inside * (base + speckles)
    for _ in range(rng.integers(1, 6)):  # nucleoli are spared: darker holes
        y, x = _random_points(cell, rng, 1, 0.6)
        stain *= 1.0 - 0.7 * _blob(f, y[0], x[0], rng.uniform(0.1, 0.18) * r)
    return stain


def _nucleolar(f, inside, dome, r, s, rng, cell):
    base = 0.35 * dome * (1.0 + 0.15 * _smooth_noise(f.q.shape, 1.2 * s, rng))
    ys, xs = _random_points(cell, rng, int(rng.integers(20, 60)), 0.9)  # faint speckles in the nucleoplasm
    stain = inside * (base + _dots(f, ys, xs, rng.lognormal(math.log(0.4), 0.4, len(ys)), 0.8 * s))
    n = rng.choice([1, 2, 3, 4, 5, 6], p=[0.05, 0.18, 0.28, 0.24, 0.15, 0.1])
    for _ in range(n):
        y, x = _random_points(cell, rng, 1, 0.6)
        size = rng.uniform(0.06, 0.12) * r
        amp = rng.uniform(1.3, 2.5)
        lumps = int(rng.integers(1, 4))  # nucleoli are lumpy: a few overlapping sub-blobs
        for _ in range(lumps):
            oy, ox = rng.normal(0.0, 0.6 * size, 2)
            stain += inside * amp / math.sqrt(lumps) * rng.uniform(0.6, 1.0) * _blob(f, y[0] + oy, x[0] + ox, size)
    return stain


def _centromere(f, inside, dome, r, s, rng, cell):
    n = int(rng.integers(40, 81))
    ys, xs = _random_points(cell, rng, n, 0.9)
    amps = rng.lognormal(math.log(4.2), 0.6, n)
    dots = _dots(f, ys, xs, amps, 0.55 * s)
    base = 0.3 * dome * (1.0 + 0.2 * _smooth_noise(f.q.shape, 1.5 * s, rng))
    return inside * (base + dots)


def _numem(f, inside, dome, r, s, rng, cell):
    depth = (1.0 - f.q) * r  # px inside the boundary
    rim = np.exp(-0.5 * ((depth - 1.4 * s) / (0.9 * s)) ** 2)
    rim *= np.clip(1.0 + 0.45 * _smooth_noise(f.q.shape, 1.2 * s, rng), 0.15, None)
    grain = 1.0 + 0.35 * _smooth_noise(f.q.shape, 0.8 * s, rng) + 0.15 * _smooth_noise(f.q.shape, 3.0 * s, rng)
    return inside * (rng.uniform(0.45, 0.75) * grain * dome + rng.uniform(0.7, 1.3) * rim)


def _golgi(f, inside, dome, r, s, rng, cell):
    stain = inside * 0.3 * dome * (1.0 + 0.15 * _smooth_noise(f.q.shape, 1.5 * s, rng))
    side = rng.uniform(-math.pi, math.pi)  # the side of the nucleus where the Golgi sits
    focus = rng.uniform(0.7, 2.5)  # how tightly the Golgi gathers on that side (crescent to ring)
    clumps = np.zeros(f.q.shape)
    for sigma, count, amp in ((0.9 * s, (20, 60), 1.6), (1.8 * s, (3, 10), 1.2)):  # fine grains, larger lumps
        n = int(rng.integers(*count))
        theta = rng.vonmises(side, focus, n)
        radius = rng.uniform(0.92, 1.35, n)
        y, x = _cell_points(cell, radius, theta)
        clumps += _dots(f, y, x, rng.lognormal(math.log(amp), 0.6, n), sigma)
    # diffuse, granular Golgi stain in the cytoplasm around the nucleus, strongest on that side
    toward = np.exp(focus * (np.cos(f.theta - side) - 1.0))
    grain = np.clip(1.0 + 0.5 * _smooth_noise(f.q.shape, 1.2 * s, rng), 0.0, None)
    band = np.exp(-0.5 * ((f.q - 1.15) / 0.2) ** 2) * grain
    return stain + clumps + rng.uniform(0.3, 0.7) * toward * band


def _mitotic(f, inside, dome, r, s, rng, cell):
    """Condensed chromosomes: one compact plate, or two daughter plates at the ends
    of the (elongated) cell; 3-10 times as bright as an interphase nucleus."""
    factor = rng.uniform(3.0, 10.0)
    chromatin = np.clip(1.0 + 0.35 * _smooth_noise(f.q.shape, 0.8 * s, rng)
                        + 0.2 * _smooth_noise(f.q.shape, 2.0 * s, rng), 0.2, None)
    if cell.mitosis == 1:
        profile = np.sqrt(dome)
    else:  # the plates lie across the long (u) axis, near its two ends
        along = np.abs(f.q * np.cos(f.theta))
        profile = np.exp(-0.5 * ((along - 0.66) / 0.13) ** 2)
    return 1.6 * factor * inside * chromatin * profile


def _cytoplasmic(f, inside, dome, r, s, rng, cell):
    """The cytoplasm stained, the nucleus not: here the outline is the whole cell.

    A fine reticular network (the zero lines of a smooth random field) and fine
    granules, strongest around the nucleus and fading towards the thin edge of
    the spread cell; the nucleus, a little off centre, is a dark hole.
    """
    ny, nx = _random_points(cell, rng, 1, 0.25)
    nucleus_r = rng.uniform(0.45, 0.62) * r
    dist = np.hypot(f.dy - ny[0], f.dx - nx[0])
    hole = np.clip((nucleus_r - dist) / (1.5 * s) + 0.5, 0.0, 1.0)
    network = np.exp(-0.5 * (_smooth_noise(f.q.shape, 2.5 * s, rng) / 0.35) ** 2)
    n = int(math.pi * r * r / (10.0 * s * s))
    ys, xs = _random_points(cell, rng, n, 0.95)
    granules = _dots(f, ys, xs, rng.lognormal(math.log(0.6), 0.5, n), 0.7 * s)
    base = 0.35 * (1.0 + 0.2 * _smooth_noise(f.q.shape, 3.0 * s, rng))
    profile = 0.45 + 0.55 * np.sqrt(np.clip(1.0 - f.q, 0.0, 1.0))
    spared = 1.0 - (1.0 - rng.uniform(0.05, 0.2)) * hole
    return inside * spared * profile * (base + 0.8 * network + granules)


_PATTERN_DRAWERS = {
    "Homogeneous": _homogeneous,
    "Speckled": _speckled,
    "Nucleolar": _nucleolar,
    "Centromere": _centromere,
    "NuMem": _numem,
    "Golgi": _golgi,
    "Cytoplasmic": _cytoplasmic,
}


def _draw_cell(cell: _Cell, box: tuple[slice, slice]) -> np.ndarray:
    """The stain of one cell (nucleus pattern + faint cytoplasm) in its box."""
    rng = np.random.default_rng(cell.seed)
    f = _frame(cell, box)
    r = cell.radius
    s = r / _REF_RADIUS
    inside = np.clip((1.0 - f.q) * r + 0.5, 0.0, 1.0)  # nucleus with a one-pixel soft edge
    dome = np.clip(1.0 - f.q**2, 0.0, 1.0) ** 0.3  # thick centre, thin rim: soft edges
    drawer = _mitotic if cell.mitosis else _PATTERN_DRAWERS[cell.pattern]
    stain = drawer(f, inside, dome, r, s, rng, cell)
    cytoplasm = 0.1 * np.exp(-0.5 * (np.maximum(f.q - 1.0, 0.0) / 0.35) ** 2)
    return cell.brightness * (stain + cytoplasm)


def _nucleus_mask(cell: _Cell, box: tuple[slice, slice]) -> np.ndarray:
    return _frame(cell, box).q <= 1.0


def _try_place(labels: np.ndarray, cell: _Cell, label: int) -> bool:
    """Write the cell's nucleus into ``labels`` unless it would overlap another one."""
    box = _box(cell, 1.0, labels.shape)
    if box is None:
        return False
    mask = _nucleus_mask(cell, box)
    region = labels[box]
    if np.any(region[mask]):
        return False
    region[mask] = label
    return True


# --------------------------------------------------------------------------- #
# Optics and camera
# --------------------------------------------------------------------------- #
def _render(shape: tuple[int, int], cells: list[_Cell], scale: float, haze: float, unit: float,
            intensity: float, bit_depth: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the cells, then blur, haze, noise and quantise the whole field.

    ``scale`` is the feature scale (cell radius / reference radius), ``haze``
    and ``unit`` the background level and the grey level of one stain unit as
    fractions of the full scale, at intensity 1.
    """
    stain = np.zeros(shape)
    for cell in cells:
        box = _box(cell, 1.8, shape)
        if box is not None:
            stain[box] += _draw_cell(cell, box)
    stain = ndi.gaussian_filter(stain, max(0.6, 0.95 * scale), mode="nearest")  # point-spread function
    glow = _out_of_focus(stain, 6.0 * scale)  # light from above and below the focal plane
    illumination = _illumination(shape, rng)
    expected = _DARK_OFFSET + intensity * illumination * (haze + unit * (stain + 0.25 * glow))
    photons = rng.poisson(np.clip(expected, 0.0, None) * _PHOTONS_FULL_SCALE)
    measured = photons / _PHOTONS_FULL_SCALE + rng.normal(0.0, _READ_NOISE, shape)
    full = 255 if bit_depth == 8 else 65535
    out = np.clip(np.rint(measured * full), 0, full)
    return out.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _out_of_focus(stain: np.ndarray, sigma: float) -> np.ndarray:
    """A wide blur of the stain, computed at a quarter of the resolution (it is smooth)."""
    factor = 4 if min(stain.shape) >= 64 else 1
    h, w = (stain.shape[0] // factor) * factor, (stain.shape[1] // factor) * factor
    small = stain[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    small = ndi.gaussian_filter(small, sigma / factor, mode="nearest")
    big = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)
    big = np.pad(big, ((0, stain.shape[0] - h), (0, stain.shape[1] - w)), mode="edge")
    return ndi.uniform_filter(big, factor, mode="nearest")


def _illumination(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination: a smooth field around 1 (+-10 %)."""
    coarse = 1.0 + 0.1 * rng.uniform(-1.0, 1.0, (4, 4))
    zoom = (shape[0] / 4.0, shape[1] / 4.0)
    field = ndi.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    return field[: shape[0], : shape[1]]


# --------------------------------------------------------------------------- #
# Realistic fields: glow, mitoses, defocus, crowding, illumination, camera
# --------------------------------------------------------------------------- #
def _make_mitotic(cell: _Cell, rng: np.random.Generator) -> _Cell:
    """The cell turned into a mitotic one: smaller, elongated, condensed chromosomes."""
    plate = rng.uniform() < 0.6  # metaphase plate, else two daughter plates
    radius = cell.radius * (rng.uniform(0.45, 0.65) if plate else rng.uniform(0.6, 0.8))
    aspect = rng.uniform(2.0, 3.2) if plate else rng.uniform(1.5, 2.2)
    return replace(cell, ry=radius / math.sqrt(aspect), rx=radius * math.sqrt(aspect),
                   wobble_amp=cell.wobble_amp * 0.5, mitosis=1 if plate else 2)


def _body(cell: _Cell) -> _Cell:
    """The cell body around the nucleus (1.5-2.5 times its diameter, irregular):
    where the cytoplasmic glow is. Deterministic for the cell."""
    rng = np.random.default_rng([cell.seed, 1])
    # mitotic cells round up: their body is a smaller, rounder ball around the chromosomes
    if cell.mitosis:
        radius, aspect = max(cell.rx, cell.ry) * rng.uniform(1.2, 1.6), rng.uniform(1.0, 1.25)
    else:
        radius, aspect = cell.radius * rng.uniform(1.5, 2.5), rng.uniform(1.0, 1.6)
    shift = rng.uniform(0.0, 0.3) * cell.radius
    toward = rng.uniform(-math.pi, math.pi)
    return _Cell(cy=cell.cy + shift * math.sin(toward), cx=cell.cx + shift * math.cos(toward),
                 ry=radius / math.sqrt(aspect), rx=radius * math.sqrt(aspect), angle=rng.uniform(0.0, math.pi),
                 wobble_amp=rng.uniform(0.3, 1.0, 4) * np.array([0.12, 0.09, 0.06, 0.04]),
                 wobble_phase=rng.uniform(0.0, 2 * math.pi, 4), pattern=cell.pattern, brightness=1.0,
                 seed=int(rng.integers(2**62)))


def _draw_glow(body: _Cell, box: tuple[slice, slice], level: float, scale: float) -> np.ndarray:
    """Dim, grainy cytoplasmic stain filling the cell body, fading at its edge."""
    rng = np.random.default_rng(body.seed)
    f = _frame(body, box)
    t = np.clip((1.0 - f.q) / 0.3, 0.0, 1.0)
    soft = t * t * (3.0 - 2.0 * t)
    grain = np.clip(1.0 + 0.3 * _smooth_noise(f.q.shape, 2.0 * scale, rng)
                    + 0.15 * _smooth_noise(f.q.shape, 0.8 * scale, rng), 0.0, None)
    return level * soft * grain * (1.0 - 0.3 * np.clip(f.q, 0.0, 1.0))


def _add_cell(stain: np.ndarray, cell: _Cell, scale: float) -> None:
    """Add one cell (nucleus, glow, defocus) to the stain field."""
    box = _box(cell, 1.8, stain.shape)
    body = _body(cell) if cell.glow > 0 else None
    reach = 1.8 * cell.extent
    if body is not None:
        reach = max(reach, math.hypot(body.cy - cell.cy, body.cx - cell.cx) + body.extent)
    reach += 3.0 * cell.defocus + 2.0
    outer = _box(replace(cell, rx=reach, ry=reach, wobble_amp=np.zeros(4)), 1.0, stain.shape)
    if outer is None:
        return
    layer = np.zeros((outer[0].stop - outer[0].start, outer[1].stop - outer[1].start))
    if box is not None:
        nucleus = _draw_cell(cell, box)
        inner = (slice(box[0].start - outer[0].start, box[0].stop - outer[0].start),
                 slice(box[1].start - outer[1].start, box[1].stop - outer[1].start))
        layer[inner] += nucleus
    if body is not None:
        # the glow follows the nucleus' brightness (an interphase one's for a mitotic cell)
        if cell.mitosis or box is None:
            level = cell.brightness
        else:
            inside = _nucleus_mask(cell, box)
            level = float(nucleus[inside].mean()) if inside.any() else cell.brightness
        layer += _draw_glow(body, outer, cell.glow * level, scale)
    if cell.defocus > 0:
        layer = ndi.gaussian_filter(layer, cell.defocus, mode="constant")
    stain[outer] += layer


def _touch_fraction(labels: np.ndarray, cell: _Cell, areas: dict[int, float]) -> tuple[float, int, np.ndarray,
                                                                                        tuple[slice, slice]]:
    """How much of the smaller nucleus the cell would overlap, at most over its
    neighbours; also the pixels it would overlap and its mask in its box."""
    box = _box(cell, 1.0, labels.shape)
    if box is None:
        return 0.0, 0, np.zeros((0, 0), bool), (slice(0, 0), slice(0, 0))
    mask = _nucleus_mask(cell, box)
    under = labels[box][mask]
    under = under[under > 0]
    if under.size == 0:
        return 0.0, 0, mask, box
    own = float(mask.sum())
    ids, counts = np.unique(under, return_counts=True)
    worst = max(c / max(min(own, areas.get(int(i), own)), 1.0) for i, c in zip(ids, counts))
    return float(worst), int(under.size), mask, box


def _attach(rng: np.random.Generator, labels: np.ndarray, cell: _Cell, anchor: _Cell, label: int,
            areas: dict[int, float], target: float, limit: float, inside: bool) -> _Cell | None:
    """Move ``cell`` against ``anchor`` until the nuclei touch (``target = 0``) or
    overlap by ``target`` of the smaller one; write its label on top. None when
    no free side was found. ``inside``: keep the nucleus whole inside the image."""
    h, w = labels.shape
    for _attempt in range(6):
        phi = rng.uniform(-math.pi, math.pi)
        sy, sx = math.sin(phi), math.cos(phi)

        def at(t: float) -> _Cell:
            return replace(cell, cy=anchor.cy + t * sy, cx=anchor.cx + t * sx)

        lo, hi = 0.0, anchor.extent + cell.extent + 2.0
        if _touch_fraction(labels, at(hi), areas)[1] > 0:
            continue  # another cell is in the way on that side
        for _ in range(10):  # bisection to about 0.1 % of the distance
            mid = 0.5 * (lo + hi)
            frac, pixels, _, _ = _touch_fraction(labels, at(mid), areas)
            if (pixels == 0) if target <= 0 else (frac <= target):
                hi = mid
            else:
                lo = mid
        placed = at(hi)
        if inside and not _whole_inside(placed, labels.shape):
            continue
        if _box(placed, 1.0, labels.shape) is None:
            continue
        frac, _, mask, box = _touch_fraction(labels, placed, areas)
        if frac > limit + 1e-9:
            continue
        labels[box][mask] = label  # the upper cell takes the overlap
        areas[label] = float(mask.sum())
        return placed
    return None


_CLUSTER_SIZES = np.array([2, 3, 4, 5])
_CLUSTER_P = np.array([0.35, 0.3, 0.2, 0.15])


def _cluster_start_probability(crowding: float) -> float:
    """Probability that a new group is a cluster, so that ``crowding`` of the cells are in clusters."""
    mean = float(np.sum(_CLUSTER_SIZES * _CLUSTER_P))
    return crowding / (crowding + mean * (1.0 - crowding)) if crowding < 1 else 1.0


def _touch_target(rng: np.random.Generator, overlap: float) -> float:
    """How much a new cell of a cluster overlaps its anchor: mostly just touching."""
    return rng.uniform(0.2, 1.0) * overlap if overlap > 0 and rng.uniform() < 0.4 else 0.0


def _place_crowded(rng: np.random.Generator, labels: np.ndarray, patterns: list[str], diameter: float,
                   real: _Realism, mitotic: np.ndarray) -> list[_Cell]:
    """Place cells in touching (slightly overlapping) clusters of 2-5 and as single
    cells; writes ``labels`` (an overlap belongs to the later, upper cell)."""
    h, w = labels.shape
    cells: list[_Cell] = []
    areas: dict[int, float] = {}
    cluster: list[_Cell] = []
    wanted = 0  # cells still to add to the current cluster
    failures = 0
    attempts = 0
    p_cluster = _cluster_start_probability(real.crowding)
    while len(cells) < len(patterns):
        attempts += 1
        _check_attempts(attempts, len(cells), len(patterns), diameter, labels.shape, "")
        k = len(cells)
        d = _draw_diameter(rng, diameter)
        cell = _random_cell(rng, 0.0, 0.0, d, patterns[k], float(rng.lognormal(0.0, 0.25)))
        if mitotic[k]:
            cell = _make_mitotic(cell, rng)
        if wanted > 0:
            anchor = cluster[int(rng.integers(len(cluster)))]
            placed = _attach(rng, labels, cell, anchor, k + 1, areas, _touch_target(rng, real.overlap),
                             real.overlap, inside=True)
            if placed is None:
                failures += 1
                if failures >= 8:  # the cluster is boxed in: start a new group
                    wanted = 0
                continue
            cells.append(placed)
            cluster.append(placed)
            wanted -= 1
            continue
        cell = replace(cell, cy=rng.uniform(0, h), cx=rng.uniform(0, w))
        if not _whole_inside(cell, labels.shape):
            continue
        if _try_place(labels, cell, k + 1):
            areas[k + 1] = float(_nucleus_mask(cell, _box(cell, 1.0, labels.shape)).sum())
            cells.append(cell)
            cluster = [cell]
            failures = 0
            wanted = int(rng.choice(_CLUSTER_SIZES, p=_CLUSTER_P)) - 1 if rng.uniform() < p_cluster else 0
    return cells


def _dress_cells(cells: list[_Cell], real: _Realism, scale: float, rng: np.random.Generator) -> list[_Cell]:
    """Give every cell its glow and (for a few) a defocus blur."""
    out = []
    for cell in cells:
        glow = real.glow * rng.uniform(0.5, 1.0) if real.glow > 0 else 0.0
        if cell.pattern in EXTRA_PATTERNS:  # the whole cell is drawn: no body glows around it
            glow = 0.0  # (its draw above is still taken: the cells after it keep theirs)
        defocus = rng.uniform(1.5, 4.0) * scale if real.defocus > 0 and rng.uniform() < real.defocus else 0.0
        out.append(replace(cell, glow=glow, defocus=defocus))
    return out


@dataclass(frozen=True)
class _View:
    """Where an image lies in the microscope's field of view: its top-left pixel
    and the size of the whole field (a crop is a small window of a field)."""

    y0: int
    x0: int
    height: int
    width: int

    def grid(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(self.y0, self.y0 + shape[0], dtype=np.float64)[:, None]
        x = np.arange(self.x0, self.x0 + shape[1], dtype=np.float64)[None, :]
        return y, x


def _coarse_field(view: _View, shape: tuple[int, int], values: np.ndarray, order: int) -> np.ndarray:
    """A coarse grid of ``values`` spread over the whole field, interpolated on the image."""
    y, x = view.grid(shape)
    gy, gx = values.shape
    cy = (y + 0.5) * gy / view.height - 0.5
    cx = (x + 0.5) * gx / view.width - 0.5
    cy, cx = np.broadcast_arrays(cy, cx)
    return ndi.map_coordinates(values, [cy.ravel(), cx.ravel()], order=order, mode="nearest").reshape(shape)


def _illumination_field(view: _View, shape: tuple[int, int], vignetting: float,
                        rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination over the field: +-10 % patches times a vignetting that
    darkens the farthest corner by ``vignetting``."""
    field = _coarse_field(view, shape, 1.0 + 0.1 * rng.uniform(-1.0, 1.0, (4, 4)), order=1)
    oy, ox = (0.5 + rng.uniform(-0.1, 0.1, 2)) * np.array([view.height, view.width])  # optical axis
    if vignetting > 0:
        y, x = view.grid(shape)
        ry, rx = view.height / 2.0, view.width / 2.0
        corners = max(((cy - oy) / ry) ** 2 + ((cx - ox) / rx) ** 2
                      for cy in (0.0, view.height - 1.0) for cx in (0.0, view.width - 1.0))
        field = field * (1.0 - vignetting * (((y - oy) / ry) ** 2 + ((x - ox) / rx) ** 2) / corners)
    return field


def _offset_field(view: _View, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth additive background between about -1 and 1 over the field."""
    return np.clip(_coarse_field(view, shape, rng.uniform(-1.0, 1.0, (3, 3)), order=3), -1.0, 1.0)


def _camera(expected: np.ndarray, photons: float, read_noise: float, bit_depth: int,
            rng: np.random.Generator) -> np.ndarray:
    """Shot noise, read noise (in 8-bit grey levels), quantisation and clipping (saturation)."""
    counts = rng.poisson(np.clip(expected, 0.0, None) * photons)
    measured = counts / photons + rng.normal(0.0, read_noise / 255.0, expected.shape)
    full = 255 if bit_depth == 8 else 65535
    return np.clip(np.rint(measured * full), 0, full).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _render_realistic(shape: tuple[int, int], cells: list[_Cell], scale: float, haze: float, unit: float,
                      intensity: float, bit_depth: int, real: _Realism, view: _View,
                      rng: np.random.Generator, colour_rng: np.random.Generator) -> np.ndarray:
    """:func:`_render` with glow, defocus, vignetting, background offset, the chosen
    camera noise and an optional RGB output (``colour_rng`` draws the red and blue
    channels only, so green is the grey image of the same seed)."""
    stain = np.zeros(shape)
    for cell in cells:
        _add_cell(stain, cell, scale)
    stain = ndi.gaussian_filter(stain, max(0.6, 0.95 * scale), mode="nearest")  # point-spread function
    signal = stain + 0.25 * _out_of_focus(stain, 6.0 * scale)
    illumination = _illumination_field(view, shape, real.vignetting, rng)
    offset = haze * real.background * _offset_field(view, shape, rng) if real.background > 0 else 0.0
    expected = _DARK_OFFSET + intensity * (illumination * (haze + unit * signal) + offset)
    grey = _camera(expected, real.photons, real.read_noise, bit_depth, rng)
    if not real.rgb:
        return grey
    channels = []
    for _ in range(2):  # red and blue: a little crosstalk of the stain, less autofluorescence
        crosstalk = colour_rng.uniform(0.01, 0.05)
        autofluorescence = colour_rng.uniform(0.1, 0.4)
        other = _DARK_OFFSET + intensity * (illumination * (autofluorescence * haze + crosstalk * unit * signal)
                                            + autofluorescence * offset)
        channels.append(_camera(other, real.photons, real.read_noise, 8, colour_rng))
    return np.stack([channels[0], grey, channels[1]], axis=-1)


# --------------------------------------------------------------------------- #
# Crops
# --------------------------------------------------------------------------- #
def simulate_crops(n: int, *, size: int = 64, patterns: Sequence[str] = PATTERNS, seed: int = 0,
                   bit_depth: int = 8, intensity: float = 1.0, neighbours: bool = True,
                   realistic: bool = False, crowding: float | None = None, overlap: float | None = None,
                   glow: float | None = None, mitotic: float | None = None, vignetting: float | None = None,
                   background: float | None = None, photons: float | None = None,
                   read_noise: float | None = None, defocus: float | None = None, rgb: bool = False) -> CropSet:
    """Simulate ``n`` single-cell crops, balanced over ``patterns``.

    Each crop shows one nucleus roughly centred (diameter 60-76 % of the crop
    side, as in the I3A crops) and, like crops cut from a real slide, sometimes parts of
    neighbouring cells of the same pattern at its edges. The mask is the centred
    nucleus only. Crop ``i`` has pattern ``patterns[i % len(patterns)]`` and
    depends only on ``(seed, i)`` and the other settings, not on ``n``.

    With ``realistic=True`` (or any realism option) a crop is a window of a
    realistic field of view around its cell: neighbours touching or slightly
    overlapping it (the centred cell lies on top, so its mask is whole), the
    glow of all cells, now and then a mitotic neighbour, the field's
    illumination at the crop's place, and the camera's noise. The centred cell
    itself is never mitotic.

    Args:
        n: number of crops (>= 1).
        size: side of the square crops in pixels (16-1024).
        patterns: pattern names to draw, from :data:`PATTERNS` and :data:`EXTRA_PATTERNS`.
        seed: random seed (>= 0); the same seed gives the same crops, bit for bit.
        bit_depth: 8 (uint8) or 16 (uint16).
        intensity: brightness relative to typical real IIF crops (0 < intensity <= 100).
        neighbours: draw parts of neighbouring cells near the crop edges.
        realistic: turn on everything real slides have, with random amounts drawn
            per crop (each crop as if from another slide): the settings of
            :func:`simulate_slide` with ``realistic=True``; the centred cell is in a
            touching cluster as often as cells are on such a slide. Each option
            below, when given, overrides its preset amount.
        crowding: how often the centred cell is in a touching cluster of 2-5 (0-1;
            default 0).
        overlap: largest overlap of touching nuclei, as a fraction of the smaller
            one (0-0.25; default 0).
        glow: cytoplasmic glow around every nucleus, at 50-100 % of this fraction
            of its brightness (0-1; default 0); not part of the masks.
        mitotic: chance of a neighbour to be mitotic (0-0.5; default 0).
        vignetting: illumination lost in the darkest corner of the field of view
            the crop is cut from (0-0.9; default 0).
        background: a smooth additive background offset that varies by up to
            +- this fraction of the haze level over the field (0-10; default 0).
        photons: photo-electrons at full scale, which sets the shot noise
            (10-1e7; default 5000).
        read_noise: camera read noise, standard deviation in 8-bit grey levels
            (0-50; default 0.5).
        defocus: chance of a cell to be out of focus (blurred) (0-1; default 0).
        rgb: ``(N, S, S, 3)`` uint8 RGB crops with the stain in green (needs
            ``bit_depth=8``); green equals the grey crops of the same settings.

    Returns:
        A :class:`CropSet`.
    """
    n = _check_int("n", n, 1)
    size = _check_int("size", size, 16, 1024)
    patterns = _check_patterns(patterns)
    seed = _check_int("seed", seed, 0)
    bit_depth = _check_bit_depth(bit_depth)
    intensity = _check_positive("intensity", intensity, 100.0)
    given = dict(crowding=crowding, overlap=overlap, glow=glow, mitotic=mitotic, vignetting=vignetting,
                 background=background, photons=photons, read_noise=read_noise, defocus=defocus)
    _check_realism(realistic, rgb, given)
    if rgb and bit_depth != 8:
        raise ValueError(f"rgb=True makes 8-bit RGB crops: use bit_depth=8, got bit_depth={bit_depth}")
    plain = not realistic and _resolve_realism(False, rgb, given, None).plain

    dtype = np.uint8 if bit_depth == 8 else np.uint16
    images = np.empty((n, size, size, 3) if rgb else (n, size, size), dtype)
    masks = np.empty((n, size, size), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(patterns)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        if plain:
            images[i], masks[i] = _one_crop(rng, size, patterns[labels[i]], bit_depth, intensity, neighbours)
            continue
        extra = np.random.default_rng([seed, i, 1])
        real = _resolve_realism(bool(realistic), rgb, given, extra)
        images[i], masks[i] = _one_realistic_crop(rng, extra, np.random.default_rng([seed, i, 2]), size,
                                                  patterns[labels[i]], bit_depth, intensity, neighbours, real)
    return CropSet(images=images, masks=masks, labels=labels, patterns=patterns)


def _one_realistic_crop(rng: np.random.Generator, extra: np.random.Generator, colour_rng: np.random.Generator,
                        size: int, pattern: str, bit_depth: int, intensity: float, neighbours: bool,
                        real: _Realism) -> tuple[np.ndarray, np.ndarray]:
    """One crop cut from a realistic field around its cell, and the cell's mask."""
    specimen = rng.lognormal(0.0, 0.5)  # how strongly this specimen is stained
    haze = _HAZE_LEVEL * rng.uniform(0.75, 1.4)
    diameter = size * rng.uniform(0.6, 0.76)
    pad = size // 2  # the field around the crop: neighbours' glow and blur reach in from outside
    side = size + 2 * pad
    centre = pad + size / 2.0 - 0.5 + rng.uniform(-0.04, 0.04, 2) * size
    cell = _random_cell(rng, centre[0], centre[1], diameter, pattern, 1.0)
    labels = np.zeros((side, side), np.uint16)
    _try_place(labels, cell, 1)
    areas = {1: float(np.sum(labels == 1))}
    cells = [cell]

    def neighbour() -> _Cell:
        other = _random_cell(rng, 0.0, 0.0, diameter * rng.uniform(0.85, 1.15), pattern, rng.lognormal(0.0, 0.2))
        return _make_mitotic(other, extra) if extra.uniform() < real.mitotic else other

    if neighbours:
        # a touching cluster around the centred cell, as often as cells cluster on the slide
        if real.crowding > 0 and extra.uniform() < real.crowding:
            cluster = [cell]
            for _ in range(int(rng.choice(_CLUSTER_SIZES, p=_CLUSTER_P)) - 1):
                anchor = cell if len(cluster) == 1 or rng.uniform() < 0.6 else cluster[int(rng.integers(len(cluster)))]
                placed = _attach(rng, labels, neighbour(), anchor, len(cells) + 1, areas,
                                 _touch_target(rng, real.overlap), real.overlap, inside=False)
                if placed is not None:
                    cells.append(placed)
                    cluster.append(placed)
        # and cells nearby that do not touch it
        for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.25, 0.1]))):
            for _attempt in range(10):
                other = neighbour()
                angle = rng.uniform(-math.pi, math.pi)
                dist = (diameter + 2.0 * other.radius) / 2.0 * rng.uniform(1.05, 1.6)
                other = replace(other, cy=centre[0] + dist * math.sin(angle), cx=centre[1] + dist * math.cos(angle))
                if _try_place(labels, other, len(cells) + 1):
                    cells.append(other)
                    break
    scale = cell.radius / _REF_RADIUS
    cells = [replace(c, brightness=c.brightness * specimen * real.specimen)
             for c in _dress_cells(cells, real, scale, extra)]
    field_size = max(int(round(diameter * 25.6)), side)  # a field of view of about 25 cells across
    view = _View(int(extra.integers(0, field_size - side + 1)), int(extra.integers(0, field_size - side + 1)),
                 field_size, field_size)
    image = _render_realistic((side, side), cells, scale, haze, _SIGNAL_UNIT, intensity,
                              bit_depth, real, view, extra, colour_rng)
    window = (slice(pad, pad + size), slice(pad, pad + size))
    mask = np.zeros((side, side), np.uint8)
    box = _box(cell, 1.0, mask.shape)
    mask[box] = _nucleus_mask(cell, box)
    return image[window], mask[window]


def _one_crop(rng: np.random.Generator, size: int, pattern: str, bit_depth: int, intensity: float,
              neighbours: bool) -> tuple[np.ndarray, np.ndarray]:
    """One crop and its nucleus mask (uint8 0/1)."""
    specimen = rng.lognormal(0.0, 0.5)  # how strongly this specimen is stained
    haze = _HAZE_LEVEL * rng.uniform(0.75, 1.4)
    diameter = size * rng.uniform(0.6, 0.76)
    centre = size / 2.0 - 0.5 + rng.uniform(-0.04, 0.04, 2) * size
    cell = _random_cell(rng, centre[0], centre[1], diameter, pattern, 1.0)
    labels = np.zeros((size, size), np.uint16)
    _try_place(labels, cell, 1)
    cells = [cell]
    n_neighbours = rng.choice([0, 1, 2, 3], p=[0.3, 0.35, 0.25, 0.1]) if neighbours else 0
    for _ in range(n_neighbours):
        for _attempt in range(10):
            d = diameter * rng.uniform(0.85, 1.15)
            angle = rng.uniform(-math.pi, math.pi)
            dist = (diameter + d) / 2.0 * rng.uniform(1.05, 1.4)
            other = _random_cell(rng, centre[0] + dist * math.sin(angle), centre[1] + dist * math.cos(angle), d,
                                 pattern, rng.lognormal(0.0, 0.2))
            if _try_place(labels, other, len(cells) + 1):
                cells.append(other)
                break
    for c in cells:
        c.brightness *= specimen
    image = _render((size, size), cells, cell.radius / _REF_RADIUS, haze, _SIGNAL_UNIT, intensity, bit_depth, rng)
    return image, (labels == 1).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Slides
# --------------------------------------------------------------------------- #
def simulate_slide(shape: tuple[int, int] = (1024, 1024), *, n_cells: int = 60, cell_diameter: float = 40.0,
                   patterns: Sequence[str] = PATTERNS, seed: int = 0, bit_depth: int | None = None,
                   intensity: float = 1.0, realistic: bool = False, crowding: float | None = None,
                   overlap: float | None = None, glow: float | None = None, mitotic: float | None = None,
                   vignetting: float | None = None, background: float | None = None, photons: float | None = None,
                   read_noise: float | None = None, defocus: float | None = None, rgb: bool = False) -> Slide:
    """Simulate a field of view with ``n_cells`` cells.

    Cells get the ``patterns`` in turn (balanced) and are placed at random by
    rejection sampling, half of them next to an earlier cell so that small
    clusters form, as on real slides; nuclei may touch but never overlap.
    With ``crowding`` (or ``realistic``) most cells are instead packed into
    clusters of 2-5 whose nuclei touch, and with ``overlap`` some of them
    overlap a little (the later, upper cell takes the overlap in the labels).
    Nuclei always lie whole inside the image.

    Args:
        shape: ``(height, width)`` in pixels, each >= 16.
        n_cells: number of cells (>= 1); they must fit without overlap.
        cell_diameter: mean nucleus diameter in pixels (>= 6, <= 3/4 of the
            smaller image side); single cells vary by about +-12 %.
        patterns: pattern names to draw, from :data:`PATTERNS` and :data:`EXTRA_PATTERNS`.
        seed: random seed (>= 0); the same seed gives the same slide, bit for bit.
        bit_depth: 16 (uint16, the default) or 8 (uint8, the default for RGB).
        intensity: brightness relative to typical real IIF images (0 < intensity <= 100).
        realistic: turn on everything real slides have, with random amounts drawn
            per slide: crowded cells (50-85 % in touching clusters of 2-5, some
            overlapping by up to 10 %), cytoplasmic glow (5-40 % of the nucleus),
            2-5 % mitotic cells, vignetting (corners 30-50 % darker), a smooth
            background offset, camera noise from quiet to noisy (0.7-2.5 grey levels)
            3-12 % out-of-focus cells, and a stain strength that varies from slide
            to slide. Each option below, when given, overrides its preset amount.
        crowding: share of cells in touching clusters of 2-5 (0-1; default 0).
        overlap: largest overlap of touching nuclei, as a fraction of the smaller
            one (0-0.25; default 0); about 40 % of the touching cells overlap.
        glow: cytoplasmic glow in the cell body (1.5-2.5 nucleus diameters) around
            each nucleus, at 50-100 % of this fraction of its brightness (0-1;
            default 0); not part of the labels.
        mitotic: share of mitotic cells (0-0.5; default 0): small, 3-10 times as
            bright (often saturating at 8 bit), one compact chromosome plate or two
            daughter plates; labelled as cells (see :attr:`Slide.mitotic`).
        vignetting: illumination lost in the darkest corner (0-0.9; default 0).
        background: a smooth additive background offset that varies by up to
            +- this fraction of the haze level over the field (0-10; default 0).
        photons: photo-electrons at full scale, which sets the shot noise
            (10-1e7; default 5000).
        read_noise: camera read noise, standard deviation in 8-bit grey levels
            (0-50; default 0.5).
        defocus: share of out-of-focus (blurred) cells (0-1; default 0).
        rgb: an 8-bit ``(H, W, 3)`` RGB image with the stain in green, a little
            crosstalk and noise in red and blue; green equals the grey 8-bit image
            of the same settings.

    Returns:
        A :class:`Slide`.

    Raises:
        ValueError: for a bad parameter, or when ``n_cells`` cells of that size
            cannot be placed in ``shape``.
    """
    shape = _check_shape(shape)
    n_cells = _check_int("n_cells", n_cells, 1)
    patterns = _check_patterns(patterns)
    seed = _check_int("seed", seed, 0)
    given = dict(crowding=crowding, overlap=overlap, glow=glow, mitotic=mitotic, vignetting=vignetting,
                 background=background, photons=photons, read_noise=read_noise, defocus=defocus)
    _check_realism(realistic, rgb, given)
    bit_depth = (8 if rgb else 16) if bit_depth is None else _check_bit_depth(bit_depth)
    if rgb and bit_depth != 8:
        raise ValueError(f"rgb=True makes an 8-bit RGB slide: use bit_depth=8 (or leave it out), "
                         f"got bit_depth={bit_depth}")
    intensity = _check_positive("intensity", intensity, 100.0)
    cell_diameter = _check_cell_diameter(cell_diameter, shape)
    extra = np.random.default_rng([seed, 1])  # all realism draws: the default stream stays as it was
    real = _resolve_realism(bool(realistic), rgb, given, extra)
    _check_room(shape, n_cells, cell_diameter, crowded=real.crowding > 0)

    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(n_cells) % len(patterns))
    labels = np.zeros(shape, np.uint16)
    names = [patterns[k] for k in order]
    scale = cell_diameter / 2.0 / _REF_RADIUS
    if real.plain:
        cells = _place_cells(rng, labels, names, cell_diameter)
        image = _render(shape, cells, scale, _HAZE_LEVEL, _SIGNAL_UNIT, intensity, bit_depth, rng)
    else:
        mitotic_cells = extra.uniform(size=n_cells) < real.mitotic
        # an extra pattern's chromatin is unstained: no mitoses
        mitotic_cells &= np.array([name not in EXTRA_PATTERNS for name in names])
        if real.crowding > 0:
            cells = _place_crowded(rng, labels, names, cell_diameter, real, mitotic_cells)
        else:
            cells = _place_cells(rng, labels, names, cell_diameter, mitotic_cells, extra)
        cells = [replace(c, brightness=c.brightness * real.specimen) for c in _dress_cells(cells, real, scale, extra)]
        image = _render_realistic(shape, cells, scale, _HAZE_LEVEL, _SIGNAL_UNIT, intensity, bit_depth, real,
                                  _View(0, 0, shape[0], shape[1]), rng, np.random.default_rng([seed, 2]))
    areas = np.bincount(labels.ravel(), minlength=n_cells + 1)[1:]
    return Slide(
        image=image,
        labels=labels,
        patterns=[c.pattern for c in cells],
        cell_diameter=float(np.mean(2.0 * np.sqrt(areas / math.pi))),
        mitotic=[bool(c.mitosis) for c in cells],
    )


def _check_shape(shape: object) -> tuple[int, int]:
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 2:
        raise ValueError(f"shape must be (height, width), two integers >= 16, got {shape!r}")
    return _check_int("shape[0] (height)", shape[0], 16), _check_int("shape[1] (width)", shape[1], 16)


def _check_cell_diameter(cell_diameter: object, shape: tuple[int, int]) -> float:
    high = 0.75 * min(shape)
    if isinstance(cell_diameter, bool) or not isinstance(cell_diameter, numbers.Real) \
            or not 6.0 <= float(cell_diameter) <= high:
        raise ValueError(
            f"cell_diameter must be a number of pixels in [6, {high:g}] (3/4 of the smaller image side), "
            f"got {cell_diameter!r}")
    return float(cell_diameter)


def _check_room(shape: tuple[int, int], n_cells: int, cell_diameter: float, crowded: bool = False) -> None:
    """Refuse early when the cells would cover too much of the image to be placed apart
    (crowded cells pack closer: they may cover more)."""
    reach = (0.5 if crowded else 0.6) * cell_diameter
    most_covered = 0.45 if crowded else 0.4
    covered = n_cells * math.pi * reach ** 2 / (shape[0] * shape[1])
    if n_cells > 1 and covered > most_covered:
        most = max(1, int(most_covered * shape[0] * shape[1] / (math.pi * reach ** 2)))
        raise ValueError(
            f"n_cells={n_cells} cells of cell_diameter={cell_diameter:g} px cannot be placed without overlap in "
            f"shape={shape}; at most about {most} fit: ask for fewer or smaller cells or a larger shape")


def _place_cells(rng: np.random.Generator, labels: np.ndarray, patterns: list[str], diameter: float,
                 mitotic: np.ndarray | None = None, extra: np.random.Generator | None = None) -> list[_Cell]:
    """Place one cell per entry of ``patterns`` by rejection sampling; writes ``labels``.

    Cells marked in ``mitotic`` are made mitotic with draws from ``extra``, so
    that ``rng`` is used exactly as without them."""
    h, w = labels.shape
    cells: list[_Cell] = []
    attempts = 0
    while len(cells) < len(patterns):
        attempts += 1
        _check_attempts(attempts, len(cells), len(patterns), diameter, labels.shape,
                        "without overlap ")
        d = _draw_diameter(rng, diameter)
        if cells and rng.uniform() < 0.5:  # next to an earlier cell: small clusters, as on real slides
            near = cells[rng.integers(len(cells))]
            angle = rng.uniform(-math.pi, math.pi)
            dist = (2.0 * near.radius + d) / 2.0 * rng.uniform(1.0, 1.3)
            cy, cx = near.cy + dist * math.sin(angle), near.cx + dist * math.cos(angle)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        cell = _random_cell(rng, cy, cx, d, patterns[len(cells)], float(rng.lognormal(0.0, 0.25)))
        if mitotic is not None and mitotic[len(cells)]:
            cell = _make_mitotic(cell, extra)
        if not _whole_inside(cell, labels.shape):
            continue
        if _try_place(labels, cell, len(cells) + 1):
            cells.append(cell)
    return cells


def _draw_diameter(rng: np.random.Generator, diameter: float) -> float:
    """One cell's nucleus diameter: the mean varied by about +-12 %."""
    return diameter * float(np.clip(rng.lognormal(0.0, 0.12), 0.75, 1.3))


def _whole_inside(cell: _Cell, shape: tuple[int, int]) -> bool:
    """Does the whole nucleus lie inside the image (cells are never cut by the border)?"""
    margin = cell.extent + 1.0
    return (margin <= cell.cy <= shape[0] - 1 - margin
            and margin <= cell.cx <= shape[1] - 1 - margin)


def _check_attempts(attempts: int, placed: int, wanted: int, diameter: float,
                    shape: tuple[int, int], how: str) -> None:
    """Give up placing cells, with a message that says what to change, after
    ``200 * wanted + 2000`` attempts."""
    if attempts > 200 * wanted + 2000:
        raise ValueError(
            f"could only place {placed} of n_cells={wanted} cells of cell_diameter={diameter:g} px "
            f"{how}in shape={shape}: ask for fewer or smaller cells or a larger shape")


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
def write_crops_folder(crops: CropSet, out_dir: str | Path) -> Path:
    """Write crops in the I3A folder layout and return ``out_dir``.

    One sub-folder per pattern; crop ``i`` (0-based) becomes ``NNNNN.png`` with
    ``NNNNN = i + 1`` (five digits, running over the whole set) plus its mask
    ``NNNNN_Mask.png`` (0 / 255). 16-bit crops stay 16-bit PNG, RGB crops RGB
    PNG. Existing files of the same names are overwritten.
    """
    import imageio.v3 as iio

    out = Path(out_dir)
    grey = crops.images.ndim == 3
    rgb = crops.images.ndim == 4 and crops.images.shape[-1] == 3
    if not (grey or rgb) or crops.masks.shape != crops.images.shape[:3] or len(crops.labels) != len(crops.images):
        raise ValueError("crops: images must be (N, S, S) or (N, S, S, 3), masks (N, S, S) and labels (N,)")
    if len(crops) > 99999:
        raise ValueError(f"crops: at most 99999 crops fit the five-digit file names, got {len(crops)}")
    for name in crops.patterns:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (image, mask, label) in enumerate(zip(crops.images, crops.masks, crops.labels)):
        folder = out / crops.patterns[int(label)]
        iio.imwrite(folder / f"{i + 1:05d}.png", image)
        iio.imwrite(folder / f"{i + 1:05d}_Mask.png", np.where(mask > 0, 255, 0).astype(np.uint8))
    return out


def write_slide(slide: Slide, out_dir: str | Path, stem: str = "slide") -> tuple[Path, Path]:
    """Write ``<stem>.tif`` (the image) and ``<stem>_labels.tif`` (the nuclei) into ``out_dir``.

    Both are ImageJ TIFFs, an RGB slide as an RGB TIFF; the labels carry the cell
    diameter, the pattern of every label and the ids of the mitotic cells in their
    metadata (:func:`napari_atagan.export.read_tiff_metadata`). Returns both paths.
    """
    import json

    import tifffile

    from . import __version__
    from .export import save_labels_tiff

    if not isinstance(stem, str) or not stem or any(c in stem for c in "/\\"):
        raise ValueError(f"stem must be a plain file name without folders, got {stem!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "simulated slide", "cell_diameter": round(float(slide.cell_diameter), 3),
            "n_cells": len(slide.patterns), "patterns": list(slide.patterns),
            "mitotic": [i + 1 for i, m in enumerate(slide.mitotic) if m]}
    image_path = out / f"{stem}.tif"
    info = json.dumps({"software": f"napari-atagan {__version__}", **meta})
    if slide.image.ndim == 3:
        tifffile.imwrite(image_path, slide.image, imagej=True, photometric="rgb",
                         metadata={"axes": "YXS", "Info": info})
    else:
        tifffile.imwrite(image_path, slide.image, imagej=True, metadata={"axes": "YX", "Info": info})
    labels_path = save_labels_tiff(out / f"{stem}_labels.tif", slide.labels, metadata=meta)
    return image_path, labels_path


def sample_slide() -> Slide:
    """The slide of the shipped sample data (same as ``sample_data/hep2_slide.tif``)."""
    return simulate_slide(SAMPLE_SLIDE_SHAPE, n_cells=SAMPLE_SLIDE_CELLS, cell_diameter=SAMPLE_SLIDE_DIAMETER,
                          seed=SAMPLE_SLIDE_SEED, bit_depth=16)


def sample_crops() -> CropSet:
    """The crops of the shipped sample data (same as ``sample_data/hep2_crops.tif``)."""
    return simulate_crops(SAMPLE_CROPS_PER_PATTERN * len(PATTERNS), size=SAMPLE_CROPS_SIZE,
                          seed=SAMPLE_CROPS_SEED, bit_depth=8)


_SAMPLE_README = """\
# Sample data (simulated)

Simulated indirect-immunofluorescence (IIF) images of HEp-2 cells, made by
`napari_atagan.simulate`. They contain no real patient or contest data and can
be shared freely. Open them in napari under *File > Open Sample > ATA-GAN*.

| file | content |
| --- | --- |
| `hep2_slide.tif` | {h} x {w} uint16 slide, {n_cells} cells of all six patterns, nuclei ~{diam:g} px wide (seed {slide_seed}) |
| `hep2_slide_labels.tif` | uint16 instance labels of the nuclei (0 = background, one id per cell) |
| `hep2_crops.tif` | {n_crops} x {size} x {size} uint8 single-cell crops, {per} per pattern (seed {crops_seed}) |
| `hep2_crops_masks.tif` | uint8 nucleus masks of the crops (0 / 1) |
| `hep2_crops.csv` | `index,pattern,seed` of every crop (index 0-based into the stacks) |

Patterns: {patterns}. Grey levels are as dim as in real IIF crops: normalise for display.
Masks and labels mark the nuclei. Crop `index` alone is
`simulate_crops(index + 1, seed=seed).images[index]`.

Regenerate (deterministic, bit for bit):

    napari-atagan simulate --sample-data sample_data/

or, equivalently, `python -m napari_atagan.simulate sample_data/`.

## Default model

`default_model.safetensors` is the model the plugin uses until you train your
own: an ATA-GAN trained by this product on 3,000 simulated cells (never on real
data), exported without optimizer state. It is made by

    scripts/train_default_model.sh

which runs `napari-atagan simulate --crops 3000 --seed 1`, `napari-atagan train
--quick --steps 2000` (mask teacher, reflect-padded generator) and
`napari-atagan export`.

Why 2,000 steps: a run of the earlier, zero-padded model continued to 5,000
steps was worse on both counts, scored on this folder's slide and against the
simulated training cells (200 per pattern): object F1 0.804 -> 0.762, pixel
IoU 0.667 -> 0.584, SWD 0.117 -> 0.163, diversity 0.86 -> 0.75, with stronger
grid-like texture in its cells.
"""


def make_sample_data(out_dir: str | Path) -> dict[str, Path]:
    """Write the shipped sample data into ``out_dir`` and return the files by name.

    Writes ``hep2_slide.tif``, ``hep2_slide_labels.tif``, ``hep2_crops.tif``,
    ``hep2_crops_masks.tif`` (zlib-compressed TIFF), ``hep2_crops.csv`` and a
    ``README.md``. The same call always writes the same pixels.
    """
    import tifffile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slide = sample_slide()
    crops = sample_crops()
    files = {
        "slide": out / "hep2_slide.tif",
        "slide_labels": out / "hep2_slide_labels.tif",
        "crops": out / "hep2_crops.tif",
        "crops_masks": out / "hep2_crops_masks.tif",
        "crops_csv": out / "hep2_crops.csv",
        "readme": out / "README.md",
    }
    options = dict(compression="zlib", compressionargs={"level": 9}, predictor=True, metadata=None)
    tifffile.imwrite(files["slide"], slide.image, **options)
    tifffile.imwrite(files["slide_labels"], slide.labels, **options)
    tifffile.imwrite(files["crops"], crops.images, **options)
    tifffile.imwrite(files["crops_masks"], crops.masks, **options)
    with open(files["crops_csv"], "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["index", "pattern", "seed"])
        for i, name in enumerate(crops.pattern_names):
            writer.writerow([i, name, SAMPLE_CROPS_SEED])
    files["readme"].write_text(_SAMPLE_README.format(
        h=SAMPLE_SLIDE_SHAPE[0], w=SAMPLE_SLIDE_SHAPE[1], n_cells=SAMPLE_SLIDE_CELLS, diam=SAMPLE_SLIDE_DIAMETER,
        slide_seed=SAMPLE_SLIDE_SEED, n_crops=len(crops), size=SAMPLE_CROPS_SIZE, per=SAMPLE_CROPS_PER_PATTERN,
        crops_seed=SAMPLE_CROPS_SEED, patterns=", ".join(PATTERNS)))
    return files


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "sample_data"
    for key, path in make_sample_data(target).items():
        print(f"{key:>13}: {path}")
