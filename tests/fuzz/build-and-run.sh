#!/bin/bash
# Builds the fuzz targets with clang (libFuzzer, ASan, UBSan) in a build
# folder of their own and runs each for a bounded time (see run-fuzz.sh).
#
# Usage: build-and-run.sh SRC [SECONDS_PER_TARGET]
#   SRC      the source tree
#   SECONDS  per target, default 60
# Environment: CPRD_FUZZ_BUILD_DIR (default SRC/build-fuzz).
# Needs clang and libclang-rt-14-dev (libFuzzer's runtime for clang 14).
set -euo pipefail
src=$(cd "${1:?usage: build-and-run.sh SRC [SECONDS]}" && pwd)
seconds=${2:-60}
build=${CPRD_FUZZ_BUILD_DIR:-$src/build-fuzz}

if ! command -v clang >/dev/null; then
	echo "clang is missing: apt-get install clang libclang-rt-14-dev" >&2
	exit 1
fi
cmake -B "$build" -S "$src" -DCPRD_FUZZ=ON -DCMAKE_C_COMPILER=clang \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCPRD_FUZZ_SECONDS="$seconds" >/dev/null
cmake --build "$build" --target cprd-fuzz -j"$(nproc)"
exec "$src/tests/fuzz/run-fuzz.sh" "$build" "$seconds"
