/* The manager: cprd's registry of VMs, where they are stored, the event
 * stream, and the Varlink server that exposes them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "varlink.h"

struct event_base;
struct vm;

#define MANAGER_VMS_MAX 1024
#define MANAGER_WATCHERS_MAX 256

struct manager_config {
	const char *socket_path;
	const char *state_dir;
	const char *runtime_dir;
	int listen_fd; /* socket activation, or -1 */
};

struct manager {
	struct event_base *base;
	char *socket_path, *state_dir, *runtime_dir;
	struct vl_server *server;
	struct vm **vms;
	size_t n_vms;
	struct vl_subscribers watchers; /* WatchEvents calls */
	unsigned upgrades_running;
};

int manager_new(struct event_base *base, const struct manager_config *cfg, struct manager **ret);
void manager_free(struct manager *m);
int manager_load(struct manager *m);

struct vm *manager_find(struct manager *m, const char *name);
int manager_add(struct manager *m, struct vm *vm);
void manager_remove(struct manager *m, struct vm *vm);

/* Tells WatchEvents subscribers and the log. */
void manager_emit(struct manager *m, struct vm *vm, const char *type, const char *message);
int manager_watch(struct manager *m, struct vl_call *call);

/* Folders: <state>/vms/NAME and <runtime>/vms/NAME (0700). */
char *manager_vm_state_dir(struct manager *m, const char *name);
char *manager_vm_runtime_dir(struct manager *m, const char *name);
/* Creates (or fixes) a VM's runtime folder: 0700, owned by QEMU's user. */
int manager_vm_runtime_dir_make(struct manager *m, const char *name, char **ret);
