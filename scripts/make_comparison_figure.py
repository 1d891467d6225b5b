"""Build docs/simulated_vs_real.png: simulated HEp-2 cells beside real ones.

Two rows by six columns, one column per staining pattern (Homogeneous,
Speckled, Nucleolar, Centromere, NuMem, Golgi): the top row shows a cell from
``napari_atagan.simulate``, the bottom row a real cell of the same pattern from
an I3A-layout folder (pattern sub-folders of ``NNNNN.png`` crops). Both are
picked by the same rule: among 40 random crops of the pattern, the one at the
75th percentile of contrast (typical, clearly stained, not the brightest).
Each cell is contrast-stretched on its own for display, as IIF crops are dim.

Usage::

    python scripts/make_comparison_figure.py [REAL_DIR] [--out docs/simulated_vs_real.png]

``REAL_DIR`` defaults to ``../shared/data/i3a-task1`` next to the repository.
Only numpy and scikit-image are used; the labels are drawn with a small
built-in bitmap font.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage import io
from skimage.transform import resize

from napari_atagan.simulate import PATTERNS, simulate_crops

REPO = Path(__file__).resolve().parents[1]
TILE = 144  # displayed side of each cell, in pixels
GAP = 6
TEXT_SCALE = 2

# 5 x 7 bitmap glyphs (plus two descender rows for g and p) for the few
# characters the figure needs.
_GLYPHS = {
    "C": ["01110", "10001", "10000", "10000", "10000", "10001", "01110"],
    "G": ["01110", "10001", "10000", "10111", "10001", "10001", "01111"],
    "H": ["10001", "10001", "10001", "11111", "10001", "10001", "10001"],
    "M": ["10001", "11011", "10101", "10101", "10001", "10001", "10001"],
    "N": ["10001", "11001", "10101", "10011", "10001", "10001", "10001"],
    "S": ["01111", "10000", "10000", "01110", "00001", "00001", "11110"],
    "a": ["00000", "00000", "01110", "00001", "01111", "10001", "01111"],
    "c": ["00000", "00000", "01110", "10000", "10000", "10001", "01110"],
    "d": ["00001", "00001", "01101", "10011", "10001", "10001", "01111"],
    "e": ["00000", "00000", "01110", "10001", "11111", "10000", "01110"],
    "g": ["00000", "00000", "01111", "10001", "10001", "01111", "00001", "00001", "01110"],
    "i": ["00100", "00000", "01100", "00100", "00100", "00100", "01110"],
    "k": ["10000", "10000", "10010", "10100", "11000", "10100", "10010"],
    "l": ["01100", "00100", "00100", "00100", "00100", "00100", "01110"],
    "m": ["00000", "00000", "11010", "10101", "10101", "10001", "10001"],
    "n": ["00000", "00000", "10110", "11001", "10001", "10001", "10001"],
    "o": ["00000", "00000", "01110", "10001", "10001", "10001", "01110"],
    "p": ["00000", "00000", "11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "r": ["00000", "00000", "10110", "11001", "10000", "10000", "10000"],
    "s": ["00000", "00000", "01111", "10000", "01110", "00001", "11110"],
    "t": ["01000", "01000", "11100", "01000", "01000", "01001", "00110"],
    "u": ["00000", "00000", "10001", "10001", "10001", "10011", "01101"],
    " ": ["00000"] * 7,
}


def render_text(text: str, scale: int = TEXT_SCALE) -> np.ndarray:
    """A white-on-black float image of ``text`` in the built-in 5 x 7 font."""
    rows = [_GLYPHS[ch] + ["00000"] * (9 - len(_GLYPHS[ch])) for ch in text]
    spaced = []
    for glyph in rows:
        spaced += [np.array([[int(b) for b in row] for row in glyph], float), np.zeros((9, 1))]
    line = np.concatenate(spaced[:-1], axis=1)
    return np.kron(line, np.ones((scale, scale)))


def paste_centred(canvas: np.ndarray, patch: np.ndarray, cy: int, cx: int) -> None:
    """Paste ``patch`` into ``canvas`` centred at (cy, cx)."""
    y0, x0 = cy - patch.shape[0] // 2, cx - patch.shape[1] // 2
    canvas[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = np.maximum(
        canvas[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]], patch)


def display(image: np.ndarray) -> np.ndarray:
    """Resize a crop to the tile size and stretch its grey levels to [0, 1]."""
    image = resize(image.astype(float), (TILE, TILE), order=1, anti_aliasing=True)
    lo, hi = np.percentile(image, [0.5, 99.8])
    return np.clip((image - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """How clearly a cell stands out: bright stain above background, over the noise."""
    image = image.astype(float)
    noise = np.std(image[~mask] - np.median(image[~mask])) + 1.0
    return float((np.percentile(image[mask], 99) - np.median(image[~mask])) / noise)


def real_cell(real_dir: Path, pattern: str, rng: np.random.Generator, candidates: int = 40) -> np.ndarray:
    """A typical, clearly stained real crop of ``pattern``.

    Draws ``candidates`` crops of typical size (60-80 px) at random and returns
    the one at the 75th percentile of contrast.
    """
    files = sorted(p for p in (real_dir / pattern).glob("*.png") if not p.stem.endswith("_Mask"))
    if not files:
        raise SystemExit(f"no crops found in {real_dir / pattern}")
    pool = []
    for index in rng.permutation(len(files)):
        image = io.imread(files[index])
        mask_file = files[index].with_name(files[index].stem + "_Mask.png")
        if not 60 <= image.shape[0] <= 80 or not mask_file.exists():
            continue
        mask = io.imread(mask_file) > 0
        if mask.any() and (~mask).any():
            pool.append((contrast(image, mask), int(index), image))
        if len(pool) == candidates:
            break
    return typical(pool)


def typical(pool: list[tuple[float, int, np.ndarray]]) -> np.ndarray:
    """The crop at the 75th percentile of contrast in a pool of (contrast, index, crop)."""
    pool = sorted(pool, key=lambda item: item[:2])
    return pool[int(0.75 * (len(pool) - 1))][2]


def simulated_cell(crops, pattern: str) -> np.ndarray:
    """A typical, clearly stained simulated crop of ``pattern`` (same rule as for real cells)."""
    k = crops.patterns.index(pattern)
    return typical([(contrast(img, m > 0), i, img) for i, (img, m, lab)
                    in enumerate(zip(crops.images, crops.masks, crops.labels)) if lab == k])


def build_figure(real_dir: Path, seed: int, real_seed: int, candidates: int = 40) -> np.ndarray:
    simulated = simulate_crops(candidates * len(PATTERNS), seed=seed)
    rng = np.random.default_rng(real_seed)
    rows = [[display(simulated_cell(simulated, p)) for p in PATTERNS],
            [display(real_cell(real_dir, p, rng, candidates)) for p in PATTERNS]]
    label_w, title_h = 116, 32
    height = title_h + 2 * TILE + 3 * GAP
    width = label_w + len(PATTERNS) * (TILE + GAP) + GAP
    canvas = np.zeros((height, width))
    for r, row in enumerate(rows):
        y = title_h + GAP + r * (TILE + GAP)
        paste_centred(canvas, render_text(("simulated", "real")[r]), y + TILE // 2, label_w // 2)
        for c, tile in enumerate(row):
            x = label_w + GAP + c * (TILE + GAP)
            canvas[y:y + TILE, x:x + TILE] = tile
    for c, name in enumerate(PATTERNS):
        paste_centred(canvas, render_text(name), title_h // 2, label_w + GAP + c * (TILE + GAP) + TILE // 2)
    return (canvas * 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real_dir", nargs="?", type=Path, default=REPO / ".." / "shared" / "data" / "i3a-task1",
                        help="I3A-layout folder of real crops (default: ../shared/data/i3a-task1)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "simulated_vs_real.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated cells")
    parser.add_argument("--real-seed", type=int, default=6, help="seed of the choice of real cells")
    args = parser.parse_args(argv)
    figure = build_figure(args.real_dir, args.seed, args.real_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(args.out, figure, check_contrast=False)
    print(f"wrote {args.out} ({figure.shape[1]} x {figure.shape[0]} px, {args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
