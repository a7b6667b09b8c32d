/* The QEMU command line (see cmdline.h). Every argument is built here, so
 * what each spec field, probe result and upgrade mode changes can be read in
 * one place and checked by tests/unit/test_cmdline.c. */
#include "cmdline.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "custody.h"
#include "macro.h"
#include "probe.h"
#include "spec.h"
#include "util.h"

/* A start's and an upgrade target's command line differ only in -S versus
 * the incoming arguments, so both build the same virtual hardware. */
int cmdline_build(const struct cmdline *c, char ***ret) {
	struct strv a = {0};
	const struct vm_spec *s = c->spec;
	const struct probe_result *probe = c->probe;

	strv_addf(&a, "%s", c->binary);
	strv_addf(&a, "-name");
	strv_addf(&a, "guest=%s,debug-threads=on", s->name);
	strv_addf(&a, "-nodefaults");
	strv_addf(&a, "-no-user-config");
	strv_addf(&a, "-display");
	strv_addf(&a, "none");
	strv_addf(&a, "-msg");
	strv_addf(&a, "timestamp=on");
	/* QEMU needs no new processes, privileges or obsolete system calls;
	 * cpr-transfer and local-migrate work under this filter. cpr-exec
	 * execs the new binary from inside QEMU, which spawn=deny forbids:
	 * only a spec that opts in (allowExec) gets spawn=allow. */
	strv_addf(&a, "-sandbox");
	strv_addf(&a, "on,obsolete=deny,elevateprivileges=deny,spawn=%s,resourcecontrol=deny",
		  s->allow_exec ? "allow" : "deny");
	if (!c->incoming)
		strv_addf(&a, "-S"); /* cprd resumes it once QMP is up */
	strv_addf(&a, "-machine");
	strv_addf(&a, "%s,memory-backend=ram0%s", s->machine,
		  probe && probe->aux_ram_share ? ",aux-ram-share=on" : "");
	strv_addf(&a, "-accel");
	strv_addf(&a, "%s", c->accel);
	strv_addf(&a, "-m");
	strv_addf(&a, "%lluM", (unsigned long long)s->memory_mib);
	strv_addf(&a, "-smp");
	strv_addf(&a, "%u", s->cpus);
	/* Guest RAM, QMP, the console, assigned devices: each kind of held fd
	 * names its own. */
	const struct custody_vm cv = custody_vm_of(s);
	for (unsigned k = 0; k < custody_n_kinds; k++)
		custody_kinds[k]->qemu_args(&cv, c->fds, &a);
	if (c->qmp_path) {
		/* A second monitor on a socket in the VM's private runtime folder:
		 * the way back in when the socketpair above was lost (cprd was
		 * stopped and systemd emptied its fd store). */
		strv_addf(&a, "-chardev");
		strv_addf(&a, "socket,id=qmp-recovery,path=%s,server=on,wait=off", c->qmp_path);
		strv_addf(&a, "-mon");
		strv_addf(&a, "chardev=qmp-recovery,mode=control");
	}
	strv_addf(&a, "-nic");
	strv_addf(&a, "none");
	for (size_t i = 0; i < s->n_disks; i++) {
		const struct spec_disk *d = &s->disks[i];
		strv_addf(&a, "-drive");
		/* virtio-blk: IDE cannot attach a read-only hard disk. */
		strv_addf(&a, "file=%s,format=%s,if=virtio,index=%zu,media=disk%s", d->path,
			  d->format, i, d->readonly ? ",readonly=on" : "");
	}
	if (c->incoming && c->incoming->kind == CMDLINE_INCOMING_CPR_TRANSFER) {
		/* The cpr channel is read before the monitor starts, so both are
		 * given here; QEMU 10.0 takes only a unix path for it. */
		strv_addf(&a, "-incoming");
		strv_addf(&a, "unix:%s", c->incoming->main_path);
		strv_addf(&a, "-incoming");
		strv_addf(&a,
			  "{\"channel-type\":\"cpr\",\"addr\":{\"transport\":\"socket\",\"type\":"
			  "\"unix\",\"path\":\"%s\"}}",
			  c->incoming->cpr_path);
	} else if (c->incoming && c->incoming->kind == CMDLINE_INCOMING_FILE) {
		strv_addf(&a, "-incoming");
		strv_addf(&a, "file:%s", c->incoming->main_path);
	} else if (c->incoming) {
		strv_addf(&a, "-incoming");
		strv_addf(&a, "defer");
	}

	if (a.oom) {
		strv_free(a.v);
		return -ENOMEM;
	}
	*ret = a.v;
	return 0;
}
