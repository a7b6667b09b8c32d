/* The uid range of --qemu-users (see users.h): pure parsing and picking,
 * and a plain reading of the account files, so the checks are the same
 * whatever NSS would add. */
#include "users.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "util.h"

/* A decimal number of at most 10 digits, nothing else. */
static bool parse_u32(const char *s, size_t len, uint64_t *ret) {
	uint64_t v = 0;
	if (len == 0 || len > 10)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*ret = v;
	return true;
}

int users_parse_range(const char *s, struct users_range *ret, char *why, size_t size) {
	const char *dash = s ? strchr(s, '-') : NULL;
	uint64_t first, last;
	if (!dash || !parse_u32(s, (size_t)(dash - s), &first) ||
	    !parse_u32(dash + 1, strlen(dash + 1), &last))
		return why_err(-EINVAL, why, size, "'%.64s' is not a range FIRST-LAST of uids, such as 200000-200999",
			   s ? s : "");
	if (first == 0)
		return why_err(-ERANGE, why, size, "uid 0 is root's; the range must start above it");
	if (last > USERS_UID_MAX)
		return why_err(-ERANGE, why, size, "%llu is past the highest usable uid, %u",
			   (unsigned long long)last, USERS_UID_MAX);
	if (first > last)
		return why_err(-ERANGE, why, size, "the first uid, %llu, is above the last, %llu",
			   (unsigned long long)first, (unsigned long long)last);
	*ret = (struct users_range){.set = true, .first = (uid_t)first, .last = (uid_t)last};
	return 0;
}

bool users_in_range(const struct users_range *r, uid_t uid) {
	return r && r->set && uid >= r->first && uid <= r->last;
}

/* Field i (from 0) of a colon-separated line, as a pointer and a length. */
static bool field(const char *line, unsigned i, const char **ret, size_t *len) {
	const char *p = line;
	for (; i > 0; i--) {
		p = strchr(p, ':');
		if (!p)
			return false;
		p++;
	}
	*ret = p;
	*len = strcspn(p, ":\n");
	return true;
}

/* What a line of each file is, and which of its fields are ids. */
enum users_file { USERS_PASSWD, USERS_GROUP, USERS_SUBID };

/* Whether line conflicts with r; fills why. */
static bool line_conflicts(const struct users_range *r, enum users_file kind, const char *path,
			   const char *line, char *why, size_t size) {
	const char *name, *f;
	size_t name_len, len;
	uint64_t id, count;
	if (line[0] == '#' || line[0] == '+' || line[0] == '-' || !field(line, 0, &name, &name_len))
		return false;
	int n_name = (int)MIN(name_len, (size_t)64);
	if (kind == USERS_SUBID) {
		if (!field(line, 1, &f, &len) || !parse_u32(f, len, &id) || !field(line, 2, &f, &len) ||
		    !parse_u32(f, len, &count) || count == 0)
			return false;
		if (id > r->last || id + count - 1 < r->first)
			return false;
		why_err(-EEXIST, why, size, "%s gives %.*s the ids %llu-%llu", path, n_name, name,
		    (unsigned long long)id, (unsigned long long)(id + count - 1));
		return true;
	}
	/* passwd: uid (2) and primary gid (3); group: gid (2). */
	for (unsigned i = 2; i <= (kind == USERS_PASSWD ? 3U : 2U); i++) {
		if (!field(line, i, &f, &len) || !parse_u32(f, len, &id) || id < r->first || id > r->last)
			continue;
		why_err(-EEXIST, why, size, "%s: %s %.*s has %s %llu", path,
		    kind == USERS_GROUP ? "group" : "user", n_name, name, i == 2 && kind == USERS_PASSWD ? "uid" : "gid",
		    (unsigned long long)id);
		return true;
	}
	return false;
}

static int check_file(const struct users_range *r, enum users_file kind, const char *path, char *why,
		      size_t size) {
	if (!path)
		return 0;
	FILE *f = fopen(path, "re");
	if (!f)
		return errno == ENOENT ? 0 : why_err(-errno, why, size, "cannot read %s: %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	int r_ = 0;
	while (getline(&line, &cap, f) >= 0)
		if (line_conflicts(r, kind, path, line, why, size)) {
			r_ = -EEXIST;
			break;
		}
	free(line);
	fclose(f);
	return r_;
}

int users_check_accounts(const struct users_range *r, const char *passwd, const char *group,
			 const char *subuid, const char *subgid, char *why, size_t size) {
	int e;
	if ((e = check_file(r, USERS_PASSWD, passwd, why, size)) < 0 ||
	    (e = check_file(r, USERS_GROUP, group, why, size)) < 0 ||
	    (e = check_file(r, USERS_SUBID, subuid, why, size)) < 0 ||
	    (e = check_file(r, USERS_SUBID, subgid, why, size)) < 0)
		return e;
	return 0;
}

static int uid_cmp(const void *a, const void *b) {
	uid_t x = *(const uid_t *)a, y = *(const uid_t *)b;
	return x < y ? -1 : x > y;
}

int users_pick(const struct users_range *r, const uid_t *used, size_t n_used, uid_t *ret) {
	if (!r || !r->set)
		return -EINVAL;
	uid_t *sorted = malloc((n_used ? n_used : 1) * sizeof(*sorted));
	if (!sorted)
		return -ENOMEM;
	size_t n = 0;
	for (size_t i = 0; i < n_used; i++)
		if (users_in_range(r, used[i]))
			sorted[n++] = used[i];
	qsort(sorted, n, sizeof(*sorted), uid_cmp);
	/* The first gap from first up; duplicates are skipped. */
	uint64_t want = r->first;
	for (size_t i = 0; i < n && sorted[i] <= want; i++)
		if (sorted[i] == want)
			want++;
	free(sorted);
	if (want > r->last)
		return -ENOSPC;
	*ret = (uid_t)want;
	return 0;
}
