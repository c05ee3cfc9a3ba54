#!/usr/bin/env bash
# Create a virtual environment (default .venv) and install imagine-bot with its dev tools. Idempotent.
#   VENV         the environment to set up (default .venv, what scripts/run.sh and scripts/imagine.sh use;
#                scripts/test.sh sets up its own .venv-test)
#   TORCH_SPEC   torch requirement installed first (default torch==2.13.0)
#   TORCH_INDEX  optional wheel index for torch, e.g. https://download.pytorch.org/whl/cpu on a CPU-only box
#                (an unpinned/unindexed torch from PyPI is the multi-GB CUDA build on Linux)
#   EXTRAS       extras to install (default dev). `safety` is the NudeNet image classifier, whose wheel carries
#                an AGPL-3.0 licence file (README -> Image safety): an operator opts in with
#                EXTRAS=dev,safety scripts/run.sh. scripts/test.sh installs `safety`, `ray` and `train`
#                (fine-tuning) into .venv-test only.
# The install marker ($VENV/.installed-<hash of pyproject.toml>) lists every extra installed since pyproject.toml
# last changed: a set of extras already installed (dev after dev,safety) installs nothing again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS-dev}"
marker="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
wanted=$(tr ', ' '\n\n' <<<"$EXTRAS" | sed '/^$/d' | sort -u)
if [ -f "$marker" ] && [ -z "$(comm -23 <(echo "$wanted" | sed '/^$/d') <(sort -u "$marker"))" ]; then
  exit 0
fi
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "imagine-bot needs Python 3.11 or newer")'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  echo "installing $TORCH_SPEC${TORCH_INDEX:+ from $TORCH_INDEX}" >&2
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
fi
"$VENV/bin/python" -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# Markers of an older pyproject.toml promise nothing about this one.
for old in "$VENV"/.installed-*; do
  [ "$old" = "$marker" ] || rm -f "$old"
done
{ [ -f "$marker" ] && cat "$marker"; echo "$wanted"; } | sed '/^$/d' | sort -u >"$marker.tmp"
mv "$marker.tmp" "$marker"
