/* vl-test-server: serves org.varlink.certification and io.cprd.Test on a
 * unix socket, for the real Varlink clients from Debian (varlink-go,
 * python3-varlink). Usage: vl-test-server PATH; stops on SIGTERM/SIGINT. */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>

#include "log.h"
#include "test-service.h"
#include "varlink.h"

static void on_signal(evutil_socket_t sig, short what, void *base) {
	event_base_loopexit(base, NULL);
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: %s SOCKET-PATH\n", argv[0]);
		return 2;
	}
	log_set_ident("vl-test-server");
	signal(SIGPIPE, SIG_IGN);

	struct event_base *base = event_base_new();
	struct vl_server *s;
	struct vl_server_info info = {"cprd project", "vl-test-server", "1", "https://cprd.invalid/", NULL};
	if (!base || vl_server_new(base, &info, &s) < 0 || test_service_register(s, base) < 0)
		return 1;
	if (vl_server_listen_path(s, argv[1], 0600) < 0)
		return 1;

	struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	printf("listening on %s\n", argv[1]);
	fflush(stdout);
	event_base_dispatch(base);

	event_free(sigterm);
	event_free(sigint);
	vl_server_free(s);
	event_base_free(base);
	return 0;
}
