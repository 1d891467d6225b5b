#!/usr/bin/env python
"""Split a folder of cell crops into train / validation parts by blocks of cell ids.

Neighbouring ids come from the same specimen, so a random split would put
near-copies of a validation cell into training. For every pattern folder the
cells are sorted by id and the last ``--val`` fraction becomes validation.
The parts are folders of symbolic links (nothing is copied) in the layout
``napari-atagan train`` and ``evaluate`` read.

Usage: scripts/split_by_id.py DATA OUT [--val 0.2]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

IMAGE = re.compile(r"^(\d+)\.(png|tif|tiff)$", re.IGNORECASE)


def split(data: Path, out: Path, val: float) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    if not folders:
        raise SystemExit(f"{data}: no pattern sub-folders")
    for folder in folders:
        cells = sorted((int(m.group(1)), p) for p in folder.iterdir()
                       if (m := IMAGE.match(p.name)))
        n_val = max(1, round(len(cells) * val))
        parts = {"train": cells[:-n_val], "val": cells[-n_val:]}
        for part, items in parts.items():
            dest = out / part / folder.name
            dest.mkdir(parents=True, exist_ok=True)
            for _, image in items:
                for src in [image, *image.parent.glob(f"{image.stem}_[Mm]ask.*")]:
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
    a = p.parse_args(argv)
    if not 0 < a.val < 1:
        p.error("--val must be between 0 and 1")
    counts = split(a.data, a.out, a.val)
    json.dump(counts, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
