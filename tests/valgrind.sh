#!/bin/bash
# The daemon's Check unit tests under valgrind's memcheck: any invalid
# access, use of uninitialised memory or definite leak fails the run.
#
# Usage: tests/valgrind.sh BUILD_DIR [TEST...]
#   BUILD_DIR  a normal (not sanitized) build: its tests/unit/test_* run
#   TEST       only these (default: every test_* there)
# Check runs every test in one process (CK_FORK=no), so a leak anywhere in
# a suite is seen when the process exits. With CI=true a skipped suite fails
# the run unless tests/ci-skips.txt lists it (area "valgrind").
set -uo pipefail
# shellcheck source=ci-skips.sh
. "$(dirname "$0")/ci-skips.sh"
build=$(cd "${1:?usage: valgrind.sh BUILD_DIR [TEST...]}" && pwd)
shift
unit=$build/tests/unit

if ! command -v valgrind >/dev/null; then
	echo "valgrind is missing: apt-get install valgrind" >&2
	exit 1
fi
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
	for t in "$unit"/test_*; do
		[ -x "$t" ] && [ -f "$t" ] && tests+=("$(basename "$t")")
	done
fi
if [ ${#tests[@]} -eq 0 ]; then
	echo "no test_* programs in $unit: build first" >&2
	exit 1
fi

# Does this valgrind know pidfd_open (syscall 434)? 3.19 does not: the call
# fails with ENOSYS under it, which test_probe cannot do without.
pidfd_ok=0
if valgrind --tool=none /usr/bin/python3 -c 'import os; os.close(os.pidfd_open(os.getpid())); print("pidfd-ok")' \
	2>&1 | grep -q "^pidfd-ok"; then
	pidfd_ok=1
fi

export CK_FORK=no
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-300}
# Everything runs 10-50 times slower under memcheck: the few wall-clock
# bounds in the suites scale with this.
export CPRD_TEST_SLOWDOWN=${CPRD_TEST_SLOWDOWN:-10}
export CPRD_BUILD_DIR=$build
export CPRD_SOURCE_DIR=$(cd "$(dirname "$0")/.." && pwd)
passed=0 failed=0 skipped=0
# skip NAME REASON: a skip, or in CI a failure unless the allowlist has it.
skip() {
	if ci_skip_allowed valgrind "$1"; then
		echo "SKIP $1: $2"
		skipped=$((skipped + 1))
	else
		echo "FAIL $1: skipped, and CI accepts only the skips in tests/ci-skips.txt: $2"
		failed=$((failed + 1))
	fi
}
start=$(date +%s)
if [ $pidfd_ok = 0 ]; then
	# Check cases tagged pidfd (test_custody's recover, test_disk_overlay's
	# qemu-img) are left out, and counted once as a skip.
	export CK_EXCLUDE_TAGS=pidfd
	skip pidfd-tagged "$(valgrind --version) does not know pidfd_open (syscall 434): the Check cases tagged pidfd are left out here"
fi
for t in "${tests[@]}"; do
	if [ "$t" = test_probe ] && [ $pidfd_ok = 0 ]; then
		skip "$t" "$(valgrind --version) does not know pidfd_open (syscall 434: ENOSYS under it), which the probe needs"
		continue
	fi
	log=$(mktemp /tmp/cprd-valgrind-$t.XXXXXX)
	t0=$(date +%s)
	valgrind --tool=memcheck --leak-check=full --errors-for-leak-kinds=definite \
		--show-leak-kinds=definite --error-exitcode=99 --child-silent-after-fork=yes \
		--track-origins=yes --num-callers=30 "$unit/$t" >"$log" 2>&1
	rc=$?
	took=$(( $(date +%s) - t0 ))
	summary=$(grep -E "ERROR SUMMARY|definitely lost|Checks:" "$log" | tr '\n' ' ')
	if [ $rc -eq 77 ]; then
		skip "$t" "exit 77: $(tail -n 1 "$log")"
	elif [ $rc -ne 0 ]; then
		echo "FAIL $t (exit $rc, ${took} s): $summary"
		grep -vE "^==[0-9]+== *$" "$log" | grep -E "^==[0-9]+==|Checks:|:F:|:E:" | head -n 80
		failed=$((failed + 1))
	else
		echo "PASS $t (${took} s): $summary"
		passed=$((passed + 1))
	fi
	rm -f "$log"
done
echo "valgrind took $(( $(date +%s) - start )) s"
echo "$passed passed, $failed failed$( [ $skipped -gt 0 ] && echo ", $skipped skipped")"
[ $failed -eq 0 ]
