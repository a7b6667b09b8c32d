# shellcheck shell=sh
# cprd-refuse-edu: issue 11's DMA test. NEEDS THE DAEMON SIDE OF ISSUE 11
# (spec `devices`, `cprctl create --device pci=ADDR`, held fds of kind
# `vfio`, the preflight refusal under TCG); with a cprd without it,
# run-lab.py skips this scenario, and run by hand it fails at create.
#
# cprd in L1 runs the L2 guest (cprd-guest-pci) with edu assigned. The
# guest's DMA round trips succeed while cprd holds the device's fds. Every
# upgrade mode is refused in preflight: cpr-transfer (and auto) because
# QEMU's VFIO CPR needs KVM for a device with an interrupt pin (under TCG
# the old QEMU 11.1.3 segfaults when migrate starts), local-migrate because
# it cannot carry a VFIO device; the reason names the limitation. The guest
# keeps running on the same QEMU and its DMA keeps working.

# shellcheck source=tests/vfio-lab/scenarios/lib.sh
. /payload/scenarios/lib.sh

dev=$LAB_EDU
vm=l2edu
[ -n "$dev" ] || { fail setup "L1 has no edu"; finish; }
cprd_start || finish
note "edu $dev, IOMMU group $LAB_EDU_GROUP"

if ! cprctl create "$vm" --memory "$L2_MIB" --qemu "$LAB_QEMU" --accel tcg --machine pc \
	--disk "$LAB_GUEST,readonly" --device "pci=$dev" >"$LAB_OUT/create.log" 2>&1; then
	fail create "cprctl create $vm --device pci=$dev: $(cat "$LAB_OUT/create.log")"
	cprd_stop
	finish
fi
pass create "cprctl create $vm --device pci=$dev"
if ! cprctl start "$vm" >"$LAB_OUT/start.log" 2>&1; then
	fail start "cprctl start $vm: $(cat "$LAB_OUT/start.log")"
	cprd_keep_logs "$vm"
	cprd_stop
	finish
fi
pass start "cprctl start $vm"
L2_SERIAL=$(cprd_vm_serial "$vm")
if ! wait_for 180 grep -q '^cprd-guest: pci ' "$L2_SERIAL" || ! wait_progress 2 120; then
	fail boot "the guest did not come up; QEMU: $(tail -n 3 "$CPRD_STATE/vms/$vm/qemu.log" 2>&1)"
	cprd_keep_logs "$vm"
	finish
fi
pid=$(cprd_vm_pid "$vm")
check l2-found-edu "$(grep '^cprd-guest: pci ' "$L2_SERIAL")" \
	grep -q '^cprd-guest: pci .* 1234:11e8 .* id 010000ed$' "$L2_SERIAL"
check edu-dma "$(last_progress)" eval 'last_progress | grep -q " edu dma [0-9]* ok$"'
check held-vfio "GetVM fds kinds: $(cprd_held_kinds "$vm" | sort | uniq -c | tr -s ' \n' ' ')" \
	eval 'cprd_held_kinds "$vm" | grep -qx vfio'
check cprd-holds-device "cprd holds $(cprd_own_vfio_fds) VFIO fds" [ "$(cprd_own_vfio_fds)" -ge 1 ]

for mode in cpr-transfer auto local-migrate; do
	cprctl --json upgrade "$vm" --qemu "$LAB_QEMU" --mode "$mode" >"$LAB_OUT/upgrade-$mode.json" 2>&1
	rc=$?
	# --json prints the result (outcome "refused") on stdout, then cprctl's
	# message on stderr, which is the last line.
	result=$(tail -n 1 "$LAB_OUT/upgrade-$mode.json")
	check "refuse-$mode" "exit $rc: $result" \
		eval '[ "$rc" -ne 0 ] && grep -q "\"outcome\": *\"refused\"" "$LAB_OUT/upgrade-$mode.json"'
	now=$(cprd_vm_pid "$vm")
	check "refuse-$mode-untouched" "QEMU $pid -> $now" eval '[ "$now" = "$pid" ] && alive "$pid"'
done
# The reason names the limitation: TCG, and the device's interrupts.
reason=$(grep -o '"reason": *"[^"]*"' "$LAB_OUT/upgrade-cpr-transfer.json" | head -n 1)
check refuse-reason "$reason" eval 'echo "$reason" | grep -qi tcg && echo "$reason" | grep -qi interrupt'

lines=$(progress_count)
if wait_progress 3 120; then
	bad=$(serial_lines | grep '^cprd-guest: line ' | tail -n +$((lines + 1)) | grep -vc ' ok$')
	check still-running "$bad BAD DMA rounds since the refusals; last: $(last_progress)" [ "$bad" -eq 0 ]
else
	fail still-running "no progress after the refusals (last: $(last_progress))"
fi
check no-reboot "$(boots) boot line(s)" [ "$(boots)" -eq 1 ]

cprd_keep_logs "$vm"
check stop "cprctl stop $vm --force" cprctl stop "$vm" --force
cprd_stop
finish
