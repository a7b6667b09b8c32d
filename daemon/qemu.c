/* QEMU processes (see qemu.h). The parent opens every resource; the child
 * only moves the fds it must keep to their numbers, clears close-on-exec on
 * exactly those, closes everything else and execs. */
#include "qemu.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/close_range.h>

#include "log.h"
#include "macro.h"
#include "util.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static bool exiting;

void qemu_set_exiting(void) { exiting = true; }

struct qemu_proc {
	pid_t pid;
	int pidfd;
	bool running, child;
	bool orphaned; /* freed by its owner while running: reap, then free */
	struct event *ev;
	char *label;
	qemu_exit_fn on_exit;
	void *userdata;
};

static void on_pidfd(evutil_socket_t fd, short what, void *userdata) {
	struct qemu_proc *p = userdata;
	struct qemu_exit e = {.how = "unknown"};
	siginfo_t si = {0};

	if (p->child && waitid((idtype_t)P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) == 0 &&
	    si.si_pid != 0) {
		if (si.si_code == CLD_EXITED) {
			e.how = "exited";
			e.status = si.si_status;
		} else if (si.si_code == CLD_KILLED) {
			e.how = "killed";
			e.signal = si.si_status;
		} else if (si.si_code == CLD_DUMPED) {
			e.how = "dumped";
			e.signal = si.si_status;
		}
	} else if (p->child) {
		return; /* not reaped yet: the pidfd stays readable */
	}
	event_del(p->ev);
	p->running = false;
	if (p->orphaned) {
		qemu_proc_free(p);
		return;
	}
	if (p->on_exit)
		p->on_exit(p, &e, p->userdata);
}

/* Whom every QEMU runs as unless told otherwise: root (the default) or
 * --qemu-user's user, with that user's groups (kvm, say) and nothing of
 * cprd's. */
#define QEMU_USER_GROUPS_MAX 64
static struct {
	bool set;
	gid_t groups[QEMU_USER_GROUPS_MAX];
	struct qemu_identity id;
} qemu_user;

int qemu_set_user(const char *name) {
	struct passwd *pw = getpwnam(name);
	if (!pw)
		return -ENOENT;
	if (pw->pw_uid == 0)
		return -EPERM; /* root is what QEMU runs as without the option */
	int n = QEMU_USER_GROUPS_MAX;
	if (getgrouplist(pw->pw_name, pw->pw_gid, qemu_user.groups, &n) < 0)
		return -E2BIG;
	qemu_user.id = (struct qemu_identity){
		.uid = pw->pw_uid,
		.gid = pw->pw_gid,
		.groups = qemu_user.groups,
		.n_groups = (size_t)n,
	};
	qemu_user.set = true;
	return 0;
}

bool qemu_get_user(uid_t *uid, gid_t *gid) {
	if (qemu_user.set) {
		if (uid)
			*uid = qemu_user.id.uid;
		if (gid)
			*gid = qemu_user.id.gid;
	}
	return qemu_user.set;
}

const struct qemu_identity *qemu_default_user(void) {
	return qemu_user.set ? &qemu_user.id : NULL;
}

int qemu_chown(const struct qemu_identity *id, const char *path) {
	id = id ? id : qemu_default_user();
	return chown(path, id ? id->uid : 0, id ? id->gid : 0) < 0 ? -errno : 0;
}

int qemu_fchown(const struct qemu_identity *id, int fd) {
	id = id ? id : qemu_default_user();
	return fchown(fd, id ? id->uid : 0, id ? id->gid : 0) < 0 ? -errno : 0;
}

int qemu_user_chown(const char *path) {
	return qemu_chown(NULL, path);
}

bool qemu_may_open_rw(const struct qemu_identity *id, const char *path) {
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return false;
	struct stat st;
	int r = fstat(fd, &st);
	close(fd);
	id = id ? id : qemu_default_user();
	if (!id)
		return true;
	if (r < 0)
		return false;
	/* The mode bits as the kernel would apply them to QEMU's user (ACLs
	 * are not looked at). The groups include the primary one. */
	bool in_group = id->gid == st.st_gid;
	for (size_t i = 0; i < id->n_groups; i++)
		in_group = in_group || id->groups[i] == st.st_gid;
	unsigned shift = st.st_uid == id->uid ? 6 : in_group ? 3 : 0;
	return ((st.st_mode >> shift) & 06) == 06;
}

int qemu_identity_drop(const struct qemu_identity *id, const char **what) {
	id = id ? id : qemu_default_user();
	if (!id)
		return 0;
	*what = "setgroups";
	if (setgroups(id->n_groups, id->groups) < 0)
		return -1;
	*what = "setresgid";
	if (setresgid(id->gid, id->gid, id->gid) < 0)
		return -1;
	*what = "setresuid";
	if (setresuid(id->uid, id->uid, id->uid) < 0)
		return -1;
	return 0;
}

/* In the child: says why it cannot go on, as an errno on the exec-error
 * pipe when there is one, else as a sentence on the QEMU log, and ends. */
static _noreturn_ void child_fail(int error_fd, const char *what) {
	static const char prefix[] = "cprd: cannot start QEMU: ";
	int e = errno;
	if (error_fd >= 0) {
		(void)!write(error_fd, &e, sizeof(e));
		_exit(127);
	}
	(void)!write(STDERR_FILENO, prefix, sizeof(prefix) - 1);
	(void)!write(STDERR_FILENO, what, strlen(what));
	const char *why = e == EPERM || e == EACCES ? ": permission denied\n" : ": failed\n";
	(void)!write(STDERR_FILENO, why, strlen(why));
	_exit(127);
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static _noreturn_ void child_exec(const struct qemu_spawn_options *o, pid_t parent) {
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	/* No signals from cprd's terminal or process group; and a process
	 * group of its own, so a kill of the group reaches whatever a wrapper
	 * script forked. */
	setsid();

	/* Move every source out of the way first, so no target overwrites a
	 * source that is still to be moved. */
	int moved[64];
	if (o->n_fds > ELEMENTSOF(moved))
		_exit(127);
	int error_fd = -1;
	if (o->exec_error_fd >= 0 && (error_fd = fcntl(o->exec_error_fd, F_DUPFD_CLOEXEC, 256)) < 0)
		_exit(127);
	/* Our copy of the write end goes, or the read would never see EOF. */
	int go = -1;
	if (o->go_pipe && ((go = fcntl(o->go_pipe[0], F_DUPFD_CLOEXEC, 256)) < 0 || close(o->go_pipe[1]) < 0))
		_exit(127);
	for (size_t i = 0; i < o->n_fds; i++) {
		moved[i] = fcntl(o->fds[i].fd, F_DUPFD_CLOEXEC, 256);
		if (moved[i] < 0)
			child_fail(error_fd, "fcntl");
	}
	int logfd = fcntl(o->log_fd, F_DUPFD_CLOEXEC, 256);
	int binary_fd = o->binary_fd < 0 ? -1 : fcntl(o->binary_fd, F_DUPFD_CLOEXEC, 256);
	if (o->binary_fd >= 0 && binary_fd < 0)
		child_fail(error_fd, "fcntl");
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (logfd < 0 || null < 0 || dup2(null, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
		child_fail(error_fd, "stdio");
	int maxfd = 2;
	for (size_t i = 0; i < o->n_fds; i++) {
		/* dup2 gives the copy no close-on-exec: these fds are the ones
		 * meant to survive exec, and only these. */
		if (dup2(moved[i], o->fds[i].target) < 0)
			child_fail(error_fd, "dup2");
		if (o->fds[i].target > maxfd)
			maxfd = o->fds[i].target;
	}
	/* Drop root for good: groups first, while we may still set them. */
	const char *what = NULL;
	if (qemu_identity_drop(o->user, &what) < 0)
		child_fail(error_fd, what);
	/* After the drop, which clears the parent-death signal; and then the
	 * check, in case cprd died before it was set. */
	if (o->die_with_parent && (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent))
		_exit(127);
	/* Everything else goes now, not at exec: a target waits for its go
	 * below, and must not keep cprd's sockets (its Varlink listener above
	 * all) open meanwhile, or a cprd killed in that wait leaves a listener
	 * behind that the next cprd takes for a live one. Kept until exec: the
	 * go pipe, the exec-error pipe and binary_fd, all close-on-exec. */
	int keep[3] = {go, error_fd, binary_fd};
	for (int i = 0; i < 3; i++) /* in order: three at most */
		for (int j = i + 1; j < 3; j++)
			if (keep[j] < keep[i]) {
				int t = keep[i];
				keep[i] = keep[j];
				keep[j] = t;
			}
	unsigned lo = (unsigned)maxfd + 1;
	for (int i = 0; i < 3; i++) {
		if (keep[i] < 0 || (unsigned)keep[i] < lo)
			continue;
		if ((unsigned)keep[i] > lo)
			syscall(SYS_close_range, lo, (unsigned)keep[i] - 1, 0);
		lo = (unsigned)keep[i] + 1;
	}
	syscall(SYS_close_range, lo, ~0U, 0);
	if (go >= 0) {
		char c;
		ssize_t n;
		while ((n = read(go, &c, 1)) < 0 && errno == EINTR)
			;
		if (n != 1)
			_exit(127);
	}
	char *const *envp = o->envp ? o->envp : environ;
	if (binary_fd < 0) {
		execve(o->path, o->argv, envp);
		child_fail(error_fd, "exec");
	}
	/* Execute the very file cprd checked, not whatever the path names now. */
	syscall(SYS_execveat, binary_fd, "", o->argv, envp, AT_EMPTY_PATH);
	if (errno == ENOENT) {
		/* A "#!" script: its interpreter opens /dev/fd/N, which a
		 * close-on-exec fd would no longer be. */
		fcntl(binary_fd, F_SETFD, 0);
		syscall(SYS_execveat, binary_fd, "", o->argv, envp, AT_EMPTY_PATH);
	}
	child_fail(error_fd, "exec");
}

int qemu_fork(const struct qemu_spawn_options *o, pid_t *ret_pid, int *ret_pidfd) {
	if (o->binary_fd < 0 && !o->path)
		return -EINVAL;
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0)
		child_exec(o, parent);

	/* Our unreaped child cannot be replaced by another process, so this
	 * pidfd refers to it for sure. */
	int pidfd = pidfd_open_pid(pid);
	if (pidfd < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return pidfd;
	}
	*ret_pid = pid;
	*ret_pidfd = pidfd;
	return 0;
}

int qemu_spawn(struct event_base *base, const struct qemu_spawn_options *o, const char *label,
	       qemu_exit_fn on_exit, void *userdata, struct qemu_proc **ret) {
	struct qemu_proc *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->label = strdup(label);

	int r = qemu_fork(o, &p->pid, &p->pidfd);
	if (r < 0) {
		free(p->label);
		free(p);
		return r;
	}
	p->child = true;
	p->running = true;
	p->on_exit = on_exit;
	p->userdata = userdata;
	p->ev = event_new(base, p->pidfd, EV_READ | EV_PERSIST, on_pidfd, p);
	event_add(p->ev, NULL);
	log_debug("%s: started %s as pid %d", label, o->argv[0], (int)p->pid);
	*ret = p;
	return 0;
}

int qemu_adopt(struct event_base *base, pid_t pid, int pidfd, const char *label,
	       qemu_exit_fn on_exit, void *userdata, struct qemu_proc **ret) {
	struct qemu_proc *p = calloc(1, sizeof(*p));
	if (!p) {
		safe_close(pidfd);
		return -ENOMEM;
	}
	p->label = strdup(label);
	p->pid = pid;
	p->pidfd = pidfd;
	p->running = true;
	/* After a re-exec our QEMUs are still our children: reap them and
	 * learn how they ended. After a restart they are not. */
	p->child = proc_parent(pid) == getpid();
	p->on_exit = on_exit;
	p->userdata = userdata;
	p->ev = event_new(base, pidfd, EV_READ | EV_PERSIST, on_pidfd, p);
	event_add(p->ev, NULL);
	*ret = p;
	return 0;
}

pid_t qemu_proc_pid(const struct qemu_proc *p) { return p->pid; }
bool qemu_proc_running(const struct qemu_proc *p) { return p->running; }
int qemu_proc_pidfd(const struct qemu_proc *p) { return p->pidfd; }

int qemu_proc_kill(struct qemu_proc *p, int sig) {
	if (!p->running)
		return -ESRCH;
	return pidfd_send(p->pidfd, sig);
}

void qemu_proc_free(struct qemu_proc *p) {
	if (!p)
		return;
	if (p->child && p->running && !p->orphaned && !exiting) {
		/* Still our child: keep watching so it is reaped, not a zombie. */
		p->orphaned = true;
		p->on_exit = NULL;
		return;
	}
	if (p->ev)
		event_free(p->ev);
	safe_close(p->pidfd);
	free(p->label);
	free(p);
}
