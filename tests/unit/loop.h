/* Turning a test's event loop until something holds, with a deadline:
 * shared by the Check suites that drive event-loop code (qmp, probe). A
 * suite defines `static struct event_base *base;` before including this. */
#pragma once

#include <event2/event.h>
#include <stdbool.h>

static bool loop_timed_out;

static void on_loop_timeout(evutil_socket_t fd, short what, void *arg) {
	loop_timed_out = true;
}

/* How long a test waits for something that should happen soon: generous,
 * because the suites also run under valgrind on a shared 2-core machine, and
 * RUN_UNTIL returns as soon as the condition holds, so it costs nothing when
 * the code works. Deadlines a test means to see expire stay short. */
#define PATIENCE_MS 30000

/* Turns the loop until cond holds or timeout_ms passed; yields cond. */
#define RUN_UNTIL(cond, timeout_ms)                                                      \
	({                                                                               \
		struct timeval _tv = { (timeout_ms) / 1000, ((timeout_ms) % 1000) * 1000 }; \
		struct event *_t = evtimer_new(base, on_loop_timeout, NULL);             \
		loop_timed_out = false;                                                  \
		evtimer_add(_t, &_tv);                                                   \
		while (!(cond) && !loop_timed_out)                                       \
			event_base_loop(base, EVLOOP_ONCE);                              \
		event_free(_t);                                                          \
		(bool)(cond);                                                            \
	})
