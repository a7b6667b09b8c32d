#!/usr/bin/python3
"""The QEMU binaries of running guests, watched (issue 14, item 3): a binary
replaced as dpkg does it (NAME.dpkg-new written, then renamed over NAME) is
noticed with inotify, checked, probed in the background, and told as an
`outdated` event with the old and the new version; GetVM shows it outdated
with the new version, and the next upgrade takes the probe from the cache
(`probeCached`). A burst of changes is probed once. A new file that is
group-writable or owned by another user is reported (`binary-refused`) and
never probed. A symlink flipped is a change too, the watches go with the
guests, and a binary replaced while cprd was down is probed when it starts.

Real cprd, real QEMU (copies and #! wrappers in the test's folder).

Run: /usr/bin/python3 test_binwatch.py [TestClass.test_name ...]
"""

import json
import os
import re
import shutil
import signal
import threading
import time
import unittest

import cprdtest as T
from cprdtest import wait_until

HAVE_72 = T.qemu_usable(T.QEMU72)
NEED_72 = "QEMU 7.2 (%s) is missing" % T.QEMU72


class Events:
    """cprctl events --json in the background, read by a thread."""

    def __init__(self, case):
        self.case = case
        self.proc = case.cprd.ctl_bg("events", "--json")
        self.events, self.lock = [], threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        # The subscription is in place once a change shows up in it.
        n = [0]

        def synced():
            if self.seen(lambda e: e["type"] == "created" and e["vm"].startswith("sync")):
                return True
            n[0] += 1
            case.ok("create", "sync%d" % n[0], "--memory", 16, "--qemu", T.QEMU10, "--accel", "tcg")
            case.ok("delete", "sync%d" % n[0])
            time.sleep(0.1)
            return False
        wait_until(synced, 20, interval=0.1, what="cprctl events to report a created event")

    def _read(self):
        for line in self.proc.stdout:
            if line.strip():
                with self.lock:
                    self.events.append(json.loads(line))

    def seen(self, pred):
        with self.lock:
            return [e for e in self.events if pred(e)]

    def of(self, vm, type_):
        return self.seen(lambda e: e["vm"] == vm and e["type"] == type_)

    def wait(self, vm, type_, count=1, timeout=30):
        wait_until(lambda: len(self.of(vm, type_)) >= count, timeout,
                   what="%d %s event(s) for %s" % (count, type_, vm))
        return self.of(vm, type_)


WRAPPER = """#!/bin/sh
# cprd's binwatch test, version %d
exec %s "$@"
"""


class BinwatchTest(T.CprdTestCase):

    def setUp(self):
        super().setUp()
        self.bin = os.path.join(self.tmp, "bin")
        os.makedirs(self.bin)

    def wrapper(self, path, n, real=None):
        """A #! wrapper of QEMU 10.0 at path, written as dpkg does."""
        new = path + ".dpkg-new"
        with open(new, "w") as f:
            f.write(WRAPPER % (n, real or T.QEMU10))
        os.chmod(new, 0o755)
        os.rename(new, path)

    def log_lines(self, mark, pattern):
        """Lines of cprd's log after offset mark that match pattern."""
        return [l for l in self.cprd.read_log()[mark:].splitlines() if re.search(pattern, l)]

    def probes_of(self, mark, path):
        """How many times QEMU ran to probe path since mark (probe.c logs
        each run with its version; a cache hit says "cached")."""
        return len(self.log_lines(mark, r"probe %s: QEMU \d" % re.escape(path)))

    def inotify_watches(self):
        """The folders cprd's inotify fd watches, from /proc/PID/fdinfo."""
        for fd in os.listdir("/proc/%d/fd" % self.cprd.pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (self.cprd.pid, fd)) != "anon_inode:inotify":
                    continue
            except OSError:
                continue
            with open("/proc/%d/fdinfo/%s" % (self.cprd.pid, fd)) as f:
                return sum(1 for l in f if l.startswith("inotify wd:"))
        self.fail("cprd holds no inotify fd")

    @unittest.skipUnless(HAVE_72, NEED_72)
    def test_replaced_72_by_10(self):
        """7.2 replaced by 10.0 with a rename: the outdated event carries
        both versions, GetVM says outdated with the new version, and the
        upgrade that follows takes the probe from the cache."""
        qemu = os.path.join(self.bin, "qemu-system-x86_64")
        shutil.copy2(T.QEMU72, qemu)
        vm = self.create_started("w72", qemu=qemu)
        self.assertTrue(vm["qemuVersion"].startswith("7.2."), vm)
        self.assertFalse(vm["outdated"])
        self.assertNotIn("newQemuVersion", vm)
        self.assertEqual(self.inotify_watches(), 1)
        ev = Events(self)
        mark = len(self.cprd.read_log())

        shutil.copy2(T.QEMU10, qemu + ".dpkg-new")
        os.rename(qemu + ".dpkg-new", qemu)
        e = ev.wait("w72", "outdated")[0]
        self.assertEqual(e["binary"], qemu, e)
        self.assertEqual(e["fromVersion"], vm["qemuVersion"], e)
        self.assertTrue(e["toVersion"].startswith("10."), e)
        self.assertEqual(e["state"], "running", e)
        self.assertIn("QEMU " + e["toVersion"], e["message"])

        st = self.status("w72")
        self.assertTrue(st["outdated"], st)
        self.assertEqual(st["newQemuVersion"], e["toVersion"], st)
        vms = self.ok("list", "--outdated", "--json").json["vms"]
        self.assertEqual([(v["name"], v.get("newQemuVersion")) for v in vms], [("w72", e["toVersion"])])
        self.assertEqual(self.probes_of(mark, qemu), 1, self.log_lines(mark, "probe"))

        r = self.ok("upgrade", "w72", "--json")
        self.assertEqual(r.json["outcome"], "committed", r.json)
        self.assertEqual(r.json["mode"], "local-migrate", r.json)
        self.assertEqual(r.json["toVersion"], e["toVersion"], r.json)
        self.assertIs(r.json["probeCached"], True, r.json)
        self.assertLess(r.json["probeMs"], r.json["totalMs"], r.json)
        # QEMU did not run again to probe it.
        self.assertEqual(self.probes_of(mark, qemu), 1, self.log_lines(mark, "probe"))
        st = self.status("w72")
        self.assertFalse(st["outdated"], st)
        self.assertNotIn("newQemuVersion", st)
        self.assertEqual(self.ok("list", "--outdated", "--json").json["vms"], [])
        self.wait_guest_ticks("w72", self.wait_guest_ticks("w72", 1)[1] + 1)
        # One outdated event; nothing told of the file again.
        time.sleep(1)
        self.assertEqual(len(ev.of("w72", "outdated")), 1, ev.of("w72", "outdated"))

    def test_upgrade_without_watch_probes(self):
        """The other side of probeCached: an upgrade to a file nobody
        probed yet runs QEMU in preflight (probeCached false)."""
        qemu = os.path.join(self.bin, "qemu-a")
        self.wrapper(qemu, 1)
        self.create_started("cold", qemu=qemu)
        other = os.path.join(self.bin, "qemu-b")
        self.wrapper(other, 2)
        mark = len(self.cprd.read_log())
        r = self.ok("upgrade", "cold", "--qemu", other, "--json")
        self.assertEqual(r.json["outcome"], "committed", r.json)
        self.assertIs(r.json["probeCached"], False, r.json)
        self.assertEqual(self.probes_of(mark, other), 1)

    def test_burst_probed_once(self):
        """Several renames, a write in place and a chmod within the quiet
        time: one probe, one outdated event."""
        qemu = os.path.join(self.bin, "qemu")
        self.wrapper(qemu, 0)
        vm = self.create_started("burst", qemu=qemu)
        ev = Events(self)
        mark = len(self.cprd.read_log())
        for n in range(1, 7):
            self.wrapper(qemu, n)
            time.sleep(0.03)
        with open(qemu, "a") as f:  # written in place (IN_CLOSE_WRITE)
            f.write("# more\n")
        os.chmod(qemu, 0o755)  # IN_ATTRIB
        ev.wait("burst", "outdated")
        time.sleep(1.5)  # three quiet times: anything more would show
        self.assertEqual(len(ev.of("burst", "outdated")), 1, ev.of("burst", "outdated"))
        self.assertEqual(self.probes_of(mark, qemu), 1, self.log_lines(mark, "probe"))
        changed = self.log_lines(mark, "QEMU binary %s changed" % re.escape(qemu))
        self.assertEqual(len(changed), 1, changed)
        m = re.search(r"\((\d+) events\)", changed[0])
        self.assertGreaterEqual(int(m.group(1)), 7, changed[0])
        e = ev.of("burst", "outdated")[0]
        self.assertEqual((e["fromVersion"], e["toVersion"]), (vm["qemuVersion"], vm["qemuVersion"]), e)
        r = self.ok("upgrade", "burst", "--json")
        self.assertIs(r.json["probeCached"], True, r.json)
        self.assertEqual(self.probes_of(mark, qemu), 1)

    def test_refused_never_probed(self):
        """A new file that group or others may write, or that another user
        owns, is reported and not probed; made right again, it is."""
        qemu = os.path.join(self.bin, "qemu")
        self.wrapper(qemu, 0)
        self.create_started("ref", qemu=qemu)
        ev = Events(self)
        mark = len(self.cprd.read_log())

        # Group-writable, renamed into place.
        new = qemu + ".dpkg-new"
        with open(new, "w") as f:
            f.write(WRAPPER % (1, T.QEMU10))
        os.chmod(new, 0o775)
        os.rename(new, qemu)
        e = ev.wait("ref", "binary-refused")[0]
        self.assertEqual(e["binary"], qemu, e)
        self.assertIn("writable by nobody else", e["reason"])
        self.assertIn(e["reason"], e["message"])
        st = self.status("ref")
        self.assertTrue(st["outdated"], st)
        self.assertNotIn("newQemuVersion", st)
        self.assertEqual(self.log_lines(mark, "probing the new file"), [])
        self.assertEqual(self.probes_of(mark, qemu), 0)
        self.assertEqual(len(self.log_lines(mark, r"cprd will not run the new file: .*not probed")), 1)
        # An upgrade to it is refused as before, the guest untouched.
        r = self.ctl("upgrade", "ref", "--json")
        self.assertNotEqual(r.rc, 0, repr(r))
        self.assertIn("writable by nobody else", r.stdout + r.stderr)
        self.assertEqual(self.status("ref")["pid"], st["pid"])

        # Made right (chmod: IN_ATTRIB): probed now, and told.
        os.chmod(qemu, 0o755)
        e = ev.wait("ref", "outdated")[0]
        self.assertEqual(self.probes_of(mark, qemu), 1)
        self.assertEqual(self.status("ref")["newQemuVersion"], e["toVersion"])

        # Given to another user: refused again, and the same file is not
        # probed again either.
        os.chown(qemu, 65534, -1)
        e = ev.wait("ref", "binary-refused", count=2)[-1]
        self.assertIn("owned by root", e["reason"])
        os.chown(qemu, 0, -1)
        ev.wait("ref", "outdated", count=2)
        self.assertEqual(self.probes_of(mark, qemu), 1, self.log_lines(mark, "probe"))

    def test_symlink_and_watches(self):
        """The binary is a symlink: flipping it is a change; the folders of
        the link and of its target are watched while a guest runs from it,
        and let go when none does."""
        lib = os.path.join(self.tmp, "lib")
        os.makedirs(lib)
        a, b = os.path.join(lib, "qemu-a"), os.path.join(lib, "qemu-b")
        self.wrapper(a, 1)
        self.wrapper(b, 2)
        qemu = os.path.join(self.bin, "qemu")
        os.symlink(a, qemu)
        self.create_started("sym", qemu=qemu)
        self.assertEqual(self.inotify_watches(), 2)
        ev = Events(self)
        mark = len(self.cprd.read_log())
        os.symlink(b, qemu + ".new")
        os.rename(qemu + ".new", qemu)
        ev.wait("sym", "outdated")
        self.assertEqual(self.probes_of(mark, qemu), 1)
        r = self.ok("upgrade", "sym", "--json")
        self.assertIs(r.json["probeCached"], True, r.json)
        # The target replaced in its own folder.
        self.wrapper(b, 3)
        ev.wait("sym", "outdated", count=2)
        self.ok("stop", "sym", "--force")
        wait_until(lambda: self.inotify_watches() == 0, 10, what="the watches to go with the guest")

    def test_replaced_while_cprd_down(self):
        """Replaced while cprd was not running: probed when it starts, so
        the first upgrade still needs no probe."""
        qemu = os.path.join(self.bin, "qemu")
        self.wrapper(qemu, 0)
        self.create_started("down", qemu=qemu)
        pid = self.status("down")["pid"]
        self.cprd.proc.send_signal(signal.SIGTERM)
        self.cprd.proc.wait(30)
        self.wrapper(qemu, 1)
        mark = len(self.cprd.read_log())
        self.cprd.start()
        wait_until(lambda: self.status("down")["state"] == "running", 30, what="down running again")
        self.assertEqual(self.status("down")["pid"], pid)
        wait_until(lambda: "newQemuVersion" in self.status("down"), 20,
                   what="the replaced binary probed after the start")
        r = self.ok("upgrade", "down", "--json")
        self.assertEqual(r.json["outcome"], "committed", r.json)
        self.assertIs(r.json["probeCached"], True, r.json)
        self.assertEqual(self.probes_of(mark, qemu), 1)


if __name__ == "__main__":
    T.main()
