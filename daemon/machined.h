/* Each running VM as a machine of systemd-machined (see machined.c), so
 * that `machinectl list` and `machinectl status` show it. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* machined's longest machine name (HOST_NAME_MAX). */
#define MACHINED_NAME_MAX 64

/* A name machined accepts: a host name of at most 64 characters, letters,
 * digits and '-' in labels separated by single dots, no label that starts
 * or ends with '-', no leading or trailing dot. */
bool machined_name_valid(const char *name);
/* The VM's machine name: its own name when machined accepts it; otherwise
 * its letters and digits with each other run turned into one '-', cut to
 * 58 characters, then '-' and five characters of a hash of the whole name
 * ("web_01" -> "web-01-xxxxx"), always valid and stable. */
void machined_name(const char *vm, char buf[static MACHINED_NAME_MAX + 1]);
/* The VM's machine id: a UUID derived from this host's machine id and the
 * VM's name, the same for the VM's whole life on this host. */
int machined_id(const char *vm, uint8_t id[static 16]);

/* Registers the VM as a machine whose leader is the QEMU pid, in the VM's
 * scope; nothing happens when that leader is registered already. Another
 * leader of the same VM (an upgrade's target took over) is unregistered
 * first. ifindex: the host ends of the VM's NICs. Never fatal: returns 1
 * registered, 0 nothing to do (no systemd or machined, said once; the QEMU
 * is not in its scope), or a negative errno after logging the reason. */
int machined_register(const char *vm, pid_t leader, const int *ifindex, size_t n_ifindex);
/* Unregisters the VM if this cprd registered it. Never TerminateMachine,
 * which kills: the guest is stopping, or gone, already. */
int machined_unregister(const char *vm);
/* Forgets what was registered; the machines stay, with their guests. */
void machined_close(void);
