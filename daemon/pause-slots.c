/* Pause slots: a count of pauses under way and a FIFO queue of upgrades that
 * wait to send migrate. Only the first in line may go, so a waiter with a
 * small limit is not overtaken by later ones with larger limits. */
#include "pause-slots.h"

#include <stddef.h>

void pause_slots_init(struct pause_slots *s) {
	*s = (struct pause_slots){.tail = &s->head};
}

/* Grants the waiters at the head of the queue that may go now. */
static void grant(struct pause_slots *s) {
	while (s->head && s->busy < s->head->limit) {
		struct pause_slot_waiter *w = s->head;
		s->head = w->next;
		if (!s->head)
			s->tail = &s->head;
		w->next = NULL;
		w->queued = false;
		w->held = true;
		s->busy++;
		w->granted(w);
	}
}

bool pause_slots_acquire(struct pause_slots *s, struct pause_slot_waiter *w, unsigned limit,
			 pause_slot_granted_fn granted) {
	if (w->held)
		return true;
	if (w->queued)
		return false;
	w->limit = limit ? limit : 1;
	w->granted = granted;
	if (!s->head && s->busy < w->limit) {
		w->held = true;
		s->busy++;
		return true;
	}
	w->next = NULL;
	w->queued = true;
	*s->tail = w;
	s->tail = &w->next;
	return false;
}

void pause_slots_leave(struct pause_slots *s, struct pause_slot_waiter *w) {
	if (w->held) {
		w->held = false;
		s->busy--;
	} else if (w->queued) {
		struct pause_slot_waiter **p = &s->head;
		while (*p && *p != w)
			p = &(*p)->next;
		if (*p) {
			*p = w->next;
			if (s->tail == &w->next)
				s->tail = p;
		}
		w->next = NULL;
		w->queued = false;
	} else
		return;
	grant(s);
}

unsigned pause_slots_queued(const struct pause_slots *s) {
	unsigned n = 0;
	for (const struct pause_slot_waiter *w = s->head; w; w = w->next)
		n++;
	return n;
}

unsigned pause_slots_default(long ncpus) {
	if (ncpus < 2)
		return 1;
	long k = ncpus / 2;
	return k > CPRD_PAUSE_SLOTS_MAX ? CPRD_PAUSE_SLOTS_MAX : (unsigned)k;
}
