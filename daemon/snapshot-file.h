/* snapshot-file: a live snapshot on disk. The state file QEMU writes (cprd
 * opens it and hands QEMU the fd; QEMU never sees a path), its record
 * FILE.json beside it (the VM's spec, the QEMU version, the state's size and
 * checksum), the folder checks, and whether the kernel can write-protect
 * shared memory with userfaultfd, which QEMU's background snapshot needs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct event_base;
struct json_object;

#define SNAPSHOT_FORMAT 1             /* the record's "format"; bump on any change */
#define SNAPSHOT_RECORD_SUFFIX ".json" /* FILE.json beside FILE */
#define SNAPSHOT_RECORD_MAX (1024 * 1024)
#define SNAPSHOT_HASH_CHUNK (8u * 1024 * 1024) /* bytes hashed per turn of the loop */

/* The checksum of a state file: FNV-1a (64 bit) over its 8-byte
 * little-endian words, the last one zero-padded, mixed with the length.
 * Not cryptographic: it catches truncation and corruption, not an attacker
 * who can write the file (the folder checks are for that). */
struct snapshot_hash {
	uint64_t h;
	uint64_t len;
	uint8_t carry[8];
	size_t n_carry;
};
void snapshot_hash_init(struct snapshot_hash *s);
void snapshot_hash_update(struct snapshot_hash *s, const void *data, size_t len);
/* "fnv1a64:" and 16 hex digits. */
void snapshot_hash_final(struct snapshot_hash *s, char out[static 25]);

/* What the record says. */
struct snapshot_record {
	char *vm;                 /* the VM it was taken of */
	struct json_object *spec; /* its VMSpec, with the pinned machine type */
	char *machine;            /* the pinned machine type (spec's too) */
	uint64_t memory_mib;
	char *qemu;               /* the binary that wrote it */
	unsigned major, minor, micro; /* its version */
	uint64_t state_bytes;
	char *state_hash;
	char *time;               /* RFC 3339 */
};
void snapshot_record_done(struct snapshot_record *r);
struct json_object *snapshot_record_to_json(const struct snapshot_record *r);
/* Reads a record field by field: 0, -ENOMEM, or -EBADMSG with why naming
 * the field at fault. */
int snapshot_record_from_json(struct json_object *o, struct snapshot_record *ret, char *why,
			      size_t size);

/* The folder of a snapshot file must be a folder owned by root and not
 * writable by group or others (else someone else could swap the file):
 * 0, or a negative errno with why. */
int snapshot_dir_check(const char *dir, char *why, size_t size);
/* An unnamed file (O_TMPFILE, 0600, write-only: QEMU's file: migration
 * wants its fd set's file write-only) in the folder of path, after checking
 * the folder and that neither path nor path.json exists. */
int snapshot_file_create(const char *path, int *ret_fd, char *why, size_t size);
/* Gives the unnamed file its name; -EEXIST if something took it meanwhile. */
int snapshot_file_link(int fd, const char *path);
/* Opens a state file to read (no symlinks, a regular file in a checked
 * folder, owned by root and not writable by others) and reads its record. */
int snapshot_file_open(const char *path, int *ret_fd, uint64_t *ret_size,
		       struct snapshot_record *ret_record, char *why, size_t size);

/* Hashes fd's first size bytes on the loop, SNAPSHOT_HASH_CHUNK at a time,
 * so a large file does not stall cprd. progress (may be NULL) gets the bytes
 * done; done gets 0 and the checksum, or a negative errno (-EIO on a short
 * read: the file is shorter than size). */
struct snapshot_hasher;
typedef void (*snapshot_hash_progress_fn)(uint64_t done, uint64_t size, void *userdata);
typedef void (*snapshot_hash_done_fn)(int error, const char *hash, void *userdata);
int snapshot_hasher_start(struct event_base *base, int fd, uint64_t size,
			  snapshot_hash_progress_fn progress, snapshot_hash_done_fn done,
			  void *userdata, struct snapshot_hasher **ret);
/* Stops a hasher (done does not run); NULL is a no-op. Returns NULL. */
struct snapshot_hasher *snapshot_hasher_free(struct snapshot_hasher *h);

/* Whether this kernel lets a process write-protect a shared memfd with
 * userfaultfd (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux >= 5.19), tried on a
 * small memfd: 0, or a negative errno with why. */
int snapshot_uffd_wp_check(char *why, size_t size);
/* Whether a QEMU running as uid can make a userfaultfd at all: root can;
 * another uid only with vm.unprivileged_userfaultfd=1 or with read-write
 * access to /dev/userfaultfd. */
bool snapshot_uffd_allowed_for(uid_t uid, char *why, size_t size);
