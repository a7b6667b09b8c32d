/* The Check suite of proto/: a real vl_server with the test interfaces runs
 * on its own thread and event loop, on a socket in a temporary directory;
 * the tests drive it with proto's client and with raw sockets for what a
 * well-behaved client would never send. */
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "test-service.h"
#include "varlink.h"

/* Wall-clock upper bounds here only catch a hang. Under valgrind or the
 * sanitizers everything runs slower, so they are scaled by one factor,
 * CPRD_TEST_SLOWDOWN (default 1; tests/valgrind.sh and tests/sanitize.sh set
 * it), read once by main(). Lower bounds, which check that a deadline did
 * not fire early, are never scaled. */
static double slowdown = 1;
#define SLOW(ms) ((int)((ms) * slowdown))

#define SLOWDOWN_MAX 100 /* keeps SLOW() far from overflowing an int */

#define WAIT_MS SLOW(3000) /* the longest any single step may take */

/* ---- the server under test ------------------------------------------------ */

/* One directory for the run, made and removed by main(), so that a failed
 * test (whose teardown does not run) leaves nothing behind. */
static char base_dir[64];

static struct {
	char dir[96];
	char path[128];
	struct event_base *base;
	struct vl_server *server;
	struct event *ctl_ev;
	int ctl[2]; /* [0] for the test, [1] for the server thread */
	pthread_t thread;
	bool running;
} srv;

/* Commands over the control socketpair, handled on the server thread so the
 * server is only ever touched from its own thread. */
static void on_ctl(evutil_socket_t fd, short what, void *userdata) {
	char cmd;
	if (read(fd, &cmd, 1) != 1)
		cmd = 'q';
	if (cmd == 'n') {
		unsigned n = vl_server_connections(srv.server);
		ck_assert_int_eq(write(fd, &n, sizeof(n)), sizeof(n));
		return;
	}
	/* Quit: closing the server drops every connection; the loop then runs
	 * until the handlers' own timers (Count, Sleep) have freed their state. */
	vl_server_free(srv.server);
	srv.server = NULL;
	event_del(srv.ctl_ev);
}

static void *server_thread(void *userdata) {
	event_base_dispatch(srv.base);
	return NULL;
}

static void srv_start(const struct vl_server_limits *limits) {
	static const struct vl_server_info info = {"cprd tests", "test_varlink", "1",
						   "https://cprd.invalid/", NULL};
	memset(&test_service_stats, 0, sizeof(test_service_stats));
	srv.base = event_base_new();
	ck_assert_ptr_nonnull(srv.base);
	ck_assert_int_eq(vl_server_new(srv.base, &info, &srv.server), 0);
	ck_assert_int_eq(test_service_register(srv.server, srv.base), 0);
	vl_server_set_limits(srv.server, limits);
	ck_assert_int_eq(vl_server_listen_path(srv.server, srv.path, 0600), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, srv.ctl), 0);
	srv.ctl_ev = event_new(srv.base, srv.ctl[1], EV_READ | EV_PERSIST, on_ctl, NULL);
	event_add(srv.ctl_ev, NULL);
	ck_assert_int_eq(pthread_create(&srv.thread, NULL, server_thread, NULL), 0);
	srv.running = true;
}

static void srv_stop(void) {
	if (!srv.running)
		return;
	ck_assert_int_eq(write(srv.ctl[0], "q", 1), 1);
	pthread_join(srv.thread, NULL);
	event_free(srv.ctl_ev);
	event_base_free(srv.base);
	close(srv.ctl[0]);
	close(srv.ctl[1]);
	srv.running = false;
}

static void srv_restart(const struct vl_server_limits *limits) {
	srv_stop();
	srv_start(limits);
}

static unsigned srv_connections(void) {
	unsigned n = 0;
	ck_assert_int_eq(write(srv.ctl[0], "n", 1), 1);
	ck_assert_int_eq(read(srv.ctl[0], &n, sizeof(n)), sizeof(n));
	return n;
}

static int64_t now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Waits until the server holds exactly n connections. */
static bool srv_wait_connections(unsigned n, int timeout_ms) {
	int64_t deadline = now_ms() + timeout_ms;
	while (srv_connections() != n) {
		if (now_ms() > deadline)
			return false;
		sleep_ms(5);
	}
	return true;
}

static void setup(void) {
	snprintf(srv.dir, sizeof(srv.dir), "%s/t-XXXXXX", base_dir);
	ck_assert_ptr_nonnull(mkdtemp(srv.dir));
	snprintf(srv.path, sizeof(srv.path), "%s/test.sock", srv.dir);
	srv_start(NULL);
}

static void teardown(void) {
	srv_stop();
	char p[192];
	snprintf(p, sizeof(p), "%s/other", srv.dir);
	unlink(p);
	unlink(srv.path);
	rmdir(srv.dir);
}

/* ---- raw sockets ---------------------------------------------------------- */

struct raw {
	int fd;
	char *buf; /* received, not yet returned */
	size_t len, cap;
};

static void raw_open_at(struct raw *r, const char *path) {
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	*r = (struct raw){.fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
	ck_assert_int_ge(r->fd, 0);
	strcpy(sa.sun_path, path);
	ck_assert_msg(connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %m");
}

static void raw_open(struct raw *r) { raw_open_at(r, srv.path); }

static void raw_close(struct raw *r) {
	r->fd = safe_close(r->fd);
	free(r->buf);
	r->buf = NULL;
	r->len = r->cap = 0;
}

/* Sends all of it; returns -errno when the server closed on us. */
static int raw_send(struct raw *r, const void *data, size_t len) {
	const char *p = data;
	while (len > 0) {
		ssize_t n = send(r->fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Sends a message and its NUL. */
static void raw_send_msg(struct raw *r, const char *json) {
	ck_assert_int_eq(raw_send(r, json, strlen(json) + 1), 0);
}

/* Reads more bytes: 0, -ETIMEDOUT or -ECONNRESET (the peer closed). */
static int raw_fill(struct raw *r, int64_t deadline) {
	if (r->cap - r->len < 65536) {
		r->cap = r->cap ? r->cap * 2 : 65536;
		r->buf = realloc(r->buf, r->cap);
		ck_assert_ptr_nonnull(r->buf);
	}
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd p = {.fd = r->fd, .events = POLLIN};
		int k = poll(&p, 1, (int)left);
		if (k < 0 && errno == EINTR)
			continue;
		ck_assert_int_ge(k, 0);
		if (k == 0)
			return -ETIMEDOUT;
		ssize_t n = recv(r->fd, r->buf + r->len, r->cap - r->len, MSG_DONTWAIT);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0 && errno == ECONNRESET)
			return -ECONNRESET;
		ck_assert_msg(n >= 0, "recv: %m");
		if (n == 0)
			return -ECONNRESET;
		r->len += (size_t)n;
		return 0;
	}
}

/* Reads one message as raw bytes (without its NUL); *ret_len its length. */
static int raw_recv_bytes(struct raw *r, int timeout_ms, char **ret, size_t *ret_len) {
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		char *nul = r->len ? memchr(r->buf, '\0', r->len) : NULL;
		if (nul) {
			size_t mlen = (size_t)(nul - r->buf);
			*ret = malloc(mlen + 1);
			ck_assert_ptr_nonnull(*ret);
			memcpy(*ret, r->buf, mlen + 1);
			*ret_len = mlen;
			memmove(r->buf, nul + 1, r->len - mlen - 1);
			r->len -= mlen + 1;
			return 0;
		}
		int k = raw_fill(r, deadline);
		if (k < 0)
			return k;
	}
}

/* Reads one message; fails the test unless it is a JSON object. */
static struct json_object *raw_recv(struct raw *r) {
	_cleanup_free_ char *m = NULL;
	size_t len;
	int k = raw_recv_bytes(r, WAIT_MS, &m, &len);
	ck_assert_msg(k == 0, "no reply: %s", strerror(-k));
	struct json_object *o = json_tokener_parse(m);
	ck_assert_msg(json_object_is_type(o, json_type_object), "reply not an object: %s", m);
	return o;
}

/* True when the server closed the connection within timeout_ms; what it
 * sent before is dropped. */
static bool raw_closed(struct raw *r, int timeout_ms) {
	int64_t deadline = now_ms() + timeout_ms;
	for (;;) {
		r->len = 0;
		int k = raw_fill(r, deadline);
		if (k == -ECONNRESET)
			return true;
		if (k == -ETIMEDOUT)
			return false;
	}
}

/* The top-level keys of a reply must be a subset of what the spec names. */
static void assert_reply_keys(struct json_object *reply) {
	json_object_object_foreach(reply, key, val) {
		(void)val;
		ck_assert_msg(streq(key, "parameters") || streq(key, "continues") ||
				      streq(key, "error"),
			      "unexpected key %s in reply", key);
	}
}

static const char *reply_error(struct json_object *reply) {
	struct json_object *e;
	return json_object_object_get_ex(reply, "error", &e) ? json_object_get_string(e) : NULL;
}

static struct json_object *reply_param(struct json_object *reply, const char *key) {
	struct json_object *p, *v;
	if (!json_object_object_get_ex(reply, "parameters", &p) ||
	    !json_object_object_get_ex(p, key, &v))
		return NULL;
	return v;
}

static bool reply_continues(struct json_object *reply) {
	struct json_object *v;
	return json_object_object_get_ex(reply, "continues", &v) && json_object_get_boolean(v);
}

/* ---- proto's client --------------------------------------------------------- */

static struct vl_client *client_new(void) {
	struct vl_client *c = NULL;
	int r = vl_client_connect(srv.path, WAIT_MS, &c);
	ck_assert_msg(r == 0, "connect: %s", strerror(-r));
	return c;
}

/* One call; params is JSON text or NULL. Returns the error name (owned) or
 * NULL, and the reply parameters in *ret. */
static char *call(struct vl_client *c, const char *method, const char *params,
		  struct json_object **ret) {
	_cleanup_json_ struct json_object *p = params ? json_tokener_parse(params) : NULL;
	struct json_object *reply = NULL;
	char *error = NULL;
	if (params)
		ck_assert_ptr_nonnull(p);
	int r = vl_client_call(c, method, p, WAIT_MS, &reply, &error);
	ck_assert_msg(r == 0, "%s: %s", method, strerror(-r));
	if (ret)
		*ret = reply;
	else
		json_object_put(reply);
	return error;
}

static int64_t get_int(struct json_object *o, const char *key) {
	struct json_object *v;
	ck_assert_msg(json_object_object_get_ex(o, key, &v), "no %s", key);
	return json_object_get_int64(v);
}

static const char *get_str(struct json_object *o, const char *key) {
	struct json_object *v;
	ck_assert_msg(json_object_object_get_ex(o, key, &v), "no %s", key);
	return json_object_get_string(v);
}

/* The server still answers a fresh connection. */
static void assert_serving(void) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Echo", "{\"text\":\"still here\"}", &r);
	ck_assert_ptr_null(err);
	ck_assert_str_eq(get_str(r, "text"), "still here");
}

static struct json_object *stats(void) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Stats", NULL, &r);
	ck_assert_ptr_null(err);
	return r;
}

static const char echo_a[] = "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"a\"}}";

/* ---- framing ---------------------------------------------------------------- */

static void assert_echo_reply(struct raw *r, const char *text) {
	_cleanup_json_ struct json_object *reply = raw_recv(r);
	assert_reply_keys(reply);
	ck_assert_ptr_null(reply_error(reply));
	ck_assert_str_eq(json_object_get_string(reply_param(reply, "text")), text);
}

START_TEST(framing_one_byte_at_a_time) {
	struct raw r;
	raw_open(&r);
	for (size_t i = 0; i < sizeof(echo_a); i++) { /* sizeof: with the NUL */
		ck_assert_int_eq(raw_send(&r, echo_a + i, 1), 0);
		sleep_ms(1); /* so the server reads them one by one */
	}
	assert_echo_reply(&r, "a");
	raw_close(&r);
}
END_TEST

START_TEST(framing_split_writes) {
	static const size_t cuts[] = {1, 2, 3, 5, 8, 13, 21};
	struct raw r;
	raw_open(&r);
	/* Two messages cut at odd places, the second's start glued to the
	 * first's end, the last NUL alone. */
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "%s%c%s", echo_a, '\0',
			 "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"b\"}}");
	size_t off = 0;
	for (size_t i = 0; off < (size_t)n; i++) {
		size_t k = MIN(cuts[i % ELEMENTSOF(cuts)], (size_t)n - off);
		ck_assert_int_eq(raw_send(&r, buf + off, k), 0);
		off += k;
		sleep_ms(1);
	}
	ck_assert_int_eq(raw_send(&r, "", 1), 0);
	assert_echo_reply(&r, "a");
	assert_echo_reply(&r, "b");
	raw_close(&r);
}
END_TEST

START_TEST(framing_merged_in_order) {
	struct raw r;
	raw_open(&r);
	/* A slow call first: the quick ones queue behind it. */
	char buf[4096];
	size_t len = 0;
	len += (size_t)sprintf(buf + len, "{\"method\":\"io.cprd.Test.Sleep\",\"parameters\":{\"ms\":100}}") + 1;
	for (int i = 0; i < 20; i++)
		len += (size_t)sprintf(buf + len,
				       "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"%d\"}}", i) + 1;
	len += (size_t)sprintf(buf + len, "{\"method\":\"io.cprd.Test.Count\",\"parameters\":{\"count\":3},\"more\":true}") + 1;
	len += (size_t)sprintf(buf + len, "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"end\"}}") + 1;
	ck_assert_int_eq(raw_send(&r, buf, len), 0);

	_cleanup_json_ struct json_object *slept = raw_recv(&r);
	ck_assert_int_eq(json_object_get_int(reply_param(slept, "slept")), 100);
	for (int i = 0; i < 20; i++) {
		char t[16];
		snprintf(t, sizeof(t), "%d", i);
		assert_echo_reply(&r, t);
	}
	for (int i = 1; i <= 3; i++) {
		_cleanup_json_ struct json_object *m = raw_recv(&r);
		ck_assert_int_eq(json_object_get_int(reply_param(m, "number")), i);
		ck_assert(reply_continues(m) == (i < 3));
	}
	assert_echo_reply(&r, "end");
	raw_close(&r);
}
END_TEST

START_TEST(framing_nul_in_string) {
	/* On the wire as \u0000: the NUL byte never appears raw. */
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"a\\u0000b\"}}");
	_cleanup_free_ char *m = NULL;
	size_t mlen;
	ck_assert_int_eq(raw_recv_bytes(&r, WAIT_MS, &m, &mlen), 0);
	ck_assert_ptr_nonnull(strstr(m, "a\\u0000b"));
	raw_close(&r);

	/* And through our own client, which must not cut the string either. */
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *p = json_object_new_object();
	json_object_object_add(p, "text", json_object_new_string_len("x\0y\0", 4));
	_cleanup_json_ struct json_object *reply = NULL;
	_cleanup_free_ char *err = NULL;
	ck_assert_int_eq(vl_client_call(c, "io.cprd.Test.Echo", p, WAIT_MS, &reply, &err), 0);
	ck_assert_ptr_null(err);
	struct json_object *t = NULL;
	ck_assert(json_object_object_get_ex(reply, "text", &t));
	ck_assert_int_eq(json_object_get_string_len(t), 4);
	ck_assert_mem_eq(json_object_get_string(t), "x\0y\0", 4);
}
END_TEST

/* A message of n bytes calling Echo (padded with spaces), with its NUL. */
static char *padded_echo(size_t n) {
	char *m = malloc(n + 1);
	ck_assert_ptr_nonnull(m);
	int h = sprintf(m, "%s", echo_a);
	memset(m + h, ' ', n - (size_t)h);
	m[n] = '\0';
	return m;
}

START_TEST(framing_limit_small) {
	srv_restart(&(struct vl_server_limits){.message_max = 1024});

	/* Right at the limit: served. */
	_cleanup_free_ char *ok = padded_echo(1024);
	struct raw r;
	raw_open(&r);
	ck_assert_int_eq(raw_send(&r, ok, 1025), 0);
	assert_echo_reply(&r, "a");
	raw_close(&r);

	/* One byte over, complete with its NUL: closed. */
	_cleanup_free_ char *over = padded_echo(1025);
	raw_open(&r);
	raw_send(&r, over, 1026);
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);

	/* Over the limit and never finished: closed without waiting for it. */
	raw_open(&r);
	raw_send(&r, over, 1025);
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);

	/* A good call before the long one is still answered. */
	raw_open(&r);
	raw_send_msg(&r, echo_a);
	raw_send(&r, over, 1026);
	assert_echo_reply(&r, "a");
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
	assert_serving();
}
END_TEST

START_TEST(framing_limit_real) {
	/* The default limit with a real message past 16 MiB. */
	size_t n = VL_MESSAGE_MAX + 1024 * 1024;
	_cleanup_free_ char *big = padded_echo(n);
	struct raw r;
	raw_open(&r);
	int64_t start = now_ms();
	int k = raw_send(&r, big, n + 1);
	ck_assert_msg(k == -EPIPE || k == -ECONNRESET, "sending %zu bytes: %s", n, strerror(-k));
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
	ck_assert_int_lt(now_ms() - start, SLOW(20000));
	assert_serving();
}
END_TEST

/* ---- the parameter table ------------------------------------------------------ */

/* *bad names a key of the parsed JSON, so it is copied before that goes. */
static int check_params(const char *json, const struct vl_param *table, const char **bad) {
	static char name[64];
	_cleanup_json_ struct json_object *p = json ? json_tokener_parse(json) : NULL;
	const char *b = NULL;
	if (json)
		ck_assert_ptr_nonnull(p);
	int r = vl_params_check(p, table, &b);
	snprintf(name, sizeof(name), "%s", b ? b : "(none)");
	*bad = name;
	return r;
}

#define CHECK_OK(json, table)                                                             \
	do {                                                                              \
		const char *_bad;                                                         \
		ck_assert_msg(check_params(json, table, &_bad) == 0, "%s refused: %s",   \
			      json ? json : "NULL", _bad);                                \
	} while (0)
#define CHECK_BAD(json, table, field)                                                     \
	do {                                                                              \
		const char *_bad;                                                         \
		ck_assert_int_eq(check_params(json, table, &_bad), -EINVAL);             \
		ck_assert_str_eq(_bad, field);                                            \
	} while (0)

START_TEST(params_table) {
	static const struct vl_param t[] = {
		{"name", VL_STRING, VL_MANDATORY},
		{"count", VL_INT, 0},
		{"ratio", VL_FLOAT, 0},
		{"flag", VL_BOOL, 0},
		{"opt", VL_STRING, VL_NULLABLE},
		{"list", VL_ARRAY, VL_NULLABLE},
		{"obj", VL_OBJECT, 0},
		{"any", VL_ANY, 0},
		{},
	};
	static const struct vl_param optional[] = {{"x", VL_INT, 0}, {}};

	CHECK_OK("{\"name\":\"n\"}", t);
	CHECK_OK("{\"name\":\"n\",\"count\":1,\"ratio\":1.5,\"flag\":true,\"opt\":\"o\","
		 "\"list\":[],\"obj\":{},\"any\":[1]}", t);
	CHECK_OK("{\"name\":\"n\",\"ratio\":2}", t); /* an int is a float too */

	/* missing mandatory, also when parameters are absent or {} */
	CHECK_BAD("{\"count\":1}", t, "name");
	CHECK_BAD("{}", t, "name");
	CHECK_BAD(NULL, t, "name");

	/* wrong types */
	CHECK_BAD("{\"name\":1}", t, "name");
	CHECK_BAD("{\"name\":\"n\",\"count\":\"1\"}", t, "count");
	CHECK_BAD("{\"name\":\"n\",\"count\":1.5}", t, "count");
	CHECK_BAD("{\"name\":\"n\",\"ratio\":\"1\"}", t, "ratio");
	CHECK_BAD("{\"name\":\"n\",\"flag\":1}", t, "flag");
	CHECK_BAD("{\"name\":\"n\",\"list\":{}}", t, "list");
	CHECK_BAD("{\"name\":\"n\",\"obj\":[]}", t, "obj");

	/* unknown field */
	CHECK_BAD("{\"name\":\"n\",\"nope\":1}", t, "nope");

	/* null: fine where nullable, refused where mandatory or not nullable */
	CHECK_OK("{\"name\":\"n\",\"opt\":null,\"list\":null}", t);
	CHECK_BAD("{\"name\":null}", t, "name");
	CHECK_BAD("{\"name\":\"n\",\"count\":null}", t, "count");
	CHECK_BAD("{\"name\":\"n\",\"any\":null}", t, "any"); /* any value, but not null */

	/* parameters missing or null mean {} */
	CHECK_OK(NULL, optional);
	CHECK_OK("{}", optional);
	CHECK_OK(NULL, NULL);
	CHECK_OK("{}", NULL);
	CHECK_BAD("{\"x\":1}", NULL, "x"); /* a method without parameters */

	/* a NUL inside: fine in a string, refused where the table says VL_NO_NUL */
	static const struct vl_param named[] = {{"name", VL_STRING, VL_MANDATORY | VL_NO_NUL}, {}};
	CHECK_OK("{\"name\":\"a\\u0000b\"}", t);
	CHECK_OK("{\"name\":\"ab\"}", named);
	CHECK_BAD("{\"name\":\"a\\u0000b\"}", named, "name");

	/* parameters that are not an object */
	CHECK_BAD("[]", optional, "parameters");
	CHECK_BAD("\"s\"", optional, "parameters");
}
END_TEST

static void assert_invalid_parameter(struct vl_client *c, const char *method, const char *params,
				     const char *parameter) {
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, method, params, &r);
	ck_assert_msg(err, "%s %s: no error", method, params ? params : "");
	ck_assert_str_eq(err, VL_ERROR_INVALID_PARAMETER);
	ck_assert_str_eq(get_str(r, "parameter"), parameter);
}

START_TEST(params_over_the_wire) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	assert_invalid_parameter(c, "io.cprd.Test.Echo", NULL, "text");
	assert_invalid_parameter(c, "io.cprd.Test.Echo", "{}", "text");
	assert_invalid_parameter(c, "io.cprd.Test.Echo", "{\"text\":5}", "text");
	assert_invalid_parameter(c, "io.cprd.Test.Echo", "{\"text\":null}", "text");
	assert_invalid_parameter(c, "io.cprd.Test.Echo", "{\"text\":\"a\",\"extra\":1}", "extra");
	assert_invalid_parameter(c, "io.cprd.Test.Stats", "{\"x\":1}", "x");
	/* Fail takes a nullable reason. */
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Fail", "{\"reason\":null}", &r);
	ck_assert_str_eq(err, "io.cprd.Test.TestError");

	/* parameters null, absent, or not an object, over a raw socket */
	struct raw raw;
	raw_open(&raw);
	raw_send_msg(&raw, "{\"method\":\"io.cprd.Test.Stats\",\"parameters\":null}");
	raw_send_msg(&raw, "{\"method\":\"io.cprd.Test.Stats\"}");
	raw_send_msg(&raw, "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":null}");
	raw_send_msg(&raw, "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":[\"a\"]}");
	for (int i = 0; i < 2; i++) {
		_cleanup_json_ struct json_object *m = raw_recv(&raw);
		ck_assert_ptr_null(reply_error(m));
		ck_assert_int_eq(json_object_get_int(reply_param(m, "pid")), getpid());
	}
	static const char *const expect[] = {"text", "parameters"};
	for (int i = 0; i < 2; i++) {
		_cleanup_json_ struct json_object *m = raw_recv(&raw);
		ck_assert_str_eq(reply_error(m), VL_ERROR_INVALID_PARAMETER);
		ck_assert_str_eq(json_object_get_string(reply_param(m, "parameter")), expect[i]);
	}
	raw_close(&raw);
}
END_TEST

/* ---- replies ------------------------------------------------------------------ */

START_TEST(replies_error_parameters) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Fail", "{\"reason\":\"because\"}", &r);
	ck_assert_str_eq(err, "io.cprd.Test.TestError");
	ck_assert_str_eq(get_str(r, "reason"), "because");
}
END_TEST

START_TEST(replies_keys) {
	static const char *const calls[] = {
		"{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"k\"}}",
		"{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"k\"},\"more\":true}",
		"{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"k\"},\"more\":false}",
		"{\"method\":\"io.cprd.Test.Fail\",\"parameters\":{}}",
		"{\"method\":\"io.cprd.Test.Nope\"}",
		"{\"method\":\"org.varlink.service.GetInfo\",\"more\":true}",
	};
	struct raw r;
	raw_open(&r);
	for (size_t i = 0; i < ELEMENTSOF(calls); i++) {
		raw_send_msg(&r, calls[i]);
		_cleanup_json_ struct json_object *m = raw_recv(&r);
		assert_reply_keys(m);
		struct json_object *v;
		/* continues only goes with more, and a single reply is final */
		ck_assert_msg(!json_object_object_get_ex(m, "continues", &v) ||
				      !json_object_get_boolean(v),
			      "%s: continues", calls[i]);
		ck_assert(json_object_object_get_ex(m, "parameters", &v));
		ck_assert(json_object_is_type(v, json_type_object));
	}
	raw_close(&r);
}
END_TEST

/* ---- more ------------------------------------------------------------------------ */

struct collected {
	int n;
	int numbers[64];
	bool continues[64];
	bool error;
};

static int collect(struct json_object *params, const char *error, bool continues,
		   void *userdata) {
	struct collected *k = userdata;
	if (error) {
		k->error = true;
		return 0;
	}
	ck_assert_int_lt(k->n, 64);
	k->numbers[k->n] = (int)get_int(params, "number");
	k->continues[k->n] = continues;
	k->n++;
	return 0;
}

START_TEST(more_count) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *p = json_tokener_parse("{\"count\":10}");
	struct collected k = {0};
	ck_assert_int_eq(vl_client_call_more(c, "io.cprd.Test.Count", p, WAIT_MS, collect, &k), 0);
	ck_assert(!k.error);
	ck_assert_int_eq(k.n, 10);
	for (int i = 0; i < 10; i++) {
		ck_assert_int_eq(k.numbers[i], i + 1);
		ck_assert(k.continues[i] == (i < 9));
	}
	/* The connection goes on after the stream. */
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Echo", "{\"text\":\"x\"}", NULL);
	ck_assert_ptr_null(err);

	/* The same on the wire: continues:true on all but the last. */
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Count\",\"parameters\":{\"count\":4},\"more\":true}");
	for (int i = 1; i <= 4; i++) {
		_cleanup_json_ struct json_object *m = raw_recv(&r);
		assert_reply_keys(m);
		ck_assert_int_eq(json_object_get_int(reply_param(m, "number")), i);
		ck_assert(reply_continues(m) == (i < 4));
	}
	raw_close(&r);
}
END_TEST

START_TEST(more_expected) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Count", "{\"count\":3}", NULL);
	ck_assert_str_eq(err, VL_ERROR_EXPECTED_MORE);
	/* The connection is still good. */
	_cleanup_free_ char *err2 = call(c, "io.cprd.Test.Echo", "{\"text\":\"x\"}", NULL);
	ck_assert_ptr_null(err2);
}
END_TEST

/* ---- oneway -------------------------------------------------------------------- */

START_TEST(oneway_note) {
	/* On the wire: no reply to Note, so the first reply is Stats'. */
	struct raw r;
	raw_open(&r);
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "%s%c%s%c",
			 "{\"method\":\"io.cprd.Test.Note\",\"parameters\":{\"text\":\"n\"},\"oneway\":true}",
			 '\0', "{\"method\":\"io.cprd.Test.Stats\"}", '\0');
	ck_assert_int_eq(raw_send(&r, buf, (size_t)n), 0);
	_cleanup_json_ struct json_object *m = raw_recv(&r);
	ck_assert_ptr_null(reply_error(m));
	ck_assert_int_eq(json_object_get_int(reply_param(m, "notes")), 1);
	raw_close(&r);

	/* Through the client. */
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *p = json_tokener_parse("{\"text\":\"n\"}");
	ck_assert_int_eq(vl_client_call_oneway(c, "io.cprd.Test.Note", p), 0);
	_cleanup_json_ struct json_object *s = NULL;
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Stats", NULL, &s);
	ck_assert_ptr_null(err);
	ck_assert_int_eq(get_int(s, "notes"), 2);
}
END_TEST

START_TEST(oneway_with_more) {
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Count\",\"parameters\":{\"count\":2},"
			 "\"more\":true,\"oneway\":true}");
	_cleanup_json_ struct json_object *m = raw_recv(&r);
	ck_assert_str_eq(reply_error(m), VL_ERROR_INVALID_PARAMETER);
	ck_assert_str_eq(json_object_get_string(reply_param(m, "parameter")), "oneway");
	/* Nothing was started: the next call's reply is next. */
	raw_send_msg(&r, echo_a);
	assert_echo_reply(&r, "a");
	raw_close(&r);
}
END_TEST

START_TEST(oneway_errors_not_sent) {
	/* A oneway call that fails gets no error either: the reply would be
	 * taken for the answer to the client's next call. */
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Fail\",\"oneway\":true}");
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Nope\",\"oneway\":true}");
	raw_send_msg(&r, "{\"method\":\"no.such.Iface\",\"oneway\":true}");
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Note\",\"parameters\":{},\"oneway\":true}");
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Unimplemented\",\"oneway\":true}");
	raw_send_msg(&r, echo_a);
	assert_echo_reply(&r, "a");
	raw_close(&r);
}
END_TEST

/* ---- org.varlink.service ------------------------------------------------------- */

START_TEST(service_get_info) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "org.varlink.service.GetInfo", NULL, &r);
	ck_assert_ptr_null(err);
	ck_assert_str_eq(get_str(r, "vendor"), "cprd tests");
	ck_assert_str_eq(get_str(r, "product"), "test_varlink");
	ck_assert_str_eq(get_str(r, "version"), "1");
	ck_assert_str_eq(get_str(r, "url"), "https://cprd.invalid/");
	struct json_object *list;
	ck_assert(json_object_object_get_ex(r, "interfaces", &list));
	ck_assert_int_eq(json_object_array_length(list), 3);
	ck_assert_str_eq(json_object_get_string(json_object_array_get_idx(list, 0)), "org.varlink.service");
	ck_assert_str_eq(json_object_get_string(json_object_array_get_idx(list, 1)), "org.varlink.certification");
	ck_assert_str_eq(json_object_get_string(json_object_array_get_idx(list, 2)), "io.cprd.Test");
}
END_TEST

START_TEST(service_get_interface_description) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "org.varlink.service.GetInterfaceDescription",
					"{\"interface\":\"org.varlink.service\"}", &r);
	ck_assert_ptr_null(err);
	ck_assert_str_eq(get_str(r, "description"), vl_service_description);

	_cleanup_json_ struct json_object *r2 = NULL;
	_cleanup_free_ char *err2 = call(c, "org.varlink.service.GetInterfaceDescription",
					 "{\"interface\":\"io.cprd.Test\"}", &r2);
	ck_assert_ptr_null(err2);
	const char *d = get_str(r2, "description");
	ck_assert_ptr_nonnull(strstr(d, "\ninterface io.cprd.Test\n"));
	ck_assert_ptr_nonnull(strstr(d, "\nmethod Echo(text: string) -> (text: string)\n"));

	_cleanup_json_ struct json_object *r3 = NULL;
	_cleanup_free_ char *err3 = call(c, "org.varlink.service.GetInterfaceDescription",
					 "{\"interface\":\"no.such.Interface\"}", &r3);
	ck_assert_str_eq(err3, VL_ERROR_INTERFACE_NOT_FOUND);
	ck_assert_str_eq(get_str(r3, "interface"), "no.such.Interface");

	assert_invalid_parameter(c, "org.varlink.service.GetInterfaceDescription", NULL, "interface");
}
END_TEST

START_TEST(service_not_found) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *r = NULL;
	_cleanup_free_ char *err = call(c, "no.such.Method", NULL, &r);
	ck_assert_str_eq(err, VL_ERROR_INTERFACE_NOT_FOUND);
	ck_assert_str_eq(get_str(r, "interface"), "no.such");

	_cleanup_json_ struct json_object *r2 = NULL;
	_cleanup_free_ char *err2 = call(c, "io.cprd.Test.Nope", NULL, &r2);
	ck_assert_str_eq(err2, VL_ERROR_METHOD_NOT_FOUND);
	ck_assert_str_eq(get_str(r2, "method"), "io.cprd.Test.Nope");

	/* Not even an interface name. */
	_cleanup_json_ struct json_object *r3 = NULL;
	_cleanup_free_ char *err3 = call(c, "Nope", NULL, &r3);
	ck_assert_str_eq(err3, VL_ERROR_METHOD_NOT_FOUND);
	ck_assert_str_eq(get_str(r3, "method"), "Nope");

	/* An interface's prefix is not the interface. */
	_cleanup_json_ struct json_object *r4 = NULL;
	_cleanup_free_ char *err4 = call(c, "io.cprd.Echo", NULL, &r4);
	ck_assert_str_eq(err4, VL_ERROR_INTERFACE_NOT_FOUND);

	_cleanup_json_ struct json_object *r5 = NULL;
	_cleanup_free_ char *err5 = call(c, "io.cprd.Test.Unimplemented", NULL, &r5);
	ck_assert_str_eq(err5, VL_ERROR_METHOD_NOT_IMPLEMENTED);
	ck_assert_str_eq(get_str(r5, "method"), "io.cprd.Test.Unimplemented");
}
END_TEST

/* ---- the peer --------------------------------------------------------------- */

START_TEST(peer_credentials) {
	_cleanup_json_ struct json_object *s = stats();
	ck_assert_int_eq(get_int(s, "uid"), getuid());
	ck_assert_int_eq(get_int(s, "gid"), getgid());
	ck_assert_int_eq(get_int(s, "pid"), getpid());
}
END_TEST

/* ---- limits ------------------------------------------------------------------ */

START_TEST(limits_per_uid) {
	srv_restart(&(struct vl_server_limits){.connections_per_uid_max = 3});
	struct raw ok[3], extra[2];
	for (int i = 0; i < 3; i++) {
		raw_open(&ok[i]);
		raw_send_msg(&ok[i], echo_a);
		assert_echo_reply(&ok[i], "a");
	}
	/* The kernel completes the connect; the server closes at once (within
	 * WAIT_MS, long before any timeout of the server's would). */
	for (int i = 0; i < 2; i++) {
		raw_open(&extra[i]);
		ck_assert(raw_closed(&extra[i], WAIT_MS));
		raw_close(&extra[i]);
	}
	ck_assert_int_eq(srv_connections(), 3);
	/* The ones it kept still work, and a freed slot can be taken again. */
	raw_send_msg(&ok[1], echo_a);
	assert_echo_reply(&ok[1], "a");
	raw_close(&ok[0]);
	ck_assert(srv_wait_connections(2, WAIT_MS));
	assert_serving();
	for (int i = 1; i < 3; i++)
		raw_close(&ok[i]);
}
END_TEST

START_TEST(limits_total) {
	srv_restart(&(struct vl_server_limits){.connections_max = 2});
	struct raw a, b, c;
	raw_open(&a);
	raw_open(&b);
	raw_send_msg(&a, echo_a);
	assert_echo_reply(&a, "a");
	raw_send_msg(&b, echo_a);
	assert_echo_reply(&b, "a");
	raw_open(&c);
	ck_assert(raw_closed(&c, WAIT_MS));
	raw_close(&c);
	raw_close(&a);
	ck_assert(srv_wait_connections(1, WAIT_MS));
	assert_serving();
	raw_close(&b);
}
END_TEST

START_TEST(limits_message_timeout) {
	srv_restart(&(struct vl_server_limits){.message_timeout_ms = 200});

	/* Half a message, then silence. */
	struct raw r;
	raw_open(&r);
	int64_t start = now_ms();
	ck_assert_int_eq(raw_send(&r, echo_a, 10), 0);
	ck_assert(raw_closed(&r, WAIT_MS)); /* closed, and not much later than 200 ms */
	ck_assert_int_ge(now_ms() - start, 150);
	raw_close(&r);

	/* A trickle does not keep the message alive: a deadline that each byte
	 * renewed would let the whole message through, and it would be
	 * answered, not closed. */
	raw_open(&r);
	bool closed = false;
	for (size_t i = 0; i < sizeof(echo_a) - 1 && !closed; i++) {
		if (raw_send(&r, echo_a + i, 1) < 0)
			break;
		closed = raw_closed(&r, 50);
	}
	ck_assert(closed || raw_closed(&r, WAIT_MS));
	raw_close(&r);

	/* An idle connection between messages is not timed out. */
	raw_open(&r);
	raw_send_msg(&r, echo_a);
	assert_echo_reply(&r, "a");
	sleep_ms(400);
	raw_send_msg(&r, echo_a);
	assert_echo_reply(&r, "a");
	raw_close(&r);

	/* Nor is a call that takes longer than the timeout. */
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_free_ char *err = call(c, "io.cprd.Test.Sleep", "{\"ms\":400}", NULL);
	ck_assert_ptr_null(err);
	assert_serving();
}
END_TEST

START_TEST(limits_slow_reader) {
	/* A client asks for 1 MiB replies and never reads them. The server must
	 * stop taking its calls once enough is queued, keep serving others, and
	 * drop the connection when it makes no progress. */
	srv_restart(&(struct vl_server_limits){.message_max = 256 * 1024,
					       .message_timeout_ms = SLOW(1000)});
	enum { CALLS = 128, PAD = 64 * 1024 };
	_cleanup_free_ char *req = malloc(PAD + 1);
	int h = sprintf(req, "{\"method\":\"io.cprd.Test.Big\",\"parameters\":{\"size\":1048576}}");
	memset(req + h, ' ', PAD - (size_t)h); /* whitespace: fills the socket faster */
	req[PAD] = '\0';

	struct raw r;
	raw_open(&r);
	int sent = 0;
	for (; sent < CALLS; sent++) {
		struct pollfd p = {.fd = r.fd, .events = POLLOUT};
		if (poll(&p, 1, 100) == 0)
			break; /* the server stopped reading */
		ssize_t n = send(r.fd, req, PAD + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EAGAIN)
			continue;
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
			break; /* already dropped: slow machine */
		ck_assert_msg(n == PAD + 1, "send: %zd %m", n);
	}
	ck_assert_msg(sent < CALLS, "the server took all %d calls", sent);

	/* Others are served meanwhile: sooner than the message timeout would
	 * have freed a server stuck on the non-reader (both scale alike). */
	int64_t start = now_ms();
	assert_serving();
	ck_assert_int_lt(now_ms() - start, SLOW(1000));

	/* And the stuck connection goes away. */
	ck_assert_msg(srv_wait_connections(0, SLOW(5000)), "the non-reader was never closed");
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
	assert_serving();
}
END_TEST

START_TEST(limits_slow_stream_reader) {
	/* The same with a stream of small replies nobody reads. */
	srv_restart(&(struct vl_server_limits){.message_timeout_ms = 300});
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Count\",\"parameters\":{\"count\":1000000},\"more\":true}");
	assert_serving();
	ck_assert_msg(srv_wait_connections(0, SLOW(10000)), "the non-reader was never closed");
	_cleanup_json_ struct json_object *s = stats();
	ck_assert_int_eq(get_int(s, "disconnects"), 1); /* the stream's owner was told */
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
}
END_TEST

/* ---- malformed input ----------------------------------------------------------- */

/* Sends bytes (NUL included by the caller) and expects a clean close. */
static void assert_closed_on(const char *what, const void *data, size_t len) {
	struct raw r;
	raw_open(&r);
	raw_send(&r, data, len);
	ck_assert_msg(raw_closed(&r, WAIT_MS), "not closed on %s", what);
	raw_close(&r);
	assert_serving();
}

#define CLOSED_ON(s) assert_closed_on(s, s, sizeof(s))

START_TEST(malformed_closes) {
	CLOSED_ON("not json");
	CLOSED_ON("{\"method\":");
	CLOSED_ON("{\"method\":\"io.cprd.Test.Echo\",}");
	CLOSED_ON("[1,2]");
	CLOSED_ON("42");
	CLOSED_ON("\"io.cprd.Test.Echo\"");
	CLOSED_ON("null");
	CLOSED_ON("{}");
	CLOSED_ON("{\"parameters\":{}}");
	CLOSED_ON("{\"method\":5}");
	CLOSED_ON("{\"method\":null}");
	CLOSED_ON("{\"method\":\"\"}");
	CLOSED_ON("{\"method\":\"io.cprd.Test\\u0000.Echo\"}");
	CLOSED_ON("{\"method\":\"io.cprd.Test.Stats\"} {}"); /* two objects in one message */
	CLOSED_ON("{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"\xff\xfe\"}}");
	/* An empty message. */
	assert_closed_on("a lone NUL", "", 1);
	/* Nesting deeper than the parser allows. */
	char deep[1024];
	int n = sprintf(deep, "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"a\",\"x\":");
	for (int i = 0; i < 200; i++)
		deep[n++] = '[';
	for (int i = 0; i < 200; i++)
		deep[n++] = ']';
	n += sprintf(deep + n, "}}");
	assert_closed_on("deep nesting", deep, (size_t)n + 1);
}
END_TEST

START_TEST(malformed_flags) {
	/* Bad flags are the call's fault, not the connection's: an error. */
	static const char *const calls[][2] = {
		{"{\"method\":\"io.cprd.Test.Stats\",\"more\":\"yes\"}", "more"},
		{"{\"method\":\"io.cprd.Test.Stats\",\"oneway\":1}", "oneway"},
		{"{\"method\":\"io.cprd.Test.Stats\",\"upgrade\":true}", "upgrade"},
	};
	struct raw r;
	raw_open(&r);
	for (size_t i = 0; i < ELEMENTSOF(calls); i++) {
		raw_send_msg(&r, calls[i][0]);
		_cleanup_json_ struct json_object *m = raw_recv(&r);
		ck_assert_str_eq(reply_error(m), VL_ERROR_INVALID_PARAMETER);
		ck_assert_str_eq(json_object_get_string(reply_param(m, "parameter")), calls[i][1]);
	}
	/* Unknown top-level keys are ignored, as the spec asks. */
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Echo\",\"parameters\":{\"text\":\"a\"},\"future\":1}");
	assert_echo_reply(&r, "a");
	raw_close(&r);
}
END_TEST

START_TEST(malformed_after_nul) {
	/* A good call, then garbage: the call is answered, then the
	 * connection closes. */
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "%s%cgarbage", echo_a, '\0');
	struct raw r;
	raw_open(&r);
	ck_assert_int_eq(raw_send(&r, buf, (size_t)n + 1), 0); /* garbage\0 */
	assert_echo_reply(&r, "a");
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
	assert_serving();

	/* Garbage that never ends, then the client's EOF: answered, closed. */
	raw_open(&r);
	ck_assert_int_eq(raw_send(&r, buf, (size_t)n), 0);
	shutdown(r.fd, SHUT_WR);
	assert_echo_reply(&r, "a");
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
	assert_serving();
}
END_TEST

START_TEST(half_close_gets_replies) {
	/* A client may send its calls and shut down its side; it still gets
	 * every reply, even to a slow call. */
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Sleep\",\"parameters\":{\"ms\":100}}");
	raw_send_msg(&r, echo_a);
	shutdown(r.fd, SHUT_WR);
	_cleanup_json_ struct json_object *m = raw_recv(&r);
	ck_assert_int_eq(json_object_get_int(reply_param(m, "slept")), 100);
	assert_echo_reply(&r, "a");
	ck_assert(raw_closed(&r, WAIT_MS));
	raw_close(&r);
	ck_assert(srv_wait_connections(0, WAIT_MS));
}
END_TEST

START_TEST(disconnect_mid_message) {
	struct raw r;
	raw_open(&r);
	ck_assert_int_eq(raw_send(&r, echo_a, 20), 0);
	ck_assert(srv_wait_connections(1, WAIT_MS));
	raw_close(&r);
	ck_assert(srv_wait_connections(0, WAIT_MS));
	assert_serving();

	/* Also while a call is under way. */
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Sleep\",\"parameters\":{\"ms\":100}}");
	ck_assert_int_eq(raw_send(&r, echo_a, 20), 0);
	ck_assert(srv_wait_connections(1, WAIT_MS));
	raw_close(&r);
	ck_assert(srv_wait_connections(0, WAIT_MS));
	assert_serving();
}
END_TEST

START_TEST(disconnect_mid_stream) {
	struct raw r;
	raw_open(&r);
	raw_send_msg(&r, "{\"method\":\"io.cprd.Test.Count\",\"parameters\":{\"count\":1000000},\"more\":true}");
	for (int i = 1; i <= 3; i++) {
		_cleanup_json_ struct json_object *m = raw_recv(&r);
		ck_assert_int_eq(json_object_get_int(reply_param(m, "number")), i);
		ck_assert(reply_continues(m));
	}
	raw_close(&r);

	int64_t deadline = now_ms() + WAIT_MS;
	for (;;) {
		_cleanup_json_ struct json_object *s = stats();
		if (get_int(s, "disconnects") == 1)
			break;
		ck_assert_msg(now_ms() < deadline, "the stream's end was not noticed");
		sleep_ms(10);
	}
	ck_assert(srv_wait_connections(0, WAIT_MS));
	assert_serving();
}
END_TEST

/* ---- the client ------------------------------------------------------------------- */

START_TEST(client_deadline) {
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *p = json_tokener_parse("{\"ms\":2000}");
	struct json_object *reply = NULL;
	char *err = NULL;
	int64_t start = now_ms();
	ck_assert_int_eq(vl_client_call(c, "io.cprd.Test.Sleep", p, 200, &reply, &err), -ETIMEDOUT);
	int64_t took = now_ms() - start;
	ck_assert_int_ge(took, 190);       /* the deadline did not fire early */
	ck_assert_int_lt(took, SLOW(700)); /* nor hang */
	ck_assert_ptr_null(reply);
	ck_assert_ptr_null(err);
	/* The late reply would answer the wrong call: the client stays failed. */
	ck_assert_int_lt(vl_client_call(c, "io.cprd.Test.Stats", NULL, 200, &reply, &err), 0);
	assert_serving();
}
END_TEST

START_TEST(client_connect) {
	struct vl_client *c = NULL;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix:%s", srv.path);
	ck_assert_int_eq(vl_client_connect(addr, WAIT_MS, &c), 0);
	vl_client_free(c);
	snprintf(addr, sizeof(addr), "unix:%s/none", srv.dir);
	ck_assert_int_eq(vl_client_connect(addr, WAIT_MS, &c), -ENOENT);
	ck_assert_int_eq(vl_client_connect("unix:", WAIT_MS, &c), -EINVAL);
}
END_TEST

START_TEST(client_error_reply) {
	/* An error reply to a more call ends the stream. */
	_cleanup_(vl_client_freep) struct vl_client *c = client_new();
	_cleanup_json_ struct json_object *p = json_tokener_parse("{\"count\":0}");
	struct collected k = {0};
	ck_assert_int_eq(vl_client_call_more(c, "io.cprd.Test.Count", p, WAIT_MS, collect, &k), 0);
	ck_assert(k.error);
	ck_assert_int_eq(k.n, 0);
}
END_TEST

/* ---- vl_server_listen_path ------------------------------------------------------ */

static struct vl_server *other_server(struct event_base *base) {
	static const struct vl_server_info info = {"cprd tests", "other", "1", "", NULL};
	struct vl_server *s = NULL;
	ck_assert_int_eq(vl_server_new(base, &info, &s), 0);
	return s;
}

START_TEST(listen_stale_socket) {
	char path[192];
	snprintf(path, sizeof(path), "%s/other", srv.dir);
	/* A socket file nobody listens on, as a crashed server leaves it. */
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	struct raw r;
	struct sockaddr_un probe = sa;
	int pfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(connect(pfd, (struct sockaddr *)&probe, sizeof(probe)), -1);
	ck_assert_int_eq(errno, ECONNREFUSED);
	close(pfd);

	struct event_base *base = event_base_new();
	struct vl_server *s = other_server(base);
	ck_assert_int_eq(vl_server_listen_path(s, path, 0600), 0);
	struct stat after;
	ck_assert_int_eq(stat(path, &after), 0);
	ck_assert(S_ISSOCK(after.st_mode));
	raw_open_at(&r, path); /* a listening socket now: the backlog takes it */
	raw_close(&r);
	vl_server_free(s);
	ck_assert_int_eq(access(path, F_OK), -1); /* removed on free */
	event_base_free(base);
}
END_TEST

START_TEST(listen_regular_file) {
	char path[192];
	snprintf(path, sizeof(path), "%s/other", srv.dir);
	int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "data", 4), 4);
	close(fd);

	struct event_base *base = event_base_new();
	struct vl_server *s = other_server(base);
	ck_assert_int_lt(vl_server_listen_path(s, path, 0600), 0);
	vl_server_free(s);
	event_base_free(base);
	struct stat st;
	ck_assert_int_eq(stat(path, &st), 0); /* left alone */
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_int_eq(st.st_size, 4);
}
END_TEST

START_TEST(listen_live_server) {
	struct event_base *base = event_base_new();
	struct vl_server *s = other_server(base);
	ck_assert_int_eq(vl_server_listen_path(s, srv.path, 0600), -EADDRINUSE);
	vl_server_free(s);
	event_base_free(base);
	/* The path was not taken from the live server. */
	assert_serving();
}
END_TEST

START_TEST(listen_mode) {
	static const mode_t modes[] = {0600, 0660, 0666, 0700};
	char path[192];
	snprintf(path, sizeof(path), "%s/other", srv.dir);
	for (size_t i = 0; i < ELEMENTSOF(modes); i++) {
		struct event_base *base = event_base_new();
		struct vl_server *s = other_server(base);
		ck_assert_int_eq(vl_server_listen_path(s, path, modes[i]), 0);
		struct stat st;
		ck_assert_int_eq(stat(path, &st), 0);
		ck_assert_int_eq(st.st_mode & 07777, modes[i]);
		vl_server_free(s);
		event_base_free(base);
	}
	/* And the server under test asked for 0600. */
	struct stat st;
	ck_assert_int_eq(stat(srv.path, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0600);
}
END_TEST

/* ---- the suite -------------------------------------------------------------------- */

static TCase *new_tcase(const char *name) {
	TCase *tc = tcase_create(name);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 30 * slowdown);
	return tc;
}

static Suite *varlink_suite(void) {
	Suite *s = suite_create("varlink");
	TCase *tc;

	tc = new_tcase("framing");
	tcase_add_test(tc, framing_one_byte_at_a_time);
	tcase_add_test(tc, framing_split_writes);
	tcase_add_test(tc, framing_merged_in_order);
	tcase_add_test(tc, framing_nul_in_string);
	tcase_add_test(tc, framing_limit_small);
	tcase_add_test(tc, framing_limit_real);
	suite_add_tcase(s, tc);

	tc = new_tcase("params");
	tcase_add_test(tc, params_table);
	tcase_add_test(tc, params_over_the_wire);
	suite_add_tcase(s, tc);

	tc = new_tcase("replies");
	tcase_add_test(tc, replies_error_parameters);
	tcase_add_test(tc, replies_keys);
	tcase_add_test(tc, more_count);
	tcase_add_test(tc, more_expected);
	tcase_add_test(tc, oneway_note);
	tcase_add_test(tc, oneway_with_more);
	tcase_add_test(tc, oneway_errors_not_sent);
	suite_add_tcase(s, tc);

	tc = new_tcase("service");
	tcase_add_test(tc, service_get_info);
	tcase_add_test(tc, service_get_interface_description);
	tcase_add_test(tc, service_not_found);
	tcase_add_test(tc, peer_credentials);
	suite_add_tcase(s, tc);

	tc = new_tcase("limits");
	tcase_add_test(tc, limits_per_uid);
	tcase_add_test(tc, limits_total);
	tcase_add_test(tc, limits_message_timeout);
	tcase_add_test(tc, limits_slow_reader);
	tcase_add_test(tc, limits_slow_stream_reader);
	suite_add_tcase(s, tc);

	tc = new_tcase("malformed");
	tcase_add_test(tc, malformed_closes);
	tcase_add_test(tc, malformed_flags);
	tcase_add_test(tc, malformed_after_nul);
	tcase_add_test(tc, half_close_gets_replies);
	tcase_add_test(tc, disconnect_mid_message);
	tcase_add_test(tc, disconnect_mid_stream);
	suite_add_tcase(s, tc);

	tc = new_tcase("client");
	tcase_add_test(tc, client_deadline);
	tcase_add_test(tc, client_connect);
	tcase_add_test(tc, client_error_reply);
	suite_add_tcase(s, tc);

	tc = new_tcase("listen");
	tcase_add_test(tc, listen_stale_socket);
	tcase_add_test(tc, listen_regular_file);
	tcase_add_test(tc, listen_live_server);
	tcase_add_test(tc, listen_mode);
	suite_add_tcase(s, tc);

	return s;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
	return remove(path) < 0 ? -1 : 0;
}

/* CPRD_TEST_SLOWDOWN: a number from 1 to SLOWDOWN_MAX, default 1. */
static int read_slowdown(void) {
	const char *v = getenv("CPRD_TEST_SLOWDOWN");
	char *end;
	if (!v || !*v)
		return 0;
	errno = 0;
	slowdown = strtod(v, &end);
	if (errno || *end || !(slowdown >= 1 && slowdown <= SLOWDOWN_MAX)) {
		fprintf(stderr, "CPRD_TEST_SLOWDOWN=%s: wants a number from 1 to %d\n", v, SLOWDOWN_MAX);
		return -EINVAL;
	}
	return 0;
}

int main(void) {
	if (read_slowdown() < 0)
		return EXIT_FAILURE;
	/* Writes to a peer that left must fail with EPIPE, not kill us. */
	signal(SIGPIPE, SIG_IGN);
	log_set_max_level(LOG_WARNING);
	strcpy(base_dir, "/tmp/cprd-test-varlink-XXXXXX");
	if (!mkdtemp(base_dir)) {
		perror("mkdtemp");
		return EXIT_FAILURE;
	}
	SRunner *sr = srunner_create(varlink_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	nftw(base_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
