/* qmp: the QEMU Machine Protocol client. libvirt's qemu_monitor discipline
 * (greeting first, ids on every command, a cap on message size, an I/O error
 * that sticks) on a single-threaded libevent loop, with a deadline on every
 * wait instead of condition variables. */
#include "qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <event2/event.h>

#include "log.h"
#include "macro.h"

#define QMP_READ_CHUNK (64u * 1024)
/* A line is a message of up to QMP_MESSAGE_MAX bytes plus "\r\n". */
#define QMP_INPUT_MAX (QMP_MESSAGE_MAX + 2)
/* query-qmp-schema nests about six levels deep; json-c's default is 32. */
#define QMP_JSON_DEPTH_MAX 64
#define QMP_CMD_NAME_MAX 128
/* Debug logs show this much of each message. */
#define QMP_LOG_SNIPPET 1024

enum qmp_state {
	QMP_STATE_GREETING,     /* connected, waiting for {"QMP": ...} */
	QMP_STATE_CAPABILITIES, /* qmp_capabilities sent, waiting for its reply */
	QMP_STATE_READY,        /* commands flow */
	QMP_STATE_CLOSED,       /* fd closed; q->error says why */
	_QMP_STATE_MAX,
};

static const char *const qmp_state_table[_QMP_STATE_MAX] = {
	[QMP_STATE_GREETING] = "greeting",
	[QMP_STATE_CAPABILITIES] = "capabilities",
	[QMP_STATE_READY] = "ready",
	[QMP_STATE_CLOSED] = "closed",
};

/* A command waiting for its reply. */
struct qmp_pending {
	struct qmp_pending *prev, *next;
	struct qmp *q;
	int64_t id;
	char *cmd; /* for messages */
	int timeout_ms;
	qmp_reply_fn fn;
	void *userdata;
	struct event *timer; /* NULL without a deadline */
};

/* Bytes to write, with an fd riding on the first of them. */
struct qmp_out {
	struct qmp_out *next;
	char *data;
	size_t len, off;
	int fd;
};

struct qmp_queue {
	struct qmp_out *head, **tail;
};

struct qmp {
	unsigned n_ref;  /* the owner's, plus one per callback in progress */
	bool freed;      /* the owner called qmp_free() */
	struct event_base *base;
	int fd;
	char *label;
	enum qmp_state state;
	int error;       /* sticky, negative errno */

	struct qmp_callbacks cb;
	void *userdata;

	struct event *read_ev, *write_ev, *handshake_timer;
	int greeting_timeout_ms;

	char *in;        /* unparsed input */
	size_t in_len, in_size, in_scanned;

	struct qmp_queue out;  /* to write now */
	struct qmp_queue held; /* user commands issued before READY */

	struct qmp_pending *pending_head, *pending_tail;
	int64_t next_id;

	bool has_version;
	struct qmp_version version;
	char *version_package;

	bool resync; /* attached mid-stream: drop a torn first line */
	bool restart; /* a new greeting is expected (qmp_expect_restart) */
};

static void qmp_dispatch_line(struct qmp *q, const char *line, size_t len);

static struct qmp *qmp_ref(struct qmp *q) {
	q->n_ref++;
	return q;
}

static void qmp_queue_init(struct qmp_queue *qu) {
	qu->head = NULL;
	qu->tail = &qu->head;
}

static struct qmp_out *qmp_out_free(struct qmp_out *o) {
	if (!o)
		return NULL;
	safe_close(o->fd);
	free(o->data);
	free(o);
	return NULL;
}

static void qmp_queue_clear(struct qmp_queue *qu) {
	while (qu->head) {
		struct qmp_out *o = qu->head;
		qu->head = o->next;
		qmp_out_free(o);
	}
	qu->tail = &qu->head;
}

static void qmp_queue_append(struct qmp_queue *qu, struct qmp_out *o) {
	o->next = NULL;
	*qu->tail = o;
	qu->tail = &o->next;
}

static void qmp_pending_unlink(struct qmp *q, struct qmp_pending *p) {
	if (p->prev)
		p->prev->next = p->next;
	else
		q->pending_head = p->next;
	if (p->next)
		p->next->prev = p->prev;
	else
		q->pending_tail = p->prev;
	p->prev = p->next = NULL;
}

static struct qmp_pending *qmp_pending_free(struct qmp_pending *p) {
	if (!p)
		return NULL;
	if (p->timer)
		event_free(p->timer);
	free(p->cmd);
	free(p);
	return NULL;
}

/* Closes the fd and drops every queue, calling nothing back. */
static void qmp_disconnect(struct qmp *q) {
	if (q->read_ev)
		event_free(TAKE_PTR(q->read_ev));
	if (q->write_ev)
		event_free(TAKE_PTR(q->write_ev));
	if (q->handshake_timer)
		event_free(TAKE_PTR(q->handshake_timer));
	q->fd = safe_close(q->fd);
	qmp_queue_clear(&q->out);
	qmp_queue_clear(&q->held);
	free(q->in);
	q->in = NULL;
	q->in_len = q->in_size = q->in_scanned = 0;
}

static void qmp_destroy(struct qmp *q) {
	qmp_disconnect(q);
	while (q->pending_head) {
		struct qmp_pending *p = q->pending_head;
		qmp_pending_unlink(q, p);
		qmp_pending_free(p);
	}
	free(q->version_package);
	free(q->label);
	free(q);
}

static void qmp_unref(struct qmp *q) {
	if (--q->n_ref == 0)
		qmp_destroy(q);
}

static void qmp_set_state(struct qmp *q, enum qmp_state state) {
	if (q->state == state)
		return;
	log_vm(LOG_DEBUG, q->label, "QMP: %s -> %s", qmp_state_table[q->state],
	       qmp_state_table[state]);
	q->state = state;
}

/* Makes error sticky, closes the channel, fails every pending command with
 * the error, then tells the owner. Callers hold a reference. */
static void qmp_fail(struct qmp *q, int error, const char *why) {
	if (q->state == QMP_STATE_CLOSED)
		return;
	if (error >= 0)
		error = -EIO;

	log_vm_errno(error == -ECONNRESET ? LOG_DEBUG : LOG_WARNING, error, q->label,
		     "QMP channel closed: %s: %m", why);
	q->error = error;
	qmp_set_state(q, QMP_STATE_CLOSED);
	qmp_disconnect(q);

	qmp_ref(q);
	/* Pop one at a time: a callback may cancel or free others. */
	while (q->pending_head && !q->freed) {
		struct qmp_pending *p = q->pending_head;
		char desc[256];

		qmp_pending_unlink(q, p);
		snprintf(desc, sizeof(desc), "QMP command %s failed: %s (%s)", p->cmd, why,
			 strerror(-error));
		p->fn(q, NULL, &(struct qmp_error){ .error = error, .desc = desc }, p->userdata);
		qmp_pending_free(p);
	}
	if (!q->freed && q->cb.closed)
		q->cb.closed(q, error, q->userdata);
	qmp_unref(q);
}

static void qmp_on_handshake_timeout(evutil_socket_t fd, short what, void *arg) {
	struct qmp *q = arg;
	char why[128];

	snprintf(why, sizeof(why), "no %s within %d ms",
		 q->state == QMP_STATE_GREETING ? "greeting" : "reply to qmp_capabilities",
		 q->greeting_timeout_ms);
	qmp_ref(q);
	qmp_fail(q, -ETIMEDOUT, why);
	qmp_unref(q);
}

static void qmp_on_command_timeout(evutil_socket_t fd, short what, void *arg) {
	struct qmp_pending *p = arg;
	struct qmp *q = p->q;
	char desc[256];

	snprintf(desc, sizeof(desc), "QEMU did not answer %s within %d ms", p->cmd, p->timeout_ms);
	log_vm(LOG_WARNING, q->label, "%s", desc);

	qmp_ref(q);
	qmp_pending_unlink(q, p);
	p->fn(q, NULL, &(struct qmp_error){ .error = -ETIMEDOUT, .desc = desc }, p->userdata);
	qmp_pending_free(p);
	qmp_unref(q);
}

static void qmp_log_message(struct qmp *q, const char *dir, const char *s, size_t len) {
	if (log_get_max_level() < LOG_DEBUG)
		return;
	log_vm(LOG_DEBUG, q->label, "QMP %s %.*s%s", dir, (int)MIN(len, QMP_LOG_SNIPPET), s,
	       len > QMP_LOG_SNIPPET ? "..." : "");
}

/* ---- writing ---- */

static void qmp_on_write(evutil_socket_t fd, short what, void *arg) {
	struct qmp *q = qmp_ref(arg);

	while (q->out.head) {
		struct qmp_out *o = q->out.head;
		struct iovec iov = { .iov_base = o->data + o->off, .iov_len = o->len - o->off };
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof(int))];
		} control = {};
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		if (o->fd >= 0) {
			struct cmsghdr *c;

			mh.msg_control = control.buf;
			mh.msg_controllen = sizeof(control.buf);
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &o->fd, sizeof(int));
		}

		n = sendmsg(q->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			qmp_fail(q, negative_errno(), "write failed");
			break;
		}
		/* The fd went along with the first byte. */
		o->fd = safe_close(o->fd);
		o->off += (size_t)n;
		if (o->off < o->len)
			break;
		q->out.head = o->next;
		if (!q->out.head)
			q->out.tail = &q->out.head;
		qmp_out_free(o);
	}

	if (q->state != QMP_STATE_CLOSED && !q->out.head)
		event_del(q->write_ev);
	qmp_unref(q);
}

/* Queues a message. Never writes from here, so that no failure is reported
 * from inside qmp_command(): the write event does it on the next loop turn. */
static int qmp_send(struct qmp *q, bool hold, struct json_object *msg, int fd) {
	_cleanup_free_ struct qmp_out *o = NULL;
	const char *s;
	size_t len;

	s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN |
					      JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!s)
		return -ENOMEM;

	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->fd = -1;
	o->len = len + 1;
	o->data = malloc(o->len);
	if (!o->data)
		return -ENOMEM;
	memcpy(o->data, s, len);
	o->data[len] = '\n';

	if (fd >= 0) {
		o->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		if (o->fd < 0) {
			int r = negative_errno();
			free(o->data);
			return log_vm_errno(LOG_ERR, r, q->label, "Failed to duplicate fd %d: %m", fd);
		}
	}

	qmp_log_message(q, "->", o->data, len);
	if (hold) {
		qmp_queue_append(&q->held, TAKE_PTR(o));
	} else {
		qmp_queue_append(&q->out, TAKE_PTR(o));
		if (!event_pending(q->write_ev, EV_WRITE, NULL))
			event_add(q->write_ev, NULL);
	}
	return 0;
}

static bool qmp_command_name_valid(const char *cmd) {
	size_t n = strlen(cmd);

	if (n == 0 || n > QMP_CMD_NAME_MAX)
		return false;
	for (const char *c = cmd; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
		      (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
			return false;
	return true;
}

static int qmp_command_internal(struct qmp *q, bool handshake, const char *cmd,
				struct json_object *args, int fd, int timeout_ms, qmp_reply_fn fn,
				void *userdata) {
	_cleanup_json_ struct json_object *a = args, *msg = NULL;
	struct qmp_pending *p;
	int r;

	if (!q || !cmd || !fn || timeout_ms < 0 || !qmp_command_name_valid(cmd))
		return -EINVAL;
	if (a && !json_object_is_type(a, json_type_object))
		return -EINVAL;
	if (q->error < 0)
		return q->error;

	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->q = q;
	p->id = q->next_id++;
	p->fn = fn;
	p->userdata = userdata;
	p->timeout_ms = timeout_ms;
	p->cmd = strdup(cmd);
	msg = json_object_new_object();
	if (!p->cmd || !msg) {
		qmp_pending_free(p);
		return -ENOMEM;
	}
	json_object_object_add(msg, "execute", json_object_new_string(cmd));
	if (a)
		json_object_object_add(msg, "arguments", TAKE_PTR(a));
	json_object_object_add(msg, "id", json_object_new_int64(p->id));

	if (timeout_ms > 0) {
		struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };

		p->timer = evtimer_new(q->base, qmp_on_command_timeout, p);
		if (!p->timer || evtimer_add(p->timer, &tv) < 0) {
			qmp_pending_free(p);
			return -ENOMEM;
		}
	}

	r = qmp_send(q, !handshake && q->state != QMP_STATE_READY, msg, fd);
	if (r < 0) {
		qmp_pending_free(p);
		return r;
	}

	p->prev = q->pending_tail;
	if (q->pending_tail)
		q->pending_tail->next = p;
	else
		q->pending_head = p;
	q->pending_tail = p;
	return 0;
}

int qmp_command(struct qmp *q, const char *cmd, struct json_object *args, int timeout_ms,
		qmp_reply_fn fn, void *userdata) {
	return qmp_command_internal(q, false, cmd, args, -1, timeout_ms, fn, userdata);
}

int qmp_command_with_fd(struct qmp *q, const char *cmd, struct json_object *args, int fd,
			int timeout_ms, qmp_reply_fn fn, void *userdata) {
	if (fd < 0) {
		if (args)
			json_object_put(args);
		return -EBADF;
	}
	return qmp_command_internal(q, false, cmd, args, fd, timeout_ms, fn, userdata);
}

void qmp_reply_ignore(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
		      void *userdata) {
	if (err)
		log_vm(LOG_DEBUG, q->label, "QMP command failed: %s", err->desc);
}

unsigned qmp_cancel(struct qmp *q, void *userdata) {
	unsigned n = 0;

	if (!q)
		return 0;
	for (struct qmp_pending *p = q->pending_head, *next; p; p = next) {
		next = p->next;
		if (p->userdata != userdata)
			continue;
		qmp_pending_unlink(q, p);
		qmp_pending_free(p);
		n++;
	}
	return n;
}

/* ---- the handshake ---- */

static void qmp_on_capabilities(struct qmp *q, struct json_object *ret,
				const struct qmp_error *err, void *userdata) {
	if (q->state != QMP_STATE_CAPABILITIES)
		return; /* failing: qmp_fail() is in charge */
	if (err) {
		qmp_fail(q, err->error == -EREMOTEIO ? -EPROTO : err->error, err->desc);
		return;
	}

	if (q->handshake_timer)
		event_free(TAKE_PTR(q->handshake_timer));
	qmp_set_state(q, QMP_STATE_READY);

	/* Release what was queued meanwhile, in order. */
	if (q->held.head) {
		*q->out.tail = q->held.head;
		q->out.tail = q->held.tail;
		qmp_queue_init(&q->held);
		if (!event_pending(q->write_ev, EV_WRITE, NULL))
			event_add(q->write_ev, NULL);
	}

	if (q->cb.ready)
		q->cb.ready(q, q->userdata);
}

static void qmp_on_greeting(struct qmp *q, const struct qmp_message *m) {
	int r;

	free(q->version_package);
	q->version_package = strdup(m->version.package);
	if (!q->version_package) {
		qmp_fail(q, -ENOMEM, "out of memory");
		return;
	}
	q->version = m->version;
	q->version.package = q->version_package;
	q->has_version = true;
	log_vm(LOG_DEBUG, q->label, "QMP greeting from QEMU %u.%u.%u (%s)", q->version.major,
	       q->version.minor, q->version.micro, q->version.package);

	qmp_set_state(q, QMP_STATE_CAPABILITIES);
	r = qmp_command_internal(q, true, "qmp_capabilities", NULL, -1, 0, qmp_on_capabilities,
				 NULL);
	if (r < 0)
		qmp_fail(q, r, "cannot send qmp_capabilities");
}

void qmp_expect_restart(struct qmp *q, bool on) {
	if (q)
		q->restart = on;
}

/* The peer re-executed itself: whatever was asked of the process before is
 * never answered, and the new one wants the handshake. */
static void qmp_on_restart(struct qmp *q, const struct qmp_message *m) {
	q->restart = false;
	log_vm(LOG_INFO, q->label, "QMP: the peer greets again (it executed a new binary)");
	qmp_ref(q);
	while (q->pending_head && !q->freed) {
		struct qmp_pending *p = q->pending_head;
		char desc[256];

		qmp_pending_unlink(q, p);
		snprintf(desc, sizeof(desc), "QMP command %s was not answered before QEMU executed a "
			 "new binary", p->cmd);
		p->fn(q, NULL, &(struct qmp_error){ .error = -ERESTART, .desc = desc }, p->userdata);
		qmp_pending_free(p);
	}
	if (!q->freed && q->state == QMP_STATE_READY)
		qmp_on_greeting(q, m);
	qmp_unref(q);
}

/* ---- reading ---- */

static struct qmp_pending *qmp_pending_find(struct qmp *q, int64_t id) {
	for (struct qmp_pending *p = q->pending_head; p; p = p->next)
		if (p->id == id)
			return p;
	return NULL;
}

static void qmp_dispatch_line(struct qmp *q, const char *line, size_t len) {
	struct qmp_message m;
	struct qmp_pending *p;
	int r;

	qmp_log_message(q, "<-", line, len);
	r = qmp_parse_message(line, len, &m);
	if (r < 0 && q->resync) {
		/* The cprd before us may have read the start of this line. */
		log_vm(LOG_DEBUG, q->label, "QMP: dropped a partial line after re-attaching");
		q->resync = false;
		return;
	}
	q->resync = false;
	if (r < 0) {
		qmp_fail(q, r, r == -EMSGSIZE ? "message too large" : "invalid QMP message");
		return;
	}

	if (q->state == QMP_STATE_GREETING && m.type != QMP_MESSAGE_GREETING) {
		qmp_fail(q, -EPROTO, "expected the QMP greeting");
		goto out;
	}

	switch (m.type) {
	case QMP_MESSAGE_GREETING:
		if (q->state == QMP_STATE_READY && q->restart)
			qmp_on_restart(q, &m);
		else if (q->state != QMP_STATE_GREETING)
			qmp_fail(q, -EPROTO, "unexpected second greeting");
		else
			qmp_on_greeting(q, &m);
		break;

	case QMP_MESSAGE_EVENT:
		if (q->cb.event)
			q->cb.event(q, m.event, m.value, m.timestamp_usec, q->userdata);
		break;

	case QMP_MESSAGE_RETURN:
	case QMP_MESSAGE_ERROR:
		if (!m.has_id) {
			/* QEMU answers unparsable input this way; we never send any. */
			log_vm(LOG_WARNING, q->label, "QMP reply without id ignored: %s",
			       m.error_desc ? m.error_desc : "(return)");
			break;
		}
		p = qmp_pending_find(q, m.id);
		if (!p) {
			log_vm(LOG_DEBUG, q->label,
			       "QMP reply to command %" PRId64 " ignored (timed out or cancelled)", m.id);
			break;
		}
		qmp_pending_unlink(q, p);
		if (m.type == QMP_MESSAGE_RETURN)
			p->fn(q, m.value, NULL, p->userdata);
		else
			p->fn(q, NULL,
			      &(struct qmp_error){ .error = -EREMOTEIO,
						   .class = m.error_class,
						   .desc = m.error_desc },
			      p->userdata);
		qmp_pending_free(p);
		break;
	}
out:
	qmp_message_done(&m);
}

/* Reads once, then dispatches every complete line. */
static void qmp_on_read(evutil_socket_t fd, short what, void *arg) {
	struct qmp *q = qmp_ref(arg);
	size_t start = 0;
	ssize_t n;

	if (q->in_size - q->in_len < QMP_READ_CHUNK && q->in_size < QMP_INPUT_MAX) {
		size_t size = MIN(MAX(q->in_size * 2, q->in_len + QMP_READ_CHUNK), QMP_INPUT_MAX);
		char *in = realloc(q->in, size);
		if (!in) {
			qmp_fail(q, -ENOMEM, "out of memory");
			goto out;
		}
		q->in = in;
		q->in_size = size;
	}
	if (q->in_len == q->in_size) {
		qmp_fail(q, -EMSGSIZE, "message too large");
		goto out;
	}

	n = recv(q->fd, q->in + q->in_len, q->in_size - q->in_len, MSG_DONTWAIT);
	if (n < 0) {
		if (errno != EAGAIN && errno != EINTR)
			qmp_fail(q, errno == ECONNRESET ? -ECONNRESET : negative_errno(), "read failed");
		goto out;
	}
	if (n == 0) {
		qmp_fail(q, -ECONNRESET, "QEMU closed the connection");
		goto out;
	}
	q->in_len += (size_t)n;

	while (q->state != QMP_STATE_CLOSED) {
		char *nl = memchr(q->in + q->in_scanned, '\n', q->in_len - q->in_scanned);
		size_t len;

		if (!nl) {
			q->in_scanned = q->in_len;
			break;
		}
		len = (size_t)(nl - (q->in + start));
		if (len > 0 && q->in[start + len - 1] == '\r')
			len--;
		q->in_scanned = (size_t)(nl - q->in) + 1;
		if (len > 0)
			qmp_dispatch_line(q, q->in + start, len);
		start = q->in_scanned;
	}

	if (q->state != QMP_STATE_CLOSED && start > 0) {
		memmove(q->in, q->in + start, q->in_len - start);
		q->in_len -= start;
		q->in_scanned -= start;
	}
	if (q->state != QMP_STATE_CLOSED && q->in_len == QMP_INPUT_MAX)
		qmp_fail(q, -EMSGSIZE, "message too large");
out:
	qmp_unref(q);
}

/* ---- lifetime ---- */

int qmp_new(struct event_base *base, int fd, const struct qmp_callbacks *cb, void *userdata,
	    const char *label, struct qmp **ret) {
	_cleanup_close_ int sock = fd;
	struct qmp *q;
	int flags, r;

	if (!base || sock < 0 || !ret)
		return -EINVAL;

	flags = fcntl(sock, F_GETFL);
	if (flags < 0 || fcntl(sock, F_SETFL, flags | O_NONBLOCK) < 0)
		return log_error_errno(negative_errno(), "Failed to make QMP socket non-blocking: %m");

	q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->n_ref = 1;
	q->base = base;
	q->fd = TAKE_FD(sock);
	q->state = QMP_STATE_GREETING;
	q->userdata = userdata;
	q->greeting_timeout_ms = QMP_GREETING_TIMEOUT_MS;
	q->next_id = 1;
	if (cb)
		q->cb = *cb;
	qmp_queue_init(&q->out);
	qmp_queue_init(&q->held);

	q->label = strdup(label ? label : "qmp");
	q->read_ev = event_new(base, q->fd, EV_READ | EV_PERSIST, qmp_on_read, q);
	q->write_ev = event_new(base, q->fd, EV_WRITE | EV_PERSIST, qmp_on_write, q);
	q->handshake_timer = evtimer_new(base, qmp_on_handshake_timeout, q);
	if (!q->label || !q->read_ev || !q->write_ev || !q->handshake_timer) {
		r = -ENOMEM;
		goto fail;
	}
	if (event_add(q->read_ev, NULL) < 0) {
		r = -EIO;
		goto fail;
	}
	r = qmp_set_greeting_timeout(q, QMP_GREETING_TIMEOUT_MS);
	if (r < 0)
		goto fail;

	*ret = q;
	return 0;
fail:
	qmp_destroy(q);
	return r;
}

int qmp_new_attached(struct event_base *base, int fd, const struct qmp_callbacks *cb,
		     void *userdata, const char *label, struct qmp **ret) {
	struct qmp *q;
	int r = qmp_new(base, fd, cb, userdata, label, &q);
	if (r < 0)
		return r;
	/* The handshake happened with the cprd that held this fd before. */
	if (q->handshake_timer)
		event_free(TAKE_PTR(q->handshake_timer));
	q->state = QMP_STATE_READY;
	q->resync = true;
	/* Ids far from the ones the previous cprd used, so a late reply to
	 * one of its commands is never taken for one of ours. */
	q->next_id = ((int64_t)time(NULL) & 0xffffffff) << 20;
	*ret = q;
	return 0;
}

int qmp_set_greeting_timeout(struct qmp *q, int timeout_ms) {
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };

	if (!q || timeout_ms <= 0)
		return -EINVAL;
	if (!q->handshake_timer)
		return -EALREADY; /* the handshake is over */
	q->greeting_timeout_ms = timeout_ms;
	return evtimer_add(q->handshake_timer, &tv) < 0 ? -EIO : 0;
}

struct qmp *qmp_free(struct qmp *q) {
	if (!q)
		return NULL;
	if (q->freed)
		return NULL; /* freed twice from inside one callback: harmless */

	q->freed = true;
	if (q->state != QMP_STATE_CLOSED) {
		q->error = -ECANCELED;
		qmp_set_state(q, QMP_STATE_CLOSED);
	}
	qmp_disconnect(q);
	while (q->pending_head) {
		struct qmp_pending *p = q->pending_head;
		qmp_pending_unlink(q, p);
		qmp_pending_free(p);
	}
	qmp_unref(q);
	return NULL;
}

bool qmp_is_ready(const struct qmp *q) {
	return q && q->state == QMP_STATE_READY;
}

int qmp_get_error(const struct qmp *q) {
	return q ? q->error : -EINVAL;
}

const struct qmp_version *qmp_get_version(const struct qmp *q) {
	return q && q->has_version ? &q->version : NULL;
}

const char *qmp_get_label(const struct qmp *q) {
	return q ? q->label : NULL;
}

/* ---- parsing ---- */

static const char *const qmp_message_type_table[] = {
	[QMP_MESSAGE_GREETING] = "greeting",
	[QMP_MESSAGE_RETURN] = "return",
	[QMP_MESSAGE_ERROR] = "error",
	[QMP_MESSAGE_EVENT] = "event",
};

const char *qmp_message_type_to_string(enum qmp_message_type t) {
	if ((unsigned)t >= ELEMENTSOF(qmp_message_type_table))
		return NULL;
	return qmp_message_type_table[t];
}

void qmp_message_done(struct qmp_message *m) {
	if (m->root)
		json_object_put(m->root);
	*m = (struct qmp_message){};
}

static int qmp_get_uint(struct json_object *obj, const char *key, unsigned *ret) {
	struct json_object *v;
	int64_t i;

	if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int))
		return -EBADMSG;
	i = json_object_get_int64(v);
	if (i < 0 || i > 0xffff)
		return -EBADMSG;
	*ret = (unsigned)i;
	return 0;
}

static int qmp_parse_greeting(struct json_object *qmp, struct qmp_message *m) {
	struct json_object *version, *qemu, *package;

	if (!json_object_is_type(qmp, json_type_object) ||
	    !json_object_object_get_ex(qmp, "version", &version) ||
	    !json_object_is_type(version, json_type_object) ||
	    !json_object_object_get_ex(version, "qemu", &qemu) ||
	    !json_object_is_type(qemu, json_type_object))
		return -EBADMSG;
	if (qmp_get_uint(qemu, "major", &m->version.major) < 0 ||
	    qmp_get_uint(qemu, "minor", &m->version.minor) < 0 ||
	    qmp_get_uint(qemu, "micro", &m->version.micro) < 0)
		return -EBADMSG;
	m->version.package = "";
	if (json_object_object_get_ex(version, "package", &package)) {
		if (!json_object_is_type(package, json_type_string))
			return -EBADMSG;
		m->version.package = json_object_get_string(package);
	}
	m->value = qmp;
	return 0;
}

static int qmp_parse_event(struct json_object *root, struct json_object *event,
			   struct qmp_message *m) {
	struct json_object *ts, *sec, *usec, *data = NULL;
	int64_t s, us;

	/* A name with a NUL inside would be read as a shorter (or empty) one. */
	if (!json_object_is_type(event, json_type_string) || json_object_get_string_len(event) == 0 ||
	    strlen(json_object_get_string(event)) != (size_t)json_object_get_string_len(event))
		return -EBADMSG;
	m->event = json_object_get_string(event);

	if (json_object_object_get_ex(root, "data", &data) && data &&
	    !json_object_is_type(data, json_type_object))
		return -EBADMSG;
	m->value = data;

	/* The upgrade measures the guest pause from these: insist on them. */
	if (!json_object_object_get_ex(root, "timestamp", &ts) ||
	    !json_object_is_type(ts, json_type_object) ||
	    !json_object_object_get_ex(ts, "seconds", &sec) ||
	    !json_object_is_type(sec, json_type_int) ||
	    !json_object_object_get_ex(ts, "microseconds", &usec) ||
	    !json_object_is_type(usec, json_type_int))
		return -EBADMSG;
	s = json_object_get_int64(sec);
	us = json_object_get_int64(usec);
	if (s < 0 || s > INT64_MAX / 1000000 - 1 || us < 0 || us > 999999)
		return -EBADMSG;
	m->timestamp_usec = s * 1000000 + us;
	return 0;
}

int qmp_parse_message(const char *buf, size_t len, struct qmp_message *out) {
	struct qmp_message m = {};
	struct json_tokener *tok;
	struct json_object *v, *id, *cls, *desc;
	unsigned kinds = 0;
	size_t end;

	*out = (struct qmp_message){};
	if (len > QMP_MESSAGE_MAX)
		return -EMSGSIZE;
	if (!buf || len == 0 || len > INT_MAX || memchr(buf, 0, len))
		return -EBADMSG;

	tok = json_tokener_new_ex(QMP_JSON_DEPTH_MAX);
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	m.root = json_tokener_parse_ex(tok, buf, (int)len);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (!m.root)
		goto fail;
	for (; end < len; end++)
		if (!strchr(" \t\r\n", buf[end]))
			goto fail; /* trailing bytes after the object */
	if (!json_object_is_type(m.root, json_type_object))
		goto fail;

	if (json_object_object_get_ex(m.root, "id", &id) && json_object_is_type(id, json_type_int)) {
		m.has_id = true;
		m.id = json_object_get_int64(id);
	}

	if (json_object_object_get_ex(m.root, "QMP", &v)) {
		kinds++;
		m.type = QMP_MESSAGE_GREETING;
		if (qmp_parse_greeting(v, &m) < 0)
			goto fail;
	}
	if (json_object_object_get_ex(m.root, "return", &v)) {
		kinds++;
		m.type = QMP_MESSAGE_RETURN;
		m.value = v; /* any JSON value, null included */
	}
	if (json_object_object_get_ex(m.root, "error", &v)) {
		kinds++;
		m.type = QMP_MESSAGE_ERROR;
		if (!json_object_is_type(v, json_type_object) ||
		    !json_object_object_get_ex(v, "class", &cls) ||
		    !json_object_is_type(cls, json_type_string) ||
		    !json_object_object_get_ex(v, "desc", &desc) ||
		    !json_object_is_type(desc, json_type_string))
			goto fail;
		m.error_class = json_object_get_string(cls);
		m.error_desc = json_object_get_string(desc);
	}
	if (json_object_object_get_ex(m.root, "event", &v)) {
		kinds++;
		m.type = QMP_MESSAGE_EVENT;
		if (qmp_parse_event(m.root, v, &m) < 0)
			goto fail;
	}
	if (kinds != 1)
		goto fail;

	*out = m;
	return 0;
fail:
	qmp_message_done(&m);
	return -EBADMSG;
}
