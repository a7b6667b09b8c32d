/* vl-cert-client: runs the org.varlink.certification client sequence with
 * proto/'s client against a server (varlink-go's, or our test server), and
 * checks every reply itself: varlink-go's server answers End with all_ok
 * true whatever happened, so End alone would prove nothing about us.
 * Prints "CERTIFIED" and exits 0 when every check passed.
 *
 * Usage: vl-cert-client [--test11=MODE] ADDRESS
 *   MODE oneway (the default, as the sequence says), or one of the wrong
 *   ways a server must notice and answer with End all_ok false: omit (no
 *   Test11), wrong (last_more_replies out of order), call (not oneway). */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "varlink.h"

#define CALL_TIMEOUT_MS 10000
#define CERT "org.varlink.certification."

static struct vl_client *client;

static _Noreturn void fail(const char *step, const char *what, struct json_object *got) {
	fprintf(stderr, "FAIL %s: %s%s%s\n", step, what, got ? "; got " : "",
		got ? json_object_to_json_string(got) : "");
	exit(1);
}

/* Equal as JSON values, numbers by value (1 and 1.0 are equal: varlink-go
 * writes a float 1.0 as 1), objects as key sets. */
static bool json_same(struct json_object *a, struct json_object *b) {
	bool an = json_object_is_type(a, json_type_int) || json_object_is_type(a, json_type_double);
	bool bn = json_object_is_type(b, json_type_int) || json_object_is_type(b, json_type_double);
	if (an || bn)
		return an && bn && json_object_get_double(a) == json_object_get_double(b);
	if (json_object_get_type(a) != json_object_get_type(b))
		return false;
	switch (json_object_get_type(a)) {
	case json_type_null:
		return true;
	case json_type_boolean:
		return json_object_get_boolean(a) == json_object_get_boolean(b);
	case json_type_string:
		return streq(json_object_get_string(a), json_object_get_string(b));
	case json_type_array:
		if (json_object_array_length(a) != json_object_array_length(b))
			return false;
		for (size_t i = 0; i < json_object_array_length(a); i++)
			if (!json_same(json_object_array_get_idx(a, i), json_object_array_get_idx(b, i)))
				return false;
		return true;
	case json_type_object: {
		if (json_object_object_length(a) != json_object_object_length(b))
			return false;
		json_object_object_foreach(a, key, va) {
			struct json_object *vb;
			if (!json_object_object_get_ex(b, key, &vb) || !json_same(va, vb))
				return false;
		}
		return true;
	}
	default:
		return false;
	}
}

/* Fails step unless got is the JSON text wants. */
static void expect(const char *step, struct json_object *got, const char *wants) {
	_cleanup_json_ struct json_object *w = json_tokener_parse(wants);
	if (!w)
		fail(step, "bad expectation in vl-cert-client", NULL);
	if (!json_same(got, w)) {
		char what[1024];
		snprintf(what, sizeof(what), "wants %s", wants);
		fail(step, what, got);
	}
}

/* Calls CERT method with params (taken) plus client_id; fails unless the
 * reply is a success. Returns the reply's parameters. */
static struct json_object *call(const char *method, const char *id, struct json_object *params) {
	struct json_object *reply = NULL;
	_cleanup_free_ char *error = NULL;
	_cleanup_json_ struct json_object *p = params ? params : json_object_new_object();
	char full[128];

	if (id)
		json_object_object_add(p, "client_id", json_object_new_string(id));
	snprintf(full, sizeof(full), CERT "%s", method);
	int r = vl_client_call(client, full, p, CALL_TIMEOUT_MS, &reply, &error);
	if (r < 0) {
		fprintf(stderr, "FAIL %s: transport error: %s\n", method, strerror(-r));
		exit(1);
	}
	if (error)
		fail(method, error, reply);
	if (!json_object_is_type(reply, json_type_object))
		fail(method, "the reply has no parameters object", reply);
	printf("%s: %s\n", method, json_object_to_json_string(reply));
	return reply;
}

static struct json_object *field(struct json_object *o, const char *k) {
	struct json_object *v = NULL;
	json_object_object_get_ex(o, k, &v);
	return v;
}

static bool has(struct json_object *o, const char *k) {
	return json_object_object_get_ex(o, k, NULL);
}

/* A nullable field: absent or null (implementations differ in which). */
static bool is_null_or_absent(struct json_object *o, const char *k) {
	return !has(o, k) || json_object_is_type(field(o, k), json_type_null);
}

/* Test09's MyType, as the reference servers send it: varlink-go writes the
 * interface's first map with keys Foo and Bar, the others foo and bar. */
static void expect_mytype(struct json_object *t) {
	static const char *const keys[] = {"object",   "enum",       "struct",    "array",
					   "dictionary", "stringset", "interface", NULL};
	size_t n = 0;
	for (const char *const *k = keys; *k; k++) {
		if (!has(t, *k))
			fail("Test09", "mytype lacks a field", t);
		n++;
	}
	n += has(t, "nullable") ? 1 : 0;
	n += has(t, "nullable_array_struct") ? 1 : 0;
	if (json_object_object_length(t) != (int)n)
		fail("Test09", "mytype has a field MyType does not declare", t);
	if (!is_null_or_absent(t, "nullable") || !is_null_or_absent(t, "nullable_array_struct"))
		fail("Test09", "mytype's nullable fields are not null", t);
	expect("Test09 object", field(t, "object"),
	       "{\"method\": \"org.varlink.certification.Test09\","
	       " \"parameters\": {\"map\": {\"foo\": \"Foo\", \"bar\": \"Bar\"}}}");
	expect("Test09 enum", field(t, "enum"), "\"two\"");
	expect("Test09 struct", field(t, "struct"), "{\"first\": 1, \"second\": \"2\"}");
	expect("Test09 array", field(t, "array"), "[\"one\", \"two\", \"three\"]");
	expect("Test09 dictionary", field(t, "dictionary"), "{\"foo\": \"Foo\", \"bar\": \"Bar\"}");
	expect("Test09 stringset", field(t, "stringset"), "{\"one\": {}, \"two\": {}, \"three\": {}}");

	struct json_object *i = field(t, "interface"), *foo = field(i, "foo");
	if (json_object_object_length(i) != 2)
		fail("Test09 interface", "wants the fields foo and anon", i);
	expect("Test09 interface.anon", field(i, "anon"), "{\"foo\": true, \"bar\": false}");
	if (!json_object_is_type(foo, json_type_array) || json_object_array_length(foo) != 4)
		fail("Test09 interface.foo", "wants an array of 4", foo);
	struct json_object *m1 = json_object_array_get_idx(foo, 1);
	_cleanup_json_ struct json_object *lower = json_tokener_parse("{\"foo\": \"foo\", \"bar\": \"bar\"}");
	_cleanup_json_ struct json_object *upper = json_tokener_parse("{\"Foo\": \"foo\", \"Bar\": \"bar\"}");
	if (!json_object_is_type(json_object_array_get_idx(foo, 0), json_type_null) ||
	    !json_object_is_type(json_object_array_get_idx(foo, 2), json_type_null) ||
	    !(json_same(m1, lower) || json_same(m1, upper)))
		fail("Test09 interface.foo", "wants [null, {foo|Foo: foo, bar|Bar: bar}, null, ...]", foo);
	expect("Test09 interface.foo[3]", json_object_array_get_idx(foo, 3),
	       "{\"one\": \"foo\", \"two\": \"bar\"}");
}

struct more_state {
	struct json_object *replies;
	bool ended; /* a reply without continues came */
};

static int on_reply(struct json_object *p, const char *error, bool continues, void *u) {
	struct more_state *m = u;
	size_t n = json_object_array_length(m->replies) + 1;
	char wants[64];

	if (error)
		fail("Test10", error, p);
	if (m->ended || n > 10)
		fail("Test10", "a reply after the last", p);
	printf("Test10 reply: %s%s\n", json_object_to_json_string(p), continues ? " (continues)" : "");
	snprintf(wants, sizeof(wants), "{\"string\": \"Reply number %zu\"}", n);
	expect("Test10", p, wants);
	if (continues != (n < 10))
		fail("Test10", n < 10 ? "a reply before the 10th lacks continues"
				      : "the 10th reply has continues", p);
	m->ended = !continues;
	json_object_array_add(m->replies, json_object_get(field(p, "string")));
	return 0;
}

/* Test11 the wrong way, as mode says; the server must notice. */
static void test11(const char *mode, const char *id, struct json_object *replies) {
	_cleanup_json_ struct json_object *p = json_object_new_object();
	json_object_object_add(p, "client_id", json_object_new_string(id));
	if (streq(mode, "wrong"))
		json_object_array_put_idx(replies, 0, json_object_new_string("Reply number 0"));
	json_object_object_add(p, "last_more_replies", json_object_get(replies));
	if (streq(mode, "omit"))
		return;
	if (streq(mode, "call")) {
		struct json_object *reply = NULL;
		_cleanup_free_ char *error = NULL;
		int r = vl_client_call(client, CERT "Test11", p, CALL_TIMEOUT_MS, &reply, &error);
		printf("Test11 (not oneway): %s %s\n", r < 0 ? strerror(-r) : error ? error : "reply",
		       json_object_to_json_string(reply));
		json_object_put(reply);
		return;
	}
	int r = vl_client_call_oneway(client, CERT "Test11", p);
	if (r < 0) {
		fprintf(stderr, "FAIL Test11: %s\n", strerror(-r));
		exit(1);
	}
	printf("Test11: sent oneway%s\n", streq(mode, "wrong") ? " (with wrong replies)" : "");
}

int main(int argc, char **argv) {
	const char *mode = "oneway", *address = NULL;
	setvbuf(stdout, NULL, _IOLBF, 0); /* in order with stderr when both go to a file */
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--test11=", 9) == 0)
			mode = argv[i] + 9;
		else
			address = argv[i];
	}
	if (!address || !(streq(mode, "oneway") || streq(mode, "omit") || streq(mode, "wrong") ||
			  streq(mode, "call"))) {
		fprintf(stderr, "usage: %s [--test11=oneway|omit|wrong|call] ADDRESS\n", argv[0]);
		return 2;
	}
	int r = vl_client_connect(address, CALL_TIMEOUT_MS, &client);
	if (r < 0) {
		fprintf(stderr, "FAIL connect %s: %s\n", address, strerror(-r));
		return 1;
	}

	_cleanup_json_ struct json_object *start = call("Start", NULL, NULL);
	const char *id = json_object_get_string(field(start, "client_id"));
	if (json_object_object_length(start) != 1 || !json_object_is_type(field(start, "client_id"), json_type_string) ||
	    !*id)
		fail("Start", "wants {client_id: a non-empty string}", start);

	_cleanup_json_ struct json_object *r1 = call("Test01", id, NULL);
	expect("Test01", r1, "{\"bool\": true}");
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "bool", json_object_get(field(r1, "bool")));
	_cleanup_json_ struct json_object *r2 = call("Test02", id, p);
	expect("Test02", r2, "{\"int\": 1}");
	p = json_object_new_object();
	json_object_object_add(p, "int", json_object_get(field(r2, "int")));
	_cleanup_json_ struct json_object *r3 = call("Test03", id, p);
	expect("Test03", r3, "{\"float\": 1.0}");
	p = json_object_new_object();
	json_object_object_add(p, "float", json_object_get(field(r3, "float")));
	_cleanup_json_ struct json_object *r4 = call("Test04", id, p);
	expect("Test04", r4, "{\"string\": \"ping\"}");
	p = json_object_new_object();
	json_object_object_add(p, "string", json_object_get(field(r4, "string")));
	_cleanup_json_ struct json_object *r5 = call("Test05", id, p);
	static const char values[] = "{\"bool\": false, \"int\": 2, \"float\": 3.141592653589793,"
				     " \"string\": \"a lot of string\"}";
	expect("Test05", r5, values);
	_cleanup_json_ struct json_object *r6 = call("Test06", id, json_object_get(r5));
	char wants6[256];
	snprintf(wants6, sizeof(wants6), "{\"struct\": %s}", values);
	expect("Test06", r6, wants6);
	p = json_object_new_object();
	json_object_object_add(p, "struct", json_object_get(field(r6, "struct")));
	_cleanup_json_ struct json_object *r7 = call("Test07", id, p);
	expect("Test07", r7, "{\"map\": {\"bar\": \"Bar\", \"foo\": \"Foo\"}}");
	p = json_object_new_object();
	json_object_object_add(p, "map", json_object_get(field(r7, "map")));
	_cleanup_json_ struct json_object *r8 = call("Test08", id, p);
	expect("Test08", r8, "{\"set\": {\"one\": {}, \"two\": {}, \"three\": {}}}");
	p = json_object_new_object();
	json_object_object_add(p, "set", json_object_get(field(r8, "set")));
	_cleanup_json_ struct json_object *r9 = call("Test09", id, p);
	if (json_object_object_length(r9) != 1)
		fail("Test09", "wants only mytype", r9);
	expect_mytype(field(r9, "mytype"));

	struct more_state m = {.replies = json_object_new_array()};
	_cleanup_json_ struct json_object *replies = m.replies;
	_cleanup_json_ struct json_object *p10 = json_object_new_object();
	json_object_object_add(p10, "client_id", json_object_new_string(id));
	json_object_object_add(p10, "mytype", json_object_get(field(r9, "mytype")));
	r = vl_client_call_more(client, CERT "Test10", p10, CALL_TIMEOUT_MS, on_reply, &m);
	if (r < 0)
		fail("Test10", strerror(-r), NULL);
	if (json_object_array_length(m.replies) != 10 || !m.ended)
		fail("Test10", "wants 10 replies, the last without continues", m.replies);

	/* A wrong client_id is refused with the interface's own error. */
	struct json_object *bad_reply = NULL;
	_cleanup_free_ char *bad_error = NULL;
	_cleanup_json_ struct json_object *bad = json_object_new_object();
	json_object_object_add(bad, "client_id", json_object_new_string("no-such-client"));
	r = vl_client_call(client, CERT "Test01", bad, CALL_TIMEOUT_MS, &bad_reply, &bad_error);
	json_object_put(bad_reply);
	if (r < 0 || !streq_ptr(bad_error, CERT "ClientIdError"))
		fail("Test01 with a wrong client_id", r < 0 ? strerror(-r) : bad_error ? bad_error : "succeeded",
		     NULL);
	printf("Test01 with a wrong client_id: %s\n", bad_error);

	test11(mode, id, m.replies);

	/* End's is the next reply: had the server answered the oneway Test11,
	 * that answer would be read here and fail the check. */
	_cleanup_json_ struct json_object *end = call("End", id, NULL);
	if (!json_object_is_type(field(end, "all_ok"), json_type_boolean) ||
	    json_object_object_length(end) != 1)
		fail("End", "wants {all_ok: bool}", end);
	if (!json_object_get_boolean(field(end, "all_ok"))) {
		fprintf(stderr, "End: all_ok is false\n");
		return 1;
	}
	vl_client_free(client);
	printf("CERTIFIED\n");
	return 0;
}
