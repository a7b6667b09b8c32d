/* A blocking Varlink client for command-line tools: one connection, calls
 * in sequence, a deadline on every wait. */
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include "macro.h"
#include "varlink.h"

struct vl_client {
	int fd;
	char *buf; /* received bytes not yet consumed */
	size_t len, cap;
	int error; /* sticky transport error */
};

static int64_t now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int wait_fd(int fd, short events, int64_t deadline) {
	for (;;) {
		int timeout = -1;
		if (deadline >= 0) {
			int64_t left = deadline - now_ms();
			if (left <= 0)
				return -ETIMEDOUT;
			timeout = left > INT32_MAX ? INT32_MAX : (int)left;
		}
		struct pollfd p = {.fd = fd, .events = events};
		int r = poll(&p, 1, timeout);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		return 0;
	}
}

int vl_client_connect(const char *address, int timeout_ms, struct vl_client **ret) {
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	const char *path = address;

	if (strncmp(address, "unix:", 5) == 0)
		path = address + 5;
	/* "unix:PATH;mode=0600" style suffixes belong to servers; ignore them. */
	size_t plen = strcspn(path, ";");
	if (plen == 0)
		return -EINVAL;
	if (plen >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, plen);

	_cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != EINPROGRESS && errno != EAGAIN)
			return -errno;
		int r = wait_fd(fd, POLLOUT, deadline);
		if (r < 0)
			return r;
		int err = 0;
		socklen_t sl = sizeof(err);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
			return -errno;
		if (err)
			return -err;
	}

	struct vl_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = TAKE_FD(fd);
	*ret = c;
	return 0;
}

void vl_client_free(struct vl_client *c) {
	if (!c)
		return;
	safe_close(c->fd);
	free(c->buf);
	free(c);
}

static int client_send(struct vl_client *c, const char *method, struct json_object *params,
		       unsigned flags, int64_t deadline) {
	if (c->error)
		return c->error;

	_cleanup_json_ struct json_object *msg = json_object_new_object();
	json_object_object_add(msg, "method", json_object_new_string(method));
	if (params)
		json_object_object_add(msg, "parameters", json_object_get(params));
	/* False flags are left out, as the protocol asks of clients. */
	if (flags & VL_CALL_MORE)
		json_object_object_add(msg, "more", json_object_new_boolean(true));
	if (flags & VL_CALL_ONEWAY)
		json_object_object_add(msg, "oneway", json_object_new_boolean(true));

	size_t len;
	const char *s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN, &len);
	if (!s)
		return -ENOMEM;
	if (len + 1 > VL_MESSAGE_MAX)
		return -EMSGSIZE;

	size_t off = 0, total = len + 1; /* with the NUL */
	while (off < total) {
		ssize_t n = send(c->fd, s + off, total - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			int r = wait_fd(c->fd, POLLOUT, deadline);
			if (r < 0)
				return r == -ETIMEDOUT ? r : (c->error = r);
			continue;
		}
		if (n < 0)
			return c->error = -errno;
		off += (size_t)n;
	}
	return 0;
}

/* Reads one reply message. */
static int client_receive(struct vl_client *c, int64_t deadline, struct json_object **ret) {
	if (c->error)
		return c->error;
	for (;;) {
		char *nul = c->len ? memchr(c->buf, '\0', c->len) : NULL;
		if (nul) {
			size_t mlen = (size_t)(nul - c->buf);
			int r = vl_message_parse(c->buf, mlen, ret);
			memmove(c->buf, nul + 1, c->len - mlen - 1);
			c->len -= mlen + 1;
			if (r < 0)
				return c->error = r;
			return 0;
		}
		if (c->len >= VL_MESSAGE_MAX)
			return c->error = -EMSGSIZE;
		if (c->cap - c->len < 65536) {
			size_t ncap = c->cap ? c->cap * 2 : 65536;
			if (ncap > VL_MESSAGE_MAX + 65536)
				ncap = VL_MESSAGE_MAX + 65536;
			char *n = realloc(c->buf, ncap);
			if (!n)
				return -ENOMEM;
			c->buf = n;
			c->cap = ncap;
		}
		ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			int r = wait_fd(c->fd, POLLIN, deadline);
			if (r < 0)
				return r == -ETIMEDOUT ? r : (c->error = r);
			continue;
		}
		if (n < 0)
			return c->error = -errno;
		if (n == 0)
			return c->error = -ECONNRESET;
		c->len += (size_t)n;
	}
}

/* Splits a reply into its parts; takes ownership of msg. */
static int reply_split(struct json_object *msg, struct json_object **ret_params,
		       char **ret_error, bool *ret_continues) {
	_cleanup_json_ struct json_object *m = msg;
	struct json_object *v;

	*ret_error = NULL;
	*ret_continues = false;
	if (json_object_object_get_ex(m, "error", &v)) {
		if (!json_object_is_type(v, json_type_string))
			return -EBADMSG;
		*ret_error = strdup(json_object_get_string(v));
		if (!*ret_error)
			return -ENOMEM;
	}
	if (json_object_object_get_ex(m, "continues", &v) && v) {
		if (!json_object_is_type(v, json_type_boolean)) {
			free(*ret_error);
			return -EBADMSG;
		}
		*ret_continues = json_object_get_boolean(v);
	}
	if (json_object_object_get_ex(m, "parameters", &v) && v &&
	    json_object_is_type(v, json_type_object))
		*ret_params = json_object_get(v);
	else
		*ret_params = json_object_new_object();
	return 0;
}

int vl_client_call(struct vl_client *c, const char *method, struct json_object *params,
		   int timeout_ms, struct json_object **ret_params, char **ret_error) {
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	struct json_object *msg = NULL;
	bool continues;

	*ret_params = NULL;
	*ret_error = NULL;
	int r = client_send(c, method, params, 0, deadline);
	if (r < 0)
		return r;
	r = client_receive(c, deadline, &msg);
	if (r < 0) {
		/* A late reply would confuse the next call on this connection. */
		c->error = r;
		return r;
	}
	r = reply_split(msg, ret_params, ret_error, &continues);
	if (r < 0)
		return c->error = r;
	if (continues) { /* we did not ask for more */
		json_object_put(*ret_params);
		*ret_params = NULL;
		free(*ret_error);
		*ret_error = NULL;
		return c->error = -EBADMSG;
	}
	return 0;
}

int vl_client_call_more(struct vl_client *c, const char *method, struct json_object *params,
			int timeout_ms, vl_reply_fn fn, void *userdata) {
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	int r = client_send(c, method, params, VL_CALL_MORE, deadline);
	if (r < 0)
		return r;
	for (;;) {
		struct json_object *msg = NULL, *p = NULL;
		_cleanup_free_ char *error = NULL;
		bool continues;

		deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
		r = client_receive(c, deadline, &msg);
		if (r < 0)
			return c->error = r;
		r = reply_split(msg, &p, &error, &continues);
		if (r < 0)
			return c->error = r;
		r = fn(p, error, continues && !error, userdata);
		json_object_put(p);
		if (r < 0) {
			if (continues && !error)
				c->error = -ECANCELED; /* replies still on the way */
			return r;
		}
		if (!continues || error)
			return 0;
	}
}

int vl_client_call_oneway(struct vl_client *c, const char *method, struct json_object *params) {
	return client_send(c, method, params, VL_CALL_ONEWAY, now_ms() + 30000);
}
