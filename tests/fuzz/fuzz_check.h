/* CHECK(): an assertion that stays in every build type (assert() is gone
 * under NDEBUG), so a broken contract is a crash libFuzzer reports. */
#pragma once

#include <stdio.h>
#include <stdlib.h>

#define CHECK(x)                                                                          \
	do {                                                                              \
		if (!(x)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x); \
			abort();                                                          \
		}                                                                         \
	} while (0)
