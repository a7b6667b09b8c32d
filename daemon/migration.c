/* The QMP steps of a migration that an upgrade and the settlement of an
 * interrupted upgrade share (see migration.h), so that both roll back the
 * same way. */
#include "migration.h"

#include <errno.h>
#include <json-c/json.h>

#include "log.h"
#include "macro.h"
#include "qmp.h"

void migration_reset_mode(struct qmp *qmp) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "mode", json_object_new_string("normal"));
	qmp_command(qmp, "migrate-set-parameters", p, MIGRATION_QMP_TIMEOUT_MS, qmp_reply_ignore,
		    NULL);
}

struct json_object *migration_caps(const char *capability, bool on) {
	struct json_object *caps = json_object_new_object(), *a = json_object_new_array(),
			   *c = json_object_new_object();
	json_object_object_add(c, "capability", json_object_new_string(capability));
	json_object_object_add(c, "state", json_object_new_boolean(on));
	json_object_array_add(a, c);
	json_object_object_add(caps, "capabilities", a);
	return caps;
}

struct json_object *migration_caps_ignore_shared(bool on) {
	return migration_caps("x-ignore-shared", on);
}

static void rollback_done(struct migration_rollback *r, int error, const char *status) {
	r->qmp = NULL;
	r->done(r, error, status);
}

static void rollback_on_cont(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			     void *userdata) {
	struct migration_rollback *r = userdata;
	if (err) {
		log_vm(LOG_ERR, qmp_get_label(qmp), "rollback: cont on the old QEMU failed: %s",
		       err->desc);
		return rollback_done(r, -EIO, NULL);
	}
	rollback_done(r, 0, "running");
}

static void rollback_on_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			       void *userdata) {
	struct migration_rollback *r = userdata;
	if (err) {
		log_vm(LOG_ERR, qmp_get_label(qmp), "rollback: old QEMU does not answer: %s",
		       err->desc);
		return rollback_done(r, qmp_get_error(qmp) < 0 ? -EPIPE : -EIO, NULL);
	}
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	if (status && (streq(status, "finish-migrate") || streq(status, "inmigrate"))) {
		/* The cancel is still settling; ask again. */
		qmp_command(qmp, "query-status", NULL, MIGRATION_QMP_TIMEOUT_MS, rollback_on_status, r);
		return;
	}
	if (r->resume && status && !streq(status, "running")) {
		log_vm(LOG_INFO, qmp_get_label(qmp), "rollback: old QEMU is %s; resuming the guest",
		       status);
		qmp_command(qmp, "cont", NULL, MIGRATION_QMP_TIMEOUT_MS, rollback_on_cont, r);
		return;
	}
	rollback_done(r, 0, status);
}

int migration_rollback_start(struct migration_rollback *r, struct qmp *qmp) {
	if (!qmp || qmp_get_error(qmp) < 0)
		return -EPIPE;
	r->qmp = qmp;
	if (r->cancel)
		qmp_command(qmp, "migrate_cancel", NULL, MIGRATION_QMP_TIMEOUT_MS, qmp_reply_ignore,
			    NULL);
	if (r->reset_mode)
		migration_reset_mode(qmp);
	if (r->clear_ignore_shared)
		qmp_command(qmp, "migrate-set-capabilities", migration_caps_ignore_shared(false),
			    MIGRATION_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	int ret = qmp_command(qmp, "query-status", NULL, MIGRATION_QMP_TIMEOUT_MS,
			      rollback_on_status, r);
	if (ret < 0)
		r->qmp = NULL;
	return ret;
}

void migration_rollback_cancel(struct migration_rollback *r) {
	if (r->qmp)
		qmp_cancel(TAKE_PTR(r->qmp), r);
}
