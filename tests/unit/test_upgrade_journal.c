/* Check suite for daemon/upgrade-journal.c: the journal of an upgrade goes
 * into upgrade.json and comes back the same, with and without its optional
 * parts; a journal with a field missing or of the wrong type, a mode that is
 * no upgrade mode, a relative folder or a corrupt QEMU record is refused
 * with a reason that names it. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check-run.h"
#include "macro.h"
#include "qemu-record.h"
#include "upgrade-journal.h"

static struct json_object *record(int pid) {
	const struct qemu_record r = {
		.pid = pid,
		.starttime = 1000 + (uint64_t)pid,
		.binary = "/usr/bin/qemu-system-x86_64",
		.version = "10.0.2",
		.fds = custody_qemu_fds_legacy,
	};
	return qemu_record_to_json(&r);
}

/* A journal as upgrade.c writes it just after migrate was sent. */
static struct json_object *journal_json(void) {
	struct json_object *old = record(100), *target = record(200);
	const struct upgrade_journal j = {
		.time = "2026-11-28T03:14:28.871Z",
		.phase = "transfer",
		.mode = "local-migrate",
		.binary = "/usr/bin/qemu-system-x86_64",
		.from_binary = "/opt/cprd/qemu-system-x86_64-7.2",
		.from_version = "7.2.22",
		.dir = "/run/cprd/vms/g1/upgrade-AbC123",
		.was_running = true,
		.resumed = false,
		.start_mono = 123456789,
		.old = old,
		.target = target,
	};
	struct json_object *o = upgrade_journal_to_json(&j);
	json_object_put(old);
	json_object_put(target);
	return o;
}

START_TEST(test_round_trip) {
	struct json_object *o = journal_json();
	struct json_object *back = json_tokener_parse(json_object_to_json_string(o));
	struct upgrade_journal j;
	char why[256] = "";
	ck_assert_int_eq(upgrade_journal_from_json(back, &j, why, sizeof(why)), 0);
	ck_assert_str_eq(j.time, "2026-11-28T03:14:28.871Z");
	ck_assert_str_eq(j.phase, "transfer");
	ck_assert_str_eq(j.mode, "local-migrate");
	ck_assert_str_eq(j.binary, "/usr/bin/qemu-system-x86_64");
	ck_assert_str_eq(j.from_binary, "/opt/cprd/qemu-system-x86_64-7.2");
	ck_assert_str_eq(j.from_version, "7.2.22");
	ck_assert_str_eq(j.dir, "/run/cprd/vms/g1/upgrade-AbC123");
	ck_assert(j.was_running && !j.resumed);
	ck_assert_uint_eq(j.start_mono, 123456789);
	ck_assert_int_eq(json_object_get_int(json_object_object_get(j.old, "pid")), 100);
	ck_assert_int_eq(json_object_get_int(json_object_object_get(j.target, "pid")), 200);
	upgrade_journal_done(&j);
	json_object_put(back);
	json_object_put(o);
}
END_TEST

/* Written at spawn before the folder or the target existed: neither is there. */
START_TEST(test_optional_parts) {
	struct json_object *o = journal_json();
	struct upgrade_journal j;
	char why[256] = "";
	json_object_object_del(o, "dir");
	json_object_object_del(o, "target");
	json_object_object_del(o, "startMono");
	ck_assert_int_eq(upgrade_journal_from_json(o, &j, why, sizeof(why)), 0);
	ck_assert_ptr_null(j.dir);
	ck_assert_ptr_null(j.target);
	ck_assert_ptr_nonnull(j.old);
	upgrade_journal_done(&j);
	json_object_put(o);
}
END_TEST

#define DELETED ((struct json_object *)-1)

static void refused(const char *key, struct json_object *value, const char *reason) {
	struct json_object *o = journal_json();
	struct upgrade_journal j = {0};
	char why[256] = "";
	if (value == DELETED)
		json_object_object_del(o, key);
	else
		json_object_object_add(o, key, value);
	ck_assert_int_eq(upgrade_journal_from_json(o, &j, why, sizeof(why)), -EBADMSG);
	ck_assert_msg(streq(why, reason), "%s: got \"%s\", want \"%s\"", key, why, reason);
	ck_assert_ptr_null(j.time);
	json_object_put(o);
}

START_TEST(test_corrupt) {
	refused("time", DELETED, "no time");
	refused("phase", json_object_new_int(3), "phase is not a string");
	refused("mode", json_object_new_string("auto"), "mode \"auto\" is not an upgrade mode");
	refused("mode", DELETED, "no mode");
	refused("binary", DELETED, "no binary");
	refused("resumed", DELETED, "resumed is not true or false");
	refused("wasRunning", json_object_new_string("yes"), "wasRunning is not true or false");
	refused("dir", json_object_new_string("upgrade-x"), "dir \"upgrade-x\" is not an absolute path");
	refused("startMono", json_object_new_int(-1), "startMono -1 is out of range");
	struct json_object *bad = record(100);
	json_object_object_del(bad, "pid");
	refused("old", bad, "old: no pid");
	refused("target", json_object_new_string("pid 200"), "target: not a JSON object");
}
END_TEST

START_TEST(test_not_an_object) {
	struct upgrade_journal j;
	char why[256] = "";
	struct json_object *a = json_object_new_array();
	ck_assert_int_eq(upgrade_journal_from_json(a, &j, why, sizeof(why)), -EBADMSG);
	ck_assert_str_eq(why, "not a JSON object");
	json_object_put(a);
}
END_TEST

static Suite *journal_suite(void) {
	Suite *s = suite_create("upgrade-journal");
	TCase *tc = tcase_create("journal");
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_optional_parts);
	tcase_add_test(tc, test_corrupt);
	tcase_add_test(tc, test_not_an_object);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(journal_suite());
}
