/* The io.cprd.Manager IDL text, compiled in from io.cprd.Manager.varlink,
 * and what both ends of the interface agree on beyond its types: the
 * upgrade modes and the limits of parameters (cprd checks them, cprctl
 * checks them before it asks). */
#pragma once

#define CPRD_MANAGER_INTERFACE "io.cprd.Manager"
extern const char cprd_manager_idl[];

/* UpgradeRequest.mode, in the order of cprd's enum upgrade_mode. */
static const char *const cprd_upgrade_modes[] = {"auto", "cpr-transfer", "local-migrate",
						     "cpr-exec"};
#define CPRD_TIMEOUT_SEC_MAX 3600     /* StopVM's and Upgrade's timeoutSec */
#define CPRD_UPGRADE_PARALLEL_MAX 64  /* UpgradeMany's parallel */
#define CPRD_PAUSE_SLOTS_MAX 64       /* Upgrade's and UpgradeMany's pauseSlots */
