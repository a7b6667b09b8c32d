/* cprctl snapshot and cprctl restore: a live snapshot of a guest into a file
 * and its way back, one VM or every VM with a folder (NAME.state and
 * NAME.state.json in it), with the progress as it comes. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cprctl.h"
#include "idl.h"
#include "macro.h"
#include "varlink.h"

#define STATE_SUFFIX ".state"

struct snap_opts {
	const struct cmd *cmd;
	const char *path; /* --to or --from */
	const char *qemu;
	long timeout;
	bool all;
};

static int snap_opt(int opt, const char *arg, void *userdata) {
	struct snap_opts *o = userdata;
	char *end;
	switch (opt) {
	case 'f':
		o->path = arg;
		return 0;
	case 'q':
		o->qemu = arg;
		return 0;
	case 'a':
		o->all = true;
		return 0;
	case 't':
		o->timeout = strtol(arg, &end, 10);
		if (*end || end == arg || o->timeout < 1 || o->timeout > CPRD_TIMEOUT_SEC_MAX) {
			usage_error(o->cmd, "--timeout needs seconds between 1 and %d, not '%s'",
				    CPRD_TIMEOUT_SEC_MAX, arg);
			return -1;
		}
		return 0;
	}
	return -1;
}

struct progress {
	struct ctx *ctx;
	const char *command;
	bool tty;
	int exit;
	double last_fraction;
	const char *last_phase;
};

static void print_result(struct progress *pr, struct json_object *r) {
	if (pr->ctx->json) {
		print_json(r);
		return;
	}
	char total[32], pause[64] = "";
	format_ms(jdouble(r, "totalMs", 0), total, sizeof(total));
	double mb = (double)jint(r, "bytes", 0) / 1e6;
	if (streq(pr->command, "snapshot")) {
		if (jget(r, "pauseMs")) {
			char p[24];
			format_ms(jdouble(r, "pauseMs", 0), p, sizeof(p));
			snprintf(pause, sizeof(pause), ", guest paused %s", p);
		}
		printf("%s: snapshot %s written: %.1f MB at %.1f MB/s in %s (QEMU %s, %s%s)\n",
		       jstr(r, "vm"), jstr(r, "file"), mb, jdouble(r, "mbPerSec", 0), total,
		       jstr(r, "qemuVersion"), jstr(r, "machine"), pause);
	} else {
		char load[32];
		format_ms(jdouble(r, "loadMs", 0), load, sizeof(load));
		printf("%s: restored from %s (%.1f MB loaded in %s, %s in all)%s, QEMU %s pid %lld\n",
		       jstr(r, "vm"), jstr(r, "file"), mb, load, total,
		       jbool(r, "created") ? ", VM created" : "", jstr(r, "qemuVersion"),
		       (long long)jint(r, "pid", 0));
		struct json_object *ov = jget(r, "overlays");
		size_t n = json_object_is_type(ov, json_type_array) ? json_object_array_length(ov) : 0;
		for (size_t i = 0; i < n; i++)
			printf("%s: writes to the new overlay %s\n", jstr(r, "vm"),
			       json_object_get_string(json_object_array_get_idx(ov, i)));
	}
	fflush(stdout);
}

static int on_reply(struct json_object *p, const char *error, bool continues, void *userdata) {
	struct progress *pr = userdata;
	if (error) {
		if (pr->ctx->json) {
			struct json_object *e = json_object_new_object();
			json_object_object_add(e, "error", json_object_new_string(error));
			json_object_object_add(e, "parameters", json_object_get(p));
			print_json(e);
			json_object_put(e);
		}
		if (streq(error, "io.cprd.Manager.NotSnapshottable"))
			fprintf(stderr, "cprctl: %s cannot be snapshot, nothing was changed: %s.\n",
				jstr(p, "name"), jstr(p, "reason"));
		else if (streq(error, "io.cprd.Manager.BadSnapshot"))
			fprintf(stderr, "cprctl: %s refused, nothing was changed: %s.\n", pr->command,
				jstr(p, "reason"));
		else if (streq(error, "io.cprd.Manager.SnapshotFailed"))
			fprintf(stderr, "cprctl: %s of %s failed: %s.\n", pr->command, jstr(p, "name"),
				jstr(p, "reason"));
		else {
			pr->exit = report_error(pr->command, error, p);
			return 0;
		}
		pr->exit = EXIT_FAILED;
		return 0;
	}
	struct json_object *result = jget(p, "result");
	if (result) {
		print_result(pr, result);
		return 0;
	}
	if (pr->ctx->json) {
		print_json(p);
		return 0;
	}
	/* Fractions come every 100 ms: show a phase's every tenth. */
	const char *phase = jstr(p, "phase");
	double f = jdouble(p, "fraction", -1);
	if (f >= 0 && streq_ptr(phase, pr->last_phase) && f < 1 && f - pr->last_fraction < 0.1)
		return 0;
	free((char *)pr->last_phase);
	pr->last_phase = phase ? strdup(phase) : NULL;
	pr->last_fraction = f;
	if (f >= 0)
		printf("%s  %-9s %3.0f%%  %s\n", jstr(p, "vm"), phase, f * 100, jstr(p, "message"));
	else
		printf("%s  %-9s       %s\n", jstr(p, "vm"), phase, jstr(p, "message"));
	fflush(stdout);
	return 0;
}

static int call_one(struct ctx *ctx, const char *command, const char *name, const char *file,
		    const struct snap_opts *o) {
	_cleanup_json_ struct json_object *p = json_object_new_object();
	json_object_object_add(p, "name", json_object_new_string(name));
	json_object_object_add(p, "file", json_object_new_string(file));
	if (o->qemu)
		json_object_object_add(p, "qemu", json_object_new_string(o->qemu));
	if (o->timeout > 0)
		json_object_object_add(p, "timeoutSec", json_object_new_int((int)o->timeout));
	struct progress pr = {.ctx = ctx, .command = command, .last_fraction = -1,
			      .tty = isatty(STDOUT_FILENO) && !ctx->json};
	int r = ctx_connect(ctx);
	if (r < 0)
		return -r;
	int wait_ms = MAX(ctx->timeout_ms, (int)((o->timeout > 0 ? o->timeout : 600) + 60) * 1000);
	r = vl_client_call_more(ctx->client,
				streq(command, "snapshot") ? "io.cprd.Manager.SnapshotVM"
							   : "io.cprd.Manager.RestoreVM",
				p, wait_ms, on_reply, &pr);
	free((char *)pr.last_phase);
	if (r < 0) {
		fprintf(stderr, "cprctl %s: lost cprd: %s.\n", command, strerror(-r));
		return EXIT_UNREACHABLE;
	}
	return pr.exit;
}

static int absolute_path(const struct cmd *cmd, const char *opt, const char *path) {
	if (path && path[0] == '/')
		return 0;
	usage_error(cmd, "%s needs an absolute path%s%s", opt, path ? ", not " : "", path ? path : "");
	return -1;
}

/* Every running or paused VM into DIR/NAME.state. */
static int snapshot_all(struct ctx *ctx, const struct snap_opts *o) {
	int ex = 0, failed = 0, done = 0;
	_cleanup_json_ struct json_object *list = ctx_call(ctx, "ListVMs", NULL, &ex);
	if (!list)
		return ex;
	struct json_object *vms = jget(list, "vms");
	size_t n = vms ? json_object_array_length(vms) : 0;
	for (size_t i = 0; i < n; i++) {
		struct json_object *vm = json_object_array_get_idx(vms, i);
		const char *state = jstr(vm, "state");
		if (!streq_ptr(state, "running") && !streq_ptr(state, "paused"))
			continue;
		char file[PATH_MAX];
		snprintf(file, sizeof(file), "%s/%s%s", o->path, jstr(vm, "name"), STATE_SUFFIX);
		done++;
		if (call_one(ctx, "snapshot", jstr(vm, "name"), file, o) != 0)
			failed++;
	}
	if (!ctx->json)
		printf("Summary: %d snapshot, %d failed\n", done - failed, failed);
	return failed ? EXIT_FAILED : EXIT_OK;
}

/* Every DIR/NAME.state that has its record, as VM NAME. */
static int restore_all(struct ctx *ctx, const struct snap_opts *o) {
	struct dirent **names = NULL;
	int n = scandir(o->path, &names, NULL, alphasort);
	if (n < 0) {
		fprintf(stderr, "cprctl restore: cannot read %s: %s.\n", o->path, strerror(errno));
		return EXIT_FAILED;
	}
	int failed = 0, done = 0;
	for (int i = 0; i < n; i++) {
		const char *d = names[i]->d_name;
		size_t len = strlen(d), sl = strlen(STATE_SUFFIX);
		if (len > sl && streq(d + len - sl, STATE_SUFFIX)) {
			char file[PATH_MAX], rec[PATH_MAX + 8], name[256];
			snprintf(file, sizeof(file), "%s/%s", o->path, d);
			snprintf(rec, sizeof(rec), "%s.json", file);
			snprintf(name, sizeof(name), "%.*s", (int)(len - sl), d);
			if (access(rec, F_OK) == 0) {
				done++;
				if (call_one(ctx, "restore", name, file, o) != 0)
					failed++;
			}
		}
		free(names[i]);
	}
	free(names);
	if (!ctx->json)
		printf("Summary: %d restored, %d failed\n", done - failed, failed);
	return failed ? EXIT_FAILED : EXIT_OK;
}

static int run(struct ctx *ctx, int argc, char **argv, const struct cmd *cmd, const char *opt) {
	static const struct option snap_longopts[] = {
		{"to", required_argument, NULL, 'f'},      {"all", no_argument, NULL, 'a'},
		{"timeout", required_argument, NULL, 't'}, {},
	};
	static const struct option restore_longopts[] = {
		{"from", required_argument, NULL, 'f'},    {"all", no_argument, NULL, 'a'},
		{"qemu", required_argument, NULL, 'q'},    {"timeout", required_argument, NULL, 't'},
		{},
	};
	bool snap = streq(cmd->name, "snapshot");
	struct snap_opts o = {.cmd = cmd, .timeout = -1};
	int r = parse_options(ctx, cmd, argc, argv, NULL, snap ? snap_longopts : restore_longopts,
			      snap_opt, &o);
	if (r != 0)
		return r < 0 ? EXIT_INVALID : EXIT_OK;
	int n = argc - optind;
	if (absolute_path(cmd, opt, o.path) < 0)
		return EXIT_INVALID;
	if (o.qemu && absolute_path(cmd, "--qemu", o.qemu) < 0)
		return EXIT_INVALID;
	if (o.all) {
		if (n) {
			usage_error(cmd, "either name a VM or use --all, not both");
			return EXIT_INVALID;
		}
		return snap ? snapshot_all(ctx, &o) : restore_all(ctx, &o);
	}
	if (n != 1) {
		usage_error(cmd, "name one VM, or use --all with a folder");
		return EXIT_INVALID;
	}
	return call_one(ctx, cmd->name, argv[optind], o.path, &o);
}

static int snapshot_run(struct ctx *ctx, int argc, char **argv) {
	return run(ctx, argc, argv, &cmd_snapshot, "--to");
}

static int restore_run(struct ctx *ctx, int argc, char **argv) {
	return run(ctx, argc, argv, &cmd_restore, "--from");
}

const struct cmd cmd_snapshot = {
	.name = "snapshot",
	.args = "NAME --to FILE | --all --to DIR [--timeout SECONDS]",
	.summary = "Save a running guest's whole state to a file while it keeps running",
	.help = "Options:\n"
		"  --to FILE          the state file cprd creates (absolute; its folder must be\n"
		"                     root's and not writable by group or others; FILE and\n"
		"                     FILE.json, the record, must not exist)\n"
		"  --all --to DIR     every running or paused VM, each to DIR/NAME.state\n"
		"  --timeout SECONDS  give up (and remove the file) after this long (default 600)\n"
		"The guest pauses only at the start (the pause is reported). Ctrl-C cancels the\n"
		"snapshot and removes the file. VMs with a writable disk are refused.\n"
		"With --json every line is a JSON object (vm, phase, message, fraction); the last\n"
		"one is the result (vm, file, bytes, pauseMs, writeMs, mbPerSec, totalMs).\n",
	.run = snapshot_run,
};

const struct cmd cmd_restore = {
	.name = "restore",
	.args = "NAME --from FILE | --all --from DIR [--qemu PATH] [--timeout SECONDS]",
	.summary = "Bring a guest back from a snapshot, from the moment it was taken",
	.help = "Options:\n"
		"  --from FILE        the state file (FILE.json beside it is its record)\n"
		"  --all --from DIR   every DIR/NAME.state with its record, as VM NAME\n"
		"  --qemu PATH        the QEMU to load it (default: the VM's, else the one that\n"
		"                     wrote it); the same release or newer, with the machine type\n"
		"  --timeout SECONDS  until the guest runs (default 600)\n"
		"The VM is created from the recorded spec if there is none; one that runs is\n"
		"refused. Each writable qcow2 disk gets a fresh overlay beside it,\n"
		"DISK.restore-TIME.qcow2, which the guest writes to: the snapshot's disk is only\n"
		"read, so the snapshot can be restored again. A truncated or corrupt file, or one\n"
		"for another machine type, is refused and nothing is left behind.\n"
		"With --json every line is a JSON object; the last one is the result (vm, file,\n"
		"bytes, created, qemuVersion, pid, loadMs, totalMs, overlays).\n",
	.run = restore_run,
};
