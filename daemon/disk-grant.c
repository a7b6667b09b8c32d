/* Giving a VM's disks to its QEMU's user and back (see disk-grant.h). Every
 * change is made through an fd of the file that was checked (fchown,
 * fchmod, acl_set_fd), never by path after the check. */
#include "disk-grant.h"

#include <acl/libacl.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/acl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "qemu.h"
#include "spec.h"
#include "users.h"
#include "util.h"

static const char *const kind_names[_DISK_GRANT_KIND_MAX] = {
	[DISK_GRANT_OWNER] = "owner",
	[DISK_GRANT_ACL] = "acl",
};

const char *disk_grant_kind_to_string(enum disk_grant_kind k) {
	return k < _DISK_GRANT_KIND_MAX ? kind_names[k] : NULL;
}

/* Opens a disk to look at it and change its owner or ACL: never for I/O,
 * so a block device or a FIFO put in its place does not block. */
static int open_disk(const char *path) {
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	return fd < 0 ? -errno : fd;
}

/* The first ACL_USER entry of acl whose uid is in range and is not uid,
 * or -1 (uid_t)-1 when none. */
static uid_t acl_other_user(acl_t acl, const struct users_range *range, uid_t uid) {
	acl_entry_t e;
	for (int w = ACL_FIRST_ENTRY; acl_get_entry(acl, w, &e) == 1; w = ACL_NEXT_ENTRY) {
		acl_tag_t tag;
		if (acl_get_tag_type(e, &tag) < 0 || tag != ACL_USER)
			continue;
		uid_t *q = acl_get_qualifier(e);
		uid_t found = q ? *q : (uid_t)-1;
		acl_free(q);
		if (found != uid && users_in_range(range, found))
			return found;
	}
	return (uid_t)-1;
}

void disk_grants_clear(struct disk_grants *g) {
	for (size_t i = 0; i < g->n; i++)
		free(g->v[i].path);
	free(g->v);
	*g = (struct disk_grants){0};
}

/* Plans one grant of path (a disk, or a backing file cprd recorded: read
 * only when !owner) into g. */
static int plan_one(const char *path, bool owner, uid_t uid, const struct users_range *range,
		    struct disk_grants *g, char *why, size_t size) {
	struct stat st;
	_cleanup_close_ int fd = open_disk(path);
	if (fd < 0)
		return why_err(fd, why, size, "cannot open %s: %s", path, strerror(-fd));
	if (fstat(fd, &st) < 0)
		return why_err(-errno, why, size, "cannot stat %s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return why_err(-EINVAL, why, size, "%s is not a file or a block device", path);
	if (st.st_uid != uid && users_in_range(range, st.st_uid))
		return why_err(-EBUSY, why, size,
			       "%s is given to another VM's QEMU (uid %u), which writes it while "
			       "that VM runs",
			       path, (unsigned)st.st_uid);
	if (owner) {
		acl_t acl = acl_get_fd(fd);
		uid_t other = acl ? acl_other_user(acl, range, uid) : (uid_t)-1;
		acl_free(acl);
		if (other != (uid_t)-1)
			return why_err(-EBUSY, why, size,
				       "%s is shared read-only with another VM's QEMU (uid %u), so "
				       "this VM may not write it while that VM runs",
				       path, (unsigned)other);
	}
	struct disk_grant *gr = &g->v[g->n];
	*gr = (struct disk_grant){
		.path = strdup(path),
		.dev = (uint64_t)st.st_dev,
		.ino = (uint64_t)st.st_ino,
		.kind = owner ? DISK_GRANT_OWNER : DISK_GRANT_ACL,
		.uid = uid,
		.owner = st.st_uid,
		.group = st.st_gid,
		.mode = st.st_mode & 07777,
	};
	if (!gr->path)
		return -ENOMEM;
	g->n++;
	return 0;
}

int disk_grants_plan(const struct spec_disk *disks, size_t n, uid_t uid,
		     const struct users_range *range, struct disk_grants *g, size_t *failed,
		     char *why, size_t size) {
	size_t total = n;
	for (size_t i = 0; i < n; i++)
		total += disks[i].n_backing;
	g->v = calloc(total ? total : 1, sizeof(*g->v));
	if (!g->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct spec_disk *d = &disks[i];
		*failed = i;
		int r = plan_one(d->path, !d->readonly, uid, range, g, why, size);
		if (r < 0)
			return r;
		/* Only the chain cprd recorded, never the names in the image's
		 * header, which the VM's user may write. */
		for (size_t k = 0; k < d->n_backing; k++) {
			char inner[384];
			r = plan_one(d->backing[k], false, uid, range, g, inner, sizeof(inner));
			if (r < 0)
				return why_err(r, why, size, "its backing file: %s", inner);
		}
	}
	return 0;
}

/* Opens the file a grant names, if it is still the one given. */
static int open_granted(const struct disk_grant *gr, struct stat *st) {
	int fd = open_disk(gr->path);
	if (fd < 0)
		return fd;
	if (fstat(fd, st) < 0 || (uint64_t)st->st_dev != gr->dev || (uint64_t)st->st_ino != gr->ino) {
		close(fd);
		return -ESTALE;
	}
	return fd;
}

/* Adds user:uid:r to the file's ACL (or read to its entry), and the mask
 * recalculated as setfacl -m does. */
static int acl_grant_read(int fd, uid_t uid) {
	acl_t acl = acl_get_fd(fd);
	if (!acl)
		return -errno;
	acl_entry_t e;
	acl_permset_t ps;
	bool found = false;
	int r = 0;
	for (int w = ACL_FIRST_ENTRY; !found && acl_get_entry(acl, w, &e) == 1; w = ACL_NEXT_ENTRY) {
		acl_tag_t tag;
		if (acl_get_tag_type(e, &tag) < 0 || tag != ACL_USER)
			continue;
		uid_t *q = acl_get_qualifier(e);
		found = q && *q == uid;
		acl_free(q);
	}
	if (!found && (acl_create_entry(&acl, &e) < 0 || acl_set_tag_type(e, ACL_USER) < 0 ||
		       acl_set_qualifier(e, &uid) < 0))
		r = -errno;
	if (r == 0 && (acl_get_permset(e, &ps) < 0 || acl_add_perm(ps, ACL_READ) < 0 ||
		       acl_set_permset(e, ps) < 0 || acl_calc_mask(&acl) < 0 || acl_set_fd(fd, acl) < 0))
		r = -errno;
	acl_free(acl);
	return r;
}

/* Removes uid's entry; with no named entry left, the mask goes too, so the
 * file's ACL is its mode bits again, as before the grant. */
static int acl_revoke(int fd, uid_t uid) {
	acl_t acl = acl_get_fd(fd);
	if (!acl)
		return -errno;
	acl_entry_t e, mask = NULL, ours = NULL;
	unsigned named = 0;
	for (int w = ACL_FIRST_ENTRY; acl_get_entry(acl, w, &e) == 1; w = ACL_NEXT_ENTRY) {
		acl_tag_t tag;
		if (acl_get_tag_type(e, &tag) < 0)
			continue;
		if (tag == ACL_MASK)
			mask = e;
		if (tag != ACL_USER && tag != ACL_GROUP)
			continue;
		named++;
		uid_t *q = tag == ACL_USER ? acl_get_qualifier(e) : NULL;
		if (q && *q == uid)
			ours = e;
		acl_free(q);
	}
	int r = 0;
	if (ours) {
		if (acl_delete_entry(acl, ours) < 0)
			r = -errno;
		else if (named == 1 && mask)
			r = acl_delete_entry(acl, mask) < 0 ? -errno : 0;
		else
			r = acl_calc_mask(&acl) < 0 ? -errno : 0;
		if (r == 0 && acl_set_fd(fd, acl) < 0)
			r = -errno;
	}
	acl_free(acl);
	return r;
}

int disk_grants_apply(const struct disk_grants *g, size_t *failed, char *why, size_t size) {
	for (size_t i = 0; i < g->n; i++) {
		const struct disk_grant *gr = &g->v[i];
		struct stat st;
		*failed = i;
		_cleanup_close_ int fd = open_granted(gr, &st);
		if (fd < 0)
			return why_err(fd, why, size, "%s %s", gr->path,
				   fd == -ESTALE ? "was replaced while cprd gave it to the VM's user"
						 : strerror(-fd));
		if (gr->kind == DISK_GRANT_OWNER) {
			if (fchown(fd, gr->uid, (gid_t)gr->uid) < 0 || fchmod(fd, 0600) < 0)
				return why_err(-errno, why, size, "cannot give %s to uid %u: %s", gr->path,
					   (unsigned)gr->uid, strerror(errno));
			continue;
		}
		int r = acl_grant_read(fd, gr->uid);
		if (r == -EOPNOTSUPP && (st.st_mode & S_IROTH))
			continue; /* no ACLs there, but everyone may read it anyway */
		if (r == -EOPNOTSUPP)
			return why_err(r, why, size,
				   "the file system of %s has no POSIX ACLs, through which cprd lets "
				   "the VM's user (uid %u) read a read-only disk: make the disk readable "
				   "by others (chmod o+r) or move it",
				   gr->path, (unsigned)gr->uid);
		if (r < 0)
			return why_err(r, why, size, "cannot let uid %u read %s (ACL): %s", (unsigned)gr->uid,
				   gr->path, strerror(-r));
	}
	return 0;
}

void disk_grants_return(struct disk_grants *g, const char *vm) {
	for (size_t i = 0; i < g->n; i++) {
		const struct disk_grant *gr = &g->v[i];
		struct stat st;
		_cleanup_close_ int fd = open_granted(gr, &st);
		if (fd < 0) {
			log_vm_errno(LOG_WARNING, fd, vm, "%s not given back to its owner: %s", gr->path,
				     fd == -ESTALE ? "another file is at its path now" : strerror(-fd));
			continue;
		}
		if (gr->kind == DISK_GRANT_ACL) {
			int r = acl_revoke(fd, gr->uid);
			if (r < 0 && r != -EOPNOTSUPP)
				log_vm_errno(LOG_WARNING, r, vm, "cannot remove uid %u's ACL entry from %s: %m",
					     (unsigned)gr->uid, gr->path);
			continue;
		}
		if (st.st_uid != gr->uid) {
			/* Someone gave it away since: theirs to keep. */
			log_vm(LOG_WARNING, vm, "%s left as it is: its owner is uid %u now, not the VM's %u",
			       gr->path, (unsigned)st.st_uid, (unsigned)gr->uid);
			continue;
		}
		if (fchown(fd, gr->owner, gr->group) < 0 || fchmod(fd, gr->mode) < 0)
			log_vm_errno(LOG_WARNING, errno, vm, "cannot give %s back to uid %u: %m", gr->path,
				     (unsigned)gr->owner);
		else
			log_vm(LOG_DEBUG, vm, "gave %s back to uid %u gid %u mode %04o", gr->path,
			       (unsigned)gr->owner, (unsigned)gr->group, (unsigned)gr->mode);
	}
	disk_grants_clear(g);
}

int disk_grants_add_made(struct disk_grants *g, const char *path, int fd, uid_t uid) {
	struct stat st;
	if (g->n >= DISK_GRANTS_MAX)
		return -E2BIG;
	if (fstat(fd, &st) < 0)
		return -errno;
	struct disk_grant *v = realloc(g->v, (g->n + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	g->v = v;
	v[g->n] = (struct disk_grant){
		.path = strdup(path),
		.dev = (uint64_t)st.st_dev,
		.ino = (uint64_t)st.st_ino,
		.kind = DISK_GRANT_OWNER,
		.uid = uid,
		.owner = st.st_uid,
		.group = st.st_gid,
		.mode = st.st_mode & 07777,
	};
	if (!v[g->n].path)
		return -ENOMEM;
	g->n++;
	return 0;
}

void disk_grants_forget(struct disk_grants *g, const char *path) {
	for (size_t i = g->n; i-- > 0;)
		if (streq(g->v[i].path, path)) {
			free(g->v[i].path);
			memmove(&g->v[i], &g->v[i + 1], (g->n - i - 1) * sizeof(*g->v));
			g->n--;
			return;
		}
}

struct json_object *disk_grants_to_json(const struct disk_grants *g) {
	struct json_object *a = json_object_new_array();
	for (size_t i = 0; i < g->n; i++) {
		const struct disk_grant *gr = &g->v[i];
		struct json_object *o = json_object_new_object();
		json_object_object_add(o, "path", json_object_new_string(gr->path));
		json_object_object_add(o, "dev", json_object_new_int64((int64_t)gr->dev));
		json_object_object_add(o, "ino", json_object_new_int64((int64_t)gr->ino));
		json_object_object_add(o, "kind", json_object_new_string(kind_names[gr->kind]));
		json_object_object_add(o, "uid", json_object_new_int64(gr->uid));
		if (gr->kind == DISK_GRANT_OWNER) {
			json_object_object_add(o, "owner", json_object_new_int64(gr->owner));
			json_object_object_add(o, "group", json_object_new_int64(gr->group));
			json_object_object_add(o, "mode", json_object_new_int(gr->mode));
		}
		json_object_array_add(a, o);
	}
	return a;
}

/* One record; fields in why are prefixed with the record's index. */
static int grant_from_json(struct json_object *o, struct disk_grant *gr, char *why, size_t size) {
	_cleanup_free_ char *kind = NULL;
	int64_t dev = 0, ino = 0, uid = 0, owner = 0, group = 0, mode = 0;
	int r;
	if (!json_object_is_type(o, json_type_object))
		return json_refuse(why, size, "is not an object");
	if ((r = json_field_string(o, "path", true, &gr->path, why, size)) < 0 ||
	    (r = json_field_string(o, "kind", true, &kind, why, size)) < 0 ||
	    (r = json_field_int(o, "dev", true, 0, INT64_MAX, &dev, why, size)) < 0 ||
	    (r = json_field_int(o, "ino", true, 0, INT64_MAX, &ino, why, size)) < 0 ||
	    (r = json_field_int(o, "uid", true, 1, USERS_UID_MAX, &uid, why, size)) < 0)
		return r;
	if (gr->path[0] != '/')
		return json_refuse(why, size, "path is not absolute");
	if (streq(kind, kind_names[DISK_GRANT_OWNER]))
		gr->kind = DISK_GRANT_OWNER;
	else if (streq(kind, kind_names[DISK_GRANT_ACL]))
		gr->kind = DISK_GRANT_ACL;
	else
		return json_refuse(why, size, "kind is neither owner nor acl");
	if (gr->kind == DISK_GRANT_OWNER &&
	    ((r = json_field_int(o, "owner", true, 0, UINT32_MAX - 1, &owner, why, size)) < 0 ||
	     (r = json_field_int(o, "group", true, 0, UINT32_MAX - 1, &group, why, size)) < 0 ||
	     (r = json_field_int(o, "mode", true, 0, 07777, &mode, why, size)) < 0))
		return r;
	gr->dev = (uint64_t)dev;
	gr->ino = (uint64_t)ino;
	gr->uid = (uid_t)uid;
	gr->owner = (uid_t)owner;
	gr->group = (gid_t)group;
	gr->mode = (mode_t)mode;
	return 0;
}

int disk_grants_from_json(struct json_object *a, struct disk_grants *g, char *why, size_t size) {
	*g = (struct disk_grants){0};
	if (!json_object_is_type(a, json_type_array))
		return json_refuse(why, size, "diskGrants is not an array");
	size_t n = json_object_array_length(a);
	if (n > DISK_GRANTS_MAX)
		return json_refuse(why, size,
				   "diskGrants has %zu records, more than %d disks, their backing "
				   "files and overlays",
				   n, DISK_GRANTS_MAX);
	g->v = calloc(n ? n : 1, sizeof(*g->v));
	if (!g->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		char inner[192];
		int r = grant_from_json(json_object_array_get_idx(a, i), &g->v[i], inner, sizeof(inner));
		g->n = i + 1;
		if (r < 0) {
			disk_grants_clear(g);
			return r == -EBADMSG ? json_refuse(why, size, "diskGrants[%zu]: %s", i, inner) : r;
		}
	}
	return 0;
}

/* The child: becomes id, opens each disk as QEMU would (and each backing
 * file cprd recorded, read-only), and reports the first failure as three
 * ints (disk index, backing index or -1, errno) on out. */
static _noreturn_ void check_child(const struct qemu_identity *id, const struct spec_disk *disks,
				   size_t n, int out) {
	const char *what;
	int msg[3] = {-1, -1, 0};
	if (qemu_identity_drop(id, &what) < 0) {
		msg[2] = errno;
		(void)!write(out, msg, sizeof(msg));
		_exit(1);
	}
	for (size_t i = 0; i < n; i++)
		for (ssize_t k = -1; k < (ssize_t)disks[i].n_backing; k++) {
			bool top = k < 0;
			int fd = open(top ? disks[i].path : disks[i].backing[k],
				      (top && !disks[i].readonly ? O_RDWR : O_RDONLY) | O_CLOEXEC |
					      O_NOCTTY | O_NONBLOCK);
			if (fd < 0) {
				msg[0] = (int)i;
				msg[1] = (int)k;
				msg[2] = errno;
				(void)!write(out, msg, sizeof(msg));
				_exit(1);
			}
			close(fd);
		}
	_exit(0);
}

int disk_grants_check_open(const struct qemu_identity *id, const struct spec_disk *disks, size_t n,
			   size_t *failed, size_t *failed_backing) {
	size_t ignored;
	failed_backing = failed_backing ? failed_backing : &ignored;
	*failed_backing = SIZE_MAX;
	id = id ? id : qemu_default_user();
	if (!id || n == 0)
		return 0;
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0) {
		int e = -errno;
		close(pipefd[0]);
		close(pipefd[1]);
		return e;
	}
	if (pid == 0) {
		close(pipefd[0]);
		check_child(id, disks, n, pipefd[1]);
	}
	close(pipefd[1]);
	/* EOF without a message: every open worked. */
	int msg[3] = {-1, -1, 0}, r = 0;
	struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
	int ready = poll(&pfd, 1, DISK_GRANT_CHECK_TIMEOUT_MS);
	if (ready == 0) {
		kill(pid, SIGKILL);
		r = -ETIMEDOUT;
		*failed = 0;
	} else if (ready > 0 && read(pipefd[0], msg, sizeof(msg)) == (ssize_t)sizeof(msg)) {
		r = msg[2] > 0 ? -msg[2] : -EIO;
		*failed = msg[0] >= 0 ? (size_t)msg[0] : 0;
		if (msg[0] >= 0 && msg[1] >= 0)
			*failed_backing = (size_t)msg[1];
	}
	close(pipefd[0]);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return r;
}
