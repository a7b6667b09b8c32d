/* migration: the QMP steps that an upgrade and the settlement of an upgrade
 * after a restart share: the migration mode, the migration capabilities
 * (x-ignore-shared; a snapshot's background-snapshot), and putting a guest
 * back on the QEMU it was migrating away from. */
#pragma once

#include <stdbool.h>

struct json_object;
struct qmp;

#define MIGRATION_QMP_TIMEOUT_MS 5000 /* each command */

/* Sets the migration mode back to normal (after cpr-transfer was set or
 * tried); the reply is not waited for. */
void migration_reset_mode(struct qmp *qmp);
/* migrate-set-capabilities' arguments that turn one capability on or off. */
struct json_object *migration_caps(const char *capability, bool on);
/* migrate-set-capabilities' arguments that turn x-ignore-shared on or off. */
struct json_object *migration_caps_ignore_shared(bool on);

struct migration_rollback;
/* error: 0 when the QEMU settled (status is its run state then, "running"
 * after a cont that worked); -EPIPE when its QMP channel closed (it is
 * probably dying); -EIO when it refused or did not answer. */
typedef void (*migration_rollback_fn)(struct migration_rollback *r, int error, const char *status);

/* One rollback, for the upgrade and for the settlement after a restart:
 * cancel the migration, undo what it set, wait until the run state is no
 * longer a migration's, and let the guest run again if it ran before. The
 * caller fills the first part and owns the struct; while the rollback runs,
 * it is the QMP callbacks' userdata. */
struct migration_rollback {
	bool cancel;              /* migrate was (or may have been) sent */
	bool reset_mode;          /* the QEMU has migration modes (QEMU >= 8.2) */
	bool clear_ignore_shared; /* local-migrate set x-ignore-shared */
	bool resume;              /* the guest ran before: cont unless it runs */
	migration_rollback_fn done;
	void *userdata;

	struct qmp *qmp; /* the rollback's */
};

/* Starts the rollback on qmp; done runs once, from the event loop. A
 * negative errno means the QMP channel is closed and done will not run. */
int migration_rollback_start(struct migration_rollback *r, struct qmp *qmp);
/* Forgets a rollback under way: done will not run. */
void migration_rollback_cancel(struct migration_rollback *r);
