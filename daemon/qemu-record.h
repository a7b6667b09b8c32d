/* qemu-record: the record of one running QEMU that cprd writes to the VM's
 * qemu.json (and, for both QEMUs of an upgrade, to upgrade.json), so that a
 * restarted cprd can find the process again and know what it runs. Reading
 * one back checks every field and refuses a corrupt record with a reason. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "custody.h"

struct json_object;

struct qemu_record {
	pid_t pid;
	uint64_t starttime; /* /proc/PID/stat's: a reused pid has another */
	char *binary;
	/* The binary's file as it was when the QEMU started (for --outdated). */
	uint64_t dev, ino;
	struct timespec mtime;
	char *version;  /* "10.0.2", or "unknown" */
	char *qmp_path; /* its recovery monitor's socket, or NULL */
	/* What its probe found, for an upgrade from it. */
	bool cpr_transfer, cpr_exec, x_ignore_shared, aux_ram_share, has_modes;
	/* The numbers it has the held fds at; a record without them is of a
	 * QEMU an older cprd started, which had custody_qemu_fds_legacy's. */
	struct custody_qemu_fds fds;
};

struct json_object *qemu_record_to_json(const struct qemu_record *r);
/* Fills *ret (free with qemu_record_done) from o. -EBADMSG with why filled
 * when a field is missing, of the wrong type or out of range; -ENOMEM. */
int qemu_record_from_json(struct json_object *o, struct qemu_record *ret, char *why, size_t size);
void qemu_record_done(struct qemu_record *r);
