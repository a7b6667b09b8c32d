/* VFIO: the host PCI devices assigned to the guest. With the legacy
 * container (Debian's kernels have no iommufd) QEMU opens /dev/vfio/vfio
 * and /dev/vfio/GROUP itself and takes no fds for them, so cprd only names
 * the devices on QEMU's command line and, once that QEMU is the VM's, takes
 * copies of its container, group and device fds (pidfd_getfd). While cprd
 * holds them the device is neither released nor reset and its DMA mappings
 * stay, even if QEMU dies. No QEMU gets them from cprd: a new QEMU of an
 * upgrade gets the old one's through CPR, and a fresh QEMU for a crashed VM
 * can open the group only once cprd gave its copies up (vm.c). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "custody.h"
#include "log.h"
#include "macro.h"
#include "spec.h"
#include "util.h"
#include "vfio.h"

_Static_assert(CUSTODY_VFIO_MAX == SPEC_DEVICES_MAX, "one copy of each kind per device at most");

/* The same id on both sides of an upgrade: the new QEMU finds the device's
 * fds in the CPR state by it. */
static void vfio_qemu_args(const struct custody_vm *vm, const struct custody_qemu_fds *at,
			   struct strv *argv) {
	for (size_t i = 0; i < vm->n_devices; i++) {
		strv_addf(argv, "-device");
		strv_addf(argv, "vfio-pci,host=%s,id=hostdev%zu", vm->devices[i].pci, i);
	}
}

/* The first slot of each kind's copies. */
static const unsigned kind_base[] = {
	[VFIO_FD_CONTAINER] = CUSTODY_VFIO_CONTAINER,
	[VFIO_FD_GROUP] = CUSTODY_VFIO_GROUP,
	[VFIO_FD_DEVICE] = CUSTODY_VFIO_DEVICE,
};

/* What fd of ours is, by its link. */
static enum vfio_fd_kind own_fd_kind(int fd) {
	char path[64], link[256];
	int group;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return VFIO_FD_NONE;
	link[n] = '\0';
	return vfio_fd_kind(link, &group);
}

static void close_all(int fds[_CUSTODY_VM_MAX]) {
	for (unsigned i = CUSTODY_VFIO_CONTAINER; i < _CUSTODY_VM_MAX; i++)
		fds[i] = safe_close(fds[i]);
}

/* A container, a group and every device: what keeps the devices as they are. */
static bool complete(const struct custody_vm *vm, const int fds[_CUSTODY_VM_MAX]) {
	if (fds[CUSTODY_VFIO_CONTAINER] < 0 || fds[CUSTODY_VFIO_GROUP] < 0)
		return false;
	for (size_t i = 0; i < vm->n_devices; i++)
		if (fds[CUSTODY_VFIO_DEVICE + i] < 0)
			return false;
	return true;
}

/* Copies of QEMU's VFIO fds into got[], each kind in the order of QEMU's
 * numbers (/proc lists them in that order); counts them in n[kind]. */
static int take_copies(pid_t pid, int pidfd, int got[_CUSTODY_VM_MAX], unsigned n[4]) {
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (!d)
		return -errno;
	for (struct dirent *e; (e = readdir(d));) {
		char link[256], *end;
		int group;
		long qfd = strtol(e->d_name, &end, 10);
		if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd/%ld", (int)pid, qfd);
		ssize_t len = readlink(path, link, sizeof(link) - 1);
		if (len <= 0)
			continue;
		link[len] = '\0';
		enum vfio_fd_kind kind = vfio_fd_kind(link, &group);
		if (kind == VFIO_FD_NONE || n[kind] >= CUSTODY_VFIO_MAX)
			continue;
		int fd = (int)syscall(SYS_pidfd_getfd, pidfd, (int)qfd, 0);
		/* QEMU may have closed it and opened another since the readlink. */
		if (fd >= 0 && own_fd_kind(fd) != kind)
			fd = safe_close(fd);
		if (fd >= 0)
			got[kind_base[kind] + n[kind]++] = fd;
	}
	closedir(d);
	return 0;
}

static int vfio_from_qemu(const struct custody_vm *vm, pid_t pid, int pidfd,
			  int fds[_CUSTODY_VM_MAX]) {
	if (vm->n_devices == 0 || complete(vm, fds))
		return 0;
	int got[_CUSTODY_VM_MAX];
	unsigned n[4] = {0};
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		got[i] = -1;
	int r = take_copies(pid, pidfd, got, n);
	if (r < 0 || n[VFIO_FD_DEVICE] == 0) {
		close_all(got);
		return log_vm_errno(LOG_WARNING, r < 0 ? r : -ENOENT, vm->name,
				    "cannot take copies of the VFIO fds of QEMU pid %d (%m); its "
				    "devices are released if it dies",
				    (int)pid);
	}
	if (n[VFIO_FD_DEVICE] != vm->n_devices)
		log_vm(LOG_WARNING, vm->name, "QEMU pid %d has %u VFIO devices open, the spec %zu",
		       (int)pid, n[VFIO_FD_DEVICE], vm->n_devices);
	close_all(fds);
	for (unsigned i = CUSTODY_VFIO_CONTAINER; i < _CUSTODY_VM_MAX; i++)
		fds[i] = got[i];
	log_vm(LOG_INFO, vm->name,
	       "holding copies of the VFIO fds of QEMU pid %d: %u container, %u group, %u device",
	       (int)pid, n[VFIO_FD_CONTAINER], n[VFIO_FD_GROUP], n[VFIO_FD_DEVICE]);
	return 0;
}

/* From the fd store: each must still be what its name says. */
static void vfio_restored(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	static const enum vfio_fd_kind kinds[] = {VFIO_FD_CONTAINER, VFIO_FD_GROUP, VFIO_FD_DEVICE};
	for (size_t k = 0; k < ELEMENTSOF(kinds); k++)
		for (unsigned i = 0; i < CUSTODY_VFIO_MAX; i++) {
			int *fd = &fds[kind_base[kinds[k]] + i];
			if (*fd >= 0 && own_fd_kind(*fd) != kinds[k])
				*fd = safe_close(*fd);
		}
}

/* No open and no recover: QEMU opens them, and from_qemu takes copies from
 * whichever QEMU the VM has, whether the fd store lost them or not. */
const struct custody_ops custody_vfio = {
	.kind = "vfio",
	.restored = vfio_restored,
	.qemu_args = vfio_qemu_args,
	.from_qemu = vfio_from_qemu,
};
