# Skipped checks and CI, for the shell runners (source this file).
# ci_skip_allowed AREA CHECK: status 0 when a skip of CHECK is acceptable:
# outside CI always; with CI=true only when tests/ci-skips.txt lists it
# (or AREA *). See tests/ci_skips.py for the Python runners.
CI_SKIPS_FILE=${CI_SKIPS_FILE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ci-skips.txt}
ci_skip_allowed() {
	[ "${CI:-}" = true ] || return 0
	awk -v a="$1" -v c="$2" '
		/^[ \t]*(#|$)/ { next }
		$1 == a && ($2 == c || $2 == "*") { found = 1 }
		END { exit !found }' "$CI_SKIPS_FILE"
}

# The checks of a shell runner whose AREA is set: pass NAME [DETAIL],
# fail NAME [WHY], and skip NAME [WHY], which in CI is a failure unless
# tests/ci-skips.txt lists AREA NAME. Each prints one line that
# tests/summary.py counts. A runner may define pass and fail again after
# sourcing this file (run-e2e.sh defers them); skip calls whichever it has.
PASSED=0 FAILED=0 SKIPPED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS $1${2:+: $2}"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1${2:+: $2}"; }
skip() {
	if ci_skip_allowed "$AREA" "$1"; then
		SKIPPED=$((SKIPPED + 1))
		echo "SKIP $1${2:+: $2}"
	else
		fail "$1" "skipped, and CI accepts only the skips in tests/ci-skips.txt: ${2:-}"
	fi
}
