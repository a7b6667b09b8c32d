/* cprd: keeps QEMU guests and the fds that hold their state, and upgrades
 * QEMU under running guests. This file reads options and runs the loop;
 * the work is in the manager. */
#include <errno.h>
#include <stdbool.h>
#include <event2/event.h>
#include <getopt.h>
#include <malloc.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "api.h"
#include "attach.h"
#include "binary.h"
#include "log.h"
#include "machined.h"
#include "macro.h"
#include "manager.h"
#include "outdated.h"
#include "qemu.h"
#include "snapshot.h"
#include "systemd.h"
#include "users.h"
#include "varlink.h"
#include "vm.h"

#define STATUS_INTERVAL_SEC 5

#define DEFAULT_SOCKET "/run/cprd/io.cprd.Manager"
#define DEFAULT_STATE_DIR "/var/lib/cprd"
#define DEFAULT_RUNTIME_DIR "/run/cprd"

static void help(void) {
	printf("Usage: cprd [OPTIONS]\n"
	       "Keeps QEMU guests and the fds that hold their state, and upgrades QEMU\n"
	       "under running guests. Clients talk to it with cprctl or any Varlink client.\n\n"
	       "  --socket PATH       Varlink socket (default %s)\n"
	       "  --state-dir DIR     VM specs, logs, history (default %s)\n"
	       "  --runtime-dir DIR   runtime files, upgrade sockets, metrics.prom (default %s)\n"
	       "  --log-level LEVEL   err, warning, notice, info or debug (default info)\n"
	       "  --qemu-dir DIR      run QEMU binaries only from DIR (repeatable; default: any\n"
	       "                      root-owned binary in root-owned folders)\n"
	       "  --allow-uid UID     let this uid change VMs too (repeatable; default root only)\n"
	       "  --allow-group GROUP let this group change VMs too (repeatable)\n"
	       "  --qemu-user USER    run QEMU as USER with its groups, not as root\n"
	       "  --qemu-users FIRST-LAST\n"
	       "                      give each VM a user of its own from this uid range\n"
	       "                      (gid = uid, no groups), which no account may use\n"
	       "  --pause-slots K     at most K guests paused by upgrades at once, unless a\n"
	       "                      request says otherwise (1-%d; default: usable CPUs / 2,\n"
	       "                      at least 1)\n"
	       "  --version           print the version\n"
	       "  -h, --help          this text\n",
	       DEFAULT_SOCKET, DEFAULT_STATE_DIR, DEFAULT_RUNTIME_DIR, CPRD_PAUSE_SLOTS_MAX);
}

/* JOURNAL_STREAM names the journal's stream as "dev:ino"; it counts only
 * if our stderr is still that stream (not redirected by a test or a shell
 * that inherited the variable). */
static bool stderr_is_journal(void) {
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
		return false;
	return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

static char **saved_argv;
static struct manager *manager;
static struct event *reload_retry;

static void on_signal(evutil_socket_t sig, short what, void *base) {
	log_info("received %s, exiting; guests keep running", strsignal((int)sig));
	event_base_loopexit(base, NULL);
}

static void update_status(evutil_socket_t fd, short what, void *userdata) {
	unsigned running = 0;
	/* Probes parse large QMP replies; give the freed heap back so cprd
	 * stays small. */
	malloc_trim(0);
	for (size_t i = 0; i < manager->n_vms; i++)
		running += vm_is_active(manager->vms[i]);
	systemd_status("%u of %zu VMs running, %u upgrades under way", running, manager->n_vms,
		       manager->upgrades_running);
}

/* systemctl reload: run the cprd binary now on disk in this same process,
 * handing every held fd over, so guests and their custody stay untouched. */
static void reexec(evutil_socket_t fd, short what, void *base) {
	char path[4096];
	_cleanup_free_ char *list = NULL;

	if (manager->upgrades_running > 0 || manager->snapshots_running > 0) {
		log_info("reload waits for %u upgrades and %u snapshots or restores to finish",
			 manager->upgrades_running, manager->snapshots_running);
		struct timeval tv = {1, 0};
		evtimer_add(reload_retry, &tv);
		return;
	}
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
	if (n <= 0) {
		log_error_errno(errno, "cannot re-execute: readlink /proc/self/exe: %m");
		return;
	}
	path[n] = '\0';
	/* After a package upgrade the running file is deleted: run the new one. */
	char *del = strstr(path, " (deleted)");
	if (del && del[10] == '\0')
		*del = '\0';

	systemd_reloading();
	int r = systemd_add_reexec_fd(&list, "varlink", vl_server_get_listen_fd(manager->server, 0));
	for (size_t i = 0; r >= 0 && i < manager->n_vms; i++)
		r = vm_reexec_fds(manager->vms[i], &list);
	if (r < 0 || setenv("CPRD_REEXEC_FDS", list ? list : "", 1) < 0) {
		log_error_errno(r, "cannot prepare the re-exec: %m");
		systemd_ready();
		return;
	}
	log_info("re-executing %s, handing over: %s", path, list ? list : "nothing");
	execv(path, saved_argv);
	log_error_errno(errno, "cannot re-execute %s: %m; carrying on", path);
	unsetenv("CPRD_REEXEC_FDS");
	systemd_ready();
}

/* A user or group named by name or number (--allow-uid, --allow-group). */
static int parse_id(const char *arg, bool group, unsigned long *ret) {
	char *end;
	unsigned long id = strtoul(arg, &end, 10);
	struct passwd *pw = group ? NULL : getpwnam(arg);
	struct group *gr = group ? getgrnam(arg) : NULL;
	if (pw)
		id = pw->pw_uid;
	else if (gr)
		id = gr->gr_gid;
	else if (*end || !*arg)
		return -ENOENT;
	*ret = id;
	return 0;
}

/* --qemu-users must name uids that nobody else has: no account, no group,
 * no subordinate ids of a user's containers. Returns -1 to go on, or the
 * exit status. */
static int check_qemu_users(const struct users_range *r) {
	char why[512];
	if (!r->set)
		return -1;
	int e = users_check_accounts(r, "/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid",
				     why, sizeof(why));
	if (e == -EEXIST) {
		fprintf(stderr, "cprd: --qemu-users %u-%u is not free: %s; pick a range that no "
				"account, group or subordinate id range uses (see docs/operations.md)\n",
			(unsigned)r->first, (unsigned)r->last, why);
		return 1;
	}
	if (e < 0) {
		fprintf(stderr, "cprd: --qemu-users: %s\n", why);
		return 1;
	}
	return -1;
}

/* One option. Returns -1 to go on, or the status cprd exits with. */
static int parse_option(int c, const char *arg, struct manager_config *cfg) {
	unsigned long id;
	int r;
	switch (c) {
	case 's':
		cfg->socket_path = arg;
		return -1;
	case 'S':
		cfg->state_dir = arg;
		return -1;
	case 'R':
		cfg->runtime_dir = arg;
		return -1;
	case 'K': {
		char *end;
		long k = strtol(arg, &end, 10);
		if (*end || end == arg || k < 1 || k > CPRD_PAUSE_SLOTS_MAX) {
			fprintf(stderr, "cprd: --pause-slots needs a number between 1 and %d, not '%s'\n",
				CPRD_PAUSE_SLOTS_MAX, arg);
			return 2;
		}
		cfg->pause_slots = (unsigned)k;
		return -1;
	}
	case 'l':
		if ((r = log_level_from_string(arg)) < 0) {
			fprintf(stderr, "cprd: unknown log level '%s'; use err, warning, notice, info or debug\n",
				arg);
			return 2;
		}
		log_set_max_level(r);
		return -1;
	case 'Q':
		if (binary_allow_dir(arg) < 0) {
			fprintf(stderr, "cprd: --qemu-dir %s: not a folder cprd can resolve\n", arg);
			return 2;
		}
		return -1;
	case 'P': {
		char why[256];
		if (users_parse_range(arg, &cfg->qemu_users, why, sizeof(why)) < 0) {
			fprintf(stderr, "cprd: --qemu-users %s: %s\n", arg, why);
			return 2;
		}
		return -1;
	}
	case 'u':
		if ((r = qemu_set_user(arg)) < 0) {
			fprintf(stderr, "cprd: --qemu-user %s: %s\n", arg,
				r == -ENOENT  ? "no such user"
				: r == -EPERM ? "that is root, whom QEMU runs as without the option"
					      : "too many groups");
			return 2;
		}
		return -1;
	case 'U':
		if (parse_id(arg, false, &id) < 0) {
			fprintf(stderr, "cprd: --allow-uid %s: no such user\n", arg);
			return 2;
		}
		api_allow_uid((uid_t)id);
		return -1;
	case 'G':
		if (parse_id(arg, true, &id) < 0) {
			fprintf(stderr, "cprd: --allow-group %s: no such group\n", arg);
			return 2;
		}
		api_allow_gid((gid_t)id);
		return -1;
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

/* Reads the command line into cfg. Returns -1 to run, or the exit status. */
static int parse_args(int argc, char **argv, struct manager_config *cfg) {
	static const struct option options[] = {
		{"socket", required_argument, NULL, 's'},
		{"state-dir", required_argument, NULL, 'S'},
		{"runtime-dir", required_argument, NULL, 'R'},
		{"log-level", required_argument, NULL, 'l'},
		{"qemu-dir", required_argument, NULL, 'Q'},
		{"allow-uid", required_argument, NULL, 'U'},
		{"allow-group", required_argument, NULL, 'G'},
		{"qemu-user", required_argument, NULL, 'u'},
		{"qemu-users", required_argument, NULL, 'P'},
		{"pause-slots", required_argument, NULL, 'K'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, 'h'},
		{},
	};
	int c, r;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
		if ((r = parse_option(c, optarg, cfg)) >= 0)
			return r;
	if (optind < argc) {
		fprintf(stderr, "cprd: unexpected argument '%s'. Try 'cprd --help'.\n", argv[optind]);
		return 2;
	}
	if (cfg->qemu_users.set && qemu_get_user(NULL, NULL)) {
		fprintf(stderr, "cprd: --qemu-user and --qemu-users cannot be used together: one user "
				"for every QEMU, or a user of its own for each VM\n");
		return 2;
	}
	return check_qemu_users(&cfg->qemu_users);
}

/* Serves until SIGTERM or SIGINT; the exit status. */
static int run(const struct manager_config *cfg) {
	struct event_base *base = event_base_new();
	if (!base)
		return 1;
	struct manager *m = NULL;
	int r = manager_new(base, cfg, &m);
	if (r >= 0 && ((r = api_register(m)) < 0 || (r = manager_listen(m, cfg->listen_fd)) < 0))
		manager_free(m);
	if (r < 0) {
		event_base_free(base);
		return 1;
	}
	manager = m;
	manager_load(m);
	attach_all(m);
	snapshot_settle_all(m);
	struct outdated *outdated = NULL;
	r = outdated_new(m, &outdated);
	if (r < 0)
		log_warning_errno(r, "cannot watch the QEMU binaries for changes (inotify): %m; "
			      "list --outdated still works, the first upgrade after a change probes");

	struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
	struct event *sighup = evsignal_new(base, SIGHUP, reexec, base);
	struct event *status = event_new(base, -1, EV_PERSIST, update_status, NULL);
	reload_retry = evtimer_new(base, reexec, base);
	struct timeval every = {STATUS_INTERVAL_SEC, 0};
	event_add(sigterm, NULL);
	event_add(sigint, NULL);
	event_add(sighup, NULL);
	event_add(status, &every);

	log_info("cprd %s listening on %s (state %s, runtime %s)", CPRD_VERSION, cfg->socket_path,
		 cfg->state_dir, cfg->runtime_dir);
	uid_t quid;
	gid_t qgid;
	if (qemu_get_user(&quid, &qgid))
		log_info("QEMU runs as uid %u gid %u, not as root", (unsigned)quid, (unsigned)qgid);
	if (cfg->qemu_users.set)
		log_info("each VM's QEMU runs as a uid of its own from %u-%u", (unsigned)cfg->qemu_users.first,
			 (unsigned)cfg->qemu_users.last);
	systemd_ready();
	update_status(-1, 0, NULL);
	systemd_watchdog_start(base);
	event_base_dispatch(base);
	systemd_stopping();

	event_free(sigterm);
	event_free(sigint);
	event_free(sighup);
	event_free(status);
	event_free(reload_retry);
	machined_close();
	systemd_close();
	qemu_set_exiting();
	outdated_free(outdated);
	manager_free(m);
	event_base_free(base);
	return 0;
}

int main(int argc, char **argv) {
	struct manager_config cfg = {
		.socket_path = NULL,
		.state_dir = DEFAULT_STATE_DIR,
		.runtime_dir = DEFAULT_RUNTIME_DIR,
		.listen_fd = -1,
	};
	_cleanup_free_ char *socket_default = NULL;

	saved_argv = argv;
	log_set_ident("cprd");
	if (isatty(STDERR_FILENO))
		log_set_target(LOG_TARGET_CONSOLE);
	else if (stderr_is_journal())
		/* Under systemd: send structured entries (VM=, PHASE=). */
		log_set_target(LOG_TARGET_JOURNAL);
	int r = parse_args(argc, argv, &cfg);
	if (r >= 0)
		return r;
	if (!cfg.socket_path) {
		/* The socket lives in the runtime directory unless put elsewhere. */
		if (streq(cfg.runtime_dir, DEFAULT_RUNTIME_DIR))
			cfg.socket_path = DEFAULT_SOCKET;
		else if (asprintf(&socket_default, "%s/io.cprd.Manager", cfg.runtime_dir) >= 0)
			cfg.socket_path = socket_default;
		else
			return 1;
	}

	/* Socket activation and the fd store: systemd hands over the
	 * listening socket and every fd the previous cprd kept there. */
	if (systemd_collect_fds() < 0)
		log_warning("cannot take the fds systemd passed");
	cfg.listen_fd = systemd_take_listen_fd();

	signal(SIGPIPE, SIG_IGN);
	umask(0077);
	return run(&cfg);
}
