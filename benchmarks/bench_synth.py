"""Synthesis throughput: cells/s of generate() (cells, attention maps and masks).

Uses the shipped default model (or --checkpoint). In the same run, the
reference: the same masks made one map at a time (threshold_otsu, largest
component, fill holes per cell), the straightforward loop, as a ratio, and
the fraction of mask pixels on which the two agree (Otsu near-ties can move a
threshold by one histogram bin). Beside them, the torch masks on the device
(what generate uses on a CUDA GPU; the time includes copying the masks to the
host) and the fraction of their pixels equal to the stacked scipy masks.

    python benchmarks/bench_synth.py --device cuda -n 100000
    python benchmarks/bench_synth.py --device cpu -n 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from napari_atagan import default_model_path
from napari_atagan.device import describe, resolve_device
from napari_atagan.gan.synthesis import as_checkpoint, cams_to_masks, cams_to_masks_torch, generate


def one_at_a_time(cams: np.ndarray) -> np.ndarray:
    out = np.zeros(cams.shape, np.uint8)
    for i, cam in enumerate(cams):
        if cam.max() <= 0:
            continue
        fg = cam > threshold_otsu(cam)
        lab, k = ndi.label(fg)
        if k > 1:
            fg = lab == 1 + int(np.argmax(ndi.sum_labels(fg, lab, np.arange(1, k + 1))))
        out[i] = ndi.binary_fill_holes(fg)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--ref-n", type=int, default=2000, help="maps for the one-at-a-time loop")
    args = ap.parse_args()

    device = resolve_device(args.device)
    ckpt = as_checkpoint(args.checkpoint or default_model_path())
    generate(ckpt, 64, device=str(device))  # warm-up
    t0 = time.perf_counter()
    syn = generate(ckpt, args.n, device=str(device), batch_size=args.batch_size)
    total = time.perf_counter() - t0

    cams = syn.attention[: args.ref_n]
    t0 = time.perf_counter()
    fast = cams_to_masks(cams)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = one_at_a_time(cams)
    t_slow = time.perf_counter() - t0
    on_device = torch.from_numpy(cams).to(device)
    cams_to_masks_torch(on_device[:64]).cpu()  # warm-up
    t0 = time.perf_counter()
    dev_masks = cams_to_masks_torch(on_device).cpu().numpy()
    t_dev = time.perf_counter() - t0
    print(json.dumps({
        "device": describe(device),
        "cells": args.n,
        "seconds": round(total, 2),
        "cells_per_s": round(args.n / total, 1),
        "masks": {"maps": len(cams), "stacked_s": round(t_fast, 3),
                  "one_at_a_time_s": round(t_slow, 3), "speedup": round(t_slow / t_fast, 1),
                  "pixels_equal": round(float(np.mean(fast == slow)), 6),
                  "device_s": round(t_dev, 3),
                  "device_pixels_equal": round(float(np.mean(dev_masks == fast)), 6)},
        "peak_host_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
