#!/usr/bin/env bash
# Set everything up, lint, and run the whole test suite offline on tiny models (CPU is fine).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k store` or `scripts/test.sh -m heavy` (the long loops).
# Pytest runs inside scripts/fence.sh (loopback only): with no arguments, a second run takes the `ray` tests
# (a local Ray cluster on 127.0.0.1 with two CPU replicas), which must never reach beyond this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests exercise the optional NudeNet classifier and Ray Serve for real, so they need the `safety` and
# `ray` extras, and fine-tuning the `train` extra. They get their own environment: installed into .venv, `safety` would switch NudeNet on for
# the bot that scripts/run.sh starts from there (IMAGINE_IMAGE_CLASSIFIER=auto uses it when installed).
venv="${TEST_VENV:-.venv-test}"
VENV="$venv" EXTRAS="${EXTRAS:-dev,safety,ray,train}" scripts/setup.sh
# The web gallery's browser tests: Debian's chromium and chromium-driver, axe-core from npm (they skip if absent).
scripts/browser-deps.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy" bot cogs
if [ "$#" -gt 0 ]; then
  exec scripts/fence.sh "$venv/bin/python" -m pytest "$@"
fi
scripts/fence.sh "$venv/bin/python" -m pytest
exec scripts/fence.sh "$venv/bin/python" -m pytest -m ray
