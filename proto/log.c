/* Logging: see log.h. Kept tiny on purpose; the journal target sends the
 * same text plus the VM and PHASE fields. */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>

static int max_level = LOG_INFO;
static enum log_target target = LOG_TARGET_STDERR;
static const char *ident = "cprd";

void log_set_max_level(int level) { max_level = level; }
int log_get_max_level(void) { return max_level; }
void log_set_target(enum log_target t) { target = t; }
void log_set_ident(const char *i) { ident = i; }

int log_level_from_string(const char *s) {
	static const char *const names[] = {
		[LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit",
		[LOG_ERR] = "err", [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
		[LOG_INFO] = "info", [LOG_DEBUG] = "debug",
	};
	for (size_t i = 0; i < ELEMENTSOF(names); i++)
		if (streq(s, names[i]))
			return (int)i;
	if (streq(s, "error"))
		return LOG_ERR;
	if (streq(s, "warn"))
		return LOG_WARNING;
	return -EINVAL;
}

int log_internal(int level, int error, const char *vm, const char *phase,
		 const char *fmt, ...) {
	int saved = errno;
	if (error < 0)
		error = -error;

	if (level <= max_level) {
		char msg[2048];
		va_list ap;
		errno = error; /* so %m names the error we were given */
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);

		if (target == LOG_TARGET_JOURNAL) {
			char m[2300], p[16], id[64], v[128], ph[64];
			struct iovec iov[5];
			int n = 0;
			snprintf(m, sizeof(m), "MESSAGE=%s%s%s", vm ? vm : "", vm ? ": " : "", msg);
			snprintf(p, sizeof(p), "PRIORITY=%d", level);
			snprintf(id, sizeof(id), "SYSLOG_IDENTIFIER=%s", ident);
			iov[n++] = (struct iovec){m, strlen(m)};
			iov[n++] = (struct iovec){p, strlen(p)};
			iov[n++] = (struct iovec){id, strlen(id)};
			if (vm) {
				snprintf(v, sizeof(v), "VM=%s", vm);
				iov[n++] = (struct iovec){v, strlen(v)};
			}
			if (phase) {
				snprintf(ph, sizeof(ph), "PHASE=%s", phase);
				iov[n++] = (struct iovec){ph, strlen(ph)};
			}
			sd_journal_sendv(iov, n);
		} else if (target == LOG_TARGET_CONSOLE) {
			fprintf(stderr, "%s: %s%s%s\n", ident, vm ? vm : "", vm ? ": " : "", msg);
		} else {
			fprintf(stderr, "<%d>%s%s%s\n", level, vm ? vm : "", vm ? ": " : "", msg);
		}
	}
	errno = saved;
	return error ? -error : -EIO;
}
