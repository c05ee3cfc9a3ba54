#!/usr/bin/env bash
# Set everything up and run the Discord bot (DISCORD_TOKEN from the environment or .env).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m bot run
