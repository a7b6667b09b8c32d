/* A VM's disks given to its QEMU's own user (--qemu-users) while the VM
 * runs, the way libvirt's DAC driver does, and given back: a writable disk
 * is chowned to the user with mode 0600, a read-only one (which several
 * VMs may share) gets a POSIX ACL entry that lets the user read it. Each
 * grant is a record kept in vm.json, so a restarted cprd still puts back
 * what an earlier one changed. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct json_object;
struct qemu_identity;
struct spec_disk;
struct users_range;

#define DISK_GRANT_CHECK_TIMEOUT_MS 5000 /* the child that tries the opens */
/* Records a VM may hold: its disks, the backing files cprd recorded under
 * them, and the snapshot overlays made for its user while it runs (one per
 * level of a chain at most). */
#define DISK_GRANTS_MAX (SPEC_DISKS_MAX * (1 + 2 * SPEC_BACKING_MAX))

enum disk_grant_kind {
	DISK_GRANT_OWNER, /* chown to the user, mode 0600 */
	DISK_GRANT_ACL,   /* an ACL entry user:UID:r */
	_DISK_GRANT_KIND_MAX,
};

const char *disk_grant_kind_to_string(enum disk_grant_kind k);

struct disk_grant {
	char *path;
	uint64_t dev, ino; /* the file given: a file put in its place is left alone */
	enum disk_grant_kind kind;
	uid_t uid;         /* whom it is given to (gid = uid) */
	/* DISK_GRANT_OWNER: what it was before, to be put back. */
	uid_t owner;
	gid_t group;
	mode_t mode;
};

struct disk_grants {
	struct disk_grant *v;
	size_t n;
};

/* Plans giving each of the n disks to uid: fills g (empty before) from
 * what each file is now, and changes nothing. Each backing file cprd
 * recorded under a disk (spec_disk.backing) gets a read grant (ACL) too;
 * the names in an image's header are never followed. Refuses with -EBUSY a
 * file that another uid of range holds: another VM's writable disk, or
 * (for a disk this VM would write) one that another VM reads through an
 * ACL entry. On failure *failed is the disk's index and why a sentence. */
int disk_grants_plan(const struct spec_disk *disks, size_t n, uid_t uid,
		     const struct users_range *range, struct disk_grants *g, size_t *failed,
		     char *why, size_t size);
/* Carries out the plan: chown and chmod 0600, or the ACL entry. On
 * failure the grants stay recorded (disk_grants_return puts back those
 * that were made). */
int disk_grants_apply(const struct disk_grants *g, size_t *failed, char *why, size_t size);
/* Puts back each grant whose file is still the one given and still as it
 * was left (owned by the uid, for a chown); logs the others under vm's
 * name; empties g. */
void disk_grants_return(struct disk_grants *g, const char *vm);
/* Records fd, a file at path that cprd just made (root's) and is about to
 * give to uid while the VM runs (a snapshot's overlay): at stop it goes
 * back to the owner, group and mode it has now, as a disk does. */
int disk_grants_add_made(struct disk_grants *g, const char *path, int fd, uid_t uid);
/* Forgets the last record of path (a file removed again). */
void disk_grants_forget(struct disk_grants *g, const char *path);
void disk_grants_clear(struct disk_grants *g);

/* The records as vm.json keeps them, and read back field by field (-EBADMSG
 * with why naming the field). */
struct json_object *disk_grants_to_json(const struct disk_grants *g);
int disk_grants_from_json(struct json_object *a, struct disk_grants *g, char *why, size_t size);

/* Whether id (NULL: the default user; root needs no check) can open each
 * of the n disks as QEMU will (read-only or read-write), and each backing
 * file cprd recorded under them read-only, tried for real by a child that
 * becomes id. 0, or a negative errno (-ETIMEDOUT after
 * DISK_GRANT_CHECK_TIMEOUT_MS) with *failed the disk and *failed_backing
 * (if not NULL) the index in its backing, or SIZE_MAX for the disk itself. */
int disk_grants_check_open(const struct qemu_identity *id, const struct spec_disk *disks, size_t n,
			   size_t *failed, size_t *failed_backing);
