/* Interfaces served by the Varlink test server: org.varlink.certification
 * (so real clients from other projects can certify our server) and
 * io.cprd.Test (small methods the unit and python tests call). */
#include <errno.h>
#include <event2/event.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "test-service.h"
#include "varlink.h"

/* ---- org.varlink.certification ------------------------------------------ */

static const char cert_idl[] =
	"# Interface to test varlink implementations against.\n"
	"interface org.varlink.certification\n"
	"\n"
	"type Interface (\n"
	"  foo: ?[]?[string](foo, bar, baz),\n"
	"  anon: (foo: bool, bar: bool)\n"
	")\n"
	"\n"
	"type MyType (\n"
	"  object: object,\n"
	"  enum: (one, two, three),\n"
	"  struct: (first: int, second: string),\n"
	"  array: []string,\n"
	"  dictionary: [string]string,\n"
	"  stringset: [string](),\n"
	"  nullable: ?string,\n"
	"  nullable_array_struct: ?[](first: int, second: string),\n"
	"  interface: Interface\n"
	")\n"
	"\n"
	"method Start() -> (client_id: string)\n"
	"method Test01(client_id: string) -> (bool: bool)\n"
	"method Test02(client_id: string, bool: bool) -> (int: int)\n"
	"method Test03(client_id: string, int: int) -> (float: float)\n"
	"method Test04(client_id: string, float: float) -> (string: string)\n"
	"method Test05(client_id: string, string: string) -> (\n"
	"  bool: bool,\n"
	"  int: int,\n"
	"  float: float,\n"
	"  string: string\n"
	")\n"
	"method Test06(\n"
	"  client_id: string,\n"
	"  bool: bool,\n"
	"  int: int,\n"
	"  float: float,\n"
	"  string: string\n"
	") -> (\n"
	"  struct: (\n"
	"    bool: bool,\n"
	"    int: int,\n"
	"    float: float,\n"
	"    string: string\n"
	"  )\n"
	")\n"
	"method Test07(\n"
	"  client_id: string,\n"
	"  struct: (\n"
	"    bool: bool,\n"
	"    int: int,\n"
	"    float: float,\n"
	"    string: string\n"
	"  )\n"
	") -> (map: [string]string)\n"
	"method Test08(client_id: string, map: [string]string) -> (set: [string]())\n"
	"method Test09(client_id: string, set: [string]()) -> (mytype: MyType)\n"
	"# returns more than one reply with \"continues\"\n"
	"method Test10(client_id: string, mytype: MyType) -> (string: string)\n"
	"method Test11(client_id: string, last_more_replies: []string) -> ()\n"
	"method End(client_id: string) -> (all_ok: bool)\n"
	"error ClientIdError ()\n"
	"error CertificationError (wants: object, got: object)\n";

#define CERT_CLIENTS_MAX 64
#define CERT_STEPS 11 /* Test01 .. Test11 */

/* One certification run, from Start to End: the steps it passed. End
 * answers all_ok only when every step passed, Test11 included: Test11 is
 * oneway, so End is where a client learns whether it arrived right, and
 * where the test script (via this server's log) learns it too. */
struct cert_client {
	char id[40];
	unsigned passed; /* bit n set: Test<n> passed */
};

static struct {
	struct cert_client clients[CERT_CLIENTS_MAX];
	unsigned next;
} cert;

static struct json_object *get(struct json_object *o, const char *key) {
	struct json_object *v = NULL;
	if (o)
		json_object_object_get_ex(o, key, &v);
	return v;
}

static struct cert_client *cert_client(struct json_object *params) {
	const char *id = json_object_get_string(get(params, "client_id"));
	if (!id || !*id)
		return NULL;
	for (unsigned i = 0; i < CERT_CLIENTS_MAX; i++)
		if (streq(cert.clients[i].id, id))
			return &cert.clients[i];
	return NULL;
}

static int cert_fail(struct vl_call *c, struct json_object *params, const char *what) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "wants", json_object_new_string(what));
	json_object_object_add(p, "got", json_object_get(params));
	return vl_call_error(c, "org.varlink.certification.CertificationError", p);
}

/* Declares k, the caller's run; an unknown client_id gets ClientIdError. */
#define CERT_CLIENT(k, c, params)                                                          \
	struct cert_client *k = cert_client(params);                                       \
	if (!k)                                                                            \
		return vl_call_error(c, "org.varlink.certification.ClientIdError", NULL)

/* Test<n> passed: records it and sends its reply. */
static int cert_pass(struct vl_call *c, struct cert_client *k, int n, struct json_object *reply) {
	k->passed |= 1u << n;
	return vl_call_reply(c, reply);
}

static int cert_start(struct vl_call *c, struct json_object *params, void *u) {
	struct cert_client *k = &cert.clients[cert.next++ % CERT_CLIENTS_MAX];
	*k = (struct cert_client){0};
	snprintf(k->id, sizeof(k->id), "cprd-cert-%u-%ld", cert.next, (long)getpid());
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "client_id", json_object_new_string(k->id));
	return vl_call_reply(c, r);
}

static int cert_test01(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "bool", json_object_new_boolean(true));
	return cert_pass(c, k, 1, r);
}

static int cert_test02(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!json_object_get_boolean(get(params, "bool")))
		return cert_fail(c, params, "bool: true");
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "int", json_object_new_int(1));
	return cert_pass(c, k, 2, r);
}

static int cert_test03(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (json_object_get_int64(get(params, "int")) != 1)
		return cert_fail(c, params, "int: 1");
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "float", json_object_new_double(1.0));
	return cert_pass(c, k, 3, r);
}

static int cert_test04(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (json_object_get_double(get(params, "float")) != 1.0)
		return cert_fail(c, params, "float: 1.0");
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "string", json_object_new_string("ping"));
	return cert_pass(c, k, 4, r);
}

static void add_test05_values(struct json_object *r) {
	json_object_object_add(r, "bool", json_object_new_boolean(false));
	json_object_object_add(r, "int", json_object_new_int(2));
	json_object_object_add(r, "float", json_object_new_double(M_PI));
	json_object_object_add(r, "string", json_object_new_string("a lot of string"));
}

static bool is_test05_values(struct json_object *o) {
	return json_object_is_type(get(o, "bool"), json_type_boolean) &&
	       !json_object_get_boolean(get(o, "bool")) &&
	       json_object_get_int64(get(o, "int")) == 2 &&
	       json_object_get_double(get(o, "float")) == M_PI &&
	       streq_ptr(json_object_get_string(get(o, "string")), "a lot of string");
}

static int cert_test05(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!streq_ptr(json_object_get_string(get(params, "string")), "ping"))
		return cert_fail(c, params, "string: ping");
	struct json_object *r = json_object_new_object();
	add_test05_values(r);
	return cert_pass(c, k, 5, r);
}

static int cert_test06(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!is_test05_values(params))
		return cert_fail(c, params, "the values of Test05");
	struct json_object *s = json_object_new_object(), *r = json_object_new_object();
	add_test05_values(s);
	json_object_object_add(r, "struct", s);
	return cert_pass(c, k, 6, r);
}

static int cert_test07(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!is_test05_values(get(params, "struct")))
		return cert_fail(c, params, "struct with the values of Test05");
	struct json_object *m = json_object_new_object(), *r = json_object_new_object();
	json_object_object_add(m, "bar", json_object_new_string("Bar"));
	json_object_object_add(m, "foo", json_object_new_string("Foo"));
	json_object_object_add(r, "map", m);
	return cert_pass(c, k, 7, r);
}

static bool is_foo_bar_map(struct json_object *m) {
	return json_object_is_type(m, json_type_object) && json_object_object_length(m) == 2 &&
	       streq_ptr(json_object_get_string(get(m, "bar")), "Bar") &&
	       streq_ptr(json_object_get_string(get(m, "foo")), "Foo");
}

static bool is_one_two_three_set(struct json_object *s) {
	return json_object_is_type(s, json_type_object) && json_object_object_length(s) == 3 &&
	       get(s, "one") && get(s, "two") && get(s, "three");
}

static struct json_object *new_set(void) {
	struct json_object *s = json_object_new_object();
	json_object_object_add(s, "one", json_object_new_object());
	json_object_object_add(s, "two", json_object_new_object());
	json_object_object_add(s, "three", json_object_new_object());
	return s;
}

static int cert_test08(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!is_foo_bar_map(get(params, "map")))
		return cert_fail(c, params, "map: {foo: Foo, bar: Bar}");
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "set", new_set());
	return cert_pass(c, k, 8, r);
}

static struct json_object *new_mytype(void) {
	struct json_object *t = json_object_new_object();
	struct json_object *o = json_tokener_parse(
		"{\"method\": \"org.varlink.certification.Test09\","
		" \"parameters\": {\"map\": {\"foo\": \"Foo\", \"bar\": \"Bar\"}}}");
	json_object_object_add(t, "object", o);
	json_object_object_add(t, "enum", json_object_new_string("two"));
	json_object_object_add(t, "struct", json_tokener_parse("{\"first\": 1, \"second\": \"2\"}"));
	json_object_object_add(t, "array", json_tokener_parse("[\"one\", \"two\", \"three\"]"));
	json_object_object_add(t, "dictionary",
			       json_tokener_parse("{\"foo\": \"Foo\", \"bar\": \"Bar\"}"));
	json_object_object_add(t, "stringset", new_set());
	json_object_object_add(
		t, "interface",
		json_tokener_parse("{\"foo\": [null, {\"foo\": \"foo\", \"bar\": \"bar\"}, null,"
				   " {\"one\": \"foo\", \"two\": \"bar\"}],"
				   " \"anon\": {\"foo\": true, \"bar\": false}}"));
	return t;
}

static int cert_test09(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!is_one_two_three_set(get(params, "set")))
		return cert_fail(c, params, "set: {one, two, three}");
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "mytype", new_mytype());
	return cert_pass(c, k, 9, r);
}

static bool is_string_map(struct json_object *m, const char *k1, const char *v1, const char *k2,
			  const char *v2) {
	return json_object_is_type(m, json_type_object) && json_object_object_length(m) == 2 &&
	       streq_ptr(json_object_get_string(get(m, k1)), v1) &&
	       streq_ptr(json_object_get_string(get(m, k2)), v2);
}

/* MyType's interface field, as new_mytype() sends it. */
static bool is_mytype_interface(struct json_object *i) {
	struct json_object *foo = get(i, "foo"), *anon = get(i, "anon");
	if (!json_object_is_type(i, json_type_object) || json_object_object_length(i) != 2 ||
	    !json_object_is_type(foo, json_type_array) || json_object_array_length(foo) != 4)
		return false;
	return json_object_is_type(json_object_array_get_idx(foo, 0), json_type_null) &&
	       is_string_map(json_object_array_get_idx(foo, 1), "foo", "foo", "bar", "bar") &&
	       json_object_is_type(json_object_array_get_idx(foo, 2), json_type_null) &&
	       is_string_map(json_object_array_get_idx(foo, 3), "one", "foo", "two", "bar") &&
	       json_object_is_type(anon, json_type_object) && json_object_object_length(anon) == 2 &&
	       json_object_is_type(get(anon, "foo"), json_type_boolean) &&
	       json_object_get_boolean(get(anon, "foo")) &&
	       json_object_is_type(get(anon, "bar"), json_type_boolean) &&
	       !json_object_get_boolean(get(anon, "bar"));
}

static bool is_mytype(struct json_object *t) {
	struct json_object *o = get(t, "object"), *s = get(t, "struct"), *a = get(t, "array");
	if (!streq_ptr(json_object_get_string(get(o, "method")),
		       "org.varlink.certification.Test09") ||
	    !is_foo_bar_map(get(get(o, "parameters"), "map")))
		return false;
	if (!streq_ptr(json_object_get_string(get(t, "enum")), "two"))
		return false;
	if (json_object_get_int64(get(s, "first")) != 1 ||
	    !streq_ptr(json_object_get_string(get(s, "second")), "2"))
		return false;
	if (!json_object_is_type(a, json_type_array) || json_object_array_length(a) != 3 ||
	    !streq_ptr(json_object_get_string(json_object_array_get_idx(a, 0)), "one") ||
	    !streq_ptr(json_object_get_string(json_object_array_get_idx(a, 1)), "two") ||
	    !streq_ptr(json_object_get_string(json_object_array_get_idx(a, 2)), "three"))
		return false;
	/* The nullable fields: null or absent (get() gives NULL for both). */
	if (!json_object_is_type(get(t, "nullable"), json_type_null) ||
	    !json_object_is_type(get(t, "nullable_array_struct"), json_type_null))
		return false;
	return is_foo_bar_map(get(t, "dictionary")) && is_one_two_three_set(get(t, "stringset")) &&
	       is_mytype_interface(get(t, "interface"));
}

static int cert_test10(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	if (!is_mytype(get(params, "mytype")))
		return cert_fail(c, params, "the MyType of Test09");
	if (!vl_call_more(c))
		return cert_fail(c, params, "a call with more");
	for (int i = 1; i <= 10; i++) {
		char buf[32];
		snprintf(buf, sizeof(buf), "Reply number %d", i);
		struct json_object *r = json_object_new_object();
		json_object_object_add(r, "string", json_object_new_string(buf));
		int e = i < 10 ? vl_call_notify(c, r) : vl_call_reply(c, r);
		if (e < 0)
			return e;
	}
	k->passed |= 1u << 10;
	return 0;
}

/* Test11 is oneway: nothing reaches the client, so what it finds is logged
 * (the certification script reads it) and kept for End. */
static int cert_test11(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	struct json_object *a = get(params, "last_more_replies");
	bool replies_ok = json_object_array_length(a) == 10;
	for (size_t i = 0; replies_ok && i < 10; i++) {
		char buf[32];
		snprintf(buf, sizeof(buf), "Reply number %zu", i + 1);
		replies_ok = streq_ptr(json_object_get_string(json_object_array_get_idx(a, i)), buf);
	}
	fprintf(stderr, "cert-server: Test11 from %s: %s, %s\n", k->id,
		vl_call_oneway(c) ? "oneway" : "NOT oneway",
		replies_ok ? "the 10 replies of Test10" : "WRONG last_more_replies");
	if (!vl_call_oneway(c))
		return cert_fail(c, params, "a oneway call");
	if (!replies_ok)
		return cert_fail(c, params, "last_more_replies: the 10 replies of Test10");
	test_service_stats.test11_oneway++;
	return cert_pass(c, k, 11, NULL);
}

static int cert_end(struct vl_call *c, struct json_object *params, void *u) {
	CERT_CLIENT(k, c, params);
	char missing[CERT_STEPS * 8] = "";
	for (int n = 1; n <= CERT_STEPS; n++)
		if (!(k->passed & (1u << n)))
			snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), " Test%02d", n);
	bool all_ok = !*missing;
	fprintf(stderr, "cert-server: End from %s: all_ok %s%s%s\n", k->id, all_ok ? "true" : "false",
		all_ok ? "" : "; did not pass:", missing);
	*k = (struct cert_client){0};
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "all_ok", json_object_new_boolean(all_ok));
	if (all_ok)
		test_service_stats.certified++;
	return vl_call_reply(c, r);
}

static const struct vl_param p_id[] = {{"client_id", VL_STRING, VL_MANDATORY}, {}};
static const struct vl_param p_02[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"bool", VL_BOOL, VL_MANDATORY}, {}};
static const struct vl_param p_03[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"int", VL_INT, VL_MANDATORY}, {}};
static const struct vl_param p_04[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"float", VL_FLOAT, VL_MANDATORY}, {}};
static const struct vl_param p_05[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"string", VL_STRING, VL_MANDATORY}, {}};
static const struct vl_param p_06[] = {
	{"client_id", VL_STRING, VL_MANDATORY}, {"bool", VL_BOOL, VL_MANDATORY},
	{"int", VL_INT, VL_MANDATORY},          {"float", VL_FLOAT, VL_MANDATORY},
	{"string", VL_STRING, VL_MANDATORY},    {}};
static const struct vl_param p_07[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"struct", VL_OBJECT, VL_MANDATORY}, {}};
static const struct vl_param p_08[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"map", VL_OBJECT, VL_MANDATORY}, {}};
static const struct vl_param p_09[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"set", VL_OBJECT, VL_MANDATORY}, {}};
static const struct vl_param p_10[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"mytype", VL_OBJECT, VL_MANDATORY}, {}};
static const struct vl_param p_11[] = {{"client_id", VL_STRING, VL_MANDATORY},
				       {"last_more_replies", VL_ARRAY, VL_MANDATORY}, {}};

static const struct vl_method cert_methods[] = {
	{.name = "Start", .fn = cert_start},
	{.name = "Test01", .fn = cert_test01, .params = p_id},
	{.name = "Test02", .fn = cert_test02, .params = p_02},
	{.name = "Test03", .fn = cert_test03, .params = p_03},
	{.name = "Test04", .fn = cert_test04, .params = p_04},
	{.name = "Test05", .fn = cert_test05, .params = p_05},
	{.name = "Test06", .fn = cert_test06, .params = p_06},
	{.name = "Test07", .fn = cert_test07, .params = p_07},
	{.name = "Test08", .fn = cert_test08, .params = p_08},
	{.name = "Test09", .fn = cert_test09, .params = p_09},
	{.name = "Test10", .fn = cert_test10, .params = p_10, .flags = VL_METHOD_REQUIRES_MORE},
	{.name = "Test11", .fn = cert_test11, .params = p_11},
	{.name = "End", .fn = cert_end, .params = p_id},
	{},
};

static const struct vl_interface cert_interface = {
	.name = "org.varlink.certification",
	.description = cert_idl,
	.methods = cert_methods,
};

/* ---- io.cprd.Test -------------------------------------------------------- */

struct test_service_stats test_service_stats;

static const char test_idl[] =
	"# Small methods for cprd's own protocol tests.\n"
	"interface io.cprd.Test\n"
	"\n"
	"# Returns what it was given.\n"
	"method Echo(text: string) -> (text: string)\n"
	"\n"
	"# Streams count replies numbered from 1; needs more.\n"
	"method Count(count: int) -> (number: int)\n"
	"\n"
	"# Replies after ms milliseconds, from the event loop.\n"
	"method Sleep(ms: int) -> (slept: int)\n"
	"\n"
	"# Fails with TestError carrying the given reason.\n"
	"method Fail(reason: ?string) -> ()\n"
	"\n"
	"# Records a oneway call: Stats counts it.\n"
	"method Note(text: string) -> ()\n"
	"\n"
	"# Returns how many Note calls were seen and the caller's credentials.\n"
	"method Stats() -> (notes: int, uid: int, gid: int, pid: int, disconnects: int)\n"
	"\n"
	"# Returns a string of size bytes.\n"
	"method Big(size: int) -> (data: string)\n"
	"\n"
	"# Declared but not implemented: MethodNotImplemented.\n"
	"method Unimplemented() -> ()\n"
	"\n"
	"# The reason of Fail.\n"
	"error TestError (reason: string)\n";

static int test_echo(struct vl_call *c, struct json_object *params, void *u) {
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "text", json_object_get(get(params, "text")));
	return vl_call_reply(c, r);
}

struct counter {
	struct vl_call *call;
	struct event *ev;
	int64_t next, count;
};

static void counter_free(struct counter *k) {
	event_free(k->ev);
	vl_call_unref(k->call);
	free(k);
}

static void on_count(evutil_socket_t fd, short what, void *userdata) {
	struct counter *k = userdata;
	if (!vl_call_alive(k->call))
		return counter_free(k);
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "number", json_object_new_int64(k->next));
	if (k->next >= k->count) {
		vl_call_reply(k->call, r);
		return counter_free(k);
	}
	vl_call_notify(k->call, r);
	k->next++;
	struct timeval tv = {0, 1000};
	evtimer_add(k->ev, &tv);
}

static void on_count_disconnect(struct vl_call *c, void *userdata) {
	test_service_stats.disconnects++;
}

static int test_count(struct vl_call *c, struct json_object *params, void *u) {
	struct event_base *base = u;
	int64_t n = json_object_get_int64(get(params, "count"));
	if (n < 1 || n > 1000000)
		return vl_call_error_invalid_parameter(c, "count");
	struct counter *k = calloc(1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	k->call = vl_call_ref(c);
	k->next = 1;
	k->count = n;
	k->ev = evtimer_new(base, on_count, k);
	vl_call_on_disconnect(c, on_count_disconnect, NULL);
	struct timeval tv = {0, 0};
	evtimer_add(k->ev, &tv);
	return 0;
}

struct sleeper {
	struct vl_call *call;
	struct event *ev;
	int64_t ms;
};

static void on_sleep(evutil_socket_t fd, short what, void *userdata) {
	struct sleeper *s = userdata;
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "slept", json_object_new_int64(s->ms));
	vl_call_reply(s->call, r); /* -ENOTCONN if the caller left: fine */
	event_free(s->ev);
	vl_call_unref(s->call);
	free(s);
}

static int test_sleep(struct vl_call *c, struct json_object *params, void *u) {
	struct event_base *base = u;
	int64_t ms = json_object_get_int64(get(params, "ms"));
	if (ms < 0 || ms > 60000)
		return vl_call_error_invalid_parameter(c, "ms");
	struct sleeper *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->call = vl_call_ref(c);
	s->ms = ms;
	s->ev = evtimer_new(base, on_sleep, s);
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
	evtimer_add(s->ev, &tv);
	return 0;
}

static int test_fail(struct vl_call *c, struct json_object *params, void *u) {
	const char *reason = json_object_get_string(get(params, "reason"));
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "reason", json_object_new_string(reason ? reason : "asked to fail"));
	return vl_call_error(c, "io.cprd.Test.TestError", r);
}

static int test_note(struct vl_call *c, struct json_object *params, void *u) {
	test_service_stats.notes++;
	return vl_call_reply(c, NULL);
}

static int test_stats(struct vl_call *c, struct json_object *params, void *u) {
	const struct ucred *peer = vl_call_peer(c);
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "notes", json_object_new_int(test_service_stats.notes));
	json_object_object_add(r, "uid", json_object_new_int64(peer->uid));
	json_object_object_add(r, "gid", json_object_new_int64(peer->gid));
	json_object_object_add(r, "pid", json_object_new_int64(peer->pid));
	json_object_object_add(r, "disconnects", json_object_new_int(test_service_stats.disconnects));
	return vl_call_reply(c, r);
}

static int test_big(struct vl_call *c, struct json_object *params, void *u) {
	int64_t size = json_object_get_int64(get(params, "size"));
	if (size < 0 || size > (int64_t)VL_MESSAGE_MAX)
		return vl_call_error_invalid_parameter(c, "size");
	char *buf = malloc((size_t)size + 1);
	if (!buf)
		return -ENOMEM;
	memset(buf, 'x', (size_t)size);
	buf[size] = '\0';
	struct json_object *r = json_object_new_object();
	json_object_object_add(r, "data", json_object_new_string_len(buf, (int)size));
	free(buf);
	return vl_call_reply(c, r);
}

static const struct vl_param p_echo[] = {{"text", VL_STRING, VL_MANDATORY}, {}};
static const struct vl_param p_count[] = {{"count", VL_INT, VL_MANDATORY}, {}};
static const struct vl_param p_sleep[] = {{"ms", VL_INT, VL_MANDATORY}, {}};
static const struct vl_param p_fail[] = {{"reason", VL_STRING, VL_NULLABLE}, {}};
static const struct vl_param p_note[] = {{"text", VL_STRING, VL_MANDATORY}, {}};
static const struct vl_param p_big[] = {{"size", VL_INT, VL_MANDATORY}, {}};

static const struct vl_method test_methods[] = {
	{.name = "Echo", .fn = test_echo, .params = p_echo},
	{.name = "Count", .fn = test_count, .params = p_count, .flags = VL_METHOD_REQUIRES_MORE},
	{.name = "Sleep", .fn = test_sleep, .params = p_sleep},
	{.name = "Fail", .fn = test_fail, .params = p_fail},
	{.name = "Note", .fn = test_note, .params = p_note},
	{.name = "Stats", .fn = test_stats},
	{.name = "Big", .fn = test_big, .params = p_big},
	{.name = "Unimplemented"},
	{},
};

static const struct vl_interface test_interface = {
	.name = "io.cprd.Test",
	.description = test_idl,
	.methods = test_methods,
};

int test_service_register(struct vl_server *s, struct event_base *base) {
	int r = vl_server_add_interface(s, &cert_interface, NULL);
	if (r < 0)
		return r;
	return vl_server_add_interface(s, &test_interface, base);
}
