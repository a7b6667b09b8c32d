/* System helpers shared by the daemon's modules (see util.h). */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <libgen.h>
#include <sched.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "varlink.h"

uint64_t now_usec(clockid_t clock) {
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void format_rfc3339(uint64_t usec, char buf[static 32]) {
	time_t t = (time_t)(usec / 1000000u);
	struct tm tm;
	gmtime_r(&t, &tm);
	size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, 32 - n, ".%03uZ", (unsigned)((usec / 1000u) % 1000u));
}

int parse_rfc3339(const char *s, uint64_t *ret) {
	struct tm tm = {0};
	const char *p;
	unsigned ms = 0;
	int n = 0;
	if (!s || !(p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)))
		return -EINVAL;
	if (*p == '.' && (sscanf(p, ".%3u%n", &ms, &n) != 1 || n != 4))
		return -EINVAL;
	p += n;
	if (!streq(p, "Z"))
		return -EINVAL;
	time_t t = timegm(&tm);
	if (t < 0)
		return -EINVAL;
	*ret = (uint64_t)t * 1000000u + ms * 1000u;
	return 0;
}

void format_bytes(uint64_t bytes, char *buf, size_t size) {
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)bytes;
	size_t u = 0;
	while (v >= 1024 && u + 1 < ELEMENTSOF(units)) {
		v /= 1024;
		u++;
	}
	if (u == 0 || v >= 100 || v == (double)(uint64_t)v)
		snprintf(buf, size, "%.0f %s", v, units[u]);
	else
		snprintf(buf, size, "%.1f %s", v, units[u]);
}

static int fsync_dir_of(const char *path) {
	_cleanup_free_ char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	_cleanup_close_ int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	return fsync(dfd) < 0 ? -errno : 0;
}

uint64_t fnv1a64(uint64_t h, const void *data, size_t len) {
	const unsigned char *p = data;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= UINT64_C(0x100000001b3);
	}
	return h;
}

static int write_atomic(const char *path, const void *data, size_t len, mode_t mode, bool sync) {
	char tmp[PATH_MAX], fdpath[64];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	_cleanup_free_ char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;

	/* Written and synced without a name (O_TMPFILE), named only to be
	 * renamed into place at once: a cprd killed meanwhile leaves no
	 * temporary file behind. A file system without O_TMPFILE gets a named
	 * one from the start. */
	_cleanup_close_ int fd = open(dirname(copy), O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
	bool named = fd < 0;
	if (named && (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)) < 0)
		return -errno;
	/* The mode asked for, whatever the umask. */
	if (fchmod(fd, mode) < 0)
		return -errno;
	const char *p = data;
	size_t left = len;
	int r = 0;
	while (left > 0) {
		ssize_t n = write(fd, p, left);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		p += n;
		left -= (size_t)n;
	}
	if (r == 0 && sync && fsync(fd) < 0)
		r = -errno;
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd);
	if (r == 0 && !named && linkat(AT_FDCWD, fdpath, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) < 0)
		return -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	return sync ? fsync_dir_of(path) : 0;
}

int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode) {
	return write_atomic(path, data, len, mode, true);
}

int write_file_runtime(const char *path, const void *data, size_t len, mode_t mode) {
	return write_atomic(path, data, len, mode, false);
}

static int write_json(const char *path, struct json_object *o, bool sync) {
	size_t len;
	const char *s = json_object_to_json_string_length(
		o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!s)
		return -ENOMEM;
	_cleanup_free_ char *withnl = malloc(len + 2);
	if (!withnl)
		return -ENOMEM;
	memcpy(withnl, s, len);
	withnl[len] = '\n';
	return write_atomic(path, withnl, len + 1, 0600, sync);
}

int write_json_atomic(const char *path, struct json_object *o) {
	return write_json(path, o, true);
}

int write_json_runtime(const char *path, struct json_object *o) {
	return write_json(path, o, false);
}

int read_file(const char *path, size_t max, char **ret, size_t *ret_len) {
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADF;
	if ((uint64_t)st.st_size > max)
		return -EFBIG;
	_cleanup_free_ char *buf = malloc((size_t)st.st_size + 1);
	if (!buf)
		return -ENOMEM;
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	buf[got] = '\0';
	if (ret_len)
		*ret_len = got;
	*ret = TAKE_PTR(buf);
	return 0;
}

int mkdir_p(const char *path, mode_t mode) {
	char buf[PATH_MAX];
	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (char *p = buf + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			if (mkdir(buf, 0755) < 0 && errno != EEXIST)
				return -errno;
			*p = '/';
		}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int rm_rf_flat(const char *path) {
	DIR *d = opendir(path);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	int dfd = dirfd(d);
	struct dirent *de;
	int r = 0;
	while ((de = readdir(d)))
		if (!streq(de->d_name, ".") && !streq(de->d_name, "..") &&
		    unlinkat(dfd, de->d_name, 0) < 0 && errno != ENOENT && r == 0)
			r = -errno;
	closedir(d);
	if (rmdir(path) < 0 && errno != ENOENT && r == 0)
		r = -errno;
	return r;
}

int pidfd_open_pid(pid_t pid) {
	int fd = (int)syscall(SYS_pidfd_open, pid, 0);
	return fd < 0 ? -errno : fd; /* pidfds are always close-on-exec */
}

int pidfd_send(int pidfd, int sig) {
	return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

char *utf8_sanitize(const char *buf, size_t len) {
	char *out = malloc(len * 3 + 1), *o = out;
	if (!out)
		return NULL;
	const unsigned char *s = (const unsigned char *)buf;
	size_t i = 0;
	while (i < len) {
		/* The protocol's own rule, so the text passes every client's check. */
		size_t n = s[i] ? vl_utf8_sequence(s + i, len - i) : 0;
		if (n) {
			memcpy(o, s + i, n);
			o += n;
			i += n;
		} else {
			memcpy(o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		}
	}
	*o = '\0';
	return out;
}

const char *signal_name(int sig) {
	static char buf[16];
	const char *abbrev = sigabbrev_np(sig);
	if (!abbrev) {
		snprintf(buf, sizeof(buf), "%d", sig);
		return buf;
	}
	snprintf(buf, sizeof(buf), "SIG%s", abbrev);
	return buf;
}

struct json_object *json_new_fixed3(double v) {
	char buf[64];
	snprintf(buf, sizeof(buf), "%.3f", v);
	return json_object_new_double_s(v, buf);
}

static int frozen_print(struct json_object *o, struct printbuf *pb, int level, int flags) {
	const char *text = json_object_get_userdata(o);
	return printbuf_memappend(pb, text, (int)strlen(text));
}

static void frozen_free(struct json_object *o, void *userdata) {
	free(userdata);
}

struct json_object *json_frozen(struct json_object *src) {
	char *text = strdup(json_object_to_json_string_ext(src, JSON_C_TO_STRING_PLAIN));
	struct json_object *o = json_object_is_type(src, json_type_array) ? json_object_new_array()
								       : json_object_new_object();
	if (!text || !o) {
		free(text);
		json_object_put(o);
		return NULL;
	}
	json_object_set_serializer(o, frozen_print, text, frozen_free);
	return o;
}

void strv_free(char **v) {
	if (!v)
		return;
	for (char **i = v; *i; i++)
		free(*i);
	free(v);
}

void strv_addf(struct strv *s, const char *fmt, ...) {
	va_list ap;
	char *str = NULL;
	va_start(ap, fmt);
	if (vasprintf(&str, fmt, ap) < 0)
		str = NULL;
	va_end(ap);
	char **n = str ? realloc(s->v, (s->n + 2) * sizeof(char *)) : NULL;
	if (!n) {
		free(str);
		s->oom = true;
		return;
	}
	s->v = n;
	s->v[s->n++] = str;
	s->v[s->n] = NULL;
}

int fd_cloexec(int fd) {
	int flags = fcntl(fd, F_GETFD);
	if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}

/* Reads /proc/PID/stat and returns where the fields after the command
 * name start (field 3, the state). The name may hold spaces and
 * parentheses, so it ends at the last ')'. */
static const char *proc_stat_fields(pid_t pid, char *buf, size_t size) {
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	ssize_t n = read(fd, buf, size - 1);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p + 2 : NULL;
}

int proc_starttime(pid_t pid, uint64_t *ret) {
	char buf[1024];
	unsigned long long start = 0;
	const char *f = proc_stat_fields(pid, buf, sizeof(buf));
	/* starttime is field 22. */
	if (!f || sscanf(f, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
			 &start) != 1)
		return -ESRCH;
	*ret = start;
	return 0;
}

int proc_uid(pid_t pid, uid_t *ret) {
	char path[64];
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;
	unsigned long uid;
	int r = -ESRCH;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	while (getline(&line, &cap, f) > 0)
		if (sscanf(line, "Uid: %lu", &uid) == 1) {
			*ret = (uid_t)uid;
			r = 0;
			break;
		}
	fclose(f);
	return r;
}

pid_t proc_parent(pid_t pid) {
	char buf[1024];
	int ppid;
	const char *f = proc_stat_fields(pid, buf, sizeof(buf));
	if (!f || sscanf(f, "%*c %d", &ppid) != 1) /* ppid is field 4 */
		return -1;
	return (pid_t)ppid;
}

int proc_set_nice(pid_t pid, int nice) {
	char path[64];
	/* The main thread first: threads it makes meanwhile take its value. */
	if (setpriority(PRIO_PROCESS, (id_t)pid, nice) < 0)
		return -errno;
	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	int r = 0;
	for (struct dirent *e; (e = readdir(d));) {
		char *end;
		long tid = strtol(e->d_name, &end, 10);
		if (*end || tid <= 0 || tid == pid)
			continue;
		if (setpriority(PRIO_PROCESS, (id_t)tid, nice) < 0 && errno != ESRCH)
			r = -errno;
	}
	closedir(d);
	/* With autogroups (Debian's default, for tasks outside a cgroup with
	 * the cpu controller), nice weighs only within the session, and each
	 * QEMU has a session of its own: its autogroup has a nice too. */
	snprintf(path, sizeof(path), "/proc/%d/autogroup", (int)pid);
	_cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0 && dprintf(fd, "%d\n", nice) < 0 && r == 0)
		r = -errno;
	return r;
}

long cpus_usable(void) {
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	return sysconf(_SC_NPROCESSORS_ONLN);
}

bool may_raise_priority(void) {
	_cleanup_free_ char *line = NULL;
	size_t cap = 0;
	bool yes = false;
	FILE *f = fopen("/proc/self/status", "re");
	if (!f)
		return false;
	while (getline(&line, &cap, f) > 0) {
		unsigned long long eff;
		if (sscanf(line, "CapEff: %llx", &eff) == 1) {
			yes = eff & (1ULL << 23); /* CAP_SYS_NICE */
			break;
		}
	}
	fclose(f);
	return yes;
}

int proc_cmdline_has(pid_t pid, const char *arg, const char *value) {
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	/* A command line cprd built: a few KiB; more is not one of ours. */
	size_t cap = 256 * 1024, got = 0;
	_cleanup_free_ char *buf = malloc(cap + 1);
	if (!buf)
		return -ENOMEM;
	for (;;) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0 || (got += (size_t)n) == cap)
			break;
	}
	buf[got] = '\0';
	const char *prev = NULL;
	for (const char *a = buf; a < buf + got; a += strlen(a) + 1) {
		if (prev && streq(prev, arg) && streq(a, value))
			return 1;
		prev = a;
	}
	return 0;
}

bool unix_socket_listening(const char *path) {
	_cleanup_free_ char *line = NULL;
	size_t cap = 0, plen = strlen(path);
	bool found = false;
	FILE *f = fopen("/proc/net/unix", "re");
	if (!f)
		return false;
	/* "Num RefCount Protocol Flags Type St Inode Path"; flag 0x10000 is
	 * __SO_ACCEPTCON, set by listen(). */
	while (!found && getline(&line, &cap, f) > 0) {
		unsigned long flags;
		int path_at = 0;
		size_t n = strlen(line);
		if (n && line[n - 1] == '\n')
			line[--n] = '\0';
		if (sscanf(line, "%*s %*s %*s %lx %*s %*s %*s %n", &flags, &path_at) < 1 || path_at == 0)
			continue;
		if (n - (size_t)path_at == plen && memcmp(line + path_at, path, plen) == 0 && (flags & 0x10000))
			found = true;
	}
	fclose(f);
	return found;
}

static int vwhy_err(int err, char *why, size_t size, const char *fmt, va_list ap) {
	if (why && size)
		vsnprintf(why, size, fmt, ap);
	return err;
}

int why_err(int err, char *why, size_t size, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vwhy_err(err, why, size, fmt, ap);
	va_end(ap);
	return err;
}

int json_refuse(char *why, size_t size, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vwhy_err(-EBADMSG, why, size, fmt, ap);
	va_end(ap);
	return -EBADMSG;
}

/* The field's value, or NULL when absent (or null). */
static struct json_object *json_field(struct json_object *o, const char *key) {
	struct json_object *v = NULL;
	return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

int json_field_string(struct json_object *o, const char *key, bool required, char **ret, char *why,
		      size_t size) {
	struct json_object *v = json_field(o, key);
	if (!v)
		return required ? json_refuse(why, size, "no %s", key) : 0;
	if (!json_object_is_type(v, json_type_string))
		return json_refuse(why, size, "%s is not a string", key);
	char *s = strdup(json_object_get_string(v));
	if (!s)
		return -ENOMEM;
	*ret = s;
	return 0;
}

int json_field_bool(struct json_object *o, const char *key, bool required, bool *ret, char *why,
		    size_t size) {
	struct json_object *v = json_field(o, key);
	if (!v && !required)
		return 0;
	if (!v || !json_object_is_type(v, json_type_boolean))
		return json_refuse(why, size, "%s is not true or false", key);
	*ret = json_object_get_boolean(v);
	return 0;
}

int json_field_int(struct json_object *o, const char *key, bool required, int64_t min, int64_t max,
		   int64_t *ret, char *why, size_t size) {
	struct json_object *v = json_field(o, key);
	if (!v)
		return required ? json_refuse(why, size, "no %s", key) : 0;
	if (!json_object_is_type(v, json_type_int))
		return json_refuse(why, size, "%s is not a number", key);
	int64_t n = json_object_get_int64(v);
	if (n < min || n > max)
		return json_refuse(why, size, "%s %lld is out of range", key, (long long)n);
	*ret = n;
	return 0;
}
