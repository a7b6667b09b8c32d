/* Parameter tables shaped like io.cprd.Manager's (daemon/api.c keeps its
 * own static), shared by the Varlink fuzz targets. */
#pragma once

#include "varlink.h"

static const struct vl_param fz_p_list[] = {{"outdated", VL_BOOL, VL_NULLABLE}, {.name = NULL}};
static const struct vl_param fz_p_name[] = {{"name", VL_STRING, VL_MANDATORY}, {.name = NULL}};
static const struct vl_param fz_p_create[] = {{"spec", VL_OBJECT, VL_MANDATORY}, {.name = NULL}};
static const struct vl_param fz_p_stop[] = {{"name", VL_STRING, VL_MANDATORY},
					    {"force", VL_BOOL, VL_NULLABLE},
					    {"timeoutSec", VL_INT, VL_NULLABLE},
					    {.name = NULL}};
static const struct vl_param fz_p_upgrade[] = {{"name", VL_STRING, VL_MANDATORY},
					       {"qemu", VL_STRING, VL_NULLABLE},
					       {"mode", VL_STRING, VL_NULLABLE},
					       {"timeoutSec", VL_INT, VL_NULLABLE},
					       {"dryRun", VL_BOOL, VL_NULLABLE},
					       {.name = NULL}};
static const struct vl_param fz_p_upgrade_many[] = {{"names", VL_ARRAY, VL_NULLABLE},
						    {"outdated", VL_BOOL, VL_NULLABLE},
						    {"qemu", VL_STRING, VL_NULLABLE},
						    {"mode", VL_STRING, VL_NULLABLE},
						    {"parallel", VL_INT, VL_NULLABLE},
						    {"stopOnFailure", VL_BOOL, VL_NULLABLE},
						    {"timeoutSec", VL_INT, VL_NULLABLE},
						    {"dryRun", VL_BOOL, VL_NULLABLE},
						    {.name = NULL}};
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
