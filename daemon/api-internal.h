/* What api.c shares with api-upgrade.c and api-snapshot.c: the named errors of io.cprd.Manager,
 * the checks every method opens with, and the upgrade methods' handlers. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "macro.h"
#include "varlink.h"

struct json_object;
struct manager;
struct vm;

#define API_ERROR(name) "io.cprd.Manager." name

int api_error_no_such_vm(struct vl_call *c, const char *name);
int api_error_bad_state(struct vl_call *c, const char *name, const char *state, const char *reason);
int api_error_busy(struct vl_call *c, const char *name, const char *operation);
int api_error_invalid_spec(struct vl_call *c, const char *field, const char *reason);
int api_error_probe_failed(struct vl_call *c, const char *binary, const char *reason);
int api_error_not_upgradable(struct vl_call *c, const char *name, const char *reason);
int api_error_device_unavailable(struct vl_call *c, const char *device, const char *reason);
int api_error_failed(struct vl_call *c, const char *fmt, ...) _printf_(2, 3);

/* Whether the caller may call this method; replies PermissionDenied if not. */
bool api_authorize(struct vl_call *c, bool writes);
/* Finds the VM named by the "name" parameter or replies NoSuchVM. */
struct vm *api_lookup(struct manager *m, struct vl_call *c, struct json_object *params);

/* Parameters as checked by the method's table: absent or null reads as
 * NULL, false, or false returned. */
const char *api_param_str(struct json_object *params, const char *key);
bool api_param_bool(struct json_object *params, const char *key);
bool api_param_int(struct json_object *params, const char *key, int64_t *ret);

/* Upgrade and UpgradeMany (api-upgrade.c); userdata is the manager. */
int api_method_upgrade(struct vl_call *c, struct json_object *params, void *userdata);
int api_method_upgrade_many(struct vl_call *c, struct json_object *params, void *userdata);

/* SnapshotVM and RestoreVM (api-snapshot.c) and their parameter tables. */
int api_method_snapshot(struct vl_call *c, struct json_object *params, void *userdata);
int api_method_restore(struct vl_call *c, struct json_object *params, void *userdata);
extern const struct vl_param api_params_snapshot[];
extern const struct vl_param api_params_restore[];
