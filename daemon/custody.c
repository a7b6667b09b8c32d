/* The table of the fds cprd holds for a VM (see custody.h), their names in
 * the fd store and in GetVM, and the numbers they get inside each QEMU. */
#include "custody.h"

#include <errno.h>
#include <json-c/json.h>
#include <string.h>

#include "macro.h"
#include "spec.h"
#include "util.h"

/* The i-th copy of each kind of VFIO fd QEMU opened: no QEMU is given them
 * (a new QEMU of an upgrade gets QEMU's own through CPR). */
#define VFIO_ROWS(i)                                                                         \
	[CUSTODY_VFIO_CONTAINER + (i)] = {.name = "vfio-container" #i, .kind = "vfio",     \
					  .from_qemu = true},                               \
	[CUSTODY_VFIO_GROUP + (i)] = {.name = "vfio-group" #i, .kind = "vfio", .from_qemu = true}, \
	[CUSTODY_VFIO_DEVICE + (i)] = {.name = "vfio-device" #i, .kind = "vfio", .from_qemu = true}
_Static_assert(CUSTODY_VFIO_MAX == 8, "custody_fds has eight VFIO_ROWS");

const struct custody_fd custody_fds[_CUSTODY_MAX] = {
	[CUSTODY_CONSOLE_QEMU] = {.name = "console-qemu", .kind = "console", .to_qemu = true},
	[CUSTODY_RAM] = {.name = "ram0", .kind = "ram", .to_qemu = true},
	/* A spare copy QEMU never uses, so a cprd without its fd store can
	 * take cprd's own end back (custody-console.c). */
	[CUSTODY_CONSOLE] = {.name = "console", .kind = "console", .to_qemu = true},
#define TAP(i) [CUSTODY_TAP0 + i] = {.name = "tap" #i, .kind = "tap", .to_qemu = true}
	TAP(0), TAP(1), TAP(2), TAP(3), TAP(4), TAP(5), TAP(6), TAP(7),
#undef TAP
	VFIO_ROWS(0), VFIO_ROWS(1), VFIO_ROWS(2), VFIO_ROWS(3),
	VFIO_ROWS(4), VFIO_ROWS(5), VFIO_ROWS(6), VFIO_ROWS(7),
	/* QEMU gets the other end of the socketpair. */
	[CUSTODY_QMP] = {.name = "qmp", .kind = "qmp", .to_qemu = true, .target_name = "qmp-target"},
};

struct custody_vm custody_vm_of(const struct vm_spec *s) {
	return (struct custody_vm){
		.name = s->name,
		.ram_bytes = s->memory_mib << 20,
		.hugepages = s->hugepages,
		.nics = s->nics,
		.n_nics = s->n_nics,
		.devices = s->devices,
		.n_devices = s->n_devices,
	};
}

/* RAM first: the machine's memory-backend names it. */
const struct custody_ops *const custody_kinds[] = {
	&custody_ram,
	&custody_qmp,
	&custody_console,
	&custody_tap,
	&custody_vfio,
};

const unsigned custody_n_kinds = ELEMENTSOF(custody_kinds);

/* The first number after stdin, stdout and stderr. */
#define CUSTODY_QEMU_FD_FIRST 3
/* A QEMU never gets more; a record that says otherwise is corrupt. */
#define CUSTODY_QEMU_FD_LAST 1023

const struct custody_qemu_fds custody_qemu_fds_legacy = {.n = {
	[CUSTODY_CONSOLE_QEMU] = 4,
	[CUSTODY_RAM] = 5,
	[CUSTODY_CONSOLE] = 6,
	[CUSTODY_TAP0 ... _CUSTODY_VM_MAX - 1] = -1, /* no NICs or devices then */
	[CUSTODY_QMP] = 3,
}};

void custody_qemu_fds_assign(const int held[_CUSTODY_VM_MAX], struct custody_qemu_fds *ret) {
	int next = CUSTODY_QEMU_FD_FIRST;
	ret->n[CUSTODY_QMP] = next++;
	for (unsigned i = 0; i < _CUSTODY_VM_MAX; i++)
		ret->n[i] = custody_fds[i].to_qemu && held[i] >= 0 ? next++ : -1;
}

struct json_object *custody_qemu_fds_to_json(const struct custody_qemu_fds *f) {
	struct json_object *o = json_object_new_object();
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		if (f->n[i] >= 0 && custody_fds[i].to_qemu)
			json_object_object_add(o, custody_fds[i].name, json_object_new_int(f->n[i]));
	return o;
}

static int custody_id_of(const char *name) {
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		if (streq(custody_fds[i].name, name))
			return (int)i;
	return -1;
}

int custody_qemu_fds_from_json(struct json_object *o, struct custody_qemu_fds *ret, char *why,
			       size_t size) {
	struct custody_qemu_fds f;
	for (unsigned i = 0; i < _CUSTODY_MAX; i++)
		f.n[i] = -1;
	if (!json_object_is_type(o, json_type_object))
		return json_refuse(why, size, "fds is not an object");
	json_object_object_foreach(o, name, value) {
		int id = custody_id_of(name);
		if (id < 0)
			return json_refuse(why, size, "fds names \"%s\", which is no held fd", name);
		if (!custody_fds[id].to_qemu)
			return json_refuse(why, size, "fds names \"%s\", which no QEMU is given", name);
		int64_t n = 0;
		int r = json_field_int(o, name, true, CUSTODY_QEMU_FD_FIRST, CUSTODY_QEMU_FD_LAST, &n,
				       why, size);
		if (r < 0)
			return r;
		for (unsigned i = 0; i < _CUSTODY_MAX; i++)
			if (f.n[i] == n)
				return json_refuse(why, size, "fds gives %s and %s the same number %d",
						   custody_fds[i].name, name, (int)n);
		f.n[id] = (int)n;
		(void)value;
	}
	*ret = f;
	return 0;
}
