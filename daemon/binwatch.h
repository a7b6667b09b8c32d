/* binwatch: the folders that hold the QEMU binaries cprd's guests run,
 * watched with inotify, so that a binary replaced on disk (apt and dpkg
 * rename the new file into place) is noticed at once. A burst of changes
 * to one file is told once, when the file has been quiet for a while. It
 * knows files and folders, not VMs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct binwatch;

#define BINWATCH_QUIET_USEC (500 * 1000ULL)      /* no event for this long: tell */
#define BINWATCH_MAX_WAIT_USEC (5000 * 1000ULL)  /* tell at the latest this long after the first */
#define BINWATCH_FILES_MAX 256                   /* paths watched */
#define BINWATCH_LINKS_MAX 8                     /* symlinks followed from a path */
#define BINWATCH_RETRY_USEC (2000 * 1000ULL)     /* a folder missing: look again this often */

/* The debounce of one file (pure): the first and last event of a burst. */
struct binwatch_debounce {
	uint64_t first_usec, last_usec; /* first_usec 0: no burst */
	unsigned events;                /* in this burst */
};

/* An event at now. */
void binwatch_debounce_note(struct binwatch_debounce *d, uint64_t now);
/* When the burst is to be told: quiet after the last event, or max_wait
 * after the first, whichever comes first; 0 when there is no burst. */
uint64_t binwatch_debounce_due(const struct binwatch_debounce *d, uint64_t quiet, uint64_t max_wait);
/* If the burst is due at now, ends it and returns how many events it had;
 * else 0. */
unsigned binwatch_debounce_take(struct binwatch_debounce *d, uint64_t now, uint64_t quiet,
				uint64_t max_wait);

/* The folder and the name in it of a path's i-th step: the path itself,
 * then each symlink's target in turn (relative ones resolved against the
 * link's folder). Pure but for readlink; fills at most max steps and
 * returns how many, or a negative errno. Each step is dir (allocated) and
 * name (inside dir's buffer: freeing dir frees both). */
struct binwatch_step {
	char *dir;
	const char *name;
};
int binwatch_steps(const char *path, struct binwatch_step *steps, size_t max);
void binwatch_steps_free(struct binwatch_step *steps, size_t n);

/* path changed (renamed over, written, its mode or owner or a folder's
 * changed, removed; or a folder of it that was missing is back, which is
 * looked for every BINWATCH_RETRY_USEC); events is how many inotify events
 * the burst had. */
typedef void (*binwatch_changed_fn)(const char *path, unsigned events, void *userdata);

int binwatch_new(struct event_base *base, binwatch_changed_fn changed, void *userdata,
		 struct binwatch **ret);
void binwatch_free(struct binwatch *w);
/* Watches exactly these paths from now on: new ones are added (their
 * folders, and those of the symlinks they go through, watched), the
 * others dropped (a folder no path needs is no longer watched).
 * Duplicates count once. */
int binwatch_set(struct binwatch *w, const char *const *paths, size_t n);
/* Tells about path as if it changed now (after the quiet time): for a
 * file that may have changed while nothing watched it. */
void binwatch_poke(struct binwatch *w, const char *path);
/* Folders watched (inotify watches held), for tests and logs. */
size_t binwatch_dirs(const struct binwatch *w);
