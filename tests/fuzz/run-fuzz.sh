#!/bin/bash
# Runs every libFuzzer target of a CPRD_FUZZ=ON build for a bounded time,
# starting from the seed corpus kept in tests/fuzz/corpus/<target>/.
# Fails if any target crashes, leaks, hits undefined behaviour or hangs.
#
# Usage: run-fuzz.sh BUILD_DIR [SECONDS_PER_TARGET] [TARGET...]
#   BUILD_DIR   the build folder (its tests/fuzz/ holds the targets), or
#               that tests/fuzz/ folder itself
#   SECONDS     per target, default 60 (CPRD_FUZZ_SECONDS overrides too)
# Environment: CPRD_FUZZ_JOBS=N runs N processes per target (default 1);
# CPRD_FUZZ_KEEP=1 keeps the work folder (grown corpus, crash inputs).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run-fuzz.sh BUILD_DIR [SECONDS] [TARGET...]}
seconds=${2:-${CPRD_FUZZ_SECONDS:-60}}
shift $(( $# >= 2 ? 2 : $# ))
bin=$build/tests/fuzz
[ -d "$bin" ] || bin=$build
bin=$(cd "$bin" && pwd) || exit 1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
	targets=(fuzz_varlink_message fuzz_varlink_server fuzz_spec fuzz_qmp)
fi

work=$(mktemp -d /tmp/cprd-fuzz-run.XXXXXX)
cleanup() { [ "${CPRD_FUZZ_KEEP:-0}" = 1 ] && echo "kept $work" || rm -rf "$work"; }
trap cleanup EXIT

# halt on the first report; leaks count (libFuzzer's -detect_leaks).
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:halt_on_error=1:detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}

failed=()
total_start=$(date +%s)
for t in "${targets[@]}"; do
	exe=$bin/$t
	if [ ! -x "$exe" ]; then
		echo "FAIL: $t: $exe is missing (build with -DCPRD_FUZZ=ON, target cprd-fuzz)"
		failed+=("$t")
		continue
	fi
	corpus=$work/$t/corpus
	artifacts=$work/$t/artifacts/
	mkdir -p "$corpus" "$artifacts"
	# A private copy: the committed seeds stay as they are.
	if [ -d "$here/corpus/$t" ]; then
		cp -r "$here/corpus/$t/." "$corpus/"
	fi
	seeds=$(find "$corpus" -type f | wc -l)
	echo "== $t: ${seconds} s from $seeds seeds"
	start=$(date +%s)
	extra=()
	if [ "${CPRD_FUZZ_JOBS:-1}" -gt 1 ]; then
		extra=(-jobs="$CPRD_FUZZ_JOBS" -workers="$CPRD_FUZZ_JOBS")
	fi
	(cd "$work/$t" && "$exe" "$corpus" -dict="$here/json.dict" -max_total_time="$seconds" \
		-timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
		-artifact_prefix="$artifacts" "${extra[@]}") >"$work/$t/log" 2>&1
	rc=$?
	took=$(( $(date +%s) - start ))
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -n 1)
	cov=$(grep -oE 'cov: [0-9]+' "$work/$t/log" | tail -n 1)
	crashes=$(find "$artifacts" -type f | wc -l)
	if [ $rc -ne 0 ] || [ "$crashes" -gt 0 ]; then
		echo "FAIL: $t (exit $rc, ${took} s, ${runs:-?} runs, $cov, $crashes crash inputs)"
		grep -E 'ERROR|runtime error|check failed|SUMMARY|Test unit written|#[0-9]+ +0x' "$work/$t/log" | head -n 60
		for a in "$artifacts"*; do
			[ -f "$a" ] || continue
			echo "-- crash input $(basename "$a") (base64):"
			head -c 4096 "$a" | base64 | head -n 40
		done
		CPRD_FUZZ_KEEP=1
		failed+=("$t")
	else
		echo "PASS: $t (${took} s, ${runs:-?} runs, $cov, corpus $(find "$corpus" -type f | wc -l) inputs)"
	fi
done

echo "fuzzing took $(( $(date +%s) - total_start )) s"
n=${#targets[@]}
echo "$(( n - ${#failed[@]} )) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
