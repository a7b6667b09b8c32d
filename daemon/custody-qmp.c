/* QMP: each QEMU process gets a socketpair of its own; cprd keeps its end
 * (in the fd store as NAME.qmp, or NAME.qmp-target for an upgrade's target
 * until it takes over). Without the fd store it is not taken back from
 * QEMU: cprd reconnects through the recovery monitor instead (vm.c). */
#include <errno.h>
#include <sys/socket.h>

#include "custody.h"
#include "util.h"

int custody_qmp_open(int *ours, int *theirs) {
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	*ours = sv[0];
	*theirs = sv[1];
	return 0;
}

/* The monitor cprd drives. (The recovery monitor on a socket path is no
 * held fd: cmdline.c adds it.) */
static void qmp_qemu_args(const struct custody_vm *vm, const struct custody_qemu_fds *at,
			  struct strv *argv) {
	strv_addf(argv, "-chardev");
	strv_addf(argv, "socket,id=qmp,fd=%d", at->n[CUSTODY_QMP]);
	strv_addf(argv, "-mon");
	strv_addf(argv, "chardev=qmp,mode=control");
}

/* Per QEMU process: made by custody_qmp_open for each, never taken back
 * (cprd reconnects through the recovery monitor instead). */
const struct custody_ops custody_qmp = {
	.kind = "qmp",
	.qemu_args = qmp_qemu_args,
};
