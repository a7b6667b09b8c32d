/* cprd --qemu-users FIRST-LAST: a range of uids that no account uses, from
 * which each VM gets a user of its own for its QEMUs (gid = uid, no
 * supplementary groups). Parsing the range, checking it against the account
 * files, and picking a free uid; which VM holds which uid is the manager's
 * business (each VM's vm.json). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The highest uid a range may reach: (uid_t)-1 means "no change" to
 * setresuid, and (uid_t)-2 is the kernel's overflow uid. */
#define USERS_UID_MAX 4294967293U

struct users_range {
	bool set; /* --qemu-users was given */
	uid_t first, last;
};

/* "FIRST-LAST" (decimal, FIRST <= LAST, no uid 0, at most USERS_UID_MAX)
 * into *ret. -EINVAL for another shape, -ERANGE for numbers out of bounds;
 * why says which in a sentence. */
int users_parse_range(const char *s, struct users_range *ret, char *why, size_t size);
bool users_in_range(const struct users_range *r, uid_t uid);
/* Whether an account or group of the given files (passwd(5), group(5),
 * subuid(5), subgid(5); a NULL or missing file has none) has a uid or gid in
 * r, or a subordinate id range that overlaps it. 0: none does; -EEXIST: why
 * names the first (file, line's name and id); another negative errno: a
 * file exists but cannot be read. */
int users_check_accounts(const struct users_range *r, const char *passwd, const char *group,
			 const char *subuid, const char *subgid, char *why, size_t size);
/* The lowest uid of r that used (n_used uids, any order, any values) does
 * not hold; -ENOSPC when each one does. */
int users_pick(const struct users_range *r, const uid_t *used, size_t n_used, uid_t *ret);
