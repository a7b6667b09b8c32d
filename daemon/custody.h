/* custody: the fds cprd holds for a VM, described as data. Each kind (guest
 * RAM, console, QMP, VFIO) has an ops table in a file of its own
 * (custody-ram.c, custody-console.c, custody-qmp.c, custody-vfio.c): it
 * makes the kind's fds (or takes copies of those QEMU opened itself), names
 * them on QEMU's command line and takes them back from a running QEMU when
 * systemd's fd store lost them (custody-tap.c: the NICs' tap devices,
 * likewise). The numbers the fds have inside each QEMU are handed
 * out here when the QEMU starts and kept in its record (qemu.json). The
 * rest of cprd loops over custody_fds and custody_kinds to hand the fds to
 * QEMU, keep them in the fd store, list them in GetVM, keep them across a
 * re-exec and let go of them.
 *
 * Adding a kind: a custody-KIND.c with its ops, its ids in enum custody_id,
 * its rows in custody_fds and its ops in custody_kinds (custody.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct json_object;
struct spec_device;
struct vm_spec;
struct spec_nic;
struct strv;

/* At most this many NICs per VM (tap.h's TAP_PER_VM_MAX, spec.h's
 * SPEC_NICS_MAX): each has a held tap fd of its own. */
#define CUSTODY_TAPS 8
/* Copies of QEMU's VFIO fds held per VM, at most this many of each (the
 * spec's SPEC_DEVICES_MAX). */
#define CUSTODY_VFIO_MAX 8

/* The fds a VM holds. The per-VM ones outlive any one QEMU and are handed
 * to each QEMU of the VM; the per-QEMU ones belong to one QEMU process.
 * QEMU's numbers are handed out in this order, after its QMP end. */
enum custody_id {
	CUSTODY_CONSOLE_QEMU, /* QEMU's end of the console socketpair */
	CUSTODY_RAM,          /* the guest RAM memfd */
	CUSTODY_CONSOLE,      /* cprd's end of the console socketpair */
	CUSTODY_TAP0,         /* the tap device of NIC i is CUSTODY_TAP0 + i */
	_CUSTODY_TAP_END = CUSTODY_TAP0 + CUSTODY_TAPS,
	/* Copies of what QEMU opened for the assigned devices, CUSTODY_VFIO_MAX
	 * of each, in the order of their numbers in QEMU (custody-vfio.c). */
	CUSTODY_VFIO_CONTAINER = _CUSTODY_TAP_END,
	CUSTODY_VFIO_GROUP = CUSTODY_VFIO_CONTAINER + CUSTODY_VFIO_MAX,
	CUSTODY_VFIO_DEVICE = CUSTODY_VFIO_GROUP + CUSTODY_VFIO_MAX,
	_CUSTODY_VM_MAX = CUSTODY_VFIO_DEVICE + CUSTODY_VFIO_MAX,
	CUSTODY_QMP = _CUSTODY_VM_MAX, /* cprd's end of the current QEMU's QMP socketpair */
	_CUSTODY_MAX,
};

struct custody_fd {
	const char *name; /* NAME.<name> in the fd store, in GetVM and in a re-exec */
	const char *kind; /* GetVM's kind */
	/* Each QEMU of the VM gets this very fd (for CUSTODY_QMP: the other
	 * end of the socketpair). */
	bool to_qemu;
	/* The per-QEMU fd a restarted cprd finds in the fd store while an
	 * upgrade's target has its own: NAME.<target_name>. */
	const char *target_name;
	/* QEMU opens it itself; cprd holds a copy taken from the QEMU
	 * (custody_ops.from_qemu), which no QEMU is given, and which cprd
	 * gives up before it starts a fresh QEMU for the VM. */
	bool from_qemu;
};

extern const struct custody_fd custody_fds[_CUSTODY_MAX];

/* The number each fd has inside one QEMU process, or -1 where that QEMU
 * was not given it. */
struct custody_qemu_fds {
	int n[_CUSTODY_MAX];
};

/* Hands out the numbers of a new QEMU, from 3 up: its QMP end first, then
 * each per-VM fd that QEMU gets and that is held (held[i] >= 0), in
 * enum custody_id's order. Pure. */
void custody_qemu_fds_assign(const int held[_CUSTODY_VM_MAX], struct custody_qemu_fds *ret);
/* The numbers every QEMU had before they were recorded: a QEMU whose record
 * has none was started by such a cprd. */
extern const struct custody_qemu_fds custody_qemu_fds_legacy;
/* As kept in the QEMU's record: {"qmp": 3, "ram0": 5, ...}. */
struct json_object *custody_qemu_fds_to_json(const struct custody_qemu_fds *f);
/* Fills *ret from o; -EBADMSG with why filled for a name that is no held
 * fd, a number out of range or a number given twice. */
int custody_qemu_fds_from_json(struct json_object *o, struct custody_qemu_fds *ret, char *why,
			       size_t size);

/* What a kind's ops know of the VM. */
struct custody_vm {
	const char *name;
	uint64_t ram_bytes; /* the guest's memory */
	bool hugepages;
	const struct spec_nic *nics; /* in the order the guest sees them */
	size_t n_nics;
	const struct spec_device *devices; /* assigned through VFIO */
	size_t n_devices;
};

/* What the kinds know of the VM whose spec is s (which must outlive it). */
struct custody_vm custody_vm_of(const struct vm_spec *s);

struct custody_ops {
	const char *kind;
	/* Makes the kind's per-VM fds in fds[] that are still -1 (and
	 * remakes what no longer fits vm). Negative errno, logged. NULL for a
	 * per-QEMU kind, made with each QEMU. */
	int (*open)(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]);
	/* Checks the kind's per-VM fds that came back from the fd store, and
	 * closes (sets to -1) what cannot be used as it is. NULL: all are. */
	void (*restored)(const struct custody_vm *vm, int fds[_CUSTODY_VM_MAX]);
	/* Takes the kind's per-VM fds that are still -1 back from the QEMU
	 * behind pidfd, which has them at the numbers in at, checking they are
	 * what cprd gave it. Negative errno, logged. NULL: not taken back. */
	int (*recover)(const struct custody_vm *vm, pid_t pid, int pidfd,
		       const struct custody_qemu_fds *at, int fds[_CUSTODY_VM_MAX]);
	/* Adds the QEMU arguments that use the kind's fds at their numbers in
	 * at. Pure: tests/unit/test_cmdline.c checks them. */
	void (*qemu_args)(const struct custody_vm *vm, const struct custody_qemu_fds *at,
			  struct strv *argv);
	/* Takes copies of the kind's per-VM fds that QEMU opened itself from
	 * the QEMU behind pidfd, once that QEMU is the VM's: after it started
	 * the guest, after an upgrade committed to it, after a restarted cprd
	 * attached to it. What is held already and complete stays (such fds
	 * go from QEMU to QEMU with CPR: the same files). Negative errno,
	 * logged. NULL: QEMU opens nothing of the kind. */
	int (*from_qemu)(const struct custody_vm *vm, pid_t pid, int pidfd, int fds[_CUSTODY_VM_MAX]);
};

/* Every kind, in the order they are made and their arguments come. */
extern const struct custody_ops custody_ram, custody_qmp, custody_console, custody_tap,
	custody_vfio;
extern const struct custody_ops *const custody_kinds[];
extern const unsigned custody_n_kinds;

/* The QMP socketpair of a new QEMU process (custody-qmp.c): ours is cprd's
 * end, theirs goes to QEMU at its number. */
int custody_qmp_open(int *ours, int *theirs);
