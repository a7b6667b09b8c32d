#!/usr/bin/python3
"""Chaos (issue 13, part 4): upgrades in a loop while cprd is killed with
SIGKILL at random moments and started again.

One cprd in a private folder, one VM: the Linux test guest (tests/guest/
README.md) with 256 MiB, writing an fsync'd record to its data disk about
four times a second and reporting each on its console. 50 rounds (--rounds,
$CPRD_CHAOS_ROUNDS), cpr-transfer and local-migrate alternating, 10.0 ->
10.0. In each round `cprctl upgrade --json` starts, and in most rounds cprd
is killed with SIGKILL after a random delay (anywhere from preflight to a
moment after the upgrade ended) and started again on the same folders.
There is no systemd here, so no fd store: the new cprd finds the QEMUs by
pid, takes the guest's RAM memfd and console back from QEMU (pidfd_getfd)
and settles an interrupted upgrade from its journal.

After every round, once cprd has settled:
  - the guest runs on exactly one QEMU, the one cprd names, and goes on
    writing records;
  - its RAM memfd is in cprd's custody, the same one (inode) as at the start;
  - its history names every upgrade that committed: an upgrade whose client
    saw `committed` is in it, with that pid; one that was interrupted is
    settled once, as committed (the guest moved to another QEMU) or rolled
    back (it did not), or leaves no record when it was killed before its
    journal existed; never lost, never doubled, never `failed`; earlier
    records stay as they were;
  - the VM's runtime folder holds qemu.json and the recovery socket of the
    guest's QEMU, nothing else (no journal, no upgrade folder, no socket of
    a QEMU that is gone); cprd's children are at most the guest's QEMU, and
    cprd holds fds of the same kinds as at the start.
At the end no record the guest reported is missing on its data disk.

The random choices come from a seed printed at the start; set it with
--seed N or $CPRD_CHAOS_SEED to replay the same choices (the timing of the
host still varies). Prints one line per round, then "N passed, M failed"
(a check per round, and the disk at the end). Needs root, QEMU 10.0 and the
Linux test guest; exits 77 (skipped) without them.

Run: /usr/bin/python3 tests/faults/chaos.py [--rounds N] [--seed N]
Environment as in tests/integration/cprdtest.py, plus CPRD_LINUX_GUEST_IMAGE.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.dont_write_bytecode = True
import ci_skips  # noqa: E402
import cprdtest as T  # noqa: E402
import faults as F  # noqa: E402
import test_linux_guest as L  # noqa: E402

AREA = "chaos"
NAME = "chaos"
MODES = ("cpr-transfer", "local-migrate")
KILL_SHARE = 0.75       # rounds in which cprd is killed
SETTLE_S = 30 * T.SLOWDOWN
# Real trouble the guest reports (tests/guest/README.md); another line with
# "cprd-linux:" in it is a console line cut by a cprd killed between
# reading the console and writing console.log, noted, not a failure.
TROUBLE_RE = re.compile(r"cprd-linux: (insmod \S+ failed|boot \S+ no data disk|rec \d+ write failed|"
                        r"data disk full at rec \d+)")
PHASE_RE = re.compile(r"upgrade (preflight|spawn-target|transfer|resume|verify|retire|commit|rollback)[: ]")


class Fail(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Fail(what)


class Chaos:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        # Short paths: the upgrade's sockets must fit in sun_path (108).
        self.tmp = tempfile.mkdtemp(prefix="cc-")
        self.cprd = T.Cprd(self.tmp)
        self.data = os.path.join(self.tmp, "data.img")
        self.upgrade_proc = None
        self.walls = []     # seconds of upgrades that ran without a kill
        self.history = []   # the history as last checked
        self.kills = {}     # phase cprd was in when killed: count
        self.settled = {}   # what a round with a kill ended as: count
        self.notes = []

    # -- cprd ----------------------------------------------------------------------

    def start_cprd(self):
        self.cprd.start()
        # After a kill the old socket file is still there: wait for answers.
        T.wait_until(lambda: self.cprd.ctl("list", "--json", timeout=10).rc == 0, 15 * T.SLOWDOWN,
                     what="cprd to answer")

    def kill_cprd(self):
        self.cprd.proc.kill()
        self.cprd.proc.wait(10)
        self.cprd._log.close()

    def ok(self, *args, **kw):
        r = self.cprd.ctl(*args, **kw)
        check(r.rc == 0, repr(r))
        return r

    def status(self):
        return self.ok("status", NAME, "--json").json

    def held_fd_kinds(self):
        """{kind: count} of cprd's fds, as faults.py counts them."""
        out = {}
        for t in self.cprd.held_fds().values():
            k = "socket" if t.startswith("socket:") else "pipe" if t.startswith("pipe:") else \
                t.replace(" (deleted)", "")
            out[k] = out.get(k, 0) + 1
        return out

    # -- the guest -----------------------------------------------------------------

    def report(self):
        return L.console_report(self.cprd.console(NAME))

    def last_reported(self):
        recs = self.report()[1]
        return recs[-1][0] if recs else -1

    def boot(self):
        with open(self.data, "wb") as f:
            f.truncate(L.DATA_DISK_BYTES)
        self.ok("create", NAME, "--memory", L.MEMORY_MIB, "--qemu", T.QEMU10, "--machine", "pc-i440fx-10.0",
                "--accel", "tcg", "--disk", L.LINUX_IMAGE + ",readonly", "--disk", self.data)
        t0 = time.monotonic()
        vm = self.ok("start", NAME, "--json").json
        self.cprd.seen_pids[vm["pid"]] = T.cmdline(vm["pid"])
        boots = T.wait_until(lambda: self.report()[0], L.BOOT_TIMEOUT, interval=0.2,
                             what="the guest's boot line")
        self.boot_id = boots[0]
        T.wait_until(lambda: self.last_reported() >= 3, 30 * T.SLOWDOWN, interval=0.1,
                     what="the guest's first records")
        T.wait_until(lambda: set(self.cprd.children()) == {vm["pid"]}, 20, what="the probe to be gone")
        self.pid = vm["pid"]
        self.memfd_ino = self.cprd.memfd_inode(NAME)
        check(self.memfd_ino is not None, "cprd holds no memfd for the guest")
        self.fd_kinds = self.held_fd_kinds()
        T.log("booted in %.1f s, boot id %s, QEMU pid %d, memfd inode %d, cprd fds %s" % (
            time.monotonic() - t0, self.boot_id, self.pid, self.memfd_ino, self.fd_kinds))

    # -- one round -------------------------------------------------------------------

    def window(self):
        """Kills land anywhere in [0, this): a little past a typical upgrade,
        as the client sees it."""
        return 1.3 * (statistics.median(self.walls) if self.walls else 1.0)

    def round(self, i):
        mode = MODES[(i - 1) % len(MODES)]
        kill = self.rng.random() < KILL_SHARE
        delay = self.rng.uniform(0, self.window())
        log_from = len(self.cprd.read_log())
        pid_before, last_before = self.pid, self.last_reported()
        t0 = time.monotonic()
        p = self.cprd.ctl_bg("upgrade", NAME, "--qemu", T.QEMU10, "--mode", mode, "--json")
        phase = None
        if kill:
            time.sleep(max(0.0, t0 + delay - time.monotonic()))
            ended = p.poll() is not None
            text = self.cprd.read_log()[log_from:]
            phases = PHASE_RE.findall(text)
            phase = "after the upgrade" if ended else (phases[-1] if phases else "before preflight")
            self.kill_cprd()
        out, err = p.communicate(timeout=300)
        wall = time.monotonic() - t0
        result = None
        for line in out.splitlines():
            if line.startswith("{") and '"outcome"' in line:
                try:
                    result = json.loads(line)
                except ValueError:
                    pass
        if kill:
            self.kills[phase] = self.kills.get(phase, 0) + 1
            self.start_cprd()
        elif result is None or result.get("outcome") != "committed":
            raise Fail("an upgrade without a fault did not commit: rc %d, %s, %s" % (p.returncode, result,
                                                                                      err.strip()[-300:]))
        else:
            self.walls.append(wall)
        settled = self.settle_and_check(i, pid_before, result)
        # The guest goes on writing.
        T.wait_until(lambda: self.last_reported() > last_before, 30 * T.SLOWDOWN, interval=0.05,
                     what="a new record from the guest after round %d" % i)
        if kill:
            self.settled[settled] = self.settled.get(settled, 0) + 1
        T.log("round %2d %-13s %s -> %s; pid %d%s; records to %d" % (
            i, mode, ("cprd killed at %.3f s (%s), client saw %s" % (
                delay, phase, result.get("outcome") if result else "no result")) if kill else
            "no kill, %s in %.2f s" % (result["outcome"], wall),
            settled, self.pid, "" if self.pid != pid_before else " (same)", self.last_reported()))

    def settle_and_check(self, i, pid_before, result):
        """Waits until cprd has settled; checks the guarantee; returns what
        the round came to (committed, rolled-back, no record)."""
        rdir = os.path.join(self.cprd.runtime_dir, "vms", NAME)

        def settled():
            vm = self.status()
            if vm["state"] != "running" or not isinstance(vm.get("pid"), int):
                return None
            if [n for n in os.listdir(rdir) if n.startswith("upgrade")]:
                return None
            q = F.qemus_by_marker(NAME)
            return (vm, q) if q == [vm["pid"]] else None
        try:
            vm, _ = T.wait_until(settled, SETTLE_S, interval=0.1, what="cprd to settle")
        except AssertionError:
            vm = self.status()
            raise Fail("not settled within %.0f s: state %s, pid %s, QEMUs of the guest %s, runtime folder %s" % (
                SETTLE_S, vm["state"], vm.get("pid"), F.qemus_by_marker(NAME), sorted(os.listdir(rdir))))
        pid = vm["pid"]
        if pid not in self.cprd.seen_pids:
            self.cprd.seen_pids[pid] = T.cmdline(pid)

        # Custody: the same memfd.
        ino = self.cprd.memfd_inode(NAME)
        check(ino == self.memfd_ino, "the guest's RAM memfd is not in custody: inode %s, was %d" % (ino, self.memfd_ino))

        # The history: earlier records unchanged, at most one new one, and
        # it says what happened.
        ups = [(u.get("time"), u.get("outcome"), u.get("fromPid"), u.get("toPid")) for u in vm.get("upgrades", [])]
        check(ups[:len(self.history)] == self.history,
              "earlier history records changed: %s -> %s" % (self.history[-3:], ups[:len(self.history)][-3:]))
        new = ups[len(self.history):]
        check(len(new) <= 1, "round %d left %d records (doubled): %s" % (i, len(new), new))
        rec = new[0] if new else None
        check(not rec or rec[1] in ("committed", "rolled-back"), "round %d was settled as %s" % (i, rec))
        if result is not None:
            check(rec is not None and rec[1] == result["outcome"],
                  "the client saw %s, the history has %s" % (result["outcome"], rec))
            if result["outcome"] == "committed":
                check(result.get("pid") == pid == rec[3], "committed to pid %s, the history says %s, cprd "
                      "names %d" % (result.get("pid"), rec[3], pid))
        if pid != pid_before:
            check(rec is not None and rec[1] == "committed" and rec[2] == pid_before and rec[3] == pid,
                  "the guest moved from pid %d to %d, but the history has %s" % (pid_before, pid, rec))
            what = "committed"
        else:
            check(not rec or (rec[1] == "rolled-back" and rec[2] == pid_before),
                  "the guest stayed on pid %d, but the history has %s" % (pid, rec))
            what = rec[1] if rec else "no record"
        self.history = ups
        self.pid = pid

        # Nothing left behind: in the VM's runtime folder only qemu.json and
        # the recovery monitor socket of the QEMU that runs the guest.
        want = {"qemu.json", os.path.basename(self.qmp_socket(pid))}
        try:
            T.wait_until(lambda: set(os.listdir(rdir)) == want, 10, what="the runtime folder")
        except AssertionError:
            raise Fail("the VM's runtime folder holds %s, expected %s" % (sorted(os.listdir(rdir)), sorted(want)))

        def children_ok():
            ch = self.cprd.children()
            return set(ch) <= {pid} and all(s != "Z" for s, _ in ch.values())
        try:
            T.wait_until(children_ok, 20, what="cprd's children")
        except AssertionError:
            raise Fail("cprd's children are %s; the guest's QEMU is %d" % (self.cprd.children(), pid))
        try:
            T.wait_until(lambda: self.held_fd_kinds() == self.fd_kinds, 10, what="cprd's fds")
        except AssertionError:
            raise Fail("cprd holds fds %s, at the start %s" % (self.held_fd_kinds(), self.fd_kinds))
        return what

    def qmp_socket(self, pid):
        for arg in T.cmdline(pid):
            if arg.startswith("socket,id=qmp-recovery,path="):
                return arg[len("socket,id=qmp-recovery,path="):].split(",")[0]
        raise Fail("QEMU %d has no recovery monitor: %s" % (pid, T.cmdline(pid)))

    # -- the end ------------------------------------------------------------------------

    def check_disk(self):
        """Stops the VM; every record the guest reported is on the disk."""
        self.ok("stop", NAME, "--force")
        T.wait_until(lambda: self.status()["state"] == "stopped", 30, what="the VM to stop")
        boots, recs, other = self.report()
        check(boots == [self.boot_id], "the guest booted more than once: %s" % boots)
        trouble = [l for l in other if TROUBLE_RE.search(l)]
        check(not trouble, "the guest reported trouble: %s" % trouble[:3])
        check(not [n for n, ram in recs if ram != "ok"], "the guest found its RAM pattern changed")
        nums = [n for n, _ in recs]
        check(nums == sorted(set(nums)), "record numbers on the console go back or repeat")
        gaps = sorted(set(range(nums[-1] + 1)) - set(nums))
        if other or gaps:
            self.notes.append("console: %d lines cut, %d record numbers not on it (%s); the disk is what counts" % (
                len(other), len(gaps), gaps[:5]))
        last = nums[-1]
        with open(self.data, "rb") as f:
            disk = f.read()
        problems = L.disk_problems(disk, self.boot_id, last)
        check(not problems, "the data disk lacks records the guest reported: %s" % problems[:5])
        return "records 0..%d reported, all on the data disk" % last

    def teardown(self, failed):
        if self.cprd.proc and self.cprd.proc.poll() is None:
            try:
                self.cprd.stop()
            except Exception as e:
                T.log("teardown: %s" % e)
                failed = True
        elif self.cprd.proc and not self.cprd._log.closed:
            self.cprd._log.close()
        for pid in F.qemus_by_marker(NAME):
            T.log("teardown: killing leftover QEMU pid %d" % pid)
            T.kill_pid(pid, signal.SIGKILL)
        if failed or T.KEEP:
            T.log("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("CPRD_CHAOS_ROUNDS") or 50))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("CPRD_CHAOS_SEED") or 0) or None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        ci_skips.skip_all(AREA, "the chaos test needs root (it starts cprd and QEMU)")
    T.require_binaries(T.QEMU10)
    if not os.path.exists(L.LINUX_IMAGE):
        print("cannot find the Linux test guest %s; build the project first (target cprd-linux-guest) or "
              "set CPRD_LINUX_GUEST_IMAGE" % L.LINUX_IMAGE, flush=True)
        sys.exit(1)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    T.log("chaos: seed %d (replay with CPRD_CHAOS_SEED=%d), %d rounds, cprd %s" % (seed, seed, a.rounds, T.CPRD))
    t_all = time.monotonic()
    c = Chaos(seed)
    passed = failed = 0
    try:
        c.start_cprd()
        c.boot()
        for i in range(1, a.rounds + 1):
            c.round(i)
            passed += 1
        T.log("end: %s" % c.check_disk())
        passed += 1
    except (Fail, AssertionError, subprocess.TimeoutExpired, OSError) as e:
        failed += 1
        T.log("FAIL (seed %d): %s" % (seed, e))
        lines = c.cprd.read_log().splitlines()
        T.log("---- cprd log (last 80 of %d lines, without QMP traffic) ----" % len(lines))
        for l in [l for l in lines if "QMP <-" not in l and "QMP ->" not in l][-80:]:
            T.log("  | " + l)
    if c.teardown(failed > 0) and not failed:
        failed += 1
    T.log("cprd killed in %d of %d rounds; when killed it was in: %s" % (
        sum(c.kills.values()), a.rounds, ", ".join("%s %d" % kv for kv in sorted(c.kills.items())) or "-"))
    T.log("those rounds were settled as: %s" % (", ".join("%s %d" % kv for kv in sorted(c.settled.items())) or "-"))
    for n in c.notes:
        T.log("note: %s" % n)
    T.log("seed %d; took %.1f s" % (seed, time.monotonic() - t_all))
    T.log("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
