#!/usr/bin/python3
# The systemd glue of cprd that needs no PID 1 and no container:
#  - sd_notify: cprd started with NOTIFY_SOCKET pointing at a datagram socket
#    of ours sends READY=1 and a STATUS= line, pings WATCHDOG=1 when
#    WATCHDOG_USEC asks for it, and says STOPPING=1 on SIGTERM;
#  - socket activation: systemd-socket-activate (package systemd) listens,
#    hands the socket to cprd on the first connection (LISTEN_FDS, with the
#    name "varlink" as cprd.socket gives it), and cprctl's calls on that
#    socket are answered.
# Usage: offline.py BUILD_DIR   (runs BUILD_DIR/daemon/cprd and
# BUILD_DIR/client/cprctl). Prints PASS/FAIL/SKIP per check and
# "N passed, M failed, K skipped". Exit 0 all passed or skipped, 1 a
# failure, 77 nothing could run. With CI=true a skipped check is a failure
# unless tests/ci-skips.txt lists it. Stdlib only.
import array
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ci_skips  # noqa: E402

AREA = "systemd_units_offline"
# Seconds for any one step: only catches a hang (slower under the sanitizers).
TIMEOUT = 15 * float(os.environ.get("CPRD_TEST_SLOWDOWN") or 1)
results = {"pass": 0, "fail": 0, "skip": 0}


def report(kind, name, detail=""):
    results[kind] += 1
    word = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[kind]
    print(f"{word} {name}" + (f": {detail}" if detail else ""), flush=True)


class Skip(Exception):
    pass


def check(name, fn):
    try:
        detail = fn()
    except Skip as e:
        status, text = ci_skips.skip(AREA, name, str(e))
        report(status.lower(), name, text)
        return False
    except Exception as e:  # a check fails, the others still run
        report("fail", name, f"{type(e).__name__}: {e}")
        return False
    report("pass", name, detail or "")
    return True


class Notify:
    """A NOTIFY_SOCKET listener: collects the messages sd_notify sends."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        self.messages = []  # list of dicts: one per datagram
        self.raw = []

    def poll(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(65536, socket.CMSG_SPACE(253 * 4))
        except socket.timeout:
            return None
        nfds = 0
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
                for fd in fds:
                    os.close(fd)
                nfds += len(fds)
        text = data.decode("utf-8", "replace")
        msg = {}
        for line in text.split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                msg.setdefault(k, v)
        msg["_fds"] = nfds
        self.messages.append(msg)
        self.raw.append(text)
        return msg

    def wait_for(self, pred, timeout):
        """Waits until a message (old or new) satisfies pred; returns it."""
        for m in self.messages:
            if pred(m):
                return m
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            m = self.poll(left)
            if m is not None and pred(m):
                return m

    def close(self):
        self.sock.close()


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def main():
    if len(sys.argv) != 2:
        print("usage: offline.py BUILD_DIR", file=sys.stderr)
        return 2
    build = os.path.abspath(sys.argv[1])
    cprd = os.path.join(build, "daemon", "cprd")
    cprctl = os.path.join(build, "client", "cprctl")
    for b in (cprd, cprctl):
        if not os.access(b, os.X_OK):
            print(f"SKIP offline: {b} is not built")
            return 77

    tmp = tempfile.mkdtemp(prefix="cprd-offline-")
    procs = []
    try:
        # ---- sd_notify ------------------------------------------------------
        state = os.path.join(tmp, "n-state")
        runtime = os.path.join(tmp, "n-run")
        notify = Notify(os.path.join(tmp, "notify.sock"))
        env = dict(os.environ)
        for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID", "CPRD_ADDRESS"):
            env.pop(k, None)
        env["NOTIFY_SOCKET"] = notify.path
        env["WATCHDOG_USEC"] = "2000000"  # 2 s: sd_watchdog_enabled() says ping every <= 1 s
        log = os.path.join(tmp, "notify-cprd.log")
        with open(log, "wb") as lf:
            p = subprocess.Popen([cprd, "--state-dir", state, "--runtime-dir", runtime,
                                  "--log-level", "debug"],
                                 stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, env=env)
        procs.append(p)

        def ready():
            m = notify.wait_for(lambda m: m.get("READY") == "1", TIMEOUT)
            if m is None:
                raise AssertionError(
                    f"no READY=1 within {TIMEOUT}s; got {notify.raw!r}; cprd "
                    f"{'exited ' + str(p.returncode) if p.poll() is not None else 'runs'}; log:\n"
                    + tail(log))
            return f"{notify.raw[notify.messages.index(m)]!r}"

        check("notify_ready", ready)

        def status():
            m = notify.wait_for(lambda m: m.get("STATUS"), 3)
            if m is None:
                raise AssertionError(f"no STATUS= line; got {notify.raw!r}")
            return f"STATUS={m['STATUS']!r}"

        check("notify_status", status)

        def mainpid_ok():
            # MAINPID is optional; if sent it must be cprd's own pid.
            bad = [m["MAINPID"] for m in notify.messages if "MAINPID" in m and m["MAINPID"] != str(p.pid)]
            if bad:
                raise AssertionError(f"MAINPID={bad[0]} but cprd is {p.pid}")

        def watchdog():
            # WATCHDOG_USEC=2s: cprd keeps pinging. Two more pings must come;
            # the deadline only catches pings that stopped (a fixed window
            # of a few seconds flaked under the sanitizers).
            before = sum(1 for m in notify.messages if m.get("WATCHDOG") == "1")
            t0 = time.monotonic()
            end = t0 + 2 * TIMEOUT
            pings = 0
            while pings < 2 and time.monotonic() < end:
                notify.poll(max(0.01, end - time.monotonic()))
                pings = sum(1 for m in notify.messages if m.get("WATCHDOG") == "1") - before
            if pings < 2:
                raise AssertionError(f"{pings} WATCHDOG=1 pings in {2 * TIMEOUT:.0f} s with WATCHDOG_USEC=2000000")
            mainpid_ok()
            return f"2 pings in {time.monotonic() - t0:.1f} s"

        check("notify_watchdog", watchdog)

        def stopping():
            if p.poll() is not None:
                raise AssertionError(f"cprd exited early with {p.returncode}")
            p.send_signal(signal.SIGTERM)
            m = notify.wait_for(lambda m: m.get("STOPPING") == "1", TIMEOUT)
            try:
                rc = p.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"cprd still runs {TIMEOUT}s after SIGTERM")
            if m is None:
                raise AssertionError(f"no STOPPING=1 after SIGTERM; got {notify.raw[-5:]!r}")
            if rc != 0:
                raise AssertionError(f"cprd exited {rc} after SIGTERM")

        check("notify_stopping", stopping)
        notify.close()

        # ---- socket activation ---------------------------------------------
        activate = shutil.which("systemd-socket-activate") or (
            "/usr/bin/systemd-socket-activate" if os.access("/usr/bin/systemd-socket-activate", os.X_OK) else None)
        address_path = os.path.join(tmp, "activated.sock")
        # cprd's own default socket would be runtime/io.cprd.Manager: a
        # different path, so an answer on address_path proves the handed-over
        # socket is the one served.
        runtime2 = os.path.join(tmp, "a-run")
        state2 = os.path.join(tmp, "a-state")
        alog = os.path.join(tmp, "activate-cprd.log")
        act = {}

        def start_activator():
            if not activate:
                raise Skip("systemd-socket-activate is not installed (package systemd)")
            env2 = dict(os.environ)
            for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CPRD_ADDRESS"):
                env2.pop(k, None)
            with open(alog, "wb") as lf:
                a = subprocess.Popen([activate, "-l", address_path, "--fdname=varlink",
                                      cprd, "--state-dir", state2, "--runtime-dir", runtime2,
                                      "--log-level", "debug"],
                                     stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, env=env2)
            procs.append(a)
            act["proc"] = a
            end = time.monotonic() + TIMEOUT
            while not os.path.exists(address_path):
                if a.poll() is not None:
                    raise AssertionError(f"systemd-socket-activate exited {a.returncode}:\n" + tail(alog))
                if time.monotonic() > end:
                    raise AssertionError(f"{address_path} did not appear")
                time.sleep(0.05)

        if check("activation_listen", start_activator):
            def listed():
                r = subprocess.run([cprctl, "--address", f"unix:{address_path}", "--json", "list"],
                                   capture_output=True, text=True, timeout=TIMEOUT + 5)
                if r.returncode != 0:
                    raise AssertionError(f"cprctl list exited {r.returncode}: {r.stderr.strip()}\n"
                                         f"cprd log:\n{tail(alog)}")
                doc = json.loads(r.stdout)
                vms = doc.get("vms") if isinstance(doc, dict) else doc
                if vms is None or not isinstance(vms, list):
                    raise AssertionError(f"unexpected list output {r.stdout!r}")
                return f"{len(vms)} VMs"

            check("activation_cprctl_list", listed)

            def same_process():
                a = act["proc"]
                # systemd-socket-activate execs cprd in its own process.
                if a.poll() is not None:
                    raise AssertionError(f"cprd exited {a.returncode}:\n" + tail(alog))
                with open(f"/proc/{a.pid}/comm") as f:
                    comm = f.read().strip()
                if comm != "cprd":
                    raise AssertionError(f"pid {a.pid} is {comm!r}, not cprd")
                own = os.path.join(runtime2, "io.cprd.Manager")
                if os.path.exists(own):
                    raise AssertionError(f"cprd bound its own socket {own} too")
                # A second call still works (the listening socket was kept).
                r = subprocess.run([cprctl, "--address", f"unix:{address_path}", "list"],
                                   capture_output=True, text=True, timeout=TIMEOUT + 5)
                if r.returncode != 0:
                    raise AssertionError(f"second cprctl list exited {r.returncode}: {r.stderr.strip()}")

            check("activation_uses_passed_socket", same_process)

            def activated_stop():
                a = act["proc"]
                stop(a)
                if a.returncode != 0:
                    raise AssertionError(f"cprd exited {a.returncode} on SIGTERM:\n" + tail(alog))

            check("activation_clean_exit", activated_stop)
    finally:
        for p in procs:
            stop(p)
        if os.environ.get("CPRD_TEST_KEEP"):
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"{results['pass']} passed, {results['fail']} failed, {results['skip']} skipped")
    if results["fail"]:
        return 1
    if results["pass"] == 0:
        ci_skips.skip_all(AREA, "no check could run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
