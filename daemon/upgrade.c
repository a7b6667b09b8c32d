/* The upgrade state machine: preflight -> spawn-target -> transfer ->
 * resume -> verify -> retire -> commit. Until the target QEMU has resumed
 * the guest, any failure or deadline rolls back (the target is killed, the
 * old QEMU carries on as before); after that there is no way back.
 *
 * The guest's pause is measured with QEMU's own event timestamps: from the
 * old QEMU's STOP to the new QEMU's RESUME. */
#include "upgrade.h"

#include <errno.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "binary.h"
#include "cmdline.h"
#include "cpr-relay.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "metrics.h"
#include "migration.h"
#include "mode.h"
#include "upgrade-journal.h"
#include "probe.h"
#include "qemu.h"
#include "qmp.h"
#include "spec.h"
#include "util.h"
#include "vm.h"

#define UPGRADE_PHASE_TIMEOUT_MS 15000 /* each phase, within --timeout */
#define UPGRADE_POLL_MS 5              /* query-migrate / query-status polling */
#define UPGRADE_SOCKET_POLL_MS 1       /* waiting for the cpr socket: a stat() */
#define UPGRADE_QMP_TIMEOUT_MS 5000
#define UPGRADE_EXIT_WAIT_MS 2000 /* for a QEMU whose QMP channel closed */
/* The incoming sockets the target binds in the upgrade's private folder. */
#define UPGRADE_MAIN_SOCK "main.sock"
#define UPGRADE_CPR_SOCK "cpr.sock"
/* cpr-transfer: where the old QEMU connects its cpr channel, to cprd, which
 * passes it on to the target's UPGRADE_CPR_SOCK (cpr-relay.c). */
#define UPGRADE_RELAY_SOCK "cprd.sock"
/* During its pause window the two QEMUs run at this nice value (and their
 * autogroups), so that the few ms of saving and loading the guest go
 * before other upgrades' targets starting up and whatever else the host
 * runs; then 0 again. */
#define UPGRADE_PAUSE_NICE (-10)

enum upgrade_phase {
	PHASE_PREFLIGHT,
	PHASE_SPAWN,
	PHASE_TRANSFER,
	PHASE_RESUME,
	PHASE_VERIFY,
	PHASE_RETIRE,
	PHASE_COMMIT,
	PHASE_DONE,
	PHASE_ROLLBACK,
	_PHASE_MAX,
};

static const char *const phase_names[_PHASE_MAX] = {
	[PHASE_PREFLIGHT] = "preflight", [PHASE_SPAWN] = "spawn-target",
	[PHASE_TRANSFER] = "transfer",   [PHASE_RESUME] = "resume",
	[PHASE_VERIFY] = "verify",       [PHASE_RETIRE] = "retire",
	[PHASE_COMMIT] = "commit",       [PHASE_DONE] = "done",
	[PHASE_ROLLBACK] = "rollback",
};

_Static_assert(ELEMENTSOF(cprd_upgrade_modes) == _UPGRADE_MODE_MAX,
	       "cprd_upgrade_modes names every upgrade mode");

int upgrade_mode_from_string(const char *s, enum upgrade_mode *ret) {
	for (size_t i = 0; i < ELEMENTSOF(cprd_upgrade_modes); i++)
		if (streq(s, cprd_upgrade_modes[i])) {
			*ret = (enum upgrade_mode)i;
			return 0;
		}
	return -EINVAL;
}

const char *upgrade_mode_to_string(enum upgrade_mode m) {
	return m < _UPGRADE_MODE_MAX ? cprd_upgrade_modes[m] : "unknown";
}

struct upgrade {
	struct manager *m;
	struct vm *vm;
	char *binary;
	enum upgrade_mode asked;    /* as the caller asked: auto may fall back */
	enum upgrade_mode mode;     /* the mode of the attempt under way */
	const struct mode_ops *ops; /* the mode chosen at preflight */
	struct mode_guest guest;    /* what the modes must know of the guest */
	/* Every attempt that got past preflight, oldest first: auto retries a
	 * rolled-back cpr-transfer with local-migrate once. */
	struct json_object *attempts;
	int timeout_sec;
	bool dry_run;

	enum upgrade_phase phase;
	enum upgrade_phase failed_phase;
	char *reason;       /* why it failed */
	char journal_error[1024]; /* why upgrade.json could not be written */
	enum upgrade_refusal refusal; /* preflight said no: nothing was touched */

	struct probe_result *probe; /* of the new binary */
	double probe_ms;            /* preflight's wait for it */
	struct vm_qemu *old, *target;
	pid_t old_pid, target_pid;
	char *from_version, *from_binary;
	bool was_running;
	bool migrate_sent;
	bool old_ignore_shared; /* x-ignore-shared was set on the old QEMU */
	bool target_resumed; /* the point of no return */
	bool old_gone;
	bool source_done;    /* the old QEMU reported completed */
	/* A mode that spawns nothing (ops->in_place): the binary cprd checked,
	 * held open so that the path QEMU execs cannot be swapped, and whether
	 * the process greeted again from the new binary. */
	int exec_fd;
	bool exec_seen;

	char *dir, *main_path, *cpr_path;
	uint64_t start_mono, start_real, probe_mono;
	int64_t stop_ts, resume_ts; /* QMP event times, usec */
	struct event *phase_timer, *total_timer, *poll_timer;

	upgrade_progress_fn progress;
	upgrade_done_fn done;
	void *userdata;
	struct migration_rollback rollback;
	struct hold *held; /* the test hook's pending delay */
	bool counted;      /* in manager->upgrades_running */
	/* The pause window (migrate sent until the guest runs again) needs a
	 * slot of m->pause_slots; slot_ev carries a grant to the event loop. */
	struct pause_slot_waiter slot;
	unsigned pause_limit;
	struct event *slot_ev;
	/* cpr-transfer: the cpr channel through cprd. The old QEMU waits for
	 * its hang-up before it stops the guest, so the pause slot is taken
	 * once the target is ready, not when migrate is sent. */
	struct cpr_relay *relay;
	char *relay_path;
	bool relay_passed; /* the target took the cpr state and hung up */
	bool boosted; /* its QEMUs run at UPGRADE_PAUSE_NICE */
};

static void upgrade_fail(struct upgrade *u, const char *fmt, ...) _printf_(2, 3);
static void arm(struct event *ev, int ms);

/* A test hook, read from the environment before each phase: with
 * CPRD_TEST_HOLD_PHASE=transfer and CPRD_TEST_HOLD_MS=3000, cprd waits 3 s
 * before starting that phase (spawn-target, transfer, retire), so the fault
 * tests can kill a process in a known phase; "resume" holds after migrate
 * was sent, before cprd first asks how the transfer goes (a QEMU that
 * executes in place carries on by itself meanwhile). A comma-separated
 * list holds before each phase named. Unset in production; it only ever
 * delays. */
struct hold {
	struct upgrade *u;
	void (*fn)(struct upgrade *u);
	struct event *ev;
};

static void on_hold(evutil_socket_t fd, short what, void *userdata) {
	struct hold *h = userdata;
	struct upgrade *u = h->u;
	void (*fn)(struct upgrade *) = h->fn;
	event_free(h->ev);
	u->held = NULL;
	free(h);
	if (u->phase != PHASE_ROLLBACK && u->phase != PHASE_DONE)
		fn(u);
}

static bool hold_wanted(const char *list, const char *phase) {
	size_t n = strlen(phase);
	while (list && *list) {
		size_t len = strcspn(list, ",");
		if (len == n && strncmp(list, phase, n) == 0)
			return true;
		list += len + (list[len] == ',');
	}
	return false;
}

static void upgrade_next(struct upgrade *u, const char *phase, void (*fn)(struct upgrade *u)) {
	const char *want = getenv("CPRD_TEST_HOLD_PHASE");
	const char *ms = getenv("CPRD_TEST_HOLD_MS");
	if (!hold_wanted(want, phase) || u->held)
		return fn(u);
	struct hold *h = calloc(1, sizeof(*h));
	if (!h)
		return fn(u);
	int delay = ms ? atoi(ms) : 2000;
	log_vm(LOG_NOTICE, u->vm->name, "test hook: holding %d ms before %s", delay, phase);
	h->u = u;
	h->fn = fn;
	h->ev = evtimer_new(u->m->base, on_hold, h);
	u->held = h;
	arm(h->ev, delay);
}
static void upgrade_enter(struct upgrade *u, enum upgrade_phase p, const char *fmt, ...) _printf_(3, 4);
static void upgrade_finish(struct upgrade *u);
static void upgrade_spawn(struct upgrade *u);
static void upgrade_resumed(struct upgrade *u);

static void upgrade_free(struct upgrade *u) {
	if (!u)
		return;
	/* No QMP reply may reach us once we are gone. */
	struct vm_qemu *qs[] = {u->old, u->target, u->vm->qemu};
	for (size_t i = 0; i < ELEMENTSOF(qs); i++)
		if (qs[i] && vm_qemu_qmp(qs[i]))
			qmp_cancel(vm_qemu_qmp(qs[i]), u);
	migration_rollback_cancel(&u->rollback);
	cpr_relay_free(u->relay);
	/* Every end gives the slot back, or leaves the queue. */
	pause_slots_leave(&u->m->pause_slots, &u->slot);
	if (u->slot_ev)
		event_free(u->slot_ev);
	if (u->held) {
		event_free(u->held->ev);
		free(u->held);
	}
	if (u->phase_timer)
		event_free(u->phase_timer);
	if (u->total_timer)
		event_free(u->total_timer);
	if (u->poll_timer)
		event_free(u->poll_timer);
	if (u->target)
		vm_qemu_free(u->target);
	json_object_put(u->attempts);
	safe_close(u->exec_fd);
	upgrade_dir_remove(u->dir);
	probe_result_free(u->probe);
	free(u->binary);
	free(u->reason);
	free(u->from_version);
	free(u->from_binary);
	free(u->dir);
	free(u->main_path);
	free(u->cpr_path);
	free(u->relay_path);
	free(u);
}

void upgrade_dir_remove(const char *dir) {
	if (!dir)
		return;
	static const char *const files[] = {UPGRADE_MAIN_SOCK, UPGRADE_CPR_SOCK, UPGRADE_RELAY_SOCK,
					     UPGRADE_STATE_FILE};
	for (size_t i = 0; i < ELEMENTSOF(files); i++) {
		_cleanup_free_ char *path = NULL;
		if (asprintf(&path, "%s/%s", dir, files[i]) >= 0)
			unlink(path);
	}
	rmdir(dir);
}

static double ms_since(uint64_t start_mono) {
	return (double)(now_usec(CLOCK_MONOTONIC) - start_mono) / 1000.0;
}

static void arm(struct event *ev, int ms) {
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(ev, &tv);
}

static void upgrade_enter(struct upgrade *u, enum upgrade_phase p, const char *fmt, ...) {
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	u->phase = p;
	log_vm_phase(LOG_INFO, 0, u->vm->name, phase_names[p], "upgrade %s: %s", phase_names[p], msg);
	if (u->progress)
		u->progress(u, phase_names[p], msg, u->userdata);
	if (p != PHASE_DONE && p != PHASE_ROLLBACK)
		arm(u->phase_timer, UPGRADE_PHASE_TIMEOUT_MS);
}

/* ---- priorities ---------------------------------------------------------- */

/* Only where cprd may raise a priority: without CAP_SYS_NICE (not in
 * cprd.service's bounding set) the QEMUs keep theirs. */
static bool priority_settable(void) {
	static int may = -1;
	if (may < 0)
		may = may_raise_priority();
	return may;
}

static void set_nice(struct upgrade *u, pid_t pid, int nice) {
	int r = pid > 0 ? proc_set_nice(pid, nice) : 0;
	if (r < 0 && r != -ESRCH && r != -ENOENT) /* not if it is gone */
		log_vm_errno(LOG_WARNING, r, u->vm->name, "cannot give QEMU pid %d nice %d: %m", (int)pid, nice);
}

/* The pause window starts: both QEMUs before anything else. */
static void upgrade_priority_boost(struct upgrade *u) {
	if (u->boosted || !priority_settable())
		return;
	u->boosted = true;
	set_nice(u, u->old_pid, UPGRADE_PAUSE_NICE);
	if (u->target_pid != u->old_pid)
		set_nice(u, u->target_pid, UPGRADE_PAUSE_NICE);
}

/* The guest runs again, on either QEMU: the guest's priority. */
static void upgrade_priority_back(struct upgrade *u) {
	if (!u->boosted)
		return;
	u->boosted = false;
	if (u->old && !u->old_gone)
		set_nice(u, u->old_pid, 0);
	if (u->target_pid != u->old_pid && (u->target || u->target_resumed))
		set_nice(u, u->target_pid, 0);
}

/* ---- the result ---------------------------------------------------------- */

/* What an upgrade's result (UpgradeResult) and its history record
 * (UpgradeRecord) say, taken from a running upgrade or, after a restart,
 * from its journal. */
struct account {
	const char *time; /* RFC 3339 */
	const char *outcome, *mode;
	const char *from_binary, *to_binary, *from_version, *to_version;
	int from_pid, to_pid;
	double pause_ms; /* < 0: not measured */
	double total_ms;
	const char *failed_phase, *reason; /* NULL: not said */
	struct json_object *attempts;      /* borrowed; NULL: not said */
};

static struct json_object *json_string_or_null(const char *s) {
	return s ? json_object_new_string(s) : NULL;
}

/* The fields the result and the record share. */
static struct json_object *account_outcome_json(const struct account *a) {
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "outcome", json_object_new_string(a->outcome));
	json_object_object_add(o, "mode", json_string_or_null(a->mode));
	json_object_object_add(o, "fromVersion", json_string_or_null(a->from_version));
	json_object_object_add(o, "toVersion", json_string_or_null(a->to_version));
	if (a->pause_ms >= 0)
		json_object_object_add(o, "pauseMs", json_new_fixed3(a->pause_ms));
	json_object_object_add(o, "totalMs", json_new_fixed3(a->total_ms));
	if (a->failed_phase)
		json_object_object_add(o, "failedPhase", json_object_new_string(a->failed_phase));
	if (a->reason)
		json_object_object_add(o, "reason", json_object_new_string(a->reason));
	if (a->attempts)
		json_object_object_add(o, "attempts", json_object_get(a->attempts));
	return o;
}

/* Appends the account to the VM's upgrade history (and saves). */
static void account_record(struct vm *vm, const struct account *a) {
	struct json_object *h = account_outcome_json(a);
	json_object_object_add(h, "time", json_string_or_null(a->time));
	json_object_object_add(h, "fromBinary", json_string_or_null(a->from_binary));
	json_object_object_add(h, "toBinary", json_string_or_null(a->to_binary));
	json_object_object_add(h, "fromPid", json_object_new_int(a->from_pid));
	json_object_object_add(h, "toPid", json_object_new_int(a->to_pid));
	vm_add_history(vm, h);
}

/* The account of u as it ends with outcome; to_version and time are the
 * caller's buffers. */
static struct account upgrade_account(struct upgrade *u, const char *outcome, char *to_version,
				      size_t to_version_size, char *time) {
	to_version[0] = '\0';
	if (u->probe)
		snprintf(to_version, to_version_size, "%u.%u.%u", u->probe->major, u->probe->minor,
			 u->probe->micro);
	format_rfc3339(u->start_real, time);
	bool failed = streq(outcome, "rolled-back") || streq(outcome, "failed");
	return (struct account){
		.time = time,
		.outcome = outcome,
		.mode = upgrade_mode_to_string(u->mode),
		.from_binary = u->from_binary ? u->from_binary : "",
		.to_binary = u->binary,
		.from_version = u->from_version ? u->from_version : "",
		.to_version = to_version,
		.from_pid = u->old_pid,
		.to_pid = u->target_pid,
		.pause_ms = u->stop_ts > 0 && u->resume_ts > u->stop_ts
				    ? (double)(u->resume_ts - u->stop_ts) / 1000.0
				    : -1,
		.total_ms = ms_since(u->start_mono),
		.failed_phase = failed ? phase_names[u->failed_phase] : NULL,
		.reason = failed ? (u->reason ? u->reason : "") : NULL,
		.attempts = u->attempts,
	};
}

/* Appends the attempt under way, ending with outcome, to u->attempts. */
static void upgrade_add_attempt(struct upgrade *u, const char *outcome) {
	if (!u->attempts && !(u->attempts = json_object_new_array()))
		return;
	bool failed = !streq(outcome, "committed");
	struct json_object *a = json_object_new_object();
	json_object_object_add(a, "mode", json_object_new_string(u->ops->name));
	json_object_object_add(a, "outcome", json_object_new_string(outcome));
	json_object_object_add(a, "phase",
			       json_object_new_string(phase_names[failed ? u->failed_phase : PHASE_COMMIT]));
	json_object_object_add(a, "reason", failed ? json_object_new_string(u->reason ? u->reason : "") : NULL);
	json_object_array_add(u->attempts, a);
}

static struct json_object *upgrade_result(struct upgrade *u, const char *outcome) {
	char v[64], ts[32];
	struct account a = upgrade_account(u, outcome, v, sizeof(v), ts);
	struct json_object *r = account_outcome_json(&a);
	json_object_object_add(r, "vm", json_object_new_string(u->vm->name));
	if (u->vm->qemu)
		json_object_object_add(r, "pid", json_object_new_int(vm_qemu_pid(u->vm->qemu)));
	/* The pause window on the wall clock (QMP STOP and RESUME), so that a
	 * caller can see how many guests were paused at once. */
	if (u->stop_ts > 0 && u->resume_ts > u->stop_ts) {
		json_object_object_add(r, "pausedAtUs", json_object_new_int64(u->stop_ts));
		json_object_object_add(r, "resumedAtUs", json_object_new_int64(u->resume_ts));
	}
	/* Whether preflight waited for QEMU to be run, or the probe cache
	 * answered (outdated.c probes a binary as soon as it changes). */
	if (u->probe) {
		json_object_object_add(r, "probeCached", json_object_new_boolean(u->probe->cached));
		json_object_object_add(r, "probeMs", json_new_fixed3(u->probe_ms));
	}
	/* A dry run's plan, a refusal's reason, a trouble after commit. */
	if (u->reason && !json_object_object_get_ex(r, "reason", NULL))
		json_object_object_add(r, "reason", json_object_new_string(u->reason));
	return r;
}

static void upgrade_record(struct upgrade *u, const char *outcome) {
	char v[64], ts[32];
	struct account a = upgrade_account(u, outcome, v, sizeof(v), ts);
	account_record(u->vm, &a);
}

/* Into cprd's metrics (metrics.prom): by mode and outcome, with its pause
 * and how long it took. */
static void upgrade_count(struct upgrade *u, const char *outcome) {
	char v[64], ts[32];
	struct account a = upgrade_account(u, outcome, v, sizeof(v), ts);
	metrics_count_upgrade(&u->m->metrics, a.mode, outcome, a.pause_ms < 0 ? -1 : a.pause_ms / 1e3,
			      a.total_ms / 1e3);
}

void upgrade_record_settled(struct vm *vm, const struct upgrade_journal *j, const char *outcome,
			    const char *reason) {
	/* The cprd that ran the upgrade records it before it removes the
	 * journal; killed in between, it leaves both. */
	const char *to_version = json_object_get_string(json_object_object_get(j->target, "version"));
	int from_pid = json_object_get_int(json_object_object_get(j->old, "pid"));
	int to_pid = json_object_get_int(json_object_object_get(j->target, "pid"));
	const struct mode_ops *mode = mode_find(j->mode);
	/* In place there is one process; past the point of no return the
	 * journal keeps only its new record. */
	if (!from_pid && mode && mode->in_place)
		from_pid = to_pid;
	size_t n = json_object_array_length(vm->history);
	struct json_object *last = n ? json_object_array_get_idx(vm->history, n - 1) : NULL;
	if (last && streq_ptr(json_object_get_string(json_object_object_get(last, "time")), j->time) &&
	    json_object_get_int(json_object_object_get(last, "fromPid")) == from_pid) {
		log_vm(LOG_INFO, vm->name, "the upgrade of %s is in the history already", j->time);
		return;
	}
	struct account a = {
		.time = j->time,
		.outcome = outcome,
		.mode = j->mode,
		.from_binary = j->from_binary,
		.to_binary = j->binary,
		.from_version = j->from_version,
		.to_version = to_version ? to_version : "",
		.from_pid = from_pid,
		.to_pid = to_pid,
		.pause_ms = -1,
		.total_ms = 0,
		.failed_phase = streq(outcome, "committed") ? NULL : j->phase,
		.reason = reason,
	};
	account_record(vm, &a);
}

/* ---- the journal a restarted cprd reads (see attach.c) -------------------- */

/* Returns 0, or a negative errno with the reason in u->journal_error:
 * before the point of no return the caller gives up (a restarted cprd
 * could not settle an upgrade it does not know of), after it there is no
 * way back and the failure is only logged. */
static int upgrade_journal(struct upgrade *u) {
	_cleanup_free_ char *path = vm_runtime_file(u->vm, "upgrade.json");
	if (!path)
		return -ENOMEM;
	if (u->phase == PHASE_DONE) {
		unlink(path);
		return 0;
	}
	char ts[32];
	format_rfc3339(u->start_real, ts);
	struct vm_qemu *target = u->target ? u->target : (u->target_resumed ? u->vm->qemu : NULL);
	_cleanup_json_ struct json_object *old_rec = u->old ? vm_qemu_record(u->old) : NULL;
	_cleanup_json_ struct json_object *target_rec = target ? vm_qemu_record(target) : NULL;
	/* In place, the target is the same process once it executed the new
	 * binary: a restarted cprd that finds it so records what it runs. */
	if (!target_rec && u->ops && u->ops->in_place && u->old && u->probe)
		target_rec = vm_qemu_exec_record(u->old, u->binary, u->probe);
	const struct upgrade_journal j = {
		.time = ts,
		.phase = (char *)phase_names[u->phase],
		.mode = (char *)upgrade_mode_to_string(u->mode),
		.binary = u->binary,
		.from_binary = u->from_binary,
		.from_version = u->from_version,
		.dir = u->dir,
		.was_running = u->was_running,
		.resumed = u->target_resumed,
		.start_mono = u->start_mono,
		.old = old_rec,
		.target = target_rec,
	};
	_cleanup_json_ struct json_object *o = upgrade_journal_to_json(&j);
	int r = write_json_runtime(path, o);
	if (r < 0) {
		snprintf(u->journal_error, sizeof(u->journal_error), "cannot write the upgrade journal %s: %s",
			 path, strerror(-r));
		log_vm(LOG_ERR, u->vm->name, "%s", u->journal_error);
	}
	return r;
}

/* ---- ending -------------------------------------------------------------- */

static void upgrade_finish(struct upgrade *u) {
	struct vm *vm = u->vm;
	const char *outcome;

	evtimer_del(u->phase_timer);
	evtimer_del(u->total_timer);
	evtimer_del(u->poll_timer);
	upgrade_priority_back(u);

	if (u->refusal != UPGRADE_NOT_REFUSED)
		outcome = "refused";
	else if (u->target_resumed)
		outcome = "committed";
	else if (u->old_gone)
		outcome = "failed"; /* the only QEMU died: nothing to roll back to */
	else
		outcome = "rolled-back";

	/* After a rollback the old QEMU is the VM's again, with its callbacks. */
	if (u->refusal == UPGRADE_NOT_REFUSED && !u->target_resumed && !u->old_gone && vm->qemu)
		vm_watch_main(vm);
	if (u->refusal == UPGRADE_NOT_REFUSED && u->ops)
		upgrade_add_attempt(u, outcome);
	if (u->refusal == UPGRADE_NOT_REFUSED) {
		/* The history first, then the private folder, the journal last: a
		 * cprd killed in between settles the journal again after its
		 * restart (upgrade_record_settled adds no second record), and
		 * nothing is left that no journal names. */
		upgrade_record(u, outcome);
		upgrade_count(u, outcome);
		upgrade_dir_remove(u->dir);
		enum upgrade_phase was = u->phase;
		u->phase = PHASE_DONE;
		upgrade_journal(u);
		u->phase = was;
		vm->operation = VM_OP_NONE;
		if (u->counted)
			u->m->upgrades_running--;
		u->counted = false;
		char msg[256];
		snprintf(msg, sizeof(msg), "upgrade %s (%s)", outcome, upgrade_mode_to_string(u->mode));
		manager_emit(u->m, vm, "upgrade", msg);
	} else if (vm->operation == VM_OP_UPGRADE_PREFLIGHT)
		vm->operation = VM_OP_NONE;

	struct json_object *result = upgrade_result(u, outcome);
	log_vm(streq(outcome, "committed") || streq(outcome, "dry-run") ? LOG_INFO : LOG_WARNING,
	       vm->name, "upgrade %s: %s", outcome, json_object_to_json_string(result));
	u->done(u, result, u->userdata);
	upgrade_free(u);
}

/* The old QEMU's QMP channel closed: it is probably dying, and its pidfd
 * has not said so yet. Its exit ends the upgrade as failed (old_exited);
 * if it does not come, the deadline ends the rollback. */
static void rollback_await_exit(struct upgrade *u) {
	log_vm(LOG_WARNING, u->vm->name, "rollback: the old QEMU's QMP channel is closed; waiting for its exit");
	arm(u->phase_timer, UPGRADE_EXIT_WAIT_MS);
}

static void preflight_on_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
				void *userdata);

/* auto only: an attempt rolled back cleanly (the guest is on the old QEMU
 * as before), and another mode can do this pair. Tries it within the same
 * call, from the blocker check of preflight on. */
static void upgrade_retry(struct upgrade *u, const struct mode_ops *next) {
	char was[1024];
	snprintf(was, sizeof(was), "%s rolled back in %s (%s)", u->ops->name,
		 phase_names[u->failed_phase], u->reason ? u->reason : "no reason given");
	upgrade_add_attempt(u, "rolled-back");
	log_vm(LOG_WARNING, u->vm->name, "upgrade: %s; auto tries %s", was, next->name);
	/* Killed by the rollback; it is reaped through its pidfd. */
	vm_qemu_free(u->target);
	u->target = NULL;
	u->target_pid = 0;
	upgrade_dir_remove(u->dir);
	u->dir = mfree(u->dir);
	u->main_path = mfree(u->main_path);
	u->cpr_path = mfree(u->cpr_path);
	u->relay_path = mfree(u->relay_path);
	cpr_relay_free(u->relay);
	u->relay = NULL;
	u->relay_passed = false;
	u->reason = mfree(u->reason);
	u->migrate_sent = u->source_done = u->old_ignore_shared = false;
	u->stop_ts = u->resume_ts = 0;
	u->ops = next;
	(void)upgrade_mode_from_string(next->name, &u->mode);
	upgrade_enter(u, PHASE_PREFLIGHT, "%s; trying %s", was, next->name);
	if (qmp_command(vm_qemu_qmp(u->old), "query-status", NULL, UPGRADE_QMP_TIMEOUT_MS,
			preflight_on_status, u) < 0)
		upgrade_fail(u, "the old QEMU's QMP channel is closed");
}

static void upgrade_on_rollback(struct migration_rollback *r, int error, const char *status) {
	struct upgrade *u = container_of(r, struct upgrade, rollback);
	if (error == -EPIPE)
		return rollback_await_exit(u);
	/* The old QEMU runs the guest again (or it stays paused as it was). */
	pause_slots_leave(&u->m->pause_slots, &u->slot);
	upgrade_priority_back(u);
	bool as_before = error == 0 && streq_ptr(status, u->was_running ? "running" : "paused");
	/* Past --timeout the caller has waited long enough: no second try. */
	bool in_time = evtimer_pending(u->total_timer, NULL);
	if (as_before && in_time && u->asked == UPGRADE_MODE_AUTO && !u->attempts && u->old) {
		const struct mode_ops *next =
			mode_fallback(u->ops, &u->guest, vm_qemu_probe(u->old), u->from_version, u->probe);
		if (next)
			return upgrade_retry(u, next);
	}
	upgrade_finish(u);
}

/* In place, whether the process executed the new binary: it greeted
 * from it, or its command line is the one cprd gave for the exec. */
static bool upgrade_exec_happened(struct upgrade *u) {
	if (!u->ops || !u->ops->in_place || !u->old || !u->migrate_sent)
		return false;
	if (u->exec_seen)
		return true;
	_cleanup_free_ char *arg = NULL;
	return u->main_path && asprintf(&arg, "file:%s", u->main_path) >= 0 &&
	       proc_cmdline_has(u->old_pid, "-incoming", arg) > 0;
}

/* In place, past the exec, before the new binary ran the guest (it hangs,
 * or starts too slowly for the deadline): no old binary is left to go
 * back to, and a process that does not run the guest is no QEMU of the
 * VM's. Its exit ends the upgrade as failed (old_exited). */
static void upgrade_exec_abandon(struct upgrade *u) {
	char *why = NULL;
	if (asprintf(&why, "%s; QEMU pid %d had executed %s, which did not run the guest, and was killed",
		     u->reason ? u->reason : "failed", (int)u->old_pid, u->binary) >= 0) {
		free(u->reason);
		u->reason = why;
	}
	upgrade_enter(u, PHASE_ROLLBACK, "%s", u->reason ? u->reason : "failed");
	vm_qemu_kill(u->old, SIGKILL);
	arm(u->phase_timer, UPGRADE_EXIT_WAIT_MS);
}

/* Puts the guest back on the old QEMU as it was. */
static void upgrade_rollback(struct upgrade *u) {
	struct vm *vm = u->vm;
	if (upgrade_exec_happened(u))
		return upgrade_exec_abandon(u);
	upgrade_enter(u, PHASE_ROLLBACK, "%s; keeping the guest on QEMU %s (pid %d)",
		      u->reason ? u->reason : "failed", u->from_version, (int)u->old_pid);
	if (u->target) {
		vm_qemu_kill(u->target, SIGKILL);
		/* It is reaped through its pidfd; we drop our interest now. */
		vm_qemu_set_callbacks(u->target, &(struct vm_qemu_callbacks){0}, NULL);
	}
	/* The old QEMU sees the cpr channel hang up, as it would if the target
	 * died: it then fails to connect the main channel and carries on. */
	cpr_relay_free(u->relay);
	u->relay = NULL;
	if (u->old_gone) {
		vm_set_state(vm, VM_CRASHED, "the old QEMU died during the upgrade");
		return upgrade_finish(u);
	}
	/* The exec failed or never came: the old binary answers on. */
	if (u->ops && u->ops->in_place && u->old)
		qmp_expect_restart(vm_qemu_qmp(u->old), false);
	/* The old QEMU keeps the upgrade's callbacks until the rollback is
	 * over, so its death meanwhile ends the upgrade as failed. */
	u->rollback = (struct migration_rollback){
		.cancel = u->migrate_sent,
		.reset_mode = vm_qemu_has_migration_modes(u->old),
		/* Set before migrate is sent, so a failure between the two must
		 * clear it too. */
		.clear_ignore_shared = u->old_ignore_shared,
		.resume = u->was_running,
		.done = upgrade_on_rollback,
	};
	if (migration_rollback_start(&u->rollback, u->old ? vm_qemu_qmp(u->old) : NULL) < 0)
		rollback_await_exit(u);
}

static void upgrade_fail(struct upgrade *u, const char *fmt, ...) {
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (u->phase == PHASE_ROLLBACK || u->phase == PHASE_DONE)
		return;
	if (!u->reason)
		u->reason = strdup(msg);
	u->failed_phase = u->phase;
	evtimer_del(u->poll_timer);
	if (u->target_resumed) {
		/* Past the point of no return: report it, keep the new QEMU. */
		log_vm(LOG_ERR, u->vm->name, "upgrade %s after the guest resumed on the new QEMU: %s",
		       phase_names[u->phase], msg);
		return;
	}
	if (u->phase == PHASE_PREFLIGHT) {
		upgrade_finish(u);
		return;
	}
	upgrade_rollback(u);
}

static void upgrade_refuse(struct upgrade *u, enum upgrade_refusal why, const char *fmt, ...)
	_printf_(3, 4);
static void upgrade_refuse(struct upgrade *u, enum upgrade_refusal why, const char *fmt, ...) {
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (u->attempts) {
		/* A retry's preflight: an attempt already ran, so this is no
		 * refusal but the end of a rolled-back upgrade. */
		upgrade_fail(u, "%s", msg);
		return;
	}
	u->refusal = why;
	free(u->reason);
	u->reason = strdup(msg);
	u->failed_phase = PHASE_PREFLIGHT;
	upgrade_finish(u);
}

/* ---- deadlines ----------------------------------------------------------- */

static void on_phase_timeout(evutil_socket_t fd, short what, void *userdata) {
	struct upgrade *u = userdata;
	if (u->phase == PHASE_ROLLBACK)
		return upgrade_finish(u); /* as far as a rollback can get */
	if (u->phase == PHASE_RETIRE) {
		log_vm(LOG_WARNING, u->vm->name, "old QEMU pid %d did not quit; killing it", (int)u->old_pid);
		if (u->old)
			vm_qemu_kill(u->old, SIGKILL);
		arm(u->phase_timer, UPGRADE_PHASE_TIMEOUT_MS);
		return;
	}
	upgrade_fail(u, "%s did not finish within %d s", phase_names[u->phase],
		     UPGRADE_PHASE_TIMEOUT_MS / 1000);
}

static void on_total_timeout(evutil_socket_t fd, short what, void *userdata) {
	struct upgrade *u = userdata;
	if (!u->target_resumed)
		upgrade_fail(u, "the upgrade did not finish within --timeout %d s", u->timeout_sec);
}

/* ---- retire and commit --------------------------------------------------- */

void upgrade_commit_binary(struct vm *vm, const char *binary) {
	if (!binary || streq(vm->spec->qemu, binary))
		return;
	char *b = strdup(binary);
	if (b) {
		free(vm->spec->qemu);
		vm->spec->qemu = b;
		vm_save(vm);
	}
}

static void upgrade_commit(struct upgrade *u) {
	upgrade_commit_binary(u->vm, u->binary);
	upgrade_enter(u, PHASE_COMMIT, "guest runs on QEMU %u.%u.%u pid %d", u->probe->major,
		      u->probe->minor, u->probe->micro, (int)u->target_pid);
	u->phase = PHASE_DONE;
	upgrade_finish(u);
}

static void old_exited(struct vm_qemu *q, const char *how, int status, int sig, void *userdata) {
	struct upgrade *u = userdata;
	log_vm(LOG_INFO, u->vm->name, "old QEMU pid %d ended (%s)", (int)u->old_pid, how);
	u->old_gone = true;
	/* Before the point of no return it is still the VM's QEMU: the VM
	 * must not keep a pointer to it once it is freed. */
	if (u->vm->qemu == u->old)
		vm_adopt_qemu(u->vm, NULL);
	vm_qemu_free(u->old);
	u->old = NULL;
	if (u->phase == PHASE_RETIRE)
		return upgrade_commit(u);
	if (u->phase == PHASE_ROLLBACK) {
		vm_set_state(u->vm, VM_CRASHED, "the old QEMU died during the rollback");
		return upgrade_finish(u);
	}
	if (!u->target_resumed)
		/* The source died before the target took over: nothing is left
		 * to roll back to. The target cannot finish either. */
		upgrade_fail(u, "the old QEMU pid %d ended (%s) during %s", (int)u->old_pid, how,
			     phase_names[u->phase]);
}

static void target_event(struct vm_qemu *q, const char *name, struct json_object *data, int64_t ts,
			 void *userdata);

static void old_event(struct vm_qemu *q, const char *name, struct json_object *data, int64_t ts,
		      void *userdata) {
	struct upgrade *u = userdata;
	if (streq(name, "STOP") && u->migrate_sent && u->stop_ts == 0)
		u->stop_ts = ts;
	if (u->exec_seen) /* the same process runs the new binary: it is the target */
		target_event(q, name, data, ts, userdata);
}

/* A mode that spawns nothing: the process greeted again on its QMP channel
 * and negotiated, so it runs the new binary now, which loads the guest. */
static void old_ready(struct vm_qemu *q, void *userdata) {
	struct upgrade *u = userdata;
	if (!u->ops->in_place || u->phase != PHASE_TRANSFER || u->exec_seen)
		return;
	u->exec_seen = true;
	u->source_done = true; /* the old binary's part is over */
	upgrade_enter(u, PHASE_RESUME, "QEMU pid %d executed %s; waiting for it to run the guest",
		      (int)u->old_pid, u->binary);
	arm(u->poll_timer, 0);
}

static const struct vm_qemu_callbacks old_callbacks = {
	.ready = old_ready,
	.event = old_event,
	.exited = old_exited,
};

static void upgrade_retire(struct upgrade *u) {
	if (u->ops->in_place)
		return upgrade_commit(u); /* the old binary's process is the new one's */
	upgrade_enter(u, PHASE_RETIRE, "quitting the old QEMU pid %d", (int)u->old_pid);
	if (!u->old)
		return upgrade_commit(u);
	if (qmp_command(vm_qemu_qmp(u->old), "quit", NULL, UPGRADE_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL) < 0)
		vm_qemu_kill(u->old, SIGTERM);
}

static void verify_on_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			     void *userdata) {
	struct upgrade *u = userdata;
	if (err) {
		upgrade_fail(u, "the new QEMU does not answer query-status: %s", err->desc);
		return upgrade_next(u, "retire", upgrade_retire); /* no way back */
	}
	if (u->ops->ignore_shared)
		/* Leave the new QEMU as a fresh one would be: a later cpr-transfer
		 * from it must not carry x-ignore-shared. */
		qmp_command(qmp, "migrate-set-capabilities", migration_caps_ignore_shared(false),
			    UPGRADE_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	if (u->was_running && !streq_ptr(status, "running")) {
		log_vm(LOG_WARNING, u->vm->name, "new QEMU reports %s; resuming the guest", status);
		qmp_command(qmp, "cont", NULL, UPGRADE_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	}
	upgrade_next(u, "retire", upgrade_retire);
}

static void target_exited(struct vm_qemu *q, const char *how, int status, int sig, void *userdata);
static void target_event(struct vm_qemu *q, const char *name, struct json_object *data, int64_t ts,
			 void *userdata);

/* The point of no return: the new QEMU runs the guest. */
static void upgrade_resumed(struct upgrade *u) {
	struct vm *vm = u->vm;
	if (u->target_resumed)
		return;
	u->target_resumed = true;
	evtimer_del(u->poll_timer);
	evtimer_del(u->total_timer);
	/* The pause window is over: the next upgrade may stop its guest. */
	pause_slots_leave(&u->m->pause_slots, &u->slot);
	cpr_relay_free(u->relay);
	u->relay = NULL;
	upgrade_priority_back(u);

	if (u->ops->in_place) {
		/* The same process runs the new binary: nothing to retire. */
		int r = vm_qemu_exec_done(u->old, u->binary, u->probe);
		if (r < 0)
			log_vm_errno(LOG_WARNING, r, vm->name, "cannot record the new binary: %m");
		u->old = NULL;
	} else {
		/* Custody moves: the VM's current QEMU is the target from now on. */
		vm_adopt_qemu(vm, u->target);
		u->target = NULL;
	}
	vm_watch_main(vm);
	upgrade_journal(u);
	if (u->was_running && vm->state != VM_RUNNING)
		vm_set_state(vm, VM_RUNNING, "guest resumed on the new QEMU");

	double pause = u->resume_ts > u->stop_ts && u->stop_ts > 0
			       ? (double)(u->resume_ts - u->stop_ts) / 1000.0
			       : -1;
	char p[64] = "guest paused throughout";
	if (pause >= 0)
		snprintf(p, sizeof(p), "guest paused %.1f ms", pause);
	upgrade_enter(u, PHASE_VERIFY, "new QEMU pid %d took over (%s)", (int)u->target_pid, p);
	if (qmp_command(vm_qemu_qmp(vm->qemu), "query-status", NULL, UPGRADE_QMP_TIMEOUT_MS,
			verify_on_status, u) < 0)
		upgrade_next(u, "retire", upgrade_retire);
}

/* ---- transfer and resume ------------------------------------------------- */

static void poll_target_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			       void *userdata) {
	struct upgrade *u = userdata;
	if (u->phase != PHASE_RESUME || u->target_resumed)
		return;
	const char *status = err ? NULL : json_object_get_string(json_object_object_get(ret, "status"));
	if (status && u->source_done &&
	    ((u->was_running && streq(status, "running")) || (!u->was_running && streq(status, "paused")))) {
		if (u->was_running && u->resume_ts == 0)
			/* QMP was negotiated after RESUME was sent: our own clock
			 * is the closest we have. */
			u->resume_ts = (int64_t)now_usec(CLOCK_REALTIME);
		return upgrade_resumed(u);
	}
	arm(u->poll_timer, UPGRADE_POLL_MS);
}

static void poll_source(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			void *userdata) {
	struct upgrade *u = userdata;
	if (u->phase != PHASE_TRANSFER)
		return;
	if (err && err->error == -ERESTART)
		return; /* the process executed the new binary: old_ready goes on */
	if (err) {
		upgrade_fail(u, "query-migrate on the old QEMU failed: %s", err->desc);
		return;
	}
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	if (streq_ptr(status, "completed") && u->ops->in_place) {
		/* The exec follows; if it fails, the status turns to failed and
		 * QEMU resumes the guest on the old binary. */
		u->source_done = true;
		arm(u->poll_timer, UPGRADE_POLL_MS);
		return;
	}
	if (streq_ptr(status, "failed") || streq_ptr(status, "cancelled")) {
		const char *desc = json_object_get_string(json_object_object_get(ret, "error-desc"));
		upgrade_fail(u, "migration %s: %s", status, desc ? desc : "no reason given");
		return;
	}
	if (streq_ptr(status, "completed")) {
		u->source_done = true;
		struct json_object *ram = json_object_object_get(ret, "ram");
		int64_t bytes = json_object_get_int64(json_object_object_get(ram, "transferred"));
		upgrade_enter(u, PHASE_RESUME, "old QEMU handed over (%lld KB sent); waiting for the new QEMU",
			      (long long)(bytes / 1000));
		if (u->was_running && u->resume_ts > 0)
			return upgrade_resumed(u);
		arm(u->poll_timer, 0);
		return;
	}
	arm(u->poll_timer, UPGRADE_POLL_MS);
}

static void on_poll(evutil_socket_t fd, short what, void *userdata);

static void target_event(struct vm_qemu *q, const char *name, struct json_object *data, int64_t ts,
			 void *userdata) {
	struct upgrade *u = userdata;
	if (streq(name, "RESUME") && u->resume_ts == 0) {
		/* The new QEMU runs the guest on the shared RAM: whatever the old
		 * one still reports, there is no going back to it. */
		u->resume_ts = ts;
		if (u->phase == PHASE_TRANSFER || u->phase == PHASE_RESUME)
			upgrade_resumed(u);
	}
}

static void target_exited(struct vm_qemu *q, const char *how, int status, int sig, void *userdata) {
	struct upgrade *u = userdata;
	char why[128];
	if (streq(how, "exited"))
		snprintf(why, sizeof(why), "exited with status %d", status);
	else
		snprintf(why, sizeof(why), "was killed by %s", signal_name(sig));
	char said[512];
	u->target_pid = vm_qemu_pid(q);
	vm_qemu_stderr_summary(q, said, sizeof(said));
	upgrade_fail(u, "the new QEMU pid %d %s during %s: %s", (int)u->target_pid, why,
		     phase_names[u->phase], said[0] ? said : "it wrote nothing on stderr");
}

static void upgrade_poll_transfer(struct upgrade *u) {
	/* Through the relay, the old QEMU waits in setup until cprd lets it
	 * go (upgrade_pause_go); nothing to ask it before. */
	if (u->relay && !cpr_relay_released(u->relay))
		return;
	arm(u->poll_timer, UPGRADE_POLL_MS);
}

static void on_migrate_sent(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			    void *userdata) {
	struct upgrade *u = userdata;
	if (u->phase != PHASE_TRANSFER)
		return;
	if (err && err->error == -ERESTART)
		return; /* the process executed the new binary: old_ready goes on */
	if (err) {
		upgrade_fail(u, "migrate on the old QEMU failed: %s", err->desc);
		return;
	}
	upgrade_next(u, "resume", upgrade_poll_transfer);
}

static void upgrade_send_migrate(struct upgrade *u) {
	if (!u->ops->ignore_shared && vm_qemu_probe(u->old) && vm_qemu_probe(u->old)->x_ignore_shared)
		/* A QEMU that arrived by local-migrate may still have it on; a
		 * target that expects all of the state would refuse the stream. */
		qmp_command(vm_qemu_qmp(u->old), "migrate-set-capabilities", migration_caps_ignore_shared(false),
			    UPGRADE_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	upgrade_enter(u, PHASE_TRANSFER, "old QEMU pid %d sends device state (%s)", (int)u->old_pid,
		      upgrade_mode_to_string(u->mode));
	struct json_object *args = u->ops->migrate_args(u->main_path, u->relay ? u->relay_path : u->cpr_path);
	if (upgrade_journal(u) < 0) {
		json_object_put(args);
		return upgrade_fail(u, "%s", u->journal_error);
	}
	u->migrate_sent = true;
	if (qmp_command(vm_qemu_qmp(u->old), "migrate", args, UPGRADE_QMP_TIMEOUT_MS, on_migrate_sent, u) < 0)
		upgrade_fail(u, "the old QEMU's QMP channel failed");
}

static void check_reply(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
			void *userdata) {
	struct upgrade *u = userdata;
	if (err)
		upgrade_fail(u, "%s: %s", qmp_get_label(qmp), err->desc);
}

/* ---- pause slots --------------------------------------------------------- */

/* The upgrade holds a pause slot: the old QEMU may stop the guest. */
static void upgrade_pause_go(struct upgrade *u) {
	upgrade_priority_boost(u);
	if (!u->relay || !u->migrate_sent)
		return upgrade_send_migrate(u);
	/* cpr-transfer: migrate went out already and the target listens; the
	 * hang-up of the cpr channel lets the old QEMU go on. */
	cpr_relay_release(u->relay);
	if (!u->held)
		arm(u->poll_timer, 0);
}

static void on_slot_event(evutil_socket_t fd, short what, void *userdata) {
	struct upgrade *u = userdata;
	if (!u->slot.held)
		return;
	if ((u->phase == PHASE_SPAWN && !u->migrate_sent) ||
	    (u->phase == PHASE_TRANSFER && u->relay && !cpr_relay_released(u->relay)))
		upgrade_pause_go(u);
}

/* Runs inside pause_slots_leave of another upgrade: go on from the loop. */
static void on_slot_granted(struct pause_slot_waiter *w) {
	struct upgrade *u = container_of(w, struct upgrade, slot);
	event_active(u->slot_ev, EV_TIMEOUT, 1);
}

/* The target is ready: migrate goes out once fewer than pause_limit guests
 * are paused by upgrades, first come first served; until then the guest
 * runs on, and a failure meanwhile leaves the queue (upgrade_free). */
static void upgrade_take_slot(struct upgrade *u) {
	struct pause_slots *s = &u->m->pause_slots;
	if (pause_slots_acquire(s, &u->slot, u->pause_limit, on_slot_granted))
		return upgrade_pause_go(u);
	upgrade_enter(u, u->phase, "target ready; waiting for a pause slot (%u of %u in use, %u in line)",
		      s->busy, u->pause_limit, pause_slots_queued(s));
}

/* cpr-transfer: the target took the cpr state and hung up, so it listens on
 * the main channel; the old QEMU waits for cprd to pass the hang-up on. */
static void on_relay(struct cpr_relay *r, int error, void *userdata) {
	struct upgrade *u = userdata;
	if ((u->phase != PHASE_TRANSFER && u->phase != PHASE_SPAWN) || u->target_resumed)
		return;
	if (error < 0)
		return upgrade_fail(u, "the cpr channel from the old QEMU pid %d to the new one failed: %s",
				    (int)u->old_pid, error == -EPIPE ? "the old QEMU closed it" : strerror(-error));
	if (u->phase != PHASE_TRANSFER)
		return;
	if (!unix_socket_listening(u->main_path))
		return upgrade_fail(u, "the new QEMU pid %d closed its cpr channel without listening on %s",
				    (int)u->target_pid, u->main_path);
	u->relay_passed = true;
	/* QEMU sends no event to a monitor before qmp_capabilities: the pause
	 * starts only once the target's RESUME can reach cprd (target_ready),
	 * so that it is measured with QEMU's own time stamp and ends the pause
	 * window at once, not at cprd's next poll. */
	if (u->target && qmp_is_ready(vm_qemu_qmp(u->target)))
		upgrade_take_slot(u);
}

/* -incoming defer: the target listens (migrate-incoming) once its QMP is up. */
static void target_incoming_ready(struct qmp *qmp, struct json_object *ret,
				  const struct qmp_error *err, void *userdata) {
	struct upgrade *u = userdata;
	if (err)
		return upgrade_fail(u, "migrate-incoming on the new QEMU failed: %s", err->desc);
	if (u->phase != PHASE_SPAWN)
		return;
	if (u->ops->ignore_shared) {
		u->old_ignore_shared = true;
		qmp_command(vm_qemu_qmp(u->old), "migrate-set-capabilities",
			    migration_caps_ignore_shared(true), UPGRADE_QMP_TIMEOUT_MS, check_reply, u);
	}
	upgrade_next(u, "transfer", upgrade_take_slot);
}

static void target_ready(struct vm_qemu *q, void *userdata) {
	struct upgrade *u = userdata;
	/* cpr-transfer: its QMP comes up only after migrate, once it has the
	 * cpr state; the pause waits for it (on_relay). */
	if (u->relay && u->relay_passed && u->phase == PHASE_TRANSFER && !cpr_relay_released(u->relay))
		return upgrade_take_slot(u);
	if (u->ops->incoming != CMDLINE_INCOMING_DEFER || u->phase != PHASE_SPAWN)
		return;
	char uri[PATH_MAX + 8];
	snprintf(uri, sizeof(uri), "unix:%s", u->main_path);
	struct json_object *a = json_object_new_object();
	json_object_object_add(a, "uri", json_object_new_string(uri));
	struct qmp *qmp = vm_qemu_qmp(q);
	if (u->ops->ignore_shared)
		qmp_command(qmp, "migrate-set-capabilities", migration_caps_ignore_shared(true),
			    UPGRADE_QMP_TIMEOUT_MS, check_reply, u);
	qmp_command(qmp, "migrate-incoming", a, UPGRADE_QMP_TIMEOUT_MS, target_incoming_ready, u);
}

static const struct vm_qemu_callbacks target_callbacks = {
	.ready = target_ready,
	.event = target_event,
	.exited = target_exited,
};

static void on_poll(evutil_socket_t fd, short what, void *userdata) {
	struct upgrade *u = userdata;
	struct stat st;
	switch (u->phase) {
	case PHASE_SPAWN:
		/* cpr-transfer: the target binds the cpr socket, listens, then
		 * blocks accepting on it. The file appears at bind, before
		 * listen: migrate may go out only once the socket listens, or the
		 * old QEMU's connect is refused. */
		if (!u->relay && stat(u->cpr_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
			int r = cpr_relay_new(u->m->base, u->cpr_path, u->relay_path, u->old_pid, on_relay, u,
					      &u->relay);
			if (r == 0 && (r = qemu_chown(vm_qemu_user(u->vm), u->relay_path)) < 0)
				return upgrade_fail(u, "cannot give %s to QEMU's user: %s", u->relay_path,
						    strerror(-r));
			/* Without the priority boost a pause would compete with
			 * the target's own start-up after the cpr state and with
			 * other targets': then the slot is taken before migrate,
			 * as for the other modes, and covers that start-up too. */
			if (r == 0)
				return upgrade_next(u, "transfer",
						    priority_settable() ? upgrade_send_migrate : upgrade_take_slot);
			if (r != -ECONNREFUSED && r != -ENOENT && r != -EAGAIN)
				return upgrade_fail(u, "cannot connect to the new QEMU's cpr socket %s: %s",
						    u->cpr_path, strerror(-r));
		}
		arm(u->poll_timer, UPGRADE_SOCKET_POLL_MS);
		return;
	case PHASE_TRANSFER:
		qmp_command(vm_qemu_qmp(u->old), "query-migrate", NULL, UPGRADE_QMP_TIMEOUT_MS, poll_source, u);
		return;
	case PHASE_RESUME: {
		struct vm_qemu *t = u->ops->in_place ? u->old : u->target;
		if (t && qmp_is_ready(vm_qemu_qmp(t)))
			qmp_command(vm_qemu_qmp(t), "query-status", NULL, UPGRADE_QMP_TIMEOUT_MS,
				    poll_target_status, u);
		else
			arm(u->poll_timer, UPGRADE_POLL_MS);
		return;
	}
	default:
		return;
	}
}

static void on_exec_command_set(struct qmp *qmp, struct json_object *ret,
				const struct qmp_error *err, void *userdata) {
	struct upgrade *u = userdata;
	if (u->phase != PHASE_SPAWN)
		return;
	if (err)
		return upgrade_fail(u, "setting cpr-exec-command on QEMU pid %d failed: %s",
				    (int)u->old_pid, err->desc);
	/* From migrate on, the process may greet again from the new binary. */
	qmp_expect_restart(qmp, true);
	upgrade_next(u, "transfer", upgrade_take_slot);
}

/* A mode that spawns nothing: the old QEMU is told what to execute once
 * its state is in the file. QEMU execs a path (execvp), so the path is one
 * that cannot be swapped: cprd's own fd of the binary it opened and checked,
 * /proc/CPRD/fd/N, which the kernel resolves to that very file (and which a
 * #! wrapper's interpreter can open as well, while cprd holds it). QEMU
 * running as a user (--qemu-user, --qemu-users) may not look into cprd's
 * fds; it gets the checked path, which only root can change
 * (docs/reliability.md). */
static void upgrade_exec_setup(struct upgrade *u) {
	char why[512], path[64];
	u->exec_fd = binary_open(u->binary, why, sizeof(why));
	if (u->exec_fd < 0)
		return upgrade_fail(u, "%s", why);
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)getpid(), u->exec_fd);
	const char *exec_path = vm_qemu_user(u->vm) || qemu_default_user() ? u->binary : path;
	const struct cmdline_incoming in = {.kind = u->ops->incoming, .main_path = u->main_path};
	_cleanup_(strv_freep) char **argv = NULL;
	int r = vm_qemu_exec_argv(u->old, exec_path, u->probe, &in, &argv);
	if (r < 0)
		return upgrade_fail(u, "cannot build the command line: %s", strerror(-r));
	struct json_object *cmd = json_object_new_array(), *p = json_object_new_object();
	for (char **a = argv; *a; a++)
		json_object_array_add(cmd, json_object_new_string(*a));
	json_object_object_add(p, "cpr-exec-command", cmd);
	u->target_pid = u->old_pid;
	if (upgrade_journal(u) < 0) {
		json_object_put(p);
		return upgrade_fail(u, "%s", u->journal_error);
	}
	if (qmp_command(vm_qemu_qmp(u->old), "migrate-set-parameters", p, UPGRADE_QMP_TIMEOUT_MS,
			on_exec_command_set, u) < 0)
		upgrade_fail(u, "the old QEMU's QMP channel failed");
}

static void upgrade_spawn(struct upgrade *u) {
	struct vm *vm = u->vm;
	char buf[PATH_MAX];
	int r;

	if (u->ops->in_place)
		upgrade_enter(u, PHASE_SPAWN, "QEMU pid %d is to execute %s (QEMU %u.%u.%u) in place",
			      (int)u->old_pid, u->binary, u->probe->major, u->probe->minor,
			      u->probe->micro);
	else
		upgrade_enter(u, PHASE_SPAWN, "starting %s (QEMU %u.%u.%u) with the held fds",
			      u->binary, u->probe->major, u->probe->minor, u->probe->micro);

	/* The incoming sockets live in a private folder: only root (and the
	 * user QEMU runs as) reaches them. QEMU 10.0 accepts only a unix path
	 * for the cpr channel, so QEMU binds them itself inside this folder. */
	_cleanup_free_ char *rdir = NULL;
	if ((r = vm_runtime_dir_make(vm, &rdir)) < 0)
		return upgrade_fail(u, "cannot create the VM's runtime folder: %s", strerror(-r));
	snprintf(buf, sizeof(buf), "%s/upgrade-XXXXXX", rdir);
	if (!mkdtemp(buf))
		return upgrade_fail(u, "cannot create a private folder in %s: %s", rdir, strerror(errno));
	u->dir = strdup(buf);
	if ((r = qemu_chown(vm_qemu_user(vm), buf)) < 0)
		return upgrade_fail(u, "cannot give %s to QEMU's user: %s", buf, strerror(-r));
	if (asprintf(&u->main_path, "%s/%s", u->dir,
		     u->ops->in_place ? UPGRADE_STATE_FILE : UPGRADE_MAIN_SOCK) < 0 ||
	    asprintf(&u->cpr_path, "%s/" UPGRADE_CPR_SOCK, u->dir) < 0 ||
	    asprintf(&u->relay_path, "%s/" UPGRADE_RELAY_SOCK, u->dir) < 0)
		return upgrade_fail(u, "out of memory");
	if (u->ops->in_place)
		return upgrade_exec_setup(u);

	const struct cmdline_incoming in = {
		.kind = u->ops->incoming,
		.main_path = u->main_path,
		.cpr_path = u->cpr_path,
	};
	r = vm_qemu_spawn(vm, u->binary, u->probe, &in, &target_callbacks, u, &u->target);
	if (r < 0)
		return upgrade_fail(u, "cannot start %s: %s", u->binary, strerror(-r));
	u->target_pid = vm_qemu_pid(u->target);
	if (upgrade_journal(u) < 0)
		return upgrade_fail(u, "%s", u->journal_error);
	if ((r = vm_qemu_let_run(u->target)) < 0)
		return upgrade_fail(u, "cannot let the new QEMU run: %s", strerror(-r));
	/* The target greets on QMP only after it received the cpr state. */
	qmp_set_greeting_timeout(vm_qemu_qmp(u->target), u->timeout_sec * 1000);
	if (u->ops->incoming == CMDLINE_INCOMING_CPR_TRANSFER)
		arm(u->poll_timer, 0); /* migrate once its cpr socket listens */
}

/* ---- preflight ----------------------------------------------------------- */

static void preflight_on_blockers(struct qmp *qmp, struct json_object *ret,
				  const struct qmp_error *err, void *userdata) {
	struct upgrade *u = userdata;
	if (err)
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE, "query-migrate failed: %s", err->desc);
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	if (status && (streq(status, "active") || streq(status, "setup") || streq(status, "device")))
		return upgrade_refuse(u, UPGRADE_REFUSED_BUSY, "a migration is already under way (%s)", status);
	struct json_object *blocked = json_object_object_get(ret, "blocked-reasons");
	if (blocked && json_object_array_length(blocked) > 0) {
		char why[512] = "";
		for (size_t i = 0; i < json_object_array_length(blocked); i++) {
			size_t n = strlen(why);
			snprintf(why + n, sizeof(why) - n, "%s%s", i ? "; " : "",
				 json_object_get_string(json_object_array_get_idx(blocked, i)));
		}
		/* Leave the mode as it was. */
		if (u->ops->qmp_mode)
			migration_reset_mode(qmp);
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE, "QEMU reports migration blockers: %s", why);
	}

	if (u->dry_run) {
		char what[512];
		snprintf(what, sizeof(what),
			 "would start %s (QEMU %u.%u.%u) with machine %s and move the guest from QEMU %s "
			 "pid %d with %s; guest RAM stays in place",
			 u->binary, u->probe->major, u->probe->minor, u->probe->micro, u->vm->spec->machine,
			 u->from_version, (int)u->old_pid, upgrade_mode_to_string(u->mode));
		if (u->ops->qmp_mode)
			migration_reset_mode(qmp);
		free(u->reason);
		u->reason = strdup(what);
		evtimer_del(u->phase_timer);
		evtimer_del(u->total_timer);
		if (u->vm->operation == VM_OP_UPGRADE_PREFLIGHT)
			u->vm->operation = VM_OP_NONE;
		u->done(u, upgrade_result(u, "dry-run"), u->userdata);
		upgrade_free(u);
		return;
	}

	if (u->attempts) /* a retry: the VM is ours already */
		return upgrade_next(u, "spawn-target", upgrade_spawn);
	/* Preflight passed: from here on the VM is ours to move. */
	u->vm->operation = VM_OP_UPGRADE;
	u->m->upgrades_running++;
	u->counted = true;
	manager_emit(u->m, u->vm, "upgrade", "upgrade started");
	vm_qemu_set_callbacks(u->old, &old_callbacks, u);
	arm(u->total_timer, u->timeout_sec * 1000);
	upgrade_next(u, "spawn-target", upgrade_spawn);
}

static void preflight_on_status(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
				void *userdata) {
	struct upgrade *u = userdata;
	if (err)
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE, "the running QEMU does not answer: %s",
				      err->desc);
	const char *status = json_object_get_string(json_object_object_get(ret, "status"));
	u->was_running = streq_ptr(status, "running");
	if (!u->was_running && !streq_ptr(status, "paused"))
		return upgrade_refuse(u, UPGRADE_REFUSED_BAD_STATE, "the guest is %s, not running or paused",
				      status ? status : "in an unknown state");
	if (u->ops->qmp_mode || vm_qemu_has_migration_modes(u->vm->qemu)) {
		/* Blockers are per mode: ask with the mode we will use. Set even
		 * when it is "normal": a cprd killed after setting a CPR mode at
		 * an earlier preflight (and so before any journal) left it set,
		 * and a local-migrate in cpr-transfer mode fails for want of a
		 * cpr channel (found by tests/faults/chaos.py, seed 881602461). */
		struct json_object *p = json_object_new_object();
		json_object_object_add(p, "mode",
				       json_object_new_string(u->ops->qmp_mode ? u->ops->qmp_mode : "normal"));
		/* Its failure shows in query-migrate's answer or in the transfer. */
		qmp_command(qmp, "migrate-set-parameters", p, UPGRADE_QMP_TIMEOUT_MS, qmp_reply_ignore, NULL);
	}
	qmp_command(qmp, "query-migrate", NULL, UPGRADE_QMP_TIMEOUT_MS, preflight_on_blockers, u);
}

static void preflight_on_probe(struct probe *p, int error, struct probe_result *result,
			       const char *reason, void *userdata) {
	struct upgrade *u = userdata;
	struct vm *vm = u->vm;
	if (error < 0) {
		return upgrade_refuse(u, UPGRADE_REFUSED_PROBE_FAILED, "%s",
				      reason ? reason : strerror(-error));
	}
	u->probe = result;
	u->probe_ms = ms_since(u->probe_mono);
	if (!vm->qemu || !vm_qemu_running(vm->qemu))
		return upgrade_refuse(u, UPGRADE_REFUSED_BAD_STATE, "the VM is not running");
	if (vm->held[CUSTODY_RAM] < 0)
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE,
				      "cprd does not hold the guest RAM memfd of this VM (it was lost "
				      "with cprd's fd store); restart the VM to put it back in custody");
	if (!vm_qemu_qmp(vm->qemu))
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE,
				      "cprd has no QMP channel to the running QEMU");
	/* The incoming sockets must fit in a sockaddr_un (108 bytes). */
	_cleanup_free_ char *rdir = vm_runtime_dir(vm);
	if (!rdir || strlen(rdir) + strlen("/upgrade-XXXXXX/" UPGRADE_MAIN_SOCK) >= 108)
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE,
				      "the runtime folder %s is too long for the upgrade's unix sockets "
				      "(108 bytes at most); start cprd with a shorter --runtime-dir",
				      rdir ? rdir : "");
	const struct probe_result *old = vm_qemu_probe(vm->qemu);
	/* The target runs as the VM's user now; the running QEMU must too, or
	 * the two could not reach each other's sockets, nor the target the
	 * disks. */
	char who[256];
	if (!vm_qemu_user_is(vm, vm_qemu_pid(vm->qemu), who, sizeof(who)))
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE, "%s; stop and start the VM first",
				      who);

	if (!probe_result_resolve_machine(result, vm->spec->machine) ||
	    !streq(probe_result_resolve_machine(result, vm->spec->machine), vm->spec->machine))
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE,
				      "QEMU %u.%u.%u at %s has no machine type %s, which this guest was "
				      "created with",
				      result->major, result->minor, result->micro, u->binary,
				      vm->spec->machine);

	char why[512];
	vm_mode_guest(vm, &u->guest);
	u->ops = mode_pick(upgrade_mode_to_string(u->mode), &u->guest, old, u->from_version, result,
			   why, sizeof(why));
	if (!u->ops)
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE, "%s", why);
	(void)upgrade_mode_from_string(u->ops->name, &u->mode);
	if (u->ops->needs_exec && !vm->spec->allow_exec)
		return upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE,
				      "%s needs QEMU to execute the new binary itself, which its sandbox "
				      "forbids unless the VM was created with allowExec (cprctl create "
				      "--allow-exec)",
				      u->ops->name);
	upgrade_enter(u, PHASE_PREFLIGHT, "target %s is QEMU %u.%u.%u; mode %s", u->binary,
		      result->major, result->minor, result->micro, upgrade_mode_to_string(u->mode));
	if (qmp_command(vm_qemu_qmp(vm->qemu), "query-status", NULL, UPGRADE_QMP_TIMEOUT_MS,
			preflight_on_status, u) < 0)
		upgrade_refuse(u, UPGRADE_REFUSED_NOT_UPGRADABLE, "the running QEMU's QMP channel is closed");
}

int upgrade_start(struct manager *m, struct vm *vm, const struct upgrade_request *req,
			 upgrade_progress_fn progress, upgrade_done_fn done, void *userdata) {
	struct upgrade *u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	u->m = m;
	u->vm = vm;
	u->binary = strdup(req->qemu ? req->qemu : vm->spec->qemu);
	u->asked = u->mode = req->mode;
	u->timeout_sec = req->timeout_sec > 0 ? req->timeout_sec : UPGRADE_TIMEOUT_SEC_DEFAULT;
	u->dry_run = req->dry_run;
	u->progress = progress;
	u->done = done;
	u->userdata = userdata;
	u->exec_fd = -1;
	u->start_mono = now_usec(CLOCK_MONOTONIC);
	u->start_real = now_usec(CLOCK_REALTIME);
	u->phase_timer = evtimer_new(m->base, on_phase_timeout, u);
	u->total_timer = evtimer_new(m->base, on_total_timeout, u);
	u->poll_timer = evtimer_new(m->base, on_poll, u);
	u->slot_ev = event_new(m->base, -1, 0, on_slot_event, u);
	u->pause_limit = req->pause_slots ? req->pause_slots : m->pause_slots_default;
	if (!u->binary || !u->phase_timer || !u->total_timer || !u->poll_timer || !u->slot_ev) {
		upgrade_free(u);
		return -ENOMEM;
	}
	if (vm->qemu) {
		u->old = vm->qemu;
		u->old_pid = vm_qemu_pid(vm->qemu);
		u->from_version = strdup(vm_qemu_version(vm->qemu));
		u->from_binary = strdup(vm_qemu_binary(vm->qemu));
	}

	if (vm->operation != VM_OP_NONE)
		return upgrade_refuse(u, UPGRADE_REFUSED_BUSY, "%s of %s is under way",
				      vm_operation_to_string(vm->operation), vm->name), 0;
	if (vm->state != VM_RUNNING && vm->state != VM_PAUSED)
		return upgrade_refuse(u, UPGRADE_REFUSED_BAD_STATE, "the VM is %s; only a running or paused "
				      "VM can be upgraded (start it with cprctl start)",
				      vm_state_to_string(vm->state)), 0;
	struct spec_error err;
	if (spec_check_binary(u->binary, &err, "qemu") < 0) {
		return upgrade_refuse(u, UPGRADE_REFUSED_PROBE_FAILED, "%s", err.reason), 0;
	}
	vm->operation = VM_OP_UPGRADE_PREFLIGHT;
	u->phase = PHASE_PREFLIGHT;
	if (progress)
		progress(u, "preflight", "probing the new binary", userdata);
	arm(u->phase_timer, UPGRADE_PHASE_TIMEOUT_MS);
	char why[512];
	_cleanup_close_ int bfd = binary_open(u->binary, why, sizeof(why));
	if (bfd < 0) {
		upgrade_refuse(u, UPGRADE_REFUSED_PROBE_FAILED, "%s", why);
		return 0;
	}
	const struct probe_options po = {.user = vm_qemu_user(vm)};
	u->probe_mono = now_usec(CLOCK_MONOTONIC);
	int r = probe_run(m->base, u->binary, bfd, &po, preflight_on_probe, u, NULL);
	if (r < 0)
		upgrade_refuse(u, UPGRADE_REFUSED_PROBE_FAILED, "cannot run %s: %s", u->binary, strerror(-r));
	return 0;
}

struct vm *upgrade_get_vm(const struct upgrade *u) { return u->vm; }
const char *upgrade_get_binary(const struct upgrade *u) { return u->binary; }
enum upgrade_refusal upgrade_get_refusal(const struct upgrade *u) { return u->refusal; }
