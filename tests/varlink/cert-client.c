/* vl-cert-client: runs the org.varlink.certification client sequence with
 * proto/'s client against a server (varlink-go's, in the tests), so our
 * client is certified too. Prints "CERTIFIED" and exits 0 on success. */
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "varlink.h"

#define CALL_TIMEOUT_MS 10000

static struct vl_client *client;

/* Calls method with params (taken) plus client_id; returns the reply. */
static struct json_object *call(const char *method, const char *id, struct json_object *params) {
	struct json_object *reply = NULL;
	_cleanup_free_ char *error = NULL;
	_cleanup_json_ struct json_object *p = params ? params : json_object_new_object();
	char full[128];

	if (id)
		json_object_object_add(p, "client_id", json_object_new_string(id));
	snprintf(full, sizeof(full), "org.varlink.certification.%s", method);
	int r = vl_client_call(client, full, p, CALL_TIMEOUT_MS, &reply, &error);
	if (r < 0) {
		fprintf(stderr, "%s: transport error: %s\n", method, strerror(-r));
		exit(1);
	}
	if (error) {
		fprintf(stderr, "%s: error %s %s\n", method, error, json_object_to_json_string(reply));
		exit(1);
	}
	printf("%s: %s\n", method, json_object_to_json_string(reply));
	return reply;
}

static struct json_object *field(struct json_object *o, const char *k) {
	struct json_object *v = NULL;
	json_object_object_get_ex(o, k, &v);
	return json_object_get(v);
}

struct more_state {
	struct json_object *replies;
};

static int on_reply(struct json_object *p, const char *error, bool continues, void *u) {
	struct more_state *m = u;
	if (error) {
		fprintf(stderr, "Test10: error %s\n", error);
		return -EIO;
	}
	printf("Test10 reply: %s%s\n", json_object_to_json_string(p), continues ? " (continues)" : "");
	json_object_array_add(m->replies, field(p, "string"));
	return 0;
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: %s ADDRESS\n", argv[0]);
		return 2;
	}
	int r = vl_client_connect(argv[1], CALL_TIMEOUT_MS, &client);
	if (r < 0) {
		fprintf(stderr, "connect %s: %s\n", argv[1], strerror(-r));
		return 1;
	}

	_cleanup_json_ struct json_object *start = call("Start", NULL, NULL);
	_cleanup_json_ struct json_object *idref = field(start, "client_id");
	const char *id = json_object_get_string(idref);

	_cleanup_json_ struct json_object *r1 = call("Test01", id, NULL);
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "bool", field(r1, "bool"));
	_cleanup_json_ struct json_object *r2 = call("Test02", id, p);
	p = json_object_new_object();
	json_object_object_add(p, "int", field(r2, "int"));
	_cleanup_json_ struct json_object *r3 = call("Test03", id, p);
	p = json_object_new_object();
	json_object_object_add(p, "float", field(r3, "float"));
	_cleanup_json_ struct json_object *r4 = call("Test04", id, p);
	p = json_object_new_object();
	json_object_object_add(p, "string", field(r4, "string"));
	_cleanup_json_ struct json_object *r5 = call("Test05", id, p);
	_cleanup_json_ struct json_object *r6 = call("Test06", id, json_object_get(r5));
	p = json_object_new_object();
	json_object_object_add(p, "struct", field(r6, "struct"));
	_cleanup_json_ struct json_object *r7 = call("Test07", id, p);
	p = json_object_new_object();
	json_object_object_add(p, "map", field(r7, "map"));
	_cleanup_json_ struct json_object *r8 = call("Test08", id, p);
	p = json_object_new_object();
	json_object_object_add(p, "set", field(r8, "set"));
	_cleanup_json_ struct json_object *r9 = call("Test09", id, p);

	struct more_state m = {.replies = json_object_new_array()};
	_cleanup_json_ struct json_object *p10 = json_object_new_object();
	json_object_object_add(p10, "client_id", json_object_new_string(id));
	json_object_object_add(p10, "mytype", field(r9, "mytype"));
	r = vl_client_call_more(client, "org.varlink.certification.Test10", p10, CALL_TIMEOUT_MS,
				on_reply, &m);
	if (r < 0 || json_object_array_length(m.replies) != 10) {
		fprintf(stderr, "Test10 failed: %s\n", r < 0 ? strerror(-r) : "not 10 replies");
		return 1;
	}

	_cleanup_json_ struct json_object *p11 = json_object_new_object();
	json_object_object_add(p11, "client_id", json_object_new_string(id));
	json_object_object_add(p11, "last_more_replies", m.replies);
	r = vl_client_call_oneway(client, "org.varlink.certification.Test11", p11);
	if (r < 0) {
		fprintf(stderr, "Test11 failed: %s\n", strerror(-r));
		return 1;
	}
	_cleanup_json_ struct json_object *end = call("End", id, NULL);
	if (!json_object_get_boolean(json_object_object_get(end, "all_ok"))) {
		fprintf(stderr, "End: all_ok is false\n");
		return 1;
	}
	vl_client_free(client);
	printf("CERTIFIED\n");
	return 0;
}
