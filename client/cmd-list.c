/* cprctl list: the VMs in a table. */
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "cprctl.h"
#include "macro.h"

struct list_opts {
	bool outdated;
};

static int list_opt(int opt, const char *arg, void *userdata) {
	struct list_opts *o = userdata;
	if (opt == 'o')
		o->outdated = true;
	return 0;
}

static int list_run(struct ctx *ctx, int argc, char **argv) {
	static const struct option longopts[] = {{"outdated", no_argument, NULL, 'o'}, {}};
	struct list_opts o = {0};
	int r = parse_options(ctx, &cmd_list, argc, argv, NULL, longopts, list_opt, &o);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	if (optind < argc) {
		usage_error(&cmd_list, "takes no names, got '%s'", argv[optind]);
		return EXIT_INVALID;
	}

	struct json_object *p = json_object_new_object();
	if (o.outdated)
		json_object_object_add(p, "outdated", json_object_new_boolean(true));
	_cleanup_json_ struct json_object *reply = ctx_call(ctx, "ListVMs", p, &r);
	json_object_put(p);
	if (!reply)
		return r;
	if (ctx->json) {
		print_json(reply);
		return EXIT_OK;
	}

	struct json_object *vms = jget(reply, "vms");
	size_t n = json_object_array_length(vms);
	if (n == 0) {
		printf(o.outdated ? "No VM runs an outdated QEMU.\n" : "No VMs. Create one with 'cprctl create'.\n");
		return EXIT_OK;
	}
	/* Column widths from the data so the table lines up. */
	int wname = 4, wstate = 5, wqemu = 4;
	for (size_t i = 0; i < n; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i);
		wname = MAX(wname, (int)strlen(jstr(vm, "name")));
		wstate = MAX(wstate, (int)strlen(jstr(vm, "state")));
		const char *v = jstr(vm, "qemuVersion");
		wqemu = MAX(wqemu, v ? (int)strlen(v) : 1);
	}
	printf("%-*s  %-*s  %-*s  %7s  %8s  %8s  %s\n", wname, "NAME", wstate, "STATE", wqemu, "QEMU",
	       "PID", "MEMORY", "UPTIME", "OUTDATED");
	for (size_t i = 0; i < n; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i);
		char mem[32], up[32] = "-", pid[16] = "-";
		format_size_mib((uint64_t)jint(jget(vm, "spec"), "memory", 0), mem, sizeof(mem));
		if (jget(vm, "uptimeSec"))
			format_duration(jdouble(vm, "uptimeSec", 0), up, sizeof(up));
		if (jget(vm, "pid"))
			snprintf(pid, sizeof(pid), "%lld", (long long)jint(vm, "pid", 0));
		const char *v = jstr(vm, "qemuVersion");
		printf("%-*s  %-*s  %-*s  %7s  %8s  %8s  %s\n", wname, jstr(vm, "name"), wstate,
		       jstr(vm, "state"), wqemu, v ? v : "-", pid, mem, up,
		       jbool(vm, "outdated") ? "yes" : "no");
	}
	return EXIT_OK;
}

const struct cmd cmd_list = {
	.name = "list",
	.args = "[--outdated]",
	.summary = "List the VMs",
	.help = "Options:\n"
		"  --outdated         only VMs whose QEMU binary changed on disk since it started\n",
	.run = list_run,
};
