/* Coming back after a restart: cprd takes its fds back from systemd's fd
 * store, finds each VM's QEMU again by pid (checked against its start time,
 * so a reused pid is never mistaken for it), reconnects QMP, and settles an
 * upgrade that was in flight when the previous cprd died: committed if the
 * new QEMU (or, in place, the new binary) already has the guest, rolled back
 * otherwise. */
#include "attach.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "migration.h"
#include "mode.h"
#include "upgrade-journal.h"
#include "qmp.h"
#include "systemd.h"
#include "upgrade.h"
#include "util.h"
#include "vm.h"

#define ATTACH_QMP_TIMEOUT_MS 5000
/* A QEMU that was executing a new binary in place (cpr-exec) when cprd
 * died: how long cprd waits for it to answer from one binary or the other,
 * and how often it looks. */
#define ATTACH_EXEC_TIMEOUT_MS 30000
#define ATTACH_EXEC_POLL_MS 50

/* An upgrade found half-done, being settled. */
struct settle {
	struct vm *vm;
	struct upgrade_journal journal;
	struct vm_qemu *old, *target;
	/* A mode that executes in place (mode_ops.in_place): old is the one
	 * process, watched until it runs the guest on one binary or the other. */
	bool in_place;
	char *exec_arg;     /* the -incoming argument the new binary got */
	struct event *timer;
	uint64_t deadline;  /* CLOCK_MONOTONIC, usec */
	bool asking;        /* a QMP question to it is out */
	char killed_why[768]; /* it was killed for this; its exit ends the settlement */
};

static struct json_object *read_json(const char *path) {
	_cleanup_free_ char *text = NULL;
	if (!path || read_file(path, 1024 * 1024, &text, NULL) < 0)
		return NULL;
	struct json_object *o = json_tokener_parse(text);
	if (o && !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

static void on_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
		      void *userdata) {
	struct vm *vm = userdata;
	if (err) {
		log_vm(LOG_WARNING, vm->name, "re-attached QEMU does not answer query-status: %s", err->desc);
		return;
	}
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	/* A target still taking the guest in: QEMU resumes it by itself when
	 * the migration completes, if the source ran it, and its RESUME event
	 * may even arrive before this reply. The state the caller set stays. */
	if (streq_ptr(status, "inmigrate"))
		return;
	if (streq_ptr(status, "running"))
		vm_set_state(vm, VM_RUNNING, "re-attached after cprd restarted");
	else
		vm_set_state(vm, VM_PAUSED, "re-attached after cprd restarted; guest paused");
}

static void settle_free(struct settle *s) {
	_cleanup_free_ char *path = vm_runtime_file(s->vm, "upgrade.json");
	if (path)
		unlink(path);
	upgrade_dir_remove(s->journal.dir);
	if (s->timer)
		event_free(s->timer);
	/* No reply may reach s once it is gone. */
	struct vm_qemu *qs[] = {s->old, s->vm->qemu};
	for (size_t i = 0; i < ELEMENTSOF(qs); i++)
		if (qs[i] && vm_qemu_qmp(qs[i]))
			qmp_cancel(vm_qemu_qmp(qs[i]), s);
	vm_qemu_free(s->old);
	vm_qemu_free(s->target);
	upgrade_journal_done(&s->journal);
	free(s->exec_arg);
	s->vm->operation = VM_OP_NONE;
	free(s);
}

/* The new binary has the guest: its QEMU becomes the VM's, the old one
 * goes. In place, the one process is the VM's, now running the binary the
 * journal describes. */
static void settle_commit(struct settle *s, const char *why) {
	struct vm *vm = s->vm;
	log_vm(LOG_NOTICE, vm->name, "upgrade interrupted by a cprd restart is committed: %s", why);
	if (s->in_place) {
		struct vm_qemu *q = TAKE_PTR(s->old);
		qmp_expect_restart(vm_qemu_qmp(q), false);
		vm_adopt_qemu(vm, q);
		int r = s->journal.target ? vm_qemu_exec_done_record(q, s->journal.target) : -ENODATA;
		if (r < 0)
			log_vm_errno(LOG_WARNING, r, vm->name,
				     "cannot record which binary QEMU pid %d runs now: %m", (int)vm_qemu_pid(q));
	} else
		vm_adopt_qemu(vm, TAKE_PTR(s->target));
	vm_watch_main(vm);
	if (s->old) {
		if (vm_qemu_qmp(s->old))
			qmp_command(vm_qemu_qmp(s->old), "quit", NULL, ATTACH_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
		vm_qemu_kill(s->old, SIGTERM);
	}
	upgrade_commit_binary(vm, s->journal.binary);
	upgrade_record_settled(vm, &s->journal, "committed", why);
	/* The new QEMU may still be finishing the transfer ("inmigrate"): until
	 * its own answer or event says otherwise, the guest runs if it ran. */
	vm_set_state(vm, s->journal.was_running ? VM_RUNNING : VM_PAUSED,
		     "upgrade committed after cprd restarted");
	qmp_command(vm_qemu_qmp(vm->qemu), "query-status", NULL, ATTACH_QMP_TIMEOUT_MS, on_status, vm);
	settle_free(s);
}

static void settle_on_rollback(struct migration_rollback *r, int error, const char *status) {
	struct vm *vm = container_of(r, struct vm, settle_rollback);
	/* Without an answer, it is taken to run, as it did when cprd died. */
	vm_set_state(vm, status && !streq(status, "running") ? VM_PAUSED : VM_RUNNING,
		     "upgrade rolled back after cprd restarted");
}

/* The old QEMU keeps the guest: the target goes. */
static void settle_rollback(struct settle *s, const char *why) {
	struct vm *vm = s->vm;
	log_vm(LOG_NOTICE, vm->name, "upgrade interrupted by a cprd restart is rolled back: %s", why);
	if (s->target)
		vm_qemu_kill(s->target, SIGKILL);
	vm_unstore_fd(vm, "qmp-target");
	if (s->old) {
		/* In place: the old binary answers on; no new one will greet. */
		qmp_expect_restart(vm_qemu_qmp(s->old), false);
		vm_adopt_qemu(vm, TAKE_PTR(s->old));
		vm_watch_main(vm);
		/* The same rollback as an upgrade's; whether migrate was sent is
		 * not known, and cancelling none is harmless. */
		const struct mode_ops *mode = mode_find(s->journal.mode);
		vm->settle_rollback = (struct migration_rollback){
			.cancel = true,
			.reset_mode = vm_qemu_has_migration_modes(vm->qemu),
			.clear_ignore_shared = mode && mode->ignore_shared,
			.resume = s->journal.was_running,
			.done = settle_on_rollback,
		};
		migration_rollback_start(&vm->settle_rollback, vm_qemu_qmp(vm->qemu));
		upgrade_record_settled(vm, &s->journal, "rolled-back", why);
	} else {
		vm_set_state(vm, VM_CRASHED, "both QEMUs of an interrupted upgrade are gone");
		upgrade_record_settled(vm, &s->journal, "failed", why);
	}
	settle_free(s);
}

static void settle_on_old_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
				 void *userdata) {
	struct settle *s = userdata;
	const char *status = err ? NULL : json_object_get_string(json_object_object_get(ret, "status"));
	/* postmigrate: the old QEMU handed the guest over completely. */
	if (streq_ptr(status, "postmigrate") && s->target)
		return settle_commit(s, "the old QEMU had handed the guest over");
	settle_rollback(s, "cprd restarted before the new QEMU took over");
}

/* ---- in place (cpr-exec): one process, two binaries ----------------------
 *
 * The old QEMU was told to execute the new binary once its device state is
 * in the file; that goes on without cprd. The process may still run the
 * old binary (migrating, or back on it after a failed exec, which QEMU
 * reports as a failed migration and resumes the guest itself), run the new
 * one (still loading the state, inmigrate, or running the guest), or be
 * gone. Its command line tells the binaries apart: the new one was given
 * -incoming file:DIR/vm.state, with this upgrade's own private folder. Its
 * QMP channel may have to be made again: the process greets anew on the
 * socketpair, and the recovery monitor is bound anew by the new binary. */

static void exec_step(struct settle *s);

static void exec_arm(struct settle *s) {
	struct timeval tv = {0, ATTACH_EXEC_POLL_MS * 1000};
	evtimer_add(s->timer, &tv);
}

static void exec_on_timer(evutil_socket_t fd, short what, void *userdata) {
	exec_step(userdata);
}

static void exec_on_ready(struct vm_qemu *q, void *userdata) {
	exec_step(userdata);
}

/* The process ended before it was settled: nothing runs the guest. */
static void exec_on_exit(struct vm_qemu *q, const char *how, int status, int sig, void *userdata) {
	struct settle *s = userdata;
	struct vm *vm = s->vm;
	char why[768];
	if (s->killed_why[0])
		snprintf(why, sizeof(why), "%s", s->killed_why);
	else if (streq(how, "exited"))
		snprintf(why, sizeof(why), "QEMU pid %d exited with status %d before it ran the guest again",
			 (int)vm_qemu_pid(q), status);
	else
		snprintf(why, sizeof(why), "QEMU pid %d ended (%s%s%s) before it ran the guest again",
			 (int)vm_qemu_pid(q), how, sig ? " by " : "", sig ? signal_name(sig) : "");
	log_vm(LOG_WARNING, vm->name, "upgrade interrupted by a cprd restart failed: %s", why);
	vm_record_exit(vm, q, how, status, sig, false);
	vm_qemu_free(TAKE_PTR(s->old));
	vm_save_runtime(vm); /* no QEMU: qemu.json goes */
	vm_set_state(vm, VM_CRASHED, why);
	upgrade_record_settled(vm, &s->journal, "failed", why);
	settle_free(s);
}

static const struct vm_qemu_callbacks exec_callbacks = {
	.ready = exec_on_ready,
	.exited = exec_on_exit,
};

/* The old binary answers: it is migrating (the exec follows), or the exec
 * failed and QEMU resumed the guest on it. */
static void exec_on_migrate(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			    void *userdata) {
	struct settle *s = userdata;
	s->asking = false;
	if (err)
		return exec_arm(s); /* it executed meanwhile (-ERESTART, or the channel closed) */
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	char why[768];
	if (streq_ptr(status, "failed") || streq_ptr(status, "cancelled")) {
		const char *desc = json_object_get_string(json_object_object_get(ret, "error-desc"));
		snprintf(why, sizeof(why), "QEMU pid %d kept the guest on %s: migration %s: %s",
			 (int)vm_qemu_pid(s->old), s->journal.from_binary, status,
			 desc ? desc : "no reason given");
		return settle_rollback(s, why);
	}
	if (!status || streq(status, "none"))
		return settle_rollback(s, "cprd restarted before migrate reached QEMU");
	exec_arm(s);
}

/* The new binary answers: still loading the guest (inmigrate), or running it. */
static void exec_on_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			   void *userdata) {
	struct settle *s = userdata;
	s->asking = false;
	const char *status = err ? NULL : json_object_get_string(json_object_object_get(ret, "status"));
	if (!status || streq(status, "inmigrate"))
		return exec_arm(s);
	/* As an upgrade's verify: the guest runs on if it ran before. */
	if (s->journal.was_running && !streq(status, "running"))
		qmp_command(qmp, "cont", NULL, ATTACH_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	char why[768];
	snprintf(why, sizeof(why), "QEMU pid %d executed %s and has the guest (%s)",
		 (int)vm_qemu_pid(s->old), s->journal.binary, status);
	settle_commit(s, why);
}

/* Past the deadline: the process neither ran the guest on the new binary
 * nor answered on the old one. */
static void exec_give_up(struct settle *s, bool executed) {
	char why[768];
	if (!executed) {
		snprintf(why, sizeof(why), "QEMU pid %d did not answer within %d s on %s",
			 (int)vm_qemu_pid(s->old), ATTACH_EXEC_TIMEOUT_MS / 1000, s->journal.from_binary);
		return settle_rollback(s, why);
	}
	/* No old binary is left to go back to, and the new one does not run
	 * the guest: as an upgrade's target that hangs, it goes. */
	snprintf(s->killed_why, sizeof(s->killed_why),
		 "QEMU pid %d executed %s but did not run the guest within %d s; killed",
		 (int)vm_qemu_pid(s->old), s->journal.binary, ATTACH_EXEC_TIMEOUT_MS / 1000);
	log_vm(LOG_WARNING, s->vm->name, "%s", s->killed_why);
	vm_qemu_kill(s->old, SIGKILL); /* its exit ends the settlement */
}

/* Looks at the process again: which binary runs, and what it says. */
static void exec_step(struct settle *s) {
	if (s->asking || s->killed_why[0])
		return;
	int executed = s->exec_arg ? proc_cmdline_has(vm_qemu_pid(s->old), "-incoming", s->exec_arg) : 0;
	if (now_usec(CLOCK_MONOTONIC) >= s->deadline)
		return exec_give_up(s, executed > 0);
	if (executed < 0)
		return exec_arm(s); /* gone: its pidfd says so */
	struct qmp *qmp = vm_qemu_qmp(s->old);
	if (!qmp || qmp_get_error(qmp) < 0) {
		/* None, or the one to the old binary closed at the exec: the new
		 * binary binds the recovery monitor anew (not at once). */
		if (vm_qemu_reconnect_qmp(s->old) == 0)
			qmp_expect_restart(vm_qemu_qmp(s->old), true);
		return exec_arm(s);
	}
	if (!qmp_is_ready(qmp))
		return exec_arm(s); /* the handshake goes on; ready looks again */
	bool migrate_sent = !streq(s->journal.phase, "preflight") && !streq(s->journal.phase, "spawn-target");
	if (!executed && !migrate_sent)
		return settle_rollback(s, "cprd restarted before migrate was sent");
	int r = executed ? qmp_command(qmp, "query-status", NULL, ATTACH_QMP_TIMEOUT_MS, exec_on_status, s)
			 : qmp_command(qmp, "query-migrate", NULL, ATTACH_QMP_TIMEOUT_MS, exec_on_migrate, s);
	s->asking = r >= 0;
	if (r < 0)
		exec_arm(s);
}

static void settle_in_place(struct settle *s) {
	struct vm *vm = s->vm;
	s->in_place = true;
	if (!s->old) {
		/* Past the point of no return the upgrade had committed: the new
		 * binary ran the guest, and its process ended since. */
		const char *outcome = s->journal.resumed ? "committed" : "failed";
		log_vm(LOG_WARNING, vm->name, "upgrade interrupted by a cprd restart is %s: its QEMU ended "
		       "while cprd was down", outcome);
		vm_set_state(vm, VM_CRASHED, "its QEMU ended while cprd was down");
		vm_record_exit(vm, NULL, "unknown", 0, 0, false);
		vm_save_runtime(vm);
		upgrade_record_settled(vm, &s->journal, outcome, "its QEMU ended while cprd was down");
		return settle_free(s);
	}
	if (s->journal.dir && asprintf(&s->exec_arg, "file:%s/" UPGRADE_STATE_FILE, s->journal.dir) < 0)
		s->exec_arg = NULL;
	s->timer = evtimer_new(vm->host->base, exec_on_timer, s);
	if (!s->timer)
		return settle_rollback(s, "out of memory");
	s->deadline = now_usec(CLOCK_MONOTONIC) + ATTACH_EXEC_TIMEOUT_MS * 1000ULL;
	vm_qemu_set_callbacks(s->old, &exec_callbacks, s);
	struct qmp *qmp = vm_qemu_qmp(s->old);
	if (qmp) {
		qmp_expect_restart(qmp, true);
		/* The cprd before may have died between the new binary's greeting
		 * and its qmp_capabilities: a negotiated monitor refuses this one
		 * harmlessly, a new one needs it. */
		qmp_command(qmp, "qmp_capabilities", NULL, ATTACH_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	}
	log_vm(LOG_NOTICE, vm->name, "settling an upgrade in place (%s): is QEMU pid %d on %s or on %s?",
	       s->journal.mode, (int)vm_qemu_pid(s->old), s->journal.from_binary, s->journal.binary);
	exec_step(s);
}

/* Settles the upgrade journal tells of; takes journal. */
static void settle_upgrade(struct vm *vm, struct upgrade_journal *journal, struct vm_qemu *old,
			   int target_qmp_fd) {
	struct settle *s = calloc(1, sizeof(*s));
	if (!s) {
		safe_close(target_qmp_fd);
		return;
	}
	s->vm = vm;
	s->journal = *journal;
	*journal = (struct upgrade_journal){0};
	s->old = old;
	vm->operation = VM_OP_UPGRADE;

	const struct mode_ops *mode = mode_find(s->journal.mode);
	if (mode && mode->in_place) {
		safe_close(target_qmp_fd);
		return settle_in_place(s);
	}
	struct json_object *trec = s->journal.target;
	if (trec && vm_qemu_attach(vm, trec, target_qmp_fd, NULL, NULL, &s->target) < 0)
		s->target = NULL;
	else if (!trec)
		safe_close(target_qmp_fd);

	if (s->journal.resumed) {
		/* Past the point of no return before cprd died. */
		if (s->target)
			return settle_commit(s, "the new QEMU had resumed the guest");
		return settle_rollback(s, "the new QEMU that had resumed the guest is gone");
	}
	if (!s->old)
		return s->target ? settle_commit(s, "the old QEMU is gone")
				 : settle_rollback(s, "both QEMUs are gone");
	if (!vm_qemu_qmp(s->old))
		return settle_rollback(s, "the old QEMU's QMP channel was lost");
	qmp_command(vm_qemu_qmp(s->old), "query-status", NULL, ATTACH_QMP_TIMEOUT_MS, settle_on_old_status, s);
}

/* The fd store's copy of a per-QEMU fd of the VM (name), or -1. */
static int take_qemu_fd(struct vm *vm, const char *name) {
	char full[160];
	snprintf(full, sizeof(full), "%s.%s", vm->name, name);
	return systemd_take_fd(full);
}

/* The journal of an upgrade under way when cprd stopped: false when there
 * is none, or none to trust (a corrupt one is logged and removed). */
static bool read_journal(struct vm *vm, const char *path, struct upgrade_journal *ret) {
	_cleanup_json_ struct json_object *o = read_json(path);
	if (!o)
		return false;
	char why[256];
	int r = upgrade_journal_from_json(o, ret, why, sizeof(why));
	if (r < 0) {
		log_vm(LOG_WARNING, vm->name, "ignoring a corrupt upgrade journal %s: %s", path,
		       r == -EBADMSG ? why : strerror(-r));
		unlink(path);
	}
	return r >= 0;
}

/* The QEMU that qemu.json (rec) names, with the VM's boot facts; NULL when
 * it is gone. qmp_fd is taken. */
static struct vm_qemu *attach_qemu(struct vm *vm, struct json_object *rec, int qmp_fd) {
	struct vm_qemu *q = NULL;
	if (vm_qemu_attach(vm, rec, qmp_fd, NULL, NULL, &q) < 0) {
		log_vm(LOG_WARNING, vm->name, "its QEMU pid %d ended while cprd was down%s",
		       json_object_get_int(json_object_object_get(rec, "pid")),
		       vm->held[CUSTODY_RAM] >= 0 ? "; guest RAM is still held" : "");
		return NULL;
	}
	vm->started_usec = (uint64_t)json_object_get_int64(json_object_object_get(rec, "startedUsec"));
	const char *accel = json_object_get_string(json_object_object_get(rec, "accel"));
	vm->accel = streq_ptr(accel, "kvm") ? "kvm" : "tcg";
	return q;
}

/* The guest runs on q; ask QEMU whether it is paused. */
static void attach_running(struct vm *vm, struct vm_qemu *q) {
	vm->qemu = q;
	vm_watch_main(vm);
	vm_set_state(vm, VM_RUNNING, "re-attached after cprd restarted");
	if (vm_qemu_qmp(q))
		qmp_command(vm_qemu_qmp(q), "query-status", NULL, ATTACH_QMP_TIMEOUT_MS, on_status, vm);
}

/* qemu.json says its QEMU was starting: the cprd that started it died
 * before it saw the guest run. A guest that runs is kept; one that never
 * ran is undone, its QEMU quit, so the start can be made again instead of a
 * QEMU waiting forever on the VM's disks. */
static void on_starting_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			       void *userdata) {
	struct vm *vm = userdata;
	const char *status = err ? NULL : json_object_get_string(json_object_object_get(ret, "status"));
	vm->operation = VM_OP_NONE;
	if (streq_ptr(status, "running")) {
		vm->started_usec = now_usec(CLOCK_REALTIME);
		vm_save_runtime(vm);
		vm_set_state(vm, VM_RUNNING, "re-attached after cprd restarted; the guest it was starting runs");
		return;
	}
	log_vm(LOG_NOTICE, vm->name,
	       "QEMU pid %d never ran the guest (%s): undoing the start that cprd's exit cut short",
	       (int)vm_qemu_pid(vm->qemu), status ? status : err ? err->desc : "no QMP");
	vm_stop(vm, true, 0, NULL, NULL);
}

static void attach_starting(struct vm *vm, struct vm_qemu *q) {
	vm->qemu = q;
	vm_watch_main(vm);
	/* Busy until settled; an exit meanwhile ends as a stop would. */
	vm->operation = VM_OP_STOP;
	vm_set_state(vm, VM_STARTING, "re-attached to a QEMU cprd was starting when it stopped");
	if (!vm_qemu_qmp(q))
		return on_starting_status(NULL, NULL, NULL, vm);
	qmp_command(vm_qemu_qmp(q), "query-status", NULL, ATTACH_QMP_TIMEOUT_MS, on_starting_status, vm);
}

/* The upgrade had passed its point of no return: q, which qemu.json names,
 * is the target; the old QEMU the journal describes goes. */
static void finish_committed(struct vm *vm, struct upgrade_journal *journal, struct vm_qemu *q) {
	attach_running(vm, q);
	struct vm_qemu *old = NULL;
	const struct mode_ops *mode = mode_find(journal->mode);
	/* In place, the old QEMU's record names q's own process. */
	if (!(mode && mode->in_place) && journal->old &&
	    vm_qemu_attach(vm, journal->old, -1, NULL, NULL, &old) == 0) {
		vm_qemu_kill(old, SIGTERM);
		vm_qemu_free(old);
	}
	upgrade_commit_binary(vm, journal->binary);
	upgrade_record_settled(vm, journal, "committed", "finished after cprd restarted");
	upgrade_dir_remove(journal->dir);
	_cleanup_free_ char *path = vm_runtime_file(vm, "upgrade.json");
	if (path)
		unlink(path);
}

/* Upgrade folders that no journal names (keep, the journal's, is the
 * settlement's to remove): their cprd died between making one and writing
 * the journal. Their target, which waits for the journal, ended with it. */
static void remove_stray_upgrade_dirs(struct vm *vm, const char *keep) {
	_cleanup_free_ char *rdir = vm_runtime_dir(vm);
	DIR *d = rdir ? opendir(rdir) : NULL;
	if (!d)
		return;
	const char *keep_name = keep && strrchr(keep, '/') ? strrchr(keep, '/') + 1 : keep;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strncmp(e->d_name, "upgrade-", strlen("upgrade-")) != 0 || streq_ptr(e->d_name, keep_name))
			continue;
		_cleanup_free_ char *path = NULL;
		if (asprintf(&path, "%s/%s", rdir, e->d_name) < 0)
			break;
		log_vm(LOG_NOTICE, vm->name, "removing %s, which no upgrade journal names", path);
		upgrade_dir_remove(path);
	}
	closedir(d);
}

static void attach_vm(struct manager *m, struct vm *vm) {
	vm_restore_custody(vm);
	/* The QMP channels of the QEMU and of an upgrade's target. */
	int qmp_fd = take_qemu_fd(vm, custody_fds[CUSTODY_QMP].name);
	int target_qmp = take_qemu_fd(vm, custody_fds[CUSTODY_QMP].target_name);

	_cleanup_free_ char *qpath = vm_runtime_file(vm, "qemu.json");
	_cleanup_free_ char *upath = vm_runtime_file(vm, "upgrade.json");
	_cleanup_json_ struct json_object *rec = read_json(qpath);
	_cleanup_(upgrade_journal_done) struct upgrade_journal journal = {0};
	bool in_upgrade = upath && read_journal(vm, upath, &journal);
	remove_stray_upgrade_dirs(vm, in_upgrade ? journal.dir : NULL);

	/* During an upgrade before the point of no return, qemu.json names the
	 * old QEMU; after it, the new one. At that point cprd rewrites qemu.json
	 * first and the journal ("resumed") second, so a cprd killed in between
	 * leaves a journal that is not resumed beside a qemu.json that names the
	 * target: which QEMU qemu.json names decides, not the journal. Not in
	 * place (cpr-exec), where one pid is both: settle_in_place asks the
	 * process which binary it runs. */
	const struct mode_ops *jmode = in_upgrade ? mode_find(journal.mode) : NULL;
	bool names_target = in_upgrade && !(jmode && jmode->in_place) && rec && journal.target &&
			    json_object_get_int(json_object_object_get(rec, "pid")) ==
				    json_object_get_int(json_object_object_get(journal.target, "pid"));
	struct vm_qemu *q = rec ? attach_qemu(vm, rec, TAKE_FD(qmp_fd)) : NULL;
	safe_close(qmp_fd);

	if (names_target && q) {
		safe_close(target_qmp);
		return finish_committed(vm, &journal, q);
	}
	if (in_upgrade) {
		vm_set_state(vm, VM_RUNNING, "re-attached after cprd restarted, settling an upgrade");
		return settle_upgrade(vm, &journal, q, target_qmp);
	}
	safe_close(target_qmp);

	bool starting = rec && json_object_get_boolean(json_object_object_get(rec, "starting"));
	if (q && starting) {
		log_vm(LOG_INFO, vm->name, "re-attached to QEMU pid %d, which it was starting", (int)vm_qemu_pid(q));
		return attach_starting(vm, q);
	}
	if (q) {
		attach_running(vm, q);
		log_vm(LOG_INFO, vm->name, "re-attached to QEMU pid %d%s", (int)vm_qemu_pid(q),
		       vm_qemu_qmp(q) ? "" : " (its QMP channel was lost: only stop works)");
		vm_save_runtime(vm);
		return;
	}
	if (rec && starting) {
		/* It ended before the guest ran: nothing of the guest to keep. */
		unlink(qpath);
		vm_release_custody(vm);
		vm_set_state(vm, vm->last_exit ? VM_STOPPED : VM_DEFINED,
			     "the QEMU it was starting when cprd stopped is gone");
		return;
	}
	if (rec) {
		unlink(qpath);
		vm_set_state(vm, VM_CRASHED, "its QEMU is gone");
		vm_record_exit(vm, NULL, "unknown", 0, 0, false);
	}
}

void attach_all(struct manager *m) {
	for (size_t i = 0; i < m->n_vms; i++)
		attach_vm(m, m->vms[i]);
	systemd_release_unclaimed();
}
