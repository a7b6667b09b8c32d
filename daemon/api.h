/* io.cprd.Manager over Varlink: the method handlers and the named errors
 * every part of the daemon replies with. */
#pragma once

#include <stdbool.h>

struct manager;
struct vl_call;
struct json_object;

#define API_ERROR(name) "io.cprd.Manager." name

#include "varlink.h"

/* The parameter tables of io.cprd.Manager's methods (also fed to the fuzz
 * targets, so they check exactly what cprd accepts). */
extern const struct vl_param api_params_list[], api_params_name[], api_params_create[],
	api_params_stop[], api_params_log[], api_params_upgrade[], api_params_upgrade_many[];

#include <sys/types.h>

int api_register(struct manager *m);
/* Beyond root, who may change VMs (cprd --allow-uid, --allow-group). */
int api_allow_uid(uid_t uid);
int api_allow_gid(gid_t gid);

int api_error_no_such_vm(struct vl_call *c, const char *name);
int api_error_bad_state(struct vl_call *c, const char *name, const char *state, const char *reason);
int api_error_busy(struct vl_call *c, const char *name, const char *operation);
int api_error_invalid_spec(struct vl_call *c, const char *field, const char *reason);
int api_error_probe_failed(struct vl_call *c, const char *binary, const char *reason);
int api_error_not_upgradable(struct vl_call *c, const char *name, const char *reason);
int api_error_upgrade_failed(struct vl_call *c, const char *name, const char *phase,
			     bool rolled_back, const char *reason);
int api_error_failed(struct vl_call *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
