/* Re-attaching to running guests after cprd restarted (see attach.c). */
#pragma once

struct manager;

/* For every loaded VM: takes its fds back from the fd store, finds its
 * QEMU by pid, reconnects QMP, and settles an interrupted upgrade. */
void attach_all(struct manager *m);
