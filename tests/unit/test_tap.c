/* Check suite for daemon/tap.c: interface names, a VM's tap names and its
 * NICs' MACs (pure: stable, distinct, within the kernel's limits), MAC
 * syntax; and, as root, real taps made in a network namespace of the
 * test's own (a forked child that unshares CLONE_NEWNET and mounts its own
 * /sys), so no interface of the host is ever touched: a tap lands on its
 * bridge and is up, closing the last fd removes it, and a missing bridge,
 * a device that is no bridge or a name in use is refused with a sentence
 * and leaves no tap. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-run.h"
#include "macro.h"
#include "tap.h"

START_TEST(test_ifname_valid) {
	ck_assert(tap_ifname_valid("br0"));
	ck_assert(tap_ifname_valid("a"));
	ck_assert(tap_ifname_valid("virbr0-nic.x_y~"));
	ck_assert(tap_ifname_valid("123456789012345")); /* 15: the longest */
	ck_assert(!tap_ifname_valid("1234567890123456"));
	ck_assert(!tap_ifname_valid(""));
	ck_assert(!tap_ifname_valid("."));
	ck_assert(!tap_ifname_valid(".."));
	ck_assert(!tap_ifname_valid("a/b"));
	ck_assert(!tap_ifname_valid("a:1"));
	ck_assert(!tap_ifname_valid("a b"));
	ck_assert(!tap_ifname_valid("a\tb"));
	ck_assert(!tap_ifname_valid("tap%d"));
	ck_assert(!tap_ifname_valid("br\xc3\xa9"));
	ck_assert(!tap_ifname_valid("a\x7f"));
}
END_TEST

START_TEST(test_name) {
	char buf[IFNAMSIZ], again[IFNAMSIZ];
	ck_assert_int_eq(tap_name("vm1", 0, buf), 0);
	ck_assert_str_eq(buf, "cprd-vm1-0");
	ck_assert_int_eq(tap_name("abcdefgh", 7, buf), 0); /* 8 characters still fit */
	ck_assert_str_eq(buf, "cprd-abcdefgh-7");

	/* Longer: two characters of the name, '~', a hash of all of it. */
	ck_assert_int_eq(tap_name("abcdefghi", 3, buf), 0);
	ck_assert_uint_eq(strlen(buf), IFNAMSIZ - 1);
	ck_assert_msg(strncmp(buf, "cprd-ab~", 8) == 0 && strcmp(buf + 13, "-3") == 0, "%s", buf);
	ck_assert_int_eq(tap_name("abcdefghi", 3, again), 0);
	ck_assert_str_eq(buf, again); /* stable */
	ck_assert_int_eq(tap_name("abcdefghj", 3, again), 0);
	ck_assert_str_ne(buf, again); /* the hash covers the whole name */

	/* Fixed for good: a change here renames the taps of running VMs. */
	ck_assert_int_eq(tap_name("a-rather-long-vm-name", 0, buf), 0);
	ck_assert_str_eq(buf, "cprd-a-~ezmyq-0");

	ck_assert_int_eq(tap_name("vm1", TAP_PER_VM_MAX, buf), -EINVAL);
	ck_assert_int_eq(tap_name("", 0, buf), -EINVAL);
}
END_TEST

/* Every name of as many VMs as cprd keeps (1024), long and short, with
 * every index: valid interface names and all distinct. */
START_TEST(test_name_distinct) {
	enum { VMS = 1024 };
	static char names[2 * VMS * TAP_PER_VM_MAX][IFNAMSIZ];
	size_t n = 0;
	for (unsigned v = 0; v < 2 * VMS; v++) {
		char vm[80];
		if (v < VMS)
			snprintf(vm, sizeof(vm), "vm%u", v);
		else /* same first characters, long form */
			snprintf(vm, sizeof(vm), "guest-of-tenant-%u", v - VMS);
		for (unsigned i = 0; i < TAP_PER_VM_MAX; i++) {
			ck_assert_int_eq(tap_name(vm, i, names[n]), 0);
			ck_assert_msg(tap_ifname_valid(names[n]), "%s", names[n]);
			n++;
		}
	}
	qsort(names, n, IFNAMSIZ, (int (*)(const void *, const void *))strcmp);
	for (size_t i = 1; i < n; i++)
		ck_assert_msg(strcmp(names[i - 1], names[i]) != 0, "two taps named %s", names[i]);
}
END_TEST

START_TEST(test_derive_mac) {
	uint8_t a[6], b[6];
	char s[TAP_MAC_STRLEN];
	tap_derive_mac("vm1", 0, a);
	tap_derive_mac("vm1", 0, b);
	ck_assert_mem_eq(a, b, 6); /* stable */
	/* Fixed for good: a change here gives stored specs' derived MACs
	 * and new ones different rules. */
	tap_mac_format(a, s);
	ck_assert_str_eq(s, "52:54:00:19:29:a0");
	tap_derive_mac("vm1", 9, b);
	tap_mac_format(b, s);
	ck_assert_str_eq(s, "52:54:00:d1:fa:e1");
	tap_mac_format(a, s);
	ck_assert_int_eq(tap_mac_parse(s, b, NULL), 0); /* unicast, not zero */
	ck_assert_mem_eq(a, b, 6);

	/* The NICs of one VM never share a MAC, whatever the name. */
	for (unsigned v = 0; v < 200; v++) {
		char vm[32];
		uint8_t macs[TAP_PER_VM_MAX][6];
		snprintf(vm, sizeof(vm), "vm-%u", v);
		for (unsigned i = 0; i < TAP_PER_VM_MAX; i++) {
			tap_derive_mac(vm, i, macs[i]);
			for (unsigned j = 0; j < i; j++)
				ck_assert(memcmp(macs[i], macs[j], 6) != 0);
		}
	}
	/* Different VMs get different ones (a 21-bit hash: these do). */
	uint8_t first[100][6];
	for (unsigned v = 0; v < 100; v++) {
		char vm[32];
		snprintf(vm, sizeof(vm), "vm%u", v);
		tap_derive_mac(vm, 0, first[v]);
		for (unsigned w = 0; w < v; w++)
			ck_assert_msg(memcmp(first[v], first[w], 6) != 0, "vm%u and vm%u", v, w);
	}
	/* Where the name ends counts (the hash takes its NUL too). */
	tap_derive_mac("vm1", 0, a);
	tap_derive_mac("vm10", 0, b);
	ck_assert(memcmp(a, b, 6) != 0);
}
END_TEST

START_TEST(test_mac_parse) {
	uint8_t m[6];
	const char *why = NULL;
	char s[TAP_MAC_STRLEN];
	ck_assert_int_eq(tap_mac_parse("52:54:00:AB:cd:0f", m, &why), 0);
	ck_assert_uint_eq(m[3], 0xab);
	ck_assert_uint_eq(m[5], 0x0f);
	tap_mac_format(m, s);
	ck_assert_str_eq(s, "52:54:00:ab:cd:0f");
	ck_assert_int_eq(tap_mac_parse("02:00:00:00:00:01", m, NULL), 0);

	static const char *const bad_syntax[] = {
		"", "52:54:00:12:34", "52:54:00:12:34:56:78", "52-54-00-12-34-56", "52:54:00:12:34:5g",
		"52:54:00:12:34:567", " 52:54:00:12:34:56", "52:54:00:12:34:56 ", "5:54:00:12:34:56",
		"525400123456", "52:54:00:12:34:", "52::54:00:12:34",
	};
	for (size_t i = 0; i < ELEMENTSOF(bad_syntax); i++) {
		why = NULL;
		ck_assert_msg(tap_mac_parse(bad_syntax[i], m, &why) == -EINVAL, "'%s'", bad_syntax[i]);
		ck_assert_ptr_nonnull(strstr(why, "hex digits"));
	}
	ck_assert_int_eq(tap_mac_parse("01:00:5e:00:00:01", m, &why), -EADDRNOTAVAIL);
	ck_assert_ptr_nonnull(strstr(why, "multicast"));
	ck_assert_int_eq(tap_mac_parse("ff:ff:ff:ff:ff:ff", m, &why), -EADDRNOTAVAIL);
	ck_assert_ptr_nonnull(strstr(why, "multicast"));
	ck_assert_int_eq(tap_mac_parse("53:54:00:12:34:56", m, &why), -EADDRNOTAVAIL);
	ck_assert_int_eq(tap_mac_parse("00:00:00:00:00:00", m, &why), -EADDRNOTAVAIL);
	ck_assert_ptr_nonnull(strstr(why, "all zeros"));
}
END_TEST

/* ---- as root, in a network namespace of our own ------------------------- */

/* In the forked child, where Check's assertions cannot report: a failed
 * expectation prints itself and ends the child with status 1. */
#define EXPECT(cond, ...)                                                     \
	do {                                                                  \
		if (!(cond)) {                                                \
			fprintf(stderr, "test_tap:%d: %s: ", __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                         \
			fputc('\n', stderr);                                  \
			_exit(1);                                             \
		}                                                             \
	} while (0)

static int sock;

static void add_bridge(const char *name) {
	EXPECT(ioctl(sock, SIOCBRADDBR, name) == 0, "SIOCBRADDBR %s: %m", name);
}

static bool exists(const char *ifname) {
	return if_nametoindex(ifname) != 0;
}

static short ifflags(const char *ifname) {
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
	EXPECT(ioctl(sock, SIOCGIFFLAGS, &ifr) == 0, "SIOCGIFFLAGS %s: %m", ifname);
	return ifr.ifr_flags;
}

/* The bridge ifname is a port of, from our own /sys; "" when none. */
static void master_of(const char *ifname, char *buf, size_t size) {
	char path[128], link[256];
	snprintf(path, sizeof(path), "/sys/class/net/%s/master", ifname);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	buf[0] = '\0';
	if (n > 0) {
		link[n] = '\0';
		snprintf(buf, size, "%s", strrchr(link, '/') + 1);
	}
}

static void sys_read(const char *ifname, const char *attr, char *buf, size_t size) {
	char path[128];
	snprintf(path, sizeof(path), "/sys/class/net/%s/%s", ifname, attr);
	FILE *f = fopen(path, "re");
	EXPECT(f, "%s: %m", path);
	EXPECT(fgets(buf, (int)size, f), "%s is empty", path);
	fclose(f);
	buf[strcspn(buf, "\n")] = '\0';
}

/* A tap that outlives its fd, as another program might have left one. */
static void add_persistent_tap(const char *name) {
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	EXPECT(fd >= 0, "/dev/net/tun: %m");
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	EXPECT(ioctl(fd, TUNSETIFF, &ifr) == 0, "TUNSETIFF %s: %m", name);
	EXPECT(ioctl(fd, TUNSETPERSIST, 1) == 0, "TUNSETPERSIST: %m");
	close(fd);
}

static void in_namespace(void) {
	char why[256], buf[64], name[IFNAMSIZ], name2[IFNAMSIZ];
	uint8_t mac[6];

	/* Our own network and our own /sys, whose class/net shows it. */
	EXPECT(unshare(CLONE_NEWNET | CLONE_NEWNS) == 0, "unshare: %m");
	/* (source and type are ignored here; valgrind wants them readable) */
	EXPECT(mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) == 0, "make / private: %m");
	EXPECT(mount("sysfs", "/sys", "sysfs", 0, NULL) == 0, "mount /sys: %m");
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	EXPECT(sock >= 0, "socket: %m");
	add_bridge("cprdt-br0");

	EXPECT(tap_bridge_exists("cprdt-br0"), "a bridge");
	EXPECT(!tap_bridge_exists("lo"), "lo is no bridge");
	EXPECT(!tap_bridge_exists("br9"), "br9 is not there");
	EXPECT(!tap_bridge_exists("a/b"), "not a name");

	/* A tap on the bridge, up, with the guest's MAC but fe: first. */
	EXPECT(tap_name("t1", 0, name) == 0, "tap_name");
	tap_derive_mac("t1", 0, mac);
	int fd = tap_open(name, "cprdt-br0", mac, why, sizeof(why));
	EXPECT(fd >= 0, "tap_open: %s", why);
	EXPECT(fcntl(fd, F_GETFD) & FD_CLOEXEC, "close-on-exec");
	EXPECT(exists(name), "%s exists", name);
	master_of(name, buf, sizeof(buf));
	EXPECT(streq(buf, "cprdt-br0"), "%s is attached to '%s'", name, buf);
	EXPECT(ifflags(name) & IFF_UP, "%s is up", name);
	sys_read(name, "address", buf, sizeof(buf));
	char want[TAP_MAC_STRLEN];
	tap_mac_format(mac, want);
	want[0] = 'f', want[1] = 'e';
	EXPECT(streq(buf, want), "the tap's MAC is %s, not %s", buf, want);
	sys_read(name, "tun_flags", buf, sizeof(buf));
	EXPECT(strtoul(buf, NULL, 16) == (IFF_TAP | IFF_NO_PI), "tun_flags %s", buf);

	/* What recovery takes back from a QEMU is checked. */
	EXPECT(tap_check(fd, name) == 0, "tap_check");
	EXPECT(tap_check(fd, "cprd-t1-1") == -ESTALE, "another name");
	EXPECT(tap_check(sock, name) == -EBADFD, "a socket");
	int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	EXPECT(tap_check(devnull, name) == -EBADFD, "/dev/null");
	close(devnull);
	int unattached = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	EXPECT(tap_check(unattached, name) == -EBADFD, "a tun fd with no device");
	close(unattached);

	/* The name in use: refused, and the one there is left alone. */
	int again = tap_open(name, "cprdt-br0", NULL, why, sizeof(why));
	EXPECT(again == -EEXIST, "a second tap of one name: %d %s", again, why);
	EXPECT(strstr(why, "exists already"), "%s", why);
	EXPECT(exists(name) && (ifflags(name) & IFF_UP), "the first one is still there");

	/* The long form, with its '~', is a name the kernel takes. */
	EXPECT(tap_name("a-rather-long-vm-name", 7, name2) == 0, "tap_name");
	int fd2 = tap_open(name2, "cprdt-br0", NULL, why, sizeof(why));
	EXPECT(fd2 >= 0, "tap_open %s: %s", name2, why);
	EXPECT(tap_check(fd2, name2) == 0, "tap_check %s", name2);
	close(fd2);
	EXPECT(!exists(name2), "%s is gone with its fd", name2);

	/* A copy of the fd (a QEMU's) keeps it; the last close removes it. */
	int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	close(fd);
	EXPECT(exists(name), "a second fd keeps %s", name);
	close(copy);
	EXPECT(!exists(name), "closing the last fd removes %s", name);
	master_of(name, buf, sizeof(buf));
	EXPECT(!buf[0], "still a port");

	/* A missing bridge, or one that is no bridge: a sentence, no tap. */
	EXPECT(tap_name("t2", 1, name) == 0, "tap_name");
	fd = tap_open(name, "br9", NULL, why, sizeof(why));
	EXPECT(fd == -ENODEV, "missing bridge: %d", fd);
	EXPECT(streq(why, "bridge br9 does not exist"), "%s", why);
	EXPECT(!exists(name), "no tap left after a missing bridge");
	fd = tap_open(name, "lo", NULL, why, sizeof(why));
	EXPECT(fd == -ENOTDIR, "lo: %d", fd);
	EXPECT(streq(why, "lo is not a bridge"), "%s", why);
	EXPECT(!exists(name), "no tap left after lo");
	fd = tap_open("bad/name", "cprdt-br0", NULL, why, sizeof(why));
	EXPECT(fd == -EINVAL && strstr(why, "not a valid interface name"), "%s", why);

	/* A persistent tap of that name (someone else's): never attached to. */
	add_persistent_tap(name);
	fd = tap_open(name, "cprdt-br0", NULL, why, sizeof(why));
	EXPECT(fd == -EEXIST, "a persistent tap of the name: %d %s", fd, why);
	master_of(name, buf, sizeof(buf));
	EXPECT(!buf[0], "the persistent tap was put on the bridge");
	/* The namespace, with what is left in it, goes when we exit. */
	_exit(0);
}

START_TEST(test_open_in_namespace) {
	if (getuid() != 0) {
		fprintf(stderr, "test_tap: not root, the tap devices are not tried\n");
		return;
	}
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0)
		in_namespace();
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "the child in its network namespace failed (its stderr says why)");
}
END_TEST

static Suite *tap_suite(void) {
	Suite *s = suite_create("tap");
	TCase *tc = tcase_create("tap");
	tcase_add_test(tc, test_ifname_valid);
	tcase_add_test(tc, test_name);
	tcase_add_test(tc, test_name_distinct);
	tcase_add_test(tc, test_derive_mac);
	tcase_add_test(tc, test_mac_parse);
	tcase_add_test(tc, test_open_in_namespace);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(tap_suite());
}
