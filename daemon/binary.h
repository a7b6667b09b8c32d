/* Which files cprd will execute as QEMU, and opening them so that the file
 * checked is the file executed (execveat on the opened fd). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define BINARY_DIRS_MAX 16

/* Optional restriction to some folders (cprd --qemu-dir DIR). */
int binary_allow_dir(const char *dir);

/* Checks path for execution as QEMU: an absolute path to a regular file
 * owned by root, not writable by group or others, in folders that only root
 * can change (or sticky ones, like /tmp), within the allowed folders if any
 * are set. On refusal returns -EPERM (or the errno) and writes a sentence. */
int binary_check(const char *path, char *why, size_t why_size);
/* binary_check(), then opens the file (O_PATH, close-on-exec) and checks
 * the opened file again; the fd is what gets executed. */
int binary_open(const char *path, char *why, size_t why_size);
