#!/usr/bin/python3
"""The fault matrix (issue 6): faults injected into real upgrades, with real
QEMU 10.0 under TCG, each in a known phase.

cprd's test hook CPRD_TEST_HOLD_PHASE=<phase> CPRD_TEST_HOLD_MS=<ms> makes an
upgrade wait before that phase (spawn-target, transfer, retire); the fault is
injected while it waits, or just after (the log says when the phase began).
Phases, as seen from outside:

  held before spawn-target   preflight done, no target QEMU yet
  held before transfer       target started and listening, migrate not sent
                             (cprd is still in its spawn-target phase)
  after "upgrade transfer"   migrate sent to the old QEMU; a target stopped
                             with SIGSTOP during the hold keeps it there
  held before retire         the new QEMU runs the guest (past the point of
                             no return), the old one waits to be retired

Full disks: a 1 MiB tmpfs on the state folder (vm.json, console.log) or on
the runtime folder (qemu.json, upgrade.json), filled at the right moment.

Upgrades go with --mode cpr-transfer: the matrix is about one attempt and
its rollback. With the default mode, auto, a rolled-back cpr-transfer is
tried again with local-migrate; one case checks that under a fault.

After every case the guarantee is checked:
  - the guest runs on exactly one QEMU, the one expected (old or new), or
    on none when the fault killed the QEMU that ran it; its tick counter
    advances;
  - its RAM memfd is still in cprd's custody (/proc/CPRD/fd), the same one
    (same inode) as before the upgrade; after a cprd restart without
    systemd's fd store (as here) cprd takes it back from QEMU with
    pidfd_getfd, so it is checked there too;
  - the VM has a NIC (cprd runs in a network namespace of the case's own
    with a bridge): its tap is the very device made at the start (same
    ifindex), on the bridge and up, held in GetVM, for as long as the RAM
    is held, also after a cprd restart (taken back from QEMU);
  - cprd's state matches reality: status pid == the live QEMU, the state
    (running / crashed), the upgrade's outcome in the history;
  - nothing leaks: cprd's children are exactly the live QEMU (no target, no
    probe, no zombie), cprd holds the same fds as before the upgrade, kind
    by kind (the VM's memfd, pidfds, sockets, pipes, files by path), also
    after a cprd restart, which re-attaches the VM with fds of the same
    kinds (fewer when the VM's QEMU is gone), and again after the next
    upgrade; the private upgrade folder and the journal are gone;
  - cprd exits 0 on SIGTERM at the end of the case.

Run as root: /usr/bin/python3 tests/faults/faults.py [CASE ...]
Prints a table (case | expected | result | pass/fail) at the end and
"N passed, M failed" (", K skipped"). A case that cannot run (no tmpfs) is
a skip, and with CI=true a failure unless tests/ci-skips.txt lists it
(area "faults", the case's function name). Environment as in
tests/integration/cprdtest.py.
"""

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import ci_skips  # noqa: E402
import cprdtest as T  # noqa: E402

AREA = "faults"  # ctest's name for this runner (tests/ci-skips.txt)

HOLD_MS = 2500


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


# ---- processes --------------------------------------------------------------------

def qemus_by_marker(name):
    marker = "guest=%s,debug-threads=on" % name
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            pid = int(d)
            args = T.cmdline(pid)
            # A QEMU run through a wrapper (11.1) runs as its loader:
            # ld-linux-x86-64.so.2 --library-path DIR .../qemu-system-x86_64
            if args and any("qemu" in os.path.basename(a) for a in args[:4]) and marker in args \
                    and T.pid_alive(pid):
                out.append(pid)
    return sorted(out)


def qemu_ram_fd(cprd, name, pid):
    """The guest RAM memfd's number inside QEMU pid, as the VM's qemu.json
    records it (custody hands the numbers out per QEMU)."""
    try:
        with open(os.path.join(cprd.runtime_dir, "vms", name, "qemu.json")) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if rec.get("pid") != pid:
        return None
    return rec.get("fds", {}).get("ram0")


def guest_ticks_via_qemu(cprd, name, pid):
    """The guest's tick counter read through QEMU's own memfd."""
    n = qemu_ram_fd(cprd, name, pid)
    if n is None:
        return None
    try:
        f = os.open("/proc/%d/fd/%d" % (pid, n), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(f, 24, T.GUEST_BLOCK)
    finally:
        os.close(f)
    if len(data) < 24 or data[:8] != T.GUEST_MAGIC:
        return None
    return struct.unpack("<Q", data[8:16])[0]


# ---- one case -----------------------------------------------------------------------

class Run:
    """One cprd in a private folder, one VM, one upgrade with a fault."""

    def __init__(self, case_name, hold=None, hold_ms=HOLD_MS, tmpfs=None, qemu=None):
        # Short paths: the upgrade's sockets must fit in sun_path (108).
        self.tmp = tempfile.mkdtemp(prefix="cf-")
        self.cprd = T.Cprd(self.tmp)
        self.name = "f%d-%s" % (os.getpid(), case_name[:12])
        self.hold, self.hold_ms = hold, hold_ms
        self.tmpfs = None
        self.upgrade_proc = None
        self.stopped = []  # pids we SIGSTOPped, continued at teardown
        self.restarted = False
        self.killed = False  # the current cprd was killed by the case
        self.tmpfs_on = tmpfs  # "state" or "runtime": the folder a case fills
        # The QEMU the VM starts on and moves to (11.1 for cpr-exec, which
        # gets allowExec).
        self.qemu = qemu or T.QEMU10
        # The VM has a NIC: cprd runs in a network namespace of the case's
        # own, whose bridge gets the tap (issue 12). The tap is custody
        # like the RAM: it must outlive every fault the RAM outlives.
        self.net = T.NetLab()

    def mount_tmpfs(self):
        """A 1 MiB tmpfs on the state or the runtime folder, to be filled
        by a case."""
        if self.tmpfs_on:
            path = {"state": self.cprd.state_dir, "runtime": self.cprd.runtime_dir}[self.tmpfs_on]
            os.makedirs(path)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,mode=0700", "tmpfs", path],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise Skip("cannot mount a tmpfs: %s" % r.stderr.strip())
            self.tmpfs = path

    # -- cprd ---------------------------------------------------------------------

    def start_cprd(self, hold=True):
        env_keys = ("CPRD_TEST_HOLD_PHASE", "CPRD_TEST_HOLD_MS")
        saved = {k: os.environ.get(k) for k in env_keys}
        for k in env_keys:
            os.environ.pop(k, None)
        if hold and self.hold:
            os.environ["CPRD_TEST_HOLD_PHASE"] = self.hold
            os.environ["CPRD_TEST_HOLD_MS"] = str(self.hold_ms)
        try:
            self.cprd.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        # After a kill -9 the old socket file is still there: wait until
        # the new cprd answers on it.
        T.wait_until(lambda: self.cprd.ctl("list", "--json", timeout=10).rc == 0, 15,
                     what="cprd to answer")

    def kill_cprd(self):
        self.killed = True
        self.cprd.proc.kill()
        self.cprd.proc.wait(10)
        self.cprd._log.close()

    def restart_cprd(self):
        """A new cprd on the same folders, without the hold."""
        self.restarted = True
        self.killed = False
        self.start_cprd(hold=False)

    def kill_cprd_mid_upgrade(self, while_down=None):
        """Kills cprd during the upgrade (the client's call ends with it),
        runs while_down() if given, and starts a new cprd."""
        self.kill_cprd()
        self.upgrade_result()
        if while_down:
            while_down()
        self.restart_cprd()

    def runtime_path(self, name):
        """A file in the VM's runtime folder (qemu.json, upgrade.json)."""
        return os.path.join(self.cprd.runtime_dir, "vms", self.name, name)

    def wait_gone(self, pid, who, fate):
        """Waits for pid to exit: "the <who> <pid> to be <fate>"."""
        T.wait_until(lambda: not T.pid_alive(pid), 20, what="the %s %d to be %s" % (who, pid, fate))

    # -- the VM ---------------------------------------------------------------------

    def ctl(self, *args, **kw):
        return self.cprd.ctl(*args, **kw)

    def ok(self, *args, **kw):
        r = self.ctl(*args, **kw)
        check(r.rc == 0, repr(r))
        return r

    def status(self):
        return self.ok("status", self.name, "--json").json

    def create_and_start(self):
        self.ok("create", self.name, "--memory", 64, "--qemu", self.qemu, "--accel", "tcg",
                "--disk", T.GUEST_IMAGE + ",readonly", "--nic", "bridge=" + self.net.BRIDGE,
                *(["--allow-exec"] if self.qemu != T.QEMU10 else []))
        vm = self.ok("start", self.name, "--json").json
        self.old_pid = vm["pid"]
        T.wait_until(lambda: (self.cprd.read_guest(self.name) or (b"", 0))[0] == T.GUEST_MAGIC and
                     self.cprd.read_guest(self.name)[1] >= 1, 30, what="the guest to boot")
        T.wait_until(lambda: set(self.cprd.children()) == {self.old_pid}, 20,
                     what="the probe to be gone")
        self.memfd_ino = self.cprd.memfd_inode(self.name)
        self.fd_kinds = self.held_fd_kinds()
        self.tap = vm["nics"][0]["tap"]
        self.tap_ifindex = self.net.links()[self.tap]["ifindex"]
        return vm

    def tap_note(self, held):
        """The NIC's tap: while the VM's custody is held, the very device
        made at the start, on the bridge and up, in GetVM as held; once the
        custody is released, gone."""
        links = self.net.links()
        nic = self.status()["nics"][0]
        if held:
            check(self.tap in links, "the tap %s is gone" % self.tap)
            check(links[self.tap]["ifindex"] == self.tap_ifindex,
                  "the tap %s is another device (ifindex %s -> %s)" % (self.tap, self.tap_ifindex,
                                                                      links[self.tap]["ifindex"]))
            check(links[self.tap].get("master") == self.net.BRIDGE and "UP" in links[self.tap]["flags"],
                  "the tap %s is off the bridge or down: %s" % (self.tap, links[self.tap]))
            check(nic["held"], "GetVM says the tap is not held: %s" % nic)
            return "tap held"
        check(self.tap not in links, "the tap %s outlived the VM's custody" % self.tap)
        check(not nic["held"], "GetVM says the tap is held: %s" % nic)
        return "tap gone"

    def held_fd_kinds(self):
        """{kind: count} of the fds cprd holds (client connections to its
        Varlink socket not counted): the memfd by name, sockets, pipes,
        anon inodes by type (pidfd, eventpoll, ...), files by path. Another
        cprd with the same VMs holds the same kinds, at other numbers."""
        out = {}
        for t in self.cprd.held_fds().values():
            if t.startswith("socket:"):
                k = "socket"
            elif t.startswith("pipe:"):
                k = "pipe"
            elif t.startswith("/memfd:"):
                k = t[:-len(" (deleted)")] if t.endswith(" (deleted)") else t
            elif t in ("/dev/net/tun", "/net/tun"):
                # A tap. Taken back from QEMU by a cprd started anew with
                # ip netns exec (a mount namespace of its own), its path
                # shows relative to /dev, which that namespace cannot see.
                k = "tun"
            else:
                k = t
            out[k] = out.get(k, 0) + 1
        return out

    def wait_fd_kinds(self, want, fewer=False, what="before the upgrade"):
        """Waits until cprd holds the fds want (with fewer: no kind more
        often, some less); returns the note for the summary."""
        def ok():
            now = self.held_fd_kinds()
            if not fewer:
                return now == want
            return all(now.get(k, 0) <= want.get(k, 0) for k in set(now) | set(want))
        try:
            T.wait_until(ok, 10, what="fds")
        except AssertionError:
            now = self.held_fd_kinds()
            diff = {k: "%d->%d" % (want.get(k, 0), now.get(k, 0))
                    for k in sorted(set(now) | set(want)) if now.get(k, 0) != want.get(k, 0)}
            raise Fail("cprd's fds differ from %s (%s): %s; it holds %s" % (
                what, "no kind more often" if fewer else "the same kinds and counts", diff,
                self.cprd.held_fds()))
        return sum(self.held_fd_kinds().values())

    # -- the upgrade ------------------------------------------------------------------

    def upgrade_bg(self, *extra, mode="cpr-transfer", qemu=None):
        self.upgrade_proc = self.cprd.ctl_bg("upgrade", self.name, "--qemu", qemu or self.qemu, "--json",
                                             "--mode", mode, *extra)
        return self.upgrade_proc

    def wait_log(self, text, timeout=30):
        T.wait_until(lambda: text in self.cprd.read_log(), timeout, what="cprd to log %r" % text)

    def wait_hold(self, phase=None):
        """Waits until cprd holds before phase (default: the case's hold,
        which may name several phases)."""
        self.wait_log("test hook: holding %d ms before %s" % (self.hold_ms, phase or self.hold))

    def target_pid(self):
        others = [p for p in qemus_by_marker(self.name) if p != self.old_pid]
        check(len(others) == 1, "expected one target QEMU beside pid %d, found %s" % (self.old_pid, others))
        return others[0]

    def upgrade_result(self, timeout=60):
        """(rc, last JSON line or None, stderr) of the background upgrade."""
        try:
            out, err = self.upgrade_proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.upgrade_proc.kill()
            out, err = self.upgrade_proc.communicate()
            raise Fail("cprctl upgrade did not return in %d s" % timeout)
        doc = None
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    pass
        return self.upgrade_proc.returncode, doc, err.strip()

    def kill_target_mid_transfer(self):
        """Once the upgrade holds before transfer: stops the target, so the
        transfer cannot finish, lets migrate go out, then kills it."""
        self.wait_hold()
        t = self.target_pid()
        self.sig(t, signal.SIGSTOP)
        self.wait_log("upgrade transfer:")
        time.sleep(0.3)
        self.sig(t, signal.SIGKILL)

    def sig(self, pid, s):
        os.kill(pid, s)
        if s == signal.SIGSTOP:
            self.stopped.append(pid)

    def history_outcome(self, timeout=20):
        """The last upgrade record's outcome, once the upgrade is over."""
        def done():
            vm = self.status()
            if vm.get("state") == "upgrading":
                return None
            ups = vm.get("upgrades") or []
            return (ups[-1].get("outcome") if ups else "none",)
        return T.wait_until(done, timeout, what="the upgrade to end")[0]

    # -- the guarantee ----------------------------------------------------------------

    def upgrade_again(self, qpid):
        """After the fault, the VM is fit for the next upgrade: it commits
        and the guest moves on, with the same RAM."""
        before = self.held_fd_kinds()
        r = self.ctl("upgrade", self.name, "--qemu", self.qemu, "--json", timeout=90)
        check(r.rc == 0, "the next upgrade failed: %r" % r)
        vm = self.status()
        check(vm["state"] == "running" and vm.get("pid") not in (None, qpid),
              "after the next upgrade: state %s pid %s (was %d)" % (vm["state"], vm.get("pid"), qpid))
        check(qemus_by_marker(self.name) == [vm["pid"]],
              "after the next upgrade QEMUs %s run the guest" % qemus_by_marker(self.name))
        check(self.cprd.memfd_inode(self.name) == self.memfd_ino, "the next upgrade changed the memfd")
        self.wait_fd_kinds(before, what="before the next upgrade")
        return "next upgrade ok"

    def verify(self, outcome, on, state="running", memfd="held", again=True, binary=None):
        """Checks the guarantee; returns a one-line summary of what is.
        outcome: the last history record's outcome ("none": no record);
        on: "old", "new", "exec" (the old QEMU's process, which executed
        the new binary in place) or None (no QEMU may run the guest);
        binary: the binary cprd must name for the QEMU that runs the guest
        (status and qemu.json)."""
        got = self.history_outcome()
        check(got == outcome, "upgrade outcome %r, expected %r" % (got, outcome))

        # Exactly the QEMU expected, and nothing else of this VM.
        def settled():
            q = qemus_by_marker(self.name)
            return (q,) if len(q) <= 1 else None
        try:
            live = T.wait_until(settled, 20, what="at most one QEMU for the guest")[0]
        except AssertionError:
            raise Fail("two QEMUs run the guest: %s" % qemus_by_marker(self.name))
        vm = self.status()
        if on is None:
            check(live == [], "a QEMU still runs the guest: %s" % live)
            check(vm["state"] == state, "state %s, expected %s" % (vm["state"], state))
            check(vm.get("pid") in (None, 0), "status names pid %s, but no QEMU runs" % vm.get("pid"))
            qpid = None
        else:
            check(len(live) == 1, "no QEMU runs the guest (expected the %s one)" % on)
            qpid = live[0]
            if on == "old":
                check(qpid == self.old_pid, "the guest runs on pid %d, not the old QEMU %d" % (qpid, self.old_pid))
            elif on == "exec":
                check(qpid == self.old_pid, "the guest runs on pid %d, not on the old QEMU's process %d, "
                      "which executed the new binary" % (qpid, self.old_pid))
                check("-incoming" in T.cmdline(qpid), "pid %d still runs the old binary: %s" % (qpid, T.cmdline(qpid)))
            else:
                check(qpid != self.old_pid, "the guest still runs on the old QEMU %d" % qpid)
            check(vm["state"] == state, "state %s, expected %s" % (vm["state"], state))
            check(vm.get("pid") == qpid, "status says pid %s, the live QEMU is %d" % (vm.get("pid"), qpid))
            if binary:
                with open(self.runtime_path("qemu.json")) as f:
                    rec = json.load(f)
                check(vm.get("qemu") == binary and rec.get("binary") == binary,
                      "cprd says pid %d runs %s (qemu.json: %s), expected %s" % (
                          qpid, vm.get("qemu"), rec.get("binary"), binary))

        # The guest's RAM: in custody, the same memfd, and its counter moves.
        held = self.cprd.memfd_inode(self.name)
        if memfd == "held":
            check(held is not None, "cprd no longer holds the guest RAM memfd")
            check(held == self.memfd_ino, "the guest RAM memfd changed (inode %s -> %s)" % (self.memfd_ino, held))
            mem = "memfd held"
        else:
            mem = "memfd held" if held == self.memfd_ino else "memfd lost (%s)" % memfd
        if qpid is not None:
            ticks = lambda: guest_ticks_via_qemu(self.cprd, self.name, qpid)  # noqa: E731
            t0 = ticks()
            check(t0 is not None, "cannot read the guest's counter through QEMU %d's RAM fd (qemu.json: %s)"
                  % (qpid, qemu_ram_fd(self.cprd, self.name, qpid)))
            try:
                t1 = T.wait_until(lambda: (ticks() or 0) > t0 and ticks(),
                                  10, what="the guest's counter to advance")
            except AssertionError:
                raise Fail("the guest does not run: its counter stays at %d" % t0)
            if held is not None:
                g = self.cprd.read_guest(self.name)
                check(g and g[0] == T.GUEST_MAGIC and g[1] >= t0,
                      "the memfd cprd holds is not the guest's RAM: %r" % (g,))
            runs = "guest runs on %s pid %d (ticks %d->%d)" % (on, qpid, t0, t1)
        else:
            runs = "no QEMU runs the guest (%s)" % vm["state"]

        # No leaks: children, fds, the upgrade folder, the journal.
        expect_children = {qpid} if (qpid is not None and not self.restarted) else set()
        def children_ok():
            ch = self.cprd.children()
            return set(ch) == expect_children and all(s != "Z" for s, _ in ch.values())
        try:
            T.wait_until(children_ok, 20, what="cprd's children")
        except AssertionError:
            raise Fail("cprd's children are %s, expected %s" % (self.cprd.children(), expect_children))
        # The same fds as before, kind by kind; after a restart too, as
        # the new cprd re-attached the VM with fds of the same kinds. Fewer
        # when the VM's QEMU is gone (its QMP channel and pidfd are closed,
        # the RAM and console stay).
        n = self.wait_fd_kinds(self.fd_kinds, fewer=qpid is None,
                               what="before the upgrade" + (" (cprd restarted since)" if self.restarted else ""))
        fd_note = ", fds %d->%d%s" % (sum(self.fd_kinds.values()), n, " (new cprd)" if self.restarted else "")
        rdir = os.path.join(self.cprd.runtime_dir, "vms", self.name)
        leftovers = [n for n in (os.listdir(rdir) if os.path.isdir(rdir) else [])
                     if n.startswith("upgrade")]
        check(not leftovers, "left in %s: %s" % (rdir, leftovers))
        summary = "%s; %s; %s, %s%s" % (got, runs, mem, self.tap_note(held is not None), fd_note)
        if qpid is not None and again:
            summary += "; " + self.upgrade_again(qpid)
        return summary

    # -- teardown ------------------------------------------------------------------------

    def teardown(self, failed):
        """Cleans up; returns why the case fails after all (cprd did not
        exit 0 on SIGTERM, or exited by itself), or None."""
        trouble = None
        for pid in self.stopped:
            T.kill_pid(pid, signal.SIGCONT)
        if self.upgrade_proc and self.upgrade_proc.poll() is None:
            self.upgrade_proc.kill()
            self.upgrade_proc.communicate()
        if failed:
            lines = self.cprd.read_log().splitlines()
            T.log("---- cprd log (last 60 of %d lines) ----" % len(lines))
            for l in lines[-60:]:
                if "QMP <-" not in l and "QMP ->" not in l:
                    T.log("  | " + l)
        proc = self.cprd.proc
        if proc and proc.poll() is None:
            try:
                self.cprd.stop()
            except Exception as e:  # AssertionError: not exit 0 on SIGTERM
                trouble = "teardown: %s" % e
        elif proc:
            if not self.killed:
                trouble = "teardown: cprd exited by itself with status %s" % proc.returncode
            if not self.cprd._log.closed:
                self.cprd._log.close()
        if trouble:
            failed = True
            T.log(trouble)
        for pid in qemus_by_marker(self.name):
            T.log("teardown: killing leftover QEMU pid %d" % pid)
            T.kill_pid(pid, signal.SIGKILL)
        if self.tmpfs:
            subprocess.run(["umount", "-l", self.tmpfs], capture_output=True)
        self.net.remove()
        if T.KEEP or failed:
            T.log("  kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return trouble


def fill(path):
    """Fills the file system of path until not one more byte fits (ENOSPC);
    returns the filler's path. Unbuffered: a buffered file would raise
    ENOSPC again when it is closed."""
    p = os.path.join(path, "filler")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        chunk = 65536
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as e:
                check(e.errno == errno.ENOSPC, "filling %s: %r" % (path, e))
                chunk //= 2
    finally:
        os.close(fd)
    return p


# ---- the cases ------------------------------------------------------------------------

CASES = []


def case(name, expected, hold=None, hold_ms=HOLD_MS, tmpfs=None, qemu=None):
    def deco(fn):
        CASES.append({"name": name, "expected": expected, "fn": fn, "hold": hold, "hold_ms": hold_ms,
                      "tmpfs": tmpfs, "qemu": qemu})
        return fn
    return deco


# The target QEMU ---------------------------------------------------------------------

@case("target kill -9, spawn-target", "rolled back, guest on old QEMU", hold="transfer")
def target_kill_spawn(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    r.sig(r.target_pid(), signal.SIGKILL)
    rc, doc, err = r.upgrade_result()
    check(rc != 0, "cprctl upgrade succeeded: %s" % doc)
    return r.verify("rolled-back", "old")


@case("target kill -9, transfer", "rolled back, guest on old QEMU", hold="transfer")
def target_kill_transfer(r):
    r.create_and_start()
    r.upgrade_bg()
    r.kill_target_mid_transfer()
    rc, doc, err = r.upgrade_result()
    check(rc != 0, "cprctl upgrade succeeded: %s" % doc)
    return r.verify("rolled-back", "old")


@case("target kill -9, transfer; mode auto",
      "cpr-transfer rolled back, then local-migrate committed in the same call; guest on new QEMU",
      hold="transfer")
def target_kill_transfer_auto(r):
    r.create_and_start()
    r.upgrade_bg(mode="auto")
    r.kill_target_mid_transfer()
    rc, doc, err = r.upgrade_result()
    check(rc == 0 and doc and doc.get("mode") == "local-migrate", "cprctl: rc %d, %s, %s" % (rc, doc, err))
    got = [(a["mode"], a["outcome"], a["phase"]) for a in doc.get("attempts", [])]
    check(got == [("cpr-transfer", "rolled-back", "transfer"), ("local-migrate", "committed", "commit")],
          "attempts %s" % got)
    return r.verify("committed", "new")


@case("target SIGSTOP, spawn-target (--timeout 5)", "timeout, rolled back, guest on old QEMU",
      hold="transfer", hold_ms=8000)
def target_stop_spawn(r):
    r.create_and_start()
    r.upgrade_bg("--timeout", 5)
    r.wait_hold()
    r.sig(r.target_pid(), signal.SIGSTOP)
    rc, doc, err = r.upgrade_result()
    check(rc != 0 and "5 s" in err, "cprctl: rc %d, %s" % (rc, err))
    return r.verify("rolled-back", "old")


@case("target SIGSTOP, transfer (--timeout 5)", "timeout, rolled back, guest on old QEMU",
      hold="transfer")
def target_stop_transfer(r):
    r.create_and_start()
    r.upgrade_bg("--timeout", 5)
    r.wait_hold()
    r.sig(r.target_pid(), signal.SIGSTOP)
    r.wait_log("upgrade transfer:")
    rc, doc, err = r.upgrade_result()
    check(rc != 0, "cprctl upgrade succeeded: %s" % doc)
    return r.verify("rolled-back", "old")


@case("target kill -9, after resume (before retire)",
      "committed; the only QEMU with the guest died: VM crashed, RAM still held", hold="retire")
def target_kill_after_resume(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    r.sig(r.target_pid(), signal.SIGKILL)
    r.upgrade_result()
    return r.verify("committed", None, state="crashed")


@case("target SIGSTOP, after resume (before retire)", "committed, guest on new QEMU once continued",
      hold="retire")
def target_stop_after_resume(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    t = r.target_pid()
    r.sig(t, signal.SIGSTOP)
    rc, doc, err = r.upgrade_result()
    check(rc == 0, "cprctl: rc %d, %s" % (rc, err))
    r.sig(t, signal.SIGCONT)
    return r.verify("committed", "new")


# The old QEMU -------------------------------------------------------------------------

@case("old QEMU kill -9, spawn-target", "failed (nothing to roll back to): VM crashed, target killed, RAM held",
      hold="transfer")
def old_kill_spawn(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    r.sig(r.old_pid, signal.SIGKILL)
    rc, doc, err = r.upgrade_result()
    check(rc != 0, "cprctl upgrade succeeded: %s" % doc)
    return r.verify("failed", None, state="crashed")


@case("old QEMU kill -9, transfer", "failed: VM crashed, target killed, RAM held", hold="transfer")
def old_kill_transfer(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    r.sig(r.target_pid(), signal.SIGSTOP)
    r.wait_log("upgrade transfer:")
    time.sleep(0.2)
    r.sig(r.old_pid, signal.SIGKILL)
    rc, doc, err = r.upgrade_result()
    check(rc != 0, "cprctl upgrade succeeded: %s" % doc)
    # Its QMP channel may close before its pidfd reports the exit: the
    # rollback then waits for the exit and still ends as failed.
    return r.verify("failed", None, state="crashed")


@case("old QEMU SIGSTOP, transfer (--timeout 5)", "timeout, rolled back; guest on old QEMU once continued",
      hold="transfer")
def old_stop_transfer(r):
    r.create_and_start()
    r.upgrade_bg("--timeout", 5)
    r.wait_hold()
    r.sig(r.old_pid, signal.SIGSTOP)
    rc, doc, err = r.upgrade_result()
    check(rc != 0, "cprctl upgrade succeeded: %s" % doc)
    r.sig(r.old_pid, signal.SIGCONT)
    return r.verify("rolled-back", "old")


# cprd itself ---------------------------------------------------------------------------

@case("cprd kill -9, before spawn-target (its upgrade folder made, no journal yet); restart",
      "guest stays on old QEMU, no target, the folder removed; RAM memfd taken back from QEMU",
      hold="spawn-target")
def cprd_kill_preflight(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    # As if cprd had died right after making the upgrade's private folder
    # (the journal, written once the target is spawned, names it).
    r.kill_cprd_mid_upgrade(lambda: os.mkdir(r.runtime_path("upgrade-Xk3Zq9"), 0o700))
    return r.verify("none", "old", memfd="held")


@case("cprd kill -9, spawn-target; restart", "rolled back on restart, target killed; RAM memfd taken back",
      hold="transfer")
def cprd_kill_spawn(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    t = r.target_pid()
    r.kill_cprd_mid_upgrade()
    r.wait_gone(t, "target QEMU", "killed")
    return r.verify("rolled-back", "old", memfd="held")


@case("cprd kill -9, transfer (migrate sent); restart",
      "rolled back on restart: target killed, migration cancelled, guest on old QEMU", hold="transfer")
def cprd_kill_transfer(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    t = r.target_pid()
    r.sig(t, signal.SIGSTOP)  # the transfer cannot finish
    r.wait_log("upgrade transfer:")
    time.sleep(0.3)
    r.kill_cprd_mid_upgrade()
    r.wait_gone(t, "target QEMU", "killed")
    return r.verify("rolled-back", "old", memfd="held")


@case("cprd kill -9, after resume (before retire); restart",
      "committed on restart, old QEMU retired; RAM memfd taken back", hold="retire")
def cprd_kill_after_resume(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    r.kill_cprd_mid_upgrade()
    r.wait_gone(r.old_pid, "old QEMU", "retired")
    return r.verify("committed", "new", memfd="held")


@case("cprd kill -9 at the point of no return, qemu.json written, journal not yet; restart",
      "committed on restart, old QEMU retired, guest on the new one; RAM memfd taken back", hold="retire")
def cprd_kill_before_resumed_journal(r):
    # At the point of no return cprd first rewrites qemu.json to name the
    # new QEMU, then the journal with "resumed": true. A kill between the
    # two leaves the journal of the transfer phase beside a qemu.json that
    # names the target; that window is a few ms, so it is made here: held
    # before retire (both written), cprd killed, the journal put back to
    # what the transfer phase wrote.
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()

    def rewind_journal():
        path = r.runtime_path("upgrade.json")
        with open(path) as f:
            journal = json.load(f)
        check(journal.get("resumed") is True, "the journal held before retire is not resumed: %s" % journal)
        journal["resumed"], journal["phase"] = False, "transfer"
        with open(path, "w") as f:
            json.dump(journal, f)
    r.kill_cprd_mid_upgrade(rewind_journal)
    r.wait_gone(r.old_pid, "old QEMU", "retired")
    return r.verify("committed", "new", memfd="held")


@case("cprd kill -9 after the upgrade's record, before its journal is removed; restart",
      "committed, in the history once; guest on new QEMU", hold="retire")
def cprd_kill_before_journal_removed(r):
    # cprd saves the record (vm.json) first and removes the journal last; a
    # kill in between leaves both. Made here: the journal as it was before
    # retire is put back after the upgrade ended, then cprd is killed.
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    path = r.runtime_path("upgrade.json")
    with open(path) as f:
        journal = f.read()
    rc, doc, err = r.upgrade_result()
    check(rc == 0 and doc and doc.get("outcome") == "committed", "cprctl: rc %d, %s, %s" % (rc, doc, err))
    r.kill_cprd()
    with open(path, "w") as f:
        f.write(journal)
    r.restart_cprd()
    T.wait_until(lambda: not os.path.exists(path), 20, what="the journal to be settled")
    ups = r.status().get("upgrades") or []
    check(len(ups) == 1, "the upgrade is in the history %d times: %s" % (len(ups), ups))
    return r.verify("committed", "new", memfd="held") + "; recorded once"


@case("cprd kill -9 during a start, its QEMU up but the guest not yet run; restart",
      "the start undone: that QEMU quit, the VM stopped, its RAM released; the next start works")
def cprd_kill_starting(r):
    # cprd records the QEMU as starting as soon as it runs it, and sends
    # cont once QEMU's QMP is up: a window of a few ms, made here. The VM's
    # QEMU is a wrapper that waits 2 s before it runs QEMU; cprd is stopped
    # (SIGSTOP) meanwhile, so QEMU comes up and waits (prelaunch) for a
    # cont that never comes; then cprd is killed.
    r.qemu = T.write_wrapper(os.path.join(r.tmp, "qemu-slow"), "slow", delay="2")
    r.ok("create", r.name, "--memory", 64, "--qemu", r.qemu, "--accel", "tcg",
         "--disk", T.GUEST_IMAGE + ",readonly", "--nic", "bridge=" + r.net.BRIDGE)
    starter = r.cprd.ctl_bg("start", r.name, "--json")
    # cprd's child with the VM's name on its command line; the wrapper's
    # shell reads the script through /dev/fd, so only its arguments say so.
    marker = "guest=%s,debug-threads=on" % r.name
    qpid = T.wait_until(lambda: next((p for p in r.cprd.children() if marker in T.cmdline(p)), None), 30,
                        interval=0.02, what="cprd to run the VM's QEMU")
    r.sig(r.cprd.pid, signal.SIGSTOP)  # continued at teardown if the case fails before the kill
    check("qemu" not in os.path.basename(T.cmdline(qpid)[0]),
          "pid %d already runs QEMU when cprd is stopped (%s): the window was missed" % (
              qpid, T.cmdline(qpid)[:2]))
    with open(r.runtime_path("qemu.json")) as f:
        rec = json.load(f)
    check(rec.get("pid") == qpid and rec.get("starting") is True,
          "qemu.json does not record pid %d as starting: %s" % (qpid, rec))

    def qemu_up():  # QEMU answers on its own monitor
        try:
            return bool(T.migrate_capabilities(qpid, timeout=5))
        except (OSError, AssertionError):
            return False
    T.wait_until(qemu_up, 30, interval=0.2, what="QEMU pid %d to answer on its recovery monitor" % qpid)
    r.kill_cprd()
    r.stopped.remove(r.cprd.pid)
    out, err = starter.communicate(timeout=30)
    check(starter.returncode != 0, "the start that cprd's kill cut short succeeded: %s" % out)
    r.restart_cprd()
    r.wait_gone(qpid, "QEMU", "quit by the new cprd")
    # cprd sees the exit on its pidfd a moment after the pid is gone.
    try:
        vm = T.wait_until(lambda: (lambda v: v if v["state"] == "stopped" else None)(r.status()), 20,
                          what="the VM to be stopped")
    except AssertionError:
        raise Fail("state %s, expected stopped" % r.status()["state"])
    check(r.cprd.memfd_inode(r.name) is None, "cprd still holds the guest RAM of a start that was undone")
    check(not os.path.exists(r.runtime_path("qemu.json")), "qemu.json is left behind")
    check("undoing the start" in r.cprd.read_log(), "cprd's log does not say why it quit pid %d" % qpid)
    check(not qemus_by_marker(r.name), "a QEMU still runs: %s" % qemus_by_marker(r.name))
    vm = r.ok("start", r.name, "--json").json
    T.wait_until(lambda: (r.cprd.read_guest(r.name) or (b"", 0))[1] >= 1, 30, what="the guest to boot")
    return "start undone: QEMU pid %d quit, VM stopped, RAM released; started again as pid %d, guest runs" % (
        qpid, vm["pid"])


@case("cprd kill -9 after the guest started, before cprd recorded it (qemu.json still says "
      "starting); restart",
      "the guest kept: re-attached as running on the same QEMU; RAM memfd taken back")
def cprd_kill_started_unrecorded(r):
    # cprd rewrites qemu.json without "starting" once cont succeeded; the
    # window is made: after the start, cprd is killed and the flag put back.
    r.create_and_start()
    r.kill_cprd()
    path = r.runtime_path("qemu.json")
    with open(path) as f:
        rec = json.load(f)
    check("starting" not in rec, "qemu.json of a running guest says starting: %s" % rec)
    rec["starting"] = True
    with open(path, "w") as f:
        json.dump(rec, f)
    r.restart_cprd()
    T.wait_until(lambda: r.status()["state"] == "running", 20, what="the VM to be running again")
    with open(path) as f:
        check("starting" not in json.load(f), "qemu.json still says starting")
    return r.verify("none", "old", memfd="held")


# The state directory full ----------------------------------------------------------------

@case("state disk full, CreateVM", "clear error, nothing half-written; works once space is back",
      tmpfs="state")
def disk_full_create(r):
    filler = fill(r.cprd.state_dir)
    before = T.tree_snapshot(r.cprd.state_dir)
    res = r.ctl("create", r.name, "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg",
                "--disk", T.GUEST_IMAGE + ",readonly")
    check(res.rc != 0, "create succeeded on a full disk: %r" % res)
    # cprd's words (daemon/api.c): "cannot store the VM in DIR: " + strerror.
    want = "cannot store the VM in %s: No space left on device" % r.cprd.vm_dir(r.name)
    check(want in res.stderr, "the error does not say %r: %r" % (want, res.stderr))
    after = T.tree_snapshot(r.cprd.state_dir)
    check(set(after) == set(before), "files changed: %s" % sorted(set(after) ^ set(before)))
    check(r.ctl("list", "--json").json["vms"] == [], "a VM was registered")
    os.unlink(filler)
    r.create_and_start()
    return "refused: %s; created once space was back" % res.stderr.strip().splitlines()[-1][:90]


@case("state disk full, commit", "committed (reported), guest on new QEMU; history saved once space is back",
      hold="retire", tmpfs="state")
def disk_full_commit(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    filler = fill(r.cprd.state_dir)
    rc, doc, err = r.upgrade_result()
    check(rc == 0, "cprctl: rc %d, %s" % (rc, err))
    summary = r.verify("committed", "new")
    saving = "cannot save %s: No space left on device" % os.path.join(r.cprd.vm_dir(r.name), "vm.json")
    check(saving in r.cprd.read_log(), "cprd did not log %r" % saving)
    vmdir = r.cprd.vm_dir(r.name)
    names = os.listdir(vmdir)
    check(not [n for n in names if ".tmp." in n], "temporary files left: %s" % names)
    with open(os.path.join(vmdir, "vm.json")) as f:
        on_disk = json.load(f)  # still whole: the write is atomic
    os.unlink(filler)
    # The next change saves the history too.
    r.ok("stop", r.name, "--force")
    with open(os.path.join(vmdir, "vm.json")) as f:
        saved = json.load(f)
    check(saved.get("upgrades") and saved["upgrades"][-1]["outcome"] == "committed",
          "the history on disk lacks the upgrade: %s" % saved.get("upgrades"))
    return summary + "; vm.json intact (%d records), saved on the next change" % len(on_disk.get("upgrades", []))


# The runtime folder full: the upgrade journal cannot be written ----------------------------

@case("runtime folder full, upgrade journal (ENOSPC)",
      "stopped before migrate, rolled back with a reason naming the journal: target killed, no journal "
      "left, guest untouched on old QEMU; next upgrade ok once space is back", hold="spawn-target",
      tmpfs="runtime")
def journal_full(r):
    r.create_and_start()
    r.upgrade_bg()
    r.wait_hold()
    # upgrade.json lives in RUNTIME/vms/NAME; the first write comes right
    # after the target is spawned, before migrate is sent.
    filler = fill(r.cprd.runtime_dir)
    rc, doc, err = r.upgrade_result()
    check(rc != 0 and doc and doc.get("outcome") == "rolled-back", "cprctl: rc %d, %s, %s" % (rc, doc, err))
    reason = doc.get("reason", "")
    check("upgrade.json" in reason and "No space left on device" in reason,
          "the reason does not name the journal and ENOSPC: %r" % reason)
    check("upgrade transfer:" not in r.cprd.read_log(), "migrate was sent though no journal was written")
    os.unlink(filler)
    return "%s; %s" % (r.verify("rolled-back", "old"), reason.replace(r.cprd.runtime_dir, "RUNTIME"))


# A console log that cannot be written ---------------------------------------------------------

@case("console.log cannot be written (state disk full)",
      "guest keeps running and printing (console drained), nothing written; the error logged once, "
      "not per line; written again once space is back", tmpfs="state")
def console_log_full(r):
    r.create_and_start()
    path = os.path.join(r.cprd.vm_dir(r.name), "console.log")
    log_from = len(r.cprd.read_log())
    filler = fill(r.cprd.state_dir)
    # tmpfs counts pages: console.log's last page may still have room.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        while True:
            os.write(fd, b"\n" * 256)
    except OSError as e:
        check(e.errno == errno.ENOSPC, "filling console.log: %r" % e)
    finally:
        os.close(fd)
    size = os.path.getsize(path)
    lines0 = r.cprd.read_guest(r.name)[2]
    # The guest prints a line a second; its UART blocks when nobody drains
    # the console, and then its line counter stops.
    T.wait_until(lambda: r.cprd.read_guest(r.name)[2] >= lines0 + 5, 30,
                 what="the guest to print 5 more lines")
    check(os.path.getsize(path) == size, "console.log grew on a full disk")
    said = [l for l in r.cprd.read_log()[log_from:].splitlines() if "console.log" in l]
    check(len(said) == 1, "cprd logged %d lines about console.log while 5 lines could not be written, "
          "expected 1: %s" % (len(said), said[:5]))
    os.unlink(filler)
    T.wait_until(lambda: b"cprd-guest: line" in open(path, "rb").read()[size:], 10,
                 what="console.log to be written again")
    said = said[0].split(r.name + ": ", 1)[-1].replace(r.cprd.state_dir, "STATE")
    return "%s; logged once: %s" % (r.verify("none", "old"), said)


# The client --------------------------------------------------------------------------------

@case("client killed mid-Upgrade, spawn-target", "upgrade carries on: committed, in the history",
      hold="transfer")
def client_gone_spawn(r):
    return kill_client_mid_upgrade(r)


@case("client killed mid-Upgrade, after resume", "upgrade carries on: committed, in the history",
      hold="retire")
def client_gone_after_resume(r):
    return kill_client_mid_upgrade(r)


def kill_client_mid_upgrade(r):
    """The two client cases differ only in where the upgrade holds."""
    r.create_and_start()
    p = r.upgrade_bg()
    r.wait_hold()
    p.kill()
    p.communicate()
    return r.verify("committed", "new")


# cpr-exec (QEMU 11.1 -> 11.1: the same process executes the new binary) -----------------------

@case("cpr-exec: the new binary cannot be executed (its #! interpreter removed after preflight)",
      "execvp fails inside QEMU, which resumes the guest: rolled back, guest on old binary, same pid",
      hold="transfer", qemu=T.QEMU111)
def exec_fails(r):
    r.create_and_start()
    w, sh = T.write_exec_wrapper(r.tmp, T.QEMU111)
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    r.wait_hold()
    os.unlink(sh)
    rc, doc, err = r.upgrade_result()
    check(rc != 0 and doc and doc.get("outcome") == "rolled-back" and "execvp" in doc.get("reason", ""),
          "cprctl: rc %d, %s, %s" % (rc, doc, err))
    return r.verify("rolled-back", "old")


@case("cpr-exec: the new binary exits at once (status 1 when it sees -incoming)",
      "failed: the exec worked, so no old binary is left; VM crashed, RAM held",
      qemu=T.QEMU111)
def exec_new_binary_exits(r):
    r.create_and_start()
    w = T.write_wrapper(os.path.join(r.tmp, "qemu-exit1"), "exit1", real=T.QEMU111)
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    rc, doc, err = r.upgrade_result()
    check(rc != 0 and doc and doc.get("outcome") == "failed", "cprctl: rc %d, %s, %s" % (rc, doc, err))
    return r.verify("failed", None, state="crashed")


@case("cpr-exec: QEMU kill -9 during the exec (the new binary stopped before it runs QEMU)",
      "failed: VM crashed, RAM held", qemu=T.QEMU111)
def exec_kill_during(r):
    r.create_and_start()
    w = T.write_wrapper(os.path.join(r.tmp, "qemu-hang"), "hang", real=T.QEMU111)
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    # The process executed the wrapper, which stopped itself: between the
    # old binary and the new one.
    T.wait_until(lambda: T.proc_stat(r.old_pid)[0] == "T", 30, what="QEMU to stop inside the new binary")
    r.sig(r.old_pid, signal.SIGKILL)
    rc, doc, err = r.upgrade_result()
    check(rc != 0 and doc and doc.get("outcome") == "failed", "cprctl: rc %d, %s, %s" % (rc, doc, err))
    return r.verify("failed", None, state="crashed")


@case("cpr-exec: the new binary hangs after the exec (stopped before it runs QEMU; --timeout 5)",
      "failed: no old binary is left; the hung process is killed, VM crashed, RAM held", qemu=T.QEMU111)
def exec_hang_timeout(r):
    r.create_and_start()
    w = T.write_wrapper(os.path.join(r.tmp, "qemu-hang"), "hang", real=T.QEMU111)
    r.upgrade_bg("--timeout", 5, mode="cpr-exec", qemu=w)
    rc, doc, err = r.upgrade_result()
    check(rc != 0 and doc and doc.get("outcome") == "failed" and "killed" in doc.get("reason", ""),
          "cprctl: rc %d, %s, %s" % (rc, doc, err))
    T.wait_until(lambda: not T.pid_alive(r.old_pid), 10, what="the hung process %d to be killed" % r.old_pid)
    return r.verify("failed", None, state="crashed")


# cprd killed during a cpr-exec (11.1 -> 11.1): the process carries on without it --------------

@case("cpr-exec: cprd kill -9 before migrate; restart",
      "rolled back on restart: the old binary keeps the guest, same pid", hold="transfer", qemu=T.QEMU111)
def exec_cprd_kill_before_migrate(r):
    r.create_and_start()
    w, _ = T.write_exec_wrapper(r.tmp, T.QEMU111)
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    r.wait_hold()
    r.kill_cprd_mid_upgrade()
    return r.verify("rolled-back", "old", binary=T.QEMU111)


@case("cpr-exec: cprd kill -9 while the process executes the new binary (which waits 2 s before "
      "QEMU runs); restart",
      "committed on restart once the new binary runs the guest: same pid, cprd names the new binary; "
      "RAM memfd taken back", qemu=T.QEMU111)
def exec_cprd_kill_loading(r):
    r.create_and_start()
    w = T.write_wrapper(os.path.join(r.tmp, "qemu-slow"), "slow", real=T.QEMU111, delay="2")
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    T.wait_until(lambda: "-incoming" in T.cmdline(r.old_pid), 30,
                 what="QEMU pid %d to execute the new binary" % r.old_pid)
    # Its shell reads the script through cprd's /proc/CPRD/fd/N: opened
    # within a few ms of the exec.
    time.sleep(0.3)
    r.kill_cprd_mid_upgrade()
    waiting = any(comm == "sleep" for _, comm in T.children_of(r.old_pid).values())
    out = r.verify("committed", "exec", binary=w)
    return out + ("; the new binary was still starting when cprd came back" if waiting else "")


@case("cpr-exec: cprd kill -9 after the new binary resumed the guest (before commit); restart",
      "committed on restart: the same pid runs the new binary, nothing is killed", hold="retire",
      qemu=T.QEMU111)
def exec_cprd_kill_after_resume(r):
    r.create_and_start()
    w, _ = T.write_exec_wrapper(r.tmp, T.QEMU111)
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    r.wait_hold()
    r.kill_cprd_mid_upgrade()
    return r.verify("committed", "exec", binary=w)


@case("cpr-exec: the exec fails while cprd is down (the new binary's #! interpreter removed; cprd "
      "kill -9 after migrate); restart",
      "rolled back on restart: QEMU resumed the guest on the old binary itself; same pid, reason execvp",
      hold="transfer,resume", qemu=T.QEMU111)
def exec_fails_cprd_kill(r):
    r.create_and_start()
    w, sh = T.write_exec_wrapper(r.tmp, T.QEMU111)
    r.upgrade_bg(mode="cpr-exec", qemu=w)
    r.wait_hold("transfer")
    os.unlink(sh)
    r.wait_hold("resume")  # migrate sent; QEMU tries the exec without cprd
    r.kill_cprd_mid_upgrade()
    out = r.verify("rolled-back", "old", binary=T.QEMU111, again=False)
    rec = r.status()["upgrades"][-1]
    check("execvp" in rec.get("reason", ""), "the record does not say why: %s" % rec)
    return out + "; " + r.upgrade_again(r.old_pid)


# ---- main ------------------------------------------------------------------------------------

def main():
    if os.geteuid() != 0:
        ci_skips.skip_all(AREA, "the fault matrix needs root (it starts cprd and QEMU, mounts a tmpfs)")
    T.require_binaries(T.QEMU10)
    names = sys.argv[1:]
    cases = [c for c in CASES if not names or c["fn"].__name__ in names]
    t_all = time.monotonic()
    rows = []
    for c in cases:
        t0 = time.monotonic()
        T.log("== %s (%s)" % (c["name"], c["fn"].__name__))
        run = None
        failed = False
        try:
            if c["qemu"] and not T.qemu_usable(c["qemu"]):
                raise Skip("%s cannot run here" % c["qemu"])
            run = Run(c["fn"].__name__, hold=c["hold"], hold_ms=c["hold_ms"], tmpfs=c["tmpfs"],
                      qemu=c["qemu"])
            try:
                run.net.create()
            except T.NetLabUnavailable as e:
                raise Skip("no network namespace for the VM's NIC: %s" % e)
            run.cprd.netns = run.net
            run.mount_tmpfs()
            run.start_cprd()
            result, verdict = c["fn"](run), "PASS"
        except Skip as e:
            # Counted as a skip; with CI=true a failure unless allowed.
            verdict, text = ci_skips.skip(AREA, c["fn"].__name__, str(e))
            result, failed = "skipped: %s" % text, verdict == "FAIL"
        except Fail as e:
            result, verdict, failed = str(e), "FAIL", True
        except Exception as e:
            result, verdict, failed = "%s: %s" % (type(e).__name__, e), "FAIL", True
            T.log(traceback.format_exc())
        finally:
            trouble = run.teardown(failed) if run else None
        if trouble:
            result, verdict = "%s; %s" % (result, trouble.splitlines()[0]), "FAIL"
        took = time.monotonic() - t0
        T.log("%s: %s (%.1f s) -- %s" % (verdict, c["name"], took, result))
        rows.append((c["name"], c["expected"], result, verdict, took))

    T.log("")
    T.log("Fault matrix (QEMU %s -> %s, TCG, cpr-transfer; cpr-exec cases %s -> %s)" % (
        T.QEMU10, T.QEMU10, T.QEMU111, T.QEMU111))
    T.log("")
    T.log("| case | expected | result | pass/fail |")
    T.log("|---|---|---|---|")
    for name, exp, res, verdict, took in rows:
        T.log("| %s | %s | %s | %s (%.0f s) |" % (name, exp, res.replace("|", "/").replace("\n", " "), verdict, took))
    passed = sum(1 for r in rows if r[3] == "PASS")
    failed = sum(1 for r in rows if r[3] == "FAIL")
    skipped = sum(1 for r in rows if r[3] == "SKIP")
    T.log("")
    T.log("took %.1f s" % (time.monotonic() - t_all))
    T.log("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % skipped if skipped else ""))
    sys.exit(1 if failed else (T.SKIP if rows and skipped == len(rows) else 0))


if __name__ == "__main__":
    main()
