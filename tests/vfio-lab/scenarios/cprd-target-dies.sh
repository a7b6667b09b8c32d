# shellcheck shell=sh
# cprd-target-dies: issue 11's fault case. The new QEMU of a cpr-transfer
# dies during the transfer while pci-testdev is assigned. The old QEMU has
# by then given up its DMA mappings' addresses for the new one (QEMU's
# legacy VFIO CPR: VFIO_DMA_UNMAP_FLAG_VADDR when the migration starts) and
# must take them back when the migration fails. Expected: the upgrade is
# rolled back; the guest keeps running on the old QEMU, never rebooted, the
# device not reset; the old QEMU still has the device and its pinned memory;
# cprd still holds its copies of the VFIO fds; and a second upgrade then
# commits, which needs the old QEMU's mappings whole again.
#
# How the target dies: cprd runs with its test hook holding 4 s before the
# transfer phase (CPRD_TEST_HOLD_PHASE); the scenario stops the target
# (SIGSTOP), lets migrate go out, and kills it (SIGKILL), as the host's
# fault matrix does (tests/faults/faults.py, kill_target_mid_transfer).

# shellcheck source=tests/vfio-lab/scenarios/lib.sh
. /payload/scenarios/lib.sh

dev=$LAB_TESTDEV
vm=l2f
[ -n "$dev" ] || { fail setup "L1 has no pci-testdev"; finish; }
export CPRD_TEST_HOLD_PHASE=transfer CPRD_TEST_HOLD_MS=4000
cprd_start || finish
unset CPRD_TEST_HOLD_PHASE CPRD_TEST_HOLD_MS

if ! cprctl create "$vm" --memory "$L2_MIB" --qemu "$LAB_QEMU" --accel tcg --machine pc \
	--disk "$LAB_GUEST,readonly" --device "pci=$dev" >"$LAB_OUT/create.log" 2>&1 ||
	! cprctl start "$vm" >"$LAB_OUT/start.log" 2>&1; then
	fail start "cprctl create/start $vm: $(cat "$LAB_OUT/create.log" "$LAB_OUT/start.log")"
	cprd_stop
	finish
fi
L2_SERIAL=$(cprd_vm_serial "$vm")
if ! wait_for 180 grep -q '^cprd-guest: pci ' "$L2_SERIAL" || ! wait_progress 3 120; then
	fail boot "the guest did not come up; QEMU: $(tail -n 3 "$CPRD_STATE/vms/$vm/qemu.log" 2>&1)"
	cprd_keep_logs "$vm"
	finish
fi
old=$(cprd_vm_pid "$vm")
pass start "guest up on QEMU $old with $dev assigned"
lck_before=$(vmlck_kb "$old")

# the_target: the pid of the VM's QEMU that is not $old, if one runs.
the_target() {
	for c in /proc/[0-9]*/cmdline; do
		p=${c#/proc/}
		p=${p%/cmdline}
		[ "$p" != "$old" ] || continue
		tr '\0' ' ' <"$c" 2>/dev/null | grep -q "guest=$vm," && { echo "$p"; return 0; }
	done
	return 1
}

cprctl --json upgrade "$vm" --qemu "$LAB_QEMU" --mode cpr-transfer >"$LAB_OUT/upgrade-fault.json" 2>&1 &
up=$!
if ! wait_for 120 grep -q "test hook: holding" "$LAB_OUT/cprd.log" || ! target=$(the_target); then
	fail fault "the upgrade never held before its transfer with a target running"
	cprd_keep_logs "$vm"
	cprd_stop
	finish
fi
kill -STOP "$target"
wait_for 60 grep -q "upgrade transfer:" "$LAB_OUT/cprd.log"
sleep 1
kill -9 "$target"
note "target QEMU $target stopped, migrate sent, then killed"
wait_exit "$up" 180
result=$(cat "$LAB_OUT/upgrade-fault.json")
check rolled-back "$(echo "$result" | tr '\n' ' ' | cut -c 1-300)" \
	grep -q '"outcome": *"rolled-back"' "$LAB_OUT/upgrade-fault.json"
now=$(cprd_vm_pid "$vm")
check old-keeps-guest "QEMU $old -> $now" eval '[ "$now" = "$old" ] && alive "$old"'
check target-gone "target $target" eval "! alive $target"
lines=$(progress_count)
if wait_progress 3 120; then
	bad=$(serial_lines | grep '^cprd-guest: line ' | tail -n +$((lines + 1)) | grep -vc ' ok$')
	check still-running "$bad BAD lines since the rollback; last: $(last_progress)" [ "$bad" -eq 0 ]
else
	fail still-running "no progress after the rollback (last: $(last_progress))"
fi
check no-reboot "$(boots) boot line(s)" [ "$(boots)" -eq 1 ]
check old-has-device "old QEMU $old has $(vfio_fds "$old") VFIO fds" [ "$(vfio_fds "$old")" -ge 2 ]
lck=$(vmlck_kb "$old")
check old-pinned "old QEMU VmLck $lck kB (before: $lck_before kB)" [ "$lck" -ge $((L2_MIB * 1024)) ]
check bus-master "L1 sees command $(pci_command "$dev")" bus_master_on "$dev"
check held-vfio "cprd holds $(cprd_own_vfio_fds) VFIO fds" [ "$(cprd_own_vfio_fds)" -ge 1 ]

# The mappings are whole again if the next upgrade moves them.
cprctl --json upgrade "$vm" --qemu "$LAB_QEMU" --mode cpr-transfer >"$LAB_OUT/upgrade-after.json" 2>&1
check next-upgrade "$(grep -o '"outcome": *"[a-z-]*"' "$LAB_OUT/upgrade-after.json" | head -n 1)" \
	grep -q '"outcome": *"committed"' "$LAB_OUT/upgrade-after.json"
new=$(cprd_vm_pid "$vm")
if wait_progress 3 120; then
	check next-upgrade-running "QEMU $old -> $new; last: $(last_progress)" \
		eval 'last_progress | grep -q " ok$" && [ "$(boots)" -eq 1 ]'
else
	fail next-upgrade-running "no progress on QEMU $new"
fi
check next-upgrade-pinned "new QEMU VmLck $(vmlck_kb "$new") kB" [ "$(vmlck_kb "$new")" -ge $((L2_MIB * 1024)) ]

cprd_keep_logs "$vm"
cprctl stop "$vm" --force >/dev/null 2>&1
cprd_stop
finish
