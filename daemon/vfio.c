/* What cprd checks before it lets QEMU have a host PCI device through VFIO
 * (see vfio.h): sysfs, config space, and the kernel's VFIO container. */
#include "vfio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "util.h"

/* The last part of the link at root/sys/bus/pci/devices/PCI/LINK ("" when
 * there is none): a driver's or an IOMMU group's name. */
static int sysfs_link_name(const char *root, const char *pci, const char *link, char *buf,
			   size_t size) {
	char path[PATH_MAX], target[PATH_MAX];
	snprintf(path, sizeof(path), "%s/sys/bus/pci/devices/%s/%s", root, pci, link);
	ssize_t n = readlink(path, target, sizeof(target) - 1);
	buf[0] = '\0';
	if (n < 0)
		return errno == ENOENT ? 0 : -errno;
	target[n] = '\0';
	const char *slash = strrchr(target, '/');
	if ((size_t)snprintf(buf, size, "%s", slash ? slash + 1 : target) >= size)
		return -ENAMETOOLONG; /* no driver or group has such a name */
	return 0;
}

/* Drivers that may hold a device of the group while another is assigned:
 * the kernel lets them (they manage no DMA of their own). */
static bool driver_allowed_beside(const char *driver) {
	return !*driver || streq(driver, VFIO_DRIVER) || streq(driver, "pci-stub") ||
	       streq(driver, "pcieport");
}

/* Every other device of the IOMMU group must leave DMA to VFIO. */
static int check_group(const char *root, const char *pci, int group, char *why, size_t size) {
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/sys/kernel/iommu_groups/%d/devices", root, group);
	DIR *d = opendir(path);
	if (!d)
		return why_err(-EIO, why, size, "cannot list the devices of IOMMU group %d of %s: %s",
			      group, pci, strerror(errno));
	int r = 0;
	for (struct dirent *e; r == 0 && (e = readdir(d));) {
		char driver[NAME_MAX + 1];
		if (e->d_name[0] == '.' || streq(e->d_name, pci))
			continue;
		if (sysfs_link_name(root, e->d_name, "driver", driver, sizeof(driver)) < 0 ||
		    !driver_allowed_beside(driver))
			r = why_err(-EBUSY, why, size,
				   "%s is in IOMMU group %d with %s, which is bound to %s; every device "
				   "of the group must be bound to " VFIO_DRIVER " or to no driver "
				   "(rebind %s as the device itself: driver_override and drivers_probe)",
				   pci, group, e->d_name, *driver ? driver : "a driver cprd cannot read",
				   e->d_name);
	}
	closedir(d);
	return r;
}

int vfio_device_check(const char *root, const char *pci, struct vfio_device *ret, char *why,
		      size_t size) {
	char path[PATH_MAX], driver[NAME_MAX + 1], group[NAME_MAX + 1];
	struct stat st;
	snprintf(path, sizeof(path), "%s/sys/bus/pci/devices/%s", root, pci);
	if (stat(path, &st) < 0)
		return why_err(-ENODEV, why, size,
			      "there is no PCI device %s on this host (no /sys/bus/pci/devices/%s; "
			      "lspci -D lists the devices)",
			      pci, pci);
	int r = sysfs_link_name(root, pci, "driver", driver, sizeof(driver));
	if (r < 0)
		return why_err(-EIO, why, size, "cannot read the driver of %s: %s", pci, strerror(-r));
	if (!*driver)
		return why_err(-EBUSY, why, size,
			      "%s is bound to no driver, not to " VFIO_DRIVER "; bind it with: echo "
			      VFIO_DRIVER " > /sys/bus/pci/devices/%s/driver_override; echo %s > "
			      "/sys/bus/pci/drivers_probe",
			      pci, pci, pci);
	if (!streq(driver, VFIO_DRIVER))
		return why_err(-EBUSY, why, size,
			      "%s is bound to %s, not to " VFIO_DRIVER " (cprd never rebinds a "
			      "driver itself); rebind it with: echo " VFIO_DRIVER
			      " > /sys/bus/pci/devices/%s/driver_override; echo %s > "
			      "/sys/bus/pci/drivers/%s/unbind; echo %s > /sys/bus/pci/drivers_probe",
			      pci, driver, pci, pci, driver, pci);
	r = sysfs_link_name(root, pci, "iommu_group", group, sizeof(group));
	char *end = NULL;
	long g = *group ? strtol(group, &end, 10) : -1;
	if (r < 0 || g < 0 || g > INT_MAX || *end)
		return why_err(-EBUSY, why, size,
			      "%s has no IOMMU group: the host runs without an IOMMU (boot its kernel "
			      "with intel_iommu=on or amd_iommu=on)",
			      pci);
	if ((r = check_group(root, pci, (int)g, why, size)) < 0)
		return r;
	struct vfio_device dev = {.group = (int)g};
	if ((r = vfio_device_irqs(root, pci, &dev.irqs)) < 0)
		return why_err(-EIO, why, size, "cannot read the config space of %s: %s", pci,
			      strerror(-r));
	*ret = dev;
	return 0;
}

/* Config space offsets (PCI Local Bus Specification). */
#define CONFIG_STATUS 0x06
#define CONFIG_STATUS_CAP_LIST 0x10
#define CONFIG_CAP_POINTER 0x34
#define CONFIG_INTERRUPT_PIN 0x3d
#define CONFIG_HEADER_END 0x40
#define CAP_ID_MSI 0x05
#define CAP_ID_MSIX 0x11
/* Capabilities fit in 256 bytes at 4 bytes each at least. */
#define CAPS_MAX 48

void vfio_config_irqs(const uint8_t *config, size_t len, struct vfio_irqs *ret) {
	*ret = (struct vfio_irqs){0};
	if (len > CONFIG_INTERRUPT_PIN)
		ret->intx = config[CONFIG_INTERRUPT_PIN] != 0;
	if (len <= CONFIG_CAP_POINTER || !(config[CONFIG_STATUS] & CONFIG_STATUS_CAP_LIST))
		return;
	unsigned at = config[CONFIG_CAP_POINTER] & 0xfc;
	for (unsigned n = 0; n < CAPS_MAX && at >= CONFIG_HEADER_END && at + 1 < len; n++) {
		if (config[at] == CAP_ID_MSI)
			ret->msi = true;
		else if (config[at] == CAP_ID_MSIX)
			ret->msix = true;
		at = config[at + 1] & 0xfc;
	}
}

int vfio_device_irqs(const char *root, const char *pci, struct vfio_irqs *ret) {
	char path[PATH_MAX];
	uint8_t config[256];
	snprintf(path, sizeof(path), "%s/sys/bus/pci/devices/%s/config", root, pci);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = pread(fd, config, sizeof(config), 0);
	int r = n < 0 ? -errno : 0;
	close(fd);
	if (r < 0)
		return r;
	/* Unprivileged readers get 64 bytes: no capabilities to see. */
	if (n < CONFIG_HEADER_END)
		return -EIO;
	vfio_config_irqs(config, (size_t)n, ret);
	return 0;
}

bool vfio_irqs_any(const struct vfio_irqs *irqs) {
	return irqs->intx || irqs->msi || irqs->msix;
}

void vfio_irqs_describe(const struct vfio_irqs *irqs, char *buf, size_t size) {
	const char *parts[3];
	size_t n = 0, used = 0;
	if (irqs->intx)
		parts[n++] = "an interrupt pin (INTx)";
	if (irqs->msi)
		parts[n++] = "MSI";
	if (irqs->msix)
		parts[n++] = "MSI-X";
	buf[0] = '\0';
	for (size_t i = 0; i < n && used < size; i++)
		used += (size_t)snprintf(buf + used, size - used, "%s%s",
					 i == 0 ? "" : i + 1 == n ? " and " : ", ", parts[i]);
}

/* The legacy container: QEMU opens /dev/vfio/vfio and /dev/vfio/GROUP by
 * path (it takes no fds for them), so cprd asks the kernel through the same
 * files, before QEMU has the group. */
int vfio_kernel_check(const char *root, int group, char *why, size_t size) {
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/dev/vfio/vfio", root);
	_cleanup_close_ int container = open(path, O_RDWR | O_CLOEXEC);
	if (container < 0)
		return why_err(-EOPNOTSUPP, why, size,
			      "the kernel has no VFIO container (/dev/vfio/vfio: %s); load the vfio-pci "
			      "and vfio_iommu_type1 modules (cprd uses the legacy VFIO container, not "
			      "iommufd)",
			      strerror(errno));
	snprintf(path, sizeof(path), "%s/dev/vfio/%d", root, group);
	_cleanup_close_ int g = open(path, O_RDWR | O_CLOEXEC);
	if (g < 0 && errno == EBUSY)
		return why_err(-EBUSY, why, size,
			      "IOMMU group %d (/dev/vfio/%d) is open in another process already (a "
			      "QEMU that cprd did not start?); a group opens only once",
			      group, group);
	if (g < 0)
		return why_err(-ENODEV, why, size, "cannot open IOMMU group %d (/dev/vfio/%d): %s", group,
			      group, strerror(errno));
	if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
		return why_err(-EOPNOTSUPP, why, size,
			      "/dev/vfio/vfio is not a VFIO container of API version %d (%s)",
			      VFIO_API_VERSION, strerror(errno));
	struct vfio_group_status status = {.argsz = sizeof(status)};
	if (ioctl(g, VFIO_GROUP_GET_STATUS, &status) < 0)
		return why_err(-ENODEV, why, size, "/dev/vfio/%d is not a VFIO group (%s)", group,
			      strerror(errno));
	if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE))
		return why_err(-EBUSY, why, size,
			      "IOMMU group %d is not viable: a device of the group is bound to a "
			      "driver that is not " VFIO_DRIVER,
			      group);
	if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &container) < 0 ||
	    ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0)
		return why_err(-EOPNOTSUPP, why, size,
			      "the kernel's VFIO cannot give IOMMU group %d a type1v2 IOMMU (%s)", group,
			      strerror(errno));
	const char *missing = ioctl(container, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) <= 0
				      ? "VFIO_UPDATE_VADDR"
			      : ioctl(container, VFIO_CHECK_EXTENSION, VFIO_UNMAP_ALL) <= 0
				      ? "VFIO_UNMAP_ALL"
				      : NULL;
	(void)ioctl(g, VFIO_GROUP_UNSET_CONTAINER, &container);
	if (missing)
		return why_err(-EOPNOTSUPP, why, size,
			      "the kernel's VFIO type1 IOMMU lacks %s, which QEMU needs to keep the "
			      "device's DMA mappings across an upgrade (Linux 5.12 or later; not for "
			      "mediated devices)",
			      missing);
	return 0;
}

enum vfio_fd_kind vfio_fd_kind(const char *link, int *group) {
	if (streq(link, "/dev/vfio/vfio"))
		return VFIO_FD_CONTAINER;
	if (streq(link, "anon_inode:[vfio-device]"))
		return VFIO_FD_DEVICE;
	if (strncmp(link, "/dev/vfio/", 10) == 0) {
		const char *n = link + 10;
		char *end = NULL;
		errno = 0;
		long g = strtol(n, &end, 10);
		if (*n >= '0' && *n <= '9' && !*end && !errno && g <= INT_MAX) {
			*group = (int)g;
			return VFIO_FD_GROUP;
		}
	}
	return VFIO_FD_NONE;
}
