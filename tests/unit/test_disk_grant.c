/* Check suite for daemon/disk-grant.c: the grant records as vm.json keeps
 * them, and (as root) real files given to a uid and given back: the chown
 * and mode of a writable disk, the ACL entries of a read-only disk that
 * two VMs share, refusals, a file replaced meanwhile, and the open tried
 * by a child that became the uid. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "check-run.h"
#include "disk-grant.h"
#include "qemu.h"
#include "spec.h"
#include "users.h"

#define UID_A 290001
#define UID_B 290002
static const struct users_range range = {.set = true, .first = 290000, .last = 290999};

START_TEST(test_json_round_trip) {
	struct disk_grant v[2] = {
		{.path = "/var/lib/vm/a.img", .dev = 2049, .ino = 123456789012ULL, .kind = DISK_GRANT_OWNER,
		 .uid = UID_A, .owner = 0, .group = 6, .mode = 0640},
		{.path = "/srv/base.img", .dev = 7, .ino = 8, .kind = DISK_GRANT_ACL, .uid = UID_A},
	};
	const struct disk_grants g = {.v = v, .n = 2};
	struct json_object *j = disk_grants_to_json(&g);
	/* Through text, as vm.json is read back. */
	struct json_object *back = json_tokener_parse(json_object_to_json_string(j));
	struct disk_grants r;
	char why[256];
	ck_assert_int_eq(disk_grants_from_json(back, &r, why, sizeof(why)), 0);
	ck_assert_uint_eq(r.n, 2);
	for (size_t i = 0; i < 2; i++) {
		ck_assert_str_eq(r.v[i].path, v[i].path);
		ck_assert_uint_eq(r.v[i].dev, v[i].dev);
		ck_assert_uint_eq(r.v[i].ino, v[i].ino);
		ck_assert_int_eq(r.v[i].kind, v[i].kind);
		ck_assert_uint_eq(r.v[i].uid, v[i].uid);
		ck_assert_uint_eq(r.v[i].owner, v[i].owner);
		ck_assert_uint_eq(r.v[i].group, v[i].group);
		ck_assert_uint_eq(r.v[i].mode, v[i].mode);
	}
	/* An ACL grant has nothing to put back but the entry. */
	ck_assert_ptr_null(json_object_object_get(json_object_array_get_idx(j, 1), "owner"));
	disk_grants_clear(&r);
	ck_assert_uint_eq(r.n, 0);
	json_object_put(back);
	json_object_put(j);
}
END_TEST

static void refused(const char *text, const char *says) {
	struct json_object *j = json_tokener_parse(text);
	struct disk_grants r = {0};
	char why[256] = "";
	ck_assert_msg(j, "%s", text);
	ck_assert_int_eq(disk_grants_from_json(j, &r, why, sizeof(why)), -EBADMSG);
	ck_assert_msg(strstr(why, says), "want \"%s\" in \"%s\"", says, why);
	ck_assert_uint_eq(r.n, 0);
	json_object_put(j);
}

START_TEST(test_json_refused) {
	refused("{}", "diskGrants is not an array");
	refused("[1]", "diskGrants[0]: is not an object");
	refused("[{\"path\":\"/a\",\"kind\":\"acl\",\"dev\":1,\"ino\":2}]", "diskGrants[0]: no uid");
	refused("[{\"path\":\"/a\",\"kind\":\"acl\",\"dev\":1,\"ino\":2,\"uid\":0}]", "uid");
	refused("[{\"path\":\"a\",\"kind\":\"acl\",\"dev\":1,\"ino\":2,\"uid\":5}]", "path is not absolute");
	refused("[{\"path\":\"/a\",\"kind\":\"chmod\",\"dev\":1,\"ino\":2,\"uid\":5}]", "kind is neither");
	refused("[{\"path\":\"/a\",\"kind\":\"owner\",\"dev\":1,\"ino\":2,\"uid\":5,\"owner\":0,\"group\":0}]",
		"diskGrants[0]: no mode");
	refused("[{\"path\":\"/a\",\"kind\":\"owner\",\"dev\":1,\"ino\":2,\"uid\":5,\"owner\":0,\"group\":0,"
		"\"mode\":4096}]",
		"mode");
	refused("[{\"path\":\"/a\",\"kind\":\"acl\",\"dev\":-1,\"ino\":2,\"uid\":5}]", "dev");
	/* More records than a VM has disks, backing files and overlays. */
	static char many[DISK_GRANTS_MAX * 3 + 16];
	strcpy(many, "[");
	for (int i = 0; i <= DISK_GRANTS_MAX; i++)
		strcat(many, i ? ",{}" : "{}");
	strcat(many, "]");
	refused(many, "more than 1032 disks, their backing files and overlays");
}
END_TEST

/* ---- real files, as root ---- */

static char dir[] = "/tmp/cprd-test-grant-XXXXXX";

static void setup(void) {
	ck_assert_ptr_nonnull(mkdtemp(dir));
	ck_assert_int_eq(chmod(dir, 0711), 0); /* the uids may pass, as QEMU must */
}

static void teardown(void) {
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
	strcpy(dir, "/tmp/cprd-test-grant-XXXXXX");
}

static char *make_file(const char *name, mode_t mode) {
	char *p = NULL;
	ck_assert_int_gt(asprintf(&p, "%s/%s", dir, name), 0);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "disk", 4), 4);
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
	return p;
}

/* The ACL_USER qualifiers in path's access ACL, as the xattr stores them
 * (version 2, then 8-byte entries: tag, perm, id); -1 when it has none. */
static int acl_users(const char *path, unsigned *ids, int max) {
	unsigned char buf[512];
	ssize_t n = getxattr(path, "system.posix_acl_access", buf, sizeof(buf));
	if (n < 0) {
		ck_assert_int_eq(errno, ENODATA);
		return -1;
	}
	int k = 0;
	for (ssize_t off = 4; off + 8 <= n; off += 8) {
		unsigned tag = buf[off] | buf[off + 1] << 8;
		unsigned id = buf[off + 4] | buf[off + 5] << 8 | buf[off + 6] << 16 | (unsigned)buf[off + 7] << 24;
		if (tag == 0x02 && k < max) /* ACL_USER */
			ids[k++] = id;
	}
	return k;
}

static void assert_owner(const char *path, uid_t uid, gid_t gid, mode_t mode) {
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_uid, uid);
	ck_assert_uint_eq(st.st_gid, gid);
	ck_assert_uint_eq(st.st_mode & 07777, mode);
}

static void give(const struct spec_disk *disks, size_t n, uid_t uid, struct disk_grants *g) {
	char why[512] = "";
	size_t failed = 99;
	ck_assert_msg(disk_grants_plan(disks, n, uid, &range, g, &failed, why, sizeof(why)) == 0, "%s", why);
	ck_assert_msg(disk_grants_apply(g, &failed, why, sizeof(why)) == 0, "%s", why);
}

START_TEST(test_writable_and_shared) {
	char *rw = make_file("rw.img", 0644), *shared = make_file("shared.img", 0640);
	ck_assert_int_eq(chown(rw, 0, 4), 0);
	struct spec_disk a[] = {{.path = rw, .format = "raw"}, {.path = shared, .format = "raw", .readonly = true}};
	struct spec_disk b[] = {{.path = shared, .format = "raw", .readonly = true}};
	struct disk_grants ga = {0}, gb = {0};
	const struct qemu_identity ida = {.uid = UID_A, .gid = UID_A}, idb = {.uid = UID_B, .gid = UID_B};
	size_t failed = 99;
	unsigned ids[4];

	/* Before: neither uid may open anything. */
	ck_assert_int_eq(disk_grants_check_open(&ida, a, 2, &failed, NULL), -EACCES);
	ck_assert_uint_eq(failed, 0);

	give(a, 2, UID_A, &ga);
	ck_assert_uint_eq(ga.n, 2);
	ck_assert_int_eq(ga.v[0].kind, DISK_GRANT_OWNER);
	ck_assert_int_eq(ga.v[1].kind, DISK_GRANT_ACL);
	assert_owner(rw, UID_A, UID_A, 0600);
	ck_assert_int_eq(acl_users(shared, ids, 4), 1);
	ck_assert_uint_eq(ids[0], UID_A);
	ck_assert_int_eq(disk_grants_check_open(&ida, a, 2, &failed, NULL), 0);
	/* B reads the shared disk only once it is given to B too, and never
	 * A's writable one. */
	ck_assert_int_eq(disk_grants_check_open(&idb, b, 1, &failed, NULL), -EACCES);
	give(b, 1, UID_B, &gb);
	ck_assert_int_eq(acl_users(shared, ids, 4), 2);
	ck_assert_int_eq(disk_grants_check_open(&idb, b, 1, &failed, NULL), 0);
	ck_assert_int_eq(disk_grants_check_open(&idb, a, 1, &failed, NULL), -EACCES);
	struct spec_disk a_ro[] = {{.path = rw, .format = "raw", .readonly = true}};
	ck_assert_int_eq(disk_grants_check_open(&idb, a_ro, 1, &failed, NULL), -EACCES);

	/* A's writable disk is A's: B may not take it, not even read-only; and
	 * a disk B reads may not be given to A to write. */
	struct disk_grants gx = {0};
	char why[512];
	ck_assert_int_eq(disk_grants_plan(a_ro, 1, UID_B, &range, &gx, &failed, why, sizeof(why)), -EBUSY);
	ck_assert_msg(strstr(why, "another VM's QEMU (uid 290001)"), "%s", why);
	disk_grants_clear(&gx);
	struct spec_disk shared_rw[] = {{.path = shared, .format = "raw"}};
	ck_assert_int_eq(disk_grants_plan(shared_rw, 1, UID_A, &range, &gx, &failed, why, sizeof(why)), -EBUSY);
	ck_assert_msg(strstr(why, "shared read-only with another VM's QEMU (uid 290002)"), "%s", why);
	disk_grants_clear(&gx);

	/* A goes: its chown is undone, its ACL entry goes, B's stays. */
	disk_grants_return(&ga, "a");
	ck_assert_uint_eq(ga.n, 0);
	assert_owner(rw, 0, 4, 0644);
	ck_assert_int_eq(acl_users(shared, ids, 4), 1);
	ck_assert_uint_eq(ids[0], UID_B);
	ck_assert_int_eq(disk_grants_check_open(&ida, b, 1, &failed, NULL), -EACCES);
	/* B goes: no ACL left, the mode as it was. */
	disk_grants_return(&gb, "b");
	ck_assert_int_eq(acl_users(shared, ids, 4), -1);
	assert_owner(shared, 0, 0, 0640);
	free(rw);
	free(shared);
}
END_TEST

START_TEST(test_replaced_and_unreachable) {
	char *rw = make_file("rw.img", 0644);
	struct spec_disk a[] = {{.path = rw, .format = "raw"}};
	struct disk_grants g = {0};
	size_t failed = 99;
	give(a, 1, UID_A, &g);

	/* Another file in its place: left alone, not chowned back. */
	char *other = make_file("other.img", 0600);
	ck_assert_int_eq(chown(other, UID_B, UID_B), 0);
	ck_assert_int_eq(rename(other, rw), 0);
	disk_grants_return(&g, "a");
	assert_owner(rw, UID_B, UID_B, 0600);

	/* Given away by someone else meanwhile: theirs to keep. */
	ck_assert_int_eq(chown(rw, 0, 0), 0);
	ck_assert_int_eq(chmod(rw, 0644), 0);
	give(a, 1, UID_A, &g);
	ck_assert_int_eq(chown(rw, 1000, 1000), 0);
	disk_grants_return(&g, "a");
	assert_owner(rw, 1000, 1000, 0600);

	/* A folder QEMU's user cannot search: the child's open fails, and
	 * says which disk. */
	char *sub = NULL, *hidden = NULL;
	ck_assert_int_gt(asprintf(&sub, "%s/private", dir), 0);
	ck_assert_int_eq(mkdir(sub, 0700), 0);
	ck_assert_int_gt(asprintf(&hidden, "%s/private/disk.img", dir), 0);
	ck_assert_int_eq(rename(rw, hidden), 0);
	ck_assert_int_eq(chown(hidden, UID_A, UID_A), 0);
	struct spec_disk two[] = {{.path = "/dev/null", .format = "raw"}, {.path = hidden, .format = "raw"}};
	const struct qemu_identity ida = {.uid = UID_A, .gid = UID_A};
	ck_assert_int_eq(disk_grants_check_open(&ida, two, 2, &failed, NULL), -EACCES);
	ck_assert_uint_eq(failed, 1);
	ck_assert_int_eq(chmod(sub, 0711), 0);
	ck_assert_int_eq(disk_grants_check_open(&ida, two, 2, &failed, NULL), 0);

	/* What is neither a file nor a block device is refused. */
	struct spec_disk chr[] = {{.path = "/dev/null", .format = "raw"}};
	char why[256];
	ck_assert_int_eq(disk_grants_plan(chr, 1, UID_A, &range, &g, &failed, why, sizeof(why)), -EINVAL);
	ck_assert_msg(strstr(why, "not a file or a block device"), "%s", why);
	disk_grants_clear(&g);
	free(sub);
	free(hidden);
	free(rw);
	free(other);
}
END_TEST

/* The backing files cprd recorded under a disk (a snapshot's, a
 * restore's) are read-only grants of their own, tried by the child and
 * given back; one that another VM's QEMU writes is refused. */
START_TEST(test_backing_chain) {
	char *base = make_file("a.qcow2", 0600), *mid = make_file("a.snap-1.qcow2", 0600),
	     *top = make_file("a.snap-2.qcow2", 0600);
	char *chain[] = {base, mid};
	struct spec_disk a[] = {{.path = top, .format = "qcow2", .backing = chain, .n_backing = 2}};
	const struct qemu_identity ida = {.uid = UID_A, .gid = UID_A};
	struct disk_grants g = {0};
	size_t failed = 99, below = 99;
	unsigned ids[4];

	/* The top alone is not enough: the child names the backing file. */
	ck_assert_int_eq(chown(top, UID_A, UID_A), 0);
	ck_assert_int_eq(disk_grants_check_open(&ida, a, 1, &failed, &below), -EACCES);
	ck_assert_uint_eq(failed, 0);
	ck_assert_uint_eq(below, 0);
	ck_assert_int_eq(chown(top, 0, 0), 0);

	give(a, 1, UID_A, &g);
	ck_assert_uint_eq(g.n, 3);
	ck_assert_int_eq(g.v[0].kind, DISK_GRANT_OWNER);
	ck_assert_str_eq(g.v[1].path, base);
	ck_assert_int_eq(g.v[1].kind, DISK_GRANT_ACL);
	ck_assert_str_eq(g.v[2].path, mid);
	ck_assert_int_eq(g.v[2].kind, DISK_GRANT_ACL);
	assert_owner(top, UID_A, UID_A, 0600);
	for (size_t i = 0; i < 2; i++) {
		ck_assert_int_eq(acl_users(chain[i], ids, 4), 1);
		ck_assert_uint_eq(ids[0], UID_A);
		assert_owner(chain[i], 0, 0, 0640); /* the mask shows as the group bits */
	}
	ck_assert_int_eq(disk_grants_check_open(&ida, a, 1, &failed, &below), 0);
	/* Given to read, never to write. */
	struct spec_disk base_rw[] = {{.path = base, .format = "qcow2"}};
	ck_assert_int_eq(disk_grants_check_open(&ida, base_rw, 1, &failed, &below), -EACCES);
	ck_assert_uint_eq(below, SIZE_MAX);
	disk_grants_return(&g, "a");
	assert_owner(top, 0, 0, 0600);
	for (size_t i = 0; i < 2; i++) {
		ck_assert_int_eq(acl_users(chain[i], ids, 4), -1);
		assert_owner(chain[i], 0, 0, 0600);
	}

	/* A snapshot's overlay made for the uid while the VM runs goes back to
	 * root with the disks; one removed again is forgotten. */
	give(a, 1, UID_A, &g);
	char *made = make_file("a.snap-3.qcow2", 0600), *gone = make_file("a.snap-4.qcow2", 0600);
	int fd = open(made, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(disk_grants_add_made(&g, made, fd, UID_A), 0);
	close(fd);
	fd = open(gone, O_RDONLY | O_CLOEXEC);
	ck_assert_int_eq(disk_grants_add_made(&g, gone, fd, UID_A), 0);
	close(fd);
	ck_assert_uint_eq(g.n, 5);
	ck_assert_int_eq(chown(made, UID_A, UID_A), 0);
	disk_grants_forget(&g, gone);
	ck_assert_uint_eq(g.n, 4);
	ck_assert_str_eq(g.v[3].path, made);
	ck_assert_int_eq(g.v[3].kind, DISK_GRANT_OWNER);
	disk_grants_return(&g, "a");
	assert_owner(made, 0, 0, 0600);
	assert_owner(top, 0, 0, 0600);
	free(made);
	free(gone);

	/* A backing file that another VM's QEMU writes: refused, nothing given. */
	ck_assert_int_eq(chown(mid, UID_B, UID_B), 0);
	char why[512] = "";
	ck_assert_int_eq(disk_grants_plan(a, 1, UID_A, &range, &g, &failed, why, sizeof(why)), -EBUSY);
	ck_assert_uint_eq(failed, 0);
	ck_assert_msg(strstr(why, "its backing file:") && strstr(why, mid) &&
			      strstr(why, "another VM's QEMU (uid 290002)"),
		      "%s", why);
	disk_grants_clear(&g);
	assert_owner(top, 0, 0, 0600);
	ck_assert_int_eq(acl_users(base, ids, 4), -1);
	free(base);
	free(mid);
	free(top);
}
END_TEST

static Suite *grant_suite(void) {
	Suite *s = suite_create("disk-grant");
	TCase *tc = tcase_create("records");
	tcase_add_test(tc, test_json_round_trip);
	tcase_add_test(tc, test_json_refused);
	suite_add_tcase(s, tc);
	if (geteuid() == 0) {
		tc = tcase_create("files");
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_add_test(tc, test_writable_and_shared);
		tcase_add_test(tc, test_replaced_and_unreachable);
		tcase_add_test(tc, test_backing_chain);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void) {
	return check_run(grant_suite());
}
