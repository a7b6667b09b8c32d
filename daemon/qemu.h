/* Running a QEMU process, a guest's or a probe's: fork, drop to QEMU's user,
 * hand over exactly the fds it should have at fixed numbers, exec, and watch
 * it with a pidfd on the event loop. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct event_base;
struct qemu_proc;

/* An fd of ours that the child gets as number `target`. */
struct qemu_fd {
	int fd;
	int target;
};

struct qemu_exit {
	const char *how; /* "exited", "killed", "dumped" or "unknown" */
	int status;      /* exit status when exited */
	int signal;      /* signal number when killed or dumped */
};

typedef void (*qemu_exit_fn)(struct qemu_proc *p, const struct qemu_exit *e, void *userdata);

/* Whom a child runs as: its uid, gid and supplementary groups, set with
 * setgroups, setresgid and setresuid right before exec. A VM's own user
 * (--qemu-users) has gid = uid and no supplementary groups. */
struct qemu_identity {
	uid_t uid;
	gid_t gid;
	const gid_t *groups;
	size_t n_groups;
};

/* From now on every QEMU runs as this user (not root) with its groups.
 * -ENOENT: no such user; -EPERM: uid 0. */
int qemu_set_user(const char *name);
/* Whether QEMU runs as a user of its own, and which. */
bool qemu_get_user(uid_t *uid, gid_t *gid);
/* --qemu-user's user with its groups, or NULL (root): whom a child runs as
 * when nobody says otherwise. */
const struct qemu_identity *qemu_default_user(void);
/* Gives path to QEMU's user (root without --qemu-user). */
int qemu_user_chown(const char *path);
/* Gives path (or fd) to id's uid and gid; NULL: the default user. */
int qemu_chown(const struct qemu_identity *id, const char *path);
int qemu_fchown(const struct qemu_identity *id, int fd);
/* Whether a child run as id (NULL: the default user) could open path
 * read-write, by the mode bits (/dev/kvm for --accel auto). */
bool qemu_may_open_rw(const struct qemu_identity *id, const char *path);
/* In a child between fork and exec (async-signal-safe): becomes id for
 * good, groups first. 0, or -1 with errno set and what naming the call
 * that failed. NULL: the default user (nothing to do for root). */
int qemu_identity_drop(const struct qemu_identity *id, const char **what);

/* How a child is started. Every child, a guest's QEMU or a probe, goes
 * through the same fork and exec, and so runs as the user it is given (a
 * VM's own) or as --qemu-user's user. */
struct qemu_spawn_options {
	int binary_fd;             /* O_PATH fd of the checked file (binary.h), or -1 */
	const char *path;          /* executed by name when binary_fd is -1 */
	char *const *argv;         /* argv[0] included */
	char *const *envp;         /* NULL: cprd's own environment */
	const struct qemu_fd *fds; /* the only fds the child keeps, at their numbers */
	size_t n_fds;
	int log_fd;                /* stdout and stderr; stdin is /dev/null */
	/* -1, or a pipe's write end (close-on-exec): a failed set-up or exec
	 * writes its errno there as an int, instead of a sentence on log_fd. */
	int exec_error_fd;
	/* SIGKILL when cprd dies: for a probe, never for a guest. */
	bool die_with_parent;
	/* Whom the child runs as; NULL: qemu_default_user(). */
	const struct qemu_identity *user;
	/* NULL, or a pipe {read end, write end} (close-on-exec): the child
	 * waits before exec until a byte arrives on it, and ends (status 127)
	 * at end of file, so a QEMU whose parent died before letting it run
	 * (an upgrade target before its journal named it) never runs. */
	const int *go_pipe;
};

/* Forks and executes o's binary as QEMU's user, in a session of its own.
 * The child is not watched: the caller owns *ret_pidfd and must reap. */
int qemu_fork(const struct qemu_spawn_options *o, pid_t *ret_pid, int *ret_pidfd);
/* qemu_fork(), then watches the child: on_exit runs once, from the event
 * loop, when the process ended; the proc stays valid until qemu_proc_free(). */
int qemu_spawn(struct event_base *base, const struct qemu_spawn_options *o, const char *label,
	       qemu_exit_fn on_exit, void *userdata, struct qemu_proc **ret);
/* Watches a process that is not our child (after cprd restarted). pidfd is
 * taken. */
int qemu_adopt(struct event_base *base, pid_t pid, int pidfd, const char *label,
	       qemu_exit_fn on_exit, void *userdata, struct qemu_proc **ret);

pid_t qemu_proc_pid(const struct qemu_proc *p);
/* The pidfd it is watched through (still the proc's), for pidfd_getfd. */
int qemu_proc_pidfd(const struct qemu_proc *p);
bool qemu_proc_running(const struct qemu_proc *p);
int qemu_proc_kill(struct qemu_proc *p, int sig);
/* cprd is exiting: free without waiting for children (guests keep running). */
void qemu_set_exiting(void);
/* Stops watching; does not kill. A child still running is watched on until
 * it ends, so it is reaped. */
void qemu_proc_free(struct qemu_proc *p);
