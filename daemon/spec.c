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
	}
	free(s->disks);
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
static int get_string(struct json_object *o, const char *key, const char *field, bool mandatory,
		      size_t max, const char **ret, struct spec_error *err) {
	struct json_object *v;
	*ret = NULL;
	if (!json_object_object_get_ex(o, key, &v) || !v) {
		if (mandatory)
			return fail(err, field, "is missing");
		return 0;
	}
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

/* disks[i] of a spec into disk. */
static int parse_disk(struct json_object *d, size_t i, bool check_host, struct spec_disk *disk,
		      struct spec_error *err) {
	static const char *const disk_keys[] = {"path", "format", "readonly", NULL};
	char field[64], prefix[32];
	const char *s;
	struct stat st;
	int r;

	snprintf(prefix, sizeof(prefix), "disks[%zu].", i);
	if (!json_object_is_type(d, json_type_object)) {
		snprintf(field, sizeof(field), "disks[%zu]", i);
		return fail(err, field, "must be an object with path, format and readonly");
	}
	if ((r = check_keys(d, disk_keys, prefix, err)) < 0)
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
	return get_bool(d, "readonly", field, &disk->readonly, err);
}

/* The spec's disks. */
static int parse_disks(struct json_object *o, bool check_host, struct vm_spec *spec,
		       struct spec_error *err) {
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
		int r = parse_disk(json_object_array_get_idx(v, i), i, check_host, &spec->disks[i], err);
		if (r < 0)
			return r;
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

static int parse(struct json_object *o, bool check_host, struct vm_spec **ret,
		 struct spec_error *err) {
	static const char *const keys[] = {"name", "memory", "cpus", "machine", "qemu", "accel",
					   "hugepages", "allowExec", "disks", "devices", NULL};
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

	TRY(parse_disks(o, check_host, spec, err));
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
	return parse(o, true, ret, err);
}

int spec_from_json_trusted(struct json_object *o, struct vm_spec **ret, struct spec_error *err) {
	return parse(o, false, ret, err);
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
		json_object_array_add(disks, d);
	}
	json_object_object_add(o, "disks", disks);
	struct json_object *devices = json_object_new_array();
	for (size_t i = 0; i < s->n_devices; i++) {
		struct json_object *d = json_object_new_object();
		json_object_object_add(d, "pci", json_object_new_string(s->devices[i].pci));
		json_object_array_add(devices, d);
	}
	json_object_object_add(o, "devices", devices);
	return o;
}
