/* cmdline: the command line of a VM's QEMU, built from its spec, what the
 * probe found in the binary, the accelerator chosen at boot, what each kind
 * of held fd adds (custody.h) and what an upgrade's target adds. Pure (no
 * I/O), so a unit test checks each part. */
#pragma once

struct custody_qemu_fds;
struct probe_result;
struct vm_spec;

/* How an upgrade's target takes the guest in, by upgrade mode. */
enum cmdline_incoming_kind {
	CMDLINE_INCOMING_CPR_TRANSFER, /* main and cpr channels on unix sockets */
	CMDLINE_INCOMING_DEFER,        /* local-migrate: migrate-incoming over QMP later */
	CMDLINE_INCOMING_FILE,         /* cpr-exec: the state file the old binary wrote */
};

struct cmdline_incoming {
	enum cmdline_incoming_kind kind;
	/* The sockets the target binds (cpr-transfer), or the state file
	 * (cpr-exec: main_path). */
	const char *main_path, *cpr_path;
};

struct cmdline {
	const char *binary;               /* argv[0] */
	const struct vm_spec *spec;       /* spec->machine is the pinned type */
	const struct probe_result *probe; /* of binary; NULL: nothing known */
	const char *accel;                /* "tcg" or "kvm" */
	/* The numbers QEMU has the held fds at (custody_qemu_fds_assign). */
	const struct custody_qemu_fds *fds;
	const char *qmp_path;             /* the recovery monitor's socket, or NULL */
	/* An upgrade target's way in; NULL for a start, which gets -S. */
	const struct cmdline_incoming *incoming;
};

/* The NULL-ended argv (free with strv_free), or -ENOMEM. */
int cmdline_build(const struct cmdline *c, char ***ret);
