#!/usr/bin/env bash
# Create .venv and install imagine-bot with its dev tools. Idempotent: re-runs only when pyproject.toml changes.
#   TORCH_SPEC   torch requirement installed first (default torch==2.13.0)
#   TORCH_INDEX  optional wheel index for torch, e.g. https://download.pytorch.org/whl/cpu on a CPU-only box
#                (an unpinned/unindexed torch from PyPI is the multi-GB CUDA build on Linux)
#   EXTRAS       extras to install (default dev); scripts/test.sh (CI) adds `ray` (the scale-out tests), `train` (fine-tuning) and `safety`, the NudeNet image
#                classifier, whose wheel carries an AGPL-3.0 licence file (README -> Image safety): an operator
#                opts in with EXTRAS=dev,safety scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS:-dev}"
stamp="$VENV/.installed-$( (cat pyproject.toml; echo "$EXTRAS") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "imagine-bot needs Python 3.11 or newer")'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "installing $TORCH_SPEC${TORCH_INDEX:+ from $TORCH_INDEX}" >&2
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
fi
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
rm -f "$VENV"/.installed-*
touch "$stamp"
