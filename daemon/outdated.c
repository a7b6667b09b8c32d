/* A running guest's QEMU binary replaced on disk (see outdated.h): checked,
 * probed in the background, and told to WatchEvents subscribers and the
 * log, once for each new file. */
#include "outdated.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "binary.h"
#include "binwatch.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "probe.h"
#include "qemu.h"
#include "util.h"
#include "vm.h"

#define OUTDATED_TOLD_MAX 64 /* paths whose last news is remembered */

/* A probe of a changed binary under way. */
struct outdated_probe {
	struct outdated *o;
	struct outdated_probe *next;
	char *path;
	struct probe *probe;
	unsigned events;
	struct qemu_identity user; /* a VM's own (no groups), if has_user */
	bool has_user;
};

/* What was told last about a path, so that a change that tells nothing
 * new (chmod that keeps it good, a burst probed twice) stays quiet. */
struct outdated_told {
	struct outdated_told *next;
	char *path;
	bool refused;
	struct stat st; /* the file probed, when not refused */
	char *reason;   /* why refused, when refused */
};

struct outdated {
	struct manager *m;
	struct binwatch *watch;
	struct outdated_probe *probes;
	struct outdated_told *told;
};

static void told_free(struct outdated_told *t) {
	free(t->path);
	free(t->reason);
	free(t);
}

/* Whether this is news about path (and then remembers it): a refusal for
 * another reason, or a good file of another identity. */
static bool told_news(struct outdated *o, const char *path, bool refused, const struct stat *st,
		      const char *reason) {
	struct outdated_told *t, **pp;
	unsigned n = 0;
	for (pp = &o->told; (t = *pp); pp = &t->next)
		if (streq(t->path, path))
			break;
	if (t) {
		bool same = t->refused == refused &&
			    (refused ? streq_ptr(t->reason, reason)
				     : t->st.st_dev == st->st_dev && t->st.st_ino == st->st_ino &&
					       t->st.st_mtim.tv_sec == st->st_mtim.tv_sec &&
					       t->st.st_mtim.tv_nsec == st->st_mtim.tv_nsec &&
					       t->st.st_size == st->st_size);
		if (same)
			return false;
		*pp = t->next;
		told_free(t);
	}
	t = calloc(1, sizeof(*t));
	if (!t || !(t->path = strdup(path)) || (reason && !(t->reason = strdup(reason)))) {
		if (t)
			told_free(t);
		return true;
	}
	t->refused = refused;
	if (st)
		t->st = *st;
	t->next = o->told;
	o->told = t;
	/* Most recent first; forget the oldest. */
	for (pp = &o->told; (t = *pp); n++) {
		if (n >= OUTDATED_TOLD_MAX) {
			*pp = t->next;
			told_free(t);
			continue;
		}
		pp = &t->next;
	}
	return true;
}

static bool runs(const struct vm *vm, const char *path) {
	return vm->qemu && streq(vm_qemu_binary(vm->qemu), path);
}

/* Tells each VM that runs path that its binary is refused (and why). */
static void tell_refused(struct outdated *o, const char *path, const char *reason) {
	struct manager *m = o->m;
	for (size_t i = 0; i < m->n_vms; i++) {
		struct vm *vm = m->vms[i];
		if (!runs(vm, path))
			continue;
		struct json_object *more = json_object_new_object();
		json_object_object_add(more, "binary", json_object_new_string(path));
		json_object_object_add(more, "reason", json_object_new_string(reason));
		_cleanup_free_ char *msg = NULL;
		if (asprintf(&msg, "its QEMU binary %s changed, and cprd will not run the new file: %s",
			     path, reason) < 0)
			msg = NULL;
		manager_emit_more(m, vm, "binary-refused", msg, more);
	}
}

static void outdated_probe_free(struct outdated_probe *op) {
	struct outdated_probe **pp;
	for (pp = &op->o->probes; *pp; pp = &(*pp)->next)
		if (*pp == op) {
			*pp = op->next;
			break;
		}
	free(op->path);
	free(op);
}

static void on_probe(struct probe *p, int error, struct probe_result *result, const char *reason,
		     void *userdata) {
	struct outdated_probe *op = userdata;
	struct outdated *o = op->o;
	_cleanup_free_ char *path = TAKE_PTR(op->path);
	outdated_probe_free(op);

	if (error < 0) {
		char why[600];
		snprintf(why, sizeof(why), "QEMU's probe failed: %s", reason ? reason : strerror(-error));
		if (!told_news(o, path, true, NULL, why))
			return;
		log_warning("QEMU binary %s changed, and the new file cannot be used: %s", path, why);
		return tell_refused(o, path, why);
	}
	struct probe_result *r = result;
	struct stat st = {.st_dev = r->dev, .st_ino = r->ino, .st_mtim = r->mtime, .st_size = r->size};
	char version[48];
	snprintf(version, sizeof(version), "%u.%u.%u", r->major, r->minor, r->micro);
	if (!told_news(o, path, false, &st, NULL)) {
		log_debug("QEMU binary %s: QEMU %s, told already", path, version);
		probe_result_free(r);
		return;
	}
	unsigned n = 0;
	struct manager *m = o->m;
	for (size_t i = 0; i < m->n_vms; i++) {
		struct vm *vm = m->vms[i];
		if (!runs(vm, path) || !vm_outdated(vm))
			continue;
		n++;
		struct json_object *more = json_object_new_object();
		json_object_object_add(more, "binary", json_object_new_string(path));
		json_object_object_add(more, "fromVersion",
				       json_object_new_string(vm_qemu_version(vm->qemu)));
		json_object_object_add(more, "toVersion", json_object_new_string(version));
		_cleanup_free_ char *msg = NULL;
		if (asprintf(&msg, "%s is now QEMU %s; the guest runs QEMU %s from the file it replaced "
			     "(cprctl upgrade %s)",
			     path, version, vm_qemu_version(vm->qemu), vm->name) < 0)
			msg = NULL;
		manager_emit_more(m, vm, "outdated", msg, more);
	}
	log_info("QEMU binary %s is now QEMU %s (probed in %" PRIu64 " ms%s); %u guests run an "
		 "older file",
		 path, version, r->duration_usec / 1000, r->cached ? ", from the cache" : "", n);
	probe_result_free(r);
}

/* path changed: check it, then probe it (or tell why not). */
static void on_changed(const char *path, unsigned events, void *userdata) {
	struct outdated *o = userdata;
	struct manager *m = o->m;
	struct vm *first = NULL;
	for (size_t i = 0; i < m->n_vms && !first; i++)
		if (runs(m->vms[i], path))
			first = m->vms[i];
	if (!first)
		return; /* no guest runs it any more */

	/* A probe of an earlier version of the file is of no use now. */
	for (struct outdated_probe *op = o->probes; op; op = op->next)
		if (streq(op->path, path)) {
			probe_cancel(op->probe);
			outdated_probe_free(op);
			break;
		}

	char why[512];
	_cleanup_close_ int fd = binary_open(path, why, sizeof(why));
	if (fd < 0) {
		if (!told_news(o, path, true, NULL, why))
			return;
		log_warning("QEMU binary %s changed (%u events), and cprd will not run the new file: %s; "
			    "it is not probed",
			    path, events, why);
		return tell_refused(o, path, why);
	}

	struct outdated_probe *op = calloc(1, sizeof(*op));
	if (!op || !(op->path = strdup(path))) {
		free(op);
		return;
	}
	op->o = o;
	op->events = events;
	/* As the guest's own QEMU would run it; the cache is for every VM. */
	const struct qemu_identity *user = vm_qemu_user(first);
	if (user) {
		op->user = (struct qemu_identity){.uid = user->uid, .gid = user->gid};
		op->has_user = true;
	}
	const struct probe_options po = {.user = op->has_user ? &op->user : NULL};
	op->next = o->probes;
	o->probes = op;
	log_info("QEMU binary %s changed (%u events): probing the new file", path, events);
	int r = probe_run(m->base, path, fd, &po, on_probe, op, &op->probe);
	if (r < 0) {
		log_warning_errno(r, "cannot probe %s: %m", path);
		outdated_probe_free(op);
	}
}

int outdated_new(struct manager *m, struct outdated **ret) {
	struct outdated *o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->m = m;
	int r = binwatch_new(m->base, on_changed, o, &o->watch);
	if (r < 0) {
		free(o);
		return r;
	}
	m->binwatch = o->watch;
	manager_watch_binaries(m);
	/* Replaced while cprd was not running (or before a reload). */
	for (size_t i = 0; i < m->n_vms; i++)
		if (m->vms[i]->qemu && vm_outdated(m->vms[i]))
			binwatch_poke(o->watch, vm_qemu_binary(m->vms[i]->qemu));
	*ret = o;
	return 0;
}

void outdated_free(struct outdated *o) {
	if (!o)
		return;
	while (o->probes) {
		probe_cancel(o->probes->probe);
		outdated_probe_free(o->probes);
	}
	while (o->told) {
		struct outdated_told *t = o->told;
		o->told = t->next;
		told_free(t);
	}
	if (o->m->binwatch == o->watch)
		o->m->binwatch = NULL;
	binwatch_free(o->watch);
	free(o);
}
