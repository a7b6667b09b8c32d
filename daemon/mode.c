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
	&mode_cpr_exec,      /* by name only: the same process execs the new binary */
};

const struct mode_ops *mode_find(const char *name) {
	for (size_t i = 0; i < ELEMENTSOF(modes); i++)
		if (streq_ptr(name, modes[i]->name))
			return modes[i];
	return NULL;
}

/* Whether both QEMUs are release since ("10.1") or later. */
static bool both_since(const char *since, const struct probe_result *old,
		       const struct probe_result *new) {
	unsigned major = 0, minor = 0;
	sscanf(since, "%u.%u", &major, &minor);
	return old && (old->major > major || (old->major == major && old->minor >= minor)) &&
	       (new->major > major || (new->major == major && new->minor >= minor));
}

/* Whether m can carry the guest's assigned devices between these QEMUs. */
static bool devices_usable(const struct mode_ops *m, const struct mode_guest *g,
			   const struct probe_result *old, const char *old_version,
			   const struct probe_result *new, char *why, size_t size) {
	if (!g || g->n_devices == 0)
		return true;
	if (!m->devices_since) {
		snprintf(why, size,
			 "%s cannot move a guest with assigned devices (VFIO): QEMU does not "
			 "migrate their state; use cpr-transfer",
			 m->name);
		return false;
	}
	if (!both_since(m->devices_since, old, new)) {
		snprintf(why, size,
			 "%s carries assigned devices (VFIO) only with QEMU %s or later on both "
			 "sides; the guest runs on QEMU %s and the target is QEMU %u.%u.%u",
			 m->name, m->devices_since, old_version ? old_version : "?", new->major,
			 new->minor, new->micro);
		return false;
	}
	if (g->tcg && g->irq_device) {
		/* Seen in the lab: QEMU 11.1.3 with edu (INTx) assigned died of
		 * SIGSEGV when migrate started, and the guest was lost. */
		snprintf(why, size,
			 "%s of a guest with assigned devices needs KVM when a device can "
			 "interrupt, and this guest runs under TCG: %s has %s, and QEMU's VFIO CPR "
			 "moves device interrupts with KVM irqfds (hw/vfio/cpr.c), so under TCG the "
			 "old QEMU would crash and the guest be lost; run the guest with accel kvm",
			 m->name, g->irq_device, g->irq_what);
		return false;
	}
	return true;
}

static bool usable(const struct mode_ops *m, const struct mode_guest *g,
		   const struct probe_result *old, const char *old_version,
		   const struct probe_result *new, char *why, size_t size) {
	return m->usable(old, old_version, new, why, size) &&
	       devices_usable(m, g, old, old_version, new, why, size);
}

/* The first mode from modes[from] on that auto may choose for this pair. */
static const struct mode_ops *auto_first_usable(size_t from, const struct mode_guest *g,
						const struct probe_result *old,
						const char *old_version, const struct probe_result *new) {
	char scratch[512];
	for (size_t i = from; i < ELEMENTSOF(modes); i++)
		if (!modes[i]->by_name_only &&
		    usable(modes[i], g, old, old_version, new, scratch, sizeof(scratch)))
			return modes[i];
	return NULL;
}

const struct mode_ops *mode_pick(const char *name, const struct mode_guest *guest,
				 const struct probe_result *old, const char *old_version,
				 const struct probe_result *new, char *why, size_t size) {
	const struct mode_ops *m = mode_find(name);
	if (m)
		return usable(m, guest, old, old_version, new, why, size) ? m : NULL;
	if ((m = auto_first_usable(0, guest, old, old_version, new)))
		return m;
	/* With devices, why the first mode auto could take them in failed. */
	for (size_t i = 0; guest && guest->n_devices && i < ELEMENTSOF(modes); i++)
		if (!modes[i]->by_name_only && modes[i]->devices_since) {
			(void)usable(modes[i], guest, old, old_version, new, why, size);
			return NULL;
		}
	size_t used = (size_t)snprintf(why, size, "neither");
	for (size_t i = 0, n = 0; i < ELEMENTSOF(modes) && used < size; i++)
		if (!modes[i]->by_name_only)
			used += (size_t)snprintf(why + used, size - used, "%s %s", n++ ? " nor" : "",
						 modes[i]->name);
	if (used < size)
		snprintf(why + used, size - used, " is supported by both QEMU %s and QEMU %u.%u.%u",
			 old_version ? old_version : "?", new->major, new->minor, new->micro);
	return NULL;
}

const struct mode_ops *mode_fallback(const struct mode_ops *failed, const struct mode_guest *guest,
				     const struct probe_result *old, const char *old_version,
				     const struct probe_result *new) {
	for (size_t i = 0; i < ELEMENTSOF(modes); i++)
		if (modes[i] == failed)
			return auto_first_usable(i + 1, guest, old, old_version, new);
	return NULL;
}

/* An older release cannot read the CPR state a newer one writes: 11.1.3 ->
 * 10.0.2 fails in the transfer with "vmstate_load_state error -2", for a
 * Linux guest and the boot-sector guest alike (docs/compatibility.md).
 * Releases are compared by major.minor; within one release the state is
 * the same. */
static bool release_older(const struct probe_result *new, const struct probe_result *old) {
	return new->major < old->major || (new->major == old->major && new->minor < old->minor);
}

bool mode_cpr_usable(const char *mode, const char *since, bool old_has, bool new_has,
		     const struct probe_result *old, const char *old_version,
		     const struct probe_result *new, char *why, size_t size) {
	/* aux-ram-share on the old QEMU: its RAM blocks beyond the guest's
	 * (ROMs, video) must be shareable to be handed over. */
	if (!(new_has && old && old_has && old->aux_ram_share)) {
		snprintf(why, size,
			 "%s needs QEMU %s or later on both sides; the guest runs on QEMU %s "
			 "and the target is QEMU %u.%u.%u (use --mode local-migrate or auto)",
			 mode, since, old_version ? old_version : "?", new->major, new->minor,
			 new->micro);
		return false;
	}
	if (release_older(new, old)) {
		snprintf(why, size,
			 "%s cannot move a guest to an older QEMU: the target QEMU %u.%u.%u "
			 "cannot read the CPR state of QEMU %s, which the guest runs on (use --mode "
			 "local-migrate or auto; see docs/compatibility.md)",
			 mode, new->major, new->minor, new->micro, old_version ? old_version : "?");
		return false;
	}
	return true;
}

struct json_object *mode_uri_args(const char *scheme, const char *path) {
	_cleanup_free_ char *uri = NULL;
	struct json_object *args = json_object_new_object();
	if (asprintf(&uri, "%s:%s", scheme, path) >= 0)
		json_object_object_add(args, "uri", json_object_new_string(uri));
	return args;
}

struct json_object *mode_unix_addr(const char *path) {
	struct json_object *a = json_object_new_object();
	json_object_object_add(a, "transport", json_object_new_string("socket"));
	json_object_object_add(a, "type", json_object_new_string("unix"));
	json_object_object_add(a, "path", json_object_new_string(path));
	return a;
}
