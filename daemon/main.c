/* cprd: keeps QEMU guests and the fds that hold their state, and upgrades
 * QEMU under running guests. This file reads options and runs the loop;
 * the work is in the manager. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "manager.h"

#define DEFAULT_SOCKET "/run/cprd/io.cprd.Manager"
#define DEFAULT_STATE_DIR "/var/lib/cprd"
#define DEFAULT_RUNTIME_DIR "/run/cprd"

static void help(void) {
	printf("Usage: cprd [OPTIONS]\n"
	       "Keeps QEMU guests and the fds that hold their state, and upgrades QEMU\n"
	       "under running guests. Clients talk to it with cprctl or any Varlink client.\n\n"
	       "  --socket PATH       Varlink socket (default %s)\n"
	       "  --state-dir DIR     VM specs, logs, history (default %s)\n"
	       "  --runtime-dir DIR   runtime files, upgrade sockets (default %s)\n"
	       "  --log-level LEVEL   err, warning, notice, info or debug (default info)\n"
	       "  --version           print the version\n"
	       "  -h, --help          this text\n",
	       DEFAULT_SOCKET, DEFAULT_STATE_DIR, DEFAULT_RUNTIME_DIR);
}

static void on_signal(evutil_socket_t sig, short what, void *base) {
	log_info("received %s, exiting; guests keep running", strsignal((int)sig));
	event_base_loopexit(base, NULL);
}

int main(int argc, char **argv) {
	static const struct option options[] = {
		{"socket", required_argument, NULL, 's'},
		{"state-dir", required_argument, NULL, 'S'},
		{"runtime-dir", required_argument, NULL, 'R'},
		{"log-level", required_argument, NULL, 'l'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{},
	};
	struct manager_config cfg = {
		.socket_path = NULL,
		.state_dir = DEFAULT_STATE_DIR,
		.runtime_dir = DEFAULT_RUNTIME_DIR,
		.listen_fd = -1,
	};
	_cleanup_free_ char *socket_default = NULL;
	int c;

	log_set_ident("cprd");
	if (isatty(STDERR_FILENO))
		log_set_target(LOG_TARGET_CONSOLE);
	while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
		switch (c) {
		case 's':
			cfg.socket_path = optarg;
			break;
		case 'S':
			cfg.state_dir = optarg;
			break;
		case 'R':
			cfg.runtime_dir = optarg;
			break;
		case 'l': {
			int level = log_level_from_string(optarg);
			if (level < 0) {
				fprintf(stderr, "cprd: unknown log level '%s'; use err, warning, notice, info or debug\n",
					optarg);
				return 2;
			}
			log_set_max_level(level);
			break;
		}
		case 'V':
			printf("cprd %s\n", CPRD_VERSION);
			return 0;
		case 'h':
			help();
			return 0;
		default:
			fprintf(stderr, "Try 'cprd --help'.\n");
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "cprd: unexpected argument '%s'. Try 'cprd --help'.\n", argv[optind]);
		return 2;
	}
	if (!cfg.socket_path) {
		/* The socket lives in the runtime directory unless put elsewhere. */
		if (streq(cfg.runtime_dir, DEFAULT_RUNTIME_DIR))
			cfg.socket_path = DEFAULT_SOCKET;
		else if (asprintf(&socket_default, "%s/io.cprd.Manager", cfg.runtime_dir) >= 0)
			cfg.socket_path = socket_default;
		else
			return 1;
	}

	/* Socket activation: systemd hands over the listening socket. */
	int n = sd_listen_fds(1);
	if (n == 1)
		cfg.listen_fd = SD_LISTEN_FDS_START;
	else if (n > 1)
		log_warning("got %d sockets from systemd, using the first", n);

	signal(SIGPIPE, SIG_IGN);
	umask(0077);

	struct event_base *base = event_base_new();
	if (!base)
		return 1;
	struct manager *m = NULL;
	int r = manager_new(base, &cfg, &m);
	if (r < 0) {
		event_base_free(base);
		return 1;
	}
	manager_load(m);

	struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);

	log_info("cprd %s listening on %s (state %s, runtime %s)", CPRD_VERSION, cfg.socket_path,
		 cfg.state_dir, cfg.runtime_dir);
	sd_notify(0, "READY=1\nSTATUS=Serving");
	event_base_dispatch(base);
	sd_notify(0, "STOPPING=1");

	event_free(sigterm);
	event_free(sigint);
	manager_free(m);
	event_base_free(base);
	return 0;
}
