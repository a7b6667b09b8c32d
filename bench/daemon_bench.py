#!/usr/bin/python3
"""cprd's own cost (issue 3): resident memory with 0 and 50 defined VMs, and
the latency of GetVM and ListVMs with 50 VMs under 20 concurrent clients.

The clients speak raw Varlink (NUL-terminated JSON) on cprd's unix socket,
each from its own process (no GIL between them), one connection each, calls
back to back. It prints figures; it is not a test. It exits non-zero only if
something it drives fails (cprd does not start, a call returns an error).

Usage: daemon_bench.py [--cprd PATH] [--cprctl PATH] [--qemu PATH]
                       [--guest-image PATH] [--vms 50] [--clients 20]
                       [--calls 200] [--keep]
"""
import argparse
import multiprocessing
import os
import random
import socket
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BenchError, Cprd, MiB, Varlink, Workdir, loadavg, log,  # noqa: E402
                      median, percentile, proc_cpu_seconds, proc_status, require_built)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_RSS = 10 * MiB
TARGET_P99_MS = 10.0


def client(path, method, names, calls, barrier, conn, seed):
    """One client process: connect, wait for the others, then `calls`
    calls back to back; sends back the latencies in ms and the error count."""
    try:
        rnd = random.Random(seed)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(path)
        full = "io.cprd.Manager." + method

        def one(name):
            if name is None:
                msg = b'{"method":"%s"}\0' % full.encode()
            else:
                msg = b'{"method":"%s","parameters":{"name":"%s"}}\0' % (full.encode(), name.encode())
            t0 = time.perf_counter()
            s.sendall(msg)
            buf = b""
            while not buf.endswith(b"\0"):
                data = s.recv(1 << 20)
                if not data:
                    raise BenchError("cprd closed the connection")
                buf += data
            dt = (time.perf_counter() - t0) * 1000.0
            return dt, buf

        # One call outside the measurement, fully checked.
        import json
        _, first = one(rnd.choice(names) if names else None)
        reply = json.loads(first[:-1])
        if "error" in reply:
            raise BenchError(f"{method}: {reply['error']}")
        barrier.wait()
        lat = []
        errors = 0
        for _ in range(calls):
            dt, buf = one(rnd.choice(names) if names else None)
            if b'"error"' in buf[:48]:
                errors += 1
            lat.append(dt)
        s.close()
        conn.send((lat, errors, len(first)))
    except Exception as e:  # reported by the parent
        conn.send(([], -1, f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def load(cprd, method, names, clients, calls):
    """Runs `clients` processes of `calls` calls each; returns the stats."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    procs, pipes = [], []
    for i in range(clients):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=client, args=(cprd.socket, method, names, calls, barrier, w, i + 1))
        p.start()
        w.close()
        procs.append(p)
        pipes.append(r)
    barrier.wait(timeout=60)
    cpu0 = proc_cpu_seconds(cprd.pid)
    t0 = time.perf_counter()
    results = [r.recv() for r in pipes]
    wall = time.perf_counter() - t0
    cpu = proc_cpu_seconds(cprd.pid) - cpu0
    for p in procs:
        p.join(30)
    lat, errors, size = [], 0, 0
    for lst, err, sz in results:
        if err < 0:
            raise BenchError(f"a {method} client failed: {sz}")
        lat.extend(lst)
        errors += err
        size = sz
    if errors:
        raise BenchError(f"{errors} of {len(lat)} {method} calls returned an error")
    return {
        "calls": len(lat), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "max": max(lat), "mean": sum(lat) / len(lat), "rate": len(lat) / wall,
        "cpu": cpu, "wall": wall, "reply_bytes": size,
    }


def mib(b):
    return f"{b / MiB:.1f} MiB"


def verdict(ok):
    return "met" if ok else "NOT met"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cprd", default=os.path.join(REPO, "build/daemon/cprd"))
    ap.add_argument("--cprctl", default=os.path.join(REPO, "build/client/cprctl"))
    ap.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--guest-image", default=os.path.join(REPO, "build/tests/guest/cprd-guest.img"))
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--calls", type=int, default=200, help="calls per client")
    ap.add_argument("--keep", action="store_true", help="keep cprd's state folder")
    a = ap.parse_args()
    require_built("daemon_bench", a.cprd, a.qemu, a.guest_image)

    wd = Workdir("cprd-daemon-bench-", a.keep)
    cprd = Cprd(a.cprd, a.cprctl, wd.path)
    try:
        print(f"cprd daemon benchmark: {a.cprd}")
        print(f"host: {os.cpu_count()} CPUs, load average {loadavg()}")
        cprd.start()
        time.sleep(0.3)
        rss0 = proc_status(cprd.pid, "VmRSS")

        names = [f"vm{i}" for i in range(1, a.vms + 1)]
        create_ms = []
        rss1 = None
        v = cprd.connect()
        for n in names:
            if n == names[1]:
                time.sleep(0.1)
                rss1 = proc_status(cprd.pid, "VmRSS")  # one VM and the cached probe
            t0 = time.perf_counter()
            v.call("io.cprd.Manager.CreateVM", {"spec": {
                "name": n, "memory": 64, "qemu": a.qemu, "accel": "tcg",
                "disks": [{"path": a.guest_image, "format": "raw", "readonly": True}]}})
            create_ms.append((time.perf_counter() - t0) * 1000.0)
        listed = v.call("io.cprd.Manager.ListVMs")["vms"]
        v.close()
        if len(listed) != a.vms:
            raise BenchError(f"ListVMs shows {len(listed)} VMs, expected {a.vms}")
        time.sleep(0.3)
        rss50 = proc_status(cprd.pid, "VmRSS")

        base_get = load(cprd, "GetVM", names, 1, a.calls * 2)
        base_list = load(cprd, "ListVMs", None, 1, a.calls * 2)
        get = load(cprd, "GetVM", names, a.clients, a.calls)
        lst = load(cprd, "ListVMs", None, a.clients, a.calls)
        rss_after = proc_status(cprd.pid, "VmRSS")
        hwm = proc_status(cprd.pid, "VmHWM")

        print()
        print("Resident memory of cprd (VmRSS from /proc/PID/status)")
        print(f"  {'VMs':<34} {'VmRSS':>10}   target")
        print(f"  {'0 VMs':<34} {mib(rss0):>10}")
        print(f"  {f'{a.vms} VMs defined (not started)':<34} {mib(rss50):>10}   "
              f"< 10 MiB: {verdict(rss50 < TARGET_RSS)}")
        print(f"  {f'{a.vms} VMs, after the load below':<34} {mib(rss_after):>10}   "
              f"(peak VmHWM {mib(hwm)})")
        print(f"  {'1 VM defined (and the cached probe)':<34} {mib(rss1):>10}")
        print(f"  the first VM (with probing QEMU): +{(rss1 - rss0) / 1024:.0f} KiB; the {a.vms - 1} others: "
              f"+{(rss50 - rss1) / 1024:.0f} KiB in all ({(rss50 - rss1) / (a.vms - 1) / 1024:.1f} KiB each;\n"
              f"  heap that glibc kept after the probe's replies were freed is reused first, so this "
              f"can read 0)")
        print(f"  CreateVM: first {create_ms[0]:.1f} ms (probes QEMU), "
              f"the other {a.vms - 1} median {median(create_ms[1:]):.2f} ms, "
              f"max {max(create_ms[1:]):.2f} ms (probe cached)")
        print()
        print(f"Latency with {a.vms} VMs, raw Varlink, one connection per client, calls back to back")
        hdr = (f"  {'method':<8} {'clients':>7} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
               f"{'calls/s':>8} {'cprd CPU':>9} {'us/call':>8} {'reply':>8}   target p99 < 10 ms")
        print(hdr)
        for m, c, r in (("GetVM", 1, base_get), ("ListVMs", 1, base_list),
                        ("GetVM", a.clients, get), ("ListVMs", a.clients, lst)):
            tgt = f"{verdict(r['p99'] < TARGET_P99_MS)}" if c == a.clients else "(one client, for reference)"
            print(f"  {m:<8} {c:>7} {r['calls']:>6} {r['p50']:>8.2f} {r['p99']:>8.2f} {r['max']:>8.2f} "
                  f"{r['rate']:>8.0f} {r['cpu'] / r['wall'] * 100:>8.0f}% {r['cpu'] / r['calls'] * 1e6:>8.0f} "
                  f"{r['reply_bytes'] / 1024:>6.1f}KB"
                  f"   {tgt}")
        print()
        print(f"  cprd CPU: the share of one CPU cprd used during the run; us/call: cprd's CPU time per "
              f"call (its service time).\n  The {a.clients} client processes and cprd share "
              f"{os.cpu_count()} CPUs, so client-side scheduling is in the figures; with calls back to\n"
              f"  back cprd (single-threaded) is saturated and a call waits for the others in the "
              f"queue: latency ~ clients x service time.")
        print(f"  load average after: {loadavg()}")
        return 0
    except (BenchError, OSError) as e:
        print(f"daemon_bench: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        cprd.stop()
        wd.cleanup()


if __name__ == "__main__":
    sys.exit(main())
