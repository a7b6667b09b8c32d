/* Small system helpers for the daemon: time, files written atomically,
 * pidfds, and fds kept across exec. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct json_object;

uint64_t now_usec(clockid_t clock);
/* RFC 3339 UTC with milliseconds, e.g. 2026-11-21T10:00:00.123Z. */
void format_rfc3339(uint64_t realtime_usec, char buf[static 32]);
/* The reverse, for what format_rfc3339 wrote (milliseconds optional):
 * -EINVAL for anything else. */
int parse_rfc3339(const char *s, uint64_t *ret_usec);
/* "1.5 GiB", "512 MiB"; "2m 3s", "850 ms". */
void format_bytes(uint64_t bytes, char *buf, size_t size);
/* FNV-1a, 64 bits, from h (FNV1A64_OFFSET to start): small, stable across
 * builds and hosts, for names derived from a VM's name. */
#define FNV1A64_OFFSET UINT64_C(0xcbf29ce484222325)
uint64_t fnv1a64(uint64_t h, const void *data, size_t len);

/* Writes data to path through a temporary file, fsync and rename, then
 * fsyncs the directory, so a crash leaves the old or the new file. The
 * file gets mode as it is, whatever the umask. */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode);
int write_json_atomic(const char *path, struct json_object *o);
/* The same without the fsyncs, for the records in the runtime folder
 * (qemu.json, upgrade.json): they describe processes that a power loss
 * ends anyway, the folder is a tmpfs (/run) where a sync does nothing, and
 * the rename alone leaves the old or the new file when cprd itself dies.
 * cprd writes them on its one thread several times per upgrade, in the
 * middle of other upgrades' pauses. metrics.prom too: it is rewritten
 * after every change. */
int write_json_runtime(const char *path, struct json_object *o);
int write_file_runtime(const char *path, const void *data, size_t len, mode_t mode);
/* Reads a whole file of at most max bytes. */
int read_file(const char *path, size_t max, char **ret, size_t *ret_len);
int mkdir_p(const char *path, mode_t mode);
/* Removes a directory and what is in it (one level of files). */
int rm_rf_flat(const char *path);

int pidfd_open_pid(pid_t pid);
int pidfd_send(int pidfd, int sig);

/* Replaces invalid UTF-8 and NULs with U+FFFD so text from a guest can go
 * into JSON. Returns a new string. */
char *utf8_sanitize(const char *buf, size_t len);

const char *signal_name(int sig);

/* A JSON number with three decimals (milliseconds, seconds), so output
 * reads 5.537 rather than 5.5369999999999999. */
struct json_object *json_new_fixed3(double v);

/* A JSON value that prints as src prints now (JSON_C_TO_STRING_PLAIN),
 * without walking src again: for parts of replies that are sent many times
 * and change rarely (a VM's spec in ListVMs). Later changes to src do not
 * show. The copy is empty inside (same type, no members): use it only for
 * printing. NULL when out of memory. */
struct json_object *json_frozen(struct json_object *src);

/* Reading a record cprd wrote (qemu.json, upgrade.json) field by field.
 * Each returns 0, -ENOMEM, or -EBADMSG with why filled with a sentence
 * naming the field ("no pid", "pid is not a number"). json_refuse fills why
 * and returns -EBADMSG. An absent optional field leaves *ret as it was. */
int json_refuse(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Fills why (when not NULL) with the sentence and returns err: for the
 * functions that fail with an errno and a reason for the caller to log or
 * return. */
int why_err(int err, char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int json_field_string(struct json_object *o, const char *key, bool required, char **ret, char *why,
		      size_t size);
int json_field_bool(struct json_object *o, const char *key, bool required, bool *ret, char *why,
		    size_t size);
/* An integer in [min, max]. */
int json_field_int(struct json_object *o, const char *key, bool required, int64_t min, int64_t max,
		   int64_t *ret, char *why, size_t size);

/* NULL-terminated string arrays. */
void strv_free(char **v);
static inline void strv_freep(char ***v) { strv_free(*v); }
/* An array being built: strv_addf appends a formatted string and remembers
 * a failure in oom, so a builder checks once at the end. */
struct strv {
	char **v; /* NULL-terminated once anything was added */
	size_t n;
	bool oom;
};
void strv_addf(struct strv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fd_cloexec(int fd);

/* Field 22 of /proc/PID/stat: when the process started, in clock ticks
 * since boot. With the pid it names one process for good. */
int proc_starttime(pid_t pid, uint64_t *ret);
pid_t proc_parent(pid_t pid);
/* The real uid of process pid (/proc/PID/status). */
int proc_uid(pid_t pid, uid_t *ret);
/* Sets the nice value of every thread of process pid (nice is a thread's
 * own; threads made later take their maker's), and of its autogroup when
 * the kernel has them. 0 or a negative errno. */
int proc_set_nice(pid_t pid, int nice);
/* The CPUs cprd may run on (its affinity: taskset, a cpuset), which its
 * children inherit; the online CPUs if that cannot be read. */
long cpus_usable(void);
/* Whether cprd may raise a priority again (CAP_SYS_NICE in effect). */
bool may_raise_priority(void);
/* Whether a unix socket bound at path is listening (/proc/net/unix). */
/* 1 when process pid's command line holds arg followed by value, 0 when
 * not, a negative errno when it cannot be read (-ENOENT: gone). */
int proc_cmdline_has(pid_t pid, const char *arg, const char *value);
bool unix_socket_listening(const char *path);
