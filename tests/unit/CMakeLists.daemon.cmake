# Check suites for daemon/ modules without a fragment of their own.
# test_spec: daemon/spec.c, the VM spec parser (no QEMU needed).
cprd_check_test(test_spec
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_spec.c
  LIBS cprd-core)

# test_util: daemon/util.c, helpers whose output clients see.
cprd_check_test(test_util
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_util.c
  LIBS cprd-core)

# test_cmdline: daemon/cmdline.c, the QEMU command line (pure, no QEMU run).
cprd_check_test(test_cmdline
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_cmdline.c
  LIBS cprd-core)

# test_mode: daemon/mode*.c, the upgrade modes and the choice auto makes.
cprd_check_test(test_mode
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_mode.c
  LIBS cprd-core)

# test_qemu_record: daemon/qemu-record.c, the QEMU record in qemu.json.
cprd_check_test(test_qemu_record
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_qemu_record.c
  LIBS cprd-core)

# test_upgrade_journal: daemon/upgrade-journal.c, upgrade.json's writer and reader.
cprd_check_test(test_upgrade_journal
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_upgrade_journal.c
  LIBS cprd-core)

# test_custody: daemon/custody*.c, the held fds and taking them back from a process.
cprd_check_test(test_custody
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_custody.c
  LIBS cprd-core)
