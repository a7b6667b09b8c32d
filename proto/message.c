/* Varlink messages: parsing one NUL-delimited JSON object, and checking a
 * call's parameters against a method's declarative table. */
#include <errno.h>
#include <json-c/json.h>
#include <string.h>

#include "macro.h"
#include "varlink.h"

/* Deep nesting costs stack in json-c and means nothing to us. */
#define VL_JSON_DEPTH_MAX 64

size_t vl_utf8_sequence(const unsigned char *s, size_t len) {
	if (len == 0)
		return 0;
	unsigned char c = s[0];
	if (c < 0x80)
		return 1;
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		n = 1;
	else if (c >= 0xe0 && c <= 0xef) {
		n = 2;
		if (c == 0xe0)
			lo = 0xa0; /* overlong */
		if (c == 0xed)
			hi = 0x9f; /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 3;
		if (c == 0xf0)
			lo = 0x90; /* overlong */
		if (c == 0xf4)
			hi = 0x8f; /* past U+10FFFF */
	} else
		return 0;
	if (n >= len) /* truncated sequence */
		return 0;
	if (s[1] < lo || s[1] > hi)
		return 0;
	for (size_t k = 2; k <= n; k++)
		if ((s[k] & 0xc0) != 0x80)
			return 0;
	return n + 1;
}

/* json-c's own UTF-8 check lets some invalid forms through, and a string we
 * echo back must be valid for every client. */
static bool utf8_valid(const unsigned char *s, size_t len) {
	for (size_t i = 0, n; i < len; i += n)
		if (!(n = vl_utf8_sequence(s + i, len - i)))
			return false;
	return true;
}

int vl_message_parse(const char *buf, size_t len, struct json_object **ret) {
	if (len == 0 || len > VL_MESSAGE_MAX || len > INT32_MAX)
		return -EBADMSG;
	if (!utf8_valid((const unsigned char *)buf, len))
		return -EBADMSG;

	struct json_tokener *tok = json_tokener_new_ex(VL_JSON_DEPTH_MAX);
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);

	struct json_object *o = json_tokener_parse_ex(tok, buf, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t used = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);

	if (!o || jerr != json_tokener_success) {
		json_object_put(o);
		return -EBADMSG;
	}
	/* Only whitespace may follow the object inside one message. */
	for (size_t i = used; i < len; i++)
		if (!strchr(" \t\r\n", buf[i])) {
			json_object_put(o);
			return -EBADMSG;
		}
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return -EBADMSG;
	}
	*ret = o;
	return 0;
}

static bool type_matches(struct json_object *v, enum vl_type t) {
	switch (t) {
	case VL_ANY:
		return true;
	case VL_BOOL:
		return json_object_is_type(v, json_type_boolean);
	case VL_INT:
		return json_object_is_type(v, json_type_int);
	case VL_FLOAT:
		return json_object_is_type(v, json_type_double) ||
		       json_object_is_type(v, json_type_int);
	case VL_STRING:
		return json_object_is_type(v, json_type_string);
	case VL_OBJECT:
		return json_object_is_type(v, json_type_object);
	case VL_ARRAY:
		return json_object_is_type(v, json_type_array);
	}
	return false;
}

int vl_params_check(struct json_object *params, const struct vl_param *table,
		    const char **ret_bad) {
	const char *bad = NULL;

	if (params && !json_object_is_type(params, json_type_object)) {
		bad = "parameters";
		goto fail;
	}

	if (params) {
		json_object_object_foreach(params, key, val) {
			const struct vl_param *p = NULL;
			for (const struct vl_param *i = table; i && i->name; i++)
				if (streq(i->name, key)) {
					p = i;
					break;
				}
			if (!p) {
				bad = key; /* a field the method does not take */
				goto fail;
			}
			if (!val) { /* JSON null */
				if (p->flags & VL_MANDATORY) {
					bad = key;
					goto fail;
				}
				if (!(p->flags & VL_NULLABLE)) {
					bad = key;
					goto fail;
				}
				continue;
			}
			if (!type_matches(val, p->type)) {
				bad = key;
				goto fail;
			}
			/* "vm1\u0000x" must not be taken for "vm1" by C code. */
			if ((p->flags & VL_NO_NUL) && json_object_is_type(val, json_type_string) &&
			    strlen(json_object_get_string(val)) != (size_t)json_object_get_string_len(val)) {
				bad = key;
				goto fail;
			}
		}
	}

	for (const struct vl_param *i = table; i && i->name; i++)
		if ((i->flags & VL_MANDATORY) &&
		    (!params || !json_object_object_get_ex(params, i->name, NULL))) {
			bad = i->name;
			goto fail;
		}
	return 0;

fail:
	if (ret_bad)
		*ret_bad = bad;
	return -EINVAL;
}
