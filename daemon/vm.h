/* A VM in cprd's custody: its spec, the fds that hold its state (guest RAM
 * memfd, console), and the QEMU process that currently runs it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "custody.h"
#include "disk-grant.h"
#include "migration.h"
#include "qemu.h"

struct event;
struct event_base;
struct json_object;
struct cmdline_incoming;
struct mode_guest;
struct probe_result;
struct qemu_proc;
struct qmp;
struct vm;
struct vm_spec;

#define VM_CONSOLE_LOG_MAX (1024 * 1024)   /* bytes kept per console log file */
#define VM_QEMU_LOG_MAX (1024 * 1024)      /* likewise for QEMU's stderr */
#define VM_STDERR_TAIL_LINES 20            /* lines of stderr kept in lastExit */
#define VM_START_TIMEOUT_MS 30000          /* from fork to the guest running */
#define VM_QUIT_TIMEOUT_MS 5000            /* from quit to exit, then SIGKILL */
#define VM_STOP_TIMEOUT_SEC 30             /* ACPI power-down, then quit */
#define VM_HISTORY_MAX 100                 /* upgrade records kept */

enum vm_state {
	VM_DEFINED,
	VM_STARTING,
	VM_RUNNING,
	VM_PAUSED,
	VM_STOPPING,
	VM_STOPPED,
	VM_CRASHED,
	_VM_STATE_MAX,
};

const char *vm_state_to_string(enum vm_state s);

/* What runs on a VM; only one operation at a time. The names are the
 * Busy error's `operation`. */
enum vm_operation {
	VM_OP_NONE,
	VM_OP_CREATE,
	VM_OP_START,
	VM_OP_STOP,
	VM_OP_PAUSE,
	VM_OP_RESUME,
	VM_OP_UPGRADE_PREFLIGHT, /* the VM is not touched yet */
	VM_OP_UPGRADE,           /* past preflight: the state reads "upgrading" */
	VM_OP_SNAPSHOT,          /* a live snapshot is being written (snapshot.c) */
	_VM_OP_MAX,
};

/* NULL for VM_OP_NONE. */
const char *vm_operation_to_string(enum vm_operation op);

/* How a start or a stop failed. The domain code says what went wrong;
 * api.c picks the io.cprd.Manager error for it. */
enum vm_error {
	VM_OK,
	VM_ERROR_FAILED,       /* Failed */
	VM_ERROR_PROBE_FAILED, /* QEMUProbeFailed: the binary could not be probed */
	VM_ERROR_BAD_STATE,    /* BadState: the VM cannot do it as it is */
	VM_ERROR_DEVICE_UNAVAILABLE, /* DeviceUnavailable: a device of the spec */
};

/* How a start or a stop ended, for whoever asked. */
struct vm_outcome {
	enum vm_error error;
	enum vm_state state; /* the state the failure was met in */
	const char *binary;  /* the binary a probe failed on */
	const char *device;  /* the device that is unavailable */
	const char *reason;  /* a sentence, for every failure */
};

typedef void (*vm_done_fn)(struct vm *vm, const struct vm_outcome *o, void *userdata);

/* One QEMU process serving a VM (the current one, or an upgrade's target)
 * with its QMP channel. */
struct vm_qemu;

struct vm_qemu_callbacks {
	void (*ready)(struct vm_qemu *q, void *userdata);
	void (*event)(struct vm_qemu *q, const char *name, struct json_object *data,
		      int64_t timestamp_usec, void *userdata);
	void (*exited)(struct vm_qemu *q, const char *how, int status, int sig, void *userdata);
};


/* What a VM needs from the registry that holds it (manager.c, a layer
 * above): the event loop, the runtime folder, and where its events go. */
struct vm_host {
	struct event_base *base;
	const char *runtime_dir;
	/* --qemu-users's range (users.h), or NULL: which uids are a VM's own. */
	const struct users_range *qemu_users;
	/* Tells WatchEvents subscribers and the log. */
	void (*emit)(struct vm_host *h, struct vm *vm, const char *type, const char *message);
	/* The guest wrote len bytes on its console, which end at offset in
	 * console.log (for ReadLog calls that follow it). May be NULL. */
	void (*console)(struct vm_host *h, struct vm *vm, const char *data, size_t len,
			uint64_t offset);
};

struct vm {
	struct vm_host *host;
	char *name;
	struct vm_spec *spec; /* spec->machine is the pinned versioned type */
	char *dir;            /* its folder under the state directory */
	enum vm_state state;
	enum vm_operation operation;

	/* Custody: the per-VM fds (custody.h), -1 when not held. */
	int held[_CUSTODY_VM_MAX];
	struct event *console_ev;
	int console_log_fd;
	uint64_t console_log_size;
	bool console_log_failing; /* the last write failed (logged once, not per write) */
	int qemu_log_fd;

	struct vm_qemu *qemu; /* the QEMU the guest runs on, or NULL */
	uint64_t started_usec; /* realtime when the guest booted */
	const char *accel;     /* the accelerator the guest runs with */

	/* Its own user (cprd --qemu-users), kept in vm.json: the uid, and the
	 * gid of the same number, that its QEMUs and probes run as; 0: none,
	 * they run as qemu_default_user(). Changed only while no QEMU runs. */
	uid_t uid;
	struct qemu_identity user; /* uid's identity, when uid is set */
	/* The disks given to uid while the VM runs, in vm.json too. */
	struct disk_grants disk_grants;

	struct json_object *last_exit; /* Exit, or NULL */
	struct json_object *spec_json;    /* json_frozen(spec_to_json(spec)), cached */
	struct json_object *history_json; /* json_frozen(history), cached */
	struct json_object *history;   /* []UpgradeRecord */

	/* Whoever waits for start or stop to finish. */
	vm_done_fn done;
	void *done_userdata;
	struct event *op_timer;
	bool stop_force;
	/* The rollback of an upgrade a restart interrupted (attach.c). It
	 * lives as long as the VM: the QMP replies it waits for may outlive
	 * the settlement, and go when the QEMU does. */
	struct migration_rollback settle_rollback;
	/* A start that loads a snapshot (vm_start_incoming), or NULL. */
	const struct vm_incoming *incoming;
	void *incoming_userdata;
};

/* A start whose QEMU takes the guest in instead of booting it (a restore,
 * snapshot.c): the QEMU gets -incoming defer, and once its QMP is up,
 * ready runs instead of cont. The caller then ends the start with
 * vm_start_incoming_done: cont and the VM runs, or the QEMU is killed and
 * the start fails with the caller's reason. */
struct vm_incoming {
	void (*ready)(struct vm *vm, struct qmp *qmp, void *userdata);
	int timeout_sec; /* from fork until the guest runs; 0: VM_START_TIMEOUT_MS */
};

int vm_new(struct vm_host *host, struct vm_spec *spec, const char *dir, struct vm **ret);
void vm_free(struct vm *vm);
/* Writes vm.json (spec, history, last exit) atomically. */
int vm_save(struct vm *vm);
int vm_load(struct vm_host *host, const char *dir, struct vm **ret);

bool vm_is_active(const struct vm *vm); /* a QEMU runs or is being started */
/* Whom the VM's QEMUs and the probes of its binaries run as: its own user,
 * or NULL for qemu_default_user() (--qemu-user's, or root). */
const struct qemu_identity *vm_qemu_user(const struct vm *vm);
/* Gives the VM its own uid (0: none). Only while no QEMU of it runs;
 * the caller saves. */
void vm_set_uid(struct vm *vm, uid_t uid);
/* Whether QEMU pid runs as the user vm_qemu_user() names; else why says
 * whom it runs as. */
bool vm_qemu_user_is(const struct vm *vm, pid_t pid, char *why, size_t size);
/* The state clients see: vm_state_to_string(), or "upgrading". */
const char *vm_state_name(const struct vm *vm);
void vm_set_state(struct vm *vm, enum vm_state s, const char *why);

/* Starts the VM; done (may be NULL) runs once, from the event loop, when the
 * guest runs or the start failed, or when the VM is freed first. A negative
 * errno return means nothing started and done will not run. */
int vm_start(struct vm *vm, vm_done_fn done, void *userdata);
/* vm_start for a VM whose QEMU loads a snapshot (see struct vm_incoming). */
int vm_start_incoming(struct vm *vm, const struct vm_incoming *in, void *in_userdata,
		      vm_done_fn done, void *userdata);
/* Ends such a start: reason NULL sends cont; else the QEMU is killed and
 * the start fails as Failed with reason. */
void vm_start_incoming_done(struct vm *vm, const char *reason);
/* The callbacks of a VM's current QEMU outside of an upgrade; an
 * operation that watches the QEMU itself (a snapshot) hands them on. */
extern const struct vm_qemu_callbacks vm_main_callbacks;
/* Stops the VM: ACPI power-down (quit when force), then quit, then SIGKILL;
 * done as for vm_start. */
int vm_stop(struct vm *vm, bool force, int timeout_sec, vm_done_fn done, void *userdata);
/* Takes back the per-VM fds a previous cprd held, from the fd store. */
void vm_restore_custody(struct vm *vm);
/* Releases the fds held for the VM (stopped on purpose or deleted). */
void vm_release_custody(struct vm *vm);
/* The host root the devices are looked up under (vfio.h). */
#define VM_HOST_ROOT ""
/* Whether the host can give the guest each device of spec now (vfio.h:
 * sysfs, then the kernel's container, which needs the group closed). On
 * failure *device is the one at fault and why says why. */
int vm_devices_check(const struct vm_spec *spec, const char **device, char *why, size_t size);
/* What the upgrade modes must know of the running guest: its devices, its
 * accelerator, and which device can interrupt (read from sysfs now). */
void vm_mode_guest(const struct vm *vm, struct mode_guest *ret);

struct json_object *vm_to_json(struct vm *vm);
/* True when the binary the running QEMU came from changed on disk. */
bool vm_outdated(struct vm *vm);

/* ---- QEMU processes of a VM ---------------------------------------------- */

/* Spawns a QEMU for vm from binary (probed as probe) with the VM's held fds
 * and a fresh QMP channel. incoming may be NULL. */
int vm_qemu_spawn(struct vm *vm, const char *binary, const struct probe_result *probe,
		  const struct cmdline_incoming *incoming, const struct vm_qemu_callbacks *cb,
		  void *userdata, struct vm_qemu **ret);
/* An upgrade target (incoming set) waits before exec until it is let run,
 * so that the journal names it first: a cprd that dies before takes it
 * along (it ends when the pipe closes) instead of leaving a QEMU that no
 * record names. Does nothing for any other QEMU. */
int vm_qemu_let_run(struct vm_qemu *q);
void vm_qemu_free(struct vm_qemu *q);
/* The command line q's process is to execute in place (cpr-exec): the
 * same VM and held fds at the same numbers, run from exec_path, which
 * stands for the binary probed as probe. NULL-ended, free with strv_free. */
int vm_qemu_exec_argv(struct vm_qemu *q, const char *exec_path, const struct probe_result *probe,
		      const struct cmdline_incoming *incoming, char ***ret);
/* q's process now runs binary (probed as probe) after executing it in
 * place: the same pid, pidfd and QMP channel. Updates what cprd knows of
 * it and qemu.json. */
int vm_qemu_exec_done(struct vm_qemu *q, const char *binary, const struct probe_result *probe);
/* The same, after a restart, from the record (vm_qemu_exec_record) of what
 * q's process runs now; -ESRCH when rec names another process. */
int vm_qemu_exec_done_record(struct vm_qemu *q, struct json_object *rec);
void vm_qemu_set_callbacks(struct vm_qemu *q, const struct vm_qemu_callbacks *cb, void *userdata);
struct qmp *vm_qemu_qmp(struct vm_qemu *q);
pid_t vm_qemu_pid(const struct vm_qemu *q);
bool vm_qemu_running(const struct vm_qemu *q);
const char *vm_qemu_binary(const struct vm_qemu *q);
const char *vm_qemu_version(const struct vm_qemu *q);
const struct probe_result *vm_qemu_probe(const struct vm_qemu *q);
/* Whether q's QEMU has migration modes (QEMU >= 8.2); false for NULL. */
bool vm_qemu_has_migration_modes(const struct vm_qemu *q);
int vm_qemu_kill(struct vm_qemu *q, int sig);
/* The last lines this QEMU wrote on stderr, joined, for error messages. */
void vm_qemu_stderr_summary(struct vm_qemu *q, char *buf, size_t size);
/* Makes q the VM's current QEMU (after an upgrade), and takes copies of
 * what it opened itself (custody_ops.from_qemu). The old one is returned to
 * the caller. */
struct vm_qemu *vm_adopt_qemu(struct vm *vm, struct vm_qemu *q);
/* Gives the VM's current QEMU the callbacks of a VM not being upgraded. */
void vm_watch_main(struct vm *vm);


/* Custody in systemd's fd store under NAME.what. */
void vm_store_fd(struct vm *vm, const char *what, int fd);
void vm_unstore_fd(struct vm *vm, const char *what);
void vm_watch_console(struct vm *vm);

/* The runtime record (runtime dir, vms/NAME/qemu.json) that lets a
 * restarted cprd find the VM's QEMU again: pid, its start time, binary. */
char *vm_runtime_file(struct vm *vm, const char *file);
/* <runtime>/vms/NAME, and the same created (or fixed): 0700, owned by
 * QEMU's user, who binds its recovery monitor and incoming sockets there. */
char *vm_runtime_dir(struct vm *vm);
int vm_runtime_dir_make(struct vm *vm, char **ret);
int vm_save_runtime(struct vm *vm);
struct json_object *vm_qemu_record(struct vm_qemu *q);
/* The record q's process will have once it executed binary (probed as
 * probe) in place: the same pid, start time and recovery monitor. */
struct json_object *vm_qemu_exec_record(struct vm_qemu *q, const char *binary,
					const struct probe_result *probe);
/* Re-attaches to a running QEMU described by rec (pid checked against its
 * start time) with its QMP fd from the fd store (taken, may be -1). */
int vm_qemu_attach(struct vm *vm, struct json_object *rec, int qmp_fd,
		   const struct vm_qemu_callbacks *cb, void *userdata, struct vm_qemu **ret);
/* Connects to q's recovery monitor again, dropping the QMP channel it has
 * (a process that executed a new binary binds the monitor anew). 0, or a
 * negative errno when it cannot be reached (yet). */
int vm_qemu_reconnect_qmp(struct vm_qemu *q);

/* Lists the VM's fds for CPRD_REEXEC_FDS and keeps them across exec. */
int vm_reexec_fds(struct vm *vm, char **list);

/* Records how the VM's QEMU ended as lastExit (how: "exited", "killed",
 * "dumped" or "unknown"), with the last lines q wrote on stderr (q may be
 * NULL: none known), and saves. */
void vm_record_exit(struct vm *vm, struct vm_qemu *q, const char *how, int status, int sig,
		    bool requested);
/* Appends an upgrade record to the history (capped) and saves. */
void vm_add_history(struct vm *vm, struct json_object *record);
