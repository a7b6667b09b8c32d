#!/bin/bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# needed, builds with warnings as errors, and runs every test through ctest.
# Usage (as root): scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

BUILD=${CPRD_TEST_BUILD_DIR:-build-test}
cmake -B "$BUILD" -S . -DCPRD_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$BUILD" -j"$(nproc)"
rc=0
ctest --test-dir "$BUILD" --output-on-failure --timeout 900 || rc=$?

# Each runner's own summary: Check's "Checks: N, Failures: ..." lines and
# the scripts' "N passed, M failed" lines, as ctest recorded them.
echo
echo "== test runner summaries"
grep -hE '^[0-9]+%: Checks: |^[0-9]+ passed, [0-9]+ failed|^(PASS|FAIL|SKIP): ' \
	"$BUILD/Testing/Temporary/LastTest.log" || true
exit $rc
