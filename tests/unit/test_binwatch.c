/* Check suite for daemon/binwatch.c and the probe cache's key: the debounce
 * (pure), a path's steps through its symlinks, and the watcher itself on
 * real files in a temporary folder with real inotify: a file renamed over
 * as dpkg does, a burst told once, chmod, a symlink flipped or its target
 * replaced, other names ignored, one watch per folder, watches let go. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct event_base *base;

#include "binwatch.h"
#include "check-run.h"
#include "loop.h"
#include "macro.h"
#include "probe.h"
#include "util.h"

#define Q BINWATCH_QUIET_USEC
#define MAXW BINWATCH_MAX_WAIT_USEC

START_TEST(test_debounce) {
	struct binwatch_debounce d = {};
	ck_assert_uint_eq(binwatch_debounce_due(&d, Q, MAXW), 0);
	ck_assert_uint_eq(binwatch_debounce_take(&d, 1000000000, Q, MAXW), 0);
	binwatch_debounce_note(&d, 1000);
	ck_assert_uint_eq(binwatch_debounce_due(&d, Q, MAXW), 1000 + Q);
	/* Each event pushes it back... */
	binwatch_debounce_note(&d, 2000);
	binwatch_debounce_note(&d, 3000);
	ck_assert_uint_eq(binwatch_debounce_due(&d, Q, MAXW), 3000 + Q);
	ck_assert_uint_eq(binwatch_debounce_take(&d, 3000 + Q - 1, Q, MAXW), 0);
	ck_assert_uint_eq(binwatch_debounce_take(&d, 3000 + Q, Q, MAXW), 3);
	/* ...told once: the burst is over. */
	ck_assert_uint_eq(binwatch_debounce_due(&d, Q, MAXW), 0);
	ck_assert_uint_eq(binwatch_debounce_take(&d, 3000 + 2 * Q, Q, MAXW), 0);

	/* A stream that never goes quiet is told max_wait after its start. */
	uint64_t t = 5000;
	for (; t < 5000 + MAXW + Q; t += Q / 2) {
		binwatch_debounce_note(&d, t);
		if (binwatch_debounce_take(&d, t, Q, MAXW))
			break;
	}
	ck_assert_uint_ge(t, 5000 + MAXW);
	ck_assert_uint_lt(t, 5000 + MAXW + Q / 2);
	/* An event at time 0 still starts a burst. */
	binwatch_debounce_note(&d, 0);
	ck_assert_uint_ne(binwatch_debounce_due(&d, Q, MAXW), 0);
}
END_TEST

START_TEST(test_probe_key) {
	struct probe_result r = {.path = "/usr/bin/qemu-system-x86_64", .dev = 8, .ino = 42,
				 .mtime = {.tv_sec = 100, .tv_nsec = 5}, .size = 1000};
	struct stat st = {.st_dev = 8, .st_ino = 42, .st_mtim = {.tv_sec = 100, .tv_nsec = 5},
			  .st_size = 1000};
	ck_assert(probe_key_matches(&r, "/usr/bin/qemu-system-x86_64", &st));
	ck_assert(!probe_key_matches(&r, "/usr/local/bin/qemu-system-x86_64", &st));
	struct stat o = st;
	o.st_ino = 43;
	ck_assert(!probe_key_matches(&r, r.path, &o));
	o = st;
	o.st_dev = 9;
	ck_assert(!probe_key_matches(&r, r.path, &o));
	o = st;
	o.st_mtim.tv_nsec = 6;
	ck_assert(!probe_key_matches(&r, r.path, &o));
	o = st;
	o.st_mtim.tv_sec = 101;
	ck_assert(!probe_key_matches(&r, r.path, &o));
	/* dpkg's mtimes are whole seconds and inodes are reused: the size
	 * tells two builds apart too. */
	o = st;
	o.st_size = 1001;
	ck_assert(!probe_key_matches(&r, r.path, &o));
	/* What does not make another file: its mode, owner, ctime, atime. */
	o = st;
	o.st_mode = 0777;
	o.st_uid = 1000;
	o.st_ctim.tv_sec = 999;
	o.st_atim.tv_sec = 999;
	ck_assert(probe_key_matches(&r, r.path, &o));
}
END_TEST

static char tmp[256];

static void mk_tmp(void) {
	strcpy(tmp, "/tmp/cprd-binwatch-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmp));
}

static void rm_tmp(void) {
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	ck_assert_int_eq(system(cmd), 0);
}

static char *in_tmp(const char *name) {
	static char bufs[64][512]; /* a ring: enough for one test */
	static unsigned k;
	char *b = bufs[k++ % 64];
	snprintf(b, 512, "%s/%s", tmp, name);
	return b;
}

static void write_file(const char *path, const char *text) {
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

/* As dpkg does: NAME.dpkg-new written, then renamed over NAME. */
static void dpkg_replace(const char *path, const char *text) {
	char new[600];
	snprintf(new, sizeof(new), "%s.dpkg-new", path);
	write_file(new, text);
	ck_assert_int_eq(rename(new, path), 0);
}

START_TEST(test_steps) {
	struct binwatch_step s[BINWATCH_LINKS_MAX + 1];
	mk_tmp();
	ck_assert_int_eq(binwatch_steps("/qemu", s, 9), 1);
	ck_assert_str_eq(s[0].dir, "/");
	ck_assert_str_eq(s[0].name, "qemu");
	binwatch_steps_free(s, 1);
	ck_assert_int_eq(binwatch_steps("relative/qemu", s, 9), -EINVAL);
	ck_assert_int_eq(binwatch_steps("/usr/bin/", s, 9), -EINVAL);

	ck_assert_int_eq(mkdir(in_tmp("real"), 0755), 0);
	write_file(in_tmp("real/qemu-10"), "x");
	ck_assert_int_eq(symlink("real/qemu-10", in_tmp("rel")), 0);
	ck_assert_int_eq(symlink(in_tmp("rel"), in_tmp("abs")), 0);
	int n = binwatch_steps(in_tmp("abs"), s, 9);
	ck_assert_int_eq(n, 3);
	ck_assert_str_eq(s[0].dir, tmp);
	ck_assert_str_eq(s[0].name, "abs");
	ck_assert_str_eq(s[1].dir, tmp);
	ck_assert_str_eq(s[1].name, "rel");
	ck_assert_str_eq(s[2].dir, in_tmp("real"));
	ck_assert_str_eq(s[2].name, "qemu-10");
	binwatch_steps_free(s, (size_t)n);
	/* A loop ends at max. */
	ck_assert_int_eq(symlink("loop", in_tmp("loop")), 0);
	n = binwatch_steps(in_tmp("loop"), s, 9);
	ck_assert_int_eq(n, 9);
	binwatch_steps_free(s, (size_t)n);
	/* A missing file is one step: its folder is watched for it. */
	n = binwatch_steps(in_tmp("none"), s, 9);
	ck_assert_int_eq(n, 1);
	binwatch_steps_free(s, (size_t)n);
	rm_tmp();
}
END_TEST

/* ---- the watcher, on real files ---- */

static char told[16][512];
static unsigned told_events[16];
static unsigned n_told;

static void on_changed(const char *path, unsigned events, void *userdata) {
	if (n_told < 16) {
		snprintf(told[n_told], sizeof(told[0]), "%s", path);
		told_events[n_told] = events;
	}
	n_told++;
}

static struct binwatch *w;

static void watch_setup(void) {
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	n_told = 0;
	mk_tmp();
	ck_assert_int_eq(binwatch_new(base, on_changed, NULL, &w), 0);
}

static void watch_teardown(void) {
	binwatch_free(w);
	event_base_free(base);
	rm_tmp();
}

/* Turns the loop for ms, whatever happens. */
static void run_for(unsigned ms) {
	(void)RUN_UNTIL(false, (int)ms);
}

START_TEST(test_rename_burst_told_once) {
	const char *q = in_tmp("qemu");
	write_file(q, "7.2");
	const char *paths[] = {q};
	ck_assert_int_eq(binwatch_set(w, paths, 1), 0);
	ck_assert_uint_eq(binwatch_dirs(w), 1);
	run_for(100);
	ck_assert_uint_eq(n_told, 0);

	uint64_t t0 = now_usec(CLOCK_MONOTONIC);
	for (int i = 0; i < 5; i++) {
		dpkg_replace(q, i % 2 ? "10.0" : "10.1");
		run_for(50);
	}
	ck_assert(RUN_UNTIL(n_told >= 1, PATIENCE_MS));
	/* Only after the quiet time. */
	ck_assert_uint_ge(now_usec(CLOCK_MONOTONIC) - t0, 4 * 50000 + Q);
	run_for(800);
	ck_assert_uint_eq(n_told, 1);
	ck_assert_str_eq(told[0], q);
	ck_assert_uint_ge(told_events[0], 5);
}
END_TEST

START_TEST(test_other_names_ignored) {
	const char *q = in_tmp("qemu");
	write_file(q, "x");
	const char *paths[] = {q};
	ck_assert_int_eq(binwatch_set(w, paths, 1), 0);
	/* dpkg's temporary names, other binaries: not ours. */
	write_file(in_tmp("qemu.dpkg-new"), "y");
	write_file(in_tmp("qemu-img"), "y");
	ck_assert_int_eq(rename(in_tmp("qemu-img"), in_tmp("qemu-nbd")), 0);
	ck_assert_int_eq(chmod(in_tmp("qemu-nbd"), 0700), 0);
	run_for(Q / 1000 + 300);
	ck_assert_uint_eq(n_told, 0);
	/* The rename that completes it is. */
	ck_assert_int_eq(rename(in_tmp("qemu.dpkg-new"), q), 0);
	ck_assert(RUN_UNTIL(n_told == 1, PATIENCE_MS));
}
END_TEST

START_TEST(test_chmod_write_remove) {
	const char *q = in_tmp("qemu");
	write_file(q, "x");
	const char *paths[] = {q};
	ck_assert_int_eq(binwatch_set(w, paths, 1), 0);
	ck_assert_int_eq(chmod(q, 0775), 0); /* group-writable: to be refused */
	ck_assert(RUN_UNTIL(n_told == 1, PATIENCE_MS));
	write_file(q, "y"); /* written in place: IN_CLOSE_WRITE */
	ck_assert(RUN_UNTIL(n_told == 2, PATIENCE_MS));
	ck_assert_int_eq(unlink(q), 0);
	ck_assert(RUN_UNTIL(n_told == 3, PATIENCE_MS));
	/* Its folder removed and made again, with the file: still watched. */
	ck_assert_int_eq(mkdir(in_tmp("sub"), 0755), 0);
	const char *s = in_tmp("sub/qemu");
	write_file(s, "x");
	const char *paths2[] = {s};
	ck_assert_int_eq(binwatch_set(w, paths2, 1), 0);
	ck_assert_int_eq(unlink(s), 0);
	ck_assert_int_eq(rmdir(in_tmp("sub")), 0);
	ck_assert(RUN_UNTIL(n_told == 4, PATIENCE_MS));
	ck_assert_str_eq(told[3], s);
	/* inotify cannot watch a folder that is not there: it is looked for
	 * again, and when it is back, what is in it is told. */
	ck_assert_int_eq(mkdir(in_tmp("sub"), 0755), 0);
	write_file(s, "z");
	ck_assert(RUN_UNTIL(n_told == 5, PATIENCE_MS));
	ck_assert_str_eq(told[4], s);
	dpkg_replace(s, "w");
	ck_assert(RUN_UNTIL(n_told == 6, PATIENCE_MS));
}
END_TEST

START_TEST(test_symlinks) {
	/* /usr/bin/qemu-system-x86_64 -> /etc/alternatives/... -> the file, as
	 * a package with alternatives has it. */
	ck_assert_int_eq(mkdir(in_tmp("bin"), 0755), 0);
	ck_assert_int_eq(mkdir(in_tmp("alt"), 0755), 0);
	ck_assert_int_eq(mkdir(in_tmp("lib"), 0755), 0);
	write_file(in_tmp("lib/qemu-10.0"), "10.0");
	write_file(in_tmp("lib/qemu-10.1"), "10.1");
	ck_assert_int_eq(symlink(in_tmp("lib/qemu-10.0"), in_tmp("alt/qemu")), 0);
	ck_assert_int_eq(symlink("../alt/qemu", in_tmp("bin/qemu")), 0);
	const char *q = in_tmp("bin/qemu");
	const char *paths[] = {q};
	ck_assert_int_eq(binwatch_set(w, paths, 1), 0);
	ck_assert_uint_eq(binwatch_dirs(w), 3);

	/* The file at the end replaced. */
	dpkg_replace(in_tmp("lib/qemu-10.0"), "10.0.1");
	ck_assert(RUN_UNTIL(n_told == 1, PATIENCE_MS));
	ck_assert_str_eq(told[0], q);
	/* The link in the middle flipped (a new link renamed over it). */
	ck_assert_int_eq(symlink(in_tmp("lib/qemu-10.1"), in_tmp("alt/qemu.new")), 0);
	ck_assert_int_eq(rename(in_tmp("alt/qemu.new"), in_tmp("alt/qemu")), 0);
	ck_assert(RUN_UNTIL(n_told == 2, PATIENCE_MS));
	/* ln -sf: removed and made again. */
	ck_assert_int_eq(unlink(in_tmp("alt/qemu")), 0);
	ck_assert_int_eq(symlink(in_tmp("lib/qemu-10.0"), in_tmp("alt/qemu")), 0);
	ck_assert(RUN_UNTIL(n_told == 3, PATIENCE_MS));
	run_for(700);
	ck_assert_uint_eq(n_told, 3);
	/* The link now points straight into lib/: alt/ is no longer needed. */
	ck_assert_int_eq(symlink(in_tmp("lib/qemu-10.1"), in_tmp("bin/qemu.new")), 0);
	ck_assert_int_eq(rename(in_tmp("bin/qemu.new"), q), 0);
	ck_assert(RUN_UNTIL(n_told == 4, PATIENCE_MS));
	ck_assert_uint_eq(binwatch_dirs(w), 2);
}
END_TEST

START_TEST(test_set_and_drop) {
	const char *a = in_tmp("qemu-a"), *b = in_tmp("qemu-b");
	write_file(a, "a");
	write_file(b, "b");
	/* Two paths in one folder, one of them twice: one watch. */
	const char *paths[] = {a, b, a};
	ck_assert_int_eq(binwatch_set(w, paths, 3), 0);
	ck_assert_uint_eq(binwatch_dirs(w), 1);
	dpkg_replace(a, "a2");
	dpkg_replace(b, "b2");
	ck_assert(RUN_UNTIL(n_told == 2, PATIENCE_MS));
	ck_assert(streq(told[0], a) ? streq(told[1], b) : streq(told[0], b) && streq(told[1], a));
	/* b goes: its changes are not told, the folder stays for a. */
	const char *only_a[] = {a};
	ck_assert_int_eq(binwatch_set(w, only_a, 1), 0);
	ck_assert_uint_eq(binwatch_dirs(w), 1);
	dpkg_replace(b, "b3");
	run_for(Q / 1000 + 300);
	ck_assert_uint_eq(n_told, 2);
	/* A change pending when its path is dropped is not told either. */
	dpkg_replace(a, "a3");
	run_for(50);
	ck_assert_int_eq(binwatch_set(w, NULL, 0), 0);
	ck_assert_uint_eq(binwatch_dirs(w), 0);
	run_for(Q / 1000 + 300);
	ck_assert_uint_eq(n_told, 2);
	/* Poked: told as if changed. */
	ck_assert_int_eq(binwatch_set(w, only_a, 1), 0);
	binwatch_poke(w, a);
	binwatch_poke(w, b); /* not watched: nothing */
	ck_assert(RUN_UNTIL(n_told == 3, PATIENCE_MS));
	run_for(200);
	ck_assert_uint_eq(n_told, 3);
	ck_assert_str_eq(told[2], a);
}
END_TEST

static Suite *binwatch_suite(void) {
	Suite *s = suite_create("binwatch");
	TCase *tc = tcase_create("pure");
	tcase_add_test(tc, test_debounce);
	tcase_add_test(tc, test_probe_key);
	tcase_add_test(tc, test_steps);
	suite_add_tcase(s, tc);
	tc = tcase_create("inotify");
	tcase_add_checked_fixture(tc, watch_setup, watch_teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_rename_burst_told_once);
	tcase_add_test(tc, test_other_names_ignored);
	tcase_add_test(tc, test_chmod_write_remove);
	tcase_add_test(tc, test_symlinks);
	tcase_add_test(tc, test_set_and_drop);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(binwatch_suite());
}
