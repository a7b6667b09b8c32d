/* cpr-transfer (QEMU >= 10.0 on both sides): the old QEMU hands its RAM
 * (the memfd cprd holds) and device fds to the new one over a cpr channel,
 * then device state over the main channel; nothing is copied. */
#include <json-c/json.h>
#include <stdio.h>

#include "mode.h"
#include "probe.h"

static bool cpr_transfer_usable(const struct probe_result *old, const char *old_version,
				const struct probe_result *new, char *why, size_t size) {
	return mode_cpr_usable("cpr-transfer", "10.0", old && old->cpr_transfer, new->cpr_transfer,
			       old, old_version, new, why, size);
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
	/* VFIO devices go over in the CPR state from QEMU 10.1 on. */
	.devices_since = "10.1",
};
