/* The VM spec: what a VM is made of, parsed from JSON and checked field by
 * field, so every refusal names the field and the reason. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

#define SPEC_NAME_MAX 64
#define SPEC_DISKS_MAX 8
#define SPEC_CPUS_MAX 255
#define SPEC_MEMORY_MIN_MIB 16
#define SPEC_PATH_MAX 1024
#define SPEC_MACHINE_MAX 64
#define SPEC_NICS_MAX 8 /* TAP_PER_VM_MAX */
#define SPEC_DEVICES_MAX 8
#define SPEC_PCI_ADDR_LEN 12 /* DDDD:BB:DD.F */
#define SPEC_BACKING_MAX 64 /* files cprd put under one disk (snapshots, restores) */

struct spec_disk {
	char *path;
	char *format; /* raw or qcow2 */
	bool readonly;
	/* The files below this disk that cprd itself made it an overlay of
	 * (a snapshot's, a restore's), bottom first: its QEMU's user is let
	 * read them. Kept in vm.json and a snapshot's record; never taken
	 * from a caller, nor from an image's header. */
	char **backing;
	size_t n_backing;
};

/* A virtio-net NIC whose tap device cprd makes and holds, on a bridge. */
struct spec_nic {
	char *bridge;   /* a valid interface name; that it exists is checked
			 * when the VM is created and started (spec_check_bridges) */
	uint8_t mac[6]; /* as given, or derived from the VM's name and the
			 * NIC's index when the spec left it out, and stored */
};

/* A host PCI device assigned to the guest through VFIO. */
struct spec_device {
	char pci[SPEC_PCI_ADDR_LEN + 1]; /* DDDD:BB:DD.F in lower case, as sysfs names it */
};

struct vm_spec {
	char *name;
	uint64_t memory_mib;
	unsigned cpus;
	char *machine; /* as given, or pinned to a versioned type */
	char *qemu;
	char *accel;   /* tcg, kvm or auto */
	bool hugepages;
	/* QEMU may exec a new binary in place (-sandbox spawn=allow): what
	 * cpr-exec needs, and what every other VM is denied. */
	bool allow_exec;
	struct spec_disk *disks;
	size_t n_disks;
	struct spec_nic *nics; /* in the order the guest sees them */
	size_t n_nics;
	struct spec_device *devices;
	size_t n_devices;
};

struct spec_error {
	char field[64];
	char reason[256];
};

/* Parses and checks a spec, including what the host can check now (paths
 * exist, the binary can be run, memory fits). Fails with -EINVAL and fills
 * err on a bad spec. */
int spec_from_json(struct json_object *o, struct vm_spec **ret, struct spec_error *err);
/* Only the syntax, no look at the host: for specs read back from disk. */
int spec_from_json_trusted(struct json_object *o, struct vm_spec **ret, struct spec_error *err);
/* As spec_from_json, for the spec in a snapshot's record, which cprd wrote:
 * its disks may also name their backing chain. */
int spec_from_json_record(struct json_object *o, struct vm_spec **ret, struct spec_error *err);
/* Makes disk an overlay over the file it is now: its path goes on top of
 * its backing chain and path becomes overlay (a copy is kept). -E2BIG when
 * the chain holds SPEC_BACKING_MAX files already, -ENOMEM; d unchanged on
 * failure. */
int spec_disk_push_overlay(struct spec_disk *d, const char *overlay);
struct json_object *spec_to_json(const struct vm_spec *s);
void spec_free(struct vm_spec *s);
bool spec_name_valid(const char *name);
/* Checks that every NIC's bridge is a bridge in cprd's network namespace
 * now: at create and before a start makes the taps. Fails with -EINVAL and
 * fills err ("nics[1].bridge", "bridge br9 does not exist"). */
int spec_check_bridges(const struct vm_spec *s, struct spec_error *err);
/* Whether s is a PCI address DDDD:BB:DD.F (hex, device 00-1f, function 0-7). */
bool spec_pci_valid(const char *s);
/* Checks that path names a file this daemon may run as QEMU. */
int spec_check_binary(const char *path, struct spec_error *err, const char *field);
