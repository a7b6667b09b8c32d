"""Counting the checks of a Python runner in tests/varlink: each check
prints PASS, FAIL or SKIP with its name, and the runner ends with
"N passed, M failed" (", K skipped" when K > 0), the line tests/summary.py
reads. Skips go through tests/ci_skips.py: with CI=true a skip that
tests/ci-skips.txt does not list is a failure. A check's name is one word,
as the allowlist needs it. Standard library only.
"""

import importlib.util
import os


def _load_ci_skips():
    # By its path: tests/ on sys.path would make tests/varlink a namespace
    # package named varlink, which hides a missing python3-varlink.
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ci_skips.py")
    spec = importlib.util.spec_from_file_location("ci_skips", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ci_skips = _load_ci_skips()


class Checks:
    def __init__(self, area):
        self.area = area  # the ctest test's name
        self.passed = self.failed = self.skipped = 0

    def check(self, name, fn, *args):
        """Runs fn(*args); an exception fails the check, the others still run."""
        try:
            fn(*args)
        except Exception as e:
            self.fail(name, "%s: %s" % (type(e).__name__, e))
            return False
        self.passed += 1
        print("PASS %s" % name, flush=True)
        return True

    def fail(self, name, why):
        self.failed += 1
        print("FAIL %s: %s" % (name, why), flush=True)

    def skip(self, name, reason, allow_as=None):
        """allow_as: the CHECK the allowlist is asked about ("*": the whole
        test), when it is not name."""
        status, text = ci_skips.skip(self.area, allow_as or name, reason)
        if status == "SKIP":
            self.skipped += 1
            print("SKIP %s: %s" % (name, text), flush=True)
        else:
            self.fail(name, text)

    def skip_all(self, reason):
        """Nothing can run: the whole test is one skipped check, named for it."""
        self.skip(self.area, reason, allow_as="*")

    def finish(self):
        """Prints the closing line; returns the exit status: 1 when a check
        failed or none passed, 77 (ctest: skipped) when one was skipped."""
        line = "%d passed, %d failed" % (self.passed, self.failed)
        if self.skipped:
            line += ", %d skipped" % self.skipped
        print(line, flush=True)
        if self.failed or not (self.passed or self.skipped):
            return 1
        return ci_skips.SKIP_EXIT if self.skipped else 0


def expect(cond, what):
    if not cond:
        raise AssertionError(what)
