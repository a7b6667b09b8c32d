/* qemu.json's QEMU record (see qemu-record.h): written from what cprd knows
 * of a QEMU it started, read back after a restart, when nothing else says
 * which process runs the guest. */
#include "qemu-record.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

#include "macro.h"

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
	json_object_object_add(o, "xIgnoreShared", json_object_new_boolean(r->x_ignore_shared));
	json_object_object_add(o, "auxRamShare", json_object_new_boolean(r->aux_ram_share));
	json_object_object_add(o, "hasModes", json_object_new_boolean(r->has_modes));
	return o;
}

static _printf_(3, 4) int refuse(char *why, size_t size, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, size, fmt, ap);
	va_end(ap);
	return -EBADMSG;
}

/* The field key of o as an integer in [min, max]; absent gives def (or, with
 * def < min, a refusal). */
static int get_int(struct json_object *o, const char *key, int64_t min, int64_t max, int64_t def,
		   int64_t *ret, char *why, size_t size) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !v) {
		if (def < min)
			return refuse(why, size, "no %s", key);
		*ret = def;
		return 0;
	}
	if (!json_object_is_type(v, json_type_int))
		return refuse(why, size, "%s is not a number", key);
	int64_t n = json_object_get_int64(v);
	if (n < min || n > max)
		return refuse(why, size, "%s %lld is out of range", key, (long long)n);
	*ret = n;
	return 0;
}

static int get_string(struct json_object *o, const char *key, bool required, char **ret, char *why,
		      size_t size) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !v) {
		*ret = NULL;
		return required ? refuse(why, size, "no %s", key) : 0;
	}
	if (!json_object_is_type(v, json_type_string))
		return refuse(why, size, "%s is not a string", key);
	*ret = strdup(json_object_get_string(v));
	return *ret ? 0 : -ENOMEM;
}

static int get_bool(struct json_object *o, const char *key, bool *ret, char *why, size_t size) {
	struct json_object *v;
	*ret = false;
	if (!json_object_object_get_ex(o, key, &v) || !v)
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return refuse(why, size, "%s is not true or false", key);
	*ret = json_object_get_boolean(v);
	return 0;
}

int qemu_record_from_json(struct json_object *o, struct qemu_record *ret, char *why, size_t size) {
	struct qemu_record r = {0};
	int64_t pid, starttime, dev, ino, sec, nsec;
	int e;

	if (!o || !json_object_is_type(o, json_type_object))
		return refuse(why, size, "not a JSON object");
	if ((e = get_int(o, "pid", 1, INT32_MAX, 0, &pid, why, size)) < 0 ||
	    (e = get_int(o, "starttime", 1, INT64_MAX, 0, &starttime, why, size)) < 0 ||
	    (e = get_int(o, "dev", 0, INT64_MAX, 0, &dev, why, size)) < 0 ||
	    (e = get_int(o, "ino", 0, INT64_MAX, 0, &ino, why, size)) < 0 ||
	    (e = get_int(o, "mtimeSec", 0, INT64_MAX, 0, &sec, why, size)) < 0 ||
	    (e = get_int(o, "mtimeNsec", 0, 999999999, 0, &nsec, why, size)) < 0 ||
	    (e = get_bool(o, "cprTransfer", &r.cpr_transfer, why, size)) < 0 ||
	    (e = get_bool(o, "xIgnoreShared", &r.x_ignore_shared, why, size)) < 0 ||
	    (e = get_bool(o, "auxRamShare", &r.aux_ram_share, why, size)) < 0 ||
	    (e = get_bool(o, "hasModes", &r.has_modes, why, size)) < 0)
		return e;
	if ((e = get_string(o, "binary", true, &r.binary, why, size)) < 0 ||
	    (e = get_string(o, "version", false, &r.version, why, size)) < 0 ||
	    (e = get_string(o, "qmpPath", false, &r.qmp_path, why, size)) < 0)
		goto fail;
	if (!r.binary[0] || r.binary[0] != '/') {
		e = refuse(why, size, "binary \"%s\" is not an absolute path", r.binary);
		goto fail;
	}
	/* cprd connects to it as root: only a socket path it could have made. */
	size_t sun_path_size = sizeof(((struct sockaddr_un *)0)->sun_path);
	if (r.qmp_path && (r.qmp_path[0] != '/' || strlen(r.qmp_path) >= sun_path_size)) {
		e = refuse(why, size, "qmpPath \"%s\" is not an absolute socket path", r.qmp_path);
		goto fail;
	}
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
