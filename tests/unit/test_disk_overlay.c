/* Check suite for daemon/disk-overlay.c: the overlay's name (the stem of a
 * disk, of a snapshot's overlay and of a restore's, with -N for a second one
 * in the same second), qemu-img's argv and message, and, as root, real
 * overlays made by the real qemu-img on a loop: backed by the disk (which
 * stays as it was), a second one beside the first, and a disk that is not
 * qcow2 refused with qemu-img's reason and no file left. */
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-run.h"
#include "disk-overlay.h"
#include "macro.h"

#define NAME_IS(disk, tag, n, want)                                                         \
	do {                                                                                \
		char *got_ = disk_overlay_name(disk, tag, "20261128T130000", n);            \
		ck_assert_ptr_nonnull(got_);                                                \
		ck_assert_str_eq(got_, want);                                               \
		free(got_);                                                                 \
	} while (0)

START_TEST(test_name) {
	NAME_IS("/v/a.qcow2", "restore", 1, "/v/a.restore-20261128T130000.qcow2");
	NAME_IS("/v/a.qcow2", "restore", 2, "/v/a.restore-20261128T130000-2.qcow2");
	NAME_IS("/v/a.qcow2", "snap", 1, "/v/a.snap-20261128T130000.qcow2");
	/* A snapshot's overlay, and a restore's, name the disk they began with. */
	NAME_IS("/v/a.snap-20261127T010203.qcow2", "restore", 1, "/v/a.restore-20261128T130000.qcow2");
	NAME_IS("/v/a.restore-20261127T010203-3.qcow2", "snap", 1, "/v/a.snap-20261128T130000.qcow2");
	NAME_IS("/v/a.restore-X.snap-Y.qcow2", "restore", 1, "/v/a.restore-20261128T130000.qcow2");
	/* No .qcow2: the whole name is the stem. A folder's dots are not cut. */
	NAME_IS("/v.snap-1/disk", "restore", 1, "/v.snap-1/disk.restore-20261128T130000.qcow2");
	NAME_IS("/v.d/x.img", "restore", 1, "/v.d/x.img.restore-20261128T130000.qcow2");
}
END_TEST

START_TEST(test_argv) {
	const char *argv[DISK_OVERLAY_ARGV_MAX];
	disk_overlay_argv("/usr/bin/qemu-img", "/v/a b.qcow2", "/v/a.restore-T.qcow2", argv);
	const char *want[] = {"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
			      "-b", "/v/a b.qcow2", "/v/a.restore-T.qcow2", NULL};
	for (size_t i = 0; i < ELEMENTSOF(want); i++) {
		if (!want[i])
			ck_assert_ptr_null(argv[i]);
		else
			ck_assert_str_eq(argv[i], want[i]);
	}
}
END_TEST

START_TEST(test_message) {
	char buf[64];
	static const char two[] = "qemu-img: /v/a.qcow2: Could not open\nqemu-img: second\n\n";
	disk_overlay_message(two, strlen(two), buf, sizeof(buf));
	ck_assert_str_eq(buf, "/v/a.qcow2: Could not open; second");
	static const char stop[] =
		"qemu-img: x: Image is not in qcow2 format\nCould not open backing image.\n";
	disk_overlay_message(stop, strlen(stop), buf, sizeof(buf));
	ck_assert_str_eq(buf, "x: Image is not in qcow2 format; Could not open backing image");
	disk_overlay_message("", 0, buf, sizeof(buf));
	ck_assert_str_eq(buf, "");
	char small[8];
	disk_overlay_message(two, strlen(two), small, sizeof(small));
	ck_assert_str_eq(small, "/v/a.qc");
}
END_TEST

static char dir[] = "/tmp/cprd-disk-overlay-XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(dir)); }

static void teardown(void) {
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
	strcpy(dir, "/tmp/cprd-disk-overlay-XXXXXX");
}

struct outcome {
	int calls, error;
	char overlay[1024], reason[2048];
};

static void on_done(int error, const char *overlay, const char *reason, void *userdata) {
	struct outcome *o = userdata;
	o->calls++;
	o->error = error;
	snprintf(o->overlay, sizeof(o->overlay), "%s", overlay ? overlay : "");
	snprintf(o->reason, sizeof(o->reason), "%s", reason ? reason : "");
}

/* Runs cmd; its first line of output in out. */
static int run(const char *cmd, char *out, size_t size) {
	FILE *p = popen(cmd, "r");
	ck_assert_ptr_nonnull(p);
	size_t n = fread(out, 1, size - 1, p);
	out[n] = '\0';
	return pclose(p);
}

static void make_overlay(struct event_base *base, const char *disk, struct outcome *o) {
	struct disk_overlay *d = NULL;
	char why[512];
	memset(o, 0, sizeof(*o));
	ck_assert_int_eq(disk_overlay_create(base, disk, "restore", "20261128T130000", on_done, o, &d,
					     why, sizeof(why)),
			 0);
	event_base_dispatch(base);
	ck_assert_int_eq(o->calls, 1);
}

START_TEST(test_real_qemu_img) {
	if (access(DISK_OVERLAY_QEMU_IMG, X_OK) < 0)
		ck_abort_msg("%s is missing (qemu-utils)", DISK_OVERLAY_QEMU_IMG);
	char disk[256], cmd[1024], out[4096];
	snprintf(disk, sizeof(disk), "%s/data.qcow2", dir);
	snprintf(cmd, sizeof(cmd), "%s create -q -f qcow2 %s 16M", DISK_OVERLAY_QEMU_IMG, disk);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_eq(chmod(disk, 0640), 0);
	struct stat before, after;
	ck_assert_int_eq(stat(disk, &before), 0);
	struct event_base *base = event_base_new();

	struct outcome o;
	make_overlay(base, disk, &o);
	ck_assert_msg(o.error == 0, "%s", o.reason);
	char want[512];
	snprintf(want, sizeof(want), "%s/data.restore-20261128T130000.qcow2", dir);
	ck_assert_str_eq(o.overlay, want);
	struct stat st;
	ck_assert_int_eq(stat(want, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0640); /* as the disk is */
	snprintf(cmd, sizeof(cmd), "%s info -U --output=json %s", DISK_OVERLAY_QEMU_IMG, want);
	ck_assert_int_eq(run(cmd, out, sizeof(out)), 0);
	char needle[512];
	snprintf(needle, sizeof(needle), "\"full-backing-filename\": \"%s\"", disk);
	ck_assert_msg(strstr(out, needle), "%s", out);
	ck_assert_msg(strstr(out, "\"backing-filename-format\": \"qcow2\""), "%s", out);
	ck_assert_msg(strstr(out, "\"virtual-size\": 16777216"), "%s", out);

	/* A second in the same second: beside it, not over it. */
	make_overlay(base, disk, &o);
	ck_assert_msg(o.error == 0, "%s", o.reason);
	snprintf(want, sizeof(want), "%s/data.restore-20261128T130000-2.qcow2", dir);
	ck_assert_str_eq(o.overlay, want);
	ck_assert_int_eq(stat(disk, &after), 0);
	ck_assert_int_eq(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
	ck_assert_int_eq(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
	ck_assert_int_eq(after.st_size, before.st_size);

	/* Not a qcow2 file: qemu-img's reason, the disk named, no file left. */
	char raw[256];
	snprintf(raw, sizeof(raw), "%s/raw.img", dir);
	int fd = open(raw, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, 1 << 20), 0);
	close(fd);
	make_overlay(base, raw, &o);
	ck_assert_int_lt(o.error, 0);
	ck_assert_msg(strstr(o.reason, raw) && strstr(o.reason, "qemu-img exited with status"), "%s",
		      o.reason);
	snprintf(want, sizeof(want), "%s/raw.img.restore-20261128T130000.qcow2", dir);
	ck_assert_int_eq(access(want, F_OK), -1);

	/* A disk that is not there: refused before any child. */
	char why[512];
	struct disk_overlay *d = NULL;
	snprintf(raw, sizeof(raw), "%s/none.qcow2", dir);
	ck_assert_int_eq(disk_overlay_create(base, raw, "restore", "T", on_done, &o, &d, why,
					     sizeof(why)),
			 -ENOENT);
	ck_assert_msg(strstr(why, raw) && strstr(why, "No such file"), "%s", why);

	/* Cancelled under way: its file goes, done never runs. */
	memset(&o, 0, sizeof(o));
	ck_assert_int_eq(disk_overlay_create(base, disk, "restore", "T9", on_done, &o, &d, why,
					     sizeof(why)),
			 0);
	snprintf(want, sizeof(want), "%s/data.restore-T9.qcow2", dir);
	ck_assert_int_eq(access(want, F_OK), 0);
	disk_overlay_cancel(d);
	ck_assert_int_eq(access(want, F_OK), -1);
	event_base_dispatch(base); /* until the killed qemu-img is reaped */
	ck_assert_int_eq(o.calls, 0);
	event_base_free(base);
}
END_TEST

static Suite *disk_overlay_suite(void) {
	Suite *s = suite_create("disk_overlay");
	TCase *tc = tcase_create("pure");
	tcase_add_test(tc, test_name);
	tcase_add_test(tc, test_argv);
	tcase_add_test(tc, test_message);
	suite_add_tcase(s, tc);
	/* qemu-img runs as root, which only root may ask for (CI runs as root). */
	if (geteuid() == 0) {
		tc = tcase_create("qemu-img");
		/* qemu-img is watched by pidfd, which valgrind 3.19 does not
		 * know: tests/valgrind.sh leaves this case out (CK_EXCLUDE_TAGS). */
		tcase_set_tags(tc, "pidfd");
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_add_test(tc, test_real_qemu_img);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void) {
	return check_run(disk_overlay_suite());
}
