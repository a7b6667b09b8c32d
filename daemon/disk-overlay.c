/* disk-overlay: a fresh qcow2 overlay over a disk (see disk-overlay.h). The
 * name is taken with O_EXCL before qemu-img runs, so two restores in the
 * same second get two files, and qemu-img (which opens the file it is
 * given with O_CREAT, not O_EXCL) never writes over one it did not make. */
#include "disk-overlay.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "qemu.h"
#include "spec.h"
#include "util.h"

char *disk_overlay_name(const char *disk, const char *tag, const char *stamp, unsigned n) {
	const char *base = strrchr(disk, '/');
	base = base ? base + 1 : disk;
	const char *cut = strstr(base, ".snap-");
	const char *restore = strstr(base, ".restore-");
	if (restore && (!cut || restore < cut))
		cut = restore;
	if (!cut)
		cut = strstr(base, ".qcow2");
	int stem = cut ? (int)(cut - disk) : (int)strlen(disk);
	char *name = NULL;
	int r = n > 1 ? asprintf(&name, "%.*s.%s-%s-%u.qcow2", stem, disk, tag, stamp, n)
		      : asprintf(&name, "%.*s.%s-%s.qcow2", stem, disk, tag, stamp);
	return r < 0 ? NULL : name;
}

void disk_overlay_argv(const char *qemu_img, const char *base, const char *overlay,
		       const char *argv[static DISK_OVERLAY_ARGV_MAX]) {
	size_t i = 0;
	argv[i++] = qemu_img;
	argv[i++] = "create";
	argv[i++] = "-q";
	argv[i++] = "-f";
	argv[i++] = "qcow2";
	argv[i++] = "-F"; /* the backing file's format is said, never probed */
	argv[i++] = "qcow2";
	argv[i++] = "-b";
	argv[i++] = base;
	argv[i++] = overlay;
	argv[i] = NULL;
}

void disk_overlay_message(const char *output, size_t len, char *buf, size_t size) {
	static const char prefix[] = "qemu-img: ";
	size_t o = 0;
	if (!size)
		return;
	while (len && (output[len - 1] == '\n' || output[len - 1] == ' ' || output[len - 1] == '\t' ||
		       output[len - 1] == '\r' || output[len - 1] == '.'))
		len--;
	for (size_t i = 0; i < len && o + 1 < size; i++) {
		bool line_start = i == 0 || output[i - 1] == '\n';
		if (line_start && len - i >= sizeof(prefix) - 1 &&
		    !strncmp(output + i, prefix, sizeof(prefix) - 1)) {
			i += sizeof(prefix) - 2;
			continue;
		}
		if (output[i] == '\n') {
			if (o + 2 >= size)
				break;
			buf[o++] = ';';
			buf[o++] = ' ';
		} else if (output[i] != '\r') {
			buf[o++] = output[i];
		}
	}
	buf[o] = '\0';
}

struct disk_overlay {
	struct event_base *base;
	char *disk, *path;
	struct qemu_proc *proc;
	struct event *deadline, *finish;
	int output; /* a memfd: qemu-img's stdout and stderr */
	bool timed_out;
	int error;
	char reason[DISK_OVERLAY_OUTPUT_MAX + 256];
	disk_overlay_done_fn done;
	void *userdata;
};

static void overlay_free(struct disk_overlay *o) {
	if (o->proc) {
		qemu_proc_kill(o->proc, SIGKILL);
		qemu_proc_free(o->proc); /* still watched until reaped */
	}
	if (o->deadline)
		event_free(o->deadline);
	if (o->finish)
		event_free(o->finish);
	safe_close(o->output);
	free(o->disk);
	free(o->path);
	free(o);
}

void disk_overlay_cancel(struct disk_overlay *o) {
	if (!o)
		return;
	if (o->path)
		unlink(o->path);
	overlay_free(o);
}

/* From the loop, after the child was reaped: the caller is told. */
static void overlay_finish(evutil_socket_t fd, short what, void *userdata) {
	struct disk_overlay *o = userdata;
	if (o->error < 0)
		unlink(o->path);
	else
		log_info("made the overlay %s over %s", o->path, o->disk);
	o->done(o->error, o->error < 0 ? NULL : o->path, o->error < 0 ? o->reason : NULL,
		o->userdata);
	overlay_free(o);
}

static void overlay_on_exit(struct qemu_proc *p, const struct qemu_exit *e, void *userdata) {
	struct disk_overlay *o = userdata;
	evtimer_del(o->deadline);
	if (streq(e->how, "exited") && e->status == 0) {
		o->error = 0;
	} else {
		char out[DISK_OVERLAY_OUTPUT_MAX], msg[DISK_OVERLAY_OUTPUT_MAX];
		ssize_t n = pread(o->output, out, sizeof(out), 0);
		disk_overlay_message(out, n > 0 ? (size_t)n : 0, msg, sizeof(msg));
		o->error = o->timed_out ? -ETIMEDOUT : -EIO;
		if (o->timed_out)
			snprintf(o->reason, sizeof(o->reason),
				 "cannot make an overlay over %s: qemu-img did not finish within %d s",
				 o->disk, DISK_OVERLAY_TIMEOUT_MS / 1000);
		else
			snprintf(o->reason, sizeof(o->reason),
				 "cannot make an overlay over %s: qemu-img %s %d: %s", o->disk,
				 streq(e->how, "exited") ? "exited with status" : "was killed by signal",
				 streq(e->how, "exited") ? e->status : e->signal,
				 msg[0] ? msg : "no message");
	}
	/* The proc is freed after its own callback has returned. */
	event_active(o->finish, EV_TIMEOUT, 0);
}

static void overlay_deadline(evutil_socket_t fd, short what, void *userdata) {
	struct disk_overlay *o = userdata;
	o->timed_out = true;
	qemu_proc_kill(o->proc, SIGKILL); /* the exit reports it */
}

/* Takes the first free name, as a file owned and moded as the disk is. */
static int reserve(struct disk_overlay *o, const char *tag, const char *stamp,
		   const struct stat *disk_st, char *why, size_t size) {
	for (unsigned n = 1; n <= DISK_OVERLAY_TRIES; n++) {
		_cleanup_free_ char *name = disk_overlay_name(o->disk, tag, stamp, n);
		if (!name)
			return why_err(-ENOMEM, why, size, "out of memory");
		if (strlen(name) >= SPEC_PATH_MAX)
			return why_err(-ENAMETOOLONG, why, size,
				       "cannot make an overlay over %s: its name would be too long",
				       o->disk);
		_cleanup_close_ int fd =
			open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0 && errno == EEXIST)
			continue;
		if (fd < 0)
			return why_err(-errno, why, size, "cannot make an overlay over %s: %s: %m",
				       o->disk, name);
		if (fchown(fd, disk_st->st_uid, disk_st->st_gid) < 0 ||
		    fchmod(fd, disk_st->st_mode & 0666) < 0) {
			int e = -errno;
			unlink(name);
			return why_err(e, why, size, "cannot make an overlay over %s: %s: %s",
				       o->disk, name, strerror(-e));
		}
		o->path = TAKE_PTR(name);
		return 0;
	}
	return why_err(-EEXIST, why, size,
		       "cannot make an overlay over %s: %d overlays of this second exist already",
		       o->disk, DISK_OVERLAY_TRIES);
}

int disk_overlay_create(struct event_base *base, const char *disk, const char *tag,
			const char *stamp, disk_overlay_done_fn done, void *userdata,
			struct disk_overlay **ret, char *why, size_t size) {
	if (disk[0] != '/')
		return why_err(-EINVAL, why, size, "%s is not an absolute path", disk);
	struct stat st;
	if (stat(disk, &st) < 0)
		return why_err(-errno, why, size, "cannot make an overlay over %s: %m", disk);
	if (!S_ISREG(st.st_mode))
		return why_err(-EINVAL, why, size,
			       "cannot make an overlay over %s: it is not a regular file", disk);
	struct disk_overlay *o = calloc(1, sizeof(*o));
	if (!o)
		return why_err(-ENOMEM, why, size, "out of memory");
	o->base = base;
	o->done = done;
	o->userdata = userdata;
	o->disk = strdup(disk);
	o->output = memfd_create("cprd:qemu-img", MFD_CLOEXEC);
	o->deadline = evtimer_new(base, overlay_deadline, o);
	o->finish = evtimer_new(base, overlay_finish, o);
	if (!o->disk || !o->deadline || !o->finish || o->output < 0) {
		int e = o->output < 0 ? -errno : -ENOMEM;
		overlay_free(o);
		return why_err(e, why, size, "cannot make an overlay over %s: %s", disk,
			       strerror(-e));
	}
	int r = reserve(o, tag, stamp, &st, why, size);
	if (r < 0) {
		overlay_free(o);
		return r;
	}
	const char *argv[DISK_OVERLAY_ARGV_MAX];
	disk_overlay_argv(DISK_OVERLAY_QEMU_IMG, disk, o->path, argv);
	static char *const envp[] = {"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
	static const struct qemu_identity root = {.uid = 0, .gid = 0};
	const struct qemu_spawn_options so = {
		.binary_fd = -1,
		.path = DISK_OVERLAY_QEMU_IMG,
		.argv = (char *const *)argv,
		.envp = envp,
		.log_fd = o->output,
		.exec_error_fd = -1,
		.die_with_parent = true,
		.user = &root,
	};
	r = qemu_spawn(base, &so, "qemu-img", overlay_on_exit, o, &o->proc);
	if (r < 0) {
		disk_overlay_cancel(o);
		return why_err(r, why, size, "cannot run %s: %s", DISK_OVERLAY_QEMU_IMG,
			       strerror(-r));
	}
	struct timeval tv = {DISK_OVERLAY_TIMEOUT_MS / 1000, (DISK_OVERLAY_TIMEOUT_MS % 1000) * 1000};
	evtimer_add(o->deadline, &tv);
	*ret = o;
	return 0;
}
