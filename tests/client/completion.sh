#!/bin/bash
# cprctl's bash completion as installed: `cmake --install` into a temporary
# root puts it at usr/share/bash-completion/completions/cprctl; this bash
# sources bash-completion and that file, then asks the completion function
# what it offers after "cprctl ", "cprctl upgrade --", "cprctl stop " and
# so on, against a real cprd on a private socket with two VMs (one started
# on the test guest, one only defined).
#
# Usage: tests/client/completion.sh BUILD_DIR
# Prints "PASS name: detail" or "FAIL name: why" per check, then
# "N passed, M failed, K skipped". Exit 0 all passed, 1 a check failed,
# 77 skipped (bash-completion is not installed; CI accepts that only when
# tests/ci-skips.txt lists it).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../ci-skips.sh
. "$HERE/../ci-skips.sh"
AREA=client_completion
QEMU=${CPRD_QEMU10:-/usr/bin/qemu-system-x86_64}
BASH_COMPLETION=/usr/share/bash-completion/bash_completion

finish() {
	echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
	[ $FAILED -eq 0 ] || exit 1
	[ $PASSED -gt 0 ] || exit 77
	exit 0
}

[ $# -eq 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BUILD=$(cd "$1" && pwd) || exit 2
if [ ! -f "$BASH_COMPLETION" ]; then
	skip bash_completion "$BASH_COMPLETION is missing (apt-get install bash-completion)"
	finish
fi

RUN=$(mktemp -d /tmp/cprd-completion.XXXXXX)
CPRD_PID=
cleanup() {
	if [ -n "$CPRD_PID" ]; then
		"$CPRCTL" stop vm-run --force >/dev/null 2>&1
		kill "$CPRD_PID" 2>/dev/null
		wait "$CPRD_PID" 2>/dev/null
	fi
	rm -rf "$RUN"
}
trap cleanup EXIT

# ---- installed where the contract says --------------------------------------
ROOT=$RUN/root
COMP=$ROOT/usr/share/bash-completion/completions/cprctl
if DESTDIR=$ROOT cmake --install "$BUILD" --prefix /usr >"$RUN/install.log" 2>&1 && [ -f "$COMP" ]; then
	pass installed "cmake --install put it at /usr/share/bash-completion/completions/cprctl"
else
	fail installed "no $COMP after cmake --install: $(tail -n 2 "$RUN/install.log" | tr '\n' ' ')"
	finish
fi
CPRCTL=$ROOT/usr/bin/cprctl
CPRD=$ROOT/usr/sbin/cprd

# ---- a real cprd with two VMs -------------------------------------------------
SOCK=$RUN/cprd.sock
ADDR=unix:$SOCK
export CPRD_ADDRESS=$ADDR
"$CPRD" --socket "$SOCK" --state-dir "$RUN/state" --runtime-dir "$RUN/run" 2>"$RUN/cprd.log" &
CPRD_PID=$!
for _ in $(seq 1 50); do
	"$CPRCTL" list >/dev/null 2>&1 && break
	sleep 0.1
done
GUEST=$BUILD/tests/guest/cprd-guest.img
"$CPRCTL" create vm-run --memory 64 --qemu "$QEMU" --accel tcg --disk "$GUEST,readonly" >"$RUN/vms.log" 2>&1 &&
	"$CPRCTL" start vm-run >>"$RUN/vms.log" 2>&1 &&
	"$CPRCTL" create db.2 --memory 64 --qemu "$QEMU" --accel tcg >>"$RUN/vms.log" 2>&1
rc=$?
if [ $rc -eq 0 ] && "$CPRCTL" status vm-run 2>/dev/null | grep -q running; then
	pass cprd_vms "cprd pid $CPRD_PID: vm-run running, db.2 defined"
else
	fail cprd_vms "could not make the VMs: $(tr '\n' ' ' <"$RUN/vms.log") $(tail -n 3 "$RUN/cprd.log" | tr '\n' ' ')"
fi

# complete WORDS...: what the completion offers for the command line WORDS
# (the last word is the one being completed; "" for a new word), sorted,
# space-separated. A bash of its own each time: nothing is cached between.
complete_line() {
	PATH=$ROOT/usr/bin:$PATH bash --norc --noprofile -c '
		. "$1" || exit 3
		. "$2" || exit 4
		shift 2
		COMP_WORDS=("$@")
		COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
		COMP_LINE="${COMP_WORDS[*]}"
		COMP_POINT=${#COMP_LINE}
		_cprctl cprctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
		printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "
	' completion "$BASH_COMPLETION" "$COMP" "$@" 2>"$RUN/complete.err"
}

# expect NAME WANT GOT: GOT (space-separated) holds every word of WANT and,
# with a 4th argument "exactly", nothing else.
expect() {
	local name=$1 want=$2 got=$3 w missing=
	for w in $want; do
		[[ " $got " == *" $w "* ]] || missing="$missing $w"
	done
	if [ -n "$missing" ]; then
		fail "$name" "missing:$missing; offered: '${got% }' $(head -c 300 "$RUN/complete.err")"
	elif [ "${4:-}" = exactly ] && [ "$(tr -s ' ' '\n' <<<"$want" | sed '/^$/d' | sort | tr '\n' ' ')" != "$got" ]; then
		fail "$name" "offered '${got% }', want exactly '$want'"
	else
		pass "$name" "'${got% }'"
	fi
}

# The commands, from cprctl --help.
commands=$("$CPRCTL" --help | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p' | tr '\n' ' ')
expect commands "$commands" "$(complete_line cprctl "")" exactly
expect command_prefix "start status stop" "$(complete_line cprctl st)" exactly
expect global_options "--address --json --timeout --help" "$(complete_line cprctl --)"
# Each command's options, from its own --help.
expect upgrade_options "--qemu --mode --timeout --dry-run --outdated --parallel --pause-slots --stop-on-failure --json" \
	"$(complete_line cprctl upgrade --)"
expect stop_options "--force -f --timeout" "$(complete_line cprctl stop -)"
expect list_options "--outdated --json" "$(complete_line cprctl list --)"
expect mode_values "auto cpr-transfer local-migrate cpr-exec" "$(complete_line cprctl upgrade vm-run --mode "")" exactly
# VM names, from cprd (cprctl list --json), where a command takes one.
expect vm_names "db.2 vm-run" "$(complete_line cprctl stop "")" exactly
expect vm_name_prefix "vm-run" "$(complete_line cprctl status v)" exactly
expect upgrade_names "db.2 vm-run" "$(complete_line cprctl upgrade vm-run "")" exactly
# --address before the command goes to the list call too.
expect address_option "db.2 vm-run" \
	"$(CPRD_ADDRESS=unix:$RUN/nobody.sock complete_line cprctl --address "$ADDR" start "")" exactly
got=$(complete_line cprctl start vm-run "")
if [ -z "${got// /}" ]; then
	pass one_name "nothing after 'start vm-run' (start takes one NAME)"
else
	fail one_name "offered '$got' after 'start vm-run'"
fi
# No cprd: no names, no error, no hang.
t=$SECONDS
got=$(CPRD_ADDRESS=unix:$RUN/nobody.sock complete_line cprctl start "")
rc=$?
if [ $rc -eq 0 ] && [ -z "${got// /}" ] && [ $((SECONDS - t)) -lt 10 ]; then
	pass no_cprd "no names, exit 0, $((SECONDS - t)) s when cprd cannot be reached"
else
	fail no_cprd "exit $rc, offered '$got'"
fi

finish
