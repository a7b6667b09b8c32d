#!/usr/bin/python3
"""Hostile clients against a real cprd, over its socket (issue 6).

Each case sends something a careless or malicious client could send: deep
nesting, huge numbers, NULs and invalid UTF-8, names that escape folders,
oversized and endless messages, floods of connections, readers that never
read, calls from an unprivileged uid. Each must get a clear error or a clean
close, and after every case:

  - cprd is the same process (same pid) and answers a fresh ListVMs;
  - no VM changed (names, states, QEMU pids, the guest RAM memfd's inode);
  - cprd holds exactly the fds it held before (no connection or fd leaked);
  - the live guest still runs (its counter, read from the memfd, advances).

One VM runs (QEMU 10.0, TCG) through the whole run, another is only
defined, so "nothing changed" covers a live guest too.

Run as root: /usr/bin/python3 tests/hostile/hostile.py [CASE ...]
Environment: CPRD_BIN, CPRCTL_BIN, CPRD_GUEST_IMAGE, CPRD_QEMU10 (see
tests/integration/cprdtest.py); CPRD_TEST_KEEP=1 keeps the folder;
CPRD_TEST_SLOWDOWN scales the deadlines (see cprdtest.py).
Prints PASS/FAIL/SKIP per case and "N passed, M failed" at the end. A case
that needs the live VM is skipped without QEMU 10.0; with CI=true that
fails (tests/ci-skips.txt).
"""

import json
import os
import resource
import select
import shutil
import socket
import struct
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import cprdtest as T  # noqa: E402
import ci_skips  # noqa: E402  (cprdtest put tests/ on the path)

MANAGER = "io.cprd.Manager."
MESSAGE_MAX = 16 * 1024 * 1024      # VL_MESSAGE_MAX
PER_UID_MAX = 1024                  # VL_CONNECTIONS_PER_UID_MAX
WATCHERS_MAX = 256                  # MANAGER_WATCHERS_MAX
# CPRD_TEST_MESSAGE_TIMEOUT_MS given to cprd: short, so the slow-client
# cases see it expire; longer under the sanitizers, where all runs slower.
TEST_TIMEOUT_MS = int(2000 * T.SLOWDOWN)
NOBODY = 65534


class Fail(Exception):
    pass


class Skip(Exception):
    """A case (or part of one) that cannot run here: no live VM."""


def check(cond, what):
    if not cond:
        raise Fail(what)


# ---- a raw Varlink client -------------------------------------------------------

class Conn:
    """One connection; sends raw bytes, reads NUL-terminated replies."""

    def __init__(self, path, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking while connecting: with a timeout set, Python makes the
        # socket non-blocking and a full backlog fails with EAGAIN.
        self.s.connect(path)
        self.s.settimeout(timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def call(self, method, params=None, **flags):
        m = {"method": method if "." in method else MANAGER + method}
        if params is not None:
            m["parameters"] = params
        m.update(flags)
        self.send(json.dumps(m).encode() + b"\0")

    def reply(self, timeout=10.0):
        """The next reply as a dict, or "closed" when cprd closed first."""
        self.s.settimeout(timeout)
        while b"\0" not in self.buf:
            try:
                d = self.s.recv(1 << 20)
            except (ConnectionResetError, BrokenPipeError):
                d = b""
            if not d:
                return "closed"
            self.buf += d
        msg, self.buf = self.buf.split(b"\0", 1)
        try:
            return json.loads(msg.decode("utf-8"))
        except UnicodeDecodeError:
            return {"not-utf8": msg.decode("utf-8", "backslashreplace")}

    def closed(self, timeout=10.0):
        """True when cprd closes the connection (after any replies)."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(1 << 20)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def error_of(r):
    return r.get("error") if isinstance(r, dict) else r


def param(r, key):
    return (r.get("parameters") or {}).get(key) if isinstance(r, dict) else None


# ---- the run ---------------------------------------------------------------------

class Hostile:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="cprd-hostile-")
        os.chmod(self.tmp, 0o755)  # the unprivileged caller must reach the socket
        self.cprd = T.Cprd(self.tmp)
        self.vm_running = None
        self.results = []

    # -- setup ---------------------------------------------------------------------

    def start(self):
        os.environ["CPRD_TEST_MESSAGE_TIMEOUT_MS"] = str(TEST_TIMEOUT_MS)
        try:
            self.cprd.start()
        finally:
            del os.environ["CPRD_TEST_MESSAGE_TIMEOUT_MS"]
        self.pid = self.cprd.pid
        os.chmod(self.cprd.runtime_dir, 0o755)
        os.chmod(self.cprd.socket, 0o666)
        img = T.GUEST_IMAGE + ",readonly"
        if T.qemu_usable(T.QEMU10):
            r = self.cprd.ctl("create", "live", "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg",
                              "--disk", img)
            check(r.rc == 0, repr(r))
            r = self.cprd.ctl("start", "live", "--json")
            check(r.rc == 0, repr(r))
            self.vm_running = "live"
            T.wait_until(lambda: (self.cprd.read_guest("live") or (b"",))[0] == T.GUEST_MAGIC, 30,
                         what="the live guest to boot")
            r = self.cprd.ctl("create", "idle", "--memory", 64, "--qemu", T.QEMU10, "--accel", "tcg",
                              "--disk", img)
            check(r.rc == 0, repr(r))
        else:
            T.log("QEMU 10.0 is missing: running without VMs")
        time.sleep(0.5)  # cprd has closed the connections of the setup
        self.baseline = self.snapshot()
        T.log("cprd pid %d, %d fds, VMs %s" % (self.pid, len(self.baseline["fds"]),
                                                 self.baseline["vms"]))

    def snapshot(self):
        # The fds first: the ListVMs connection below is closed on our
        # side before cprd notices, and must not be counted.
        fds = self.cprd.fds()
        vms = self.list_vms()
        return {
            "vms": sorted((v["name"], v["state"], v.get("pid")) for v in vms),
            "fds": fds,
            "memfd": self.cprd.memfd_inode(self.vm_running) if self.vm_running else None,
        }

    def list_vms(self, timeout=10.0):
        c = Conn(self.cprd.socket, timeout)
        try:
            c.call("ListVMs")
            r = c.reply(timeout)
        finally:
            c.close()
        check(isinstance(r, dict) and "error" not in r, "a fresh ListVMs failed: %r" % (r,))
        return r["parameters"]["vms"]

    # -- the invariants after every case ------------------------------------------

    def invariants(self):
        check(self.cprd.proc.poll() is None, "cprd exited (status %s)" % self.cprd.proc.returncode)
        check(self.cprd.pid == self.pid, "cprd's pid changed")
        t0 = time.monotonic()
        self.list_vms(timeout=5 * T.SLOWDOWN)
        check(time.monotonic() - t0 < 5 * T.SLOWDOWN, "a fresh ListVMs took %.1f s" % (time.monotonic() - t0))
        deadline = time.monotonic() + 8
        while True:
            now = self.snapshot()
            if now == self.baseline or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        check(now["vms"] == self.baseline["vms"], "VMs changed: %s -> %s" % (self.baseline["vms"], now["vms"]))
        check(now["memfd"] == self.baseline["memfd"], "the live guest's memfd changed")
        if now["fds"] != self.baseline["fds"]:
            b, a = self.baseline["fds"], now["fds"]
            extra = {k: v for k, v in a.items() if b.get(k) != v}
            gone = {k: v for k, v in b.items() if a.get(k) != v}
            raise Fail("cprd's fds changed: %d before, %d after; new %s; gone %s" %
                       (len(b), len(a), dict(list(extra.items())[:8]), dict(list(gone.items())[:8])))
        if self.vm_running:
            g = self.cprd.read_guest(self.vm_running)
            check(g and g[0] == T.GUEST_MAGIC, "cannot read the live guest's counter: %r" % (g,))
            try:
                T.wait_until(lambda: (self.cprd.read_guest(self.vm_running) or (b"", -1))[1] > g[1], 10 * T.SLOWDOWN,
                             what="the live guest's counter to advance")
            except AssertionError as e:
                raise Fail("the live guest stopped running: %s" % e)
        log = self.cprd.read_log()
        for bad in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
            check(bad not in log, "cprd's log has a sanitizer report (%s)" % bad)

    # -- running the cases ----------------------------------------------------------

    def run(self, cases):
        for name, fn in cases:
            t0 = time.monotonic()
            status, detail = "PASS", ""
            try:
                fn(self)
                self.invariants()
            except Skip as e:
                status, detail = ci_skips.skip(T.area(), name, str(e))
                try:
                    self.invariants()
                except Exception as e2:
                    status, detail = "FAIL", "%s; then %s" % (detail, e2)
            except Fail as e:
                status, detail = "FAIL", str(e)
            except Exception as e:
                status, detail = "FAIL", "%s\n%s" % (e, traceback.format_exc())
            took = time.monotonic() - t0
            self.results.append((name, status, detail, took))
            T.log("%s: %s (%.1f s)%s" % (status, name, took, (" -- " + detail) if detail else ""))
            if status == "FAIL" and self.cprd.proc.poll() is not None:
                T.log("cprd is gone; stopping here")
                T.log("\n".join(self.cprd.read_log().splitlines()[-60:]))
                break

    def need_vm(self, what="this case"):
        if not self.vm_running:
            raise Skip("%s needs the live VM, and QEMU 10.0 (%s) is missing" % (what, T.QEMU10))

    def teardown(self):
        """Stops cprd; a cprd that does not exit 0 on SIGTERM is a failure."""
        try:
            self.cprd.stop()
        except AssertionError as e:
            self.results.append(("teardown", "FAIL", str(e), 0.0))
            T.log("FAIL: teardown -- %s" % e)
        if T.KEEP or any(s == "FAIL" for _, s, _, _ in self.results):
            T.log("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers for the cases ------------------------------------------------------

    def conn(self, timeout=10.0):
        return Conn(self.cprd.socket, timeout)

    def one(self, method, params=None, **flags):
        c = self.conn()
        try:
            c.call(method, params, **flags)
            return c.reply()
        finally:
            c.close()

    def raw(self, data, replies=1, timeout=10.0):
        """Sends bytes; returns up to `replies` replies, then "closed" if
        cprd closed the connection after them (checked briefly)."""
        c = self.conn(timeout)
        out = []
        try:
            try:
                c.send(data)
            except (BrokenPipeError, ConnectionResetError):
                return out + ["closed"]
            while True:
                r = c.reply(timeout if len(out) < replies else 0.3)
                out.append(r)
                if r == "closed":
                    return out
        except socket.timeout:
            if len(out) < replies:
                out.append("timeout")
            return out
        finally:
            c.close()

    def expect_error(self, r, error, **params):
        check(isinstance(r, dict), "expected %s, got %r" % (error, r))
        check(r.get("error") == error, "expected %s, got %r" % (error, r))
        for k, v in params.items():
            check(param(r, k) == v, "expected %s=%r in %r" % (k, v, r))

    def expect_invalid_spec(self, spec, field):
        r = self.one("CreateVM", {"spec": spec})
        self.expect_error(r, MANAGER + "InvalidSpec", field=field)
        check(param(r, "reason"), "InvalidSpec without a reason: %r" % r)
        return r

    def as_nobody(self, method, params=None, **flags):
        """Calls from uid/gid 65534 in a forked child; returns the reply."""
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(rfd)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                c = self.conn()
                c.call(method, params, **flags)
                r = c.reply()
                os.write(wfd, json.dumps(r).encode())
            except BaseException as e:
                os.write(wfd, json.dumps({"child-exception": repr(e)}).encode())
            finally:
                os._exit(0)
        os.close(wfd)
        data = b""
        while True:
            d = os.read(rfd, 1 << 16)
            if not d:
                break
            data += d
        os.close(rfd)
        os.waitpid(pid, 0)
        r = json.loads(data)
        check(not (isinstance(r, dict) and "child-exception" in r), "the unprivileged call failed: %r" % r)
        return r

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def spec(self, **over):
        s = {"name": "h1", "memory": 64, "qemu": T.QEMU10, "accel": "tcg",
             "disks": [{"path": T.GUEST_IMAGE, "readonly": True}]}
        s.update(over)
        return {k: v for k, v in s.items() if v is not None}


# ---- the cases --------------------------------------------------------------------

CASES = []


def case(fn):
    CASES.append((fn.__name__, fn))
    return fn


# JSON structure and numbers

@case
def deep_nesting_100k(h):
    """100,000 nested arrays: over json-c's depth limit (64) -> closed."""
    r = h.raw(b'{"method":"io.cprd.Manager.ListVMs","parameters":{"outdated":' + b"[" * 100000 +
              b"]" * 100000 + b"}}\0")
    check(r == ["closed"], "expected a clean close, got %r" % r[:2])


@case
def deep_nesting_object_keys(h):
    """Deep objects in the spec, just under the depth limit -> InvalidSpec."""
    deep = {}
    for _ in range(55):
        deep = {"a": deep}
    h.expect_invalid_spec(h.spec(name=deep), "name")


@case
def nesting_unclosed(h):
    """Half a deeply nested document, then the NUL -> closed."""
    r = h.raw(b'{"method":"io.cprd.Manager.ListVMs","parameters":' + b'{"a":' * 5000 + b"\0")
    check(r == ["closed"], "expected a clean close, got %r" % r[:2])


@case
def huge_number_float(h):
    """memory: 1e400 (a float, and infinite) -> InvalidSpec memory."""
    r = h.raw(b'{"method":"io.cprd.Manager.CreateVM","parameters":{"spec":{"name":"h1","memory":1e400,'
              b'"qemu":"/usr/bin/qemu-system-x86_64"}}}\0')
    check(r and isinstance(r[0], dict), "no reply: %r" % r)
    h.expect_error(r[0], MANAGER + "InvalidSpec", field="memory")


@case
def huge_integer(h):
    """memory: 10^23 (beyond 64 bits) -> InvalidSpec memory."""
    r = h.raw(b'{"method":"io.cprd.Manager.CreateVM","parameters":{"spec":{"name":"h1",'
              b'"memory":99999999999999999999999,"qemu":"/usr/bin/qemu-system-x86_64"}}}\0')
    check(r and isinstance(r[0], dict), "no reply: %r" % r)
    h.expect_error(r[0], MANAGER + "InvalidSpec", field="memory")


@case
def negative_int64_min(h):
    """cpus: -2^63 -> InvalidSpec cpus; StopVM timeoutSec -2^63 -> InvalidParameter."""
    h.expect_invalid_spec(h.spec(cpus=-2 ** 63), "cpus")
    r = h.one("StopVM", {"name": "idle" if h.vm_running else "x", "timeoutSec": -2 ** 63})
    check(error_of(r) in ("org.varlink.service.InvalidParameter", MANAGER + "NoSuchVM"),
          "expected InvalidParameter, got %r" % r)


@case
def float_for_int_parameter(h):
    """StopVM timeoutSec: 1.5 -> InvalidParameter timeoutSec (table check)."""
    r = h.one("StopVM", {"name": h.vm_running or "x", "timeoutSec": 1.5})
    h.expect_error(r, "org.varlink.service.InvalidParameter", parameter="timeoutSec")


@case
def float_for_int_spec(h):
    """memory: 64.0 and cpus: 1.0 -> InvalidSpec naming each."""
    h.expect_invalid_spec(h.spec(memory=64.0), "memory")
    h.expect_invalid_spec(h.spec(cpus=1.0), "cpus")


@case
def readlog_extreme_offsets(h):
    """ReadLog offset -2^63 and 2^63-1 -> an answer, no crash."""
    h.need_vm()
    for off in (-2 ** 63, 2 ** 63 - 1):
        r = h.one("ReadLog", {"name": h.vm_running, "offset": off})
        check(isinstance(r, dict) and "error" not in r, "ReadLog offset %d: %r" % (off, r))


# Strings

@case
def nul_in_vm_name_lookup(h):
    """GetVM/StopVM "live\\u0000junk" must not act on "live"."""
    h.need_vm()
    r = h.one("GetVM", {"name": h.vm_running + "\u0000junk"})
    check(isinstance(r, dict) and r.get("error") in (MANAGER + "NoSuchVM", "org.varlink.service.InvalidParameter"),
          "GetVM {\"name\": \"%s\\u0000junk\"} answered %r: the name was cut at the NUL" % (h.vm_running, r))
    r = h.one("StopVM", {"name": h.vm_running + "\u0000junk", "force": True})
    check(isinstance(r, dict) and r.get("error") in (MANAGER + "NoSuchVM", "org.varlink.service.InvalidParameter"),
          "StopVM {\"name\": \"%s\\u0000junk\"} answered %r: the name was cut at the NUL" % (h.vm_running, r))


@case
def nul_in_spec_strings(h):
    """CreateVM with \\u0000 in name, qemu, machine and a disk path -> InvalidSpec."""
    h.expect_invalid_spec(h.spec(name="h1\u0000x"), "name")
    h.expect_invalid_spec(h.spec(qemu=T.QEMU10 + "\u0000x"), "qemu")
    h.expect_invalid_spec(h.spec(machine="pc\u0000x"), "machine")
    h.expect_invalid_spec(h.spec(disks=[{"path": T.GUEST_IMAGE + "\u0000x"}]), "disks[0].path")


@case
def nul_in_method(h):
    """A NUL inside the method name -> closed."""
    r = h.raw(json.dumps({"method": MANAGER + "ListVMs\u0000x"}).encode() + b"\0")
    check(r == ["closed"], "expected a clean close, got %r" % r[:2])


@case
def invalid_utf8_in_string(h):
    """Invalid UTF-8 in a name: stray bytes, an overlong NUL (C0 80), a
    UTF-8-encoded surrogate (ED A0 80), a truncated sequence -> closed."""
    accepted = []
    for bad in (b"\xff\xfe", b"\x80", b"\xe2\x82", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"):
        r = h.raw(b'{"method":"io.cprd.Manager.GetVM","parameters":{"name":"a' + bad + b'"}}\0')
        if r == ["closed"]:
            continue
        check(r and isinstance(r[0], dict), "invalid UTF-8 %r: got %r" % (bad, r[:2]))
        accepted.append("%s -> %s" % (bad.hex(), "a reply that is not UTF-8" if "not-utf8" in r[0]
                                      else error_of(r[0])))
    check(not accepted, "invalid UTF-8 was taken as a name and answered: %s (cprd must close the "
          "connection: proto/message.c vl_message_parse)" % "; ".join(accepted))


@case
def invalid_utf8_in_key(h):
    """Invalid UTF-8 in a key and in the method -> closed."""
    r = h.raw(b'{"method":"io.cprd.Manager.ListVMs","parameters":{"\xff":1}}\0')
    check(r == ["closed"], "got %r" % r[:2])
    r = h.raw(b'{"method":"io.cprd.Manager.List\xc3VMs"}\0')
    check(r == ["closed"], "got %r" % r[:2])


@case
def lone_surrogate(h):
    """A lone surrogate escape in a VM name -> InvalidSpec name."""
    r = h.raw(b'{"method":"io.cprd.Manager.CreateVM","parameters":{"spec":{"name":"a\\ud800",'
              b'"memory":64,"qemu":"/usr/bin/qemu-system-x86_64"}}}\0')
    check(r and (r[0] == "closed" or error_of(r[0]) == MANAGER + "InvalidSpec"),
          "expected InvalidSpec or a close, got %r" % r[:2])


# Names and paths that escape

@case
def name_escapes_dotdot(h):
    h.expect_invalid_spec(h.spec(name="../x"), "name")
    h.expect_invalid_spec(h.spec(name=".."), "name")
    check(not os.path.exists(os.path.join(h.cprd.state_dir, "x")), "../x was created")


@case
def name_absolute(h):
    h.expect_invalid_spec(h.spec(name="/etc"), "name")
    h.expect_invalid_spec(h.spec(name="/tmp/cprd-hostile-owned"), "name")


@case
def name_with_slash(h):
    h.expect_invalid_spec(h.spec(name="a/b"), "name")
    check(not os.path.exists(os.path.join(h.cprd.state_dir, "vms", "a")), "vms/a was created")


@case
def name_65_chars(h):
    h.expect_invalid_spec(h.spec(name="n" * 65), "name")
    h.expect_invalid_spec(h.spec(name="n" * 100000), "name")


@case
def lookups_that_escape(h):
    """GetVM/ReadLog/DeleteVM with ../, / and absolute names -> NoSuchVM."""
    for n in ("../" + (h.vm_running or "x"), "/etc/passwd", "vms/../" + (h.vm_running or "x"), ".", ""):
        for m in ("GetVM", "ReadLog", "DeleteVM"):
            r = h.one(m, {"name": n})
            h.expect_error(r, MANAGER + "NoSuchVM")


@case
def readlog_log_escape(h):
    """ReadLog log: "../../etc/passwd" -> InvalidParameter log."""
    h.need_vm()
    r = h.one("ReadLog", {"name": h.vm_running, "log": "../../../etc/passwd"})
    h.expect_error(r, "org.varlink.service.InvalidParameter", parameter="log")


@case
def snapshot_paths_that_escape(h):
    """SnapshotVM and RestoreVM with paths and names a careless client
    might send: relative, in a folder others may write (/tmp), over an
    existing file, into /proc, /dev/zero as a snapshot, escaping names.
    Each is refused with a reason; nothing is created or overwritten."""
    h.need_vm()
    ip = "org.varlink.service.InvalidParameter"
    bad = MANAGER + "BadSnapshot"
    for f in ("relative.state", "", "./x"):
        h.expect_error(h.one("SnapshotVM", {"name": h.vm_running, "file": f}), ip, parameter="file")
        h.expect_error(h.one("RestoreVM", {"name": "r", "file": f}), ip, parameter="file")
    for f in ("/tmp/cprd-hostile.state", "/etc/passwd", "/proc/self/cprd.state", "/", "/etc/"):
        r = h.one("SnapshotVM", {"name": h.vm_running, "file": f})
        h.expect_error(r, bad)
        check(param(r, "reason"), "BadSnapshot without a reason: %r" % r)
    check(not os.path.exists("/tmp/cprd-hostile.state"), "a snapshot was written into /tmp")
    for f in ("/etc/shadow", "/dev/zero", "/proc/self/environ", "/etc/passwd"):
        r = h.one("RestoreVM", {"name": "r", "file": f})
        h.expect_error(r, bad)
    for n in ("../x", "/etc", "a/b", "n" * 65):
        h.expect_error(h.one("RestoreVM", {"name": n, "file": "/etc/passwd"}), ip, parameter="name")
    # A running VM is never replaced, whatever the file.
    r = h.one("RestoreVM", {"name": h.vm_running, "file": "/etc/passwd"})
    h.expect_error(r, MANAGER + "BadState")
    h.expect_error(h.one("SnapshotVM", {"name": h.vm_running, "file": "/x", "timeoutSec": 0}), ip,
                   parameter="timeoutSec")
    check(not os.path.exists(os.path.join(h.cprd.state_dir, "vms", "r")), "vms/r was created")


@case
def disk_path_relative_and_comma(h):
    h.expect_invalid_spec(h.spec(disks=[{"path": "../../etc/shadow"}]), "disks[0].path")
    h.expect_invalid_spec(h.spec(disks=[{"path": "/etc/shadow,format=qcow2"}]), "disks[0].path")
    h.expect_invalid_spec(h.spec(disks=[{"path": "/etc"}]), "disks[0].path")


@case
def qemu_not_root_owned(h):
    """qemu: a world-writable script -> InvalidSpec qemu; nothing run."""
    p = os.path.join(h.tmp, "evil-qemu")
    with open(p, "w") as f:
        f.write("#!/bin/sh\ntouch %s/ran\n" % h.tmp)
    os.chmod(p, 0o777)
    h.expect_invalid_spec(h.spec(qemu=p), "qemu")
    h.expect_invalid_spec(h.spec(qemu="usr/bin/qemu-system-x86_64"), "qemu")
    time.sleep(0.2)
    check(not os.path.exists(os.path.join(h.tmp, "ran")), "the script ran")


@case
def qemu_not_qemu(h):
    """qemu: /bin/true (root's, but not QEMU) -> QEMUProbeFailed, no VM."""
    r = h.one("CreateVM", {"spec": h.spec(qemu="/bin/true")})
    h.expect_error(r, MANAGER + "QEMUProbeFailed")
    check(not os.path.exists(h.cprd.vm_dir("h1")), "a VM folder was left behind")


# Sizes

@case
def spec_100k_disks(h):
    """A spec with 10^5 disks -> InvalidSpec disks."""
    disks = [{"path": T.GUEST_IMAGE, "readonly": True}] * 100000
    h.expect_invalid_spec(h.spec(disks=disks), "disks")


@case
def upgrade_many_100k_names(h):
    """UpgradeMany with 10^5 unknown names and with the idle VM 10^4 times:
    every one skipped, one final reply."""
    r = h.one("UpgradeMany", {"names": ["nope-%d" % i for i in range(100000)]})
    check(isinstance(r, dict) and param(r, "skipped") == 100000, "got %r" % (r,))
    h.need_vm("the half with the idle VM")
    r = h.one("UpgradeMany", {"names": ["idle"] * 10000})
    check(isinstance(r, dict) and param(r, "skipped") == 10000, "got %r" % (r,))


@case
def upgrade_many_refused_at_once(h):
    """UpgradeMany of a VM that is not running (refused synchronously):
    used to free its state twice (fixed in daemon/upgrade.c many_step)."""
    h.need_vm()
    for more in (False, True):
        c = h.conn()
        try:
            c.call("UpgradeMany", {"names": ["idle", "idle"], "parallel": 2}, more=more)
            replies = []
            while True:
                r = c.reply()
                replies.append(r)
                if r == "closed" or not r.get("continues"):
                    break
        finally:
            c.close()
        last = replies[-1]
        check(isinstance(last, dict) and param(last, "skipped") == 2 and param(last, "committed") == 0,
              "got %r" % replies)


@case
def message_17mib(h):
    """A 17 MiB message (over the 16 MiB limit) -> closed."""
    c = h.conn(timeout=30)
    data = b'{"method":"io.cprd.Manager.GetVM","parameters":{"name":"' + b"x" * (17 << 20) + b'"}}\0'
    try:
        c.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    check(c.closed(30), "cprd did not close the connection")
    c.close()


@case
def message_17mib_no_nul(h):
    """17 MiB without any NUL (the limit hits before a message ends) -> closed."""
    c = h.conn(timeout=30)
    try:
        c.send(b"{" + b" " * (17 << 20))
    except (BrokenPipeError, ConnectionResetError):
        pass
    check(c.closed(30), "cprd did not close the connection")
    c.close()


@case
def message_8mib_legal(h):
    """An 8 MiB message within the limit gets its answer (NoSuchVM)."""
    r = h.raw(json.dumps({"method": MANAGER + "GetVM", "parameters": {"name": "x" * (8 << 20)}}).encode() + b"\0",
              timeout=30)
    check(r and error_of(r[0]) == MANAGER + "NoSuchVM", "got %r" % ([str(x)[:200] for x in r[:2]],))


# Protocol

@case
def method_not_found(h):
    h.expect_error(h.one(MANAGER + "FormatDisk"), "org.varlink.service.MethodNotFound")
    r = h.raw(json.dumps({"method": "ListVMs"}).encode() + b"\0")
    check(r and error_of(r[0]) == "org.varlink.service.MethodNotFound", "got %r" % r[:2])


@case
def wrong_interface(h):
    r = h.one("org.example.Evil.ListVMs")
    h.expect_error(r, "org.varlink.service.InterfaceNotFound", interface="org.example.Evil")
    r = h.one("org.varlink.service.GetInterfaceDescription", {"interface": "org.example.Evil"})
    h.expect_error(r, "org.varlink.service.InterfaceNotFound")
    r = h.one("org.varlink.service.GetInterfaceDescription", {"interface": 5})
    h.expect_error(r, "org.varlink.service.InvalidParameter", parameter="interface")


@case
def bad_method_field(h):
    """method missing, a number, empty -> closed."""
    for m in (b'{"parameters":{}}', b'{"method":5}', b'{"method":""}', b'{"method":null}'):
        r = h.raw(m + b"\0")
        check(r == ["closed"], "%r: expected a clean close, got %r" % (m, r[:2]))


@case
def oneway_and_more(h):
    r = h.one("ListVMs", oneway=True, more=True)
    h.expect_error(r, "org.varlink.service.InvalidParameter", parameter="oneway")


@case
def upgrade_flag_and_bad_flags(h):
    h.expect_error(h.one("ListVMs", upgrade=True), "org.varlink.service.InvalidParameter", parameter="upgrade")
    h.expect_error(h.one("ListVMs", more="yes"), "org.varlink.service.InvalidParameter", parameter="more")
    h.expect_error(h.one("ListVMs", oneway=1), "org.varlink.service.InvalidParameter", parameter="oneway")


@case
def oneway_gets_nothing(h):
    """A oneway call gets no reply; the next call's reply is its own."""
    c = h.conn()
    try:
        c.call("GetVM", {"name": "nope"}, oneway=True)
        c.call("ListVMs")
        r = c.reply()
        check(isinstance(r, dict) and "vms" in (r.get("parameters") or {}), "got %r" % r)
    finally:
        c.close()


@case
def parameters_not_object(h):
    for p in ([], ["name"], "name", 5, True):
        r = h.one("GetVM", p)
        h.expect_error(r, "org.varlink.service.InvalidParameter", parameter="parameters")


@case
def parameter_table_violations(h):
    ip = "org.varlink.service.InvalidParameter"
    h.expect_error(h.one("GetVM", {}), ip, parameter="name")
    h.expect_error(h.one("GetVM", {"name": None}), ip, parameter="name")
    h.expect_error(h.one("GetVM", {"name": ["live"]}), ip, parameter="name")
    h.expect_error(h.one("GetVM", {"name": "live", "evil": 1}), ip, parameter="evil")
    h.expect_error(h.one("CreateVM", {"spec": []}), ip, parameter="spec")
    h.expect_error(h.one("CreateVM", {"spec": "{}"}), ip, parameter="spec")
    h.expect_error(h.one("UpgradeMany", {"names": [1, 2]}), ip, parameter="names")
    h.expect_error(h.one("UpgradeMany", {"names": "live"}), ip, parameter="names")
    h.expect_error(h.one("Upgrade", {"name": "live", "timeoutSec": 0}), ip, parameter="timeoutSec")
    h.expect_error(h.one("Upgrade", {"name": "live", "mode": "rsync"}), ip, parameter="mode")
    h.expect_error(h.one("UpgradeMany", {"names": [], "parallel": 100000}), ip, parameter="parallel")
    for k in (0, -1, 65, 2 ** 63 - 1, -2 ** 63, 1.5, "1"):
        h.expect_error(h.one("UpgradeMany", {"names": [], "pauseSlots": k}), ip, parameter="pauseSlots")
        h.expect_error(h.one("Upgrade", {"name": "live", "pauseSlots": k}), ip, parameter="pauseSlots")
    h.expect_error(h.one("WatchEvents"), "org.varlink.service.ExpectedMore")


@case
def not_an_object(h):
    for m in (b"[]", b'"ListVMs"', b"5", b"null", b"", b"{", b"{}}"):
        r = h.raw(m + b"\0")
        check(r == ["closed"], "%r: expected a clean close, got %r" % (m, r[:2]))


@case
def garbage_after_nul(h):
    """A good call, NUL, then garbage and NUL -> the answer, then closed."""
    r = h.raw(json.dumps({"method": MANAGER + "ListVMs"}).encode() + b"\0\x01\x02garbage}}\0", replies=2)
    check(len(r) == 2 and isinstance(r[0], dict) and "error" not in r[0] and r[1] == "closed",
          "got %r" % r)


@case
def garbage_after_nul_then_eof(h):
    """A good call, NUL, garbage without NUL, then EOF -> answer, close."""
    c = h.conn()
    try:
        c.send(json.dumps({"method": MANAGER + "ListVMs"}).encode() + b"\0garbage")
        c.s.shutdown(socket.SHUT_WR)
        r = c.reply()
        check(isinstance(r, dict) and "error" not in r, "got %r" % r)
        check(c.closed(5), "not closed")
    finally:
        c.close()


@case
def duplicate_keys(h):
    """Two "method" keys: json-c keeps the last; any clean outcome."""
    r = h.raw(b'{"method":"org.example.X.Y","method":"io.cprd.Manager.ListVMs"}\0')
    check(r and (r[0] == "closed" or isinstance(r[0], dict)), "got %r" % r)


@case
def disconnect_mid_message(h):
    """Half a message, then close (and a reset) -> cprd carries on."""
    c = h.conn()
    c.send(b'{"method":"io.cprd.Manager.Create')
    c.close()
    c = h.conn()
    c.send(b'{"method":"io.cprd.Manager.Create')
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST


@case
def disconnect_mid_reply(h):
    """Many calls, then a reset before reading any reply."""
    c = h.conn()
    c.send((json.dumps({"method": MANAGER + "ListVMs"}).encode() + b"\0") * 2000)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


@case
def pipelined_in_order(h):
    """2000 calls in one write: 2000 replies in request order."""
    c = h.conn(timeout=30)
    try:
        msgs = b"".join(json.dumps({"method": MANAGER + "GetVM", "parameters": {"name": "n%d" % i}}).encode()
                        + b"\0" for i in range(2000))
        c.send(msgs)
        for i in range(2000):
            r = c.reply(30)
            check(param(r, "name") == "n%d" % i, "reply %d is %r" % (i, r))
    finally:
        c.close()


# Floods and slow clients

@case
def connection_flood(h):
    """1100 connections from one uid: the first 1024 are served, the rest
    closed at once; after closing them a fresh one works."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    socks = []
    try:
        for _ in range(1100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(h.cprd.socket)
            socks.append(s)
        # Ask every one; the ones cprd refused read EOF instead of a reply.
        for s in socks:
            try:
                s.sendall(json.dumps({"method": MANAGER + "ListVMs"}).encode() + b"\0")
            except (BrokenPipeError, ConnectionResetError):
                pass
        served = refused = 0
        for i, s in enumerate(socks):
            s.settimeout(10)
            buf = b""
            try:
                while b"\0" not in buf:
                    d = s.recv(65536)
                    if not d:
                        break
                    buf += d
            except (ConnectionResetError, BrokenPipeError):
                pass
            if b"\0" in buf:
                served += 1
            else:
                refused += 1
                check(i >= PER_UID_MAX, "connection %d was refused, below the limit" % i)
        check(served == PER_UID_MAX and refused == 1100 - PER_UID_MAX,
              "served %d, refused %d (expected %d and %d)" % (served, refused, PER_UID_MAX, 1100 - PER_UID_MAX))
        # Another uid is not affected by root's flood.
        r = h.as_nobody("ListVMs")
        check(isinstance(r, dict) and "error" not in r, "uid 65534 was not served during the flood: %r" % r)
    finally:
        for s in socks:
            s.close()


@case
def slow_loris(h):
    """20 writers dribble half messages: others are served meanwhile, and
    cprd closes the dribblers when the message deadline passes (2 s here,
    CPRD_TEST_MESSAGE_TIMEOUT_MS; 60 s by default)."""
    lorises = [h.conn() for _ in range(20)]
    msg = json.dumps({"method": MANAGER + "ListVMs"}).encode()
    t0 = time.monotonic()
    worst = 0.0
    for i in range(8):
        for c in lorises:
            c.send(msg[i:i + 1])
        t = time.monotonic()
        h.list_vms(timeout=10)
        worst = max(worst, time.monotonic() - t)
        time.sleep(0.1)
    # Served while the writers were still connected: a server that waited for
    # their messages would have answered only once their deadline closed them.
    check(worst < TEST_TIMEOUT_MS / 1000, "a ListVMs took %.2f s while slow writers were connected" % worst)
    closed = 0
    for c in lorises:
        if c.closed(TEST_TIMEOUT_MS / 1000 + 3):
            closed += 1
        c.close()
    took = time.monotonic() - t0
    check(closed == 20, "only %d of 20 slow writers were closed after %.1f s" % (closed, took))
    check("a started message did not finish in time" in h.cprd.read_log(), "no log line for the timeout")


@case
def never_reads_replies(h):
    """A client pipelines ListVMs without reading: cprd stops dispatching
    once 4 MiB are queued, its RSS stays bounded, others are served, and
    the reader is dropped when the reply deadline passes."""
    rss0 = h.rss_kb()
    c = h.conn()
    c.s.setblocking(False)
    call = json.dumps({"method": MANAGER + "ListVMs"}).encode() + b"\0"
    chunk = call * 512
    sent = 0
    t0 = time.monotonic()
    worst = 0.0
    while time.monotonic() - t0 < 1.5:
        try:
            sent += c.s.send(chunk)
        except BlockingIOError:
            select.select([], [c.s], [], 0.05)
        except (BrokenPipeError, ConnectionResetError):
            break
        if int((time.monotonic() - t0) * 10) % 3 == 0:
            t = time.monotonic()
            h.list_vms(timeout=10)
            worst = max(worst, time.monotonic() - t)
    rss1 = h.rss_kb()
    # Served before the reply deadline could have freed anything.
    check(worst < TEST_TIMEOUT_MS / 1000, "a ListVMs took %.2f s beside the reader that never reads" % worst)
    check(rss1 - rss0 < 64 * 1024, "cprd's RSS grew from %d to %d KB" % (rss0, rss1))
    # Dropped once its replies sat unread past the deadline.
    c.s.setblocking(True)
    deadline = time.monotonic() + TEST_TIMEOUT_MS / 1000 + 10
    log_line = "did not read its replies"
    while time.monotonic() < deadline and log_line not in h.cprd.read_log():
        time.sleep(0.1)
    c.close()
    check(log_line in h.cprd.read_log(), "the non-reading client was not dropped (sent %d bytes)" % sent)


@case
def watch_events_flood(h):
    """300 WatchEvents subscribers: 256 accepted, the rest get Failed."""
    conns = []
    try:
        for _ in range(300):
            c = h.conn()
            c.call("WatchEvents", more=True)
            conns.append(c)
        # The refused ones answer at once; the accepted ones stay quiet.
        # The deadline only catches a hang; then a short look shows that no
        # accepted subscriber was answered as well.
        failed = 0
        waiting = {c.s: c for c in conns}
        deadline = time.monotonic() + 30 * T.SLOWDOWN
        while failed < 300 - WATCHERS_MAX and time.monotonic() < deadline:
            ready, _, _ = select.select(list(waiting), [], [], 0.2)
            for s in ready:
                r = waiting.pop(s).reply(10)
                check(isinstance(r, dict) and r.get("error") == MANAGER + "Failed",
                      "subscriber %d got %r, not Failed" % (300 - len(waiting), r))
                failed += 1
        ready, _, _ = select.select(list(waiting), [], [], 0.5)
        check(not ready, "%d accepted subscribers were answered too" % len(ready))
        check(failed == 300 - WATCHERS_MAX, "%d subscribers refused, expected %d" % (failed, 300 - WATCHERS_MAX))
    finally:
        for c in conns:
            c.close()


# Who may do what

@case
def nobody_create_vm(h):
    r = h.as_nobody("CreateVM", {"spec": h.spec(name="evil")})
    h.expect_error(r, "org.varlink.service.PermissionDenied")
    check(not os.path.exists(h.cprd.vm_dir("evil")), "a VM was created")
    check("refused io.cprd.Manager.CreateVM for uid 65534" in h.cprd.read_log(), "the refusal was not logged")


@case
def nobody_start_stop_delete(h):
    for m, p in (("StartVM", {"name": "idle"}), ("StopVM", {"name": h.vm_running or "x", "force": True}),
                 ("DeleteVM", {"name": "idle"})):
        h.expect_error(h.as_nobody(m, p), "org.varlink.service.PermissionDenied")


@case
def nobody_upgrade(h):
    h.expect_error(h.as_nobody("Upgrade", {"name": h.vm_running or "x", "qemu": "/tmp/evil"}),
                   "org.varlink.service.PermissionDenied")
    h.expect_error(h.as_nobody("UpgradeMany", {"outdated": True}, more=True),
                   "org.varlink.service.PermissionDenied")
    h.expect_error(h.as_nobody("Upgrade", {"name": "nope", "dryRun": True}),
                   "org.varlink.service.PermissionDenied")


@case
def nobody_reads(h):
    r = h.as_nobody("ListVMs")
    check(isinstance(r, dict) and "error" not in r and len(param(r, "vms")) == len(h.baseline["vms"]),
          "ListVMs as uid 65534: %r" % r)
    r = h.as_nobody("org.varlink.service.GetInfo")
    check(isinstance(r, dict) and "error" not in r, "GetInfo as uid 65534: %r" % r)
    h.need_vm("GetVM of the live VM")
    r = h.as_nobody("GetVM", {"name": h.vm_running})
    check(isinstance(r, dict) and "error" not in r, "GetVM as uid 65534: %r" % r)


@case
def upgrade_to_untrusted_binary(h):
    """Root asks to upgrade onto a world-writable binary -> refused, the
    guest stays on its QEMU."""
    h.need_vm()
    p = os.path.join(h.tmp, "evil-qemu2")
    with open(p, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(p, 0o777)
    r = h.one("Upgrade", {"name": h.vm_running, "qemu": p})
    h.expect_error(r, MANAGER + "QEMUProbeFailed")
    r = h.one("Upgrade", {"name": h.vm_running, "qemu": "relative/qemu"})
    h.expect_error(r, MANAGER + "QEMUProbeFailed")


def main():
    if os.geteuid() != 0:
        ci_skips.skip_all(T.area(), "the hostile tests need root (they start cprd and call as uid 65534)")
    T.require_binaries()
    names = sys.argv[1:]
    cases = [c for c in CASES if not names or c[0] in names]
    unknown = set(names) - {c[0] for c in CASES}
    if unknown:
        print("unknown cases: %s" % ", ".join(sorted(unknown)))
        sys.exit(2)
    t0 = time.monotonic()
    h = Hostile()
    try:
        h.start()
        h.run(cases)
    finally:
        h.teardown()
    passed = sum(1 for _, s, _, _ in h.results if s == "PASS")
    skipped = sum(1 for _, s, _, _ in h.results if s == "SKIP")
    ran = sum(1 for n, _, _, _ in h.results if n != "teardown")
    failed = sum(1 for _, s, _, _ in h.results if s == "FAIL") + (len(cases) - ran)
    T.log("took %.1f s" % (time.monotonic() - t0))
    T.log("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % skipped if skipped else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
