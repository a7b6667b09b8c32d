/* cprctl status: one VM in detail, with its held fds and upgrade history. */
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "cprctl.h"
#include "macro.h"

static void print_history(struct json_object *ups) {
	size_t n = json_object_array_length(ups);
	if (n == 0) {
		printf("Upgrades:     none\n");
		return;
	}
	printf("Upgrades:\n");
	printf("  %-24s  %-11s  %-13s  %-17s  %9s  %9s\n", "TIME", "OUTCOME", "MODE", "VERSION", "PAUSE",
	       "TOTAL");
	/* The newest ten; --json has all of them. */
	for (size_t i = n > 10 ? n - 10 : 0; i < n; i++) {
		struct json_object *u = json_object_array_get_idx(ups, i);
		char pause[32] = "-", total[32], ver[64];
		if (jget(u, "pauseMs"))
			format_ms(jdouble(u, "pauseMs", 0), pause, sizeof(pause));
		format_ms(jdouble(u, "totalMs", 0), total, sizeof(total));
		snprintf(ver, sizeof(ver), "%s -> %s", jstr(u, "fromVersion"), jstr(u, "toVersion"));
		printf("  %-24s  %-11s  %-13s  %-17s  %9s  %9s\n", jstr(u, "time"), jstr(u, "outcome"),
		       jstr(u, "mode"), ver, pause, total);
		if (jstr(u, "reason"))
			printf("      %s: %s\n", jstr(u, "failedPhase") ? jstr(u, "failedPhase") : "", jstr(u, "reason"));
	}
}

static int status_run(struct ctx *ctx, int argc, char **argv) {
	int r = parse_options(ctx, &cmd_status, argc, argv, NULL, NULL, NULL, NULL);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	if (optind + 1 != argc) {
		usage_error(&cmd_status, "needs exactly one VM name");
		return EXIT_INVALID;
	}
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "name", json_object_new_string(argv[optind]));
	_cleanup_json_ struct json_object *reply = ctx_call(ctx, "GetVM", p, &r);
	json_object_put(p);
	if (!reply)
		return r;
	struct json_object *vm = jget(reply, "vm");
	if (ctx->json) {
		print_json(vm);
		return EXIT_OK;
	}

	struct json_object *spec = jget(vm, "spec");
	char mem[32], up[32];
	format_size_mib((uint64_t)jint(spec, "memory", 0), mem, sizeof(mem));
	printf("Name:         %s\n", jstr(vm, "name"));
	printf("State:        %s\n", jstr(vm, "state"));
	printf("QEMU:         %s%s%s%s\n", jstr(vm, "qemu"), jstr(vm, "qemuVersion") ? " (" : "",
	       jstr(vm, "qemuVersion") ? jstr(vm, "qemuVersion") : "", jstr(vm, "qemuVersion") ? ")" : "");
	if (jget(vm, "pid"))
		printf("PID:          %lld\n", (long long)jint(vm, "pid", 0));
	if (jget(vm, "uid"))
		printf("User:         uid %lld, gid %lld (the VM's own)\n", (long long)jint(vm, "uid", 0),
		       (long long)jint(vm, "uid", 0));
	if (jbool(vm, "outdated") && jstr(vm, "newQemuVersion"))
		printf("Outdated:     yes, the binary changed on disk since this QEMU started; it is "
		       "QEMU %s now\n",
		       jstr(vm, "newQemuVersion"));
	else if (jbool(vm, "outdated"))
		printf("Outdated:     yes, the binary changed on disk since this QEMU started\n");
	printf("Machine:      %s\n", jstr(vm, "machine"));
	printf("Memory:       %s, %lld CPU%s, accel %s%s\n", mem, (long long)jint(spec, "cpus", 1),
	       jint(spec, "cpus", 1) == 1 ? "" : "s", jstr(spec, "accel"),
	       jbool(spec, "hugepages") ? ", huge pages" : "");
	if (jget(vm, "uptimeSec")) {
		format_duration(jdouble(vm, "uptimeSec", 0), up, sizeof(up));
		printf("Uptime:       %s\n", up);
	}
	struct json_object *disks = jget(spec, "disks");
	for (size_t i = 0; i < json_object_array_length(disks); i++) {
		struct json_object *d = json_object_array_get_idx(disks, i);
		printf("Disk %zu:       %s (%s%s)\n", i, jstr(d, "path"), jstr(d, "format"),
		       jbool(d, "readonly") ? ", read-only" : "");
	}
	struct json_object *devices = jget(spec, "devices");
	for (size_t i = 0; i < json_object_array_length(devices); i++)
		printf("Device %zu:     %s (VFIO, QEMU id hostdev%zu)\n", i,
		       jstr(json_object_array_get_idx(devices, i), "pci"), i);
	struct json_object *fds = jget(vm, "fds");
	if (json_object_array_length(fds) > 0) {
		printf("Held fds:    ");
		for (size_t i = 0; i < json_object_array_length(fds); i++) {
			struct json_object *f = json_object_array_get_idx(fds, i);
			printf(" %s=%lld", jstr(f, "name"), (long long)jint(f, "fd", -1));
		}
		printf("\n");
	}
	struct json_object *e = jget(vm, "lastExit");
	if (e) {
		printf("Last exit:    %s %s", jstr(e, "time"), jstr(e, "how"));
		if (jget(e, "status"))
			printf(" with status %lld", (long long)jint(e, "status", 0));
		if (jstr(e, "signal"))
			printf(" by %s", jstr(e, "signal"));
		printf("%s\n", jbool(e, "requested") ? " (asked for)" : "");
		struct json_object *lines = jget(e, "stderr");
		size_t n = json_object_array_length(lines);
		for (size_t i = n > 5 ? n - 5 : 0; i < n; i++)
			printf("  | %s\n", json_object_get_string(json_object_array_get_idx(lines, i)));
	}
	print_history(jget(vm, "upgrades"));
	return EXIT_OK;
}

const struct cmd cmd_status = {
	.name = "status",
	.args = "NAME",
	.summary = "Show one VM: state, QEMU, held fds, last exit, upgrade history",
	.run = status_run,
};
