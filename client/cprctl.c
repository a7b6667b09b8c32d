/* cprctl: the client of cprd. main() picks the command from the table; this
 * file also has what every command shares: the connection, error
 * reporting, option parsing and output helpers. */
#include "cprctl.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "varlink.h"

static const struct cmd *const commands[] = {
	&cmd_list, &cmd_status, &cmd_create, &cmd_start, &cmd_stop, &cmd_pause,
	&cmd_resume, &cmd_delete, &cmd_log, &cmd_events, &cmd_upgrade, &cmd_snapshot, &cmd_restore,
};

/* ---- output helpers ------------------------------------------------------ */

void print_json(struct json_object *o) {
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	fflush(stdout);
}

struct json_object *jget(struct json_object *o, const char *key) {
	struct json_object *v = NULL;
	if (o)
		json_object_object_get_ex(o, key, &v);
	return v;
}

const char *jstr(struct json_object *o, const char *key) {
	struct json_object *v = jget(o, key);
	return v ? json_object_get_string(v) : NULL;
}

int64_t jint(struct json_object *o, const char *key, int64_t def) {
	struct json_object *v = jget(o, key);
	return v ? json_object_get_int64(v) : def;
}

double jdouble(struct json_object *o, const char *key, double def) {
	struct json_object *v = jget(o, key);
	return v ? json_object_get_double(v) : def;
}

bool jbool(struct json_object *o, const char *key) {
	struct json_object *v = jget(o, key);
	return v && json_object_get_boolean(v);
}

void format_size_mib(uint64_t mib, char *buf, size_t size) {
	if (mib >= 1024 && mib % 1024 == 0)
		snprintf(buf, size, "%llu GiB", (unsigned long long)(mib / 1024));
	else if (mib >= 1024)
		snprintf(buf, size, "%.1f GiB", (double)mib / 1024);
	else
		snprintf(buf, size, "%llu MiB", (unsigned long long)mib);
}

void format_duration(double sec, char *buf, size_t size) {
	uint64_t s = (uint64_t)sec;
	if (sec < 60)
		snprintf(buf, size, "%.0fs", sec);
	else if (s < 3600)
		snprintf(buf, size, "%llum %llus", (unsigned long long)(s / 60), (unsigned long long)(s % 60));
	else if (s < 86400)
		snprintf(buf, size, "%lluh %llum", (unsigned long long)(s / 3600),
			 (unsigned long long)(s % 3600 / 60));
	else
		snprintf(buf, size, "%llud %lluh", (unsigned long long)(s / 86400),
			 (unsigned long long)(s % 86400 / 3600));
}

void format_ms(double ms, char *buf, size_t size) {
	if (ms < 10)
		snprintf(buf, size, "%.1f ms", ms);
	else if (ms < 1000)
		snprintf(buf, size, "%.0f ms", ms);
	else
		snprintf(buf, size, "%.2f s", ms / 1000);
}

/* ---- errors -------------------------------------------------------------- */

int report_error(const char *command, const char *error, struct json_object *p) {
	const char *name = jstr(p, "name");
	const char *reason = jstr(p, "reason");
	const char *short_name = strrchr(error, '.') ? strrchr(error, '.') + 1 : error;

	if (streq(error, "io.cprd.Manager.NoSuchVM")) {
		fprintf(stderr, "cprctl: no VM is named '%s'; 'cprctl list' shows the VMs.\n", name ? name : "");
		return EXIT_NO_SUCH_VM;
	}
	if (streq(error, "io.cprd.Manager.VMExists")) {
		fprintf(stderr, "cprctl: a VM named '%s' exists already; pick another name or delete it first.\n",
			name ? name : "");
		return EXIT_INVALID;
	}
	if (streq(error, "io.cprd.Manager.InvalidSpec")) {
		fprintf(stderr, "cprctl: invalid VM spec: %s %s.\n", jstr(p, "field"), reason);
		return EXIT_INVALID;
	}
	if (streq(error, VL_ERROR_INVALID_PARAMETER)) {
		fprintf(stderr, "cprctl: cprd refused the parameter '%s' of %s.\n", jstr(p, "parameter"), command);
		return EXIT_INVALID;
	}
	if (streq(error, VL_ERROR_PERMISSION_DENIED)) {
		fprintf(stderr, "cprctl: permission denied: only root may %s VMs; run it with sudo.\n", command);
		return EXIT_DENIED;
	}
	if (streq(error, "io.cprd.Manager.BadState")) {
		fprintf(stderr, "cprctl: %s is %s: %s.\n", name, jstr(p, "state"), reason);
		return EXIT_FAILED;
	}
	if (streq(error, "io.cprd.Manager.Busy")) {
		fprintf(stderr, "cprctl: %s is busy (%s under way); try again when it is done.\n", name,
			jstr(p, "operation"));
		return EXIT_FAILED;
	}
	if (streq(error, "io.cprd.Manager.DeviceUnavailable")) {
		fprintf(stderr, "cprctl: device %s cannot be assigned, nothing was changed: %s.\n",
			jstr(p, "device"), reason);
		return EXIT_FAILED;
	}
	if (streq(error, "io.cprd.Manager.QEMUProbeFailed")) {
		fprintf(stderr, "cprctl: %s cannot be used as QEMU: %s.\n", jstr(p, "binary"), reason);
		return EXIT_FAILED;
	}
	if (streq(error, "io.cprd.Manager.NotUpgradable")) {
		fprintf(stderr, "cprctl: %s cannot be upgraded, nothing was changed: %s.\n", name, reason);
		return EXIT_FAILED;
	}
	if (streq(error, "io.cprd.Manager.UpgradeFailed")) {
		if (jbool(p, "rolledBack"))
			fprintf(stderr, "cprctl: upgrade of %s failed in %s and was rolled back; the guest "
				"runs on its old QEMU as before: %s.\n", name, jstr(p, "phase"), reason);
		else
			fprintf(stderr, "cprctl: upgrade of %s failed in %s: %s.\n", name, jstr(p, "phase"), reason);
		return EXIT_FAILED;
	}
	if (reason)
		fprintf(stderr, "cprctl: %s failed: %s.\n", command, reason);
	else
		fprintf(stderr, "cprctl: %s failed: %s %s\n", command, short_name,
			p ? json_object_to_json_string(p) : "");
	return EXIT_FAILED;
}

/* ---- the connection ------------------------------------------------------ */

int ctx_connect(struct ctx *ctx) {
	if (ctx->client)
		return 0;
	int r = vl_client_connect(ctx->address, 5000, &ctx->client);
	if (r < 0) {
		fprintf(stderr, "cprctl: cannot reach cprd at %s: %s. Is cprd running? (--address or "
			"CPRD_ADDRESS point elsewhere)\n", ctx->address, strerror(-r));
		return -EXIT_UNREACHABLE;
	}
	return 0;
}

struct json_object *ctx_call(struct ctx *ctx, const char *method, struct json_object *params,
			     int *ret_exit) {
	char full[128];
	struct json_object *reply = NULL;
	char *error = NULL;

	*ret_exit = EXIT_OK;
	int r = ctx_connect(ctx);
	if (r < 0) {
		*ret_exit = -r;
		return NULL;
	}
	snprintf(full, sizeof(full), "io.cprd.Manager.%s", method);
	r = vl_client_call(ctx->client, full, params, ctx->timeout_ms, &reply, &error);
	if (r < 0) {
		fprintf(stderr, "cprctl: %s: lost cprd at %s: %s.\n", method, ctx->address,
			r == -ETIMEDOUT ? "no answer in time (see --timeout)" : strerror(-r));
		*ret_exit = r == -ETIMEDOUT ? EXIT_FAILED : EXIT_UNREACHABLE;
		return NULL;
	}
	if (error) {
		if (ctx->json) {
			struct json_object *e = json_object_new_object();
			json_object_object_add(e, "error", json_object_new_string(error));
			json_object_object_add(e, "parameters", json_object_get(reply));
			print_json(e);
			json_object_put(e);
		}
		*ret_exit = report_error(method, error, reply);
		free(error);
		json_object_put(reply);
		return NULL;
	}
	return reply;
}

/* ---- options ------------------------------------------------------------- */

void usage_error(const struct cmd *cmd, const char *fmt, ...) {
	va_list ap;
	fprintf(stderr, "cprctl %s: ", cmd->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nUsage: cprctl %s %s\nTry 'cprctl %s --help'.\n", cmd->name, cmd->args, cmd->name);
}

static void cmd_help(const struct cmd *cmd) {
	printf("Usage: cprctl %s %s\n%s\n\n%s", cmd->name, cmd->args, cmd->summary, cmd->help ? cmd->help : "");
	printf("Common options:\n"
	       "  --json             print JSON (one document, or JSON lines when streaming)\n"
	       "  --address ADDRESS  cprd's socket (default $CPRD_ADDRESS or %s)\n"
	       "  --timeout SECONDS  how long to wait for each answer from cprd\n"
	       "  -h, --help         this text\n",
	       CPRCTL_DEFAULT_ADDRESS);
}

enum { OPT_JSON = 1000, OPT_ADDRESS, OPT_TIMEOUT_GLOBAL, OPT_HELP };

int parse_options(struct ctx *ctx, const struct cmd *cmd, int argc, char **argv,
		  const char *shortopts, const struct option *longopts,
		  int (*handle)(int opt, const char *arg, void *userdata), void *userdata) {
	struct option all[32];
	size_t n = 0;
	for (const struct option *o = longopts; o && o->name && n < 27; o++)
		all[n++] = *o;
	all[n++] = (struct option){"json", no_argument, NULL, OPT_JSON};
	all[n++] = (struct option){"address", required_argument, NULL, OPT_ADDRESS};
	all[n++] = (struct option){"help", no_argument, NULL, OPT_HELP};
	bool has_timeout = false;
	for (size_t i = 0; i < n; i++)
		if (streq(all[i].name, "timeout"))
			has_timeout = true;
	if (!has_timeout)
		all[n++] = (struct option){"timeout", required_argument, NULL, OPT_TIMEOUT_GLOBAL};
	all[n] = (struct option){0};

	char shorts[64];
	/* ":" so a missing value is told apart from an unknown option; GNU
	 * getopt permutes, so names and options may come in any order. */
	snprintf(shorts, sizeof(shorts), ":h%s", shortopts ? shortopts : "");

	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, shorts, all, NULL)) != -1) {
		switch (c) {
		case OPT_JSON:
			ctx->json = true;
			break;
		case OPT_ADDRESS:
			ctx->address = optarg;
			break;
		case OPT_TIMEOUT_GLOBAL: {
			char *end;
			long t = strtol(optarg, &end, 10);
			if (*end || t < 1 || t > 86400) {
				usage_error(cmd, "--timeout needs a number of seconds between 1 and 86400, not '%s'", optarg);
				return -1;
			}
			ctx->timeout_ms = (int)t * 1000;
			break;
		}
		case 'h':
		case OPT_HELP:
			cmd_help(cmd);
			return 1;
		case '?':
			if (optopt)
				usage_error(cmd, "unknown option '-%c' or it lacks its value", optopt);
			else
				usage_error(cmd, "unknown option '%s' or it lacks its value", argv[optind - 1]);
			return -1;
		case ':':
			usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
			return -1;
		default:
			if (!handle || handle(c, optarg, userdata) < 0)
				return -1;
		}
	}
	return 0;
}

/* ---- main ---------------------------------------------------------------- */

static void help(void) {
	printf("Usage: cprctl [--address unix:PATH] [--json] COMMAND [ARGS...]\n"
	       "Controls cprd, which keeps QEMU guests and upgrades QEMU under them without a reboot.\n\n"
	       "Commands:\n");
	for (size_t i = 0; i < ELEMENTSOF(commands); i++) {
		char left[256];
		snprintf(left, sizeof(left), "%s %s", commands[i]->name, commands[i]->args);
		if (strlen(left) > 44) /* a long synopsis gets a line of its own */
			printf("  %s\n  %-44s %s\n", left, "", commands[i]->summary);
		else
			printf("  %-44s %s\n", left, commands[i]->summary);
	}
	printf("\n'cprctl COMMAND --help' tells more. The address also comes from $CPRD_ADDRESS\n"
	       "(default %s).\n\n"
	       "Exit codes: 0 done, 1 failed, 2 invalid input, 3 no such VM, 4 permission denied,\n"
	       "5 cprd cannot be reached.\n",
	       CPRCTL_DEFAULT_ADDRESS);
}

int main(int argc, char **argv) {
	struct ctx ctx = {
		.address = getenv("CPRD_ADDRESS") ? getenv("CPRD_ADDRESS") : CPRCTL_DEFAULT_ADDRESS,
		.timeout_ms = CPRCTL_CALL_TIMEOUT_MS,
	};
	int i = 1;

	/* Global options before the command. */
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (streq(argv[i], "--json"))
			ctx.json = true;
		else if (streq(argv[i], "--address") && i + 1 < argc)
			ctx.address = argv[++i];
		else if (strncmp(argv[i], "--address=", 10) == 0)
			ctx.address = argv[i] + 10;
		else if (streq(argv[i], "--timeout") && i + 1 < argc) {
			long t = strtol(argv[++i], NULL, 10);
			if (t < 1 || t > 86400) {
				fprintf(stderr, "cprctl: --timeout needs seconds between 1 and 86400\n");
				return EXIT_INVALID;
			}
			ctx.timeout_ms = (int)t * 1000;
		} else if (streq(argv[i], "-h") || streq(argv[i], "--help")) {
			help();
			return EXIT_OK;
		} else if (streq(argv[i], "--version")) {
			printf("cprctl %s\n", CPRD_VERSION);
			return EXIT_OK;
		} else {
			fprintf(stderr, "cprctl: unknown option '%s'. Try 'cprctl --help'.\n", argv[i]);
			return EXIT_INVALID;
		}
	}
	if (i >= argc) {
		help();
		return EXIT_INVALID;
	}
	if (streq(argv[i], "help")) {
		if (i + 1 < argc)
			for (size_t k = 0; k < ELEMENTSOF(commands); k++)
				if (streq(commands[k]->name, argv[i + 1])) {
					cmd_help(commands[k]);
					return EXIT_OK;
				}
		help();
		return EXIT_OK;
	}
	for (size_t k = 0; k < ELEMENTSOF(commands); k++)
		if (streq(commands[k]->name, argv[i])) {
			int r = commands[k]->run(&ctx, argc - i, argv + i);
			vl_client_free(ctx.client);
			return r;
		}
	fprintf(stderr, "cprctl: unknown command '%s'. Try 'cprctl help'.\n", argv[i]);
	return EXIT_INVALID;
}
