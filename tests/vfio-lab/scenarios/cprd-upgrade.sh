# shellcheck shell=sh
# cprd-upgrade: issue 11's upgrade test. NEEDS THE DAEMON SIDE OF ISSUE 11
# (spec `devices`, `cprctl create --device pci=ADDR`, held fds of kind
# `vfio`); with a cprd without it, run-lab.py skips this scenario, and run
# by hand it fails at create.
#
# cprd in L1 creates and starts the L2 guest (cprd-guest-pci) with
# pci-testdev assigned, then upgrades its QEMU 11.1 -> 11.1 with
# cpr-transfer, twice. After each upgrade: committed; the new QEMU holds the
# device's VFIO fds and the old one is gone; GetVM still lists fds of kind
# vfio and cprd itself holds VFIO fds; the guest never rebooted and kept
# counting; the device was not reset (the guest's check on every line:
# pci-testdev's counter and selected test, bus mastering; and bus mastering
# in L1's config space, which vfio-pci clears when the device's last fd
# closes); the locked memory moved to the new QEMU without being unpinned
# (VmLck, as in plain-cpr).

# shellcheck source=tests/vfio-lab/scenarios/lib.sh
. /payload/scenarios/lib.sh

dev=$LAB_TESTDEV
vm=l2
[ -n "$dev" ] || { fail setup "L1 has no pci-testdev"; finish; }
note "pci-testdev $dev, IOMMU group $LAB_TESTDEV_GROUP"
cprd_boot_l2 "$vm" "$dev"
pid=$(cprd_vm_pid "$vm")
check l2-device-ok "$(last_progress)" eval 'last_progress | grep -q " ok$"'
check bus-master-on "L1 sees command $(pci_command "$dev")" bus_master_on "$dev"
figure cprd_locked_before "$(locked "$pid")"

for round in 1 2; do
	guest_mark
	old=$pid
	cprctl --json upgrade "$vm" --qemu "$LAB_QEMU" --mode cpr-transfer >"$LAB_OUT/upgrade-$round.json" 2>&1
	result=$(tail -n 1 "$LAB_OUT/upgrade-$round.json")
	if ! echo "$result" | grep -q '"outcome": *"committed"'; then
		fail "upgrade$round" "not committed: $result"
		cprd_keep_logs "$vm"
		break
	fi
	pid=$(cprd_vm_pid "$vm")
	pass "upgrade$round" "committed, QEMU $old -> $pid, pause $(echo "$result" | json_field pauseMs) ms"
	figure "cprd_upgrade${round}_pause_ms" "$(echo "$result" | json_field pauseMs)"
	figure "cprd_upgrade${round}_total_ms" "$(echo "$result" | json_field totalMs)"
	figure "cprd_upgrade${round}_new_locked" "$(locked "$pid")"
	cprd_check_held "upgrade$round-held-vfio" "$vm"
	l2_moved "upgrade$round" "$old" "$pid" "$dev" || break
done

# Another VM may not have the device.
cprctl create l2b --memory "$L2_MIB" --qemu "$LAB_QEMU" --accel tcg --machine pc \
	--disk "$LAB_GUEST,readonly" --device "pci=$dev" >"$LAB_OUT/create-second.log" 2>&1
rc=$?
check refuse-second-vm "exit $rc: $(cat "$LAB_OUT/create-second.log")" \
	eval '[ "$rc" -ne 0 ] && grep -q "assigned to VM $vm" "$LAB_OUT/create-second.log"'

# A crash: cprd keeps its copies (the device stays open), and gives them up
# before the fresh QEMU of a new start opens the group (it opens only once).
pid=$(cprd_vm_pid "$vm")
kill -9 "$pid"
wait_for 30 eval 'cprctl --json status "$vm" | grep -q "\"state\": *\"crashed\""'
check crash-keeps-device "crashed; cprd holds $(cprd_own_vfio_fds) VFIO fds, L1 sees command $(pci_command "$dev")" \
	eval '[ "$(cprd_own_vfio_fds)" -ge 1 ] && bus_master_on "$dev"'
if cprctl start "$vm" >"$LAB_OUT/start-after-crash.log" 2>&1 && wait_progress 2 120; then
	pass start-after-crash "started again on QEMU $(cprd_vm_pid "$vm"): $(last_progress)"
else
	fail start-after-crash "$(cat "$LAB_OUT/start-after-crash.log"); QEMU: $(tail -n 2 "$CPRD_STATE/vms/$vm/qemu.log")"
fi

cprd_keep_logs "$vm"
check stop "cprctl stop $vm --force" cprctl stop "$vm" --force
check released "after stop cprd holds $(cprd_own_vfio_fds) VFIO fds" [ "$(cprd_own_vfio_fds)" -eq 0 ]

# A device no longer bound to vfio-pci: the start is refused, naming the
# driver question and how to rebind; cprd never rebinds by itself.
echo "$dev" >"/sys/bus/pci/devices/$dev/driver/unbind"
cprctl start "$vm" >"$LAB_OUT/start-unbound.log" 2>&1
rc=$?
check refuse-unbound "exit $rc: $(cat "$LAB_OUT/start-unbound.log")" \
	eval '[ "$rc" -ne 0 ] && grep -q "vfio-pci" "$LAB_OUT/start-unbound.log" && grep -q "drivers_probe" "$LAB_OUT/start-unbound.log"'
check unbound-stays "cprd did not rebind it" eval '[ ! -e "/sys/bus/pci/devices/$dev/driver" ]'
echo vfio-pci >"/sys/bus/pci/devices/$dev/driver_override"
echo "$dev" >/sys/bus/pci/drivers_probe
cprd_stop
finish
