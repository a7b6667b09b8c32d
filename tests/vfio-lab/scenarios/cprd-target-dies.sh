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
cprd_boot_l2 "$vm" "$dev"
unset CPRD_TEST_HOLD_PHASE CPRD_TEST_HOLD_MS
old=$(cprd_vm_pid "$vm")
note "guest up on QEMU $old with $dev assigned"

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

guest_mark
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
guest_went_on after-rollback "the failed upgrade"
l2_has_device old "$old" "$dev"
check held-vfio "cprd holds $(cprd_own_vfio_fds) VFIO fds" [ "$(cprd_own_vfio_fds)" -ge 1 ]

# The mappings are whole again if the next upgrade moves them.
guest_mark
cprctl --json upgrade "$vm" --qemu "$LAB_QEMU" --mode cpr-transfer >"$LAB_OUT/upgrade-after.json" 2>&1
check next-upgrade "$(grep -o '"outcome": *"[a-z-]*"' "$LAB_OUT/upgrade-after.json" | head -n 1)" \
	grep -q '"outcome": *"committed"' "$LAB_OUT/upgrade-after.json"
l2_moved next-upgrade "$old" "$(cprd_vm_pid "$vm")" "$dev"

cprd_keep_logs "$vm"
cprctl stop "$vm" --force >/dev/null 2>&1
cprd_stop
finish
