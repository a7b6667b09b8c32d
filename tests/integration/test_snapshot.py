#!/usr/bin/python3
"""Live snapshots and their restore (issue 15), with real QEMU 10.0.

BootSector: the boot-sector guest is snapshot while it runs, then restored
in a second cprd with a state folder of its own (a stand-in for a host
reboot): its tick counter goes on from the value it had at the snapshot,
it never booted again, and the restored VM upgrades like any other. The
refusals: a corrupt, a truncated and a wrong-machine-type file, a state
whose checksum matches but which QEMU cannot load, and an existing VM of
another machine type; each leaves no VM, no QEMU and no folder behind.
SnapshotVM's refusals (a writable raw disk, a file that exists, a folder
others may write, a VM that does not run), and a snapshot whose caller
goes away (Ctrl-C): the file is removed and the guest runs on.

Releases: QEMU 7.2 (fd: by getfd) snapshots and restores, and 10.0 loads
its file; 11.1 loads a 10.0 file, and 10.0 refuses an 11.1 file. Skipped
(and failed in CI) without QEMU 7.2 or 11.1.

LinuxGuest: the Linux guest writes its records to a qcow2 data disk during
the snapshot; cprd takes the disk's overlay at the snapshot's instant. The
first cprd and its QEMU are then killed (the host goes down), and a fresh
cprd restores the guest: it booted once, its first record after the
restore follows the last one on the disk as it was at the snapshot (RAM
and disk agree), and every record from then on is on the disk: on the
fresh overlay the restore made, while the recorded disk stays as it was.
One snapshot restored twice: the second restore finds the disk as it was
at the snapshot, not as the first restored guest left it; a failed restore
leaves no overlay, and a disk qemu-img refuses fails it before any QEMU.

OwnUid (cprd --qemu-users): the backing files cprd put under a VM's disks
are the VM's uid's to read while it runs. A root VM's snapshot restored
under --qemu-users runs as its uid on the restore's overlay over the
recorded disk (root's 0600, read through an ACL entry that goes at stop),
and its records go on; a VM with its own uid is snapshot twice (with
vm.unprivileged_userfaultfd=1 for the snapshots only), stopped, and
started again on its chain of three files.

Run: /usr/bin/python3 test_snapshot.py [BootSector.test_name ...]
"""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import unittest

import cprdtest as T
from cprdtest import wait_until
import test_isolation as I
import test_linux_guest as L

TICKS_PER_SEC = 18.2
HAVE_72 = T.qemu_usable(T.QEMU72)
HAVE_111 = T.qemu_usable(T.QEMU111)
QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"


def fnv1a64(data):
    """The checksum a snapshot's record gives (daemon/snapshot-file.c)."""
    h = 0xcbf29ce484222325
    mask = (1 << 64) - 1
    pad = data + bytes(-len(data) % 8)
    for (w,) in __import__("struct").iter_unpack("<Q", pad):
        h = ((h ^ w) * 0x100000001b3) & mask
    h = ((h ^ len(data)) * 0x100000001b3) & mask
    return "fnv1a64:%016x" % h


def file_state(path):
    """A file's sha256 and mtime (ns): what must not change."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns


def fill_guest_ram(cprd, name, offset, length):
    """Writes random bytes into the VM's RAM memfd (through the fd cprd
    holds), where the boot-sector guest never looks."""
    fd = cprd.memfd(name)
    f = os.open("/proc/%d/fd/%d" % (cprd.pid, fd), os.O_RDWR | os.O_CLOEXEC)
    try:
        block = os.urandom(1 << 20)
        for off in range(offset, offset + length, 1 << 20):
            os.pwrite(f, block, off)
    finally:
        os.close(f)


class SnapshotCase(T.CprdTestCase):

    def snap_dir(self):
        d = os.path.join(self.tmp, "snapshots")
        os.makedirs(d, mode=0o700, exist_ok=True)
        return d

    def second_cprd(self):
        """A fresh cprd with folders of its own: the host after a reboot."""
        root = os.path.join(self.tmp, "after-reboot")
        os.makedirs(root, exist_ok=True)
        c = T.Cprd(root)
        c.start()
        self.addCleanup(c.stop)
        # The socket's file comes at bind, a moment before listen.
        wait_until(lambda: c.ctl("list").rc == 0, 10, what="the second cprd to answer")
        return c

    def snapshot(self, name, path, cprd=None):
        r = (cprd or self.cprd).ctl("snapshot", name, "--to", path, "--json", timeout=300)
        self.assertEqual(r.rc, 0, repr(r))
        lines = r.json_lines
        res = lines[-1]
        self.assertEqual(res["vm"], name, res)
        fractions = [l["fraction"] for l in lines[:-1] if l.get("phase") == "write" and "fraction" in l]
        self.assertTrue(fractions, "no write progress streamed: %r" % lines)
        self.assertEqual(fractions, sorted(fractions), "the progress went backwards")
        return res

    def assert_file_private(self, path):
        st = os.stat(path)
        self.assertEqual(st.st_uid, 0)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, "%s is not 0600" % path)

    def assert_nothing_left(self, cprd, name, before_children):
        names = [v["name"] for v in cprd.ctl("list", "--json").json["vms"]]
        self.assertNotIn(name, names, "the refused restore left VM %s" % name)
        wait_until(lambda: set(T.children_of(cprd.pid)) <= before_children, 10,
                   what="no QEMU left by the refused restore")
        self.assertFalse(os.path.exists(os.path.join(cprd.state_dir, "vms", name)),
                         "the refused restore left its state folder")
        self.assertFalse(os.path.exists(os.path.join(cprd.runtime_dir, "vms", name, "qemu.json")),
                         "the refused restore left a qemu.json")

    def read_qcow2(self, path):
        raw = os.path.join(self.tmp, "read.raw")
        subprocess.run([QEMU_IMG, "convert", "-U", "-f", "qcow2", "-O", "raw", path, raw], check=True)
        with open(raw, "rb") as f:
            data = f.read()
        os.unlink(raw)
        return data

    def copy_snapshot(self, src, dst):
        shutil.copyfile(src, dst)
        shutil.copyfile(src + ".json", dst + ".json")
        os.chmod(dst, 0o600)
        os.chmod(dst + ".json", 0o600)


class BootSector(SnapshotCase):

    def test_snapshot_restore_continues(self):
        vm = self.create_started("g", ticks=18)
        path = os.path.join(self.snap_dir(), "g.state")
        before = self.guest("g")[1]
        res = self.snapshot("g", path)
        after = self.guest("g")[1]
        T.log("    snapshot: %d bytes, pause %s ms, %.1f MB/s, total %.0f ms" %
              (res["bytes"], res.get("pauseMs"), res["mbPerSec"], res["totalMs"]))
        self.assertIn("pauseMs", res, "the guest's pause at the start was not reported")
        self.assertLess(res["pauseMs"], 2000 * T.SLOWDOWN)
        self.assertEqual(res["qemuVersion"].split(".")[:2], ["10", "0"])
        self.assert_file_private(path)
        self.assert_file_private(path + ".json")
        with open(path + ".json") as f:
            rec = json.load(f)
        self.assertEqual(rec["stateBytes"], os.path.getsize(path))
        self.assertEqual(rec["stateBytes"], res["bytes"])
        self.assertEqual(rec["machine"], vm["machine"])
        self.assertEqual(rec["spec"]["name"], "g")
        with open(path, "rb") as f:
            self.assertEqual(fnv1a64(f.read()), rec["stateHash"])
        # The guest kept running on the same QEMU, and runs on.
        now = self.status("g")
        self.assertEqual((now["state"], now["pid"]), ("running", vm["pid"]))
        gone_at = self.wait_guest_ticks("g", after + 36)[1]
        self.ok("stop", "g", "--force")

        c2 = self.second_cprd()
        r = c2.ctl("restore", "g", "--from", path, "--json", timeout=300)
        self.assertEqual(r.rc, 0, repr(r))
        got = r.json
        self.assertTrue(got["created"], got)
        self.assertIsInstance(got.get("pid"), int)
        t0 = wait_until(lambda: (c2.read_guest("g") or (None, None))[1], 10, what="g's RAM in the new cprd")
        T.log("    restore: %d bytes, load %.0f ms, total %.0f ms; ticks %d at the snapshot "
              "(between %d and %d), %d after the restore, %d when the first QEMU stopped" %
              (got["bytes"], got["loadMs"], got["totalMs"], t0, before, after, t0, gone_at))
        # From the snapshot's value, not from zero and not from where the
        # first QEMU stopped.
        self.assertGreaterEqual(t0, before)
        self.assertLess(t0, after + 3 * TICKS_PER_SEC * T.SLOWDOWN)
        self.assertLess(t0, gone_at)
        wait_until(lambda: c2.read_guest("g")[1] >= t0 + 18, 20, what="the restored guest's ticks to go on")
        console = wait_until(lambda: c2.ctl("log", "g").stdout or None, 10, what="console output")
        self.assertNotIn("booted", console, "the restored guest booted again")
        st = c2.ctl("status", "g", "--json").json
        self.assertEqual(st["state"], "running")
        self.assertEqual(st["machine"], vm["machine"])
        # Custody as for any VM: the restored guest upgrades.
        up = c2.ctl("upgrade", "g", "--mode", "cpr-transfer", "--json", timeout=180)
        self.assertEqual(up.rc, 0, repr(up))
        self.assertEqual(up.json["outcome"], "committed", up.json)

    def test_restore_refusals_leave_nothing(self):
        self.create_started("g", ticks=5)
        d = self.snap_dir()
        path = os.path.join(d, "g.state")
        self.snapshot("g", path)
        self.ok("stop", "g", "--force")
        c2 = self.second_cprd()
        size = os.path.getsize(path)
        with open(path + ".json") as f:
            rec = json.load(f)

        corrupt = os.path.join(d, "corrupt.state")
        self.copy_snapshot(path, corrupt)
        with open(corrupt, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x55]))

        truncated = os.path.join(d, "truncated.state")
        self.copy_snapshot(path, truncated)
        os.truncate(truncated, size - 4096)

        machine = os.path.join(d, "machine.state")
        self.copy_snapshot(path, machine)
        with open(machine + ".json", "w") as f:
            json.dump(dict(rec, machine="pc-i440fx-99.0",
                           spec=dict(rec["spec"], machine="pc-i440fx-99.0")), f)

        # A state whose record vouches for it but that QEMU cannot load: the
        # QEMU is started, refuses, and the VM made for it goes again.
        unloadable = os.path.join(d, "unloadable.state")
        self.copy_snapshot(path, unloadable)
        with open(unloadable, "r+b") as f:
            data = bytearray(f.read())
            data[0:4] = b"XXXX"   # QEMU's stream magic
            f.seek(0)
            f.write(data)
        with open(unloadable + ".json", "w") as f:
            json.dump(dict(rec, stateHash=fnv1a64(bytes(data))), f)

        children = set(T.children_of(c2.pid))
        for name, file, words in (("c1", corrupt, "corrupt"), ("c2", truncated, "truncated"),
                                  ("c3", machine, "machine type pc-i440fx-99.0"),
                                  ("c4", unloadable, "could not load")):
            r = c2.ctl("restore", name, "--from", file, timeout=120)
            T.log("    %s: rc %d: %s" % (os.path.basename(file), r.rc, r.stderr.strip()))
            self.assertNotEqual(r.rc, 0, repr(r))
            self.assertIn(words, r.stderr, repr(r))
            self.assert_nothing_left(c2, name, children)

        # An existing VM of another machine type is not replaced.
        c2.ctl("create", "other", "--memory", 64, "--qemu", T.QEMU10, "--machine", "pc-i440fx-9.2",
               "--accel", "tcg", "--disk", T.GUEST_IMAGE + ",readonly")
        r = c2.ctl("restore", "other", "--from", path)
        self.assertNotEqual(r.rc, 0, repr(r))
        self.assertIn("was made for machine type", r.stderr, repr(r))
        st = c2.ctl("status", "other", "--json").json
        self.assertEqual((st["state"], st["machine"]), ("defined", "pc-i440fx-9.2"))
        # And the good file still restores after all that.
        r = c2.ctl("restore", "g", "--from", path, "--json", timeout=300)
        self.assertEqual(r.rc, 0, repr(r))
        # A running VM of that name is never replaced.
        r = c2.ctl("restore", "g", "--from", path)
        self.assertNotEqual(r.rc, 0, repr(r))
        self.assertIn("running", r.stderr, repr(r))

    def test_snapshot_refusals(self):
        d = self.snap_dir()
        self.create("idle")
        r = self.ctl("snapshot", "idle", "--to", os.path.join(d, "idle.state"))
        self.assertNotEqual(r.rc, 0)
        self.assertIn("only a running or paused VM", r.stderr, repr(r))

        raw = os.path.join(self.tmp, "writable.img")
        shutil.copyfile(T.GUEST_IMAGE, raw)
        self.ok("create", "rw", "--memory", 64, "--qemu", T.QEMU10, "--machine", "pc", "--accel", "tcg",
                "--disk", raw)
        self.start_vm("rw")
        r = self.ctl("snapshot", "rw", "--to", os.path.join(d, "rw.state"))
        self.assertNotEqual(r.rc, 0)
        self.assertIn("writable raw disk", r.stderr, repr(r))

        self.create_started("g", ticks=2)
        exists = os.path.join(d, "exists.state")
        open(exists, "w").close()
        r = self.ctl("snapshot", "g", "--to", exists)
        self.assertIn("exists already", r.stderr, repr(r))
        self.assertEqual(os.path.getsize(exists), 0, "an existing file was written to")

        loose = os.path.join(self.tmp, "loose")
        os.mkdir(loose)
        os.chmod(loose, 0o777)
        r = self.ctl("snapshot", "g", "--to", os.path.join(loose, "g.state"))
        self.assertIn("writable by group or others", r.stderr, repr(r))
        self.assertEqual(os.listdir(loose), [])

        r = self.ctl("snapshot", "g", "--to", "relative.state")
        self.assertEqual(r.rc, 2, repr(r))
        # None of it touched the guest.
        self.assertEqual(self.status("g")["state"], "running")
        self.snapshot("g", os.path.join(d, "g.state"))

    def test_caller_gone_cancels(self):
        # 256 MiB of guest RAM that is not zero, so the snapshot lasts long
        # enough (seconds) to be interrupted while QEMU writes.
        self.ok("create", "big", "--memory", 1024, "--qemu", T.QEMU10, "--machine", "pc", "--accel", "tcg",
                "--disk", T.GUEST_IMAGE + ",readonly")
        self.start_vm("big")
        self.wait_guest_ticks("big", 2)
        fill_guest_ram(self.cprd, "big", 64 << 20, 256 << 20)
        d = self.snap_dir()
        path = os.path.join(d, "big.state")
        # SIGINT as a terminal's Ctrl-C sends it; the default action even
        # when the test runs where SIGINT is ignored (a background job).
        p = subprocess.Popen([T.CPRCTL, "snapshot", "big", "--to", path, "--json"], env=self.cprd.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.cprd.spawned.append(p)
        wait_until(lambda: "handing QEMU the file %s" % path in self.cprd.read_log(), 30,
                   what="the snapshot to start")
        time.sleep(0.5)   # QEMU writes by now (about 3 s in all)
        self.assertIsNone(p.poll(), "cprctl ended before it was interrupted")
        p.send_signal(signal.SIGINT)   # Ctrl-C
        p.wait(timeout=10)
        self.assertEqual(p.returncode, -signal.SIGINT)
        wait_until(lambda: "snapshot to %s cancelled" % path in self.cprd.read_log(), 30,
                   what="cprd to cancel the snapshot")
        self.assertEqual(os.listdir(d), [], "the cancelled snapshot left a file")
        self.assertEqual(self.status("big")["state"], "running")
        t = self.guest("big")[1]
        self.wait_guest_ticks("big", t + 18)
        # QEMU was left as it was: the next snapshot works.
        res = self.snapshot("big", path)
        T.log("    1 GiB guest, 256 MiB of it written: %d bytes at %.1f MB/s, pause %s ms" %
              (res["bytes"], res["mbPerSec"], res.get("pauseMs")))
    def test_cprd_killed_during_snapshot(self):
        """A cprd killed while QEMU writes: the next cprd cancels that
        snapshot and clears QEMU's background-snapshot capability, no file
        appears, and the guest upgrades with cpr-transfer as before."""
        self.ok("create", "big", "--memory", 1024, "--qemu", T.QEMU10, "--machine", "pc", "--accel", "tcg",
                "--disk", T.GUEST_IMAGE + ",readonly")
        vm = self.start_vm("big")
        self.wait_guest_ticks("big", 2)
        fill_guest_ram(self.cprd, "big", 64 << 20, 256 << 20)
        d = self.snap_dir()
        path = os.path.join(d, "big.state")
        p = self.cprd.ctl_bg("snapshot", "big", "--to", path)
        wait_until(lambda: "handing QEMU the file %s" % path in self.cprd.read_log(), 30,
                   what="the snapshot to start")
        time.sleep(0.3)
        self.cprd.proc.kill()
        self.cprd.proc.wait()
        p.wait(timeout=10)
        self.cprd.start()
        wait_until(lambda: "cleared the background-snapshot capability" in self.cprd.read_log(), 30,
                   what="the new cprd to clear the capability")
        self.assertEqual(os.listdir(d), [])
        self.assertEqual(self.status("big")["pid"], vm["pid"])
        up = self.ok("upgrade", "big", "--json", timeout=180).json
        self.assertEqual((up["outcome"], up["mode"]), ("committed", "cpr-transfer"), up)
        self.assertEqual(len(up.get("attempts", [])), 1, up)


class Releases(SnapshotCase):
    """QEMU 7.2 (which gets the file by getfd and fd:, having no fd sets for
    file:) and 11.1; a file restored by a newer QEMU that has its machine
    type, and refused by an older one."""

    def restore_ticks_on(self, name, path, qemu=None):
        args = ["restore", name, "--from", path, "--json"] + (["--qemu", qemu] if qemu else [])
        r = self.ctl(*args, timeout=300)
        self.assertEqual(r.rc, 0, repr(r))
        t = self.guest(name)[1]
        self.wait_guest_ticks(name, t + 9)
        return r.json

    @unittest.skipUnless(HAVE_72, "QEMU 7.2 (%s) is missing" % T.QEMU72)
    def test_72_fd_uri(self):
        vm = self.create_started("old", qemu=T.QEMU72, ticks=5)
        self.assertEqual(vm["machine"], "pc-i440fx-7.2")
        path = os.path.join(self.snap_dir(), "old.state")
        res = self.snapshot("old", path)
        self.assertTrue(res["qemuVersion"].startswith("7.2."), res)
        got = self.restore_ticks_on("old-back", path)
        self.assertTrue(got["qemuVersion"].startswith("7.2."), got)
        # A newer QEMU that has pc-i440fx-7.2 loads it too.
        got = self.restore_ticks_on("old-on-10", path, qemu=T.QEMU10)
        self.assertTrue(got["qemuVersion"].startswith("10.0"), got)

    @unittest.skipUnless(HAVE_111, "QEMU 11.1 (%s) is missing" % T.QEMU111)
    def test_111_and_back(self):
        self.create_started("g", ticks=5)
        path = os.path.join(self.snap_dir(), "g.state")
        self.snapshot("g", path)
        got = self.restore_ticks_on("g-on-111", path, qemu=T.QEMU111)
        self.assertTrue(got["qemuVersion"].startswith("11.1"), got)
        # A file written by 11.1 is refused by the older 10.0, before any QEMU.
        path2 = os.path.join(self.snap_dir(), "g111.state")
        self.snapshot("g-on-111", path2)
        r = self.ctl("restore", "g-back", "--from", path2, "--qemu", T.QEMU10)
        self.assertNotEqual(r.rc, 0, repr(r))
        self.assertIn("is older and cannot read it", r.stderr, repr(r))
        self.assertNotIn("g-back", [v["name"] for v in self.ok("list", "--json").json["vms"]])


class LinuxGuest(SnapshotCase, L.LinuxGuestCase):

    def start_with_data_disk(self, name):
        """Creates and starts the Linux guest with a fresh qcow2 data disk;
        returns the disk's path."""
        data = os.path.join(self.tmp, "%s-data.qcow2" % name)
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", data, str(L.DATA_DISK_BYTES)], check=True)
        self.ok("create", name, "--memory", L.MEMORY_MIB, "--qemu", T.QEMU10, "--machine", "pc",
                "--accel", "tcg", "--disk", L.LINUX_IMAGE + ",readonly", "--disk", data + ",format=qcow2")
        self.start_vm(name)
        return data

    def test_snapshot_while_writing_restore_after_reboot(self):
        name = "lin"
        data = self.start_with_data_disk(name)
        boots = wait_until(lambda: self.report(name)[0], L.BOOT_TIMEOUT, interval=0.2, what="the boot line")
        boot_id = boots[0]
        wait_until(lambda: self.last_reported(name) >= 8, 30 * T.SLOWDOWN, interval=0.1, what="records")

        path = os.path.join(self.snap_dir(), "lin.state")
        at = self.last_reported(name)
        res = self.snapshot(name, path)
        self.assertEqual(len(res.get("overlays", [])), 1, res)
        overlay = res["overlays"][0]
        spec = self.status(name)["spec"]
        self.assertEqual(spec["disks"][1]["path"], overlay, "the VM does not write to the overlay")
        # The guest writes on, into the overlay.
        wait_until(lambda: self.last_reported(name) >= at + 8, 30 * T.SLOWDOWN, interval=0.1,
                   what="records after the snapshot")
        T.log("    snapshot while writing: record %d reported before, pause %s ms, %d bytes at %.1f MB/s" %
              (at, res.get("pauseMs"), res["bytes"], res["mbPerSec"]))

        # The host goes down: cprd and its QEMU die with no warning.
        pid = self.status(name)["pid"]
        self.cprd.proc.kill()
        self.cprd.proc.wait()
        T.kill_pid(pid)
        wait_until(lambda: not T.pid_alive(pid), 10, what="the QEMU to die")
        self.cprd.proc = None
        first_run = L.console_report(self.cprd.console(name))[1]

        # The disk as it was at the snapshot (the overlay's backing file).
        frozen = self.read_qcow2(data)
        last_frozen = self.last_record(frozen, boot_id)
        self.assertGreaterEqual(last_frozen, at, "records reported before the snapshot are missing")

        frozen_sum = file_state(data)
        c2 = self.second_cprd()
        r = c2.ctl("restore", name, "--from", path, "--json", timeout=300)
        self.assertEqual(r.rc, 0, repr(r))
        # The restored guest writes to a fresh overlay over the disk as it
        # was, which stays as it was.
        self.assertEqual(len(r.json.get("overlays", [])), 1, r.json)
        mine = r.json["overlays"][0]
        self.assert_restore_overlay(mine, data)
        self.assertEqual(c2.ctl("status", name, "--json").json["spec"]["disks"][1]["path"], mine)
        text = lambda: c2.console(name)
        wait_until(lambda: L.console_report(text())[1], 60 * T.SLOWDOWN, interval=0.2,
                   what="records from the restored guest")
        wait_until(lambda: len(L.console_report(text())[1]) >= 8, 60 * T.SLOWDOWN, interval=0.2,
                   what="8 records from the restored guest")
        boots2, recs2, other2 = L.console_report(text())
        self.assertEqual(boots2, [], "the restored guest booted again")
        self.assertEqual(other2, [])
        first = recs2[0][0]
        T.log("    restored: last record on the disk at the snapshot %d, first record of the "
              "restored run %d; the first run had reported up to %d" %
              (last_frozen, first, first_run[-1][0]))
        # RAM and disk of one instant: the guest's sequence goes on from the
        # last record the disk held at the snapshot (that one again if its
        # write was done but not yet reported).
        self.assertIn(first, (last_frozen, last_frozen + 1))
        self.assertLess(first, first_run[-1][0], "the restored run does not start at the snapshot")
        self.assertEqual([n for n, _ in recs2], list(range(first, first + len(recs2))))
        self.assertEqual([ram for _, ram in recs2], ["ok"] * len(recs2))

        c2.ctl("stop", name, "--force")
        wait_until(lambda: c2.ctl("status", name, "--json").json["state"] == "stopped", 30)
        last = L.console_report(text())[1][-1][0]
        disk = self.read_qcow2(mine)
        self.assertEqual(L.disk_problems(disk, boot_id, last), [],
                         "the disk after the restored run lacks records")
        self.assertEqual(file_state(data), frozen_sum, "the restore wrote into the snapshot's disk")

    def test_restore_twice_same_disk_state(self):
        """One snapshot restored twice into the same VM: each restore gets
        an overlay of its own over the recorded disk, so the second one
        finds the disk as it was at the snapshot, not as the first restored
        guest left it; the recorded disk's bytes and mtime never change. A
        restore that fails after its overlay was made removes it, and the
        VM keeps its own spec; a recorded disk that is gone is refused
        before any QEMU starts, naming the disk."""
        name = "lin"
        data = self.start_with_data_disk(name)
        boot_id = wait_until(lambda: self.report(name)[0], L.BOOT_TIMEOUT, interval=0.2,
                             what="the boot line")[0]
        wait_until(lambda: self.last_reported(name) >= 8, 30 * T.SLOWDOWN, interval=0.1, what="records")
        d = self.snap_dir()
        path = os.path.join(d, "lin.state")
        self.snapshot(name, path)
        at = self.last_reported(name)
        wait_until(lambda: self.last_reported(name) >= at + 4, 30 * T.SLOWDOWN, interval=0.1,
                   what="records after the snapshot")
        self.ok("stop", name, "--force")
        wait_until(lambda: self.status(name)["state"] == "stopped", 30)
        last_frozen = self.last_record(self.read_qcow2(data), boot_id)
        frozen_sum = file_state(data)

        def restore(wait_for):
            """Restores lin; returns (its overlay, its records, the last)."""
            mark = len(self.cprd.console(name))
            r = self.ctl("restore", name, "--from", path, "--json", timeout=300)
            self.assertEqual(r.rc, 0, repr(r))
            self.assertFalse(r.json["created"], r.json)
            self.assertEqual(len(r.json.get("overlays", [])), 1, r.json)
            mine = r.json["overlays"][0]
            self.assert_restore_overlay(mine, data)
            self.assertEqual(self.status(name)["spec"]["disks"][1]["path"], mine)
            tail = lambda: L.console_report(self.cprd.console(name)[mark:])
            wait_until(lambda: len(tail()[1]) >= wait_for, 60 * T.SLOWDOWN, interval=0.1,
                       what="%d records from the restored guest" % wait_for)
            self.ok("stop", name, "--force")
            wait_until(lambda: self.status(name)["state"] == "stopped", 30)
            boots, recs, other = tail()
            self.assertEqual((boots, other), ([], []), "the restored guest booted again or failed")
            self.assertEqual([n for n, _ in recs], list(range(recs[0][0], recs[0][0] + len(recs))))
            # The sequence goes on from the last record on the disk at the
            # snapshot (that one again if it was written but not reported).
            self.assertIn(recs[0][0], (last_frozen, last_frozen + 1))
            disk = self.read_qcow2(mine)
            self.assertEqual(L.disk_problems(disk, boot_id, recs[-1][0]), [],
                             "the disk of the restored run %s is not the snapshot's plus its "
                             "own records" % mine)
            self.assertEqual(file_state(data), frozen_sum, "the restore wrote into the snapshot's disk")
            return mine, recs

        first, recs1 = restore(20)
        second, recs2 = restore(2)
        T.log("    restore twice: record %d last on the disk at the snapshot; first restore "
              "wrote %d..%d into %s, second %d..%d into %s" %
              (last_frozen, recs1[0][0], recs1[-1][0], os.path.basename(first), recs2[0][0],
               recs2[-1][0], os.path.basename(second)))
        self.assertNotEqual(first, second)
        self.assertTrue(os.path.exists(first), "the first restore's overlay went")
        # The records the first restored run wrote beyond the second's are
        # not on the second's disk (disk_problems found zeros after it).
        self.assertLess(recs2[-1][0] + 1, recs1[-1][0])

        # A restore that fails after its overlay was made: QEMU cannot load
        # the state. The overlay goes, the VM keeps its own spec.
        with open(path + ".json") as f:
            rec = json.load(f)
        bad = os.path.join(d, "unloadable.state")
        self.copy_snapshot(path, bad)
        with open(bad, "r+b") as f:
            blob = bytearray(f.read())
            blob[0:4] = b"XXXX"
            f.seek(0)
            f.write(blob)
        with open(bad + ".json", "w") as f:
            json.dump(dict(rec, stateHash=fnv1a64(bytes(blob))), f)
        overlays = lambda: sorted(f for f in os.listdir(self.tmp) if ".restore-" in f)
        before = overlays()
        self.assertEqual(before, sorted(os.path.basename(p) for p in (first, second)))
        made = self.cprd.read_log().count("made the overlay")
        r = self.ctl("restore", name, "--from", bad, timeout=300)
        self.assertNotEqual(r.rc, 0, repr(r))
        self.assertIn("could not load", r.stderr, repr(r))
        self.assertEqual(self.cprd.read_log().count("made the overlay"), made + 1,
                         "the failed restore made no overlay")
        self.assertEqual(overlays(), before, "the failed restore left its overlay")
        st = self.status(name)
        self.assertEqual((st["state"], st["spec"]["disks"][1]["path"]), ("stopped", second), st)

        # A recorded disk qemu-img cannot put an overlay on (it is not
        # qcow2): refused before any QEMU starts, naming the disk and with
        # qemu-img's reason; nothing left.
        notqcow = os.path.join(self.tmp, "not-qcow2.qcow2")
        with open(notqcow, "wb") as f:
            f.truncate(L.DATA_DISK_BYTES)
        spec = json.loads(json.dumps(rec["spec"]))
        spec["disks"][1]["path"] = notqcow
        moved = os.path.join(d, "moved.state")
        self.copy_snapshot(path, moved)
        with open(moved + ".json", "w") as f:
            json.dump(dict(rec, spec=spec), f)
        children = set(T.children_of(self.cprd.pid))
        starts = self.cprd.read_log().count("starting QEMU")
        r = self.ctl("restore", "lin-moved", "--from", moved, timeout=300)
        T.log("    %s" % r.stderr.strip())
        self.assertNotEqual(r.rc, 0, repr(r))
        self.assertIn("disks[1]: cannot make an overlay over %s: qemu-img exited with status 1: " % notqcow,
                      r.stderr, repr(r))
        self.assertIn("qcow2", r.stderr.split("qemu-img exited")[1], repr(r))
        self.assertEqual(self.cprd.read_log().count("starting QEMU"), starts, "a QEMU was started")
        self.assert_nothing_left(self.cprd, "lin-moved", children)
        self.assertEqual(overlays(), before)
        self.assertEqual(file_state(data), frozen_sum)

    def assert_restore_overlay(self, overlay, disk):
        """overlay is a restore's: beside disk, named for it, a qcow2 file
        whose backing file is disk (absolute, qcow2)."""
        self.assertEqual(os.path.dirname(overlay), os.path.dirname(disk))
        self.assertRegex(os.path.basename(overlay), r"^lin-data\.restore-\d{8}T\d{6}(-\d+)?\.qcow2$")
        info = json.loads(subprocess.run([QEMU_IMG, "info", "-U", "--output=json", overlay], check=True,
                                         capture_output=True, text=True).stdout)
        self.assertEqual((info["format"], info.get("full-backing-filename"),
                          info.get("backing-filename-format")), ("qcow2", disk, "qcow2"), info)

    def last_record(self, disk, boot_id):
        n = -1
        while (n + 1) * L.SECTOR < len(disk):
            rec = L.parse_record(disk[(n + 1) * L.SECTOR:(n + 2) * L.SECTOR])
            if rec is None:
                break
            self.assertEqual(rec[1], boot_id)
            n += 1
        return n


class OwnUid(SnapshotCase, L.LinuxGuestCase):
    """cprd --qemu-users: the backing files cprd put under a VM's disks (a
    restore's, a snapshot's overlays) are the VM's uid's to read while it
    runs (an ACL entry), and no longer once it stops; the disks are root's
    0600, so nothing else lets the uid in."""

    def users_cprd(self, root):
        """A cprd with --qemu-users, in folders the VMs' uids may pass."""
        os.chmod(self.tmp, 0o711)
        os.makedirs(root, mode=0o755, exist_ok=True)
        c = T.Cprd(root)
        c.extra_args = ["--qemu-users", I.RANGE]
        c.start()
        self.addCleanup(c.stop)
        wait_until(lambda: c.ctl("list").rc == 0, 10, what="the cprd with --qemu-users to answer")
        return c

    def assert_owner(self, path, uid, mode):
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (uid, uid, mode), path)

    def test_restore_into_own_uid(self):
        """A snapshot of a VM whose QEMU ran as root is restored under a
        cprd with --qemu-users: the restored QEMU runs as the VM's uid on
        the restore's overlay, reads the recorded disk below it through an
        ACL entry that goes when it stops, and the guest's records go on."""
        os.chmod(self.tmp, 0o711)
        name = "lin"
        image = os.path.join(self.tmp, "linux.img")  # its ACL is changed: a copy of our own
        shutil.copyfile(L.LINUX_IMAGE, image)
        os.chmod(image, 0o644)
        data = os.path.join(self.tmp, "lin-data.qcow2")
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", data, str(L.DATA_DISK_BYTES)], check=True)
        os.chmod(data, 0o600)
        self.ok("create", name, "--memory", L.MEMORY_MIB, "--qemu", T.QEMU10, "--machine", "pc",
                "--accel", "tcg", "--disk", image + ",readonly", "--disk", data + ",format=qcow2")
        self.start_vm(name)
        boot_id = wait_until(lambda: self.report(name)[0], L.BOOT_TIMEOUT, interval=0.2,
                             what="the boot line")[0]
        wait_until(lambda: self.last_reported(name) >= 4, 30 * T.SLOWDOWN, interval=0.1, what="records")
        path = os.path.join(self.snap_dir(), "lin.state")
        self.snapshot(name, path)
        self.ok("stop", name, "--force")
        self.assertIsNone(I.acl_users(data))

        c2 = self.users_cprd(os.path.join(self.tmp, "users"))
        r = c2.ctl("restore", name, "--from", path, "--json", timeout=300)
        self.assertEqual(r.rc, 0, repr(r))
        mine = r.json["overlays"][0]
        vm = c2.ctl("status", name, "--json").json
        uid = vm["uid"]
        self.assertEqual(uid, I.FIRST)
        self.assertEqual(I.proc_ids(vm["pid"])[0], [str(uid)] * 4, "the restored QEMU is not the VM's uid")
        disk = vm["spec"]["disks"][1]
        self.assertEqual((disk["path"], disk.get("backing")), (mine, [data]), vm["spec"])
        self.assertNotIn("backing", vm["spec"]["disks"][0])
        # While it runs: the overlay is the uid's, the disk below it root's
        # 0600 with the uid's ACL entry, recorded in vm.json to give back.
        self.assert_owner(mine, uid, 0o600)
        self.assertEqual(I.acl_users(data), [uid])
        self.assertEqual(os.stat(data).st_uid, 0)
        self.assertEqual(I.try_as(uid, [("read", data), ("write", data)])["out"],
                         {"read " + data: "ok", "write " + data: "EACCES"})
        with open(os.path.join(c2.vm_dir(name), "vm.json")) as f:
            rec = json.load(f)
        self.assertEqual(rec["spec"]["disks"][1]["backing"], [data])
        self.assertIn((data, "acl", uid), [(g["path"], g["kind"], g["uid"]) for g in rec["diskGrants"]])

        text = lambda: c2.console(name)
        wait_until(lambda: len(L.console_report(text())[1]) >= 8, 60 * T.SLOWDOWN, interval=0.2,
                   what="8 records from the restored guest")
        boots2, recs2, other2 = L.console_report(text())
        self.assertEqual((boots2, other2), ([], []), "the restored guest booted again or failed")
        self.assertEqual([ram for _, ram in recs2], ["ok"] * len(recs2))

        c2.ctl("stop", name, "--force")
        wait_until(lambda: c2.ctl("status", name, "--json").json["state"] == "stopped", 30)
        self.assertIsNone(I.acl_users(data), "the backing file kept the uid's ACL entry after stop")
        self.assert_owner(mine, 0, 0o600)
        st = os.stat(data)
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o600))
        last = L.console_report(text())[1][-1][0]
        self.assertEqual(L.disk_problems(self.read_qcow2(mine), boot_id, last), [],
                         "the disk after the restored run lacks records")
        T.log("    restored as uid %d: %d records on, backing file %s given and given back" %
              (uid, len(recs2), os.path.basename(data)))


    def test_snapshot_as_own_uid_then_start(self):
        """A VM whose QEMU runs as its own uid is snapshot twice (cprd makes
        each overlay's file, the uid's while the VM runs, since QEMU may not
        create files in the disks' folder), stopped (every file of the chain
        root's again) and started again: its QEMU reads both files below its
        top overlay, through ACL entries that go at stop.
        A QEMU not run by root needs vm.unprivileged_userfaultfd=1 for the
        snapshot: the test sets it for the snapshots only, and puts the old
        value back."""
        c = self.users_cprd(os.path.join(self.tmp, "users"))
        boot = os.path.join(self.tmp, "boot.img")
        shutil.copyfile(T.GUEST_IMAGE, boot)
        os.chmod(boot, 0o644)
        data = os.path.join(self.tmp, "g-data.qcow2")
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", data, "1M"], check=True)
        os.chmod(data, 0o600)
        r = c.ctl("create", "g", "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg",
                  "--disk", boot + ",readonly", "--disk", data + ",format=qcow2")
        self.assertEqual(r.rc, 0, repr(r))
        r = c.ctl("start", "g", "--json")
        self.assertEqual(r.rc, 0, repr(r))
        uid = r.json["uid"]
        self.assertEqual(I.proc_ids(r.json["pid"])[0], [str(uid)] * 4)

        sysctl = "/proc/sys/vm/unprivileged_userfaultfd"
        with open(sysctl) as f:
            old = f.read().strip()
        overlays = []
        try:
            with open(sysctl, "w") as f:
                f.write("1")
            for k in range(2):
                if k:
                    time.sleep(1.1)  # the next overlay's name has another second
                res = self.snapshot("g", os.path.join(self.snap_dir(), "g%d.state" % k), cprd=c)
                overlays += res["overlays"]
        finally:
            with open(sysctl, "w") as f:
                f.write(old)
        for o in overlays:
            self.assert_owner(o, uid, 0o600)
        spec = c.ctl("status", "g", "--json").json["spec"]
        self.assertEqual((spec["disks"][1]["path"], spec["disks"][1]["backing"]),
                         (overlays[1], [data, overlays[0]]), spec)
        self.assertEqual(c.ctl("stop", "g", "--force").rc, 0)
        # No file of the chain stays the uid's: the overlays made for it go
        # back to root with the disk.
        for f in [data] + overlays:
            st = os.stat(f)
            self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (0, 0, 0o600),
                             "%s was not given back" % f)
            self.assertIsNone(I.acl_users(f))

        # The uid reads the two files below its disk only through the grants.
        r = c.ctl("start", "g", "--json")
        self.assertEqual(r.rc, 0, repr(r))
        self.assertEqual(r.json["uid"], uid)
        self.assertEqual(I.proc_ids(r.json["pid"])[0], [str(uid)] * 4)
        self.assertEqual(I.acl_users(data), [uid])
        self.assertEqual(I.acl_users(overlays[0]), [uid])
        self.assert_owner(overlays[1], uid, 0o600)
        t0 = c.read_guest("g")[1]
        wait_until(lambda: c.read_guest("g")[1] >= t0 + 18, 30 * T.SLOWDOWN, what="the guest's ticks")
        self.assertEqual(c.ctl("stop", "g", "--force").rc, 0)
        self.assertIsNone(I.acl_users(data), "the backing file kept the uid's ACL entry after stop")
        self.assertIsNone(I.acl_users(overlays[0]))
        self.assertEqual(os.stat(overlays[1]).st_uid, 0)
        T.log("    snapshot twice as uid %d, then a start on %s over %d files" %
              (uid, os.path.basename(overlays[1]), len(spec["disks"][1]["backing"])))


if __name__ == "__main__":
    T.main(qemus=(T.QEMU10,))
