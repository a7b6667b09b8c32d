/* Upgrading a running VM's QEMU: the state machine that spawns the target,
 * moves the guest over (cpr-transfer or local-migrate) and commits, or rolls
 * back to the old QEMU. */
#pragma once

#include <stdbool.h>

struct json_object;
struct manager;
struct vm;

#include "idl.h"

#define UPGRADE_TIMEOUT_SEC_DEFAULT 60
#define UPGRADE_TIMEOUT_SEC_MAX CPRD_TIMEOUT_SEC_MAX
#define UPGRADE_PARALLEL_MAX CPRD_UPGRADE_PARALLEL_MAX

/* Named by cprd_upgrade_modes (idl.h), in this order. */
enum upgrade_mode {
	UPGRADE_MODE_AUTO,
	UPGRADE_MODE_CPR_TRANSFER,
	UPGRADE_MODE_LOCAL_MIGRATE,
	UPGRADE_MODE_CPR_EXEC,
	_UPGRADE_MODE_MAX,
};

struct upgrade_request {
	const char *qemu;  /* NULL: the VM's own binary path */
	enum upgrade_mode mode;
	int timeout_sec;
	unsigned pause_slots; /* at most this many guests paused at once; 0: cprd's default */
	bool dry_run;
};

int upgrade_mode_from_string(const char *s, enum upgrade_mode *ret);
const char *upgrade_mode_to_string(enum upgrade_mode m);
/* Records in the VM's history how an upgrade found in its journal after a
 * restart (see attach.c) was settled. */
struct upgrade_journal;
void upgrade_record_settled(struct vm *vm, const struct upgrade_journal *j, const char *outcome,
			    const char *reason);
/* The device state file, in the upgrade's private folder, of a mode that
 * spawns nothing (cpr-exec): the process executes the new binary with
 * -incoming file:DIR/UPGRADE_STATE_FILE. */
#define UPGRADE_STATE_FILE "vm.state"
/* A committed upgrade: the VM's spec names binary from now on, so a later
 * start or a plain upgrade uses it (saved). */
void upgrade_commit_binary(struct vm *vm, const char *binary);
/* Removes an upgrade's private folder and the incoming sockets in it (dir
 * may be NULL). */
void upgrade_dir_remove(const char *dir);

/* Why preflight refused an upgrade (nothing was touched). api-upgrade.c
 * picks the io.cprd.Manager error for each. */
enum upgrade_refusal {
	UPGRADE_NOT_REFUSED,
	UPGRADE_REFUSED_NOT_UPGRADABLE, /* the VM or the target cannot do it */
	UPGRADE_REFUSED_BUSY,           /* another operation or migration runs */
	UPGRADE_REFUSED_BAD_STATE,      /* the VM is not running or paused */
	UPGRADE_REFUSED_PROBE_FAILED,   /* the target binary cannot be run or probed */
};

struct upgrade;
/* result is an UpgradeResult, the caller's to put; u is valid only during
 * the call. */
typedef void (*upgrade_done_fn)(struct upgrade *u, struct json_object *result, void *userdata);
typedef void (*upgrade_progress_fn)(struct upgrade *u, const char *phase, const char *message,
				    void *userdata);

/* Starts upgrading vm's QEMU. progress (may be NULL) runs at every phase;
 * done runs once with the result, refusals included, possibly before this
 * returns. A negative errno means nothing started and done will not run. */
int upgrade_start(struct manager *m, struct vm *vm, const struct upgrade_request *req,
		  upgrade_progress_fn progress, upgrade_done_fn done, void *userdata);
struct vm *upgrade_get_vm(const struct upgrade *u);
/* The target binary's path. */
const char *upgrade_get_binary(const struct upgrade *u);
enum upgrade_refusal upgrade_get_refusal(const struct upgrade *u);
