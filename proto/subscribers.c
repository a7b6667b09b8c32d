/* A set of streaming calls that get the same replies (see varlink.h). */
#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>

#include "varlink.h"

int vl_subscribers_add(struct vl_subscribers *s, struct vl_call *call) {
	struct vl_call **n = realloc(s->calls, (s->n + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	s->calls = n;
	s->calls[s->n++] = vl_call_ref(call);
	return 0;
}

size_t vl_subscribers_prune(struct vl_subscribers *s) {
	for (size_t i = 0; i < s->n;) {
		if (vl_call_alive(s->calls[i])) {
			i++;
			continue;
		}
		vl_call_unref(s->calls[i]);
		s->calls[i] = s->calls[--s->n];
	}
	return s->n;
}

void vl_subscribers_notify(struct vl_subscribers *s, struct json_object *params) {
	vl_subscribers_prune(s);
	/* One parameters object serves every reply: json-c counts references. */
	for (size_t i = 0; i < s->n; i++)
		vl_call_notify(s->calls[i], json_object_get(params));
	json_object_put(params);
}

void vl_subscribers_clear(struct vl_subscribers *s) {
	for (size_t i = 0; i < s->n; i++)
		vl_call_unref(s->calls[i]);
	free(s->calls);
	s->calls = NULL;
	s->n = 0;
}
