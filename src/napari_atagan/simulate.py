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

Main entry points: :func:`simulate_crops` (single-cell crops, like a training
set), :func:`simulate_slide` (a field of view with many cells and an instance
label image), :func:`write_crops_folder` (the I3A folder layout) and
:func:`make_sample_data` (the sample data shipped with the product).
"""

from __future__ import annotations

import csv
import math
import numbers
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "PATTERNS",
    "CropSet",
    "Slide",
    "simulate_crops",
    "simulate_slide",
    "write_crops_folder",
    "make_sample_data",
]

PATTERNS: tuple[str, ...] = ("Homogeneous", "Speckled", "Nucleolar", "Centromere", "NuMem", "Golgi")
"""The six staining patterns, spelled as the pattern folders of the I3A data set."""

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
        images: ``(N, S, S)`` uint8 or uint16 crops, one cell roughly centred in each.
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
        image: ``(H, W)`` uint16 or uint8 image.
        labels: ``(H, W)`` uint16 instance labels of the nuclei (0 = background,
            cell ``i`` has label ``i + 1``); nuclei never overlap.
        patterns: the pattern name of label ``i + 1`` at position ``i``.
        cell_diameter: mean equivalent diameter of the nuclei, in pixels.
    """

    image: np.ndarray
    labels: np.ndarray
    patterns: list[str]
    cell_diameter: float


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
    if not isinstance(patterns, Sequence) or len(patterns) == 0:
        raise ValueError(f"patterns must be a non-empty sequence of names from {PATTERNS}, got {patterns!r}")
    unknown = [p for p in patterns if p not in PATTERNS]
    if unknown:
        raise ValueError(f"patterns: unknown pattern name(s) {unknown}; allowed: {', '.join(PATTERNS)}")
    if len(set(patterns)) != len(patterns):
        raise ValueError(f"patterns must not repeat a name, got {list(patterns)}")
    return tuple(patterns)


def _check_bit_depth(bit_depth: object) -> int:
    if isinstance(bit_depth, bool) or bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    return int(bit_depth)


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


_PATTERN_DRAWERS = {
    "Homogeneous": _homogeneous,
    "Speckled": _speckled,
    "Nucleolar": _nucleolar,
    "Centromere": _centromere,
    "NuMem": _numem,
    "Golgi": _golgi,
}


def _draw_cell(cell: _Cell, box: tuple[slice, slice]) -> np.ndarray:
    """The stain of one cell (nucleus pattern + faint cytoplasm) in its box."""
    rng = np.random.default_rng(cell.seed)
    f = _frame(cell, box)
    r = cell.radius
    s = r / _REF_RADIUS
    inside = np.clip((1.0 - f.q) * r + 0.5, 0.0, 1.0)  # nucleus with a one-pixel soft edge
    dome = np.clip(1.0 - f.q**2, 0.0, 1.0) ** 0.3  # thick centre, thin rim: soft edges
    stain = _PATTERN_DRAWERS[cell.pattern](f, inside, dome, r, s, rng, cell)
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
# Crops
# --------------------------------------------------------------------------- #
def simulate_crops(n: int, *, size: int = 64, patterns: Sequence[str] = PATTERNS, seed: int = 0,
                   bit_depth: int = 8, intensity: float = 1.0, neighbours: bool = True) -> CropSet:
    """Simulate ``n`` single-cell crops, balanced over ``patterns``.

    Each crop shows one nucleus roughly centred (diameter 60-76 % of the crop
    side, as in the I3A crops) and, like crops cut from a real slide, sometimes parts of
    neighbouring cells of the same pattern at its edges. The mask is the centred
    nucleus only. Crop ``i`` has pattern ``patterns[i % len(patterns)]`` and
    depends only on ``(seed, i)`` and the other settings, not on ``n``.

    Args:
        n: number of crops (>= 1).
        size: side of the square crops in pixels (16-1024).
        patterns: pattern names to draw, a subset of :data:`PATTERNS`.
        seed: random seed (>= 0); the same seed gives the same crops, bit for bit.
        bit_depth: 8 (uint8) or 16 (uint16).
        intensity: brightness relative to typical real IIF crops (0 < intensity <= 100).
        neighbours: draw parts of neighbouring cells near the crop edges.

    Returns:
        A :class:`CropSet`.
    """
    n = _check_int("n", n, 1)
    size = _check_int("size", size, 16, 1024)
    patterns = _check_patterns(patterns)
    seed = _check_int("seed", seed, 0)
    bit_depth = _check_bit_depth(bit_depth)
    intensity = _check_positive("intensity", intensity, 100.0)

    dtype = np.uint8 if bit_depth == 8 else np.uint16
    images = np.empty((n, size, size), dtype)
    masks = np.empty((n, size, size), np.uint8)
    labels = np.arange(n, dtype=np.int64) % len(patterns)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        images[i], masks[i] = _one_crop(rng, size, patterns[labels[i]], bit_depth, intensity, neighbours)
    return CropSet(images=images, masks=masks, labels=labels, patterns=patterns)


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
                   patterns: Sequence[str] = PATTERNS, seed: int = 0, bit_depth: int = 16,
                   intensity: float = 1.0) -> Slide:
    """Simulate a field of view with ``n_cells`` non-overlapping cells.

    Cells get the ``patterns`` in turn (balanced) and are placed at random by
    rejection sampling, half of them next to an earlier cell so that small
    clusters form, as on real slides; nuclei may touch but never overlap.

    Args:
        shape: ``(height, width)`` in pixels, each >= 16.
        n_cells: number of cells (>= 1); they must fit without overlap.
        cell_diameter: mean nucleus diameter in pixels (>= 6, <= 3/4 of the
            smaller image side); single cells vary by about +-12 %.
        patterns: pattern names to draw, a subset of :data:`PATTERNS`.
        seed: random seed (>= 0); the same seed gives the same slide, bit for bit.
        bit_depth: 16 (uint16, default) or 8 (uint8).
        intensity: brightness relative to typical real IIF images (0 < intensity <= 100).

    Returns:
        A :class:`Slide`.

    Raises:
        ValueError: for a bad parameter, or when ``n_cells`` cells of that size
            cannot be placed in ``shape`` without overlap.
    """
    shape = _check_shape(shape)
    n_cells = _check_int("n_cells", n_cells, 1)
    patterns = _check_patterns(patterns)
    seed = _check_int("seed", seed, 0)
    bit_depth = _check_bit_depth(bit_depth)
    intensity = _check_positive("intensity", intensity, 100.0)
    cell_diameter = _check_cell_diameter(cell_diameter, shape)
    _check_room(shape, n_cells, cell_diameter)

    rng = np.random.default_rng(seed)
    order = rng.permutation(np.arange(n_cells) % len(patterns))
    labels = np.zeros(shape, np.uint16)
    cells = _place_cells(rng, labels, [patterns[k] for k in order], cell_diameter)
    image = _render(shape, cells, cell_diameter / 2.0 / _REF_RADIUS, _HAZE_LEVEL, _SIGNAL_UNIT, intensity,
                    bit_depth, rng)
    areas = np.bincount(labels.ravel(), minlength=n_cells + 1)[1:]
    return Slide(
        image=image,
        labels=labels,
        patterns=[c.pattern for c in cells],
        cell_diameter=float(np.mean(2.0 * np.sqrt(areas / math.pi))),
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


def _check_room(shape: tuple[int, int], n_cells: int, cell_diameter: float) -> None:
    """Refuse early when the cells would cover too much of the image to be placed apart."""
    covered = n_cells * math.pi * (0.6 * cell_diameter) ** 2 / (shape[0] * shape[1])
    if n_cells > 1 and covered > 0.4:
        most = max(1, int(0.4 * shape[0] * shape[1] / (math.pi * (0.6 * cell_diameter) ** 2)))
        raise ValueError(
            f"n_cells={n_cells} cells of cell_diameter={cell_diameter:g} px cannot be placed without overlap in "
            f"shape={shape}; at most about {most} fit: ask for fewer or smaller cells or a larger shape")


def _place_cells(rng: np.random.Generator, labels: np.ndarray, patterns: list[str], diameter: float) -> list[_Cell]:
    """Place one cell per entry of ``patterns`` by rejection sampling; writes ``labels``."""
    h, w = labels.shape
    cells: list[_Cell] = []
    attempts = 0
    max_attempts = 200 * len(patterns) + 2000
    while len(cells) < len(patterns):
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"could only place {len(cells)} of n_cells={len(patterns)} cells of cell_diameter={diameter:g} px "
                f"without overlap in shape={labels.shape}: ask for fewer or smaller cells or a larger shape")
        d = diameter * float(np.clip(rng.lognormal(0.0, 0.12), 0.75, 1.3))
        if cells and rng.uniform() < 0.5:  # next to an earlier cell: small clusters, as on real slides
            near = cells[rng.integers(len(cells))]
            angle = rng.uniform(-math.pi, math.pi)
            dist = (2.0 * near.radius + d) / 2.0 * rng.uniform(1.0, 1.3)
            cy, cx = near.cy + dist * math.sin(angle), near.cx + dist * math.cos(angle)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        cell = _random_cell(rng, cy, cx, d, patterns[len(cells)], float(rng.lognormal(0.0, 0.25)))
        margin = cell.extent + 1.0
        if not (margin <= cy <= h - 1 - margin and margin <= cx <= w - 1 - margin):
            continue  # keep every nucleus whole inside the image
        if _try_place(labels, cell, len(cells) + 1):
            cells.append(cell)
    return cells


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
def write_crops_folder(crops: CropSet, out_dir: str | Path) -> Path:
    """Write crops in the I3A folder layout and return ``out_dir``.

    One sub-folder per pattern; crop ``i`` (0-based) becomes ``NNNNN.png`` with
    ``NNNNN = i + 1`` (five digits, running over the whole set) plus its mask
    ``NNNNN_Mask.png`` (0 / 255). 16-bit crops stay 16-bit PNG. Existing files
    of the same names are overwritten.
    """
    import imageio.v3 as iio

    out = Path(out_dir)
    if crops.images.ndim != 3 or crops.masks.shape != crops.images.shape or len(crops.labels) != len(crops.images):
        raise ValueError("crops: images and masks must both be (N, S, S) and labels (N,)")
    if len(crops) > 99999:
        raise ValueError(f"crops: at most 99999 crops fit the five-digit file names, got {len(crops)}")
    for name in crops.patterns:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (image, mask, label) in enumerate(zip(crops.images, crops.masks, crops.labels)):
        folder = out / crops.patterns[int(label)]
        iio.imwrite(folder / f"{i + 1:05d}.png", image)
        iio.imwrite(folder / f"{i + 1:05d}_Mask.png", np.where(mask > 0, 255, 0).astype(np.uint8))
    return out


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
