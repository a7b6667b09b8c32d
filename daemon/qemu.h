/* Running a QEMU process: fork, hand over exactly the fds it should have
 * at fixed numbers, exec, and watch it with a pidfd on the event loop. */
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

/* From now on every QEMU runs as this user (not root) with its groups.
 * -ENOENT: no such user; -EPERM: uid 0. */
int qemu_set_user(const char *name);
/* Whether QEMU runs as a user of its own, and which. */
bool qemu_get_user(uid_t *uid, gid_t *gid);
/* Gives path to QEMU's user (root without --qemu-user). */
int qemu_user_chown(const char *path);
/* Whether QEMU, as the user it runs as, could open path read-write
 * (/dev/kvm for --accel auto). */
bool qemu_may_open_rw(const char *path);

/* Starts the file open as binary_fd (O_PATH; see binary.h) with argv
 * (argv[0] included). The child gets the fds in
 * `fds` at their target numbers and nothing else but stdin from /dev/null
 * and stdout/stderr on log_fd. on_exit runs once, from the event loop, when
 * the process ended; the proc stays valid until qemu_proc_free(). */
int qemu_spawn(struct event_base *base, int binary_fd, char *const *argv,
	       const struct qemu_fd *fds, size_t n_fds, int log_fd, const char *label,
	       qemu_exit_fn on_exit, void *userdata, struct qemu_proc **ret);
/* Watches a process that is not our child (after cprd restarted). pidfd is
 * taken. */
int qemu_adopt(struct event_base *base, pid_t pid, int pidfd, const char *label,
	       qemu_exit_fn on_exit, void *userdata, struct qemu_proc **ret);

pid_t qemu_proc_pid(const struct qemu_proc *p);
bool qemu_proc_running(const struct qemu_proc *p);
int qemu_proc_pidfd(const struct qemu_proc *p);
int qemu_proc_kill(struct qemu_proc *p, int sig);
/* cprd is exiting: free without waiting for children (guests keep running). */
void qemu_set_exiting(void);
/* Stops watching; does not kill. A child still running is watched on until
 * it ends, so it is reaped. */
void qemu_proc_free(struct qemu_proc *p);
