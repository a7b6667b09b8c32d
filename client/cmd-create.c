/* cprctl create: defines a VM from flags or from a JSON spec file. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cprctl.h"
#include "macro.h"

#define SPEC_FILE_MAX (1024 * 1024)

struct create_opts {
	struct json_object *spec;  /* built from flags */
	struct json_object *disks;
	struct json_object *nics;
	struct json_object *devices;
	const char *file;
	bool bad;
};

static bool parse_uint(const char *s, int64_t *ret) {
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || *end || end == s)
		return false;
	*ret = v;
	return true;
}

/* PATH[,format=F][,readonly] */
static int parse_disk(const char *arg, struct json_object **ret) {
	_cleanup_free_ char *copy = strdup(arg);
	if (!copy)
		return -ENOMEM;
	char *save = NULL, *tok = strtok_r(copy, ",", &save);
	if (!tok)
		return -EINVAL;
	struct json_object *d = json_object_new_object();
	json_object_object_add(d, "path", json_object_new_string(tok));
	while ((tok = strtok_r(NULL, ",", &save))) {
		if (strncmp(tok, "format=", 7) == 0)
			json_object_object_add(d, "format", json_object_new_string(tok + 7));
		else if (streq(tok, "readonly") || streq(tok, "readonly=on") || streq(tok, "ro"))
			json_object_object_add(d, "readonly", json_object_new_boolean(true));
		else {
			json_object_put(d);
			fprintf(stderr, "cprctl create: unknown disk option '%s'; use format=raw|qcow2 or readonly\n", tok);
			return -EINVAL;
		}
	}
	*ret = d;
	return 0;
}

/* bridge=BR[,mac=MAC]: the shape is checked here, the names and the MAC
 * by cprd (InvalidSpec names nics[N].bridge or nics[N].mac). */
static int parse_nic(const char *arg, struct json_object **ret) {
	_cleanup_free_ char *copy = strdup(arg);
	if (!copy)
		return -ENOMEM;
	_cleanup_json_ struct json_object *n = json_object_new_object();
	char *save = NULL;
	if (!*arg) {
		fprintf(stderr, "cprctl create: --nic needs bridge=BR[,mac=MAC]\n");
		return -EINVAL;
	}
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		const char *key = tok, *value = eq ? eq + 1 : NULL;
		if (eq)
			*eq = '\0';
		if (!eq && !streq(key, "bridge") && !streq(key, "mac")) {
			fprintf(stderr, "cprctl create: --nic %s: '%s' is not KEY=VALUE; use bridge=BR[,mac=MAC]\n",
				arg, key);
			return -EINVAL;
		}
		if (!streq(key, "bridge") && !streq(key, "mac")) {
			fprintf(stderr, "cprctl create: unknown NIC option '%s' in --nic %s; use bridge=BR[,mac=MAC]\n",
				key, arg);
			return -EINVAL;
		}
		if (!value || !*value) {
			fprintf(stderr, "cprctl create: --nic %s: %s needs a value, as in %s\n", arg, key,
				streq(key, "bridge") ? "bridge=br0" : "mac=52:54:00:12:34:56");
			return -EINVAL;
		}
		if (jget(n, key)) {
			fprintf(stderr, "cprctl create: --nic %s gives %s twice\n", arg, key);
			return -EINVAL;
		}
		json_object_object_add(n, key, json_object_new_string(value));
	}
	if (!jget(n, "bridge")) {
		fprintf(stderr, "cprctl create: --nic %s names no bridge; use bridge=BR[,mac=MAC]\n", arg);
		return -EINVAL;
	}
	*ret = TAKE_PTR(n);
	return 0;
}

/* pci=ADDR: the address itself is cprd's to check, so the message is the
 * same whatever the client. */
static int parse_device(const char *arg, struct json_object **ret) {
	if (strncmp(arg, "pci=", 4) != 0 || !arg[4] || strchr(arg, ',')) {
		usage_error(&cmd_create, "--device takes pci=DDDD:BB:DD.F (such as pci=0000:01:00.0), not '%s'",
			    arg);
		return -EINVAL;
	}
	struct json_object *d = json_object_new_object();
	json_object_object_add(d, "pci", json_object_new_string(arg + 4));
	*ret = d;
	return 0;
}

static int create_opt(int opt, const char *arg, void *userdata) {
	struct create_opts *o = userdata;
	int64_t v;
	switch (opt) {
	case 'm':
	case 'c':
		if (!parse_uint(arg, &v)) {
			usage_error(&cmd_create, "%s needs a number, not '%s'", opt == 'm' ? "--memory" : "--cpus", arg);
			return -1;
		}
		json_object_object_add(o->spec, opt == 'm' ? "memory" : "cpus", json_object_new_int64(v));
		return 0;
	case 'q':
		json_object_object_add(o->spec, "qemu", json_object_new_string(arg));
		return 0;
	case 'M':
		json_object_object_add(o->spec, "machine", json_object_new_string(arg));
		return 0;
	case 'a':
		json_object_object_add(o->spec, "accel", json_object_new_string(arg));
		return 0;
	case 'H':
		json_object_object_add(o->spec, "hugepages", json_object_new_boolean(true));
		return 0;
	case 'X':
		json_object_object_add(o->spec, "allowExec", json_object_new_boolean(true));
		return 0;
	case 'd': {
		struct json_object *d;
		if (parse_disk(arg, &d) < 0)
			return -1;
		json_object_array_add(o->disks, d);
		return 0;
	}
	case 'n': {
		struct json_object *n;
		if (parse_nic(arg, &n) < 0)
			return -1;
		json_object_array_add(o->nics, n);
		return 0;
	}
	case 'D': {
		struct json_object *d;
		if (parse_device(arg, &d) < 0)
			return -1;
		json_object_array_add(o->devices, d);
		return 0;
	}
	case 'f':
		o->file = arg;
		return 0;
	}
	return -1;
}

static int create_run(struct ctx *ctx, int argc, char **argv) {
	static const struct option longopts[] = {
		{"memory", required_argument, NULL, 'm'}, {"cpus", required_argument, NULL, 'c'},
		{"qemu", required_argument, NULL, 'q'},   {"machine", required_argument, NULL, 'M'},
		{"accel", required_argument, NULL, 'a'},  {"disk", required_argument, NULL, 'd'},
		{"hugepages", no_argument, NULL, 'H'},     {"file", required_argument, NULL, 'f'},
		{"allow-exec", no_argument, NULL, 'X'},   {"nic", required_argument, NULL, 'n'},
		{"device", required_argument, NULL, 'D'},
		{},
	};
	_cleanup_json_ struct json_object *spec = json_object_new_object();
	_cleanup_json_ struct json_object *disks = json_object_new_array();
	_cleanup_json_ struct json_object *nics = json_object_new_array();
	_cleanup_json_ struct json_object *devices = json_object_new_array();
	struct create_opts o = {.spec = spec, .disks = disks, .nics = nics, .devices = devices};
	int r = parse_options(ctx, &cmd_create, argc, argv, "f:", longopts, create_opt, &o);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	if (argc - optind > 1) {
		usage_error(&cmd_create, "takes one VM name, got '%s' too", argv[optind + 1]);
		return EXIT_INVALID;
	}
	const char *name = optind < argc ? argv[optind] : NULL;

	_cleanup_json_ struct json_object *final = NULL;
	if (o.file) {
		/* The file is the spec; flags and the name override its fields. */
		if (access(o.file, R_OK) < 0) {
			fprintf(stderr, "cprctl create: cannot read %s: %s\n", o.file, strerror(errno));
			return EXIT_INVALID;
		}
		final = json_object_from_file(o.file);
		if (!final || !json_object_is_type(final, json_type_object)) {
			fprintf(stderr, "cprctl create: %s does not hold a JSON object (a VM spec as "
				"'cprctl status NAME --json' shows under \"spec\")\n", o.file);
			return EXIT_INVALID;
		}
		json_object_object_foreach(spec, k, v) json_object_object_add(final, k, json_object_get(v));
	} else {
		final = json_object_get(spec);
	}
	if (name)
		json_object_object_add(final, "name", json_object_new_string(name));
	if (json_object_array_length(disks) > 0)
		json_object_object_add(final, "disks", json_object_get(disks));
	if (json_object_array_length(nics) > 0)
		json_object_object_add(final, "nics", json_object_get(nics));
	if (json_object_array_length(devices) > 0)
		json_object_object_add(final, "devices", json_object_get(devices));
	if (!jget(final, "name")) {
		usage_error(&cmd_create, "needs a VM name");
		return EXIT_INVALID;
	}
	/* Missing mandatory fields are left for cprd to name, so the message is
	 * the same whatever the client. */
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "spec", json_object_get(final));
	_cleanup_json_ struct json_object *reply = ctx_call(ctx, "CreateVM", p, &r);
	json_object_put(p);
	if (!reply)
		return r;
	struct json_object *vm = jget(reply, "vm");
	if (ctx->json)
		print_json(vm);
	else
		printf("Created %s: machine %s, QEMU %s. Start it with 'cprctl start %s'.\n", jstr(vm, "name"),
		       jstr(vm, "machine"), jstr(vm, "qemu"), jstr(vm, "name"));
	return EXIT_OK;
}

const struct cmd cmd_create = {
	.name = "create",
	.args = "NAME --memory MIB --qemu PATH [OPTIONS] | create [NAME] -f SPEC.json",
	.summary = "Define a VM (it is not started)",
	.help = "Options:\n"
		"  --memory MIB       guest RAM in MiB (at least 16)\n"
		"  --qemu PATH        absolute path of the QEMU system emulator\n"
		"  --cpus N           virtual CPUs (default 1)\n"
		"  --machine TYPE     machine type or alias, pinned to a versioned type (default pc)\n"
		"  --accel ACCEL      tcg, kvm or auto (default auto)\n"
		"  --disk PATH[,format=raw|qcow2][,readonly]   a disk; repeat for more\n"
		"  --nic bridge=BR[,mac=MAC]   a virtio-net NIC on a tap that cprd attaches to\n"
		"                     bridge BR; MAC defaults to one derived from the VM's\n"
		"                     name (52:54:00:...); repeat for more (at most 8)\n"
		"  --hugepages        back guest RAM with huge pages\n"
		"  --allow-exec       let QEMU exec a new binary in place (-sandbox spawn=allow),\n"
		"                     which 'upgrade --mode cpr-exec' needs\n"
		"  --device pci=ADDR  assign the host PCI device ADDR (DDDD:BB:DD.F, bound to\n"
		"                     vfio-pci) through VFIO; repeat for more\n"
		"  -f, --file FILE    read the spec (JSON, as in 'cprctl status --json') from FILE\n",
	.run = create_run,
};
