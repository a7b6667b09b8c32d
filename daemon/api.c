/* io.cprd.Manager: the method handlers. Each checks who calls (in one
 * place, api_authorize), then its parameters, then the VM's state, and only
 * then changes anything. */
#include "api.h"
#include "api-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "binary.h"
#include "idl.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "probe.h"
#include "qmp.h"
#include "spec.h"
#include "util.h"
#include "varlink.h"
#include "vm.h"

#define API_LOG_READ_MAX (1024 * 1024) /* bytes per ReadLog reply */

/* ---- named errors -------------------------------------------------------- */

static int error_kv(struct vl_call *c, const char *error, ...) {
	va_list ap;
	struct json_object *p = json_object_new_object();
	va_start(ap, error);
	for (const char *k; (k = va_arg(ap, const char *));) {
		const char *v = va_arg(ap, const char *);
		json_object_object_add(p, k, json_object_new_string(v ? v : ""));
	}
	va_end(ap);
	return vl_call_error(c, error, p);
}

int api_error_no_such_vm(struct vl_call *c, const char *name) {
	return error_kv(c, API_ERROR("NoSuchVM"), "name", name, NULL);
}

int api_error_bad_state(struct vl_call *c, const char *name, const char *state, const char *reason) {
	return error_kv(c, API_ERROR("BadState"), "name", name, "state", state, "reason", reason, NULL);
}

int api_error_busy(struct vl_call *c, const char *name, const char *operation) {
	return error_kv(c, API_ERROR("Busy"), "name", name, "operation", operation, NULL);
}

int api_error_invalid_spec(struct vl_call *c, const char *field, const char *reason) {
	return error_kv(c, API_ERROR("InvalidSpec"), "field", field, "reason", reason, NULL);
}

int api_error_probe_failed(struct vl_call *c, const char *binary, const char *reason) {
	return error_kv(c, API_ERROR("QEMUProbeFailed"), "binary", binary, "reason", reason, NULL);
}

int api_error_device_unavailable(struct vl_call *c, const char *device, const char *reason) {
	return error_kv(c, API_ERROR("DeviceUnavailable"), "device", device, "reason", reason, NULL);
}

int api_error_not_upgradable(struct vl_call *c, const char *name, const char *reason) {
	return error_kv(c, API_ERROR("NotUpgradable"), "name", name, "reason", reason, NULL);
}

int api_error_failed(struct vl_call *c, const char *fmt, ...) {
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return error_kv(c, API_ERROR("Failed"), "reason", buf, NULL);
}

/* No uid of --qemu-users is left for a VM (manager_vm_uid). */
static int api_error_uid_unavailable(struct manager *m, struct vl_call *c, int r) {
	if (r != -ENOSPC)
		return api_error_failed(c, "cannot give the VM a uid of its own: %s", strerror(-r));
	return api_error_failed(c,
				"every uid of --qemu-users %u-%u belongs to a VM already: delete a VM, "
				"or restart cprd with a wider range",
				(unsigned)m->qemu_users.first, (unsigned)m->qemu_users.last);
}

/* Replies {"vm": VM}. */
static int api_reply_vm(struct vl_call *c, struct vm *vm) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "vm", vm_to_json(vm));
	return vl_call_reply(c, p);
}

/* ---- who may do what ----------------------------------------------------- */

#define API_ALLOW_MAX 32
static uid_t allowed_uids[API_ALLOW_MAX];
static gid_t allowed_gids[API_ALLOW_MAX];
static size_t n_allowed_uids, n_allowed_gids;

int api_allow_uid(uid_t uid) {
	if (n_allowed_uids >= API_ALLOW_MAX)
		return -E2BIG;
	allowed_uids[n_allowed_uids++] = uid;
	return 0;
}

int api_allow_gid(gid_t gid) {
	if (n_allowed_gids >= API_ALLOW_MAX)
		return -E2BIG;
	allowed_gids[n_allowed_gids++] = gid;
	return 0;
}

/* Reading is for whoever can open the socket (root and the socket's
 * group); changing anything or naming a binary to run is for root and the
 * uids and groups cprd was told to allow (--allow-uid, --allow-group). The
 * answer comes from the kernel (SO_PEERCRED), never from the request. */
bool api_authorize(struct vl_call *c, bool writes) {
	const struct ucred *peer = vl_call_peer(c);
	if (!writes || peer->uid == 0)
		return true;
	for (size_t i = 0; i < n_allowed_uids; i++)
		if (allowed_uids[i] == peer->uid)
			return true;
	const gid_t *groups;
	size_t n_groups = vl_call_peer_groups(c, &groups);
	for (size_t i = 0; i < n_allowed_gids; i++) {
		if (allowed_gids[i] == peer->gid)
			return true;
		for (size_t k = 0; k < n_groups; k++)
			if (allowed_gids[i] == groups[k])
				return true;
	}
	log_warning("refused %s for uid %u pid %d: only root may change VMs", vl_call_method(c),
		    (unsigned)peer->uid, (int)peer->pid);
	vl_call_error(c, VL_ERROR_PERMISSION_DENIED, NULL);
	return false;
}

const char *api_param_str(struct json_object *params, const char *key) {
	struct json_object *v;
	if (!params || !json_object_object_get_ex(params, key, &v) || !v)
		return NULL;
	return json_object_get_string(v);
}

bool api_param_bool(struct json_object *params, const char *key) {
	struct json_object *v;
	if (!params || !json_object_object_get_ex(params, key, &v) || !v)
		return false;
	return json_object_get_boolean(v);
}

bool api_param_int(struct json_object *params, const char *key, int64_t *ret) {
	struct json_object *v;
	if (!params || !json_object_object_get_ex(params, key, &v) || !v)
		return false;
	*ret = json_object_get_int64(v);
	return true;
}

/* Finds the VM named by the "name" parameter or replies NoSuchVM. */
struct vm *api_lookup(struct manager *m, struct vl_call *c, struct json_object *params) {
	const char *name = api_param_str(params, "name"); /* no NUL: VL_NO_NUL */
	struct vm *vm = name ? manager_find(m, name) : NULL;
	if (!vm)
		api_error_no_such_vm(c, name ? name : "");
	return vm;
}

/* The opening of every method that changes one VM: who calls, which VM,
 * and that nothing else is under way on it. NULL when it replied already. */
static struct vm *lookup_for_change(struct manager *m, struct vl_call *c, struct json_object *params) {
	if (!api_authorize(c, true))
		return NULL;
	struct vm *vm = api_lookup(m, c, params);
	if (vm && vm->operation != VM_OP_NONE) {
		api_error_busy(c, vm->name, vm_operation_to_string(vm->operation));
		return NULL;
	}
	return vm;
}

/* ---- ReadLog calls that follow a console ---------------------------------- */

/* Few, and looked at only when a guest writes on its console. */
static struct follower {
	struct vm *vm;
	struct vl_call *call;
} *followers;
static size_t n_followers;

static int api_follow(struct vm *vm, struct vl_call *c) {
	struct follower *n = realloc(followers, (n_followers + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	followers = n;
	followers[n_followers++] = (struct follower){vm, vl_call_ref(c)};
	return 0;
}

/* Lets go of the followers whose caller left, and of all of gone's (a VM
 * being deleted; NULL for none). */
static void api_prune_followers(const struct vm *gone) {
	for (size_t i = 0; i < n_followers;) {
		if (followers[i].vm != gone && vl_call_alive(followers[i].call)) {
			i++;
			continue;
		}
		vl_call_unref(followers[i].call);
		followers[i] = followers[--n_followers];
	}
}

static void api_on_console(struct vm_host *h, struct vm *vm, const char *data, size_t len,
			   uint64_t offset) {
	struct json_object *p = NULL;
	api_prune_followers(NULL);
	for (size_t i = 0; i < n_followers; i++) {
		if (followers[i].vm != vm)
			continue;
		if (!p) {
			_cleanup_free_ char *text = utf8_sanitize(data, len);
			p = json_object_new_object();
			json_object_object_add(p, "data", json_object_new_string(text ? text : ""));
			json_object_object_add(p, "offset", json_object_new_int64((int64_t)offset));
		}
		/* One parameters object serves every reply: json-c counts references. */
		vl_call_notify(followers[i].call, json_object_get(p));
	}
	json_object_put(p);
}

/* ---- methods ------------------------------------------------------------- */

static int method_list_vms(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	bool outdated = api_param_bool(params, "outdated");
	struct json_object *list = json_object_new_array();
	for (size_t i = 0; i < m->n_vms; i++) {
		struct vm *vm = m->vms[i];
		if (outdated && !(vm->qemu && vm_outdated(vm)))
			continue;
		json_object_array_add(list, vm_to_json(vm));
	}
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "vms", list);
	return vl_call_reply(c, p);
}

static int method_get_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	struct vm *vm = api_lookup(userdata, c, params);
	return vm ? api_reply_vm(c, vm) : 0;
}

struct create {
	struct manager *m;
	struct vl_call *call;
	struct vm *vm;
};

static void create_abort(struct create *cr) {
	manager_remove(cr->m, cr->vm);
	rm_rf_flat(cr->vm->dir);
	vm_free(cr->vm);
	vl_call_unref(cr->call);
	free(cr);
}

static void create_on_probe(struct probe *p, int error, struct probe_result *result,
			    const char *reason, void *userdata) {
	struct create *cr = userdata;
	struct vm *vm = cr->vm;

	if (error < 0) {
		api_error_probe_failed(cr->call, vm->spec->qemu, reason ? reason : strerror(-error));
		return create_abort(cr);
	}
	/* Pin an alias such as pc to the versioned type it means for this QEMU,
	 * so every later QEMU builds the same virtual hardware. */
	const char *pinned = probe_result_resolve_machine(result, vm->spec->machine);
	if (!pinned) {
		char why[256];
		snprintf(why, sizeof(why), "QEMU %u.%u.%u has no machine type '%s' (see qemu -machine help)",
			 result->major, result->minor, result->micro, vm->spec->machine);
		probe_result_free(result);
		api_error_invalid_spec(cr->call, "machine", why);
		return create_abort(cr);
	}
	if (!streq(pinned, vm->spec->machine))
		log_vm(LOG_INFO, vm->name, "machine type %s pinned to %s", vm->spec->machine, pinned);
	char *copy = strdup(pinned);
	probe_result_free(result);
	if (!copy) {
		api_error_failed(cr->call, "out of memory");
		return create_abort(cr);
	}
	free(vm->spec->machine);
	vm->spec->machine = copy;

	int r = mkdir_p(vm->dir, 0700);
	if (r >= 0)
		r = vm_save(vm);
	if (r < 0) {
		api_error_failed(cr->call, "cannot store the VM in %s: %s", vm->dir, strerror(-r));
		return create_abort(cr);
	}
	vm->operation = VM_OP_NONE;
	log_vm(LOG_INFO, vm->name, "created (%llu MiB, %u CPUs, %s, %s)",
	       (unsigned long long)vm->spec->memory_mib, vm->spec->cpus, vm->spec->machine,
	       vm->spec->qemu);
	manager_emit(cr->m, vm, "created", "VM defined");
	api_reply_vm(cr->call, vm);
	vl_call_unref(cr->call);
	free(cr);
}

/* A device belongs to one VM of cprd, and the host must be able to give it
 * (vm_devices_check): else DeviceUnavailable, and nothing is made. */
static int create_refuse_devices(struct manager *m, struct vl_call *c, const struct vm_spec *spec) {
	char why[768];
	const char *device = NULL;
	for (size_t i = 0; i < spec->n_devices; i++) {
		const struct vm *owner = manager_device_owner(m, spec->devices[i].pci);
		if (owner) {
			snprintf(why, sizeof(why),
				 "it is assigned to VM %s already, and a device belongs to one VM of "
				 "cprd (delete %s first)",
				 owner->name, owner->name);
			api_error_device_unavailable(c, spec->devices[i].pci, why);
			return -EBUSY;
		}
	}
	int r = vm_devices_check(spec, &device, why, sizeof(why));
	if (r < 0)
		api_error_device_unavailable(c, device, why);
	return r;
}

static int method_create_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	struct json_object *o = json_object_object_get(params, "spec");
	struct spec_error err;
	memset(&err, 0, sizeof(err));
	struct vm_spec *spec = NULL;

	if (!api_authorize(c, true))
		return 0;
	if (spec_from_json(o, &spec, &err) < 0)
		return api_error_invalid_spec(c, err.field, err.reason);
	if (spec_check_bridges(spec, &err) < 0) {
		spec_free(spec);
		return api_error_invalid_spec(c, err.field, err.reason);
	}
	if (manager_find(m, spec->name)) {
		int r = error_kv(c, API_ERROR("VMExists"), "name", spec->name, NULL);
		spec_free(spec);
		return r;
	}
	if (m->n_vms >= MANAGER_VMS_MAX) {
		spec_free(spec);
		return api_error_failed(c, "cprd holds %d VMs already, its limit", MANAGER_VMS_MAX);
	}
	if (create_refuse_devices(m, c, spec) < 0) {
		spec_free(spec);
		return 0;
	}

	_cleanup_free_ char *dir = manager_vm_state_dir(m, spec->name);
	struct create *cr = calloc(1, sizeof(*cr));
	if (!dir || !cr) {
		free(cr);
		spec_free(spec);
		return -ENOMEM;
	}
	int r = vm_new(&m->host, spec, dir, &cr->vm);
	if (r < 0) {
		free(cr);
		spec_free(spec);
		return r;
	}
	/* Registered now, so a second CreateVM of the same name gets VMExists
	 * while the binary is probed. */
	cr->vm->operation = VM_OP_CREATE;
	manager_add(m, cr->vm);
	cr->m = m;
	cr->call = vl_call_ref(c);
	/* Its own user comes first: the probe runs as that user already. */
	if ((r = manager_vm_uid(m, cr->vm)) < 0) {
		api_error_uid_unavailable(m, c, r);
		create_abort(cr);
		return 0;
	}
	char why[512];
	_cleanup_close_ int bfd = binary_open(spec->qemu, why, sizeof(why));
	if (bfd < 0) {
		api_error_invalid_spec(c, "qemu", why);
		create_abort(cr);
		return 0;
	}
	const struct probe_options po = {.user = vm_qemu_user(cr->vm)};
	r = probe_run(m->base, spec->qemu, bfd, &po, create_on_probe, cr, NULL);
	if (r < 0) {
		api_error_probe_failed(c, spec->qemu, strerror(-r));
		create_abort(cr);
	}
	return 0;
}

/* A start or stop ended: the reply, or the named error for the failure. */
static void api_on_vm_done(struct vm *vm, const struct vm_outcome *o, void *userdata) {
	struct vl_call *c = userdata;
	switch (o->error) {
	case VM_OK:
		api_reply_vm(c, vm);
		break;
	case VM_ERROR_PROBE_FAILED:
		api_error_probe_failed(c, o->binary, o->reason);
		break;
	case VM_ERROR_BAD_STATE:
		api_error_bad_state(c, vm->name, vm_state_to_string(o->state), o->reason);
		break;
	case VM_ERROR_DEVICE_UNAVAILABLE:
		api_error_device_unavailable(c, o->device, o->reason);
		break;
	case VM_ERROR_FAILED:
		api_error_failed(c, "%s", o->reason);
		break;
	}
	vl_call_unref(c);
}

static int method_start_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	struct vm *vm = lookup_for_change(userdata, c, params);
	if (!vm)
		return 0;
	if (vm_is_active(vm))
		return api_error_bad_state(c, vm->name, vm_state_to_string(vm->state),
					   "the VM is already running");
	/* A bridge removed since the VM was created: before any tap is made. */
	struct spec_error err;
	memset(&err, 0, sizeof(err));
	if (spec_check_bridges(vm->spec, &err) < 0)
		return api_error_invalid_spec(c, err.field, err.reason);
	/* A VM created before cprd had --qemu-users gets its user now. */
	uid_t had = vm->uid;
	int r = manager_vm_uid(userdata, vm);
	if (r < 0)
		return api_error_uid_unavailable(userdata, c, r);
	if (vm->uid != had && (r = vm_save(vm)) < 0)
		return api_error_failed(c, "cannot store %s's uid in %s: %s", vm->name, vm->dir, strerror(-r));
	r = vm_start(vm, api_on_vm_done, vl_call_ref(c));
	if (r < 0) {
		vl_call_unref(c);
		return api_error_failed(c, "cannot start %s: %s", vm->name, strerror(-r));
	}
	return 0;
}

static int method_stop_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	int64_t timeout = VM_STOP_TIMEOUT_SEC;
	if (api_param_int(params, "timeoutSec", &timeout) && (timeout < 0 || timeout > CPRD_TIMEOUT_SEC_MAX))
		return vl_call_error_invalid_parameter(c, "timeoutSec");
	struct vm *vm = lookup_for_change(userdata, c, params);
	if (!vm)
		return 0;
	if (vm->state == VM_CRASHED) {
		/* Nothing runs; stopping on purpose lets go of the held RAM. */
		vm_release_custody(vm);
		vm_set_state(vm, VM_STOPPED, "stopped after a crash; guest RAM released");
		return api_reply_vm(c, vm);
	}
	if (vm->state != VM_RUNNING && vm->state != VM_PAUSED)
		return api_error_bad_state(c, vm->name, vm_state_to_string(vm->state),
					   "the VM is not running");
	return vm_stop(vm, api_param_bool(params, "force"), (int)timeout, api_on_vm_done, vl_call_ref(c));
}

struct pause_call {
	struct vl_call *call;
	struct vm *vm;
	bool pause;
};

static void on_pause_reply(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			   void *userdata) {
	struct pause_call *pc = userdata;
	struct vm *vm = pc->vm;
	vm->operation = VM_OP_NONE;
	if (err)
		api_error_failed(pc->call, "QEMU refused to %s the guest: %s", pc->pause ? "pause" : "resume",
				 err->desc);
	else {
		vm_set_state(vm, pc->pause ? VM_PAUSED : VM_RUNNING, pc->pause ? "guest paused" : "guest resumed");
		api_reply_vm(pc->call, vm);
	}
	vl_call_unref(pc->call);
	free(pc);
}

static int pause_or_resume(struct vl_call *c, struct json_object *params, struct manager *m, bool pause) {
	struct vm *vm = lookup_for_change(m, c, params);
	if (!vm)
		return 0;
	if (vm->state != (pause ? VM_RUNNING : VM_PAUSED))
		return api_error_bad_state(c, vm->name, vm_state_to_string(vm->state),
					   pause ? "only a running guest can be paused"
						 : "only a paused guest can be resumed");
	struct qmp *qmp = vm->qemu ? vm_qemu_qmp(vm->qemu) : NULL;
	if (!qmp)
		return api_error_failed(c, "cprd has no QMP channel to %s's QEMU", vm->name);
	struct pause_call *pc = calloc(1, sizeof(*pc));
	if (!pc)
		return -ENOMEM;
	pc->call = vl_call_ref(c);
	pc->vm = vm;
	pc->pause = pause;
	vm->operation = pause ? VM_OP_PAUSE : VM_OP_RESUME;
	int r = qmp_command(qmp, pause ? "stop" : "cont", NULL, QMP_COMMAND_TIMEOUT_MS, on_pause_reply, pc);
	if (r < 0) {
		vm->operation = VM_OP_NONE;
		vl_call_unref(pc->call);
		free(pc);
		return api_error_failed(c, "QMP channel to %s's QEMU failed: %s", vm->name, strerror(-r));
	}
	return 0;
}

static int method_pause_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	return pause_or_resume(c, params, userdata, true);
}

static int method_resume_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	return pause_or_resume(c, params, userdata, false);
}

static int method_delete_vm(struct vl_call *c, struct json_object *params, void *userdata) {
	struct vm *vm = lookup_for_change(userdata, c, params);
	if (!vm)
		return 0;
	if (vm_is_active(vm))
		return api_error_bad_state(c, vm->name, vm_state_to_string(vm->state),
					   "stop the VM first (cprctl stop)");
	struct manager *m = userdata;
	vm_release_custody(vm);
	char *rt = vm_runtime_file(vm, "qemu.json");
	if (rt)
		unlink(rt);
	free(rt);
	int r = rm_rf_flat(vm->dir);
	if (r < 0)
		return api_error_failed(c, "cannot remove %s: %s", vm->dir, strerror(-r));
	_cleanup_free_ char *rdir = vm_runtime_dir(vm);
	if (rdir)
		rm_rf_flat(rdir);
	log_vm(LOG_INFO, vm->name, "deleted");
	manager_emit(m, vm, "deleted", "VM deleted");
	manager_remove(m, vm);
	api_prune_followers(vm);
	vm_free(vm);
	return vl_call_reply(c, NULL);
}

static int method_read_log(struct vl_call *c, struct json_object *params, void *userdata) {
	struct manager *m = userdata;
	struct vm *vm = api_lookup(m, c, params);
	if (!vm)
		return 0;
	const char *which = api_param_str(params, "log");
	which = which ? which : "console";
	if (!streq(which, "console") && !streq(which, "qemu"))
		return vl_call_error_invalid_parameter(c, "log");
	int64_t offset = 0;
	api_param_int(params, "offset", &offset);

	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s.log", vm->dir, which);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st = {0};
	if (fd >= 0 && fstat(fd, &st) < 0)
		return api_error_failed(c, "cannot read %s: %m", path);
	int64_t size = fd >= 0 ? st.st_size : 0;
	if (offset < 0)
		offset = MAX(0, size + offset);
	if (offset > size)
		offset = size;
	size_t len = (size_t)MIN(size - offset, API_LOG_READ_MAX);
	/* Follow reads from the end of what was already sent. */
	if (vl_call_more(c) && size - offset > API_LOG_READ_MAX) {
		offset = size - API_LOG_READ_MAX;
		len = API_LOG_READ_MAX;
	}
	_cleanup_free_ char *buf = malloc(len + 1);
	if (!buf)
		return -ENOMEM;
	ssize_t n = len ? pread(fd, buf, len, offset) : 0;
	if (n < 0)
		return api_error_failed(c, "cannot read %s: %m", path);
	_cleanup_free_ char *text = utf8_sanitize(buf, (size_t)n);
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "data", json_object_new_string(text ? text : ""));
	json_object_object_add(p, "offset", json_object_new_int64(offset + n));
	if (vl_call_more(c) && streq(which, "console")) {
		vl_call_notify(c, p);
		return api_follow(vm, c);
	}
	return vl_call_reply(c, p);
}

static int method_watch_events(struct vl_call *c, struct json_object *params, void *userdata) {
	int r = manager_watch(userdata, c);
	if (r == -ENOSPC)
		return api_error_failed(c, "too many event subscribers (%d)", MANAGER_WATCHERS_MAX);
	return r;
}

/* ---- the interface ------------------------------------------------------- */

const struct vl_param api_params_list[] = {{"outdated", VL_BOOL, VL_NULLABLE}, {}};
const struct vl_param api_params_name[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL}, {}};
const struct vl_param api_params_create[] = {{"spec", VL_OBJECT, VL_MANDATORY}, {}};
const struct vl_param api_params_stop[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					 {"force", VL_BOOL, VL_NULLABLE},
					 {"timeoutSec", VL_INT, VL_NULLABLE},
					 {}};
const struct vl_param api_params_log[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					{"log", VL_STRING, VL_NULLABLE | VL_NO_NUL},
					{"offset", VL_INT, VL_NULLABLE},
					{}};
const struct vl_param api_params_upgrade[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL},
					    {"qemu", VL_STRING, VL_NULLABLE | VL_NO_NUL},
					    {"mode", VL_STRING, VL_NULLABLE | VL_NO_NUL},
					    {"timeoutSec", VL_INT, VL_NULLABLE},
					    {"dryRun", VL_BOOL, VL_NULLABLE},
					    {"pauseSlots", VL_INT, VL_NULLABLE},
					    {}};
const struct vl_param api_params_upgrade_many[] = {{"names", VL_ARRAY, VL_NULLABLE},
						 {"outdated", VL_BOOL, VL_NULLABLE},
						 {"qemu", VL_STRING, VL_NULLABLE | VL_NO_NUL},
						 {"mode", VL_STRING, VL_NULLABLE | VL_NO_NUL},
						 {"parallel", VL_INT, VL_NULLABLE},
						 {"stopOnFailure", VL_BOOL, VL_NULLABLE},
						 {"timeoutSec", VL_INT, VL_NULLABLE},
						 {"dryRun", VL_BOOL, VL_NULLABLE},
						 {"pauseSlots", VL_INT, VL_NULLABLE},
						 {}};

static const struct vl_method manager_methods[] = {
	{.name = "ListVMs", .fn = method_list_vms, .params = api_params_list},
	{.name = "GetVM", .fn = method_get_vm, .params = api_params_name},
	{.name = "CreateVM", .fn = method_create_vm, .params = api_params_create},
	{.name = "StartVM", .fn = method_start_vm, .params = api_params_name},
	{.name = "StopVM", .fn = method_stop_vm, .params = api_params_stop},
	{.name = "PauseVM", .fn = method_pause_vm, .params = api_params_name},
	{.name = "ResumeVM", .fn = method_resume_vm, .params = api_params_name},
	{.name = "DeleteVM", .fn = method_delete_vm, .params = api_params_name},
	{.name = "ReadLog", .fn = method_read_log, .params = api_params_log},
	{.name = "WatchEvents", .fn = method_watch_events, .flags = VL_METHOD_REQUIRES_MORE},
	{.name = "Upgrade", .fn = api_method_upgrade, .params = api_params_upgrade},
	{.name = "UpgradeMany", .fn = api_method_upgrade_many, .params = api_params_upgrade_many},
	{.name = "SnapshotVM", .fn = api_method_snapshot, .params = api_params_snapshot},
	{.name = "RestoreVM", .fn = api_method_restore, .params = api_params_restore},
	{},
};

static const struct vl_interface manager_interface = {
	.name = CPRD_MANAGER_INTERFACE,
	.description = cprd_manager_idl,
	.methods = manager_methods,
};

int api_register(struct manager *m) {
	m->host.console = api_on_console;
	return vl_server_add_interface(m->server, &manager_interface, m);
}
