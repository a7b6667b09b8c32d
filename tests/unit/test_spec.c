/* Check suite for daemon/spec.c: a valid spec parses with its defaults and
 * survives the trip through vm.json; every invalid field is refused with
 * that field named and a reason a person can act on; the trusted parser
 * (specs read back from disk) skips only the looks at the host. */
#include <check.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check-run.h"
#include "macro.h"
#include "spec.h"
#include "tap.h"

/* A binary every Debian machine has, owned by root in root's folders. */
#define GOOD_BINARY "/bin/sh"

static char tmpdir[64], disk[128], writable_bin[128];

static void setup(void) {
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/cprd-test-spec-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(tmpdir));
	snprintf(disk, sizeof(disk), "%s/disk.img", tmpdir);
	FILE *f = fopen(disk, "w");
	ck_assert_ptr_nonnull(f);
	fputs("disk", f);
	fclose(f);
	/* A binary anyone may rewrite: never to be run by a root daemon. */
	snprintf(writable_bin, sizeof(writable_bin), "%s/qemu", tmpdir);
	f = fopen(writable_bin, "w");
	ck_assert_ptr_nonnull(f);
	fputs("#!/bin/sh\n", f);
	fclose(f);
	ck_assert_int_eq(chmod(writable_bin, 0777), 0);
}

static void teardown(void) {
	unlink(disk);
	unlink(writable_bin);
	rmdir(tmpdir);
}

/* A valid spec as cprctl create sends it. */
static struct json_object *valid(void) {
	char text[1024];
	snprintf(text, sizeof(text),
		 "{\"name\": \"vm-1.test_x\", \"memory\": 64, \"cpus\": 2, \"machine\": \"pc-i440fx-7.2\","
		 " \"qemu\": \"%s\", \"accel\": \"tcg\", \"hugepages\": false,"
		 " \"disks\": [{\"path\": \"%s\", \"format\": \"raw\", \"readonly\": true}],"
		 " \"devices\": []}",
		 GOOD_BINARY, disk);
	struct json_object *o = json_tokener_parse(text);
	ck_assert_ptr_nonnull(o);
	return o;
}

/* Sets key (a path like "disks.0.path" for nested fields) to the JSON
 * text value, or removes it when value is NULL. */
static void set(struct json_object *o, const char *key, const char *value) {
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", key);
	char *dot = strchr(buf, '.');
	if (dot) {
		*dot = '\0';
		char *rest = dot + 1;
		struct json_object *arr = json_object_object_get(o, buf);
		char *dot2 = strchr(rest, '.');
		ck_assert_ptr_nonnull(dot2);
		*dot2 = '\0';
		struct json_object *elem = json_object_array_get_idx(arr, (size_t)atoi(rest));
		ck_assert_ptr_nonnull(elem);
		return set(elem, dot2 + 1, value);
	}
	if (!value) {
		json_object_object_del(o, key);
		return;
	}
	struct json_object *v = json_tokener_parse(value);
	/* "null" parses to NULL, which json-c stores as null. */
	ck_assert_msg(v || strcmp(value, "null") == 0, "bad JSON in the test: %s", value);
	json_object_object_add(o, key, v);
}

/* Expects spec_from_json (and, with trusted_too, the trusted parser) to
 * refuse o naming field, with words in the reason. Takes o. */
static void refused(struct json_object *o, bool trusted_too, const char *field, const char *words,
		    const char *trusted_words) {
	struct spec_error err;
	struct vm_spec *s = NULL;
	memset(&err, 0, sizeof(err));
	int r = spec_from_json(o, &s, &err);
	ck_assert_msg(r == -EINVAL, "spec_from_json accepted %s (expected a refusal of %s)",
		      json_object_to_json_string(o), field);
	ck_assert_ptr_null(s);
	ck_assert_str_eq(err.field, field);
	ck_assert_msg(strstr(err.reason, words), "reason for %s is '%s', expected it to say '%s'", field,
		      err.reason, words);
	memset(&err, 0, sizeof(err));
	r = spec_from_json_trusted(o, &s, &err);
	if (trusted_too) {
		ck_assert_int_eq(r, -EINVAL);
		ck_assert_str_eq(err.field, field);
		if (trusted_words)
			ck_assert_msg(strstr(err.reason, trusted_words),
				      "trusted reason for %s is '%s', expected '%s'", field, err.reason,
				      trusted_words);
	} else {
		ck_assert_msg(r == 0, "the trusted parser refused %s: %s: %s", json_object_to_json_string(o),
			      err.field, err.reason);
		spec_free(s);
	}
	json_object_put(o);
}

/* One field set to a bad value, refused by both parsers. */
static void bad(const char *key, const char *value, const char *field, const char *words) {
	struct json_object *o = valid();
	set(o, key, value);
	refused(o, true, field, words, words);
}

/* Refused by both, for different reasons: the host check comes first. */
static void bad2(const char *key, const char *value, const char *field, const char *words,
		 const char *trusted_words) {
	struct json_object *o = valid();
	set(o, key, value);
	refused(o, true, field, words, trusted_words);
}

/* One field set to a value only the host check refuses. */
static void bad_on_host(const char *key, const char *value, const char *field, const char *words) {
	struct json_object *o = valid();
	set(o, key, value);
	refused(o, false, field, words, NULL);
}

/* Writes s out as vm.json holds it and reads it back, trusted as cprd reads
 * its own files: the copy must write out the same JSON. Returns the copy
 * for further checks; the caller frees it. */
static struct vm_spec *round_trip(const struct vm_spec *s) {
	struct json_object *j = spec_to_json(s);
	struct spec_error err = {0};
	struct vm_spec *back = NULL;
	ck_assert_int_eq(spec_from_json_trusted(j, &back, &err), 0);
	struct json_object *j2 = spec_to_json(back);
	ck_assert(json_object_equal(j, j2));
	json_object_put(j);
	json_object_put(j2);
	return back;
}

START_TEST(test_valid) {
	struct json_object *o = valid();
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	ck_assert_int_eq(spec_from_json(o, &s, &err), 0);
	ck_assert_str_eq(s->name, "vm-1.test_x");
	ck_assert_uint_eq(s->memory_mib, 64);
	ck_assert_uint_eq(s->cpus, 2);
	ck_assert_str_eq(s->machine, "pc-i440fx-7.2");
	ck_assert_str_eq(s->qemu, GOOD_BINARY);
	ck_assert_str_eq(s->accel, "tcg");
	ck_assert(!s->hugepages);
	ck_assert(!s->allow_exec); /* QEMU may not exec unless the spec says so */
	ck_assert_uint_eq(s->n_disks, 1);
	ck_assert_str_eq(s->disks[0].path, disk);
	ck_assert_str_eq(s->disks[0].format, "raw");
	ck_assert(s->disks[0].readonly);
	ck_assert_uint_eq(s->n_nics, 0);

	/* What is written to vm.json reads back as the same spec. */
	spec_free(round_trip(s));
	spec_free(s);
	json_object_put(o);
}
END_TEST

START_TEST(test_defaults) {
	char text[256];
	snprintf(text, sizeof(text), "{\"name\": \"a\", \"memory\": 16, \"qemu\": \"%s\"}", GOOD_BINARY);
	struct json_object *o = json_tokener_parse(text);
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	ck_assert_int_eq(spec_from_json(o, &s, &err), 0);
	ck_assert_uint_eq(s->cpus, 1);
	ck_assert_str_eq(s->machine, "pc");
	ck_assert_str_eq(s->accel, "auto");
	ck_assert_uint_eq(s->n_disks, 0);
	spec_free(s);
	json_object_put(o);

	/* null means absent for the optional fields. */
	o = valid();
	set(o, "cpus", "null");
	set(o, "machine", "null");
	set(o, "disks", "null");
	ck_assert_int_eq(spec_from_json(o, &s, &err), 0);
	ck_assert_uint_eq(s->cpus, 1);
	spec_free(s);
	json_object_put(o);

	/* The longest name and the most disks allowed. */
	o = valid();
	char name[80];
	memset(name, 'n', 64);
	name[64] = '\0';
	char quoted[96];
	snprintf(quoted, sizeof(quoted), "\"%s\"", name);
	set(o, "name", quoted);
	char disks[2048] = "[";
	for (int i = 0; i < SPEC_DISKS_MAX; i++) {
		size_t n = strlen(disks);
		snprintf(disks + n, sizeof(disks) - n, "%s{\"path\": \"%s\"}", i ? ", " : "", disk);
	}
	strcat(disks, "]");
	set(o, "disks", disks);
	ck_assert_int_eq(spec_from_json(o, &s, &err), 0);
	ck_assert_uint_eq(s->n_disks, SPEC_DISKS_MAX);
	spec_free(s);
	json_object_put(o);
}
END_TEST

START_TEST(test_not_an_object) {
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	ck_assert_int_eq(spec_from_json(NULL, &s, &err), -EINVAL);
	ck_assert_str_eq(err.field, "spec");
	struct json_object *a = json_object_new_array();
	ck_assert_int_eq(spec_from_json_trusted(a, &s, &err), -EINVAL);
	ck_assert_str_eq(err.field, "spec");
	json_object_put(a);
}
END_TEST

START_TEST(test_name) {
	bad("name", NULL, "name", "missing");
	bad("name", "null", "name", "missing");
	bad("name", "5", "name", "must be a string");
	bad("name", "\"\"", "name", "1 to 64");
	bad("name", "\".\"", "name", "not . or ..");
	bad("name", "\"..\"", "name", "not . or ..");
	bad("name", "\"../x\"", "name", "A-Z");
	bad("name", "\"a/b\"", "name", "A-Z");
	bad("name", "\"/etc\"", "name", "A-Z");
	bad("name", "\"a b\"", "name", "A-Z");
	bad("name", "\"vm\\u00e9\"", "name", "A-Z");
	bad("name", "\"a\\u0000b\"", "name", "NUL");
	bad("name", "\"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\"", "name", "1 to 64");
}
END_TEST

START_TEST(test_memory) {
	bad("memory", NULL, "memory", "missing");
	bad("memory", "15", "memory", "at least 16");
	bad("memory", "0", "memory", "at least 16");
	bad("memory", "-1", "memory", "at least 16");
	bad("memory", "-9223372036854775808", "memory", "at least 16");
	bad("memory", "\"64\"", "memory", "integer");
	bad("memory", "64.0", "memory", "integer");
	bad("memory", "1e3", "memory", "integer");
	bad("memory", "true", "memory", "integer");
	bad2("memory", "8589934592", "memory", "host", "too large");
	bad_on_host("memory", "4294967296", "memory", "host");
}
END_TEST

START_TEST(test_cpus) {
	bad("cpus", "0", "cpus", "between 1 and 255");
	bad("cpus", "256", "cpus", "between 1 and 255");
	bad("cpus", "-1", "cpus", "between 1 and 255");
	bad("cpus", "4294967297", "cpus", "between 1 and 255");
	bad("cpus", "\"2\"", "cpus", "integer");
	bad("cpus", "1.5", "cpus", "integer");
}
END_TEST

START_TEST(test_machine) {
	bad("machine", "\"\"", "machine", "not a machine type");
	bad("machine", "\"pc,accel=kvm\"", "machine", "not a machine type");
	bad("machine", "\"pc;rm\"", "machine", "not a machine type");
	bad("machine", "[]", "machine", "string");
	bad("machine", "\"mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm\"", "machine", "longer");
}
END_TEST

START_TEST(test_qemu) {
	bad("qemu", NULL, "qemu", "missing");
	bad("qemu", "\"qemu-system-x86_64\"", "qemu", "absolute");
	bad("qemu", "1", "qemu", "string");
	bad_on_host("qemu", "\"/nonexistent/qemu\"", "qemu", "does not exist");
	bad_on_host("qemu", "\"/etc\"", "qemu", "not a regular file");
	bad_on_host("qemu", "\"/etc/passwd\"", "qemu", "not executable");
	char v[256];
	snprintf(v, sizeof(v), "\"%s\"", writable_bin);
	if (getuid() == 0)
		bad_on_host("qemu", v, "qemu", "owned by root");
}
END_TEST

START_TEST(test_accel_hugepages) {
	bad("accel", "\"xen\"", "accel", "tcg, kvm or auto");
	bad("accel", "\"tcgtcgtcg\"", "accel", "longer");
	bad("accel", "0", "accel", "string");
	bad("hugepages", "\"yes\"", "hugepages", "true or false");
	bad("hugepages", "1", "hugepages", "true or false");
	bad("allowExec", "\"yes\"", "allowExec", "true or false");
}
END_TEST

START_TEST(test_disks) {
	bad("disks", "{}", "disks", "array");
	bad("disks", "\"/a\"", "disks", "array");
	bad("disks", "[{\"path\":\"/a\"},{\"path\":\"/a\"},{\"path\":\"/a\"},{\"path\":\"/a\"},{\"path\":\"/a\"},"
		     "{\"path\":\"/a\"},{\"path\":\"/a\"},{\"path\":\"/a\"},{\"path\":\"/a\"}]",
	    "disks", "at most 8");
	bad("disks", "[\"/a\"]", "disks[0]", "object");
	bad("disks", "[{}]", "disks[0].path", "missing");
	bad("disks.0.path", "\"disk.img\"", "disks[0].path", "absolute");
	bad2("disks.0.path", "\"/a,b=c\"", "disks[0].path", "does not exist", "comma");
	bad("disks.0.path", "\"/a\\u0000b\"", "disks[0].path", "NUL");
	bad("disks.0.format", "\"vmdk\"", "disks[0].format", "raw or qcow2");
	bad("disks.0.readonly", "\"no\"", "disks[0].readonly", "true or false");
	bad("disks.0.cache", "\"none\"", "disks[0].cache", "not a known field");
	/* A file that exists but whose name QEMU's option syntax would split. */
	char comma[160], v[200];
	snprintf(comma, sizeof(comma), "%s/a,b=c", tmpdir);
	FILE *f = fopen(comma, "w");
	ck_assert_ptr_nonnull(f);
	fclose(f);
	snprintf(v, sizeof(v), "\"%s\"", comma);
	bad("disks.0.path", v, "disks[0].path", "comma");
	unlink(comma);
	bad_on_host("disks.0.path", "\"/nonexistent.img\"", "disks[0].path", "does not exist");
	bad_on_host("disks.0.path", "\"/etc\"", "disks[0].path", "not a file or block device");
	bad_on_host("disks.0.path", "\"/dev/null\"", "disks[0].path", "not a file or block device");
}
END_TEST

/* The backing chain cprd records under a disk: never from a caller, read
 * back field by field from vm.json and a snapshot's record. */
static void backing_refused(const char *value, const char *field, const char *words) {
	struct json_object *o = valid();
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	set(o, "disks.0.backing", value);
	ck_assert_int_eq(spec_from_json_trusted(o, &s, &err), -EINVAL);
	ck_assert_ptr_null(s);
	ck_assert_str_eq(err.field, field);
	ck_assert_msg(strstr(err.reason, words), "reason for %s is '%s', expected '%s'", field,
		      err.reason, words);
	memset(&err, 0, sizeof(err));
	ck_assert_int_eq(spec_from_json_record(o, &s, &err), -EINVAL);
	ck_assert_str_eq(err.field, field);
	json_object_put(o);
}

START_TEST(test_backing) {
	/* A caller may not name it: CreateVM's spec refuses the field. */
	struct json_object *o = valid();
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	set(o, "disks.0.backing", "[\"/etc/shadow\"]");
	ck_assert_int_eq(spec_from_json(o, &s, &err), -EINVAL);
	ck_assert_str_eq(err.field, "disks[0].backing");
	ck_assert_ptr_nonnull(strstr(err.reason, "not a known field"));
	/* cprd's own files may. */
	ck_assert_int_eq(spec_from_json_record(o, &s, &err), 0);
	ck_assert_uint_eq(s->disks[0].n_backing, 1);
	ck_assert_str_eq(s->disks[0].backing[0], "/etc/shadow");
	spec_free(s);
	json_object_put(o);

	backing_refused("\"/a\"", "disks[0].backing", "array");
	backing_refused("[1]", "disks[0].backing[0]", "string");
	backing_refused("[\"/a\", null]", "disks[0].backing[1]", "string");
	backing_refused("[\"a.qcow2\"]", "disks[0].backing[0]", "absolute");
	backing_refused("[\"/a,b=c\"]", "disks[0].backing[0]", "comma");
	backing_refused("[\"/a\\u0000b\"]", "disks[0].backing[0]", "NUL");
	char many[SPEC_BACKING_MAX * 8 + 16] = "[";
	for (int i = 0; i <= SPEC_BACKING_MAX; i++)
		strcat(many, i ? ",\"/a\"" : "\"/a\"");
	strcat(many, "]");
	backing_refused(many, "disks[0].backing", "at most");

	/* Two snapshots: a -> a.snap-1 -> a.snap-2, bottom first, and back. */
	o = valid();
	ck_assert_int_eq(spec_from_json(o, &s, &err), 0);
	json_object_put(o);
	struct spec_disk *d = &s->disks[0];
	ck_assert_int_eq(spec_disk_push_overlay(d, "/v/a.snap-1.qcow2"), 0);
	ck_assert_int_eq(spec_disk_push_overlay(d, "/v/a.snap-2.qcow2"), 0);
	struct vm_spec *back = round_trip(s);
	ck_assert_str_eq(back->disks[0].path, "/v/a.snap-2.qcow2");
	ck_assert_uint_eq(back->disks[0].n_backing, 2);
	ck_assert_str_eq(back->disks[0].backing[0], disk);
	ck_assert_str_eq(back->disks[0].backing[1], "/v/a.snap-1.qcow2");
	spec_free(back);
	/* The chain is bounded: the next overlay is refused, d unchanged. */
	while (d->n_backing < SPEC_BACKING_MAX)
		ck_assert_int_eq(spec_disk_push_overlay(d, "/v/a.snap-n.qcow2"), 0);
	ck_assert_int_eq(spec_disk_push_overlay(d, "/v/a.snap-x.qcow2"), -E2BIG);
	ck_assert_str_eq(d->path, "/v/a.snap-n.qcow2");
	ck_assert_uint_eq(d->n_backing, SPEC_BACKING_MAX);
	spec_free(s);
}
END_TEST

/* Devices are named by PCI address; only the syntax is the spec's to
 * check (the host's devices are vfio.c's, see test_vfio.c). */
START_TEST(test_devices) {
	bad("devices", "{}", "devices", "array");
	bad("devices", "[\"0000:01:00.0\"]", "devices[0]", "object with pci");
	bad("devices", "[{\"host\": \"0000:01:00.0\"}]", "devices[0].host", "not a known field");
	bad("devices", "[{}]", "devices[0].pci", "missing");
	bad("devices", "[{\"pci\": 3}]", "devices[0].pci", "string");
	static const char *const addrs[] = {"01:00.0", "0000:01:00", "0000:01:00.8", "0000:01:20.0",
					    "0000-01-00.0", "0000:0g:00.0", "00000:01:00.0", ""};
	for (size_t i = 0; i < ELEMENTSOF(addrs); i++) {
		char v[64];
		snprintf(v, sizeof(v), "[{\"pci\": \"0000:01:00.0\"}, {\"pci\": \"%s\"}]", addrs[i]);
		bad("devices", v, "devices[1].pci", "PCI address DDDD:BB:DD.F");
	}
	bad("devices", "[{\"pci\": \"0000:01:00.0\"}, {\"pci\": \"0000:01:00.0\"}]", "devices[1].pci",
	    "devices[0] names already");
	/* The same device in upper case is the same device. */
	bad("devices", "[{\"pci\": \"0000:0a:00.0\"}, {\"pci\": \"0000:0A:00.0\"}]", "devices[1].pci",
	    "0000:0a:00.0");
	bad("devices",
	    "[{\"pci\": \"0000:01:00.0\"}, {\"pci\": \"0000:01:00.1\"}, {\"pci\": \"0000:01:00.2\"},"
	    " {\"pci\": \"0000:01:00.3\"}, {\"pci\": \"0000:01:00.4\"}, {\"pci\": \"0000:01:00.5\"},"
	    " {\"pci\": \"0000:01:00.6\"}, {\"pci\": \"0000:01:00.7\"}, {\"pci\": \"0000:02:00.0\"}]",
	    "devices", "at most 8");

	/* Good ones: kept in lower case, in order, and back from vm.json. */
	struct json_object *o = valid();
	set(o, "devices", "[{\"pci\": \"0000:0A:1f.7\"}, {\"pci\": \"ffff:ff:00.0\"}]");
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	ck_assert_int_eq(spec_from_json(o, &s, &err), 0);
	ck_assert_uint_eq(s->n_devices, 2);
	ck_assert_str_eq(s->devices[0].pci, "0000:0a:1f.7");
	ck_assert_str_eq(s->devices[1].pci, "ffff:ff:00.0");
	struct json_object *j = spec_to_json(s);
	ck_assert_str_eq(json_object_to_json_string_ext(json_object_object_get(j, "devices"),
							JSON_C_TO_STRING_PLAIN),
			 "[{\"pci\":\"0000:0a:1f.7\"},{\"pci\":\"ffff:ff:00.0\"}]");
	struct vm_spec *back = NULL;
	ck_assert_int_eq(spec_from_json_trusted(j, &back, &err), 0);
	ck_assert_uint_eq(back->n_devices, 2);
	ck_assert_str_eq(back->devices[1].pci, "ffff:ff:00.0");
	spec_free(back);
	json_object_put(j);
	spec_free(s);
	json_object_put(o);
	ck_assert(spec_pci_valid("0000:00:03.0") && !spec_pci_valid("0000:00:03.0 "));
}
END_TEST

START_TEST(test_unknown) {
	bad("firmware", "\"/tmp/x\"", "firmware", "not a known field");
	bad("Name", "\"x\"", "Name", "not a known field");
}
END_TEST

/* A spec with nics set to the JSON text value. */
static struct vm_spec *with_nics(const char *value) {
	struct json_object *o = valid();
	struct spec_error err = {0};
	struct vm_spec *s = NULL;
	set(o, "nics", value);
	ck_assert_msg(spec_from_json(o, &s, &err) == 0, "%s: %s", err.field, err.reason);
	json_object_put(o);
	return s;
}

static void mac_is(const struct spec_nic *nic, const char *want) {
	char mac[TAP_MAC_STRLEN];
	tap_mac_format(nic->mac, mac);
	ck_assert_str_eq(mac, want);
}

START_TEST(test_nics) {
	struct vm_spec *s = with_nics("[{\"bridge\": \"br0\", \"mac\": \"52:54:00:AB:cd:01\"},"
				      " {\"bridge\": \"virbr-lab.1\"}]");
	ck_assert_uint_eq(s->n_nics, 2);
	ck_assert_str_eq(s->nics[0].bridge, "br0");
	mac_is(&s->nics[0], "52:54:00:ab:cd:01"); /* stored in lower case */
	ck_assert_str_eq(s->nics[1].bridge, "virbr-lab.1");
	/* Left out: derived from the VM's name and the NIC's index. */
	uint8_t derived[6];
	tap_derive_mac("vm-1.test_x", 1, derived);
	ck_assert_mem_eq(s->nics[1].mac, derived, 6);

	/* Stored, so it reads back as given: the MAC stays the VM's. */
	struct json_object *j = spec_to_json(s);
	struct json_object *nics = json_object_object_get(j, "nics");
	ck_assert_uint_eq(json_object_array_length(nics), 2);
	struct json_object *n1 = json_object_array_get_idx(nics, 1);
	char want[TAP_MAC_STRLEN];
	tap_mac_format(derived, want);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(n1, "mac")), want);
	json_object_put(j);
	struct vm_spec *back = round_trip(s);
	ck_assert_mem_eq(back->nics[1].mac, derived, 6);
	spec_free(back);
	spec_free(s);

	/* The most NICs allowed, every MAC derived and none twice. */
	char eight[512] = "[";
	for (int i = 0; i < SPEC_NICS_MAX; i++)
		strcat(eight, i ? ", {\"bridge\": \"br0\"}" : "{\"bridge\": \"br0\"}");
	strcat(eight, "]");
	s = with_nics(eight);
	ck_assert_uint_eq(s->n_nics, SPEC_NICS_MAX);
	spec_free(s);

	/* null and [] mean none; the spec always lists them, as disks. */
	s = with_nics("null");
	ck_assert_uint_eq(s->n_nics, 0);
	j = spec_to_json(s);
	ck_assert_uint_eq(json_object_array_length(json_object_object_get(j, "nics")), 0);
	json_object_put(j);
	spec_free(s);
	s = with_nics("[]");
	ck_assert_uint_eq(s->n_nics, 0);
	spec_free(s);
}
END_TEST

START_TEST(test_nics_bad) {
	bad("nics", "{}", "nics", "must be an array");
	bad("nics", "\"br0\"", "nics", "must be an array");
	char nine[512] = "[";
	for (int i = 0; i <= SPEC_NICS_MAX; i++)
		strcat(nine, i ? ", {\"bridge\": \"br0\"}" : "{\"bridge\": \"br0\"}");
	strcat(nine, "]");
	bad("nics", nine, "nics", "too many NICs: at most 8, not 9");
	bad("nics", "[\"br0\"]", "nics[0]", "must be an object");
	bad("nics", "[{}]", "nics[0].bridge", "missing");
	bad("nics", "[{\"bridge\": 0}]", "nics[0].bridge", "must be a string");
	bad("nics", "[{\"bridge\": \"br0\", \"model\": \"e1000\"}]", "nics[0].model", "not a known field");
	bad("nics", "[{\"bridge\": \"br0\"}, {\"bridge\": \"\"}]", "nics[1].bridge", "not an interface name");
	bad("nics", "[{\"bridge\": \"br/0\"}]", "nics[0].bridge", "not an interface name");
	bad("nics", "[{\"bridge\": \"br 0\"}]", "nics[0].bridge", "not an interface name");
	bad("nics", "[{\"bridge\": \"..\"}]", "nics[0].bridge", "not an interface name");
	bad("nics", "[{\"bridge\": \"a-bridge-name-16\"}]", "nics[0].bridge", "not an interface name");
	bad("nics", "[{\"bridge\": \"br\\u0000x\"}]", "nics[0].bridge", "NUL");
	bad("nics", "[{\"bridge\": \"br0\"}, {\"bridge\": \"br0\", \"mac\": \"52:54:00:12:34\"}]",
	    "nics[1].mac", "'52:54:00:12:34' is not six pairs of hex digits");
	bad("nics", "[{\"bridge\": \"br0\", \"mac\": 5}]", "nics[0].mac", "must be a string");
	bad("nics", "[{\"bridge\": \"br0\", \"mac\": \"01:00:5e:00:00:01\"}]", "nics[0].mac", "multicast");
	bad("nics", "[{\"bridge\": \"br0\", \"mac\": \"ff:ff:ff:ff:ff:ff\"}]", "nics[0].mac", "multicast");
	bad("nics", "[{\"bridge\": \"br0\", \"mac\": \"00:00:00:00:00:00\"}]", "nics[0].mac", "all zeros");
	/* The same MAC twice in one VM, given (in either case) or derived. */
	bad("nics",
	    "[{\"bridge\": \"br0\", \"mac\": \"52:54:00:12:34:56\"},"
	    " {\"bridge\": \"br1\", \"mac\": \"52:54:00:12:34:56\"}]",
	    "nics[1].mac", "52:54:00:12:34:56 is nics[0]'s already");
	bad("nics",
	    "[{\"bridge\": \"br0\"}, {\"bridge\": \"br0\"},"
	    " {\"bridge\": \"br1\", \"mac\": \"52:54:00:AA:bb:cc\"},"
	    " {\"bridge\": \"br1\", \"mac\": \"52:54:00:aa:BB:CC\"}]",
	    "nics[3].mac", "52:54:00:aa:bb:cc is nics[2]'s already");
	uint8_t m[6];
	char given[TAP_MAC_STRLEN], value[256];
	tap_derive_mac("vm-1.test_x", 1, m);
	tap_mac_format(m, given);
	snprintf(value, sizeof(value), "[{\"bridge\": \"br0\", \"mac\": \"%s\"}, {\"bridge\": \"br0\"}]",
		 given);
	char words[128];
	snprintf(words, sizeof(words), "the derived %s is nics[0]'s already", given);
	bad("nics", value, "nics[1].mac", words);
}
END_TEST

/* Whether the bridges exist is the host's business, asked at create and
 * start, not the parser's. */
START_TEST(test_check_bridges) {
	struct vm_spec *s = with_nics("[{\"bridge\": \"lo\"}]");
	struct spec_error err = {0};
	ck_assert_int_eq(spec_check_bridges(s, &err), -EINVAL); /* lo is no bridge */
	ck_assert_str_eq(err.field, "nics[0].bridge");
	spec_free(s);
	s = with_nics("[{\"bridge\": \"cprd-no-br9\"}]");
	memset(&err, 0, sizeof(err));
	ck_assert_int_eq(spec_check_bridges(s, &err), -EINVAL);
	ck_assert_str_eq(err.field, "nics[0].bridge");
	ck_assert_str_eq(err.reason, "bridge cprd-no-br9 does not exist");
	spec_free(s);
	s = with_nics("[]");
	ck_assert_int_eq(spec_check_bridges(s, &err), 0);
	spec_free(s);
}
END_TEST

START_TEST(test_name_valid) {
	ck_assert(spec_name_valid("a"));
	ck_assert(spec_name_valid("vm-1_2.x"));
	ck_assert(spec_name_valid("..."));
	ck_assert(!spec_name_valid(""));
	ck_assert(!spec_name_valid("."));
	ck_assert(!spec_name_valid(".."));
	ck_assert(!spec_name_valid("a/b"));
	ck_assert(!spec_name_valid("a\nb"));
}
END_TEST

static Suite *spec_suite(void) {
	Suite *s = suite_create("spec");
	TCase *tc = tcase_create("spec");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_valid);
	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_not_an_object);
	tcase_add_test(tc, test_name);
	tcase_add_test(tc, test_memory);
	tcase_add_test(tc, test_cpus);
	tcase_add_test(tc, test_machine);
	tcase_add_test(tc, test_qemu);
	tcase_add_test(tc, test_accel_hugepages);
	tcase_add_test(tc, test_disks);
	tcase_add_test(tc, test_backing);
	tcase_add_test(tc, test_nics);
	tcase_add_test(tc, test_nics_bad);
	tcase_add_test(tc, test_check_bridges);
	tcase_add_test(tc, test_devices);
	tcase_add_test(tc, test_unknown);
	tcase_add_test(tc, test_name_valid);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(spec_suite());
}
