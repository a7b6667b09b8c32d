#!/bin/bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# needed, then
#   1. builds with warnings as errors and runs every test through ctest
#      (unit, real Varlink clients, real QEMU integration, hostile input,
#      the fault matrix, systemd in a systemd-nspawn container);
#   2. the same suite again built with AddressSanitizer and UBSan;
#   3. the daemon's unit tests under valgrind;
#   4. the fuzz targets (libFuzzer) for a bounded time each.
# Then it prints how many checks ran in each area ("ran 47 of 47"), from the
# runners' own closing lines. With CI=true (as .ci/run runs) a skipped check
# fails the run unless tests/ci-skips.txt lists it, and so does a runner
# that prints no count: a green CI means that everything ran.
# Usage (as root): scripts/test.sh
# Environment: CPRD_FUZZ_SECONDS (default 60 per target); CPRD_TEST_QUICK=1
# runs only stage 1; CPRD_CTEST_ARGS, more ctest arguments for stages 1 and
# 2 (-R systemd_e2e, say).
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

bash scripts/install-deps.sh || exit 1

BUILD=${CPRD_TEST_BUILD_DIR:-build-test}
# shellcheck disable=SC2206 # word splitting is the point
CTEST_ARGS=(${CPRD_CTEST_ARGS:-})
failed=()
stage() { echo; echo "================ $* ================"; }
SUMMARY=$(mktemp /tmp/cprd-test-summary.XXXXXX)
LOGS=$(mktemp -d /tmp/cprd-test-logs.XXXXXX)
trap 'rm -rf "$SUMMARY" "$LOGS"' EXIT
# summarize ARGS...: the counts of one stage (tests/summary.py), kept for the
# end; a skip CI does not allow fails the stage's "skips" check.
summarize() {
	/usr/bin/python3 tests/summary.py "$@" >>"$SUMMARY" 2>&1 || failed+=("skips($2)")
}

stage "1/4 build (-Werror) and ctest"
if cmake -B "$BUILD" -S . -DCPRD_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
	cmake --build "$BUILD" -j"$(nproc)"; then
	ctest --test-dir "$BUILD" --output-on-failure --timeout 1500 "${CTEST_ARGS[@]}" 2>&1 |
		tee "$LOGS/ctest.out"
	[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("ctest")
	summarize ctest "stage 1, ctest" "$BUILD" "$LOGS/ctest.out"
else
	failed+=("build")
fi

if [ "${CPRD_TEST_QUICK:-0}" != 1 ]; then
	stage "2/4 the suite under AddressSanitizer and UBSan"
	CPRD_SANITIZE_BUILD_DIR=$SRC/build-asan bash tests/sanitize.sh "$SRC" --timeout 1500 "${CTEST_ARGS[@]}" 2>&1 |
		tee "$LOGS/asan.out"
	[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("sanitizers")
	[ -f build-asan/Testing/Temporary/LastTest.log ] &&
		summarize ctest "stage 2, ASan and UBSan" build-asan "$LOGS/asan.out"

	stage "3/4 unit tests under valgrind"
	bash tests/valgrind.sh "$BUILD" 2>&1 | tee "$LOGS/valgrind.out"
	[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("valgrind")
	summarize runner "stage 3, valgrind" valgrind "$LOGS/valgrind.out"

	stage "4/4 fuzz targets, ${CPRD_FUZZ_SECONDS:-60} s each"
	CPRD_FUZZ_BUILD_DIR=$SRC/build-fuzz bash tests/fuzz/build-and-run.sh "$SRC" "${CPRD_FUZZ_SECONDS:-60}" 2>&1 |
		tee "$LOGS/fuzz.out"
	[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("fuzz")
	summarize runner "stage 4, fuzz" fuzz "$LOGS/fuzz.out"
fi

stage "what ran"
cat "$SUMMARY"
echo
if [ ${#failed[@]} -gt 0 ]; then
	echo "FAILED stages: ${failed[*]}"
	exit 1
fi
echo "All stages passed."
