/* The console: a socketpair. cprd reads its end into console.log; QEMU's
 * end is the serial chardev of every QEMU of the VM, so the stream goes on
 * across an upgrade. Each QEMU also keeps a spare copy of cprd's end, so
 * without the fd store both come back from QEMU. */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "custody.h"
#include "log.h"
#include "macro.h"
#include "util.h"

static int console_open(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	if (fds[CUSTODY_CONSOLE] >= 0 && fds[CUSTODY_CONSOLE_QEMU] >= 0)
		return 0;
	fds[CUSTODY_CONSOLE] = safe_close(fds[CUSTODY_CONSOLE]);
	fds[CUSTODY_CONSOLE_QEMU] = safe_close(fds[CUSTODY_CONSOLE_QEMU]);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
		return log_vm_errno(LOG_ERR, errno, vm->name, "cannot make the console: %m");
	/* QEMU's end blocks like a normal chardev socket would. */
	fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) & ~O_NONBLOCK);
	fds[CUSTODY_CONSOLE] = sv[0];
	fds[CUSTODY_CONSOLE_QEMU] = sv[1];
	return 0;
}

static int console_recover(const struct custody_vm *vm, pid_t pid, int pidfd,
			   const struct custody_qemu_fds *at, int fds[_CUSTODY_VM_MAX]) {
	if (fds[CUSTODY_CONSOLE] >= 0)
		return 0;
	if (at->n[CUSTODY_CONSOLE] < 0 || at->n[CUSTODY_CONSOLE_QEMU] < 0)
		return log_vm_errno(LOG_WARNING, -EBADF, vm->name,
				    "QEMU pid %d was not given the console", (int)pid);
	int ours = (int)syscall(SYS_pidfd_getfd, pidfd, at->n[CUSTODY_CONSOLE], 0);
	int theirs = (int)syscall(SYS_pidfd_getfd, pidfd, at->n[CUSTODY_CONSOLE_QEMU], 0);
	struct stat a, b;
	if (ours < 0 || theirs < 0 || fstat(ours, &a) < 0 || fstat(theirs, &b) < 0 ||
	    !S_ISSOCK(a.st_mode) || !S_ISSOCK(b.st_mode)) {
		int r = -errno;
		safe_close(ours);
		safe_close(theirs);
		return log_vm_errno(LOG_WARNING, r, vm->name,
				    "cannot take the console back from QEMU pid %d: %m", (int)pid);
	}
	fcntl(ours, F_SETFL, fcntl(ours, F_GETFL) | O_NONBLOCK);
	safe_close(fds[CUSTODY_CONSOLE_QEMU]);
	fds[CUSTODY_CONSOLE] = ours;
	fds[CUSTODY_CONSOLE_QEMU] = theirs;
	log_vm(LOG_INFO, vm->name, "console taken back from QEMU pid %d", (int)pid);
	return 0;
}

/* The guest's serial port is QEMU's end; cprd's spare copy is named
 * nowhere. */
static void console_qemu_args(const struct custody_vm *vm, const struct custody_qemu_fds *at,
			      struct strv *argv) {
	strv_addf(argv, "-chardev");
	strv_addf(argv, "socket,id=console,fd=%d", at->n[CUSTODY_CONSOLE_QEMU]);
	strv_addf(argv, "-serial");
	strv_addf(argv, "chardev:console");
}

/* Both ends come back, or neither is used. */
static void console_restored(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]) {
	if (fds[CUSTODY_CONSOLE] < 0 || fds[CUSTODY_CONSOLE_QEMU] < 0) {
		fds[CUSTODY_CONSOLE] = safe_close(fds[CUSTODY_CONSOLE]);
		fds[CUSTODY_CONSOLE_QEMU] = safe_close(fds[CUSTODY_CONSOLE_QEMU]);
		return;
	}
	fcntl(fds[CUSTODY_CONSOLE], F_SETFL, fcntl(fds[CUSTODY_CONSOLE], F_GETFL) | O_NONBLOCK);
}

const struct custody_ops custody_console = {
	.kind = "console",
	.open = console_open,
	.restored = console_restored,
	.recover = console_recover,
	.qemu_args = console_qemu_args,
};
