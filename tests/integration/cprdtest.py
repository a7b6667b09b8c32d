"""Shared helpers for cprd's integration tests (standard library only).

Each test gets its own cprd in a temporary folder, talks to it with the real
cprctl, and looks at what cprd holds from the outside: /proc/CPRD_PID/fd
(the guest RAM memfd, read with pread), cprd's child processes, and the
files in its state folder. Everything a test starts is stopped by pid at
teardown, never by name: other tests and sessions run QEMUs on this host.

Paths come from the environment (ctest sets them, see CMakeLists.txt):
  CPRD_BIN, CPRCTL_BIN, CPRD_GUEST_IMAGE, CPRD_QEMU10, CPRD_QEMU72,
  CPRD_QEMU111
  CPRD_TEST_KEEP=1     keep the temporary folders
  CPRD_TEST_SLOWDOWN   a factor for the few wall-clock bounds (default 1;
                       the sanitizer stage sets it, see tests/sanitize.sh)
  CI=true              a skipped test fails unless tests/ci-skips.txt lists it
Run with Debian's /usr/bin/python3.

A test whose class sets netlab = True runs its cprd inside a network
namespace of its own (NetLab): a bridge with the host end of the lab
network, 10.99.0.1/24, and nothing else; the taps cprd makes land there.
Run as a script, this file is the helpers that work inside that namespace
(ping, TCP stream and sink against the Linux guest): see net_helper().
"""

import errno
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import ci_skips  # noqa: E402


def _default(env, *candidates):
    v = os.environ.get(env)
    if v:
        return v
    for c in candidates:
        if os.path.exists(c):
            return c
    return candidates[0]


CPRD = _default("CPRD_BIN", os.path.join(SOURCE_DIR, "build/daemon/cprd"))
CPRCTL = _default("CPRCTL_BIN", os.path.join(SOURCE_DIR, "build/client/cprctl"))
GUEST_IMAGE = _default("CPRD_GUEST_IMAGE", os.path.join(SOURCE_DIR, "build/tests/guest/cprd-guest.img"))
QEMU10 = os.environ.get("CPRD_QEMU10") or "/usr/bin/qemu-system-x86_64"
QEMU72 = os.environ.get("CPRD_QEMU72") or "/opt/cprd/qemu-system-x86_64-7.2"
QEMU111 = os.environ.get("CPRD_QEMU111") or "/opt/cprd/qemu-system-x86_64-11.1"
KEEP = os.environ.get("CPRD_TEST_KEEP") == "1"
# Wall-clock bounds in the tests only catch hangs; under the sanitizers
# everything runs a few times slower, and this factor says by how much.
SLOWDOWN = float(os.environ.get("CPRD_TEST_SLOWDOWN") or 1)

GUEST_MAGIC = b"CPRDGST1"
GUEST_BLOCK = 0x8000
SKIP = ci_skips.SKIP_EXIT


def area():
    """This runner's name as ctest knows it (tests/ci-skips.txt uses it):
    test_upgrade.py -> integration_upgrade, hostile.py -> hostile."""
    stem = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    return "integration_" + stem[len("test_"):] if stem.startswith("test_") else stem


def log(msg):
    print(msg, flush=True)


def qemu_usable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def require_binaries(*qemus):
    """Exits 77 (ctest: skipped) when a QEMU is missing; fails when a
    binary of this project is missing, which is a build problem."""
    for p in (CPRD, CPRCTL, GUEST_IMAGE):
        if not os.path.exists(p):
            print("cannot find %s; build the project first (or set CPRD_BIN, CPRCTL_BIN, "
                  "CPRD_GUEST_IMAGE)" % p, flush=True)
            sys.exit(1)
    for q in qemus:
        if not qemu_usable(q):
            ci_skips.skip_all(area(), "QEMU %s is missing or not executable; these tests need it" % q)


def wait_until(pred, timeout=20.0, interval=0.05, what="condition"):
    """Polls pred until it returns something true; returns that. Raises
    AssertionError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.0f s waiting for %s%s" %
                                 (timeout, what, " (last error: %r)" % last_exc if last_exc else ""))
        time.sleep(interval)


# ---- processes and fds --------------------------------------------------------

def proc_stat(pid):
    """(state, ppid, comm) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    lpar, rpar = data.index("("), data.rindex(")")
    comm = data[lpar + 1:rpar]
    rest = data[rpar + 2:].split()
    return rest[0], int(rest[1]), comm


def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    s = proc_stat(pid)
    return s is not None and s[0] != "Z"


def pid_exists(pid):
    return proc_stat(pid) is not None


def children_of(ppid):
    """{pid: (state, comm)} of the processes whose parent is ppid."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        s = proc_stat(int(d))
        if s and s[1] == ppid:
            out[int(d)] = (s[0], s[2])
    return out


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def fds_of(pid):
    """{fd number: link target} of a process."""
    out = {}
    base = "/proc/%d/fd" % pid
    for n in os.listdir(base):
        try:
            out[int(n)] = os.readlink(os.path.join(base, n))
        except OSError:
            pass
    return out


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def reap(procs):
    """Kills whichever of procs still runs and collects every one's exit;
    for teardown, so a process that will not go is passed over."""
    for p in procs:
        if p.poll() is None:
            kill_pid(p.pid, signal.SIGKILL)
        try:
            p.communicate(timeout=10)
        except Exception:
            pass


def tree_snapshot(root):
    """{relative path: (mode, size, mtime_ns)} of everything under root."""
    out = {}
    if not os.path.exists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


# ---- wrappers around QEMU -----------------------------------------------------

_WRAPPER_HEAD = r"""#!/bin/sh
# Made by cprd's integration tests: a QEMU that passes cprd's probe (which
# runs it with -machine none) and then misbehaves as an upgrade target.
REAL='%(real)s'
prev=
for a in "$@"; do
	if [ "$prev" = "-machine" ] && [ "$a" = "none" ]; then
		exec "$REAL" "$@"
	fi
	prev=$a
done
"""

_WRAPPER_BODY = {
    # Exits at once, as a QEMU that cannot start would.
    "exit1": r"""
echo "cprd-test wrapper: exiting with status 1 instead of running QEMU" >&2
exit 1
""",
    # Stops itself: a target that never answers.
    "hang": r"""
echo "cprd-test wrapper: stopping myself (SIGSTOP)" >&2
kill -STOP $$
exec "$REAL" "$@"
""",
    # Runs QEMU and kills it in the middle of the transfer: a watcher
    # stops QEMU at once when the transfer has begun, so it cannot finish
    # loading, then kills it with SIGKILL.
    #  - cpr-transfer (-incoming unix:MAIN): QEMU creates the main socket
    #    only once it has read the cpr state, after cprd sent migrate to
    #    the old QEMU; the watcher waits for that socket.
    #  - local-migrate (-incoming defer): QEMU binds the main socket
    #    (<VM runtime dir>/upgrade-XXXXXX/main.sock, the runtime dir being
    #    the folder of the qmp-recovery socket) at migrate-incoming, before
    #    cprd sends migrate, and the whole transfer takes a few ms: the
    #    watcher (Python, started before QEMU) stops QEMU as soon as it
    #    listens and lets it run only in short slices until the old QEMU
    #    has connected, which /proc/net/unix shows as a second socket with
    #    that path (the server's end of the connection, there even before
    #    QEMU accepts it).
    "killmid": r"""
main=
rdir=
prev=
for a in "$@"; do
	case "$prev:$a" in
	-incoming:unix:*) main=${a#unix:} ;;
	-chardev:socket,id=qmp-recovery,path=*)
		rdir=${a#socket,id=qmp-recovery,path=}
		rdir=${rdir%%%%,*}
		rdir=${rdir%%/*} ;;
	esac
	prev=$a
done
me=$$
watch_local='
import os, signal, sys, time
me, rdir, delay, ready = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except OSError:
    pass
os.unlink(ready)  # QEMU starts now

def main_sock():
    for d in os.listdir(rdir):
        p = os.path.join(rdir, d, "main.sock")
        if d.startswith("upgrade-") and os.path.exists(p):
            return p

def connected(p):
    # A socket with the path in state 02 or 03 (connecting, connected):
    # the listening one, and one bound but not yet listening, are 01.
    with open("/proc/net/unix") as f:
        return any(l.split()[7:8] == [p] and l.split()[5] != "01" for l in f)

m = None
while m is None:
    os.kill(me, 0)  # (until QEMU is gone: cprd kills a target that never listens)
    m = main_sock()
    if m is None:
        time.sleep(0.0005)
# QEMU runs from now on only in short slices (it must still answer
# migrate-incoming) until the old QEMU has connected.
while True:
    os.kill(me, signal.SIGSTOP)
    if connected(m):
        break
    os.kill(me, signal.SIGCONT)
    time.sleep(0.0003)
time.sleep(delay)
os.kill(me, signal.SIGKILL)
'
ready=
[ -n "$main" ] || ready=$(mktemp)
(
	exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- >/dev/null 2>&1 </dev/null
	i=0
	if [ -n "$main" ]; then
		while [ ! -S "$main" ]; do
			i=$((i + 1))
			[ $i -lt 5000000 ] || exit 0
		done
	else
		# Polled from Python at real-time priority where allowed, so
		# that a busy host cannot starve the watcher while QEMU loads;
		# QEMU waits until the watcher runs.
		exec /usr/bin/python3 -S -c "$watch_local" "$me" "$rdir" %(delay)s "$ready"
	fi
	kill -STOP $me
	sleep %(delay)s
	kill -9 $me
) &
# local-migrate: QEMU starts once the watcher runs (it removes $ready).
i=0
while [ -n "$ready" ] && [ -e "$ready" ] && [ $i -lt 5000000 ]; do i=$((i + 1)); done
exec "$REAL" "$@"
""",
    # Waits before it runs QEMU: a new binary that takes a while to start
    # (cpr-exec: the process runs this shell meanwhile).
    "slow": r"""
sleep %(delay)s
exec "$REAL" "$@"
""",
    # A QEMU that cannot take a cpr channel (as an older or differently
    # built one might not): exits when given one, runs otherwise.
    "nocpr": r"""
for a in "$@"; do
	case $a in *'"channel-type":"cpr"'*)
		echo "cprd-test wrapper: this QEMU cannot take a cpr channel; exiting" >&2
		exit 1 ;;
	esac
done
exec "$REAL" "$@"
""",
    # Runs QEMU without the serial port: loading the old QEMU's device
    # state fails in the middle of the transfer ("Unknown savevm section").
    "noserial": r"""
skip=0
for a in "$@"; do
	shift
	if [ $skip = 1 ]; then skip=0; continue; fi
	if [ "$a" = "-serial" ]; then skip=1; continue; fi
	set -- "$@" "$a"
done
exec "$REAL" "$@"
""",
}


def write_exec_wrapper(folder, real):
    """A #! wrapper that runs real through a copy of /bin/sh in folder;
    returns (wrapper, that sh). Removing the sh after cprd probed the
    wrapper makes a later execve of it fail (ENOENT), as a new binary that
    vanished would."""
    sh = os.path.join(folder, "sh")
    shutil.copy("/bin/sh", sh)
    w = os.path.join(folder, "qemu-new")
    with open(w, "w") as f:
        f.write("#!%s\nexec %s \"$@\"\n" % (sh, real))
    os.chmod(w, 0o755)
    return w, sh


def write_wrapper(path, kind, real=None, delay="0.3"):
    body = (_WRAPPER_HEAD + _WRAPPER_BODY[kind]) % {"real": real or QEMU10, "delay": delay}
    with open(path, "w") as f:
        f.write(body)
    os.chmod(path, 0o755)
    return path


def migrate_capabilities(pid, timeout=10.0):
    """{capability: state} of a running QEMU that cprd started, asked of
    the QEMU itself over its second QMP monitor (the qmp-recovery socket
    named in its command line), not through cprd."""
    path = None
    for a in cmdline(pid):
        if a.startswith("socket,id=qmp-recovery,path="):
            path = a[len("socket,id=qmp-recovery,path="):].split(",")[0]
    if not path:
        raise AssertionError("pid %d has no qmp-recovery socket: %s" % (pid, cmdline(pid)))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
        f = s.makefile("rwb")

        def reply():
            while True:  # skip events; the greeting or a reply ends it
                line = f.readline()
                if not line:
                    raise AssertionError("QEMU %d closed its qmp-recovery monitor" % pid)
                msg = json.loads(line)
                if "event" not in msg:
                    return msg

        def call(cmd):
            f.write(json.dumps({"execute": cmd}).encode() + b"\n")
            f.flush()
            msg = reply()
            if "return" not in msg:
                raise AssertionError("QEMU %d: %s failed: %s" % (pid, cmd, msg))
            return msg["return"]

        greeting = reply()
        if "QMP" not in greeting:
            raise AssertionError("QEMU %d: no QMP greeting on %s: %s" % (pid, path, greeting))
        call("qmp_capabilities")
        return {c["capability"]: c["state"] for c in call("query-migrate-capabilities")}
    finally:
        s.close()


# ---- cprctl results -----------------------------------------------------------

class Result:
    def __init__(self, args, rc, stdout, stderr, seconds):
        self.args, self.rc, self.stdout, self.stderr, self.seconds = args, rc, stdout, stderr, seconds

    @property
    def json_lines(self):
        out = []
        for line in self.stdout.splitlines():
            line = line.strip()
            if line:
                out.append(json.loads(line))
        return out

    @property
    def json(self):
        """The last JSON document printed (the only one for non-streaming
        commands; the result for upgrade)."""
        lines = self.json_lines
        if not lines:
            raise AssertionError("cprctl %s printed no JSON; stderr: %s" % (" ".join(self.args), self.stderr))
        return lines[-1]

    def __repr__(self):
        return "cprctl %s -> rc %d (%.2f s)\nstdout: %s\nstderr: %s" % (
            " ".join(self.args), self.rc, self.seconds, self.stdout.strip()[-3000:],
            self.stderr.strip()[-3000:])


# ---- the daemon ---------------------------------------------------------------

class Cprd:
    """One cprd in a private folder."""

    def __init__(self, root):
        self.root = root
        self.state_dir = os.path.join(root, "state")
        self.runtime_dir = os.path.join(root, "run")
        self.socket = os.path.join(self.runtime_dir, "io.cprd.Manager")
        self.address = "unix:" + self.socket
        self.log_path = os.path.join(root, "cprd.log")
        self.proc = None
        self.extra_args = []    # more cprd options (--qemu-user, say)
        self.netns = None       # a NetLab to run cprd in (ip netns exec)
        self.seen_pids = {}     # pid: argv of what this cprd ran, to stop at teardown
        self.spawned = []       # other processes a test started (Popen)

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        self._log = open(self.log_path, "ab")
        # ip netns exec execs cprd itself (no fork): proc.pid is cprd's.
        prefix = self.netns.prefix() if self.netns else []
        self.proc = subprocess.Popen(
            prefix + [CPRD, "--state-dir", self.state_dir, "--runtime-dir", self.runtime_dir,
                      "--log-level", "debug"] + self.extra_args,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, close_fds=True)
        # Ready once a connection works: cprd binds the path a moment before
        # it listens, and a client in between gets "Connection refused".
        deadline = time.monotonic() + 15
        while not self._accepts():
            if self.proc.poll() is not None:
                raise AssertionError("cprd exited with %d at start:\n%s" % (self.proc.returncode, self.read_log()))
            if time.monotonic() > deadline:
                raise AssertionError("cprd did not listen on %s in 15 s" % self.socket)
            time.sleep(0.02)
        return self

    def _accepts(self):
        if not os.path.exists(self.socket):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def read_log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def env(self):
        e = dict(os.environ)
        e["CPRD_ADDRESS"] = self.address
        return e

    def ctl(self, *args, timeout=120, input_text=None):
        """Runs cprctl; returns a Result (never raises on a non-zero exit)."""
        args = [str(a) for a in args]
        t0 = time.monotonic()
        for attempt in range(100):
            try:
                p = subprocess.run([CPRCTL] + args, env=self.env(), capture_output=True, text=True,
                                   timeout=timeout, input=input_text)
                break
            except subprocess.TimeoutExpired as e:
                raise AssertionError("cprctl %s did not return in %d s; stdout so far: %s" %
                                     (" ".join(args), timeout, e.stdout))
            except OSError as e:
                # cprctl is being rebuilt by a concurrent build: try again.
                if attempt == 99 or e.errno not in (errno.EACCES, errno.ETXTBSY, errno.ENOENT, errno.ENOEXEC):
                    raise
                time.sleep(0.1)
        r = Result(args, p.returncode, p.stdout, p.stderr, time.monotonic() - t0)
        self._note_pids(r)
        return r

    def ctl_bg(self, *args):
        """Starts cprctl in the background (stdout and stderr to pipes);
        the Popen is stopped by pid at teardown."""
        p = subprocess.Popen([CPRCTL] + [str(a) for a in args], env=self.env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.spawned.append(p)
        return p

    def _note_pids(self, r):
        if "--json" not in r.args or r.rc != 0:
            return
        try:
            docs = r.json_lines
        except ValueError:
            return
        pids = []
        for d in docs:
            if not isinstance(d, dict):
                continue
            for o in (d, d.get("vm") if isinstance(d.get("vm"), dict) else None, d.get("result")):
                if isinstance(o, dict) and isinstance(o.get("pid"), int):
                    pids.append(o["pid"])
            for v in d.get("vms", []) if isinstance(d.get("vms"), list) else []:
                if isinstance(v, dict) and isinstance(v.get("pid"), int):
                    pids.append(v["pid"])
        self._remember(pids)

    # -- what cprd holds -------------------------------------------------------

    def fds(self):
        return fds_of(self.pid)

    def client_socket_inodes(self):
        """Inodes of the connections cprd accepted on its Varlink socket
        (in /proc/net/unix they carry the listening socket's path)."""
        out = set()
        with open("/proc/net/unix") as f:
            next(f)
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7] == self.socket and parts[3] != "00010000":
                    out.add(parts[6])
        return out

    def metrics_writing(self, target):
        """Whether target (an fd's link) is open only while cprd writes
        metrics.prom, which it does a moment after each change, from its
        loop: the unnamed file in the runtime folder ("RUNTIME/#INODE
        (deleted)"), its temporary name, or the folder, fsync'd."""
        r = self.runtime_dir
        return target == r or target.startswith(r + "/#") or target.startswith(r + "/metrics.prom")

    def held_fds(self):
        """cprd's fds without client connections, which close a moment
        after each cprctl call returns, and without those of a write of
        metrics.prom under way."""
        clients = {"socket:[%s]" % i for i in self.client_socket_inodes()}
        return {fd: t for fd, t in self.fds().items() if t not in clients and not self.metrics_writing(t)}

    def memfd(self, name):
        """cprd's fd number for the VM's guest RAM memfd, or None."""
        prefix = "/memfd:cprd:%s:ram0" % name
        for fd, target in self.fds().items():
            if target.startswith(prefix):
                return fd
        return None

    def read_guest(self, name):
        """(magic, ticks, lines) from the guest's RAM block, read through
        the memfd cprd holds; None when cprd holds no memfd for it."""
        fd = self.memfd(name)
        if fd is None:
            return None
        try:
            f = os.open("/proc/%d/fd/%d" % (self.pid, fd), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(f, 24, GUEST_BLOCK)
        finally:
            os.close(f)
        if len(data) < 24:
            return None
        magic = data[:8]
        ticks, lines = struct.unpack("<QQ", data[8:24])
        return magic, ticks, lines

    def memfd_inode(self, name):
        fd = self.memfd(name)
        if fd is None:
            return None
        return os.stat("/proc/%d/fd/%d" % (self.pid, fd)).st_ino

    def children(self):
        ch = children_of(self.pid)
        self._remember(ch)
        return ch

    def _remember(self, pids):
        for pid in pids:
            if pid not in self.seen_pids:
                argv = cmdline(pid)
                s = proc_stat(pid)
                if argv and s and s[1] == self.pid:
                    self.seen_pids[pid] = argv

    def vm_dir(self, name):
        return os.path.join(self.state_dir, "vms", name)

    def console(self, name):
        try:
            with open(os.path.join(self.vm_dir(name), "console.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def qemu_log(self, name):
        try:
            with open(os.path.join(self.vm_dir(name), "qemu.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # -- teardown --------------------------------------------------------------

    def stop(self):
        """Stops what this cprd ran, then cprd with SIGTERM; raises
        AssertionError when cprd, still running until then, did not exit 0."""
        reap(self.spawned)
        if self.proc is None:
            return
        trouble = None
        if self.proc.poll() is None:
            # Stop the guests through cprd first; then whatever is left by pid.
            try:
                r = self.ctl("list", "--json", timeout=30)
                for vm in (r.json.get("vms", []) if r.rc == 0 else []):
                    if vm.get("state") not in ("stopped", "defined"):
                        self.ctl("stop", vm["name"], "--force", timeout=30)
            except Exception as e:  # teardown goes on regardless
                log("teardown: stopping VMs through cprd failed: %r" % (e,))
            self.children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10 * SLOWDOWN)
                if self.proc.returncode != 0:
                    trouble = "cprd exited with status %d on SIGTERM" % self.proc.returncode
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                trouble = "cprd did not exit within %.0f s of SIGTERM" % (10 * SLOWDOWN)
        # cprd leaves its guests running when it exits: stop what it ran,
        # by pid, if it is still the same process (same command line).
        for pid, argv in sorted(self.seen_pids.items()):
            s = proc_stat(pid)
            if s and s[0] != "Z" and argv and cmdline(pid) == argv:
                log("teardown: killing leftover pid %d (%s)" % (pid, " ".join(argv)[:100]))
                kill_pid(pid, signal.SIGKILL)
        self._log.close()
        # Last, once everything is cleaned up: a cprd that crashes or hangs
        # on SIGTERM fails the test that stopped it.
        if trouble:
            raise AssertionError("%s; its log ends:\n%s" % (trouble, "\n".join(self.read_log().splitlines()[-30:])))


# ---- the test case ------------------------------------------------------------

class CprdTestCase(unittest.TestCase):
    """Starts a cprd for every test; stops it and everything it ran after."""

    maxDiff = None
    # True: cprd runs in a network namespace of the test's own (self.net).
    netlab = False

    def run(self, result=None):
        result = result if result is not None else self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        self.tmp = tempfile.mkdtemp(prefix="cprd-it-%s-" % self._testMethodName[:30])
        self.cprd = None
        t0 = time.monotonic()
        try:
            super().run(result)
        finally:
            failed = len(result.failures) + len(result.errors) > before
            log("  [%s: %.1f s]" % (self._testMethodName, time.monotonic() - t0))
            if failed and self.cprd is not None:
                self.dump_logs()
            if KEEP or failed:
                log("  kept %s" % self.tmp)
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return result

    def setUp(self):
        self.cprd = Cprd(self.tmp)
        self.net = None
        if self.netlab:
            self.net = NetLab()
            try:
                self.net.create()
            except NetLabUnavailable as e:
                self.skipTest(str(e))
            # Cleanups run last first: the namespace goes after cprd.
            self.addCleanup(self.net.remove)
            self.cprd.netns = self.net
        self.cprd.start()
        self.addCleanup(self.cprd.stop)

    def dump_logs(self):
        text = self.cprd.read_log()
        lines = text.splitlines()
        log("---- cprd log (%s, last 300 of %d lines) ----" % (self.cprd.log_path, len(lines)))
        for l in lines[-300:]:
            log("  | " + l)
        vms = os.path.join(self.cprd.state_dir, "vms")
        if os.path.isdir(vms):
            for name in sorted(os.listdir(vms)):
                q = self.cprd.qemu_log(name).splitlines()
                log("---- %s qemu.log (last 40 lines) ----" % name)
                for l in q[-40:]:
                    log("  | " + l)
        log("---- end of logs ----")

    # -- helpers ---------------------------------------------------------------

    def ctl(self, *args, **kw):
        return self.cprd.ctl(*args, **kw)

    def ok(self, *args, **kw):
        r = self.ctl(*args, **kw)
        self.assertEqual(r.rc, 0, repr(r))
        return r

    def running_pids(self):
        """The pids of the QEMUs cprd reports for its VMs."""
        return {v["pid"] for v in self.ok("list", "--json").json["vms"] if isinstance(v.get("pid"), int)}

    def status(self, name):
        return self.ok("status", name, "--json").json

    def create(self, name, qemu=None, machine="pc", memory=64, allow_exec=False):
        """Creates a VM from the test guest; returns GetVM's answer."""
        self.ok("create", name, "--memory", memory, "--qemu", qemu or QEMU10, "--machine", machine,
                "--accel", "tcg", "--disk", GUEST_IMAGE + ",readonly",
                *(["--allow-exec"] if allow_exec else []))
        return self.status(name)

    def create_started(self, name, qemu=None, machine="pc", ticks=1, allow_exec=False):
        """Creates and starts a VM, waits until its counter reaches ticks;
        returns GetVM's answer."""
        self.create(name, qemu=qemu, machine=machine, allow_exec=allow_exec)
        self.start_vm(name)
        self.wait_guest_ticks(name, ticks)
        return self.status(name)

    def start_vm(self, name):
        r = self.ok("start", name, "--json")
        vm = r.json
        self.assertEqual(vm["state"], "running", repr(r))
        self.assertIsInstance(vm.get("pid"), int, repr(r))
        return vm

    def guest(self, name):
        g = self.cprd.read_guest(name)
        self.assertIsNotNone(g, "cprd holds no memfd for %s; fds: %s" % (name, self.cprd.fds()))
        return g

    def wait_guest_ticks(self, name, at_least, timeout=30):
        """Waits until the guest's magic is there and its counter reached
        at_least; returns (magic, ticks, lines)."""
        def ready():
            g = self.cprd.read_guest(name)
            return g if g and g[0] == GUEST_MAGIC and g[1] >= at_least else None
        return wait_until(ready, timeout, what="%s's tick counter to reach %d" % (name, at_least))

    def wait_state(self, name, state, timeout=30):
        def check():
            vm = self.status(name)
            return vm if vm["state"] == state else None
        return wait_until(check, timeout, what="%s to be %s" % (name, state))

    def wait_children(self, expected, timeout=20, what=None):
        """Waits until cprd's children are exactly the set expected (no
        probe left, no zombie); returns them."""
        expected = set(expected)
        def check():
            ch = self.cprd.children()
            return (ch,) if set(ch) == expected and all(s != "Z" for s, _ in ch.values()) else None
        try:
            return wait_until(check, timeout, what=what or "cprd's children to be %s" % sorted(expected))[0]
        except AssertionError as e:
            raise AssertionError("%s; they are %s" % (e, self.cprd.children()))

    def wait_fd_count(self, count, timeout=10):
        """Waits until cprd holds count fds, client connections not counted."""
        try:
            return wait_until(lambda: len(self.cprd.held_fds()) == count, timeout,
                              what="cprd to hold %d fds" % count)
        except AssertionError as e:
            raise AssertionError("%s; it holds %s" % (e, self.cprd.held_fds()))

    def console_lines(self, name):
        """The complete lines of the console log (the last one may still be
        being written)."""
        return [l for l in self.cprd.console(name).split("\n")[:-1] if l]

    def assert_console_continuous(self, name, boots=1):
        """The console shows `boots` boots and, after each, lines numbered
        2, 3, ... with counters that only grow: no line lost or repeated."""
        lines = self.console_lines(name)
        self.assertEqual(sum(1 for l in lines if l == "cprd-guest: booted"), boots, lines[-20:])
        expect_n, last_c = None, -1
        for l in lines:
            if l == "cprd-guest: booted":
                expect_n, last_c = 2, -1
                continue
            parts = l.split()
            self.assertTrue(len(parts) == 5 and parts[:2] == ["cprd-guest:", "line"] and parts[3] == "counter",
                            "unexpected console line %r" % l)
            n, c = int(parts[2]), int(parts[4])
            self.assertEqual(n, expect_n, "console line numbers jump: %r (all: %s)" % (l, lines[-20:]))
            self.assertGreater(c, last_c, "console counter went back: %r" % l)
            expect_n, last_c = n + 1, c
        return lines


class Sampler(threading.Thread):
    """Reads a guest's counter every few milliseconds while an upgrade runs,
    to show it never goes back to zero."""

    def __init__(self, cprd, name, interval=0.005):
        super().__init__(daemon=True)
        self.cprd, self.name, self.interval = cprd, name, interval
        self.samples = []
        self._stop_ev = threading.Event()

    def run(self):
        while not self._stop_ev.is_set():
            try:
                g = self.cprd.read_guest(self.name)
            except OSError:
                g = None
            self.samples.append((time.monotonic(), g))
            time.sleep(self.interval)

    def stop(self):
        self._stop_ev.set()
        self.join(10)
        return self.samples


# ---- the lab network ----------------------------------------------------------

class NetLabUnavailable(Exception):
    pass


class NetLab:
    """A network namespace the test makes and removes: a bridge BRIDGE with
    HOST_ADDR/PREFIX on it (the host end of the guest's network) and lo,
    nothing else. cprd started in it (Cprd.netns) makes its taps there, so
    the guest's NIC lands on this bridge and no interface of the host is
    touched. Every process started in it is stopped by pid at remove(),
    before the namespace is deleted by the name this object made."""

    BRIDGE = "br0"
    HOST_ADDR = "10.99.0.1"
    GUEST_ADDR = "10.99.0.2"  # the Linux guest's default (its cprd.ip=)
    PREFIX = 24
    GUEST_PORT = 5201         # the guest's cprd-net server
    _made = 0

    def __init__(self):
        NetLab._made += 1
        self.name = "cprdt-%d-%d" % (os.getpid(), NetLab._made)
        self.created = False
        self.procs = []

    def _ip(self, *args, check=True):
        p = subprocess.run(["ip"] + [str(a) for a in args], capture_output=True, text=True, timeout=30)
        if check and p.returncode != 0:
            raise AssertionError("ip %s: %s" % (" ".join(str(a) for a in args), p.stderr.strip()))
        return p

    def create(self):
        if os.geteuid() != 0:
            raise NetLabUnavailable("a network namespace needs root")
        if not shutil.which("ip"):
            raise NetLabUnavailable("ip (iproute2) is missing")
        if os.path.exists("/run/netns/" + self.name):
            raise AssertionError("network namespace %s exists already" % self.name)
        p = self._ip("netns", "add", self.name, check=False)
        if p.returncode != 0:
            raise NetLabUnavailable("ip netns add %s: %s" % (self.name, p.stderr.strip()))
        self.created = True
        try:
            n = ["-n", self.name]
            self._ip(*n, "link", "set", "lo", "up")
            self._ip(*n, "link", "add", self.BRIDGE, "type", "bridge")
            self._ip(*n, "addr", "add", "%s/%d" % (self.HOST_ADDR, self.PREFIX), "dev", self.BRIDGE)
            self._ip(*n, "link", "set", self.BRIDGE, "up")
        except BaseException:
            self.remove()
            raise
        return self

    def prefix(self):
        """What runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def popen(self, *argv, **kw):
        """Starts argv inside the namespace; stopped by pid at remove()."""
        p = subprocess.Popen(self.prefix() + [str(a) for a in argv], **kw)
        self.procs.append(p)
        return p

    def run(self, *argv, timeout=60):
        return subprocess.run(self.prefix() + [str(a) for a in argv], capture_output=True, text=True,
                              timeout=timeout)

    def links(self):
        """{name: ip -j -d link's object} of the namespace's interfaces."""
        out = self._ip("-n", self.name, "-j", "-d", "link", "show").stdout
        return {l["ifname"]: l for l in json.loads(out or "[]")}

    def ports(self):
        """{name: link} of the interfaces on the bridge."""
        return {n: l for n, l in self.links().items() if l.get("master") == self.BRIDGE}

    def popen_with_tap(self, ifname, argv, fd=3, **kw):
        """Starts argv (a QEMU without cprd: a floor, or a by-hand check)
        inside the namespace with a new tap ifname on the bridge as its fd
        fd, as cprd would hand it over: argv can say -netdev
        tap,id=net0,fd=3. The tap goes away with the process."""
        return self.popen(sys.executable, os.path.abspath(__file__), "net-tap-exec", ifname, self.BRIDGE,
                          fd, *argv, **kw)

    def _helper(self, *args):
        return NetHelper(self.popen(sys.executable, os.path.abspath(__file__), *args,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True), args[0])

    def ping(self, addr=None, interval=0.01, reply_times=False):
        """Pings addr (the guest) every interval seconds until stop();
        result() then gives sent, received, lost, lost_runs, lost_at (when
        each lost one was sent, by time.monotonic()), max_gap_ms
        (the longest time without a reply), max_rtt_ms, median_rtt_ms,
        seconds and, with reply_times, reply_at (when each reply came,
        sorted, by time.monotonic())."""
        return self._helper("net-ping", addr or self.GUEST_ADDR, interval, 1 if reply_times else 0)

    def stream(self, lines, every=0, pause=0, addr=None, stall=60):
        """Asks the guest for a TCP stream of lines 64-byte lines (a pause
        of pause seconds after every every lines) and checks every byte;
        result() gives bytes, lines, end (the guest's end line came),
        first_bad, reset, error, max_gap_ms. stall: seconds without data
        that count as an error."""
        return self._helper("net-stream", addr or self.GUEST_ADDR, self.GUEST_PORT, lines, every,
                            pause, stall)

    def sink(self, nbytes, chunk=65536, pause=0, addr=None, stall=60):
        """Sends nbytes to the guest (chunk bytes, then a pause of pause
        seconds) and compares the SHA-256 the guest answers with its own;
        result() gives bytes, match, reset, error."""
        return self._helper("net-sink", addr or self.GUEST_ADDR, self.GUEST_PORT, nbytes, chunk,
                            pause, stall)

    def remove(self):
        reap(self.procs)
        if not self.created:
            return
        # Whatever else runs in it was started there by this test (cprd,
        # its QEMUs): by pid, from the namespace's own list.
        p = self._ip("netns", "pids", self.name, check=False)
        for pid in (int(x) for x in p.stdout.split() if x.isdigit()):
            log("netlab: killing pid %d (%s), left in %s" % (pid, " ".join(cmdline(pid))[:100], self.name))
            kill_pid(pid, signal.SIGKILL)
        self._ip("netns", "del", self.name, check=False)
        self.created = False


class NetHelper:
    """A helper (net_helper) running inside a NetLab."""

    def __init__(self, popen, what):
        self.popen, self.what = popen, what

    def stop(self):
        """Asks it to finish (a ping runs until then)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def result(self, timeout=120):
        """Its report (a dict); raises AssertionError if it gave none."""
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_pid(self.popen.pid)
            out, err = self.popen.communicate(timeout=10)
            raise AssertionError("%s did not finish in %.0f s; stderr: %s" % (self.what, timeout, err))
        lines = [l for l in out.splitlines() if l.strip()]
        if not lines:
            raise AssertionError("%s exited with %s and reported nothing; stderr: %s" %
                                 (self.what, self.popen.returncode, err.strip()[-2000:]))
        return json.loads(lines[-1])


# ---- inside the namespace: python3 cprdtest.py net-ping|net-stream|net-sink --

STREAM_PATTERN = b"cprd-net-stream-abcdefghijklmnopqrstuvwxyz-0123456789."


def stream_line(i):
    """Line i of the guest's send stream (tests/guest/linux/cprd-net)."""
    return b"%08d %s\n" % (i, STREAM_PATTERN)


def _icmp_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff


def _stop_on_signal():
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: stop.set())
    return stop


def _net_ping(addr, interval, reply_times="0"):
    import select
    interval = float(interval)
    stop = _stop_on_signal()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xffff
    sent, replies = [], {}
    next_t = time.monotonic()
    end = None
    while True:
        now = time.monotonic()
        if end is None and stop.is_set():
            end = now + 1.0  # a second for the last replies
        if end is not None and now >= end:
            break
        if end is None and now >= next_t:
            i = len(sent)
            body = struct.pack("!Q", i) + b"cprd-ping" * 4
            head = struct.pack("!BBHHH", 8, 0, 0, ident, i & 0xffff)
            pkt = struct.pack("!BBHHH", 8, 0, _icmp_checksum(head + body), ident, i & 0xffff) + body
            try:
                s.sendto(pkt, (addr, 0))
            except OSError:
                pass  # counts as lost
            sent.append(now)
            # On schedule, but never a burst to catch up after a stall.
            next_t = max(next_t + interval, now)
        wait = max(0.0, (next_t if end is None else end) - time.monotonic())
        r, _, _ = select.select([s], [], [], wait)
        if not r:
            continue
        data = s.recv(2048)
        ihl = (data[0] & 0x0f) * 4
        icmp = data[ihl:]
        if len(icmp) < 16:
            continue
        typ, _, _, rid, _ = struct.unpack("!BBHHH", icmp[:8])
        if typ != 0 or rid != ident:
            continue
        (i,) = struct.unpack("!Q", icmp[8:16])
        if i < len(sent) and i not in replies:
            replies[i] = time.monotonic()
    lost = [i for i in range(len(sent)) if i not in replies]
    runs, run = [], []
    for i in lost:
        if run and i != run[-1] + 1:
            runs.append(run)
            run = []
        run.append(i)
    if run:
        runs.append(run)
    times = sorted(replies.values())
    gaps = [b - a for a, b in zip(times, times[1:])]
    rtts = sorted(replies[i] - sent[i] for i in replies)
    out = {"sent": len(sent), "received": len(replies), "lost": len(lost),
           "lost_runs": [[r[0], len(r)] for r in runs][:50],
           # When each lost ping was sent (time.monotonic(), the same clock
           # in every process), to tell which step lost it.
           "lost_at": [round(sent[i], 4) for i in lost][:200],
           "max_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
           "max_rtt_ms": round(rtts[-1] * 1000, 1) if rtts else None,
           "median_rtt_ms": round(rtts[len(rtts) // 2] * 1000, 2) if rtts else None,
           "seconds": round(sent[-1] - sent[0], 2) if sent else 0}
    if reply_times == "1":
        # When each reply came, in order, so that a caller can find the
        # longest gap in a window of its own (the network bench: around
        # each upgrade). Only on request: ~10 bytes per reply, and the
        # tests print the whole result when they fail.
        out["reply_at"] = [round(t, 4) for t in times]
    return out


def _net_session(out, addr, port, stall, talk):
    """Connects to the guest's cprd-net, runs talk(socket) and fills out's
    reset, error and seconds the same way for every helper."""
    t0 = time.monotonic()
    try:
        s = socket.create_connection((addr, int(port)), timeout=10)
        s.settimeout(float(stall))
        talk(s)
    except ConnectionResetError as e:
        out["reset"], out["error"] = True, str(e)
    except OSError as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def _net_stream(addr, port, lines, every, pause, stall):
    lines = int(lines)
    out = {"bytes": 0, "lines": 0, "end": False, "first_bad": None, "reset": False, "error": None,
           "max_gap_ms": 0.0}

    def talk(s):
        s.sendall(b"send %d %d %s\n" % (lines, int(every), str(pause).encode()))
        pending, last = b"", time.monotonic()
        end_line = b"cprd-net end %d\n" % lines
        while True:
            data = s.recv(262144)
            now = time.monotonic()
            out["max_gap_ms"] = max(out["max_gap_ms"], round((now - last) * 1000, 1))
            last = now
            if not data:
                break
            out["bytes"] += len(data)
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                line += b"\n"
                if out["lines"] < lines and line == stream_line(out["lines"]):
                    out["lines"] += 1
                elif out["lines"] == lines and line == end_line and not out["end"]:
                    out["end"] = True
                elif out["first_bad"] is None:
                    out["first_bad"] = "after %d good lines: %r" % (out["lines"], line[:100])
        if pending and out["first_bad"] is None:
            out["first_bad"] = "a partial last line: %r" % pending[:100]
    return _net_session(out, addr, port, stall, talk)


def _net_sink(addr, port, nbytes, chunk, pause, stall):
    import hashlib
    nbytes, chunk, pause = int(nbytes), int(chunk), float(pause)
    out = {"bytes": 0, "match": False, "reset": False, "error": None, "answer": None}
    h = hashlib.sha256()

    def talk(s):
        s.sendall(b"sink %d\n" % nbytes)
        i = 0
        while out["bytes"] < nbytes:
            block = b"".join(stream_line(i + k) for k in range(chunk // 64 + 1))
            block = block[:min(chunk, nbytes - out["bytes"])]
            i += chunk // 64 + 1
            s.sendall(block)
            h.update(block)
            out["bytes"] += len(block)
            if pause:
                time.sleep(pause)
        answer = b""
        while not answer.endswith(b"\n"):
            data = s.recv(4096)
            if not data:
                break
            answer += data
        out["answer"] = answer.decode("ascii", "replace").strip()
        out["match"] = out["answer"] == "cprd-net sink %d %s" % (nbytes, h.hexdigest())
    return _net_session(out, addr, port, stall, talk)


def _net_tap_exec(ifname, bridge, fd, *argv):
    """Makes tap ifname (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, not
    persistent), puts it on bridge and up, and execs argv with it as fd."""
    import fcntl
    TUNSETIFF = 0x400454ca
    IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_TUN_EXCL = 0x0002, 0x1000, 0x4000, 0x8000
    fd = int(fd)
    tap = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", ifname.encode(),
                                            IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL))
    subprocess.run(["ip", "link", "set", ifname, "master", bridge, "up"], check=True)
    if tap != fd:
        os.dup2(tap, fd)
        os.close(tap)
    os.set_inheritable(fd, True)  # the one fd that crosses exec
    os.execv(argv[0], list(argv))


def net_helper(argv):
    """python3 cprdtest.py net-ping ADDR INTERVAL [REPLY_TIMES]
                           net-stream ADDR PORT LINES EVERY PAUSE STALL
                           net-sink ADDR PORT BYTES CHUNK PAUSE STALL
                           net-tap-exec IFNAME BRIDGE FD PROGRAM ARGS...
    Runs inside a NetLab (NetLab.ping, .stream, .sink, .popen_with_tap
    start it); the first three print their report as one JSON line."""
    helpers = {"net-ping": _net_ping, "net-stream": _net_stream, "net-sink": _net_sink}
    if argv and argv[0] == "net-tap-exec" and len(argv) > 4:
        _net_tap_exec(*argv[1:])
    if not argv or argv[0] not in helpers:
        print(net_helper.__doc__, file=sys.stderr)
        return 2
    print(json.dumps(helpers[argv[0]](*argv[1:])), flush=True)
    return 0


# ---- main ---------------------------------------------------------------------

def main(qemus=(QEMU10,)):
    require_binaries(*qemus)
    t0 = time.monotonic()
    log("cprd %s, cprctl %s, guest %s" % (CPRD, CPRCTL, GUEST_IMAGE))
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(sys.modules["__main__"])
    if len(sys.argv) > 1:  # names of tests to run, as unittest takes them
        suite = loader.loadTestsFromNames(sys.argv[1:], sys.modules["__main__"])
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    # A skipped test is a failure in CI unless tests/ci-skips.txt lists it.
    skipped = 0
    for test, reason in result.skipped:
        status, text = ci_skips.skip(area(), test.id().split(".")[-1], reason)
        log("%s %s: %s" % (status, test.id().split(".")[-1], text))
        if status == "SKIP":
            skipped += 1
        else:
            failed += 1
    passed = result.testsRun - len(result.failures) - len(result.errors) - \
        len(result.unexpectedSuccesses) - len(result.skipped)
    log("took %.1f s" % (time.monotonic() - t0))
    log("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % skipped if skipped else ""))
    if failed:
        sys.exit(1)
    if result.testsRun and skipped == result.testsRun:
        sys.exit(SKIP)
    sys.exit(0)


if __name__ == "__main__":
    sys.exit(net_helper(sys.argv[1:]))
