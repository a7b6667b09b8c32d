/* Check suite for daemon/probe.c: probes the real QEMU 10.0 and 7.2 (skipped
 * when absent), and scripts in a temporary folder that play broken binaries:
 * one that exits, one that prints garbage, one that speaks garbage on the QMP
 * socket, one that hangs, one that crashes, one that says whom it runs as. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <json-c/json.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

#include "log.h"
#include "macro.h"
#include "probe.h"
#include "qemu.h"

#define QEMU_10 "/usr/bin/qemu-system-x86_64"
#define QEMU_72 "/opt/cprd/qemu-system-x86_64-7.2"

static struct event_base *base;
#define TMPDIR_TEMPLATE "/tmp/cprd-test-probe-XXXXXX"
static char tmpdir[sizeof(TMPDIR_TEMPLATE)];

#include "loop.h"

/* Nothing of the probe left on the loop (only RUN_UNTIL's own timer). */
static bool loop_idle(void) {
	return event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED) <= 1;
}

static uint64_t mono_usec(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

struct outcome {
	int n_calls;
	int error;
	char reason[2048];
	struct probe_result *result;
};

static void on_done(struct probe *p, int error, struct probe_result *result, const char *reason,
		    void *userdata) {
	struct outcome *o = userdata;

	o->n_calls++;
	o->error = error;
	if (error < 0) {
		ck_assert_ptr_null(result);
		ck_assert_ptr_nonnull(reason);
		snprintf(o->reason, sizeof(o->reason), "%s", reason);
	} else {
		ck_assert_ptr_nonnull(result);
		o->result = result;
	}
}

static void outcome_done(struct outcome *o) {
	o->result = probe_result_free(o->result);
}

/* Probes and waits for the answer and for the child to be reaped. */
static void probe_and_wait(const char *path, int fd, const struct probe_options *opts,
			   struct outcome *o) {
	struct probe *p = NULL;

	*o = (struct outcome){};
	ck_assert_int_eq(probe_run(base, path, fd, opts, on_done, o, &p), 0);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(o->n_calls, 0); /* never from inside probe_run() */
	ck_assert(RUN_UNTIL(o->n_calls == 1, PATIENCE_MS));
	ck_assert(RUN_UNTIL(loop_idle(), 5000));
	ck_assert_int_eq(o->n_calls, 1);
}

static char *write_script(const char *name, const char *body, mode_t mode) {
	char *path;
	FILE *f;

	ck_assert_int_gt(asprintf(&path, "%s/%s", tmpdir, name), 0);
	f = fopen(path, "we");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "#!/bin/sh\n%s\n", body);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(chmod(path, mode), 0);
	return path;
}

/* Whether any process of the group is still alive. Killed members whose
 * leader died are orphans that init reaps in its own time; as zombies they
 * still count for kill(), so look at their state in /proc. */
static bool process_group_alive(pid_t pgid) {
	DIR *d = opendir("/proc");
	struct dirent *de;
	bool alive = false;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d))) {
		char path[300], buf[512], *p;
		int pgrp = 0;
		char state = 0;
		FILE *f;

		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		p = fgets(buf, sizeof(buf), f);
		fclose(f);
		/* "pid (comm) state ppid pgrp ...": comm may hold anything */
		if (!p || !(p = strrchr(buf, ')')) || sscanf(p + 1, " %c %*d %d", &state, &pgrp) != 2)
			continue;
		if (pgrp == pgid && state != 'Z' && state != 'X')
			alive = true;
	}
	closedir(d);
	return alive;
}

/* SIGKILL takes a moment to land on the members that are not our child. */
static bool process_group_gone(pid_t pgid) {
	for (int i = 0; i < 100; i++) {
		if (!process_group_alive(pgid))
			return true;
		usleep(10 * 1000);
	}
	return false;
}

static void setup(void) {
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	memcpy(tmpdir, TMPDIR_TEMPLATE, sizeof(TMPDIR_TEMPLATE));
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	probe_cache_clear();
}

static void teardown(void) {
	char cmd[128];

	probe_cache_clear();
	event_base_free(base);
	base = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	(void)!system(cmd);
}

static bool has_mode(const struct probe_result *r, const char *mode) {
	for (char **m = r->migration_modes; m && *m; m++)
		if (streq(*m, mode))
			return true;
	return false;
}

static size_t n_modes(const struct probe_result *r) {
	size_t n = 0;
	while (r->migration_modes && r->migration_modes[n])
		n++;
	return n;
}

/* ---- real QEMU ---- */

START_TEST(test_qemu_10) {
	struct outcome o, again;
	struct probe_result *r, *c;
	struct json_object *j = NULL;
	uint64_t t0;
	const char *def = NULL;

	probe_and_wait(QEMU_10, -1, NULL, &o);
	ck_assert_msg(o.error == 0, "probe failed: %s", o.reason);
	r = o.result;
	ck_assert_str_eq(r->path, QEMU_10);
	ck_assert_uint_eq(r->major, 10);
	ck_assert_uint_eq(r->minor, 0);
	ck_assert_ptr_nonnull(r->package);
	ck_assert(!r->cached);
	ck_assert_str_eq(probe_result_resolve_machine(r, "pc"), "pc-i440fx-10.0");
	ck_assert_str_eq(probe_result_resolve_machine(r, "q35"), "pc-q35-10.0");
	ck_assert_str_eq(probe_result_resolve_machine(r, "pc-i440fx-7.2"), "pc-i440fx-7.2");
	ck_assert_ptr_null(probe_result_resolve_machine(r, "no-such-machine"));
	for (size_t i = 0; i < r->n_machines; i++)
		if (r->machines[i].is_default)
			def = r->machines[i].name;
	ck_assert_str_eq(def, "pc-i440fx-10.0");

	ck_assert(r->cpr_transfer);
	ck_assert(!r->cpr_exec);
	ck_assert(has_mode(r, "normal"));
	ck_assert(has_mode(r, "cpr-reboot"));
	ck_assert(has_mode(r, "cpr-transfer"));
	ck_assert(r->x_ignore_shared);
	ck_assert(r->aux_ram_share);

	ck_assert_int_eq(probe_result_to_json(r, &j), 0);
	ck_assert(json_object_get_boolean(json_object_object_get(j, "cprTransfer")));
	ck_assert(json_object_get_boolean(json_object_object_get(j, "auxRamShare")));
	ck_assert_str_eq(json_object_get_string(json_object_object_get(
				 json_object_object_get(j, "version"), "string")), "10.0.2");
	ck_assert_uint_eq(json_object_array_length(json_object_object_get(j, "machines")),
			  r->n_machines);
	json_object_put(j);

	/* The same file again: from the cache, at once, and the same answer. */
	t0 = mono_usec();
	probe_and_wait(QEMU_10, -1, NULL, &again);
	ck_assert_int_eq(again.error, 0);
	ck_assert(again.result->cached);
	ck_assert_uint_lt(mono_usec() - t0, 100 * 1000);
	ck_assert_uint_eq(again.result->n_machines, r->n_machines);
	ck_assert(again.result->cpr_transfer);
	ck_assert_str_eq(again.result->package, r->package);
	outcome_done(&again);

	c = probe_cache_lookup(QEMU_10);
	ck_assert_ptr_nonnull(c);
	ck_assert(c->cached);
	ck_assert_uint_eq(c->major, 10);
	probe_result_free(c);

	/* no_cache runs it again. */
	probe_and_wait(QEMU_10, -1, &(struct probe_options){ .no_cache = true }, &again);
	ck_assert_int_eq(again.error, 0);
	ck_assert(!again.result->cached);
	outcome_done(&again);
	outcome_done(&o);
}
END_TEST

START_TEST(test_qemu_72) {
	struct outcome o;
	struct probe_result *r;

	probe_and_wait(QEMU_72, -1, NULL, &o);
	ck_assert_msg(o.error == 0, "probe failed: %s", o.reason);
	r = o.result;
	ck_assert_uint_eq(r->major, 7);
	ck_assert_uint_eq(r->minor, 2);
	ck_assert_str_eq(probe_result_resolve_machine(r, "pc"), "pc-i440fx-7.2");
	ck_assert_str_eq(probe_result_resolve_machine(r, "q35"), "pc-q35-7.2");
	ck_assert(!r->cpr_transfer);
	ck_assert(!r->cpr_exec);
	ck_assert_uint_eq(n_modes(r), 0); /* no MigMode before 8.2 */
	ck_assert(r->x_ignore_shared);
	ck_assert(!r->aux_ram_share);
	outcome_done(&o);
}
END_TEST

/* The file opened beforehand is what runs: an ELF binary and a script. */
START_TEST(test_binary_fd) {
	static const char *const paths[] = { QEMU_10, QEMU_72 };

	for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
		struct outcome o;
		int fd;

		if (access(paths[i], X_OK) < 0)
			continue;
		fd = open(paths[i], O_RDONLY | O_CLOEXEC);
		ck_assert_int_ge(fd, 0);
		probe_and_wait(paths[i], fd, &(struct probe_options){ .no_cache = true }, &o);
		ck_assert_msg(o.error == 0, "probe of %s via fd failed: %s", paths[i], o.reason);
		ck_assert_uint_eq(o.result->major, i == 0 ? 10 : 7);
		ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC); /* ours is untouched */
		close(fd);
		outcome_done(&o);
	}
}
END_TEST

/* A wrapper script is cached by its own identity: touching it re-probes. */
START_TEST(test_cache_key) {
	struct outcome o;
	_cleanup_free_ char *wrapper = write_script("qemu", "exec " QEMU_10 " \"$@\"", 0755);
	struct timespec times[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_sec = 1000000000 } };

	probe_and_wait(wrapper, -1, NULL, &o);
	ck_assert_msg(o.error == 0, "%s", o.reason);
	ck_assert(!o.result->cached);
	outcome_done(&o);

	probe_and_wait(wrapper, -1, NULL, &o);
	ck_assert(o.result->cached);
	outcome_done(&o);

	ck_assert_int_eq(utimensat(AT_FDCWD, wrapper, times, 0), 0);
	ck_assert_ptr_null(probe_cache_lookup(wrapper));
	probe_and_wait(wrapper, -1, NULL, &o);
	ck_assert_int_eq(o.error, 0);
	ck_assert(!o.result->cached);
	outcome_done(&o);
}
END_TEST

/* ---- not QEMU ---- */

START_TEST(test_bin_false) {
	struct outcome o;

	probe_and_wait("/bin/false", -1, NULL, &o);
	ck_assert_int_eq(o.error, -EPROTO);
	ck_assert_msg(strstr(o.reason, "not a QEMU binary: exited with status 1 before the QMP "
				       "greeting"), "reason: %s", o.reason);
	ck_assert_ptr_null(probe_cache_lookup("/bin/false"));
}
END_TEST

START_TEST(test_prints_garbage) {
	struct outcome o;
	_cleanup_free_ char *path =
		write_script("garbage", "echo 'this is not QEMU'\necho 'neither is this' >&2\nexit 3", 0755);

	probe_and_wait(path, -1, NULL, &o);
	ck_assert_int_eq(o.error, -EPROTO);
	ck_assert_msg(strstr(o.reason, "exited with status 3 before the QMP greeting"), "%s",
		      o.reason);
	ck_assert_msg(strstr(o.reason, "output: this is not QEMU neither is this"), "%s", o.reason);
}
END_TEST

/* Garbage on the QMP socket itself: the probe ends at once, and the sleep the
 * script left running is killed with its process group. */
START_TEST(test_speaks_garbage) {
	struct outcome o;
	_cleanup_free_ char *pidfile = NULL, *path = NULL;
	char script[512];
	uint64_t t0 = mono_usec();
	FILE *f;
	int pid = 0;

	ck_assert_int_gt(asprintf(&pidfile, "%s/pid", tmpdir), 0);
	snprintf(script, sizeof(script),
		 "echo $$ > %s\n"
		 "for a; do case \"$a\" in socket,id=qmp,fd=*) fd=${a#socket,id=qmp,fd=};; esac; done\n"
		 "eval \"echo 'Welcome to my shell' >&$fd\"\n"
		 "sleep 1000\n",
		 pidfile);
	path = write_script("speaks-garbage", script, 0755);

	probe_and_wait(path, -1, NULL, &o);
	ck_assert_int_eq(o.error, -EPROTO);
	ck_assert_msg(strstr(o.reason, "not a QEMU binary: it sent something that is not QMP"), "%s",
		      o.reason);
	ck_assert_uint_lt(mono_usec() - t0, 3 * 1000 * 1000);

	f = fopen(pidfile, "re");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fscanf(f, "%d", &pid), 1);
	fclose(f);
	ck_assert(process_group_gone(pid));
}
END_TEST

START_TEST(test_hangs) {
	struct outcome o;
	_cleanup_free_ char *pidfile = NULL, *path = NULL;
	char script[256];
	uint64_t t0 = mono_usec();
	FILE *f;
	int pid = 0;

	ck_assert_int_gt(asprintf(&pidfile, "%s/pid", tmpdir), 0);
	snprintf(script, sizeof(script), "echo $$ > %s\necho starting\nsleep 1000", pidfile);
	path = write_script("hangs", script, 0755);

	probe_and_wait(path, -1, &(struct probe_options){ .timeout_usec = 500 * 1000 }, &o);
	ck_assert_int_eq(o.error, -ETIMEDOUT);
	ck_assert_msg(strstr(o.reason, "timed out after 0.5 s waiting for the QMP greeting"), "%s",
		      o.reason);
	ck_assert_msg(strstr(o.reason, "output: starting"), "%s", o.reason);
	ck_assert_uint_lt(mono_usec() - t0, 3 * 1000 * 1000);

	f = fopen(pidfile, "re");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fscanf(f, "%d", &pid), 1);
	fclose(f);
	ck_assert(process_group_gone(pid)); /* sh and its sleep */
}
END_TEST

START_TEST(test_crashes) {
	struct outcome o;
	_cleanup_free_ char *path = write_script("crashes", "kill -SEGV $$", 0755);

	probe_and_wait(path, -1, NULL, &o);
	ck_assert_int_eq(o.error, -EPROTO);
	ck_assert_msg(strstr(o.reason, "not a QEMU binary: killed by signal 11 (SIGSEGV)"), "%s",
		      o.reason);
}
END_TEST

START_TEST(test_cannot_run) {
	struct outcome o;
	_cleanup_free_ char *missing = NULL, *noexec = write_script("noexec", "exit 0", 0644);

	ck_assert_int_gt(asprintf(&missing, "%s/missing", tmpdir), 0);
	probe_and_wait(missing, -1, NULL, &o);
	ck_assert_int_eq(o.error, -ENOENT);
	ck_assert_msg(strstr(o.reason, "cannot access"), "%s", o.reason);

	/* Root may read a 0644 file but not execute it. */
	probe_and_wait(noexec, -1, NULL, &o);
	ck_assert_int_eq(o.error, -EACCES);
	ck_assert_msg(strstr(o.reason, "cannot execute"), "%s", o.reason);

	ck_assert_int_eq(probe_run(base, "", -1, NULL, on_done, &o, NULL), -EINVAL);
	ck_assert_int_eq(probe_run(base, "/bin/true", -1, NULL, NULL, &o, NULL), -EINVAL);
}
END_TEST

START_TEST(test_cancel) {
	struct outcome o = {};
	struct probe *p = NULL;
	_cleanup_free_ char *path = write_script("hangs", "sleep 1000", 0755);
	pid_t pid;

	ck_assert_int_eq(probe_run(base, path, -1, NULL, on_done, &o, &p), 0);
	pid = probe_get_pid(p);
	ck_assert_int_gt(pid, 0);
	(void)RUN_UNTIL(false, 100);
	probe_cancel(p);
	ck_assert(RUN_UNTIL(loop_idle(), 5000));
	ck_assert_int_eq(o.n_calls, 0);
	ck_assert(process_group_gone(pid));

	/* An answer cancelled while it waits on the loop: nothing either. */
	ck_assert_int_eq(probe_run(base, "/nonexistent", -1, NULL, on_done, &o, &p), 0);
	probe_cancel(p);
	ck_assert(RUN_UNTIL(loop_idle(), 1000));
	ck_assert_int_eq(o.n_calls, 0);
}
END_TEST

/* ---- --qemu-user ---- */

static int gid_cmp(const void *a, const void *b) {
	gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
	return x < y ? -1 : x > y;
}

/* A probe is a child that runs a binary cprd was handed: with --qemu-user
 * it must run as that user, real, effective and saved ids alike, with that
 * user's groups and none of root's. The "binary" (root's, as binary.c
 * requires) reports what the kernel says about it and exits, so the probe
 * fails with that in its reason. */
START_TEST(test_qemu_user) {
	struct outcome o;
	struct passwd *pw = getpwnam("nobody");
	gid_t groups[64];
	int n = ELEMENTSOF(groups);
	char want[512];
	size_t w;

	ck_assert_ptr_nonnull(pw);
	ck_assert_int_ge(getgrouplist(pw->pw_name, pw->pw_gid, groups, &n), 0);
	qsort(groups, (size_t)n, sizeof(groups[0]), gid_cmp);
	w = (size_t)snprintf(want, sizeof(want), "output: Uid: %u %u %u %u Gid: %u %u %u %u Groups:",
			     pw->pw_uid, pw->pw_uid, pw->pw_uid, pw->pw_uid, pw->pw_gid,
			     pw->pw_gid, pw->pw_gid, pw->pw_gid);
	for (int i = 0; i < n; i++) /* the kernel lists each group once, sorted */
		if (i == 0 || groups[i] != groups[i - 1])
			w += (size_t)snprintf(want + w, sizeof(want) - w, " %u", groups[i]);
	ck_assert_int_eq(qemu_set_user("nobody"), 0);

	_cleanup_free_ char *path = write_script(
		"whoami", "awk '/^(Uid|Gid|Groups):/ { $1 = $1; printf \"%s \", $0 }' /proc/self/status\nexit 3",
		0755);
	/* As cprd runs it: through an fd of the checked file (its folder is
	 * root's 0700, which nobody could not search). */
	int fd = open(path, O_PATH | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	probe_and_wait(path, fd, NULL, &o);
	close(fd);
	ck_assert_int_eq(o.error, -EPROTO);
	ck_assert_msg(strstr(o.reason, "exited with status 3 before the QMP greeting"), "%s",
		      o.reason);
	ck_assert_msg(strstr(o.reason, want), "want \"%s\" in: %s", want, o.reason);
}
END_TEST

static Suite *probe_suite(bool have_10, bool have_72) {
	Suite *s = suite_create("probe");
	TCase *tc = tcase_create("qemu");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	if (have_10) {
		tcase_add_test(tc, test_qemu_10);
		tcase_add_test(tc, test_cache_key);
	}
	if (have_72)
		tcase_add_test(tc, test_qemu_72);
	if (have_10 || have_72)
		tcase_add_test(tc, test_binary_fd);
	suite_add_tcase(s, tc);

	tc = tcase_create("not-qemu");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_bin_false);
	tcase_add_test(tc, test_prints_garbage);
	tcase_add_test(tc, test_speaks_garbage);
	tcase_add_test(tc, test_hangs);
	tcase_add_test(tc, test_crashes);
	tcase_add_test(tc, test_cannot_run);
	tcase_add_test(tc, test_cancel);
	suite_add_tcase(s, tc);

	/* Last: the user stays set for the rest of the process (when Check
	 * runs without forking), and dropping to it needs root. */
	if (geteuid() == 0 && getpwnam("nobody")) {
		tc = tcase_create("qemu-user");
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 30);
		tcase_add_test(tc, test_qemu_user);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void) {
	bool have_10 = access(QEMU_10, X_OK) == 0, have_72 = access(QEMU_72, X_OK) == 0;
	SRunner *sr;
	int failed;

	if (getenv("CPRD_TEST_DEBUG"))
		log_set_max_level(LOG_DEBUG);
	sr = srunner_create(probe_suite(have_10, have_72));
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (failed)
		return EXIT_FAILURE;
	if (!have_10 || !have_72) {
		printf("SKIP: %s%s%s not found; the tests needing them did not run\n",
		       have_10 ? "" : QEMU_10, !have_10 && !have_72 ? " and " : "",
		       have_72 ? "" : QEMU_72);
		return 77;
	}
	return EXIT_SUCCESS;
}
