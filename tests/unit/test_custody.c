/* Check suite for daemon/custody*.c: the table of held fds (names, kinds,
 * the numbers handed out in QEMU and their record in qemu.json), guest RAM
 * and console made as QEMU needs them, and both taken back from a process
 * that holds them at the numbers its record gives, as a restarted cprd
 * without its fd store takes them from QEMU; the VFIO kind's copies, which
 * no QEMU is given, and which it neither takes nor drops for a VM without
 * devices. (Real VFIO fds are the nested lab's.) */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-run.h"
#include "custody.h"
#include "macro.h"
#include "spec.h"
#include "util.h"

static const struct custody_vm vm = {.name = "t1", .ram_bytes = 16 << 20};

static void fds_init(int fds[_CUSTODY_VM_MAX]) {
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		fds[i] = -1;
}

static void fds_close(int fds[_CUSTODY_VM_MAX]) {
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		fds[i] = safe_close(fds[i]);
}

static void link_of(int fd, char *buf, size_t size) {
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(self, buf, size - 1);
	ck_assert_int_gt(n, 0);
	buf[n] = '\0';
}

START_TEST(test_table) {
	/* The names are the fd store's and GetVM's: fixed, and unique. */
	ck_assert_str_eq(custody_fds[CUSTODY_RAM].name, "ram0");
	ck_assert_str_eq(custody_fds[CUSTODY_CONSOLE].name, "console");
	ck_assert_str_eq(custody_fds[CUSTODY_CONSOLE_QEMU].name, "console-qemu");
	ck_assert_str_eq(custody_fds[CUSTODY_QMP].name, "qmp");
	ck_assert_str_eq(custody_fds[CUSTODY_QMP].target_name, "qmp-target");
	ck_assert_str_eq(custody_fds[CUSTODY_TAP0].name, "tap0");
	ck_assert_str_eq(custody_fds[CUSTODY_TAP0 + CUSTODY_TAPS - 1].name, "tap7");
	for (unsigned i = 0; i < CUSTODY_TAPS; i++)
		ck_assert_str_eq(custody_fds[CUSTODY_TAP0 + i].kind, "tap");
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		for (unsigned j = i + 1; j < _CUSTODY_MAX; j++)
			ck_assert_str_ne(custody_fds[i].name, custody_fds[j].name);
	/* Every kind names its fds on QEMU's command line; per-VM kinds make
	 * theirs or take copies of what QEMU opened, QMP's are made with each
	 * QEMU. */
	for (unsigned k = 0; k < custody_n_kinds; k++) {
		const struct custody_ops *o = custody_kinds[k];
		ck_assert_ptr_nonnull(o->qemu_args);
		ck_assert_int_eq(!o->open, o == &custody_qmp || o == &custody_vfio);
		ck_assert_int_eq(!!o->from_qemu, o == &custody_vfio);
	}
	/* VFIO: copies of what QEMU opened, given to no QEMU. */
	ck_assert_str_eq(custody_fds[CUSTODY_VFIO_CONTAINER].name, "vfio-container0");
	ck_assert_str_eq(custody_fds[CUSTODY_VFIO_GROUP + 7].name, "vfio-group7");
	ck_assert_str_eq(custody_fds[CUSTODY_VFIO_DEVICE + 3].name, "vfio-device3");
	for (unsigned i = 0; i < _CUSTODY_MAX; i++) {
		bool vfio = i >= CUSTODY_VFIO_CONTAINER && i < _CUSTODY_VM_MAX;
		if (vfio)
			ck_assert_str_eq(custody_fds[i].kind, "vfio");
		ck_assert_int_eq(custody_fds[i].from_qemu, vfio);
		ck_assert_int_eq(custody_fds[i].to_qemu, !vfio);
	}
}
END_TEST

static void numbers_eq(const struct custody_qemu_fds *a, const struct custody_qemu_fds *b) {
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		ck_assert_msg(a->n[i] == b->n[i], "%s: %d != %d", custody_fds[i].name, a->n[i], b->n[i]);
}

/* Numbers from 3 up, QMP first, only for what is held; a VM holding all
 * gets what QEMUs had before numbers were recorded. */
START_TEST(test_qemu_fds_assign) {
	int held[_CUSTODY_VM_MAX];
	struct custody_qemu_fds at;
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		held[i] = i < CUSTODY_TAP0 ? 100 + (int)i : -1;
	custody_qemu_fds_assign(held, &at);
	numbers_eq(&at, &custody_qemu_fds_legacy);

	/* NICs' taps come after: the numbers before them do not move. */
	held[CUSTODY_TAP0] = 200;
	held[CUSTODY_TAP0 + 2] = 202;
	custody_qemu_fds_assign(held, &at);
	ck_assert_int_eq(at.n[CUSTODY_CONSOLE], 6);
	ck_assert_int_eq(at.n[CUSTODY_TAP0], 7);
	ck_assert_int_eq(at.n[CUSTODY_TAP0 + 1], -1);
	ck_assert_int_eq(at.n[CUSTODY_TAP0 + 2], 8);
	held[CUSTODY_TAP0] = held[CUSTODY_TAP0 + 2] = -1;
	ck_assert_int_eq(at.n[CUSTODY_QMP], 3);
	ck_assert_int_eq(at.n[CUSTODY_RAM], 5);

	/* VFIO copies held or not, no QEMU gets a number for them. */
	for (unsigned i = CUSTODY_VFIO_CONTAINER; i < _CUSTODY_VM_MAX; i++)
		ck_assert_int_eq(at.n[i], -1);
	held[CUSTODY_CONSOLE_QEMU] = -1;
	custody_qemu_fds_assign(held, &at);
	ck_assert_int_eq(at.n[CUSTODY_QMP], 3);
	ck_assert_int_eq(at.n[CUSTODY_CONSOLE_QEMU], -1);
	ck_assert_int_eq(at.n[CUSTODY_RAM], 4);
	ck_assert_int_eq(at.n[CUSTODY_CONSOLE], 5);
}
END_TEST

/* What goes into qemu.json comes back the same; a corrupt list is refused
 * with a reason that names the problem. */
START_TEST(test_qemu_fds_json) {
	struct custody_qemu_fds at = custody_qemu_fds_legacy, back;
	at.n[CUSTODY_CONSOLE] = -1;
	at.n[CUSTODY_RAM] = 40;
	at.n[CUSTODY_VFIO_DEVICE] = 0; /* as a zeroed struct has it: never written */
	_cleanup_json_ struct json_object *o = custody_qemu_fds_to_json(&at);
	at.n[CUSTODY_VFIO_DEVICE] = -1;
	ck_assert_str_eq(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
			 "{\"console-qemu\":4,\"ram0\":40,\"qmp\":3}");
	char why[256] = "";
	ck_assert_int_eq(custody_qemu_fds_from_json(o, &back, why, sizeof(why)), 0);
	numbers_eq(&back, &at);

	static const struct {
		const char *json, *why;
	} bad[] = {
		{"[3]", "fds is not an object"},
		{"{\"qmp\":3,\"floppy\":4}", "fds names \"floppy\", which is no held fd"},
		{"{\"qmp\":3,\"vfio-device0\":4}", "fds names \"vfio-device0\", which no QEMU is given"},
		{"{\"qmp\":3,\"ram0\":3}", "fds gives qmp and ram0 the same number 3"},
		{"{\"ram0\":2}", "ram0 2 is out of range"},
		{"{\"ram0\":1024}", "ram0 1024 is out of range"},
		{"{\"ram0\":\"5\"}", "ram0 is not a number"},
	};
	for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
		_cleanup_json_ struct json_object *b = json_tokener_parse(bad[i].json);
		ck_assert_ptr_nonnull(b);
		why[0] = '\0';
		ck_assert_int_eq(custody_qemu_fds_from_json(b, &back, why, sizeof(why)), -EBADMSG);
		ck_assert_str_eq(why, bad[i].why);
	}
}
END_TEST

START_TEST(test_ram_open) {
	int fds[_CUSTODY_VM_MAX];
	struct stat st;
	char link[256];
	fds_init(fds);
	ck_assert_int_eq(custody_ram.open(&vm, fds), 0);
	ck_assert_int_ge(fds[CUSTODY_RAM], 0);
	ck_assert(fcntl(fds[CUSTODY_RAM], F_GETFD) & FD_CLOEXEC);
	ck_assert_int_eq(fstat(fds[CUSTODY_RAM], &st), 0);
	ck_assert_int_eq(st.st_size, 16 << 20);
	link_of(fds[CUSTODY_RAM], link, sizeof(link));
	ck_assert_msg(strncmp(link, "/memfd:cprd:t1:ram0", 19) == 0, "%s", link);
	ck_assert_int_eq(fds[CUSTODY_CONSOLE], -1);

	/* Kept while it fits; made anew for another size. */
	ino_t ino = st.st_ino;
	ck_assert_int_eq(custody_ram.open(&vm, fds), 0);
	ck_assert_int_eq(fstat(fds[CUSTODY_RAM], &st), 0);
	ck_assert_uint_eq(st.st_ino, ino);
	struct custody_vm bigger = vm;
	bigger.ram_bytes = 32 << 20;
	ck_assert_int_eq(custody_ram.open(&bigger, fds), 0);
	ck_assert_int_eq(fstat(fds[CUSTODY_RAM], &st), 0);
	ck_assert_int_eq(st.st_size, 32 << 20);
	ck_assert_uint_ne(st.st_ino, ino);
	fds_close(fds);
}
END_TEST

START_TEST(test_console_open) {
	int fds[_CUSTODY_VM_MAX];
	fds_init(fds);
	ck_assert_int_eq(custody_console.open(&vm, fds), 0);
	int ours = fds[CUSTODY_CONSOLE], theirs = fds[CUSTODY_CONSOLE_QEMU];
	ck_assert_int_ge(ours, 0);
	ck_assert_int_ge(theirs, 0);
	/* cprd's end never blocks the loop; QEMU's blocks like a chardev. */
	ck_assert(fcntl(ours, F_GETFL) & O_NONBLOCK);
	ck_assert(!(fcntl(theirs, F_GETFL) & O_NONBLOCK));
	ck_assert(fcntl(ours, F_GETFD) & FD_CLOEXEC);
	ck_assert(fcntl(theirs, F_GETFD) & FD_CLOEXEC);
	ck_assert_int_eq(write(theirs, "x", 1), 1);
	char c = 0;
	ck_assert_int_eq(read(ours, &c, 1), 1);
	ck_assert_int_eq(c, 'x');
	fds_close(fds);
}
END_TEST

/* What comes back from the fd store: the console whole or not at all, its
 * cprd end non-blocking again; RAM kept. */
START_TEST(test_restored) {
	int fds[_CUSTODY_VM_MAX];
	fds_init(fds);
	ck_assert_int_eq(custody_ram.open(&vm, fds), 0);
	ck_assert_int_eq(custody_console.open(&vm, fds), 0);
	int ram = fds[CUSTODY_RAM];
	fcntl(fds[CUSTODY_CONSOLE], F_SETFL, 0); /* as the fd store hands it back */
	custody_ram.restored(&vm, fds);
	custody_console.restored(&vm, fds);
	ck_assert_int_eq(fds[CUSTODY_RAM], ram);
	ck_assert(fcntl(fds[CUSTODY_CONSOLE], F_GETFL) & O_NONBLOCK);

	/* Half a console is none. */
	fds[CUSTODY_CONSOLE_QEMU] = safe_close(fds[CUSTODY_CONSOLE_QEMU]);
	custody_console.restored(&vm, fds);
	ck_assert_int_eq(fds[CUSTODY_CONSOLE], -1);
	ck_assert_int_eq(fds[CUSTODY_RAM], ram);
	fds_close(fds);
}
END_TEST

/* A stand-in for QEMU: holds the per-VM fds at their numbers in at, as
 * qemu.c hands them over, until killed. */
static pid_t holder(const int fds[_CUSTODY_VM_MAX], const struct custody_qemu_fds *at) {
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int moved[_CUSTODY_VM_MAX];
		for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
			moved[i] = fds[i] < 0 || at->n[i] < 0 ? -1 : fcntl(fds[i], F_DUPFD_CLOEXEC, 100);
		for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
			if (fds[i] >= 0 && at->n[i] >= 0 && (moved[i] < 0 || dup2(moved[i], at->n[i]) < 0))
				_exit(1);
		for (;;)
			pause();
	}
	return pid;
}

START_TEST(test_recover) {
	int made[_CUSTODY_VM_MAX], back[_CUSTODY_VM_MAX];
	struct stat a, b;
	fds_init(made);
	fds_init(back);
	ck_assert_int_eq(custody_ram.open(&vm, made), 0);
	ck_assert_int_eq(custody_console.open(&vm, made), 0);
	/* Numbers of the record's choosing, not the ones cprd would give. */
	struct custody_qemu_fds at = custody_qemu_fds_legacy;
	at.n[CUSTODY_RAM] = 41;
	at.n[CUSTODY_CONSOLE] = 42;
	at.n[CUSTODY_CONSOLE_QEMU] = 43;
	pid_t pid = holder(made, &at);
	int pidfd = pidfd_open_pid(pid);
	ck_assert_int_ge(pidfd, 0);
	usleep(100 * 1000); /* the holder's dup2s */

	ck_assert_int_eq(custody_ram.recover(&vm, pid, pidfd, &at, back), 0);
	ck_assert_int_eq(custody_console.recover(&vm, pid, pidfd, &at, back), 0);
	for (unsigned i = 0; i < CUSTODY_TAP0; i++) {
		if (custody_fds[i].from_qemu)
			continue;
		ck_assert_int_ge(back[i], 0);
		ck_assert_int_eq(fstat(made[i], &a), 0);
		ck_assert_int_eq(fstat(back[i], &b), 0);
		ck_assert_uint_eq(a.st_ino, b.st_ino); /* the very same file */
		ck_assert(fcntl(back[i], F_GETFD) & FD_CLOEXEC);
	}
	ck_assert(fcntl(back[CUSTODY_CONSOLE], F_GETFL) & O_NONBLOCK);

	/* Another VM's RAM at that number is not ours to take. */
	int other[_CUSTODY_VM_MAX];
	fds_init(other);
	struct custody_vm someone = vm;
	someone.name = "t2";
	ck_assert_int_eq(custody_ram.recover(&someone, pid, pidfd, &at, other), -EBADF);
	ck_assert_int_eq(other[CUSTODY_RAM], -1);
	/* Nor is whatever another number holds (the console, here). */
	struct custody_qemu_fds wrong = at;
	wrong.n[CUSTODY_RAM] = at.n[CUSTODY_CONSOLE];
	ck_assert_int_eq(custody_ram.recover(&vm, pid, pidfd, &wrong, other), -EBADF);
	ck_assert_int_eq(other[CUSTODY_RAM], -1);

	/* A VM without devices takes no VFIO copies and keeps what it has. */
	ck_assert_int_eq(custody_vfio.from_qemu(&vm, pid, pidfd, back), 0);
	for (unsigned i = CUSTODY_VFIO_CONTAINER; i < _CUSTODY_VM_MAX; i++)
		ck_assert_int_eq(back[i], -1);
	/* With a device, from a process that has no VFIO fd open: nothing. */
	static const struct spec_device dev = {.pci = "0000:00:03.0"};
	struct custody_vm with_dev = vm;
	with_dev.devices = &dev;
	with_dev.n_devices = 1;
	ck_assert_int_eq(custody_vfio.from_qemu(&with_dev, pid, pidfd, other), -ENOENT);
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		ck_assert_int_eq(other[i], -1);

	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(pidfd);
	fds_close(made);
	fds_close(back);
}
END_TEST

/* What comes back from the fd store as a VFIO copy must be one: anything
 * else (here a memfd and a socket) is closed. */
START_TEST(test_vfio_restored) {
	int fds[_CUSTODY_VM_MAX];
	fds_init(fds);
	ck_assert_int_eq(custody_ram.open(&vm, fds), 0);
	ck_assert_int_eq(custody_console.open(&vm, fds), 0);
	fds[CUSTODY_VFIO_CONTAINER] = dup(fds[CUSTODY_RAM]);
	fds[CUSTODY_VFIO_DEVICE + 1] = dup(fds[CUSTODY_CONSOLE]);
	custody_vfio.restored(&vm, fds);
	for (unsigned i = CUSTODY_VFIO_CONTAINER; i < _CUSTODY_VM_MAX; i++)
		ck_assert_int_eq(fds[i], -1);
	ck_assert_int_ge(fds[CUSTODY_RAM], 0);
	ck_assert_int_ge(fds[CUSTODY_CONSOLE], 0);
	fds_close(fds);
}
END_TEST

START_TEST(test_qmp_open) {
	int ours = -1, theirs = -1;
	ck_assert_int_eq(custody_qmp_open(&ours, &theirs), 0);
	ck_assert(fcntl(ours, F_GETFD) & FD_CLOEXEC);
	ck_assert(fcntl(theirs, F_GETFD) & FD_CLOEXEC);
	close(ours);
	close(theirs);
}
END_TEST

static Suite *custody_suite(void) {
	Suite *s = suite_create("custody");
	TCase *tc = tcase_create("kinds");
	tcase_add_test(tc, test_table);
	tcase_add_test(tc, test_qemu_fds_assign);
	tcase_add_test(tc, test_qemu_fds_json);
	tcase_add_test(tc, test_ram_open);
	tcase_add_test(tc, test_console_open);
	tcase_add_test(tc, test_restored);
	tcase_add_test(tc, test_vfio_restored);
	tcase_add_test(tc, test_qmp_open);
	/* Tagged: it needs pidfd_open, which valgrind 3.19 does not know, so
	 * tests/valgrind.sh leaves it out there (CK_EXCLUDE_TAGS=pidfd). */
	TCase *rec = tcase_create("recover");
	tcase_set_tags(rec, "pidfd");
	tcase_add_test(rec, test_recover);
	suite_add_tcase(s, tc);
	suite_add_tcase(s, rec);
	return s;
}

int main(void) {
	return check_run(custody_suite());
}
