/* Upgrading a running VM's QEMU: the state machine that spawns the target,
 * moves the guest over (cpr-transfer or local-migrate) and commits, or rolls
 * back to the old QEMU. */
#pragma once

#include <stdbool.h>

struct json_object;
struct manager;
struct vl_call;
struct vm;

#define UPGRADE_TIMEOUT_SEC_DEFAULT 60
#define UPGRADE_TIMEOUT_SEC_MAX 3600
#define UPGRADE_PARALLEL_MAX 64

enum upgrade_mode {
	UPGRADE_MODE_AUTO,
	UPGRADE_MODE_CPR_TRANSFER,
	UPGRADE_MODE_LOCAL_MIGRATE,
};

struct upgrade_request {
	const char *qemu;  /* NULL: the VM's own binary path */
	enum upgrade_mode mode;
	int timeout_sec;
	bool dry_run;
};

int upgrade_mode_from_string(const char *s, enum upgrade_mode *ret);
const char *upgrade_mode_to_string(enum upgrade_mode m);
/* Sets the migration mode back to normal (after cpr-transfer was set or
 * tried); the reply is not waited for. */
struct qmp;
void upgrade_reset_mode(struct qmp *qmp);

/* Upgrade handler for one VM; replies (streaming phases when the call set
 * more) on call. */
int upgrade_vm_call(struct manager *m, struct vl_call *call, struct vm *vm,
		    const struct upgrade_request *req);
/* UpgradeMany: names is a JSON array of strings or NULL with outdated. */
int upgrade_many_call(struct manager *m, struct vl_call *call, struct json_object *names,
		      bool outdated, const struct upgrade_request *req, int parallel,
		      bool stop_on_failure);
