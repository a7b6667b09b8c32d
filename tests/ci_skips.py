"""Skipped checks and CI (tests/ci-skips.txt says which skips CI accepts).

A runner reports a skipped check through skip(): outside CI it is a skip,
counted and printed as one; with CI=true it is a failure unless the
allowlist names it, so a green CI run means that every check ran.
Standard library only (tests/systemd/offline.py imports it too).
"""

import os
import sys

ALLOWLIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ci-skips.txt")
SKIP_EXIT = 77  # ctest's SKIP_RETURN_CODE


def in_ci():
    return os.environ.get("CI") == "true"


def allowlist():
    """{(area, check): reason} from tests/ci-skips.txt."""
    out = {}
    with open(ALLOWLIST, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) < 3:
                raise ValueError("%s: a line needs AREA CHECK REASON: %r" % (ALLOWLIST, line))
            out[(parts[0], parts[1])] = parts[2]
    return out


def allowed(area, check):
    entries = allowlist()
    return (area, check) in entries or (area, "*") in entries


def skip(area, check, reason):
    """Returns ("SKIP", reason), or in CI for a check not on the allowlist
    ("FAIL", why): the caller counts and prints what it gets."""
    if not in_ci() or allowed(area, check):
        return "SKIP", reason
    return "FAIL", ("skipped, and CI accepts only the skips listed in tests/ci-skips.txt "
                    "(%s %s is not): %s" % (area, check, reason))


def skip_all(area, reason):
    """The whole runner cannot run: exit 77 (a skip), or 1 in CI unless the
    allowlist names AREA *."""
    status, text = skip(area, "*", reason)
    print("%s %s: %s" % (status, area, text), flush=True)
    sys.exit(SKIP_EXIT if status == "SKIP" else 1)
