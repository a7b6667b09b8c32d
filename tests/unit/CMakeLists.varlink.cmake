# The Check suite of proto/ (the Varlink server, client and messages).
find_package(Threads REQUIRED)
cprd_check_test(test_varlink
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/test_varlink.c
  LIBS vl-test-service Threads::Threads)
