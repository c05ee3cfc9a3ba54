#!/usr/bin/env bash
# Run a command inside a loopback-only network namespace: nothing it starts can reach beyond this machine.
# Ray's processes try to reach cloud metadata, a DNS server and a usage endpoint even with usage stats off;
# every test and benchmark that starts Ray runs through this fence. Root uses `unshare -n`; others get a
# user namespace (`unshare -rn`) where the kernel allows it.
#   scripts/fence.sh .venv/bin/python -m pytest -m ray
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
export no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost
if [ "$(id -u)" = 0 ]; then flags=(-n); else flags=(-r -n); fi
exec unshare "${flags[@]}" sh -c 'ip link set lo up && exec "$@"' fence "$@"
