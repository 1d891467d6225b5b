#!/usr/bin/env bash
# The study behind docs/RESULTS.md, start to end:
#   scripts/study_i3a.sh DATA [OUT] [cpu|gpu]
# DATA: cells in the I3A layout (pattern sub-folders, NNNNN.png + NNNNN_Mask.png).
# OUT (default runs/study): split, runs, scores and pictures.
# cpu: the quick configuration (small networks, batch 32, 4,000 steps) on the CPU;
# gpu: the default configuration (batch 128, 4,000 steps) on CUDA.
# The three runs differ only in the teacher (same seed, same steps).
# PY (default .venv/bin/python) is the Python that runs the package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${1:?usage: scripts/study_i3a.sh DATA [OUT] [cpu|gpu]}"
OUT="${2:-runs/study}"
SCALE="${3:-cpu}"
PY="${PY:-.venv/bin/python}"

case "$SCALE" in
  cpu) TRAIN=(--quick --steps 4000 --device cpu --set classifier_epochs=2); DEVICE=cpu
       EVAL=(--tstr-epochs 4); PARALLEL=0 ;;
  gpu) TRAIN=(--steps 4000 --device cuda); DEVICE=cuda; EVAL=(--tstr-epochs 8); PARALLEL=1 ;;
  *) echo "scale must be cpu or gpu, got $SCALE" >&2; exit 2 ;;
esac

mkdir -p "$OUT"
[ -d "$OUT/split/train" ] || $PY scripts/split_by_id.py "$DATA" "$OUT/split" --val 0.2
for teacher in classifier mask none; do
  if [ ! -f "$OUT/$teacher/summary.json" ]; then
    $PY -m napari_atagan train --data "$OUT/split/train" --teacher "$teacher" --seed 0 \
      "${TRAIN[@]}" --out "$OUT/$teacher" > "$OUT/$teacher.json" 2> "$OUT/$teacher.log"
  fi
  echo "trained $teacher: $(grep -o '"images_per_s": [0-9.]*' "$OUT/$teacher.json" | head -1)" >&2
done
# One process per model: on a GPU machine the CPU-bound labelling of the mosaics
# then uses several cores; on a small CPU the models are scored one after another.
FEATURES="$OUT/classifier/checkpoint.safetensors"
if [ "$PARALLEL" = 1 ]; then
  pids=()
  for teacher in classifier mask none; do
    $PY scripts/study_i3a.py evaluate "$OUT/$teacher" --val "$OUT/split/val" --device "$DEVICE" \
      --features "$FEATURES" --train "$OUT/split/train" "${EVAL[@]}" > "$OUT/$teacher.eval.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
else
  $PY scripts/study_i3a.py evaluate "$OUT/classifier" "$OUT/mask" "$OUT/none" \
    --val "$OUT/split/val" --device "$DEVICE" --features "$FEATURES" --train "$OUT/split/train" "${EVAL[@]}"
fi
$PY scripts/study_i3a.py report "$OUT/mask" "$OUT/classifier" "$OUT/none" \
  --val "$OUT/split/val" --out "$OUT/pictures" > "$OUT/tables.md"
echo "tables: $OUT/tables.md; pictures: $OUT/pictures/" >&2
