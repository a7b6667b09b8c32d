#!/bin/bash
# org.varlink.certification with varlink-go (Debian package varlink-go) and
# our test server (vl-test-server) and client (vl-cert-client):
#  - varlink-go's certification client against our server. Its verdict,
#    End's all_ok, is our server's: it is true only when every step passed,
#    Test11 included, which this script also reads in our server's log
#    (Test11 is oneway: no reply says whether it arrived);
#  - that our server's End does say false when Test11 is missing, wrong or
#    not oneway (our client, told to get Test11 wrong);
#  - our client against our server and against varlink-go's server. That
#    server answers End with all_ok true whatever came before and cannot
#    see Test11 fail, so our client checks every reply itself (values,
#    field sets, continues, the ClientIdError) and all_ok says nothing.
# varlink-go-certification exits 0 even when a step fails, so its verdict
# comes from its output. Ends with "N passed, M failed[, K skipped]"; exit
# 77 when a check was skipped (varlink-go missing) and none failed. With
# CI=true a skip fails unless tests/ci-skips.txt lists it. A check's name
# is one word, as the allowlist needs it.
# Usage: varlink-go-certification.sh VL-TEST-SERVER VL-CERT-CLIENT
set -u
SERVER=$1
OUR_CLIENT=$2
AREA=varlink_go_certification
GO=${CPRD_VARLINK_GO:-/usr/bin/varlink-go-certification} # another path: to see the skips
# shellcheck source=../ci-skips.sh
. "$(dirname "$0")/../ci-skips.sh"

dir=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	rm -rf "$dir"
}
trap cleanup EXIT

finish() {
	echo "$PASSED passed, $FAILED failed$([ $SKIPPED -gt 0 ] && echo ", $SKIPPED skipped")"
	[ $FAILED -gt 0 ] && exit 1
	[ $SKIPPED -gt 0 ] && exit 77
	exit 0
}

wait_socket() {
	for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
	return 1
}

have_go=1
no_go="$GO is missing (apt-get install varlink-go)"
[ -x "$GO" ] || have_go=0

"$SERVER" "$dir/ours.sock" >/dev/null 2>"$dir/server.log" &
pids+=($!)
if ! wait_socket "$dir/ours.sock"; then
	fail start_vl_test_server "no socket at $dir/ours.sock"
	finish
fi

# 1. varlink-go's client against our server.
if [ $have_go = 1 ]; then
	timeout 60 "$GO" -client -varlink "unix:$dir/ours.sock" >"$dir/go-client.out" 2>&1
	sed 's/^/  varlink-go: /' "$dir/go-client.out"
	missing=""
	for step in Start Test01 Test02 Test03 Test04 Test05 Test06 Test07 Test08 Test09 Test10 Test11; do
		grep -q "^$step: " "$dir/go-client.out" || missing="$missing $step"
	done
	if [ -n "$missing" ]; then
		fail go_client_vs_our_server "it did not pass:$missing"
	elif grep -q "failed" "$dir/go-client.out" || ! grep -qx "End: 'true'" "$dir/go-client.out"; then
		fail go_client_vs_our_server "End did not answer all_ok true"
	else
		pass go_client_vs_our_server
	fi
	id=$(sed -n "s/^Start: '\(.*\)'$/\1/p" "$dir/go-client.out")
	if [ -n "$id" ] &&
		grep -qxF "cert-server: Test11 from $id: oneway, the 10 replies of Test10" "$dir/server.log" &&
		grep -qxF "cert-server: End from $id: all_ok true" "$dir/server.log"; then
		pass our_server_saw_go_test11
	else
		sed 's/^/  vl-test-server: /' "$dir/server.log"
		fail our_server_saw_go_test11 "no such line for client '${id}' in its log"
	fi
else
	skip go_client_vs_our_server "$no_go"
	skip our_server_saw_go_test11 "$no_go"
fi

# 2. Our server's End says false when Test11 went wrong.
for mode in omit wrong call; do
	name=our_server_end_false_test11_$mode
	timeout 60 "$OUR_CLIENT" --test11=$mode "unix:$dir/ours.sock" >"$dir/neg.out" 2>&1
	rc=$?
	if [ $rc -eq 1 ] && grep -qx "End: all_ok is false" "$dir/neg.out" && ! grep -q "^FAIL" "$dir/neg.out"; then
		pass "$name"
	else
		sed 's/^/  vl-cert-client: /' "$dir/neg.out"
		fail "$name" "vl-cert-client exited $rc without 'End: all_ok is false'"
	fi
done

# 3. Our client against our server, then against varlink-go's.
run_our_client() { # NAME ADDRESS
	if timeout 60 "$OUR_CLIENT" "$2" >"$dir/our-client.out" 2>&1 &&
		grep -qx CERTIFIED "$dir/our-client.out"; then
		pass "$1"
	else
		sed 's/^/  vl-cert-client: /' "$dir/our-client.out"
		fail "$1" "see vl-cert-client's output above"
	fi
}
run_our_client our_client_vs_our_server "unix:$dir/ours.sock"

if [ $have_go = 1 ]; then
	"$GO" -varlink "unix:$dir/go.sock" >"$dir/go-server.log" 2>&1 &
	pids+=($!)
	if wait_socket "$dir/go.sock"; then
		run_our_client our_client_vs_go_server "unix:$dir/go.sock"
	else
		fail our_client_vs_go_server \
			"varlink-go's server made no socket: $(cat "$dir/go-server.log")"
	fi
else
	skip our_client_vs_go_server "$no_go"
fi
finish
