/* Guest RAM: a memfd named cprd:NAME:ram0 (hugetlb when asked), sized to
 * the guest's memory. Every QEMU of the VM maps it, so RAM outlives them;
 * without the fd store it comes back from QEMU's fd (its name proves it). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "custody.h"
#include "log.h"
#include "macro.h"
#include "util.h"

static int ram_open(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	struct stat st;
	/* Resized since it was made (the spec changed): a fresh one. */
	if (fds[CUSTODY_RAM] >= 0 &&
	    (fstat(fds[CUSTODY_RAM], &st) < 0 || (uint64_t)st.st_size != vm->ram_bytes))
		fds[CUSTODY_RAM] = safe_close(fds[CUSTODY_RAM]);
	if (fds[CUSTODY_RAM] >= 0)
		return 0;
	char name[96];
	snprintf(name, sizeof(name), "cprd:%s:ram0", vm->name);
	int fd = memfd_create(name, MFD_CLOEXEC | (vm->hugepages ? MFD_HUGETLB : 0));
	if (fd < 0)
		return log_vm_errno(LOG_ERR, errno, vm->name, "memfd_create failed: %m");
	if (ftruncate(fd, (off_t)vm->ram_bytes) < 0) {
		int r = -errno;
		safe_close(fd);
		return log_vm_errno(LOG_ERR, r, vm->name, "cannot size guest RAM to %llu bytes: %m",
				    (unsigned long long)vm->ram_bytes);
	}
	log_vm(LOG_INFO, vm->name, "guest RAM memfd created (%llu MiB), held as fd %d",
	       (unsigned long long)(vm->ram_bytes >> 20), fd);
	fds[CUSTODY_RAM] = fd;
	return 0;
}

static int ram_recover(const struct custody_vm *vm, pid_t pid, int pidfd,
		       const struct custody_qemu_fds *at, int fds[_CUSTODY_VM_MAX]) {
	if (fds[CUSTODY_RAM] >= 0)
		return 0;
	int qemu_fd = at->n[CUSTODY_RAM];
	if (qemu_fd < 0)
		return log_vm_errno(LOG_WARNING, -EBADF, vm->name,
				    "QEMU pid %d was not given the guest RAM", (int)pid);
	int ram = (int)syscall(SYS_pidfd_getfd, pidfd, qemu_fd, 0);
	char link[256] = "", memfd_name[128], self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", ram);
	snprintf(memfd_name, sizeof(memfd_name), "/memfd:cprd:%s:ram0", vm->name);
	ssize_t n = ram >= 0 ? readlink(self, link, sizeof(link) - 1) : -1;
	if (n > 0)
		link[n] = '\0';
	if (ram < 0 || strncmp(link, memfd_name, strlen(memfd_name)) != 0) {
		int r = ram < 0 ? -errno : -EBADF;
		safe_close(ram);
		return log_vm_errno(LOG_WARNING, r, vm->name,
				    "cannot take guest RAM back from QEMU pid %d (%m; fd %d is '%s')",
				    (int)pid, qemu_fd, link);
	}
	fds[CUSTODY_RAM] = ram;
	log_vm(LOG_INFO, vm->name, "guest RAM memfd taken back from QEMU pid %d", (int)pid);
	return 0;
}

/* QEMU maps the memfd through its own fd's path; the machine's
 * memory-backend names it as ram0. */
static void ram_qemu_args(const struct custody_vm *vm, const struct custody_qemu_fds *at,
			  struct strv *argv) {
	strv_addf(argv, "-object");
	strv_addf(argv, "memory-backend-file,id=ram0,size=%lluM,share=on,mem-path=/proc/self/fd/%d",
		  (unsigned long long)(vm->ram_bytes >> 20), at->n[CUSTODY_RAM]);
}

static void ram_restored(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	struct stat st;
	if (fds[CUSTODY_RAM] < 0)
		return;
	if (fstat(fds[CUSTODY_RAM], &st) < 0) {
		fds[CUSTODY_RAM] = safe_close(fds[CUSTODY_RAM]);
		return;
	}
	log_vm(LOG_INFO, vm->name, "guest RAM memfd (%llu MiB) back from the fd store as fd %d",
	       (unsigned long long)((uint64_t)st.st_size >> 20), fds[CUSTODY_RAM]);
}

const struct custody_ops custody_ram = {
	.kind = "ram",
	.open = ram_open,
	.restored = ram_restored,
	.recover = ram_recover,
	.qemu_args = ram_qemu_args,
};
