/* outdated: what cprd does when the QEMU binary a guest runs is replaced on
 * disk (apt upgrade). The new file is checked as every binary cprd runs
 * (binary.c): a refused one is reported and never run. A good one is probed
 * at once, in the background, so that the probe cache answers the first
 * upgrade to it; each VM whose QEMU came from the old file gets an
 * `outdated` event with both versions. */
#pragma once

struct manager;
struct outdated;

/* Watches the binaries of m's running QEMUs from now on (m->binwatch), and
 * looks at once at those that changed while nobody watched. */
int outdated_new(struct manager *m, struct outdated **ret);
/* Stops watching and cancels the probes under way. */
void outdated_free(struct outdated *o);
