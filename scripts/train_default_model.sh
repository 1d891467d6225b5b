#!/usr/bin/env bash
# Trains the shipped default model from the product's own simulated cells
# (never real data) and writes sample_data/default_model.safetensors.
# About 15 minutes on a 2-core CPU. Usage: scripts/train_default_model.sh [BETA]
# The generator upsamples bilinearly and has noise inputs (no lattice in its cells);
# seed 1 was kept over seed 0 on the sample slide and on mosaics of real cells of
# the I3A training part (docs/experiments.md, "Where the lattice comes from").
# Training fits the discriminator's pattern probe at every checkpoint and the export
# keeps it; the file shipped before probes got its probe from the same cells with
# `napari-atagan probe --checkpoint sample_data/default_model.safetensors --data runs/sim_cells`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BETA="${1:-1.0}"
CLI=.venv/bin/napari-atagan
$CLI simulate --crops 3000 --seed 1 --out runs/sim_cells
$CLI train --data runs/sim_cells --quick --steps 2000 --beta "$BETA" --seed 1 --device cpu \
    --set g_upsample='"bilinear"' --set g_noise=true --out "runs/default_b$BETA"
$CLI export --checkpoint "runs/default_b$BETA/checkpoint.safetensors" \
    --out sample_data/default_model.safetensors
