/* Pause slots: how many upgrades may have their guest paused at once,
 * counting every upgrade cprd runs. A FIFO queue of waiters and a count;
 * no I/O, so tests/unit/test_pause_slots.c checks it alone. */
#pragma once

#include <stdbool.h>

/* CPRD_PAUSE_SLOTS_MAX bounds a limit (idl.h). */
#include "idl.h"

struct pause_slot_waiter;
/* Runs from pause_slots_acquire or pause_slots_leave (of this waiter or
 * another) when w got its slot. It must not call into the queue again. */
typedef void (*pause_slot_granted_fn)(struct pause_slot_waiter *w);

struct pause_slot_waiter {
	struct pause_slot_waiter *next;
	unsigned limit; /* may go while fewer than limit pauses are under way */
	bool queued, held;
	pause_slot_granted_fn granted;
};

struct pause_slots {
	unsigned busy; /* pauses under way: waiters that hold a slot */
	struct pause_slot_waiter *head, **tail;
};

void pause_slots_init(struct pause_slots *s);
/* Asks for a slot for w with its limit (>= 1). Returns true if w holds one
 * now (granted is not called); false if it waits, in order of arrival, and
 * granted runs once it holds one. Asking again while waiting or holding
 * changes nothing. */
bool pause_slots_acquire(struct pause_slots *s, struct pause_slot_waiter *w, unsigned limit,
			 pause_slot_granted_fn granted);
/* w gives back its slot, or leaves the queue; nothing if neither. The
 * waiters first in line that may go now are granted. Safe on every path. */
void pause_slots_leave(struct pause_slots *s, struct pause_slot_waiter *w);
/* Waiters in the queue. */
unsigned pause_slots_queued(const struct pause_slots *s);
/* The default limit for n CPUs: one pause per two CPUs, at least one. */
unsigned pause_slots_default(long ncpus);
