/* cprctl start, stop and delete: one VM's life cycle. */
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cprctl.h"
#include "idl.h"
#include "macro.h"

/* Runs a method that takes a name and replies with the VM (or nothing). */
static int simple(struct ctx *ctx, const struct cmd *cmd, const char *method, int argc, char **argv,
		  struct json_object *extra, const char *done) {
	if (optind + 1 != argc) {
		usage_error(cmd, "needs exactly one VM name");
		return EXIT_INVALID;
	}
	struct json_object *p = extra ? json_object_get(extra) : json_object_new_object();
	int r;
	json_object_object_add(p, "name", json_object_new_string(argv[optind]));
	_cleanup_json_ struct json_object *reply = ctx_call(ctx, method, p, &r);
	json_object_put(p);
	if (!reply)
		return r;
	struct json_object *vm = jget(reply, "vm");
	if (ctx->json)
		print_json(vm ? vm : reply);
	else if (vm && jget(vm, "pid"))
		printf("%s %s: %s, QEMU %s pid %lld.\n", argv[optind], done, jstr(vm, "state"),
		       jstr(vm, "qemuVersion"), (long long)jint(vm, "pid", 0));
	else
		printf("%s %s.\n", argv[optind], done);
	return EXIT_OK;
}

static int start_run(struct ctx *ctx, int argc, char **argv) {
	int r = parse_options(ctx, &cmd_start, argc, argv, NULL, NULL, NULL, NULL);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	return simple(ctx, &cmd_start, "StartVM", argc, argv, NULL, "started");
}

struct stop_opts {
	bool force;
	long timeout;
};

static int stop_opt(int opt, const char *arg, void *userdata) {
	struct stop_opts *o = userdata;
	if (opt == 'f') {
		o->force = true;
		return 0;
	}
	if (opt == 't') {
		char *end;
		o->timeout = strtol(arg, &end, 10);
		if (*end || o->timeout < 0 || o->timeout > CPRD_TIMEOUT_SEC_MAX) {
			usage_error(&cmd_stop, "--timeout needs seconds between 0 and %d, not '%s'",
				    CPRD_TIMEOUT_SEC_MAX, arg);
			return -1;
		}
		return 0;
	}
	return -1;
}

static int stop_run(struct ctx *ctx, int argc, char **argv) {
	static const struct option longopts[] = {
		{"force", no_argument, NULL, 'f'},
		{"timeout", required_argument, NULL, 't'},
		{},
	};
	struct stop_opts o = {.timeout = -1};
	int r = parse_options(ctx, &cmd_stop, argc, argv, "f", longopts, stop_opt, &o);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	_cleanup_json_ struct json_object *extra = json_object_new_object();
	if (o.force)
		json_object_object_add(extra, "force", json_object_new_boolean(true));
	if (o.timeout >= 0) {
		json_object_object_add(extra, "timeoutSec", json_object_new_int((int)o.timeout));
		/* Wait for cprd longer than it waits for the guest. */
		ctx->timeout_ms = MAX(ctx->timeout_ms, (int)(o.timeout + 15) * 1000);
	}
	return simple(ctx, &cmd_stop, "StopVM", argc, argv, extra, "stopped");
}

static int delete_run(struct ctx *ctx, int argc, char **argv) {
	int r = parse_options(ctx, &cmd_delete, argc, argv, NULL, NULL, NULL, NULL);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	return simple(ctx, &cmd_delete, "DeleteVM", argc, argv, NULL, "deleted");
}

static int pause_run(struct ctx *ctx, int argc, char **argv) {
	int r = parse_options(ctx, &cmd_pause, argc, argv, NULL, NULL, NULL, NULL);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	return simple(ctx, &cmd_pause, "PauseVM", argc, argv, NULL, "paused");
}

static int resume_run(struct ctx *ctx, int argc, char **argv) {
	int r = parse_options(ctx, &cmd_resume, argc, argv, NULL, NULL, NULL, NULL);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	return simple(ctx, &cmd_resume, "ResumeVM", argc, argv, NULL, "resumed");
}

const struct cmd cmd_pause = {
	.name = "pause",
	.args = "NAME",
	.summary = "Pause a running guest (QEMU keeps running)",
	.run = pause_run,
};

const struct cmd cmd_resume = {
	.name = "resume",
	.args = "NAME",
	.summary = "Resume a paused guest",
	.run = resume_run,
};

const struct cmd cmd_start = {
	.name = "start",
	.args = "NAME",
	.summary = "Start a VM",
	.run = start_run,
};

const struct cmd cmd_stop = {
	.name = "stop",
	.args = "NAME [--force] [--timeout SECONDS]",
	.summary = "Stop a VM: ACPI power-down, then quit",
	.help = "Options:\n"
		"  -f, --force        quit QEMU at once instead of asking the guest to power off\n"
		"  --timeout SECONDS  wait this long for the guest to power off (default 30)\n",
	.run = stop_run,
};

const struct cmd cmd_delete = {
	.name = "delete",
	.args = "NAME",
	.summary = "Delete a stopped VM with its state and logs",
	.run = delete_run,
};
