/* VM spec parsing and validation (see spec.h). Everything from a client is
 * checked here before any other part of cprd sees it. */
#include "spec.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "binary.h"
#include "macro.h"
#include "tap.h"

void spec_free(struct vm_spec *s) {
	if (!s)
		return;
	free(s->name);
	free(s->machine);
	free(s->qemu);
	free(s->accel);
	for (size_t i = 0; i < s->n_disks; i++) {
		free(s->disks[i].path);
		free(s->disks[i].format);
		for (size_t k = 0; k < s->disks[i].n_backing; k++)
			free(s->disks[i].backing[k]);
		free(s->disks[i].backing);
	}
	free(s->disks);
	for (size_t i = 0; i < s->n_nics; i++)
		free(s->nics[i].bridge);
	free(s->nics);
	free(s->devices);
	free(s);
}

static _printf_(3, 4) int fail(struct spec_error *err, const char *field, const char *fmt, ...) {
	va_list ap;
	snprintf(err->field, sizeof(err->field), "%s", field);
	va_start(ap, fmt);
	vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

bool spec_name_valid(const char *name) {
	size_t n = strlen(name);
	if (n < 1 || n > SPEC_NAME_MAX || streq(name, ".") || streq(name, ".."))
		return false;
	return strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

/* A string field: present (when mandatory), a string, no NUL, not too long. */
static int string_value(struct json_object *v, const char *field, size_t max, const char **ret,
			struct spec_error *err) {
	if (!json_object_is_type(v, json_type_string))
		return fail(err, field, "must be a string");
	size_t len = (size_t)json_object_get_string_len(v);
	const char *s = json_object_get_string(v);
	if (strlen(s) != len)
		return fail(err, field, "contains a NUL character");
	if (len > max)
		return fail(err, field, "is longer than %zu characters", max);
	*ret = s;
	return 0;
}

static int get_string(struct json_object *o, const char *key, const char *field, bool mandatory,
		      size_t max, const char **ret, struct spec_error *err) {
	struct json_object *v;
	*ret = NULL;
	if (!json_object_object_get_ex(o, key, &v) || !v) {
		if (mandatory)
			return fail(err, field, "is missing");
		return 0;
	}
	return string_value(v, field, max, ret, err);
}

/* The string at a[k]. */
static int get_string_at(struct json_object *a, size_t k, const char *field, size_t max,
			 const char **ret, struct spec_error *err) {
	struct json_object *v = json_object_array_get_idx(a, k);
	*ret = NULL;
	if (!v)
		return fail(err, field, "must be a string");
	return string_value(v, field, max, ret, err);
}

static int get_int(struct json_object *o, const char *key, const char *field, bool mandatory,
		   int64_t *ret, struct spec_error *err) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !v) {
		if (mandatory)
			return fail(err, field, "is missing");
		return 1; /* absent: keep the default */
	}
	if (!json_object_is_type(v, json_type_int))
		return fail(err, field, "must be an integer");
	errno = 0;
	*ret = json_object_get_int64(v);
	if (errno == ERANGE)
		return fail(err, field, "is out of range");
	return 0;
}

static int get_bool(struct json_object *o, const char *key, const char *field, bool *ret,
		    struct spec_error *err) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !v)
		return 0;
	if (!json_object_is_type(v, json_type_boolean))
		return fail(err, field, "must be true or false");
	*ret = json_object_get_boolean(v);
	return 0;
}

static int check_keys(struct json_object *o, const char *const *allowed, const char *prefix,
		      struct spec_error *err) {
	json_object_object_foreach(o, key, val) {
		bool ok = false;
		(void)val;
		for (const char *const *a = allowed; *a; a++)
			if (streq(*a, key))
				ok = true;
		if (!ok) {
			char field[64];
			snprintf(field, sizeof(field), "%s%.40s", prefix, key);
			return fail(err, field, "is not a known field");
		}
	}
	return 0;
}

int spec_check_binary(const char *path, struct spec_error *err, const char *field) {
	char why[512];
	if (path[0] != '/')
		return fail(err, field, "must be an absolute path, not '%.200s'", path);
	if (binary_check(path, why, sizeof(why)) < 0)
		return fail(err, field, "%s", why);
	return 0;
}

static uint64_t host_memory_mib(void) {
	struct sysinfo si;
	if (sysinfo(&si) < 0)
		return UINT64_MAX;
	return (uint64_t)si.totalram * si.mem_unit / (1024 * 1024);
}

/* disks[i].backing: absolute paths QEMU can be given, at most
 * SPEC_BACKING_MAX. */
static int parse_backing(struct json_object *d, size_t i, struct spec_disk *disk,
			 struct spec_error *err) {
	struct json_object *v;
	char field[64];
	if (!json_object_object_get_ex(d, "backing", &v))
		return 0;
	snprintf(field, sizeof(field), "disks[%zu].backing", i);
	if (!json_object_is_type(v, json_type_array))
		return fail(err, field, "must be an array of paths");
	size_t n = json_object_array_length(v);
	if (n > SPEC_BACKING_MAX)
		return fail(err, field, "at most %d files, not %zu", SPEC_BACKING_MAX, n);
	disk->backing = calloc(n ? n : 1, sizeof(*disk->backing));
	if (!disk->backing)
		return -ENOMEM;
	for (size_t k = 0; k < n; k++) {
		const char *s;
		int r;
		snprintf(field, sizeof(field), "disks[%zu].backing[%zu]", i, k);
		if ((r = get_string_at(v, k, field, SPEC_PATH_MAX, &s, err)) < 0)
			return r;
		if (s[0] != '/')
			return fail(err, field, "must be an absolute path, not '%.200s'", s);
		if (strchr(s, ','))
			return fail(err, field, "must not contain a comma");
		if (!(disk->backing[k] = strdup(s)))
			return -ENOMEM;
		disk->n_backing = k + 1;
	}
	return 0;
}

int spec_disk_push_overlay(struct spec_disk *d, const char *overlay) {
	if (d->n_backing >= SPEC_BACKING_MAX)
		return -E2BIG;
	char **v = realloc(d->backing, (d->n_backing + 1) * sizeof(*v));
	if (!v)
		return -ENOMEM;
	d->backing = v;
	char *path = strdup(overlay);
	if (!path)
		return -ENOMEM;
	v[d->n_backing++] = d->path;
	d->path = path;
	return 0;
}

/* disks[i] of a spec into disk; backing only from a spec cprd wrote. */
static int parse_disk(struct json_object *d, size_t i, bool check_host, bool backing,
		      struct spec_disk *disk, struct spec_error *err) {
	static const char *const disk_keys[] = {"path", "format", "readonly", NULL};
	static const char *const disk_keys_backing[] = {"path", "format", "readonly", "backing",
							NULL};
	char field[64], prefix[32];
	const char *s;
	struct stat st;
	int r;

	snprintf(prefix, sizeof(prefix), "disks[%zu].", i);
	if (!json_object_is_type(d, json_type_object)) {
		snprintf(field, sizeof(field), "disks[%zu]", i);
		return fail(err, field, "must be an object with path, format and readonly");
	}
	if ((r = check_keys(d, backing ? disk_keys_backing : disk_keys, prefix, err)) < 0)
		return r;

	snprintf(field, sizeof(field), "disks[%zu].path", i);
	if ((r = get_string(d, "path", field, true, SPEC_PATH_MAX, &s, err)) < 0)
		return r;
	if (s[0] != '/')
		return fail(err, field, "must be an absolute path, not '%.200s'", s);
	if (check_host && stat(s, &st) < 0)
		return fail(err, field, "'%.200s' does not exist", s);
	if (check_host && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return fail(err, field, "'%.200s' is not a file or block device", s);
	if (strchr(s, ',')) /* QEMU's option syntax would split it */
		return fail(err, field, "must not contain a comma");
	if (!(disk->path = strdup(s)))
		return -ENOMEM;

	snprintf(field, sizeof(field), "disks[%zu].format", i);
	if ((r = get_string(d, "format", field, false, 16, &s, err)) < 0)
		return r;
	s = s ? s : "raw";
	if (!streq(s, "raw") && !streq(s, "qcow2"))
		return fail(err, field, "must be raw or qcow2, not '%.16s'", s);
	if (!(disk->format = strdup(s)))
		return -ENOMEM;

	snprintf(field, sizeof(field), "disks[%zu].readonly", i);
	if ((r = get_bool(d, "readonly", field, &disk->readonly, err)) < 0)
		return r;
	return backing ? parse_backing(d, i, disk, err) : 0;
}

/* The spec's disks. */
static int parse_disks(struct json_object *o, bool check_host, bool backing,
		       struct vm_spec *spec, struct spec_error *err) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, "disks", &v) || !v)
		return 0;
	if (!json_object_is_type(v, json_type_array))
		return fail(err, "disks", "must be an array");
	size_t nd = json_object_array_length(v);
	if (nd > SPEC_DISKS_MAX)
		return fail(err, "disks", "at most %d disks, not %zu", SPEC_DISKS_MAX, nd);
	spec->disks = calloc(nd ? nd : 1, sizeof(*spec->disks));
	if (!spec->disks)
		return -ENOMEM;
	for (size_t i = 0; i < nd; i++) {
		spec->n_disks = i + 1;
		int r = parse_disk(json_object_array_get_idx(v, i), i, check_host, backing,
				   &spec->disks[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* nics[i] of a spec into nic; a MAC left out is derived from the VM's name
 * and i, so it is stored with the spec and stays the VM's. */
static int parse_nic(struct json_object *d, size_t i, const char *vm, struct spec_nic *nic,
		     struct spec_error *err) {
	static const char *const nic_keys[] = {"bridge", "mac", NULL};
	char field[64], prefix[32];
	const char *s, *why;
	int r;

	snprintf(prefix, sizeof(prefix), "nics[%zu].", i);
	if (!json_object_is_type(d, json_type_object)) {
		snprintf(field, sizeof(field), "nics[%zu]", i);
		return fail(err, field, "must be an object with bridge and mac");
	}
	if ((r = check_keys(d, nic_keys, prefix, err)) < 0)
		return r;

	snprintf(field, sizeof(field), "nics[%zu].bridge", i);
	if ((r = get_string(d, "bridge", field, true, 64, &s, err)) < 0)
		return r;
	if (!tap_ifname_valid(s))
		return fail(err, field,
			    "'%.64s' is not an interface name (1 to 15 printable characters, none of / : %% "
			    "or a space, and not . or ..)",
			    s);
	if (!(nic->bridge = strdup(s)))
		return -ENOMEM;

	snprintf(field, sizeof(field), "nics[%zu].mac", i);
	if ((r = get_string(d, "mac", field, false, 64, &s, err)) < 0)
		return r;
	if (!s)
		tap_derive_mac(vm, (unsigned)i, nic->mac);
	else if (tap_mac_parse(s, nic->mac, &why) < 0)
		return fail(err, field, "'%.64s' %s", s, why);
	return 0;
}

/* The spec's NICs: at most SPEC_NICS_MAX, no MAC twice. */
static int parse_nics(struct json_object *o, struct vm_spec *spec, struct spec_error *err) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, "nics", &v) || !v)
		return 0;
	if (!json_object_is_type(v, json_type_array))
		return fail(err, "nics", "must be an array");
	size_t n = json_object_array_length(v);
	if (n > SPEC_NICS_MAX)
		return fail(err, "nics", "too many NICs: at most %d, not %zu", SPEC_NICS_MAX, n);
	spec->nics = calloc(n ? n : 1, sizeof(*spec->nics));
	if (!spec->nics)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		spec->n_nics = i + 1;
		int r = parse_nic(json_object_array_get_idx(v, i), i, spec->name, &spec->nics[i], err);
		if (r < 0)
			return r;
		for (size_t j = 0; j < i; j++)
			if (memcmp(spec->nics[j].mac, spec->nics[i].mac, 6) == 0) {
				char field[64], mac[TAP_MAC_STRLEN];
				struct json_object *given = NULL;
				json_object_object_get_ex(json_object_array_get_idx(v, i), "mac", &given);
				snprintf(field, sizeof(field), "nics[%zu].mac", i);
				tap_mac_format(spec->nics[i].mac, mac);
				return fail(err, field, "%s%s is nics[%zu]'s already; each NIC needs a MAC of its own",
					    given ? "" : "the derived ", mac, j);
			}
	}
	return 0;
}

bool spec_pci_valid(const char *s) {
	static const char hex[] = "0123456789abcdefABCDEF";
	if (strlen(s) != SPEC_PCI_ADDR_LEN || s[4] != ':' || s[7] != ':' || s[10] != '.')
		return false;
	for (size_t i = 0; i < SPEC_PCI_ADDR_LEN; i++)
		if (i != 4 && i != 7 && i != 10 && !strchr(hex, s[i]))
			return false;
	unsigned dev = (unsigned)strtoul(s + 8, NULL, 16);
	return dev <= 0x1f && s[11] >= '0' && s[11] <= '7';
}

/* devices[i] of a spec: {"pci": "DDDD:BB:DD.F"}. Whether the host has the
 * device and it can be assigned is checked where it is used (vfio.c). */
static int parse_device(struct json_object *d, size_t i, struct spec_device *dev,
			struct spec_error *err) {
	static const char *const device_keys[] = {"pci", NULL};
	char field[64], prefix[32];
	const char *s;
	int r;

	snprintf(prefix, sizeof(prefix), "devices[%zu].", i);
	snprintf(field, sizeof(field), "devices[%zu]", i);
	if (!json_object_is_type(d, json_type_object))
		return fail(err, field, "must be an object with pci");
	if ((r = check_keys(d, device_keys, prefix, err)) < 0)
		return r;
	snprintf(field, sizeof(field), "devices[%zu].pci", i);
	if ((r = get_string(d, "pci", field, true, 64, &s, err)) < 0)
		return r;
	if (!spec_pci_valid(s))
		return fail(err, field,
			    "must be a PCI address DDDD:BB:DD.F such as 0000:01:00.0 (as lspci -D "
			    "shows it), not '%.64s'", s);
	for (size_t k = 0; k <= SPEC_PCI_ADDR_LEN; k++)
		dev->pci[k] = (char)tolower((unsigned char)s[k]);
	return 0;
}

/* The host devices assigned to the guest, each at most once. */
static int parse_devices(struct json_object *o, struct vm_spec *spec, struct spec_error *err) {
	struct json_object *v;
	if (!json_object_object_get_ex(o, "devices", &v) || !v)
		return 0;
	if (!json_object_is_type(v, json_type_array))
		return fail(err, "devices", "must be an array");
	size_t n = json_object_array_length(v);
	if (n > SPEC_DEVICES_MAX)
		return fail(err, "devices", "at most %d devices, not %zu", SPEC_DEVICES_MAX, n);
	spec->devices = calloc(n ? n : 1, sizeof(*spec->devices));
	if (!spec->devices)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int r = parse_device(json_object_array_get_idx(v, i), i, &spec->devices[i], err);
		if (r < 0)
			return r;
		for (size_t k = 0; k < i; k++)
			if (streq(spec->devices[k].pci, spec->devices[i].pci)) {
				char field[64];
				snprintf(field, sizeof(field), "devices[%zu].pci", i);
				return fail(err, field, "names %s, which devices[%zu] names already",
					    spec->devices[i].pci, k);
			}
		spec->n_devices = i + 1;
	}
	return 0;
}

int spec_check_bridges(const struct vm_spec *s, struct spec_error *err) {
	for (size_t i = 0; i < s->n_nics; i++)
		if (!tap_bridge_exists(s->nics[i].bridge)) {
			char field[64];
			snprintf(field, sizeof(field), "nics[%zu].bridge", i);
			return fail(err, field, "bridge %s does not exist", s->nics[i].bridge);
		}
	return 0;
}


static int parse(struct json_object *o, bool check_host, bool backing, struct vm_spec **ret,
		 struct spec_error *err) {
	static const char *const keys[] = {"name", "memory", "cpus", "machine", "qemu", "accel",
					   "hugepages", "allowExec", "disks", "devices", "nics", NULL};
	const char *s;
	int64_t n;
	int r;

	if (!o || !json_object_is_type(o, json_type_object))
		return fail(err, "spec", "must be a JSON object");
	r = check_keys(o, keys, "", err);
	if (r < 0)
		return r;

	struct vm_spec *spec = calloc(1, sizeof(*spec));
	if (!spec)
		return -ENOMEM;
#define TRY(x)                          \
	do {                            \
		r = (x);                \
		if (r < 0)              \
			goto out;       \
	} while (0)

	TRY(get_string(o, "name", "name", true, 1024, &s, err));
	if (!spec_name_valid(s)) {
		r = fail(err, "name",
			 "must be 1 to %d characters of A-Z a-z 0-9 _ . - and not . or .., not '%.80s'",
			 SPEC_NAME_MAX, s);
		goto out;
	}
	spec->name = strdup(s);

	TRY(get_int(o, "memory", "memory", true, &n, err));
	if (n < SPEC_MEMORY_MIN_MIB) {
		r = fail(err, "memory", "must be at least %d MiB, not %lld", SPEC_MEMORY_MIN_MIB,
			 (long long)n);
		goto out;
	}
	if (check_host && (uint64_t)n > host_memory_mib()) {
		r = fail(err, "memory", "%lld MiB is more than the host's %llu MiB", (long long)n,
			 (unsigned long long)host_memory_mib());
		goto out;
	}
	if ((uint64_t)n > (UINT64_C(1) << 32)) {
		r = fail(err, "memory", "%lld MiB is too large", (long long)n);
		goto out;
	}
	spec->memory_mib = (uint64_t)n;

	n = 1;
	TRY(get_int(o, "cpus", "cpus", false, &n, err));
	if (n < 1 || n > SPEC_CPUS_MAX) {
		r = fail(err, "cpus", "must be between 1 and %d, not %lld", SPEC_CPUS_MAX, (long long)n);
		goto out;
	}
	spec->cpus = (unsigned)n;

	TRY(get_string(o, "machine", "machine", false, SPEC_MACHINE_MAX, &s, err));
	s = s ? s : "pc";
	if (!*s || strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") !=
			   strlen(s)) {
		r = fail(err, "machine", "'%.64s' is not a machine type name", s);
		goto out;
	}
	spec->machine = strdup(s);

	TRY(get_string(o, "qemu", "qemu", true, SPEC_PATH_MAX, &s, err));
	if (check_host)
		TRY(spec_check_binary(s, err, "qemu"));
	else if (s[0] != '/') {
		r = fail(err, "qemu", "must be an absolute path");
		goto out;
	}
	spec->qemu = strdup(s);

	TRY(get_string(o, "accel", "accel", false, 8, &s, err));
	s = s ? s : "auto";
	if (!streq(s, "tcg") && !streq(s, "kvm") && !streq(s, "auto")) {
		r = fail(err, "accel", "must be tcg, kvm or auto, not '%.8s'", s);
		goto out;
	}
	spec->accel = strdup(s);

	TRY(get_bool(o, "hugepages", "hugepages", &spec->hugepages, err));
	TRY(get_bool(o, "allowExec", "allowExec", &spec->allow_exec, err));

	TRY(parse_disks(o, check_host, backing, spec, err));
	if (!spec->name) {
		r = -ENOMEM;
		goto out;
	}
	TRY(parse_nics(o, spec, err));
	TRY(parse_devices(o, spec, err));

	if (!spec->name || !spec->machine || !spec->qemu || !spec->accel) {
		r = -ENOMEM;
		goto out;
	}
	*ret = TAKE_PTR(spec);
	return 0;
out:
	spec_free(spec);
	return r;
#undef TRY
}

int spec_from_json(struct json_object *o, struct vm_spec **ret, struct spec_error *err) {
	return parse(o, true, false, ret, err);
}

int spec_from_json_trusted(struct json_object *o, struct vm_spec **ret, struct spec_error *err) {
	return parse(o, false, true, ret, err);
}

int spec_from_json_record(struct json_object *o, struct vm_spec **ret, struct spec_error *err) {
	return parse(o, true, true, ret, err);
}

struct json_object *spec_to_json(const struct vm_spec *s) {
	struct json_object *o = json_object_new_object();
	json_object_object_add(o, "name", json_object_new_string(s->name));
	json_object_object_add(o, "memory", json_object_new_int64((int64_t)s->memory_mib));
	json_object_object_add(o, "cpus", json_object_new_int((int)s->cpus));
	json_object_object_add(o, "machine", json_object_new_string(s->machine));
	json_object_object_add(o, "qemu", json_object_new_string(s->qemu));
	json_object_object_add(o, "accel", json_object_new_string(s->accel));
	json_object_object_add(o, "hugepages", json_object_new_boolean(s->hugepages));
	json_object_object_add(o, "allowExec", json_object_new_boolean(s->allow_exec));
	struct json_object *disks = json_object_new_array();
	for (size_t i = 0; i < s->n_disks; i++) {
		struct json_object *d = json_object_new_object();
		json_object_object_add(d, "path", json_object_new_string(s->disks[i].path));
		json_object_object_add(d, "format", json_object_new_string(s->disks[i].format));
		json_object_object_add(d, "readonly", json_object_new_boolean(s->disks[i].readonly));
		if (s->disks[i].n_backing) {
			struct json_object *b = json_object_new_array();
			for (size_t k = 0; k < s->disks[i].n_backing; k++)
				json_object_array_add(b, json_object_new_string(s->disks[i].backing[k]));
			json_object_object_add(d, "backing", b);
		}
		json_object_array_add(disks, d);
	}
	json_object_object_add(o, "disks", disks);
	json_object_object_add(o, "devices", json_object_new_array());
	struct json_object *nics = json_object_new_array();
	for (size_t i = 0; i < s->n_nics; i++) {
		struct json_object *d = json_object_new_object();
		char mac[TAP_MAC_STRLEN];
		tap_mac_format(s->nics[i].mac, mac);
		json_object_object_add(d, "bridge", json_object_new_string(s->nics[i].bridge));
		json_object_object_add(d, "mac", json_object_new_string(mac));
		json_object_array_add(nics, d);
	}
	json_object_object_add(o, "nics", nics);
	struct json_object *devices = json_object_new_array();
	for (size_t i = 0; i < s->n_devices; i++) {
		struct json_object *d = json_object_new_object();
		json_object_object_add(d, "pci", json_object_new_string(s->devices[i].pci));
		json_object_array_add(devices, d);
	}
	json_object_object_add(o, "devices", devices);
	return o;
}
