#!/usr/bin/env bash
# Set everything up, lint, and run the whole test suite offline on tiny models (CPU is fine).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k store` or `scripts/test.sh -m heavy` (the long loops).
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests exercise the optional NudeNet classifier for real: install the `safety` extra too.
EXTRAS="${EXTRAS:-dev,safety}" scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy bot cogs
exec .venv/bin/python -m pytest "$@"
