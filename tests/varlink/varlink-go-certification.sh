#!/bin/bash
# Certification both ways with varlink-go (Debian package varlink-go):
#  1. its certification client against our test server;
#  2. our client (vl-cert-client) against its certification server.
# varlink-go-certification exits 0 even when a step fails, so the verdict
# comes from its output: every step printed, ending with "End: 'true'".
set -u
SERVER=$1
OUR_CLIENT=$2
GO=/usr/bin/varlink-go-certification
if [ ! -x "$GO" ]; then
	echo "SKIP: $GO is missing (apt-get install varlink-go)"
	exit 77
fi
dir=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	rm -rf "$dir"
}
trap cleanup EXIT

wait_socket() {
	for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
	echo "FAIL: no socket at $1"; return 1
}

fail=0
"$SERVER" "$dir/ours.sock" >"$dir/server.log" 2>&1 &
pids+=($!)
wait_socket "$dir/ours.sock" || exit 1
timeout 60 "$GO" -client -varlink "unix:$dir/ours.sock" >"$dir/go-client.out" 2>&1
cat "$dir/go-client.out"
for step in Start Test01 Test02 Test03 Test04 Test05 Test06 Test07 Test08 Test09 Test10 Test11; do
	if ! grep -q "^$step: " "$dir/go-client.out"; then
		echo "FAIL: varlink-go client did not pass $step against our server"
		fail=1
	fi
done
if grep -q "failed" "$dir/go-client.out" || ! grep -qx "End: 'true'" "$dir/go-client.out"; then
	echo "FAIL: varlink-go client against our server did not end with End: 'true'"
	fail=1
else
	echo "PASS: varlink-go certification client against our server"
fi

"$GO" -varlink "unix:$dir/go.sock" >"$dir/go-server.log" 2>&1 &
pids+=($!)
wait_socket "$dir/go.sock" || exit 1
if timeout 60 "$OUR_CLIENT" "unix:$dir/go.sock" >"$dir/our-client.out" 2>&1 &&
	grep -qx CERTIFIED "$dir/our-client.out"; then
	echo "PASS: our client against the varlink-go certification server"
else
	cat "$dir/our-client.out"
	echo "FAIL: our client against the varlink-go certification server"
	fail=1
fi
exit $fail
