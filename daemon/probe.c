/* probe: runs a QEMU binary with no guest to learn what it can do (version,
 * machine types, CPR modes, x-ignore-shared, aux-ram-share) before cprd
 * trusts it with one. The child is watched through a pidfd, bounded by one
 * deadline, and killed with its whole process group if anything goes wrong. */
#include "probe.h"

#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <event2/event.h>

#include "log.h"
#include "macro.h"
#include "qemu.h"
#include "qmp.h"

/* After quit, or after a failure, how long the child gets to exit before it
 * is killed, and then how long the kill gets before we stop waiting. */
#define PROBE_EXIT_GRACE_USEC (1000 * 1000ULL)
#define PROBE_MACHINES_MAX 1024
#define PROBE_MODES_MAX 64
#define PROBE_NAME_MAX 128
/* This much of the child's output goes into a failure reason. */
#define PROBE_REASON_OUTPUT_MAX 1024

enum probe_state {
	PROBE_STARTING, /* child running, QMP greeting and handshake */
	PROBE_QUERYING, /* queries sent, answers coming in */
	PROBE_QUITTING, /* answers complete, quit sent, waiting for the exit */
	PROBE_ENDING,   /* failed; waiting briefly for the exit status */
	PROBE_REPORTED, /* done called (or cancelled); the child may still be reaped */
	_PROBE_STATE_MAX,
};

static const char *const probe_state_table[_PROBE_STATE_MAX] = {
	[PROBE_STARTING] = "starting",
	[PROBE_QUERYING] = "querying",
	[PROBE_QUITTING] = "quitting",
	[PROBE_ENDING] = "ending",
	[PROBE_REPORTED] = "reported",
};

struct probe {
	struct event_base *base;
	char *path;
	int binary_fd;
	struct stat st;
	uint64_t timeout_usec;
	uint64_t started_usec;
	bool no_cache;
	/* Whom the child runs as (its groups are the caller's, which outlive
	 * the spawn); has_user false: the default user. */
	struct qemu_identity user;
	bool has_user;

	probe_done_fn done;
	void *userdata;
	enum probe_state state;

	pid_t pid;      /* 0 once reaped */
	int pidfd;
	bool killed;
	int exec_fd;    /* read end: the errno of a failed exec, EOF otherwise */
	int output_fd;  /* read end: the child's stdout and stderr */
	char output[PROBE_OUTPUT_MAX + 1];
	size_t output_len;

	struct event *pidfd_ev, *output_ev, *deadline_ev, *grace_ev, *defer_ev;

	struct qmp *qmp;
	unsigned n_queries;
	const char *phase;   /* where a failure happened, for the reason */
	bool before_greeting; /* ... and whether it could be QEMU at all */

	struct probe_result *result;
	int error;
	char *reason;
};

static uint64_t now_usec(void) {
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static struct timeval usec_to_timeval(uint64_t usec) {
	return (struct timeval){ .tv_sec = (time_t)(usec / 1000000),
				 .tv_usec = (suseconds_t)(usec % 1000000) };
}

static void probe_set_state(struct probe *p, enum probe_state state) {
	if (p->state == state)
		return;
	log_debug("probe %s: %s -> %s", p->path, probe_state_table[p->state],
		  probe_state_table[state]);
	p->state = state;
}

/* ---- results ---- */

struct probe_result *probe_result_free(struct probe_result *r) {
	if (!r)
		return NULL;
	free(r->path);
	free(r->package);
	for (size_t i = 0; i < r->n_machines; i++) {
		free(r->machines[i].name);
		free(r->machines[i].alias);
	}
	free(r->machines);
	for (char **m = r->migration_modes; m && *m; m++)
		free(*m);
	free(r->migration_modes);
	free(r);
	return NULL;
}

static inline void probe_result_freep(struct probe_result **r) {
	probe_result_free(*r);
}
#define _cleanup_probe_result_ _cleanup_(probe_result_freep)

static int strdup_null(const char *s, char **ret) {
	*ret = NULL;
	if (!s)
		return 0;
	*ret = strdup(s);
	return *ret ? 0 : -ENOMEM;
}

struct probe_result *probe_result_dup(const struct probe_result *r) {
	_cleanup_probe_result_ struct probe_result *c = NULL;
	size_t n = 0;

	if (!r)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	*c = *r;
	c->path = c->package = NULL;
	c->machines = NULL;
	c->n_machines = 0;
	c->migration_modes = NULL;

	if (strdup_null(r->path, &c->path) < 0 || strdup_null(r->package, &c->package) < 0)
		return NULL;
	if (r->n_machines > 0) {
		c->machines = calloc(r->n_machines, sizeof(*c->machines));
		if (!c->machines)
			return NULL;
		for (; c->n_machines < r->n_machines; c->n_machines++) {
			const struct probe_machine *m = &r->machines[c->n_machines];
			struct probe_machine *d = &c->machines[c->n_machines];

			*d = *m;
			d->name = d->alias = NULL;
			if (strdup_null(m->name, &d->name) < 0 || strdup_null(m->alias, &d->alias) < 0) {
				c->n_machines++; /* so its strings are freed */
				return NULL;
			}
		}
	}
	while (r->migration_modes && r->migration_modes[n])
		n++;
	c->migration_modes = calloc(n + 1, sizeof(char *));
	if (!c->migration_modes)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (strdup_null(r->migration_modes[i], &c->migration_modes[i]) < 0)
			return NULL;
	return TAKE_PTR(c);
}

const char *probe_result_resolve_machine(const struct probe_result *r, const char *name) {
	if (!r || !name)
		return NULL;
	for (size_t i = 0; i < r->n_machines; i++)
		if (streq(r->machines[i].name, name))
			return r->machines[i].name;
	for (size_t i = 0; i < r->n_machines; i++)
		if (r->machines[i].alias && streq(r->machines[i].alias, name))
			return r->machines[i].name;
	return NULL;
}

static int json_add(struct json_object *o, const char *key, struct json_object *v) {
	if (!v)
		return -ENOMEM;
	return json_object_object_add(o, key, v) < 0 ? -ENOMEM : 0;
}

int probe_result_to_json(const struct probe_result *r, struct json_object **ret) {
	_cleanup_json_ struct json_object *o = NULL, *version = NULL, *machines = NULL,
					  *modes = NULL;
	char s[64];

	if (!r || !ret)
		return -EINVAL;
	o = json_object_new_object();
	version = json_object_new_object();
	machines = json_object_new_array();
	modes = json_object_new_array();
	if (!o || !version || !machines || !modes)
		return -ENOMEM;

	snprintf(s, sizeof(s), "%u.%u.%u", r->major, r->minor, r->micro);
	if (json_add(version, "major", json_object_new_int(r->major)) < 0 ||
	    json_add(version, "minor", json_object_new_int(r->minor)) < 0 ||
	    json_add(version, "micro", json_object_new_int(r->micro)) < 0 ||
	    json_add(version, "string", json_object_new_string(s)) < 0 ||
	    json_add(version, "package", json_object_new_string(r->package ? r->package : "")) < 0)
		return -ENOMEM;

	for (size_t i = 0; i < r->n_machines; i++) {
		const struct probe_machine *m = &r->machines[i];
		_cleanup_json_ struct json_object *j = json_object_new_object();

		if (!j || json_add(j, "name", json_object_new_string(m->name)) < 0 ||
		    (m->alias && json_add(j, "alias", json_object_new_string(m->alias)) < 0) ||
		    json_add(j, "isDefault", json_object_new_boolean(m->is_default)) < 0 ||
		    json_add(j, "deprecated", json_object_new_boolean(m->deprecated)) < 0 ||
		    json_object_array_add(machines, j) < 0)
			return -ENOMEM;
		TAKE_PTR(j);
	}
	for (char **m = r->migration_modes; m && *m; m++) {
		struct json_object *j = json_object_new_string(*m);
		if (!j || json_object_array_add(modes, j) < 0) {
			json_object_put(j);
			return -ENOMEM;
		}
	}

	if (json_add(o, "path", json_object_new_string(r->path ? r->path : "")) < 0 ||
	    json_add(o, "version", TAKE_PTR(version)) < 0 ||
	    json_add(o, "machines", TAKE_PTR(machines)) < 0 ||
	    json_add(o, "migrationModes", TAKE_PTR(modes)) < 0 ||
	    json_add(o, "cprTransfer", json_object_new_boolean(r->cpr_transfer)) < 0 ||
	    json_add(o, "cprExec", json_object_new_boolean(r->cpr_exec)) < 0 ||
	    json_add(o, "xIgnoreShared", json_object_new_boolean(r->x_ignore_shared)) < 0 ||
	    json_add(o, "auxRamShare", json_object_new_boolean(r->aux_ram_share)) < 0)
		return -ENOMEM;

	*ret = TAKE_PTR(o);
	return 0;
}

/* ---- the cache ---- */

struct probe_cache_entry {
	struct probe_cache_entry *next;
	struct probe_result *result;
};

/* Most recent first. Static: cprd has one loop and one set of binaries. */
static struct probe_cache_entry *probe_cache;

/* The size too: dpkg gives a file the mtime recorded in the package
 * (seconds), and an inode number is reused once nothing holds the old
 * file; two builds rarely agree on all of them. */
bool probe_key_matches(const struct probe_result *r, const char *path, const struct stat *st) {
	return streq(r->path, path) && r->dev == st->st_dev && r->ino == st->st_ino &&
	       r->mtime.tv_sec == st->st_mtim.tv_sec && r->mtime.tv_nsec == st->st_mtim.tv_nsec &&
	       r->size == st->st_size;
}

static struct probe_result *probe_cache_find(const char *path, const struct stat *st) {
	for (struct probe_cache_entry *e = probe_cache; e; e = e->next)
		if (probe_key_matches(e->result, path, st))
			return e->result;
	return NULL;
}

static void probe_cache_insert(const struct probe_result *r) {
	struct probe_cache_entry *e, **pp;
	unsigned n = 0;

	/* One entry per path: the file changed if the key did. */
	for (pp = &probe_cache; (e = *pp);) {
		if (streq(e->result->path, r->path)) {
			*pp = e->next;
			probe_result_free(e->result);
			free(e);
			continue;
		}
		pp = &e->next;
	}

	e = calloc(1, sizeof(*e));
	if (!e)
		return;
	e->result = probe_result_dup(r);
	if (!e->result) {
		free(e);
		return;
	}
	e->result->cached = false;
	e->next = probe_cache;
	probe_cache = e;

	for (pp = &probe_cache; (e = *pp); n++) {
		if (n >= PROBE_CACHE_MAX) {
			*pp = e->next;
			probe_result_free(e->result);
			free(e);
			continue;
		}
		pp = &e->next;
	}
}

struct probe_result *probe_cache_lookup(const char *path) {
	struct probe_result *r, *c;
	struct stat st;

	if (!path || stat(path, &st) < 0)
		return NULL;
	r = probe_cache_find(path, &st);
	if (!r)
		return NULL;
	c = probe_result_dup(r);
	if (c)
		c->cached = true;
	return c;
}

bool probe_cache_version(const char *path, char *buf, size_t size) {
	struct stat st;
	const struct probe_result *r;

	if (!path || stat(path, &st) < 0 || !(r = probe_cache_find(path, &st)))
		return false;
	snprintf(buf, size, "%u.%u.%u", r->major, r->minor, r->micro);
	return true;
}

void probe_cache_clear(void) {
	while (probe_cache) {
		struct probe_cache_entry *e = probe_cache;
		probe_cache = e->next;
		probe_result_free(e->result);
		free(e);
	}
}

/* ---- the child ---- */

static int pidfd_send_signal_sys(int pidfd, int sig) {
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* Kills the child and anything in its process group; the pidfd makes the
 * leader's kill immune to pid reuse, and the group cannot be reused while
 * the unreaped leader holds its id. */
static void probe_kill(struct probe *p) {
	if (p->pid <= 0 || p->killed)
		return;
	log_debug("probe %s: killing process group %d", p->path, (int)p->pid);
	(void)pidfd_send_signal_sys(p->pidfd, SIGKILL);
	(void)kill(-p->pid, SIGKILL);
	p->killed = true;
}

static void probe_on_pidfd(evutil_socket_t fd, short what, void *arg);
static void probe_on_output(evutil_socket_t fd, short what, void *arg);
static void probe_on_qmp_ready(struct qmp *q, void *userdata);
static void probe_on_qmp_closed(struct qmp *q, int error, void *userdata);

static const struct qmp_callbacks probe_qmp_callbacks = {
	.ready = probe_on_qmp_ready,
	.closed = probe_on_qmp_closed,
};

/* The QMP socket's number in the child, named in -chardev socket,fd=N. */
#define PROBE_QMP_FD 3

static int probe_spawn(struct probe *p) {
	_cleanup_close_ int qmp_parent = -1, qmp_child = -1, out_r = -1, out_w = -1,
			    exec_r = -1, exec_w = -1;
	/* A fixed, small environment: the probe must not depend on what cprd
	 * happened to be started with (NOTIFY_SOCKET, LISTEN_FDS, locale). */
	char *envp[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			 "LC_ALL=C", NULL };
	char chardev[64];
	int pair[2], pipefd[2], r;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
		return -errno;
	qmp_parent = pair[0];
	qmp_child = pair[1];
	if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	out_r = pipefd[0];
	out_w = pipefd[1];
	if (pipe2(pipefd, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	exec_r = pipefd[0];
	exec_w = pipefd[1];

	snprintf(chardev, sizeof(chardev), "socket,id=qmp,fd=%d", PROBE_QMP_FD);
	/* Works with QEMU 7.2 and 10.0: no guest, no devices, no config files,
	 * stopped CPUs; QMP on the inherited socket. */
	char *argv[] = {
		p->path,
		"-no-user-config", "-nodefaults",
		"-machine", "none",
		"-display", "none",
		"-S",
		"-chardev", chardev,
		"-mon", "chardev=qmp,mode=control",
		NULL,
	};
	const struct qemu_fd fds[] = { { qmp_child, PROBE_QMP_FD } };
	/* The child runs in a session of its own, so probe_kill() reaches
	 * whatever a wrapper script forked; and it dies with cprd, so no
	 * probe is left behind. */
	const struct qemu_spawn_options so = {
		.binary_fd = p->binary_fd,
		.path = p->path,
		.argv = argv,
		.envp = envp,
		.fds = fds,
		.n_fds = ELEMENTSOF(fds),
		.log_fd = out_w,
		.exec_error_fd = exec_w,
		.die_with_parent = true,
		.user = p->has_user ? &p->user : NULL,
	};
	r = qemu_fork(&so, &p->pid, &p->pidfd);
	if (r < 0)
		return r;
	p->exec_fd = TAKE_FD(exec_r);
	p->output_fd = TAKE_FD(out_r);

	p->pidfd_ev = event_new(p->base, p->pidfd, EV_READ, probe_on_pidfd, p);
	p->output_ev = event_new(p->base, p->output_fd, EV_READ | EV_PERSIST, probe_on_output, p);
	if (!p->pidfd_ev || !p->output_ev || event_add(p->pidfd_ev, NULL) < 0 ||
	    event_add(p->output_ev, NULL) < 0)
		return -ENOMEM; /* the caller kills; the pidfd reaps */

	r = qmp_new(p->base, TAKE_FD(qmp_parent), &probe_qmp_callbacks, p, p->path, &p->qmp);
	if (r < 0)
		return r;
	/* Our own deadline speaks first, with the better message. */
	(void)qmp_set_greeting_timeout(p->qmp, (int)(p->timeout_usec / 1000) + 1000);

	log_debug("probe %s: started as pid %d", p->path, (int)p->pid);
	return 0;
}

/* ---- finishing ---- */

static void probe_read_output(struct probe *p) {
	char scratch[4096];

	while (p->output_fd >= 0) {
		char *buf = scratch;
		size_t room = sizeof(scratch);
		ssize_t n;

		if (p->output_len < PROBE_OUTPUT_MAX) {
			buf = p->output + p->output_len;
			room = PROBE_OUTPUT_MAX - p->output_len;
		}
		n = read(p->output_fd, buf, room);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			if (p->output_ev)
				event_free(TAKE_PTR(p->output_ev));
			p->output_fd = safe_close(p->output_fd);
			return;
		}
		if (buf != scratch)
			p->output_len += (size_t)n;
		/* Beyond PROBE_OUTPUT_MAX: drained and dropped. */
	}
}

static void probe_on_output(evutil_socket_t fd, short what, void *arg) {
	probe_read_output(arg);
}

/* "; output: ..." on one line, control characters replaced, or "". */
static void probe_format_output(struct probe *p, char *buf, size_t size) {
	size_t start = 0, len = p->output_len, o;

	while (len > 0 && strchr(" \t\r\n", p->output[len - 1]))
		len--;
	while (start < len && strchr(" \t\r\n", p->output[start]))
		start++;
	if (start >= len || size < 16) {
		buf[0] = 0;
		return;
	}
	o = (size_t)snprintf(buf, size, "; output: ");
	for (size_t i = start; i < len && o + 4 < size && i - start < PROBE_REASON_OUTPUT_MAX; i++) {
		unsigned char c = (unsigned char)p->output[i];
		buf[o++] = c == '\n' ? ' ' : (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	if (len - start > PROBE_REASON_OUTPUT_MAX && o + 4 < size) {
		memcpy(buf + o, "...", 3);
		o += 3;
	}
	buf[o] = 0;
}

static void probe_free(struct probe *p) {
	if (!p)
		return;
	if (p->pidfd_ev)
		event_free(p->pidfd_ev);
	if (p->output_ev)
		event_free(p->output_ev);
	if (p->deadline_ev)
		event_free(p->deadline_ev);
	if (p->grace_ev)
		event_free(p->grace_ev);
	if (p->defer_ev)
		event_free(p->defer_ev);
	qmp_free(p->qmp);
	safe_close(p->pidfd);
	safe_close(p->exec_fd);
	safe_close(p->output_fd);
	safe_close(p->binary_fd);
	probe_result_free(p->result);
	free(p->reason);
	free(p->path);
	free(p);
}

/* Stops everything but the reaping, then frees now or once reaped. */
static void probe_retire(struct probe *p) {
	probe_set_state(p, PROBE_REPORTED);
	p->done = NULL;
	p->qmp = qmp_free(p->qmp);
	if (p->deadline_ev)
		event_del(p->deadline_ev);
	if (p->grace_ev)
		event_del(p->grace_ev);
	if (p->defer_ev)
		event_del(p->defer_ev);
	if (p->pid > 0) {
		/* Nobody waits for it any more: it must not outlive the probe.
		 * It is reaped when the pidfd fires (SIGKILL cannot be
		 * ignored, but a process in uninterruptible sleep only dies
		 * when it wakes; the pidfd waits for that). */
		probe_kill(p);
		return;
	}
	probe_free(p);
}

static void probe_report(struct probe *p) {
	probe_done_fn done = p->done;
	struct probe_result *result = NULL;
	int error = p->error;

	if (p->state == PROBE_REPORTED)
		return;
	probe_set_state(p, PROBE_REPORTED);

	if (error >= 0 && !p->result) /* cannot happen; never report success without */
		error = -EPROTO;
	if (error < 0) {
		log_debug("probe %s failed: %s", p->path, p->reason ? p->reason : strerror(-error));
	} else {
		result = TAKE_PTR(p->result);
		if (!result->cached) {
			result->duration_usec = now_usec() - p->started_usec;
			probe_cache_insert(result);
			log_debug("probe %s: QEMU %u.%u.%u, %zu machine types, cpr-transfer=%s, "
				  "x-ignore-shared=%s, aux-ram-share=%s, %" PRIu64 " ms",
				  p->path, result->major, result->minor, result->micro,
				  result->n_machines, result->cpr_transfer ? "yes" : "no",
				  result->x_ignore_shared ? "yes" : "no",
				  result->aux_ram_share ? "yes" : "no", result->duration_usec / 1000);
		}
	}

	bool ran = result && !result->cached;
	if (done)
		done(p, error, result, error < 0 ? (p->reason ? p->reason : strerror(-error)) : NULL,
		     p->userdata);
	else
		probe_result_free(result);
	probe_retire(p);
	/* A probe parses replies of a few hundred KB (query-qmp-schema); give
	 * that heap back rather than keep it for the daemon's lifetime. */
	if (ran || error < 0)
		malloc_trim(0);
}

static void probe_set_reason(struct probe *p, int error, const char *fmt, ...) _printf_(3, 4);
static void probe_set_reason(struct probe *p, int error, const char *fmt, ...) {
	char *s = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	free(p->reason);
	p->reason = s;
	p->error = error;
}

static void probe_arm_grace(struct probe *p) {
	struct timeval tv = usec_to_timeval(PROBE_EXIT_GRACE_USEC);

	if (p->grace_ev)
		evtimer_add(p->grace_ev, &tv);
}

/* The first failure wins. kill: stop the child now (it misbehaves) rather
 * than give it a moment to exit on its own (it hung up on us). */
static void probe_fail(struct probe *p, int error, bool kill_now, const char *reason) {
	if (p->state >= PROBE_ENDING)
		return;
	p->before_greeting = !qmp_get_version(p->qmp);
	p->phase = p->before_greeting ? "before the QMP greeting"
		   : p->state == PROBE_STARTING ? "during the QMP handshake"
						  : "while answering QMP queries";
	probe_set_state(p, PROBE_ENDING);
	p->error = error;
	if (reason)
		probe_set_reason(p, error, "%s", reason);
	p->qmp = qmp_free(p->qmp);
	if (kill_now)
		probe_kill(p);
	probe_arm_grace(p);
}

static void probe_on_grace(evutil_socket_t fd, short what, void *arg) {
	struct probe *p = arg;

	if (p->pid <= 0)
		return;
	if (!p->killed) {
		log_debug("probe %s: pid %d did not exit in time", p->path, (int)p->pid);
		if (p->state == PROBE_ENDING && !p->reason)
			probe_set_reason(p, -EPROTO, "closed its QMP connection %s but did not exit",
					 p->phase);
		probe_kill(p);
		probe_arm_grace(p);
		return;
	}
	/* Killed and still not gone: report without waiting any longer. */
	if (p->state == PROBE_ENDING && !p->reason)
		probe_set_reason(p, -EPROTO, "closed its QMP connection %s", p->phase);
	probe_report(p);
}

static void probe_on_deadline(evutil_socket_t fd, short what, void *arg) {
	struct probe *p = arg;
	char out[PROBE_REASON_OUTPUT_MAX + 64];

	probe_kill(p);
	if (p->state == PROBE_QUITTING) {
		/* The answers are in; only the exit was late. */
		log_warning("QEMU probe %s: pid %d did not quit, killed", p->path, (int)p->pid);
		probe_report(p);
		return;
	}
	if (p->state == PROBE_ENDING && p->reason) {
		/* It already failed; its exit is what is late. */
		probe_report(p);
		return;
	}
	probe_read_output(p);
	probe_format_output(p, out, sizeof(out));
	probe_set_reason(p, -ETIMEDOUT, "timed out after %.3g s %s%s",
			 (double)p->timeout_usec / 1e6,
			 p->state == PROBE_STARTING && !qmp_get_version(p->qmp)
				 ? "waiting for the QMP greeting"
				 : "waiting for QMP answers",
			 out);
	probe_report(p);
}

static void probe_describe_exit(const siginfo_t *si, char *buf, size_t size) {
	if (si->si_code == CLD_EXITED)
		snprintf(buf, size, "exited with status %d", si->si_status);
	else
		snprintf(buf, size, "killed by signal %d (SIG%s)%s", si->si_status,
			 sigabbrev_np(si->si_status) ? sigabbrev_np(si->si_status) : "?",
			 si->si_code == CLD_DUMPED ? ", core dumped" : "");
}

static void probe_on_pidfd(evutil_socket_t fd, short what, void *arg) {
	struct probe *p = arg;
	siginfo_t si = {};
	char exit_desc[96], out[PROBE_REASON_OUTPUT_MAX + 64];
	int exec_errno = 0;

	/* Whatever the leader left behind in its group goes with it. */
	if (!p->killed)
		(void)kill(-p->pid, SIGKILL);
	if (waitid((idtype_t)P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) < 0) {
		if (errno != ECHILD) {
			event_add(p->pidfd_ev, NULL);
			return;
		}
		/* Someone else reaped it (SIGCHLD set to SIG_IGN?). */
		si.si_code = CLD_EXITED;
		si.si_status = 255;
	} else if (si.si_pid == 0) {
		event_add(p->pidfd_ev, NULL); /* not yet: cannot happen for a readable pidfd */
		return;
	}
	log_debug("probe %s: pid %d reaped", p->path, (int)p->pid);
	p->pid = 0;
	event_free(TAKE_PTR(p->pidfd_ev));
	p->pidfd = safe_close(p->pidfd);
	if (p->grace_ev)
		event_del(p->grace_ev);

	if (p->state == PROBE_REPORTED) {
		probe_free(p);
		return;
	}

	if (read(p->exec_fd, &exec_errno, sizeof(exec_errno)) == sizeof(exec_errno) &&
	    exec_errno > 0) {
		probe_set_reason(p, -exec_errno, "cannot execute %s: %s", p->path,
				 strerror(exec_errno));
		probe_report(p);
		return;
	}

	probe_describe_exit(&si, exit_desc, sizeof(exit_desc));
	if (p->state == PROBE_QUITTING) {
		if (si.si_code != CLD_EXITED || si.si_status != 0)
			log_debug("probe %s: QEMU %s after quit", p->path, exit_desc);
		probe_report(p);
		return;
	}

	if (p->state != PROBE_ENDING)
		probe_fail(p, -EPROTO, false, NULL);
	probe_read_output(p);
	probe_format_output(p, out, sizeof(out));
	if (p->reason) {
		/* Our own SIGKILL is no news; any other end is. */
		bool ours = p->killed && si.si_code == CLD_KILLED && si.si_status == SIGKILL;

		probe_set_reason(p, p->error, "%s%s%s%s", p->reason, ours ? "" : "; it ",
				 ours ? "" : exit_desc, out);
	} else
		probe_set_reason(p, p->error < 0 ? p->error : -EPROTO, "%s%s %s%s",
				 p->before_greeting ? "not a QEMU binary: " : "QEMU ",
				 exit_desc, p->phase, out);
	probe_report(p);
}

/* ---- the questions ---- */

static bool probe_name_valid(const char *s) {
	size_t n = s ? strlen(s) : 0;
	return n > 0 && n <= PROBE_NAME_MAX;
}

static int probe_parse_machines(struct probe_result *r, struct json_object *ret) {
	size_t n;

	if (!json_object_is_type(ret, json_type_array))
		return -EBADMSG;
	n = json_object_array_length(ret);
	if (n > PROBE_MACHINES_MAX)
		return -E2BIG;
	r->machines = calloc(MAX(n, 1u), sizeof(*r->machines));
	if (!r->machines)
		return -ENOMEM;

	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(ret, i), *v;
		struct probe_machine *pm = &r->machines[r->n_machines];

		if (!json_object_is_type(m, json_type_object) ||
		    !json_object_object_get_ex(m, "name", &v) ||
		    !json_object_is_type(v, json_type_string) ||
		    !probe_name_valid(json_object_get_string(v)))
			return -EBADMSG;
		pm->name = strdup(json_object_get_string(v));
		if (!pm->name)
			return -ENOMEM;
		r->n_machines++;

		if (json_object_object_get_ex(m, "alias", &v)) {
			if (!json_object_is_type(v, json_type_string) ||
			    !probe_name_valid(json_object_get_string(v)))
				return -EBADMSG;
			pm->alias = strdup(json_object_get_string(v));
			if (!pm->alias)
				return -ENOMEM;
		}
		if (json_object_object_get_ex(m, "is-default", &v))
			pm->is_default = json_object_get_boolean(v);
		if (json_object_object_get_ex(m, "deprecated", &v))
			pm->deprecated = json_object_get_boolean(v);
	}
	return 0;
}

static struct json_object *probe_schema_find(struct json_object *schema, const char *name,
					     const char *meta_type) {
	size_t n = json_object_array_length(schema);

	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(schema, i), *v;

		if (!json_object_is_type(e, json_type_object) ||
		    !json_object_object_get_ex(e, "name", &v) ||
		    !json_object_is_type(v, json_type_string) || !streq(json_object_get_string(v), name))
			continue;
		if (!json_object_object_get_ex(e, "meta-type", &v) ||
		    !json_object_is_type(v, json_type_string) ||
		    !streq(json_object_get_string(v), meta_type))
			return NULL;
		return e;
	}
	return NULL;
}

static const char *probe_json_string(struct json_object *o, const char *key) {
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* The MigMode enum, found structurally because introspection hides type
 * names behind numbers: command migrate-set-parameters -> its argument
 * object -> member "mode" -> that enum's values. QEMU without the member
 * (7.2) has no modes at all. */
static int probe_parse_schema(struct probe_result *r, struct json_object *schema) {
	struct json_object *cmd, *args, *members, *values, *mig_mode = NULL;
	const char *arg_type, *mode_type = NULL;
	size_t n, n_modes = 0;

	if (!json_object_is_type(schema, json_type_array))
		return -EBADMSG;
	cmd = probe_schema_find(schema, "migrate-set-parameters", "command");
	arg_type = cmd ? probe_json_string(cmd, "arg-type") : NULL;
	args = arg_type ? probe_schema_find(schema, arg_type, "object") : NULL;
	if (!args || !json_object_object_get_ex(args, "members", &members) ||
	    !json_object_is_type(members, json_type_array))
		return -EBADMSG;

	n = json_object_array_length(members);
	for (size_t i = 0; i < n; i++) {
		struct json_object *m = json_object_array_get_idx(members, i);
		const char *name = json_object_is_type(m, json_type_object)
					   ? probe_json_string(m, "name") : NULL;
		if (name && streq(name, "mode")) {
			mode_type = probe_json_string(m, "type");
			break;
		}
	}
	if (mode_type) {
		mig_mode = probe_schema_find(schema, mode_type, "enum");
		if (!mig_mode || !json_object_object_get_ex(mig_mode, "values", &values) ||
		    !json_object_is_type(values, json_type_array))
			return -EBADMSG;
		n_modes = json_object_array_length(values);
		if (n_modes > PROBE_MODES_MAX)
			return -E2BIG;
	}

	r->migration_modes = calloc(n_modes + 1, sizeof(char *));
	if (!r->migration_modes)
		return -ENOMEM;
	for (size_t i = 0; i < n_modes; i++) {
		struct json_object *v = json_object_array_get_idx(values, i);
		const char *s = json_object_get_string(v);

		if (!json_object_is_type(v, json_type_string) || !probe_name_valid(s))
			return -EBADMSG;
		r->migration_modes[i] = strdup(s);
		if (!r->migration_modes[i])
			return -ENOMEM;
		if (streq(s, "cpr-transfer"))
			r->cpr_transfer = true;
		else if (streq(s, "cpr-exec"))
			r->cpr_exec = true;
	}
	return 0;
}

/* Whether an array of objects has one whose key equals value. */
static bool probe_array_has(struct json_object *array, const char *key, const char *value) {
	size_t n;

	if (!json_object_is_type(array, json_type_array))
		return false;
	n = json_object_array_length(array);
	for (size_t i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(array, i);
		const char *s = json_object_is_type(e, json_type_object) ? probe_json_string(e, key)
									 : NULL;
		if (s && streq(s, value))
			return true;
	}
	return false;
}

static void probe_on_quit(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			  void *userdata) {
	/* The reply does not matter: the exit does, and a grace period bounds it. */
}

static void probe_query_done(struct probe *p) {
	if (--p->n_queries > 0 || p->state != PROBE_QUERYING)
		return;
	probe_set_state(p, PROBE_QUITTING);
	(void)qmp_command(p->qmp, "quit", NULL, (int)(PROBE_EXIT_GRACE_USEC / 1000), probe_on_quit,
			  p);
	probe_arm_grace(p);
}

/* Common to every answer: turns a QMP error into the probe's failure.
 * Returns true if the answer is there to be used. */
static bool probe_answer_ok(struct probe *p, const char *cmd, const struct qmp_error *err) {
	char buf[512];

	if (!err)
		return true;
	if (err->error == -ECONNRESET) {
		/* It hung up mid-answer, probably crashing: wait for its exit
		 * status, which says more than this. */
		probe_fail(p, -EPROTO, false, NULL);
		return false;
	}
	snprintf(buf, sizeof(buf), "QEMU failed %s: %s", cmd, err->desc);
	probe_fail(p, err->error == -EREMOTEIO ? -EPROTO : err->error, true, buf);
	return false;
}

static void probe_answer_bad(struct probe *p, const char *cmd, int r) {
	char buf[256];

	snprintf(buf, sizeof(buf), "QEMU's answer to %s is not usable: %s", cmd, strerror(-r));
	probe_fail(p, r == -ENOMEM ? -ENOMEM : -EPROTO, true, buf);
}

static void probe_on_machines(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			      void *userdata) {
	struct probe *p = userdata;
	int r;

	if (!probe_answer_ok(p, "query-machines", err))
		return;
	r = probe_parse_machines(p->result, ret);
	if (r < 0) {
		probe_answer_bad(p, "query-machines", r);
		return;
	}
	probe_query_done(p);
}

static void probe_on_schema(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
			    void *userdata) {
	struct probe *p = userdata;
	int r;

	if (!probe_answer_ok(p, "query-qmp-schema", err))
		return;
	r = probe_parse_schema(p->result, ret);
	if (r < 0) {
		probe_answer_bad(p, "query-qmp-schema", r);
		return;
	}
	probe_query_done(p);
}

static void probe_on_capabilities(struct qmp *q, struct json_object *ret,
				  const struct qmp_error *err, void *userdata) {
	struct probe *p = userdata;

	if (!probe_answer_ok(p, "query-migrate-capabilities", err))
		return;
	if (!json_object_is_type(ret, json_type_array)) {
		probe_answer_bad(p, "query-migrate-capabilities", -EBADMSG);
		return;
	}
	p->result->x_ignore_shared = probe_array_has(ret, "capability", "x-ignore-shared");
	probe_query_done(p);
}

/* aux-ram-share is a property of the abstract "machine" QOM type from 10.0
 * on. It is not in query-command-line-options on 7.2, whose "machine" entry
 * lists legacy options only, so the QOM type is the reliable place. */
static void probe_on_machine_properties(struct qmp *q, struct json_object *ret,
					const struct qmp_error *err, void *userdata) {
	struct probe *p = userdata;

	if (err && err->error == -EREMOTEIO) {
		/* Not fatal: the feature is simply not there. */
		log_debug("probe %s: qom-list-properties failed: %s", p->path, err->desc);
		p->result->aux_ram_share = false;
		probe_query_done(p);
		return;
	}
	if (!probe_answer_ok(p, "qom-list-properties", err))
		return;
	if (!json_object_is_type(ret, json_type_array)) {
		probe_answer_bad(p, "qom-list-properties", -EBADMSG);
		return;
	}
	p->result->aux_ram_share = probe_array_has(ret, "name", "aux-ram-share");
	probe_query_done(p);
}

static int probe_query(struct probe *p, const char *cmd, struct json_object *args,
		       qmp_reply_fn fn) {
	uint64_t elapsed = now_usec() - p->started_usec;
	uint64_t left = elapsed < p->timeout_usec ? p->timeout_usec - elapsed : 1000;
	int r;

	r = qmp_command(p->qmp, cmd, args, (int)MAX(left / 1000, 1u), fn, p);
	if (r < 0)
		return r;
	p->n_queries++;
	return 0;
}

static void probe_on_qmp_ready(struct qmp *q, void *userdata) {
	struct probe *p = userdata;
	const struct qmp_version *v = qmp_get_version(q);
	struct json_object *args;
	int r;

	probe_set_state(p, PROBE_QUERYING);
	p->result->major = v->major;
	p->result->minor = v->minor;
	p->result->micro = v->micro;
	p->result->package = strdup(v->package);
	if (!p->result->package) {
		probe_fail(p, -ENOMEM, true, "out of memory");
		return;
	}

	args = json_object_new_object();
	if (!args) {
		probe_fail(p, -ENOMEM, true, "out of memory");
		return;
	}
	json_object_object_add(args, "typename", json_object_new_string("machine"));

	/* All at once; QEMU answers in order, the last one triggers quit. */
	p->n_queries = 1; /* held until all are sent */
	if ((r = probe_query(p, "query-machines", NULL, probe_on_machines)) < 0 ||
	    (r = probe_query(p, "query-qmp-schema", NULL, probe_on_schema)) < 0 ||
	    (r = probe_query(p, "query-migrate-capabilities", NULL, probe_on_capabilities)) < 0 ||
	    (r = probe_query(p, "qom-list-properties", TAKE_PTR(args),
			     probe_on_machine_properties)) < 0) {
		json_object_put(args);
		probe_fail(p, r, true, "cannot send QMP queries");
		return;
	}
	probe_query_done(p);
}

static void probe_on_qmp_closed(struct qmp *q, int error, void *userdata) {
	struct probe *p = userdata;
	char buf[256];

	if (p->state >= PROBE_QUITTING) {
		/* After quit, this is how it should end. */
		p->qmp = qmp_free(p->qmp);
		return;
	}
	if (error == -ECONNRESET) {
		/* It hung up, probably exiting: its exit status says more. */
		probe_fail(p, -EPROTO, false, NULL);
		return;
	}
	snprintf(buf, sizeof(buf), "%s%s (%s)",
		 !qmp_get_version(q) ? "not a QEMU binary: " : "",
		 error == -ETIMEDOUT ? "the QMP handshake timed out"
				     : "it sent something that is not QMP",
		 strerror(-error));
	probe_fail(p, -EPROTO, true, buf);
}

/* ---- entry points ---- */

static void probe_on_defer(evutil_socket_t fd, short what, void *arg) {
	probe_report(arg);
}

/* A probe of path, not started; NULL when out of memory. */
static struct probe *probe_new(struct event_base *base, const char *path,
			       const struct probe_options *opts, probe_done_fn done,
			       void *userdata) {
	struct probe *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->base = base;
	p->binary_fd = p->pidfd = p->exec_fd = p->output_fd = -1;
	p->done = done;
	p->userdata = userdata;
	p->state = PROBE_STARTING;
	p->phase = "before the QMP greeting";
	p->before_greeting = true;
	p->started_usec = now_usec();
	p->timeout_usec = opts && opts->timeout_usec > 0 ? opts->timeout_usec : PROBE_TIMEOUT_USEC;
	p->no_cache = opts && opts->no_cache;
	if (opts && opts->user) {
		p->user = *opts->user;
		p->has_user = true;
	}
	p->path = strdup(path);
	p->result = calloc(1, sizeof(*p->result));
	p->defer_ev = evtimer_new(base, probe_on_defer, p);
	p->deadline_ev = evtimer_new(base, probe_on_deadline, p);
	p->grace_ev = evtimer_new(base, probe_on_grace, p);
	if (!p->path || !p->result || !p->defer_ev || !p->deadline_ev || !p->grace_ev) {
		probe_free(p);
		return NULL;
	}
	return p;
}

int probe_run(struct event_base *base, const char *path, int binary_fd,
	      const struct probe_options *opts, probe_done_fn done, void *userdata,
	      struct probe **ret) {
	struct probe *p;
	struct timeval tv;
	struct probe_result *cached;
	int r;

	if (!base || !path || !*path || !done)
		return -EINVAL;
	p = probe_new(base, path, opts, done, userdata);
	if (!p)
		return -ENOMEM;

	if (binary_fd >= 0) {
		p->binary_fd = fcntl(binary_fd, F_DUPFD_CLOEXEC, 3);
		if (p->binary_fd < 0) {
			r = -errno;
			probe_free(p);
			return r;
		}
	}

	/* From here on, every outcome goes through done, from the loop. */
	if ((p->binary_fd >= 0 ? fstat(p->binary_fd, &p->st) : stat(path, &p->st)) < 0) {
		r = -errno;
		probe_set_reason(p, r, "cannot access %s: %s", path, strerror(-r));
		goto defer;
	}

	cached = p->no_cache ? NULL : probe_cache_find(path, &p->st);
	if (cached) {
		probe_result_free(p->result);
		p->result = probe_result_dup(cached);
		if (!p->result) {
			probe_free(p);
			return -ENOMEM;
		}
		p->result->cached = true;
		log_debug("probe %s: cached", path);
		goto defer;
	}

	p->result->path = strdup(path);
	if (!p->result->path) {
		probe_free(p);
		return -ENOMEM;
	}
	p->result->dev = p->st.st_dev;
	p->result->ino = p->st.st_ino;
	p->result->mtime = p->st.st_mtim;
	p->result->size = p->st.st_size;

	tv = usec_to_timeval(p->timeout_usec);
	evtimer_add(p->deadline_ev, &tv);
	r = probe_spawn(p);
	if (r < 0) {
		probe_kill(p);
		probe_set_reason(p, r, "cannot start %s: %s", path, strerror(-r));
		goto defer;
	}
	if (ret)
		*ret = p;
	return 0;

defer:
	tv = (struct timeval){};
	evtimer_add(p->defer_ev, &tv);
	if (ret)
		*ret = p;
	return 0;
}

void probe_cancel(struct probe *p) {
	if (!p || p->state == PROBE_REPORTED)
		return;
	log_debug("probe %s: cancelled", p->path);
	probe_retire(p);
}

pid_t probe_get_pid(const struct probe *p) {
	return p && p->pid > 0 ? p->pid : 0;
}
