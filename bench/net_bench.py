#!/usr/bin/python3
"""What an upgrade costs a guest's network (issue 12, item 5).

The Linux test guest with one virtio-net NIC (`cprctl create ... --nic
bridge=br0`) runs under a private cprd inside a network namespace made here
(tests/integration/cprdtest.py's NetLab: a bridge br0 with 10.99.0.1/24,
nothing else; the guest is 10.99.0.2). From the namespace it is pinged every
10 ms for the whole run (the tests' net-ping helper), and, unless
--no-stream, each upgrade runs under a paced TCP stream from the guest. For
each QEMU pair and mode the VM is upgraded --upgrades times; per pair it
prints the guest pause (cprd's pauseMs), the pings lost per upgrade (a lost
ping counts for the upgrade during whose cprctl run it was sent) and the
longest gap between replies around each upgrade, each next to its target:

  - at most 1 ping lost per upgrade;
  - the longest gap within pause + 2 ping intervals (one for the ping that
    was sent just before the guest stopped, one for the first reply after
    it resumed, which waits for the queued pings to be read from the tap).

It prints figures; it is not a test. It exits non-zero only when something it
drives fails (cprd, the namespace, an upgrade that does not commit, a guest
that stops writing records or whose NIC does not come up). Needs root.

Usage: net_bench.py [--upgrades N] [--quick] [--pair FROM,TO,MODE]
                    [--no-stream] [--cprd PATH] [--cprctl PATH] [--qemu PATH]
                    [--qemu72 PATH] [--qemu111 PATH] [--linux-image PATH] [--keep]
"""
import argparse
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
# The namespace and the helpers that run in it are the integration tests'
# (NetLab, net-ping, net-stream): one copy, so the bench measures what the
# test checks.
sys.path.insert(1, os.path.join(REPO, "tests", "integration"))
from benchlib import (BenchError, Cprd, Workdir, loadavg, log, median, pick_pairs,  # noqa: E402
                      require_built)
from upgrade_bench import (LINUX_NET_RE, PAIR_DATA_BYTES, PAIR_MIB, Liveness, first_line,  # noqa: E402
                           machine_for, ms, run_cprctl_upgrade)
import cprdtest  # noqa: E402

# The pairs of issue 12 (item 3), in this order.
PAIRS = [("10.0", "10.0", "cpr-transfer"), ("10.0", "10.0", "local-migrate"),
         ("10.0", "11.1", "cpr-transfer"), ("7.2", "10.0", "local-migrate")]
LOST_TARGET = 1             # pings lost per upgrade, at most
GAP_SLACK_INTERVALS = 2     # longest gap at most pause + this many intervals
BASELINE_S = 2.0            # pinging before the first upgrade
SETTLE_S = 1.0              # between upgrades, so their gaps stay apart
STREAM_EVERY, STREAM_PAUSE = 100, 0.1   # the stream's pacing: ~1000 lines a second at most


# cprd's debug log shows each QMP message; QEMU stamps events with the
# realtime clock.
EVENT_RE = re.compile(r'^<\d>(\S+): QMP <- .*"event": "(STOP|RESUME)"')
STAMP_RE = re.compile(r'"seconds": (\d+), "microseconds": (\d+)')


def qmp_events(log_path, name):
    """[(realtime seconds, "STOP" or "RESUME")] of VM name's QEMUs, from
    cprd's debug log, in order."""
    out = []
    with open(log_path, errors="replace") as f:
        for line in f:
            m = EVENT_RE.match(line)
            t = STAMP_RE.search(line) if m and m.group(1) == name else None
            if t:
                out.append((int(t.group(1)) + int(t.group(2)) / 1e6, m.group(2)))
    return out


def ip(*args):
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


class NetPair:
    """One pair: a VM with a NIC in the lab, booted, upgraded N times while
    the namespace pings it; self.ups and self.ping hold what figures() reads."""

    def __init__(self, cprd, net, a, wd, idx, pair):
        self.cprd, self.net, self.a = cprd, net, a
        self.src, self.dst, self.mode = pair
        self.name = f"net{idx}"
        self.data = os.path.join(wd, f"{self.name}-data.img")
        self.created = False
        self.live = None
        # Per upgrade: cprctl's start and end (time.monotonic()), pauseMs,
        # totalMs, the stream's report and its end.
        self.ups = []
        self.ping = None
        self.tap = None
        self.boot_s = None

    def start(self):
        with open(self.data, "wb") as f:
            f.truncate(PAIR_DATA_BYTES)
        args = ["create", self.name, "--memory", str(PAIR_MIB), "--qemu", self.a.qemus[self.src],
                "--machine", machine_for(self.src, self.dst), "--accel", "tcg",
                "--disk", f"{self.a.linux_image},readonly", "--disk", self.data,
                "--nic", f"bridge={self.net.BRIDGE}"]
        p, _ = self.cprd.cprctl_run(*args)
        if p.returncode != 0:
            raise BenchError(f"cprctl {' '.join(args)}: {first_line(p.stderr or p.stdout)}")
        self.created = True
        t0 = time.monotonic()
        vm = self.cprd.start_vm(self.name)
        self.tap = (vm.get("nics") or [{}])[0].get("tap")
        self.live = Liveness("linux", f"{self.name} ({self.src})", lambda: self.cprd.console(self.name))
        self.live.wait_boot(t0)
        self.boot_s = self.live.boot_s
        want = f"{self.net.GUEST_ADDR}/{self.net.PREFIX}"
        deadline = time.monotonic() + 60
        while True:
            addrs = [m.group(1) for m in map(LINUX_NET_RE.fullmatch, self.console_lines()) if m]
            if addrs:
                if addrs != [want]:
                    raise BenchError(f"{self.name}: the guest's NIC came up as {addrs}, not {want}")
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: the guest's NIC did not come up within 60 s")
            time.sleep(0.1)
        self.warm_up()

    def console_lines(self):
        return [line.rstrip("\r") for line in self.cprd.console(self.name).split("\n")[:-1]]

    def warm_up(self, timeout=30):
        """The previous pair's guest had another MAC: forget it, and ping
        until the guest answers, so ARP is no part of the figures."""
        ip("-n", self.net.name, "neigh", "flush", "dev", self.net.BRIDGE)
        deadline = time.monotonic() + timeout
        while True:
            w = self.net.ping(interval=self.a.interval)
            time.sleep(1.0)
            w.stop()
            if w.result(30)["received"] > 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no answer to ping from {self.net.GUEST_ADDR} within {timeout} s")

    def run(self):
        self.ping = self.net.ping(interval=self.a.interval, reply_times=True)
        try:
            time.sleep(BASELINE_S)
            for rep in range(self.a.upgrades):
                self.upgrade(rep)
                time.sleep(SETTLE_S)
        finally:
            self.ping.stop()
        self.ping = self.ping.result(60)

    def upgrade(self, rep):
        stream = t_stream = None
        if self.a.stream:
            t_stream = time.monotonic()
            stream = self.net.stream(self.a.stream_lines, every=STREAM_EVERY, pause=STREAM_PAUSE, stall=60)
            time.sleep(0.5)  # connected and flowing before the upgrade starts
        t0 = time.monotonic()
        # QEMU's event timestamps are realtime; the pings' are monotonic.
        real_off = time.time() - t0
        rc, lines, err, wall = run_cprctl_upgrade(self.cprd, self.name, "--qemu", self.a.qemus[self.dst],
                                                  "--mode", self.mode, timeout=300)
        t1 = time.monotonic()
        result = next((o for _, o in reversed(lines) if "outcome" in o), None)
        if rc != 0 or not result or result.get("outcome") != "committed" or "pauseMs" not in result:
            raise BenchError(f"cprctl upgrade {self.name} {self.src} -> {self.dst} --mode {self.mode} "
                             f"(exit {rc}) did not commit: {result or first_line(err)}")
        if result.get("mode") != self.mode:
            raise BenchError(f"cprctl upgrade {self.name}: asked for {self.mode}, cprd did {result.get('mode')}")
        self.cprd.get_vm(self.name)  # remembers the new QEMU's pid for cleanup
        self.live.check(f"upgrade {rep + 1}")
        # When each of cprd's phases began, by its progress line's arrival:
        # the pause lies between "transfer" and "verify".
        marks = {}
        for t, o in lines:
            if o.get("phase"):
                marks.setdefault(o["phase"], t0 + t / 1000)
        up = {"start": t0, "end": t1, "pause": result["pauseMs"], "total": result.get("totalMs"),
              "wall": wall, "stream": None, "marks": marks, "stop": None, "resume": None}
        # The old QEMU's STOP during this upgrade, and the new one's RESUME.
        for ts, ev in qmp_events(self.cprd.log_path, self.name):
            t = ts - real_off
            if ev == "STOP" and up["stop"] is None and t0 <= t <= t1:
                up["stop"] = t
            elif ev == "RESUME" and up["stop"] is not None and up["resume"] is None and t >= up["stop"]:
                up["resume"] = t
        if stream:
            st = stream.result(120)
            st["covered"] = t_stream + st["seconds"] >= t1
            up["stream"] = st
        self.ups.append(up)
        log(f"  {self.src} -> {self.dst} {self.mode} upgrade {rep + 1}: pause {up['pause']:.1f} ms, "
            f"cprctl {wall:.0f} ms")

    def close(self):
        if self.created:
            self.cprd.stop_vm(self.name)
            self.cprd.delete_vm(self.name)
            self.created = False
        if os.path.exists(self.data):
            os.unlink(self.data)


def longest(gaps, a0, a1):
    """The longest (ms, start) of the gaps between replies that overlap a0..a1."""
    return max((((y - x) * 1000, x) for x, y in gaps if y > a0 and x < a1), default=(None, None))


def phase_at(up, t):
    """Where the upgrade was at time t: in cprd's phase X, or before cprctl started."""
    if t < up["start"]:
        return "before cprctl started"
    name = "preflight"
    for phase, at in sorted(up["marks"].items(), key=lambda kv: kv[1]):
        if at <= t:
            name = phase
    return name


def figures(pair):
    """Per upgrade: pings lost while its cprctl ran, the longest gap between
    replies that overlaps that time (and in which phase it began), that gap
    minus the pause, and the longest gap that overlaps the pause (the old
    QEMU's STOP to the new one's RESUME, by QEMU's timestamps), split into
    its part before STOP, the pause and its part after RESUME; and what
    happened outside the upgrades."""
    p = pair.ping
    lost_at, replies = p["lost_at"], p["reply_at"]
    gaps = list(zip(replies, replies[1:]))
    per = []
    for up in pair.ups:
        a0, a1 = up["start"], up["end"]
        lost = sum(1 for t in lost_at if a0 <= t <= a1)
        gap, at = longest(gaps, a0, a1)
        x = {"lost": lost, "gap": gap, "excess": None if gap is None else gap - up["pause"],
             "phase": None if at is None else phase_at(up, at), "pause_gap": None}
        if up["stop"] is not None and up["resume"] is not None:
            g, gx = longest(gaps, up["stop"], up["resume"])
            if g is not None:
                x["pause_gap"] = g
                x["before_stop"] = (up["stop"] - gx) * 1000
                x["after_resume"] = (gx + g / 1000 - up["resume"]) * 1000
        per.append(x)
    out_gaps = [(y - x) * 1000 for x, y in gaps
                if not any(y > up["start"] and x < up["end"] for up in pair.ups)]
    out_lost = [t for t in lost_at if not any(up["start"] <= t <= up["end"] for up in pair.ups)]
    return per, {"lost": len(out_lost),
                 "gap": max(out_gaps) if out_gaps else None,
                 "truncated": p["lost"] > len(lost_at)}


def bench_pair(cprd, net, a, wd, idx, pair):
    src, dst, mode = pair
    row = {"pair": pair, "skipped": None, "failed": None, "np": None}
    missing = [f"QEMU {v} ({a.qemus[v]}) is missing" for v in dict.fromkeys((src, dst))
               if not os.path.exists(a.qemus[v])]
    if missing:
        row["skipped"] = "; ".join(missing)
        log(f"  skipped: {row['skipped']}")
        return row
    np = row["np"] = NetPair(cprd, net, a, wd, idx, pair)
    try:
        np.start()
        log(f"  booted in {np.boot_s:.1f} s, tap {np.tap}")
        np.run()
        row["per"], row["outside"] = figures(np)
    except BenchError as e:
        row["failed"] = str(e)
        log(f"  FAILED: {e}")
    finally:
        row["load"] = loadavg().split()[0]
        np.close()
    return row


# ---- output --------------------------------------------------------------------------

def verdict(ok):
    return "met" if ok else "NOT met"


def print_report(a, rows):
    slack = GAP_SLACK_INTERVALS * a.interval * 1000
    print()
    print(f"Network across upgrades: Linux guest, {PAIR_MIB} MiB, TCG, one virtio-net NIC on a bridge in the "
          f"bench's network namespace;\nping every {a.interval * 1000:g} ms from the namespace, {a.upgrades} "
          f"upgrade(s) per pair{', each under a TCP stream from the guest' if a.stream else ''}")
    cols = ["from", "to", "mode", "pause median (max)", f"lost/upgrade max (<= {LOST_TARGET})",
            "longest gap median (max)", f"gap - pause max (<= {slack:g} ms)", "gap at the pause median (max)",
            "outside: lost, gap", "load"]
    table, notes = [], []
    for r in rows:
        src, dst, mode = r["pair"]
        if r["skipped"] or not r.get("per"):
            notes.append([src, dst, mode, f"skipped: {r['skipped']}" if r["skipped"]
                          else f"FAILED: {r['failed']}"])
            continue
        ups, per, out = r["np"].ups, r["per"], r["outside"]
        pauses = [u["pause"] for u in ups]
        lost = [x["lost"] for x in per]
        gapv = [x["gap"] for x in per if x["gap"] is not None]
        exc = [x["excess"] for x in per if x["excess"] is not None]
        pg = [x["pause_gap"] for x in per if x["pause_gap"] is not None]
        lost_ok = max(lost) <= LOST_TARGET
        gap_ok = len(exc) == len(per) and max(exc) <= slack
        table.append([src, dst, mode, f"{ms(median(pauses))} ({ms(max(pauses))})",
                      f"{max(lost)} (total {sum(lost)}) {verdict(lost_ok)}",
                      f"{ms(median(gapv))} ({ms(max(gapv) if gapv else None)})",
                      f"{ms(max(exc) if exc else None)} {verdict(gap_ok)}",
                      f"{ms(median(pg))} ({ms(max(pg))})" if pg else "-",
                      f"{out['lost']}, {ms(out['gap'])}", r["load"]])
        r["ok"] = (lost_ok, gap_ok)
    if table:
        widths = [max([len(cols[i])] + [len(t[i]) for t in table]) for i in range(len(cols))]
        print(" | ".join(cols[i].ljust(widths[i]) for i in range(len(cols))))
        print("-+-".join("-" * w for w in widths))
        for t in table:
            print(" | ".join(t[i].ljust(widths[i]) if i < 3 else t[i].rjust(widths[i]) for i in range(len(cols))))
    for n in notes:
        print(f"{n[0]} -> {n[1]} {n[2]}: {n[3]}")
    print()
    print("  pause: cprd's pauseMs (QEMU's STOP on the old QEMU to RESUME on the new one)")
    print("  lost/upgrade: pings sent while `cprctl upgrade` ran and never answered; target at most "
          f"{LOST_TARGET}")
    print("  longest gap: the longest time between two replies that overlaps the cprctl run; target: at "
          f"most the pause + {GAP_SLACK_INTERVALS} ping intervals ({slack:g} ms): the ping sent just before the "
          "stop, and the first reply after the resume")
    print("  gap at the pause: the longest gap overlapping the old QEMU's STOP to the new one's RESUME (QEMU's "
          "event timestamps, from cprd's debug log); details split it at STOP and RESUME")
    print("  outside: pings lost, and the longest gap, while no upgrade ran (the host's own noise)")
    print()
    print("Details")
    for r in rows:
        if not r.get("per"):
            continue
        np, p = r["np"], r["np"].ping
        print(f"  {np.src} -> {np.dst} {np.mode}: machine {machine_for(np.src, np.dst)}, tap {np.tap}, booted in "
              f"{np.boot_s:.1f} s; {p['sent']} pings, {p['lost']} lost, rtt median {p['median_rtt_ms']} ms "
              f"max {p['max_rtt_ms']} ms{'; lost_at truncated' if r['outside']['truncated'] else ''}")
        for i, (up, x) in enumerate(zip(np.ups, r["per"]), 1):
            st = up["stream"]
            s = ""
            if st:
                ok = (not st["reset"] and not st["error"] and st["end"] and st["first_bad"] is None
                      and st["lines"] == a.stream_lines)
                s = (f"; stream {st['bytes']} bytes {'all delivered' if ok else 'BROKEN: ' + str(st)}, "
                     f"longest stall {ms(st['max_gap_ms'])}{'' if st['covered'] else ', ended before cprctl did'}")
            print(f"    upgrade {i}: pause {ms(up['pause'])}, lost {x['lost']}, longest gap {ms(x['gap'])} "
                  f"(pause + {ms(x['excess'])}, began {where(x['phase'])}), at the pause {pause_gap(x)}, "
                  f"cprd totalMs {ms(up['total'])}, cprctl {ms(up['wall'])}{s}")
    print()
    print("Targets")
    measured = [r for r in rows if r.get("ok")]
    for k, what in ((0, f"at most {LOST_TARGET} ping lost per upgrade"),
                    (1, f"longest gap within the pause + {slack:g} ms")):
        if not measured:
            print(f"  {what}: not measured")
            continue
        each = ", ".join(f"{pair_name(r['pair'])} {verdict(r['ok'][k])}" for r in measured)
        print(f"  {what}: {verdict(all(r['ok'][k] for r in measured))} ({each})")
    left = [pair_name(r["pair"]) for r in rows if not r.get("ok")]
    if left:
        print(f"  not measured: {', '.join(left)}")
    print()
    print(f"load average at the end: {loadavg()} (the machine is shared: other work shows in every figure)")


def where(phase):
    return phase if phase is None or phase.startswith("before") else f"in {phase}"


def pause_gap(x):
    if x["pause_gap"] is None:
        return "- (no STOP and RESUME found in cprd's log)"
    b = x["before_stop"]
    # A reply can come just after STOP's timestamp (already on its way).
    start = f"{ms(b)} before STOP + pause" if b >= 0 else f"pause from {ms(-b)} after STOP"
    return f"{ms(x['pause_gap'])} = {start} + {ms(x['after_resume'])} after RESUME"


def pair_name(pair):
    return f"{pair[0]} -> {pair[1]} {pair[2]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cprd", default=os.path.join(REPO, "build/daemon/cprd"))
    ap.add_argument("--cprctl", default=os.path.join(REPO, "build/client/cprctl"))
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64", help="QEMU 10.0")
    ap.add_argument("--qemu72", default=os.environ.get("CPRD_QEMU72") or "/opt/cprd/qemu-system-x86_64-7.2")
    ap.add_argument("--qemu111", default=os.environ.get("CPRD_QEMU111") or "/opt/cprd/qemu-system-x86_64-11.1")
    ap.add_argument("--linux-image", default=os.environ.get("CPRD_LINUX_GUEST_IMAGE") or
                    os.path.join(REPO, "build/tests/guest/linux/cprd-linux.img"))
    ap.add_argument("--upgrades", type=int, help="upgrades per pair (default 5, 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2 upgrades per pair")
    ap.add_argument("--pair", action="append", metavar="FROM,TO,MODE",
                    help="only this pair, such as 10.0,11.1,cpr-transfer (repeatable)")
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                    help="a paced TCP stream from the guest during each upgrade (default on)")
    ap.add_argument("--stream-lines", type=int, default=4000,
                    help="64-byte lines per upgrade's stream (at most ~1000 a second; default 4000)")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between pings (default 0.01)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, cprd state)")
    a = ap.parse_args()
    require_built("net_bench", a.cprd, a.cprctl, a.qemu)
    if not os.path.exists(a.linux_image):
        sys.exit(f"net_bench: {a.linux_image} does not exist (build the target cprd-linux-guest, "
                 f"or pass --linux-image)")
    a.linux_image = os.path.abspath(a.linux_image)  # cprd wants absolute paths in a spec
    a.qemus = {"10.0": a.qemu, "7.2": a.qemu72, "11.1": a.qemu111}
    a.upgrades = a.upgrades or (2 if a.quick else 5)
    a.pairs = pick_pairs("net_bench", list(PAIRS), a.pair, PAIRS)

    wd = Workdir("cprd-net-bench-", a.keep)
    net = cprdtest.NetLab()
    net.name = f"cprdb-{os.getpid()}"  # the bench's, not a test's
    cprd = None
    rows = []
    try:
        print(f"cprd network benchmark: {a.cprd}, {a.cprctl}")
        print(f"host: {os.cpu_count()} CPUs, load average {loadavg()}")
        sys.stdout.flush()
        try:
            net.create()
        except cprdtest.NetLabUnavailable as e:
            raise BenchError(f"cannot make the network namespace: {e}")
        # Debug: its log gives QEMU's STOP and RESUME timestamps.
        cprd = Cprd(a.cprd, a.cprctl, os.path.join(wd.path, "cprd"), log_level="debug", prefix=net.prefix())
        cprd.start()
        for idx, pair in enumerate(a.pairs, 1):
            log(f"{pair_name(pair)}, load average {loadavg()}:")
            rows.append(bench_pair(cprd, net, a, wd.path, idx, pair))
        print_report(a, rows)
        failed = [pair_name(r["pair"]) for r in rows if r["failed"]]
        if failed:
            print(f"net_bench: FAILED: {', '.join(failed)} (see above)", file=sys.stderr)
            return 1
        return 0
    except (BenchError, OSError, AssertionError) as e:
        print(f"net_bench: FAILED: {e}", file=sys.stderr)
        if rows:
            print_report(a, rows)
        return 1
    finally:
        if cprd:
            cprd.stop()
        net.remove()  # the helpers by pid, then the namespace by its name
        wd.cleanup()


if __name__ == "__main__":
    sys.exit(main())
