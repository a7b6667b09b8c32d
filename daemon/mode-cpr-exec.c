/* cpr-exec (QEMU >= 10.2 on both sides): the old QEMU writes device state
 * to a file, then execs the new binary in place with the "cpr-exec-command"
 * cprd gave it; the process keeps its pid, the fds it inherited from cprd
 * and the guest RAM (the memfd cprd holds). */
#include "mode.h"
#include "probe.h"

/* main_path is the state file in the upgrade's private folder. */
static struct json_object *cpr_exec_migrate_args(const char *main_path, const char *cpr_path) {
	return mode_uri_args("file", main_path);
}

static bool cpr_exec_usable(const struct probe_result *old, const char *old_version,
			    const struct probe_result *new, char *why, size_t size) {
	return mode_cpr_usable("cpr-exec", "10.2", old && old->cpr_exec, new->cpr_exec, old,
			       old_version, new, why, size);
}

const struct mode_ops mode_cpr_exec = {
	.name = "cpr-exec",
	/* The same process runs the new binary (QEMU execs it): no target. */
	.in_place = true,
	.needs_exec = true,
	/* auto keeps the old QEMU until the new one runs the guest; here the
	 * exec is the point of no return. */
	.by_name_only = true,
	.usable = cpr_exec_usable,
	.qmp_mode = "cpr-exec",
	.incoming = CMDLINE_INCOMING_FILE,
	.migrate_args = cpr_exec_migrate_args,
	/* VFIO CPR registers for cpr-exec too, from its first release (10.2,
	 * "vfio: cpr-exec mode"). */
	.devices_since = "10.2",
};
