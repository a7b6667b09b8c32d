# shellcheck shell=sh
# cprd-smoke: the cprd hook itself, with any cprd (no device): cprd runs in
# L1, boots the L2 guest (cprd-guest-pci, which then finds no device and
# behaves as cprd-guest) on QEMU 11.1 and upgrades it 11.1 -> 11.1 with
# cpr-transfer. Shows that a cprd build given to run-lab.py works in L1;
# the device scenarios build on the same steps.

# shellcheck source=tests/vfio-lab/scenarios/lib.sh
. /payload/scenarios/lib.sh

cprd_start || finish
vm=smoke
check create "cprctl create $vm" \
	cprctl create "$vm" --memory "$L2_MIB" --qemu "$LAB_QEMU" --accel tcg --machine pc \
	--disk "$LAB_GUEST,readonly"
check start "cprctl start $vm" cprctl start "$vm"
L2_SERIAL=$(cprd_vm_serial "$vm")
if ! wait_for 120 test -f "$L2_SERIAL" || ! wait_progress 3 120; then
	fail boot "the guest did not come up; QEMU: $(tail -n 3 "$CPRD_STATE/vms/$vm/qemu.log" 2>&1)"
	cprd_keep_logs "$vm"
	finish
fi
pid=$(cprd_vm_pid "$vm")
note "guest up on QEMU $pid: $(last_progress); cprd holds: $(cprd_held_kinds "$vm" | sort | uniq -c | tr -s ' \n' ' ')"
before=$(last_progress)
cprctl --json upgrade "$vm" --qemu "$LAB_QEMU" --mode cpr-transfer >"$LAB_OUT/$vm-upgrade.json" 2>&1
result=$(tail -n 1 "$LAB_OUT/$vm-upgrade.json")
check upgrade "$result" eval 'echo "$result" | grep -q "\"outcome\": *\"committed\""'
figure smoke_pause_ms "$(echo "$result" | json_field pauseMs)"
figure smoke_total_ms "$(echo "$result" | json_field totalMs)"
newpid=$(cprd_vm_pid "$vm")
check new-qemu "QEMU $pid -> $newpid" eval '[ -n "$newpid" ] && [ "$newpid" != "$pid" ] && ! alive "$pid"'
wait_progress 3 120
after=$(last_progress)
check kept-counting "'$before' -> '$after'" [ "$(ticks_of "$after")" -gt "$(ticks_of "$before")" ]
check no-reboot "$(boots) boot line(s)" [ "$(boots)" -eq 1 ]
cprd_keep_logs "$vm"
check stop "cprctl stop $vm --force" cprctl stop "$vm" --force
cprd_stop
finish
