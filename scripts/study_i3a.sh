#!/usr/bin/env bash
# The study behind docs/RESULTS.md, start to end:
#   scripts/study_i3a.sh DATA [OUT] [cpu|gpu]
# DATA: cells in the I3A layout (pattern sub-folders, NNNNN.png + NNNNN_Mask.png).
# OUT (default runs/study): split, runs, scores and pictures.
# cpu: the quick configuration (small networks, batch 32, 4,000 steps) on the CPU;
# gpu: the default configuration (batch 128, 4,000 steps) on CUDA.
# The three runs differ only in the teacher (same seed, same steps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${1:?usage: scripts/study_i3a.sh DATA [OUT] [cpu|gpu]}"
OUT="${2:-runs/study}"
SCALE="${3:-cpu}"
PY=.venv/bin/python
CLI=.venv/bin/napari-atagan

case "$SCALE" in
  cpu) TRAIN=(--quick --steps 4000 --device cpu --set classifier_epochs=2); DEVICE=cpu
       EVAL=(--tstr-epochs 4) ;;
  gpu) TRAIN=(--steps 4000 --device cuda); DEVICE=cuda; EVAL=(--tstr-epochs 8) ;;
  *) echo "scale must be cpu or gpu, got $SCALE" >&2; exit 2 ;;
esac

$PY scripts/split_by_id.py "$DATA" "$OUT/split" --val 0.2
for teacher in classifier mask none; do
  [ -f "$OUT/$teacher/summary.json" ] || \
    $CLI train --data "$OUT/split/train" --teacher "$teacher" --seed 0 "${TRAIN[@]}" \
      --out "$OUT/$teacher" > "$OUT/$teacher.json"
done
$PY scripts/study_i3a.py evaluate "$OUT/classifier" "$OUT/mask" "$OUT/none" \
  --val "$OUT/split/val" --device "$DEVICE" --features "$OUT/classifier/checkpoint.safetensors" \
  "${EVAL[@]}"
$PY scripts/study_i3a.py report "$OUT/mask" "$OUT/classifier" "$OUT/none" \
  --val "$OUT/split/val" --out "$OUT/pictures" > "$OUT/tables.md"
echo "tables: $OUT/tables.md; pictures: $OUT/pictures/" >&2
