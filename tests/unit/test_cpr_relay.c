/* Check suite for daemon/cpr-relay.c, with real unix sockets in a temporary
 * folder: this process plays both QEMUs. The bytes and an fd pass through in
 * order, the old QEMU's half-close reaches the new one, the new one's
 * hang-up is reported and held back from the old one until release, and a
 * stranger, a silent hang-up and a source that leaves are errors. */
#include <check.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct event_base *base;
#include "check-run.h"
#include "cpr-relay.h"
#include "loop.h"
#include "macro.h"

static char dir[64], target_path[128], listen_path[128];
static int target_listen = -1;
static int result;
static bool ended;

static void on_end(struct cpr_relay *r, int error, void *userdata) {
	ck_assert_ptr_eq(userdata, &result);
	ck_assert(!ended); /* once */
	ended = true;
	result = error;
}

static int unix_socket(const char *path, bool do_listen) {
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(fd, 0);
	if (do_listen) {
		ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		ck_assert_int_eq(listen(fd, 1), 0);
	} else {
		ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	return fd;
}

static void setup(void) {
	base = event_base_new();
	strcpy(dir, "/tmp/cprd-test-relay-XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(target_path, sizeof(target_path), "%s/cpr.sock", dir);
	snprintf(listen_path, sizeof(listen_path), "%s/cprd.sock", dir);
	target_listen = unix_socket(target_path, true);
	ended = false;
	result = 1;
}

static void teardown(void) {
	safe_close(target_listen);
	unlink(target_path);
	unlink(listen_path);
	rmdir(dir);
	event_base_free(base);
}

/* Sends one byte with fd, as QEMU's qemu_file_put_fd does. */
static void send_fd(int sock, int fd) {
	char byte = ' ';
	struct iovec iov = {&byte, 1};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} c = {};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof(c.buf)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	ck_assert_int_eq(sendmsg(sock, &mh, 0), 1);
}

/* Reads what is there: the bytes into buf, the fds (at most 4) into fds. */
static ssize_t recv_some(int sock, char *buf, size_t size, int *fds, size_t *n_fds) {
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} c;
	struct iovec iov = {buf, size};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof(c.buf)};
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n >= 0 && cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(fds + *n_fds, CMSG_DATA(cm), k * sizeof(int));
			*n_fds += k;
		}
	return n;
}

static short poll_now(int fd) {
	struct pollfd p = {.fd = fd, .events = POLLIN};
	ck_assert_int_ge(poll(&p, 1, 0), 0);
	return p.revents;
}

START_TEST(test_passes_bytes_fds_and_holds_the_hangup) {
	struct cpr_relay *r = NULL;
	setup();
	ck_assert_int_eq(cpr_relay_new(base, target_path, listen_path, getpid(), on_end, &result, &r), 0);
	int tgt = accept4(target_listen, NULL, NULL, SOCK_CLOEXEC);
	ck_assert_int_ge(tgt, 0);
	int src = unix_socket(listen_path, false);

	/* The old QEMU: a header, a pipe's write end with its byte, a trailer,
	 * then it shuts down its writing half and waits. */
	int p[2];
	ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
	ck_assert_int_eq(write(src, "head", 4), 4);
	send_fd(src, p[1]);
	close(p[1]);
	ck_assert_int_eq(write(src, "tail", 4), 4);
	ck_assert_int_eq(shutdown(src, SHUT_WR), 0);

	/* The new QEMU gets all of it, the fd in its place, then end of file. */
	char got[64];
	size_t len = 0, n_fds = 0;
	int fds[4];
	bool eof = false;
	while (!eof) {
		ck_assert(RUN_UNTIL(poll_now(tgt) & (POLLIN | POLLHUP), PATIENCE_MS));
		ssize_t n = recv_some(tgt, got + len, sizeof(got) - len, fds, &n_fds);
		ck_assert_int_ge(n, 0);
		eof = n == 0;
		len += (size_t)n;
	}
	ck_assert_uint_eq(len, 9);
	ck_assert(memcmp(got, "head tail", 9) == 0);
	ck_assert_uint_eq(n_fds, 1);
	ck_assert_int_eq(write(fds[0], "!", 1), 1); /* the very pipe */
	char c;
	ck_assert_int_eq(read(p[0], &c, 1), 1);
	close(fds[0]);
	close(p[0]);
	ck_assert(!ended);

	/* It hangs up: reported, and the old QEMU still waits. */
	close(tgt);
	ck_assert(RUN_UNTIL(ended, PATIENCE_MS));
	ck_assert_int_eq(result, 0);
	ck_assert(!cpr_relay_released(r));
	ck_assert_int_eq(poll_now(src) & (POLLIN | POLLHUP), 0);
	/* Released, the old QEMU sees the hang-up. */
	cpr_relay_release(r);
	ck_assert(cpr_relay_released(r));
	ck_assert(poll_now(src) & POLLHUP);
	ck_assert_int_eq(read(src, &c, 1), 0);
	close(src);
	cpr_relay_free(r);
	ck_assert_int_eq(access(listen_path, F_OK), -1); /* removed once connected */
	teardown();
}
END_TEST

START_TEST(test_target_not_listening) {
	setup();
	close(target_listen);
	unlink(target_path);
	struct cpr_relay *r = NULL;
	ck_assert_int_eq(cpr_relay_new(base, target_path, listen_path, getpid(), on_end, &result, &r), -ENOENT);
	/* Bound, not listening yet: refused, and nothing is left behind. */
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, target_path);
	target_listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_eq(bind(target_listen, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(cpr_relay_new(base, target_path, listen_path, getpid(), on_end, &result, &r), -ECONNREFUSED);
	ck_assert_int_eq(access(listen_path, F_OK), -1);
	teardown();
}
END_TEST

START_TEST(test_stranger_refused) {
	struct cpr_relay *r = NULL;
	setup();
	/* Only the old QEMU's pid may connect; this process is not it. */
	ck_assert_int_eq(cpr_relay_new(base, target_path, listen_path, getpid() + 100000, on_end, &result, &r), 0);
	int src = unix_socket(listen_path, false);
	ck_assert(RUN_UNTIL(ended, PATIENCE_MS));
	ck_assert_int_eq(result, -EPERM);
	close(src);
	cpr_relay_free(r);
	teardown();
}
END_TEST

START_TEST(test_hangup_before_state) {
	struct cpr_relay *r = NULL;
	setup();
	ck_assert_int_eq(cpr_relay_new(base, target_path, listen_path, getpid(), on_end, &result, &r), 0);
	int tgt = accept4(target_listen, NULL, NULL, SOCK_CLOEXEC);
	close(tgt); /* a target that died at once */
	ck_assert(RUN_UNTIL(ended, PATIENCE_MS));
	ck_assert_int_eq(result, -ECONNRESET);
	cpr_relay_free(r);
	teardown();
}
END_TEST

START_TEST(test_source_leaves) {
	struct cpr_relay *r = NULL;
	setup();
	ck_assert_int_eq(cpr_relay_new(base, target_path, listen_path, getpid(), on_end, &result, &r), 0);
	int tgt = accept4(target_listen, NULL, NULL, SOCK_CLOEXEC);
	int src = unix_socket(listen_path, false);
	close(src); /* before sending anything */
	ck_assert(RUN_UNTIL(ended, PATIENCE_MS));
	ck_assert_int_eq(result, -EPIPE);
	close(tgt);
	cpr_relay_free(r);
	teardown();
}
END_TEST

int main(void) {
	Suite *s = suite_create("cpr-relay");
	TCase *tc = tcase_create("relay");
	tcase_add_test(tc, test_passes_bytes_fds_and_holds_the_hangup);
	tcase_add_test(tc, test_target_not_listening);
	tcase_add_test(tc, test_stranger_refused);
	tcase_add_test(tc, test_hangup_before_state);
	tcase_add_test(tc, test_source_leaves);
	suite_add_tcase(s, tc);
	return check_run(s);
}
