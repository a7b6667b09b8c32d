/* The Varlink server: listening sockets, connections with their limits, and
 * dispatch of calls to the handlers of registered interfaces.
 *
 * Each connection runs one call at a time. Messages that arrive while a call
 * is under way wait in the input buffer, so replies go out in request order
 * and a client that pipelines gets its answers in sequence. */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "log.h"
#include "macro.h"
#include "server-internal.h"
#include "varlink.h"

#define VL_INTERFACES_MAX 16

struct vl_iface_reg {
	const struct vl_interface *iface;
	void *userdata;
};

struct vl_uid_count {
	uid_t uid;
	unsigned count;
};

struct vl_server {
	struct event_base *base;
	struct vl_server_info info;
	struct vl_server_limits limits;
	struct vl_iface_reg ifaces[VL_INTERFACES_MAX];
	size_t n_ifaces;
	struct evconnlistener *listeners[4];
	size_t n_listeners;
	char *socket_path; /* unlinked on free when we created it */
	struct vl_conn *conns;
	unsigned n_conns;
	struct vl_uid_count *uids;
	size_t n_uids;
};

struct vl_conn {
	struct vl_server *server;
	struct bufferevent *bev;
	struct ucred peer;
	gid_t groups[VL_PEER_GROUPS_MAX]; /* supplementary groups (SO_PEERGROUPS) */
	size_t n_groups;
	struct vl_call *current;      /* the call being handled, or NULL */
	struct event *process_ev;     /* deferred dispatch of the next message */
	struct event *message_timer;  /* a started message must finish in time */
	bool message_timer_armed;
	struct event *reply_timer;    /* queued replies must be taken in time */
	struct evbuffer_cb_entry *output_cb;
	size_t scanned;               /* input bytes known to hold no NUL */
	bool eof;                     /* the peer shut down its sending side */
	bool closing;                 /* flush what is queued, then close */
	struct vl_conn *prev, *next;
};

struct vl_call {
	unsigned refs;
	struct vl_conn *conn; /* NULL once the peer is gone or the call ended */
	char *method;
	bool more, oneway, done;
	vl_disconnect_fn on_disconnect;
	void *disconnect_userdata;
};

/* ---- uid accounting ------------------------------------------------------ */

static struct vl_uid_count *uid_slot(struct vl_server *s, uid_t uid, bool create) {
	for (size_t i = 0; i < s->n_uids; i++)
		if (s->uids[i].uid == uid)
			return &s->uids[i];
	if (!create)
		return NULL;
	struct vl_uid_count *n = realloc(s->uids, (s->n_uids + 1) * sizeof(*n));
	if (!n)
		return NULL;
	s->uids = n;
	s->uids[s->n_uids] = (struct vl_uid_count){.uid = uid};
	return &s->uids[s->n_uids++];
}

static void uid_release(struct vl_server *s, uid_t uid) {
	struct vl_uid_count *u = uid_slot(s, uid, false);
	if (!u)
		return;
	if (--u->count == 0) {
		*u = s->uids[s->n_uids - 1];
		s->n_uids--;
	}
}

/* ---- calls --------------------------------------------------------------- */

struct vl_call *vl_call_ref(struct vl_call *c) {
	c->refs++;
	return c;
}

void vl_call_unref(struct vl_call *c) {
	if (!c || --c->refs > 0)
		return;
	free(c->method);
	free(c);
}

const char *vl_call_method(const struct vl_call *c) { return c->method; }
bool vl_call_more(const struct vl_call *c) { return c->more; }
bool vl_call_oneway(const struct vl_call *c) { return c->oneway; }
bool vl_call_alive(const struct vl_call *c) { return c->conn && !c->done; }

const struct ucred *vl_call_peer(const struct vl_call *c) {
	static const struct ucred none = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
	return c->conn ? &c->conn->peer : &none;
}

size_t vl_call_peer_groups(const struct vl_call *c, const gid_t **ret) {
	*ret = c->conn ? c->conn->groups : NULL;
	return c->conn ? c->conn->n_groups : 0;
}

void vl_call_on_disconnect(struct vl_call *c, vl_disconnect_fn fn, void *userdata) {
	c->on_disconnect = fn;
	c->disconnect_userdata = userdata;
}

static void conn_free(struct vl_conn *conn);
static void conn_schedule(struct vl_conn *conn);

static int conn_send(struct vl_conn *conn, struct json_object *msg) {
	size_t len;
	const char *s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN, &len);
	if (!s)
		return -ENOMEM;
	struct evbuffer *out = bufferevent_get_output(conn->bev);
	if (evbuffer_get_length(out) + len + 1 > VL_OUTPUT_MAX) {
		log_warning("varlink: closing connection of pid %d uid %u: it does not read its "
			    "replies (%zu bytes queued)",
			    (int)conn->peer.pid, (unsigned)conn->peer.uid, evbuffer_get_length(out));
		return -ENOBUFS;
	}
	if (evbuffer_add(out, s, len + 1) < 0) /* the NUL terminator goes too */
		return -ENOMEM;
	return 0;
}

/* Ends a call: the connection moves on to its next message. */
static void call_finish(struct vl_call *c) {
	struct vl_conn *conn = c->conn;
	c->done = true;
	c->conn = NULL;
	if (conn && conn->current == c) {
		conn->current = NULL;
		vl_call_unref(c); /* the connection's reference */
		conn_schedule(conn);
	}
}

static int call_send(struct vl_call *c, struct json_object *params, const char *error,
		     bool continues) {
	_cleanup_json_ struct json_object *p = params;
	if (c->done)
		return -EALREADY;
	if (!c->conn)
		return -ENOTCONN;
	if (continues && !c->more)
		return -EINVAL;

	if (c->oneway) { /* nobody listens: drop it, but the call still ends */
		if (!continues)
			call_finish(c);
		return 0;
	}

	_cleanup_json_ struct json_object *msg = json_object_new_object();
	if (!msg)
		return -ENOMEM;
	if (error)
		json_object_object_add(msg, "error", json_object_new_string(error));
	json_object_object_add(msg, "parameters", p ? TAKE_PTR(p) : json_object_new_object());
	if (continues)
		json_object_object_add(msg, "continues", json_object_new_boolean(true));

	struct vl_conn *conn = c->conn;
	int r = conn_send(conn, msg);
	if (r < 0) {
		conn_free(conn); /* also ends this call and tells its owner */
		return r;
	}
	if (!continues)
		call_finish(c);
	return 0;
}

int vl_call_reply(struct vl_call *c, struct json_object *params) {
	return call_send(c, params, NULL, false);
}

int vl_call_notify(struct vl_call *c, struct json_object *params) {
	return call_send(c, params, NULL, true);
}

int vl_call_error(struct vl_call *c, const char *error, struct json_object *params) {
	return call_send(c, params, error, false);
}

int vl_call_error_invalid_parameter(struct vl_call *c, const char *parameter) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "parameter", json_object_new_string(parameter));
	return vl_call_error(c, VL_ERROR_INVALID_PARAMETER, p);
}

/* ---- dispatch ------------------------------------------------------------ */

static const struct vl_iface_reg *find_interface(struct vl_server *s, const char *name,
						 size_t len) {
	for (size_t i = 0; i < s->n_ifaces; i++)
		if (strlen(s->ifaces[i].iface->name) == len &&
		    memcmp(s->ifaces[i].iface->name, name, len) == 0)
			return &s->ifaces[i];
	return NULL;
}

static int error_with(struct vl_call *c, const char *error, const char *key, const char *value) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, key, json_object_new_string(value));
	return vl_call_error(c, error, p);
}

static bool get_flag(struct json_object *msg, const char *key, bool *ret) {
	struct json_object *v;
	*ret = false;
	if (!json_object_object_get_ex(msg, key, &v) || !v)
		return true;
	if (!json_object_is_type(v, json_type_boolean))
		return false;
	*ret = json_object_get_boolean(v);
	return true;
}

/* Handles one parsed message. Returns -EBADMSG for a protocol violation,
 * which closes the connection. */
/* The method a call names, and its interface's userdata; NULL when it
 * replied with why not (no such interface or method, or not callable as
 * the call asks). */
static const struct vl_method *call_find_method(struct vl_call *c, const char *method,
						void **userdata) {
	const char *dot = strrchr(method, '.');
	if (!dot || dot == method || dot[1] == '\0')
		return error_with(c, VL_ERROR_METHOD_NOT_FOUND, "method", method), NULL;

	const struct vl_iface_reg *reg = find_interface(c->conn->server, method, (size_t)(dot - method));
	if (!reg) {
		_cleanup_free_ char *iname = strndup(method, (size_t)(dot - method));
		return error_with(c, VL_ERROR_INTERFACE_NOT_FOUND, "interface", iname ? iname : ""),
		       NULL;
	}
	const struct vl_method *vm = NULL;
	for (const struct vl_method *i = reg->iface->methods; i->name; i++)
		if (streq(i->name, dot + 1)) {
			vm = i;
			break;
		}
	if (!vm)
		return error_with(c, VL_ERROR_METHOD_NOT_FOUND, "method", method), NULL;
	if (!vm->fn)
		return error_with(c, VL_ERROR_METHOD_NOT_IMPLEMENTED, "method", method), NULL;
	if ((vm->flags & VL_METHOD_REQUIRES_MORE) && !c->more)
		return vl_call_error(c, VL_ERROR_EXPECTED_MORE, NULL), NULL;
	*userdata = reg->userdata;
	return vm;
}

/* The handler failed without saying how: the server's own error for that
 * (Varlink defines none), with the errno as a sentence. */
static void call_fail(struct vl_call *c, int error) {
	const struct vl_server *s = c->conn->server;
	log_error_errno(error, "varlink: %s failed: %m", c->method);
	struct json_object *p = json_object_new_object();
	char reason[256];
	snprintf(reason, sizeof(reason), "%s failed: %s", c->method, strerror(-error));
	json_object_object_add(p, "reason", json_object_new_string(reason));
	json_object_object_add(p, "errno", json_object_new_int(-error));
	vl_call_error(c, s->info.internal_error ? s->info.internal_error : VL_ERROR_INTERNAL, p);
}

static int conn_dispatch(struct vl_conn *conn, struct json_object *msg) {
	struct json_object *m, *params = NULL;

	if (!json_object_object_get_ex(msg, "method", &m) || !json_object_is_type(m, json_type_string))
		return -EBADMSG;
	const char *method = json_object_get_string(m);
	size_t mlen = (size_t)json_object_get_string_len(m);
	if (mlen == 0 || strlen(method) != mlen) /* a NUL inside the name */
		return -EBADMSG;

	struct vl_call *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->refs = 1; /* the connection's */
	c->conn = conn;
	c->method = strdup(method);
	if (!c->method) {
		free(c);
		return -ENOMEM;
	}
	conn->current = c;
	/* Keep our own reference while the handler runs: it may end the call
	 * or even the connection. */
	_cleanup_(vl_call_unrefp) _unused_ struct vl_call *hold = vl_call_ref(c);

	bool more, oneway, upgrade;
	if (!get_flag(msg, "more", &more))
		return vl_call_error_invalid_parameter(c, "more"), 0;
	if (!get_flag(msg, "oneway", &oneway))
		return vl_call_error_invalid_parameter(c, "oneway"), 0;
	if (!get_flag(msg, "upgrade", &upgrade))
		return vl_call_error_invalid_parameter(c, "upgrade"), 0;
	if (more && oneway) /* nothing could carry the replies */
		return vl_call_error_invalid_parameter(c, "oneway"), 0;
	if (upgrade) /* no method here switches protocols */
		return vl_call_error_invalid_parameter(c, "upgrade"), 0;
	c->more = more;
	/* From here on a oneway call gets no reply, errors included: the client
	 * would take one for the answer to its next call. */
	c->oneway = oneway;

	if (json_object_object_get_ex(msg, "parameters", &params) && params &&
	    !json_object_is_type(params, json_type_object))
		return vl_call_error_invalid_parameter(c, "parameters"), 0;

	void *userdata = NULL;
	const struct vl_method *vm = call_find_method(c, method, &userdata);
	if (!vm)
		return 0;

	const char *bad = NULL;
	if (vl_params_check(params, vm->params, &bad) < 0)
		return vl_call_error_invalid_parameter(c, bad), 0;

	/* Replies to a oneway call are dropped; the call ends when the handler
	 * returns unless it keeps a reference. */
	int r = vm->fn(c, params, userdata);
	if (r < 0 && vl_call_alive(c))
		call_fail(c, r);
	if (oneway && vl_call_alive(c) && c->refs == 2) /* nobody kept it */
		call_finish(c);
	return 0;
}

/* Stops reading at once; the replies to the calls before go out first, so a
 * client that pipelined still gets them. */
static void conn_close_now(struct vl_conn *conn, const char *why) {
	if (why)
		log_info("varlink: closing connection of pid %d uid %u: %s", (int)conn->peer.pid,
			 (unsigned)conn->peer.uid, why);
	if (conn->current || evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0)
		return conn_free(conn);
	conn->closing = true; /* on_write frees it once the output drained */
	bufferevent_disable(conn->bev, EV_READ);
	struct evbuffer *in = bufferevent_get_input(conn->bev);
	evbuffer_drain(in, evbuffer_get_length(in));
	if (conn->message_timer_armed) {
		evtimer_del(conn->message_timer);
		conn->message_timer_armed = false;
	}
}

/* Takes the next complete message out of the input buffer and handles it,
 * unless a call is under way or the peer is not reading our replies. */
static void conn_process(struct vl_conn *conn) {
	struct vl_server *s = conn->server;
	struct evbuffer *in = bufferevent_get_input(conn->bev);
	struct evbuffer *out = bufferevent_get_output(conn->bev);

	if (conn->current || conn->closing)
		return;
	if (evbuffer_get_length(out) > VL_OUTPUT_HIGH) {
		bufferevent_disable(conn->bev, EV_READ); /* resumes in on_write */
		return;
	}

	size_t len = evbuffer_get_length(in);
	/* Search only what arrived since the last look: rescanning a large
	 * partial message on every read would cost quadratic time. */
	struct evbuffer_ptr from;
	evbuffer_ptr_set(in, &from, MIN(conn->scanned, len), EVBUFFER_PTR_SET);
	struct evbuffer_ptr nul = evbuffer_search(in, "\0", 1, &from);
	if (nul.pos < 0) {
		conn->scanned = len;
		if (conn->eof) {
			/* The peer sent all it will; answer what was complete, then
			 * close once the replies are out. A trailing partial message
			 * is dropped. */
			if (evbuffer_get_length(out) == 0)
				return conn_free(conn);
			conn->closing = true;
			return;
		}
		if (len > s->limits.message_max)
			return conn_close_now(conn, "message larger than the limit");
		if (len > 0 && !conn->message_timer_armed) {
			struct timeval tv = {s->limits.message_timeout_ms / 1000,
					     (s->limits.message_timeout_ms % 1000) * 1000};
			evtimer_add(conn->message_timer, &tv);
			conn->message_timer_armed = true;
		} else if (len == 0 && conn->message_timer_armed) {
			evtimer_del(conn->message_timer);
			conn->message_timer_armed = false;
		}
		bufferevent_enable(conn->bev, EV_READ);
		return;
	}
	if ((size_t)nul.pos > s->limits.message_max)
		return conn_close_now(conn, "message larger than the limit");
	if (conn->message_timer_armed) {
		evtimer_del(conn->message_timer);
		conn->message_timer_armed = false;
	}

	size_t mlen = (size_t)nul.pos;
	char *buf = malloc(mlen + 1);
	if (!buf)
		return conn_close_now(conn, "out of memory");
	evbuffer_remove(in, buf, mlen + 1);
	conn->scanned = 0;

	_cleanup_json_ struct json_object *msg = NULL;
	int r = vl_message_parse(buf, mlen, &msg);
	free(buf);
	if (r < 0)
		return conn_close_now(conn, "received a message that is not a JSON object");

	r = conn_dispatch(conn, msg);
	if (r == -EBADMSG)
		return conn_close_now(conn, "received a call without a valid method name");
	if (r < 0)
		return conn_close_now(conn, strerror(-r));
	/* conn may be gone now; conn_dispatch's calls re-schedule through
	 * call_finish when they end. */
}

static void on_process(evutil_socket_t fd, short what, void *userdata) {
	conn_process(userdata);
}

static void conn_schedule(struct vl_conn *conn) {
	event_active(conn->process_ev, EV_TIMEOUT, 0);
}

static void on_read(struct bufferevent *bev, void *userdata) {
	conn_process(userdata);
}

static void on_write(struct bufferevent *bev, void *userdata) {
	struct vl_conn *conn = userdata;
	if (conn->closing && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		return conn_free(conn);
	conn_schedule(conn); /* the output drained; maybe we paused */
}

static void on_event(struct bufferevent *bev, short what, void *userdata) {
	struct vl_conn *conn = userdata;
	/* A streaming call cannot end on its own, so EOF during one means the
	 * subscriber left. */
	bool streaming = conn->current && conn->current->more;
	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !streaming) {
		/* Half-closed: the peer may still read the replies to what it sent. */
		conn->eof = true;
		if (conn->message_timer_armed) {
			evtimer_del(conn->message_timer);
			conn->message_timer_armed = false;
		}
		conn_schedule(conn);
		return;
	}
	log_debug("varlink: connection of pid %d: %s", (int)conn->peer.pid,
		  strerror(EVUTIL_SOCKET_ERROR()));
	conn_free(conn); /* whatever is half-sent is lost anyway */
}

static void on_message_timeout(evutil_socket_t fd, short what, void *userdata) {
	struct vl_conn *conn = userdata;
	conn->message_timer_armed = false;
	conn_close_now(conn, "a started message did not finish in time");
}

/* While replies are queued the peer must take some of them within the
 * message timeout, or it is dropped: a client that stops reading would
 * otherwise hold its queued replies (and a stream's handler) for ever. The
 * bufferevent's own write timeout cannot do this: a handler that queues a
 * reply while that timeout is due cancels it. */
static void on_output(struct evbuffer *out, const struct evbuffer_cb_info *info,
		      void *userdata) {
	struct vl_conn *conn = userdata;
	int ms = conn->server->limits.message_timeout_ms;
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

	if (evbuffer_get_length(out) == 0)
		evtimer_del(conn->reply_timer);
	else if (info->n_deleted > 0 || !evtimer_pending(conn->reply_timer, NULL))
		evtimer_add(conn->reply_timer, &tv);
}

static void on_reply_timeout(evutil_socket_t fd, short what, void *userdata) {
	struct vl_conn *conn = userdata;
	log_info("varlink: closing connection of pid %d uid %u: it did not read its replies "
		 "in time", (int)conn->peer.pid, (unsigned)conn->peer.uid);
	conn_free(conn);
}

static void conn_free(struct vl_conn *conn) {
	struct vl_server *s = conn->server;
	struct vl_call *c = conn->current;

	if (c) {
		conn->current = NULL;
		c->conn = NULL;
		if (c->on_disconnect && !c->done)
			c->on_disconnect(c, c->disconnect_userdata);
		vl_call_unref(c);
	}
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		s->conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	s->n_conns--;
	uid_release(s, conn->peer.uid);

	evbuffer_remove_cb_entry(bufferevent_get_output(conn->bev), conn->output_cb);
	bufferevent_free(conn->bev);
	event_free(conn->process_ev);
	event_free(conn->message_timer);
	event_free(conn->reply_timer);
	free(conn);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int socklen, void *userdata) {
	struct vl_server *s = userdata;
	struct ucred peer = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
	socklen_t sl = sizeof(peer);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &sl) < 0) {
		log_warning_errno(errno, "varlink: SO_PEERCRED failed: %m");
		close(fd);
		return;
	}
	if (s->n_conns >= s->limits.connections_max) {
		log_warning("varlink: refusing connection of pid %d uid %u: %u connections open",
			    (int)peer.pid, (unsigned)peer.uid, s->n_conns);
		close(fd);
		return;
	}
	struct vl_uid_count *u = uid_slot(s, peer.uid, true);
	if (!u || u->count >= s->limits.connections_per_uid_max) {
		log_warning("varlink: refusing connection of pid %d uid %u: %u connections of "
			    "that uid open",
			    (int)peer.pid, (unsigned)peer.uid, u ? u->count : 0);
		close(fd);
		return;
	}

	struct vl_conn *conn = calloc(1, sizeof(*conn));
	if (!conn) {
		close(fd);
		return;
	}
	conn->server = s;
	conn->peer = peer;
	socklen_t gl = sizeof(conn->groups);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, conn->groups, &gl) == 0)
		conn->n_groups = gl / sizeof(gid_t);
	conn->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	conn->process_ev = event_new(s->base, -1, 0, on_process, conn);
	conn->message_timer = evtimer_new(s->base, on_message_timeout, conn);
	conn->reply_timer = evtimer_new(s->base, on_reply_timeout, conn);
	if (conn->bev)
		conn->output_cb = evbuffer_add_cb(bufferevent_get_output(conn->bev), on_output, conn);
	if (!conn->bev || !conn->process_ev || !conn->message_timer || !conn->reply_timer ||
	    !conn->output_cb) {
		if (conn->bev)
			bufferevent_free(conn->bev);
		else
			close(fd);
		if (conn->process_ev)
			event_free(conn->process_ev);
		if (conn->message_timer)
			event_free(conn->message_timer);
		if (conn->reply_timer)
			event_free(conn->reply_timer);
		free(conn);
		return;
	}
	u->count++;
	s->n_conns++;
	conn->next = s->conns;
	if (s->conns)
		s->conns->prev = conn;
	s->conns = conn;

	/* Stop reading once one maximal message is buffered; conn_process
	 * then either finds its NUL or closes the connection. */
	bufferevent_setwatermark(conn->bev, EV_READ, 0, s->limits.message_max + 1);
	bufferevent_setcb(conn->bev, on_read, on_write, on_event, conn);
	bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
}

/* ---- org.varlink.service ------------------------------------------------- */

static const char *str_or_empty(const char *s) { return s ? s : ""; }

static int method_get_info(struct vl_call *call, struct json_object *params, void *userdata) {
	struct vl_server *s = userdata;
	const struct vl_server_info *info = &s->info;
	struct json_object *r = json_object_new_object();
	struct json_object *list = json_object_new_array();

	json_object_object_add(r, "vendor", json_object_new_string(str_or_empty(info->vendor)));
	json_object_object_add(r, "product", json_object_new_string(str_or_empty(info->product)));
	json_object_object_add(r, "version", json_object_new_string(str_or_empty(info->version)));
	json_object_object_add(r, "url", json_object_new_string(str_or_empty(info->url)));
	for (size_t i = 0; i < s->n_ifaces; i++)
		json_object_array_add(list, json_object_new_string(s->ifaces[i].iface->name));
	json_object_object_add(r, "interfaces", list);
	return vl_call_reply(call, r);
}

static int method_get_interface_description(struct vl_call *call, struct json_object *params,
					    void *userdata) {
	struct vl_server *s = userdata;
	struct json_object *v;
	json_object_object_get_ex(params, "interface", &v);
	const char *name = json_object_get_string(v);

	for (size_t i = 0; i < s->n_ifaces; i++) {
		const struct vl_interface *iface = s->ifaces[i].iface;
		if (streq(iface->name, name)) {
			struct json_object *r = json_object_new_object();
			json_object_object_add(r, "description",
					       json_object_new_string(iface->description));
			return vl_call_reply(call, r);
		}
	}
	struct json_object *e = json_object_new_object();
	json_object_object_add(e, "interface", json_object_new_string(name));
	return vl_call_error(call, VL_ERROR_INTERFACE_NOT_FOUND, e);
}

static const struct vl_param params_get_interface_description[] = {
	{"interface", VL_STRING, VL_MANDATORY},
	{},
};

static const struct vl_method service_methods[] = {
	{.name = "GetInfo", .fn = method_get_info},
	{.name = "GetInterfaceDescription", .fn = method_get_interface_description,
	 .params = params_get_interface_description},
	{},
};

static const struct vl_interface service_interface = {
	.name = "org.varlink.service",
	.description = vl_service_description,
	.methods = service_methods,
};

/* ---- server -------------------------------------------------------------- */

int vl_server_new(struct event_base *base, const struct vl_server_info *info,
		  struct vl_server **ret) {
	struct vl_server *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->base = base;
	s->info = *info;
	vl_server_set_limits(s, NULL);
	int r = vl_server_add_interface(s, &service_interface, s);
	if (r < 0) {
		free(s);
		return r;
	}
	*ret = s;
	return 0;
}

void vl_server_set_limits(struct vl_server *s, const struct vl_server_limits *l) {
	struct vl_server_limits d = {
		.connections_max = VL_CONNECTIONS_MAX,
		.connections_per_uid_max = VL_CONNECTIONS_PER_UID_MAX,
		.message_timeout_ms = VL_MESSAGE_TIMEOUT_MS,
		.message_max = VL_MESSAGE_MAX,
	};
	if (l) {
		if (l->connections_max)
			d.connections_max = l->connections_max;
		if (l->connections_per_uid_max)
			d.connections_per_uid_max = l->connections_per_uid_max;
		if (l->message_timeout_ms)
			d.message_timeout_ms = l->message_timeout_ms;
		if (l->message_max && l->message_max <= VL_MESSAGE_MAX)
			d.message_max = l->message_max;
	}
	s->limits = d;
}

void vl_server_free(struct vl_server *s) {
	if (!s)
		return;
	while (s->conns)
		conn_free(s->conns);
	for (size_t i = 0; i < s->n_listeners; i++)
		evconnlistener_free(s->listeners[i]);
	if (s->socket_path)
		unlink(s->socket_path);
	free(s->socket_path);
	free(s->uids);
	free(s);
}

int vl_server_add_interface(struct vl_server *s, const struct vl_interface *iface,
			    void *userdata) {
	if (s->n_ifaces >= VL_INTERFACES_MAX)
		return -ENOSPC;
	if (find_interface(s, iface->name, strlen(iface->name)))
		return -EEXIST;
	s->ifaces[s->n_ifaces++] = (struct vl_iface_reg){iface, userdata};
	return 0;
}

unsigned vl_server_connections(const struct vl_server *s) { return s->n_conns; }

int vl_server_get_listen_fd(const struct vl_server *s, size_t i) {
	return i < s->n_listeners ? evconnlistener_get_fd(s->listeners[i]) : -1;
}

int vl_server_listen_fd(struct vl_server *s, int fd) {
	if (s->n_listeners >= ELEMENTSOF(s->listeners))
		return -ENOSPC;
	if (evutil_make_socket_nonblocking(fd) < 0 || evutil_make_socket_closeonexec(fd) < 0)
		return -errno;
	struct evconnlistener *l = evconnlistener_new(s->base, on_accept, s,
						      LEV_OPT_CLOSE_ON_FREE, -1, fd);
	if (!l)
		return -ENOMEM;
	s->listeners[s->n_listeners++] = l;
	return 0;
}

int vl_server_listen_path(struct vl_server *s, const char *path, mode_t mode) {
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);

	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return log_error_errno(-EEXIST, "varlink: %s exists and is not a socket", path);
		/* A socket file: stale unless a server still answers on it. */
		_cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return log_error_errno(-EADDRINUSE, "varlink: another server listens on %s", path);
		if (unlink(path) < 0 && errno != ENOENT)
			return log_error_errno(errno, "varlink: cannot remove stale %s: %m", path);
	}

	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* umask so the socket is never more open than asked, even briefly. */
	mode_t old = umask(~mode & 0777);
	int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (r < 0)
		return log_error_errno(errno, "varlink: cannot bind %s: %m", path);
	if (chmod(path, mode) < 0 || listen(fd, SOMAXCONN) < 0) {
		r = -errno;
		unlink(path);
		return log_error_errno(r, "varlink: cannot listen on %s: %m", path);
	}
	r = vl_server_listen_fd(s, fd);
	if (r < 0) {
		unlink(path);
		return r;
	}
	TAKE_FD(fd);
	free(s->socket_path);
	s->socket_path = strdup(path);
	return 0;
}
