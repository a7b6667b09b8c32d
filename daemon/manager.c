/* The manager: the VM registry, its folders, the event stream, and the
 * Varlink server (see manager.h). */
#include "manager.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "binwatch.h"
#include "idl.h"
#include "spec.h"
#include "log.h"
#include "macro.h"
#include "metrics.h"
#include "qemu.h"
#include "util.h"
#include "varlink.h"
#include "vm.h"

#ifndef CPRD_VERSION
#define CPRD_VERSION "0"
#endif

char *manager_vm_state_dir(struct manager *m, const char *name) {
	char *p = NULL;
	if (asprintf(&p, "%s/vms/%s", m->state_dir, name) < 0)
		return NULL;
	return p;
}

static void manager_host_emit(struct vm_host *h, struct vm *vm, const char *type,
			      const char *message) {
	manager_emit(container_of(h, struct manager, host), vm, type, message);
}

static void manager_metrics_timer(evutil_socket_t fd, short what, void *userdata) {
	manager_metrics_write(userdata);
}

/* Counters start at 0 for every mode and outcome, so that a rate over
 * them has a start before the first upgrade. */
static void manager_metrics_init(struct manager *m) {
	static const char *const outcomes[] = {"committed", "rolled-back", "failed"};
	metrics_init(&m->metrics, (double)now_usec(CLOCK_REALTIME) / 1e6);
	/* cprd_upgrade_modes[0] is "auto", a choice and not a mode. */
	for (size_t i = 1; i < ELEMENTSOF(cprd_upgrade_modes); i++)
		for (size_t k = 0; k < ELEMENTSOF(outcomes); k++)
			(void)metrics_upgrade_kind(&m->metrics, cprd_upgrade_modes[i], outcomes[k]);
}

int manager_new(struct event_base *base, const struct manager_config *cfg, struct manager **ret) {
	struct manager *m = calloc(1, sizeof(*m));
	int r;
	if (!m)
		return -ENOMEM;
	m->base = base;
	m->host.base = base;
	m->host.emit = manager_host_emit;
	m->socket_path = strdup(cfg->socket_path);
	m->state_dir = strdup(cfg->state_dir);
	m->runtime_dir = strdup(cfg->runtime_dir);
	m->host.runtime_dir = m->runtime_dir;
	m->qemu_users = cfg->qemu_users;
	m->host.qemu_users = m->qemu_users.set ? &m->qemu_users : NULL;
	pause_slots_init(&m->pause_slots);
	manager_metrics_init(m);
	m->metrics_timer = evtimer_new(base, manager_metrics_timer, m);
	if (asprintf(&m->metrics_path, "%s/metrics.prom", cfg->runtime_dir) < 0)
		m->metrics_path = NULL;
	m->pause_slots_default = cfg->pause_slots ? cfg->pause_slots
						  : pause_slots_default(cpus_usable());
	if (!m->socket_path || !m->state_dir || !m->runtime_dir || !m->metrics_timer ||
	    !m->metrics_path) {
		manager_free(m);
		return -ENOMEM;
	}

	/* Private folders: nobody but root looks into a VM's state or its
	 * upgrade sockets. */
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/vms", m->state_dir);
	if ((r = mkdir_p(path, 0700)) < 0 || chmod(m->state_dir, 0700) < 0) {
		r = r < 0 ? r : -errno;
		log_error_errno(r, "cannot create state directory %s: %m", m->state_dir);
		manager_free(m);
		return r;
	}
	snprintf(path, sizeof(path), "%s/vms", m->runtime_dir);
	/* The runtime folder holds the socket, so the socket's group must be
	 * able to pass through it; what is below it stays private (with
	 * --qemu-user or --qemu-users, vms/ lets QEMU's users pass to their
	 * own folders, each 0700). */
	bool users = qemu_get_user(NULL, NULL) || m->qemu_users.set;
	if ((r = mkdir_p(path, 0700)) < 0 || chmod(m->runtime_dir, 0755) < 0 ||
	    chmod(path, users ? 0711 : 0700) < 0) {
		r = r < 0 ? r : -errno;
		log_error_errno(r, "cannot create runtime directory %s: %m", m->runtime_dir);
		manager_free(m);
		return r;
	}

	struct vl_server_info info = {
		.vendor = "cprd",
		.product = "cprd",
		.version = CPRD_VERSION,
		.url = "https://github.com/cprd/cprd",
		.internal_error = "io.cprd.Manager.Failed",
	};
	r = vl_server_new(base, &info, &m->server);
	if (r < 0) {
		manager_free(m);
		return r;
	}
	/* A hidden knob for tests/hostile: a shorter deadline for a started
	 * message and for queued replies than VL_MESSAGE_TIMEOUT_MS. */
	const char *timeout = getenv("CPRD_TEST_MESSAGE_TIMEOUT_MS");
	if (timeout && atoi(timeout) > 0)
		vl_server_set_limits(m->server,
				     &(struct vl_server_limits){.message_timeout_ms = atoi(timeout)});
	/* The first metrics.prom once the loop runs, VMs loaded or none. */
	manager_metrics_changed(m);
	*ret = m;
	return 0;
}

int manager_listen(struct manager *m, int listen_fd) {
	int r = listen_fd >= 0 ? vl_server_listen_fd(m->server, listen_fd)
			       : vl_server_listen_path(m->server, m->socket_path, 0660);
	if (r < 0)
		return log_error_errno(r, "cannot listen on %s: %m", m->socket_path);
	return 0;
}

void manager_free(struct manager *m) {
	if (!m)
		return;
	vl_subscribers_clear(&m->watchers);
	vl_server_free(m->server);
	for (size_t i = 0; i < m->n_vms; i++)
		vm_free(m->vms[i]);
	/* After the VMs: nothing may arm it any more. */
	if (m->metrics_timer)
		event_free(m->metrics_timer);
	free(m->metrics_path);
	free(m->vms);
	free(m->socket_path);
	free(m->state_dir);
	free(m->runtime_dir);
	free(m);
}

int manager_load(struct manager *m) {
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/vms", m->state_dir);
	DIR *d = opendir(path);
	if (!d)
		return log_error_errno(errno, "cannot read %s: %m", path);
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!spec_name_valid(de->d_name))
			continue;
		_cleanup_free_ char *dir = manager_vm_state_dir(m, de->d_name);
		struct vm *vm;
		if (!dir || vm_load(&m->host, dir, &vm) < 0) {
			log_warning("skipping %s/%s: not a readable VM", path, de->d_name);
			continue;
		}
		if (!streq(vm->name, de->d_name) || manager_add(m, vm) < 0) {
			log_warning("skipping %s/%s: its spec names another VM", path, de->d_name);
			vm_free(vm);
			continue;
		}
	}
	closedir(d);
	log_info("loaded %zu VMs from %s", m->n_vms, m->state_dir);
	return 0;
}

struct vm *manager_find(struct manager *m, const char *name) {
	for (size_t i = 0; i < m->n_vms; i++)
		if (streq(m->vms[i]->name, name))
			return m->vms[i];
	return NULL;
}

int manager_vm_uid(struct manager *m, struct vm *vm) {
	if (!m->qemu_users.set) {
		if (vm->uid)
			log_vm(LOG_INFO, vm->name, "no longer has a user of its own (cprd has no --qemu-users)");
		vm_set_uid(vm, 0);
		return 0;
	}
	_cleanup_free_ uid_t *used = calloc(m->n_vms ? m->n_vms : 1, sizeof(*used));
	if (!used)
		return -ENOMEM;
	size_t n = 0;
	bool taken = false;
	for (size_t i = 0; i < m->n_vms; i++)
		if (m->vms[i] != vm && m->vms[i]->uid) {
			used[n++] = m->vms[i]->uid;
			taken = taken || m->vms[i]->uid == vm->uid;
		}
	if (vm->uid && users_in_range(&m->qemu_users, vm->uid) && !taken)
		return 0;
	uid_t uid;
	int r = users_pick(&m->qemu_users, used, n, &uid);
	if (r < 0)
		return r;
	log_vm(LOG_INFO, vm->name, "its QEMUs run as uid %u gid %u%s", (unsigned)uid, (unsigned)uid,
	       vm->uid ? " (its earlier uid is not in --qemu-users or is another VM's)" : "");
	vm_set_uid(vm, uid);
	return 0;
}

struct vm *manager_device_owner(struct manager *m, const char *pci) {
	for (size_t i = 0; i < m->n_vms; i++)
		for (size_t k = 0; k < m->vms[i]->spec->n_devices; k++)
			if (streq(m->vms[i]->spec->devices[k].pci, pci))
				return m->vms[i];
	return NULL;
}

int manager_add(struct manager *m, struct vm *vm) {
	if (manager_find(m, vm->name))
		return -EEXIST;
	if (m->n_vms >= MANAGER_VMS_MAX)
		return -ENOSPC;
	struct vm **n = realloc(m->vms, (m->n_vms + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	m->vms = n;
	m->vms[m->n_vms++] = vm;
	manager_metrics_changed(m);
	return 0;
}

void manager_remove(struct manager *m, struct vm *vm) {
	for (size_t i = 0; i < m->n_vms; i++)
		if (m->vms[i] == vm) {
			memmove(&m->vms[i], &m->vms[i + 1], (m->n_vms - i - 1) * sizeof(*m->vms));
			m->n_vms--;
			manager_metrics_changed(m);
			return;
		}
}

void manager_watch_binaries(struct manager *m) {
	const char *paths[MANAGER_VMS_MAX];
	size_t n = 0;
	if (!m->binwatch)
		return;
	for (size_t i = 0; i < m->n_vms; i++)
		if (m->vms[i]->qemu)
			paths[n++] = vm_qemu_binary(m->vms[i]->qemu);
	int r = binwatch_set(m->binwatch, paths, n);
	if (r < 0)
		log_warning_errno(r, "cannot watch every QEMU binary: %m");
}

void manager_emit(struct manager *m, struct vm *vm, const char *type, const char *message) {
	manager_emit_more(m, vm, type, message, NULL);
}

void manager_emit_more(struct manager *m, struct vm *vm, const char *type, const char *message,
		       struct json_object *more) {
	_cleanup_json_ struct json_object *extra = more;
	manager_watch_binaries(m);
	manager_metrics_changed(m);
	if (vl_subscribers_prune(&m->watchers) == 0)
		return;
	char ts[32];
	format_rfc3339(now_usec(CLOCK_REALTIME), ts);
	struct json_object *e = json_object_new_object();
	json_object_object_add(e, "time", json_object_new_string(ts));
	json_object_object_add(e, "vm", json_object_new_string(vm->name));
	json_object_object_add(e, "type", json_object_new_string(type));
	json_object_object_add(e, "state", json_object_new_string(vm_state_name(vm)));
	json_object_object_add(e, "message", json_object_new_string(message ? message : ""));
	if (extra) {
		json_object_object_foreach(extra, k, v)
			json_object_object_add(e, k, json_object_get(v));
	}

	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "event", e);
	vl_subscribers_notify(&m->watchers, p);
}

int manager_watch(struct manager *m, struct vl_call *call) {
	/* Subscribers that left do not count against the limit. */
	if (vl_subscribers_prune(&m->watchers) >= MANAGER_WATCHERS_MAX)
		return -ENOSPC;
	return vl_subscribers_add(&m->watchers, call);
}

/* ---- metrics.prom ---------------------------------------------------------- */

void manager_metrics_changed(struct manager *m) {
	m->metrics_changes++;
	if (evtimer_pending(m->metrics_timer, NULL))
		return;
	struct timeval tv = {0, MANAGER_METRICS_DELAY_MS * 1000};
	evtimer_add(m->metrics_timer, &tv);
}

/* When vm's last committed upgrade ended (unix seconds), from its history;
 * -1 when it has none. */
static double vm_last_upgrade(struct vm *vm) {
	for (size_t i = json_object_array_length(vm->history); i-- > 0;) {
		struct json_object *h = json_object_array_get_idx(vm->history, i);
		uint64_t start;
		if (!streq_ptr(json_object_get_string(json_object_object_get(h, "outcome")), "committed"))
			continue;
		if (parse_rfc3339(json_object_get_string(json_object_object_get(h, "time")), &start) < 0)
			return -1;
		return (double)start / 1e6 + json_object_get_double(json_object_object_get(h, "totalMs")) / 1e3;
	}
	return -1;
}

int manager_metrics_write(struct manager *m) {
	/* Every state a VM can be in, and "upgrading" (vm_state_name). */
	const char *states[_VM_STATE_MAX + 1];
	unsigned in_state[_VM_STATE_MAX + 1] = {0};
	for (size_t i = 0; i < _VM_STATE_MAX; i++)
		states[i] = vm_state_to_string((enum vm_state)i);
	states[_VM_STATE_MAX] = "upgrading";
	_cleanup_free_ struct metrics_vm *vms = calloc(m->n_vms ? m->n_vms : 1, sizeof(*vms));
	if (!vms)
		return -ENOMEM;
	for (size_t i = 0; i < m->n_vms; i++) {
		const char *state = vm_state_name(m->vms[i]);
		for (size_t k = 0; k < ELEMENTSOF(states); k++)
			if (streq(states[k], state))
				in_state[k]++;
		vms[i] = (struct metrics_vm){.name = m->vms[i]->name, .last_upgrade = vm_last_upgrade(m->vms[i])};
	}
	const struct metrics_snapshot snap = {
		.totals = &m->metrics,
		.states = states,
		.vms_in_state = in_state,
		.n_states = ELEMENTSOF(states),
		.upgrades_running = m->upgrades_running,
		.vms = vms,
		.n_vms = m->n_vms,
	};
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = metrics_render(&snap, &text, &len);
	/* Readable by all: node_exporter runs as a user of its own. */
	if (r >= 0)
		r = write_file_runtime(m->metrics_path, text, len, 0644);
	if (r >= 0)
		log_debug("%s written for %u changes", m->metrics_path, m->metrics_changes);
	m->metrics_changes = 0;
	if (r < 0 && !m->metrics_failing)
		log_warning_errno(r, "cannot write %s: %m; the metrics are stale until a write works",
				  m->metrics_path);
	else if (r >= 0 && m->metrics_failing)
		log_info("%s is written again", m->metrics_path);
	m->metrics_failing = r < 0;
	return r;
}
