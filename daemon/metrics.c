/* cprd's metrics: counting upgrades and rendering a snapshot in
 * Prometheus's text exposition format (see metrics.h). */
#include "metrics.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"

const double metrics_bucket_bounds[METRICS_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
};

void metrics_init(struct metrics *m, double start_time) {
	*m = (struct metrics){.start_time = start_time};
}

static struct metrics_upgrade_count *upgrade_kind(struct metrics *m, const char *mode,
						  const char *outcome, int *err) {
	for (size_t i = 0; i < m->n_upgrades; i++)
		if (streq(m->upgrades[i].mode, mode) && streq(m->upgrades[i].outcome, outcome))
			return &m->upgrades[i];
	if (strlen(mode) >= METRICS_NAME_MAX || strlen(outcome) >= METRICS_NAME_MAX) {
		*err = -ENAMETOOLONG;
		return NULL;
	}
	if (m->n_upgrades >= METRICS_UPGRADE_KINDS_MAX) {
		*err = -ENOSPC;
		return NULL;
	}
	struct metrics_upgrade_count *c = &m->upgrades[m->n_upgrades++];
	*c = (struct metrics_upgrade_count){0};
	strcpy(c->mode, mode);
	strcpy(c->outcome, outcome);
	return c;
}

int metrics_upgrade_kind(struct metrics *m, const char *mode, const char *outcome) {
	int r = 0;
	return upgrade_kind(m, mode, outcome, &r) ? 0 : r;
}

void metrics_histogram_observe(struct metrics_histogram *h, double v) {
	size_t i = 0;
	while (i < METRICS_BUCKETS && v > metrics_bucket_bounds[i])
		i++;
	h->counts[i]++;
	h->count++;
	h->sum += v;
}

void metrics_count_upgrade(struct metrics *m, const char *mode, const char *outcome, double pause_s,
			   double duration_s) {
	int r = 0;
	struct metrics_upgrade_count *c = upgrade_kind(m, mode ? mode : "unknown", outcome, &r);
	if (c)
		c->n++;
	if (pause_s >= 0)
		metrics_histogram_observe(&m->pause, pause_s);
	if (duration_s >= 0)
		metrics_histogram_observe(&m->duration, duration_s);
}

char *metrics_escape_label(const char *value) {
	size_t n = 0;
	for (const char *p = value; *p; p++)
		n += (*p == '\\' || *p == '"' || *p == '\n') ? 2 : 1;
	char *out = malloc(n + 1), *o = out;
	if (!out)
		return NULL;
	for (const char *p = value; *p; p++) {
		if (*p == '\\' || *p == '"' || *p == '\n') {
			*o++ = '\\';
			*o++ = *p == '\n' ? 'n' : *p;
		} else
			*o++ = *p;
	}
	*o = '\0';
	return out;
}

/* name="value", escaped; false when out of memory. */
static bool put_label(FILE *f, const char *name, const char *value) {
	_cleanup_free_ char *e = metrics_escape_label(value);
	if (!e)
		return false;
	fprintf(f, "%s=\"%s\"", name, e);
	return true;
}

static void put_header(FILE *f, const char *name, const char *type, const char *help) {
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_histogram(FILE *f, const char *name, const char *help,
			  const struct metrics_histogram *h) {
	uint64_t cumulative = 0;
	put_header(f, name, "histogram", help);
	for (size_t i = 0; i < METRICS_BUCKETS; i++) {
		cumulative += h->counts[i];
		fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, metrics_bucket_bounds[i],
			(unsigned long long)cumulative);
	}
	fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
	fprintf(f, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

int metrics_render(const struct metrics_snapshot *s, char **ret, size_t *ret_len) {
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return -ENOMEM;
	bool ok = true;

	put_header(f, "cprd_start_time_seconds", "gauge",
		   "When this cprd started, in unix seconds; the counters count from then.");
	fprintf(f, "cprd_start_time_seconds %.3f\n", s->totals->start_time);

	put_header(f, "cprd_vms", "gauge", "VMs by state.");
	for (size_t i = 0; ok && i < s->n_states; i++) {
		fputs("cprd_vms{", f);
		ok = put_label(f, "state", s->states[i]);
		fprintf(f, "} %u\n", s->vms_in_state[i]);
	}

	put_header(f, "cprd_upgrades_running", "gauge", "Upgrades under way.");
	fprintf(f, "cprd_upgrades_running %u\n", s->upgrades_running);

	put_header(f, "cprd_upgrades_total", "counter",
		   "Upgrades that ended since cprd started, by mode and outcome.");
	for (size_t i = 0; ok && i < s->totals->n_upgrades; i++) {
		const struct metrics_upgrade_count *c = &s->totals->upgrades[i];
		fputs("cprd_upgrades_total{", f);
		ok = put_label(f, "mode", c->mode);
		fputc(',', f);
		ok = ok && put_label(f, "outcome", c->outcome);
		fprintf(f, "} %llu\n", (unsigned long long)c->n);
	}

	put_histogram(f, "cprd_upgrade_pause_seconds",
		      "How long upgrades paused their guest (QMP STOP to RESUME), in seconds.",
		      &s->totals->pause);
	put_histogram(f, "cprd_upgrade_duration_seconds",
		      "How long upgrades took from request to end, in seconds.", &s->totals->duration);

	put_header(f, "cprd_vm_last_upgrade_timestamp_seconds", "gauge",
		   "When the VM's last committed upgrade ended, in unix seconds.");
	for (size_t i = 0; ok && i < s->n_vms; i++) {
		if (s->vms[i].last_upgrade < 0)
			continue;
		fputs("cprd_vm_last_upgrade_timestamp_seconds{", f);
		ok = put_label(f, "vm", s->vms[i].name);
		fprintf(f, "} %.3f\n", s->vms[i].last_upgrade);
	}

	if (fclose(f) != 0 || !ok || !buf) {
		free(buf);
		return -ENOMEM;
	}
	*ret = buf;
	if (ret_len)
		*ret_len = len;
	return 0;
}
