/* Check suite for daemon/mode.c and the modes' files: which mode auto picks
 * for each pair of QEMUs (7.2 and 10.0, either way, and an old QEMU nothing
 * is known of), why an explicit mode is refused, what each mode asks of
 * the QEMUs (the migrate arguments, the mode parameter, x-ignore-shared),
 * and which modes carry assigned devices (releases, TCG and interrupts). */
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
	return mode_pick(name, NULL, old, old_version, new, why, size);
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
	ck_assert_ptr_eq(mode_pick("auto", NULL, &old, "10.0.2", &qemu_10, why, sizeof(why)),
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
	ck_assert_ptr_eq(mode_pick("auto", NULL, &q111, "11.1.3", &qemu_10, why, sizeof(why)), &mode_local_migrate);
	ck_assert_ptr_null(mode_pick("cpr-transfer", NULL, &q111, "11.1.3", &qemu_10, why, sizeof(why)));
	ck_assert_msg(strstr(why, "older") && strstr(why, "10.0.2") && strstr(why, "11.1.3"), "%s", why);
	/* Up, and within one release (a micro version down), it is fine. */
	ck_assert_ptr_eq(mode_pick("auto", NULL, &qemu_10, "10.0.2", &q111, why, sizeof(why)), &mode_cpr_transfer);
	struct probe_result q1110 = q111;
	q1110.micro = 0;
	ck_assert_ptr_eq(mode_pick("cpr-transfer", NULL, &q111, "11.1.3", &q1110, why, sizeof(why)),
			 &mode_cpr_transfer);
}
END_TEST

/* What auto tries after a mode that rolled back. */
START_TEST(test_fallback) {
	ck_assert_ptr_eq(mode_fallback(&mode_cpr_transfer, NULL, &qemu_10, "10.0.2", &qemu_10), &mode_local_migrate);
	ck_assert_ptr_null(mode_fallback(&mode_local_migrate, NULL, &qemu_10, "10.0.2", &qemu_10));
	/* No x-ignore-shared on the target: nothing to fall back to. */
	struct probe_result bare10 = qemu_10;
	bare10.x_ignore_shared = false;
	ck_assert_ptr_null(mode_fallback(&mode_cpr_transfer, NULL, &qemu_10, "10.0.2", &bare10));
}
END_TEST

START_TEST(test_auto_none) {
	char why[512] = "";
	ck_assert_ptr_null(pick("auto", &qemu_72, &qemu_bare, why, sizeof(why)));
	ck_assert_str_eq(why, "neither cpr-transfer nor local-migrate is supported by both QEMU "
			      "7.2.0 and QEMU 6.0.0");
	/* Nothing known of the old QEMU: nothing can be promised. */
	ck_assert_ptr_null(mode_pick("auto", NULL, NULL, "10.0.2", &qemu_10, why, sizeof(why)));
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
	ck_assert_ptr_eq(mode_pick("cpr-exec", NULL, &q111, "11.1.3", &q111, why, sizeof(why)), &mode_cpr_exec);
	ck_assert_ptr_null(mode_pick("cpr-exec", NULL, &qemu_10, "10.0.2", &q111, why, sizeof(why)));
	ck_assert_msg(strstr(why, "10.2") && strstr(why, "10.0.2") && strstr(why, "11.1.3"), "%s", why);
	ck_assert_ptr_null(mode_pick("cpr-exec", NULL, &q111, "11.1.3", &qemu_10, why, sizeof(why)));
	struct probe_result q102 = q111;
	q102.major = 10, q102.minor = 2, q102.micro = 0;
	ck_assert_ptr_null(mode_pick("cpr-exec", NULL, &q111, "11.1.3", &q102, why, sizeof(why)));
	ck_assert_msg(strstr(why, "older"), "%s", why);
	ck_assert_ptr_eq(mode_pick("cpr-exec", NULL, &q102, "10.2.0", &q111, why, sizeof(why)), &mode_cpr_exec);
	/* aux-ram-share on the QEMU that runs the guest, as for cpr-transfer. */
	struct probe_result noaux = q111;
	noaux.aux_ram_share = false;
	ck_assert_ptr_null(mode_pick("cpr-exec", NULL, &noaux, "11.1.3", &q111, why, sizeof(why)));
}
END_TEST

START_TEST(test_auto_never_cpr_exec) {
	struct probe_result q111 = qemu_111();
	char why[512] = "";
	ck_assert_ptr_eq(mode_pick("auto", NULL, &q111, "11.1.3", &q111, why, sizeof(why)), &mode_cpr_transfer);
	/* Without cpr-transfer and x-ignore-shared, cpr-exec would be the only
	 * usable mode: auto still refuses, and does not name it. */
	struct probe_result only_exec = q111;
	only_exec.cpr_transfer = only_exec.x_ignore_shared = false;
	ck_assert_ptr_null(mode_pick("auto", NULL, &only_exec, "11.1.3", &only_exec, why, sizeof(why)));
	ck_assert_msg(!strstr(why, "cpr-exec"), "%s", why);
	ck_assert_ptr_eq(mode_pick("cpr-exec", NULL, &only_exec, "11.1.3", &only_exec, why, sizeof(why)),
			 &mode_cpr_exec);
	/* Nor is it what auto falls back to. */
	ck_assert_ptr_eq(mode_fallback(&mode_cpr_transfer, NULL, &q111, "11.1.3", &q111), &mode_local_migrate);
	ck_assert_ptr_null(mode_fallback(&mode_local_migrate, NULL, &q111, "11.1.3", &q111));
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

/* A guest with one device assigned: under KVM, or under TCG with a device
 * that has an interrupt pin (edu) or none (pci-testdev). */
static const struct mode_guest dev_kvm = {.n_devices = 1};
static const struct mode_guest dev_tcg_quiet = {.n_devices = 1, .tcg = true};
static const struct mode_guest dev_tcg_intx = {
	.n_devices = 1, .tcg = true, .irq_device = "0000:00:03.0", .irq_what = "an interrupt pin (INTx)"};

static struct probe_result qemu_at(unsigned major, unsigned minor) {
	struct probe_result q = qemu_10;
	q.major = major, q.minor = minor, q.micro = 0;
	q.cpr_exec = major > 10 || (major == 10 && minor >= 2);
	return q;
}

/* With devices: cpr-transfer from 10.1 on both sides, which auto picks;
 * never local-migrate, nor a fallback to it. */
START_TEST(test_devices_cpr_transfer) {
	struct probe_result q100 = qemu_at(10, 0), q101 = qemu_at(10, 1), q111 = qemu_at(11, 1);
	char why[512] = "";
	ck_assert_ptr_eq(mode_pick("auto", &dev_kvm, &q101, "10.1.0", &q111, why, sizeof(why)),
			 &mode_cpr_transfer);
	ck_assert_ptr_eq(mode_pick("cpr-transfer", &dev_tcg_quiet, &q111, "11.1.0", &q111, why,
				   sizeof(why)),
			 &mode_cpr_transfer);
	/* 10.0 has cpr-transfer but not for devices, on either side. */
	ck_assert_ptr_null(mode_pick("cpr-transfer", &dev_kvm, &q100, "10.0.0", &q111, why, sizeof(why)));
	ck_assert_str_eq(why, "cpr-transfer carries assigned devices (VFIO) only with QEMU 10.1 or later "
			      "on both sides; the guest runs on QEMU 10.0.0 and the target is QEMU 11.1.0");
	ck_assert_ptr_null(mode_pick("cpr-transfer", &dev_kvm, &q111, "11.1.0", &q100, why, sizeof(why)));
	/* auto finds nothing and says why cpr-transfer cannot, not local-migrate. */
	ck_assert_ptr_null(mode_pick("auto", &dev_kvm, &q100, "10.0.0", &q100, why, sizeof(why)));
	ck_assert_msg(strstr(why, "cpr-transfer carries assigned devices") && strstr(why, "10.1"),
		      "%s", why);
	/* The same pair without devices is cpr-transfer's. */
	ck_assert_ptr_eq(mode_pick("auto", NULL, &q100, "10.0.0", &q100, why, sizeof(why)),
			 &mode_cpr_transfer);
	const struct mode_guest none = {.tcg = true};
	ck_assert_ptr_eq(mode_pick("auto", &none, &q100, "10.0.0", &q100, why, sizeof(why)),
			 &mode_cpr_transfer);

	ck_assert_ptr_null(mode_pick("local-migrate", &dev_kvm, &q111, "11.1.0", &q111, why, sizeof(why)));
	ck_assert_str_eq(why, "local-migrate cannot move a guest with assigned devices (VFIO): QEMU does "
			      "not migrate their state; use cpr-transfer");
	ck_assert_ptr_null(mode_fallback(&mode_cpr_transfer, &dev_kvm, &q111, "11.1.0", &q111));
	ck_assert_ptr_eq(mode_fallback(&mode_cpr_transfer, NULL, &q111, "11.1.0", &q111),
			 &mode_local_migrate);
}
END_TEST

/* cpr-exec carries devices too (QEMU registers its VFIO CPR for both
 * modes, from cpr-exec's first release, 10.2). */
START_TEST(test_devices_cpr_exec) {
	struct probe_result q102 = qemu_at(10, 2), q111 = qemu_at(11, 1);
	char why[512] = "";
	ck_assert_ptr_eq(mode_pick("cpr-exec", &dev_kvm, &q102, "10.2.0", &q111, why, sizeof(why)),
			 &mode_cpr_exec);
	ck_assert_ptr_eq(mode_pick("cpr-exec", &dev_tcg_quiet, &q111, "11.1.0", &q111, why, sizeof(why)),
			 &mode_cpr_exec);
	ck_assert_str_eq(mode_cpr_exec.devices_since, "10.2");
	ck_assert_str_eq(mode_cpr_transfer.devices_since, "10.1");
	ck_assert_ptr_null(mode_local_migrate.devices_since);
}
END_TEST

/* Under TCG, a device that can interrupt makes QEMU's VFIO CPR crash the
 * old QEMU: both CPR modes are refused, naming the device and why; KVM is
 * fine. */
START_TEST(test_devices_tcg_interrupts) {
	struct probe_result q111 = qemu_at(11, 1);
	char why[512] = "";
	static const char *const cpr[] = {"cpr-transfer", "cpr-exec", "auto"};
	for (size_t i = 0; i < ELEMENTSOF(cpr); i++) {
		ck_assert_ptr_null(mode_pick(cpr[i], &dev_tcg_intx, &q111, "11.1.0", &q111, why, sizeof(why)));
		ck_assert_msg(strstr(why, "needs KVM") && strstr(why, "0000:00:03.0 has an interrupt pin (INTx)") &&
				      strstr(why, "KVM irqfds") && strstr(why, "accel kvm"),
			      "%s", why);
	}
	ck_assert_ptr_null(mode_fallback(&mode_cpr_transfer, &dev_tcg_intx, &q111, "11.1.0", &q111));
	struct mode_guest kvm_intx = dev_tcg_intx;
	kvm_intx.tcg = false;
	ck_assert_ptr_eq(mode_pick("auto", &kvm_intx, &q111, "11.1.0", &q111, why, sizeof(why)),
			 &mode_cpr_transfer);
	ck_assert_ptr_eq(mode_pick("cpr-exec", &kvm_intx, &q111, "11.1.0", &q111, why, sizeof(why)),
			 &mode_cpr_exec);
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
	tc = tcase_create("devices");
	tcase_add_test(tc, test_devices_cpr_transfer);
	tcase_add_test(tc, test_devices_cpr_exec);
	tcase_add_test(tc, test_devices_tcg_interrupts);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(mode_suite());
}
