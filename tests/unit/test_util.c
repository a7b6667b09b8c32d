/* Check suite for daemon/util.c helpers whose output clients see: frozen
 * JSON (ListVMs prints specs and histories from kept text), fixed-point
 * numbers, human sizes and the UTF-8 sanitizer. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-run.h"
#include "util.h"

#define PLAIN(o) json_object_to_json_string_ext((o), JSON_C_TO_STRING_PLAIN)

START_TEST(test_frozen_prints_like_the_source) {
	struct json_object *src = json_tokener_parse(
		"{\"name\":\"vm1\",\"path\":\"/a/b\",\"n\":[1,2.5,null,true],\"s\":\"\\u00e9\\\"\\n\"}");
	ck_assert_ptr_nonnull(src);
	char *want = strdup(PLAIN(src));
	struct json_object *f = json_frozen(src);
	ck_assert_ptr_nonnull(f);
	ck_assert_str_eq(PLAIN(f), want);
	ck_assert(json_object_is_type(f, json_type_object));

	/* Inside a reply, and after the source changed: still the old text. */
	json_object_object_add(src, "later", json_object_new_int(1));
	struct json_object *reply = json_object_new_object();
	json_object_object_add(reply, "spec", json_object_get(f));
	json_object_object_add(reply, "x", json_object_new_int(7));
	char *expect = NULL;
	ck_assert_int_gt(asprintf(&expect, "{\"spec\":%s,\"x\":7}", want), 0);
	ck_assert_str_eq(PLAIN(reply), expect);
	/* What goes out parses back to the source as it was. */
	struct json_object *back = json_tokener_parse(PLAIN(reply));
	ck_assert_ptr_nonnull(back);
	ck_assert_str_eq(PLAIN(json_object_object_get(back, "spec")), want);

	json_object_put(back);
	json_object_put(reply);
	json_object_put(f);
	json_object_put(src);
	free(expect);
	free(want);
}
END_TEST

START_TEST(test_frozen_array) {
	struct json_object *a = json_object_new_array();
	struct json_object *f = json_frozen(a);
	ck_assert(json_object_is_type(f, json_type_array));
	ck_assert_str_eq(PLAIN(f), "[]");
	json_object_array_add(a, json_object_new_int(1));
	ck_assert_str_eq(PLAIN(f), "[]");
	json_object_put(f);
	json_object_put(a);
}
END_TEST

START_TEST(test_fixed3_and_bytes) {
	struct json_object *n = json_new_fixed3(5.5369999999);
	ck_assert_str_eq(PLAIN(n), "5.537");
	json_object_put(n);
	char buf[32];
	format_bytes(512, buf, sizeof(buf));
	ck_assert_str_eq(buf, "512 B");
	format_bytes(1536ULL << 20, buf, sizeof(buf));
	ck_assert_str_eq(buf, "1.5 GiB");
	format_bytes(64ULL << 20, buf, sizeof(buf));
	ck_assert_str_eq(buf, "64 MiB");
}
END_TEST

/* How a restarted cprd tells which binary a cpr-exec'd process runs: the
 * new one was given "-incoming file:DIR/vm.state". */
START_TEST(test_proc_cmdline_has) {
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		setpgid(0, 0); /* its sleep goes with it */
		/* sh keeps its own line ("; :" so that it does not exec sleep). */
		execl("/bin/sh", "sh", "-c", "sleep 30; :", "-incoming", "file:/run/x/vm.state", (char *)NULL);
		_exit(127);
	}
	/* Until the exec happened, the child's line is this test's. */
	int r = 0;
	for (int i = 0; i < 500 && (r = proc_cmdline_has(pid, "-incoming", "file:/run/x/vm.state")) != 1; i++)
		usleep(10000);
	ck_assert_int_eq(r, 1);
	ck_assert_int_eq(proc_cmdline_has(pid, "-incoming", "file:/run/y/vm.state"), 0);
	ck_assert_int_eq(proc_cmdline_has(pid, "sleep 30; :", "file:/run/x/vm.state"), 0);
	ck_assert_int_eq(proc_cmdline_has(pid, "file:/run/x/vm.state", "-incoming"), 0);
	kill(-pid, SIGKILL);
	waitpid(pid, NULL, 0);
	ck_assert_int_eq(proc_cmdline_has(pid, "-incoming", "file:/run/x/vm.state"), -ENOENT);
}
END_TEST

START_TEST(test_utf8_sanitize) {
	/* Valid text stays; a stray byte, a NUL, a surrogate and an overlong
	 * form each become U+FFFD. */
	char *s = utf8_sanitize("caf\xc3\xa9", 5);
	ck_assert_str_eq(s, "caf\xc3\xa9");
	free(s);
	s = utf8_sanitize("a\xff" "b\0c", 5);
	ck_assert_str_eq(s, "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c");
	free(s);
	s = utf8_sanitize("\xed\xa0\x80", 3);
	ck_assert_str_eq(s, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
	free(s);
	s = utf8_sanitize("\xe0\x80\xaf", 3);
	ck_assert_ptr_null(strstr(s, "/"));
	free(s);
}
END_TEST

static Suite *util_suite(void) {
	Suite *s = suite_create("util");
	TCase *tc = tcase_create("util");
	tcase_add_test(tc, test_frozen_prints_like_the_source);
	tcase_add_test(tc, test_frozen_array);
	tcase_add_test(tc, test_fixed3_and_bytes);
	tcase_add_test(tc, test_utf8_sanitize);
	tcase_add_test(tc, test_proc_cmdline_has);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(util_suite());
}
