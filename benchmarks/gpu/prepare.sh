#!/usr/bin/env bash
# GPU validation kit, step 1 of 2 -- run on a CPU dev machine with access to PyPI.
# Builds the project wheel and downloads, for the GPU machine's CPython 3.12 on x86_64, the wheels it lacks
# (benchmarks/gpu/wheels.txt), into an ignored folder that must stay under LIMIT_MIB (default 60) so it can
# travel with the working tree. Then run benchmarks/gpu/run.sh on the GPU machine (see README, "Validating on
# a GPU machine").
#   benchmarks/gpu/prepare.sh [DEST]      # DEST defaults to benchmarks/gpu/wheels
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-benchmarks/gpu/wheels}
LIMIT_MIB=${LIMIT_MIB:-60}
PYTHON=${PYTHON:-python3}
# The GPU machine is CPython 3.12 / glibc >= 2.28; older manylinux tags are listed too because pip does not
# expand them itself (openslide-python ships one abi3 manylinux1 wheel).
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64)

rm -rf "$DEST"
mkdir -p "$DEST"
echo "building the sammil-deploy wheel"
"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$DEST" .
echo "downloading cp312 wheels listed in benchmarks/gpu/wheels.txt"
platform_args=()
for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" --dest "$DEST" -r benchmarks/gpu/wheels.txt
(cd "$DEST" && sha256sum -- *.whl > SHA256SUMS)
size_bytes=$(du -sb "$DEST" | cut -f1)
limit_bytes=$((LIMIT_MIB * 1024 * 1024))
ls -l "$DEST"
if ((size_bytes > limit_bytes)); then
    echo "error: $DEST is $((size_bytes / 1024 / 1024)) MiB, over the ${LIMIT_MIB} MiB limit; drop a wheel from" \
        "benchmarks/gpu/wheels.txt or raise LIMIT_MIB if your transfer allows it" >&2
    exit 1
fi
echo "kit ready: $DEST, $(ls "$DEST"/*.whl | wc -l) wheels, $((size_bytes / 1024 / 1024)) MiB (limit ${LIMIT_MIB} MiB)"
