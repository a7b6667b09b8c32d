/* qemu.json's QEMU record (see qemu-record.h): written from what cprd knows
 * of a QEMU it started, read back after a restart, when nothing else says
 * which process runs the guest. */
#include "qemu-record.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "macro.h"
#include "util.h"

struct json_object *qemu_record_to_json(const struct qemu_record *r) {
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "pid", json_object_new_int(r->pid));
	json_object_object_add(o, "starttime", json_object_new_int64((int64_t)r->starttime));
	json_object_object_add(o, "binary", json_object_new_string(r->binary ? r->binary : ""));
	json_object_object_add(o, "dev", json_object_new_int64((int64_t)r->dev));
	json_object_object_add(o, "ino", json_object_new_int64((int64_t)r->ino));
	json_object_object_add(o, "mtimeSec", json_object_new_int64((int64_t)r->mtime.tv_sec));
	json_object_object_add(o, "mtimeNsec", json_object_new_int64((int64_t)r->mtime.tv_nsec));
	json_object_object_add(o, "version", json_object_new_string(r->version ? r->version : "unknown"));
	if (r->qmp_path)
		json_object_object_add(o, "qmpPath", json_object_new_string(r->qmp_path));
	json_object_object_add(o, "cprTransfer", json_object_new_boolean(r->cpr_transfer));
	json_object_object_add(o, "cprExec", json_object_new_boolean(r->cpr_exec));
	json_object_object_add(o, "xIgnoreShared", json_object_new_boolean(r->x_ignore_shared));
	json_object_object_add(o, "auxRamShare", json_object_new_boolean(r->aux_ram_share));
	json_object_object_add(o, "hasModes", json_object_new_boolean(r->has_modes));
	json_object_object_add(o, "fds", custody_qemu_fds_to_json(&r->fds));
	return o;
}

int qemu_record_from_json(struct json_object *o, struct qemu_record *ret, char *why, size_t size) {
	struct qemu_record r = {0};
	int64_t pid = 0, starttime = 0, dev = 0, ino = 0, sec = 0, nsec = 0;
	int e;

	if (!o || !json_object_is_type(o, json_type_object))
		return json_refuse(why, size, "not a JSON object");
	if ((e = json_field_int(o, "pid", true, 1, INT32_MAX, &pid, why, size)) < 0 ||
	    (e = json_field_int(o, "starttime", true, 1, INT64_MAX, &starttime, why, size)) < 0 ||
	    (e = json_field_int(o, "dev", false, 0, INT64_MAX, &dev, why, size)) < 0 ||
	    (e = json_field_int(o, "ino", false, 0, INT64_MAX, &ino, why, size)) < 0 ||
	    (e = json_field_int(o, "mtimeSec", false, 0, INT64_MAX, &sec, why, size)) < 0 ||
	    (e = json_field_int(o, "mtimeNsec", false, 0, 999999999, &nsec, why, size)) < 0 ||
	    (e = json_field_bool(o, "cprTransfer", false, &r.cpr_transfer, why, size)) < 0 ||
	    (e = json_field_bool(o, "cprExec", false, &r.cpr_exec, why, size)) < 0 ||
	    (e = json_field_bool(o, "xIgnoreShared", false, &r.x_ignore_shared, why, size)) < 0 ||
	    (e = json_field_bool(o, "auxRamShare", false, &r.aux_ram_share, why, size)) < 0 ||
	    (e = json_field_bool(o, "hasModes", false, &r.has_modes, why, size)) < 0)
		return e;
	if ((e = json_field_string(o, "binary", true, &r.binary, why, size)) < 0 ||
	    (e = json_field_string(o, "version", false, &r.version, why, size)) < 0 ||
	    (e = json_field_string(o, "qmpPath", false, &r.qmp_path, why, size)) < 0)
		goto fail;
	if (!r.binary[0] || r.binary[0] != '/') {
		e = json_refuse(why, size, "binary \"%s\" is not an absolute path", r.binary);
		goto fail;
	}
	/* cprd connects to it as root: only a socket path it could have made. */
	size_t sun_path_size = sizeof(((struct sockaddr_un *)0)->sun_path);
	if (r.qmp_path && (r.qmp_path[0] != '/' || strlen(r.qmp_path) >= sun_path_size)) {
		e = json_refuse(why, size, "qmpPath \"%s\" is not an absolute socket path", r.qmp_path);
		goto fail;
	}
	struct json_object *fds = json_object_object_get(o, "fds");
	r.fds = custody_qemu_fds_legacy;
	if (fds && (e = custody_qemu_fds_from_json(fds, &r.fds, why, size)) < 0)
		goto fail;
	if (!r.version && !(r.version = strdup("unknown"))) {
		e = -ENOMEM;
		goto fail;
	}
	r.pid = (pid_t)pid;
	r.starttime = (uint64_t)starttime;
	r.dev = (uint64_t)dev;
	r.ino = (uint64_t)ino;
	r.mtime = (struct timespec){.tv_sec = (time_t)sec, .tv_nsec = (long)nsec};
	*ret = r;
	return 0;
fail:
	qemu_record_done(&r);
	return e;
}

void qemu_record_done(struct qemu_record *r) {
	free(r->binary);
	free(r->version);
	free(r->qmp_path);
	*r = (struct qemu_record){0};
}
