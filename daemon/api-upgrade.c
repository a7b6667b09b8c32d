/* io.cprd.Manager's Upgrade and UpgradeMany: parameters in, phases streamed
 * out to callers that set `more`, and the upgrade code's outcomes named as
 * Varlink errors. The upgrades themselves run in upgrade.c. */
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "api-internal.h"
#include "macro.h"
#include "manager.h"
#include "upgrade.h"
#include "varlink.h"
#include "vm.h"

static int parse_upgrade_request(struct vl_call *c, struct json_object *params,
				 struct upgrade_request *req) {
	int64_t t = UPGRADE_TIMEOUT_SEC_DEFAULT;
	*req = (struct upgrade_request){.mode = UPGRADE_MODE_AUTO};
	req->qemu = api_param_str(params, "qemu");
	const char *mode = api_param_str(params, "mode");
	if (mode && upgrade_mode_from_string(mode, &req->mode) < 0) {
		vl_call_error_invalid_parameter(c, "mode");
		return -EINVAL;
	}
	if (api_param_int(params, "timeoutSec", &t) && (t < 1 || t > UPGRADE_TIMEOUT_SEC_MAX)) {
		vl_call_error_invalid_parameter(c, "timeoutSec");
		return -EINVAL;
	}
	req->timeout_sec = (int)t;
	int64_t k = 0;
	if (api_param_int(params, "pauseSlots", &k) && (k < 1 || k > CPRD_PAUSE_SLOTS_MAX)) {
		vl_call_error_invalid_parameter(c, "pauseSlots");
		return -EINVAL;
	}
	req->pause_slots = (unsigned)k;
	req->dry_run = api_param_bool(params, "dryRun");
	return 0;
}

static const char *result_outcome(struct json_object *result) {
	return json_object_get_string(json_object_object_get(result, "outcome"));
}

static bool result_ok(struct json_object *result) {
	const char *o = result_outcome(result);
	return streq(o, "committed") || streq(o, "dry-run");
}

/* An UpgradeProgress: a phase of one VM's upgrade, or with result its end. */
static struct json_object *progress_new(const char *vm, const char *phase, const char *message,
					struct json_object *result) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "vm", json_object_new_string(vm));
	json_object_object_add(p, "phase", json_object_new_string(phase));
	json_object_object_add(p, "message", json_object_new_string(message));
	if (result)
		json_object_object_add(p, "result", json_object_get(result));
	return p;
}

/* Streams p to a caller that asked for `more` and is still there. */
static void progress_notify(struct vl_call *c, struct json_object *p) {
	if (vl_call_more(c) && vl_call_alive(c))
		vl_call_notify(c, p);
	else
		json_object_put(p);
}

static void on_progress(struct upgrade *u, const char *phase, const char *message,
			struct vl_call *c) {
	progress_notify(c, progress_new(upgrade_get_vm(u)->name, phase, message, NULL));
}

/* ---- Upgrade ------------------------------------------------------------- */

static void reply_refusal_or_failure(struct vl_call *c, struct upgrade *u,
				     struct json_object *result) {
	struct vm *vm = upgrade_get_vm(u);
	const char *outcome = result_outcome(result);
	const char *reason = json_object_get_string(json_object_object_get(result, "reason"));
	switch (upgrade_get_refusal(u)) {
	case UPGRADE_REFUSED_PROBE_FAILED:
		api_error_probe_failed(c, upgrade_get_binary(u), reason);
		return;
	case UPGRADE_REFUSED_BUSY:
		api_error_busy(c, vm->name,
			       vm->operation != VM_OP_NONE ? vm_operation_to_string(vm->operation)
							   : reason);
		return;
	case UPGRADE_REFUSED_BAD_STATE:
		api_error_bad_state(c, vm->name, vm_state_to_string(vm->state), reason);
		return;
	case UPGRADE_REFUSED_NOT_UPGRADABLE:
		api_error_not_upgradable(c, vm->name, reason);
		return;
	case UPGRADE_NOT_REFUSED:
		break;
	}
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "name", json_object_new_string(vm->name));
	json_object_object_add(p, "phase", json_object_get(json_object_object_get(result, "failedPhase")));
	json_object_object_add(p, "rolledBack", json_object_new_boolean(streq(outcome, "rolled-back")));
	json_object_object_add(p, "reason", json_object_new_string(reason ? reason : ""));
	json_object_object_add(p, "result", json_object_get(result));
	vl_call_error(c, API_ERROR("UpgradeFailed"), p);
}

static void one_progress(struct upgrade *u, const char *phase, const char *message, void *userdata) {
	on_progress(u, phase, message, userdata);
}

static void one_done(struct upgrade *u, struct json_object *result, void *userdata) {
	struct vl_call *c = userdata;
	if (vl_call_alive(c)) {
		if (result_ok(result))
			vl_call_reply(c, progress_new(upgrade_get_vm(u)->name, "done",
						      result_outcome(result), result));
		else
			reply_refusal_or_failure(c, u, result);
	}
	/* A caller that left does not stop the upgrade; the result is in the
	 * VM's history. */
	json_object_put(result);
	vl_call_unref(c);
}

int api_method_upgrade(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	struct upgrade_request req;
	if (!api_authorize(c, true))
		return 0;
	if (parse_upgrade_request(c, params, &req) < 0)
		return 0;
	struct vm *vm = api_lookup(m, c, params);
	if (!vm)
		return 0;
	vl_call_ref(c);
	int r = upgrade_start(m, vm, &req, one_progress, one_done, c);
	if (r < 0)
		vl_call_unref(c);
	return r;
}

/* ---- UpgradeMany --------------------------------------------------------- */

struct many {
	struct manager *m;
	struct vl_call *call;
	struct upgrade_request req;
	char *qemu;
	char **names;
	size_t n, next, running;
	int parallel;
	bool stop_on_failure, stopping;
	bool stepping; /* many_step is on the stack */
	int committed, rolled_back, skipped;
};

static void many_step(struct many *k);

static void many_progress(struct upgrade *u, const char *phase, const char *message,
			  void *userdata) {
	struct many *k = userdata;
	on_progress(u, phase, message, k->call);
}

static void many_result(struct many *k, const char *name, struct json_object *result) {
	progress_notify(k->call, progress_new(name, "done", result_outcome(result), result));
}

static void many_done(struct upgrade *u, struct json_object *result, void *userdata) {
	struct many *k = userdata;
	const char *o = result_outcome(result);
	if (result_ok(result))
		k->committed++;
	else if (streq(o, "refused"))
		k->skipped++;
	else
		k->rolled_back++;
	if (!result_ok(result) && k->stop_on_failure)
		k->stopping = true;
	many_result(k, upgrade_get_vm(u)->name, result);
	json_object_put(result);
	k->running--;
	many_step(k);
}

static void many_free(struct many *k) {
	for (size_t i = 0; i < k->n; i++)
		free(k->names[i]);
	free(k->names);
	free(k->qemu);
	vl_call_unref(k->call);
	free(k);
}

static void many_step(struct many *k) {
	/* An upgrade refused at once (a VM not running, busy) reports through
	 * many_done from inside upgrade_start below: the loop here carries
	 * on, and must be the only one to finish k. */
	if (k->stepping)
		return;
	k->stepping = true;
	while (!k->stopping && k->next < k->n && (int)k->running < k->parallel) {
		const char *name = k->names[k->next++];
		struct vm *vm = manager_find(k->m, name);
		if (!vm) {
			struct json_object *r = json_object_new_object();
			json_object_object_add(r, "vm", json_object_new_string(name));
			json_object_object_add(r, "outcome", json_object_new_string("refused"));
			json_object_object_add(r, "mode", json_object_new_string(upgrade_mode_to_string(k->req.mode)));
			json_object_object_add(r, "totalMs", json_object_new_double(0));
			json_object_object_add(r, "fromVersion", json_object_new_string(""));
			json_object_object_add(r, "toVersion", json_object_new_string(""));
			json_object_object_add(r, "reason", json_object_new_string("no such VM"));
			k->skipped++;
			many_result(k, name, r);
			json_object_put(r);
			continue;
		}
		k->running++;
		if (upgrade_start(k->m, vm, &k->req, many_progress, many_done, k) < 0) {
			k->running--;
			k->skipped++;
		}
	}
	k->stepping = false;
	if (k->running > 0)
		return;
	if (k->stopping)
		k->skipped += (int)(k->n - k->next);
	if (vl_call_alive(k->call)) {
		struct json_object *p = json_object_new_object();
		json_object_object_add(p, "committed", json_object_new_int(k->committed));
		json_object_object_add(p, "rolledBack", json_object_new_int(k->rolled_back));
		json_object_object_add(p, "skipped", json_object_new_int(k->skipped));
		vl_call_reply(k->call, p);
	}
	many_free(k);
}

static int many_start(struct manager *m, struct vl_call *call, struct json_object *names,
		      bool outdated, const struct upgrade_request *req, int parallel,
		      bool stop_on_failure) {
	struct many *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->m = m;
	k->call = vl_call_ref(call);
	k->req = *req;
	if (req->qemu) {
		k->qemu = strdup(req->qemu);
		k->req.qemu = k->qemu;
	}
	k->parallel = parallel;
	k->stop_on_failure = stop_on_failure;
	size_t cap = names ? json_object_array_length(names) : m->n_vms;
	k->names = calloc(cap ? cap : 1, sizeof(char *));
	if (!k->names) {
		many_free(k);
		return -ENOMEM;
	}
	if (names) {
		for (size_t i = 0; i < cap; i++)
			k->names[k->n++] = strdup(json_object_get_string(json_object_array_get_idx(names, i)));
	} else {
		for (size_t i = 0; i < m->n_vms; i++)
			if (m->vms[i]->qemu && vm_outdated(m->vms[i]))
				k->names[k->n++] = strdup(m->vms[i]->name);
	}
	many_step(k);
	return 0;
}

int api_method_upgrade_many(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	struct upgrade_request req;
	int64_t parallel = 1;
	if (!api_authorize(c, true))
		return 0;
	if (parse_upgrade_request(c, params, &req) < 0)
		return 0;
	if (api_param_int(params, "parallel", &parallel) &&
	    (parallel < 1 || parallel > UPGRADE_PARALLEL_MAX))
		return vl_call_error_invalid_parameter(c, "parallel");
	struct json_object *names = json_object_object_get(params, "names");
	bool outdated = api_param_bool(params, "outdated");
	if (!names && !outdated)
		return vl_call_error_invalid_parameter(c, "names");
	if (names)
		for (size_t i = 0; i < json_object_array_length(names); i++) {
			struct json_object *n = json_object_array_get_idx(names, i);
			if (!json_object_is_type(n, json_type_string) ||
			    strlen(json_object_get_string(n)) != (size_t)json_object_get_string_len(n))
				return vl_call_error_invalid_parameter(c, "names");
		}
	return many_start(m, c, names, outdated, &req, (int)parallel,
			  api_param_bool(params, "stopOnFailure"));
}
