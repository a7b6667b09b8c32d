/* vfio: what cprd asks of the host about a PCI device it is to assign
 * through VFIO: in sysfs, the device, its driver, its IOMMU group and the
 * group's other devices, and its interrupts (config space); of the kernel,
 * whether its VFIO container keeps DMA mappings across an upgrade. Every
 * path is under root ("" for the host), so tests point it at a fake tree.
 * cprd never binds or unbinds a driver itself: the errors say how. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VFIO_DRIVER "vfio-pci"

/* The interrupts a device can raise, from its config space. */
struct vfio_irqs {
	bool intx; /* an interrupt pin (config byte 0x3d) */
	bool msi;  /* the MSI capability */
	bool msix; /* the MSI-X capability */
};

struct vfio_device {
	int group; /* its IOMMU group, /dev/vfio/GROUP */
	struct vfio_irqs irqs;
};

/* Checks the device pci (DDDD:BB:DD.F) in sysfs: it exists, it is bound to
 * vfio-pci, it has an IOMMU group, and every device of the group is bound
 * to vfio-pci or to no driver (or to pci-stub or pcieport, which the
 * kernel allows beside a device in use); and reads its interrupts. On
 * failure why says which and what to do: -ENODEV (no such device), -EBUSY
 * (a driver in the way), -EIO (sysfs unreadable). */
int vfio_device_check(const char *root, const char *pci, struct vfio_device *ret, char *why,
		      size_t size);

/* Whether the kernel's legacy VFIO container keeps DMA mappings across an
 * upgrade: it opens root/dev/vfio/vfio and root/dev/vfio/GROUP, attaches
 * the group, sets the type1v2 IOMMU (type1 reports VFIO_UPDATE_VADDR only
 * after that) and asks for VFIO_UPDATE_VADDR and VFIO_UNMAP_ALL, then
 * closes both. Only while no process (QEMU, or cprd's own copies) has the
 * group open: a group opens once. -EOPNOTSUPP (no container, or no
 * UPDATE_VADDR), -EBUSY (the group is open elsewhere), -ENODEV (no such
 * group), with why filled. */
int vfio_kernel_check(const char *root, int group, char *why, size_t size);

/* The interrupts of pci, from root's sysfs. -errno when its config space
 * cannot be read. */
int vfio_device_irqs(const char *root, const char *pci, struct vfio_irqs *ret);
/* The same from len bytes of config space: the interrupt pin, and the
 * capability list (bounded, so a looping list ends). Pure. */
void vfio_config_irqs(const uint8_t *config, size_t len, struct vfio_irqs *ret);
bool vfio_irqs_any(const struct vfio_irqs *irqs);
/* "an interrupt pin (INTx), MSI and MSI-X", for messages; "" for none. */
void vfio_irqs_describe(const struct vfio_irqs *irqs, char *buf, size_t size);

/* What one of QEMU's fds is, from its link in /proc/PID/fd. */
enum vfio_fd_kind {
	VFIO_FD_NONE,
	VFIO_FD_CONTAINER, /* /dev/vfio/vfio */
	VFIO_FD_GROUP,     /* /dev/vfio/N: *group is N */
	VFIO_FD_DEVICE,    /* anon_inode:[vfio-device] */
};
enum vfio_fd_kind vfio_fd_kind(const char *link, int *group);
