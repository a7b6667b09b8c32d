/* mode: the upgrade modes, each an ops table in a file of its own
 * (mode-cpr-transfer.c, mode-local-migrate.c) and an entry in mode.c's
 * list. The upgrade state machine names no mode: it asks the table what to
 * spawn (if anything), what to set on each QEMU, how to migrate and what to
 * undo. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cmdline.h"

struct json_object;
struct probe_result;

/* What a mode must know of the guest besides its two QEMUs. */
struct mode_guest {
	size_t n_devices; /* host PCI devices assigned through VFIO */
	bool tcg;         /* it runs under TCG (not KVM) */
	/* The first device that can raise interrupts (or whose config space
	 * could not be read), and what it has: "an interrupt pin (INTx)". */
	const char *irq_device;
	char irq_what[128];
};

struct mode_ops {
	const char *name; /* as in UpgradeRequest.mode */
	/* Whether a guest can move this way from a QEMU probed as old (which
	 * runs version old_version) to one probed as new; if not, fills why
	 * with a sentence a person can act on. old may be NULL (unknown). */
	bool (*usable)(const struct probe_result *old, const char *old_version,
		       const struct probe_result *new, char *why, size_t size);
	/* How the target takes the guest in (its -incoming). */
	enum cmdline_incoming_kind incoming;
	/* The "mode" migration parameter the old QEMU migrates with; NULL for
	 * normal. Set at preflight (blockers depend on it), reset on the way back. */
	const char *qmp_mode;
	/* x-ignore-shared on both QEMUs while migrating (RAM is shared, not
	 * sent); cleared on the new QEMU once it runs, and on a rollback. */
	bool ignore_shared;
	/* The arguments of `migrate` on the old QEMU. */
	struct json_object *(*migrate_args)(const char *main_path, const char *cpr_path);
	/* No new process is spawned: the old QEMU execs the new binary itself
	 * (the "cpr-exec-command" migration parameter, set before migrate),
	 * keeps its pid, its fds and its QMP channel, and greets anew on that
	 * channel. There is no target to kill on a rollback and no old QEMU to
	 * retire. */
	bool in_place;
	/* QEMU must be allowed to exec (the spec's allowExec, which gives it
	 * -sandbox spawn=allow); refused as not upgradable otherwise. */
	bool needs_exec;
	/* auto never picks it; only asked for by name. */
	bool by_name_only;
	/* For a guest with assigned devices: the QEMU release from which on
	 * both QEMUs carry them over in this mode ("10.1"); NULL: the mode
	 * cannot. The modes that can use QEMU's VFIO CPR, which moves a
	 * device's interrupts with KVM irqfds: under TCG only devices without
	 * interrupts can go. */
	const char *devices_since;
};

extern const struct mode_ops mode_cpr_transfer, mode_local_migrate, mode_cpr_exec;

/* The mode called name, or NULL ("auto" is no mode but a choice). */
const struct mode_ops *mode_find(const char *name);
/* The mode to use for guest (NULL: no devices): name's when it is usable,
 * or with "auto" the first usable one in the order of preference
 * (cpr-transfer, then local-migrate; never a by_name_only mode such as
 * cpr-exec). NULL with why filled when there is none. */
const struct mode_ops *mode_pick(const char *name, const struct mode_guest *guest,
				 const struct probe_result *old, const char *old_version,
				 const struct probe_result *new, char *why, size_t size);

/* After failed, which auto chose and which rolled back: the next usable
 * mode in auto's order, or NULL when there is none. */
const struct mode_ops *mode_fallback(const struct mode_ops *failed, const struct mode_guest *guest,
				     const struct probe_result *old, const char *old_version,
				     const struct probe_result *new);

/* usable for the CPR modes (cpr-transfer, cpr-exec): old_has and new_has
 * say whether each QEMU has the mode, which QEMU has since version since.
 * The old one must also have aux-ram-share, and the target must not be an
 * older release. */
bool mode_cpr_usable(const char *mode, const char *since, bool old_has, bool new_has,
		     const struct probe_result *old, const char *old_version,
		     const struct probe_result *new, char *why, size_t size);
/* For migrate_args: {"uri": "SCHEME:PATH"}. */
struct json_object *mode_uri_args(const char *scheme, const char *path);

/* For migrate_args: a unix socket address of QMP's SocketAddress kind. */
struct json_object *mode_unix_addr(const char *path);
