# Check suites for daemon/qmp.c and daemon/probe.c. Both drive real QEMU
# binaries (/usr/bin/qemu-system-x86_64 10.0, /opt/cprd/qemu-system-x86_64-7.2)
# and exit 77 (skipped) when one is missing.
include(${CMAKE_CURRENT_LIST_DIR}/../../daemon/CMakeLists.qmp.cmake)

cprd_check_test(test_qmp
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_qmp.c ${CPRD_QMP_SOURCES}
  LIBS cprd-proto)
cprd_check_test(test_probe
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_probe.c ${CPRD_QMP_SOURCES}
  LIBS cprd-proto)
foreach(t test_qmp test_probe)
  target_include_directories(${t} PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../../daemon)
endforeach()
