/* Check suite for daemon/mode.c and the modes' files: which mode auto picks
 * for each pair of QEMUs (7.2 and 10.0, either way, and an old QEMU nothing
 * is known of), why an explicit mode is refused, and what each mode asks of
 * the QEMUs (the migrate arguments, the mode parameter, x-ignore-shared). */
#include <check.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check-run.h"
#include "cmdline.h"
#include "macro.h"
#include "mode.h"
#include "probe.h"

/* What probes find in QEMU 10.0 and 7.2 (see test_probe.c). */
static const struct probe_result qemu_10 = {
	.major = 10, .micro = 2, .cpr_transfer = true, .x_ignore_shared = true, .aux_ram_share = true};
static const struct probe_result qemu_72 = {.major = 7, .minor = 2, .x_ignore_shared = true};
/* A QEMU without x-ignore-shared (none cprd supports, but a probe may say so). */
static const struct probe_result qemu_bare = {.major = 6};

static const struct mode_ops *pick(const char *name, const struct probe_result *old,
				   const struct probe_result *new, char *why, size_t size) {
	const char *old_version = old == &qemu_10 ? "10.0.2" : old == &qemu_72 ? "7.2.0" : NULL;
	return mode_pick(name, old, old_version, new, why, size);
}

START_TEST(test_auto) {
	char why[512] = "";
	ck_assert_ptr_eq(pick("auto", &qemu_10, &qemu_10, why, sizeof(why)), &mode_cpr_transfer);
	/* 7.2 has no cpr-transfer (and no aux-ram-share): shared RAM it is. */
	ck_assert_ptr_eq(pick("auto", &qemu_72, &qemu_10, why, sizeof(why)), &mode_local_migrate);
	/* Back from 10.0 to 7.2 too. */
	ck_assert_ptr_eq(pick("auto", &qemu_10, &qemu_72, why, sizeof(why)), &mode_local_migrate);
	ck_assert_ptr_eq(pick("auto", &qemu_72, &qemu_72, why, sizeof(why)), &mode_local_migrate);
}
END_TEST

/* cpr-transfer needs aux-ram-share on the QEMU that runs the guest. */
START_TEST(test_auto_old_without_aux_ram_share) {
	struct probe_result old = qemu_10;
	char why[512] = "";
	old.aux_ram_share = false;
	ck_assert_ptr_eq(mode_pick("auto", &old, "10.0.2", &qemu_10, why, sizeof(why)),
			 &mode_local_migrate);
}
END_TEST

/* An older release cannot read a newer one's CPR state (11.1.3 -> 10.0.2
 * fails in the transfer): auto takes local-migrate, and cpr-transfer asked
 * for is refused with both versions named. */
START_TEST(test_cpr_transfer_not_to_older) {
	struct probe_result q111 = qemu_10;
	q111.major = 11, q111.minor = 1, q111.micro = 3;
	char why[512] = "";
	ck_assert_ptr_eq(mode_pick("auto", &q111, "11.1.3", &qemu_10, why, sizeof(why)), &mode_local_migrate);
	ck_assert_ptr_null(mode_pick("cpr-transfer", &q111, "11.1.3", &qemu_10, why, sizeof(why)));
	ck_assert_msg(strstr(why, "older") && strstr(why, "10.0.2") && strstr(why, "11.1.3"), "%s", why);
	/* Up, and within one release (a micro version down), it is fine. */
	ck_assert_ptr_eq(mode_pick("auto", &qemu_10, "10.0.2", &q111, why, sizeof(why)), &mode_cpr_transfer);
	struct probe_result q1110 = q111;
	q1110.micro = 0;
	ck_assert_ptr_eq(mode_pick("cpr-transfer", &q111, "11.1.3", &q1110, why, sizeof(why)),
			 &mode_cpr_transfer);
}
END_TEST

/* What auto tries after a mode that rolled back. */
START_TEST(test_fallback) {
	ck_assert_ptr_eq(mode_fallback(&mode_cpr_transfer, &qemu_10, "10.0.2", &qemu_10), &mode_local_migrate);
	ck_assert_ptr_null(mode_fallback(&mode_local_migrate, &qemu_10, "10.0.2", &qemu_10));
	/* No x-ignore-shared on the target: nothing to fall back to. */
	struct probe_result bare10 = qemu_10;
	bare10.x_ignore_shared = false;
	ck_assert_ptr_null(mode_fallback(&mode_cpr_transfer, &qemu_10, "10.0.2", &bare10));
}
END_TEST

START_TEST(test_auto_none) {
	char why[512] = "";
	ck_assert_ptr_null(pick("auto", &qemu_72, &qemu_bare, why, sizeof(why)));
	ck_assert_str_eq(why, "neither cpr-transfer nor local-migrate is supported by both QEMU "
			      "7.2.0 and QEMU 6.0.0");
	/* Nothing known of the old QEMU: nothing can be promised. */
	ck_assert_ptr_null(mode_pick("auto", NULL, "10.0.2", &qemu_10, why, sizeof(why)));
}
END_TEST

START_TEST(test_explicit) {
	char why[512] = "";
	ck_assert_ptr_eq(pick("local-migrate", &qemu_10, &qemu_10, why, sizeof(why)),
			 &mode_local_migrate);
	ck_assert_ptr_eq(pick("cpr-transfer", &qemu_10, &qemu_10, why, sizeof(why)),
			 &mode_cpr_transfer);
	ck_assert_ptr_null(pick("cpr-transfer", &qemu_72, &qemu_10, why, sizeof(why)));
	ck_assert_str_eq(why, "cpr-transfer needs QEMU 10.0 or later on both sides; the guest runs "
			      "on QEMU 7.2.0 and the target is QEMU 10.0.2 (use --mode local-migrate "
			      "or auto)");
	ck_assert_ptr_null(pick("local-migrate", &qemu_72, &qemu_bare, why, sizeof(why)));
	ck_assert_str_eq(why, "local-migrate needs the x-ignore-shared capability on both QEMUs");
}
END_TEST

START_TEST(test_find) {
	ck_assert_ptr_eq(mode_find("cpr-transfer"), &mode_cpr_transfer);
	ck_assert_ptr_eq(mode_find("local-migrate"), &mode_local_migrate);
	ck_assert_ptr_null(mode_find("auto"));
	ck_assert_ptr_eq(mode_find("cpr-exec"), &mode_cpr_exec);
	ck_assert_ptr_null(mode_find(NULL));
}
END_TEST

/* m's migrate arguments for the main channel (or file) at main_path, as
 * plain JSON. */
static void assert_migrate_args(const struct mode_ops *m, const char *main_path, const char *want) {
	struct json_object *a = m->migrate_args(main_path, "/d/cpr.sock");
	ck_assert_str_eq(json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN), want);
	json_object_put(a);
}

START_TEST(test_cpr_transfer_ops) {
	const struct mode_ops *m = &mode_cpr_transfer;
	ck_assert_int_eq(m->incoming, CMDLINE_INCOMING_CPR_TRANSFER);
	ck_assert_str_eq(m->qmp_mode, "cpr-transfer");
	ck_assert(!m->ignore_shared);
	assert_migrate_args(m, "/d/main.sock",
			    "{\"channels\":[{\"channel-type\":\"main\",\"addr\":{\"transport\":\"socket\","
			    "\"type\":\"unix\",\"path\":\"\\/d\\/main.sock\"}},{\"channel-type\":\"cpr\","
			    "\"addr\":{\"transport\":\"socket\",\"type\":\"unix\",\"path\":"
			    "\"\\/d\\/cpr.sock\"}}]}");
}
END_TEST

/* What probes of QEMU 11.1 find: cpr-exec (>= 10.2) beside cpr-transfer. */
static struct probe_result qemu_111(void) {
	struct probe_result q = qemu_10;
	q.major = 11, q.minor = 1, q.micro = 3;
	q.cpr_exec = true;
	return q;
}

/* cpr-exec: only by name, only with QEMU >= 10.2 on both sides, and not
 * to an older release. */
START_TEST(test_cpr_exec_usable) {
	struct probe_result q111 = qemu_111();
	char why[512] = "";
	ck_assert_ptr_eq(mode_pick("cpr-exec", &q111, "11.1.3", &q111, why, sizeof(why)), &mode_cpr_exec);
	ck_assert_ptr_null(mode_pick("cpr-exec", &qemu_10, "10.0.2", &q111, why, sizeof(why)));
	ck_assert_msg(strstr(why, "10.2") && strstr(why, "10.0.2") && strstr(why, "11.1.3"), "%s", why);
	ck_assert_ptr_null(mode_pick("cpr-exec", &q111, "11.1.3", &qemu_10, why, sizeof(why)));
	struct probe_result q102 = q111;
	q102.major = 10, q102.minor = 2, q102.micro = 0;
	ck_assert_ptr_null(mode_pick("cpr-exec", &q111, "11.1.3", &q102, why, sizeof(why)));
	ck_assert_msg(strstr(why, "older"), "%s", why);
	ck_assert_ptr_eq(mode_pick("cpr-exec", &q102, "10.2.0", &q111, why, sizeof(why)), &mode_cpr_exec);
	/* aux-ram-share on the QEMU that runs the guest, as for cpr-transfer. */
	struct probe_result noaux = q111;
	noaux.aux_ram_share = false;
	ck_assert_ptr_null(mode_pick("cpr-exec", &noaux, "11.1.3", &q111, why, sizeof(why)));
}
END_TEST

START_TEST(test_auto_never_cpr_exec) {
	struct probe_result q111 = qemu_111();
	char why[512] = "";
	ck_assert_ptr_eq(mode_pick("auto", &q111, "11.1.3", &q111, why, sizeof(why)), &mode_cpr_transfer);
	/* Without cpr-transfer and x-ignore-shared, cpr-exec would be the only
	 * usable mode: auto still refuses, and does not name it. */
	struct probe_result only_exec = q111;
	only_exec.cpr_transfer = only_exec.x_ignore_shared = false;
	ck_assert_ptr_null(mode_pick("auto", &only_exec, "11.1.3", &only_exec, why, sizeof(why)));
	ck_assert_msg(!strstr(why, "cpr-exec"), "%s", why);
	ck_assert_ptr_eq(mode_pick("cpr-exec", &only_exec, "11.1.3", &only_exec, why, sizeof(why)),
			 &mode_cpr_exec);
	/* Nor is it what auto falls back to. */
	ck_assert_ptr_eq(mode_fallback(&mode_cpr_transfer, &q111, "11.1.3", &q111), &mode_local_migrate);
	ck_assert_ptr_null(mode_fallback(&mode_local_migrate, &q111, "11.1.3", &q111));
	ck_assert(mode_cpr_exec.by_name_only);
	ck_assert(!mode_cpr_transfer.by_name_only && !mode_local_migrate.by_name_only);
}
END_TEST

START_TEST(test_cpr_exec_ops) {
	const struct mode_ops *m = &mode_cpr_exec;
	ck_assert_int_eq(m->incoming, CMDLINE_INCOMING_FILE);
	ck_assert_str_eq(m->qmp_mode, "cpr-exec");
	ck_assert(!m->ignore_shared);
	ck_assert(m->in_place && m->needs_exec);
	ck_assert(!mode_cpr_transfer.in_place && !mode_local_migrate.in_place);
	ck_assert(!mode_cpr_transfer.needs_exec && !mode_local_migrate.needs_exec);
	assert_migrate_args(m, "/d/vm.state", "{\"uri\":\"file:\\/d\\/vm.state\"}");
}
END_TEST

START_TEST(test_local_migrate_ops) {
	const struct mode_ops *m = &mode_local_migrate;
	ck_assert_int_eq(m->incoming, CMDLINE_INCOMING_DEFER);
	ck_assert_ptr_null(m->qmp_mode);
	ck_assert(m->ignore_shared);
	assert_migrate_args(m, "/d/main.sock", "{\"uri\":\"unix:\\/d\\/main.sock\"}");
}
END_TEST

static Suite *mode_suite(void) {
	Suite *s = suite_create("mode");
	TCase *tc = tcase_create("pick");
	tcase_add_test(tc, test_auto);
	tcase_add_test(tc, test_auto_old_without_aux_ram_share);
	tcase_add_test(tc, test_auto_none);
	tcase_add_test(tc, test_cpr_transfer_not_to_older);
	tcase_add_test(tc, test_fallback);
	tcase_add_test(tc, test_explicit);
	tcase_add_test(tc, test_find);
	suite_add_tcase(s, tc);
	tc = tcase_create("ops");
	tcase_add_test(tc, test_cpr_transfer_ops);
	tcase_add_test(tc, test_local_migrate_ops);
	tcase_add_test(tc, test_cpr_exec_usable);
	tcase_add_test(tc, test_auto_never_cpr_exec);
	tcase_add_test(tc, test_cpr_exec_ops);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(mode_suite());
}
