/* Check suite for daemon/vfio.c against a fake sysfs and /dev tree made in a
 * temporary folder: each check of a device (exists, bound to vfio-pci, has
 * an IOMMU group, the group's other devices) with the text of each refusal,
 * its interrupts from config space (pin, MSI, MSI-X, a looping capability
 * list), the kernel check as far as files that are not VFIO's let it go,
 * and what QEMU's fd links say. The real kernel path is the nested lab's. */
#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-run.h"
#include "macro.h"
#include "util.h"
#include "vfio.h"

#define DEV "0000:00:03.0"
#define MEMBER "0000:00:03.1"
#define GROUP 7

static char root[64];
static char why[1024];

/* root/REL, made with its parent folders. */
static void path_of(char *buf, size_t size, const char *rel) {
	snprintf(buf, size, "%s/%s", root, rel);
}

static void make_dir(const char *rel) {
	char p[512];
	path_of(p, sizeof(p), rel);
	ck_assert_int_eq(mkdir_p(p, 0755), 0);
}

static void make_link(const char *rel, const char *target) {
	char p[512];
	path_of(p, sizeof(p), rel);
	unlink(p);
	ck_assert_int_eq(symlink(target, p), 0);
}

static void remove_rel(const char *rel) {
	char p[512];
	path_of(p, sizeof(p), rel);
	unlink(p);
}

/* A config space of 256 bytes: the interrupt pin, and the capabilities
 * (ids) chained from 0x40 on. */
static void write_config(const char *pci, int pin, const uint8_t *caps, size_t n_caps) {
	uint8_t c[256] = {0};
	c[0x3d] = (uint8_t)pin;
	if (n_caps) {
		c[0x06] = 0x10;
		c[0x34] = 0x40;
		for (size_t i = 0; i < n_caps; i++) {
			c[0x40 + 0x10 * i] = caps[i];
			c[0x40 + 0x10 * i + 1] = i + 1 < n_caps ? (uint8_t)(0x40 + 0x10 * (i + 1)) : 0;
		}
	}
	char rel[128], p[512];
	snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/config", pci);
	path_of(p, sizeof(p), rel);
	FILE *f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(c, 1, sizeof(c), f), sizeof(c));
	fclose(f);
}

/* A device in sysfs bound to driver ("" for none) in IOMMU group (-1 for
 * none), as the kernel links them. */
static void make_device(const char *pci, const char *driver, int group) {
	char rel[128], target[128];
	snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s", pci);
	make_dir(rel);
	snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/driver", pci);
	remove_rel(rel);
	if (*driver) {
		snprintf(target, sizeof(target), "../../../bus/pci/drivers/%s", driver);
		make_link(rel, target);
	}
	snprintf(rel, sizeof(rel), "sys/bus/pci/devices/%s/iommu_group", pci);
	remove_rel(rel);
	if (group >= 0) {
		snprintf(target, sizeof(target), "../../../../kernel/iommu_groups/%d", group);
		make_link(rel, target);
		snprintf(rel, sizeof(rel), "sys/kernel/iommu_groups/%d/devices", group);
		make_dir(rel);
		snprintf(rel, sizeof(rel), "sys/kernel/iommu_groups/%d/devices/%s", group, pci);
		snprintf(target, sizeof(target), "../../../../bus/pci/devices/%s", pci);
		make_link(rel, target);
	}
	write_config(pci, 1, NULL, 0);
}

static void setup(void) {
	snprintf(root, sizeof(root), "/tmp/cprd-test-vfio-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(root));
	make_device(DEV, VFIO_DRIVER, GROUP);
}

static void teardown(void) {
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	ck_assert_int_eq(system(cmd), 0);
}

/* check refuses pci with r, and why holds each of words (NULL-ended). */
static void refused(const char *pci, int r, ...) {
	struct vfio_device d;
	why[0] = '\0';
	ck_assert_int_eq(vfio_device_check(root, pci, &d, why, sizeof(why)), r);
	va_list ap;
	va_start(ap, r);
	for (const char *w; (w = va_arg(ap, const char *));)
		ck_assert_msg(strstr(why, w), "'%s' does not say '%s'", why, w);
	va_end(ap);
}

START_TEST(test_good) {
	struct vfio_device d;
	ck_assert_int_eq(vfio_device_check(root, DEV, &d, why, sizeof(why)), 0);
	ck_assert_int_eq(d.group, GROUP);
	ck_assert(d.irqs.intx && !d.irqs.msi && !d.irqs.msix);
	/* Others in the group bound to no driver, pci-stub or pcieport are no
	 * obstacle. */
	make_device(MEMBER, "", GROUP);
	make_device("0000:00:03.2", "pci-stub", GROUP);
	make_device("0000:00:03.3", "pcieport", GROUP);
	make_device("0000:00:03.4", VFIO_DRIVER, GROUP);
	ck_assert_int_eq(vfio_device_check(root, DEV, &d, why, sizeof(why)), 0);
	/* A device of another group bound to anything is none of its business. */
	make_device("0000:00:04.0", "e1000e", 8);
	ck_assert_int_eq(vfio_device_check(root, DEV, &d, why, sizeof(why)), 0);
}
END_TEST

START_TEST(test_missing) {
	refused("0000:ff:1f.7", -ENODEV, "no PCI device 0000:ff:1f.7", "/sys/bus/pci/devices/0000:ff:1f.7",
		"lspci -D", NULL);
}
END_TEST

/* The error names the driver and how to rebind; cprd never does it. */
START_TEST(test_other_driver) {
	make_device(DEV, "e1000e", GROUP);
	refused(DEV, -EBUSY, DEV " is bound to e1000e, not to vfio-pci", "never rebinds",
		"echo vfio-pci > /sys/bus/pci/devices/" DEV "/driver_override",
		"echo " DEV " > /sys/bus/pci/drivers/e1000e/unbind",
		"echo " DEV " > /sys/bus/pci/drivers_probe", NULL);
}
END_TEST

START_TEST(test_no_driver) {
	make_device(DEV, "", GROUP);
	refused(DEV, -EBUSY, DEV " is bound to no driver", "driver_override",
		"echo " DEV " > /sys/bus/pci/drivers_probe", NULL);
}
END_TEST

START_TEST(test_no_group) {
	make_device(DEV, VFIO_DRIVER, -1);
	refused(DEV, -EBUSY, DEV " has no IOMMU group", "intel_iommu=on", NULL);
}
END_TEST

START_TEST(test_group_member_bound) {
	make_device(MEMBER, "snd_hda_intel", GROUP);
	refused(DEV, -EBUSY, "IOMMU group 7 with " MEMBER ", which is bound to snd_hda_intel",
		"vfio-pci or to no driver", "driver_override", NULL);
}
END_TEST

START_TEST(test_config_unreadable) {
	remove_rel("sys/bus/pci/devices/" DEV "/config");
	refused(DEV, -EIO, "config space of " DEV, NULL);
	struct vfio_irqs irqs;
	ck_assert_int_eq(vfio_device_irqs(root, DEV, &irqs), -ENOENT);
}
END_TEST

START_TEST(test_irqs) {
	struct vfio_irqs irqs;
	char text[128];
	/* pci-testdev: no pin, no capabilities. */
	write_config(DEV, 0, NULL, 0);
	ck_assert_int_eq(vfio_device_irqs(root, DEV, &irqs), 0);
	ck_assert(!vfio_irqs_any(&irqs));
	vfio_irqs_describe(&irqs, text, sizeof(text));
	ck_assert_str_eq(text, "");
	/* A power management capability (0x01) before MSI, then MSI-X. */
	static const uint8_t caps[] = {0x01, 0x05, 0x10, 0x11};
	write_config(DEV, 0, caps, 2);
	ck_assert_int_eq(vfio_device_irqs(root, DEV, &irqs), 0);
	ck_assert(!irqs.intx && irqs.msi && !irqs.msix);
	write_config(DEV, 2, caps, 4);
	ck_assert_int_eq(vfio_device_irqs(root, DEV, &irqs), 0);
	ck_assert(irqs.intx && irqs.msi && irqs.msix && vfio_irqs_any(&irqs));
	vfio_irqs_describe(&irqs, text, sizeof(text));
	ck_assert_str_eq(text, "an interrupt pin (INTx), MSI and MSI-X");
	irqs.msi = false;
	vfio_irqs_describe(&irqs, text, sizeof(text));
	ck_assert_str_eq(text, "an interrupt pin (INTx) and MSI-X");
}
END_TEST

/* Config space as the bytes say, including lists a device gets wrong. */
START_TEST(test_config_walk) {
	uint8_t c[256] = {0};
	struct vfio_irqs irqs;
	/* Capability bit off: the pointer is not followed. */
	c[0x34] = 0x40;
	c[0x40] = 0x11;
	vfio_config_irqs(c, sizeof(c), &irqs);
	ck_assert(!irqs.msix);
	/* On: found. A list that points at itself ends. */
	c[0x06] = 0x10;
	c[0x41] = 0x40;
	vfio_config_irqs(c, sizeof(c), &irqs);
	ck_assert(irqs.msix && !irqs.msi && !irqs.intx);
	/* A pointer into the header or past the end is the end. */
	c[0x34] = 0x3c;
	vfio_config_irqs(c, sizeof(c), &irqs);
	ck_assert(!irqs.msix);
	c[0x34] = 0xfc;
	c[0xfc] = 0x05;
	c[0xfd] = 0x00;
	vfio_config_irqs(c, sizeof(c), &irqs);
	ck_assert(irqs.msi);
	/* 64 bytes (what an unprivileged reader gets): the pin only. */
	c[0x3d] = 1;
	vfio_config_irqs(c, 64, &irqs);
	ck_assert(irqs.intx && !irqs.msi && !irqs.msix);
}
END_TEST

/* Without a real VFIO the kernel check stops at the first file that is
 * not what it should be; each stop says so. */
START_TEST(test_kernel_check) {
	ck_assert_int_eq(vfio_kernel_check(root, GROUP, why, sizeof(why)), -EOPNOTSUPP);
	ck_assert_msg(strstr(why, "no VFIO container (/dev/vfio/vfio") && strstr(why, "vfio-pci") &&
			      strstr(why, "not iommufd"),
		      "%s", why);
	make_dir("dev/vfio");
	char p[512];
	path_of(p, sizeof(p), "dev/vfio/vfio");
	FILE *f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	ck_assert_int_eq(vfio_kernel_check(root, GROUP, why, sizeof(why)), -ENODEV);
	ck_assert_msg(strstr(why, "IOMMU group 7 (/dev/vfio/7)"), "%s", why);
	path_of(p, sizeof(p), "dev/vfio/7");
	f = fopen(p, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	ck_assert_int_eq(vfio_kernel_check(root, GROUP, why, sizeof(why)), -EOPNOTSUPP);
	ck_assert_msg(strstr(why, "/dev/vfio/vfio is not a VFIO container"), "%s", why);
}
END_TEST

START_TEST(test_fd_kind) {
	int g = -1;
	ck_assert_int_eq(vfio_fd_kind("/dev/vfio/vfio", &g), VFIO_FD_CONTAINER);
	ck_assert_int_eq(vfio_fd_kind("anon_inode:[vfio-device]", &g), VFIO_FD_DEVICE);
	ck_assert_int_eq(vfio_fd_kind("/dev/vfio/12", &g), VFIO_FD_GROUP);
	ck_assert_int_eq(g, 12);
	ck_assert_int_eq(vfio_fd_kind("/dev/vfio/12x", &g), VFIO_FD_NONE);
	ck_assert_int_eq(vfio_fd_kind("/dev/vfio/", &g), VFIO_FD_NONE);
	ck_assert_int_eq(vfio_fd_kind("/dev/vfio/-1", &g), VFIO_FD_NONE);
	ck_assert_int_eq(vfio_fd_kind("/dev/vfio/devices/vfio0", &g), VFIO_FD_NONE);
	ck_assert_int_eq(vfio_fd_kind("/memfd:cprd:vm1:ram0 (deleted)", &g), VFIO_FD_NONE);
	ck_assert_int_eq(vfio_fd_kind("anon_inode:[eventfd]", &g), VFIO_FD_NONE);
}
END_TEST

static Suite *vfio_suite(void) {
	Suite *s = suite_create("vfio");
	TCase *tc = tcase_create("sysfs");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_good);
	tcase_add_test(tc, test_missing);
	tcase_add_test(tc, test_other_driver);
	tcase_add_test(tc, test_no_driver);
	tcase_add_test(tc, test_no_group);
	tcase_add_test(tc, test_group_member_bound);
	tcase_add_test(tc, test_config_unreadable);
	tcase_add_test(tc, test_irqs);
	tcase_add_test(tc, test_kernel_check);
	suite_add_tcase(s, tc);
	tc = tcase_create("pure");
	tcase_add_test(tc, test_config_walk);
	tcase_add_test(tc, test_fd_kind);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(vfio_suite());
}
