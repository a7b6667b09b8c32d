/* The main() of a Check suite that needs nothing but to run: shared by the
 * suites of pure modules (cmdline, mode, custody, the records). */
#pragma once

#include <check.h>
#include <stdlib.h>

/* Runs the suite; the exit status is ctest's verdict. */
static inline int check_run(Suite *s) {
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
