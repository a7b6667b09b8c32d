/* The table of the fds cprd holds for a VM (see custody.h): their names in
 * the fd store and in GetVM, and their numbers in QEMU, which are the
 * command line's (cmdline.h). */
#include "custody.h"

#include "cmdline.h"
#include "macro.h"

const struct custody_fd custody_fds[_CUSTODY_MAX] = {
	[CUSTODY_RAM] = {.name = "ram0", .kind = "ram", .qemu_fd = CMDLINE_FD_RAM},
	/* A spare copy QEMU never uses, so a cprd without its fd store can
	 * take cprd's own end back (custody-console.c). */
	[CUSTODY_CONSOLE] = {.name = "console", .kind = "console", .qemu_fd = CMDLINE_FD_CONSOLE_CPRD},
	[CUSTODY_CONSOLE_QEMU] = {.name = "console-qemu", .kind = "console",
				  .qemu_fd = CMDLINE_FD_CONSOLE},
	/* QEMU gets the other end of the socketpair, as CMDLINE_FD_QMP. */
	[CUSTODY_QMP] = {.name = "qmp", .kind = "qmp", .qemu_fd = -1, .target_name = "qmp-target"},
};

const struct custody_ops *const custody_vm_kinds[] = {
	&custody_ram,
	&custody_console,
};

const unsigned custody_n_vm_kinds = ELEMENTSOF(custody_vm_kinds);
