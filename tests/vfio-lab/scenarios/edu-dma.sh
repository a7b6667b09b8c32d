# shellcheck shell=sh
# edu-dma: QEMU 11.1 alone, no cprd. An L2 guest (cprd-guest-pci) with QEMU's
# edu device assigned through vfio-pci runs DMA round trips (guest RAM ->
# device -> guest RAM, through L1's IOMMU mappings of the memfd) with values
# that change every round. Checks: the guest found edu, several rounds in a
# row succeeded, the values really changed (the guest's RAM block, read
# through the memfd as cprd can), the RAM is pinned. No upgrade here: under
# TCG, QEMU 11.1.3 crashes when cpr-transfer starts with a device that has
# an interrupt pin (docs/vfio-lab.md); cprd-refuse-edu covers that.

# shellcheck source=tests/vfio-lab/scenarios/lib.sh
. /payload/scenarios/lib.sh

ROUNDS=${EDU_ROUNDS:-5}
dev=$LAB_EDU
[ -n "$dev" ] || { fail setup "L1 has no edu device"; finish; }
note "edu $dev, IOMMU group $LAB_EDU_GROUP"

# block_u32 PID OFFSET: a u32 of the guest's RAM block, through the memfd.
block_u32() { od -An -tu4 -j $(($2)) -N4 "/proc/$1/fd/5" | tr -d ' '; }

l2_boot "$dev" edu
check edu-id "$(grep '^cprd-guest: pci ' "$L2_SERIAL")" grep -q '^cprd-guest: pci .* id 010000ed$' "$L2_SERIAL"
v1=$(block_u32 "$L2_PID" 0x8034)
wait_progress "$ROUNDS" $((ROUNDS * 30))
v2=$(block_u32 "$L2_PID" 0x8034)
ok=$(block_u32 "$L2_PID" 0x8028)
bad=$(block_u32 "$L2_PID" 0x802C)
rounds=$(serial_lines | grep -c '^cprd-guest: line .* edu dma [0-9]* ok$')
check edu-dma-rounds "$rounds round trips ok on the console, the block says $ok ok $bad bad; last: $(last_progress)" \
	eval '[ "$rounds" -ge "$ROUNDS" ] && [ "$bad" -eq 0 ] && [ "$ok" -ge "$rounds" ]'
check edu-dma-values-change "first dword sent: $v1, then $v2" [ "$v1" != "$v2" ]
check edu-pinned "QEMU $(locked "$L2_PID")" [ "$(vmlck_kb "$L2_PID")" -ge $((L2_MIB * 1024)) ]
check edu-bus-master "L1 sees command $(pci_command "$dev")" bus_master_on "$dev"
figure edu_rounds_ok "$ok"
figure edu_locked "$(locked "$L2_PID")"

labtool qmp "$L2_QMP" '{"execute": "quit"}' >/dev/null 2>&1
wait_exit "$L2_PID" 15
finish
