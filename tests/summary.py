#!/usr/bin/python3
"""How many checks ran in each area of a test run, from the runners' own
closing lines; and, with CI=true, whether anything was skipped that
tests/ci-skips.txt does not allow.

  summary.py ctest STAGE BUILD_DIR CTEST_OUTPUT
      every ctest test of BUILD_DIR's last run (Testing/Temporary/
      LastTest.log); CTEST_OUTPUT is what ctest printed, which alone says
      which tests were skipped (exit 77: LastTest.log calls them passed)
  summary.py runner STAGE AREA LOG
      one runner outside ctest (valgrind, fuzz) whose output is in LOG

Prints one line per area, "ran N of M" with the runner's own counts. Exits
1 when, in CI, a whole test was skipped without an allowlist entry, or a
runner printed no count at all (then nobody knows what ran). Failures
themselves are ctest's business: this only makes a green run say what ran.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ci_skips  # noqa: E402

# Check: "100%: Checks: 37, Failures: 0, Errors: 0"
CHECK_RE = re.compile(r"^\d+%: Checks: (\d+), Failures: (\d+), Errors: (\d+)\s*$")
# Every other runner: "N passed, M failed" [", K skipped"] alone on a line.
PLAIN_RE = re.compile(r"^(\d+) passed, (\d+) failed(?:, (\d+) skipped)?\s*$")


def counts(lines):
    """(passed, failed, skipped): the runner's own closing line, the last
    "N passed, M failed" (a runner such as valgrind.sh may echo the Check
    lines of the programs it ran before it); else the Check lines summed (a
    Check program prints one per suite); None when there is neither."""
    plain = [m for m in (PLAIN_RE.match(l) for l in lines) if m]
    if plain:
        m = plain[-1]
        return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    total, seen = [0, 0, 0], False
    for line in lines:
        m = CHECK_RE.match(line)
        if m:
            n, f, e = map(int, m.groups())
            total[0] += n - f - e
            total[1] += f + e
            seen = True
    return tuple(total) if seen else None


def ctest_outputs(last_test_log):
    """{test name: [output lines]} from ctest's LastTest.log, in run order."""
    out, name, inside = {}, None, False
    with open(last_test_log, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = re.match(r"^\d+/\d+ Testing: (.+)$", line)
            if m:
                name, inside = m.group(1), False
                out[name] = []
            elif name and line == "Output:":
                inside = None  # the dashes follow
            elif name and inside is None and line.startswith("-----"):
                inside = True
            elif name and inside and line == "<end of output>":
                inside = False
            elif name and inside:
                out[name].append(line)
    return out


def ctest_skipped(ctest_output):
    """Names ctest lists under "The following tests did not run"."""
    skipped = set()
    with open(ctest_output, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.match(r"^\s*\d+ - (\S+) \((Skipped|Disabled|Not Run)\)\s*$", line)
            if m:
                skipped.add(m.group(1))
    return skipped


def line_for(area, c, whole_skip=None):
    if whole_skip is not None:
        return "  %-26s skipped whole: %s" % (area, whole_skip)
    if c is None:
        return "  %-26s printed no count" % area
    p, f, s = c
    text = "  %-26s ran %d of %d: %d passed" % (area, p + f, p + f + s, p)
    if f:
        text += ", %d FAILED" % f
    if s:
        text += ", %d skipped" % s
    return text


def report(stage, areas):
    """areas: [(area, counts or None, reason of a whole skip or None)].
    Prints them; returns the problems that fail a CI run."""
    problems = []
    print("checks per area, %s:" % stage)
    for area, c, whole in areas:
        print(line_for(area, c, whole))
        if whole is not None:
            status, _ = ci_skips.skip(area, "*", whole)
            if status != "SKIP":
                problems.append("%s was skipped whole (ctest exit 77), and tests/ci-skips.txt does "
                                "not list '%s *'" % (area, area))
        elif c is None:
            problems.append("%s printed no 'N passed, M failed' line: what ran is unknown" % area)
    if problems and ci_skips.in_ci():
        for p in problems:
            print("FAIL %s" % p)
        return problems
    for p in problems:
        print("note: %s (a failure with CI=true)" % p)
    return []


def main(argv):
    if len(argv) == 5 and argv[1] == "ctest":
        stage, build, output = argv[2], argv[3], argv[4]
        outputs = ctest_outputs(os.path.join(build, "Testing", "Temporary", "LastTest.log"))
        skipped = ctest_skipped(output)
        areas = []
        for name, lines in outputs.items():
            whole = None
            if name in skipped:
                said = [l.strip() for l in lines if l.startswith("SKIP")] or \
                    [l.strip() for l in lines if l.strip()]
                whole = said[-1] if said else "no reason printed"
            areas.append((name, counts(lines), whole))
        return 1 if report(stage, areas) else 0
    if len(argv) == 5 and argv[1] == "runner":
        stage, area, log = argv[2], argv[3], argv[4]
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [l.rstrip("\n") for l in f]
        return 1 if report(stage, [(area, counts(lines), None)]) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
