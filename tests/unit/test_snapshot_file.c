/* Check suite for daemon/snapshot-file.c: the checksum (the same however
 * the bytes are split, different for any change or truncation), the record
 * written and read back field by field (a corrupt one refused with the
 * field named), the folder checks, the unnamed file named only at the end
 * and never over an existing one, the hasher on a loop, and the kernel's
 * userfaultfd write-protection of a shared memfd. */
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-run.h"
#include "macro.h"
#include "snapshot-file.h"

static void hash_of(const void *data, size_t len, char out[static 25]) {
	struct snapshot_hash h;
	snapshot_hash_init(&h);
	snapshot_hash_update(&h, data, len);
	snapshot_hash_final(&h, out);
}

START_TEST(test_hash_splits_and_changes) {
	uint8_t buf[1000];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7 + 3);
	char whole[25], parts[25], other[25], shorter[25], padded[25];
	hash_of(buf, sizeof(buf), whole);
	ck_assert_int_eq(strncmp(whole, "fnv1a64:", 8), 0);
	ck_assert_uint_eq(strlen(whole), 24);

	/* Split at every odd place: the same. */
	for (size_t a = 0; a < 20; a++) {
		struct snapshot_hash h;
		snapshot_hash_init(&h);
		snapshot_hash_update(&h, buf, a);
		snapshot_hash_update(&h, buf + a, 3);
		snapshot_hash_update(&h, buf + a + 3, sizeof(buf) - a - 3);
		snapshot_hash_final(&h, parts);
		ck_assert_str_eq(parts, whole);
	}
	buf[500] ^= 1;
	hash_of(buf, sizeof(buf), other);
	ck_assert_str_ne(other, whole);
	buf[500] ^= 1;
	hash_of(buf, sizeof(buf) - 1, shorter);
	ck_assert_str_ne(shorter, whole);
	/* Zeros appended are not the same file: the length is mixed in. */
	uint8_t z[8] = {1, 0, 0, 0, 0, 0, 0, 0}, z2[9] = {1, 0, 0, 0, 0, 0, 0, 0, 0};
	hash_of(z, sizeof(z), shorter);
	hash_of(z2, sizeof(z2), padded);
	ck_assert_str_ne(shorter, padded);
	/* The value the integration test's Python computes for b"abc". */
	hash_of("abc", 3, other);
	ck_assert_str_eq(other, "fnv1a64:c88fe5618ddac4fd");
}
END_TEST

static struct json_object *good_record(void) {
	struct snapshot_record r = {
		.vm = "vm1",
		.machine = "pc-i440fx-10.0",
		.memory_mib = 64,
		.qemu = "/usr/bin/qemu-system-x86_64",
		.major = 10,
		.minor = 0,
		.micro = 2,
		.state_bytes = 798800,
		.state_hash = "fnv1a64:0123456789abcdef",
		.time = "2026-11-28T09:00:00.000Z",
	};
	r.spec = json_tokener_parse("{\"name\":\"vm1\",\"memory\":64,\"machine\":\"pc-i440fx-10.0\","
				    "\"qemu\":\"/usr/bin/qemu-system-x86_64\"}");
	struct json_object *o = snapshot_record_to_json(&r);
	json_object_put(r.spec);
	return o;
}

START_TEST(test_record_round_trip) {
	struct json_object *o = good_record();
	struct snapshot_record r;
	char why[256];
	ck_assert_int_eq(snapshot_record_from_json(o, &r, why, sizeof(why)), 0);
	ck_assert_str_eq(r.vm, "vm1");
	ck_assert_str_eq(r.machine, "pc-i440fx-10.0");
	ck_assert_uint_eq(r.memory_mib, 64);
	ck_assert_uint_eq(r.major, 10);
	ck_assert_uint_eq(r.micro, 2);
	ck_assert_uint_eq(r.state_bytes, 798800);
	ck_assert_str_eq(r.state_hash, "fnv1a64:0123456789abcdef");
	ck_assert_str_eq(json_object_get_string(json_object_object_get(r.spec, "name")), "vm1");
	snapshot_record_done(&r);
	json_object_put(o);
}
END_TEST

/* Each broken record is refused, and why names what is wrong. */
START_TEST(test_record_refused) {
	static const struct {
		const char *key;
		const char *json; /* the value put in its place; NULL: removed */
		const char *words;
	} cases[] = {
		{"format", "2", "format 2"},
		{"format", NULL, "format"},
		{"vm", "7", "vm"},
		{"machine", NULL, "machine"},
		{"memoryMiB", "-1", "memoryMiB"},
		{"qemuVersion", "\"ten\"", "MAJOR.MINOR.MICRO"},
		{"stateBytes", "0", "stateBytes"},
		{"stateHash", "\"md5:1\"", "stateHash"},
		{"spec", "[]", "spec"},
		{"spec", NULL, "spec"},
	};
	for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
		struct json_object *o = good_record();
		if (cases[i].json)
			json_object_object_add(o, cases[i].key, json_tokener_parse(cases[i].json));
		else
			json_object_object_del(o, cases[i].key);
		struct snapshot_record r = {0};
		char why[256] = "";
		ck_assert_int_eq(snapshot_record_from_json(o, &r, why, sizeof(why)), -EBADMSG);
		ck_assert_msg(strstr(why, cases[i].words), "case %zu: '%s' lacks '%s'", i, why,
			      cases[i].words);
		ck_assert_ptr_null(r.vm);
		json_object_put(o);
	}
	struct snapshot_record r = {0};
	char why[256];
	struct json_object *a = json_object_new_array();
	ck_assert_int_eq(snapshot_record_from_json(a, &r, why, sizeof(why)), -EBADMSG);
	json_object_put(a);
}
END_TEST

static char tmpdir[] = "/tmp/cprd-test-snapshot-XXXXXX";

static void setup(void) {
	strcpy(tmpdir, "/tmp/cprd-test-snapshot-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void teardown(void) {
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	ck_assert_int_eq(system(cmd), 0);
}

START_TEST(test_dir_checks) {
	char why[512], sub[256];
	ck_assert_int_eq(snapshot_dir_check(tmpdir, why, sizeof(why)), 0);
	snprintf(sub, sizeof(sub), "%s/loose", tmpdir);
	ck_assert_int_eq(mkdir(sub, 0700), 0);
	ck_assert_int_eq(chmod(sub, 0770), 0);
	ck_assert_int_eq(snapshot_dir_check(sub, why, sizeof(why)), -EPERM);
	ck_assert_ptr_nonnull(strstr(why, "writable by group or others"));
	ck_assert_int_eq(chmod(sub, 0700), 0);
	ck_assert_int_eq(chown(sub, 1, 1), 0);
	ck_assert_int_eq(snapshot_dir_check(sub, why, sizeof(why)), -EPERM);
	ck_assert_ptr_nonnull(strstr(why, "uid 1"));
	snprintf(sub, sizeof(sub), "%s/none", tmpdir);
	ck_assert_int_lt(snapshot_dir_check(sub, why, sizeof(why)), 0);
	int fd = -1;
	ck_assert_int_eq(snapshot_file_create("relative.state", &fd, why, sizeof(why)), -EINVAL);
	ck_assert_ptr_nonnull(strstr(why, "absolute"));
}
END_TEST

/* Nothing has the name until the end; an existing file or record is never
 * overwritten; what is opened again is the file with its record. */
START_TEST(test_file_life) {
	char path[256], rec[300], why[512];
	snprintf(path, sizeof(path), "%s/vm1.state", tmpdir);
	snprintf(rec, sizeof(rec), "%s.json", path);
	int fd = -1;
	ck_assert_int_eq(snapshot_file_create(path, &fd, why, sizeof(why)), 0);
	ck_assert_int_eq(write(fd, "state-bytes", 11), 11);
	ck_assert_int_eq(access(path, F_OK), -1); /* unnamed so far */
	struct stat st;
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_uint_eq(st.st_mode & 07777, 0600);
	ck_assert_int_eq(snapshot_file_link(fd, path), 0);
	ck_assert_int_eq(snapshot_file_link(fd, path), -EEXIST);
	close(fd);

	/* A second snapshot to the same name is refused before anything. */
	ck_assert_int_eq(snapshot_file_create(path, &fd, why, sizeof(why)), -EEXIST);
	ck_assert_ptr_nonnull(strstr(why, "exists already"));

	/* Without its record it is not a snapshot. */
	uint64_t size = 0;
	struct snapshot_record r = {0};
	ck_assert_int_lt(snapshot_file_open(path, &fd, &size, &r, why, sizeof(why)), 0);
	ck_assert_ptr_nonnull(strstr(why, "record"));

	struct json_object *o = good_record();
	ck_assert_int_eq(json_object_to_file(rec, o), 0);
	json_object_put(o);
	ck_assert_int_eq(snapshot_file_open(path, &fd, &size, &r, why, sizeof(why)), 0);
	ck_assert_uint_eq(size, 11);
	ck_assert_str_eq(r.vm, "vm1");
	snapshot_record_done(&r);
	close(fd);

	/* A record that is not JSON, and a file others may write. */
	FILE *f = fopen(rec, "w");
	fputs("{\"format\":1,", f);
	fclose(f);
	ck_assert_int_eq(snapshot_file_open(path, &fd, &size, &r, why, sizeof(why)), -EBADMSG);
	ck_assert_ptr_nonnull(strstr(why, "not valid JSON"));
	ck_assert_int_eq(chmod(path, 0666), 0);
	ck_assert_int_eq(snapshot_file_open(path, &fd, &size, &r, why, sizeof(why)), -EPERM);

	/* And a record beside a name that is free still blocks it. */
	char other[256], other_rec[300];
	snprintf(other, sizeof(other), "%s/vm2.state", tmpdir);
	snprintf(other_rec, sizeof(other_rec), "%s.json", other);
	ck_assert_int_eq(close(open(other_rec, O_CREAT | O_WRONLY | O_CLOEXEC, 0600)), 0);
	ck_assert_int_eq(snapshot_file_create(other, &fd, why, sizeof(why)), -EEXIST);
}
END_TEST

struct hash_run {
	struct event_base *base;
	int error;
	char hash[25];
	int progress;
};

static void on_progress(uint64_t done, uint64_t size, void *userdata) {
	struct hash_run *h = userdata;
	ck_assert_uint_lt(done, size);
	h->progress++;
}

static void on_done(int error, const char *hash, void *userdata) {
	struct hash_run *h = userdata;
	h->error = error;
	if (hash)
		snprintf(h->hash, sizeof(h->hash), "%s", hash);
	event_base_loopbreak(h->base);
}

/* The hasher on a loop: the same checksum as in one go, over several
 * turns; a file shorter than it is told is an error. */
START_TEST(test_hasher) {
	char path[256];
	snprintf(path, sizeof(path), "%s/data", tmpdir);
	size_t len = 2 * SNAPSHOT_HASH_CHUNK + 12345;
	uint8_t *buf = malloc(len);
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(i ^ (i >> 9));
	int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
	char want[25];
	hash_of(buf, len, want);
	free(buf);

	struct hash_run h = {.base = event_base_new(), .error = 1};
	struct snapshot_hasher *hs = NULL;
	ck_assert_int_eq(snapshot_hasher_start(h.base, fd, len, on_progress, on_done, &h, &hs), 0);
	event_base_dispatch(h.base);
	ck_assert_int_eq(h.error, 0);
	ck_assert_str_eq(h.hash, want);
	ck_assert_int_eq(h.progress, 2);
	snapshot_hasher_free(hs);

	h.error = 1;
	ck_assert_int_eq(snapshot_hasher_start(h.base, fd, len + 1, NULL, on_done, &h, &hs), 0);
	event_base_dispatch(h.base);
	ck_assert_int_eq(h.error, -EIO);
	snapshot_hasher_free(hs);
	event_base_free(h.base);
	close(fd);
}
END_TEST

/* The kernel here (>= 5.19) write-protects a shared memfd; root may make a
 * userfaultfd, and a uid may not while vm.unprivileged_userfaultfd is 0. */
START_TEST(test_uffd) {
	char why[512] = "";
	int r = snapshot_uffd_wp_check(why, sizeof(why));
	ck_assert_msg(r == 0, "uffd-wp on a shared memfd: %s", why);
	ck_assert(snapshot_uffd_allowed_for(0, why, sizeof(why)));
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "r");
	int v = f ? fgetc(f) : '1';
	if (f)
		fclose(f);
	struct stat st;
	bool dev_open = stat("/dev/userfaultfd", &st) == 0 && (st.st_mode & S_IWOTH);
	if (v == '0' && !dev_open) {
		ck_assert(!snapshot_uffd_allowed_for(64000, why, sizeof(why)));
		ck_assert_ptr_nonnull(strstr(why, "vm.unprivileged_userfaultfd"));
	}
	/* The sysctl's file has st_size 0: its value must be read all the same. */
	if (v == '1')
		ck_assert_msg(snapshot_uffd_allowed_for(64000, why, sizeof(why)), "%s", why);
}
END_TEST

static Suite *snapshot_file_suite(void) {
	Suite *s = suite_create("snapshot_file");
	TCase *tc = tcase_create("pure");
	tcase_add_test(tc, test_hash_splits_and_changes);
	tcase_add_test(tc, test_record_round_trip);
	tcase_add_test(tc, test_record_refused);
	suite_add_tcase(s, tc);
	/* Folders owned by root, chown, userfaultfd: as root (CI runs as root). */
	if (geteuid() == 0) {
		tc = tcase_create("files");
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_add_test(tc, test_dir_checks);
		tcase_add_test(tc, test_file_life);
		tcase_add_test(tc, test_hasher);
		tcase_add_test(tc, test_uffd);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void) {
	return check_run(snapshot_file_suite());
}
