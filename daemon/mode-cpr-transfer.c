/* cpr-transfer (QEMU >= 10.0 on both sides): the old QEMU hands its RAM
 * (the memfd cprd holds) and device fds to the new one over a cpr channel,
 * then device state over the main channel; nothing is copied. */
#include <json-c/json.h>
#include <stdio.h>

#include "mode.h"
#include "probe.h"

/* An older release cannot read the CPR state a newer one writes: 11.1.3 ->
 * 10.0.2 fails in the transfer with "vmstate_load_state error -2", for a
 * Linux guest and the boot-sector guest alike (docs/compatibility.md).
 * Releases are compared by major.minor; within one release the state is
 * the same. */
static bool release_older(const struct probe_result *new, const struct probe_result *old) {
	return new->major < old->major || (new->major == old->major && new->minor < old->minor);
}

static bool cpr_transfer_usable(const struct probe_result *old, const char *old_version,
				const struct probe_result *new, char *why, size_t size) {
	/* aux-ram-share on the old QEMU: its RAM blocks beyond the guest's
	 * (ROMs, video) must be shareable to be handed over. */
	if (!(new->cpr_transfer && old && old->cpr_transfer && old->aux_ram_share)) {
		snprintf(why, size,
			 "cpr-transfer needs QEMU 10.0 or later on both sides; the guest runs on QEMU %s "
			 "and the target is QEMU %u.%u.%u (use --mode local-migrate or auto)",
			 old_version ? old_version : "?", new->major, new->minor, new->micro);
		return false;
	}
	if (release_older(new, old)) {
		snprintf(why, size,
			 "cpr-transfer cannot move a guest to an older QEMU: the target QEMU %u.%u.%u "
			 "cannot read the CPR state of QEMU %s, which the guest runs on (use --mode "
			 "local-migrate or auto; see docs/compatibility.md)",
			 new->major, new->minor, new->micro, old_version ? old_version : "?");
		return false;
	}
	return true;
}

static struct json_object *channel(const char *type, const char *path) {
	struct json_object *c = json_object_new_object();
	json_object_object_add(c, "channel-type", json_object_new_string(type));
	json_object_object_add(c, "addr", mode_unix_addr(path));
	return c;
}

static struct json_object *cpr_transfer_migrate_args(const char *main_path, const char *cpr_path) {
	struct json_object *args = json_object_new_object(), *chans = json_object_new_array();
	json_object_array_add(chans, channel("main", main_path));
	json_object_array_add(chans, channel("cpr", cpr_path));
	json_object_object_add(args, "channels", chans);
	return args;
}

const struct mode_ops mode_cpr_transfer = {
	.name = "cpr-transfer",
	.usable = cpr_transfer_usable,
	.incoming = CMDLINE_INCOMING_CPR_TRANSFER,
	.qmp_mode = "cpr-transfer",
	.ignore_shared = false,
	.migrate_args = cpr_transfer_migrate_args,
};
