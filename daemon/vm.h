/* A VM in cprd's custody: its spec, the fds that hold its state (guest RAM
 * memfd, console), and the QEMU process that currently runs it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "varlink.h"

struct event;
struct json_object;
struct manager;
struct probe_result;
struct qemu_proc;
struct qmp;
struct vm_spec;

#define VM_CONSOLE_LOG_MAX (1024 * 1024)   /* bytes kept per console log file */
#define VM_QEMU_LOG_MAX (1024 * 1024)      /* likewise for QEMU's stderr */
#define VM_STDERR_TAIL_LINES 20            /* lines of stderr kept in lastExit */
#define VM_START_TIMEOUT_MS 30000          /* from fork to the guest running */
#define VM_QUIT_TIMEOUT_MS 5000            /* from quit to exit, then SIGKILL */
#define VM_STOP_TIMEOUT_SEC 30             /* ACPI power-down, then quit */
#define VM_HISTORY_MAX 100                 /* upgrade records kept */

/* Fixed fd numbers inside QEMU. */
#define VM_FD_QMP 3
#define VM_FD_CONSOLE 4
#define VM_FD_RAM 5
/* QEMU also keeps a copy of cprd's own console end, unused by QEMU, so a
 * cprd that lost its fds (no fd store) can fetch it back (pidfd_getfd). */
#define VM_FD_CONSOLE_CPRD 6

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

/* One QEMU process serving a VM (the current one, or an upgrade's target)
 * with its QMP channel. */
struct vm_qemu;

struct vm_qemu_callbacks {
	void (*ready)(struct vm_qemu *q, void *userdata);
	void (*event)(struct vm_qemu *q, const char *name, struct json_object *data,
		      int64_t timestamp_usec, void *userdata);
	void (*exited)(struct vm_qemu *q, const char *how, int status, int sig, void *userdata);
};

/* Extra arguments for an upgrade's target. */
struct vm_incoming {
	const char *const *args; /* appended to the command line, NULL-ended */
};

struct vm {
	struct manager *manager;
	char *name;
	struct vm_spec *spec; /* spec->machine is the pinned versioned type */
	char *dir;            /* its folder under the state directory */
	enum vm_state state;
	const char *operation; /* "start", "stop", "upgrade" while one runs */

	/* Custody. */
	int ram_fd;
	uint64_t ram_bytes;
	int console_fd;      /* our end of the console socketpair */
	int console_peer_fd; /* QEMU's end, handed to every QEMU of this VM */
	struct event *console_ev;
	int console_log_fd;
	uint64_t console_log_size;
	int qemu_log_fd;

	struct vm_qemu *qemu; /* the QEMU the guest runs on, or NULL */
	uint64_t started_usec; /* realtime when the guest booted */
	const char *accel;     /* the accelerator the guest runs with */

	struct json_object *last_exit; /* Exit, or NULL */
	struct json_object *spec_json;    /* json_frozen(spec_to_json(spec)), cached */
	struct json_object *history_json; /* json_frozen(history), cached */
	struct json_object *history;   /* []UpgradeRecord */

	/* Calls waiting for start or stop to finish. */
	struct vl_call *pending_call;
	struct event *op_timer;
	bool stop_force;
	struct vl_subscribers followers; /* ReadLog calls with more */
};

int vm_new(struct manager *m, struct vm_spec *spec, const char *dir, struct vm **ret);
void vm_free(struct vm *vm);
/* Writes vm.json (spec, history, last exit) atomically. */
int vm_save(struct vm *vm);
int vm_load(struct manager *m, const char *dir, struct vm **ret);

bool vm_is_active(const struct vm *vm); /* a QEMU runs or is being started */
void vm_set_state(struct vm *vm, enum vm_state s, const char *why);

/* Starts the VM; the call (referenced) gets the reply when the guest runs
 * or the start failed. */
int vm_start(struct vm *vm, struct vl_call *call);
int vm_stop(struct vm *vm, bool force, int timeout_sec, struct vl_call *call);
/* Takes back fds a previous cprd held (from the fd store); each may be -1. */
int vm_restore_custody(struct vm *vm, int ram_fd, int console_fd, int console_peer_fd);
/* Releases the fds held for the VM (stopped on purpose or deleted). */
void vm_release_custody(struct vm *vm);

struct json_object *vm_to_json(struct vm *vm);
/* Replies {"vm": VM} on call. */
int vm_reply(struct vl_call *c, struct vm *vm);
/* True when the binary the running QEMU came from changed on disk. */
bool vm_outdated(struct vm *vm);

/* ---- QEMU processes of a VM ---------------------------------------------- */

/* Spawns a QEMU for vm from binary (probed as probe) with the VM's held fds
 * and a fresh QMP channel. incoming may be NULL. */
int vm_qemu_spawn(struct vm *vm, const char *binary, const struct probe_result *probe,
		  const struct vm_incoming *incoming, const struct vm_qemu_callbacks *cb,
		  void *userdata, struct vm_qemu **ret);
void vm_qemu_free(struct vm_qemu *q);
void vm_qemu_set_callbacks(struct vm_qemu *q, const struct vm_qemu_callbacks *cb, void *userdata);
struct qmp *vm_qemu_qmp(struct vm_qemu *q);
pid_t vm_qemu_pid(const struct vm_qemu *q);
bool vm_qemu_running(const struct vm_qemu *q);
const char *vm_qemu_binary(const struct vm_qemu *q);
const char *vm_qemu_version(const struct vm_qemu *q);
const struct probe_result *vm_qemu_probe(const struct vm_qemu *q);
int vm_qemu_kill(struct vm_qemu *q, int sig);
/* The last lines this QEMU wrote on stderr, joined, for error messages. */
void vm_qemu_stderr_summary(struct vm_qemu *q, char *buf, size_t size);
/* Makes q the VM's current QEMU (after an upgrade). The old one is returned
 * to the caller. */
struct vm_qemu *vm_adopt_qemu(struct vm *vm, struct vm_qemu *q);
/* Gives the VM's current QEMU the callbacks of a VM not being upgraded. */
void vm_watch_main(struct vm *vm);
/* Builds the QEMU command line (for tests and --dry-run). */
int vm_build_argv(struct vm *vm, const char *binary, const struct probe_result *probe,
		  const struct vm_incoming *incoming, const char *qmp_path, char ***ret);


/* Custody in systemd's fd store under NAME.what. */
void vm_store_fd(struct vm *vm, const char *what, int fd);
void vm_unstore_fd(struct vm *vm, const char *what);
void vm_watch_console(struct vm *vm);

/* The runtime record (runtime dir, vms/NAME/qemu.json) that lets a
 * restarted cprd find the VM's QEMU again: pid, its start time, binary. */
char *vm_runtime_file(struct vm *vm, const char *file);
int vm_save_runtime(struct vm *vm);
struct json_object *vm_qemu_record(struct vm_qemu *q);
/* Re-attaches to a running QEMU described by rec (pid checked against its
 * start time) with its QMP fd from the fd store (taken, may be -1). */
int vm_qemu_attach(struct vm *vm, struct json_object *rec, int qmp_fd,
		   const struct vm_qemu_callbacks *cb, void *userdata, struct vm_qemu **ret);

/* Lists the VM's fds for CPRD_REEXEC_FDS and keeps them across exec. */
int vm_reexec_fds(struct vm *vm, char **list);

/* Appends an upgrade record to the history (capped) and saves. */
void vm_add_history(struct vm *vm, struct json_object *record);
