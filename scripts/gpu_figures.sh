#!/usr/bin/env bash
# The figures of docs/RESULTS.md that need a CUDA GPU, in one run sized for a short
# lease of a GPU machine (about nine minutes of wall time on one H100/H200 with 16 cores):
#
#   scripts/gpu_figures.sh DATA SLIDES OUT
#
# DATA: the I3A cells (pattern sub-folders, NNNNN.png + NNNNN_Mask.png), e.g. a copy of
# ../shared/data/i3a-task1; SLIDES: a folder with nuclei.tif and nuclei_labels.tif (the
# real nuclei slide); OUT: where the logs, JSON and one archive of them all go
# (OUT/gpu_figures.tgz, and OUT/summary.txt with the headline numbers).
#
# What runs, and in which order:
#  1. the two splits by id (the study's, and the one that holds out a dim and a bright
#     Homogeneous specimen for dim -> bright);
#  2. alone on the machine, so that its timing is clean: the lab's archive, 200 simulated
#     1388 x 1038 slides through `attention --image DIR --device cuda` (slides/s);
#  3. then side by side on the GPU, each stopped at the deadline: the tests that need CUDA,
#     and four jobs:
#     - the full-scale mask model (train --teacher mask), then its cells on slides
#       (scripts/slide_study.py: validation mosaics, realistic simulated slides mixed and
#       one pattern each, the real nuclei slide, beside the classic pipeline);
#     - the full-scale classifier-teacher model, then `evaluate augment` (25, 100 and 400
#       real cells per pattern, seeds 0 and 1, with --ceiling) and `evaluate samples --tstr`;
#     - the translation of Homogeneous <-> Speckled at full scale (UAG + masks and CycleGAN,
#       each crop on its own grey levels), scored with both composites;
#     - dim -> bright on held-out Homogeneous specimens at full scale (UAG + masks and
#       CycleGAN, on the target domain's grey range), scored with both composites.
# A job that reaches the deadline leaves its log (and, for training, its checkpoint, which
# a second run of this script on the same machine resumes from).
#
# Settings (environment): PY (default .venv/bin/python; python3 on a GPU machine, with
# PYTHONPATH=src), DEVICE (cuda), BUDGET (seconds for the whole run, 540), SMOKE=1 (tiny
# runs on the CPU in a few minutes: checks that every step works, measures nothing).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${1:?usage: scripts/gpu_figures.sh DATA SLIDES OUT}"
SLIDES="${2:?usage: scripts/gpu_figures.sh DATA SLIDES OUT}"
OUT="${3:?usage: scripts/gpu_figures.sh DATA SLIDES OUT}"
PY="${PY:-.venv/bin/python}"
DEVICE="${DEVICE:-cuda}"
BUDGET="${BUDGET:-540}"
START=$(date +%s)
END=$((START + BUDGET))
WORK="${WORK:-runs/gpu_figures}"
LOGS="$WORK/logs"
mkdir -p "$OUT" "$LOGS"

if [ "${SMOKE:-0}" = 1 ]; then  # every step, tiny, on the CPU
  TRAIN=(--quick --steps 20 --image-size 32 --set classifier_epochs=1)
  ARCHIVE=(--count 4); STUDY=(--per-pattern 6 --simulated 1); ONE=(--simulated 1)
  AUGMENT=(--counts 5 --generated 10 --epochs 1 --seeds 0 --image-size 32)
  TSTR=(-n 60 --tstr-per-pattern 5 --tstr-epochs 1); TRANSLATE=(--steps 20 --scale quick --judge-epochs 1)
  THREADS=1
else
  TRAIN=(--steps 4000); ARCHIVE=(--count 200); STUDY=(--per-pattern 60 --simulated 3)
  ONE=(--simulated 3)
  AUGMENT=(--counts 25 100 400 --generated 400 --epochs 8 --seeds 0 1 --ceiling)
  TSTR=(-n 600 --tstr-per-pattern 100 --tstr-epochs 8); TRANSLATE=(--steps 4000 --scale full)
  THREADS=3
fi

left() { echo $((END - $(date +%s))); }
say() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOGS/steps.log"; }
step() {  # step NAME COMMAND...: one step of a job, stopped at the deadline
  local name=$1
  shift
  local t=$(left)
  if [ "$t" -le 5 ]; then say "$name: not started (no time left)"; return 1; fi
  say "$name: start"
  timeout "$t" "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.log"
  local rc=$?
  say "$name: exit $rc"
  return $rc
}

if [ "${SMOKE:-0}" = 1 ]; then  # about 80 cells a pattern, spread over all their ids
  $PY - "$DATA" "$WORK/smoke_data" <<'PYTHON'
import re, sys
from pathlib import Path
data, out = Path(sys.argv[1]), Path(sys.argv[2])
for folder in sorted(p for p in data.iterdir() if p.is_dir()):
    cells = sorted(p for p in folder.iterdir() if re.fullmatch(r"\d+\.png", p.name))
    dest = out / folder.name
    dest.mkdir(parents=True, exist_ok=True)
    for image in cells[::max(1, len(cells) // 80)]:
        for src in (image, image.with_name(f"{image.stem}_Mask.png")):
            if src.exists() and not (dest / src.name).exists():
                (dest / src.name).symlink_to(src.resolve())
PYTHON
  DATA="$WORK/smoke_data"
fi

# 1. the splits (folders of links to DATA)
SPLIT="$WORK/split"
SPLIT_DIM="$WORK/split_dimh"
[ -d "$SPLIT/train" ] || $PY scripts/split_by_id.py "$DATA" "$SPLIT" --val 0.2 > "$LOGS/split.log"
[ -d "$SPLIT_DIM/train" ] || $PY scripts/split_by_id.py "$DATA" "$SPLIT_DIM" --val 0.2 \
  --hold Homogeneous=701-850,1401-1650 > "$LOGS/split_dimh.log"

# 2. the archive, alone
step archive $PY benchmarks/bench_archive.py --device "$DEVICE" --skip-sequential \
  --slides "$WORK/slides" "${ARCHIVE[@]}"

# 3. four jobs side by side
train_model() {  # train_model TEACHER: the full-scale model, resumed if stopped before
  local run="$WORK/$1" resume=()
  if [ -f "$run/summary.json" ]; then say "train_$1: done before"; return 0; fi
  [ -f "$run/checkpoint.safetensors" ] && resume=(--resume "$run/checkpoint.safetensors")
  step "train_$1" $PY -m napari_atagan train --data "$SPLIT/train" --teacher "$1" --seed 0 \
    --device "$DEVICE" "${TRAIN[@]}" --out "$run" "${resume[@]}"
}
mask_job() {
  train_model mask || return
  step slides_mask $PY scripts/slide_study.py "$WORK/mask/checkpoint.safetensors" \
    --crops "$SPLIT/val" --seed 100 --slide "$SLIDES/nuclei.tif" "$SLIDES/nuclei_labels.tif" 24 \
    --device "$DEVICE" "${STUDY[@]}" --json "$LOGS/slides_mask.json" || return
  step slides_mask_patterns $PY scripts/slide_study.py "$WORK/mask/checkpoint.safetensors" \
    --seed 100 --device "$DEVICE" "${ONE[@]}" --simulated-patterns Centromere Golgi \
    Homogeneous NuMem Nucleolar Speckled Cytoplasmic --json "$LOGS/slides_mask_patterns.json"
}
classifier_job() {
  train_model classifier || return
  local ckpt="$WORK/classifier/checkpoint.safetensors"
  step augment $PY -m napari_atagan evaluate augment --checkpoint "$ckpt" --real "$SPLIT/train" \
    --test "$SPLIT/val" --device "$DEVICE" "${AUGMENT[@]}" --json "$LOGS/augment.json" || return
  step tstr $PY -m napari_atagan evaluate samples --checkpoint "$ckpt" --real "$SPLIT/val" \
    --per-pattern --tstr --tstr-reference "$SPLIT/train" --device "$DEVICE" "${TSTR[@]}" \
    --json "$LOGS/tstr.json"
}
translate_job() {  # translate_job NAME SPLIT EXPERIMENT VARIANT...
  local name=$1 split=$2 exp=$3
  shift 3
  local args=(--split "$split" --out "$WORK/$name" --experiments "$exp" --variants "$@"
              --device "$DEVICE" --threads "$THREADS" "${TRANSLATE[@]}")
  step "$name" $PY scripts/translate_study.py "${args[@]}" || return
  step "${name}_hard" $PY scripts/translate_study.py "${args[@]}" --score-only --composite hard
}

cuda_tests() {  # the tests that need CUDA (skipped on a machine without it)
  [ "$DEVICE" = cuda ] || { say "cuda_tests: not run on $DEVICE"; return 0; }
  step cuda_tests $PY -m pytest -q -p no:cacheprovider -o filterwarnings= tests/test_training.py \
    tests/test_augment.py tests/test_slide.py -k "cuda or gpu"
}

cuda_tests &
mask_job &
classifier_job &
translate_job translate_pattern "$SPLIT" pattern uagmask_own cyclegan_own &
translate_job translate_dimh "$SPLIT_DIM" dimh uagmask_target cyclegan_target &
wait

# what comes back: every log and JSON in one archive, and the headline numbers
for run in "$WORK"/translate_*/*/; do
  for f in "$run"scores_*.json; do
    [ -f "$f" ] && cp "$f" "$LOGS/$(basename "$run")_$(basename "$f")"
  done
done
for run in mask classifier; do
  [ -f "$WORK/$run/summary.json" ] && cp "$WORK/$run/summary.json" "$LOGS/${run}_summary.json"
done
command -v nvidia-smi > /dev/null && nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
{
  echo "# GPU figures, $(date -u +%F), device $DEVICE, budget $BUDGET s"
  cat "$LOGS/steps.log"
  for name in cuda_tests archive slides_mask slides_mask_patterns augment tstr translate_pattern \
              translate_pattern_hard translate_dimh translate_dimh_hard; do
    [ -s "$LOGS/$name.out" ] && { echo; echo "## $name"; cat "$LOGS/$name.out"; }
  done
  [ -f "$LOGS/nvidia-smi.txt" ] && { echo; echo "## GPU"; head -20 "$LOGS/nvidia-smi.txt"; }
} > "$OUT/summary.txt"
tar czf "$OUT/gpu_figures.tgz" -C "$WORK" logs
say "done: $OUT/summary.txt, $OUT/gpu_figures.tgz"
cat "$OUT/summary.txt"
