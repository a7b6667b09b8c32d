/* libFuzzer target: one Varlink message (the bytes before a NUL) through
 * vl_message_parse, then its "parameters" through vl_params_check with
 * tables like io.cprd.Manager's. Checks the contracts on the way: a parsed
 * message is an object, a refusal names a field, and the same input always
 * gets the same answer. */
#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"
#include "fuzz_tables.h"
#include "log.h"
#include "varlink.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool names_something(struct json_object *params, const struct vl_param *table,
			    const char *bad) {
	if (!bad)
		return false;
	if (strcmp(bad, "parameters") == 0)
		return true;
	if (params && json_object_is_type(params, json_type_object) &&
	    json_object_object_get_ex(params, bad, NULL))
		return true;
	for (const struct vl_param *p = table; p->name; p++)
		if (strcmp(p->name, bad) == 0)
			return true;
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
	static bool quiet;
	if (!quiet) {
		log_set_max_level(LOG_EMERG);
		quiet = true;
	}

	/* The framing: a message ends at the first NUL. */
	const uint8_t *nul = memchr(data, 0, size);
	size_t len = nul ? (size_t)(nul - data) : size;

	struct json_object *msg = NULL;
	int r = vl_message_parse((const char *)data, len, &msg);
	CHECK(r == 0 || r == -EBADMSG || r == -ENOMEM);
	if (r < 0) {
		CHECK(!msg);
		return 0;
	}
	CHECK(json_object_is_type(msg, json_type_object));

	/* Deterministic: the same bytes parse the same way. */
	struct json_object *again = NULL;
	CHECK(vl_message_parse((const char *)data, len, &again) == 0);
	/* Compared as text: json-c reads NaN even in strict mode, and NaN is
	 * not equal to itself. */
	CHECK(strcmp(json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN),
		     json_object_to_json_string_ext(again, JSON_C_TO_STRING_PLAIN)) == 0);
	json_object_put(again);

	/* What a server does next: the parameters against each table. */
	struct json_object *params = NULL;
	json_object_object_get_ex(msg, "parameters", &params);
	for (const struct vl_param *const *t = fz_tables; *t; t++) {
		const char *bad = NULL;
		r = vl_params_check(params, *t, &bad);
		CHECK(r == 0 || r == -EINVAL);
		if (r < 0)
			CHECK(names_something(params, *t, bad));
		/* NULL params means {}: only a mandatory field can be missing. */
		const char *bad0 = NULL;
		if (vl_params_check(NULL, *t, &bad0) < 0)
			CHECK(bad0 && names_something(NULL, *t, bad0));
	}

	json_object_put(msg);
	return 0;
}
