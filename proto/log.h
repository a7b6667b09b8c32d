/* Logging for cprd and its libraries: one line per message on stderr with
 * the sd-daemon priority prefix ("<3>"), which journald turns into the
 * priority; structured fields (VM=, PHASE=) go along when journald is used. */
#pragma once

#include <stdarg.h>
#include <syslog.h>

#include "macro.h"

enum log_target {
	LOG_TARGET_STDERR,  /* "<N>message" lines, for journald's stdout stream */
	LOG_TARGET_CONSOLE, /* plain lines for a terminal */
	LOG_TARGET_JOURNAL, /* sd_journal_send() with structured fields */
};

void log_set_max_level(int level);
int log_get_max_level(void);
int log_level_from_string(const char *s); /* "debug".."err", or -EINVAL */
void log_set_target(enum log_target t);
void log_set_ident(const char *ident);

/* Logs and returns -abs(error) so that `return log_error_errno(r, ...)` reads
 * well. %m in the format prints strerror(error). vm may be NULL. */
int log_internal(int level, int error, const char *vm, const char *phase,
		 const char *fmt, ...) _printf_(5, 6);

#define log_full_errno(level, error, ...) log_internal(level, error, NULL, NULL, __VA_ARGS__)
#define log_debug(...) log_internal(LOG_DEBUG, 0, NULL, NULL, __VA_ARGS__)
#define log_info(...) log_internal(LOG_INFO, 0, NULL, NULL, __VA_ARGS__)
#define log_notice(...) log_internal(LOG_NOTICE, 0, NULL, NULL, __VA_ARGS__)
#define log_warning(...) log_internal(LOG_WARNING, 0, NULL, NULL, __VA_ARGS__)
#define log_error(...) log_internal(LOG_ERR, 0, NULL, NULL, __VA_ARGS__)
#define log_debug_errno(e, ...) log_internal(LOG_DEBUG, e, NULL, NULL, __VA_ARGS__)
#define log_warning_errno(e, ...) log_internal(LOG_WARNING, e, NULL, NULL, __VA_ARGS__)
#define log_error_errno(e, ...) log_internal(LOG_ERR, e, NULL, NULL, __VA_ARGS__)

/* Lines about one VM carry its name (and the upgrade phase when there is one). */
#define log_vm(level, vm, ...) log_internal(level, 0, vm, NULL, __VA_ARGS__)
#define log_vm_errno(level, e, vm, ...) log_internal(level, e, vm, NULL, __VA_ARGS__)
#define log_vm_phase(level, e, vm, phase, ...) log_internal(level, e, vm, phase, __VA_ARGS__)
