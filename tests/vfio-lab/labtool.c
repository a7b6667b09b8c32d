/*
 * labtool: the small things the VFIO lab's L1 guest needs that busybox
 * lacks (L1 has no Python): a memfd handed to QEMU, a QMP client on a unix
 * socket, and a millisecond clock. Built static by build-l1.sh; see
 * docs/vfio-lab.md.
 *
 *   labtool memfd-exec NAME MIB FD PROGRAM [ARG...]
 *       memfd_create(NAME), MIB MiB long, at fd FD (not close-on-exec),
 *       then exec PROGRAM: QEMU gets -object memory-backend-file,
 *       mem-path=/proc/self/fd/FD,share=on as it does from cprd.
 *   labtool qmp [-t SECONDS] [-w EVENT] [-e] SOCKET [COMMAND...]
 *       connects (retrying until the socket is there), negotiates, sends
 *       each COMMAND (a JSON object on one line) and prints its reply; with
 *       -w waits for the event EVENT afterwards, with -e prints events until
 *       the peer closes. Events seen are printed too, each line prefixed
 *       with "event ". Exits 0, 1 when a command got an error reply, 2 on
 *       trouble (no connection, I/O, timeout).
 *   labtool now
 *       CLOCK_MONOTONIC in milliseconds.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES (1 << 20)	/* QMP replies of the lab are small */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("labtool: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static long parse_long(const char *s, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0)
		die("bad %s: %s", what, s);
	return v;
}

/* ---- memfd-exec ------------------------------------------------------------ */

static int cmd_memfd_exec(int argc, char **argv)
{
	long mib, fd;
	int m;

	if (argc < 5)
		die("usage: labtool memfd-exec NAME MIB FD PROGRAM [ARG...]");
	mib = parse_long(argv[2], "size");
	fd = parse_long(argv[3], "fd");
	if (fd < 3 || fd > 1023)
		die("fd %ld: use 3..1023", fd);
	m = memfd_create(argv[1], MFD_CLOEXEC);
	if (m < 0)
		die("memfd_create: %m");
	if (ftruncate(m, (off_t)mib << 20) < 0)
		die("ftruncate: %m");
	/* dup2 leaves the copy without close-on-exec: the one fd QEMU keeps. */
	if (m != fd && dup2(m, (int)fd) < 0)
		die("dup2: %m");
	if (m != fd)
		close(m);
	execvp(argv[4], argv + 4);
	die("exec %s: %m", argv[4]);
	return 2;
}

/* ---- qmp ------------------------------------------------------------------- */

struct conn {
	int fd;
	int64_t deadline;	/* ms, CLOCK_MONOTONIC */
	char *buf;
	size_t len;
};

static int conn_open(struct conn *c, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sa.sun_path))
		die("socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	/* A cpr-transfer target opens its monitor only after reading the cpr channel. */
	for (;;) {
		c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (c->fd < 0)
			die("socket: %m");
		if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return 0;
		if (errno != ENOENT && errno != ECONNREFUSED)
			die("connect %s: %m", path);
		close(c->fd);
		if (now_ms() >= c->deadline)
			die("connect %s: timed out (%m)", path);
		usleep(1000);
	}
}

/* The next line from the peer (without the newline), or NULL at EOF or the deadline. */
static char *conn_line(struct conn *c, bool *timed_out)
{
	*timed_out = false;
	for (;;) {
		char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;

		if (nl) {
			size_t n = (size_t)(nl - c->buf);
			char *line = malloc(n + 1);

			if (!line)
				die("out of memory");
			memcpy(line, c->buf, n);
			line[n] = 0;
			if (n && line[n - 1] == '\r')
				line[n - 1] = 0;
			memmove(c->buf, nl + 1, c->len - n - 1);
			c->len -= n + 1;
			return line;
		}
		if (c->len >= LINE_MAX_BYTES)
			die("a QMP line over %d bytes", LINE_MAX_BYTES);
		int64_t left = c->deadline - now_ms();
		if (left <= 0) {
			*timed_out = true;
			return NULL;
		}
		struct pollfd p = { .fd = c->fd, .events = POLLIN };
		int r = poll(&p, 1, left > 1000 ? 1000 : (int)left);
		if (r < 0 && errno != EINTR)
			die("poll: %m");
		if (r <= 0)
			continue;
		ssize_t got = read(c->fd, c->buf + c->len, LINE_MAX_BYTES - c->len);
		if (got < 0 && errno != EINTR && errno != EAGAIN)
			die("read: %m");
		if (got == 0)
			return NULL;
		if (got > 0)
			c->len += (size_t)got;
	}
}

static void conn_send(struct conn *c, const char *text)
{
	size_t n = strlen(text), off = 0;

	while (off < n) {
		ssize_t w = write(c->fd, text + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			die("write: %m");
		off += (size_t)w;
	}
}

static bool is_event(const char *line, const char *name)
{
	char want[160];

	if (!strstr(line, "\"event\""))
		return false;
	if (!name)
		return true;
	snprintf(want, sizeof(want), "\"event\": \"%s\"", name);
	return strstr(line, want) != NULL;
}

/*
 * Sends COMMAND with the id "labN" put in after its opening brace, and
 * prints lines until the reply with that id came; events on the way are
 * printed as "event ..." and *seen set when one is named wait_event.
 * Returns 0, or 1 for an error reply.
 */
static int qmp_command(struct conn *c, const char *command, int n,
		       const char *wait_event, bool *seen)
{
	const char *brace = strchr(command, '{');
	char id[32], *text;
	bool timed_out;

	if (!brace)
		die("not a JSON object: %s", command);
	snprintf(id, sizeof(id), "\"id\": \"lab%d\"", n);
	if (asprintf(&text, "%.*s{%s, %s\n", (int)(brace - command), command, id, brace + 1) < 0)
		die("out of memory");
	conn_send(c, text);
	free(text);
	for (;;) {
		char *line = conn_line(c, &timed_out);

		if (!line)
			die("no reply to %s (%s)", command, timed_out ? "timed out" : "connection closed");
		if (is_event(line, NULL)) {
			printf("event %s\n", line);
			if (wait_event && is_event(line, wait_event))
				*seen = true;
		} else if (strstr(line, id)) {
			bool err = strstr(line, "\"error\"") != NULL;

			printf("%s\n", line);
			free(line);
			return err ? 1 : 0;
		}
		free(line);
	}
}

static int cmd_qmp(int argc, char **argv)
{
	struct conn c = { .fd = -1 };
	const char *wait_event = NULL;
	bool follow = false, seen = false, timed_out;
	long seconds = 10;
	int opt, rc = 0, i;
	char *line;

	optind = 2;
	while ((opt = getopt(argc, argv, "t:w:e")) != -1) {
		switch (opt) {
		case 't':
			seconds = parse_long(optarg, "timeout");
			break;
		case 'w':
			wait_event = optarg;
			break;
		case 'e':
			follow = true;
			break;
		default:
			die("usage: labtool qmp [-t SECONDS] [-w EVENT] [-e] SOCKET [COMMAND...]");
		}
	}
	if (optind >= argc)
		die("usage: labtool qmp [-t SECONDS] [-w EVENT] [-e] SOCKET [COMMAND...]");
	setvbuf(stdout, NULL, _IOLBF, 0);
	c.deadline = now_ms() + seconds * 1000;
	c.buf = malloc(LINE_MAX_BYTES);
	if (!c.buf)
		die("out of memory");
	conn_open(&c, argv[optind]);

	line = conn_line(&c, &timed_out);
	if (!line || !strstr(line, "\"QMP\""))
		die("no QMP greeting on %s", argv[optind]);
	free(line);
	if (qmp_command(&c, "{\"execute\": \"qmp_capabilities\"}", 0, wait_event, &seen))
		die("qmp_capabilities failed");
	for (i = optind + 1; i < argc; i++)
		rc |= qmp_command(&c, argv[i], i - optind, wait_event, &seen);

	while ((wait_event && !seen) || follow) {
		line = conn_line(&c, &timed_out);
		if (!line) {
			if (wait_event && !seen)
				die("no %s event (%s)", wait_event, timed_out ? "timed out" : "connection closed");
			break;	/* -e: the peer closed, or the time is up */
		}
		if (is_event(line, NULL)) {
			printf("event %s\n", line);
			if (wait_event && is_event(line, wait_event))
				seen = true;
		}
		free(line);
	}
	close(c.fd);
	free(c.buf);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "memfd-exec"))
		return cmd_memfd_exec(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "qmp"))
		return cmd_qmp(argc, argv);
	if (argc == 2 && !strcmp(argv[1], "now")) {
		printf("%lld\n", (long long)now_ms());
		return 0;
	}
	fprintf(stderr, "usage: labtool memfd-exec NAME MIB FD PROGRAM [ARG...]\n"
		"       labtool qmp [-t SECONDS] [-w EVENT] [-e] SOCKET [COMMAND...]\n"
		"       labtool now\n");
	return 2;
}
