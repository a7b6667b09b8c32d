# qmp (the asynchronous QMP client), probe (what a QEMU binary can do) and
# qemu (the one way cprd starts a child, which probes use too), with util.
# include() this where the daemon's sources are gathered; the unit tests
# include it too. Needs libevent_core and json-c (via cprd-proto).
set(CPRD_QMP_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/qmp.c
  ${CMAKE_CURRENT_LIST_DIR}/probe.c
  ${CMAKE_CURRENT_LIST_DIR}/qemu.c
  ${CMAKE_CURRENT_LIST_DIR}/util.c)
