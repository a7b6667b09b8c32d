/* probe: what a QEMU binary can do. Runs it briefly with no guest
 * (-machine none, QMP on a socketpair), asks its version, machine types and
 * migration features, quits it and reaps it; asynchronous on the event loop,
 * with a deadline, and cached per file. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct stat;

struct event_base;
struct json_object;
struct probe;

#define PROBE_TIMEOUT_USEC (10 * 1000 * 1000ULL) /* the whole probe */
#define PROBE_OUTPUT_MAX 4096     /* bytes of the child's stdout+stderr kept */
#define PROBE_CACHE_MAX 32        /* files remembered */

struct probe_machine {
	char *name;  /* versioned type, e.g. "pc-i440fx-10.0" */
	char *alias; /* e.g. "pc", or NULL */
	bool is_default;
	bool deprecated;
};

struct probe_result {
	char *path;
	/* The file probed: the cache key, with path. */
	dev_t dev;
	ino_t ino;
	struct timespec mtime;
	off_t size;

	unsigned major, minor, micro;
	char *package; /* distribution's version string, or "" */

	struct probe_machine *machines;
	size_t n_machines;

	/* Values of the MigMode enum (the "mode" migration parameter); empty
	 * before QEMU 8.2, which had no modes. NULL-terminated. */
	char **migration_modes;
	bool cpr_transfer;    /* mode "cpr-transfer" (QEMU >= 10.0) */
	bool cpr_exec;        /* mode "cpr-exec" (QEMU >= 10.2) */
	bool x_ignore_shared; /* migration capability, for local-migrate */
	bool aux_ram_share;   /* -machine aux-ram-share=on (QEMU >= 10.0) */

	bool cached;          /* answered from the cache, QEMU not run */
	uint64_t duration_usec; /* how long the probe run took */
};

struct qemu_identity;

struct probe_options {
	uint64_t timeout_usec; /* 0: PROBE_TIMEOUT_USEC */
	bool no_cache;         /* run QEMU even if the file is cached */
	/* Whom the binary runs as: the VM's own user; NULL: qemu_default_user().
	 * The groups it points to must outlive probe_run(). */
	const struct qemu_identity *user;
};

/* Reports the outcome. On success error is 0 and result is the callee's to
 * free with probe_result_free(); on failure result is NULL, error a negative
 * errno (-ENOENT, -EACCES: cannot run it; -ETIMEDOUT; -EPROTO: not QEMU or
 * not a usable one) and reason a sentence naming what went wrong. p is freed
 * after this returns. */
typedef void (*probe_done_fn)(struct probe *p, int error, struct probe_result *result,
			      const char *reason, void *userdata);

/* Probes the binary at path. binary_fd, if >= 0, is an open fd of that file
 * (borrowed, duplicated): that very file is executed and keyed in the cache
 * instead of whatever path names now. opts may be NULL. Returns 0 and
 * stores a handle in *ret (may be NULL) if done will be called, always from
 * the event loop, never from inside probe_run(); or a negative errno for bad
 * arguments or lack of memory, and then done is never called. */
int probe_run(struct event_base *base, const char *path, int binary_fd,
	      const struct probe_options *opts, probe_done_fn done, void *userdata,
	      struct probe **ret);

/* Forgets the callback and stops the child. The handle is invalid after
 * this; the child is killed and reaped in the background. */
void probe_cancel(struct probe *p);

/* The child's pid, or 0 when none runs (cache hit, already reaped). */
pid_t probe_get_pid(const struct probe *p);

struct probe_result *probe_result_free(struct probe_result *r);
struct probe_result *probe_result_dup(const struct probe_result *r);
/* The versioned machine type a name means: an alias ("pc") resolves to its
 * target, a full name to itself; NULL if this binary does not know it. */
const char *probe_result_resolve_machine(const struct probe_result *r, const char *name);
/* The result as JSON for the API (camelCase keys). */
int probe_result_to_json(const struct probe_result *r, struct json_object **ret);

/* A copy of the cached result for the file at path as it is now, or NULL
 * (also when the file changed since it was probed). */
struct probe_result *probe_cache_lookup(const char *path);
/* The version ("10.0.2") of the file at path as it is now, if it was
 * probed; false otherwise. Cheaper than probe_cache_lookup(). */
bool probe_cache_version(const char *path, char *buf, size_t size);
/* Whether a probe of the file as st describes it would come from the
 * cache (pure: the key is path, device, inode, mtime and size). */
bool probe_key_matches(const struct probe_result *r, const char *path, const struct stat *st);
void probe_cache_clear(void);
