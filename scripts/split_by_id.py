#!/usr/bin/env python
"""Split a folder of cell crops into train / validation parts by blocks of cell ids.

Neighbouring ids come from the same specimen, so a random split would put
near-copies of a validation cell into training. For every pattern folder the
cells are sorted by id and the last ``--val`` fraction becomes validation.
The parts are folders of symbolic links (nothing is copied) in the layout
``napari-atagan train`` and ``evaluate`` read.

``--hold PATTERN=A-B[,C-D...]`` holds out those id ranges of one pattern instead of
its last fraction (e.g. a dim and a bright specimen, so that both kinds are on both
sides: ``--hold Homogeneous=701-850,1401-1650``).

Usage: scripts/split_by_id.py DATA OUT [--val 0.2] [--hold PATTERN=A-B,... ...]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

IMAGE = re.compile(r"^(\d+)\.(png|tif|tiff)$", re.IGNORECASE)
MASK = re.compile(r"^(\d+)_[Mm]ask\..*$")


def split(data: Path, out: Path, val: float,
          hold: dict[str, list[tuple[int, int]]] | None = None) -> dict[str, dict[str, int]]:
    hold = hold or {}
    counts: dict[str, dict[str, int]] = {}
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    if not folders:
        raise SystemExit(f"{data}: no pattern sub-folders")
    for folder in folders:
        files = list(folder.iterdir())
        cells = sorted((int(m.group(1)), p) for p in files if (m := IMAGE.match(p.name)))
        masks: dict[str, list[Path]] = {}  # a cell's masks by its stem, listed once
        for p in files:
            if (m := MASK.match(p.name)):
                masks.setdefault(m.group(1), []).append(p)
        if folder.name in hold:
            inside = [any(a <= i <= b for a, b in hold[folder.name]) for i, _ in cells]
            parts = {"train": [c for c, x in zip(cells, inside) if not x],
                     "val": [c for c, x in zip(cells, inside) if x]}
        else:
            n_val = max(1, round(len(cells) * val))
            parts = {"train": cells[:-n_val], "val": cells[-n_val:]}
        for part, items in parts.items():
            dest = out / part / folder.name
            dest.mkdir(parents=True, exist_ok=True)
            for _, image in items:
                for src in [image, *sorted(masks.get(image.stem, []))]:
                    link = dest / src.name
                    if not link.exists():
                        link.symlink_to(src.resolve())
        counts[folder.name] = {k: len(v) for k, v in parts.items()}
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--val", type=float, default=0.2, help="validation fraction (0.2)")
    p.add_argument("--hold", nargs="+", default=[], metavar="PATTERN=A-B,C-D",
                   help="hold out these id ranges of a pattern instead of its last fraction")
    a = p.parse_args(argv)
    if not 0 < a.val < 1:
        p.error("--val must be between 0 and 1")
    hold: dict[str, list[tuple[int, int]]] = {}
    for item in a.hold:
        name, _, ranges = item.partition("=")
        try:
            hold[name] = [tuple(int(v) for v in r.split("-", 1)) for r in ranges.split(",")]
        except ValueError:
            p.error(f"--hold {item}: expected PATTERN=A-B[,C-D...] with whole ids")
        if not name or any(len(r) != 2 or r[0] > r[1] for r in hold[name]):
            p.error(f"--hold {item}: expected PATTERN=A-B[,C-D...] with A <= B")
    counts = split(a.data, a.out, a.val, hold)
    json.dump(counts, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
