/* local-migrate (any QEMU cprd can run): both QEMUs map the same memfd
 * (share=on) and migrate with x-ignore-shared, so only device state is
 * sent; the new QEMU waits with -incoming defer and migrate-incoming. */
#include <stdio.h>

#include "mode.h"
#include "probe.h"

static bool local_migrate_usable(const struct probe_result *old, const char *old_version,
				 const struct probe_result *new, char *why, size_t size) {
	if (new->x_ignore_shared && old && old->x_ignore_shared)
		return true;
	snprintf(why, size, "local-migrate needs the x-ignore-shared capability on both QEMUs");
	return false;
}

static struct json_object *local_migrate_migrate_args(const char *main_path, const char *cpr_path) {
	return mode_uri_args("unix", main_path);
}

const struct mode_ops mode_local_migrate = {
	.name = "local-migrate",
	.usable = local_migrate_usable,
	.incoming = CMDLINE_INCOMING_DEFER,
	.qmp_mode = NULL,
	.ignore_shared = true,
	.migrate_args = local_migrate_migrate_args,
};
