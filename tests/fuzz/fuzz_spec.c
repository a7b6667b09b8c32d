/* libFuzzer target: a VM spec (JSON, as CreateVM's "spec" carries it)
 * through spec_from_json_trusted, the syntax-only parser used for specs read
 * back from disk, through spec_from_json, which also looks at the host
 * (stat and realpath of the paths named, nothing is written or run), and
 * through spec_from_json_record (a snapshot record's: the host's look, and
 * the disks' backing chains).
 *
 * Contracts checked: a refusal names a field and gives a reason; the host
 * check is never more lenient than the syntax check; an accepted spec
 * survives spec_to_json -> spec_from_json_trusted unchanged; its name is
 * one spec_name_valid() accepts; its NICs are at most SPEC_NICS_MAX, on
 * bridges with valid interface names, with unicast MACs none of which is
 * given twice (a derived one included). */
#include <errno.h>
#include <json-c/json.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_check.h"
#include "log.h"
#include "spec.h"
#include "tap.h"
#include "varlink.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_refusal(const struct spec_error *err) {
	/* The field is named, unless it is a key that is itself empty
	 * ({"": 1} gets field "" "is not a known field"). */
	CHECK(err->field[0] != '\0' || strcmp(err->reason, "is not a known field") == 0);
	CHECK(err->reason[0] != '\0');
	CHECK(memchr(err->field, '\0', sizeof(err->field)));
	CHECK(memchr(err->reason, '\0', sizeof(err->reason)));
}

static void check_spec(const struct vm_spec *s) {
	CHECK(s->name && spec_name_valid(s->name));
	CHECK(s->machine && s->qemu && s->qemu[0] == '/' && s->accel);
	CHECK(s->memory_mib >= SPEC_MEMORY_MIN_MIB);
	CHECK(s->cpus >= 1 && s->cpus <= SPEC_CPUS_MAX);
	CHECK(s->n_disks <= SPEC_DISKS_MAX);
	for (size_t i = 0; i < s->n_disks; i++) {
		CHECK(s->disks[i].path && s->disks[i].path[0] == '/' && !strchr(s->disks[i].path, ','));
		CHECK(s->disks[i].format);
	}
	CHECK(s->n_nics <= SPEC_NICS_MAX);
	for (size_t i = 0; i < s->n_nics; i++) {
		CHECK(s->nics[i].bridge && tap_ifname_valid(s->nics[i].bridge));
		char mac[TAP_MAC_STRLEN];
		uint8_t back[6];
		tap_mac_format(s->nics[i].mac, mac);
		CHECK(tap_mac_parse(mac, back, NULL) == 0);
		for (size_t j = 0; j < i; j++)
			CHECK(memcmp(s->nics[i].mac, s->nics[j].mac, 6) != 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
	static bool quiet;
	if (!quiet) {
		log_set_max_level(LOG_EMERG);
		quiet = true;
	}

	/* A name alone: what spec_name_valid() says of any NUL-ended bytes. */
	if (size <= 80) {
		char name[81];
		memcpy(name, data, size);
		name[size] = '\0';
		if (spec_name_valid(name)) {
			CHECK(strlen(name) >= 1 && strlen(name) <= SPEC_NAME_MAX);
			CHECK(!strchr(name, '/') && strcmp(name, ".") && strcmp(name, ".."));
		}
	}

	/* The spec parsers get what a Varlink message would carry. */
	struct json_object *o = NULL;
	if (vl_message_parse((const char *)data, size, &o) < 0)
		return 0;
	struct json_object *spec_o = o;
	struct json_object *inner;
	/* {"spec": {...}} as in CreateVM, or the spec itself. */
	if (json_object_object_get_ex(o, "spec", &inner) && json_object_is_type(inner, json_type_object))
		spec_o = inner;

	struct spec_error err = {0};
	struct vm_spec *trusted = NULL, *full = NULL;
	int rt = spec_from_json_trusted(spec_o, &trusted, &err);
	CHECK(rt == 0 || rt == -EINVAL || rt == -ENOMEM);
	if (rt == -EINVAL)
		check_refusal(&err);

	struct spec_error err2 = {0};
	int rf = spec_from_json(spec_o, &full, &err2);
	CHECK(rf == 0 || rf == -EINVAL || rf == -ENOMEM);
	if (rf == -EINVAL)
		check_refusal(&err2);
	/* The full check is the syntax check plus the host's. */
	if (rf == 0)
		CHECK(rt == 0);
	if (rt == -EINVAL)
		CHECK(rf == -EINVAL);

	/* A snapshot record's spec: the full check plus disks' backing, so
	 * between the two. */
	struct vm_spec *rec = NULL;
	struct spec_error err4 = {0};
	int rr = spec_from_json_record(spec_o, &rec, &err4);
	CHECK(rr == 0 || rr == -EINVAL || rr == -ENOMEM);
	if (rr == -EINVAL)
		check_refusal(&err4);
	if (rf == 0)
		CHECK(rr == 0);
	if (rr == 0)
		CHECK(rt == 0);
	spec_free(rec);

	if (rt == 0) {
		check_spec(trusted);
		/* What cprd writes to vm.json reads back as the same spec. */
		struct json_object *j = spec_to_json(trusted);
		CHECK(j);
		struct vm_spec *back = NULL;
		struct spec_error err3 = {0};
		CHECK(spec_from_json_trusted(j, &back, &err3) == 0);
		struct json_object *j2 = spec_to_json(back);
		CHECK(json_object_equal(j, j2));
		json_object_put(j2);
		json_object_put(j);
		spec_free(back);
	}
	if (rf == 0)
		check_spec(full);
	spec_free(trusted);
	spec_free(full);

	/* The binary check on the qemu path named, when there is one. */
	struct json_object *q;
	if (json_object_object_get_ex(spec_o, "qemu", &q) && json_object_is_type(q, json_type_string) &&
	    strlen(json_object_get_string(q)) == (size_t)json_object_get_string_len(q)) {
		struct spec_error e = {0};
		if (spec_check_binary(json_object_get_string(q), &e, "qemu") < 0)
			check_refusal(&e);
	}
	json_object_put(o);
	return 0;
}
