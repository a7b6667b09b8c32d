# shellcheck shell=sh
# Shared by the VFIO lab's scenarios (busybox sh inside L1; sourced as
# . /payload/scenarios/lib.sh). See docs/vfio-lab.md for what L1 offers.
#
# Results go to the console, where run-lab.py reads them:
#   LAB: CHECK PASS|FAIL NAME: DETAIL     one check
#   LAB: FIGURE KEY VALUE                 a measurement for the report
#   LAB: NOTE TEXT                        anything else worth reading
# A scenario's checks all pass when it exits 0 and printed no FAIL.

# shellcheck disable=SC2034 # cpr_transfer's results are the scenarios' to use
# shellcheck disable=SC1091 # written by l1-init
. /run/lab.env

L2_MIB=${L2_MIB:-64}
L2_RUN=/run/l2			# QMP and migration sockets
L2_LOG=$LAB_OUT/l2		# serial logs and QEMU's stderr, kept on L0
mkdir -p "$L2_RUN" "$L2_LOG"
LAB_FAILED=0

note() { echo "LAB: NOTE $*"; }
figure() { echo "LAB: FIGURE $1 $2"; }
pass() { echo "LAB: CHECK PASS $1: $2"; }
fail() {
	echo "LAB: CHECK FAIL $1: $2"
	LAB_FAILED=1
}
# check NAME DETAIL COMMAND...: PASS when COMMAND succeeds.
check() {
	name=$1 detail=$2
	shift 2
	if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi
}
# The scenario's exit status: 1 when a check failed.
finish() {
	exit "$LAB_FAILED"
}

now_ms() { labtool now; }

# wait_for SECONDS COMMAND...: polls COMMAND every 0.1 s; status 1 on timeout.
wait_for() {
	deadline=$(($(now_ms) + $1 * 1000))
	shift
	until "$@"; do
		[ "$(now_ms)" -lt "$deadline" ] || return 1
		sleep 0.1
	done
}

alive() { [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# wait_exit PID SECONDS: waits until PID is gone, SIGKILL after SECONDS.
wait_exit() {
	if ! wait_for "$2" eval "! alive $1"; then
		kill -9 "$1" 2>/dev/null
		wait_for 5 eval "! alive $1"
		return 1
	fi
}

# locked PID: "VmLck=N kB VmPin=M kB" from /proc/PID/status.
locked() {
	awk '/^VmLck:/ {l=$2} /^VmPin:/ {p=$2} END {printf "VmLck=%d kB VmPin=%d kB", l, p}' "/proc/$1/status"
}
vmlck_kb() { awk '/^VmLck:/ {print $2}' "/proc/$1/status"; }

# vfio_fds PID: how many of PID's fds are VFIO's (container, group, device).
vfio_fds() {
	n=0
	for f in /proc/"$1"/fd/*; do
		case $(readlink "$f") in
		/dev/vfio/* | *vfio-device*) n=$((n + 1)) ;;
		esac
	done
	echo "$n"
}

# pci_command ADDR: the device's command register as L1's kernel sees it
# (hex). Bus mastering is bit 2: vfio-pci clears it when the last fd of
# the device closes, and a reset clears it.
pci_command() {
	od -An -tx2 -j4 -N2 "/sys/bus/pci/devices/$1/config" | tr -d ' '
}
bus_master_on() { [ $((0x$(pci_command "$1") & 4)) -ne 0 ]; }

# ---- an L2 guest on QEMU 11.1 with an assigned device --------------------------

# l2_args ADDR QMP SERIAL: the command line of L2's QEMU (both sides of a
# transfer use the same one). Its RAM is the memfd at fd 5, as with cprd;
# the device keeps the id hostdev0 on every side, as CPR needs.
l2_args() {
	echo "-name guest=l2,debug-threads=on -nodefaults -no-user-config -display none
		-msg timestamp=on -accel tcg -machine pc-i440fx-11.1,memory-backend=ram0,aux-ram-share=on
		-m ${L2_MIB}M -smp 1
		-object memory-backend-file,id=ram0,size=${L2_MIB}M,share=on,mem-path=/proc/self/fd/5
		-qmp unix:$2,server=on,wait=off
		-chardev file,id=ser0,path=$3,append=on -serial chardev:ser0 -nic none
		-drive file=$LAB_GUEST,format=raw,if=virtio,readonly=on
		-device vfio-pci,host=$1,id=hostdev0"
}

# l2_start ADDR NAME: boots L2 on a new memfd; sets L2_PID, L2_QMP, L2_SERIAL.
l2_start() {
	L2_QMP=$L2_RUN/$2.qmp
	L2_SERIAL=$L2_LOG/serial.log
	: >"$L2_SERIAL"
	# shellcheck disable=SC2046 # the arguments are words
	labtool memfd-exec "lab:l2:ram0" "$L2_MIB" 5 "$LAB_QEMU" $(l2_args "$1" "$L2_QMP" "$L2_SERIAL") \
		</dev/null >"$L2_LOG/$2.log" 2>&1 &
	L2_PID=$!
	note "L2 QEMU $2 started, pid $L2_PID, device $1"
}

# serial_lines: the L2 guest's complete lines so far (not one it is
# still writing). The log only grows: its first serial_size bytes stay as
# they are while the guest writes on.
serial_lines() {
	serial_size=$(($(wc -c <"$L2_SERIAL")))
	if [ "$(tail -c +"$serial_size" "$L2_SERIAL" | head -c 1 | od -An -tx1 | tr -d ' ')" = 0a ]; then
		head -c "$serial_size" "$L2_SERIAL"
	else
		head -c "$serial_size" "$L2_SERIAL" | sed '$d'
	fi
}
# progress_count: how many "line N" progress lines the guest printed.
progress_count() { serial_lines | grep -c '^cprd-guest: line '; }
last_progress() { serial_lines | grep '^cprd-guest: line ' | tail -n 1; }
boots() { serial_lines | grep -c '^cprd-guest: booted'; }
# wait_progress N SECONDS: until the guest printed N more progress lines than now.
wait_progress() {
	want=$(($(progress_count) + $1))
	wait_for "$2" eval '[ "$(progress_count)" -ge '"$want"' ]'
}
# ticks_of LINE: the counter of a progress line.
ticks_of() { echo "$1" | sed -n 's/^cprd-guest: line [0-9]* counter \([0-9]*\).*/\1/p'; }

# l2_booted: until the guest found its device and printed 3 progress
# lines; status 1 when it did not within minutes.
l2_booted() { wait_for 180 grep -q '^cprd-guest: pci ' "$L2_SERIAL" && wait_progress 3 120; }

# l2_found ADDR: checks that the guest's pci line names the device that
# L1 has at ADDR (its vendor:device).
l2_found() {
	found_id=$(cut -c3- "/sys/bus/pci/devices/$1/vendor"):$(cut -c3- "/sys/bus/pci/devices/$1/device")
	check l2-found-device "$(grep '^cprd-guest: pci ' "$L2_SERIAL")" \
		grep -q "^cprd-guest: pci .* $found_id " "$L2_SERIAL"
}

# l2_boot ADDR NAME: l2_start, then l2_booted and l2_found; a guest that
# did not come up ends the scenario.
l2_boot() {
	l2_start "$1" "$2"
	if ! l2_booted; then
		fail boot "the L2 guest did not come up; QEMU said: $(tail -n 3 "$L2_LOG/$2.log")"
		kill -9 "$L2_PID" 2>/dev/null
		finish
	fi
	l2_found "$1"
}

# guest_mark: notes the guest's last progress line, for guest_went_on.
guest_mark() {
	MARK_LINE=$(last_progress)
	MARK_COUNT=$(progress_count)
}

# guest_went_on NAME SINCE: after an upgrade, a rollback or a refusal (SINCE
# says which), the guest printed 3 more lines (NAME-running; status 1 when
# not), its counter went on from the line guest_mark saw (a pause, not a
# new start), it booted once, and every line since was ok: the device kept
# its state and worked (NAME-device-ok).
guest_went_on() {
	if ! wait_progress 3 120; then
		fail "$1-running" "no progress since $2 (last: $(last_progress))"
		return 1
	fi
	went_lines=$(serial_lines | grep '^cprd-guest: line ' | tail -n +$((MARK_COUNT + 1)))
	went_last=$(echo "$went_lines" | tail -n 1)
	went_bad=$(echo "$went_lines" | grep -vc ' ok$')
	check "$1-kept-counting" "'$MARK_LINE' -> '$went_last'" \
		[ "$(ticks_of "$went_last")" -gt "$(ticks_of "$MARK_LINE")" ]
	check "$1-no-reboot" "$(boots) boot line(s)" [ "$(boots)" -eq 1 ]
	check "$1-device-ok" "$went_bad BAD of $(echo "$went_lines" | wc -l) lines since $2; last: $went_last" \
		[ "$went_bad" -eq 0 ]
}

# l2_has_device NAME PID ADDR: QEMU PID holds the device's VFIO fds
# (container, group, device), bus mastering is on in L1's view of ADDR
# (vfio-pci clears it when the device's last fd closes), and PID has all of
# the guest's RAM locked (pinned for the device's DMA).
l2_has_device() {
	held_n=$(vfio_fds "$2")
	check "$1-device-held" "QEMU $2 has $held_n VFIO fds" [ "$held_n" -ge 2 ]
	check "$1-bus-master" "L1 sees command $(pci_command "$3")" bus_master_on "$3"
	held_kb=$(vmlck_kb "$2")
	check "$1-pinned" "QEMU $2 VmLck $held_kb kB (guest RAM $((L2_MIB * 1024)) kB)" \
		[ "$held_kb" -ge $((L2_MIB * 1024)) ]
}

# l2_moved NAME OLD NEW ADDR: after the guest moved from QEMU OLD to QEMU
# NEW with the device ADDR (guest_mark before the move): OLD is gone, the
# guest went on (guest_went_on) and NEW has the device (l2_has_device).
# Status 1 when the guest did not go on.
l2_moved() {
	check "$1-old-gone" "old QEMU $2" eval "! alive $2"
	guest_went_on "$1" "QEMU $2 -> $3" || return 1
	l2_has_device "$1" "$3" "$4"
}

# ---- cpr-transfer 11.1 -> 11.1 without cprd, as cprd does it ---------------------

# cpr_transfer ADDR ROUND: moves the L2 guest from $L2_PID to a new QEMU
# with the same arguments, the same memfd (the new process opens it through
# /proc/OLD/fd/5) and -incoming channels; retires the old one. Sets L2_PID
# and L2_QMP to the new process, CPR_PAUSE_MS (QEMU's event timestamps,
# old STOP -> new RESUME) and CPR_DOWNTIME_MS (the old QEMU's own count).
# Status 1 when the transfer did not complete.
cpr_transfer() {
	addr=$1 round=$2 old=$L2_PID old_qmp=$L2_QMP
	dir=$L2_RUN/cpr-$round
	mkdir -p "$dir"
	new_qmp=$L2_RUN/new-$round.qmp
	main='{"channel-type": "main", "addr": {"transport": "socket", "type": "unix", "path": "'$dir/main.sock'"}}'
	cpr='{"channel-type": "cpr", "addr": {"transport": "socket", "type": "unix", "path": "'$dir/cpr.sock'"}}'

	labtool qmp "$old_qmp" \
		'{"execute": "migrate-set-parameters", "arguments": {"mode": "cpr-transfer"}}' \
		>"$dir/old-setup.log" || return 1
	# shellcheck disable=SC2046
	"$LAB_QEMU" $(l2_args "$addr" "$new_qmp" "$L2_SERIAL") \
		-incoming "unix:$dir/main.sock" -incoming "$cpr" \
		5<>"/proc/$old/fd/5" </dev/null >"$L2_LOG/new-$round.log" 2>&1 &
	new=$!
	if ! wait_for 30 test -S "$dir/cpr.sock"; then
		note "the new QEMU made no cpr socket; its log: $(tail -n 3 "$L2_LOG/new-$round.log")"
		kill -9 "$new" 2>/dev/null
		return 1
	fi
	# The new QEMU's monitor appears once it read the cpr channel; its
	# RESUME event says when the guest runs again.
	labtool qmp -t 60 -w RESUME "$new_qmp" >"$dir/new-events.log" 2>&1 &
	watcher=$!
	t0=$(now_ms)
	labtool qmp -t 60 -w STOP "$old_qmp" \
		'{"execute": "migrate", "arguments": {"channels": ['"$main"', '"$cpr"']}}' \
		>"$dir/old-migrate.log" 2>&1
	status=
	until [ "$status" = completed ] || [ "$status" = failed ]; do
		status=$(labtool qmp "$old_qmp" '{"execute": "query-migrate"}' 2>/dev/null |
			sed -n 's/.*"status": "\([a-z-]*\)".*/\1/p' | tail -n 1)
		[ $(($(now_ms) - t0)) -lt 60000 ] || break
		alive "$old" || break
		sleep 0.05
	done
	labtool qmp "$old_qmp" '{"execute": "query-migrate"}' >"$dir/old-query.log" 2>&1
	if [ "$status" != completed ]; then
		note "round $round: the old QEMU's migration ended '$status'; new: $(tail -n 3 "$L2_LOG/new-$round.log")"
		kill -9 "$new" "$watcher" 2>/dev/null
		return 1
	fi
	CPR_DOWNTIME_MS=$(sed -n 's/.*"downtime": \([0-9]*\).*/\1/p' "$dir/old-query.log")
	CPR_OLD_LOCKED="$(locked "$old")"
	CPR_NEW_LOCKED_EARLY="$(locked "$new")"

	if ! wait_exit "$watcher" 30; then
		note "round $round: no RESUME event seen on the new QEMU"
	fi
	stop=$(sed -n 's/^event {"timestamp": {"seconds": \([0-9]*\), "microseconds": \([0-9]*\)}, "event": "STOP".*/\1 \2/p' "$dir/old-migrate.log" | head -n 1)
	resume=$(sed -n 's/^event {"timestamp": {"seconds": \([0-9]*\), "microseconds": \([0-9]*\)}, "event": "RESUME".*/\1 \2/p' "$dir/new-events.log" | head -n 1)
	CPR_PAUSE_MS=
	if [ -n "$stop" ] && [ -n "$resume" ]; then
		CPR_PAUSE_MS=$(echo "$stop $resume" | awk '{printf "%.1f", (($3 - $1) * 1000000 + ($4 - $2)) / 1000}')
	fi
	CPR_TOTAL_MS=$(($(now_ms) - t0))

	# Retire the old QEMU.
	labtool qmp "$old_qmp" '{"execute": "quit"}' >/dev/null 2>&1
	wait_exit "$old" 15 || note "round $round: the old QEMU $old needed SIGKILL"
	L2_PID=$new
	L2_QMP=$new_qmp
	return 0
}

# ---- cprd in L1 (the cprd scenarios) ------------------------------------------------
#
# run-lab.py puts the cprd and cprctl it was given in /lab/bin (LAB_CPRD,
# LAB_CPRCTL) and the libraries they link at their host paths. cprd runs
# as root with its own folders; its log goes to $LAB_OUT/cprd.log.

CPRD_SOCKET=/run/cprd/io.cprd.Manager
CPRD_STATE=/var/lib/cprd
CPRD_RUNTIME=/run/cprd

cprctl() { "$LAB_CPRCTL" --address "unix:$CPRD_SOCKET" "$@"; }

# cprd_start: starts cprd, waits for its socket; sets CPRD_PID. Status 1
# when it did not come up.
cprd_start() {
	if [ -z "$LAB_CPRD" ] || [ -z "$LAB_CPRCTL" ]; then
		fail cprd "the payload has no cprd/cprctl (run-lab.py --cprd/--cprctl)"
		return 1
	fi
	mkdir -p "$CPRD_STATE" "$CPRD_RUNTIME"
	"$LAB_CPRD" --socket "$CPRD_SOCKET" --state-dir "$CPRD_STATE" --runtime-dir "$CPRD_RUNTIME" \
		--log-level debug </dev/null >"$LAB_OUT/cprd.log" 2>&1 &
	CPRD_PID=$!
	if ! wait_for 30 test -S "$CPRD_SOCKET"; then
		fail cprd "cprd did not come up: $(tail -n 3 "$LAB_OUT/cprd.log")"
		return 1
	fi
	note "cprd $("$LAB_CPRD" --version 2>&1 | head -n 1) started, pid $CPRD_PID"
}

# cprd_stop: SIGTERM to cprd (its QEMUs go on running: stop the VMs first).
cprd_stop() {
	kill "$CPRD_PID" 2>/dev/null
	wait_exit "$CPRD_PID" 15
}

# cprd_vm_serial NAME: where cprd keeps the VM's console.
cprd_vm_serial() { echo "$CPRD_STATE/vms/$1/console.log"; }

# json_field KEY < JSON: the first scalar value of KEY, quotes removed.
json_field() { sed -n 's/.*"'"$1"'": *"\{0,1\}\([^",}]*\)"\{0,1\}.*/\1/p' | head -n 1; }

# cprd_vm_pid NAME: the pid of the VM's current QEMU.
cprd_vm_pid() { cprctl --json status "$1" | json_field pid; }

# cprd_held_kinds NAME: the kinds of the fds cprd holds for the VM, one a line.
cprd_held_kinds() {
	cprctl --json status "$1" | tr '{' '\n' | sed -n 's/.*"kind": *"\([^"]*\)".*/\1/p'
}

# cprd_own_vfio_fds: how many VFIO fds cprd itself holds.
cprd_own_vfio_fds() { vfio_fds "$CPRD_PID"; }

# cprd_check_held NAME VM: GetVM lists held fds of kind vfio for VM.
cprd_check_held() {
	check "$1" "GetVM fds kinds: $(cprd_held_kinds "$2" | sort | uniq -c | tr -s ' \n' ' ')" \
		eval "cprd_held_kinds $2 | grep -qx vfio"
}

# cprd_keep_logs NAME: copies the VM's console and QEMU logs to $LAB_OUT.
cprd_keep_logs() {
	cp "$CPRD_STATE/vms/$1/console.log" "$LAB_OUT/$1-console.log" 2>/dev/null
	cp "$CPRD_STATE/vms/$1/qemu.log" "$LAB_OUT/$1-qemu.log" 2>/dev/null
	cprctl --json status "$1" >"$LAB_OUT/$1-status.json" 2>&1
}

# cprd_boot_l2 VM ADDR: starts cprd, creates VM (the L2 guest, read-only,
# under TCG) with the device ADDR assigned, starts it and waits until the
# guest came up (l2_booted); sets L2_SERIAL. A step that fails ends the
# scenario. Then checks that the guest found the device (l2_found), that
# GetVM lists held VFIO fds and that cprd holds some itself. cprd gets the
# caller's environment (a test hook's variables).
cprd_boot_l2() {
	cprd_start || finish
	if ! cprctl create "$1" --memory "$L2_MIB" --qemu "$LAB_QEMU" --accel tcg --machine pc \
		--disk "$LAB_GUEST,readonly" --device "pci=$2" >"$LAB_OUT/create.log" 2>&1; then
		fail create "cprctl create $1 --device pci=$2: $(cat "$LAB_OUT/create.log")"
		cprd_stop
		finish
	fi
	pass create "cprctl create $1 --device pci=$2"
	if ! cprctl start "$1" >"$LAB_OUT/start.log" 2>&1; then
		fail start "cprctl start $1: $(cat "$LAB_OUT/start.log")"
		cprd_keep_logs "$1"
		cprd_stop
		finish
	fi
	pass start "cprctl start $1"
	L2_SERIAL=$(cprd_vm_serial "$1")
	if ! l2_booted; then
		fail boot "the guest did not come up; QEMU: $(tail -n 3 "$CPRD_STATE/vms/$1/qemu.log" 2>&1)"
		cprd_keep_logs "$1"
		cprd_stop
		finish
	fi
	l2_found "$2"
	cprd_check_held held-vfio "$1"
	check cprd-holds-device "cprd holds $(cprd_own_vfio_fds) VFIO fds" [ "$(cprd_own_vfio_fds)" -ge 1 ]
}
