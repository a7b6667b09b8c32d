# shellcheck shell=sh
# plain-cpr: QEMU 11.1 alone, no cprd. An L2 guest (cprd-guest-pci) with
# pci-testdev assigned through vfio-pci moves twice from one QEMU 11.1 to
# a new one with cpr-transfer, as cprd would do it: same arguments, same
# RAM memfd, the same device id (hostdev0), the device's fds carried over
# in the CPR state. Checks after each round: the transfer completed, the
# new QEMU holds the device's VFIO fds and the old one is gone, the guest
# never rebooted and kept counting, the device was not reset (the guest's
# own check on every line: pci-testdev's counter and selected test, and bus
# mastering; and bus mastering in L1's view of the config space), and the
# locked memory. Then two controls: a reset of the device under the running
# guest (sysfs) must turn the guest's lines BAD, and once L2's QEMU quit
# (the device's last fd closed) bus mastering must be off: the checks
# would have seen a reset or a reopened device.

# shellcheck source=tests/vfio-lab/scenarios/lib.sh
. /payload/scenarios/lib.sh

dev=$LAB_TESTDEV
[ -n "$dev" ] || { fail setup "L1 has no pci-testdev"; finish; }
note "pci-testdev $dev, IOMMU group $LAB_TESTDEV_GROUP, reset_method $(cat "/sys/bus/pci/devices/$dev/reset_method" 2>/dev/null)"

l2_boot "$dev" old
check l2-device-ok "$(last_progress)" eval 'last_progress | grep -q " ok$"'
check bus-master-on "L1 sees command $(pci_command "$dev")" bus_master_on "$dev"
figure locked_before_kb "$(vmlck_kb "$L2_PID")"
note "before: QEMU $L2_PID $(locked "$L2_PID"), $(vfio_fds "$L2_PID") VFIO fds"

for round in 1 2; do
	guest_mark
	old=$L2_PID
	if ! cpr_transfer "$dev" "$round"; then
		fail "cpr$round" "cpr-transfer did not complete"
		kill -9 "$L2_PID" 2>/dev/null
		finish
	fi
	pass "cpr$round" "cpr-transfer completed: QEMU $old -> $L2_PID, pause ${CPR_PAUSE_MS:-?} ms (downtime ${CPR_DOWNTIME_MS:-?} ms), ${CPR_TOTAL_MS} ms in all"
	figure "cpr${round}_pause_ms" "${CPR_PAUSE_MS:-unknown}"
	figure "cpr${round}_downtime_ms" "${CPR_DOWNTIME_MS:-unknown}"
	figure "cpr${round}_total_ms" "$CPR_TOTAL_MS"
	# At the moment the old QEMU reported the migration completed (before it
	# quit), and once the old one is gone.
	figure "cpr${round}_old_locked_at_completion" "$CPR_OLD_LOCKED"
	figure "cpr${round}_new_locked_at_completion" "$CPR_NEW_LOCKED_EARLY"
	figure "cpr${round}_new_locked" "$(locked "$L2_PID")"
	if ! l2_moved "cpr$round" "$old" "$L2_PID" "$dev"; then
		kill -9 "$L2_PID" 2>/dev/null
		finish
	fi
done

# The control: a reset under the guest shows in its lines.
echo 1 >"/sys/bus/pci/devices/$dev/reset" 2>/dev/null || note "sysfs reset of $dev failed"
wait_progress 2 60
check control-reset-seen "after a sysfs reset of $dev the guest says: $(last_progress)" \
	eval 'last_progress | grep -q " BAD$"'

labtool qmp "$L2_QMP" '{"execute": "quit"}' >/dev/null 2>&1
wait_exit "$L2_PID" 15
# The other control: once the device's last fd closed, vfio-pci released
# (and reset) it, and bus mastering is off; so a transfer that had closed
# and reopened the device would have shown in bus-master checks above.
check control-release-seen "L2's QEMU gone, L1 sees command $(pci_command "$dev")" eval "! bus_master_on $dev"
finish
