/* libFuzzer target: bytes from a client through a real vl_server, in
 * process. Each input is one connection to a server listening on a socket in
 * a private folder: the bytes are written, the client shuts down its sending
 * side, and the loop runs until the server closed the connection. Whatever
 * the bytes, the server must answer in well-formed messages and close. The
 * interface has io.cprd.Manager's parameter tables and handlers that answer
 * at once (one streams a notify first when asked for more). */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "fuzz_tables.h"
#include "log.h"
#include "varlink.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FZ_MESSAGE_MAX 2048 /* small, so the fuzzer reaches the limit */

static struct event_base *base;
static struct vl_server *server;
static char dir[64], path[128];

static int m_reply(struct vl_call *c, struct json_object *params, void *userdata) {
	struct json_object *p = json_object_new_object();
	json_object_object_add(p, "echo", params ? json_object_get(params) : NULL);
	return vl_call_reply(c, p);
}

static int m_stream(struct vl_call *c, struct json_object *params, void *userdata) {
	if (vl_call_more(c))
		vl_call_notify(c, json_object_new_object());
	return vl_call_reply(c, NULL);
}

static int m_error(struct vl_call *c, struct json_object *params, void *userdata) {
	return vl_call_error(c, "io.cprd.Manager.NoSuchVM", NULL);
}

static int m_fail(struct vl_call *c, struct json_object *params, void *userdata) {
	return -EIO; /* the server turns it into InternalError */
}

static const struct vl_method methods[] = {
	{.name = "ListVMs", .fn = m_reply, .params = fz_p_list},
	{.name = "GetVM", .fn = m_error, .params = fz_p_name},
	{.name = "CreateVM", .fn = m_reply, .params = fz_p_create},
	{.name = "StopVM", .fn = m_fail, .params = fz_p_stop},
	{.name = "WatchEvents", .fn = m_stream, .flags = VL_METHOD_REQUIRES_MORE},
	{.name = "Upgrade", .fn = m_stream, .params = fz_p_upgrade},
	{.name = "UpgradeMany", .fn = m_stream, .params = fz_p_upgrade_many},
	{.name = "All", .fn = m_reply, .params = fz_p_all},
	{.name = "Unimplemented"},
	{.name = NULL},
};

static const struct vl_interface iface = {
	.name = "io.cprd.Manager",
	.description = "interface io.cprd.Manager\n",
	.methods = methods,
};

static void cleanup(void) {
	vl_server_free(server); /* unlinks the socket */
	event_base_free(base);
	rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
	log_set_max_level(LOG_EMERG);
	snprintf(dir, sizeof(dir), "/tmp/cprd-fuzz-XXXXXX");
	CHECK(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/sock", dir);
	base = event_base_new();
	CHECK(base);
	CHECK(vl_server_new(base, &(struct vl_server_info){.vendor = "fuzz"}, &server) == 0);
	CHECK(vl_server_add_interface(server, &iface, NULL) == 0);
	vl_server_set_limits(server, &(struct vl_server_limits){.message_max = FZ_MESSAGE_MAX});
	CHECK(vl_server_listen_path(server, path, 0600) == 0);
	atexit(cleanup);
	return 0;
}

/* Checks one reply the server sent: a JSON object with parameters, an
 * optional error name and an optional continues. */
static void check_reply(const char *buf, size_t len) {
	struct json_object *m = NULL, *v;
	CHECK(vl_message_parse(buf, len, &m) == 0);
	CHECK(json_object_object_get_ex(m, "parameters", &v) && json_object_is_type(v, json_type_object));
	if (json_object_object_get_ex(m, "error", &v))
		CHECK(json_object_is_type(v, json_type_string) && json_object_get_string_len(v) > 0);
	if (json_object_object_get_ex(m, "continues", &v))
		CHECK(json_object_is_type(v, json_type_boolean));
	json_object_put(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	CHECK(fd >= 0);
	CHECK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	/* Inputs are at most a few KB: they fit in the socket buffer. */
	size_t off = 0;
	while (off < size) {
		ssize_t n = write(fd, data + off, size - off);
		CHECK(n > 0);
		off += (size_t)n;
	}
	CHECK(shutdown(fd, SHUT_WR) == 0);
	CHECK(fcntl(fd, F_SETFL, O_NONBLOCK) == 0);

	/* Turn the loop and read until the server closes. Each message sent
	 * back must be well-formed; a trailing partial message is not allowed
	 * either (the server only ever queues whole messages). */
	size_t cap = 1 << 16, have = 0;
	char *out = malloc(cap);
	CHECK(out);
	for (unsigned spins = 0;; spins++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		if (have == cap) {
			cap *= 2;
			out = realloc(out, cap);
			CHECK(out);
		}
		ssize_t n = read(fd, out + have, cap - have);
		if (n == 0)
			break;
		if (n > 0) {
			have += (size_t)n;
			spins = 0;
			continue;
		}
		CHECK(errno == EAGAIN || errno == ECONNRESET);
		if (errno == ECONNRESET)
			break;
		/* A server that neither answers nor closes hangs the client:
		 * libFuzzer's -timeout reports it. Sleep a little meanwhile. */
		if (spins > 1000)
			event_base_loop(base, EVLOOP_ONCE);
	}
	close(fd);

	size_t start = 0;
	for (size_t i = 0; i < have; i++)
		if (out[i] == '\0') {
			check_reply(out + start, i - start);
			start = i + 1;
		}
	CHECK(start == have);
	free(out);

	/* Let the server finish its side; no connection may be left over. */
	for (int i = 0; i < 100 && vl_server_connections(server) > 0; i++)
		event_base_loop(base, EVLOOP_NONBLOCK);
	CHECK(vl_server_connections(server) == 0);
	return 0;
}
