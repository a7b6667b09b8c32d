/* The parameter tables of io.cprd.Manager (daemon/api.c) plus one with
 * every type and flag, shared by the Varlink fuzz targets. */
#pragma once

#include "api.h"
#include "varlink.h"

/* cprd's own tables (daemon/api.c). */
#define fz_p_list api_params_list
#define fz_p_name api_params_name
#define fz_p_create api_params_create
#define fz_p_stop api_params_stop
#define fz_p_upgrade api_params_upgrade
#define fz_p_upgrade_many api_params_upgrade_many

/* Every type and flag once, for the checker's corners. */
static const struct vl_param fz_p_all[] = {{"any", VL_ANY, 0},
					   {"float", VL_FLOAT, VL_NULLABLE},
					   {"int", VL_INT, 0},
					   {"object", VL_OBJECT, VL_NULLABLE},
					   {"array", VL_ARRAY, 0},
					   {"mandatory", VL_STRING, VL_MANDATORY | VL_NULLABLE},
					   {.name = NULL}};

static const struct vl_param *const fz_tables[] = {
	fz_p_list, fz_p_name, fz_p_create, fz_p_stop, fz_p_upgrade, fz_p_upgrade_many, fz_p_all, NULL,
};
