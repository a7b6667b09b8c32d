/* cprctl: the command table, shared options and output helpers. Each
 * command lives in its own file (cmd-*.c) as a struct cmd entry. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;
struct vl_client;

/* Exit codes; scripts rely on them. */
enum {
	EXIT_OK = 0,
	EXIT_FAILED = 1,     /* the operation failed */
	EXIT_INVALID = 2,    /* bad usage or input */
	EXIT_NO_SUCH_VM = 3,
	EXIT_DENIED = 4,     /* PermissionDenied */
	EXIT_UNREACHABLE = 5 /* cprd does not answer */
};

#define CPRCTL_DEFAULT_ADDRESS "unix:/run/cprd/io.cprd.Manager"
#define CPRCTL_CALL_TIMEOUT_MS 60000

struct ctx {
	const char *address;
	bool json;
	int timeout_ms; /* per reply */
	struct vl_client *client;
};

struct cmd {
	const char *name;
	const char *args;    /* usage after the name */
	const char *summary; /* one line for `cprctl help` */
	const char *help;    /* the options, shown by --help */
	int (*run)(struct ctx *ctx, int argc, char **argv);
};

extern const struct cmd cmd_list, cmd_status, cmd_create, cmd_start, cmd_stop, cmd_delete,
	cmd_log, cmd_events, cmd_upgrade, cmd_pause, cmd_resume, cmd_snapshot, cmd_restore;

/* Connects on first use. */
int ctx_connect(struct ctx *ctx);
/* Calls a method of io.cprd.Manager (short name) and returns its reply, or
 * prints the error in one sentence and returns the exit code (as negative
 * EXIT_* value) through *ret_exit. */
struct json_object *ctx_call(struct ctx *ctx, const char *method, struct json_object *params,
			     int *ret_exit);
/* Maps a Varlink error to an exit code and prints one sentence on stderr. */
int report_error(const char *command, const char *error, struct json_object *params);

/* Parses the options of one command: global ones (--json, --address,
 * --timeout, --help) are accepted everywhere. Returns -1 on a usage error
 * (already printed), 1 when --help was shown, 0 otherwise. */
struct option;
int parse_options(struct ctx *ctx, const struct cmd *cmd, int argc, char **argv,
		  const char *shortopts, const struct option *longopts,
		  int (*handle)(int opt, const char *arg, void *userdata), void *userdata);
void usage_error(const struct cmd *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void print_json(struct json_object *o); /* one line */
const char *jstr(struct json_object *o, const char *key);
int64_t jint(struct json_object *o, const char *key, int64_t def);
double jdouble(struct json_object *o, const char *key, double def);
bool jbool(struct json_object *o, const char *key);
struct json_object *jget(struct json_object *o, const char *key);
void format_size_mib(uint64_t mib, char *buf, size_t size);
void format_duration(double sec, char *buf, size_t size);
void format_ms(double ms, char *buf, size_t size);
