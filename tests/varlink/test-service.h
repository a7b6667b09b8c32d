/* The interfaces of the Varlink test server (see test-service.c). */
#pragma once

#include "varlink.h"

struct event_base;

struct test_service_stats {
	int notes;       /* oneway Note calls seen */
	int disconnects; /* streams whose caller left early */
	int certified;     /* certification runs whose End answered all_ok true */
	int test11_oneway; /* Test11 calls that came oneway with the right replies */
};
extern struct test_service_stats test_service_stats;

int test_service_register(struct vl_server *s, struct event_base *base);
