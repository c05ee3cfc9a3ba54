#!/usr/bin/env bash
# Set everything up and turn a seed text into a grid: scripts/imagine.sh "Northeastern University" [--count 4 ...]
# Uses IMAGINE_SD_MODEL / IMAGINE_TEXT_MODEL (default: the real models from the Hugging Face Hub, ~6 GB).
# TINY=1 builds tiny random-weight models into .tiny-models/ and uses them (offline, noise images; the first
# run takes a minute or two on a small CPU box, most of it building the models).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ "$#" -eq 0 ]; then
  echo 'usage: scripts/imagine.sh "SEED TEXT" [--count N] [--steps S] [--seed K] [--no-expand] [--json]' >&2
  exit 2
fi
if [ "${TINY:-0}" = "1" ]; then
  [ -f .tiny-models/sd/model_index.json ] || .venv/bin/python -m bot tiny-models .tiny-models
  export IMAGINE_SD_MODEL=.tiny-models/sd IMAGINE_TEXT_MODEL=.tiny-models/text HF_HUB_OFFLINE=1
  export IMAGINE_WIDTH="${IMAGINE_WIDTH:-128}" IMAGINE_HEIGHT="${IMAGINE_HEIGHT:-128}" IMAGINE_STEPS="${IMAGINE_STEPS:-4}"
fi
exec .venv/bin/python -m bot imagine "$@"
