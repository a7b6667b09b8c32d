/* The Varlink protocol on libevent and json-c: a server that dispatches
 * calls to handlers declared in tables, and a small blocking client for
 * cprctl. Nothing here knows about VMs.
 *
 * Wire format (https://varlink.org): one JSON object per message, each
 * terminated by a NUL byte. A connection handles one call at a time, in the
 * order the calls arrived, so replies always go out in request order. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

struct event_base;
struct json_object;

/* Limits. Each has a name so the tests and the documentation can cite it. */
#define VL_MESSAGE_MAX (16u * 1024 * 1024)        /* one message, either way */
#define VL_CONNECTIONS_MAX 4096u                   /* per server */
#define VL_CONNECTIONS_PER_UID_MAX 1024u           /* per server and peer uid */
#define VL_MESSAGE_TIMEOUT_MS (60 * 1000)          /* to finish a started message, either way */
#define VL_OUTPUT_HIGH (4u * 1024 * 1024)          /* stop dispatching above this */
#define VL_OUTPUT_MAX (VL_MESSAGE_MAX + VL_OUTPUT_HIGH) /* close the reader above this */

/* The standard errors of org.varlink.service. */
#define VL_ERROR_INTERFACE_NOT_FOUND "org.varlink.service.InterfaceNotFound"
#define VL_ERROR_METHOD_NOT_FOUND "org.varlink.service.MethodNotFound"
#define VL_ERROR_METHOD_NOT_IMPLEMENTED "org.varlink.service.MethodNotImplemented"
#define VL_ERROR_INVALID_PARAMETER "org.varlink.service.InvalidParameter"
#define VL_ERROR_PERMISSION_DENIED "org.varlink.service.PermissionDenied"
#define VL_ERROR_EXPECTED_MORE "org.varlink.service.ExpectedMore"
/* Not a standard error: what a handler's unexplained failure becomes,
 * unless vl_server_info.internal_error names the interface's own. */
#define VL_ERROR_INTERNAL "org.varlink.service.InternalError"

#define VL_PEER_GROUPS_MAX 64 /* supplementary groups kept per peer */

/* ---- Parameter tables ---------------------------------------------------- */

enum vl_type {
	VL_ANY,
	VL_BOOL,
	VL_INT,
	VL_FLOAT, /* an integer is accepted too */
	VL_STRING,
	VL_OBJECT,
	VL_ARRAY,
};

enum {
	VL_MANDATORY = 1 << 0, /* must be present and not null */
	VL_NULLABLE = 1 << 1,  /* null is accepted (as if absent) */
	VL_NO_NUL = 1 << 2,    /* a string that names something: no \u0000 inside */
};

struct vl_param {
	const char *name;
	enum vl_type type;
	unsigned flags;
};

/* Checks `params` (an object, or NULL meaning {}) against a table ending in
 * {NULL}: a missing mandatory field, a field of the wrong type or a field the
 * table does not name fails with -EINVAL, and *ret_bad names the field. */
int vl_params_check(struct json_object *params, const struct vl_param *table,
		    const char **ret_bad);

/* ---- Server -------------------------------------------------------------- */

struct vl_server;
struct vl_call;

typedef int (*vl_method_fn)(struct vl_call *call, struct json_object *params,
			    void *userdata);

enum {
	VL_METHOD_REQUIRES_MORE = 1 << 0, /* ExpectedMore unless the call set more */
};

struct vl_method {
	const char *name; /* unqualified, e.g. "GetVM" */
	vl_method_fn fn;
	const struct vl_param *params; /* NULL means: takes no parameters */
	unsigned flags;
};

struct vl_interface {
	const char *name;               /* e.g. "io.cprd.Manager" */
	const char *description;        /* the IDL text, served verbatim */
	const struct vl_method *methods; /* ends with {NULL} */
};

struct vl_server_info {
	const char *vendor;
	const char *product;
	const char *version;
	const char *url;
	/* Error name for a handler that failed with a bare errno; its
	 * parameters are reason (a sentence) and errno. NULL: VL_ERROR_INTERNAL. */
	const char *internal_error;
};

/* Tunables for tests; zero fields keep the defaults above. */
struct vl_server_limits {
	unsigned connections_max;
	unsigned connections_per_uid_max;
	int message_timeout_ms;
	size_t message_max;
};

/* Called for every accepted connection; return false to refuse it. */
typedef bool (*vl_accept_fn)(const struct ucred *peer, void *userdata);

int vl_server_new(struct event_base *base, const struct vl_server_info *info,
		  struct vl_server **ret);
void vl_server_free(struct vl_server *s);
int vl_server_add_interface(struct vl_server *s, const struct vl_interface *iface,
			    void *userdata);
void vl_server_set_limits(struct vl_server *s, const struct vl_server_limits *l);
/* Removes a stale socket file (refusing if a server still answers on it),
 * binds, sets `mode` and listens. */
int vl_server_listen_path(struct vl_server *s, const char *path, mode_t mode);
/* Takes ownership of an already listening socket (socket activation). */
int vl_server_listen_fd(struct vl_server *s, int fd);
unsigned vl_server_connections(const struct vl_server *s);
/* The i-th listening socket (to hand over across a re-exec), or -1. */
int vl_server_get_listen_fd(const struct vl_server *s, size_t i);

/* A call stays valid for the handler until it sent the final reply; a
 * handler that replies later takes a reference and drops it when done. */
struct vl_call *vl_call_ref(struct vl_call *c);
void vl_call_unref(struct vl_call *c);
static inline void vl_call_unrefp(struct vl_call **c) {
	if (*c)
		vl_call_unref(*c);
}

const char *vl_call_method(const struct vl_call *c); /* fully qualified */
bool vl_call_more(const struct vl_call *c);
bool vl_call_oneway(const struct vl_call *c);
const struct ucred *vl_call_peer(const struct vl_call *c);
/* The peer's supplementary groups, as the kernel reported them at connect. */
size_t vl_call_peer_groups(const struct vl_call *c, const gid_t **ret);
/* False once the final reply went out or the peer went away. */
bool vl_call_alive(const struct vl_call *c);

/* Each takes ownership of `params` (which may be NULL for {}). notify sends
 * a reply with continues: true and needs a call that set more. They return
 * -ENOTCONN when the peer is gone, -EALREADY after the final reply. */
int vl_call_reply(struct vl_call *c, struct json_object *params);
int vl_call_notify(struct vl_call *c, struct json_object *params);
int vl_call_error(struct vl_call *c, const char *error, struct json_object *params);
int vl_call_error_invalid_parameter(struct vl_call *c, const char *parameter);

/* Runs when the peer disconnects before the final reply. */
typedef void (*vl_disconnect_fn)(struct vl_call *c, void *userdata);
void vl_call_on_disconnect(struct vl_call *c, vl_disconnect_fn fn, void *userdata);

/* Calls that stream (called with more) and get the same replies, such as
 * event subscribers. Calls whose peer left are dropped as they are found. */
struct vl_subscribers {
	struct vl_call **calls;
	size_t n;
};

/* Keeps a reference to call. */
int vl_subscribers_add(struct vl_subscribers *s, struct vl_call *call);
/* Drops the calls that ended; returns how many are left. */
size_t vl_subscribers_prune(struct vl_subscribers *s);
/* Sends params (taken) to every live call as a reply with continues. */
void vl_subscribers_notify(struct vl_subscribers *s, struct json_object *params);
void vl_subscribers_clear(struct vl_subscribers *s);

/* ---- Client -------------------------------------------------------------- */

struct vl_client;

enum {
	VL_CALL_MORE = 1 << 0,
	VL_CALL_ONEWAY = 1 << 1,
};

/* address: "unix:PATH" or a plain path. */
int vl_client_connect(const char *address, int timeout_ms, struct vl_client **ret);
void vl_client_free(struct vl_client *c);
static inline void vl_client_freep(struct vl_client **c) {
	if (*c)
		vl_client_free(*c);
}

/* One call, one reply. Returns 0 and sets *ret_params (owned by the caller)
 * on success; returns 0 and sets *ret_error (owned) and *ret_params (the
 * error's parameters) on a Varlink error; returns a negative errno when the
 * transport failed or timeout_ms passed (-ETIMEDOUT). */
int vl_client_call(struct vl_client *c, const char *method, struct json_object *params,
		   int timeout_ms, struct json_object **ret_params, char **ret_error);

/* A call with more: fn runs for every reply; a negative return stops the
 * call with that value. timeout_ms applies to the wait for each reply
 * (-1: no deadline, for streams that may be quiet for long). */
typedef int (*vl_reply_fn)(struct json_object *params, const char *error, bool continues,
			   void *userdata);
int vl_client_call_more(struct vl_client *c, const char *method, struct json_object *params,
			int timeout_ms, vl_reply_fn fn, void *userdata);
int vl_client_call_oneway(struct vl_client *c, const char *method, struct json_object *params);

/* ---- Messages (shared by server, client and the fuzz targets) ------------ */

/* Parses one message (without its NUL). Fails with -EBADMSG when it is not
 * valid JSON, has trailing data or is not an object. */
int vl_message_parse(const char *buf, size_t len, struct json_object **ret);

/* The length of the strict UTF-8 (RFC 3629) sequence at s: no overlong
 * forms, no surrogates, nothing past U+10FFFF; 0 when there is none. Every
 * message is checked with it, so text put into replies must pass it too. */
size_t vl_utf8_sequence(const unsigned char *s, size_t len);

/* The org.varlink.service IDL, for GetInterfaceDescription. */
extern const char vl_service_description[];
