/* The cpr channel of a cpr-transfer, passed through cprd: the old QEMU
 * connects to a socket cprd listens on, cprd connects to the new QEMU's
 * cpr socket and hands on the bytes and the fds. The new QEMU closes its
 * end once it listens on the main channel, and the old one waits for that
 * hang-up before it stops the guest: holding the old QEMU's end open lets
 * cprd choose when the pause begins (see upgrade.c, pause slots). */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

struct event_base;
struct cpr_relay;

/* Runs once: error 0 when the new QEMU took the state and hung up (the
 * old QEMU waits until cpr_relay_release), else a negative errno: the old
 * QEMU or the new one closed or failed, or another process connected.
 * The relay is the caller's to free either way; it watches nothing more. */
typedef void (*cpr_relay_fn)(struct cpr_relay *r, int error, void *userdata);

/* Connects to the new QEMU's cpr socket at target_path and listens at
 * listen_path (which must not exist) for the old QEMU, pid source_pid.
 * -ECONNREFUSED (or -ENOENT) while the new QEMU does not listen yet. */
int cpr_relay_new(struct event_base *base, const char *target_path, const char *listen_path,
		  pid_t source_pid, cpr_relay_fn fn, void *userdata, struct cpr_relay **ret);
/* Closes the old QEMU's end: it goes on (connects the main channel and
 * stops the guest). */
void cpr_relay_release(struct cpr_relay *r);
bool cpr_relay_released(const struct cpr_relay *r);
/* Closes everything and removes listen_path; NULL is fine. */
void cpr_relay_free(struct cpr_relay *r);
