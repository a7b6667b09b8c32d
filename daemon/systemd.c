/* Glue to systemd: readiness and status, the watchdog, the fd store that
 * keeps cprd's custody across its own restarts, and a transient scope per
 * QEMU so that stopping cprd.service never kills a guest. Without systemd
 * every function here degrades to doing nothing, and cprd says so once. */
#include "systemd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "util.h"

#define SYSTEMD_FDS_MAX 8192
#define SYSTEMD_BUS_TIMEOUT_USEC (5 * 1000 * 1000ULL)

struct named_fd {
	char *name;
	int fd;
};

static struct named_fd *fds;
static size_t n_fds;
static sd_bus *bus;
static bool bus_failed;
static struct event *watchdog_ev;

bool systemd_notify_available(void) {
	const char *e = getenv("NOTIFY_SOCKET");
	return e && *e;
}

/* After a re-exec (systemctl reload) the fds come from ourselves, listed in
 * CPRD_REEXEC_FDS as name=number pairs separated by spaces. */
static int collect_reexec_fds(const char *list) {
	_cleanup_free_ char *copy = strdup(list);
	size_t cap = 0;
	if (!copy)
		return -ENOMEM;
	for (const char *c = list; *c; c++)
		cap += *c == '=';
	fds = calloc(cap + 1, sizeof(*fds));
	if (!fds)
		return -ENOMEM;
	char *save = NULL;
	for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		char *eq = strrchr(tok, '=');
		if (!eq)
			continue;
		*eq = '\0';
		int fd = atoi(eq + 1);
		if (fd < 3 || fcntl(fd, F_GETFD) < 0)
			continue;
		fd_cloexec(fd);
		fds[n_fds].name = strdup(tok);
		fds[n_fds].fd = fd;
		n_fds++;
	}
	unsetenv("CPRD_REEXEC_FDS");
	log_info("took %zu fds over from the cprd before the re-exec", n_fds);
	return (int)n_fds;
}

int systemd_collect_fds(void) {
	const char *reexec = getenv("CPRD_REEXEC_FDS");
	if (reexec)
		return collect_reexec_fds(reexec);
	char **names = NULL;
	int n = sd_listen_fds_with_names(1, &names); /* unsets LISTEN_* */
	if (n <= 0) {
		strv_free(names);
		return n;
	}
	fds = calloc((size_t)n, sizeof(*fds));
	if (!fds) {
		strv_free(names);
		return -ENOMEM;
	}
	for (int i = 0; i < n; i++) {
		fds[n_fds].fd = SD_LISTEN_FDS_START + i;
		fds[n_fds].name = names && names[i] ? strdup(names[i]) : strdup("unknown");
		/* Inherited fds are not close-on-exec; ours always are. */
		fd_cloexec(fds[n_fds].fd);
		n_fds++;
	}
	strv_free(names);
	log_info("took %zu fds from systemd", n_fds);
	return n;
}

int systemd_take_fd(const char *name) {
	for (size_t i = 0; i < n_fds; i++)
		if (fds[i].fd >= 0 && streq(fds[i].name, name))
			return TAKE_FD(fds[i].fd);
	return -1;
}

int systemd_take_listen_fd(void) {
	int fd = systemd_take_fd("varlink");
	if (fd >= 0)
		return fd;
	/* Started by systemd-socket-activate or an unnamed socket unit. */
	for (size_t i = 0; i < n_fds; i++)
		if (fds[i].fd >= 0 && sd_is_socket_unix(fds[i].fd, SOCK_STREAM, 1, NULL, 0) > 0)
			return TAKE_FD(fds[i].fd);
	return -1;
}

void systemd_release_unclaimed(void) {
	for (size_t i = 0; i < n_fds; i++) {
		if (fds[i].fd >= 0) {
			log_warning("fd store held '%s', which no VM claims; dropping it", fds[i].name);
			systemd_remove_fd(fds[i].name);
			fds[i].fd = safe_close(fds[i].fd);
		}
		free(fds[i].name);
	}
	free(fds);
	fds = NULL;
	n_fds = 0;
}

int systemd_store_fd(const char *name, int fd) {
	char msg[512];
	if (!systemd_notify_available() || fd < 0)
		return 0;
	/* FDPOLL=0: a socket whose peer hung up stays ours to decide about. */
	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s\nFDPOLL=0", name);
	int r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
	if (r <= 0)
		return log_warning_errno(r ? r : -ENOTCONN, "cannot put %s into the fd store: %m", name);
	log_debug("fd %d stored in systemd's fd store as %s", fd, name);
	return 0;
}

int systemd_remove_fd(const char *name) {
	char msg[512];
	if (!systemd_notify_available())
		return 0;
	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", name);
	return sd_notify(0, msg);
}

void systemd_status(const char *fmt, ...) {
	char buf[512];
	va_list ap;
	if (!systemd_notify_available())
		return;
	va_start(ap, fmt);
	int n = snprintf(buf, sizeof(buf), "STATUS=");
	vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	va_end(ap);
	sd_notify(0, buf);
}

void systemd_ready(void) { sd_notify(0, "READY=1"); }
void systemd_stopping(void) { sd_notify(0, "STOPPING=1"); }
void systemd_reloading(void) { sd_notify(0, "RELOADING=1"); }

static void on_watchdog(evutil_socket_t fd, short what, void *userdata) {
	sd_notify(0, "WATCHDOG=1");
}

void systemd_watchdog_start(struct event_base *base) {
	uint64_t usec = 0;
	if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
		return;
	/* Ping at half the interval, from the event loop: a stuck loop is what
	 * the watchdog is for. */
	struct timeval tv = {(time_t)(usec / 2 / 1000000), (suseconds_t)(usec / 2 % 1000000)};
	watchdog_ev = event_new(base, -1, EV_PERSIST, on_watchdog, NULL);
	event_add(watchdog_ev, &tv);
	log_info("watchdog armed: pinging every %.1f s", (double)usec / 2e6);
}

void systemd_watchdog_stop(void) {
	if (watchdog_ev)
		event_free(TAKE_PTR(watchdog_ev));
}

static sd_bus *get_bus(void) {
	if (bus || bus_failed)
		return bus;
	if (sd_booted() <= 0) {
		bus_failed = true;
		log_notice("not running under systemd: QEMU processes stay children of cprd "
			   "instead of living in their own scopes");
		return NULL;
	}
	int r = sd_bus_open_system(&bus);
	if (r < 0) {
		bus_failed = true;
		log_warning_errno(r, "cannot reach systemd over D-Bus (%m): QEMU processes stay "
				  "children of cprd instead of living in their own scopes");
		bus = NULL;
	}
	return bus;
}

sd_bus *systemd_bus(void) { return get_bus(); }

void systemd_scope_name(const char *vm, char *unit, size_t unit_size) {
	snprintf(unit, unit_size, "cprd-vm-%s.scope", vm);
}

static int start_scope(sd_bus *b, const char *unit, const char *vm, pid_t pid) {
	_cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *m = NULL, *reply = NULL;
	char desc[256];
	int r;

	snprintf(desc, sizeof(desc), "QEMU of VM %s (cprd)", vm);
	r = sd_bus_message_new_method_call(b, &m, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
					   "org.freedesktop.systemd1.Manager", "StartTransientUnit");
	if (r < 0)
		return r;
	r = sd_bus_message_append(m, "ss", unit, "fail");
	if (r >= 0)
		r = sd_bus_message_open_container(m, 'a', "(sv)");
	if (r >= 0)
		/* Delegate: systemd moves processes only into delegated units,
		 * and an upgrade's target joins this scope later. */
		r = sd_bus_message_append(m, "(sv)(sv)(sv)(sv)(sv)", "Description", "s", desc, "Slice", "s",
					  "machine.slice", "PIDs", "au", 1, (uint32_t)pid, "CollectMode",
					  "s", "inactive-or-failed", "Delegate", "b", 1);
	if (r >= 0)
		r = sd_bus_message_close_container(m);
	if (r >= 0)
		r = sd_bus_message_append(m, "a(sa(sv))", 0);
	if (r < 0) {
		sd_bus_message_unref(m);
		return r;
	}
	r = sd_bus_call(b, m, SYSTEMD_BUS_TIMEOUT_USEC, &error, &reply);
	sd_bus_message_unref(m);
	sd_bus_message_unref(reply);
	if (r < 0 && sd_bus_error_has_name(&error, "org.freedesktop.systemd1.UnitExists"))
		return -EEXIST;
	if (r < 0)
		log_debug("StartTransientUnit %s: %s", unit, error.message ? error.message : strerror(-r));
	return r;
}

static int attach_to_scope(sd_bus *b, const char *unit, pid_t pid) {
	_cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *reply = NULL;
	int r = sd_bus_call_method(b, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
				   "org.freedesktop.systemd1.Manager", "AttachProcessesToUnit", &error,
				   &reply, "ssau", unit, "", 1, (uint32_t)pid);
	sd_bus_message_unref(reply);
	if (r < 0)
		log_debug("AttachProcessesToUnit %s: %s", unit, error.message ? error.message : strerror(-r));
	return r;
}

int systemd_scope_attach(const char *vm, pid_t pid, char *unit, size_t unit_size) {
	sd_bus *b = get_bus();
	if (!b)
		return 0;
	/* One scope per VM: a second QEMU during an upgrade joins the first
	 * one's scope, and the scope lives on with whichever QEMU remains. */
	systemd_scope_name(vm, unit, unit_size);
	int r = start_scope(b, unit, vm, pid);
	if (r == -EEXIST)
		r = attach_to_scope(b, unit, pid);
	if (r < 0)
		return log_warning_errno(r, "%s: cannot move QEMU pid %d into %s (%m); it stays in "
					 "cprd's cgroup and would die with cprd.service",
					 vm, (int)pid, unit);
	log_vm(LOG_INFO, vm, "QEMU pid %d runs in %s", (int)pid, unit);
	return 1;
}

int systemd_add_reexec_fd(char **list, const char *name, int fd) {
	char *n = NULL;
	if (fd < 0)
		return 0;
	int flags = fcntl(fd, F_GETFD);
	if (flags < 0 || fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC) < 0)
		return -errno;
	if (asprintf(&n, "%s%s%s=%d", *list ? *list : "", *list ? " " : "", name, fd) < 0)
		return -ENOMEM;
	free(*list);
	*list = n;
	return 0;
}

void systemd_close(void) {
	systemd_watchdog_stop();
	if (bus)
		bus = sd_bus_flush_close_unref(bus);
}
