/* Glue to systemd (see systemd.c): notify, watchdog, the fd store, and
 * transient scopes for QEMU processes. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct event_base;
struct sd_bus;

bool systemd_notify_available(void);

/* Takes the fds systemd passed (socket activation and the fd store). */
int systemd_collect_fds(void);
/* The passed fd with this FDNAME (ownership moves), or -1. */
int systemd_take_fd(const char *name);
/* The listening socket ("varlink", or the only unix stream socket). */
int systemd_take_listen_fd(void);
/* Closes the passed fds nobody took and drops them from the store. */
void systemd_release_unclaimed(void);

/* Puts a copy of fd into the fd store under name (FDNAME), or removes every
 * fd of that name. No-ops without systemd. */
int systemd_store_fd(const char *name, int fd);
int systemd_remove_fd(const char *name);

void systemd_ready(void);
void systemd_stopping(void);
void systemd_reloading(void);
void systemd_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void systemd_watchdog_start(struct event_base *base);
void systemd_watchdog_stop(void);

/* The system bus, connected on first use; NULL without systemd (said once). */
struct sd_bus *systemd_bus(void);
/* The name of the VM's scope: cprd-vm-NAME.scope. */
void systemd_scope_name(const char *vm, char *unit, size_t unit_size);
/* Moves pid into the VM's scope (cprd-vm-NAME.scope in machine.slice),
 * creating it if needed. Returns 1 when moved, 0 without systemd, or a
 * negative errno (logged). unit receives the scope's name. */
int systemd_scope_attach(const char *vm, pid_t pid, char *unit, size_t unit_size);
/* For a re-exec: keeps fd open across exec and appends name=fd to *list
 * (the value of CPRD_REEXEC_FDS). */
int systemd_add_reexec_fd(char **list, const char *name, int fd);
void systemd_close(void);
