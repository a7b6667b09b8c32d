/* snapshot-file: the state file of a live snapshot, its record FILE.json,
 * the checks of their folder, and the kernel check for userfaultfd
 * write-protection of shared memory. No VM here: snapshot.c drives QEMU. */
#include <endian.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "snapshot-file.h"
#include "util.h"

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

void snapshot_hash_init(struct snapshot_hash *s) { *s = (struct snapshot_hash){.h = FNV_OFFSET}; }

static inline uint64_t hash_word(uint64_t h, const uint8_t *p) {
	uint64_t w;
	memcpy(&w, p, 8);
	w = le64toh(w);
	return (h ^ w) * FNV_PRIME;
}

void snapshot_hash_update(struct snapshot_hash *s, const void *data, size_t len) {
	const uint8_t *p = data;
	s->len += len;
	while (len && s->n_carry) {
		s->carry[s->n_carry++] = *p++;
		len--;
		if (s->n_carry == 8) {
			s->h = hash_word(s->h, s->carry);
			s->n_carry = 0;
		}
	}
	if (s->n_carry) /* all of data went into a word still incomplete */
		return;
	uint64_t h = s->h;
	for (; len >= 8; p += 8, len -= 8)
		h = hash_word(h, p);
	s->h = h;
	memcpy(s->carry, p, len);
	s->n_carry = len;
}

void snapshot_hash_final(struct snapshot_hash *s, char out[static 25]) {
	uint64_t h = s->h;
	if (s->n_carry) {
		memset(s->carry + s->n_carry, 0, 8 - s->n_carry);
		h = hash_word(h, s->carry);
	}
	uint8_t len[8];
	uint64_t l = htole64(s->len);
	memcpy(len, &l, 8);
	h = hash_word(h, len);
	snprintf(out, 25, "fnv1a64:%016llx", (unsigned long long)h);
}

/* ---- the record ---------------------------------------------------------- */

void snapshot_record_done(struct snapshot_record *r) {
	free(r->vm);
	json_object_put(r->spec);
	free(r->machine);
	free(r->qemu);
	free(r->state_hash);
	free(r->time);
	*r = (struct snapshot_record){0};
}

struct json_object *snapshot_record_to_json(const struct snapshot_record *r) {
	struct json_object *o = json_object_new_object();
	char version[48];
	snprintf(version, sizeof(version), "%u.%u.%u", r->major, r->minor, r->micro);
	json_object_object_add(o, "format", json_object_new_int(SNAPSHOT_FORMAT));
	json_object_object_add(o, "vm", json_object_new_string(r->vm));
	json_object_object_add(o, "time", json_object_new_string(r->time ? r->time : ""));
	json_object_object_add(o, "machine", json_object_new_string(r->machine));
	json_object_object_add(o, "memoryMiB", json_object_new_int64((int64_t)r->memory_mib));
	json_object_object_add(o, "qemu", json_object_new_string(r->qemu));
	json_object_object_add(o, "qemuVersion", json_object_new_string(version));
	json_object_object_add(o, "stateBytes", json_object_new_int64((int64_t)r->state_bytes));
	json_object_object_add(o, "stateHash", json_object_new_string(r->state_hash));
	json_object_object_add(o, "spec", json_object_get(r->spec));
	return o;
}

int snapshot_record_from_json(struct json_object *o, struct snapshot_record *ret, char *why,
			      size_t size) {
	struct snapshot_record r = {0};
	_cleanup_free_ char *version = NULL;
	int64_t format = 0, mem = 0, bytes = 0;
	int e;

	if (!json_object_is_type(o, json_type_object))
		return json_refuse(why, size, "the record is not a JSON object");
	if ((e = json_field_int(o, "format", true, 1, INT32_MAX, &format, why, size)) < 0)
		return e;
	if (format != SNAPSHOT_FORMAT)
		return json_refuse(why, size, "the record has format %lld; this cprd reads format %d",
				   (long long)format, SNAPSHOT_FORMAT);
	if ((e = json_field_string(o, "vm", true, &r.vm, why, size)) < 0 ||
	    (e = json_field_string(o, "time", false, &r.time, why, size)) < 0 ||
	    (e = json_field_string(o, "machine", true, &r.machine, why, size)) < 0 ||
	    (e = json_field_int(o, "memoryMiB", true, 16, INT64_MAX / (1024 * 1024), &mem, why,
				size)) < 0 ||
	    (e = json_field_string(o, "qemu", true, &r.qemu, why, size)) < 0 ||
	    (e = json_field_string(o, "qemuVersion", true, &version, why, size)) < 0 ||
	    (e = json_field_int(o, "stateBytes", true, 1, INT64_MAX, &bytes, why, size)) < 0 ||
	    (e = json_field_string(o, "stateHash", true, &r.state_hash, why, size)) < 0)
		goto fail;
	if (sscanf(version, "%u.%u.%u", &r.major, &r.minor, &r.micro) != 3) {
		e = json_refuse(why, size, "qemuVersion %s is not MAJOR.MINOR.MICRO", version);
		goto fail;
	}
	if (strncmp(r.state_hash, "fnv1a64:", 8) != 0 || strlen(r.state_hash) != 24) {
		e = json_refuse(why, size, "stateHash is not fnv1a64: and 16 hex digits");
		goto fail;
	}
	struct json_object *spec = json_object_object_get(o, "spec");
	if (!json_object_is_type(spec, json_type_object)) {
		e = json_refuse(why, size, "no spec");
		goto fail;
	}
	r.spec = json_object_get(spec);
	r.memory_mib = (uint64_t)mem;
	r.state_bytes = (uint64_t)bytes;
	*ret = r;
	return 0;
fail:
	snapshot_record_done(&r);
	return e;
}

/* ---- files and folders --------------------------------------------------- */

int snapshot_dir_check(const char *dir, char *why, size_t size) {
	struct stat st;
	if (stat(dir, &st) < 0)
		return why_err(-errno, why, size, "cannot reach the folder %s: %s", dir, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return why_err(-ENOTDIR, why, size, "%s is not a folder", dir);
	if (st.st_uid != 0)
		return why_err(-EPERM, why, size,
			       "the folder %s belongs to uid %u; a snapshot's folder must be root's",
			       dir, (unsigned)st.st_uid);
	if (st.st_mode & (S_IWGRP | S_IWOTH))
		return why_err(-EPERM, why, size,
			       "the folder %s is writable by group or others (mode %04o); a "
			       "snapshot's folder must not be (chmod go-w)",
			       dir, (unsigned)(st.st_mode & 07777));
	return 0;
}

/* The folder part of an absolute path, in buf. */
static int path_dir(const char *path, char *buf, size_t size, char *why, size_t wsize) {
	if (!path || path[0] != '/')
		return why_err(-EINVAL, why, wsize, "the snapshot file must be an absolute path");
	size_t len = strlen(path);
	if (len + sizeof(SNAPSHOT_RECORD_SUFFIX) >= size || path[len - 1] == '/')
		return why_err(-EINVAL, why, wsize, "%s is not a file name (or too long)", path);
	const char *slash = strrchr(path, '/');
	size_t dl = slash == path ? 1 : (size_t)(slash - path);
	memcpy(buf, path, dl);
	buf[dl] = 0;
	return 0;
}

/* A snapshot file's folder, checked (snapshot_dir_check), and its record's
 * path; dir and rec have PATH_MAX bytes. */
static int snapshot_paths(const char *path, char *dir, char *rec, char *why, size_t size) {
	int r = path_dir(path, dir, PATH_MAX, why, size);
	if (r < 0)
		return r;
	if ((r = snapshot_dir_check(dir, why, size)) < 0)
		return r;
	snprintf(rec, PATH_MAX, "%s%s", path, SNAPSHOT_RECORD_SUFFIX);
	return 0;
}

int snapshot_file_create(const char *path, int *ret_fd, char *why, size_t size) {
	char dir[PATH_MAX], rec[PATH_MAX];
	int r = snapshot_paths(path, dir, rec, why, size);
	if (r < 0)
		return r;
	struct stat st;
	if (lstat(path, &st) == 0 || lstat(rec, &st) == 0)
		return why_err(-EEXIST, why, size,
			       "%s exists already; a snapshot never overwrites a file (remove it, or "
			       "pick another name)",
			       lstat(path, &st) == 0 ? path : rec);
	int fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0)
		return why_err(-errno, why, size, "cannot create a file in %s: %s", dir, strerror(errno));
	if (fchmod(fd, 0600) < 0) {
		r = -errno;
		close(fd);
		return why_err(r, why, size, "cannot set the mode of the new file: %s", strerror(-r));
	}
	*ret_fd = fd;
	return 0;
}

int snapshot_file_link(int fd, const char *path) {
	char proc[64];
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if (linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW) < 0)
		return -errno;
	_cleanup_close_ int d = -1;
	char dir[PATH_MAX];
	if (path_dir(path, dir, sizeof(dir), NULL, 0) == 0 &&
	    (d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
		fsync(d);
	return 0;
}

int snapshot_file_open(const char *path, int *ret_fd, uint64_t *ret_size,
		       struct snapshot_record *ret_record, char *why, size_t size) {
	char dir[PATH_MAX], rec[PATH_MAX];
	int r = snapshot_paths(path, dir, rec, why, size);
	if (r < 0)
		return r;
	_cleanup_close_ int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return why_err(-errno, why, size, "cannot open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0)
		return why_err(-errno, why, size, "cannot stat %s: %s", path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return why_err(-EINVAL, why, size, "%s is not a regular file", path);
	if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
		return why_err(-EPERM, why, size,
			       "%s must belong to root and not be writable by group or others", path);

	_cleanup_free_ char *text = NULL;
	size_t len = 0;
	r = read_file(rec, SNAPSHOT_RECORD_MAX, &text, &len);
	if (r < 0)
		return why_err(r, why, size, "cannot read the snapshot's record %s: %s", rec,
			       strerror(-r));
	struct json_tokener *tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	struct json_object *o = json_tokener_parse_ex(tok, text, (int)len);
	bool complete = json_tokener_get_error(tok) == json_tokener_success &&
			json_tokener_get_parse_end(tok) == len;
	json_tokener_free(tok);
	if (!o || !complete) {
		json_object_put(o);
		return why_err(-EBADMSG, why, size, "the record %s is not valid JSON", rec);
	}
	char fwhy[256];
	r = snapshot_record_from_json(o, ret_record, fwhy, sizeof(fwhy));
	json_object_put(o);
	if (r < 0)
		return why_err(r, why, size, "the record %s is corrupt: %s", rec, fwhy);
	*ret_fd = TAKE_FD(fd);
	*ret_size = (uint64_t)st.st_size;
	return 0;
}

/* ---- hashing on the loop ------------------------------------------------- */

struct snapshot_hasher {
	struct event *ev;
	int fd;
	uint64_t size, done_bytes;
	struct snapshot_hash hash;
	uint8_t *buf;
	snapshot_hash_progress_fn progress;
	snapshot_hash_done_fn done;
	void *userdata;
};

static void hasher_step(evutil_socket_t unused, short what, void *userdata) {
	struct snapshot_hasher *h = userdata;
	size_t want = (size_t)MIN((uint64_t)SNAPSHOT_HASH_CHUNK, h->size - h->done_bytes);
	ssize_t n = want ? pread(h->fd, h->buf, want, (off_t)h->done_bytes) : 0;
	if (n < 0 || (size_t)n != want) {
		int e = n < 0 ? -errno : -EIO;
		h->done(e, NULL, h->userdata);
		return;
	}
	snapshot_hash_update(&h->hash, h->buf, (size_t)n);
	h->done_bytes += (uint64_t)n;
	if (h->done_bytes < h->size) {
		if (h->progress)
			h->progress(h->done_bytes, h->size, h->userdata);
		event_active(h->ev, 0, 0);
		return;
	}
	char out[25];
	snapshot_hash_final(&h->hash, out);
	h->done(0, out, h->userdata);
}

int snapshot_hasher_start(struct event_base *base, int fd, uint64_t size,
			  snapshot_hash_progress_fn progress, snapshot_hash_done_fn done,
			  void *userdata, struct snapshot_hasher **ret) {
	struct snapshot_hasher *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->buf = malloc(SNAPSHOT_HASH_CHUNK);
	h->ev = event_new(base, -1, 0, hasher_step, h);
	if (!h->buf || !h->ev) {
		snapshot_hasher_free(h);
		return -ENOMEM;
	}
	h->fd = fd;
	h->size = size;
	h->progress = progress;
	h->done = done;
	h->userdata = userdata;
	snapshot_hash_init(&h->hash);
	event_active(h->ev, 0, 0);
	*ret = h;
	return 0;
}

struct snapshot_hasher *snapshot_hasher_free(struct snapshot_hasher *h) {
	if (!h)
		return NULL;
	if (h->ev)
		event_free(h->ev);
	free(h->buf);
	free(h);
	return NULL;
}

/* ---- userfaultfd --------------------------------------------------------- */

/* A userfaultfd as QEMU makes one (QEMU >= 8.1): /dev/userfaultfd first,
 * which a seccomp filter on the syscall does not stop, then the syscall. */
static int uffd_open(void) {
	int fd = -1;
	_cleanup_close_ int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0)
		fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	return fd < 0 ? -errno : fd;
}

int snapshot_uffd_wp_check(char *why, size_t size) {
	_cleanup_close_ int uffd = uffd_open();
	if (uffd < 0)
		return why_err(uffd, why, size,
			       "cannot make a userfaultfd (/dev/userfaultfd or the syscall): %s; "
			       "background snapshots need it",
			       strerror(-uffd));
	struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM};
	if (ioctl(uffd, UFFDIO_API, &api) < 0)
		return why_err(-errno, why, size,
			       "the kernel cannot write-protect shared memory with userfaultfd "
			       "(UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux >= 5.19): %s; guest RAM is a "
			       "shared memfd, so background snapshots are not possible here",
			       strerror(errno));
	long page = sysconf(_SC_PAGESIZE);
	_cleanup_close_ int mfd = memfd_create("cprd:uffd-check", MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, page) < 0)
		return why_err(-errno, why, size, "cannot make a memfd: %s", strerror(errno));
	void *p = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (p == MAP_FAILED)
		return why_err(-errno, why, size, "cannot map a memfd: %s", strerror(errno));
	*(volatile char *)p = 1; /* populate it, as guest RAM is */
	struct uffdio_register reg = {
		.range = {.start = (uintptr_t)p, .len = (uint64_t)page},
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	int r = 0;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
		r = why_err(-errno, why, size,
			    "the kernel refuses to write-protect a shared memfd with userfaultfd: "
			    "%s; background snapshots are not possible here",
			    strerror(errno));
	munmap(p, (size_t)page);
	return r;
}

bool snapshot_uffd_allowed_for(uid_t uid, char *why, size_t size) {
	if (uid == 0)
		return true;
	/* Read, not read_file: a sysctl's file has st_size 0. */
	char text[16] = "";
	_cleanup_close_ int fd = open("/proc/sys/vm/unprivileged_userfaultfd", O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && read(fd, text, sizeof(text) - 1) > 0 && text[0] == '1')
		return true;
	struct stat st;
	if (stat("/dev/userfaultfd", &st) == 0 &&
	    ((st.st_uid == uid && (st.st_mode & S_IRUSR) && (st.st_mode & S_IWUSR)) ||
	     ((st.st_mode & S_IROTH) && (st.st_mode & S_IWOTH))))
		return true;
	why_err(-EPERM, why, size,
		"QEMU runs as uid %u, which may not make a userfaultfd: vm.unprivileged_userfaultfd "
		"is 0 and /dev/userfaultfd is not open to it (cprd does not grant it: a userfaultfd "
		"from that device can also hold up the kernel's own faults); background snapshots "
		"need QEMU to run as root, or the sysctl vm.unprivileged_userfaultfd=1",
		(unsigned)uid);
	return false;
}
