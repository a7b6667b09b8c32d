#!/usr/bin/python3
"""Live snapshot and restore figures (issue 15).

For each guest size (default 1 GiB and 4 GiB): the boot-sector test guest
with every page of its RAM written (non-zero, so QEMU saves every page), a
snapshot with `cprctl snapshot`, then a restore of that file under another
name in the same cprd. Printed:

  - snapshot throughput: bytes QEMU wrote / time from migrate to completed
  - the guest's pause at the start (QEMU's STOP to RESUME events)
  - the guest's slowdown while QEMU writes: its own tick counter (guest time
    under TCG) per wall-clock second during the write, against before
  - the whole call (the checksum cprd computes over the file included)
  - restore: QEMU's load time per GiB of guest RAM, and the whole call

The issue sets no number for any of them, so each figure is printed with
"target: none set". The benchmark fails only when something it drives
fails. Needs root, QEMU 10.0 and the test guest; the snapshot files go
into the work folder (/var/tmp by default: 4 GiB for the 4 GiB guest).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "..", "build")


def ticks(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(fd, 16, B.GUEST_MAGIC_OFF)
    finally:
        os.close(fd)
    if data[:8] != B.GUEST_MAGIC:
        return None
    return int.from_bytes(data[8:16], "little")


class TickSampler(threading.Thread):
    """The guest's tick counter every 50 ms, with the wall clock."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.samples, self.stop_ev = path, [], threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            try:
                t = ticks(self.path)
            except OSError:
                t = None
            if t is not None:
                self.samples.append((time.monotonic(), t))
            time.sleep(0.05)

    def rate(self, t0, t1):
        """Ticks per second between wall times t0 and t1."""
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if len(s) < 2 or s[-1][0] - s[0][0] < 0.2:
            return None
        return (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])


def figure(name, value, unit):
    print(f"  {name:<44} {value:>10} {unit:<6}  target: none set by the issue", flush=True)


def run_size(cprd, args, size, snapdir):
    name = f"snap{size // B.GiB}g"
    mib = size // B.MiB
    cprd.create_vm(name, mib, args.qemu, args.guest_image)
    cprd.start_vm(name)
    path = cprd.ram_fd_path(name)
    deadline = time.monotonic() + 30
    while (ticks(path) or 0) < 2:
        if time.monotonic() > deadline:
            raise B.BenchError(f"{name}'s guest does not tick")
        time.sleep(0.05)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        t0 = time.monotonic()
        written = B.dirty_ram(fd, size)
    finally:
        os.close(fd)
    B.log(f"{name}: wrote {written // B.MiB} MiB of guest RAM in {time.monotonic() - t0:.1f} s")

    sampler = TickSampler(path)
    sampler.start()
    time.sleep(3)
    state = os.path.join(snapdir, f"{name}.state")
    p = subprocess.Popen([cprd.cprctl, "--address", cprd.address, "snapshot", name, "--to", state, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    write_start = write_end = None
    result = None
    for line in p.stdout:
        d = json.loads(line)
        if d.get("phase") == "write" and write_start is None:
            write_start = time.monotonic()
        if d.get("phase") == "verify" and write_end is None:
            write_end = time.monotonic()
        if "file" in d and "bytes" in d:
            result = d
    p.wait()
    after = time.monotonic()
    time.sleep(2)
    sampler.stop_ev.set()
    sampler.join()
    if p.returncode != 0 or not result:
        raise B.BenchError(f"snapshot of {name} failed: {p.stderr.read()}")
    before_rate = sampler.rate(write_start - 3, write_start - 0.1)
    during_rate = sampler.rate(write_start + 0.2, write_end) if write_end else None
    print(f"{B.fmt_size(size)} guest ({written // B.MiB} MiB of RAM written before):", flush=True)
    figure("snapshot file", f"{result['bytes'] / 1e6:.0f}", "MB")
    figure("snapshot throughput (migrate to completed)", f"{result['mbPerSec']:.0f}", "MB/s")
    figure("guest pause at the start (STOP to RESUME)", f"{result.get('pauseMs', 0):.1f}", "ms")
    figure("snapshot call, checksum included", f"{result['totalMs'] / 1000:.1f}", "s")
    if before_rate and during_rate:
        figure("guest progress during the write vs before", f"{100 * during_rate / before_rate:.0f}", "%")
        figure("  (ticks/s before, during)", f"{before_rate:.1f}, {during_rate:.1f}", "")
    else:
        figure("guest progress during the write vs before", "n/a", "")

    cprd.stop_vm(name)
    restored = name + "-r"
    t0 = time.monotonic()
    p2, _ = cprd.cprctl_run("restore", restored, "--from", state, "--json", timeout=1800)
    if p2.returncode != 0:
        raise B.BenchError(f"restore of {name} failed: {p2.stderr}")
    r = B.json_lines(p2.stdout)[-1]["result"] if "result" in B.json_lines(p2.stdout)[-1] \
        else B.json_lines(p2.stdout)[-1]
    cprd.get_vm(restored)
    rpath = cprd.ram_fd_path(restored)
    t = ticks(rpath)
    time.sleep(1.5)
    if ticks(rpath) is None or ticks(rpath) <= t:
        raise B.BenchError(f"{restored} does not tick after the restore")
    figure("restore: QEMU's load, per GiB of guest RAM", f"{r['loadMs'] / 1000 / (size / B.GiB):.2f}", "s/GiB")
    figure("restore call, checksum included", f"{r['totalMs'] / 1000:.1f}", "s")
    cprd.stop_vm(restored)
    cprd.delete_vm(restored)
    cprd.delete_vm(name)
    for f in (state, state + ".json"):
        os.unlink(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cprd", default=os.path.join(BUILD, "daemon/cprd"))
    ap.add_argument("--cprctl", default=os.path.join(BUILD, "client/cprctl"))
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--guest-image", default=os.path.join(BUILD, "tests/guest/cprd-guest.img"))
    ap.add_argument("--sizes", default="1G,4G", help="guest sizes, such as 1G,4G")
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    B.require_built("snapshot_bench", args.cprd, args.cprctl, args.guest_image)
    sizes = [B.parse_size(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="cprd-snapshot-bench-", dir=args.workdir)
    snapdir = os.path.join(work, "snapshots")
    os.mkdir(snapdir, 0o700)
    cprd = B.Cprd(args.cprd, args.cprctl, os.path.join(work, "cprd"))
    try:
        cprd.start()
        print(f"cprd snapshot bench: QEMU {args.qemu}, TCG, load {B.loadavg()}", flush=True)
        for size in sizes:
            run_size(cprd, args, size, snapdir)
    finally:
        cprd.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            B.log(f"kept {work}")


if __name__ == "__main__":
    try:
        main()
    except B.BenchError as e:
        B.log(f"snapshot_bench: {e}")
        sys.exit(1)
