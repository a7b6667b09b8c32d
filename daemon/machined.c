/* Registration with systemd-machined, as libvirt and systemd-nspawn do: a
 * running VM is a machine of class "vm" whose leader is its QEMU and whose
 * unit is the VM's scope, so operators see it in `machinectl list`. Over
 * systemd.c's bus; without systemd or without machined it does nothing,
 * and a failure is logged, never fatal to a start or an upgrade. */
#include "machined.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-id128.h>
#include <systemd/sd-login.h>

#include "log.h"
#include "macro.h"
#include "systemd.h"
#include "util.h"

#define MACHINED_DEST "org.freedesktop.machine1"
#define MACHINED_PATH "/org/freedesktop/machine1"
#define MACHINED_MANAGER "org.freedesktop.machine1.Manager"
#define MACHINED_MACHINE "org.freedesktop.machine1.Machine"
#define MACHINED_TIMEOUT_USEC (2 * 1000 * 1000ULL)

/* Keys, with a VM's name, the derived machine ids: cprd's own, so that no
 * other program's ids can be told from these. */
#define MACHINED_APP_ID                                                                            \
	SD_ID128_MAKE(97, 25, 68, 20, 21, 9f, 4d, a0, 92, e1, b5, 52, 1c, 5c, fa, b0)

/* What this cprd registered: only those are ever unregistered, so a
 * machine of the same name that is not ours (a container) stays. */
struct registration {
	char *vm;
	pid_t leader;
};

static struct registration *regs;
static size_t n_regs;
static bool machined_off; /* no bus or no machined: said once, not tried again */

/* ---- names and ids (pure but for the host's machine id) ------------------ */

static bool ldh(char c) {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool machined_name_valid(const char *name) {
	size_t n = name ? strlen(name) : 0;
	if (n == 0 || n > MACHINED_NAME_MAX)
		return false;
	/* prev: what came before, '.' at the start of a label. */
	char prev = '.';
	for (const char *p = name; *p; prev = *p++) {
		if (*p == '.' && (prev == '.' || prev == '-'))
			return false;
		if (*p == '-' && prev == '.')
			return false;
		if (*p != '.' && *p != '-' && !ldh(*p))
			return false;
	}
	return prev != '.' && prev != '-';
}

void machined_name(const char *vm, char buf[static MACHINED_NAME_MAX + 1]) {
	static const char base32[] = "abcdefghijklmnopqrstuvwxyz234567";
	if (machined_name_valid(vm)) {
		snprintf(buf, MACHINED_NAME_MAX + 1, "%s", vm);
		return;
	}
	/* 58 + '-' + 5 = 64. */
	size_t n = 0;
	for (const char *p = vm; *p && n < MACHINED_NAME_MAX - 6; p++) {
		if (ldh(*p))
			buf[n++] = *p;
		else if (n > 0 && buf[n - 1] != '-')
			buf[n++] = '-';
	}
	if (n > 0 && buf[n - 1] == '-')
		n--;
	if (n == 0) {
		memcpy(buf, "cprd", 4);
		n = 4;
	}
	uint64_t h = fnv1a64(FNV1A64_OFFSET, vm, strlen(vm));
	buf[n++] = '-';
	for (size_t i = 0; i < 5; i++)
		buf[n++] = base32[(h >> (5 * i)) & 31];
	buf[n] = '\0';
}

int machined_id(const char *vm, uint8_t id[static 16]) {
	sd_id128_t app = MACHINED_APP_ID, ret;
	uint64_t a = fnv1a64(FNV1A64_OFFSET, vm, strlen(vm));
	uint64_t b = fnv1a64(a, vm, strlen(vm) + 1); /* the NUL ends the name */
	for (size_t i = 0; i < 8; i++) {
		app.bytes[i] ^= (uint8_t)(a >> (8 * i));
		app.bytes[8 + i] ^= (uint8_t)(b >> (8 * i));
	}
	/* An HMAC of the host's machine id: a v4 UUID, stable on this host. */
	int r = sd_id128_get_machine_app_specific(app, &ret);
	if (r < 0)
		return r;
	memcpy(id, ret.bytes, 16);
	return 0;
}

/* ---- what this cprd registered -------------------------------------------- */

static struct registration *find(const char *vm) {
	for (size_t i = 0; i < n_regs; i++)
		if (streq(regs[i].vm, vm))
			return &regs[i];
	return NULL;
}

static void remember(const char *vm, pid_t leader) {
	struct registration *r = find(vm);
	if (r) {
		r->leader = leader;
		return;
	}
	char *name = strdup(vm);
	struct registration *n = name ? realloc(regs, (n_regs + 1) * sizeof(*regs)) : NULL;
	if (!n) {
		free(name); /* then only an unregistration is missed: the scope's end drops it */
		return;
	}
	regs = n;
	regs[n_regs++] = (struct registration){name, leader};
}

static void forget(const char *vm) {
	struct registration *r = find(vm);
	if (!r)
		return;
	free(r->vm);
	*r = regs[--n_regs];
}

/* ---- the bus --------------------------------------------------------------- */

static sd_bus *machined_bus(void) {
	if (machined_off)
		return NULL;
	sd_bus *b = systemd_bus();
	if (!b) {
		machined_off = true;
		log_debug("no system bus: VMs are not registered with systemd-machined");
	}
	return b;
}

/* After an answer that means there is no machined to ask (not installed,
 * or not answering), stop asking: once said, every VM runs on without. */
static bool machined_gone(const sd_bus_error *error, int r) {
	if (r == -ETIMEDOUT) {
		machined_off = true;
		log_warning("systemd-machined did not answer within %llu s: VMs are no longer "
			    "registered as machines until cprd restarts",
			    MACHINED_TIMEOUT_USEC / 1000000);
		return true;
	}
	/* Not installed (no D-Bus service file), or its activation failed
	 * (masked, or it would not start): dbus-daemon's and systemd's names. */
	const char *name = error->name ? error->name : "";
	if (sd_bus_error_has_names(error, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER) ||
	    strncmp(name, "org.freedesktop.DBus.Error.Spawn.", strlen("org.freedesktop.DBus.Error.Spawn.")) == 0 ||
	    strncmp(name, "org.freedesktop.systemd1.", strlen("org.freedesktop.systemd1.")) == 0) {
		machined_off = true;
		log_info("systemd-machined is not available (%s): VMs are not registered as machines",
			 error->message ? error->message : error->name);
		return true;
	}
	return false;
}

static const char *bus_reason(const sd_bus_error *error, int r) {
	return error->message ? error->message : strerror(-r);
}

static int call_register(sd_bus *b, const char *vm, const char *name, pid_t leader,
			 const int *ifindex, size_t n_ifindex, sd_bus_error *error) {
	sd_bus_message *m = NULL;
	uint8_t id[16];
	/* machined takes an empty id as "none". */
	bool have_id = machined_id(vm, id) >= 0;
	int r = sd_bus_message_new_method_call(b, &m, MACHINED_DEST, MACHINED_PATH, MACHINED_MANAGER,
					       "RegisterMachineWithNetwork");
	if (r >= 0)
		r = sd_bus_message_append(m, "s", name);
	if (r >= 0)
		r = sd_bus_message_append_array(m, 'y', id, have_id ? sizeof(id) : 0);
	/* Root directory: none, a VM has no file system of the host's. */
	if (r >= 0)
		r = sd_bus_message_append(m, "ssus", "cprd", "vm", (uint32_t)leader, "");
	if (r >= 0)
		r = sd_bus_message_append_array(m, 'i', ifindex, n_ifindex * sizeof(*ifindex));
	if (r >= 0)
		r = sd_bus_call(b, m, MACHINED_TIMEOUT_USEC, error, NULL);
	sd_bus_message_unref(m);
	return r;
}

/* A method call with machined's deadline (sd_bus_call_method has none but
 * the bus's default of 25 s). reply may be NULL. */
static int call(sd_bus *b, const char *path, const char *interface, const char *method,
		sd_bus_error *error, sd_bus_message **reply, const char *types, ...) {
	sd_bus_message *m = NULL;
	va_list ap;
	int r = sd_bus_message_new_method_call(b, &m, MACHINED_DEST, path, interface, method);
	if (r >= 0) {
		va_start(ap, types);
		r = sd_bus_message_appendv(m, types, ap);
		va_end(ap);
	}
	if (r >= 0)
		r = sd_bus_call(b, m, MACHINED_TIMEOUT_USEC, error, reply);
	sd_bus_message_unref(m);
	return r;
}

static int call_unregister(sd_bus *b, const char *name, sd_bus_error *error) {
	int r = call(b, MACHINED_PATH, MACHINED_MANAGER, "UnregisterMachine", error, NULL, "s", name);
	if (r < 0 && sd_bus_error_has_name(error, "org.freedesktop.machine1.NoSuchMachine"))
		return 0; /* its scope ended, and machined let it go by itself */
	return r;
}

/* The leader and unit of the machine name, registered before. */
static int inspect(sd_bus *b, const char *name, pid_t *ret_leader, char **ret_unit,
		   sd_bus_error *error) {
	sd_bus_message *machine = NULL, *leader = NULL, *unit = NULL;
	const char *path = NULL, *u = NULL;
	uint32_t pid = 0;
	int r = call(b, MACHINED_PATH, MACHINED_MANAGER, "GetMachine", error, &machine, "s", name);
	if (r >= 0)
		r = sd_bus_message_read(machine, "o", &path);
	if (r >= 0)
		r = call(b, path, "org.freedesktop.DBus.Properties", "Get", error, &leader, "ss",
			 MACHINED_MACHINE, "Leader");
	if (r >= 0)
		r = sd_bus_message_read(leader, "v", "u", &pid);
	if (r >= 0)
		r = call(b, path, "org.freedesktop.DBus.Properties", "Get", error, &unit, "ss",
			 MACHINED_MACHINE, "Unit");
	if (r >= 0)
		r = sd_bus_message_read(unit, "v", "s", &u);
	if (r >= 0 && !(*ret_unit = strdup(u)))
		r = -ENOMEM;
	sd_bus_message_unref(machine);
	sd_bus_message_unref(leader);
	sd_bus_message_unref(unit);
	*ret_leader = (pid_t)pid;
	return r;
}

/* ---- register and unregister ------------------------------------------------ */

int machined_register(const char *vm, pid_t leader, const int *ifindex, size_t n_ifindex) {
	_cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
	char name[MACHINED_NAME_MAX + 1], unit[256];
	sd_bus *b = machined_bus();
	if (!b || leader <= 0)
		return 0;
	struct registration *known = find(vm);
	if (known && known->leader == leader)
		return 0;

	/* machined ties the machine to the unit its leader runs in: only the
	 * VM's scope will do (stopping that unit stops the guest and nothing
	 * else), never cprd.service when the move into the scope failed. */
	systemd_scope_name(vm, unit, sizeof(unit));
	_cleanup_free_ char *in = NULL;
	int r = sd_pid_get_unit(leader, &in);
	if (r < 0 || !streq(in, unit)) {
		log_vm(LOG_NOTICE, vm, "QEMU pid %d runs in %s, not in %s: not registered with "
		       "systemd-machined", (int)leader, in ? in : "no unit", unit);
		return 0;
	}

	machined_name(vm, name);
	if (known) {
		/* The VM's QEMU changed (an upgrade): machined cannot change a
		 * machine's leader, so the machine goes and comes back. */
		r = call_unregister(b, name, &error);
		if (r < 0 && !machined_gone(&error, r))
			log_vm(LOG_WARNING, vm, "cannot unregister machine %s of the old QEMU pid %d: %s",
			       name, (int)known->leader, bus_reason(&error, r));
		forget(vm);
		sd_bus_error_free(&error);
		if (machined_off)
			return 0;
	}
	r = call_register(b, vm, name, leader, ifindex, n_ifindex, &error);
	if (r < 0 && sd_bus_error_has_name(&error, "org.freedesktop.machine1.MachineExists")) {
		/* Registered before cprd restarted or re-executed, or someone
		 * else's machine of that name. */
		_cleanup_free_ char *their_unit = NULL;
		pid_t their_leader = 0;
		sd_bus_error_free(&error);
		r = inspect(b, name, &their_leader, &their_unit, &error);
		if (r >= 0 && !streq_ptr(their_unit, unit)) {
			log_vm(LOG_WARNING, vm, "not registered with systemd-machined: machine %s exists "
			       "already, in %s", name, their_unit ? their_unit : "no unit");
			return -EEXIST;
		}
		if (r >= 0 && their_leader == leader) {
			remember(vm, leader);
			log_vm(LOG_DEBUG, vm, "machine %s is registered already with QEMU pid %d", name,
			       (int)leader);
			return 1;
		}
		if (r >= 0)
			r = call_unregister(b, name, &error);
		if (r >= 0)
			r = call_register(b, vm, name, leader, ifindex, n_ifindex, &error);
	}
	if (r < 0) {
		if (machined_gone(&error, r))
			return 0;
		return log_vm_errno(LOG_WARNING, r, vm, "cannot register machine %s with systemd-machined: %s",
				    name, bus_reason(&error, r));
	}
	remember(vm, leader);
	log_vm(LOG_INFO, vm, "registered with systemd-machined as machine %s, leader QEMU pid %d, unit %s",
	       name, (int)leader, unit);
	return 1;
}

int machined_unregister(const char *vm) {
	_cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
	char name[MACHINED_NAME_MAX + 1];
	struct registration *known = find(vm);
	sd_bus *b = known ? machined_bus() : NULL;
	if (!b)
		return 0;
	forget(vm);
	machined_name(vm, name);
	int r = call_unregister(b, name, &error);
	if (r < 0) {
		if (machined_gone(&error, r))
			return 0;
		return log_vm_errno(LOG_WARNING, r, vm, "cannot unregister machine %s from systemd-machined: %s",
				    name, bus_reason(&error, r));
	}
	log_vm(LOG_INFO, vm, "machine %s unregistered from systemd-machined", name);
	return 0;
}

void machined_close(void) {
	for (size_t i = 0; i < n_regs; i++)
		free(regs[i].vm);
	free(regs);
	regs = NULL;
	n_regs = 0;
}
