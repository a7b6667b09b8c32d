#!/usr/bin/python3
"""The compatibility matrix (issue 10, item 5): every ordered pair of QEMU
7.2, 10.0 and 11.1, same-version pairs included, in each mode that the pair
allows (auto and local-migrate always, cpr-transfer when both sides are
10.0 or later, cpr-exec for 11.1 -> 11.1 and, as a refusal, from 10.0),
with the Linux test guest (tests/guest/linux) on a machine
type both sides have: pc-i440fx-7.2 when either side is 7.2, else
pc-i440fx-10.0.

EXPECTED below says what each case must do. A case either
  - commits: the mode reported is the expected one (for auto: the one cprd
    must choose), the guest runs on the new QEMU with the same RAM memfd,
    booted once, goes on writing records, and once stopped (--force) its data
    disk holds every record it reported (the checks of test_linux_guest.py);
  - or is refused by preflight: cprctl exits 1, the result says `refused`,
    failedPhase is absent or preflight, no phase after preflight was
    reported, the reason holds the expected words, and the VM is untouched
    (same QEMU, same pid, no upgrade recorded, the guest goes on writing).
Nothing may fail in transfer or roll back, and `auto` never does (no
rolled-back entry in its `attempts` either).

A guest that was refused stays on its QEMU, and the next case with the same
source QEMU and machine type goes on with it (its records are checked with
that case's); every other case boots a fresh guest (about 10 s under TCG).

Results: a JSON file (pair, mode asked, outcome, mode chosen, pause, total,
reason, ...) written after every case to $CPRD_MATRIX_RESULTS, by default
/tmp/cprd-matrix-XXXXXX/results.json (printed at the end), which
scripts/compat-table.py renders into docs/compatibility.md.

Prints "N passed, M failed" with one count per case (ctest test `matrix`,
label `matrix`). Skipped (exit 77; a failure in CI) when a QEMU is missing.

Run: /usr/bin/python3 test_matrix.py     (ctest --test-dir BUILD -L matrix)
"""

import datetime
import functools
import json
import os
import platform
import re
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import cprdtest as T
from cprdtest import wait_until
import test_linux_guest as L

# ---- what every case must do ------------------------------------------------------
#
# One row per case: the QEMU the guest runs on, the one it is upgraded to,
# the mode asked (`cprctl upgrade --mode`), then what must happen: the
# outcome, the mode cprd reports (for auto: the one it must choose), and the
# words that the reason of a refusal must contain.
#
# auto picks cpr-transfer when both sides are >= 10.0 and the target is not
# older than the source, else local-migrate. cpr-transfer from a newer QEMU
# to an older one is refused in preflight: QEMU 10.1 and later send CPR state
# that 10.0 cannot read (docs/compatibility.md, "Pairs and evidence").
C, R = "committed", "refused"
CPR, LM, AUTO, EXEC = "cpr-transfer", "local-migrate", "auto", "cpr-exec"
EXPECTED = [
    # from   to      mode asked  outcome  mode chosen  the refusal's reason names
    ("7.2",  "7.2",  AUTO,       C,       LM,          ()),
    ("7.2",  "7.2",  LM,         C,       LM,          ()),
    ("7.2",  "10.0", AUTO,       C,       LM,          ()),
    ("7.2",  "10.0", LM,         C,       LM,          ()),
    ("7.2",  "11.1", AUTO,       C,       LM,          ()),
    ("7.2",  "11.1", LM,         C,       LM,          ()),
    ("10.0", "7.2",  AUTO,       C,       LM,          ()),
    ("10.0", "7.2",  LM,         C,       LM,          ()),
    ("10.0", "10.0", AUTO,       C,       CPR,         ()),
    ("10.0", "10.0", CPR,        C,       CPR,         ()),
    ("10.0", "10.0", LM,         C,       LM,          ()),
    ("10.0", "11.1", AUTO,       C,       CPR,         ()),
    ("10.0", "11.1", CPR,        C,       CPR,         ()),
    ("10.0", "11.1", LM,         C,       LM,          ()),
    ("10.0", "11.1", EXEC,       R,       None,        ("cpr-exec", "10.2")),
    ("11.1", "7.2",  AUTO,       C,       LM,          ()),
    ("11.1", "7.2",  LM,         C,       LM,          ()),
    ("11.1", "10.0", CPR,        R,       None,        ("11.1", "10.0", "older")),
    ("11.1", "10.0", AUTO,       C,       LM,          ()),
    ("11.1", "10.0", LM,         C,       LM,          ()),
    ("11.1", "11.1", AUTO,       C,       CPR,         ()),
    ("11.1", "11.1", CPR,        C,       CPR,         ()),
    ("11.1", "11.1", LM,         C,       LM,          ()),
    ("11.1", "11.1", EXEC,       C,       EXEC,        ()),
]

VERSIONS = ("7.2", "10.0", "11.1")
QEMU = {"7.2": T.QEMU72, "10.0": T.QEMU10, "11.1": T.QEMU111}
AREA = "matrix"   # the ctest name, as tests/ci-skips.txt would name it
# CPRD_MATRIX_CASES (a regular expression) runs only the cases whose label
# ("11.1->10.0 cpr-transfer") it matches, for a quicker look at a few.
ONLY = os.environ.get("CPRD_MATRIX_CASES") or ""
# Records the guest must report after a refusal, on its old QEMU.
RECORDS_AFTER_REFUSAL = 4


def label_of(row):
    return "%s->%s %s" % row[:3]


def selected():
    """The rows of EXPECTED to run (all of them unless CPRD_MATRIX_CASES)."""
    return [row for row in EXPECTED if not ONLY or re.search(ONLY, label_of(row))]


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_for(src, dst):
    """A machine type both QEMUs have (only 11.1 has pc-i440fx-11.1, 7.2
    lacks pc-i440fx-10.0)."""
    return "pc-i440fx-7.2" if "7.2" in (src, dst) else "pc-i440fx-10.0"


def results_path():
    p = os.environ.get("CPRD_MATRIX_RESULTS")
    if p:
        return os.path.abspath(p)
    return os.path.join(tempfile.mkdtemp(prefix="cprd-matrix-"), "results.json")


@functools.lru_cache(maxsize=None)
def qemu_version_line(binary):
    """`QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0].strip() if out else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def kernel_version(vmlinuz):
    """The version string of a bzImage (its setup header's kernel_version)."""
    try:
        with open(vmlinuz, "rb") as f:
            d = f.read(65536)
        off = struct.unpack_from("<H", d, 0x20E)[0] + 0x200
        return d[off:d.index(b"\0", off)].decode("ascii", "replace")
    except (OSError, ValueError, struct.error):
        return ""


class Matrix(L.LinuxGuestCase):

    results_file = None
    cases = []   # what each case did, in run order (written to the results file)

    def write_results(self, t0):
        doc = {
            "started": self.started,
            "generated": utc_now(),
            "host": {"cpus": os.cpu_count(), "accel": "tcg", "kernel": platform.release(),
                     "machine": platform.machine(),
                     # 1-minute load averages: other work on the host skews the times
                     "loadAtStart": self.load_at_start, "loadAtEnd": round(os.getloadavg()[0], 2)},
            "qemu": {v: {"binary": QEMU[v], "version": qemu_version_line(QEMU[v])} for v in VERSIONS},
            "guest": {"image": L.LINUX_IMAGE, "memoryMiB": L.MEMORY_MIB, "cpus": 1,
                      "kernel": kernel_version(os.path.join(os.path.dirname(L.LINUX_IMAGE),
                                                            "cprd-linux.vmlinuz"))},
            "casesFilter": ONLY or None,   # CPRD_MATRIX_CASES: not the whole matrix
            "totalSeconds": round(time.monotonic() - t0, 1),
            "cases": self.cases,
        }
        tmp = self.results_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.results_file)

    # -- the guest ---------------------------------------------------------------

    def fresh_guest(self, src, machine, n, allow_exec=False):
        """A guest on src; created with --allow-exec (spawn=allow in its
        sandbox) only for the cpr-exec cases."""
        name = "m%02d" % n
        boot_id, data, booted = self.boot(name, QEMU[src], machine=machine,
                                          extra=("--allow-exec",) if allow_exec else ())
        vm = self.status(name)
        self.assertEqual(vm["machine"], machine, vm)
        self.assertTrue(vm["qemuVersion"].startswith(src + "."), vm)
        return {"name": name, "src": src, "machine": machine, "boot_id": boot_id, "data": data,
                "exec": allow_exec}

    def drop_guest(self, g):
        """After a case that failed: the guest goes, whatever its state."""
        try:
            self.ctl("stop", g["name"], "--force", timeout=60)
            self.wait_state(g["name"], "stopped")
        except AssertionError as e:
            T.log("    %s: could not stop it: %s" % (g["name"], e))

    def assert_guest_alive(self, name, boot_id, at, more):
        """One boot line, nothing unexpected said, and `more` new records
        after record `at`."""
        wait_until(lambda: self.last_reported(name) >= at + more, 30 * T.SLOWDOWN, interval=0.1,
                   what="%d more records from %s after record %d" % (more, name, at))
        boots, _, other = self.report(name)
        self.assertEqual(boots, [boot_id], "the guest booted again")
        self.assertEqual(other, [], "the guest said something unexpected")

    # -- one case ----------------------------------------------------------------

    def run_case(self, g, src, dst, asked, outcome, chosen, words, rec):
        """Upgrades guest g from src to dst asking for mode `asked`; fills
        rec with what happened and asserts it is what EXPECTED says.
        Returns True when the guest still runs on src (a refusal)."""
        name = g["name"]
        b = self.status(name)
        self.wait_children(self.running_pids())
        memfd = self.cprd.memfd_inode(name)
        at = self.last_reported(name)
        r = self.ctl("upgrade", name, "--qemu", QEMU[dst], "--mode", asked, "--json", timeout=180)
        res = r.json
        phases = [d["phase"] for d in r.json_lines[:-1] if isinstance(d, dict) and "phase" in d]
        rec.update({
            "outcome": res.get("outcome"), "mode": res.get("mode"), "pauseMs": res.get("pauseMs"),
            "totalMs": res.get("totalMs"), "reason": res.get("reason"),
            "failedPhase": res.get("failedPhase"), "fromVersion": res.get("fromVersion") or b["qemuVersion"],
            "toVersion": res.get("toVersion"), "attempts": res.get("attempts"), "rc": r.rc,
            "phases": phases,
        })
        T.log("    %s %s -> %s asked %s: %s%s, pause %s ms, total %s ms%s" % (
            name, src, dst, asked, res.get("outcome"), " (%s)" % res["mode"] if res.get("mode") else "",
            res.get("pauseMs"), res.get("totalMs"),
            "; reason: %s" % res["reason"] if res.get("reason") and res.get("outcome") != C else ""))

        # Never: a failed transfer, a rollback, or (auto) an attempt that did either.
        self.assertNotEqual(res.get("outcome"), "failed", repr(r))
        if asked == AUTO:
            self.assertNotEqual(res.get("outcome"), "rolled-back",
                                "auto rolled back (it must choose a mode that works): %r" % r)
            bad = [a for a in res.get("attempts") or [] if a.get("outcome") in ("rolled-back", "failed")]
            self.assertEqual(bad, [], "auto made an attempt that failed: %s" % res)
        self.assertEqual(res.get("outcome"), outcome, repr(r))

        if outcome == R:
            self.assertEqual(r.rc, 1, repr(r))
            self.assertIn(res.get("failedPhase"), (None, "preflight"), res)
            self.assertEqual([p for p in phases if p != "preflight"], [],
                             "phases after preflight were reported: %s" % phases)
            for w in words:
                self.assertIn(w, res.get("reason") or "", "the reason does not name %r: %s" % (w, res))
            vm = self.status(name)
            self.assertEqual(vm["state"], "running", vm)
            self.assertEqual(vm["pid"], b["pid"], "the QEMU changed")
            self.assertTrue(T.pid_alive(b["pid"]))
            self.assertEqual(vm["qemu"], b["qemu"])
            self.assertEqual(vm["qemuVersion"], b["qemuVersion"])
            self.assertEqual(vm["machine"], g["machine"])
            self.assertEqual(len(vm["upgrades"]), len(b["upgrades"]), vm["upgrades"])
            self.assertEqual(self.cprd.memfd_inode(name), memfd)
            self.wait_children(self.running_pids(), what="no QEMU left besides the VM's own")
            self.assert_guest_alive(name, g["boot_id"], at, RECORDS_AFTER_REFUSAL)
            return True

        self.assertEqual(r.rc, 0, repr(r))
        self.assertEqual(res["mode"], chosen, res)
        self.assertTrue(res["fromVersion"].startswith(src + "."), res)
        self.assertTrue(res["toVersion"].startswith(dst + "."), res)
        self.assertIsInstance(res["pauseMs"], (int, float), res)
        self.assertGreaterEqual(res["totalMs"], res["pauseMs"], res)
        if chosen == EXEC:   # the same process executed the new binary
            self.assertEqual(res["pid"], b["pid"], "cpr-exec changed the QEMU pid")
        else:
            self.assertNotEqual(res["pid"], b["pid"], "the QEMU pid did not change")
        vm = self.status(name)
        self.assertEqual(vm["state"], "running", vm)
        self.assertEqual(vm["pid"], res["pid"])
        self.assertEqual(vm["qemu"], QEMU[dst])
        self.assertEqual(vm["qemuVersion"], res["toVersion"])
        self.assertEqual(vm["machine"], g["machine"], "the machine type changed")
        self.assertEqual(len(vm["upgrades"]), len(b["upgrades"]) + 1, vm["upgrades"])
        self.assertEqual(vm["upgrades"][-1]["outcome"], C, vm["upgrades"][-1])
        self.assertEqual(vm["upgrades"][-1]["mode"], chosen, vm["upgrades"][-1])
        self.assertEqual(self.cprd.memfd_inode(name), memfd, "guest RAM moved to another memfd")
        if chosen != EXEC:
            wait_until(lambda: not T.pid_exists(b["pid"]), 20, what="the old QEMU pid %d to be gone" % b["pid"])
        self.assert_guest_alive(name, g["boot_id"], at, L.RECORDS_AFTER_UPGRADE)
        # Stops it and checks the console and every reported record on the disk.
        self.check_all(name, g["boot_id"], g["data"], 1)
        return False

    # -- the matrix ----------------------------------------------------------------

    def finish_refused(self, g):
        """A guest that a refusal left on its QEMU and no later case took:
        stop it and check its console and disk, as part of that case."""
        with self.subTest(case="%s (its guest, checked at the end)" % g["label"]):
            try:
                self.check_all(g["name"], g["boot_id"], g["data"], 0)
                self.ok("delete", g["name"])
            except BaseException as e:
                g["rec"]["passed"] = False
                g["rec"]["problem"] = ("%s: %s" % (type(e).__name__, e)).splitlines()[0][:500]
                self.drop_guest(g)
                raise

    def test_matrix(self):
        t0 = time.monotonic()
        self.started = utc_now()
        self.load_at_start = round(os.getloadavg()[0], 2)
        T.log("  results: %s" % self.results_file)
        # Refusals first among the cases of one source QEMU and machine, so
        # that the next case goes on with the refused guest.
        rows = selected()
        order = sorted(range(len(rows)), key=lambda i: (
            VERSIONS.index(rows[i][0]), machine_for(*rows[i][:2]), rows[i][3] != R, i))
        guest = None   # a guest that a refusal left running on its QEMU
        n = 0
        for i in order:
            src, dst, asked, outcome, chosen, words = rows[i]
            machine = machine_for(src, dst)
            rec = {"from": src, "to": dst, "modeAsked": asked, "machine": machine,
                   "expected": {"outcome": outcome, "mode": chosen, "reasonWords": list(words)},
                   "passed": False, "problem": None, "reusedGuest": False}
            self.cases.append(rec)
            label = label_of(rows[i])
            T.log("  case %d/%d: %s on %s" % (len(self.cases), len(rows), label, machine))
            if guest and (guest["src"], guest["machine"], guest["exec"]) != (src, machine, asked == EXEC):
                self.finish_refused(guest)
                self.write_results(t0)
                guest = None
            tc = time.monotonic()
            g = None
            still_on_src = False
            with self.subTest(case=label):
                try:
                    if guest:
                        g, guest = guest, None
                        rec["reusedGuest"] = True
                    else:
                        n += 1
                        g = self.fresh_guest(src, machine, n, allow_exec=asked == EXEC)
                    rec["vm"] = g["name"]
                    still_on_src = self.run_case(g, src, dst, asked, outcome, chosen, words, rec)
                    if not still_on_src:
                        self.ok("delete", g["name"])
                        os.unlink(g["data"])
                    rec["passed"] = True
                except BaseException as e:
                    rec["problem"] = ("%s: %s" % (type(e).__name__, e)).splitlines()[0][:500]
                    if g:   # whatever state it is in, it is not reused
                        self.drop_guest(g)
                    raise
                finally:
                    rec["seconds"] = round(time.monotonic() - tc, 1)
                    self.write_results(t0)
            if rec["passed"] and still_on_src:
                g.update(rec=rec, label=label)
                guest = g
        if guest:
            self.finish_refused(guest)
        self.write_results(t0)
        T.log("")
        T.log("  %-5s %-5s %-14s %-12s %-14s %9s %9s  %s" % ("from", "to", "asked", "outcome", "chosen",
                                                            "pause ms", "total ms", "as expected"))
        for c in self.cases:
            T.log("  %-5s %-5s %-14s %-12s %-14s %9s %9s  %s" % (
                c["from"], c["to"], c["modeAsked"], c.get("outcome"), c.get("mode") or "-",
                "%.1f" % c["pauseMs"] if isinstance(c.get("pauseMs"), (int, float)) else "-",
                "%.0f" % c["totalMs"] if isinstance(c.get("totalMs"), (int, float)) else "-",
                "yes" if c["passed"] else "NO: %s" % c["problem"]))
        T.log("  matrix took %.0f s; results in %s" % (time.monotonic() - t0, self.results_file))


def main():
    if not os.path.exists(L.LINUX_IMAGE):
        print("cannot find the Linux test guest %s; build the project first (target "
              "cprd-linux-guest) or set CPRD_LINUX_GUEST_IMAGE" % L.LINUX_IMAGE, flush=True)
        sys.exit(1)
    T.require_binaries()
    missing = [q for q in QEMU.values() if not T.qemu_usable(q)]
    if missing:
        T.ci_skips.skip_all(AREA, "QEMU %s missing or not executable; the matrix needs 7.2, 10.0 "
                            "and 11.1 (scripts/install-deps.sh)" % ", ".join(missing))
    Matrix.results_file = results_path()
    t0 = time.monotonic()
    suite = unittest.TestLoader().loadTestsFromTestCase(Matrix)
    unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    passed = sum(1 for c in Matrix.cases if c["passed"])
    failed = len(selected()) - passed
    T.log("took %.1f s" % (time.monotonic() - t0))
    T.log("results: %s" % Matrix.results_file)
    T.log("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
