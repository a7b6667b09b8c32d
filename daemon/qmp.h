/* qmp: an asynchronous QMP client on a libevent loop. One struct qmp per
 * monitor connection: it waits for the greeting, negotiates capabilities,
 * tags every command with an id and a deadline, matches replies, dispatches
 * events, and turns any I/O or protocol failure into one sticky error. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct json_object;
struct qmp;

/* Limits. A reply past QMP_MESSAGE_MAX closes the channel (query-qmp-schema
 * of QEMU 10.0 is about 240 KB, so this leaves ample room). */
#define QMP_MESSAGE_MAX (4u * 1024 * 1024)
#define QMP_GREETING_TIMEOUT_MS 10000 /* greeting + qmp_capabilities */
#define QMP_COMMAND_TIMEOUT_MS 10000  /* a reasonable default for callers */

/* The QEMU version announced in the greeting. */
struct qmp_version {
	unsigned major, minor, micro;
	const char *package; /* e.g. "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1", or "" */
};

/* Why a command failed. error is a negative errno: -EREMOTEIO when QEMU
 * answered with an error (class and desc come from QEMU), -ETIMEDOUT when the
 * deadline passed, or the channel's sticky error (-ECONNRESET when the peer
 * closed, -EPIPE, -EBADMSG for garbage, -EMSGSIZE for an oversized message). */
struct qmp_error {
	int error;
	const char *class; /* QMP error class ("GenericError"), NULL if local */
	const char *desc;  /* a sentence for people, never NULL */
};

/* Called exactly once per command that qmp_command() accepted, unless it is
 * cancelled with qmp_cancel() or the channel is freed with qmp_free().
 * On success err is NULL and ret is the "return" value; on failure ret is
 * NULL. ret is borrowed: take a json_object_get() reference to keep it. */
typedef void (*qmp_reply_fn)(struct qmp *q, struct json_object *ret,
			     const struct qmp_error *err, void *userdata);

/* What the owner learns about the channel. Any may be NULL. The userdata is
 * the one given to qmp_new(). Each may call qmp_free() on q. */
struct qmp_callbacks {
	/* The greeting arrived and qmp_capabilities succeeded. Once. */
	void (*ready)(struct qmp *q, void *userdata);
	/* An asynchronous event. data may be NULL (borrowed). timestamp_usec is
	 * QEMU's wall-clock time of the event (CLOCK_REALTIME, microseconds). */
	void (*event)(struct qmp *q, const char *name, struct json_object *data,
		      int64_t timestamp_usec, void *userdata);
	/* The channel closed: the peer hung up (-ECONNRESET), I/O failed, the
	 * peer sent something that is not QMP, or the handshake timed out
	 * (-ETIMEDOUT). Called at most once, after every pending command was
	 * failed with the same error; never called from qmp_free(). */
	void (*closed)(struct qmp *q, int error, void *userdata);
};

/* Starts a client over a connected stream socket. Takes ownership of fd
 * (also on failure); the fd is switched to non-blocking. label names the peer
 * in logs, usually the VM name. */
int qmp_new(struct event_base *base, int fd, const struct qmp_callbacks *cb,
	    void *userdata, const char *label, struct qmp **ret);

/* Like qmp_new() for a channel whose handshake was done earlier (a QMP fd
 * taken back from systemd's fd store after cprd restarted): ready at once,
 * and a torn first line is dropped. The version is unknown. */
int qmp_new_attached(struct event_base *base, int fd, const struct qmp_callbacks *cb,
		     void *userdata, const char *label, struct qmp **ret);

/* Closes the channel and frees it. Nothing is called back: pending commands
 * are dropped silently. Safe to call from inside any qmp callback. NULL is a
 * no-op; returns NULL for `q = qmp_free(q);`. */
struct qmp *qmp_free(struct qmp *q);

/* Changes the handshake deadline (counted from now) while the greeting or the
 * capabilities reply is still awaited; a QEMU started with -incoming for
 * cpr-transfer only greets after its source was told to migrate. */
int qmp_set_greeting_timeout(struct qmp *q, int timeout_ms);

/* Sends a command. args is taken (also on failure) and may be NULL. The
 * command is queued if the handshake has not finished yet. timeout_ms > 0
 * bounds the wait from now. Returns 0 if fn will be called; a negative errno
 * (the sticky error once the channel failed, -EINVAL for bad arguments) if
 * not, in which case fn is never called. */
int qmp_command(struct qmp *q, const char *cmd, struct json_object *args, int timeout_ms,
		qmp_reply_fn fn, void *userdata);

/* Like qmp_command(), and passes a copy of fd along with the command's bytes
 * (SCM_RIGHTS), as "getfd" and "add-fd" need. fd is borrowed: it is
 * duplicated, the caller keeps its own. */
int qmp_command_with_fd(struct qmp *q, const char *cmd, struct json_object *args, int fd,
			int timeout_ms, qmp_reply_fn fn, void *userdata);

/* A reply handler for commands whose outcome shows elsewhere (an exit, a
 * later query): a failure is only logged at debug level. */
void qmp_reply_ignore(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
		      void *userdata);

/* Forgets every pending callback registered with this userdata, so an object
 * being freed is never called back. The commands themselves still go out;
 * their replies are ignored. Returns how many were cancelled. */
unsigned qmp_cancel(struct qmp *q, void *userdata);

/* The peer is about to execute another binary in the same process and on
 * the same channel (cpr-exec): its next greeting is taken instead of being
 * refused as a protocol error. Every command still pending then fails with
 * -ERESTART (the process that was to answer it is gone), the handshake is
 * made again and ready is called again. One greeting; on clears it. */
void qmp_expect_restart(struct qmp *q, bool on);

bool qmp_is_ready(const struct qmp *q);
/* The sticky error (negative errno), or 0 while the channel works. */
int qmp_get_error(const struct qmp *q);
/* The greeting's version, or NULL before the greeting arrived. */
const struct qmp_version *qmp_get_version(const struct qmp *q);
const char *qmp_get_label(const struct qmp *q);

/* One parsed QMP message, separate from the client so a fuzz target can feed
 * it arbitrary bytes. */
enum qmp_message_type {
	QMP_MESSAGE_GREETING, /* {"QMP": {"version": ..., "capabilities": [...]}} */
	QMP_MESSAGE_RETURN,   /* {"return": ..., "id": ...} */
	QMP_MESSAGE_ERROR,    /* {"error": {"class": ..., "desc": ...}, "id": ...} */
	QMP_MESSAGE_EVENT,    /* {"event": ..., "data": ..., "timestamp": {...}} */
};

struct qmp_message {
	enum qmp_message_type type;
	struct json_object *root; /* owns everything the pointers below point into */
	bool has_id;              /* "id" present and an integer (ours always are) */
	int64_t id;
	struct json_object *value; /* "return" value; event "data" (may be NULL) */
	const char *error_class;   /* QMP_MESSAGE_ERROR */
	const char *error_desc;    /* QMP_MESSAGE_ERROR */
	const char *event;         /* QMP_MESSAGE_EVENT */
	int64_t timestamp_usec;    /* QMP_MESSAGE_EVENT */
	struct qmp_version version; /* QMP_MESSAGE_GREETING */
};

/* Parses one message (one line without its "\r\n") of at most
 * QMP_MESSAGE_MAX bytes. Returns 0 and fills out (release with
 * qmp_message_done()), -EMSGSIZE if too long, or -EBADMSG if it is not valid
 * JSON or not a well-formed QMP message; out is then left empty. */
int qmp_parse_message(const char *buf, size_t len, struct qmp_message *out);
void qmp_message_done(struct qmp_message *m);

const char *qmp_message_type_to_string(enum qmp_message_type t);
