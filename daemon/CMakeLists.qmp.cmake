# qmp (the asynchronous QMP client) and probe (what a QEMU binary can do).
# include() this where the daemon's sources are gathered; the unit tests
# include it too. Needs libevent_core and json-c (via cprd-proto).
set(CPRD_QMP_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/qmp.c
  ${CMAKE_CURRENT_LIST_DIR}/probe.c)
