#!/bin/bash
# The main job end to end, on a fresh Debian 12 machine, as root: installs
# QEMU 10 (bookworm-backports) and Debian 12's QEMU 7.2 beside it, builds
# cprd, starts it in a temporary directory, boots the bundled test guest on
# QEMU 7.2, upgrades it to QEMU 10 while it runs (local-migrate), upgrades
# it again with cpr-transfer, and shows that the guest kept running.
# Usage: scripts/demo.sh   (everything it starts is stopped at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/install-deps.sh >/tmp/cprd-demo-deps.log 2>&1 || {
	cat /tmp/cprd-demo-deps.log; exit 1; }
echo "== dependencies installed (log: /tmp/cprd-demo-deps.log)"

BUILD=${CPRD_DEMO_BUILD_DIR:-build}
cmake -B "$BUILD" -S . -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j"$(nproc)" >/dev/null
echo "== built $BUILD/daemon/cprd and $BUILD/client/cprctl"

QEMU10=/usr/bin/qemu-system-x86_64
QEMU72=/opt/cprd/qemu-system-x86_64-7.2
IMG=$ROOT/$BUILD/tests/guest/cprd-guest.img
DIR=$(mktemp -d /tmp/cprd-demo.XXXXXX)
export CPRD_ADDRESS=unix:$DIR/run/io.cprd.Manager
CPRCTL=$ROOT/$BUILD/client/cprctl
CPRD_PID=

cleanup() {
	set +e
	if [ -n "$CPRD_PID" ]; then
		"$CPRCTL" stop demo --force >/dev/null 2>&1
		"$CPRCTL" delete demo >/dev/null 2>&1
		kill "$CPRD_PID" 2>/dev/null
		wait "$CPRD_PID" 2>/dev/null
	fi
	rm -rf "$DIR"
}
trap cleanup EXIT

"$ROOT/$BUILD/daemon/cprd" --state-dir "$DIR/state" --runtime-dir "$DIR/run" 2>"$DIR/cprd.log" &
CPRD_PID=$!
for _ in $(seq 100); do [ -S "$DIR/run/io.cprd.Manager" ] && break; sleep 0.1; done
echo "== cprd runs as pid $CPRD_PID (state in $DIR)"

# The guest counts timer ticks at guest-physical 0x8000 (magic, counter,
# lines); cprd holds the guest RAM memfd, so we read it from there.
counter() {
	/usr/bin/python3 - "$CPRD_PID" <<'PY'
import os, struct, sys
pid = sys.argv[1]
for fd in os.listdir(f"/proc/{pid}/fd"):
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        continue
    if link.startswith("/memfd:cprd:demo:ram0"):
        f = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY)
        data = os.pread(f, 24, 0x8000)
        magic, ticks, lines = data[:8], *struct.unpack("<QQ", data[8:])
        print(f"{ticks} ticks, {lines} console lines" if magic == b"CPRDGST1" else "guest not booted")
        break
PY
}

show() {
	local j
	j=$("$CPRCTL" status demo --json)
	/usr/bin/python3 -c 'import json,sys; v=json.load(sys.stdin); print("   QEMU %s pid %s (%s), machine %s, %s" % (v["qemuVersion"], v["pid"], v["qemu"], v["machine"], v["state"]))' <<<"$j"
	echo "   guest: $(counter); last console line: $(tail -n1 "$DIR/state/vms/demo/console.log")"
}

echo
echo "== create and start the bundled guest on Debian 12's QEMU 7.2"
"$CPRCTL" create demo --memory 256 --qemu "$QEMU72" --machine pc --accel tcg --disk "$IMG,readonly"
"$CPRCTL" start demo
sleep 3
show

echo
echo "== upgrade to QEMU 10.0 while the guest runs (7.2 has no CPR: local-migrate, RAM shared, not copied)"
"$CPRCTL" upgrade demo --qemu "$QEMU10"
sleep 3
show

echo
echo "== upgrade again, now QEMU 10.0 -> 10.0 with cpr-transfer"
"$CPRCTL" upgrade demo --qemu "$QEMU10" --mode cpr-transfer
sleep 3
show

echo
echo "== the history cprd keeps"
"$CPRCTL" status demo | sed -n '/^Upgrades/,$p'
echo
echo "== the guest's console across both upgrades (it never rebooted: one boot line, numbers never restart)"
grep -c "booted" "$DIR/state/vms/demo/console.log" | sed 's/^/   boot lines: /'
tail -n 4 "$DIR/state/vms/demo/console.log" | sed 's/^/   /'
