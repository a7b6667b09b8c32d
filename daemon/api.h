/* io.cprd.Manager over Varlink: registering the method handlers on the
 * server, and who beyond root may call the methods that change things. */
#pragma once

#include <sys/types.h>

#include "varlink.h"

struct manager;

/* The parameter tables of io.cprd.Manager's methods (also fed to the fuzz
 * targets, so they check exactly what cprd accepts). */
extern const struct vl_param api_params_list[], api_params_name[], api_params_create[],
	api_params_stop[], api_params_log[], api_params_upgrade[], api_params_upgrade_many[];

/* Serves io.cprd.Manager for m on its server. */
int api_register(struct manager *m);
/* Beyond root, who may change VMs (cprd --allow-uid, --allow-group). */
int api_allow_uid(uid_t uid);
int api_allow_gid(gid_t gid);
