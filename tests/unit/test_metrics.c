/* Check suite for daemon/metrics.c: the text a snapshot renders to, line
 * by line (HELP and TYPE, every state even at 0, counters by mode and
 * outcome, cumulative histogram buckets, the per-VM gauge), label values
 * escaped as the text format wants, and the limits of the counter table. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check-run.h"
#include "macro.h"
#include "metrics.h"
#include "util.h"

static const char *const states[] = {"running", "stopped", "upgrading"};

/* Whether text holds line as a whole line. */
static bool has_line(const char *text, const char *line) {
	size_t n = strlen(line);
	for (const char *p = text; (p = strstr(p, line)); p++)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	return false;
}

static char *render(const struct metrics *m, const unsigned *in_state, const struct metrics_vm *vms,
		    size_t n_vms) {
	const struct metrics_snapshot s = {
		.totals = m,
		.states = states,
		.vms_in_state = in_state,
		.n_states = ELEMENTSOF(states),
		.upgrades_running = 1,
		.vms = vms,
		.n_vms = n_vms,
	};
	char *text = NULL;
	size_t len = 0;
	ck_assert_int_eq(metrics_render(&s, &text, &len), 0);
	ck_assert_uint_eq(len, strlen(text));
	ck_assert(len > 0 && text[len - 1] == '\n');
	return text;
}

START_TEST(test_render) {
	struct metrics m;
	metrics_init(&m, 1700000000.5);
	ck_assert_int_eq(metrics_upgrade_kind(&m, "cpr-transfer", "committed"), 0);
	ck_assert_int_eq(metrics_upgrade_kind(&m, "local-migrate", "rolled-back"), 0);
	metrics_count_upgrade(&m, "cpr-transfer", "committed", 0.004, 0.3);
	metrics_count_upgrade(&m, "cpr-transfer", "committed", 0.012, 2);
	metrics_count_upgrade(&m, "local-migrate", "failed", -1, 20); /* a new pair, no pause */
	const unsigned in_state[] = {2, 0, 1};
	const struct metrics_vm vms[] = {{"vm1", 1700000100.25}, {"vm2", -1}};
	_cleanup_free_ char *t = render(&m, in_state, vms, ELEMENTSOF(vms));

	ck_assert(has_line(t, "# HELP cprd_vms VMs by state."));
	ck_assert(has_line(t, "# TYPE cprd_vms gauge"));
	ck_assert(has_line(t, "cprd_vms{state=\"running\"} 2"));
	ck_assert(has_line(t, "cprd_vms{state=\"stopped\"} 0"));
	ck_assert(has_line(t, "cprd_vms{state=\"upgrading\"} 1"));
	ck_assert(has_line(t, "cprd_start_time_seconds 1700000000.500"));
	ck_assert(has_line(t, "cprd_upgrades_running 1"));

	ck_assert(has_line(t, "# TYPE cprd_upgrades_total counter"));
	ck_assert(has_line(t, "cprd_upgrades_total{mode=\"cpr-transfer\",outcome=\"committed\"} 2"));
	ck_assert(has_line(t, "cprd_upgrades_total{mode=\"local-migrate\",outcome=\"rolled-back\"} 0"));
	ck_assert(has_line(t, "cprd_upgrades_total{mode=\"local-migrate\",outcome=\"failed\"} 1"));

	/* Pause: 4 ms and 12 ms; buckets are cumulative, +Inf is the count. */
	ck_assert(has_line(t, "# TYPE cprd_upgrade_pause_seconds histogram"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"0.001\"} 0"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"0.005\"} 1"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"0.01\"} 1"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"0.025\"} 2"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"10\"} 2"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"+Inf\"} 2"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_sum 0.016000"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_count 2"));
	/* Duration: 0.3 s, 2 s and 20 s, past the last bound. */
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_bucket{le=\"0.25\"} 0"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_bucket{le=\"0.5\"} 1"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_bucket{le=\"2.5\"} 2"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_bucket{le=\"10\"} 2"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_bucket{le=\"+Inf\"} 3"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_count 3"));

	/* Only VMs that had a committed upgrade. */
	ck_assert(has_line(t, "# TYPE cprd_vm_last_upgrade_timestamp_seconds gauge"));
	ck_assert(has_line(t, "cprd_vm_last_upgrade_timestamp_seconds{vm=\"vm1\"} 1700000100.250"));
	ck_assert_ptr_null(strstr(t, "vm=\"vm2\""));

	/* Every metric has its HELP and TYPE, and they come before its samples. */
	static const char *const names[] = {"cprd_start_time_seconds", "cprd_vms", "cprd_upgrades_running",
					    "cprd_upgrades_total", "cprd_upgrade_pause_seconds",
					    "cprd_upgrade_duration_seconds",
					    "cprd_vm_last_upgrade_timestamp_seconds"};
	for (size_t i = 0; i < ELEMENTSOF(names); i++) {
		char help[128], type[128], sample[128];
		snprintf(help, sizeof(help), "# HELP %s ", names[i]);
		snprintf(type, sizeof(type), "\n# TYPE %s ", names[i]);
		snprintf(sample, sizeof(sample), "\n%s", names[i]);
		const char *h = strstr(t, help), *ty = strstr(t, type), *s = strstr(t, sample);
		ck_assert_msg(h && ty && s && h < ty && ty < s, "%s: HELP, TYPE, then samples", names[i]);
	}
}
END_TEST

/* With no upgrade yet every histogram bucket is 0 and the sum 0. */
START_TEST(test_empty) {
	struct metrics m;
	metrics_init(&m, 0);
	const unsigned in_state[] = {0, 0, 0};
	_cleanup_free_ char *t = render(&m, in_state, NULL, 0);
	ck_assert(has_line(t, "cprd_vms{state=\"running\"} 0"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_bucket{le=\"+Inf\"} 0"));
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_sum 0.000000"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_count 0"));
	ck_assert_ptr_null(strstr(t, "cprd_upgrades_total{"));
	ck_assert_ptr_null(strstr(t, "cprd_vm_last_upgrade_timestamp_seconds{"));
}
END_TEST

START_TEST(test_escape) {
	static const struct {
		const char *in, *out;
	} cases[] = {
		{"vm1", "vm1"},
		{"", ""},
		{"a\"b", "a\\\"b"},
		{"a\\b", "a\\\\b"},
		{"line\nnext", "line\\nnext"},
		{"\\\"\n", "\\\\\\\"\\n"},
		{"tab\tstays", "tab\tstays"},
		{"ünï", "ünï"},
	};
	for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
		_cleanup_free_ char *e = metrics_escape_label(cases[i].in);
		ck_assert_str_eq(e, cases[i].out);
	}

	/* In a rendered file too, in each label. */
	struct metrics m;
	metrics_init(&m, 0);
	metrics_count_upgrade(&m, "m\"ode", "out\\come\n", -1, -1);
	const unsigned in_state[] = {0, 0, 0};
	const struct metrics_vm vms[] = {{"a\"b\\c\nd", 1}};
	_cleanup_free_ char *t = render(&m, in_state, vms, 1);
	ck_assert(has_line(t, "cprd_upgrades_total{mode=\"m\\\"ode\",outcome=\"out\\\\come\\n\"} 1"));
	ck_assert(has_line(t, "cprd_vm_last_upgrade_timestamp_seconds{vm=\"a\\\"b\\\\c\\nd\"} 1.000"));
	/* Not measured: no observation in either histogram. */
	ck_assert(has_line(t, "cprd_upgrade_pause_seconds_count 0"));
	ck_assert(has_line(t, "cprd_upgrade_duration_seconds_count 0"));
}
END_TEST

START_TEST(test_limits) {
	struct metrics m;
	char mode[METRICS_NAME_MAX + 8];
	metrics_init(&m, 0);
	memset(mode, 'x', sizeof(mode) - 1);
	mode[sizeof(mode) - 1] = '\0';
	ck_assert_int_eq(metrics_upgrade_kind(&m, mode, "committed"), -ENAMETOOLONG);
	for (int i = 0; i < METRICS_UPGRADE_KINDS_MAX; i++) {
		snprintf(mode, sizeof(mode), "mode%d", i);
		ck_assert_int_eq(metrics_upgrade_kind(&m, mode, "committed"), 0);
	}
	ck_assert_int_eq(metrics_upgrade_kind(&m, "one-more", "committed"), -ENOSPC);
	/* A known pair still counts; a new one does not, but its times do. */
	ck_assert_int_eq(metrics_upgrade_kind(&m, "mode0", "committed"), 0);
	metrics_count_upgrade(&m, "mode0", "committed", 0.001, 0.1);
	metrics_count_upgrade(&m, "one-more", "committed", 0.001, 0.1);
	ck_assert_uint_eq(m.upgrades[0].n, 1);
	ck_assert_uint_eq(m.n_upgrades, METRICS_UPGRADE_KINDS_MAX);
	ck_assert_uint_eq(m.pause.count, 2);
	/* On a bound counts into that bucket (le is "less or equal"). */
	ck_assert_uint_eq(m.pause.counts[0], 2);
}
END_TEST

START_TEST(test_rfc3339) {
	char buf[32];
	uint64_t usec;
	format_rfc3339(1700000100250000, buf);
	ck_assert_int_eq(parse_rfc3339(buf, &usec), 0);
	ck_assert_uint_eq(usec, 1700000100250000);
	ck_assert_int_eq(parse_rfc3339("2026-11-21T10:00:00Z", &usec), 0);
	ck_assert_uint_eq(usec, 1795255200000000);
	ck_assert_int_eq(parse_rfc3339("2026-11-21T10:00:00.1Z", &usec), -EINVAL);
	ck_assert_int_eq(parse_rfc3339("2026-11-21T10:00:00.123", &usec), -EINVAL);
	ck_assert_int_eq(parse_rfc3339("2026-11-21 10:00:00Z", &usec), -EINVAL);
	ck_assert_int_eq(parse_rfc3339("", &usec), -EINVAL);
}
END_TEST

static Suite *metrics_suite(void) {
	Suite *s = suite_create("metrics");
	TCase *tc = tcase_create("render");
	tcase_add_test(tc, test_render);
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_escape);
	tcase_add_test(tc, test_limits);
	tcase_add_test(tc, test_rfc3339);
	suite_add_tcase(s, tc);
	return s;
}

int main(void) {
	return check_run(metrics_suite());
}
