/* The cpr channel through cprd (see cpr-relay.h). QEMU sends each fd of
 * the cpr state with a byte of its own in one sendmsg; a unix stream read
 * ends after a message that carries fds, so each read here is sent on
 * whole, its fds with it, and the new QEMU finds them in the same order.
 * The old QEMU shuts down its writing half once the state is sent; the
 * hang-up it waits for is the close of the other half. */
#include "cpr-relay.h"

#include <errno.h>
#include <event2/event.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "util.h"

#define RELAY_MAX_FDS 64           /* per message; QEMU sends one */
#define RELAY_BUF 65536
#define RELAY_SEND_TIMEOUT_MS 2000 /* a peer that stops reading */

struct cpr_relay {
	int listen_fd, src_fd, tgt_fd;
	struct event *listen_ev, *src_ev, *tgt_ev;
	char *listen_path;
	pid_t source_pid;
	cpr_relay_fn fn;
	void *userdata;
	size_t bytes, fds;
	bool done, released;
};

static void relay_unwatch(struct cpr_relay *r) {
	struct event *evs[] = {r->listen_ev, r->src_ev, r->tgt_ev};
	for (size_t i = 0; i < ELEMENTSOF(evs); i++)
		if (evs[i])
			event_del(evs[i]);
}

static void relay_end(struct cpr_relay *r, int error) {
	if (r->done)
		return;
	r->done = true;
	relay_unwatch(r);
	log_debug("cpr relay %s: %s after %zu bytes and %zu fds", r->listen_path,
		  error ? strerror(-error) : "the new QEMU hung up", r->bytes, r->fds);
	r->fn(r, error, r->userdata);
}

/* Sends all of buf to fd, fds with the first part; waits for room at most
 * RELAY_SEND_TIMEOUT_MS. */
static int send_all(int fd, const char *buf, size_t len, const int *fds, size_t nfds) {
	while (len > 0) {
		struct iovec iov = {(void *)buf, len};
		union {
			char buf[CMSG_SPACE(sizeof(int) * RELAY_MAX_FDS)];
			struct cmsghdr align;
		} c = {}; /* the padding after the fds is sent too */
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		if (nfds > 0) {
			mh.msg_control = c.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
		}
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			int k = poll(&p, 1, RELAY_SEND_TIMEOUT_MS);
			if (k == 0)
				return -ETIMEDOUT;
			if (k < 0 && errno != EINTR)
				return -errno;
			continue;
		}
		if (n < 0)
			return -errno;
		buf += n;
		len -= (size_t)n;
		nfds = 0;
	}
	return 0;
}

static void close_fds(const int *fds, size_t n) {
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
}

/* The old QEMU sends: pass it on. */
static void on_src(evutil_socket_t fd, short what, void *userdata) {
	struct cpr_relay *r = userdata;
	static char buf[RELAY_BUF];
	union {
		char buf[CMSG_SPACE(sizeof(int) * RELAY_MAX_FDS)];
		struct cmsghdr align;
	} c;
	struct iovec iov = {buf, sizeof(buf)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf,
			    .msg_controllen = sizeof(c.buf)};
	ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	int fds[RELAY_MAX_FDS];
	size_t nfds = 0;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n >= 0 && cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k && nfds < RELAY_MAX_FDS; i++)
			memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
	}
	if (n < 0)
		return relay_end(r, negative_errno());
	if (mh.msg_flags & MSG_CTRUNC) {
		close_fds(fds, nfds);
		return relay_end(r, -EMSGSIZE);
	}
	if (n == 0 && r->bytes == 0)
		return relay_end(r, -EPIPE); /* the old QEMU gave up */
	if (n == 0) {
		/* The state is all there: QEMU shuts down its writing half and
		 * waits for the hang-up on the other. So does cprd, onward. */
		event_del(r->src_ev);
		if (shutdown(r->tgt_fd, SHUT_WR) < 0)
			relay_end(r, negative_errno());
		return;
	}
	int e = send_all(r->tgt_fd, buf, (size_t)n, fds, nfds);
	close_fds(fds, nfds);
	if (e < 0)
		return relay_end(r, e);
	r->bytes += (size_t)n;
	r->fds += nfds;
}

/* The new QEMU hangs up once it has the state and listens on the main
 * channel; it sends nothing back, but what it would is passed on. */
static void on_tgt(evutil_socket_t fd, short what, void *userdata) {
	struct cpr_relay *r = userdata;
	char buf[4096];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n < 0)
		return relay_end(r, negative_errno());
	if (n == 0)
		return relay_end(r, r->bytes > 0 ? 0 : -ECONNRESET);
	if (r->src_fd < 0)
		return relay_end(r, -EPROTO);
	int e = send_all(r->src_fd, buf, (size_t)n, NULL, 0);
	if (e < 0)
		relay_end(r, e);
}

static void on_accept(evutil_socket_t fd, short what, void *userdata) {
	struct cpr_relay *r = userdata;
	int s = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (s < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			relay_end(r, negative_errno());
		return;
	}
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid != r->source_pid) {
		log_warning("cpr relay %s: pid %d connected, not the old QEMU pid %d", r->listen_path,
			    (int)cred.pid, (int)r->source_pid);
		close(s);
		return relay_end(r, -EPERM);
	}
	r->src_fd = s;
	/* One connection only. */
	event_del(r->listen_ev);
	r->listen_fd = safe_close(r->listen_fd);
	unlink(r->listen_path);
	r->src_ev = event_new(event_get_base(r->listen_ev), s, EV_READ | EV_PERSIST, on_src, r);
	if (!r->src_ev || event_add(r->src_ev, NULL) < 0)
		relay_end(r, -ENOMEM);
}

static int unix_addr(const char *path, struct sockaddr_un *sa, socklen_t *len) {
	size_t n = strlen(path);
	if (n >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	*sa = (struct sockaddr_un){.sun_family = AF_UNIX};
	memcpy(sa->sun_path, path, n + 1);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

int cpr_relay_new(struct event_base *base, const char *target_path, const char *listen_path,
		  pid_t source_pid, cpr_relay_fn fn, void *userdata, struct cpr_relay **ret) {
	struct sockaddr_un sa;
	socklen_t len;
	int r;
	if ((r = unix_addr(target_path, &sa, &len)) < 0)
		return r;
	_cleanup_close_ int tgt = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (tgt < 0)
		return -errno;
	if (connect(tgt, (struct sockaddr *)&sa, len) < 0)
		return -errno; /* ECONNREFUSED: bound, not listening yet */
	if ((r = unix_addr(listen_path, &sa, &len)) < 0)
		return r;
	_cleanup_close_ int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (lfd < 0)
		return -errno;
	if (bind(lfd, (struct sockaddr *)&sa, len) < 0)
		return -errno;
	if (listen(lfd, 1) < 0) {
		r = -errno;
		unlink(listen_path);
		return r;
	}
	struct cpr_relay *x = calloc(1, sizeof(*x));
	if (!x) {
		unlink(listen_path);
		return -ENOMEM;
	}
	*x = (struct cpr_relay){.listen_fd = -1, .src_fd = -1, .tgt_fd = -1, .source_pid = source_pid,
				.fn = fn, .userdata = userdata};
	x->listen_path = strdup(listen_path);
	x->listen_fd = TAKE_FD(lfd);
	x->tgt_fd = TAKE_FD(tgt);
	x->listen_ev = event_new(base, x->listen_fd, EV_READ | EV_PERSIST, on_accept, x);
	x->tgt_ev = event_new(base, x->tgt_fd, EV_READ | EV_PERSIST, on_tgt, x);
	if (!x->listen_path || !x->listen_ev || !x->tgt_ev || event_add(x->listen_ev, NULL) < 0 ||
	    event_add(x->tgt_ev, NULL) < 0) {
		if (!x->listen_path)
			unlink(listen_path);
		cpr_relay_free(x);
		return -ENOMEM;
	}
	*ret = x;
	return 0;
}

void cpr_relay_release(struct cpr_relay *r) {
	if (!r || r->released)
		return;
	r->released = true;
	relay_unwatch(r);
	r->src_fd = safe_close(r->src_fd);
	r->tgt_fd = safe_close(r->tgt_fd);
}

bool cpr_relay_released(const struct cpr_relay *r) {
	return r && r->released;
}

void cpr_relay_free(struct cpr_relay *r) {
	if (!r)
		return;
	struct event *evs[] = {r->listen_ev, r->src_ev, r->tgt_ev};
	for (size_t i = 0; i < ELEMENTSOF(evs); i++)
		if (evs[i])
			event_free(evs[i]);
	if (r->listen_fd >= 0 && r->listen_path)
		unlink(r->listen_path);
	safe_close(r->listen_fd);
	safe_close(r->src_fd);
	safe_close(r->tgt_fd);
	free(r->listen_path);
	free(r);
}
