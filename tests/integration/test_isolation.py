#!/usr/bin/python3
"""cprd --qemu-users: a user of its own for each VM (issue 13, part 1).

Two VMs under one cprd, each QEMU under its own uid, and what one VM's uid
cannot reach of the other's, checked with real open() and connect() calls
by a helper process that becomes vm1's uid (fork, setgroups([]), setgid,
setuid). Then the uid across an upgrade, a cprd restart and delete, the
disks given back on stop (owner and mode of a writable disk, the ACL
entries of a read-only disk both VMs share), and the refusals: a range an
account uses, --qemu-user beside it, a full range, a disk QEMU's user cannot
reach.
"""

import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import unittest

import cprdtest as T
from cprdtest import wait_until

HAVE_111 = T.qemu_usable(T.QEMU111)
NEED_111 = "QEMU 11.1 (%s) is missing; scripts/install-deps.sh provides it" % T.QEMU111

# A range of its own for each run, so concurrent runs on this host do not
# share uids; far above UID_MAX (60000) and the subuid ranges Debian hands
# out from 100000 (none are set up on the test machines).
FIRST = 3000000 + (os.getpid() % 5000) * 16
RANGE = "%d-%d" % (FIRST, FIRST + 15)


def proc_ids(pid):
    """Uid, Gid (each four numbers) and Groups of a process."""
    with open("/proc/%d/status" % pid) as f:
        st = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    return st["Uid"].split(), st["Gid"].split(), st["Groups"].split()


def acl_users(path):
    """The uids with an entry in path's access ACL (the xattr as the kernel
    keeps it: version 2, then 8-byte entries tag, perm, id); None when it
    has no ACL beyond its mode."""
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise
    users = []
    for off in range(4, len(raw), 8):
        tag, perm, uid = struct.unpack_from("<HHI", raw, off)
        if tag == 0x02:  # ACL_USER
            users.append(uid)
    return sorted(users)


def try_as(uid, attempts):
    """Runs each attempt (kind, path) in a child that became uid with no
    groups; returns {path: "ok" or the errno's name}. Kinds: "read" and
    "write" open a file, "dir" lists a folder, "connect" connects to a unix
    socket."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = {}
            for kind, path in attempts:
                try:
                    if kind == "dir":
                        os.listdir(path)
                    elif kind == "connect":
                        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        try:
                            s.connect(path)
                        finally:
                            s.close()
                    else:
                        os.close(os.open(path, os.O_RDONLY if kind == "read" else os.O_RDWR))
                    out["%s %s" % (kind, path)] = "ok"
                except OSError as e:
                    out["%s %s" % (kind, path)] = errno.errorcode.get(e.errno, str(e.errno))
            os.write(w, json.dumps({"ids": proc_ids(os.getpid()), "out": out}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


class IsolationCase(T.CprdTestCase):
    """A cprd with --qemu-users, in a folder the VMs' uids may pass through."""

    def setUp(self):
        # QEMU binds its sockets under the runtime folder and opens the
        # disks here: every VM's uid must be able to pass through.
        os.chmod(self.tmp, 0o711)
        self.cprd = T.Cprd(self.tmp)
        self.cprd.extra_args = ["--qemu-users", RANGE]
        self.cprd.start()
        self.addCleanup(self.cprd.stop)

    def disk(self, name, mode=0o644):
        path = os.path.join(self.tmp, name)
        shutil.copyfile(T.GUEST_IMAGE, path)
        os.chmod(path, mode)
        return path

    def create_vm(self, name, *disks, qemu=None, extra=()):
        args = []
        for d in disks:
            args += ["--disk", d]
        self.ok("create", name, "--memory", 64, "--qemu", qemu or T.QEMU10, "--accel", "tcg",
                *args, *extra)
        return self.status(name)

    def assert_runs_as(self, pid, uid):
        uids, gids, groups = proc_ids(pid)
        self.assertEqual(uids, [str(uid)] * 4)
        self.assertEqual(gids, [str(uid)] * 4)
        self.assertEqual(groups, [], "QEMU pid %d has supplementary groups" % pid)

    def assert_owner(self, path, uid, mode):
        st = os.stat(path)
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o7777), (uid, uid, mode), path)

    def recovery_socket(self, name):
        with open(os.path.join(self.cprd.runtime_dir, "vms", name, "qemu.json")) as f:
            return json.load(f)["qmpPath"]


class TwoVMs(IsolationCase):

    def test_two_vms_apart(self):
        d1, d2 = self.disk("vm1.img"), self.disk("vm2.img")
        # Read-only, shared, and readable by no one but root until cprd
        # gives each VM's uid an ACL entry.
        shared = self.disk("shared.img", 0o640)
        self.create_vm("vm1", d1, shared + ",readonly")
        self.create_vm("vm2", d2, shared + ",readonly")
        vm1, vm2 = self.start_vm("vm1"), self.start_vm("vm2")
        self.wait_guest_ticks("vm1", 3)
        self.wait_guest_ticks("vm2", 3)
        u1, u2 = vm1["uid"], vm2["uid"]
        self.assertNotEqual(u1, u2)
        for u in (u1, u2):
            self.assertTrue(FIRST <= u <= FIRST + 15, u)
        self.assert_runs_as(vm1["pid"], u1)
        self.assert_runs_as(vm2["pid"], u2)
        self.assertIn("User:         uid %d" % u1, self.ok("status", "vm1").stdout)

        # What each VM's uid owns, and how.
        run1 = os.path.join(self.cprd.runtime_dir, "vms", "vm1")
        run2 = os.path.join(self.cprd.runtime_dir, "vms", "vm2")
        self.assert_owner(run1, u1, 0o700)
        self.assert_owner(run2, u2, 0o700)
        for log in ("console.log", "qemu.log"):
            self.assert_owner(os.path.join(self.cprd.vm_dir("vm1"), log), u1, 0o600)
            self.assert_owner(os.path.join(self.cprd.vm_dir("vm2"), log), u2, 0o600)
        self.assert_owner(d1, u1, 0o600)
        self.assert_owner(d2, u2, 0o600)
        self.assertEqual(acl_users(shared), sorted([u1, u2]))
        self.assert_owner(shared, 0, 0o640)
        sock1, sock2 = self.recovery_socket("vm1"), self.recovery_socket("vm2")

        # vm1's uid, for real: its own things open, vm2's do not.
        got = try_as(u1, [
            ("write", d1), ("read", shared), ("dir", run1), ("connect", sock1),
            ("write", d2), ("read", d2), ("read", os.path.join(self.cprd.vm_dir("vm2"), "console.log")),
            ("dir", run2), ("connect", sock2), ("read", os.path.join(run2, "qemu.json")),
            ("write", shared),
        ])
        self.assertEqual(got["ids"], [[str(u1)] * 4, [str(u1)] * 4, []])
        out = got["out"]
        for what in ("write " + d1, "read " + shared, "dir " + run1, "connect " + sock1):
            self.assertEqual(out[what], "ok", (what, out))
        for what in ("write " + d2, "read " + d2, "dir " + run2, "connect " + sock2,
                     "read %s/console.log" % self.cprd.vm_dir("vm2"), "read %s/qemu.json" % run2,
                     "write " + shared):
            self.assertEqual(out[what], "EACCES", (what, out))

        # An upgrade keeps the uid: the target runs as it too.
        r = self.ctl("upgrade", "vm1", "--mode", "cpr-transfer", "--json")
        self.assertEqual(r.rc, 0, repr(r))
        self.assertEqual(r.json["outcome"], "committed", r.json)
        self.assertNotEqual(r.json["pid"], vm1["pid"])
        self.assert_runs_as(r.json["pid"], u1)
        self.assertEqual(self.status("vm1")["uid"], u1)
        self.wait_guest_ticks("vm1", self.wait_guest_ticks("vm1", 1)[1] + 1)

        # A cprd restart (no fd store: QMP comes back through the recovery
        # socket of the uid's folder) keeps both uids, and both guests.
        pids = {n: self.status(n)["pid"] for n in ("vm1", "vm2")}
        self.cprd.proc.send_signal(signal.SIGTERM)
        self.cprd.proc.wait(30)
        self.cprd.start()
        for n, u in (("vm1", u1), ("vm2", u2)):
            wait_until(lambda: self.status(n)["state"] == "running", 30, what="%s running again" % n)
            st = self.status(n)
            self.assertEqual((st["uid"], st["pid"]), (u, pids[n]))
        r = self.ctl("upgrade", "vm2", "--mode", "cpr-transfer", "--json")
        self.assertEqual(r.json["outcome"], "committed", r.json)
        self.assert_runs_as(r.json["pid"], u2)
        self.assertIn("QMP reconnected through", self.cprd.read_log())

        # Stop: vm1's disk is root's again with its mode; only vm2 still
        # reads the shared disk; then no one.
        self.ok("stop", "vm1", "--force")
        self.assert_owner(d1, 0, 0o644)
        self.assertEqual(acl_users(shared), [u2])
        self.assertEqual(self.status("vm1")["uid"], u1)
        self.ok("stop", "vm2", "--force")
        self.assert_owner(d2, 0, 0o644)
        self.assertIsNone(acl_users(shared))
        self.assert_owner(shared, 0, 0o640)
        with open(os.path.join(self.cprd.vm_dir("vm1"), "vm.json")) as f:
            stored = json.load(f)
        self.assertEqual(stored["uid"], u1)
        self.assertNotIn("diskGrants", stored)

        # Started again: the same uid; deleted: the uid is free for the
        # next VM.
        self.assertEqual(self.start_vm("vm1")["uid"], u1)
        self.ok("stop", "vm1", "--force")
        self.ok("delete", "vm1")
        self.assertEqual(self.create_vm("vm3", self.disk("vm3.img"))["uid"], u1)

    @unittest.skipUnless(HAVE_111, NEED_111)
    def test_cpr_exec_keeps_uid(self):
        """cpr-exec: the same process executes the new binary, still as the
        VM's uid."""
        vm = self.create_vm("x1", self.disk("x1.img"), qemu=T.QEMU111, extra=("--allow-exec",))
        vm = self.start_vm("x1")
        self.wait_guest_ticks("x1", 2)
        r = self.ctl("upgrade", "x1", "--qemu", T.QEMU111, "--mode", "cpr-exec", "--json")
        self.assertEqual((r.json["outcome"], r.json["pid"]), ("committed", vm["pid"]), r.json)
        self.assert_runs_as(vm["pid"], vm["uid"])
        self.wait_guest_ticks("x1", self.wait_guest_ticks("x1", 1)[1] + 1)


class Refusals(IsolationCase):

    def test_disk_out_of_reach(self):
        """A disk in a folder its uid cannot search: the start fails with a
        sentence that says so, and the disk is given back."""
        private = os.path.join(self.tmp, "private")
        os.mkdir(private, 0o700)
        disk = os.path.join(private, "guest.img")
        shutil.copyfile(T.GUEST_IMAGE, disk)
        os.chmod(disk, 0o644)
        uid = self.create_vm("p1", disk)["uid"]
        r = self.ctl("start", "p1")
        self.assertEqual(r.rc, 1, repr(r))
        self.assertIn("QEMU, as uid %d, cannot open disks[0] %s read-write: Permission denied" % (uid, disk),
                      r.stderr)
        self.assertIn("searchable", r.stderr)
        self.assertIn(self.status("p1")["state"], ("defined", "stopped"))
        self.assert_owner(disk, 0, 0o644)
        os.chmod(private, 0o711)
        self.assertEqual(self.start_vm("p1")["uid"], uid)

    def test_disk_of_another_vm(self):
        """A disk another running VM writes is not given to a second one."""
        d = self.disk("one.img")
        self.create_vm("w1", d)
        self.create_vm("w2", d)
        u1 = self.start_vm("w1")["uid"]
        r = self.ctl("start", "w2")
        self.assertEqual(r.rc, 1, repr(r))
        self.assertIn("is given to another VM's QEMU (uid %d)" % u1, r.stderr)
        self.assert_owner(d, u1, 0o600)
        self.assertEqual(self.status("w1")["state"], "running")

    def test_range_full(self):
        """Sixteen uids, sixteen VMs; the seventeenth is refused at create."""
        for i in range(16):
            self.ok("create", "f%d" % i, "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg")
        r = self.ctl("create", "f16", "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg")
        self.assertEqual(r.rc, 1, repr(r))
        self.assertIn("every uid of --qemu-users %s belongs to a VM already" % RANGE, r.stderr)
        self.assertNotIn("f16", [v["name"] for v in self.ok("list", "--json").json["vms"]])
        uids = sorted(self.status("f%d" % i)["uid"] for i in range(16))
        self.assertEqual(uids, list(range(FIRST, FIRST + 16)))
        self.ok("delete", "f7")
        self.ok("create", "f16", "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg")
        self.assertEqual(self.status("f16")["uid"], FIRST + 7)


class Startup(T.CprdTestCase):
    """What cprd refuses before it serves, and a VM from before the option."""

    def setUp(self):
        os.chmod(self.tmp, 0o711)
        self.cprd = T.Cprd(self.tmp)
        self.addCleanup(self.cprd.stop)

    def refused(self, args, rc, says):
        p = subprocess.run([T.CPRD, "--state-dir", os.path.join(self.tmp, "s"), "--runtime-dir",
                            os.path.join(self.tmp, "r")] + args, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, rc, p)
        self.assertIn(says, p.stderr)
        return p

    def test_bad_ranges(self):
        self.refused(["--qemu-users", "0-10"], 2, "uid 0 is root's")
        self.refused(["--qemu-users", "10-9"], 2, "above the last")
        self.refused(["--qemu-users", "200000"], 2, "not a range FIRST-LAST")
        # 65534 is nobody's uid (and on Debian sync's primary gid): the
        # refusal names the first account that has it.
        p = self.refused(["--qemu-users", "65000-65534"], 1, "is not free: /etc/passwd: user ")
        self.assertRegex(p.stderr, r"user \S+ has [ug]id 65534;")
        self.refused(["--qemu-users", "0-0"], 2, "uid 0")
        self.refused(["--qemu-users", RANGE, "--qemu-user", "nobody"], 2, "cannot be used together")
        self.refused(["--qemu-user", "nobody", "--qemu-users", RANGE], 2, "cannot be used together")

    def test_vm_from_before(self):
        """A VM created without the option gets its uid at its first start
        under it, and keeps it."""
        self.cprd.start()
        disk = os.path.join(self.tmp, "old.img")
        shutil.copyfile(T.GUEST_IMAGE, disk)
        self.ok("create", "old", "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg", "--disk", disk)
        self.assertNotIn("uid", self.status("old"))
        self.cprd.proc.send_signal(signal.SIGTERM)
        self.cprd.proc.wait(30)
        self.cprd.extra_args = ["--qemu-users", RANGE]
        self.cprd.start()
        self.assertNotIn("uid", self.status("old"))
        vm = self.start_vm("old")
        self.assertEqual(vm["uid"], FIRST)
        proc = proc_ids(vm["pid"])
        self.assertEqual(proc[0], [str(FIRST)] * 4)
        self.ok("stop", "old", "--force")
        self.assertEqual(os.stat(disk).st_uid, 0)
        with open(os.path.join(self.cprd.vm_dir("old"), "vm.json")) as f:
            self.assertEqual(json.load(f)["uid"], FIRST)


if __name__ == "__main__":
    T.main(qemus=(T.QEMU10,))
