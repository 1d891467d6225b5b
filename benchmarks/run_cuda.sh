#!/usr/bin/env bash
# Every benchmark on a CUDA GPU, one after another; each one's output is also kept
# in OUT/NAME.log (default OUT: runs/bench_cuda). NAMEs pick some of them (e.g. to
# split the list over several shorter sessions): cuda_tests train train_eager
# train_reflect train_batch512 train_compile synth slide slide_tile2048 slide_big
# archive translate translate_big.
#   benchmarks/run_cuda.sh [OUT [NAME ...]]
# PY (default .venv/bin/python) is the Python that runs the package.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${1:-runs/bench_cuda}"
shift $(( $# > 0 ? 1 : 0 ))
ONLY=" $* "
PY="${PY:-.venv/bin/python}"
mkdir -p "$OUT"

wanted() { [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $1 "* ]]; }

run() {  # run NAME SECONDS SCRIPT ARGS...: one benchmark, stopped after SECONDS
  local name=$1 limit=$2
  shift 2
  wanted "$name" || return 0
  echo "== $name: $*"
  timeout "$limit" "$PY" "$@" 2>&1 | tee "$OUT/$name.log"
}

# the tests that need CUDA (the CUDA-graph step, augmentation on the device), if pytest is there;
# the warning filters are dropped since they name packages (pydantic) that only the GUI needs
if ! wanted cuda_tests; then
  :
elif "$PY" -c "import pytest" 2>/dev/null; then
  echo "== cuda_tests"
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider -o filterwarnings= tests/test_training.py tests/test_augment.py tests/test_slide.py \
    -k "cuda or gpu" 2>&1 | tee "$OUT/cuda_tests.log"
else
  echo "== cuda_tests skipped: no pytest for $PY"
fi

run train 240 benchmarks/bench_train.py --device cuda --steps 400 --profile
run train_eager 240 benchmarks/bench_train.py --device cuda --steps 400 --eager --no-reference --profile
run train_reflect 240 benchmarks/bench_train.py --device cuda --steps 400 --set g_padding=reflect --no-reference
run train_batch512 180 benchmarks/bench_train.py --device cuda --steps 200 --batch 512 --no-reference
run train_compile 240 benchmarks/bench_train.py --device cuda --steps 400 --compile --no-reference
run synth 120 benchmarks/bench_synth.py --device cuda -n 100000
run slide 240 benchmarks/bench_slide.py --device cuda --profile --kernels --variants
run slide_tile2048 180 benchmarks/bench_slide.py --device cuda --tile-size 2048 --profile
run slide_big 360 benchmarks/bench_slide.py --device cuda --big --profile
run archive 300 benchmarks/bench_archive.py --device cuda --skip-sequential --count 200
run naming 120 benchmarks/bench_naming.py --device cuda --slides 20
run translate 240 benchmarks/bench_translate.py --device cuda
run translate_big 300 benchmarks/bench_translate.py --device cuda --size 1024 --big 16384
