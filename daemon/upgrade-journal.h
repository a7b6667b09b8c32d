/* upgrade-journal: the journal of an upgrade under way (RUNTIME/vms/NAME/
 * upgrade.json), written at each step that a restarted cprd must know of,
 * and read back by attach.c to settle the upgrade. Reading it checks every
 * field, so a corrupt journal is refused with a reason, never half-trusted. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

struct upgrade_journal {
	char *time;         /* RFC 3339, when the upgrade started */
	char *phase;        /* the phase it was in when written */
	char *mode;         /* the mode chosen: "cpr-transfer" or "local-migrate" */
	char *binary;       /* the target's binary */
	char *from_binary, *from_version;
	char *dir;          /* the private folder of the incoming sockets, or NULL */
	bool was_running;   /* the guest ran (was not paused) at preflight */
	bool resumed;       /* the point of no return was passed */
	uint64_t start_mono;
	/* The QEMU records (qemu-record.h) of the old QEMU and the target, or
	 * NULL; checked when read. */
	struct json_object *old, *target;
};

/* The journal as JSON; j's records are referenced, not taken. */
struct json_object *upgrade_journal_to_json(const struct upgrade_journal *j);
/* Fills *ret (free with upgrade_journal_done) from o; -EBADMSG with why
 * filled when a field is missing, of the wrong type or not a value cprd
 * writes; -ENOMEM. */
int upgrade_journal_from_json(struct json_object *o, struct upgrade_journal *ret, char *why,
			      size_t size);
void upgrade_journal_done(struct upgrade_journal *j);
