/* cprctl upgrade: replaces the QEMU under running guests, one or many,
 * showing each phase as it happens. */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cprctl.h"
#include "idl.h"
#include "macro.h"
#include "varlink.h"

struct upgrade_opts {
	const char *qemu, *mode;
	long timeout, parallel, pause_slots;
	bool dry_run, outdated, stop_on_failure;
};

/* Whether cprd knows the mode; if not, says which it knows. */
static bool mode_valid(const char *arg) {
	char names[128] = "";
	size_t n = ELEMENTSOF(cprd_upgrade_modes), used = 0;
	for (size_t i = 0; i < n; i++) {
		if (streq(arg, cprd_upgrade_modes[i]))
			return true;
		used += (size_t)snprintf(names + used, sizeof(names) - used, "%s%s",
					 i == 0 ? "" : i + 1 < n ? ", " : " or ",
					 cprd_upgrade_modes[i]);
	}
	usage_error(&cmd_upgrade, "--mode is %s, not '%s'", names, arg);
	return false;
}

static int upgrade_opt(int opt, const char *arg, void *userdata) {
	struct upgrade_opts *o = userdata;
	char *end;
	switch (opt) {
	case 'q':
		o->qemu = arg;
		return 0;
	case 'm':
		if (!mode_valid(arg))
			return -1;
		o->mode = arg;
		return 0;
	case 't':
		o->timeout = strtol(arg, &end, 10);
		if (*end || o->timeout < 1 || o->timeout > CPRD_TIMEOUT_SEC_MAX) {
			usage_error(&cmd_upgrade, "--timeout needs seconds between 1 and %d, not '%s'",
				    CPRD_TIMEOUT_SEC_MAX, arg);
			return -1;
		}
		return 0;
	case 'p':
		o->parallel = strtol(arg, &end, 10);
		if (*end || o->parallel < 1 || o->parallel > CPRD_UPGRADE_PARALLEL_MAX) {
			usage_error(&cmd_upgrade, "--parallel needs a number between 1 and %d, not '%s'",
				    CPRD_UPGRADE_PARALLEL_MAX, arg);
			return -1;
		}
		return 0;
	case 'k':
		o->pause_slots = strtol(arg, &end, 10);
		if (*end || end == arg || o->pause_slots < 1 || o->pause_slots > CPRD_PAUSE_SLOTS_MAX) {
			usage_error(&cmd_upgrade, "--pause-slots needs a number between 1 and %d, not '%s'",
				    CPRD_PAUSE_SLOTS_MAX, arg);
			return -1;
		}
		return 0;
	case 'n':
		o->dry_run = true;
		return 0;
	case 'o':
		o->outdated = true;
		return 0;
	case 's':
		o->stop_on_failure = true;
		return 0;
	}
	return -1;
}

struct progress {
	struct ctx *ctx;
	bool tty;
	int exit;
	int results, failures;
	struct timespec start;
};

static double elapsed_ms(const struct progress *pr) {
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - pr->start.tv_sec) * 1000 + (double)(now.tv_nsec - pr->start.tv_nsec) / 1e6;
}

static void print_result(struct progress *pr, struct json_object *r) {
	const char *outcome = jstr(r, "outcome");
	pr->results++;
	if (!streq_ptr(outcome, "committed") && !streq_ptr(outcome, "dry-run"))
		pr->failures++;
	if (pr->ctx->json) {
		print_json(r);
		return;
	}
	/* Attempts before the last (auto falling back): said first. */
	struct json_object *attempts = jget(r, "attempts");
	size_t n = attempts && json_object_is_type(attempts, json_type_array) ? json_object_array_length(attempts) : 0;
	for (size_t i = 0; i + 1 < n; i++) {
		struct json_object *a = json_object_array_get_idx(attempts, i);
		printf("%s: attempt %zu of %zu, %s: %s in %s: %s\n", jstr(r, "vm"), i + 1, n, jstr(a, "mode"),
		       jstr(a, "outcome"), jstr(a, "phase"), jstr(a, "reason") ? jstr(a, "reason") : "");
	}
	char total[32], pause[64] = "";
	format_ms(jdouble(r, "totalMs", 0), total, sizeof(total));
	if (jget(r, "pauseMs")) {
		char p[24];
		format_ms(jdouble(r, "pauseMs", 0), p, sizeof(p));
		snprintf(pause, sizeof(pause), ", guest paused %s", p);
	}
	if (streq_ptr(outcome, "committed"))
		printf("%s: upgraded in %s (%s, QEMU %s -> %s%s), now pid %lld\n", jstr(r, "vm"), total,
		       jstr(r, "mode"), jstr(r, "fromVersion"), jstr(r, "toVersion"), pause,
		       (long long)jint(r, "pid", 0));
	else if (streq_ptr(outcome, "dry-run"))
		printf("%s: dry run, mode %s: %s\n", jstr(r, "vm"), jstr(r, "mode"), jstr(r, "reason"));
	else if (streq_ptr(outcome, "rolled-back"))
		printf("%s: ROLLED BACK in %s: %s failed: %s; the guest runs on QEMU %s pid %lld as before\n",
		       jstr(r, "vm"), jstr(r, "failedPhase"), jstr(r, "failedPhase"), jstr(r, "reason"),
		       jstr(r, "fromVersion"), (long long)jint(r, "pid", 0));
	else
		printf("%s: %s: %s\n", jstr(r, "vm"), outcome ? outcome : "failed",
		       jstr(r, "reason") ? jstr(r, "reason") : "");
	fflush(stdout);
}

/* A refusal becomes a result object too, so --json always ends with one. */
static struct json_object *result_from_error(const char *vm, const char *error, struct json_object *p) {
	struct json_object *r = jget(p, "result");
	if (r)
		return json_object_get(r);
	r = json_object_new_object();
	json_object_object_add(r, "vm", json_object_new_string(vm));
	json_object_object_add(r, "outcome", json_object_new_string("refused"));
	json_object_object_add(r, "error", json_object_new_string(error));
	const char *reason = jstr(p, "reason");
	json_object_object_add(r, "reason", json_object_new_string(reason ? reason : error));
	return r;
}

static int on_reply(struct json_object *p, const char *error, bool continues, void *userdata) {
	struct progress *pr = userdata;
	if (error) {
		const char *vm = jstr(p, "name") ? jstr(p, "name") : "";
		if (pr->ctx->json) {
			struct json_object *r = result_from_error(vm, error, p);
			print_json(r);
			json_object_put(r);
		}
		pr->exit = report_error("upgrade", error, p);
		pr->failures++;
		return 0;
	}
	struct json_object *result = jget(p, "result");
	if (result) {
		print_result(pr, result);
		return 0;
	}
	if (jget(p, "committed")) { /* UpgradeMany's summary */
		if (pr->ctx->json)
			print_json(p);
		else
			printf("Summary: %lld upgraded, %lld rolled back or failed, %lld skipped\n",
			       (long long)jint(p, "committed", 0), (long long)jint(p, "rolledBack", 0),
			       (long long)jint(p, "skipped", 0));
		return 0;
	}
	if (pr->ctx->json) {
		print_json(p);
		return 0;
	}
	if (pr->tty)
		printf("\033[2m%7.0f ms\033[0m  %-12s %-13s %s\n", elapsed_ms(pr), jstr(p, "vm"), jstr(p, "phase"),
		       jstr(p, "message"));
	else
		printf("%7.0f ms  %s  %s: %s\n", elapsed_ms(pr), jstr(p, "vm"), jstr(p, "phase"), jstr(p, "message"));
	fflush(stdout);
	return 0;
}

static int upgrade_run(struct ctx *ctx, int argc, char **argv) {
	static const struct option longopts[] = {
		{"qemu", required_argument, NULL, 'q'},    {"mode", required_argument, NULL, 'm'},
		{"timeout", required_argument, NULL, 't'}, {"parallel", required_argument, NULL, 'p'},
		{"dry-run", no_argument, NULL, 'n'},        {"outdated", no_argument, NULL, 'o'},
		{"stop-on-failure", no_argument, NULL, 's'}, {"pause-slots", required_argument, NULL, 'k'},
		{},
	};
	struct upgrade_opts o = {.timeout = -1, .parallel = 1};
	int r = parse_options(ctx, &cmd_upgrade, argc, argv, NULL, longopts, upgrade_opt, &o);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	int n = argc - optind;
	if (n == 0 && !o.outdated) {
		usage_error(&cmd_upgrade, "name the VMs to upgrade, or use --outdated");
		return EXIT_INVALID;
	}
	if (n > 0 && o.outdated) {
		usage_error(&cmd_upgrade, "either name VMs or use --outdated, not both");
		return EXIT_INVALID;
	}
	if (o.qemu && o.qemu[0] != '/') {
		usage_error(&cmd_upgrade, "--qemu needs an absolute path, not '%s'", o.qemu);
		return EXIT_INVALID;
	}

	_cleanup_json_ struct json_object *p = json_object_new_object();
	if (o.qemu)
		json_object_object_add(p, "qemu", json_object_new_string(o.qemu));
	if (o.mode)
		json_object_object_add(p, "mode", json_object_new_string(o.mode));
	if (o.timeout > 0)
		json_object_object_add(p, "timeoutSec", json_object_new_int((int)o.timeout));
	if (o.dry_run)
		json_object_object_add(p, "dryRun", json_object_new_boolean(true));
	if (o.pause_slots > 0)
		json_object_object_add(p, "pauseSlots", json_object_new_int((int)o.pause_slots));
	const char *method;
	if (n == 1 && !o.outdated) {
		method = "io.cprd.Manager.Upgrade";
		json_object_object_add(p, "name", json_object_new_string(argv[optind]));
	} else {
		method = "io.cprd.Manager.UpgradeMany";
		if (o.outdated)
			json_object_object_add(p, "outdated", json_object_new_boolean(true));
		else {
			struct json_object *names = json_object_new_array();
			for (int i = optind; i < argc; i++)
				json_object_array_add(names, json_object_new_string(argv[i]));
			json_object_object_add(p, "names", names);
		}
		json_object_object_add(p, "parallel", json_object_new_int((int)o.parallel));
		if (o.stop_on_failure)
			json_object_object_add(p, "stopOnFailure", json_object_new_boolean(true));
	}

	struct progress pr = {.ctx = ctx, .tty = isatty(STDOUT_FILENO) && !ctx->json};
	clock_gettime(CLOCK_MONOTONIC, &pr.start);
	r = ctx_connect(ctx);
	if (r < 0)
		return -r;
	/* Each phase has its own deadline in cprd; wait a bit longer than the
	 * whole upgrade may take before giving up on cprd itself. */
	int wait_ms = MAX(ctx->timeout_ms, (int)((o.timeout > 0 ? o.timeout : 60) + 60) * 1000);
	r = vl_client_call_more(ctx->client, method, p, wait_ms, on_reply, &pr);
	if (r < 0) {
		fprintf(stderr, "cprctl upgrade: lost cprd: %s. The upgrade goes on in cprd; "
			"'cprctl status' shows its outcome.\n", strerror(-r));
		return EXIT_UNREACHABLE;
	}
	if (pr.exit)
		return pr.exit;
	return pr.failures ? EXIT_FAILED : EXIT_OK;
}

const struct cmd cmd_upgrade = {
	.name = "upgrade",
	.args = "NAME... | --outdated [--qemu PATH] [--mode MODE] [--timeout SECONDS] [--dry-run] [--parallel N] [--pause-slots K]",
	.summary = "Move running guests to another QEMU binary without a reboot",
	.help = "Options:\n"
		"  --qemu PATH        the new QEMU binary (default: the VM's own path, which after\n"
		"                     'apt-get upgrade' holds the new QEMU)\n"
		"  --mode MODE        auto (default), cpr-transfer (QEMU >= 10.0 on both sides, not\n"
		"                     to an older release) or local-migrate (shared memory, any\n"
		"                     pair, RAM is not copied); auto tries local-migrate when the\n"
		"                     cpr-transfer it picked rolls back; or cpr-exec (QEMU >= 10.2\n"
		"                     on both sides, the same pid; only for a VM created with\n"
		"                     --allow-exec, and never chosen by auto)\n"
		"  --timeout SECONDS  roll back if the guest is not on the new QEMU by then (default 60)\n"
		"  --dry-run          check everything and say what would happen; change nothing\n"
		"  --outdated         every VM whose QEMU binary changed on disk since it started\n"
		"  --parallel N       upgrade N VMs at a time (default 1)\n"
		"  --pause-slots K    at most K guests paused at once by upgrades, this call's and\n"
		"                     others'; new QEMUs still start N at a time, and an upgrade\n"
		"                     whose target is ready waits, its guest running, for a slot\n"
		"                     (default: cprd's --pause-slots, else cprd's CPUs / 2, min 1)\n"
		"  --stop-on-failure  start no further upgrades after one fails\n"
		"With --json every line is a JSON object; the last one for each VM is its result\n"
		"(vm, outcome, mode, pauseMs, pausedAtUs, resumedAtUs, totalMs, fromVersion,\n"
		"toVersion, pid, attempts).\n",
	.run = upgrade_run,
};
