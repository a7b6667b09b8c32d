/* Small helpers shared by every part of cprd: cleanup attributes that make
 * ownership visible, and a few arithmetic and string conveniences. */
#pragma once

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
/* The struct that holds member at ptr. */
#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

static inline void freep(void *p) { free(*(void **)p); }
static inline void *mfree(void *p) {
	free(p);
	return NULL;
}
#define _cleanup_free_ _cleanup_(freep)

/* Closes an fd and returns -1, keeping errno intact. */
static inline int safe_close(int fd) {
	if (fd >= 0) {
		int saved = errno;
		close(fd);
		errno = saved;
	}
	return -1;
}
static inline void closep(int *fd) { safe_close(*fd); }
#define _cleanup_close_ _cleanup_(closep)

/* Hands over ownership: returns the value and clears the variable. */
#define TAKE_PTR(p) ({ typeof(p) _p = (p); (p) = NULL; _p; })
#define TAKE_FD(fd) ({ int _fd = (fd); (fd) = -1; _fd; })

static inline int negative_errno(void) { return errno > 0 ? -errno : -EIO; }

static inline int streq(const char *a, const char *b) { return strcmp(a, b) == 0; }
static inline int streq_ptr(const char *a, const char *b) {
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

/* json-c cleanup: json_object_put() on scope exit. */
struct json_object;
int json_object_put(struct json_object *obj);
static inline void json_object_putp(struct json_object **o) {
	if (*o)
		json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_object_putp)
