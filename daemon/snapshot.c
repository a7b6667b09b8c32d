/* snapshot: live snapshots and their restore.
 *
 * A snapshot runs QEMU's background-snapshot migration into a file that
 * cprd opened (unnamed until it is complete), polls its progress, checksums
 * the result, names it and writes its record. A restore checks the record,
 * the file and the binary, creates the VM if there is none, and starts it
 * with -incoming defer: the new QEMU reads the file cprd hands it and the
 * guest goes on from the moment of the snapshot. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "binary.h"
#include "disk-overlay.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "migration.h"
#include "probe.h"
#include "qmp.h"
#include "snapshot-file.h"
#include "snapshot.h"
#include "spec.h"
#include "util.h"
#include "vm.h"

enum snapshot_kind { KIND_SNAPSHOT, KIND_RESTORE };

struct snapshot_op {
	enum snapshot_kind kind;
	struct manager *m;
	struct vm *vm;
	char *name, *file;
	snapshot_progress_fn progress;
	snapshot_done_fn done;
	void *userdata;
	uint64_t t0;            /* CLOCK_MONOTONIC usec */
	int timeout_sec;
	struct event *poll_timer, *deadline;
	struct snapshot_hasher *hasher;
	int fd;      /* the state file: write-only (snapshot) or read-only (restore) */
	int read_fd; /* snapshot: the same file to read back for the checksum */
	uint64_t size;
	bool fdset;  /* QEMU got the file in an fd set (file:), not by getfd (fd:) */
	bool ended;
	bool counted; /* in manager->snapshots_running: a reload waits */
	char reason[1024];
	enum snapshot_error error;

	/* snapshot */
	struct snapshot_record rec;
	bool migrate_sent, caps_set, caller_gone, cancel_sent;
	int64_t stop_ts, resume_ts; /* QEMU's STOP and RESUME after migrate */
	uint64_t migrate_usec;      /* CLOCK_MONOTONIC when migrate was answered */
	uint64_t migrate_done_usec;
	/* Writable qcow2 disks get an external overlay while the guest is
	 * stopped (by cprd) right before migrate: overlay[i] for spec disk i,
	 * NULL for a read-only one. */
	char *overlay[SPEC_DISKS_MAX];
	bool reserved[SPEC_DISKS_MAX]; /* snapshot: cprd made overlay[i]'s file */
	size_t n_overlays;
	bool stopped_by_us, cont_sent, was_running, overlays_taken;

	/* restore */
	struct snapshot_record want; /* the record read */
	char *binary;
	/* The spec to start, the recorded one whose writable disks get a
	 * fresh overlay each (overlay[i], made one after another by
	 * `making`), so the recorded disks are only read; and an existing
	 * VM's own spec, put back if the restore fails. */
	struct vm_spec *spec, *old_spec;
	struct disk_overlay *making;
	size_t next_disk;
	char stamp[32];
	bool created;
	bool load_sent;
	uint64_t load_usec;
	struct vm_incoming incoming;
};

static void op_free(struct snapshot_op *s) {
	if (s->counted)
		s->m->snapshots_running--;
	if (s->poll_timer)
		event_free(s->poll_timer);
	if (s->deadline)
		event_free(s->deadline);
	snapshot_hasher_free(s->hasher);
	safe_close(s->fd);
	safe_close(s->read_fd);
	snapshot_record_done(&s->rec);
	snapshot_record_done(&s->want);
	free(s->binary);
	disk_overlay_cancel(s->making);
	spec_free(s->spec);
	spec_free(s->old_spec);
	for (size_t i = 0; i < SPEC_DISKS_MAX; i++)
		free(s->overlay[i]);
	free(s->name);
	free(s->file);
	free(s);
}

const char *snapshot_op_vm(const struct snapshot_op *s) { return s->name; }
const char *snapshot_op_file(const struct snapshot_op *s) { return s->file; }

static void progress(struct snapshot_op *s, const char *phase, double fraction, const char *fmt,
		     ...) _printf_(4, 5);
static void progress(struct snapshot_op *s, const char *phase, double fraction, const char *fmt,
		     ...) {
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (fraction < 0)
		log_vm_phase(LOG_INFO, 0, s->name, phase, "%s", msg);
	if (s->progress)
		s->progress(s, phase, msg, fraction, s->userdata);
}

static int refuse(struct snapshot_refusal *ref, enum snapshot_error e, const char *fmt, ...)
	_printf_(3, 4);
static int refuse(struct snapshot_refusal *ref, enum snapshot_error e, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ref->reason, sizeof(ref->reason), fmt, ap);
	va_end(ap);
	ref->error = e;
	return -EINVAL;
}

static struct snapshot_op *op_new(struct manager *m, enum snapshot_kind kind, const char *name,
				  const struct snapshot_request *req, snapshot_progress_fn pr,
				  snapshot_done_fn done, void *userdata);

static double elapsed_ms(uint64_t since) {
	return (double)(now_usec(CLOCK_MONOTONIC) - since) / 1000.0;
}

static void arm(struct event *ev, int ms) {
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(ev, &tv);
}

/* A result's "overlays": the files the guest writes to from now on, one
 * per writable disk; left out when there are none. */
static void add_overlays(struct json_object *r, const struct snapshot_op *s) {
	if (!s->n_overlays)
		return;
	struct json_object *a = json_object_new_array();
	for (size_t i = 0; i < SPEC_DISKS_MAX; i++)
		if (s->overlay[i])
			json_object_array_add(a, json_object_new_string(s->overlay[i]));
	json_object_object_add(r, "overlays", a);
}

static const char *status_of(struct json_object *ret) {
	return json_object_get_string(json_object_object_get(ret, "status"));
}

/* ---- the file and the capability on the QEMU ----------------------------- */

/* Hands QEMU the file: in an fd set for file: (QEMU >= 9.0; fd: on a file is
 * deprecated since), else by name for fd:. Either way QEMU opens no path. */
static int send_file_fd(struct qmp *q, bool fdset, int fd, qmp_reply_fn fn, void *userdata) {
	struct json_object *args = json_object_new_object();
	if (fdset) {
		json_object_object_add(args, "fdset-id", json_object_new_int(SNAPSHOT_FDSET_ID));
		return qmp_command_with_fd(q, "add-fd", args, fd, SNAPSHOT_QMP_TIMEOUT_MS, fn,
					   userdata);
	}
	json_object_object_add(args, "fdname", json_object_new_string(SNAPSHOT_FD_NAME));
	return qmp_command_with_fd(q, "getfd", args, fd, SNAPSHOT_QMP_TIMEOUT_MS, fn, userdata);
}

/* migrate's (or migrate-incoming's) arguments: the URI of the file that
 * send_file_fd handed QEMU. */
static struct json_object *file_uri_args(bool fdset) {
	char uri[64];
	if (fdset)
		snprintf(uri, sizeof(uri), "file:/dev/fdset/%d", SNAPSHOT_FDSET_ID);
	else
		snprintf(uri, sizeof(uri), "fd:%s", SNAPSHOT_FD_NAME);
	struct json_object *args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	return args;
}

/* Closes QEMU's copy of the file in the fd set; the reply is not waited for. */
static void remove_file_fdset(struct qmp *q) {
	struct json_object *args = json_object_new_object();
	json_object_object_add(args, "fdset-id", json_object_new_int(SNAPSHOT_FDSET_ID));
	qmp_command(q, "remove-fd", args, SNAPSHOT_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
}

/* background-snapshot's entry in query-migrate-capabilities' reply, or NULL. */
static struct json_object *background_snapshot_entry(struct json_object *caps) {
	size_t n = json_object_is_type(caps, json_type_array) ? json_object_array_length(caps) : 0;
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(caps, i);
		if (streq(json_object_get_string(json_object_object_get(c, "capability")),
			  "background-snapshot"))
			return c;
	}
	return NULL;
}

/* Turns the background-snapshot capability off; the reply is not waited for. */
static void clear_background_snapshot(struct qmp *q) {
	qmp_command(q, "migrate-set-capabilities", migration_caps("background-snapshot", false),
		    SNAPSHOT_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
}

/* ---- snapshot ------------------------------------------------------------ */

static void snap_finish(struct snapshot_op *s, enum snapshot_error e, struct json_object *result);

static struct qmp *snap_qmp(struct snapshot_op *s) {
	return s->vm->qemu ? vm_qemu_qmp(s->vm->qemu) : NULL;
}

/* Undoes what was set on the QEMU; the replies are not waited for. */
static void snap_undo(struct snapshot_op *s) {
	struct qmp *q = snap_qmp(s);
	if (!q)
		return;
	if (s->migrate_sent && !s->cancel_sent && s->error != SNAPSHOT_OK)
		qmp_command(q, "migrate_cancel", NULL, SNAPSHOT_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	if (s->stopped_by_us && !s->cont_sent && s->was_running) {
		/* The guest ran before cprd stopped it: it runs again. */
		qmp_command(q, "cont", NULL, SNAPSHOT_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
		s->cont_sent = true;
	}
	if (s->caps_set) {
		clear_background_snapshot(q);
		s->caps_set = false;
	}
	if (s->fdset) {
		remove_file_fdset(q);
		s->fdset = false;
	}
}

static void snap_fail(struct snapshot_op *s, enum snapshot_error e, const char *fmt, ...)
	_printf_(3, 4);
static void snap_fail(struct snapshot_op *s, enum snapshot_error e, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->reason, sizeof(s->reason), fmt, ap);
	va_end(ap);
	snap_finish(s, e, NULL);
}

/* The end of a snapshot, whatever it was: the QEMU is given back to the
 * VM's own callbacks, and an unnamed file that was not named vanishes with
 * its fds. */
static void snap_finish(struct snapshot_op *s, enum snapshot_error e, struct json_object *result) {
	if (s->ended)
		return;
	s->ended = true;
	s->error = e;
	struct qmp *q = snap_qmp(s);
	if (q)
		qmp_cancel(q, s);
	snap_undo(s);
	struct vm *vm = s->vm;
	bool forgot = false;
	for (size_t i = 0; i < SPEC_DISKS_MAX; i++) {
		if (!s->reserved[i] || s->overlays_taken)
			continue;
		if (unlink(s->overlay[i]) < 0 && errno != ENOENT)
			log_vm(LOG_WARNING, s->name, "cannot remove the overlay %s: %m", s->overlay[i]);
		disk_grants_forget(&vm->disk_grants, s->overlay[i]);
		forgot = true;
	}
	if (forgot && vm->uid)
		vm_save(vm);
	if (vm->operation == VM_OP_SNAPSHOT)
		vm->operation = VM_OP_NONE;
	vm_watch_main(vm);
	if (e == SNAPSHOT_OK)
		log_vm(LOG_INFO, s->name, "snapshot written to %s", s->file);
	else
		log_vm(LOG_WARNING, s->name, "snapshot to %s %s: %s", s->file,
		       e == SNAPSHOT_CANCELLED ? "cancelled" : "failed", s->reason);
	s->done(s, e, e == SNAPSHOT_OK ? NULL : s->reason, result, s->userdata);
	json_object_put(result);
	op_free(s);
}

static void snap_deadline(evutil_socket_t fd, short what, void *userdata) {
	struct snapshot_op *s = userdata;
	snap_fail(s, SNAPSHOT_FAILED, "the snapshot did not end within %d s (timeoutSec)",
		  s->timeout_sec);
}

static struct json_object *snap_result(struct snapshot_op *s) {
	struct json_object *r = json_object_new_object();
	double ms = (double)(s->migrate_done_usec - s->migrate_usec) / 1000.0;
	json_object_object_add(r, "vm", json_object_new_string(s->name));
	json_object_object_add(r, "file", json_object_new_string(s->file));
	json_object_object_add(r, "bytes", json_object_new_int64((int64_t)s->size));
	json_object_object_add(r, "qemuVersion",
			       json_object_new_string(vm_qemu_version(s->vm->qemu)));
	json_object_object_add(r, "machine", json_object_new_string(s->rec.machine));
	if (s->stop_ts && s->resume_ts >= s->stop_ts) {
		json_object_object_add(r, "pauseMs",
				       json_new_fixed3((double)(s->resume_ts - s->stop_ts) / 1000.0));
		json_object_object_add(r, "pausedAtUs", json_object_new_int64(s->stop_ts));
		json_object_object_add(r, "resumedAtUs", json_object_new_int64(s->resume_ts));
	}
	json_object_object_add(r, "writeMs", json_new_fixed3(ms));
	json_object_object_add(r, "mbPerSec",
			       json_new_fixed3(ms > 0 ? (double)s->size / 1e6 / (ms / 1000.0) : 0));
	json_object_object_add(r, "totalMs", json_new_fixed3(elapsed_ms(s->t0)));
	add_overlays(r, s);
	return r;
}

static void snap_on_hash(int error, const char *hash, void *userdata) {
	struct snapshot_op *s = userdata;
	s->hasher = snapshot_hasher_free(s->hasher);
	if (error < 0)
		return snap_fail(s, SNAPSHOT_FAILED, "cannot read back %s: %s", s->file,
				 strerror(-error));
	s->rec.state_hash = strdup(hash);
	s->rec.state_bytes = s->size;
	char ts[32];
	format_rfc3339(now_usec(CLOCK_REALTIME), ts);
	s->rec.time = strdup(ts);
	if (!s->rec.state_hash || !s->rec.time)
		return snap_fail(s, SNAPSHOT_FAILED, "out of memory");
	/* The data first, then its name, then the record that vouches for it:
	 * a file without a record is never restored. */
	if (fdatasync(s->fd) < 0)
		return snap_fail(s, SNAPSHOT_FAILED, "cannot sync %s: %m", s->file);
	int r = snapshot_file_link(s->fd, s->file);
	if (r < 0)
		return snap_fail(s, r == -EEXIST ? SNAPSHOT_BAD_FILE : SNAPSHOT_FAILED,
				 "cannot name the snapshot %s: %s", s->file, strerror(-r));
	_cleanup_free_ char *rec_path = NULL;
	struct json_object *o = snapshot_record_to_json(&s->rec);
	r = asprintf(&rec_path, "%s%s", s->file, SNAPSHOT_RECORD_SUFFIX) < 0 ? -ENOMEM
									      : write_json_atomic(rec_path, o);
	json_object_put(o);
	if (r < 0) {
		unlink(s->file);
		return snap_fail(s, SNAPSHOT_FAILED, "cannot write the record %s: %s",
				 rec_path ? rec_path : s->file, strerror(-r));
	}
	struct json_object *result = snap_result(s);
	progress(s, "done", 1.0, "%s: %llu bytes", s->file, (unsigned long long)s->size);
	snap_finish(s, SNAPSHOT_OK, result);
}

static void snap_on_hash_progress(uint64_t done, uint64_t size, void *userdata) {
	struct snapshot_op *s = userdata;
	progress(s, "verify", (double)done / (double)size, "checksummed %llu of %llu bytes",
		 (unsigned long long)done, (unsigned long long)size);
}

static void snap_completed(struct snapshot_op *s) {
	s->migrate_done_usec = now_usec(CLOCK_MONOTONIC);
	snap_undo(s); /* capability off, QEMU's copy of the file closed */
	struct stat st;
	if (fstat(s->fd, &st) < 0)
		return snap_fail(s, SNAPSHOT_FAILED, "cannot stat the snapshot file: %m");
	s->size = (uint64_t)st.st_size;
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", s->fd);
	s->read_fd = open(proc, O_RDONLY | O_CLOEXEC);
	if (s->read_fd < 0)
		return snap_fail(s, SNAPSHOT_FAILED, "cannot read back the snapshot file: %m");
	progress(s, "verify", -1, "QEMU wrote %llu bytes; checksumming them",
		 (unsigned long long)s->size);
	int r = snapshot_hasher_start(s->m->base, s->read_fd, s->size, snap_on_hash_progress,
				      snap_on_hash, s, &s->hasher);
	if (r < 0)
		snap_fail(s, SNAPSHOT_FAILED, "cannot checksum the file: %s", strerror(-r));
}

static void snap_on_cont(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			 void *userdata) {
	struct snapshot_op *s = userdata;
	if (err)
		log_vm(LOG_ERR, s->name, "cont after the snapshot's start failed: %s", err->desc);
}

/* While cprd holds the guest stopped, the poll is what ends the pause. */
static int snap_poll_ms(const struct snapshot_op *s) {
	return s->stopped_by_us && !s->cont_sent ? SNAPSHOT_PAUSED_POLL_MS : SNAPSHOT_POLL_MS;
}

/* Lets the guest run again after cprd stopped it for the overlays. */
static void snap_cont(struct snapshot_op *s) {
	s->cont_sent = true;
	if (!s->was_running)
		return;
	qmp_command(snap_qmp(s), "cont", NULL, SNAPSHOT_QMP_TIMEOUT_MS, snap_on_cont, s);
}

static void snap_on_query(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			  void *userdata) {
	struct snapshot_op *s = userdata;
	if (err)
		return snap_fail(s, SNAPSHOT_FAILED, "query-migrate failed: %s", err->desc);
	const char *st = status_of(ret);
	if (streq(st, "completed")) {
		if (s->stopped_by_us && !s->cont_sent)
			snap_cont(s);
		return snap_completed(s);
	}
	if (streq(st, "failed") || streq(st, "cancelled")) {
		const char *desc = json_object_get_string(json_object_object_get(ret, "error-desc"));
		if (s->caller_gone)
			return snap_fail(s, SNAPSHOT_CANCELLED, "the caller went away; the file is removed");
		return snap_fail(s, SNAPSHOT_FAILED, "QEMU's snapshot %s: %s", st,
				 desc ? desc : "no reason given");
	}
	struct json_object *ram = json_object_object_get(ret, "ram");
	int64_t normal = json_object_get_int64(json_object_object_get(ram, "normal"));
	int64_t dup = json_object_get_int64(json_object_object_get(ram, "duplicate"));
	/* QEMU saves pages only after it stopped the guest (a no-op: cprd had),
	 * saved the devices and write-protected RAM, all under its big lock:
	 * from the first page on, cont cannot come before that point. */
	if (s->stopped_by_us && !s->cont_sent && normal + dup > 0)
		snap_cont(s);
	int64_t page = json_object_get_int64(json_object_object_get(ram, "page-size"));
	int64_t total = json_object_get_int64(json_object_object_get(ram, "total"));
	if (total > 0 && page > 0) {
		double f = (double)(normal + dup) * (double)page / (double)total;
		progress(s, "write", f > 1 ? 1 : f, "%s: %lld of %lld bytes of RAM saved", st ? st : "?",
			 (long long)((normal + dup) * page), (long long)total);
	}
	arm(s->poll_timer, snap_poll_ms(s));
}

static void snap_poll(evutil_socket_t fd, short what, void *userdata) {
	struct snapshot_op *s = userdata;
	struct qmp *q = snap_qmp(s);
	if (!q || qmp_command(q, "query-migrate", NULL, SNAPSHOT_QMP_TIMEOUT_MS, snap_on_query, s) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

static void snap_cont(struct snapshot_op *s);

static void snap_on_migrate(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			    void *userdata) {
	struct snapshot_op *s = userdata;
	if (err)
		return snap_fail(s, SNAPSHOT_FAILED, "QEMU refused migrate: %s", err->desc);
	s->migrate_usec = now_usec(CLOCK_MONOTONIC);
	progress(s, "write", 0.0, "QEMU writes the guest's state");
	arm(s->poll_timer, snap_poll_ms(s));
}

static void snap_migrate(struct snapshot_op *s, struct qmp *q) {
	s->migrate_sent = true;
	if (qmp_command(q, "migrate", file_uri_args(s->fdset), SNAPSHOT_QMP_TIMEOUT_MS,
			snap_on_migrate, s) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

/* The overlays are there: the VM's QEMU writes to them from now on, so the
 * spec names them (the record keeps the disks as they were). */
static void snap_on_transaction(struct qmp *q, struct json_object *ret,
				const struct qmp_error *err, void *userdata) {
	struct snapshot_op *s = userdata;
	if (err)
		return snap_fail(s, SNAPSHOT_FAILED,
				 "QEMU could not take the disk overlays (nothing changed): %s",
				 err->desc);
	s->overlays_taken = true;
	struct vm_spec *spec = s->vm->spec;
	for (size_t i = 0; i < spec->n_disks && i < SPEC_DISKS_MAX; i++) {
		/* The disk goes on top of the chain cprd records below the
		 * overlay, whose files the VM's own user may read at a start. */
		int r = s->overlay[i] ? spec_disk_push_overlay(&spec->disks[i], s->overlay[i]) : 0;
		if (r < 0)
			log_vm_errno(LOG_ERR, r, s->name, "disks[%zu]: cannot name the overlay %s: %m",
				     i, s->overlay[i]);
	}
	vm_save(s->vm);
	progress(s, "overlay", -1, "%zu disk overlay(s) taken; the VM writes to them from now on",
		 s->n_overlays);
	snap_migrate(s, q);
}

static void snap_on_stop(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			 void *userdata) {
	struct snapshot_op *s = userdata;
	if (err) {
		s->stopped_by_us = false;
		return snap_fail(s, SNAPSHOT_FAILED, "QEMU refused stop: %s", err->desc);
	}
	struct json_object *actions = json_object_new_array();
	for (size_t i = 0; i < SPEC_DISKS_MAX; i++) {
		if (!s->overlay[i])
			continue;
		char device[32];
		snprintf(device, sizeof(device), "virtio%zu", i); /* -drive if=virtio,index=i */
		struct json_object *data = json_object_new_object();
		json_object_object_add(data, "device", json_object_new_string(device));
		json_object_object_add(data, "snapshot-file", json_object_new_string(s->overlay[i]));
		json_object_object_add(data, "format", json_object_new_string("qcow2"));
		json_object_object_add(data, "mode", json_object_new_string("absolute-paths"));
		struct json_object *a = json_object_new_object();
		json_object_object_add(a, "type", json_object_new_string("blockdev-snapshot-sync"));
		json_object_object_add(a, "data", data);
		json_object_array_add(actions, a);
	}
	struct json_object *args = json_object_new_object();
	json_object_object_add(args, "actions", actions);
	if (qmp_command(q, "transaction", args, SNAPSHOT_QMP_TIMEOUT_MS, snap_on_transaction, s) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

/* Each overlay's name is taken before QEMU makes the image there: an empty
 * file made with O_EXCL, 0600, owned by the running QEMU's user. QEMU
 * opens it with O_CREAT and writes the image into it, which a QEMU with a
 * uid of its own could not do in a folder of root's, and it never writes
 * over a file that appeared since the preflight. */
static int snap_reserve_overlays(struct snapshot_op *s) {
	const struct qemu_identity *id =
		vm_qemu_user(s->vm) ? vm_qemu_user(s->vm) : qemu_default_user();
	for (size_t i = 0; i < SPEC_DISKS_MAX; i++) {
		if (!s->overlay[i])
			continue;
		_cleanup_close_ int fd =
			open(s->overlay[i], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			snap_fail(s, SNAPSHOT_FAILED, "disks[%zu]: cannot make the overlay %s: %m", i,
				  s->overlay[i]);
			return -1;
		}
		s->reserved[i] = true;
		/* A VM's own uid has the file while the VM runs; at stop it goes
		 * back to root, 0600, as the disks do, so no uid of the range
		 * keeps a file of a snapshot's chain. */
		int r = 0;
		if (s->vm->uid &&
		    ((r = disk_grants_add_made(&s->vm->disk_grants, s->overlay[i], fd, id->uid)) < 0 ||
		     (r = vm_save(s->vm)) < 0)) {
			errno = -r;
			snap_fail(s, SNAPSHOT_FAILED, "disks[%zu]: cannot record the overlay %s in vm.json: %m",
				  i, s->overlay[i]);
			return -1;
		}
		if (id && fchown(fd, id->uid, id->gid) < 0) {
			snap_fail(s, SNAPSHOT_FAILED, "disks[%zu]: cannot give the overlay %s to uid %u: %m",
				  i, s->overlay[i], (unsigned)id->uid);
			return -1;
		}
	}
	return 0;
}

static void snap_on_caps(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			 void *userdata) {
	struct snapshot_op *s = userdata;
	if (err) { /* QEMU checks the kernel and its RAM blocks here */
		/* QEMU before 8.1 makes its userfaultfd only with the syscall,
		 * which cprd.service's seccomp filter denies (design.md). */
		const struct probe_result *p = vm_qemu_probe(s->vm->qemu);
		bool syscall_only = p && (p->major < 8 || (p->major == 8 && p->minor < 1));
		return snap_fail(s, SNAPSHOT_NOT_SNAPSHOTTABLE,
				 "QEMU refused the background-snapshot capability: %s%s", err->desc,
				 syscall_only ? " (QEMU before 8.1 makes its userfaultfd with the "
						"userfaultfd system call, which cprd.service's "
						"SystemCallFilter=~userfaultfd denies; QEMU >= 8.1 uses "
						"/dev/userfaultfd)"
					      : "");
	}
	s->caps_set = true;
	if (!s->n_overlays)
		return snap_migrate(s, q);
	if (snap_reserve_overlays(s) < 0)
		return;
	/* The disks and RAM must be of one instant: cprd stops the guest, the
	 * overlays are taken, migrate starts (QEMU's own stop finds it
	 * stopped and saves that instant), and cprd lets it run once QEMU
	 * saves pages. */
	s->was_running = s->vm->state == VM_RUNNING;
	s->stopped_by_us = true;
	s->migrate_sent = true; /* the STOP event counts as the snapshot's pause */
	if (qmp_command(q, "stop", NULL, SNAPSHOT_QMP_TIMEOUT_MS, snap_on_stop, s) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

static void snap_on_fd(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
		       void *userdata) {
	struct snapshot_op *s = userdata;
	if (err) {
		s->fdset = false;
		return snap_fail(s, SNAPSHOT_FAILED, "QEMU did not take the file's fd: %s", err->desc);
	}
	if (qmp_command(q, "migrate-set-capabilities", migration_caps("background-snapshot", true),
			SNAPSHOT_QMP_TIMEOUT_MS, snap_on_caps, s) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

/* Hands the VM's QEMU the file, in an fd set when its version takes one. */
static int snap_send_fd(struct snapshot_op *s, struct qmp *q, int fd, qmp_reply_fn fn) {
	const struct probe_result *p = vm_qemu_probe(s->vm->qemu);
	const char *version = vm_qemu_version(s->vm->qemu);
	unsigned major = p ? p->major : 0;
	if (!p)
		sscanf(version, "%u", &major);
	s->fdset = major >= 9;
	return send_file_fd(q, s->fdset, fd, fn, s);
}

static void snap_on_status(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			   void *userdata) {
	struct snapshot_op *s = userdata;
	if (err)
		return snap_fail(s, SNAPSHOT_FAILED, "query-migrate failed: %s", err->desc);
	const char *st = status_of(ret);
	if (st && !streq(st, "none") && !streq(st, "completed") && !streq(st, "failed") &&
	    !streq(st, "cancelled"))
		return snap_fail(s, SNAPSHOT_BUSY, "a migration is under way on this QEMU (%s)", st);
	progress(s, "start", -1, "handing QEMU the file %s", s->file);
	if (snap_send_fd(s, q, s->fd, snap_on_fd) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

static void snap_on_caps_list(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			      void *userdata) {
	struct snapshot_op *s = userdata;
	if (err)
		return snap_fail(s, SNAPSHOT_FAILED, "query-migrate-capabilities failed: %s", err->desc);
	if (!background_snapshot_entry(ret))
		return snap_fail(s, SNAPSHOT_NOT_SNAPSHOTTABLE,
				 "QEMU %s has no background-snapshot migration capability (QEMU >= 6.0 "
				 "has it)",
				 vm_qemu_version(s->vm->qemu));
	if (qmp_command(q, "query-migrate", NULL, SNAPSHOT_QMP_TIMEOUT_MS, snap_on_status, s) < 0)
		snap_fail(s, SNAPSHOT_FAILED, "the QMP channel to QEMU closed");
}

static void snap_event(struct vm_qemu *q, const char *name, struct json_object *data, int64_t ts,
		       void *userdata) {
	struct snapshot_op *s = userdata;
	if (!s->migrate_sent)
		return;
	if (streq(name, "STOP") && !s->stop_ts)
		s->stop_ts = ts;
	else if (streq(name, "RESUME") && s->stop_ts && !s->resume_ts)
		s->resume_ts = ts;
}

static void snap_exited(struct vm_qemu *q, const char *how, int status, int sig, void *userdata) {
	struct snapshot_op *s = userdata;
	struct vm *vm = s->vm;
	s->fdset = s->caps_set = false; /* nothing left to undo */
	s->migrate_sent = false;
	snap_fail(s, SNAPSHOT_FAILED, "QEMU pid %d ended (%s) during the snapshot",
		  (int)vm_qemu_pid(q), how);
	/* The VM's own handling of the exit: crashed, RAM kept. */
	vm_main_callbacks.exited(q, how, status, sig, vm);
}

static const struct vm_qemu_callbacks snap_callbacks = {
	.event = snap_event,
	.exited = snap_exited,
};

int snapshot_start(struct manager *m, struct vm *vm, const struct snapshot_request *req,
		   snapshot_progress_fn pr, snapshot_done_fn done, void *userdata,
		   struct snapshot_refusal *ref, struct snapshot_op **ret) {
	char why[768];
	*ref = (struct snapshot_refusal){0};
	if (vm->operation != VM_OP_NONE)
		return refuse(ref, SNAPSHOT_BUSY, "%s", vm_operation_to_string(vm->operation));
	if ((vm->state != VM_RUNNING && vm->state != VM_PAUSED) || !vm->qemu)
		return refuse(ref, SNAPSHOT_BAD_STATE, "only a running or paused VM can be snapshot");
	if (vm->spec->n_devices)
		return refuse(ref, SNAPSHOT_NOT_SNAPSHOTTABLE,
			      "the VM has assigned devices, whose state QEMU cannot save");
	const struct qemu_identity *id = vm_qemu_user(vm) ? vm_qemu_user(vm) : qemu_default_user();
	if (!snapshot_uffd_allowed_for(id ? id->uid : 0, why, sizeof(why)))
		return refuse(ref, SNAPSHOT_NOT_SNAPSHOTTABLE, "%s", why);
	if (snapshot_uffd_wp_check(why, sizeof(why)) < 0)
		return refuse(ref, SNAPSHOT_NOT_SNAPSHOTTABLE, "%s", why);
	char stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", gmtime_r(&now, &tm));
	char *overlay[SPEC_DISKS_MAX] = {0};
	for (size_t i = 0; i < vm->spec->n_disks && i < SPEC_DISKS_MAX; i++) {
		const struct spec_disk *d = &vm->spec->disks[i];
		if (d->readonly)
			continue;
		struct stat st;
		/* Beside the disk, named for the disk it started from: a.qcow2,
		 * then a.snap-T1.qcow2, then a.snap-T2.qcow2 (a.restore-T3.qcow2
		 * after a restore, then a.snap-T4.qcow2). */
		if (d->n_backing >= SPEC_BACKING_MAX) {
			refuse(ref, SNAPSHOT_NOT_SNAPSHOTTABLE,
			       "disks[%zu] %s is an overlay over %zu files cprd made already, the "
			       "most it records (fold the chain into one file with qemu-img convert "
			       "and create the VM anew on it)",
			       i, d->path, d->n_backing);
			for (size_t k = 0; k < SPEC_DISKS_MAX; k++)
				free(overlay[k]);
			return -EINVAL;
		}
		if (!streq(d->format, "qcow2") ||
		    !(overlay[i] = disk_overlay_name(d->path, "snap", stamp, 1)) ||
		    strlen(overlay[i]) >= SPEC_PATH_MAX || lstat(overlay[i], &st) == 0) {
			bool raw = !streq(d->format, "qcow2");
			refuse(ref, SNAPSHOT_NOT_SNAPSHOTTABLE,
			       raw ? "disks[%zu] %s is a writable raw disk: a snapshot's disk state "
				     "needs an external qcow2 overlay taken at the snapshot's instant, "
				     "and cprd takes overlays of qcow2 disks only (convert it with "
				     "qemu-img convert -O qcow2, or make it read-only)"
				   : "disks[%zu] %s: its overlay %s exists already or its path is too long",
			       i, d->path, overlay[i] ? overlay[i] : "");
			for (size_t k = 0; k < SPEC_DISKS_MAX; k++)
				free(overlay[k]);
			return -EINVAL;
		}
	}
	int fd = -1;
	if (snapshot_file_create(req->file, &fd, why, sizeof(why)) < 0) {
		for (size_t k = 0; k < SPEC_DISKS_MAX; k++)
			free(overlay[k]);
		return refuse(ref, SNAPSHOT_BAD_FILE, "%s", why);
	}

	struct snapshot_op *s = op_new(m, KIND_SNAPSHOT, vm->name, req, pr, done, userdata);
	if (!s) {
		close(fd);
		for (size_t k = 0; k < SPEC_DISKS_MAX; k++)
			free(overlay[k]);
		return refuse(ref, SNAPSHOT_FAILED, "out of memory");
	}
	s->vm = vm;
	s->fd = fd;
	for (size_t i = 0; i < SPEC_DISKS_MAX; i++)
		if ((s->overlay[i] = overlay[i]))
			s->n_overlays++;
	s->rec.vm = strdup(vm->name);
	s->rec.spec = spec_to_json(vm->spec);
	s->rec.machine = strdup(vm->spec->machine);
	s->rec.memory_mib = vm->spec->memory_mib;
	s->rec.qemu = strdup(vm_qemu_binary(vm->qemu));
	if (sscanf(vm_qemu_version(vm->qemu), "%u.%u.%u", &s->rec.major, &s->rec.minor,
		   &s->rec.micro) != 3 ||
	    !s->rec.vm || !s->rec.spec || !s->rec.machine || !s->rec.qemu) {
		op_free(s);
		return refuse(ref, SNAPSHOT_FAILED, "the running QEMU's version is unknown");
	}
	vm->operation = VM_OP_SNAPSHOT;
	vm_qemu_set_callbacks(vm->qemu, &snap_callbacks, s);
	progress(s, "preflight", -1, "snapshot of %s (QEMU %s) to %s", vm->name,
		 vm_qemu_version(vm->qemu), s->file);
	if (qmp_command(vm_qemu_qmp(vm->qemu), "query-migrate-capabilities", NULL,
			SNAPSHOT_QMP_TIMEOUT_MS, snap_on_caps_list, s) < 0) {
		vm->operation = VM_OP_NONE;
		vm_watch_main(vm);
		op_free(s);
		return refuse(ref, SNAPSHOT_FAILED, "the QMP channel to QEMU is closed");
	}
	s->counted = true;
	m->snapshots_running++;
	*ret = s;
	return 0;
}

void snapshot_caller_gone(struct snapshot_op *s) {
	s->caller_gone = true;
	s->progress = NULL;
	if (s->kind != KIND_SNAPSHOT || s->ended)
		return;
	log_vm(LOG_INFO, s->name, "the caller went away: cancelling the snapshot to %s", s->file);
	struct qmp *q = snap_qmp(s);
	if (s->migrate_sent && q && !s->migrate_done_usec) {
		s->cancel_sent = true;
		qmp_command(q, "migrate_cancel", NULL, SNAPSHOT_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
		return; /* the poll sees "cancelled" and ends it */
	}
	snap_fail(s, SNAPSHOT_CANCELLED, "the caller went away; the file is removed");
}

/* ---- restore ------------------------------------------------------------- */

static void restore_fail(struct snapshot_op *s, enum snapshot_error e, const char *fmt, ...)
	_printf_(3, 4);

static void restore_end(struct snapshot_op *s, struct json_object *result) {
	s->ended = true;
	if (s->error == SNAPSHOT_OK)
		log_vm(LOG_INFO, s->name, "restored from %s", s->file);
	else
		log_vm(LOG_WARNING, s->name, "restore from %s failed: %s", s->file, s->reason);
	s->done(s, s->error, s->error == SNAPSHOT_OK ? NULL : s->reason, result, s->userdata);
	json_object_put(result);
	op_free(s);
}

/* After a failed start: a VM the restore created goes as if it never was;
 * one that existed is back to stopped, with no fds held. Deferred to the
 * loop: the VM code that reported the failure is still on the stack. */
static void restore_cleanup(evutil_socket_t fd, short what, void *userdata) {
	struct snapshot_op *s = userdata;
	struct vm *vm = s->vm;
	/* Asked once: a VM the restore created is freed below. */
	bool active = vm && vm_is_active(vm);
	if (vm && !active) {
		vm_release_custody(vm);
		if (s->created) {
			char *rt = vm_runtime_file(vm, "qemu.json");
			if (rt)
				unlink(rt);
			free(rt);
			rm_rf_flat(vm->dir);
			_cleanup_free_ char *rdir = vm_runtime_dir(vm);
			if (rdir)
				rm_rf_flat(rdir);
			manager_emit(s->m, vm, "deleted", "restore failed; the VM it created is removed");
			manager_remove(s->m, vm);
			vm_free(vm);
		} else {
			if (s->old_spec) { /* its own spec again: the overlays go */
				spec_free(vm->spec);
				vm->spec = TAKE_PTR(s->old_spec);
			}
			vm_set_state(vm, VM_STOPPED, "restore failed");
			vm_save(vm);
		}
	}
	/* The overlays this restore made, unless a QEMU still has them. */
	if (!active)
		for (size_t i = 0; i < SPEC_DISKS_MAX; i++)
			if (s->overlay[i] && unlink(s->overlay[i]) < 0 && errno != ENOENT)
				log_vm(LOG_WARNING, s->name, "cannot remove the overlay %s: %m",
				       s->overlay[i]);
	s->vm = NULL;
	restore_end(s, NULL);
}

static void restore_fail(struct snapshot_op *s, enum snapshot_error e, const char *fmt, ...) {
	if (s->ended)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->reason, sizeof(s->reason), fmt, ap);
	va_end(ap);
	s->error = e;
	s->ended = true;
	event_base_once(s->m->base, -1, EV_TIMEOUT, restore_cleanup, s, NULL);
}

static void restore_on_query(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			     void *userdata);

static void restore_poll(evutil_socket_t fd, short what, void *userdata) {
	struct snapshot_op *s = userdata;
	struct vm *vm = s->vm;
	if (!vm->qemu || qmp_command(vm_qemu_qmp(vm->qemu), "query-migrate", NULL,
				     SNAPSHOT_QMP_TIMEOUT_MS, restore_on_query, s) < 0)
		return; /* the QEMU is gone: the start's failure reports it */
}

static void restore_on_query(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			     void *userdata) {
	struct snapshot_op *s = userdata;
	if (err) {
		snprintf(s->reason, sizeof(s->reason), "query-migrate failed: %s", err->desc);
		return vm_start_incoming_done(s->vm, s->reason);
	}
	const char *st = status_of(ret);
	if (streq(st, "completed")) {
		progress(s, "resume", -1, "QEMU read %llu bytes in %.0f ms; resuming the guest",
			 (unsigned long long)s->size, elapsed_ms(s->load_usec));
		return vm_start_incoming_done(s->vm, NULL);
	}
	if (streq(st, "failed") || streq(st, "cancelled")) {
		const char *desc = json_object_get_string(json_object_object_get(ret, "error-desc"));
		snprintf(s->reason, sizeof(s->reason), "QEMU could not load the snapshot: %s",
			 desc ? desc : "no reason given (see cprctl log NAME --qemu)");
		return vm_start_incoming_done(s->vm, s->reason);
	}
	off_t pos = lseek(s->fd, 0, SEEK_CUR); /* QEMU's copy shares the offset */
	if (pos >= 0)
		progress(s, "load", (double)pos / (double)s->size, "QEMU read %lld of %llu bytes",
			 (long long)pos, (unsigned long long)s->size);
	arm(s->poll_timer, SNAPSHOT_POLL_MS);
}

static void restore_on_incoming(struct qmp *q, struct json_object *ret,
				const struct qmp_error *err, void *userdata) {
	struct snapshot_op *s = userdata;
	if (err) {
		snprintf(s->reason, sizeof(s->reason), "QEMU refused migrate-incoming: %s", err->desc);
		return vm_start_incoming_done(s->vm, s->reason);
	}
	arm(s->poll_timer, SNAPSHOT_POLL_MS);
}

static void restore_on_fd(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			  void *userdata) {
	struct snapshot_op *s = userdata;
	if (err) {
		snprintf(s->reason, sizeof(s->reason), "QEMU did not take the file's fd: %s", err->desc);
		return vm_start_incoming_done(s->vm, s->reason);
	}
	s->load_usec = now_usec(CLOCK_MONOTONIC);
	s->load_sent = true;
	qmp_command(q, "migrate-incoming", file_uri_args(s->fdset), SNAPSHOT_QMP_TIMEOUT_MS,
		    restore_on_incoming, s);
}

static void restore_ready(struct vm *vm, struct qmp *q, void *userdata) {
	struct snapshot_op *s = userdata;
	progress(s, "load", 0.0, "QEMU %s pid %d reads the snapshot", vm_qemu_version(vm->qemu),
		 (int)vm_qemu_pid(vm->qemu));
	if (lseek(s->fd, 0, SEEK_SET) < 0) {
		snprintf(s->reason, sizeof(s->reason), "cannot rewind %s: %m", s->file);
		return vm_start_incoming_done(vm, s->reason);
	}
	s->fdset = vm_qemu_probe(vm->qemu) && vm_qemu_probe(vm->qemu)->major >= 9;
	if (send_file_fd(q, s->fdset, s->fd, restore_on_fd, s) < 0) {
		snprintf(s->reason, sizeof(s->reason), "the QMP channel to QEMU closed");
		vm_start_incoming_done(vm, s->reason);
	}
}

static struct json_object *restore_result(struct snapshot_op *s) {
	struct vm *vm = s->vm;
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "vm", json_object_new_string(s->name));
	json_object_object_add(r, "file", json_object_new_string(s->file));
	json_object_object_add(r, "bytes", json_object_new_int64((int64_t)s->size));
	json_object_object_add(r, "created", json_object_new_boolean(s->created));
	json_object_object_add(r, "qemuVersion",
			       json_object_new_string(vm->qemu ? vm_qemu_version(vm->qemu) : "unknown"));
	if (vm->qemu)
		json_object_object_add(r, "pid", json_object_new_int(vm_qemu_pid(vm->qemu)));
	json_object_object_add(r, "loadMs", json_new_fixed3(elapsed_ms(s->load_usec)));
	json_object_object_add(r, "totalMs", json_new_fixed3(elapsed_ms(s->t0)));
	add_overlays(r, s);
	return r;
}

static void restore_on_start(struct vm *vm, const struct vm_outcome *o, void *userdata) {
	struct snapshot_op *s = userdata;
	if (s->poll_timer)
		evtimer_del(s->poll_timer);
	if (vm->qemu)
		qmp_cancel(vm_qemu_qmp(vm->qemu), s);
	if (o->error != VM_OK) {
		if (!s->reason[0])
			snprintf(s->reason, sizeof(s->reason), "%s%s",
				 s->load_sent ? "QEMU could not load the snapshot: " : "",
				 o->reason ? o->reason : "start failed");
		s->error = SNAPSHOT_FAILED;
		s->ended = true;
		event_base_once(s->m->base, -1, EV_TIMEOUT, restore_cleanup, s, NULL);
		return;
	}
	if (s->fdset && vm->qemu)
		remove_file_fdset(vm_qemu_qmp(vm->qemu));
	struct json_object *result = restore_result(s);
	progress(s, "done", 1.0, "the guest runs again from the snapshot");
	s->error = SNAPSHOT_OK;
	restore_end(s, result);
}

/* The VM the restore goes into (*ret, NULL when there is none yet), if
 * nothing runs on it now; false after failing the restore. Asked again at
 * each step that waited, since a call may have started the VM meanwhile. */
static bool restore_vm_idle(struct snapshot_op *s, struct vm **ret) {
	struct vm *vm = manager_find(s->m, s->name);
	*ret = vm;
	if (vm && (vm_is_active(vm) || vm->operation != VM_OP_NONE)) {
		restore_fail(s, SNAPSHOT_BAD_STATE, "VM %s is %s now; stop it or restore under another name",
			     s->name, vm_state_name(vm));
		return false;
	}
	return true;
}

/* The spec and its overlays are ready: the VM is made (or taken) and
 * started. */
static void restore_start_vm(struct snapshot_op *s) {
	struct vm *vm = NULL;
	int r;
	if (!restore_vm_idle(s, &vm))
		return;
	struct vm_spec *spec = s->spec;
	/* The recorded disk goes on top of its recorded chain: the files the
	 * VM's own user is let read below its overlay. */
	for (size_t i = 0; i < spec->n_disks && i < SPEC_DISKS_MAX; i++)
		if (s->overlay[i] && spec_disk_push_overlay(&spec->disks[i], s->overlay[i]) < 0)
			return restore_fail(s, SNAPSHOT_FAILED, "out of memory");
	s->spec = NULL;
	if (!vm) {
		_cleanup_free_ char *dir = manager_vm_state_dir(s->m, s->name);
		if (!dir || (r = vm_new(&s->m->host, spec, dir, &vm)) < 0) {
			spec_free(spec);
			return restore_fail(s, SNAPSHOT_FAILED, "cannot make the VM: out of memory");
		}
		manager_add(s->m, vm);
		s->vm = vm;
		s->created = true;
		if ((r = manager_vm_uid(s->m, vm)) < 0 || (r = mkdir_p(vm->dir, 0700)) < 0 ||
		    (r = vm_save(vm)) < 0)
			return restore_fail(s, SNAPSHOT_FAILED, "cannot store the VM in %s: %s", vm->dir,
					    strerror(-r));
		manager_emit(s->m, vm, "created", "VM defined from a snapshot");
	} else {
		s->vm = vm;
		s->old_spec = vm->spec;
		vm->spec = spec;
		vm_save(vm);
	}
	progress(s, "start", -1, "starting QEMU %s with -incoming defer", s->binary);
	s->incoming = (struct vm_incoming){.ready = restore_ready, .timeout_sec = s->timeout_sec};
	r = vm_start_incoming(vm, &s->incoming, s, restore_on_start, s);
	if (r < 0)
		return restore_fail(s, SNAPSHOT_FAILED, "cannot start QEMU: %s", strerror(-r));
}

static void restore_next_overlay(struct snapshot_op *s);

static void restore_on_overlay(int error, const char *overlay, const char *reason,
			       void *userdata) {
	struct snapshot_op *s = userdata;
	size_t i = s->next_disk;
	s->making = NULL;
	if (error < 0)
		return restore_fail(s, SNAPSHOT_FAILED, "disks[%zu]: %s", i, reason);
	if (!(s->overlay[i] = strdup(overlay))) {
		unlink(overlay);
		return restore_fail(s, SNAPSHOT_FAILED, "out of memory");
	}
	s->n_overlays++;
	progress(s, "overlay", -1, "disks[%zu]: the guest writes to %s; %s is only read", i,
		 overlay, s->spec->disks[i].path);
	s->next_disk++;
	restore_next_overlay(s);
}

/* One writable disk after another gets its overlay (qemu-img in a child;
 * a few ms each), then the VM starts. */
static void restore_next_overlay(struct snapshot_op *s) {
	const struct vm_spec *spec = s->spec;
	char why[768];
	for (; s->next_disk < spec->n_disks && s->next_disk < SPEC_DISKS_MAX; s->next_disk++) {
		size_t i = s->next_disk;
		if (spec->disks[i].readonly)
			continue;
		if (disk_overlay_create(s->m->base, spec->disks[i].path, "restore", s->stamp,
					restore_on_overlay, s, &s->making, why, sizeof(why)) < 0)
			return restore_fail(s, SNAPSHOT_FAILED, "disks[%zu]: %s", i, why);
		return;
	}
	restore_start_vm(s);
}

/* The binary and the file are checked: the recorded spec under this name
 * and binary, whose disks are the disks as they were at the snapshot (not
 * the overlays the VM went on with), for a VM that exists as for a new
 * one. Those disks are the snapshot's disk state, which the restored guest
 * must never write: each writable one gets a fresh overlay first. */
static void restore_launch(struct snapshot_op *s) {
	struct vm *vm = NULL;
	int r;
	if (!restore_vm_idle(s, &vm))
		return;
	struct spec_error err;
	memset(&err, 0, sizeof(err));
	struct json_object *o = json_object_get(s->want.spec);
	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "qemu", json_object_new_string(s->binary));
	r = spec_from_json_record(o, &s->spec, &err);
	json_object_put(o);
	if (r < 0)
		return restore_fail(s, SNAPSHOT_BAD_FILE, "the record's spec is refused: %s: %s",
				    err.field, err.reason);
	for (size_t i = 0; i < s->spec->n_disks && i < SPEC_DISKS_MAX; i++) {
		const struct spec_disk *d = &s->spec->disks[i];
		if (!d->readonly && !streq(d->format, "qcow2"))
			return restore_fail(s, SNAPSHOT_BAD_FILE,
					    "the record's disks[%zu] %s is a writable raw disk, which a "
					    "snapshot never records: the restored guest would write "
					    "into the snapshot's disk state",
					    i, d->path);
		if (!d->readonly && d->n_backing >= SPEC_BACKING_MAX)
			return restore_fail(s, SNAPSHOT_BAD_FILE,
					    "the record's disks[%zu] %s is an overlay over %zu files "
					    "already, the most cprd records, so a restore's overlay "
					    "cannot go on it",
					    i, d->path, d->n_backing);
	}
	time_t now = time(NULL);
	struct tm tm;
	strftime(s->stamp, sizeof(s->stamp), "%Y%m%dT%H%M%S", gmtime_r(&now, &tm));
	restore_next_overlay(s);
}

static void restore_on_hash_progress(uint64_t done, uint64_t size, void *userdata) {
	struct snapshot_op *s = userdata;
	progress(s, "verify", (double)done / (double)size, "checksummed %llu of %llu bytes",
		 (unsigned long long)done, (unsigned long long)size);
}

static void restore_on_hash(int error, const char *hash, void *userdata) {
	struct snapshot_op *s = userdata;
	s->hasher = snapshot_hasher_free(s->hasher);
	if (error < 0)
		return restore_fail(s, SNAPSHOT_BAD_FILE, "cannot read %s: %s", s->file,
				    strerror(-error));
	if (!streq(hash, s->want.state_hash))
		return restore_fail(s, SNAPSHOT_BAD_FILE,
				    "%s is corrupt: its checksum is %s, its record says %s", s->file,
				    hash, s->want.state_hash);
	restore_launch(s);
}

static void restore_on_probe(struct probe *p, int error, struct probe_result *result,
			     const char *reason, void *userdata) {
	struct snapshot_op *s = userdata;
	if (error < 0)
		return restore_fail(s, SNAPSHOT_PROBE_FAILED, "%s",
				    reason ? reason : strerror(-error));
	const struct snapshot_record *w = &s->want;
	bool older = result->major < w->major || (result->major == w->major && result->minor < w->minor);
	const char *machine = probe_result_resolve_machine(result, w->machine);
	char why[512] = "";
	if (older)
		snprintf(why, sizeof(why),
			 "%s was written by QEMU %u.%u.%u; QEMU %u.%u.%u at %s is older and cannot "
			 "read it (give a QEMU of that release or newer)",
			 s->file, w->major, w->minor, w->micro, result->major, result->minor,
			 result->micro, s->binary);
	else if (!machine || !streq(machine, w->machine))
		snprintf(why, sizeof(why),
			 "%s was made for machine type %s, which QEMU %u.%u.%u at %s does not have",
			 s->file, w->machine, result->major, result->minor, result->micro, s->binary);
	probe_result_free(result);
	if (why[0])
		return restore_fail(s, SNAPSHOT_BAD_FILE, "%s", why);
	progress(s, "verify", 0.0, "checksumming %llu bytes", (unsigned long long)s->size);
	int r = snapshot_hasher_start(s->m->base, s->fd, s->size, restore_on_hash_progress,
				      restore_on_hash, s, &s->hasher);
	if (r < 0)
		restore_fail(s, SNAPSHOT_FAILED, "cannot checksum the file: %s", strerror(-r));
}

int restore_start(struct manager *m, const char *name, const struct snapshot_request *req,
		  snapshot_progress_fn pr, snapshot_done_fn done, void *userdata,
		  struct snapshot_refusal *ref, struct snapshot_op **ret) {
	char why[768];
	*ref = (struct snapshot_refusal){0};
	if (!spec_name_valid(name))
		return refuse(ref, SNAPSHOT_BAD_STATE, "%s is not a valid VM name", name);
	struct vm *vm = manager_find(m, name);
	if (vm && vm->operation != VM_OP_NONE)
		return refuse(ref, SNAPSHOT_BUSY, "%s", vm_operation_to_string(vm->operation));
	if (vm && vm_is_active(vm))
		return refuse(ref, SNAPSHOT_BAD_STATE,
			      "VM %s is %s; a running VM is never replaced by a snapshot (stop it, or "
			      "restore under another name)",
			      name, vm_state_name(vm));
	if (!vm && m->n_vms >= MANAGER_VMS_MAX)
		return refuse(ref, SNAPSHOT_FAILED, "cprd holds %d VMs already, its limit",
			      MANAGER_VMS_MAX);

	struct snapshot_op *s = op_new(m, KIND_RESTORE, name, req, pr, done, userdata);
	if (!s)
		return refuse(ref, SNAPSHOT_FAILED, "out of memory");
	if (snapshot_file_open(req->file, &s->fd, &s->size, &s->want, why, sizeof(why)) < 0) {
		op_free(s);
		return refuse(ref, SNAPSHOT_BAD_FILE, "%s", why);
	}
	const struct snapshot_record *w = &s->want;
	if (s->size != w->state_bytes) {
		refuse(ref, SNAPSHOT_BAD_FILE,
		       "%s is %s: %llu bytes, its record says %llu", req->file,
		       s->size < w->state_bytes ? "truncated" : "longer than written",
		       (unsigned long long)s->size, (unsigned long long)w->state_bytes);
		op_free(s);
		return -EINVAL;
	}
	if (vm && (!streq(vm->spec->machine, w->machine) || vm->spec->memory_mib != w->memory_mib)) {
		refuse(ref, SNAPSHOT_BAD_FILE,
		       "%s was made for machine type %s with %llu MiB; VM %s has %s with %llu MiB "
		       "(delete it, or restore under another name)",
		       req->file, w->machine, (unsigned long long)w->memory_mib, name,
		       vm->spec->machine, (unsigned long long)vm->spec->memory_mib);
		op_free(s);
		return -EINVAL;
	}
	const char *recorded = json_object_get_string(json_object_object_get(w->spec, "qemu"));
	s->binary = strdup(req->qemu ? req->qemu : vm ? vm->spec->qemu : recorded ? recorded : w->qemu);
	_cleanup_close_ int bfd = s->binary ? binary_open(s->binary, why, sizeof(why)) : -ENOMEM;
	if (bfd < 0) {
		refuse(ref, SNAPSHOT_PROBE_FAILED, "%s", s->binary ? why : "out of memory");
		op_free(s);
		return -EINVAL;
	}
	const struct probe_options po = {.user = vm ? vm_qemu_user(vm) : NULL};
	int r = probe_run(m->base, s->binary, bfd, &po, restore_on_probe, s, NULL);
	if (r < 0) {
		refuse(ref, SNAPSHOT_PROBE_FAILED, "%s", strerror(-r));
		op_free(s);
		return r;
	}
	progress(s, "preflight", -1, "restoring %s from %s (QEMU %u.%u.%u, %s, %llu bytes)", name,
		 req->file, w->major, w->minor, w->micro, w->machine, (unsigned long long)s->size);
	s->counted = true;
	m->snapshots_running++;
	*ret = s;
	return 0;
}

/* ---- both ---------------------------------------------------------------- */

static void op_deadline(evutil_socket_t fd, short what, void *userdata) {
	struct snapshot_op *s = userdata;
	if (s->kind == KIND_SNAPSHOT)
		return snap_deadline(fd, what, userdata);
	/* A restore's QEMU is bound by the start's own deadline (timeoutSec). */
}

static struct snapshot_op *op_new(struct manager *m, enum snapshot_kind kind, const char *name,
				  const struct snapshot_request *req, snapshot_progress_fn pr,
				  snapshot_done_fn done, void *userdata) {
	struct snapshot_op *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->kind = kind;
	s->m = m;
	s->fd = s->read_fd = -1;
	s->progress = pr;
	s->done = done;
	s->userdata = userdata;
	s->t0 = now_usec(CLOCK_MONOTONIC);
	s->timeout_sec = req->timeout_sec > 0 ? req->timeout_sec : SNAPSHOT_TIMEOUT_SEC_DEFAULT;
	s->name = strdup(name);
	s->file = strdup(req->file ? req->file : "");
	s->poll_timer = evtimer_new(m->base, kind == KIND_SNAPSHOT ? snap_poll : restore_poll, s);
	s->deadline = evtimer_new(m->base, op_deadline, s);
	if (!s->name || !s->file || !s->poll_timer || !s->deadline) {
		op_free(s);
		return NULL;
	}
	if (kind == KIND_SNAPSHOT)
		arm(s->deadline, s->timeout_sec * 1000);
	return s;
}

/* ---- after a restart ----------------------------------------------------- */

struct settle {
	struct manager *m;
	char *name;
	pid_t pid;
	int tries;
	struct event *timer;
};

static void settle_free(struct settle *st) {
	if (st->timer)
		event_free(st->timer);
	free(st->name);
	free(st);
}

/* The QMP channel of the same QEMU the settlement began with, or NULL when
 * the VM or that QEMU is gone. */
static struct qmp *settle_qmp(struct settle *st, struct vm **ret) {
	struct vm *vm = manager_find(st->m, st->name);
	if (!vm || !vm->qemu || vm_qemu_pid(vm->qemu) != st->pid)
		return NULL;
	*ret = vm;
	return vm_qemu_qmp(vm->qemu);
}

static void settle_poll(evutil_socket_t fd, short what, void *userdata);

static void settle_on_status(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			     void *userdata) {
	struct settle *st = userdata;
	struct vm *vm = NULL;
	const char *status = err ? NULL : status_of(ret);
	if (status && (streq(status, "setup") || streq(status, "active") ||
		       streq(status, "cancelling")) && ++st->tries < 100) {
		arm(st->timer, SNAPSHOT_POLL_MS);
		return;
	}
	q = settle_qmp(st, &vm);
	if (q && vm->operation == VM_OP_NONE) {
		clear_background_snapshot(q);
		remove_file_fdset(q);
		log_vm(LOG_INFO, st->name, "cleared the background-snapshot capability");
	}
	settle_free(st);
}

static void settle_poll(evutil_socket_t fd, short what, void *userdata) {
	struct settle *st = userdata;
	struct vm *vm = NULL;
	struct qmp *q = settle_qmp(st, &vm);
	if (!q || qmp_command(q, "query-migrate", NULL, SNAPSHOT_QMP_TIMEOUT_MS, settle_on_status,
			      st) < 0)
		settle_free(st);
}

static void settle_on_caps(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			   void *userdata) {
	struct settle *st = userdata;
	struct vm *vm = NULL;
	struct json_object *c = err ? NULL : background_snapshot_entry(ret);
	bool on = c && json_object_get_boolean(json_object_object_get(c, "state"));
	if (!on || !settle_qmp(st, &vm) || vm->operation != VM_OP_NONE)
		return settle_free(st);
	log_vm(LOG_WARNING, st->name,
	       "QEMU pid %d has background-snapshot set by a cprd that ended during a snapshot: "
	       "cancelling that snapshot (its file was never named) and clearing it",
	       (int)st->pid);
	qmp_command(q, "migrate_cancel", NULL, SNAPSHOT_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	settle_poll(-1, 0, st);
}

void snapshot_settle_all(struct manager *m) {
	for (size_t i = 0; i < m->n_vms; i++) {
		struct vm *vm = m->vms[i];
		if (!vm->qemu || vm->operation != VM_OP_NONE)
			continue;
		struct settle *st = calloc(1, sizeof(*st));
		if (!st)
			return;
		st->m = m;
		st->name = strdup(vm->name);
		st->pid = vm_qemu_pid(vm->qemu);
		st->timer = evtimer_new(m->base, settle_poll, st);
		if (!st->name || !st->timer ||
		    qmp_command(vm_qemu_qmp(vm->qemu), "query-migrate-capabilities", NULL,
				SNAPSHOT_QMP_TIMEOUT_MS, settle_on_caps, st) < 0)
			settle_free(st);
	}
}
