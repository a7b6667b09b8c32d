/* Check suite for daemon/qemu-record.c: a QEMU's record goes into qemu.json
 * and comes back the same; a record missing a field, with a field of the
 * wrong type or out of range, or with a path cprd would not have written is
 * refused with a reason that names the field. The numbers QEMU has the held
 * fds at are part of it; a record without them means the fixed old ones. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check-run.h"
#include "macro.h"
#include "qemu-record.h"

static struct qemu_record sample(void) {
	return (struct qemu_record){
		.pid = 4242,
		.starttime = 987654321,
		.binary = "/usr/bin/qemu-system-x86_64",
		.dev = 2049,
		.ino = 131077,
		.mtime = {.tv_sec = 1760000000, .tv_nsec = 123456789},
		.version = "10.0.2",
		.qmp_path = "/run/cprd/vms/g1/qmp-1a2b.sock",
		.cpr_transfer = true,
		.cpr_exec = true,
		.x_ignore_shared = true,
		.aux_ram_share = true,
		.has_modes = true,
	};
}

/* Not the numbers cprd hands out today: the record's own. */
static struct qemu_record sample_with_fds(void) {
	struct qemu_record r = sample();
	r.fds = custody_qemu_fds_legacy;
	r.fds.n[CUSTODY_RAM] = 8;
	r.fds.n[CUSTODY_CONSOLE] = -1;
	r.fds.n[CUSTODY_CONSOLE_QEMU] = 9;
	r.fds.n[CUSTODY_TAP0] = 10;
	return r;
}

START_TEST(test_round_trip) {
	struct qemu_record in = sample_with_fds(), out;
	char why[256] = "";
	struct json_object *o = qemu_record_to_json(&in);
	/* Through text, as through the file. */
	struct json_object *back = json_tokener_parse(json_object_to_json_string(o));
	ck_assert_int_eq(qemu_record_from_json(back, &out, why, sizeof(why)), 0);
	ck_assert_int_eq(out.pid, in.pid);
	ck_assert_uint_eq(out.starttime, in.starttime);
	ck_assert_str_eq(out.binary, in.binary);
	ck_assert_uint_eq(out.dev, in.dev);
	ck_assert_uint_eq(out.ino, in.ino);
	ck_assert_int_eq(out.mtime.tv_sec, in.mtime.tv_sec);
	ck_assert_int_eq(out.mtime.tv_nsec, in.mtime.tv_nsec);
	ck_assert_str_eq(out.version, in.version);
	ck_assert_str_eq(out.qmp_path, in.qmp_path);
	ck_assert(out.cpr_transfer && out.cpr_exec && out.x_ignore_shared && out.aux_ram_share &&
		  out.has_modes);
	/* Those no QEMU is given (VFIO copies) have no number, whatever the
	 * zeroed sample says. */
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		ck_assert_int_eq(out.fds.n[i], custody_fds[i].to_qemu ? in.fds.n[i] : -1);
	qemu_record_done(&out);
	json_object_put(back);
	json_object_put(o);
}
END_TEST

/* What a QEMU 7.2 without a recovery monitor leaves: no qmpPath, flags off;
 * and what an older cprd wrote: no fds. */
START_TEST(test_optional_fields) {
	struct qemu_record in = sample_with_fds(), out;
	char why[256] = "";
	in.qmp_path = NULL;
	in.version = NULL;
	in.cpr_transfer = in.aux_ram_share = in.has_modes = false;
	struct json_object *o = qemu_record_to_json(&in);
	ck_assert(!json_object_object_get_ex(o, "qmpPath", NULL));
	json_object_object_del(o, "hasModes");
	/* A QEMU started before the numbers were recorded had the fixed ones. */
	json_object_object_del(o, "fds");
	ck_assert_int_eq(qemu_record_from_json(o, &out, why, sizeof(why)), 0);
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		ck_assert_int_eq(out.fds.n[i], custody_qemu_fds_legacy.n[i]);
	ck_assert_ptr_null(out.qmp_path);
	ck_assert_str_eq(out.version, "unknown");
	ck_assert(!out.cpr_transfer && out.x_ignore_shared && !out.has_modes);
	qemu_record_done(&out);
	json_object_put(o);
}
END_TEST

/* Each corruption, applied to a good record, and the reason it must give. */
static void refused(const char *key, struct json_object *value, const char *reason) {
	struct qemu_record in = sample_with_fds(), out = {0};
	char why[256] = "";
	struct json_object *o = qemu_record_to_json(&in);
	if (value == (struct json_object *)-1)
		json_object_object_del(o, key);
	else
		json_object_object_add(o, key, value);
	ck_assert_int_eq(qemu_record_from_json(o, &out, why, sizeof(why)), -EBADMSG);
	ck_assert_msg(streq(why, reason), "%s: got \"%s\", want \"%s\"", key, why, reason);
	ck_assert_ptr_null(out.binary);
	json_object_put(o);
}

#define DELETED ((struct json_object *)-1)

START_TEST(test_corrupt) {
	refused("pid", DELETED, "no pid");
	refused("pid", json_object_new_int(0), "pid 0 is out of range");
	refused("pid", json_object_new_int(-7), "pid -7 is out of range");
	refused("pid", json_object_new_string("4242"), "pid is not a number");
	refused("starttime", DELETED, "no starttime");
	refused("starttime", json_object_new_int(0), "starttime 0 is out of range");
	refused("mtimeNsec", json_object_new_int64(1000000000), "mtimeNsec 1000000000 is out of range");
	refused("ino", json_object_new_double(1.5), "ino is not a number");
	refused("binary", DELETED, "no binary");
	refused("binary", json_object_new_int(1), "binary is not a string");
	refused("binary", json_object_new_string("qemu"), "binary \"qemu\" is not an absolute path");
	refused("version", json_object_new_boolean(true), "version is not a string");
	refused("qmpPath", json_object_new_string("qmp.sock"),
		"qmpPath \"qmp.sock\" is not an absolute socket path");
	char long_path[200];
	memset(long_path, 'a', sizeof(long_path) - 1);
	long_path[0] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	char reason[300];
	snprintf(reason, sizeof(reason), "qmpPath \"%s\" is not an absolute socket path", long_path);
	refused("qmpPath", json_object_new_string(long_path), reason);
	refused("cprTransfer", json_object_new_string("yes"), "cprTransfer is not true or false");
	refused("cprExec", json_object_new_int(1), "cprExec is not true or false");
	refused("fds", json_object_new_int(5), "fds is not an object");
	refused("fds", json_tokener_parse("{\"ram0\":5,\"qmp\":5}"),
		"fds gives ram0 and qmp the same number 5");
	refused("fds", json_tokener_parse("{\"tape\":5}"), "fds names \"tape\", which is no held fd");
}
END_TEST

START_TEST(test_not_an_object) {
	struct qemu_record out;
	char why[256] = "";
	struct json_object *a = json_object_new_array();
	ck_assert_int_eq(qemu_record_from_json(a, &out, why, sizeof(why)), -EBADMSG);
	ck_assert_str_eq(why, "not a JSON object");
	ck_assert_int_eq(qemu_record_from_json(NULL, &out, why, sizeof(why)), -EBADMSG);
	json_object_put(a);
}
END_TEST

static Suite *qemu_record_suite(void) {
	Suite *s = suite_create("qemu-record");
	TCase *tc = tcase_create("record");
	tcase_add_test(tc, test_round_trip);
	tcase_add_test(tc, test_optional_fields);
	tcase_add_test(tc, test_corrupt);
	tcase_add_test(tc, test_not_an_object);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(qemu_record_suite());
}
