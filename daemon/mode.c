/* The list of upgrade modes in the order auto prefers them, and the choice
 * of a mode for an upgrade (see mode.h). A new mode is a file with its ops
 * and a line here. */
#include "mode.h"

#include <json-c/json.h>
#include <stdio.h>

#include "macro.h"
#include "probe.h"

static const struct mode_ops *const modes[] = {
	&mode_cpr_transfer,  /* RAM and devices handed over, nothing copied */
	&mode_local_migrate, /* device state sent, shared RAM skipped */
};

const struct mode_ops *mode_find(const char *name) {
	for (size_t i = 0; i < ELEMENTSOF(modes); i++)
		if (streq_ptr(name, modes[i]->name))
			return modes[i];
	return NULL;
}

const struct mode_ops *mode_pick(const char *name, const struct probe_result *old,
				 const char *old_version, const struct probe_result *new, char *why,
				 size_t size) {
	const struct mode_ops *m = mode_find(name);
	if (m)
		return m->usable(old, old_version, new, why, size) ? m : NULL;
	char scratch[256];
	for (size_t i = 0; i < ELEMENTSOF(modes); i++)
		if (modes[i]->usable(old, old_version, new, scratch, sizeof(scratch)))
			return modes[i];
	size_t used = (size_t)snprintf(why, size, "neither");
	for (size_t i = 0; i < ELEMENTSOF(modes) && used < size; i++)
		used += (size_t)snprintf(why + used, size - used, "%s %s", i ? " nor" : "",
					 modes[i]->name);
	if (used < size)
		snprintf(why + used, size - used, " is supported by both QEMU %s and QEMU %u.%u.%u",
			 old_version ? old_version : "?", new->major, new->minor, new->micro);
	return NULL;
}

const struct mode_ops *mode_fallback(const struct mode_ops *failed, const struct probe_result *old,
				     const char *old_version, const struct probe_result *new) {
	char scratch[256];
	bool after = false;
	for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
		if (after && modes[i]->usable(old, old_version, new, scratch, sizeof(scratch)))
			return modes[i];
		after = after || modes[i] == failed;
	}
	return NULL;
}

struct json_object *mode_unix_addr(const char *path) {
	struct json_object *a = json_object_new_object();
	json_object_object_add(a, "transport", json_object_new_string("socket"));
	json_object_object_add(a, "type", json_object_new_string("unix"));
	json_object_object_add(a, "path", json_object_new_string(path));
	return a;
}
