/* The upgrade journal (see upgrade-journal.h): one function writes it and
 * one reads it, so the two cannot drift, and the reader is tested on its
 * own (tests/unit/test_upgrade_journal.c). */
#include "upgrade-journal.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "mode.h"
#include "qemu-record.h"
#include "util.h"

static void add_string(struct json_object *o, const char *key, const char *s) {
	json_object_object_add(o, key, json_object_new_string(s ? s : ""));
}

struct json_object *upgrade_journal_to_json(const struct upgrade_journal *j) {
	struct json_object *o = json_object_new_object();
	add_string(o, "time", j->time);
	add_string(o, "phase", j->phase);
	add_string(o, "mode", j->mode);
	add_string(o, "binary", j->binary);
	add_string(o, "fromBinary", j->from_binary);
	add_string(o, "fromVersion", j->from_version);
	json_object_object_add(o, "wasRunning", json_object_new_boolean(j->was_running));
	json_object_object_add(o, "resumed", json_object_new_boolean(j->resumed));
	json_object_object_add(o, "startMono", json_object_new_int64((int64_t)j->start_mono));
	if (j->old)
		json_object_object_add(o, "old", json_object_get(j->old));
	if (j->target)
		json_object_object_add(o, "target", json_object_get(j->target));
	if (j->dir)
		add_string(o, "dir", j->dir);
	return o;
}

/* A QEMU record, checked and referenced into *ret; absent leaves NULL. */
static int get_record(struct json_object *o, const char *key, struct json_object **ret, char *why,
		      size_t size) {
	struct json_object *v;
	struct qemu_record rec;
	char reason[256];
	if (!json_object_object_get_ex(o, key, &v) || !v)
		return 0;
	int r = qemu_record_from_json(v, &rec, reason, sizeof(reason));
	if (r == -EBADMSG)
		return json_refuse(why, size, "%s: %s", key, reason);
	if (r < 0)
		return r;
	qemu_record_done(&rec);
	*ret = json_object_get(v);
	return 0;
}

int upgrade_journal_from_json(struct json_object *o, struct upgrade_journal *ret, char *why,
			      size_t size) {
	struct upgrade_journal j = {0};
	int r;

	if (!o || !json_object_is_type(o, json_type_object))
		return json_refuse(why, size, "not a JSON object");
	int64_t start_mono = 0;
	if ((r = json_field_string(o, "time", true, &j.time, why, size)) < 0 ||
	    (r = json_field_string(o, "phase", true, &j.phase, why, size)) < 0 ||
	    (r = json_field_string(o, "mode", true, &j.mode, why, size)) < 0 ||
	    (r = json_field_string(o, "binary", true, &j.binary, why, size)) < 0 ||
	    (r = json_field_string(o, "fromBinary", true, &j.from_binary, why, size)) < 0 ||
	    (r = json_field_string(o, "fromVersion", true, &j.from_version, why, size)) < 0 ||
	    (r = json_field_string(o, "dir", false, &j.dir, why, size)) < 0 ||
	    (r = json_field_bool(o, "wasRunning", true, &j.was_running, why, size)) < 0 ||
	    (r = json_field_bool(o, "resumed", true, &j.resumed, why, size)) < 0 ||
	    (r = json_field_int(o, "startMono", false, 0, INT64_MAX, &start_mono, why, size)) < 0 ||
	    (r = get_record(o, "old", &j.old, why, size)) < 0 ||
	    (r = get_record(o, "target", &j.target, why, size)) < 0)
		goto fail;
	j.start_mono = (uint64_t)start_mono;
	/* Written once preflight chose a mode: never "auto". */
	if (!mode_find(j.mode)) {
		r = json_refuse(why, size, "mode \"%s\" is not an upgrade mode", j.mode);
		goto fail;
	}
	/* The folder is removed when the upgrade settles: only one cprd made. */
	if (j.dir && j.dir[0] != '/') {
		r = json_refuse(why, size, "dir \"%s\" is not an absolute path", j.dir);
		goto fail;
	}
	*ret = j;
	return 0;
fail:
	upgrade_journal_done(&j);
	return r;
}

void upgrade_journal_done(struct upgrade_journal *j) {
	free(j->time);
	free(j->phase);
	free(j->mode);
	free(j->binary);
	free(j->from_binary);
	free(j->from_version);
	free(j->dir);
	json_object_put(j->old);
	json_object_put(j->target);
	*j = (struct upgrade_journal){0};
}
