/* snapshot: a live snapshot of a running guest (QEMU's background-snapshot
 * into a file cprd opened) and its restore into a fresh QEMU that takes the
 * guest in with -incoming defer. Domain code: api-snapshot.c names the
 * errors. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct json_object;
struct manager;
struct vm;

#define SNAPSHOT_TIMEOUT_SEC_DEFAULT 600
#define SNAPSHOT_POLL_MS 100
#define SNAPSHOT_PAUSED_POLL_MS 2 /* while cprd holds the guest stopped */
#define SNAPSHOT_QMP_TIMEOUT_MS 5000
/* The fd set QEMU gets the file in (file:/dev/fdset/N, QEMU >= 9.0). */
#define SNAPSHOT_FDSET_ID 4350
#define SNAPSHOT_FD_NAME "cprd-snapshot" /* getfd's name for fd: (older QEMU) */

/* How an operation ended; api-snapshot.c picks the io.cprd.Manager error. */
enum snapshot_error {
	SNAPSHOT_OK,
	SNAPSHOT_NOT_SNAPSHOTTABLE, /* NotSnapshottable: the VM, QEMU or kernel cannot */
	SNAPSHOT_BAD_FILE,          /* BadSnapshot: the file or its record, or its folder */
	SNAPSHOT_BAD_STATE,         /* BadState */
	SNAPSHOT_BUSY,              /* Busy */
	SNAPSHOT_NO_SUCH_VM,        /* NoSuchVM */
	SNAPSHOT_PROBE_FAILED,      /* QEMUProbeFailed */
	SNAPSHOT_CANCELLED,         /* the caller left: the file is gone */
	SNAPSHOT_FAILED,            /* SnapshotFailed / RestoreFailed */
};

struct snapshot_request {
	const char *file; /* absolute; FILE.json beside it holds the record */
	const char *qemu; /* restore: the binary (default: the VM's, else the recorded one) */
	int timeout_sec;  /* 0: SNAPSHOT_TIMEOUT_SEC_DEFAULT */
};

struct snapshot_op;
/* fraction in [0, 1], or negative when the phase has none. */
typedef void (*snapshot_progress_fn)(struct snapshot_op *s, const char *phase, const char *message,
				     double fraction, void *userdata);
/* result (a SnapshotResult or RestoreResult) when error is SNAPSHOT_OK,
 * else NULL and reason says why; s is valid only during the call. */
typedef void (*snapshot_done_fn)(struct snapshot_op *s, enum snapshot_error error,
				 const char *reason, struct json_object *result, void *userdata);

/* The outcome of a check made before anything started. */
struct snapshot_refusal {
	enum snapshot_error error;
	char reason[1024];
};

/* Starts a snapshot of vm into req->file. A negative return means nothing
 * started (ref says why) and done will not run; else done runs once, from
 * the loop. */
int snapshot_start(struct manager *m, struct vm *vm, const struct snapshot_request *req,
		   snapshot_progress_fn progress, snapshot_done_fn done, void *userdata,
		   struct snapshot_refusal *ref, struct snapshot_op **ret);
/* Restores the snapshot in req->file as VM name (created if there is none;
 * one that runs is refused). As snapshot_start. */
int restore_start(struct manager *m, const char *name, const struct snapshot_request *req,
		  snapshot_progress_fn progress, snapshot_done_fn done, void *userdata,
		  struct snapshot_refusal *ref, struct snapshot_op **ret);
/* The caller went away: a snapshot is cancelled (the file removed); a
 * restore goes on. done still runs, with SNAPSHOT_CANCELLED for a
 * snapshot. */
void snapshot_caller_gone(struct snapshot_op *s);
const char *snapshot_op_vm(const struct snapshot_op *s);
const char *snapshot_op_file(const struct snapshot_op *s);

/* After cprd started: a cprd that ended during a snapshot left the
 * background-snapshot capability set on that VM's QEMU (and maybe the
 * snapshot still writing into a file nobody will name). For each running
 * VM whose QEMU has it set and no operation, the migration is cancelled,
 * the capability cleared and the fd set removed, from the loop. */
void snapshot_settle_all(struct manager *m);
