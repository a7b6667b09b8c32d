/* QMP: each QEMU process gets a socketpair of its own; cprd keeps its end
 * (in the fd store as NAME.qmp, or NAME.qmp-target for an upgrade's target
 * until it takes over). Without the fd store it is not taken back from
 * QEMU: cprd reconnects through the recovery monitor instead (vm.c). */
#include <errno.h>
#include <sys/socket.h>

#include "custody.h"

int custody_qmp_open(int *ours, int *theirs) {
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	*ours = sv[0];
	*theirs = sv[1];
	return 0;
}
