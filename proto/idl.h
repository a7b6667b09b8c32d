/* The io.cprd.Manager IDL text, compiled in from io.cprd.Manager.varlink. */
#pragma once

#define CPRD_MANAGER_INTERFACE "io.cprd.Manager"
extern const char cprd_manager_idl[];
