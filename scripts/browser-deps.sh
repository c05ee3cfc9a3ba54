#!/usr/bin/env bash
# What the web gallery's browser tests need beyond Python (tests/web/test_browser.py): Debian's chromium and
# chromium-driver (apt), and axe-core from the npm registry into .cache/npm. Idempotent and quiet: installs
# only what is missing. Without root or apt it says so and returns 0; the browser tests then skip, naming why.
set -euo pipefail
cd "$(dirname "$0")/.."
AXE_VERSION="${AXE_VERSION:-4.10.3}"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver (apt)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji >/dev/null
  else
    echo "browser tests will skip: chromium/chromedriver missing and apt-get needs root here" >&2
  fi
fi
if [ ! -f .cache/npm/node_modules/axe-core/axe.min.js ]; then
  if ! command -v npm >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing npm (apt), for axe-core" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  if command -v npm >/dev/null; then
    npm install --prefix .cache/npm --no-audit --no-fund --silent "axe-core@${AXE_VERSION}" >/dev/null
  else
    echo "accessibility check will skip: npm missing (axe-core comes from the npm registry)" >&2
  fi
fi
