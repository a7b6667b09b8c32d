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
note "edu $dev, IOMMU group $LAB_EDU_GROUP"
cprd_boot_l2 "$vm" "$dev"
pid=$(cprd_vm_pid "$vm")
check edu-id "$(grep '^cprd-guest: pci ' "$L2_SERIAL")" grep -q '^cprd-guest: pci .* id 010000ed$' "$L2_SERIAL"
check edu-dma "$(last_progress)" eval 'last_progress | grep -q " edu dma [0-9]* ok$"'

guest_mark
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

guest_went_on after-refusals "the refusals"

cprd_keep_logs "$vm"
check stop "cprctl stop $vm --force" cprctl stop "$vm" --force
cprd_stop
finish
