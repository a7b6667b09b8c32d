/* Which binaries cprd runs (see binary.h). cprd runs as root and executes
 * whatever a VM spec names, so the file and every folder above it must be
 * beyond the reach of anyone but root. */
#include "binary.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "util.h"

static char *allowed[BINARY_DIRS_MAX];
static size_t n_allowed;

int binary_allow_dir(const char *dir) {
	char real[PATH_MAX];
	if (n_allowed >= BINARY_DIRS_MAX)
		return -E2BIG;
	if (!realpath(dir, real))
		return -errno;
	allowed[n_allowed] = strdup(real);
	if (!allowed[n_allowed])
		return -ENOMEM;
	n_allowed++;
	return 0;
}


static bool file_ok(const struct stat *st) {
	return st->st_uid == 0 && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

static bool dir_ok(const struct stat *st) {
	/* A sticky folder (/tmp) lets nobody else rename root's entries. */
	return st->st_uid == 0 && (!(st->st_mode & (S_IWGRP | S_IWOTH)) || (st->st_mode & S_ISVTX));
}

int binary_check(const char *path, char *why, size_t why_size) {
	char real[PATH_MAX], buf[PATH_MAX];
	struct stat st;

	if (path[0] != '/')
		return why_err(-EINVAL, why, why_size, "'%.200s' is not an absolute path", path);
	if (stat(path, &st) < 0)
		return why_err(-errno, why, why_size, "'%.200s' does not exist", path);
	if (!S_ISREG(st.st_mode))
		return why_err(-EACCES, why, why_size, "'%.200s' is not a regular file", path);
	if (!(st.st_mode & S_IXUSR))
		return why_err(-EACCES, why, why_size, "'%.200s' is not executable", path);
	if (!realpath(path, real))
		return why_err(-errno, why, why_size, "cannot resolve '%.200s'", path);

	if (n_allowed > 0) {
		bool inside = false;
		for (size_t i = 0; i < n_allowed && !inside; i++) {
			size_t n = strlen(allowed[i]);
			inside = strncmp(real, allowed[i], n) == 0 && (real[n] == '/' || n == 1);
		}
		if (!inside)
			return why_err(-EPERM, why, why_size,
				      "'%.200s' is outside the folders cprd may run QEMU from (--qemu-dir)", real);
	}
	if (!file_ok(&st))
		return why_err(-EPERM, why, why_size,
			      "'%.200s' must be owned by root and writable by nobody else", real);
	/* Every folder above it, up to /. */
	strcpy(buf, real);
	for (char *slash = strrchr(buf, '/'); slash; slash = strrchr(buf, '/')) {
		if (slash == buf)
			slash[1] = '\0';
		else
			*slash = '\0';
		if (stat(buf, &st) < 0 || !dir_ok(&st))
			return why_err(-EPERM, why, why_size,
				      "the folder '%.200s' is writable by others than root; a binary in it "
				      "could be swapped",
				      buf);
		if (slash == buf)
			break;
	}
	return 0;
}

int binary_open(const char *path, char *why, size_t why_size) {
	struct stat before, after;
	int r = binary_check(path, why, why_size);
	if (r < 0)
		return r;
	if (stat(path, &before) < 0)
		return why_err(-errno, why, why_size, "'%.200s' vanished", path);
	int fd = open(path, O_PATH | O_CLOEXEC);
	if (fd < 0)
		return why_err(-errno, why, why_size, "cannot open '%.200s'", path);
	/* The file we hold must be the one we checked. */
	if (fstat(fd, &after) < 0 || after.st_dev != before.st_dev || after.st_ino != before.st_ino ||
	    !file_ok(&after)) {
		close(fd);
		return why_err(-EPERM, why, why_size, "'%.200s' changed while cprd checked it", path);
	}
	return fd;
}
