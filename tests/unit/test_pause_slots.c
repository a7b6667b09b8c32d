/* Check suite for daemon/pause-slots.c: no more than the limit hold a slot,
 * waiters are granted in order of arrival, and every way out (giving a
 * slot back, leaving the queue) leaves the count right. */
#include <check.h>

#include "check-run.h"
#include "macro.h"
#include "pause-slots.h"

static int order[16], n_granted;
static struct pause_slot_waiter ws[8];

static void on_granted(struct pause_slot_waiter *w) {
	order[n_granted++] = (int)(w - ws);
}

static void setup(void) {
	n_granted = 0;
	for (size_t i = 0; i < ELEMENTSOF(ws); i++)
		ws[i] = (struct pause_slot_waiter){0};
}

START_TEST(test_limit_and_fifo) {
	struct pause_slots s;
	setup();
	pause_slots_init(&s);
	ck_assert(pause_slots_acquire(&s, &ws[0], 2, on_granted));
	ck_assert(pause_slots_acquire(&s, &ws[1], 2, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[2], 2, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[3], 2, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[3], 2, on_granted)); /* again: no change */
	ck_assert_uint_eq(s.busy, 2);
	ck_assert_uint_eq(pause_slots_queued(&s), 2);
	pause_slots_leave(&s, &ws[1]);
	ck_assert_int_eq(n_granted, 1);
	ck_assert_int_eq(order[0], 2);
	ck_assert_uint_eq(s.busy, 2);
	pause_slots_leave(&s, &ws[0]);
	ck_assert_int_eq(order[1], 3);
	ck_assert(ws[3].held && !ws[3].queued);
	pause_slots_leave(&s, &ws[2]);
	pause_slots_leave(&s, &ws[3]);
	pause_slots_leave(&s, &ws[3]); /* twice: nothing */
	ck_assert_uint_eq(s.busy, 0);
	ck_assert_int_eq(n_granted, 2);
	/* An empty queue again: the next one goes at once. */
	ck_assert(pause_slots_acquire(&s, &ws[4], 1, on_granted));
	pause_slots_leave(&s, &ws[4]);
	ck_assert_uint_eq(s.busy, 0);
}
END_TEST

/* A waiter that gives up (its upgrade failed while it waited) leaves the
 * queue wherever it stands; the tail stays right for later arrivals. */
START_TEST(test_leave_queue) {
	struct pause_slots s;
	setup();
	pause_slots_init(&s);
	ck_assert(pause_slots_acquire(&s, &ws[0], 1, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[1], 1, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[2], 1, on_granted));
	pause_slots_leave(&s, &ws[2]); /* the tail */
	ck_assert(!pause_slots_acquire(&s, &ws[3], 1, on_granted));
	pause_slots_leave(&s, &ws[1]); /* the head */
	ck_assert_int_eq(n_granted, 0);
	ck_assert_uint_eq(pause_slots_queued(&s), 1);
	pause_slots_leave(&s, &ws[0]);
	ck_assert_int_eq(n_granted, 1);
	ck_assert_int_eq(order[0], 3);
	pause_slots_leave(&s, &ws[3]);
	ck_assert_uint_eq(s.busy, 0);
	ck_assert_uint_eq(pause_slots_queued(&s), 0);
	ck_assert_ptr_eq(s.tail, &s.head);
}
END_TEST

/* The first in line with a limit of 1 holds back later ones with larger
 * limits (no overtaking); once it goes, they follow as their limits allow. */
START_TEST(test_mixed_limits) {
	struct pause_slots s;
	setup();
	pause_slots_init(&s);
	ck_assert(pause_slots_acquire(&s, &ws[0], 3, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[1], 1, on_granted));
	ck_assert(!pause_slots_acquire(&s, &ws[2], 3, on_granted)); /* behind ws[1] */
	pause_slots_leave(&s, &ws[0]);
	ck_assert_int_eq(n_granted, 2);
	ck_assert_int_eq(order[0], 1);
	ck_assert_int_eq(order[1], 2);
	ck_assert_uint_eq(s.busy, 2);
	pause_slots_leave(&s, &ws[1]);
	pause_slots_leave(&s, &ws[2]);
	ck_assert_uint_eq(s.busy, 0);
}
END_TEST

START_TEST(test_default) {
	ck_assert_uint_eq(pause_slots_default(-1), 1);
	ck_assert_uint_eq(pause_slots_default(1), 1);
	ck_assert_uint_eq(pause_slots_default(2), 1);
	ck_assert_uint_eq(pause_slots_default(16), 8);
	ck_assert_uint_eq(pause_slots_default(1024), CPRD_PAUSE_SLOTS_MAX);
}
END_TEST

static Suite *pause_slots_suite(void) {
	Suite *s = suite_create("pause_slots");
	TCase *tc = tcase_create("queue");
	tcase_add_test(tc, test_limit_and_fifo);
	tcase_add_test(tc, test_leave_queue);
	tcase_add_test(tc, test_mixed_limits);
	tcase_add_test(tc, test_default);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(pause_slots_suite());
}
