/* Metrics in Prometheus's text format (node_exporter's textfile collector
 * reads them from <runtime>/metrics.prom): the counts cprd keeps since it
 * started, and the rendering of a snapshot to text. No I/O, so
 * tests/unit/test_metrics.c checks it alone; manager.c takes the snapshot
 * and writes the file. */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The upper bounds of the histograms' buckets, in seconds (+Inf is one
 * more): from 1 ms, below a cpr-transfer pause, to 10 s, past a slow
 * local-migrate upgrade. */
#define METRICS_BUCKETS 13
extern const double metrics_bucket_bounds[METRICS_BUCKETS];

/* Distinct (mode, outcome) pairs counted; a pair past the last is not. */
#define METRICS_UPGRADE_KINDS_MAX 32
#define METRICS_NAME_MAX 32

struct metrics_histogram {
	uint64_t counts[METRICS_BUCKETS + 1]; /* per bucket (not cumulative); the last is +Inf */
	uint64_t count;
	double sum;
};

struct metrics_upgrade_count {
	char mode[METRICS_NAME_MAX], outcome[METRICS_NAME_MAX];
	uint64_t n;
};

/* What cprd counts as it runs; lost when it exits or re-executes. */
struct metrics {
	double start_time; /* unix seconds */
	struct metrics_upgrade_count upgrades[METRICS_UPGRADE_KINDS_MAX];
	size_t n_upgrades;
	struct metrics_histogram pause, duration;
};

void metrics_init(struct metrics *m, double start_time);
/* Makes the pair (mode, outcome) present, at 0 if it was not, so that a
 * rate over it starts from 0. -ENOSPC past METRICS_UPGRADE_KINDS_MAX,
 * -ENAMETOOLONG for a name of METRICS_NAME_MAX bytes or more. */
int metrics_upgrade_kind(struct metrics *m, const char *mode, const char *outcome);
/* One upgrade that ended: counted by mode and outcome; pause_s and
 * duration_s (seconds) go into the histograms unless negative (not
 * measured). */
void metrics_count_upgrade(struct metrics *m, const char *mode, const char *outcome, double pause_s,
			   double duration_s);
void metrics_histogram_observe(struct metrics_histogram *h, double v);

/* The VMs as they are when the file is written. */
struct metrics_vm {
	const char *name;
	double last_upgrade; /* unix seconds its last committed upgrade ended; < 0: none */
};

struct metrics_snapshot {
	const struct metrics *totals;
	/* Every state a VM can be in, each with how many VMs are in it. */
	const char *const *states;
	const unsigned *vms_in_state;
	size_t n_states;
	unsigned upgrades_running;
	const struct metrics_vm *vms;
	size_t n_vms;
};

/* The snapshot in the text exposition format (version 0.0.4), each
 * metric with its HELP and TYPE lines. *ret is NUL-terminated; free() it. */
int metrics_render(const struct metrics_snapshot *s, char **ret, size_t *ret_len);
/* A label value escaped as the format wants it: backslash, double quote
 * and newline as \\, \" and \n. NULL when out of memory; free() it. */
char *metrics_escape_label(const char *value);
