/* The manager: cprd's registry of VMs, where they are stored, the event
 * stream, and the Varlink server that exposes them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "metrics.h"
#include "pause-slots.h"
#include "users.h"
#include "varlink.h"
#include "vm.h"

struct binwatch;
struct event_base;
struct json_object;

#define MANAGER_VMS_MAX 1024
#define MANAGER_WATCHERS_MAX 256

struct manager_config {
	const char *socket_path;
	const char *state_dir;
	const char *runtime_dir;
	int listen_fd; /* socket activation, or -1 */
	struct users_range qemu_users; /* --qemu-users, checked against the accounts */
	unsigned pause_slots; /* --pause-slots; 0: from the CPU count */
};

struct manager {
	struct event_base *base;
	char *socket_path, *state_dir, *runtime_dir;
	struct vm_host host; /* what each VM sees of the manager */
	struct users_range qemu_users; /* each VM's own uid comes from here */
	struct vl_server *server;
	struct vm **vms;
	size_t n_vms;
	struct vl_subscribers watchers; /* WatchEvents calls */
	unsigned upgrades_running;
	unsigned snapshots_running; /* snapshots and restores (snapshot.c) */
	/* Guests paused by upgrades at once, over every call (upgrade.c);
	 * pause_slots_default is the limit of a request that names none. */
	struct pause_slots pause_slots;
	unsigned pause_slots_default;
	/* <runtime>/metrics.prom, rewritten a moment after each change. */
	struct metrics metrics;
	char *metrics_path;
	struct event *metrics_timer;
	bool metrics_failing; /* the last write failed (logged once) */
	unsigned metrics_changes; /* since the last write */
	/* The folders of the running QEMUs' binaries, watched; outdated.c
	 * makes and owns it (NULL without). */
	struct binwatch *binwatch;
};

/* Creates the folders and the Varlink server, which listens only once
 * manager_listen() is called (after the API is registered on it). */
int manager_new(struct event_base *base, const struct manager_config *cfg, struct manager **ret);
/* Listens on listen_fd (socket activation, taken), or on the socket path when -1. */
int manager_listen(struct manager *m, int listen_fd);
void manager_free(struct manager *m);
int manager_load(struct manager *m);

struct vm *manager_find(struct manager *m, const char *name);
/* The VM whose spec assigns the host PCI device pci, or NULL. */
struct vm *manager_device_owner(struct manager *m, const char *pci);
int manager_add(struct manager *m, struct vm *vm);
void manager_remove(struct manager *m, struct vm *vm);

/* Tells WatchEvents subscribers and the log. */
void manager_emit(struct manager *m, struct vm *vm, const char *type, const char *message);
/* The same with more fields in the event (more: an object, taken; NULL). */
void manager_emit_more(struct manager *m, struct vm *vm, const char *type, const char *message,
		       struct json_object *more);
/* Points m->binwatch at the binaries the VMs' QEMUs run now (every event
 * does, since a QEMU comes or goes only with one). */
void manager_watch_binaries(struct manager *m);
int manager_watch(struct manager *m, struct vl_call *call);

/* Something metrics.prom shows changed: it is rewritten within
 * MANAGER_METRICS_DELAY_MS, once for a burst of changes. manager_emit and
 * adding or removing a VM call it. */
#define MANAGER_METRICS_DELAY_MS 100
void manager_metrics_changed(struct manager *m);
/* Writes metrics.prom now. */
int manager_metrics_write(struct manager *m);

/* Gives vm a uid of its own from --qemu-users before a QEMU of it runs (at
 * create and start): it keeps the one it has while that is in the range
 * and no other VM's; else it gets the lowest free one (saved by the caller
 * with the VM). Without --qemu-users the VM has none. -ENOSPC: every uid
 * of the range is another VM's. */
int manager_vm_uid(struct manager *m, struct vm *vm);

/* A VM's folder: <state>/vms/NAME (0700). */
char *manager_vm_state_dir(struct manager *m, const char *name);
