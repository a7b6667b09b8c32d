/* libFuzzer target: QMP messages from QEMU. The input is split into lines
 * the way the QMP client splits its input; each line goes through
 * qmp_parse_message, and the contracts of a parsed message are checked.
 *
 * With a first byte of '!' the rest is instead fed, as QEMU would write it,
 * to a real struct qmp over a socketpair: greeting, capabilities, replies,
 * events, garbage. The client must end in one sticky error or keep working,
 * call every pending command back exactly once and never crash. */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "log.h"
#include "qmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_message(const char *line, size_t len) {
	struct qmp_message m;
	int r = qmp_parse_message(line, len, &m);
	CHECK(r == 0 || r == -EBADMSG || r == -EMSGSIZE || r == -ENOMEM);
	if (r < 0) {
		CHECK(m.root == NULL);
		return;
	}
	CHECK(m.root && json_object_is_type(m.root, json_type_object));
	switch (m.type) {
	case QMP_MESSAGE_GREETING:
		CHECK(m.version.package);
		CHECK(m.version.major <= 0xffff && m.version.minor <= 0xffff && m.version.micro <= 0xffff);
		break;
	case QMP_MESSAGE_RETURN:
		break;
	case QMP_MESSAGE_ERROR:
		CHECK(m.error_class && m.error_desc);
		break;
	case QMP_MESSAGE_EVENT:
		CHECK(m.event && m.event[0]);
		CHECK(m.timestamp_usec >= 0);
		CHECK(!m.value || json_object_is_type(m.value, json_type_object));
		break;
	default:
		CHECK(!"unknown message type");
	}
	CHECK(qmp_message_type_to_string(m.type));
	qmp_message_done(&m);
	CHECK(m.root == NULL);
}

/* ---- the stream through a real client ---- */

static struct event_base *base;
static int replies, expected_replies, closed;

static void on_reply(struct qmp *q, struct json_object *ret, const struct qmp_error *err,
		     void *userdata) {
	/* ret may be NULL on success too: {"return": null}. */
	if (err)
		CHECK(!ret && err->error < 0 && err->desc);
	replies++;
}

static void on_ready(struct qmp *q, void *userdata) {
	/* One more command once ready, so a reply can match it too. */
	if (qmp_command(q, "query-status", NULL, 1000, on_reply, NULL) == 0)
		expected_replies++;
}

static void on_event(struct qmp *q, const char *name, struct json_object *data, int64_t ts,
		     void *userdata) {
	CHECK(name && name[0]);
}

static void on_closed(struct qmp *q, int error, void *userdata) {
	CHECK(error < 0);
	CHECK(qmp_get_error(q) == error);
	closed++;
}

static void run_stream(const uint8_t *data, size_t size, bool attached) {
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct qmp *q = NULL;
	const struct qmp_callbacks cb = {.ready = on_ready, .event = on_event, .closed = on_closed};
	replies = expected_replies = closed = 0;
	int r = attached ? qmp_new_attached(base, sv[0], &cb, NULL, "fuzz", &q)
			 : qmp_new(base, sv[0], &cb, NULL, "fuzz", &q);
	CHECK(r == 0);
	/* Queued before the handshake (held), then sent once ready. */
	if (qmp_command(q, "query-version", NULL, 1000, on_reply, NULL) == 0)
		expected_replies++;

	size_t off = 0;
	while (off < size) {
		ssize_t n = write(sv[1], data + off, size - off);
		CHECK(n > 0);
		off += (size_t)n;
	}
	CHECK(shutdown(sv[1], SHUT_WR) == 0);
	CHECK(fcntl(sv[1], F_SETFL, O_NONBLOCK) == 0);

	/* The peer hung up after its bytes: the client must notice and close,
	 * failing what is still pending. */
	char sink[4096];
	for (int i = 0; i < 10000 && !closed; i++) {
		event_base_loop(base, EVLOOP_NONBLOCK);
		while (read(sv[1], sink, sizeof(sink)) > 0)
			;
	}
	CHECK(closed == 1);
	CHECK(replies == expected_replies);
	CHECK(qmp_get_error(q) < 0);
	/* A closed channel refuses new commands with its sticky error. */
	CHECK(qmp_command(q, "quit", NULL, 1000, on_reply, NULL) == qmp_get_error(q));
	qmp_free(q);
	close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
	if (!base) {
		log_set_max_level(LOG_EMERG);
		base = event_base_new();
		CHECK(base);
	}
	if (size > 0 && data[0] == '!') {
		run_stream(data + 1, size - 1, size > 1 && data[1] == '~');
		return 0;
	}

	/* Lines as the client cuts them: at "\n", without a "\r" before it. */
	size_t start = 0;
	for (size_t i = 0; i <= size; i++) {
		if (i < size && data[i] != '\n')
			continue;
		size_t end = i;
		if (end > start && data[end - 1] == '\r')
			end--;
		if (end > start)
			check_message((const char *)data + start, end - start);
		start = i + 1;
	}
	/* And the whole input as one message. */
	if (size > 0)
		check_message((const char *)data, size);
	return 0;
}
