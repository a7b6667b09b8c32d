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
