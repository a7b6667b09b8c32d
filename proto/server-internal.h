/* What server.c takes from service.c inside proto/, and nothing else. */
#pragma once

/* org.varlink.service's interface description (IDL text). */
extern const char vl_service_description[];
