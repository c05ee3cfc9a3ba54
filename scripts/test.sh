#!/usr/bin/env bash
# Set everything up, lint, and run the whole test suite offline on tiny models (CPU is fine).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k store` or `scripts/test.sh -m heavy` (the long loops).
# Pytest runs inside scripts/fence.sh (loopback only): with no arguments, a second run takes the `ray` tests
# (a local Ray cluster on 127.0.0.1 with two CPU replicas), which must never reach beyond this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests exercise the optional NudeNet classifier, Ray Serve and fine-tuning for real: install the `safety`,
# `ray` and `train` extras.
EXTRAS="${EXTRAS:-dev,safety,ray,train}" scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy bot cogs
if [ "$#" -gt 0 ]; then
  exec scripts/fence.sh .venv/bin/python -m pytest "$@"
fi
scripts/fence.sh .venv/bin/python -m pytest
exec scripts/fence.sh .venv/bin/python -m pytest -m ray
