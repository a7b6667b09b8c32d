/* custody: the fds cprd holds for a VM, described as data. Each kind (guest
 * RAM, console, QMP) has an ops table in a file of its own (custody-ram.c,
 * custody-console.c, custody-qmp.c) that makes its fds and takes them back
 * from a running QEMU when systemd's fd store lost them. The rest of cprd
 * loops over custody_fds to hand the fds to QEMU, keep them in the fd store,
 * list them in GetVM, keep them across a re-exec and let go of them. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* The fds a VM holds. The per-VM ones outlive any one QEMU and are handed
 * to each QEMU of the VM; the per-QEMU ones belong to one QEMU process. */
enum custody_id {
	CUSTODY_RAM,          /* the guest RAM memfd */
	CUSTODY_CONSOLE,      /* cprd's end of the console socketpair */
	CUSTODY_CONSOLE_QEMU, /* QEMU's end of it */
	_CUSTODY_VM_MAX,
	CUSTODY_QMP = _CUSTODY_VM_MAX, /* cprd's end of the current QEMU's QMP socketpair */
	_CUSTODY_MAX,
};

struct custody_fd {
	const char *name; /* NAME.<name> in the fd store, in GetVM and in a re-exec */
	const char *kind; /* GetVM's kind */
	/* The number each QEMU of the VM gets this very fd as, or -1. */
	int qemu_fd;
	/* The per-QEMU fd a restarted cprd finds in the fd store while an
	 * upgrade's target has its own: NAME.<target_name>. */
	const char *target_name;
};

extern const struct custody_fd custody_fds[_CUSTODY_MAX];

/* What a kind's ops know of the VM. */
struct custody_vm {
	const char *name;
	uint64_t ram_bytes; /* the guest's memory */
	bool hugepages;
};

struct custody_ops {
	const char *kind;
	/* Makes the kind's per-VM fds in fds[] that are still -1 (and
	 * remakes what no longer fits vm). Negative errno, logged. */
	int (*open)(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]);
	/* Takes the kind's per-VM fds that are still -1 back from the QEMU
	 * behind pidfd, checking they are what cprd gave it. Negative errno,
	 * logged. */
	int (*recover)(const struct custody_vm *vm, pid_t pid, int pidfd, int fds[_CUSTODY_VM_MAX]);
};

/* The kinds of per-VM fds, in the order they are made. */
extern const struct custody_ops custody_ram, custody_console;
extern const struct custody_ops *const custody_vm_kinds[];
extern const unsigned custody_n_vm_kinds;

/* The QMP socketpair of a new QEMU process (custody-qmp.c): ours is cprd's
 * end, theirs goes to QEMU as custody_fds[CUSTODY_QMP]'s QEMU number. */
int custody_qmp_open(int *ours, int *theirs);
