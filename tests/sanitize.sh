#!/bin/bash
# The test suite under AddressSanitizer and UndefinedBehaviorSanitizer: builds
# SRC with -DCPRD_SANITIZE=ON in a build folder of its own and runs ctest
# there. Every instrumented process (cprd, cprctl, the Check suites, the
# Varlink test server) writes any report into one folder; the run fails if
# a test fails or if any report was written, even by a process whose exit
# status nobody looked at (a cprd stopped at a test's teardown). This build
# also registers the soak (bench/soak.py, 100 upgrades, label soak, about
# 2.5 minutes), which only this stage runs (tests/integration/CMakeLists.txt).
#
# Usage: tests/sanitize.sh SRC [CTEST ARGS...]
# Environment:
#   CPRD_SANITIZE_BUILD_DIR   default SRC/build-asan
#   CPRD_SANITIZE_EXCLUDE     ctest -E regex of tests left out, default
#                             ^(systemd_e2e|fuzz|matrix)$: the container test
#                             builds and installs the Debian package, a build
#                             of its own without ASan, the fuzz targets have their
#                             own sanitized build (tests/fuzz/build-and-run.sh),
#                             and the version matrix (minutes of QEMU under
#                             TCG) exercises no cprd path the other
#                             integration tests do not
#   CPRD_ASAN_EXTRA           more ASAN_OPTIONS, e.g. fast_unwind_on_malloc=0
#                             for whole stacks through json-c in leak reports
#   CPRD_TEST_SLOWDOWN        the tests' factor for wall-clock bounds, default 3
set -uo pipefail
src=$(cd "${1:?usage: sanitize.sh SRC [CTEST ARGS...]}" && pwd)
shift
build=${CPRD_SANITIZE_BUILD_DIR:-$src/build-asan}
exclude=${CPRD_SANITIZE_EXCLUDE:-^(systemd_e2e|fuzz|matrix)$}

cmake -B "$build" -S "$src" -DCPRD_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null || exit 1
cmake --build "$build" -j"$(nproc)" || exit 1

reports=$(mktemp -d /tmp/cprd-sanitize.XXXXXX)
chmod 0777 "$reports" # tests call cprd as uid 65534 too
# Halt at the first error, leaks included (LeakSanitizer runs when cprd,
# cprctl or a test exits); reports go to files, named by pid.
export ASAN_OPTIONS="abort_on_error=1:halt_on_error=1:detect_leaks=1:log_path=$reports/asan:${CPRD_ASAN_EXTRA:-}"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"
export LSAN_OPTIONS="${LSAN_OPTIONS:-}"
# The few wall-clock bounds in the tests scale with this (everything runs
# two to three times slower instrumented).
export CPRD_TEST_SLOWDOWN=${CPRD_TEST_SLOWDOWN:-3}
# Check forks each test by default; keep that (a crash fails one test).

start=$(date +%s)
rc=0
ctest --test-dir "$build" --output-on-failure --timeout 1800 -E "$exclude" "$@" || rc=$?
echo "sanitized test run took $(( $(date +%s) - start )) s"

n=$(find "$reports" -type f | wc -l)
if [ "$n" -gt 0 ]; then
	echo "FAIL: $n sanitizer reports in $reports:"
	for f in "$reports"/*; do
		echo "==== $f"
		head -n 80 "$f"
	done
	rc=1
else
	echo "no sanitizer reports"
	rm -rf "$reports"
fi
exit $rc
