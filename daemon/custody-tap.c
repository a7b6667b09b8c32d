/* Taps: one tap device per NIC of the spec, made by cprd on the NIC's
 * bridge (tap.c) and held for the VM's life, so that every QEMU of the VM,
 * old and new, is handed the same open device: packets that arrive while
 * the guest is paused wait in the tap's queue for whichever QEMU runs it
 * next. The device is not persistent: it goes away with the last fd, when
 * the VM is stopped or deleted. Without the fd store each tap comes back
 * from QEMU, checked to be a tap of the expected name. */
#include <errno.h>
#include <net/if.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "custody.h"
#include "log.h"
#include "macro.h"
#include "spec.h"
#include "tap.h"
#include "util.h"

_Static_assert(CUSTODY_TAPS == TAP_PER_VM_MAX, "one held tap for each NIC a spec may have");
_Static_assert(CUSTODY_TAPS == SPEC_NICS_MAX, "one held tap for each NIC a spec may have");

static void taps_close(int fds[_CUSTODY_VM_MAX], size_t from) {
	for (size_t i = from; i < CUSTODY_TAPS; i++)
		fds[CUSTODY_TAP0 + i] = safe_close(fds[CUSTODY_TAP0 + i]);
}

static int tap_open_one(const struct custody_vm *vm, size_t i, int fds[_CUSTODY_VM_MAX]) {
	char ifname[IFNAMSIZ], why[256];
	int r = tap_name(vm->name, (unsigned)i, ifname);
	if (r < 0)
		return log_vm_errno(LOG_ERR, r, vm->name, "no tap name for NIC %zu: %m", i);
	int fd = tap_open(ifname, vm->nics[i].bridge, vm->nics[i].mac, why, sizeof(why));
	if (fd < 0)
		return log_vm_errno(LOG_ERR, fd, vm->name, "cannot make tap %s for NIC %zu: %s", ifname,
				    i, why);
	log_vm(LOG_INFO, vm->name, "tap %s made on bridge %s, held as fd %d", ifname,
	       vm->nics[i].bridge, fd);
	fds[CUSTODY_TAP0 + i] = fd;
	return 0;
}

/* The taps of NICs that have none yet; the taps of NICs the spec no
 * longer has go. On failure, the taps made here go too. */
static int tap_custody_open(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	taps_close(fds, vm->n_nics);
	bool made[CUSTODY_TAPS] = {false};
	for (size_t i = 0; i < vm->n_nics; i++) {
		if (fds[CUSTODY_TAP0 + i] >= 0)
			continue;
		int r = tap_open_one(vm, i, fds);
		if (r < 0) {
			for (size_t j = 0; j < i; j++)
				if (made[j])
					fds[CUSTODY_TAP0 + j] = safe_close(fds[CUSTODY_TAP0 + j]);
			return r;
		}
		made[i] = true;
	}
	return 0;
}

/* What came back from the fd store must still be the NIC's tap. */
static void tap_restored(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	taps_close(fds, vm->n_nics);
	for (size_t i = 0; i < vm->n_nics; i++) {
		char ifname[IFNAMSIZ];
		int *fd = &fds[CUSTODY_TAP0 + i];
		if (*fd < 0 || tap_name(vm->name, (unsigned)i, ifname) < 0)
			continue;
		if (tap_check(*fd, ifname) < 0) {
			log_vm(LOG_WARNING, vm->name, "fd store's tap%zu is not tap %s; dropped", i, ifname);
			*fd = safe_close(*fd);
		}
	}
}

static int tap_recover(const struct custody_vm *vm, pid_t pid, int pidfd,
		       const struct custody_qemu_fds *at, int fds[_CUSTODY_VM_MAX]) {
	int r = 0;
	for (size_t i = 0; i < vm->n_nics; i++) {
		char ifname[IFNAMSIZ];
		int n = at->n[CUSTODY_TAP0 + i];
		if (fds[CUSTODY_TAP0 + i] >= 0 || tap_name(vm->name, (unsigned)i, ifname) < 0)
			continue;
		int fd = n < 0 ? -1 : (int)syscall(SYS_pidfd_getfd, pidfd, n, 0);
		int e = fd < 0 ? -errno : tap_check(fd, ifname);
		if (n < 0 || e < 0) {
			safe_close(fd);
			r = log_vm_errno(LOG_WARNING, n < 0 ? -EBADF : e, vm->name,
					 "cannot take tap %s back from QEMU pid %d (fd %d): %m", ifname,
					 (int)pid, n);
			continue;
		}
		fds[CUSTODY_TAP0 + i] = fd;
		log_vm(LOG_INFO, vm->name, "tap %s taken back from QEMU pid %d", ifname, (int)pid);
	}
	return r;
}

/* The same ids on both sides of an upgrade: net0 is NIC 0. No option ROM
 * (romfile=): the guest does not boot from the network, and a ROM whose
 * size differs between two QEMU releases would fail the migration. */
static void tap_qemu_args(const struct custody_vm *vm, const struct custody_qemu_fds *at,
			  struct strv *argv) {
	for (size_t i = 0; i < vm->n_nics; i++) {
		char mac[TAP_MAC_STRLEN];
		tap_mac_format(vm->nics[i].mac, mac);
		strv_addf(argv, "-netdev");
		strv_addf(argv, "tap,id=net%zu,fd=%d", i, at->n[CUSTODY_TAP0 + i]);
		strv_addf(argv, "-device");
		strv_addf(argv, "virtio-net-pci,netdev=net%zu,mac=%s,id=nic%zu,romfile=", i, mac, i);
	}
}

const struct custody_ops custody_tap = {
	.kind = "tap",
	.open = tap_custody_open,
	.restored = tap_restored,
	.recover = tap_recover,
	.qemu_args = tap_qemu_args,
};
