/* What server.c shares with service.c inside proto/, and nothing else. */
#pragma once

#include "varlink.h"

int vl_service_register(struct vl_server *s);
size_t vl_server_n_interfaces(const struct vl_server *s);
const struct vl_interface *vl_server_interface(const struct vl_server *s, size_t i);
const struct vl_server_info *vl_server_get_info(const struct vl_server *s);
