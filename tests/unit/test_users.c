/* Check suite for daemon/users.c: --qemu-users's range as typed, its check
 * against account files (written here, not the host's), and which uid a
 * new VM gets. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check-run.h"
#include "users.h"

static struct users_range parse_ok(const char *s) {
	struct users_range r = {0};
	char why[256] = "";
	ck_assert_msg(users_parse_range(s, &r, why, sizeof(why)) == 0, "%s: %s", s, why);
	ck_assert(r.set);
	return r;
}

static void parse_bad(const char *s, int want, const char *says) {
	struct users_range r = {0};
	char why[256] = "";
	ck_assert_int_eq(users_parse_range(s, &r, why, sizeof(why)), want);
	ck_assert_msg(strstr(why, says), "%s: want \"%s\" in \"%s\"", s, says, why);
	ck_assert(!r.set);
}

START_TEST(test_parse) {
	struct users_range r = parse_ok("200000-200999");
	ck_assert_uint_eq(r.first, 200000);
	ck_assert_uint_eq(r.last, 200999);
	r = parse_ok("5-5");
	ck_assert_uint_eq(r.first, 5);
	ck_assert_uint_eq(r.last, 5);
	r = parse_ok("1-4294967293");
	ck_assert_uint_eq(r.last, USERS_UID_MAX);

	parse_bad("200000", -EINVAL, "not a range FIRST-LAST");
	parse_bad("", -EINVAL, "not a range");
	parse_bad("-5", -EINVAL, "not a range");
	parse_bad("5-", -EINVAL, "not a range");
	parse_bad(" 5-6", -EINVAL, "not a range");
	parse_bad("5-6x", -EINVAL, "not a range");
	parse_bad("+5-6", -EINVAL, "not a range");
	parse_bad("5--6", -EINVAL, "not a range");
	parse_bad("5-6-7", -EINVAL, "not a range");
	parse_bad("12345678901-12345678902", -EINVAL, "not a range");
	parse_bad("0-10", -ERANGE, "uid 0 is root's");
	parse_bad("10-9", -ERANGE, "the first uid, 10, is above the last, 9");
	parse_bad("1-4294967294", -ERANGE, "past the highest usable uid");
	parse_bad("1-4294967295", -ERANGE, "past the highest usable uid");

	r = parse_ok("5-6");
	ck_assert(users_in_range(&r, 5));
	ck_assert(users_in_range(&r, 6));
	ck_assert(!users_in_range(&r, 4));
	ck_assert(!users_in_range(&r, 7));
	ck_assert(!users_in_range(NULL, 5));
	struct users_range unset = {0};
	ck_assert(!users_in_range(&unset, 0));
}
END_TEST

static char dir[] = "/tmp/cprd-test-users-XXXXXX";

static const char *write_file(const char *name, const char *text) {
	static char path[4][256];
	static int next;
	char *p = path[next++ % 4];
	snprintf(p, 256, "%s/%s", dir, name);
	FILE *f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	return p;
}

static void setup(void) {
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void) {
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
	strcpy(dir, "/tmp/cprd-test-users-XXXXXX");
}

/* The account files clash with the range, and why names the clash. */
static void clash(const struct users_range *r, const char *passwd, const char *group, const char *subuid,
		  const char *subgid, const char *says) {
	char why[512];
	ck_assert_int_eq(users_check_accounts(r, passwd, group, subuid, subgid, why, sizeof(why)), -EEXIST);
	ck_assert_msg(strstr(why, says), "%s", why);
}

START_TEST(test_accounts) {
	struct users_range r = parse_ok("200000-200999");
	char why[512];
	const char *passwd = write_file("passwd", "root:x:0:0:root:/root:/bin/bash\n"
						  "# a comment:x:200500:0\n"
						  "+nis:x:200500:0::/:\n"
						  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
						  "broken line\n"
						  "alice:x:1000:1000::/home/alice:/bin/sh\n");
	const char *group = write_file("group", "root:x:0:\nusers:x:100:alice\n");
	const char *subuid = write_file("subuid", "alice:100000:65536\n");
	const char *subgid = write_file("subgid", "alice:100000:65536\n");
	ck_assert_int_eq(users_check_accounts(&r, passwd, group, subuid, subgid, why, sizeof(why)), 0);
	/* Files that are not there have no accounts. */
	ck_assert_int_eq(users_check_accounts(&r, "/nonexistent/passwd", NULL, NULL, NULL, why, sizeof(why)), 0);

	/* A user's uid, a user's primary gid, a group, a subordinate range:
	 * each is named. */
	passwd = write_file("passwd", "root:x:0:0::/:\nbob:x:200999:1000::/:\n");
	clash(&r, passwd, group, NULL, NULL, "user bob has uid 200999");
	passwd = write_file("passwd", "carol:x:1001:200000::/:\n");
	clash(&r, passwd, NULL, NULL, NULL, "user carol has gid 200000");
	group = write_file("group", "root:x:0:\nvms:x:200001:\n");
	clash(&r, NULL, group, NULL, NULL, "group vms has gid 200001");
	/* 100000-165535 ends before the range; 199999 + 2 reaches into it. */
	subuid = write_file("subuid", "alice:100000:65536\ndave:199999:2\n");
	clash(&r, NULL, NULL, subuid, NULL, "gives dave the ids 199999-200000");
	subgid = write_file("subgid", "erin:200999:100\n");
	clash(&r, NULL, NULL, NULL, subgid, "gives erin the ids 200999-201098");
	subgid = write_file("subgid", "erin:201000:100\nfrank:199000:1000\n");
	ck_assert_int_eq(users_check_accounts(&r, NULL, NULL, NULL, subgid, why, sizeof(why)), 0);
}
END_TEST

/* users_pick() with the uids in used[0..n) taken gives want. */
static void picks(const struct users_range *r, const uid_t *used, size_t n, uid_t want) {
	uid_t uid = 0;
	ck_assert_int_eq(users_pick(r, used, n, &uid), 0);
	ck_assert_uint_eq(uid, want);
}

START_TEST(test_pick) {
	struct users_range r = parse_ok("100-103");
	uid_t uid = 0;
	picks(&r, NULL, 0, 100);
	/* Out-of-range, zero and duplicate entries do not matter; the lowest
	 * free one is picked, whatever the order. */
	uid_t used[] = {102, 0, 100, 5000, 100, 99};
	picks(&r, used, 6, 101);
	uid_t more[] = {103, 101, 100, 102};
	picks(&r, more, 3, 102);
	ck_assert_int_eq(users_pick(&r, more, 4, &uid), -ENOSPC);
	/* A freed uid (its VM deleted) is given again. */
	uid_t freed[] = {100, 101, 103};
	picks(&r, freed, 3, 102);
	struct users_range one = parse_ok("4294967293-4294967293");
	picks(&one, NULL, 0, USERS_UID_MAX);
	uid_t top[] = {USERS_UID_MAX};
	ck_assert_int_eq(users_pick(&one, top, 1, &uid), -ENOSPC);
	struct users_range unset = {0};
	ck_assert_int_eq(users_pick(&unset, NULL, 0, &uid), -EINVAL);
}
END_TEST

static Suite *users_suite(void) {
	Suite *s = suite_create("users");
	TCase *tc = tcase_create("users");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_parse);
	tcase_add_test(tc, test_accounts);
	tcase_add_test(tc, test_pick);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(users_suite());
}
