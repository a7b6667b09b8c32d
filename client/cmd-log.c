/* cprctl log and events: what a VM printed, and what happens to VMs. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cprctl.h"
#include "macro.h"
#include "varlink.h"

struct log_opts {
	bool qemu, follow;
	long long tail;
};

static int log_opt(int opt, const char *arg, void *userdata) {
	struct log_opts *o = userdata;
	char *end;
	switch (opt) {
	case 'q':
		o->qemu = true;
		return 0;
	case 'f':
		o->follow = true;
		return 0;
	case 'n':
		o->tail = strtoll(arg, &end, 10);
		if (*end || o->tail < 0) {
			usage_error(&cmd_log, "--tail needs a number of bytes, not '%s'", arg);
			return -1;
		}
		return 0;
	}
	return -1;
}

struct stream {
	struct ctx *ctx;
	const char *command;
	int exit;
};

static int on_log(struct json_object *p, const char *error, bool continues, void *userdata) {
	struct stream *s = userdata;
	if (error) {
		s->exit = report_error(s->command, error, p);
		return 0;
	}
	if (s->ctx->json)
		print_json(p);
	else {
		fputs(jstr(p, "data") ? jstr(p, "data") : "", stdout);
		fflush(stdout);
	}
	return 0;
}

static int stream_call(struct ctx *ctx, const char *command, const char *method,
		       struct json_object *params, int timeout_ms) {
	struct stream s = {.ctx = ctx, .command = command};
	char full[128];
	int r = ctx_connect(ctx);
	if (r < 0)
		return -r;
	snprintf(full, sizeof(full), "io.cprd.Manager.%s", method);
	r = vl_client_call_more(ctx->client, full, params, timeout_ms, on_log, &s);
	if (r < 0) {
		fprintf(stderr, "cprctl %s: lost cprd: %s\n", command, strerror(-r));
		return EXIT_UNREACHABLE;
	}
	return s.exit;
}

static int log_run(struct ctx *ctx, int argc, char **argv) {
	static const struct option longopts[] = {
		{"qemu", no_argument, NULL, 'q'},
		{"follow", no_argument, NULL, 'f'},
		{"tail", required_argument, NULL, 'n'},
		{},
	};
	struct log_opts o = {.tail = -1};
	int r = parse_options(ctx, &cmd_log, argc, argv, "fn:", longopts, log_opt, &o);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	if (optind + 1 != argc) {
		usage_error(&cmd_log, "needs exactly one VM name");
		return EXIT_INVALID;
	}
	if (o.follow && o.qemu) {
		usage_error(&cmd_log, "--follow works on the console log only");
		return EXIT_INVALID;
	}
	_cleanup_json_ struct json_object *p = json_object_new_object();
	json_object_object_add(p, "name", json_object_new_string(argv[optind]));
	json_object_object_add(p, "log", json_object_new_string(o.qemu ? "qemu" : "console"));
	if (o.tail == 0) {
		/* -0 would read from the start: ask where the log ends now. */
		json_object_object_add(p, "offset", json_object_new_int64(-1));
		_cleanup_json_ struct json_object *end = ctx_call(ctx, "ReadLog", p, &r);
		if (!end)
			return r;
		json_object_object_add(p, "offset", json_object_new_int64(jint(end, "offset", 0)));
	} else if (o.tail > 0)
		json_object_object_add(p, "offset", json_object_new_int64(-o.tail));
	else if (o.follow)
		json_object_object_add(p, "offset", json_object_new_int64(-4096));
	if (o.follow)
		return stream_call(ctx, "log", "ReadLog", p, -1);

	_cleanup_json_ struct json_object *reply = ctx_call(ctx, "ReadLog", p, &r);
	if (!reply)
		return r;
	if (ctx->json)
		print_json(reply);
	else
		fputs(jstr(reply, "data"), stdout);
	return EXIT_OK;
}

static int on_event(struct json_object *p, const char *error, bool continues, void *userdata) {
	struct stream *s = userdata;
	if (error) {
		s->exit = report_error("events", error, p);
		return 0;
	}
	struct json_object *e = jget(p, "event");
	if (s->ctx->json)
		print_json(e);
	else
		printf("%s  %-16s %-10s %-10s %s\n", jstr(e, "time"), jstr(e, "vm"), jstr(e, "type"),
		       jstr(e, "state"), jstr(e, "message"));
	fflush(stdout);
	return 0;
}

static int events_run(struct ctx *ctx, int argc, char **argv) {
	int r = parse_options(ctx, &cmd_events, argc, argv, NULL, NULL, NULL, NULL);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	if (optind < argc) {
		usage_error(&cmd_events, "takes no arguments");
		return EXIT_INVALID;
	}
	struct stream s = {.ctx = ctx, .command = "events"};
	r = ctx_connect(ctx);
	if (r < 0)
		return -r;
	r = vl_client_call_more(ctx->client, "io.cprd.Manager.WatchEvents", NULL, -1, on_event, &s);
	if (r < 0) {
		fprintf(stderr, "cprctl events: lost cprd: %s\n", strerror(-r));
		return EXIT_UNREACHABLE;
	}
	return s.exit;
}

const struct cmd cmd_log = {
	.name = "log",
	.args = "NAME [--qemu] [--follow] [--tail BYTES]",
	.summary = "Print a VM's console log (or QEMU's own log)",
	.help = "Options:\n"
		"  --qemu             QEMU's stderr log instead of the guest console\n"
		"  -f, --follow       keep printing what the guest writes\n"
		"  -n, --tail BYTES   only the last BYTES\n",
	.run = log_run,
};

const struct cmd cmd_events = {
	.name = "events",
	.args = "",
	.summary = "Stream VM state changes as they happen",
	.run = events_run,
};
