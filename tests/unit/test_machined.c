/* Check suite for daemon/machined.c: which names machined accepts, the
 * machine name of a VM (its own when valid; otherwise a mapping that is
 * valid, stable and keeps names apart) and the derived machine id (a v4
 * UUID, stable, distinct per VM). Registration itself needs machined and
 * is checked by tests/systemd (systemd_e2e); without a system bus it must
 * do nothing and fail nothing, which is checked here. */
#include <check.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check-run.h"
#include "machined.h"
#include "spec.h"

START_TEST(test_name_valid) {
	ck_assert(machined_name_valid("vm1"));
	ck_assert(machined_name_valid("a"));
	ck_assert(machined_name_valid("web-01.example"));
	ck_assert(machined_name_valid("A-b-C"));
	char longest[MACHINED_NAME_MAX + 2];
	memset(longest, 'x', MACHINED_NAME_MAX);
	longest[MACHINED_NAME_MAX] = '\0';
	ck_assert(machined_name_valid(longest));
	longest[MACHINED_NAME_MAX] = 'x';
	longest[MACHINED_NAME_MAX + 1] = '\0';
	ck_assert(!machined_name_valid(longest));

	ck_assert(!machined_name_valid(""));
	ck_assert(!machined_name_valid(NULL));
	ck_assert(!machined_name_valid("web_01")); /* no '_' in a host name */
	ck_assert(!machined_name_valid(".vm"));
	ck_assert(!machined_name_valid("vm."));
	ck_assert(!machined_name_valid("a..b"));
	ck_assert(!machined_name_valid("-vm"));
	ck_assert(!machined_name_valid("vm-"));
	ck_assert(!machined_name_valid("a-.b"));
	ck_assert(!machined_name_valid("a.-b"));
	ck_assert(!machined_name_valid("."));
	ck_assert(!machined_name_valid(".."));
	ck_assert(!machined_name_valid("a b"));
	ck_assert(!machined_name_valid("v\xc3\xa9"));
}
END_TEST

START_TEST(test_name_kept) {
	char buf[MACHINED_NAME_MAX + 1];
	machined_name("vm1", buf);
	ck_assert_str_eq(buf, "vm1");
	machined_name("db-2.prod", buf);
	ck_assert_str_eq(buf, "db-2.prod");
}
END_TEST

/* Every name spec.c accepts maps to a name machined accepts, the same each
 * time, and names that differ map apart. */
START_TEST(test_name_mapped) {
	static const char *const names[] = {
		"web_01", "web-01", "web.01", "_", "__", "-", "..a", "a..", ".hidden", "vm-",
		"a_b_c", "a-b-c", "A_B", "1_2", "x_", "_x", "a.-b", "a_-_b",
		"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl", /* 64 */
		"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk_", /* 64 */
		"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghij__", /* 64 */
	};
	char out[sizeof(names) / sizeof(names[0])][MACHINED_NAME_MAX + 1];
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		ck_assert_msg(spec_name_valid(names[i]), "%s", names[i]);
		machined_name(names[i], out[i]);
		ck_assert_msg(machined_name_valid(out[i]), "%s -> %s", names[i], out[i]);
		char again[MACHINED_NAME_MAX + 1];
		machined_name(names[i], again);
		ck_assert_str_eq(out[i], again);
		for (size_t j = 0; j < i; j++)
			ck_assert_msg(strcmp(out[i], out[j]) != 0, "%s and %s -> %s", names[i], names[j], out[i]);
	}
	/* The readable part comes first. */
	ck_assert_msg(strncmp(out[0], "web-01-", 7) == 0 && strlen(out[0]) == 12, "%s", out[0]);
	ck_assert_msg(strncmp(out[3], "cprd-", 5) == 0, "%s", out[3]);
}
END_TEST

START_TEST(test_id) {
	uint8_t a[16], b[16], c[16];
	if (access("/etc/machine-id", R_OK) != 0) {
		/* Without a machine id there is none to derive: registered without. */
		ck_assert_int_lt(machined_id("vm1", a), 0);
		return;
	}
	ck_assert_int_eq(machined_id("vm1", a), 0);
	ck_assert_int_eq(machined_id("vm1", b), 0);
	ck_assert_int_eq(machined_id("vm2", c), 0);
	ck_assert_mem_eq(a, b, 16);
	ck_assert(memcmp(a, c, 16) != 0);
	ck_assert_uint_eq(a[6] >> 4, 4);      /* version 4 */
	ck_assert_uint_eq(a[8] & 0xc0, 0x80); /* RFC 4122 variant */
}
END_TEST

/* Outside systemd nothing is registered and nothing fails; under systemd
 * the test's own process is in no VM's scope, so it is not registered
 * either (machined would tie the machine to the test's unit). */
START_TEST(test_not_registered) {
	ck_assert_int_eq(machined_register("vm1", getpid(), NULL, 0), 0);
	ck_assert_int_eq(machined_unregister("vm1"), 0);
	machined_close();
}
END_TEST

int main(void) {
	Suite *s = suite_create("machined");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_name_valid);
	tcase_add_test(tc, test_name_kept);
	tcase_add_test(tc, test_name_mapped);
	tcase_add_test(tc, test_id);
	tcase_add_test(tc, test_not_registered);
	suite_add_tcase(s, tc);
	return check_run(s);
}
