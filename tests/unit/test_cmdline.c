/* Check suite for daemon/cmdline.c: the whole command line of a start, then
 * what each spec field, each probe result (QEMU 7.2 against 10.0), the
 * accelerator, the recovery monitor, assigned devices and each upgrade
 * mode's incoming arguments change in it, and that huge pages change nothing there (they
 * are a property of the memfd cprd holds). */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check-run.h"
#include "cmdline.h"
#include "custody.h"
#include "macro.h"
#include "probe.h"
#include "spec.h"
#include "util.h"

static struct spec_disk disks[] = {
	{.path = "/var/lib/cprd/root.img", .format = "raw", .readonly = true},
	{.path = "/var/lib/cprd/data.qcow2", .format = "qcow2", .readonly = false},
};

static struct vm_spec spec;
/* What probes of the two QEMUs the tests use find. */
static const struct probe_result qemu_10 = {
	.major = 10, .cpr_transfer = true, .x_ignore_shared = true, .aux_ram_share = true};
static const struct probe_result qemu_72 = {.major = 7, .minor = 2, .x_ignore_shared = true};

static void setup(void) {
	spec = (struct vm_spec){
		.name = "g1",
		.memory_mib = 256,
		.cpus = 2,
		.machine = "pc-i440fx-10.0",
		.qemu = "/usr/bin/qemu-system-x86_64",
		.accel = "auto",
	};
}

static struct cmdline base(void) {
	return (struct cmdline){
		.binary = "/usr/bin/qemu-system-x86_64",
		.spec = &spec,
		.probe = &qemu_10,
		.accel = "tcg",
		.fds = &custody_qemu_fds_legacy,
	};
}

/* The argv joined with single spaces, for comparing and for messages. */
static char *build(const struct cmdline *c) {
	char **argv = NULL;
	ck_assert_int_eq(cmdline_build(c, &argv), 0);
	ck_assert_ptr_nonnull(argv);
	size_t len = 1;
	for (char **a = argv; *a; a++)
		len += strlen(*a) + 1;
	char *s = calloc(1, len);
	ck_assert_ptr_nonnull(s);
	for (char **a = argv; *a; a++) {
		if (a != argv)
			strcat(s, " ");
		strcat(s, *a);
	}
	strv_free(argv);
	return s;
}

static bool has(const char *argv, const char *part) {
	return strstr(argv, part) != NULL;
}

START_TEST(test_start_whole) {
	struct cmdline c = base();
	_cleanup_free_ char *argv = build(&c);
	ck_assert_str_eq(
		argv,
		"/usr/bin/qemu-system-x86_64 -name guest=g1,debug-threads=on -nodefaults "
		"-no-user-config -display none -msg timestamp=on -sandbox "
		"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -S "
		"-machine pc-i440fx-10.0,memory-backend=ram0,aux-ram-share=on -accel tcg -m 256M "
		"-smp 2 -object "
		"memory-backend-file,id=ram0,size=256M,share=on,mem-path=/proc/self/fd/5 "
		"-chardev socket,id=qmp,fd=3 -mon chardev=qmp,mode=control "
		"-chardev socket,id=console,fd=4 -serial chardev:console -nic none");
}
END_TEST

/* aux-ram-share only where the probe found it (QEMU >= 10.0): 7.2 would
 * refuse the property, and nothing known means nothing claimed. */
START_TEST(test_probe_results) {
	struct cmdline c = base();
	c.probe = &qemu_72;
	spec.machine = "pc-i440fx-7.2";
	_cleanup_free_ char *on_72 = build(&c);
	ck_assert_msg(has(on_72, " -machine pc-i440fx-7.2,memory-backend=ram0 "), "%s", on_72);
	ck_assert(!has(on_72, "aux-ram-share"));

	c.probe = NULL;
	_cleanup_free_ char *unknown = build(&c);
	ck_assert(!has(unknown, "aux-ram-share"));

	c.probe = &qemu_10;
	spec.machine = "pc-q35-10.0";
	_cleanup_free_ char *on_10 = build(&c);
	ck_assert_msg(has(on_10, " -machine pc-q35-10.0,memory-backend=ram0,aux-ram-share=on "),
		      "%s", on_10);
}
END_TEST

START_TEST(test_spec_fields) {
	struct cmdline c = base();
	spec.name = "db-7";
	spec.memory_mib = 4096;
	spec.cpus = 16;
	_cleanup_free_ char *argv = build(&c);
	ck_assert_msg(has(argv, " -name guest=db-7,debug-threads=on "), "%s", argv);
	ck_assert_msg(has(argv, " -m 4096M -smp 16 "), "%s", argv);
	ck_assert_msg(has(argv, "size=4096M,share=on,mem-path=/proc/self/fd/5 "), "%s", argv);

	c.accel = "kvm";
	_cleanup_free_ char *kvm = build(&c);
	ck_assert_msg(has(kvm, " -accel kvm "), "%s", kvm);
}
END_TEST

/* virtio-blk, one index each, in the spec's order; readonly where asked. */
START_TEST(test_disks) {
	struct cmdline c = base();
	spec.disks = disks;
	spec.n_disks = ELEMENTSOF(disks);
	_cleanup_free_ char *argv = build(&c);
	const char *want = " -nic none -drive "
			   "file=/var/lib/cprd/root.img,format=raw,if=virtio,index=0,media=disk,"
			   "readonly=on -drive "
			   "file=/var/lib/cprd/data.qcow2,format=qcow2,if=virtio,index=1,media=disk";
	ck_assert_msg(has(argv, want), "%s", argv);
	ck_assert_msg(strcmp(argv + strlen(argv) - strlen("media=disk"), "media=disk") == 0, "%s",
		      argv);
}
END_TEST

/* Huge pages are the memfd's business (MFD_HUGETLB): QEMU maps it through
 * the same path either way. */
START_TEST(test_hugepages) {
	struct cmdline c = base();
	_cleanup_free_ char *plain = build(&c);
	spec.hugepages = true;
	_cleanup_free_ char *huge = build(&c);
	ck_assert_str_eq(plain, huge);
}
END_TEST

START_TEST(test_recovery_monitor) {
	struct cmdline c = base();
	c.qmp_path = "/run/cprd/vms/g1/qmp-1a2b.sock";
	_cleanup_free_ char *argv = build(&c);
	ck_assert_msg(has(argv, " -chardev socket,id=console,fd=4 -serial chardev:console "
				"-chardev socket,id=qmp-recovery,path=/run/cprd/vms/g1/qmp-1a2b.sock,"
				"server=on,wait=off -mon chardev=qmp-recovery,mode=control -nic none"),
		      "%s", argv);
}
END_TEST

/* Each held fd is named at the number custody handed out for this QEMU,
 * whatever it is; the console's spare copy (cprd's end) is named nowhere. */
START_TEST(test_fd_numbers) {
	struct cmdline c = base();
	struct custody_qemu_fds at = {.n = {
		[CUSTODY_QMP] = 7, [CUSTODY_CONSOLE_QEMU] = 12, [CUSTODY_RAM] = 9, [CUSTODY_CONSOLE] = 30}};
	c.fds = &at;
	_cleanup_free_ char *argv = build(&c);
	ck_assert_msg(has(argv, "share=on,mem-path=/proc/self/fd/9 -chardev socket,id=qmp,fd=7 -mon "
				"chardev=qmp,mode=control -chardev socket,id=console,fd=12 -serial "
				"chardev:console "),
		      "%s", argv);
	ck_assert_msg(!has(argv, "30"), "%s", argv);
}
END_TEST

/* Each NIC: a tap netdev at its held fd's number and a virtio-net device
 * with its MAC, ids by index (the same on both sides of an upgrade), no
 * option ROM. No NIC: no netdev at all. */
START_TEST(test_nics) {
	struct cmdline c = base();
	_cleanup_free_ char *none = build(&c);
	ck_assert_msg(!has(none, "-netdev"), "%s", none);

	struct spec_nic nics[] = {
		{.bridge = "br0", .mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56}},
		{.bridge = "br1", .mac = {0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}},
	};
	spec.nics = nics;
	spec.n_nics = ELEMENTSOF(nics);
	struct custody_qemu_fds at = custody_qemu_fds_legacy;
	at.n[CUSTODY_TAP0] = 7;
	at.n[CUSTODY_TAP0 + 1] = 8;
	c.fds = &at;
	_cleanup_free_ char *argv = build(&c);
	ck_assert_msg(has(argv, " -netdev tap,id=net0,fd=7 -device "
				"virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,id=nic0,romfile= "
				"-netdev tap,id=net1,fd=8 -device "
				"virtio-net-pci,netdev=net1,mac=52:54:00:ab:cd:ef,id=nic1,romfile= "),
		      "%s", argv);
}
END_TEST

/* A target gets the start's command line with -incoming (tail) at the end
 * instead of -S: the same hardware. Both strings are changed. */
static void assert_start_with_tail(char *start, char *target, const char *tail) {
	ck_assert_msg(strlen(target) > strlen(tail) &&
			      streq(target + strlen(target) - strlen(tail), tail),
		      "%s", target);
	char *s = strstr(start, " -S ");
	ck_assert_ptr_nonnull(s);
	memmove(s, s + 3, strlen(s + 3) + 1);
	target[strlen(target) - strlen(tail)] = '\0';
	ck_assert_str_eq(start, target);
}

START_TEST(test_incoming_cpr_transfer) {
	struct cmdline c = base();
	_cleanup_free_ char *start = build(&c);
	c.incoming = &(struct cmdline_incoming){
		.kind = CMDLINE_INCOMING_CPR_TRANSFER,
		.main_path = "/run/cprd/vms/g1/upgrade-x/main.sock",
		.cpr_path = "/run/cprd/vms/g1/upgrade-x/cpr.sock",
	};
	_cleanup_free_ char *target = build(&c);
	const char *tail = " -incoming unix:/run/cprd/vms/g1/upgrade-x/main.sock -incoming "
			   "{\"channel-type\":\"cpr\",\"addr\":{\"transport\":\"socket\",\"type\":"
			   "\"unix\",\"path\":\"/run/cprd/vms/g1/upgrade-x/cpr.sock\"}}";
	assert_start_with_tail(start, target, tail);
}
END_TEST

START_TEST(test_incoming_local_migrate) {
	struct cmdline c = base();
	c.probe = &qemu_72;
	spec.machine = "pc-i440fx-7.2";
	c.incoming = &(struct cmdline_incoming){.kind = CMDLINE_INCOMING_DEFER};
	_cleanup_free_ char *argv = build(&c);
	ck_assert_msg(!has(argv, " -S "), "%s", argv);
	/* Once, at the end. */
	ck_assert_msg(strstr(argv, " -incoming") == argv + strlen(argv) - strlen(" -incoming defer") &&
			      streq(argv + strlen(argv) - strlen(" -incoming defer"), " -incoming defer"),
		      "%s", argv);
}
END_TEST

/* QEMU may exec only when the spec opts in (cpr-exec needs it). */
START_TEST(test_allow_exec) {
	struct cmdline c = base();
	_cleanup_free_ char *deny = build(&c);
	ck_assert_msg(has(deny, " -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,"
				"resourcecontrol=deny "), "%s", deny);
	spec.allow_exec = true;
	_cleanup_free_ char *allow = build(&c);
	ck_assert_msg(has(allow, " -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=allow,"
				 "resourcecontrol=deny "), "%s", allow);
	ck_assert(!has(allow, "spawn=deny"));
}
END_TEST

/* cpr-exec: the command line the process execs reads the state file. */
START_TEST(test_incoming_file) {
	struct cmdline c = base();
	spec.allow_exec = true;
	c.binary = "/proc/42/fd/17";
	_cleanup_free_ char *start = build(&c);
	c.incoming = &(struct cmdline_incoming){
		.kind = CMDLINE_INCOMING_FILE,
		.main_path = "/run/cprd/vms/g1/upgrade-x/vm.state",
	};
	_cleanup_free_ char *target = build(&c);
	ck_assert_msg(strncmp(target, "/proc/42/fd/17 ", 15) == 0, "%s", target);
	assert_start_with_tail(start, target, " -incoming file:/run/cprd/vms/g1/upgrade-x/vm.state");
}
END_TEST

/* Assigned devices: QEMU opens them itself (the legacy VFIO container), so
 * each is named by its address, with an id that is the same for a start
 * and an upgrade's target, by which the target finds the device's fds in
 * the CPR state. */
START_TEST(test_devices) {
	static const struct spec_device devices[] = {{.pci = "0000:01:00.0"}, {.pci = "0000:02:00.1"}};
	spec.devices = (struct spec_device *)devices;
	spec.n_devices = ELEMENTSOF(devices);
	struct cmdline c = base();
	_cleanup_free_ char *start = build(&c);
	ck_assert_msg(has(start, " -serial chardev:console -device vfio-pci,host=0000:01:00.0,id=hostdev0 "
				 "-device vfio-pci,host=0000:02:00.1,id=hostdev1 -nic none"),
		      "%s", start);
	c.incoming = &(struct cmdline_incoming){
		.kind = CMDLINE_INCOMING_CPR_TRANSFER,
		.main_path = "/d/main.sock",
		.cpr_path = "/d/cpr.sock",
	};
	_cleanup_free_ char *target = build(&c);
	assert_start_with_tail(start, target,
			       " -incoming unix:/d/main.sock -incoming {\"channel-type\":\"cpr\",\"addr\":"
			       "{\"transport\":\"socket\",\"type\":\"unix\",\"path\":\"/d/cpr.sock\"}}");
	/* None: no vfio-pci at all (test_start_whole has the whole line). */
	spec.n_devices = 0;
	c.incoming = NULL;
	_cleanup_free_ char *none = build(&c);
	ck_assert_msg(!has(none, "vfio"), "%s", none);
}
END_TEST

static Suite *cmdline_suite(void) {
	Suite *s = suite_create("cmdline");
	TCase *tc = tcase_create("argv");
	tcase_add_checked_fixture(tc, setup, NULL);
	tcase_add_test(tc, test_start_whole);
	tcase_add_test(tc, test_devices);
	tcase_add_test(tc, test_probe_results);
	tcase_add_test(tc, test_spec_fields);
	tcase_add_test(tc, test_fd_numbers);
	tcase_add_test(tc, test_nics);
	tcase_add_test(tc, test_disks);
	tcase_add_test(tc, test_hugepages);
	tcase_add_test(tc, test_recovery_monitor);
	tcase_add_test(tc, test_incoming_cpr_transfer);
	tcase_add_test(tc, test_incoming_local_migrate);
	tcase_add_test(tc, test_allow_exec);
	tcase_add_test(tc, test_incoming_file);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(cmdline_suite());
}
