#!/usr/bin/env bash
# Creates (once) the project's virtual environment in .venv and installs the
# project into it. Sourced by scripts/demo and scripts/test; safe to re-run:
# a second run only checks a stamp and returns in about a second.
#   EXTRAS=all|all,test   which optional dependencies to install
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ATAGAN_VENV:-$ROOT/.venv}"
EXTRAS="${EXTRAS:-all}"
PYTHON="${PYTHON:-python3}"

stamp_value() {
  { cat "$ROOT/pyproject.toml"; echo "extras=$EXTRAS"; } | sha256sum | cut -d' ' -f1
}

# A stamp per extras set, so `test` (all,test) after `demo` (all) installs the rest once.
STAMP="$VENV/.napari-atagan-${EXTRAS//,/-}.stamp"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value)" ]; then
  return 0 2>/dev/null || exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "napari-atagan needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating the virtual environment in $VENV ..."
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

if ! "$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
  echo "Installing PyTorch (a few minutes the first time) ..."
  # The tested pair first; where this machine does not offer it, the newest compatible pair.
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1" || "${PIP[@]}" torch torchvision
fi

echo "Installing napari-atagan[$EXTRAS] ..."
"${PIP[@]}" -e "$ROOT[$EXTRAS]"
stamp_value > "$STAMP"
