#!/bin/bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# needed, then
#   1. builds with warnings as errors and runs every test through ctest
#      (unit, real Varlink clients, real QEMU integration, hostile input,
#      the fault matrix, systemd in a systemd-nspawn container);
#   2. the same suite again built with AddressSanitizer and UBSan;
#   3. the daemon's unit tests under valgrind;
#   4. the fuzz targets (libFuzzer) for a bounded time each.
# Usage (as root): scripts/test.sh
# Environment: CPRD_FUZZ_SECONDS (default 60 per target); CPRD_TEST_QUICK=1
# runs only stage 1.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

bash scripts/install-deps.sh || exit 1

BUILD=${CPRD_TEST_BUILD_DIR:-build-test}
failed=()
stage() { echo; echo "================ $* ================"; }

stage "1/4 build (-Werror) and ctest"
if cmake -B "$BUILD" -S . -DCPRD_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
	cmake --build "$BUILD" -j"$(nproc)"; then
	ctest --test-dir "$BUILD" --output-on-failure --timeout 1500 || failed+=("ctest")
else
	failed+=("build")
fi

if [ "${CPRD_TEST_QUICK:-0}" != 1 ]; then
	stage "2/4 the suite under AddressSanitizer and UBSan"
	CPRD_SANITIZE_BUILD_DIR=$SRC/build-asan bash tests/sanitize.sh "$SRC" --timeout 1500 ||
		failed+=("sanitizers")

	stage "3/4 unit tests under valgrind"
	bash tests/valgrind.sh "$BUILD" || failed+=("valgrind")

	stage "4/4 fuzz targets, ${CPRD_FUZZ_SECONDS:-60} s each"
	CPRD_FUZZ_BUILD_DIR=$SRC/build-fuzz bash tests/fuzz/build-and-run.sh "$SRC" "${CPRD_FUZZ_SECONDS:-60}" ||
		failed+=("fuzz")
fi

# Each runner's own summary: Check's "Checks: N, Failures: ..." lines and
# the scripts' "N passed, M failed" lines, as ctest recorded them.
stage "test runner summaries"
for log in "$BUILD/Testing/Temporary/LastTest.log" build-asan/Testing/Temporary/LastTest.log; do
	[ -f "$log" ] || continue
	echo "-- $log"
	grep -hE '^[0-9]+%: Checks: |^[0-9]+ passed, [0-9]+ failed' "$log" || true
done
echo
if [ ${#failed[@]} -gt 0 ]; then
	echo "FAILED stages: ${failed[*]}"
	exit 1
fi
echo "All stages passed."
