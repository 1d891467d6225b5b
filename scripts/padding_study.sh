#!/usr/bin/env bash
# Generator padding (zeros against reflect) at full scale, after the study:
#   scripts/padding_study.sh [OUT] [cpu|gpu]
# OUT (default runs/study) holds the study's split and runs (scripts/study_i3a.sh);
# its mask and none runs are the zero-padded seed-0 models. This adds the mask teacher
# and the plain GAN with reflect padding (seeds 0 and 1) and zero padding (seed 1),
# and scores samples and mosaics like the study (docs/experiments.md, Generator padding).
# PY (default .venv/bin/python) is the Python that runs the package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-runs/study}"
SCALE="${2:-gpu}"
PY="${PY:-.venv/bin/python}"
case "$SCALE" in
  cpu) TRAIN=(--quick --steps 4000 --device cpu); DEVICE=cpu ;;
  gpu) TRAIN=(--steps 4000 --device cuda); DEVICE=cuda ;;
  *) echo "scale must be cpu or gpu, got $SCALE" >&2; exit 2 ;;
esac
[ -d "$OUT/split/train" ] || { echo "no study in $OUT: run scripts/study_i3a.sh first" >&2; exit 2; }

runs=()
for teacher in mask none; do
  for variant in reflect_s0 reflect_s1 zeros_s1; do
    padding=${variant%_s*}; seed=${variant#*_s}
    run="$OUT/${teacher}_$variant"
    runs+=("$run")
    [ -f "$run/summary.json" ] && continue
    $PY -m napari_atagan train --data "$OUT/split/train" --teacher "$teacher" --seed "$seed" \
      "${TRAIN[@]}" --set g_padding="$padding" --out "$run" > "$run.json" 2> "$run.log"
    echo "trained $run" >&2
  done
done
# KID needs the study's pattern classifier; without it the samples get SWD and diversity
FEATURES=()
[ -f "$OUT/classifier/checkpoint.safetensors" ] \
  && FEATURES=(--features "$OUT/classifier/checkpoint.safetensors")
pids=()
for run in "${runs[@]}"; do
  parts=samples
  [[ "$(basename "$run")" == mask_* ]] && parts=samples,mosaics
  $PY scripts/study_i3a.py evaluate "$run" --val "$OUT/split/val" --device "$DEVICE" \
    "${FEATURES[@]}" --train "$OUT/split/train" --parts "$parts" > "$run.eval.log" 2>&1 &
  pids+=($!)
  [ "$SCALE" = cpu ] && wait "$!"
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
echo "scores: $OUT/*_{reflect,zeros}_s*/study.json" >&2
