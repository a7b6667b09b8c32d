/* The QEMU binaries' folders watched with inotify (see binwatch.h). One
 * watch per folder however many paths are in it; events are matched to the
 * watched paths by name and told once per burst, from a timer. */
#include "binwatch.h"

#include <errno.h>
#include <event2/event.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "util.h"

/* apt and dpkg rename the new file over the old (IN_MOVED_TO); a copy in
 * place ends with IN_CLOSE_WRITE; ln -sf creates the link anew
 * (IN_CREATE); chmod and chown are IN_ATTRIB, which can make a binary
 * refused; removing it is IN_DELETE or IN_MOVED_FROM. The *_SELF events
 * come without a name and concern the folder itself. */
#define BINWATCH_MASK                                                                          \
	(IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM |     \
	 IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
#define BINWATCH_STEPS_MAX (BINWATCH_LINKS_MAX + 1)

/* ---- the debounce (pure) ------------------------------------------------- */

void binwatch_debounce_note(struct binwatch_debounce *d, uint64_t now) {
	if (!d->first_usec)
		d->first_usec = now ? now : 1;
	d->last_usec = now;
	d->events++;
}

uint64_t binwatch_debounce_due(const struct binwatch_debounce *d, uint64_t quiet, uint64_t max_wait) {
	if (!d->first_usec)
		return 0;
	uint64_t a = d->last_usec + quiet, b = d->first_usec + max_wait;
	return a < b ? a : b;
}

unsigned binwatch_debounce_take(struct binwatch_debounce *d, uint64_t now, uint64_t quiet,
				uint64_t max_wait) {
	uint64_t due = binwatch_debounce_due(d, quiet, max_wait);
	if (!due || now < due)
		return 0;
	unsigned n = d->events ? d->events : 1;
	*d = (struct binwatch_debounce){};
	return n;
}

/* ---- a path's steps through its symlinks ---------------------------------- */

void binwatch_steps_free(struct binwatch_step *steps, size_t n) {
	for (size_t i = 0; i < n; i++)
		free(steps[i].dir);
}

/* "DIR\0NAME" in one buffer. */
static int step_of(const char *path, struct binwatch_step *s) {
	const char *slash = strrchr(path, '/');
	if (!slash || !slash[1])
		return -EINVAL;
	size_t dlen = slash == path ? 1 : (size_t)(slash - path), len = strlen(path);
	char *buf = malloc(len + 2);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, path, dlen);
	buf[dlen] = '\0';
	strcpy(buf + dlen + 1, slash + 1);
	s->dir = buf;
	s->name = buf + dlen + 1;
	return 0;
}

int binwatch_steps(const char *path, struct binwatch_step *steps, size_t max) {
	char cur[PATH_MAX], target[PATH_MAX];
	size_t n = 0;
	int r;

	if (!path || path[0] != '/')
		return -EINVAL;
	if (strlen(path) >= sizeof(cur))
		return -ENAMETOOLONG;
	strcpy(cur, path);
	while (n < max) {
		if ((r = step_of(cur, &steps[n])) < 0) {
			binwatch_steps_free(steps, n);
			return r;
		}
		n++;
		ssize_t len = readlink(cur, target, sizeof(target) - 1);
		if (len <= 0)
			break; /* not a symlink (or gone): the last step */
		target[len] = '\0';
		if (target[0] == '/') {
			strcpy(cur, target);
		} else {
			const char *dir = steps[n - 1].dir;
			int k = snprintf(cur, sizeof(cur), "%s/%s", streq(dir, "/") ? "" : dir, target);
			if (k < 0 || (size_t)k >= sizeof(cur))
				break;
		}
	}
	return (int)n;
}

/* ---- the watcher ----------------------------------------------------------- */

struct bw_dir {
	int wd;
	unsigned refs; /* steps of watched files in it */
};

struct bw_file {
	char *path;
	struct binwatch_step steps[BINWATCH_STEPS_MAX];
	int wds[BINWATCH_STEPS_MAX]; /* -1: its folder could not be watched */
	size_t n_steps;
	struct binwatch_debounce debounce;
	bool keep; /* binwatch_set: still wanted */
};

struct binwatch {
	struct event_base *base;
	int fd;
	struct event *read_ev, *timer, *retry;
	binwatch_changed_fn changed;
	void *userdata;
	struct bw_file *files[BINWATCH_FILES_MAX];
	size_t n_files;
	struct bw_dir *dirs;
	size_t n_dirs, dirs_cap;
};

static struct bw_dir *dir_find(struct binwatch *w, int wd) {
	for (size_t i = 0; i < w->n_dirs; i++)
		if (w->dirs[i].wd == wd)
			return &w->dirs[i];
	return NULL;
}

/* A watch on dir (one per folder: inotify gives the same wd for the same
 * folder, however it is named); the wd, or -1. */
static int dir_ref(struct binwatch *w, const char *dir) {
	int wd = inotify_add_watch(w->fd, dir, BINWATCH_MASK);
	if (wd < 0) {
		log_debug_errno(errno, "binwatch: cannot watch %s: %m", dir);
		return -1;
	}
	struct bw_dir *d = dir_find(w, wd);
	if (d) {
		d->refs++;
		return wd;
	}
	if (w->n_dirs == w->dirs_cap) {
		size_t cap = w->dirs_cap ? 2 * w->dirs_cap : 8;
		struct bw_dir *n = realloc(w->dirs, cap * sizeof(*n));
		if (!n) {
			inotify_rm_watch(w->fd, wd);
			return -1;
		}
		w->dirs = n;
		w->dirs_cap = cap;
	}
	w->dirs[w->n_dirs++] = (struct bw_dir){.wd = wd, .refs = 1};
	log_debug("binwatch: watching %s", dir);
	return wd;
}

static void dir_unref(struct binwatch *w, int wd) {
	struct bw_dir *d = wd >= 0 ? dir_find(w, wd) : NULL;
	if (!d || --d->refs > 0)
		return;
	(void)inotify_rm_watch(w->fd, wd); /* EINVAL when the kernel dropped it already */
	*d = w->dirs[--w->n_dirs];
}

/* (Re)reads where the file's steps are and watches their folders; the old
 * watches go after the new ones are taken, so a folder kept is never let go. */
static void file_resolve(struct binwatch *w, struct bw_file *f) {
	struct binwatch_step steps[BINWATCH_STEPS_MAX];
	int wds[BINWATCH_STEPS_MAX];
	int n = binwatch_steps(f->path, steps, BINWATCH_STEPS_MAX);
	if (n < 0) {
		log_debug_errno(n, "binwatch: cannot follow %s: %m", f->path);
		n = 0;
	}
	for (int i = 0; i < n; i++)
		wds[i] = dir_ref(w, steps[i].dir);
	for (size_t i = 0; i < f->n_steps; i++)
		dir_unref(w, f->wds[i]);
	binwatch_steps_free(f->steps, f->n_steps);
	memcpy(f->steps, steps, (size_t)n * sizeof(*steps));
	memcpy(f->wds, wds, (size_t)n * sizeof(*wds));
	f->n_steps = (size_t)n;
}

static void file_free(struct binwatch *w, struct bw_file *f) {
	for (size_t i = 0; i < f->n_steps; i++)
		dir_unref(w, f->wds[i]);
	binwatch_steps_free(f->steps, f->n_steps);
	free(f->path);
	free(f);
}

static struct bw_file *file_find(struct binwatch *w, const char *path) {
	for (size_t i = 0; i < w->n_files; i++)
		if (streq(w->files[i]->path, path))
			return w->files[i];
	return NULL;
}

static void note(struct bw_file *f, uint64_t now) {
	binwatch_debounce_note(&f->debounce, now);
}

static bool file_missing_dir(const struct bw_file *f) {
	if (f->n_steps == 0)
		return true;
	for (size_t i = 0; i < f->n_steps; i++)
		if (f->wds[i] < 0)
			return true;
	return false;
}

/* A folder that could not be watched (removed, not made yet) is looked for
 * again now and then: inotify cannot watch what is not there. */
static void arm_retry(struct binwatch *w) {
	for (size_t i = 0; i < w->n_files; i++)
		if (file_missing_dir(w->files[i])) {
			if (!evtimer_pending(w->retry, NULL)) {
				struct timeval tv = {.tv_sec = BINWATCH_RETRY_USEC / 1000000,
						     .tv_usec = BINWATCH_RETRY_USEC % 1000000};
				evtimer_add(w->retry, &tv);
			}
			return;
		}
	evtimer_del(w->retry);
}

static void arm_timer(struct binwatch *w) {
	uint64_t next = 0;
	for (size_t i = 0; i < w->n_files; i++) {
		uint64_t due = binwatch_debounce_due(&w->files[i]->debounce, BINWATCH_QUIET_USEC,
						     BINWATCH_MAX_WAIT_USEC);
		if (due && (!next || due < next))
			next = due;
	}
	arm_retry(w);
	if (!next) {
		evtimer_del(w->timer);
		return;
	}
	uint64_t now = now_usec(CLOCK_MONOTONIC), wait = next > now ? next - now : 0;
	struct timeval tv = {.tv_sec = (time_t)(wait / 1000000), .tv_usec = (suseconds_t)(wait % 1000000)};
	evtimer_add(w->timer, &tv);
}

static void on_event(struct binwatch *w, const struct inotify_event *e, uint64_t now) {
	if (e->mask & IN_Q_OVERFLOW) {
		log_warning("binwatch: the kernel's inotify queue overflowed; looking at every watched binary");
		for (size_t i = 0; i < w->n_files; i++)
			note(w->files[i], now);
		return;
	}
	if (e->mask & IN_IGNORED) {
		/* The folder went (or was unwatched): its files are looked at,
		 * and their folders watched again when they are there. */
		struct bw_dir *d = dir_find(w, e->wd);
		if (d)
			*d = w->dirs[--w->n_dirs];
		for (size_t i = 0; i < w->n_files; i++)
			for (size_t k = 0; k < w->files[i]->n_steps; k++)
				if (w->files[i]->wds[k] == e->wd) {
					w->files[i]->wds[k] = -1;
					note(w->files[i], now);
				}
		return;
	}
	for (size_t i = 0; i < w->n_files; i++) {
		struct bw_file *f = w->files[i];
		for (size_t k = 0; k < f->n_steps; k++)
			if (f->wds[k] == e->wd && (e->len == 0 || streq(e->name, f->steps[k].name))) {
				note(f, now);
				break;
			}
	}
}

static void on_readable(evutil_socket_t fd, short what, void *arg) {
	struct binwatch *w = arg;
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	uint64_t now = now_usec(CLOCK_MONOTONIC);
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0) {
			if (n < 0 && errno != EAGAIN && errno != EINTR)
				log_warning_errno(errno, "binwatch: cannot read inotify events: %m");
			break;
		}
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *e = (const struct inotify_event *)p;
			on_event(w, e, now);
			p += sizeof(*e) + e->len;
		}
	}
	arm_timer(w);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
	struct binwatch *w = arg;
	/* The callback may change the set of files (it may call
	 * binwatch_set): look for the next due one afresh each time. */
	for (;;) {
		uint64_t now = now_usec(CLOCK_MONOTONIC);
		struct bw_file *f = NULL;
		unsigned events = 0;
		for (size_t i = 0; i < w->n_files && !f; i++)
			if ((events = binwatch_debounce_take(&w->files[i]->debounce, now, BINWATCH_QUIET_USEC,
							     BINWATCH_MAX_WAIT_USEC)))
				f = w->files[i];
		if (!f)
			break;
		/* A symlink may point elsewhere now, a folder may be back. */
		file_resolve(w, f);
		_cleanup_free_ char *path = strdup(f->path);
		if (path)
			w->changed(path, events, w->userdata);
	}
	arm_timer(w);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
	struct binwatch *w = arg;
	uint64_t now = now_usec(CLOCK_MONOTONIC);
	for (size_t i = 0; i < w->n_files; i++) {
		struct bw_file *f = w->files[i];
		if (!file_missing_dir(f))
			continue;
		file_resolve(w, f);
		if (!file_missing_dir(f)) /* back: what is in it may be new */
			note(f, now);
	}
	arm_timer(w);
}

int binwatch_new(struct event_base *base, binwatch_changed_fn changed, void *userdata,
		 struct binwatch **ret) {
	struct binwatch *w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->base = base;
	w->changed = changed;
	w->userdata = userdata;
	w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (w->fd < 0) {
		int r = -errno;
		free(w);
		return r;
	}
	w->read_ev = event_new(base, w->fd, EV_READ | EV_PERSIST, on_readable, w);
	w->timer = evtimer_new(base, on_timer, w);
	w->retry = evtimer_new(base, on_retry, w);
	if (!w->read_ev || !w->timer || !w->retry || event_add(w->read_ev, NULL) < 0) {
		binwatch_free(w);
		return -ENOMEM;
	}
	*ret = w;
	return 0;
}

void binwatch_free(struct binwatch *w) {
	if (!w)
		return;
	for (size_t i = 0; i < w->n_files; i++)
		file_free(w, w->files[i]);
	if (w->read_ev)
		event_free(w->read_ev);
	if (w->timer)
		event_free(w->timer);
	if (w->retry)
		event_free(w->retry);
	if (w->fd >= 0)
		close(w->fd);
	free(w->dirs);
	free(w);
}

int binwatch_set(struct binwatch *w, const char *const *paths, size_t n) {
	int r = 0;
	for (size_t i = 0; i < w->n_files; i++)
		w->files[i]->keep = false;
	for (size_t i = 0; i < n; i++) {
		if (!paths[i] || paths[i][0] != '/')
			continue;
		struct bw_file *f = file_find(w, paths[i]);
		if (f) {
			f->keep = true;
			continue;
		}
		if (w->n_files >= BINWATCH_FILES_MAX) {
			r = -ENOSPC;
			continue;
		}
		f = calloc(1, sizeof(*f));
		if (!f || !(f->path = strdup(paths[i]))) {
			free(f);
			r = -ENOMEM;
			continue;
		}
		f->keep = true;
		file_resolve(w, f);
		w->files[w->n_files++] = f;
		log_debug("binwatch: watching %s", f->path);
	}
	for (size_t i = 0; i < w->n_files;) {
		if (w->files[i]->keep) {
			i++;
			continue;
		}
		log_debug("binwatch: no longer watching %s", w->files[i]->path);
		file_free(w, w->files[i]);
		w->files[i] = w->files[--w->n_files];
	}
	arm_timer(w);
	return r;
}

void binwatch_poke(struct binwatch *w, const char *path) {
	struct bw_file *f = file_find(w, path);
	if (!f)
		return;
	note(f, now_usec(CLOCK_MONOTONIC));
	arm_timer(w);
}

size_t binwatch_dirs(const struct binwatch *w) {
	return w->n_dirs;
}
