# Check suites for daemon/ modules without a fragment of their own, each
# test_NAME.c linked with cprd-core; none needs QEMU:
#   spec            the VM spec parser
#   util            helpers whose output clients see
#   cmdline         the QEMU command line
#   mode            the upgrade modes and the choice auto makes
#   pause_slots     the queue of upgrades waiting to pause their guest
#   qemu_record     the QEMU record in qemu.json
#   upgrade_journal upgrade.json's writer and reader
#   custody         the held fds, and taking them back from a process
#   tap             tap names, MACs; as root, taps in a network namespace
#   vfio            a host PCI device's checks, against a fake sysfs tree
#   users           --qemu-users: the range, the account files, the uid picked
#   disk_grant      disks given to a VM's user: records; as root, real files
#   metrics         metrics.prom's text: every metric, escaping, the limits
#   binwatch        the QEMU binaries' folders watched: the debounce, symlink
#                   steps, the probe cache's key; real inotify on temp files
#   machined        machine names and ids for systemd-machined
#   snapshot_file   a snapshot's checksum and record; as root, its folder and
#                   file checks, the hasher, userfaultfd on a shared memfd
#   disk_overlay    an overlay's name, qemu-img's argv; as root, real overlays
#                   made by qemu-img on a loop, a refused disk, a cancel
#   cpr_relay       cpr-transfer's cpr channel through cprd, on real sockets
foreach(name spec util cmdline mode pause_slots qemu_record upgrade_journal custody tap vfio users disk_grant metrics binwatch machined snapshot_file disk_overlay cpr_relay)
  cprd_check_test(test_${name}
    SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_${name}.c
    LIBS cprd-core)
endforeach()
