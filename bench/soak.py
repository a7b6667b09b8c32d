#!/usr/bin/python3
"""Endurance (issue 13, part 3): many upgrades of one Linux guest in a row.

One private cprd, one VM: the Linux test guest (tests/guest/README.md,
"cprd-linux") with 256 MiB, its boot disk read-only and a data disk of its
own, to which it writes an fsync'd record about four times a second the
whole time. The VM is upgraded N times (default 1000) from QEMU Q to Q,
alternating cpr-transfer and local-migrate, one `cprctl upgrade --json`
after the other; after each upgrade the guest must report a new record
before the next one starts.

Every --every upgrades (default 100) it prints cprd's resident memory
(VmRSS), its fd count, its children, the number of entries under its
runtime folder, and the guest pause so far (p50, p99, max of pauseMs). At
the end it stops the VM, reads the data disk and prints each target beside
its figure:

  - RSS, fd count and runtime folder entries flat: the same after the last
    upgrade as after the first checkpoint (RSS within --rss-slack KiB);
  - every upgrade committed;
  - no record lost: the disk holds every record the guest reported on its
    console, each intact and of the one boot, and the guest booted once.

It exits 1 when a target is missed or something it drives fails. A
benchmark, not a test: ctest runs a short one (100 upgrades) in the
sanitizer build only (tests/integration/CMakeLists.txt, label soak).

Usage: soak.py [--upgrades N] [--every K] [--cprd PATH] [--cprctl PATH]
               [--qemu PATH] [--linux-image PATH] [--data-mib M]
               [--rss-slack KIB] [--no-rss-target] [--keep]
"""
import argparse
import hashlib
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (MiB, BenchError, Cprd, Workdir, json_lines, loadavg, log, percentile,  # noqa: E402
                      proc_status)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import ci_skips  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "soak"
AREA = "soak"  # ctest's name for the short run (tests/ci-skips.txt)
MEMORY_MIB = 256
MACHINE = "pc-i440fx-10.0"
MODES = ("cpr-transfer", "local-migrate")
SECTOR = 512
REC_MAGIC = "CPRDREC1"
BOOT_RE = re.compile(r"cprd-linux: boot ([0-9a-f-]{36})")
REC_RE = re.compile(r"cprd-linux: rec (\d+) ram (\S+)")
# Slow hosts and the sanitizer build (CPRD_TEST_SLOWDOWN, as the tests).
SLOWDOWN = float(os.environ.get("CPRD_TEST_SLOWDOWN") or 1)
BOOT_TIMEOUT = 120 * SLOWDOWN
RECORD_TIMEOUT = 30 * SLOWDOWN


# ---- the guest's console and disk --------------------------------------------

class ConsoleTail:
    """Follows the VM's console.log as cprd writes it, across its rotation
    to console.log.1 at 1 MiB, and keeps what the guest said: boot ids, the
    record numbers reported (in order), and any other cprd-linux line."""

    def __init__(self, vm_dir):
        self.cur = os.path.join(vm_dir, "console.log")
        self.old = os.path.join(vm_dir, "console.log.1")
        self.ino = None
        self.offset = 0
        self.partial = b""
        self.boots, self.recs, self.bad_ram, self.trouble = [], [], [], []

    def _read(self, path, ino, offset):
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != ino:
                    return None
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return None

    def poll(self):
        try:
            st = os.stat(self.cur)
        except FileNotFoundError:
            return
        if self.ino is not None and st.st_ino != self.ino:
            # Rotated: the rest of the file we followed is console.log.1.
            self._feed(self._read(self.old, self.ino, self.offset) or b"")
            self.ino, self.offset = None, 0
        if self.ino is None:
            self.ino = st.st_ino
        data = self._read(self.cur, self.ino, self.offset)
        if data:
            self.offset += len(data)
            self._feed(data)

    def _feed(self, data):
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            m = BOOT_RE.fullmatch(line)
            if m:
                self.boots.append(m.group(1))
                continue
            m = REC_RE.fullmatch(line)
            if m:
                self.recs.append(int(m.group(1)))
                if m.group(2) != "ok":
                    self.bad_ram.append(int(m.group(1)))
                continue
            if "cprd-linux:" in line:
                self.trouble.append(line)

    @property
    def last(self):
        return self.recs[-1] if self.recs else -1

    def check(self, what):
        """Raises when the guest booted again or reported trouble."""
        if len(self.boots) > 1:
            raise BenchError(f"{what}: the guest booted again ({len(self.boots)} boot lines)")
        if self.bad_ram:
            raise BenchError(f"{what}: the guest found its RAM pattern changed (record {self.bad_ram[0]})")
        if self.trouble:
            raise BenchError(f"{what}: the guest says: {self.trouble[0]}")

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            self.check(what)
            if pred():
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not within {timeout:.0f} s (the last record reported "
                                 f"was {self.last})")
            time.sleep(0.05)


def parse_record(sector):
    """(n, boot id, ram) of a record sector, None for zeros; ValueError when
    it is not a whole record (tests/guest/README.md, "The record")."""
    if sector == bytes(len(sector)):
        return None
    text, nl, pad = sector.partition(b"\n")
    if not nl or pad != bytes(len(pad)):
        raise ValueError("not one line padded with zeros")
    fields = text.decode("ascii", "replace").split(" ")
    if len(fields) != 5 or fields[0] != REC_MAGIC:
        raise ValueError(f"not a {REC_MAGIC} record: {text[:80]!r}")
    if hashlib.sha256(" ".join(fields[:4]).encode()).hexdigest() != fields[4]:
        raise ValueError("bad checksum")
    return int(fields[1]), fields[2], fields[3]


def disk_lost(path, boot_id, reported):
    """The records among those reported that the disk does not hold intact
    at their sector, of boot boot_id with the RAM pattern ok: [(n, why)]."""
    lost = []
    with open(path, "rb") as f:
        for n in reported:
            f.seek(n * SECTOR)
            try:
                rec = parse_record(f.read(SECTOR))
            except ValueError as e:
                lost.append((n, str(e)))
                continue
            if rec is None:
                lost.append((n, "zero sector"))
            elif rec != (n, boot_id, "ok"):
                lost.append((n, f"holds {rec}"))
    return lost


# ---- cprd from outside -----------------------------------------------------------

def children_of(ppid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(rest[1]) == ppid:
                out.append((int(d), rest[0]))
    return sorted(out)


def client_sockets(socket_path):
    """Inodes of the connections cprd accepted on its Varlink socket."""
    out = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            p = line.split()
            if len(p) >= 8 and p[7] == socket_path and p[3] != "00010000":
                out.add(f"socket:[{p[6]}]")
    return out


def held_fds(cprd):
    """cprd's fds without client connections (a cprctl that just exited
    may not be closed yet on cprd's side), and without those of a write of
    metrics.prom under way: its unnamed file in the runtime folder, its
    temporary name, or the folder, fsync'd."""
    clients = client_sockets(cprd.socket)
    base = f"/proc/{cprd.pid}/fd"
    n = 0
    for fd in os.listdir(base):
        try:
            t = os.readlink(os.path.join(base, fd))
            r = cprd.runtime_dir
            writing = t == r or t.startswith(r + "/#") or t.startswith(r + "/metrics.prom")
            if t not in clients and not writing:
                n += 1
        except OSError:
            pass
    return n


def tree_entries(root):
    n = 0
    for _, dirs, files in os.walk(root):
        n += len(dirs) + len(files)
    return n


def sample(cprd):
    return {"rss": proc_status(cprd.pid, "VmRSS"), "fds": held_fds(cprd),
            "children": children_of(cprd.pid), "entries": tree_entries(cprd.runtime_dir)}


# ---- the run ------------------------------------------------------------------------

def upgrade(cprd, qemu, mode):
    """One `cprctl upgrade --json`: (result or None, stderr, wall ms)."""
    p, wall = cprd.cprctl_run("upgrade", NAME, "--qemu", qemu, "--mode", mode, "--json",
                              timeout=300 * SLOWDOWN)
    result = None
    for o in json_lines(p.stdout):
        if "outcome" in o:
            result = o
    return result, p.stderr.strip(), wall


def fmt_kib(b):
    return f"{b // 1024} KiB"


def print_checkpoint(i, s, pauses, walls, con, t0):
    ch = " ".join(f"{pid}{'' if st != 'Z' else '(zombie)'}" for pid, st in s["children"])
    print(f"after {i:5d}: RSS {fmt_kib(s['rss']):>10}  fds {s['fds']:3d}  children {len(s['children'])} "
          f"[{ch}]  runtime entries {s['entries']:3d}  pause p50 {percentile(pauses, 50):6.1f} "
          f"p99 {percentile(pauses, 99):6.1f} max {max(pauses):6.1f} ms  upgrade wall p50 "
          f"{percentile(walls, 50):5.0f} ms  records {con.last + 1}  {time.monotonic() - t0:6.0f} s  "
          f"load {loadavg()}", flush=True)


def run(a, cprd, wd):
    data = os.path.join(wd, "data.img")
    with open(data, "wb") as f:
        f.truncate(a.data_mib * MiB)
    p, _ = cprd.cprctl_run("create", NAME, "--memory", str(MEMORY_MIB), "--qemu", a.qemu,
                           "--machine", MACHINE, "--accel", "tcg",
                           "--disk", a.linux_image + ",readonly", "--disk", data)
    if p.returncode != 0:
        raise BenchError(f"cprctl create: {p.stderr.strip()}")
    t_boot = time.monotonic()
    cprd.start_vm(NAME)
    con = ConsoleTail(os.path.join(cprd.state_dir, "vms", NAME))
    con.wait(lambda: con.boots and con.last >= 3, BOOT_TIMEOUT, "the guest's boot line and first records")
    log(f"booted in {time.monotonic() - t_boot:.1f} s, boot id {con.boots[0]}")

    pauses, walls, failures, checkpoints = [], [], [], []
    by_mode = {m: [] for m in MODES}
    t0 = time.monotonic()
    for i in range(1, a.upgrades + 1):
        mode = MODES[(i - 1) % len(MODES)]
        before = con.last
        result, err, wall = upgrade(cprd, a.qemu, mode)
        walls.append(wall)
        if result and result.get("outcome") == "committed":
            if "pauseMs" in result:
                pauses.append(result["pauseMs"])
                by_mode[mode].append(result["pauseMs"])
        else:
            failures.append((i, mode, result.get("outcome") if result else None,
                             (result or {}).get("reason") or err[-300:]))
            log(f"upgrade {i} ({mode}) did not commit: {failures[-1][2]}: {failures[-1][3]}")
            vm = cprd.get_vm(NAME)
            if vm.get("state") != "running":
                raise BenchError(f"after upgrade {i} the VM is {vm.get('state')}: {failures[-1]}")
        cprd.get_vm(NAME)  # remembers the new QEMU's pid for cleanup
        # The guest wrote on through the upgrade: a new record before the next.
        con.wait(lambda: con.last > before, RECORD_TIMEOUT, f"a new record after upgrade {i}")
        if i % a.every == 0 or i == a.upgrades:
            s = sample(cprd)
            checkpoints.append((i, s))
            print_checkpoint(i, s, pauses or [float("nan")], walls, con, t0)
    took = time.monotonic() - t0

    # The disk, once the guest no longer writes.
    cprd.stop_vm(NAME)
    con.poll()
    con.check("at the end")
    expected = list(range(con.last + 1))
    order_ok = con.recs == expected
    lost = disk_lost(data, con.boots[0], con.recs)
    return {"checkpoints": checkpoints, "pauses": pauses, "by_mode": by_mode, "walls": walls, "failures": failures,
            "took": took, "con": con, "lost": lost, "order_ok": order_ok}


def targets(a, r):
    """[(target, figure, met)]."""
    cps = r["checkpoints"]
    first_i, first = cps[0]
    last_i, last = cps[-1]
    span = f"after {first_i} -> after {last_i}"
    out = []
    if a.rss_target:
        grew = last["rss"] - first["rss"]
        out.append((f"cprd RSS flat (within {a.rss_slack} KiB)",
                    f"{fmt_kib(first['rss'])} -> {fmt_kib(last['rss'])} ({span}, {grew // 1024:+d} KiB)",
                    grew <= a.rss_slack * 1024))
    else:
        # A skip, counted as one (and in CI allowed only by tests/ci-skips.txt).
        status, text = ci_skips.skip(AREA, "rss_flat", "--no-rss-target: under ASan freed memory "
                                     "stays in its quarantine, so RSS grows by design")
        print(f"{status} rss_flat: {text}")
        out.append(("cprd RSS flat (not judged: --no-rss-target)",
                    f"{fmt_kib(first['rss'])} -> {fmt_kib(last['rss'])} ({span})",
                    None if status == "SKIP" else False))
    out.append(("cprd fd count flat", f"{first['fds']} -> {last['fds']} ({span})", first["fds"] == last["fds"]))
    out.append(("runtime folder entries flat", f"{first['entries']} -> {last['entries']} ({span})",
                first["entries"] == last["entries"]))
    kids = [len(s["children"]) for _, s in cps]
    zombies = sum(1 for _, s in cps for _, st in s["children"] if st == "Z")
    out.append(("cprd's children: the guest's QEMU only", f"{min(kids)}-{max(kids)} at every checkpoint, "
                f"{zombies} zombies", max(kids) == 1 and min(kids) == 1 and zombies == 0))
    n_ok = a.upgrades - len(r["failures"])
    out.append(("every upgrade committed", f"{n_ok} of {a.upgrades}", not r["failures"]))
    con = r["con"]
    out.append(("no record lost", f"{len(r['lost'])} of {len(con.recs)} reported records missing on the disk"
                f"{'' if r['order_ok'] else ' (reported out of order)'}; {len(con.boots)} boot",
                not r["lost"] and r["order_ok"] and len(con.boots) == 1))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upgrades", type=int, default=1000, help="upgrades in a row (default 1000)")
    ap.add_argument("--every", type=int, default=100, help="figures every K upgrades (default 100)")
    ap.add_argument("--cprd", default=os.path.join(REPO, "build/daemon/cprd"))
    ap.add_argument("--cprctl", default=os.path.join(REPO, "build/client/cprctl"))
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--linux-image", default=os.environ.get("CPRD_LINUX_GUEST_IMAGE") or
                    os.path.join(REPO, "build/tests/guest/linux/cprd-linux.img"))
    ap.add_argument("--data-mib", type=int, default=64,
                    help="the guest's data disk (default 64 MiB: about 9 hours of records)")
    ap.add_argument("--rss-slack", type=int, default=256, metavar="KIB",
                    help="RSS growth still counted as flat (default 256 KiB)")
    ap.add_argument("--rss-target", action=argparse.BooleanOptionalAction, default=True,
                    help="judge RSS (off under ASan, whose quarantine keeps freed memory)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, cprd state)")
    a = ap.parse_args()
    if a.upgrades < 1 or a.every < 1:
        sys.exit("soak: --upgrades and --every must be at least 1")
    if os.geteuid() != 0:
        ci_skips.skip_all(AREA, "the soak needs root (cprd's write methods are root's)")
    if not os.access(a.qemu, os.X_OK):
        ci_skips.skip_all(AREA, f"QEMU {a.qemu} is missing or not executable")
    for path in (a.cprd, a.cprctl, a.linux_image):
        if not os.path.exists(path):
            print(f"soak: {path} does not exist (build first: cmake --build build)", flush=True)
            print("0 passed, 1 failed")
            return 1
    a.linux_image = os.path.abspath(a.linux_image)

    wd = Workdir("cprd-soak-", a.keep)
    cprd = Cprd(a.cprd, a.cprctl, os.path.join(wd.path, "cprd"))
    try:
        print(f"cprd soak: {a.upgrades} upgrades of the Linux guest ({MEMORY_MIB} MiB, {MACHINE}, TCG), "
              f"{' and '.join(MODES)} alternating, {a.qemu} -> itself")
        print(f"cprd {a.cprd}; host {os.cpu_count()} CPUs, load average {loadavg()}", flush=True)
        cprd.start()
        r = run(a, cprd, wd.path)
    except (BenchError, OSError, subprocess.TimeoutExpired) as e:
        print(f"soak: FAILED: {e}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    finally:
        cprd.stop()
        wd.cleanup()

    p = r["pauses"] or [float("nan")]
    print()
    print(f"{a.upgrades} upgrades in {r['took']:.0f} s ({r['took'] / a.upgrades * 1000:.0f} ms each, "
          f"waiting for a record after each); load average {loadavg()}")
    print(f"pause (pauseMs, {len(r['pauses'])} upgrades): p50 {percentile(p, 50):.1f} ms, "
          f"p99 {percentile(p, 99):.1f} ms, max {max(p):.1f} ms")
    for m, v in r["by_mode"].items():
        if v:
            print(f"  {m}: p50 {percentile(v, 50):.1f} ms, p99 {percentile(v, 99):.1f} ms, max {max(v):.1f} ms "
                  f"({len(v)} upgrades)")
    print(f"records: {len(r['con'].recs)} reported (0..{r['con'].last}), {len(r['lost'])} missing on the disk")
    for i, mode, outcome, why in r["failures"][:10]:
        print(f"  upgrade {i} ({mode}): {outcome}: {why}")
    for n, why in r["lost"][:10]:
        print(f"  record {n}: {why}")
    rows = targets(a, r)
    print()
    print("| target | figure | |")
    print("|---|---|---|")
    for what, fig, met in rows:
        print(f"| {what} | {fig} | {'skipped' if met is None else 'met' if met else 'NOT met'} |")
    passed = sum(1 for _, _, m in rows if m)
    failed = sum(1 for _, _, m in rows if m is False)
    skipped = sum(1 for _, _, m in rows if m is None)
    print(f"{passed} passed, {failed} failed{f', {skipped} skipped' if skipped else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
