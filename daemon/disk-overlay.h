/* disk-overlay: a fresh qcow2 overlay on a disk, made by qemu-img in a child
 * watched on the loop, so the disk below is only ever read (QEMU opens a
 * backing file read-only). A restore puts one over each writable disk of a
 * snapshot's record, so the snapshot's disk state can be restored again. */
#pragma once

#include <stddef.h>

struct event_base;

#define DISK_OVERLAY_QEMU_IMG "/usr/bin/qemu-img" /* Debian's qemu-utils */
#define DISK_OVERLAY_TIMEOUT_MS 30000 /* a hung network file system */
#define DISK_OVERLAY_TRIES 100        /* names tried for one stamp: -2 .. -100 */
#define DISK_OVERLAY_ARGV_MAX 12
#define DISK_OVERLAY_OUTPUT_MAX 1024  /* of qemu-img's message, kept for the reason */

/* The overlay's name for disk: beside it, the disk's stem, ".TAG-STAMP",
 * "-N" when n > 1, ".qcow2". The stem is the file name up to an overlay's
 * ".snap-" or ".restore-", else up to ".qcow2", else all of it; so
 * a.qcow2, a.snap-T1.qcow2 and a.restore-T2.qcow2 all give a.TAG-STAMP.qcow2.
 * NULL when out of memory. */
char *disk_overlay_name(const char *disk, const char *tag, const char *stamp, unsigned n);

/* qemu-img's argv (NULL-terminated) for a qcow2 overlay whose backing file
 * is base (absolute, qcow2): create -q -f qcow2 -F qcow2 -b BASE OVERLAY.
 * The strings are borrowed. */
void disk_overlay_argv(const char *qemu_img, const char *base, const char *overlay,
		       const char *argv[static DISK_OVERLAY_ARGV_MAX]);

/* qemu-img's output made into one line for a reason: "qemu-img: " and
 * trailing blanks and full stops cut, newlines made "; ", at most size - 1
 * bytes. */
void disk_overlay_message(const char *output, size_t len, char *buf, size_t size);

struct disk_overlay;
/* error 0 and the overlay's path, or a negative errno and a sentence that
 * names the disk. Runs once, from the loop. */
typedef void (*disk_overlay_done_fn)(int error, const char *overlay, const char *reason,
				     void *userdata);

/* Makes an overlay over disk (an absolute path to a qcow2 file), named
 * disk_overlay_name(disk, tag, stamp, n) for the first n whose name is
 * free (taken with O_EXCL, so two makers never share one), owned and moded
 * as disk is. qemu-img runs as root (it must read disk and write its
 * folder), bounded by DISK_OVERLAY_TIMEOUT_MS; on failure the file is
 * removed. A negative return (why says it) means nothing was made and done
 * will not run. */
int disk_overlay_create(struct event_base *base, const char *disk, const char *tag,
			const char *stamp, disk_overlay_done_fn done, void *userdata,
			struct disk_overlay **ret, char *why, size_t size);
/* Stops one under way: qemu-img is killed, its file removed, done does not
 * run. NULL is a no-op. */
void disk_overlay_cancel(struct disk_overlay *o);
