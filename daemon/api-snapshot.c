/* io.cprd.Manager's SnapshotVM and RestoreVM: parameters in, phases and
 * fractions streamed to callers that set `more`, a caller that leaves
 * cancels a snapshot, and snapshot.c's outcomes named as Varlink errors. */
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "api-internal.h"
#include "idl.h"
#include "macro.h"
#include "manager.h"
#include "snapshot.h"
#include "spec.h"
#include "util.h"
#include "varlink.h"
#include "vm.h"

static struct json_object *progress_new(const char *vm, const char *phase, const char *message,
					double fraction, struct json_object *result) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "vm", json_object_new_string(vm));
	json_object_object_add(p, "phase", json_object_new_string(phase));
	json_object_object_add(p, "message", json_object_new_string(message));
	if (fraction >= 0)
		json_object_object_add(p, "fraction", json_new_fixed3(fraction));
	if (result)
		json_object_object_add(p, "result", json_object_get(result));
	return p;
}

static void on_progress(struct snapshot_op *s, const char *phase, const char *message,
			double fraction, void *userdata) {
	struct vl_call *c = userdata;
	if (vl_call_more(c) && vl_call_alive(c))
		vl_call_notify(c, progress_new(snapshot_op_vm(s), phase, message, fraction, NULL));
}

static void reply_error(struct vl_call *c, const char *name, const char *state, const char *file,
			enum snapshot_error e, const char *reason) {
	struct json_object *p = json_object_new_object();
	const char *error = API_ERROR("SnapshotFailed");
	switch (e) {
	case SNAPSHOT_NOT_SNAPSHOTTABLE:
		error = API_ERROR("NotSnapshottable");
		break;
	case SNAPSHOT_BAD_FILE:
		json_object_put(p);
		p = json_object_new_object();
		json_object_object_add(p, "file", json_object_new_string(file));
		json_object_object_add(p, "reason", json_object_new_string(reason));
		vl_call_error(c, API_ERROR("BadSnapshot"), p);
		return;
	case SNAPSHOT_BAD_STATE:
		json_object_object_add(p, "name", json_object_new_string(name));
		json_object_object_add(p, "state", json_object_new_string(state ? state : ""));
		json_object_object_add(p, "reason", json_object_new_string(reason));
		vl_call_error(c, API_ERROR("BadState"), p);
		return;
	case SNAPSHOT_BUSY:
		json_object_put(p);
		api_error_busy(c, name, reason);
		return;
	case SNAPSHOT_NO_SUCH_VM:
		json_object_put(p);
		api_error_no_such_vm(c, name);
		return;
	case SNAPSHOT_PROBE_FAILED:
		json_object_put(p);
		api_error_probe_failed(c, file, reason);
		return;
	case SNAPSHOT_OK:
	case SNAPSHOT_CANCELLED:
	case SNAPSHOT_FAILED:
		break;
	}
	json_object_object_add(p, "name", json_object_new_string(name));
	json_object_object_add(p, "reason", json_object_new_string(reason));
	vl_call_error(c, error, p);
}

static void on_done(struct snapshot_op *s, enum snapshot_error e, const char *reason,
		    struct json_object *result, void *userdata) {
	struct vl_call *c = userdata;
	vl_call_on_disconnect(c, NULL, NULL);
	if (vl_call_alive(c)) {
		if (e == SNAPSHOT_OK)
			vl_call_reply(c, progress_new(snapshot_op_vm(s), "done", "done", -1, result));
		else
			reply_error(c, snapshot_op_vm(s), NULL, snapshot_op_file(s), e, reason);
	}
	vl_call_unref(c);
}

static void on_disconnect(struct vl_call *c, void *userdata) {
	snapshot_caller_gone(userdata);
}

/* The operation started: the call stays open for its progress and its end,
 * and the operation learns when the caller goes away. */
static int hold_call(struct vl_call *c, struct snapshot_op *s) {
	vl_call_ref(c);
	vl_call_on_disconnect(c, on_disconnect, s);
	return 0;
}

static int parse_request(struct vl_call *c, struct json_object *params,
			 struct snapshot_request *req) {
	int64_t t = SNAPSHOT_TIMEOUT_SEC_DEFAULT;
	*req = (struct snapshot_request){0};
	req->file = api_param_str(params, "file");
	if (!req->file || req->file[0] != '/') {
		vl_call_error_invalid_parameter(c, "file");
		return -EINVAL;
	}
	req->qemu = api_param_str(params, "qemu");
	if (api_param_int(params, "timeoutSec", &t) && (t < 1 || t > CPRD_TIMEOUT_SEC_MAX)) {
		vl_call_error_invalid_parameter(c, "timeoutSec");
		return -EINVAL;
	}
	req->timeout_sec = (int)t;
	return 0;
}

static int method_snapshot_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	struct snapshot_request req;
	if (!api_authorize(c, true) || parse_request(c, params, &req) < 0)
		return 0;
	struct vm *vm = api_lookup(m, c, params);
	if (!vm)
		return 0;
	struct snapshot_refusal ref;
	struct snapshot_op *s = NULL;
	if (snapshot_start(m, vm, &req, on_progress, on_done, c, &ref, &s) < 0) {
		reply_error(c, vm->name, vm_state_name(vm), req.file, ref.error, ref.reason);
		return 0;
	}
	return hold_call(c, s);
}

static int method_restore_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	struct snapshot_request req;
	if (!api_authorize(c, true) || parse_request(c, params, &req) < 0)
		return 0;
	const char *name = api_param_str(params, "name");
	if (!spec_name_valid(name))
		return vl_call_error_invalid_parameter(c, "name");
	struct snapshot_refusal ref;
	struct snapshot_op *s = NULL;
	if (restore_start(m, name, &req, on_progress, on_done, c, &ref, &s) < 0) {
		struct vm *vm = manager_find(m, name);
		reply_error(c, name, vm ? vm_state_name(vm) : NULL, req.file, ref.error, ref.reason);
		return 0;
	}
	return hold_call(c, s);
}

const struct vl_param api_params_snapshot[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					     {"file", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					     {"timeoutSec", VL_INT, VL_NULLABLE},
					     {}};
const struct vl_param api_params_restore[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					    {"file", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					    {"qemu", VL_STRING, VL_NULLABLE | VL_NO_NUL},
					    {"timeoutSec", VL_INT, VL_NULLABLE},
					    {}};

int api_method_snapshot(struct vl_call *c, struct json_object *params, void *userdata) {
	return method_snapshot_vm(c, params, userdata);
}

int api_method_restore(struct vl_call *c, struct json_object *params, void *userdata) {
	return method_restore_vm(c, params, userdata);
}
