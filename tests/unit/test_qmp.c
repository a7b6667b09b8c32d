/* Check suite for daemon/qmp.c: the message parser, a scripted fake QMP peer
 * on a socketpair for the faults a real QEMU cannot be made to produce, and a
 * round trip with the real QEMU 10.0 (skipped when it is not installed). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "log.h"
#include "macro.h"
#include "qmp.h"

#define QEMU_10 "/usr/bin/qemu-system-x86_64"

static struct event_base *base;

/* ---- running the loop ---- */

#include "loop.h"

/* Turns the loop for a while, for "nothing happens" checks. */
static void run_for(int ms) {
	(void)RUN_UNTIL(false, ms);
}

/* ---- the fake peer ---- */

#define FAKE_MAX_MSGS 64

struct fake {
	struct bufferevent *bev;
	struct json_object *msgs[FAKE_MAX_MSGS]; /* what the client sent, in order */
	int n_msgs;
	bool auto_capabilities; /* answer qmp_capabilities by itself */
};

static struct fake fake;

static int64_t msg_id(struct json_object *m) {
	struct json_object *id;
	ck_assert(json_object_object_get_ex(m, "id", &id));
	ck_assert(json_object_is_type(id, json_type_int));
	return json_object_get_int64(id);
}

static const char *msg_execute(struct json_object *m) {
	struct json_object *v;
	ck_assert(json_object_object_get_ex(m, "execute", &v));
	return json_object_get_string(v);
}

static void fake_send(const char *fmt, ...) _printf_(1, 2);
static void fake_send(const char *fmt, ...) {
	va_list ap;

	va_start(ap, fmt);
	evbuffer_add_vprintf(bufferevent_get_output(fake.bev), fmt, ap);
	va_end(ap);
	evbuffer_add(bufferevent_get_output(fake.bev), "\r\n", 2);
}

static void fake_greet(void) {
	fake_send("{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, "
		  "\"package\": \"Fake 10.0.2\"}, \"capabilities\": [\"oob\"]}}");
}

static void fake_on_read(struct bufferevent *bev, void *arg) {
	char *line;
	size_t len;

	while ((line = evbuffer_readln(bufferevent_get_input(bev), &len, EVBUFFER_EOL_LF))) {
		struct json_object *m = json_tokener_parse(line);

		ck_assert_msg(m, "client sent invalid JSON: %s", line);
		free(line);
		ck_assert_int_lt(fake.n_msgs, FAKE_MAX_MSGS);
		fake.msgs[fake.n_msgs++] = m;
		if (fake.auto_capabilities && streq(msg_execute(m), "qmp_capabilities"))
			fake_send("{\"return\": {}, \"id\": %lld}", (long long)msg_id(m));
	}
}

/* Returns the client's end; the peer lives on the loop. */
static int fake_start(bool auto_capabilities) {
	int sv[2];

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	evutil_make_socket_nonblocking(sv[1]);
	fake = (struct fake){ .auto_capabilities = auto_capabilities };
	fake.bev = bufferevent_socket_new(base, sv[1], BEV_OPT_CLOSE_ON_FREE);
	ck_assert_ptr_nonnull(fake.bev);
	bufferevent_setcb(fake.bev, fake_on_read, NULL, NULL, NULL);
	bufferevent_enable(fake.bev, EV_READ | EV_WRITE);
	return sv[0];
}

static void fake_close(void) {
	if (fake.bev)
		bufferevent_free(fake.bev);
	fake.bev = NULL;
}

/* ---- the client's owner ---- */

struct owner {
	int n_ready, n_closed, closed_error;
	int n_events;
	char event_name[64];
	int64_t event_ts;
	struct json_object *event_data;
	bool free_on_closed;
	struct qmp *q;
};

static struct owner owner;

static void on_ready(struct qmp *q, void *userdata) {
	ck_assert_ptr_eq(userdata, &owner);
	owner.n_ready++;
}

static void on_event(struct qmp *q, const char *name, struct json_object *data, int64_t ts,
		     void *userdata) {
	owner.n_events++;
	snprintf(owner.event_name, sizeof(owner.event_name), "%s", name);
	owner.event_ts = ts;
	json_object_put(owner.event_data);
	owner.event_data = data ? json_object_get(data) : NULL;
}

static void on_closed(struct qmp *q, int error, void *userdata) {
	owner.n_closed++;
	owner.closed_error = error;
	if (owner.free_on_closed)
		owner.q = qmp_free(owner.q);
}

static const struct qmp_callbacks callbacks = {
	.ready = on_ready,
	.event = on_event,
	.closed = on_closed,
};

/* One reply slot per command. */
struct reply {
	int n_calls;
	int error;
	char class[64], desc[256];
	struct json_object *ret;
	bool free_qmp; /* qmp_free() from inside the callback */
};

static void on_reply(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
		     void *userdata) {
	struct reply *r = userdata;

	r->n_calls++;
	if (err) {
		ck_assert_ptr_null(ret);
		ck_assert_int_lt(err->error, 0);
		ck_assert_ptr_nonnull(err->desc);
		r->error = err->error;
		snprintf(r->class, sizeof(r->class), "%s", err->class ? err->class : "");
		snprintf(r->desc, sizeof(r->desc), "%s", err->desc);
	} else {
		r->error = 0;
		r->ret = ret ? json_object_get(ret) : NULL;
	}
	if (r->free_qmp)
		owner.q = qmp_free(owner.q);
}

static void reply_done(struct reply *r) {
	json_object_put(r->ret);
	r->ret = NULL;
}

static void setup(void) {
	base = event_base_new();
	ck_assert_ptr_nonnull(base);
	owner = (struct owner){};
	signal(SIGPIPE, SIG_IGN);
}

static void teardown(void) {
	owner.q = qmp_free(owner.q);
	fake_close();
	for (int i = 0; i < fake.n_msgs; i++)
		json_object_put(fake.msgs[i]);
	fake = (struct fake){};
	json_object_put(owner.event_data);
	owner = (struct owner){};
	event_base_free(base);
	base = NULL;
}

static void connect_ready(void) {
	int fd = fake_start(true);

	ck_assert_int_eq(qmp_new(base, fd, &callbacks, &owner, "test", &owner.q), 0);
	fake_greet();
	ck_assert(RUN_UNTIL(owner.n_ready == 1, PATIENCE_MS));
	ck_assert(qmp_is_ready(owner.q));
}

/* ---- parser ---- */

static int parse(const char *s, struct qmp_message *m) {
	return qmp_parse_message(s, strlen(s), m);
}

START_TEST(test_parse_valid) {
	struct qmp_message m;

	ck_assert_int_eq(parse("{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, "
			       "\"major\": 7}, \"package\": \"Debian 1:7.2\"}, \"capabilities\": []}}",
			       &m), 0);
	ck_assert_int_eq(m.type, QMP_MESSAGE_GREETING);
	ck_assert_uint_eq(m.version.major, 7);
	ck_assert_uint_eq(m.version.minor, 2);
	ck_assert_uint_eq(m.version.micro, 22);
	ck_assert_str_eq(m.version.package, "Debian 1:7.2");
	qmp_message_done(&m);

	ck_assert_int_eq(parse("{\"return\": {\"status\": \"running\"}, \"id\": 42}", &m), 0);
	ck_assert_int_eq(m.type, QMP_MESSAGE_RETURN);
	ck_assert(m.has_id);
	ck_assert_int_eq(m.id, 42);
	ck_assert(json_object_is_type(m.value, json_type_object));
	qmp_message_done(&m);

	ck_assert_int_eq(parse("{\"return\": [], \"id\": \"str\"}", &m), 0);
	ck_assert(!m.has_id);
	qmp_message_done(&m);

	ck_assert_int_eq(parse("{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, "
			       "\"id\": 3}  ", &m), 0);
	ck_assert_int_eq(m.type, QMP_MESSAGE_ERROR);
	ck_assert_str_eq(m.error_class, "GenericError");
	ck_assert_str_eq(m.error_desc, "nope");
	qmp_message_done(&m);

	ck_assert_int_eq(parse("{\"timestamp\": {\"seconds\": 1795305325, \"microseconds\": 258341}, "
			       "\"event\": \"STOP\"}", &m), 0);
	ck_assert_int_eq(m.type, QMP_MESSAGE_EVENT);
	ck_assert_str_eq(m.event, "STOP");
	ck_assert_ptr_null(m.value);
	ck_assert_int_eq(m.timestamp_usec, 1795305325258341LL);
	qmp_message_done(&m);
}
END_TEST

START_TEST(test_parse_invalid) {
	static const char *const bad[] = {
		"",
		"not json",
		"[1, 2]",
		"\"string\"",
		"{\"return\": {}",                             /* incomplete */
		"{\"return\": {}} trailing",                   /* bytes after the object */
		"{\"return\": {}}{\"return\": {}}",            /* two objects on a line */
		"{\"id\": 1}",                                 /* none of the kinds */
		"{\"return\": {}, \"error\": {\"class\": \"a\", \"desc\": \"b\"}}",
		"{\"error\": \"GenericError\"}",
		"{\"error\": {\"class\": \"GenericError\"}}",  /* no desc */
		"{\"event\": \"STOP\"}",                       /* no timestamp */
		"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1}}",
		"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": -5, \"microseconds\": 0}}",
		"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 1000000}}",
		"{\"event\": 7, \"timestamp\": {\"seconds\": 1, \"microseconds\": 1}}",
		"{\"event\": \"X\", \"data\": 5, \"timestamp\": {\"seconds\": 1, \"microseconds\": 1}}",
		"{\"QMP\": {}}",
		"{\"QMP\": {\"version\": {\"qemu\": {\"major\": \"10\", \"minor\": 0, \"micro\": 0}}}}",
		"{\"return\": {\"a\": 1,}}",                     /* not strict JSON */
	};
	struct qmp_message m;

	for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
		ck_assert_msg(parse(bad[i], &m) == -EBADMSG, "accepted: %s", bad[i]);
		ck_assert_ptr_null(m.root);
	}
	ck_assert_int_eq(qmp_parse_message("{\"return\": {}}\0x", 16, &m), -EBADMSG);

	/* Deeper than any QMP message is cut off, not parsed recursively. */
	{
		char deep[2 * 200 + 32];
		size_t o = (size_t)sprintf(deep, "{\"return\": ");
		for (int i = 0; i < 200; i++)
			deep[o++] = '[';
		for (int i = 0; i < 200; i++)
			deep[o++] = ']';
		deep[o++] = '}';
		deep[o] = 0;
		ck_assert_int_eq(parse(deep, &m), -EBADMSG);
	}
	ck_assert_int_eq(qmp_parse_message("x", QMP_MESSAGE_MAX + 1, &m), -EMSGSIZE);
}
END_TEST

/* ---- protocol against the fake peer ---- */

START_TEST(test_handshake_and_queueing) {
	struct reply r = {};
	int fd = fake_start(false);
	const struct qmp_version *v;

	ck_assert_int_eq(qmp_new(base, fd, &callbacks, &owner, "test", &owner.q), 0);
	ck_assert_ptr_null(qmp_get_version(owner.q));

	/* Issued before the greeting: held back until the handshake is done. */
	ck_assert_int_eq(qmp_command(owner.q, "query-status", NULL, PATIENCE_MS, on_reply, &r), 0);
	run_for(50);
	ck_assert_int_eq(fake.n_msgs, 0);

	fake_greet();
	ck_assert(RUN_UNTIL(fake.n_msgs == 1, PATIENCE_MS));
	ck_assert_str_eq(msg_execute(fake.msgs[0]), "qmp_capabilities");
	run_for(50);
	ck_assert_int_eq(fake.n_msgs, 1); /* still held: capabilities not answered */
	ck_assert_int_eq(owner.n_ready, 0);

	fake_send("{\"return\": {}, \"id\": %lld}", (long long)msg_id(fake.msgs[0]));
	ck_assert(RUN_UNTIL(fake.n_msgs == 2, PATIENCE_MS));
	ck_assert_int_eq(owner.n_ready, 1);
	ck_assert_str_eq(msg_execute(fake.msgs[1]), "query-status");
	ck_assert_int_ne(msg_id(fake.msgs[0]), msg_id(fake.msgs[1]));

	v = qmp_get_version(owner.q);
	ck_assert_ptr_nonnull(v);
	ck_assert_uint_eq(v->major, 10);
	ck_assert_uint_eq(v->micro, 2);
	ck_assert_str_eq(v->package, "Fake 10.0.2");
	ck_assert_int_eq(qmp_set_greeting_timeout(owner.q, 100), -EALREADY);

	fake_send("{\"return\": {\"status\": \"paused\"}, \"id\": %lld}",
		  (long long)msg_id(fake.msgs[1]));
	ck_assert(RUN_UNTIL(r.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(r.error, 0);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(r.ret, "status")), "paused");
	reply_done(&r);
	ck_assert_int_eq(owner.n_closed, 0);
}
END_TEST

START_TEST(test_out_of_order_replies) {
	struct reply r[3] = {};

	connect_ready();
	for (int i = 0; i < 3; i++) {
		struct json_object *args = json_object_new_object();
		json_object_object_add(args, "n", json_object_new_int(i));
		ck_assert_int_eq(qmp_command(owner.q, "echo", args, PATIENCE_MS, on_reply, &r[i]), 0);
	}
	ck_assert(RUN_UNTIL(fake.n_msgs == 4, PATIENCE_MS));

	/* Answer last to first, echoing each command's argument. */
	for (int i = 3; i >= 1; i--) {
		struct json_object *args = json_object_object_get(fake.msgs[i], "arguments");
		fake_send("{\"return\": {\"n\": %d}, \"id\": %lld}",
			  json_object_get_int(json_object_object_get(args, "n")),
			  (long long)msg_id(fake.msgs[i]));
	}
	ck_assert(RUN_UNTIL(r[0].n_calls && r[1].n_calls && r[2].n_calls, PATIENCE_MS));
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(r[i].n_calls, 1);
		ck_assert_int_eq(r[i].error, 0);
		ck_assert_int_eq(json_object_get_int(json_object_object_get(r[i].ret, "n")), i);
		reply_done(&r[i]);
	}
}
END_TEST

START_TEST(test_events) {
	connect_ready();

	fake_send("{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 123456}, "
		  "\"event\": \"STOP\"}");
	ck_assert(RUN_UNTIL(owner.n_events == 1, PATIENCE_MS));
	ck_assert_str_eq(owner.event_name, "STOP");
	ck_assert_int_eq(owner.event_ts, 1700000000123456LL);
	ck_assert_ptr_null(owner.event_data);

	fake_send("{\"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 5}, "
		  "\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}}");
	ck_assert(RUN_UNTIL(owner.n_events == 2, PATIENCE_MS));
	ck_assert_str_eq(owner.event_name, "SHUTDOWN");
	ck_assert_int_eq(owner.event_ts, 1700000001000005LL);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(owner.event_data, "reason")),
			 "host-qmp-quit");
	ck_assert_int_eq(owner.n_closed, 0);
}
END_TEST

/* cpr-exec: the peer executes a new binary on the same channel and greets
 * again. Refused unless expected; when expected, what was pending fails
 * with -ERESTART, the handshake is made again and ready is called again. */
START_TEST(test_restart) {
	struct reply r = {}, after = {};

	connect_ready();
	qmp_expect_restart(owner.q, true);
	ck_assert_int_eq(qmp_command(owner.q, "query-migrate", NULL, PATIENCE_MS, on_reply, &r), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 2, PATIENCE_MS));
	fake_greet();
	ck_assert(RUN_UNTIL(r.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(r.error, -ERESTART);
	/* Asked meanwhile: held until the new handshake is done. */
	ck_assert_int_eq(qmp_command(owner.q, "query-status", NULL, PATIENCE_MS, on_reply, &after), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 3, PATIENCE_MS));
	ck_assert_str_eq(msg_execute(fake.msgs[2]), "qmp_capabilities");
	/* The new binary's answer to the command the old one never read. */
	fake_send("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting "
		  "capabilities negotiation with 'qmp_capabilities'\"}, \"id\": %lld}",
		  (long long)msg_id(fake.msgs[1]));
	fake_send("{\"return\": {}, \"id\": %lld}", (long long)msg_id(fake.msgs[2]));
	ck_assert(RUN_UNTIL(fake.n_msgs == 4, PATIENCE_MS));
	ck_assert_int_eq(owner.n_ready, 2);
	ck_assert_str_eq(msg_execute(fake.msgs[3]), "query-status");
	fake_send("{\"return\": {\"status\": \"running\"}, \"id\": %lld}",
		  (long long)msg_id(fake.msgs[3]));
	ck_assert(RUN_UNTIL(after.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(after.error, 0);
	reply_done(&r);
	reply_done(&after);
	ck_assert_int_eq(owner.n_closed, 0);
	/* One greeting only: a third one is a protocol error again. */
	fake_greet();
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(qmp_get_error(owner.q), -EPROTO);
}
END_TEST

/* A cprd restarted during a cpr-exec takes the channel back from the fd
 * store (attached: the handshake was the previous cprd's). The new binary's
 * greeting may still be unread on it: taken when a restart is expected,
 * with the handshake made and ready called. */
START_TEST(test_restart_attached) {
	struct reply r = {};
	int fd = fake_start(false);

	ck_assert_int_eq(qmp_new_attached(base, fd, &callbacks, &owner, "test", &owner.q), 0);
	qmp_expect_restart(owner.q, true);
	fake_greet();
	ck_assert(RUN_UNTIL(fake.n_msgs == 1, PATIENCE_MS));
	ck_assert_str_eq(msg_execute(fake.msgs[0]), "qmp_capabilities");
	fake_send("{\"return\": {}, \"id\": %lld}", (long long)msg_id(fake.msgs[0]));
	ck_assert(RUN_UNTIL(owner.n_ready == 1, PATIENCE_MS));
	ck_assert_uint_eq(qmp_get_version(owner.q)->major, 10);
	ck_assert_int_eq(qmp_command(owner.q, "query-status", NULL, PATIENCE_MS, on_reply, &r), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 2, PATIENCE_MS));
	fake_send("{\"return\": {\"status\": \"inmigrate\"}, \"id\": %lld}",
		  (long long)msg_id(fake.msgs[1]));
	ck_assert(RUN_UNTIL(r.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(r.error, 0);
	reply_done(&r);
	ck_assert_int_eq(owner.n_closed, 0);
}
END_TEST

START_TEST(test_error_reply) {
	struct reply r = {};

	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "no-such-command", NULL, PATIENCE_MS, on_reply, &r), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 2, PATIENCE_MS));
	fake_send("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command "
		  "no-such-command has not been found\"}, \"id\": %lld}",
		  (long long)msg_id(fake.msgs[1]));
	ck_assert(RUN_UNTIL(r.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(r.error, -EREMOTEIO);
	ck_assert_str_eq(r.class, "CommandNotFound");
	ck_assert_str_eq(r.desc, "The command no-such-command has not been found");
	ck_assert(qmp_is_ready(owner.q)); /* an error reply is not a channel failure */

	/* Bad arguments are refused at once and never called back. */
	ck_assert_int_eq(qmp_command(owner.q, "bad name", NULL, 0, on_reply, &r), -EINVAL);
	ck_assert_int_eq(qmp_command(owner.q, "x", json_object_new_array(), 0, on_reply, &r),
			 -EINVAL);
	ck_assert_int_eq(qmp_command(owner.q, "x", NULL, 0, NULL, &r), -EINVAL);
}
END_TEST

START_TEST(test_timeout) {
	struct reply slow = {}, fast = {};
	int64_t slow_id;

	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "slow", NULL, 100, on_reply, &slow), 0);
	ck_assert(RUN_UNTIL(slow.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(slow.error, -ETIMEDOUT);
	ck_assert_ptr_nonnull(strstr(slow.desc, "slow"));
	ck_assert_int_eq(fake.n_msgs, 2);
	slow_id = msg_id(fake.msgs[1]);

	/* The late reply is ignored; the channel still works. */
	ck_assert_int_eq(qmp_command(owner.q, "fast", NULL, PATIENCE_MS, on_reply, &fast), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 3, PATIENCE_MS));
	fake_send("{\"return\": {}, \"id\": %lld}", (long long)slow_id);
	fake_send("{\"return\": {\"ok\": true}, \"id\": %lld}", (long long)msg_id(fake.msgs[2]));
	ck_assert(RUN_UNTIL(fast.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(fast.error, 0);
	ck_assert_int_eq(slow.n_calls, 1);
	ck_assert_int_eq(owner.n_closed, 0);
	reply_done(&fast);
}
END_TEST

static char *big_reply(size_t payload, int64_t id) {
	char *s = malloc(payload + 64);
	size_t o = (size_t)sprintf(s, "{\"return\": \"");

	memset(s + o, 'x', payload);
	o += payload;
	sprintf(s + o, "\", \"id\": %lld}", (long long)id);
	return s;
}

START_TEST(test_oversize_reply) {
	struct reply ok = {}, big = {}, later = {};
	char *s;

	connect_ready();

	/* 3 MiB is within the cap. */
	ck_assert_int_eq(qmp_command(owner.q, "a", NULL, PATIENCE_MS, on_reply, &ok), 0);
	ck_assert_int_eq(qmp_command(owner.q, "b", NULL, PATIENCE_MS, on_reply, &big), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 3, PATIENCE_MS));
	s = big_reply(3u << 20, msg_id(fake.msgs[1]));
	fake_send("%s", s);
	free(s);
	ck_assert(RUN_UNTIL(ok.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(ok.error, 0);
	ck_assert_uint_eq(strlen(json_object_get_string(ok.ret)), 3u << 20);
	reply_done(&ok);

	/* Past QMP_MESSAGE_MAX, the channel closes and the error sticks. */
	s = big_reply(QMP_MESSAGE_MAX + 10, msg_id(fake.msgs[2]));
	fake_send("%s", s);
	free(s);
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(owner.closed_error, -EMSGSIZE);
	ck_assert_int_eq(big.n_calls, 1);
	ck_assert_int_eq(big.error, -EMSGSIZE);
	ck_assert_int_eq(qmp_get_error(owner.q), -EMSGSIZE);
	ck_assert_int_eq(qmp_command(owner.q, "c", NULL, 100, on_reply, &later), -EMSGSIZE);
	run_for(150);
	ck_assert_int_eq(later.n_calls, 0);
	ck_assert_int_eq(owner.n_closed, 1);
}
END_TEST

START_TEST(test_garbage) {
	struct reply r = {};

	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "x", NULL, PATIENCE_MS, on_reply, &r), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 2, PATIENCE_MS));
	fake_send("this is not JSON");
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(owner.closed_error, -EBADMSG);
	ck_assert_int_eq(r.n_calls, 1);
	ck_assert_int_eq(r.error, -EBADMSG);
	ck_assert(!qmp_is_ready(owner.q));
	ck_assert_int_eq(qmp_command(owner.q, "x", NULL, 100, on_reply, &r), -EBADMSG);
}
END_TEST

START_TEST(test_not_greeting_first) {
	int fd = fake_start(false);

	ck_assert_int_eq(qmp_new(base, fd, &callbacks, &owner, "test", &owner.q), 0);
	fake_send("{\"return\": {}, \"id\": 1}");
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(owner.closed_error, -EPROTO);
	ck_assert_int_eq(owner.n_ready, 0);
}
END_TEST

START_TEST(test_peer_closes) {
	struct reply a = {}, b = {}, c = {};

	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "a", NULL, PATIENCE_MS, on_reply, &a), 0);
	ck_assert_int_eq(qmp_command(owner.q, "b", NULL, PATIENCE_MS, on_reply, &b), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 3, PATIENCE_MS));
	fake_close();
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(owner.closed_error, -ECONNRESET);
	ck_assert_int_eq(a.n_calls, 1);
	ck_assert_int_eq(a.error, -ECONNRESET);
	ck_assert_int_eq(b.n_calls, 1);
	ck_assert_int_eq(b.error, -ECONNRESET);
	ck_assert_int_eq(qmp_command(owner.q, "c", NULL, 100, on_reply, &c), -ECONNRESET);
	run_for(150);
	ck_assert_int_eq(owner.n_closed, 1);
	ck_assert_int_eq(c.n_calls, 0);
}
END_TEST

START_TEST(test_greeting_timeout) {
	struct reply r = {};
	int fd = fake_start(false);

	ck_assert_int_eq(qmp_new(base, fd, &callbacks, &owner, "test", &owner.q), 0);
	ck_assert_int_eq(qmp_set_greeting_timeout(owner.q, 100), 0);
	ck_assert_int_eq(qmp_command(owner.q, "held", NULL, 0, on_reply, &r), 0);
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(owner.closed_error, -ETIMEDOUT);
	ck_assert_int_eq(r.n_calls, 1);
	ck_assert_int_eq(r.error, -ETIMEDOUT);
	ck_assert_int_eq(owner.n_ready, 0);
	ck_assert_int_eq(fake.n_msgs, 0); /* the held command never went out */
}
END_TEST

START_TEST(test_cancel) {
	struct reply a = {}, b = {};

	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "a", NULL, PATIENCE_MS, on_reply, &a), 0);
	ck_assert_int_eq(qmp_command(owner.q, "a2", NULL, PATIENCE_MS, on_reply, &a), 0);
	ck_assert_int_eq(qmp_command(owner.q, "b", NULL, PATIENCE_MS, on_reply, &b), 0);
	ck_assert_uint_eq(qmp_cancel(owner.q, &a), 2);
	ck_assert_uint_eq(qmp_cancel(owner.q, &a), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 4, PATIENCE_MS)); /* cancelled commands still go out */
	for (int i = 1; i <= 3; i++)
		fake_send("{\"return\": {}, \"id\": %lld}", (long long)msg_id(fake.msgs[i]));
	ck_assert(RUN_UNTIL(b.n_calls == 1, PATIENCE_MS));
	run_for(50);
	ck_assert_int_eq(a.n_calls, 0);
	reply_done(&b);
}
END_TEST

START_TEST(test_free_inside_callbacks) {
	struct reply a = { .free_qmp = true }, b = {};

	/* Freed by a reply while the next reply sits in the same read. */
	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "a", NULL, PATIENCE_MS, on_reply, &a), 0);
	ck_assert_int_eq(qmp_command(owner.q, "b", NULL, PATIENCE_MS, on_reply, &b), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 3, PATIENCE_MS));
	fake_send("{\"return\": {}, \"id\": %lld}\r\n{\"return\": {}, \"id\": %lld}",
		  (long long)msg_id(fake.msgs[1]), (long long)msg_id(fake.msgs[2]));
	ck_assert(RUN_UNTIL(a.n_calls == 1, PATIENCE_MS));
	run_for(50);
	ck_assert_ptr_null(owner.q);
	ck_assert_int_eq(b.n_calls, 0); /* qmp_free() calls nothing back */
	ck_assert_int_eq(owner.n_closed, 0);
	reply_done(&a);
	fake_close();
	for (int i = 0; i < fake.n_msgs; i++)
		json_object_put(fake.msgs[i]);
	fake.n_msgs = 0;

	/* Freed by the closed callback after failing pending commands. */
	owner = (struct owner){ .free_on_closed = true };
	b = (struct reply){};
	connect_ready();
	ck_assert_int_eq(qmp_command(owner.q, "b", NULL, PATIENCE_MS, on_reply, &b), 0);
	ck_assert(RUN_UNTIL(fake.n_msgs == 2, PATIENCE_MS));
	fake_close();
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_ptr_null(owner.q);
	ck_assert_int_eq(b.error, -ECONNRESET);
}
END_TEST

/* ---- real QEMU ---- */

static pid_t spawn_qemu(const char *binary, int *ret_fd) {
	char chardev[64];
	int sv[2];
	pid_t pid;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	snprintf(chardev, sizeof(chardev), "socket,id=qmp,fd=%d", sv[1]);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		dup2(null, 1);
		fcntl(sv[1], F_SETFD, 0); /* the one fd QEMU keeps */
		execl(binary, binary, "-no-user-config", "-nodefaults", "-machine", "none",
		      "-display", "none", "-S", "-chardev", chardev, "-mon",
		      "chardev=qmp,mode=control", (char *)NULL);
		_exit(127);
	}
	close(sv[1]);
	*ret_fd = sv[0];
	return pid;
}

/* Waits for pid with a deadline; kills it past the deadline. */
static int reap(pid_t pid, int timeout_ms) {
	int status;

	for (int waited = 0; waited < timeout_ms; waited += 10) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return status;
		usleep(10 * 1000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

static int64_t realtime_usec(void) {
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

START_TEST(test_real_qemu) {
	struct reply ver = {}, cont = {}, stop = {}, status = {}, getfd = {}, closefd = {},
		     nocmd = {}, quit = {};
	struct json_object *args;
	const struct qmp_version *v;
	int fd, pipefd[2], st;
	int64_t before;
	pid_t pid = spawn_qemu(QEMU_10, &fd);

	ck_assert_int_eq(qmp_new(base, fd, &callbacks, &owner, "qemu-10", &owner.q), 0);
	ck_assert_int_eq(qmp_command(owner.q, "query-version", NULL, PATIENCE_MS, on_reply, &ver), 0);
	ck_assert(RUN_UNTIL(ver.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(owner.n_ready, 1);
	ck_assert_int_eq(ver.error, 0);
	v = qmp_get_version(owner.q);
	ck_assert_uint_eq(v->major, 10);
	ck_assert_int_eq(json_object_get_int(json_object_object_get(
				 json_object_object_get(ver.ret, "qemu"), "major")), 10);
	reply_done(&ver);

	/* Events carry QEMU's wall-clock time. */
	before = realtime_usec();
	ck_assert_int_eq(qmp_command(owner.q, "cont", NULL, PATIENCE_MS, on_reply, &cont), 0);
	ck_assert(RUN_UNTIL(cont.n_calls == 1 && owner.n_events >= 1, PATIENCE_MS));
	ck_assert_int_eq(cont.error, 0);
	ck_assert_str_eq(owner.event_name, "RESUME");
	ck_assert_int_ge(owner.event_ts, before - 1000000);
	ck_assert_int_le(owner.event_ts, realtime_usec() + 1000000);

	ck_assert_int_eq(qmp_command(owner.q, "stop", NULL, PATIENCE_MS, on_reply, &stop), 0);
	ck_assert(RUN_UNTIL(stop.n_calls == 1 && owner.n_events >= 2, PATIENCE_MS));
	ck_assert_str_eq(owner.event_name, "STOP");
	ck_assert_int_eq(qmp_command(owner.q, "query-status", NULL, PATIENCE_MS, on_reply, &status), 0);
	ck_assert(RUN_UNTIL(status.n_calls == 1, PATIENCE_MS));
	ck_assert_str_eq(json_object_get_string(json_object_object_get(status.ret, "status")),
			 "paused");

	/* An fd passed along with getfd; QEMU knows it by name afterwards. */
	ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
	args = json_object_new_object();
	json_object_object_add(args, "fdname", json_object_new_string("testfd"));
	ck_assert_int_eq(qmp_command_with_fd(owner.q, "getfd", args, pipefd[0], PATIENCE_MS, on_reply,
					     &getfd), 0);
	close(pipefd[0]); /* qmp kept its own copy */
	ck_assert(RUN_UNTIL(getfd.n_calls == 1, PATIENCE_MS));
	ck_assert_msg(getfd.error == 0, "getfd: %s", getfd.desc);
	args = json_object_new_object();
	json_object_object_add(args, "fdname", json_object_new_string("testfd"));
	ck_assert_int_eq(qmp_command(owner.q, "closefd", args, PATIENCE_MS, on_reply, &closefd), 0);
	ck_assert(RUN_UNTIL(closefd.n_calls == 1, PATIENCE_MS));
	ck_assert_msg(closefd.error == 0, "closefd: %s", closefd.desc);
	close(pipefd[1]);

	/* A real error reply. */
	ck_assert_int_eq(qmp_command(owner.q, "no-such-command", NULL, PATIENCE_MS, on_reply, &nocmd), 0);
	ck_assert(RUN_UNTIL(nocmd.n_calls == 1, PATIENCE_MS));
	ck_assert_int_eq(nocmd.error, -EREMOTEIO);
	ck_assert_str_eq(nocmd.class, "CommandNotFound");

	/* quit: SHUTDOWN, the reply, then QEMU hangs up. */
	ck_assert_int_eq(qmp_command(owner.q, "quit", NULL, PATIENCE_MS, on_reply, &quit), 0);
	ck_assert(RUN_UNTIL(owner.n_closed == 1, PATIENCE_MS));
	ck_assert_int_eq(quit.n_calls, 1);
	ck_assert_int_eq(quit.error, 0);
	ck_assert_str_eq(owner.event_name, "SHUTDOWN");
	ck_assert_int_eq(owner.closed_error, -ECONNRESET);
	st = reap(pid, 5000);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "QEMU exit status %d", st);
	reply_done(&cont);
	reply_done(&stop);
	reply_done(&status);
	reply_done(&getfd);
	reply_done(&closefd);
	reply_done(&quit);
}
END_TEST

static Suite *qmp_suite(bool have_qemu) {
	Suite *s = suite_create("qmp");
	TCase *tc = tcase_create("parse");

	tcase_add_test(tc, test_parse_valid);
	tcase_add_test(tc, test_parse_invalid);
	suite_add_tcase(s, tc);

	tc = tcase_create("protocol");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 20);
	tcase_add_test(tc, test_handshake_and_queueing);
	tcase_add_test(tc, test_out_of_order_replies);
	tcase_add_test(tc, test_events);
	tcase_add_test(tc, test_error_reply);
	tcase_add_test(tc, test_restart);
	tcase_add_test(tc, test_restart_attached);
	tcase_add_test(tc, test_timeout);
	tcase_add_test(tc, test_oversize_reply);
	tcase_add_test(tc, test_garbage);
	tcase_add_test(tc, test_not_greeting_first);
	tcase_add_test(tc, test_peer_closes);
	tcase_add_test(tc, test_greeting_timeout);
	tcase_add_test(tc, test_cancel);
	tcase_add_test(tc, test_free_inside_callbacks);
	suite_add_tcase(s, tc);

	if (have_qemu) {
		tc = tcase_create("qemu");
		tcase_add_checked_fixture(tc, setup, teardown);
		tcase_set_timeout(tc, 30);
		tcase_add_test(tc, test_real_qemu);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void) {
	bool have_qemu = access(QEMU_10, X_OK) == 0;
	SRunner *sr;
	int failed;

	if (getenv("CPRD_TEST_DEBUG"))
		log_set_max_level(LOG_DEBUG);
	sr = srunner_create(qmp_suite(have_qemu));
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	if (failed)
		return EXIT_FAILURE;
	if (!have_qemu) {
		printf("SKIP: %s not found; the real-QEMU round trip did not run\n", QEMU_10);
		return 77;
	}
	return EXIT_SUCCESS;
}
