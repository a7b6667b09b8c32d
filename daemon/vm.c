/* VMs: custody of their fds (the kinds are in custody*.c), their QEMU
 * processes, start, stop, persistence, and what happens when a QEMU ends. The upgrade state machine lives in upgrade.c and
 * uses the vm_qemu_* functions here to run its target. */
#include "vm.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "binary.h"
#include "cmdline.h"
#include "log.h"
#include "machined.h"
#include "macro.h"
#include "mode.h"
#include "probe.h"
#include "qemu-record.h"
#include "qemu.h"
#include "qmp.h"
#include "spec.h"
#include "systemd.h"
#include "tap.h"
#include "users.h"
#include "util.h"
#include "vfio.h"

struct vm_qemu {
	struct vm *vm;
	struct qemu_proc *proc;
	struct qmp *qmp;
	char *binary;
	struct stat binary_st; /* the file as it was when this QEMU started */
	struct probe_result *probe;
	char *version;
	off_t log_offset; /* where this process's stderr starts in qemu.log */
	int qmp_fd;       /* our end's number, for GetVM's list of held fds */
	int go_fd;        /* a target's go pipe until vm_qemu_let_run, or -1 */
	uint64_t starttime; /* /proc/PID/stat's, to recognise the process later */
	char *qmp_path;     /* its recovery monitor socket, or NULL */
	/* The numbers it has the held fds at, in its record too. */
	struct custody_qemu_fds fds;
	struct vm_qemu_callbacks cb;
	void *userdata;
};

static const char *const state_names[_VM_STATE_MAX] = {
	[VM_DEFINED] = "defined",   [VM_STARTING] = "starting", [VM_RUNNING] = "running",
	[VM_PAUSED] = "paused",     [VM_STOPPING] = "stopping", [VM_STOPPED] = "stopped",
	[VM_CRASHED] = "crashed",
};

const char *vm_state_to_string(enum vm_state s) {
	return s < _VM_STATE_MAX ? state_names[s] : "unknown";
}

static const char *const operation_names[_VM_OP_MAX] = {
	[VM_OP_CREATE] = "create",  [VM_OP_START] = "start",   [VM_OP_STOP] = "stop",
	[VM_OP_PAUSE] = "pause",    [VM_OP_RESUME] = "resume",
	[VM_OP_UPGRADE_PREFLIGHT] = "upgrade-preflight",        [VM_OP_UPGRADE] = "upgrade",
	[VM_OP_SNAPSHOT] = "snapshot",
};

const char *vm_operation_to_string(enum vm_operation op) {
	return op < _VM_OP_MAX ? operation_names[op] : NULL;
}

const char *vm_state_name(const struct vm *vm) {
	return vm->operation == VM_OP_UPGRADE ? "upgrading" : vm_state_to_string(vm->state);
}

void vm_set_state(struct vm *vm, enum vm_state s, const char *why) {
	if (vm->state == s)
		return;
	log_vm(LOG_INFO, vm->name, "state %s -> %s%s%s", vm_state_to_string(vm->state),
	       vm_state_to_string(s), why ? ": " : "", why ? why : "");
	vm->state = s;
	vm->host->emit(vm->host, vm, "state", why ? why : vm_state_to_string(s));
}

bool vm_is_active(const struct vm *vm) {
	return vm->state == VM_STARTING || vm->state == VM_RUNNING || vm->state == VM_PAUSED ||
	       vm->state == VM_STOPPING;
}

const struct qemu_identity *vm_qemu_user(const struct vm *vm) {
	return vm->uid ? &vm->user : NULL;
}

void vm_set_uid(struct vm *vm, uid_t uid) {
	vm->uid = uid;
	/* gid = uid, and no supplementary groups: nothing shared with
	 * another VM's QEMU. */
	vm->user = (struct qemu_identity){.uid = uid, .gid = (gid_t)uid};
}

bool vm_qemu_user_is(const struct vm *vm, pid_t pid, char *why, size_t size) {
	const struct qemu_identity *id = vm_qemu_user(vm);
	id = id ? id : qemu_default_user();
	uid_t want = id ? id->uid : 0, uid;
	int r = proc_uid(pid, &uid);
	if (r < 0) {
		snprintf(why, size, "cannot tell whom QEMU pid %d runs as: %s", (int)pid, strerror(-r));
		return false;
	}
	if (uid == want)
		return true;
	snprintf(why, size, "QEMU pid %d runs as uid %u, but cprd now runs this VM's QEMUs as uid %u "
		 "(--qemu-user or --qemu-users changed since it started)",
		 (int)pid, (unsigned)uid, (unsigned)want);
	return false;
}

/* ---- custody ------------------------------------------------------------- */

/* The VM's logs belong to its own user (0600), or to root. QEMU never
 * opens them (cprd writes the console, QEMU's stderr is an fd it is given),
 * and the state folder above them is root's 0700 in any case. */
static void vm_log_owner(struct vm *vm, int fd) {
	if (fchown(fd, vm->uid, (gid_t)vm->uid) < 0 || fchmod(fd, 0600) < 0)
		log_vm_errno(LOG_WARNING, errno, vm->name, "cannot give a log to uid %u: %m",
			     (unsigned)vm->uid);
}

/* A console.log that cannot be written (a full disk, say) loses the output
 * but never stops the console from being drained, so the guest goes on.
 * The first failure is logged, and the recovery; not every write. */
static void vm_console_log_failed(struct vm *vm, int error, const char *what) {
	if (vm->console_log_failing)
		return;
	vm->console_log_failing = true;
	log_vm_errno(LOG_WARNING, -error, vm->name, "cannot %s %s/console.log: %m; the guest's console "
		     "output is dropped until it can be written again", what, vm->dir);
}

static void vm_console_append(struct vm *vm, const char *buf, size_t len) {
	if (vm->console_log_fd < 0)
		return;
	if (vm->console_log_size + len > VM_CONSOLE_LOG_MAX) {
		/* Keep one previous file: the log stays bounded at twice the cap. */
		char cur[PATH_MAX], old[PATH_MAX];
		snprintf(cur, sizeof(cur), "%s/console.log", vm->dir);
		snprintf(old, sizeof(old), "%s/console.log.1", vm->dir);
		rename(cur, old);
		safe_close(vm->console_log_fd);
		vm->console_log_fd = open(cur, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		vm->console_log_size = 0;
		if (vm->console_log_fd < 0)
			return vm_console_log_failed(vm, errno, "reopen");
		vm_log_owner(vm, vm->console_log_fd);
	}
	ssize_t n = write(vm->console_log_fd, buf, len);
	if (n > 0)
		vm->console_log_size += (uint64_t)n;
	if (n < 0)
		vm_console_log_failed(vm, errno, "write");
	else if (vm->console_log_failing) {
		vm->console_log_failing = false;
		log_vm(LOG_NOTICE, vm->name, "writing the console log again");
	}

	if (vm->host->console)
		vm->host->console(vm->host, vm, buf, len, vm->console_log_size);
}

static void on_console(evutil_socket_t fd, short what, void *userdata) {
	struct vm *vm = userdata;
	char buf[16384];
	for (int rounds = 0; rounds < 16; rounds++) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n > 0) {
			vm_console_append(vm, buf, (size_t)n);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		return; /* EOF cannot happen while we hold the peer end */
	}
}


static int vm_open_logs(struct vm *vm) {
	char path[PATH_MAX];
	struct stat st;
	if (vm->console_log_fd < 0) {
		snprintf(path, sizeof(path), "%s/console.log", vm->dir);
		vm->console_log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (vm->console_log_fd < 0)
			return -errno;
		if (fstat(vm->console_log_fd, &st) == 0)
			vm->console_log_size = (uint64_t)st.st_size;
	}
	if (vm->qemu_log_fd < 0) {
		snprintf(path, sizeof(path), "%s/qemu.log", vm->dir);
		/* Rotate at start so one VM's QEMU log stays bounded. */
		if (stat(path, &st) == 0 && st.st_size > VM_QEMU_LOG_MAX) {
			char old[PATH_MAX];
			snprintf(old, sizeof(old), "%s/qemu.log.1", vm->dir);
			rename(path, old);
		}
		vm->qemu_log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (vm->qemu_log_fd < 0)
			return -errno;
	}
	/* Each time: the VM's uid may have been given since they were opened. */
	vm_log_owner(vm, vm->console_log_fd);
	vm_log_owner(vm, vm->qemu_log_fd);
	return 0;
}

/* The fd store keeps a copy of every fd we hold for a VM, so a restarted
 * cprd takes them back (see attach.c). Names are NAME.what. */
void vm_store_fd(struct vm *vm, const char *what, int fd) {
	char name[128];
	snprintf(name, sizeof(name), "%s.%s", vm->name, what);
	systemd_store_fd(name, fd);
}

void vm_unstore_fd(struct vm *vm, const char *what) {
	char name[128];
	snprintf(name, sizeof(name), "%s.%s", vm->name, what);
	systemd_remove_fd(name);
}

void vm_watch_console(struct vm *vm) {
	if (vm->console_ev || vm->held[CUSTODY_CONSOLE] < 0)
		return;
	vm->console_ev = event_new(vm->host->base, vm->held[CUSTODY_CONSOLE], EV_READ | EV_PERSIST,
				   on_console, vm);
	event_add(vm->console_ev, NULL);
}

/* After a kind made, took back or replaced fds: the fd store holds what we
 * hold, and the console is read from now on. */
static void vm_custody_adopt(struct vm *vm, const int before[_CUSTODY_VM_MAX]) {
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++) {
		if (vm->held[i] == before[i])
			continue;
		if (before[i] >= 0)
			vm_unstore_fd(vm, custody_fds[i].name);
		if (vm->held[i] >= 0)
			vm_store_fd(vm, custody_fds[i].name, vm->held[i]);
	}
	vm_watch_console(vm);
}

/* The QEMU (pid, pidfd) is the VM's now: each kind takes copies of what
 * that QEMU opened itself (custody_ops.from_qemu). */
static void vm_custody_from_qemu(struct vm *vm, pid_t pid, int pidfd) {
	const struct custody_vm cv = custody_vm_of(vm->spec);
	int before[_CUSTODY_VM_MAX];
	memcpy(before, vm->held, sizeof(before));
	for (unsigned k = 0; k < custody_n_kinds; k++)
		if (custody_kinds[k]->from_qemu)
			(void)custody_kinds[k]->from_qemu(&cv, pid, pidfd, vm->held);
	vm_custody_adopt(vm, before);
}

/* Before a fresh QEMU for the VM (not an upgrade's target): the copies of
 * what an earlier QEMU opened itself go, since a VFIO group opens only once
 * and the new QEMU opens it anew. */
static void vm_custody_give_up_from_qemu(struct vm *vm) {
	int before[_CUSTODY_VM_MAX];
	memcpy(before, vm->held, sizeof(before));
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		if (custody_fds[i].from_qemu && vm->held[i] >= 0)
			vm->held[i] = safe_close(vm->held[i]);
	if (memcmp(before, vm->held, sizeof(before)) != 0)
		log_vm(LOG_INFO, vm->name, "gave up the copies of the last QEMU's VFIO fds");
	vm_custody_adopt(vm, before);
}

int vm_devices_check(const struct vm_spec *spec, const char **device, char *why, size_t size) {
	for (size_t i = 0; i < spec->n_devices; i++) {
		struct vfio_device d;
		*device = spec->devices[i].pci;
		int r = vfio_device_check(VM_HOST_ROOT, *device, &d, why, size);
		if (r >= 0)
			r = vfio_kernel_check(VM_HOST_ROOT, d.group, why, size);
		if (r < 0)
			return r;
	}
	*device = NULL;
	return 0;
}

void vm_mode_guest(const struct vm *vm, struct mode_guest *ret) {
	*ret = (struct mode_guest){
		.n_devices = vm->spec->n_devices,
		.tcg = !streq_ptr(vm->accel, "kvm"), /* unknown counts as the worse */
	};
	for (size_t i = 0; i < vm->spec->n_devices && !ret->irq_device; i++) {
		struct vfio_irqs irqs;
		const char *pci = vm->spec->devices[i].pci;
		int r = vfio_device_irqs(VM_HOST_ROOT, pci, &irqs);
		if (r < 0)
			snprintf(ret->irq_what, sizeof(ret->irq_what),
				 "a config space cprd cannot read (%s), so it may", strerror(-r));
		else
			vfio_irqs_describe(&irqs, ret->irq_what, sizeof(ret->irq_what));
		if (r < 0 || vfio_irqs_any(&irqs))
			ret->irq_device = pci;
	}
}

/* Makes what a VM's QEMU needs from us and that outlives any one QEMU. */
static int vm_ensure_custody(struct vm *vm) {
	int r = vm_open_logs(vm);
	if (r < 0)
		return log_vm_errno(LOG_ERR, r, vm->name, "cannot open logs in %s: %m", vm->dir);
	const struct custody_vm cv = custody_vm_of(vm->spec);
	int before[_CUSTODY_VM_MAX];
	memcpy(before, vm->held, sizeof(before));
	for (unsigned k = 0; k < custody_n_kinds && r >= 0; k++)
		if (custody_kinds[k]->open)
			r = custody_kinds[k]->open(&cv, vm->held);
	vm_custody_adopt(vm, before);
	return r;
}

void vm_restore_custody(struct vm *vm) {
	char name[160];
	int r = vm_open_logs(vm);
	if (r < 0)
		log_vm_errno(LOG_WARNING, r, vm->name, "cannot open logs: %m");
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++) {
		snprintf(name, sizeof(name), "%s.%s", vm->name, custody_fds[i].name);
		vm->held[i] = systemd_take_fd(name);
	}
	const struct custody_vm cv = custody_vm_of(vm->spec);
	for (unsigned k = 0; k < custody_n_kinds; k++)
		if (custody_kinds[k]->restored)
			custody_kinds[k]->restored(&cv, vm->held);
	vm_watch_console(vm);
}

/* Closes our copies. The fd store keeps its own, so a cprd that exits
 * (not one that stops a VM) leaves the custody to the next cprd. */
static void vm_close_custody(struct vm *vm) {
	if (vm->console_ev) {
		event_free(vm->console_ev);
		vm->console_ev = NULL;
	}
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		vm->held[i] = safe_close(vm->held[i]);
}

/* What earlier starts gave to the VM's user goes back (vm.json says). */
static void vm_return_disks(struct vm *vm) {
	if (vm->disk_grants.n == 0)
		return;
	disk_grants_return(&vm->disk_grants, vm->name);
	vm_save(vm);
}

void vm_release_custody(struct vm *vm) {
	if (vm->held[CUSTODY_RAM] >= 0)
		log_vm(LOG_INFO, vm->name, "releasing guest RAM memfd");
	if (vm->held[CUSTODY_RAM] >= 0 || vm->held[CUSTODY_CONSOLE] >= 0)
		for (unsigned i = 0; i < _CUSTODY_MAX; i++) {
			vm_unstore_fd(vm, custody_fds[i].name);
			if (custody_fds[i].target_name)
				vm_unstore_fd(vm, custody_fds[i].target_name);
		}
	if (vm->console_ev)
		/* Take what QEMU wrote last before letting go of the console. */
		on_console(vm->held[CUSTODY_CONSOLE], EV_READ, vm);
	vm_close_custody(vm);
	vm_return_disks(vm);
}

/* Chosen when the guest starts; every later QEMU of this boot uses the
 * same, as migration requires. */
static const char *vm_accel(struct vm *vm) {
	if (vm->accel)
		return vm->accel;
	if (streq(vm->spec->accel, "kvm"))
		return vm->accel = "kvm";
	if (streq(vm->spec->accel, "tcg"))
		return vm->accel = "tcg";
	/* As QEMU's user: with --qemu-user(s), root's access proves nothing. */
	return vm->accel = qemu_may_open_rw(vm_qemu_user(vm), "/dev/kvm") ? "kvm" : "tcg";
}

/* ---- QEMU processes ------------------------------------------------------ */

static void vm_qemu_on_ready(struct qmp *qmp, void *userdata) {
	struct vm_qemu *q = userdata;
	const struct qmp_version *v = qmp_get_version(qmp);
	if (v && !q->version)
		asprintf(&q->version, "%u.%u.%u", v->major, v->minor, v->micro);
	if (q->cb.ready)
		q->cb.ready(q, q->userdata);
}

static void vm_qemu_on_event(struct qmp *qmp, const char *name, struct json_object *data,
			     int64_t ts, void *userdata) {
	struct vm_qemu *q = userdata;
	if (q->cb.event)
		q->cb.event(q, name, data, ts, q->userdata);
}

static void vm_qemu_on_closed(struct qmp *qmp, int error, void *userdata) {
	struct vm_qemu *q = userdata;
	log_vm_errno(LOG_DEBUG, error, q->vm->name, "QMP of pid %d closed: %m",
		     (int)qemu_proc_pid(q->proc));
	/* The process watch tells us when QEMU really ended. */
}

static const struct qmp_callbacks vm_qmp_callbacks = {
	.ready = vm_qemu_on_ready,
	.event = vm_qemu_on_event,
	.closed = vm_qemu_on_closed,
};

static void vm_qemu_on_exit(struct qemu_proc *p, const struct qemu_exit *e, void *userdata) {
	struct vm_qemu *q = userdata;
	if (q->cb.exited)
		q->cb.exited(q, e->how, e->status, e->signal, q->userdata);
}

/* The recovery monitor's socket for a new QEMU process, or NULL when it
 * cannot have one: one per process, so an upgrade's target never takes the
 * old QEMU's path away. */
static char *vm_recovery_socket(struct vm *vm) {
	_cleanup_free_ char *rdir = NULL;
	char *path = NULL;
	if (vm_runtime_dir_make(vm, &rdir) < 0 ||
	    asprintf(&path, "%s/qmp-%llx.sock", rdir,
		     (unsigned long long)(now_usec(CLOCK_MONOTONIC) & 0xffffffffffffULL)) < 0)
		return NULL;
	if (strlen(path) >= 108) {
		log_vm(LOG_WARNING, vm->name, "runtime folder path too long for a recovery monitor socket");
		return mfree(path);
	}
	return path;
}

/* Writes the command line to qemu.log, where this QEMU's output follows. */
static void vm_log_cmdline(struct vm *vm, char *const *argv) {
	_cleanup_free_ char *cmdline = NULL;
	size_t clen = 0;
	FILE *f = open_memstream(&cmdline, &clen);
	for (char *const *i = argv; f && *i; i++)
		fprintf(f, "%s%s", i == argv ? "" : " ", *i);
	if (f)
		fclose(f);
	dprintf(vm->qemu_log_fd, "cprd: starting %s\n", cmdline ? cmdline : argv[0]);
}

/* A new vm_qemu for binary, not started yet. */
static struct vm_qemu *vm_qemu_new(struct vm *vm, const char *binary,
				   const struct probe_result *probe,
				   const struct vm_qemu_callbacks *cb, void *userdata) {
	struct vm_qemu *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->vm = vm;
	q->qmp_fd = -1;
	q->go_fd = -1;
	q->binary = strdup(binary);
	q->probe = probe ? probe_result_dup(probe) : NULL;
	if (probe)
		asprintf(&q->version, "%u.%u.%u", probe->major, probe->minor, probe->micro);
	if (stat(binary, &q->binary_st) < 0)
		memset(&q->binary_st, 0, sizeof(q->binary_st));
	if (cb)
		q->cb = *cb;
	q->userdata = userdata;
	return q;
}

int vm_qemu_spawn(struct vm *vm, const char *binary, const struct probe_result *probe,
		  const struct cmdline_incoming *incoming, const struct vm_qemu_callbacks *cb,
		  void *userdata, struct vm_qemu **ret) {
	_cleanup_(strv_freep) char **argv = NULL;
	int r;

	/* An upgrade's target (not a start that loads a snapshot) must map the
	 * guest's RAM, never a fresh one. */
	bool target = incoming && vm->operation != VM_OP_START;
	if (target && vm->held[CUSTODY_RAM] < 0)
		return log_vm_errno(LOG_ERR, -EBADFD, vm->name,
				    "the guest RAM memfd is not in custody; refusing to start a target");
	r = vm_ensure_custody(vm);
	if (r < 0)
		return r;
	struct custody_qemu_fds at;
	custody_qemu_fds_assign(vm->held, &at);
	_cleanup_free_ char *qmp_path = vm_recovery_socket(vm);
	const struct cmdline cl = {
		.binary = binary,
		.spec = vm->spec,
		.probe = probe,
		.accel = vm_accel(vm),
		.fds = &at,
		.qmp_path = qmp_path,
		.incoming = incoming,
	};
	r = cmdline_build(&cl, &argv);
	if (r < 0)
		return r;
	_cleanup_close_ int qmp_ours = -1, qmp_theirs = -1;
	if ((r = custody_qmp_open(&qmp_ours, &qmp_theirs)) < 0)
		return r;

	struct vm_qemu *q = vm_qemu_new(vm, binary, probe, cb, userdata);
	if (!q)
		return -ENOMEM;
	q->qmp_path = TAKE_PTR(qmp_path);
	q->fds = at;

	/* QEMU's QMP end and every per-VM fd, at the numbers handed out. */
	struct qemu_fd fds[_CUSTODY_MAX];
	size_t n_fds = 0;
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		if (at.n[i] >= 0)
			fds[n_fds++] = (struct qemu_fd){i == CUSTODY_QMP ? qmp_theirs : vm->held[i], at.n[i]};

	vm_log_cmdline(vm, argv);
	q->log_offset = lseek(vm->qemu_log_fd, 0, SEEK_END); /* its stderr starts here */

	char why[512];
	_cleanup_close_ int binary_fd = binary_open(binary, why, sizeof(why));
	if (binary_fd < 0) {
		dprintf(vm->qemu_log_fd, "cprd: refusing to run %s: %s\n", binary, why);
		vm_qemu_free(q);
		return log_vm_errno(LOG_ERR, binary_fd, vm->name, "refusing to run %s: %s", binary, why);
	}
	/* A target waits for vm_qemu_let_run: see there. */
	int go[2] = {-1, -1};
	if (target && pipe2(go, O_CLOEXEC) < 0) {
		r = -errno;
		vm_qemu_free(q);
		return log_vm_errno(LOG_ERR, r, vm->name, "cannot make a pipe: %m");
	}
	const struct qemu_spawn_options so = {
		.binary_fd = binary_fd,
		.argv = argv,
		.fds = fds,
		.n_fds = n_fds,
		.log_fd = vm->qemu_log_fd,
		.exec_error_fd = -1,
		.user = vm_qemu_user(vm),
		.go_pipe = target ? go : NULL,
	};
	r = qemu_spawn(vm->host->base, &so, vm->name, vm_qemu_on_exit, q, &q->proc);
	safe_close(go[0]);
	q->go_fd = go[1];
	if (r < 0) {
		vm_qemu_free(q);
		return log_vm_errno(LOG_ERR, r, vm->name, "cannot start %s: %m", binary);
	}
	log_vm(LOG_INFO, vm->name, "started QEMU %s (%s) as pid %d", binary,
	       q->version ? q->version : "?", (int)qemu_proc_pid(q->proc));
	char unit[160];
	systemd_scope_attach(vm->name, qemu_proc_pid(q->proc), unit, sizeof(unit));
	proc_starttime(qemu_proc_pid(q->proc), &q->starttime);
	vm_store_fd(vm, target ? custody_fds[CUSTODY_QMP].target_name : custody_fds[CUSTODY_QMP].name,
		    qmp_ours);

	q->qmp_fd = qmp_ours;
	r = qmp_new(vm->host->base, TAKE_FD(qmp_ours), &vm_qmp_callbacks, q, vm->name, &q->qmp);
	if (r < 0) {
		qemu_proc_kill(q->proc, SIGKILL);
		vm_qemu_free(q);
		return r;
	}
	*ret = q;
	return 0;
}

int vm_qemu_let_run(struct vm_qemu *q) {
	if (q->go_fd < 0)
		return 0;
	ssize_t n = write(q->go_fd, "", 1);
	int r = n == 1 ? 0 : n < 0 ? -errno : -EIO;
	q->go_fd = safe_close(q->go_fd);
	return r;
}

void vm_qemu_free(struct vm_qemu *q) {
	if (!q)
		return;
	safe_close(q->go_fd);
	if (q->qmp_path && (!q->proc || !qemu_proc_running(q->proc)))
		unlink(q->qmp_path);
	free(q->qmp_path);
	qmp_free(q->qmp);
	qemu_proc_free(q->proc);
	probe_result_free(q->probe);
	free(q->binary);
	free(q->version);
	free(q);
}

int vm_qemu_exec_argv(struct vm_qemu *q, const char *exec_path, const struct probe_result *probe,
		      const struct cmdline_incoming *incoming, char ***ret) {
	const struct cmdline cl = {
		.binary = exec_path,
		.spec = q->vm->spec,
		.probe = probe,
		.accel = vm_accel(q->vm),
		/* The process keeps its fds, at the same numbers, across the exec. */
		.fds = &q->fds,
		.qmp_path = q->qmp_path,
		.incoming = incoming,
	};
	int r = cmdline_build(&cl, ret);
	if (r >= 0)
		vm_log_cmdline(q->vm, *ret);
	return r;
}

static void vm_qemu_take_custody(struct vm_qemu *q);

int vm_qemu_exec_done(struct vm_qemu *q, const char *binary, const struct probe_result *probe) {
	char *b = strdup(binary);
	struct probe_result *p = probe_result_dup(probe);
	char *v = NULL;
	if (!b || !p || asprintf(&v, "%u.%u.%u", probe->major, probe->minor, probe->micro) < 0) {
		free(b);
		probe_result_free(p);
		return -ENOMEM;
	}
	free(q->binary);
	q->binary = b;
	probe_result_free(q->probe);
	q->probe = p;
	free(q->version);
	q->version = v;
	if (stat(binary, &q->binary_st) < 0)
		memset(&q->binary_st, 0, sizeof(q->binary_st));
	if (q->vm->qemu != q)
		return 0;
	vm_qemu_take_custody(q);
	return vm_save_runtime(q->vm);
}

void vm_qemu_set_callbacks(struct vm_qemu *q, const struct vm_qemu_callbacks *cb, void *userdata) {
	q->cb = *cb;
	q->userdata = userdata;
}

struct qmp *vm_qemu_qmp(struct vm_qemu *q) { return q->qmp; }
pid_t vm_qemu_pid(const struct vm_qemu *q) { return q->proc ? qemu_proc_pid(q->proc) : 0; }
bool vm_qemu_running(const struct vm_qemu *q) { return q->proc && qemu_proc_running(q->proc); }
const char *vm_qemu_binary(const struct vm_qemu *q) { return q->binary; }
const char *vm_qemu_version(const struct vm_qemu *q) { return q->version ? q->version : "unknown"; }
const struct probe_result *vm_qemu_probe(const struct vm_qemu *q) { return q->probe; }

bool vm_qemu_has_migration_modes(const struct vm_qemu *q) {
	return q && q->probe && q->probe->migration_modes && q->probe->migration_modes[0];
}
int vm_qemu_kill(struct vm_qemu *q, int sig) {
	int r = q->proc ? qemu_proc_kill(q->proc, sig) : -ESRCH;
	/* Killed, it cannot remove its recovery monitor socket itself, and
	 * vm_qemu_free keeps the socket of a QEMU that may still be running. */
	if (r >= 0 && sig == SIGKILL && q->qmp_path)
		unlink(q->qmp_path);
	return r;
}

/* q's QEMU is the VM's (it started the guest, an upgrade committed to it,
 * it runs a new binary in place): the VM takes copies of what it opened
 * itself. (A QEMU attached after a restart: vm_qemu_attach.) */
static void vm_qemu_take_custody(struct vm_qemu *q) {
	if (q->proc && qemu_proc_running(q->proc))
		vm_custody_from_qemu(q->vm, qemu_proc_pid(q->proc), qemu_proc_pidfd(q->proc));
}

/* The last lines QEMU wrote, from where this process started writing. */
static struct json_object *vm_qemu_stderr_tail(struct vm_qemu *q) {
	struct json_object *lines = json_object_new_array();
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/qemu.log", q->vm->dir);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return lines;
	off_t end = lseek(fd, 0, SEEK_END);
	off_t start = MAX(q->log_offset, end - 8192);
	if (start < 0 || end <= start)
		return lines;
	size_t len = (size_t)(end - start);
	_cleanup_free_ char *buf = malloc(len + 1);
	if (!buf || pread(fd, buf, len, start) != (ssize_t)len)
		return lines;
	buf[len] = '\0';
	/* Keep the last VM_STDERR_TAIL_LINES lines. */
	char *lines_at[VM_STDERR_TAIL_LINES];
	size_t n = 0;
	for (char *save = NULL, *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (n == VM_STDERR_TAIL_LINES) {
			memmove(lines_at, lines_at + 1, sizeof(lines_at[0]) * (n - 1));
			n--;
		}
		lines_at[n++] = l;
	}
	for (size_t i = 0; i < n; i++) {
		_cleanup_free_ char *t = utf8_sanitize(lines_at[i], strlen(lines_at[i]));
		json_object_array_add(lines, json_object_new_string(t ? t : ""));
	}
	return lines;
}

void vm_qemu_stderr_summary(struct vm_qemu *q, char *buf, size_t size) {
	_cleanup_json_ struct json_object *lines = vm_qemu_stderr_tail(q);
	size_t n = json_object_array_length(lines), used = 0;
	buf[0] = '\0';
	/* The first lines after start say why; later ones are fallout. */
	for (size_t i = n > 3 ? n - 3 : 0; i < n && used + 1 < size; i++) {
		const char *l = json_object_get_string(json_object_array_get_idx(lines, i));
		/* Drop QEMU's "-msg timestamp=on" prefix for readability. */
		const char *sp = strchr(l, ' ');
		if (l[0] >= '0' && l[0] <= '9' && sp)
			l = sp + 1;
		int k = snprintf(buf + used, size - used, "%s%s", used ? "; " : "", l);
		if (k < 0)
			break;
		used += (size_t)k;
	}
}

/* systemd-machined's machine of the VM follows the QEMU that runs its
 * guest: registered when it starts, at an upgrade's point of no return (a
 * new leader), when a restarted cprd finds it again; gone when it ends. */
static void vm_machine_follow(struct vm *vm) {
	if (!vm->qemu || !vm_qemu_running(vm->qemu)) {
		machined_unregister(vm->name);
		return;
	}
	int ifindex[SPEC_NICS_MAX];
	size_t n = 0;
	for (size_t i = 0; i < vm->spec->n_nics && n < SPEC_NICS_MAX; i++) {
		char ifname[IFNAMSIZ];
		if (tap_name(vm->name, (unsigned)i, ifname) == 0 &&
		    (ifindex[n] = (int)if_nametoindex(ifname)) > 0)
			n++;
	}
	machined_register(vm->name, vm_qemu_pid(vm->qemu), ifindex, n);
}

struct vm_qemu *vm_adopt_qemu(struct vm *vm, struct vm_qemu *q) {
	struct vm_qemu *old = vm->qemu;
	vm->qemu = q;
	/* The target's QMP channel is the VM's from now on. */
	vm_unstore_fd(vm, custody_fds[CUSTODY_QMP].name);
	vm_unstore_fd(vm, custody_fds[CUSTODY_QMP].target_name);
	if (q && q->qmp_fd >= 0)
		vm_store_fd(vm, custody_fds[CUSTODY_QMP].name, q->qmp_fd);
	if (q)
		vm_qemu_take_custody(q);
	vm_save_runtime(vm);
	vm_machine_follow(vm);
	return old;
}

/* The fd the VM holds as id, or -1. */
static int vm_held_fd(const struct vm *vm, enum custody_id id) {
	if (id < _CUSTODY_VM_MAX)
		return vm->held[id];
	return vm->qemu ? vm->qemu->qmp_fd : -1; /* CUSTODY_QMP */
}

int vm_reexec_fds(struct vm *vm, char **list) {
	char name[160];
	int r = 0;
	for (unsigned i = 0; i < _CUSTODY_MAX && r >= 0; i++) {
		snprintf(name, sizeof(name), "%s.%s", vm->name, custody_fds[i].name);
		r = systemd_add_reexec_fd(list, name, vm_held_fd(vm, i));
	}
	return r;
}

/* ---- what a restarted cprd needs to find the QEMU again ------------------- */

char *vm_runtime_file(struct vm *vm, const char *file) {
	char *p = NULL;
	if (asprintf(&p, "%s/vms/%s/%s", vm->host->runtime_dir, vm->name, file) < 0)
		return NULL;
	return p;
}

char *vm_runtime_dir(struct vm *vm) {
	char *p = NULL;
	if (asprintf(&p, "%s/vms/%s", vm->host->runtime_dir, vm->name) < 0)
		return NULL;
	return p;
}

int vm_runtime_dir_make(struct vm *vm, char **ret) {
	_cleanup_free_ char *p = vm_runtime_dir(vm);
	if (!p)
		return -ENOMEM;
	int r = mkdir_p(p, 0700);
	if (r < 0)
		return r;
	/* QEMU binds its recovery monitor and an upgrade's incoming sockets
	 * here: the folder is the user's that QEMU runs as (the VM's own with
	 * --qemu-users, --qemu-user's, or root). */
	if ((r = qemu_chown(vm_qemu_user(vm), p)) < 0)
		return r;
	if (chmod(p, 0700) < 0)
		return -errno;
	*ret = TAKE_PTR(p);
	return 0;
}

/* q's record, as if it ran binary (its file st, probed as p). */
static struct json_object *vm_qemu_record_as(struct vm_qemu *q, const char *binary,
					     const struct stat *st, const char *version,
					     const struct probe_result *p) {
	const struct qemu_record r = {
		.pid = vm_qemu_pid(q),
		.starttime = q->starttime,
		.binary = (char *)binary,
		.dev = (uint64_t)st->st_dev,
		.ino = (uint64_t)st->st_ino,
		.mtime = st->st_mtim,
		.version = (char *)version, /* NULL: "unknown" */
		.qmp_path = q->qmp_path,
		.cpr_transfer = p && p->cpr_transfer,
		.cpr_exec = p && p->cpr_exec,
		.x_ignore_shared = p && p->x_ignore_shared,
		.aux_ram_share = p && p->aux_ram_share,
		.has_modes = p && p->migration_modes && p->migration_modes[0],
		.fds = q->fds,
	};
	return qemu_record_to_json(&r);
}

struct json_object *vm_qemu_record(struct vm_qemu *q) {
	return vm_qemu_record_as(q, q->binary, &q->binary_st, q->version, q->probe);
}

struct json_object *vm_qemu_exec_record(struct vm_qemu *q, const char *binary,
					const struct probe_result *probe) {
	struct stat st = {0};
	char version[64];
	if (stat(binary, &st) < 0)
		memset(&st, 0, sizeof(st));
	snprintf(version, sizeof(version), "%u.%u.%u", probe->major, probe->minor, probe->micro);
	return vm_qemu_record_as(q, binary, &st, version, probe);
}

int vm_save_runtime(struct vm *vm) {
	_cleanup_free_ char *dir = vm_runtime_dir(vm);
	_cleanup_free_ char *path = vm_runtime_file(vm, "qemu.json");
	if (!dir || !path)
		return -ENOMEM;
	if (!vm->qemu) {
		unlink(path);
		return 0;
	}
	mkdir_p(dir, 0700);
	_cleanup_json_ struct json_object *o = vm_qemu_record(vm->qemu);
	json_object_object_add(o, "startedUsec", json_object_new_int64((int64_t)vm->started_usec));
	json_object_object_add(o, "accel", json_object_new_string(vm->accel ? vm->accel : "tcg"));
	/* Written as the QEMU starts, before the guest runs: a cprd that finds
	 * this flag knows whose start was cut short (attach.c). */
	if (vm->operation == VM_OP_START)
		json_object_object_add(o, "starting", json_object_new_boolean(true));
	int r = write_json_runtime(path, o);
	if (r < 0)
		log_vm_errno(LOG_WARNING, r, vm->name, "cannot write %s: %m", path);
	return r;
}

/* Rebuilds what we knew about a QEMU's binary from its record, since the
 * file on disk may have changed since it started. */
static struct probe_result *probe_from_record(const struct qemu_record *rec) {
	struct probe_result *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	unsigned a = 0, b = 0, c = 0;
	sscanf(rec->version, "%u.%u.%u", &a, &b, &c);
	p->major = a;
	p->minor = b;
	p->micro = c;
	p->path = strdup(rec->binary);
	p->package = strdup("");
	p->cpr_transfer = rec->cpr_transfer;
	p->cpr_exec = rec->cpr_exec;
	p->x_ignore_shared = rec->x_ignore_shared;
	p->aux_ram_share = rec->aux_ram_share;
	p->migration_modes = calloc(4, sizeof(char *));
	if (p->migration_modes && rec->has_modes) {
		size_t n = 0;
		p->migration_modes[n++] = strdup("normal");
		if (p->cpr_transfer)
			p->migration_modes[n++] = strdup("cpr-transfer");
		if (p->cpr_exec)
			p->migration_modes[n++] = strdup("cpr-exec");
	}
	return p;
}

/* Fds lost with the fd store: QEMU (pid, pidfd) still holds each at its
 * number in at; every kind takes its own back. */
static void vm_recover_custody(struct vm *vm, pid_t pid, int pidfd,
			       const struct custody_qemu_fds *at) {
	const struct custody_vm cv = custody_vm_of(vm->spec);
	int before[_CUSTODY_VM_MAX];
	memcpy(before, vm->held, sizeof(before));
	for (unsigned k = 0; k < custody_n_kinds; k++)
		if (custody_kinds[k]->recover)
			(void)custody_kinds[k]->recover(&cv, pid, pidfd, at, vm->held);
	vm_custody_adopt(vm, before);
}

/* The socketpair to q is gone: its recovery monitor greets anew. A
 * failure is logged at level. */
static int vm_qemu_reconnect(struct vm_qemu *q, int level) {
	struct vm *vm = q->vm;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", q->qmp_path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int r = -errno;
		log_vm_errno(level, r, vm->name, "cannot reach the recovery monitor %s: %m", q->qmp_path);
		safe_close(fd);
		return r;
	}
	/* The folder, and so the path in qemu.json, is QEMU's user's: talk
	 * only to a socket that this very QEMU listens on. */
	struct ucred peer;
	socklen_t len = sizeof(peer);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0 || peer.pid != vm_qemu_pid(q)) {
		log_vm(LOG_WARNING, vm->name, "the recovery monitor %s is not QEMU pid %d's; not using it",
		       q->qmp_path, (int)vm_qemu_pid(q));
		safe_close(fd);
		return -EPERM;
	}
	q->qmp_fd = fd;
	int r = qmp_new(vm->host->base, fd, &vm_qmp_callbacks, q, vm->name, &q->qmp);
	if (r < 0) {
		q->qmp_fd = -1;
		return r;
	}
	vm_store_fd(vm, custody_fds[CUSTODY_QMP].name, q->qmp_fd);
	log_vm(LOG_INFO, vm->name, "QMP reconnected through %s", q->qmp_path);
	return 0;
}

int vm_qemu_reconnect_qmp(struct vm_qemu *q) {
	if (!q->qmp_path)
		return -ENOENT;
	if (q->qmp) {
		q->qmp = qmp_free(q->qmp);
		q->qmp_fd = -1;
		vm_unstore_fd(q->vm, custody_fds[CUSTODY_QMP].name);
	}
	return vm_qemu_reconnect(q, LOG_DEBUG);
}

int vm_qemu_exec_done_record(struct vm_qemu *q, struct json_object *json) {
	_cleanup_(qemu_record_done) struct qemu_record rec = {0};
	char why[256];
	int r = qemu_record_from_json(json, &rec, why, sizeof(why));
	if (r < 0)
		return r;
	if (rec.pid != vm_qemu_pid(q) || rec.starttime != q->starttime)
		return -ESRCH; /* a record of another process */
	struct probe_result *p = probe_from_record(&rec);
	if (!p)
		return -ENOMEM;
	probe_result_free(q->probe);
	q->probe = p;
	free(q->binary);
	q->binary = TAKE_PTR(rec.binary);
	free(q->version);
	q->version = TAKE_PTR(rec.version);
	q->binary_st.st_dev = (dev_t)rec.dev;
	q->binary_st.st_ino = (ino_t)rec.ino;
	q->binary_st.st_mtim = rec.mtime;
	return q->vm->qemu == q ? vm_save_runtime(q->vm) : 0;
}

int vm_qemu_attach(struct vm *vm, struct json_object *json, int qmp_fd,
		   const struct vm_qemu_callbacks *cb, void *userdata, struct vm_qemu **ret) {
	_cleanup_close_ int qfd = qmp_fd;
	_cleanup_(qemu_record_done) struct qemu_record rec = {0};
	char why[256];
	int r = qemu_record_from_json(json, &rec, why, sizeof(why));
	if (r < 0)
		return log_vm_errno(LOG_WARNING, r, vm->name, "ignoring a corrupt QEMU record: %s",
				    r == -EBADMSG ? why : strerror(-r));
	pid_t pid = rec.pid;
	uint64_t want = rec.starttime;
	uint64_t now = 0;

	/* Open the pidfd first, then check it is the same process: once the
	 * pidfd exists, the pid cannot be reused under it. */
	_cleanup_close_ int pidfd = pidfd_open_pid(pid);
	if (pidfd < 0)
		return pidfd; /* -ESRCH: gone */
	if (proc_starttime(pid, &now) < 0 || now != want)
		return -ESRCH; /* the pid belongs to someone else now */
	/* The record lies in a folder that the VM's own user may write: a
	 * QEMU of the VM runs as that user, or it is not the VM's. */
	uid_t uid;
	if (vm->uid && (proc_uid(pid, &uid) < 0 || uid != vm->uid))
		return log_vm_errno(LOG_WARNING, -EPERM, vm->name,
				    "qemu.json names pid %d, which does not run as the VM's uid %u: "
				    "not adopted", (int)pid, (unsigned)vm->uid);

	struct vm_qemu *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->vm = vm;
	/* What its binary was when it started, not what the file is now. */
	q->probe = probe_from_record(&rec);
	q->binary = TAKE_PTR(rec.binary);
	q->version = TAKE_PTR(rec.version);
	q->starttime = want;
	q->binary_st.st_dev = (dev_t)rec.dev;
	q->binary_st.st_ino = (ino_t)rec.ino;
	q->binary_st.st_mtim = rec.mtime;
	q->log_offset = vm->qemu_log_fd >= 0 ? lseek(vm->qemu_log_fd, 0, SEEK_END) : 0;
	q->qmp_fd = -1;
	q->go_fd = -1;
	if (cb)
		q->cb = *cb;
	q->userdata = userdata;
	q->qmp_path = TAKE_PTR(rec.qmp_path);
	q->fds = rec.fds;
	vm_recover_custody(vm, pid, pidfd, &q->fds);
	vm_custody_from_qemu(vm, pid, pidfd);
	r = qemu_adopt(vm->host->base, pid, TAKE_FD(pidfd), vm->name, vm_qemu_on_exit, q, &q->proc);
	if (r < 0) {
		vm_qemu_free(q);
		return r;
	}
	if (qfd < 0 && q->qmp_path)
		(void)vm_qemu_reconnect(q, LOG_WARNING);
	if (qfd >= 0) {
		q->qmp_fd = qfd;
		r = qmp_new_attached(vm->host->base, TAKE_FD(qfd), &vm_qmp_callbacks, q, vm->name, &q->qmp);
		if (r < 0)
			q->qmp_fd = -1;
	}
	*ret = q;
	return 0;
}

bool vm_outdated(struct vm *vm) {
	struct stat st;
	if (!vm->qemu || !vm->qemu->binary)
		return false;
	if (stat(vm->qemu->binary, &st) < 0)
		return true; /* removed */
	return st.st_dev != vm->qemu->binary_st.st_dev || st.st_ino != vm->qemu->binary_st.st_ino ||
	       st.st_mtim.tv_sec != vm->qemu->binary_st.st_mtim.tv_sec ||
	       st.st_mtim.tv_nsec != vm->qemu->binary_st.st_mtim.tv_nsec;
}

/* GetVM's nics: each NIC of the spec with the name of its tap device (the
 * same for the VM's whole life), and whether cprd holds the tap now. */
static struct json_object *vm_nics_to_json(const struct vm *vm) {
	struct json_object *nics = json_object_new_array();
	for (size_t i = 0; i < vm->spec->n_nics; i++) {
		const struct spec_nic *n = &vm->spec->nics[i];
		char mac[TAP_MAC_STRLEN], ifname[IFNAMSIZ] = "";
		tap_mac_format(n->mac, mac);
		tap_name(vm->name, (unsigned)i, ifname);
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "bridge", json_object_new_string(n->bridge));
		json_object_object_add(o, "mac", json_object_new_string(mac));
		json_object_object_add(o, "tap", json_object_new_string(ifname));
		json_object_object_add(o, "held", json_object_new_boolean(vm->held[CUSTODY_TAP0 + i] >= 0));
		json_object_array_add(nics, o);
	}
	return nics;
}

/* ---- start and stop ------------------------------------------------------ */


/* Tells whoever waits for the start or stop how it ended (once). */
static void vm_done(struct vm *vm, const struct vm_outcome *o) {
	vm_done_fn done = TAKE_PTR(vm->done);
	if (done)
		done(vm, o, TAKE_PTR(vm->done_userdata));
}

static void vm_fail(struct vm *vm, enum vm_error error, const char *reason) {
	vm_done(vm, &(struct vm_outcome){.error = error, .state = vm->state, .reason = reason});
}

static void vm_op_done(struct vm *vm) {
	vm->operation = VM_OP_NONE;
	vm->incoming = NULL;
	if (vm->op_timer)
		evtimer_del(vm->op_timer);
}

void vm_record_exit(struct vm *vm, struct vm_qemu *q, const char *how, int status, int sig,
		    bool requested) {
	char ts[32];
	struct json_object *e = json_object_new_object();
	format_rfc3339(now_usec(CLOCK_REALTIME), ts);
	json_object_object_add(e, "time", json_object_new_string(ts));
	json_object_object_add(e, "how", json_object_new_string(how));
	if (streq(how, "exited"))
		json_object_object_add(e, "status", json_object_new_int(status));
	if (streq(how, "killed") || streq(how, "dumped"))
		json_object_object_add(e, "signal", json_object_new_string(signal_name(sig)));
	json_object_object_add(e, "requested", json_object_new_boolean(requested));
	json_object_object_add(e, "stderr", q ? vm_qemu_stderr_tail(q) : json_object_new_array());
	json_object_put(vm->last_exit);
	vm->last_exit = e;
	vm_save(vm);
}

static void vm_main_exited(struct vm_qemu *q, const char *how, int status, int sig, void *userdata) {
	struct vm *vm = userdata;
	bool requested = vm->operation == VM_OP_STOP;
	char why[160];

	if (streq(how, "exited"))
		snprintf(why, sizeof(why), "QEMU pid %d exited with status %d", (int)vm_qemu_pid(q), status);
	else if (streq(how, "unknown"))
		snprintf(why, sizeof(why), "QEMU pid %d ended", (int)vm_qemu_pid(q));
	else
		snprintf(why, sizeof(why), "QEMU pid %d was killed by %s", (int)vm_qemu_pid(q),
			 signal_name(sig));
	vm_record_exit(vm, q, how, status, sig, requested);
	vm->qemu = NULL;
	vm_qemu_free(q);
	vm_unstore_fd(vm, "qmp");
	vm_save_runtime(vm);
	vm_machine_follow(vm);

	if (requested) {
		vm_op_done(vm);
		vm_release_custody(vm);
		vm->started_usec = 0;
		vm_set_state(vm, VM_STOPPED, why);
		vm->host->emit(vm->host, vm, "stopped", why);
		vm_done(vm, &(struct vm_outcome){.error = VM_OK});
		return;
	}
	if (vm->operation == VM_OP_START) {
		vm_op_done(vm);
		vm_set_state(vm, VM_CRASHED, why);
		struct json_object *tail = json_object_object_get(vm->last_exit, "stderr");
		size_t n = json_object_array_length(tail);
		const char *last = n ? json_object_get_string(json_object_array_get_idx(tail, n - 1)) : "";
		char reason[1024];
		snprintf(reason, sizeof(reason), "%s while starting: %s (see cprctl log %s --qemu)", why,
			 last, vm->name);
		vm_fail(vm, VM_ERROR_FAILED, reason);
		return;
	}
	/* Nobody asked for this: the guest crashed or QEMU was killed. Guest
	 * RAM stays in custody so nothing more is lost. */
	log_vm(LOG_WARNING, vm->name, "%s unexpectedly; guest RAM stays held", why);
	vm->started_usec = 0;
	vm_set_state(vm, VM_CRASHED, why);
	vm->host->emit(vm->host, vm, "exited", why);
}

static void vm_main_event(struct vm_qemu *q, const char *name, struct json_object *data,
			  int64_t ts, void *userdata) {
	struct vm *vm = userdata;
	log_vm(LOG_DEBUG, vm->name, "QMP event %s", name);
	if (vm->operation != VM_OP_NONE && vm->operation != VM_OP_STOP)
		return; /* start and upgrade follow the run state themselves */
	if (streq(name, "STOP") && vm->state == VM_RUNNING)
		vm_set_state(vm, VM_PAUSED, "guest paused");
	else if (streq(name, "RESUME") && vm->state == VM_PAUSED)
		vm_set_state(vm, VM_RUNNING, "guest resumed");
	else if (streq(name, "SHUTDOWN"))
		log_vm(LOG_INFO, vm->name, "guest shut down");
}

static void vm_on_cont(struct qmp *qmp, struct json_object *ret, const struct qmp_error *err,
		       void *userdata) {
	struct vm *vm = userdata;
	if (err) {
		log_vm(LOG_ERR, vm->name, "cont failed: %s", err->desc);
		vm_qemu_kill(vm->qemu, SIGKILL); /* the exit handler reports it */
		return;
	}
	vm_op_done(vm);
	vm->started_usec = now_usec(CLOCK_REALTIME);
	vm_save_runtime(vm);
	vm_qemu_take_custody(vm->qemu);
	vm_machine_follow(vm);
	vm_set_state(vm, VM_RUNNING, "guest started");
	vm->host->emit(vm->host, vm, "started", "guest started");
	vm_done(vm, &(struct vm_outcome){.error = VM_OK});
}

static void vm_main_ready(struct vm_qemu *q, void *userdata) {
	struct vm *vm = userdata;
	if (vm->operation != VM_OP_START)
		return;
	if (vm->incoming)
		vm->incoming->ready(vm, q->qmp, vm->incoming_userdata);
	else
		qmp_command(q->qmp, "cont", NULL, QMP_COMMAND_TIMEOUT_MS, vm_on_cont, vm);
}

void vm_start_incoming_done(struct vm *vm, const char *reason) {
	if (vm->operation != VM_OP_START || !vm->qemu)
		return;
	if (!reason) {
		qmp_command(vm->qemu->qmp, "cont", NULL, QMP_COMMAND_TIMEOUT_MS, vm_on_cont, vm);
		return;
	}
	log_vm(LOG_ERR, vm->name, "%s", reason);
	vm_qemu_kill(vm->qemu, SIGKILL); /* the exit handler ends the start */
}

const struct vm_qemu_callbacks vm_main_callbacks = {
	.ready = vm_main_ready,
	.event = vm_main_event,
	.exited = vm_main_exited,
};

void vm_watch_main(struct vm *vm) {
	if (vm->qemu)
		vm_qemu_set_callbacks(vm->qemu, &vm_main_callbacks, vm);
	/* After a restart, an upgrade or its rollback: the QEMU left running. */
	vm_machine_follow(vm);
}

/* Before a fresh QEMU: the VM's own user gets its disks (each grant is in
 * vm.json before the file changes, so whatever happens next, a cprd knows
 * what to put back), then a child as QEMU's user opens each disk as QEMU
 * will, so a disk it cannot reach fails the start with a sentence rather
 * than in QEMU's log. */
static int vm_give_disks(struct vm *vm, char *why, size_t size) {
	char msg[512];
	size_t failed = 0;
	int r = 0;
	vm_return_disks(vm);
	if (vm->uid) {
		r = disk_grants_plan(vm->spec->disks, vm->spec->n_disks, vm->uid, vm->host->qemu_users,
				     &vm->disk_grants, &failed, msg, sizeof(msg));
		if (r < 0) {
			disk_grants_clear(&vm->disk_grants); /* nothing was changed */
		} else if ((r = vm_save(vm)) < 0) {
			snprintf(msg, sizeof(msg), "cannot record the grant in vm.json: %s", strerror(-r));
			disk_grants_clear(&vm->disk_grants);
		} else if ((r = disk_grants_apply(&vm->disk_grants, &failed, msg, sizeof(msg))) < 0) {
			vm_return_disks(vm);
		}
		if (r < 0) {
			snprintf(why, size, "disks[%zu]: %s", failed, msg);
			return r;
		}
	}
	size_t below = SIZE_MAX;
	r = disk_grants_check_open(vm_qemu_user(vm), vm->spec->disks, vm->spec->n_disks, &failed,
				   &below);
	if (r < 0) {
		const struct qemu_identity *id = vm_qemu_user(vm) ? vm_qemu_user(vm) : qemu_default_user();
		const struct spec_disk *d = &vm->spec->disks[failed];
		bool top = below >= d->n_backing;
		snprintf(why, size,
			 "QEMU, as uid %u, cannot open disks[%zu]%s %s %s: %s; QEMU's user must be let "
			 "in by the file's owner, mode or ACL, and every folder above it must be "
			 "searchable (x) by that user (see docs/operations.md)",
			 id ? (unsigned)id->uid : 0U, failed, top ? "" : "'s backing file",
			 top ? d->path : d->backing[below],
			 top && !d->readonly ? "read-write" : "read-only", strerror(-r));
		vm_return_disks(vm);
	}
	return r;
}

/* The start ended before a QEMU ran: back to where the VM was. */
static void vm_start_fail(struct vm *vm, const struct vm_outcome *o) {
	vm_return_disks(vm);
	vm_op_done(vm);
	vm_set_state(vm, vm->last_exit ? VM_STOPPED : VM_DEFINED, "start failed");
	vm_done(vm, o);
}

/* A group the last QEMU had is still open in cprd's copies: they go first,
 * then the devices are checked as at create. False: the start failed. */
static bool vm_start_devices(struct vm *vm) {
	char why[768];
	const char *device = NULL;
	vm_custody_give_up_from_qemu(vm);
	if (vm_devices_check(vm->spec, &device, why, sizeof(why)) >= 0)
		return true;
	vm_start_fail(vm, &(struct vm_outcome){.error = VM_ERROR_DEVICE_UNAVAILABLE,
					       .state = vm->state,
					       .device = device,
					       .reason = why});
	return false;
}

static void vm_on_start_probe(struct probe *p, int error, struct probe_result *result,
			      const char *reason, void *userdata) {
	struct vm *vm = userdata;
	if (error < 0)
		return vm_start_fail(vm, &(struct vm_outcome){
			.error = VM_ERROR_PROBE_FAILED,
			.state = vm->state,
			.binary = vm->spec->qemu,
			.reason = reason ? reason : strerror(-error),
		});
	if (!probe_result_resolve_machine(result, vm->spec->machine)) {
		char why[256];
		snprintf(why, sizeof(why), "QEMU %u.%u.%u at %s has no machine type %s", result->major,
			 result->minor, result->micro, vm->spec->qemu, vm->spec->machine);
		probe_result_free(result);
		return vm_start_fail(vm, &(struct vm_outcome){
			.error = VM_ERROR_BAD_STATE, .state = vm->state, .reason = why});
	}

	if (!vm_start_devices(vm)) {
		probe_result_free(result);
		return;
	}
	char refusal[1024];
	if (vm_give_disks(vm, refusal, sizeof(refusal)) < 0) {
		probe_result_free(result);
		log_vm(LOG_ERR, vm->name, "%s", refusal);
		return vm_start_fail(vm, &(struct vm_outcome){
			.error = VM_ERROR_FAILED, .state = vm->state, .reason = refusal});
	}
	/* A start that loads a snapshot takes the guest in instead of booting. */
	static const struct cmdline_incoming defer = {.kind = CMDLINE_INCOMING_DEFER};
	int r = vm_qemu_spawn(vm, vm->spec->qemu, result, vm->incoming ? &defer : NULL,
			      &vm_main_callbacks, vm, &vm->qemu);
	probe_result_free(result);
	if (r < 0) {
		char why[256];
		snprintf(why, sizeof(why), "cannot start QEMU: %s", strerror(-r));
		return vm_start_fail(vm, &(struct vm_outcome){
			.error = VM_ERROR_FAILED, .state = vm->state, .reason = why});
	}
	/* Recorded now, not only once the guest runs: a cprd killed before
	 * then must not leave a QEMU nobody knows, holding the VM's disks. */
	vm_save_runtime(vm);
}

static void vm_on_op_timeout(evutil_socket_t fd, short what, void *userdata) {
	struct vm *vm = userdata;
	if (vm->operation == VM_OP_NONE || !vm->qemu)
		return;
	if (vm->operation == VM_OP_START) {
		log_vm(LOG_ERR, vm->name, "QEMU did not start the guest within %d s; killing it",
		       VM_START_TIMEOUT_MS / 1000);
		vm_qemu_kill(vm->qemu, SIGKILL);
	} else if (vm->operation == VM_OP_STOP && !vm->stop_force) {
		log_vm(LOG_INFO, vm->name, "guest did not power off in time; quitting QEMU");
		vm->stop_force = true;
		qmp_command(vm->qemu->qmp, "quit", NULL, VM_QUIT_TIMEOUT_MS, qmp_reply_ignore, NULL);
		struct timeval tv = {VM_QUIT_TIMEOUT_MS / 1000, 0};
		evtimer_add(vm->op_timer, &tv);
	} else {
		log_vm(LOG_WARNING, vm->name, "QEMU did not quit in time; killing it");
		vm_qemu_kill(vm->qemu, SIGKILL);
	}
}

int vm_start_incoming(struct vm *vm, const struct vm_incoming *in, void *in_userdata,
		      vm_done_fn done, void *userdata) {
	vm->incoming = in;
	vm->incoming_userdata = in_userdata;
	int r = vm_start(vm, done, userdata);
	if (r < 0) {
		vm->incoming = NULL;
		return r;
	}
	if (in->timeout_sec > 0) {
		struct timeval tv = {in->timeout_sec, 0};
		evtimer_add(vm->op_timer, &tv);
	}
	return 0;
}

int vm_start(struct vm *vm, vm_done_fn done, void *userdata) {
	vm->operation = VM_OP_START;
	vm->accel = NULL; /* a new boot may pick anew */
	vm->done = done;
	vm->done_userdata = userdata;
	vm_set_state(vm, VM_STARTING, NULL);
	struct timeval tv = {VM_START_TIMEOUT_MS / 1000, 0};
	evtimer_add(vm->op_timer, &tv);
	char why[512];
	_cleanup_close_ int bfd = binary_open(vm->spec->qemu, why, sizeof(why));
	const struct probe_options po = {.user = vm_qemu_user(vm)};
	int r = bfd < 0 ? bfd : probe_run(vm->host->base, vm->spec->qemu, bfd, &po, vm_on_start_probe, vm, NULL);
	if (r < 0) {
		if (bfd < 0)
			log_vm(LOG_ERR, vm->name, "refusing to run %s: %s", vm->spec->qemu, why);
		vm_op_done(vm);
		vm_set_state(vm, vm->last_exit ? VM_STOPPED : VM_DEFINED, "start failed");
		vm->done = NULL;
		vm->done_userdata = NULL;
		return r;
	}
	return 0;
}

int vm_stop(struct vm *vm, bool force, int timeout_sec, vm_done_fn done, void *userdata) {
	vm->operation = VM_OP_STOP;
	vm->stop_force = force;
	vm->done = done;
	vm->done_userdata = userdata;
	vm_set_state(vm, VM_STOPPING, force ? "quitting QEMU" : "ACPI power-down requested");
	if (!vm->qemu || qmp_get_error(vm->qemu->qmp) < 0) {
		vm_qemu_kill(vm->qemu, SIGTERM);
		vm->stop_force = true;
		struct timeval tv = {VM_QUIT_TIMEOUT_MS / 1000, 0};
		evtimer_add(vm->op_timer, &tv);
		return 0;
	}
	qmp_command(vm->qemu->qmp, force ? "quit" : "system_powerdown", NULL, VM_QUIT_TIMEOUT_MS,
		    qmp_reply_ignore, NULL);
	struct timeval tv = {force ? VM_QUIT_TIMEOUT_MS / 1000 : timeout_sec, 0};
	evtimer_add(vm->op_timer, &tv);
	return 0;
}

/* ---- life cycle and persistence ------------------------------------------ */

int vm_new(struct vm_host *host, struct vm_spec *spec, const char *dir, struct vm **ret) {
	struct vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->host = host;
	vm->spec = spec;
	vm->name = strdup(spec->name);
	vm->dir = strdup(dir);
	vm->state = VM_DEFINED;
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		vm->held[i] = -1;
	vm->console_log_fd = vm->qemu_log_fd = -1;
	vm->history = json_object_new_array();
	vm->op_timer = evtimer_new(host->base, vm_on_op_timeout, vm);
	if (!vm->name || !vm->dir || !vm->history || !vm->op_timer) {
		vm->spec = NULL;
		vm_free(vm);
		return -ENOMEM;
	}
	*ret = vm;
	return 0;
}

void vm_free(struct vm *vm) {
	if (!vm)
		return;
	/* Only when cprd exits: whoever waits learns it, so nothing it holds leaks. */
	vm_fail(vm, VM_ERROR_FAILED, "cprd exited before the operation finished");
	vm_qemu_free(vm->qemu);
	vm_close_custody(vm);
	safe_close(vm->console_log_fd);
	safe_close(vm->qemu_log_fd);
	if (vm->op_timer)
		event_free(vm->op_timer);
	disk_grants_clear(&vm->disk_grants);
	json_object_put(vm->last_exit);
	json_object_put(vm->history);
	json_object_put(vm->history_json);
	json_object_put(vm->spec_json);
	spec_free(vm->spec);
	free(vm->name);
	free(vm->dir);
	free(vm);
}

int vm_save(struct vm *vm) {
	char path[PATH_MAX];
	/* Every change of the spec is saved: drop the cached JSON here. */
	json_object_put(vm->spec_json);
	vm->spec_json = NULL;
	_cleanup_json_ struct json_object *o = json_object_new_object();
	json_object_object_add(o, "spec", spec_to_json(vm->spec));
	json_object_object_add(o, "upgrades", json_object_get(vm->history));
	if (vm->last_exit)
		json_object_object_add(o, "lastExit", json_object_get(vm->last_exit));
	if (vm->uid)
		json_object_object_add(o, "uid", json_object_new_int64(vm->uid));
	if (vm->disk_grants.n)
		json_object_object_add(o, "diskGrants", disk_grants_to_json(&vm->disk_grants));
	snprintf(path, sizeof(path), "%s/vm.json", vm->dir);
	int r = write_json_atomic(path, o);
	if (r < 0)
		log_vm_errno(LOG_ERR, r, vm->name, "cannot save %s: %m", path);
	return r;
}

int vm_load(struct vm_host *host, const char *dir, struct vm **ret) {
	char path[PATH_MAX];
	_cleanup_free_ char *text = NULL;
	struct spec_error err;
	struct vm_spec *spec = NULL;
	struct json_object *v;

	snprintf(path, sizeof(path), "%s/vm.json", dir);
	int r = read_file(path, 16 * 1024 * 1024, &text, NULL);
	if (r < 0)
		return r;
	_cleanup_json_ struct json_object *o = json_tokener_parse(text);
	if (!o || !json_object_object_get_ex(o, "spec", &v))
		return log_error_errno(-EBADMSG, "%s is not a VM file", path);
	r = spec_from_json_trusted(v, &spec, &err);
	if (r < 0)
		return log_error_errno(r, "%s: %s %s", path, err.field, err.reason);
	struct vm *vm;
	r = vm_new(host, spec, dir, &vm);
	if (r < 0) {
		spec_free(spec);
		return r;
	}
	if (json_object_object_get_ex(o, "upgrades", &v) && json_object_is_type(v, json_type_array)) {
		json_object_put(vm->history);
		vm->history = json_object_get(v);
	}
	if (json_object_object_get_ex(o, "lastExit", &v) && json_object_is_type(v, json_type_object))
		vm->last_exit = json_object_get(v);
	/* Its own user and what was given to it: a bad record is refused, so
	 * nothing runs as a uid, or is chowned back, on a guess. */
	char why[256];
	int64_t uid = 0;
	if ((r = json_field_int(o, "uid", false, 1, USERS_UID_MAX, &uid, why, sizeof(why))) < 0 ||
	    (json_object_object_get_ex(o, "diskGrants", &v) &&
	     (r = disk_grants_from_json(v, &vm->disk_grants, why, sizeof(why))) < 0)) {
		vm_free(vm);
		return log_error_errno(r, "%s: %s", path, r == -EBADMSG ? why : strerror(-r));
	}
	if (uid)
		vm_set_uid(vm, (uid_t)uid);
	vm->state = VM_STOPPED;
	*ret = vm;
	return 0;
}

void vm_add_history(struct vm *vm, struct json_object *record) {
	json_object_array_add(vm->history, record);
	json_object_put(vm->history_json);
	vm->history_json = NULL;
	size_t n = json_object_array_length(vm->history);
	if (n > VM_HISTORY_MAX)
		json_object_array_del_idx(vm->history, 0, n - VM_HISTORY_MAX);
	vm_save(vm);
}

static void add_fd(struct json_object *a, const struct custody_fd *c, int fd, const char *vm) {
	if (fd < 0)
		return;
	char name[128];
	snprintf(name, sizeof(name), "%s.%s", vm, c->name);
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "kind", json_object_new_string(c->kind));
	json_object_object_add(o, "fd", json_object_new_int(fd));
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_array_add(a, o);
}

struct json_object *vm_to_json(struct vm *vm) {
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(vm->name));
	json_object_object_add(o, "state", json_object_new_string(vm_state_name(vm)));
	/* The spec and the history rarely change: ListVMs of many VMs prints
	 * them from text kept since the last change. */
	if (!vm->spec_json) {
		_cleanup_json_ struct json_object *spec = spec_to_json(vm->spec);
		vm->spec_json = json_frozen(spec);
	}
	if (!vm->history_json)
		vm->history_json = json_frozen(vm->history);
	json_object_object_add(o, "spec", vm->spec_json ? json_object_get(vm->spec_json) : spec_to_json(vm->spec));
	json_object_object_add(o, "machine", json_object_new_string(vm->spec->machine));
	json_object_object_add(o, "qemu", json_object_new_string(vm->qemu ? vm->qemu->binary : vm->spec->qemu));
	if (vm->qemu) {
		json_object_object_add(o, "qemuVersion", json_object_new_string(vm_qemu_version(vm->qemu)));
		json_object_object_add(o, "pid", json_object_new_int(vm_qemu_pid(vm->qemu)));
	}
	bool outdated = vm_outdated(vm);
	json_object_object_add(o, "outdated", json_object_new_boolean(outdated));
	/* What replaced it, once probed (outdated.c probes a changed binary
	 * as soon as it is noticed). */
	char newer[48];
	if (outdated && probe_cache_version(vm->qemu->binary, newer, sizeof(newer)))
		json_object_object_add(o, "newQemuVersion", json_object_new_string(newer));
	if (vm->uid)
		json_object_object_add(o, "uid", json_object_new_int64(vm->uid));
	if (vm->started_usec)
		json_object_object_add(
			o, "uptimeSec",
			json_new_fixed3((double)(now_usec(CLOCK_REALTIME) - vm->started_usec) / 1e6));
	struct json_object *fds = json_object_new_array();
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		if (i != CUSTODY_QMP || (vm->qemu && vm->qemu->qmp))
			add_fd(fds, &custody_fds[i], vm_held_fd(vm, i), vm->name);
	json_object_object_add(o, "fds", fds);
	json_object_object_add(o, "nics", vm_nics_to_json(vm));
	if (vm->last_exit)
		json_object_object_add(o, "lastExit", json_object_get(vm->last_exit));
	json_object_object_add(o, "upgrades", json_object_get(vm->history_json ? vm->history_json : vm->history));
	return o;
}
