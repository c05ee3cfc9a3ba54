#!/usr/bin/env bash
# Pin the Docker image's dependencies: resolve pyproject.toml for Linux x86_64 / Python 3.11 into
# requirements/runtime.txt; torch with its own dependencies (the same pins) into requirements/torch.txt,
# which the image installs in a layer of its own; and each optional extra (except dev) into
# requirements/extra-<name>.txt (only what the extra adds on top of runtime.txt, never contradicting it).
# The Dockerfile installs these files, so builds are reproducible and a code change reuses the dependency
# layers. Run after changing dependencies in pyproject.toml and commit the result. Existing pins are kept
# where they still fit (uv prefers the versions already in the output file); `--upgrade` moves them all.
#
# Needs uv (`pip install uv`). Torch is resolved from the CPU index and pinned without its local label
# (torch==X matches X+cpu and X+cu128 alike); its CUDA-only dependencies (nvidia-*, triton) are left out,
# since torch pins those itself for each variant. TORCH_INDEX / TORCH_FIND_LINKS point at another source.
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
source_args=(--extra-index-url "$TORCH_INDEX" --index-strategy unsafe-best-match)
if [[ -n ${TORCH_FIND_LINKS:-} ]]; then
    source_args=(--find-links "$TORCH_FIND_LINKS")
fi
common=(--quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --no-annotate
    "${source_args[@]}" "$@")

# setuptools: the image builds the project without build isolation (no download in the code layer).
build_requirements=$(mktemp)
torch_requirement=$(mktemp)
trap 'rm -f "$build_requirements" "$torch_requirement"' EXIT
echo "setuptools>=68" >"$build_requirements"

tidy() {
    # One pin per line, sorted; torch without `+cpu`; no CUDA-only packages.
    sed -E 's/^(torch==[^+ ]+)\+[a-z0-9]+/\1/' "$1" | grep -v -E '^(nvidia-|triton==|cuda-)' | sort -f -o "$1"
}

header="# Pinned by scripts/lock-requirements.sh from pyproject.toml (Linux x86_64, Python 3.11). Do not edit."

"$UV" pip compile pyproject.toml "$build_requirements" "${common[@]}" -o requirements/runtime.txt
tidy requirements/runtime.txt
sed -i "1i $header" requirements/runtime.txt

grep '^torch==' requirements/runtime.txt >"$torch_requirement"
"$UV" pip compile "$torch_requirement" -c requirements/runtime.txt "${common[@]}" -o requirements/torch.txt
tidy requirements/torch.txt
sed -i "1i $header" requirements/torch.txt

extras=$(python3 -c "import tomllib; print(' '.join(e for e in tomllib.load(open('pyproject.toml', 'rb'))['project'].get('optional-dependencies', {}) if e != 'dev'))")
for extra in $extras; do
    out=requirements/extra-$extra.txt
    "$UV" pip compile pyproject.toml "$build_requirements" --extra "$extra" -c requirements/runtime.txt \
        "${common[@]}" -o "$out"
    tidy "$out"
    # Only what the extra adds: the Dockerfile installs runtime.txt first.
    comm -13 <(grep -v '^#' requirements/runtime.txt) "$out" >"$out.new" && mv "$out.new" "$out"
    sed -i "1i $header" "$out"
done
