# Shared helpers for cprd's benchmarks (stdlib only, Debian's /usr/bin/python3).
#
# - Cprd: runs a private cprd (own state and runtime folders, own socket) and
#   stops it, and every VM it started, when done.
# - varlink_call / Varlink: raw Varlink, NUL-terminated JSON on a unix socket.
# - QMP: a small synchronous QMP client that keeps events with their
#   timestamps (QEMU's own, realtime microseconds).
# - spawn_qemu: starts a QEMU with chosen fds at chosen numbers (as cprd
#   does: QMP 3, console 4, guest RAM 5), stops it by pid.
# - dirty_ram: fills guest RAM with non-zero bytes, 64 MiB at a time.
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 64 * MiB
PAGE = 4096

# The test guest's RAM block (tests/guest/README.md).
GUEST_MAGIC_OFF = 0x8000
GUEST_MAGIC = b"CPRDGST1"
GUEST_TICKS_OFF = 0x8008


class BenchError(Exception):
    """Something the benchmark drives failed: the script exits non-zero."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper()
    m = re.fullmatch(r"(\d+)\s*([MG])I?B?", s)
    if not m:
        raise ValueError(f"size '{s}' is not like 256M or 4G")
    n = int(m.group(1))
    return n * (GiB if m.group(2) == "G" else MiB)


def fmt_size(b):
    if b >= GiB and b % GiB == 0:
        return f"{b // GiB} GiB"
    return f"{b // MiB} MiB"


def meminfo(key="MemAvailable"):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def proc_status(pid, key):
    """A field of /proc/PID/status in bytes (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / hz


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a list of numbers."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- the command line -------------------------------------------------------

def require_built(prog, *paths):
    """Exits with a hint when one of the built programs or images is missing."""
    for path in paths:
        if not os.path.exists(path):
            sys.exit(f"{prog}: {path} does not exist (build first: cmake --build build)")


def pick_pairs(prog, pairs, wanted, known):
    """Those of pairs that --pair FROM,TO,MODE (repeatable; wanted, None
    when not given) names; exits on a pair not in known."""
    if not wanted:
        return pairs
    want = [tuple(x.strip() for x in p.split(",")) for p in wanted]
    unknown = [",".join(w) for w in want if w not in known]
    if unknown:
        sys.exit(f"{prog}: --pair {' '.join(unknown)} is not one of "
                 f"{' '.join(','.join(p) for p in known)}")
    return [p for p in pairs if p in want]


def json_lines(text):
    """The JSON objects among text's lines: cprctl --json prints one a line,
    anything else (progress, a stray line) is passed over."""
    out = []
    for line in text.splitlines():
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if isinstance(o, dict):
            out.append(o)
    return out


# ---- Varlink ---------------------------------------------------------------

class Varlink:
    """One connection; calls go one after another on it."""

    def __init__(self, path, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, method, parameters=None, more=False):
        msg = {"method": method}
        if parameters is not None:
            msg["parameters"] = parameters
        if more:
            msg["more"] = True
        self.sock.sendall(json.dumps(msg).encode() + b"\0")

    def recv(self):
        while b"\0" not in self.buf:
            data = self.sock.recv(1 << 20)
            if not data:
                raise BenchError("cprd closed the Varlink connection")
            self.buf += data
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, parameters=None):
        """Returns the reply's parameters; raises BenchError on an error reply."""
        self.send(method, parameters)
        r = self.recv()
        if "error" in r:
            raise BenchError(f"{method}: {r['error']} {json.dumps(r.get('parameters', {}))}")
        return r.get("parameters", {})


# ---- cprd ------------------------------------------------------------------

class Cprd:
    """A private cprd. Its VMs are stopped and cprd itself ends on stop()."""

    def __init__(self, binary, cprctl, workdir, log_level="info", prefix=()):
        self.binary = binary
        # What cprd's command line starts with: `ip netns exec NS` runs it in
        # a network namespace (that execs cprd itself, so the pid is cprd's).
        self.prefix = list(prefix)
        self.cprctl = cprctl
        self.dir = workdir
        self.state_dir = os.path.join(workdir, "state")
        self.runtime_dir = os.path.join(workdir, "run")
        self.socket = os.path.join(self.runtime_dir, "io.cprd.Manager")
        self.address = "unix:" + self.socket
        self.log_path = os.path.join(workdir, "cprd.log")
        self.proc = None
        self.qemu_pids = set()  # every QEMU pid we saw it run
        self.log_level = log_level

    @property
    def pid(self):
        return self.proc.pid

    def start(self, timeout=20):
        os.makedirs(self.dir, exist_ok=True)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.prefix + [self.binary, "--state-dir", self.state_dir, "--runtime-dir", self.runtime_dir,
                           "--log-level", self.log_level],
            stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"cprd exited with {self.proc.returncode}; see {self.log_path}")
            if os.path.exists(self.socket):
                try:
                    Varlink(self.socket, 5).call("io.cprd.Manager.ListVMs")
                    return
                except (OSError, BenchError):
                    pass
            time.sleep(0.02)
        raise BenchError(f"cprd did not listen on {self.socket} within {timeout} s")

    def connect(self, timeout=120):
        return Varlink(self.socket, timeout)

    def call(self, method, parameters=None, timeout=120):
        v = self.connect(timeout)
        try:
            return v.call("io.cprd.Manager." + method, parameters)
        finally:
            v.close()

    def get_vm(self, name):
        vm = self.call("GetVM", {"name": name})["vm"]
        if vm.get("pid"):
            self.qemu_pids.add(vm["pid"])
        return vm

    def ram_fd_path(self, name):
        """/proc/CPRD/fd/N of the VM's guest RAM memfd, which cprd holds."""
        vm = self.get_vm(name)
        for f in vm.get("fds", []):
            if f.get("kind") == "ram":
                return f"/proc/{self.pid}/fd/{f['fd']}"
        raise BenchError(f"cprd holds no guest RAM fd for {name}")

    def qemu_cmdlines(self, name):
        """The command lines cprd logged ('cprd: starting ...') for a VM."""
        path = os.path.join(self.state_dir, "vms", name, "qemu.log")
        out = []
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("cprd: starting "):
                    out.append(line[len("cprd: starting "):].rstrip("\n"))
        return out

    def console(self, name):
        """The VM's console log as cprd wrote it."""
        try:
            with open(os.path.join(self.state_dir, "vms", name, "console.log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def cprctl_run(self, *args, timeout=600):
        cmd = [self.cprctl, "--address", self.address, *args]
        t0 = time.monotonic()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p, (time.monotonic() - t0) * 1000.0

    def create_vm(self, name, memory_mib, qemu, disk, accel="tcg"):
        spec = {"name": name, "memory": memory_mib, "qemu": qemu, "accel": accel,
                "disks": [{"path": disk, "format": "raw", "readonly": True}]}
        return self.call("CreateVM", {"spec": spec})["vm"]

    def start_vm(self, name):
        vm = self.call("StartVM", {"name": name})["vm"]
        if vm.get("pid"):
            self.qemu_pids.add(vm["pid"])
        return vm

    def stop_vm(self, name):
        try:
            self.call("StopVM", {"name": name, "force": True}, timeout=30)
        except BenchError as e:
            if "BadState" not in str(e):
                raise

    def delete_vm(self, name):
        self.call("DeleteVM", {"name": name})

    def stop(self):
        """Stops every VM it runs, then cprd; kills QEMUs left behind by pid."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                for vm in self.call("ListVMs", timeout=30).get("vms", []):
                    if vm.get("pid"):
                        self.qemu_pids.add(vm["pid"])
                    if vm.get("state") in ("running", "paused", "starting", "upgrading", "crashed"):
                        try:
                            self.call("StopVM", {"name": vm["name"], "force": True}, timeout=30)
                        except (OSError, BenchError) as e:
                            log(f"stopping {vm['name']}: {e}")
            except (OSError, BenchError) as e:
                log(f"cannot list cprd's VMs: {e}")
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.qemu_pids:
            if pid_alive(pid):
                log(f"killing QEMU pid {pid} that cprd left behind")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.logf.close()
        self.proc = None


# ---- QEMU processes and QMP ------------------------------------------------

class QMP:
    """Synchronous QMP over a connected socket. Events are kept in
    self.events as (name, qemu_timestamp_seconds, data, received_at)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.events = []
        self.greeting = None
        self.next_id = 0

    def _read_msg(self, deadline):
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("QMP: no answer in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise BenchError("QMP: no answer in time")
            except OSError as e:
                raise BenchError(f"QMP: lost QEMU's monitor: {e}")
            if not data:
                raise BenchError("QMP: QEMU closed the monitor")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip()
        if not line:
            return None
        msg = json.loads(line)
        if "event" in msg:
            ts = msg.get("timestamp", {})
            self.events.append((msg["event"], ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6,
                                msg.get("data"), time.time()))
            return None
        if "QMP" in msg:
            self.greeting = msg
            return None
        return msg

    def send(self, cmd, args=None):
        self.next_id += 1
        msg = {"execute": cmd, "id": self.next_id}
        if args is not None:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        return self.next_id

    def wait_reply(self, cid, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_msg(deadline)
            if msg is None or msg.get("id") != cid:
                continue
            if "error" in msg:
                raise BenchError(f"QMP error: {msg['error'].get('desc')}")
            return msg.get("return")

    def cmd(self, cmd, args=None, timeout=30):
        return self.wait_reply(self.send(cmd, args), timeout)

    def handshake(self, timeout=30):
        deadline = time.monotonic() + timeout
        while self.greeting is None:
            self._read_msg(deadline)
        return self.cmd("qmp_capabilities", timeout=timeout)

    def event(self, name):
        for e in self.events:
            if e[0] == name:
                return e
        return None

    def wait_event(self, name, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            e = self.event(name)
            if e:
                return e
            self._read_msg(deadline)


class Qemu:
    """A QEMU started with fds at fixed numbers, like cprd starts one."""

    def __init__(self, argv, fds, log_path):
        # fds: {target_number: fd_in_this_process}. Move every source above
        # the targets first so no dup2 overwrites a source still needed.
        self.argv = argv
        close_inherited_fds()
        moved = {t: fcntl_dupfd(fd, 100) for t, fd in fds.items()}
        logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, logfd, 1),
                   (os.POSIX_SPAWN_DUP2, logfd, 2)]
        actions += [(os.POSIX_SPAWN_DUP2, src, t) for t, src in moved.items()]
        try:
            self.pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True)
        finally:
            for fd in list(moved.values()) + [logfd, devnull]:
                os.close(fd)
        self.status = None

    def alive(self):
        if self.status is not None:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self.status = status
        return False

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def kill(self):
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(10)


def close_inherited_fds():
    """Fds this process inherited without close-on-exec (a pipe of whoever
    started us, say) must not leak into QEMU: mark them close-on-exec."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass


def fcntl_dupfd(fd, minimum):
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)


class Console:
    """Our end of a guest's console socketpair; a thread drains it, keeps
    the newest complete lines and remembers when the last one came."""

    KEEP = 4000  # complete lines kept in self.history (the newest)

    def __init__(self):
        self.ours, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lines = 0
        self.last_line = ""
        self.last_time = 0.0
        self.history = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buf = b""
        while True:
            try:
                data = self.ours.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.last_line = line.decode(errors="replace")
                self.history.append(self.last_line)
                if len(self.history) > self.KEEP:
                    del self.history[:len(self.history) - self.KEEP]
                self.lines += 1
                self.last_time = time.monotonic()

    def wait_new_line(self, timeout):
        n = self.lines
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lines > n:
                return True
            time.sleep(0.02)
        return False

    def text(self):
        """The complete lines kept so far, each ending in \\n."""
        return "".join(line + "\n" for line in list(self.history))

    def close(self):
        self.peer.close()
        try:
            self.ours.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ours.close()


def split_cmdline(line):
    """cprd logs argv joined by spaces; none of our arguments holds one."""
    return line.split(" ")


def argv_without(argv, flag, value_pred=None):
    """argv without 'flag VALUE' pairs (or a lone flag when value_pred is None
    and the flag takes no value)."""
    out = []
    i = 0
    while i < len(argv):
        if argv[i] == flag:
            if value_pred is None:
                i += 1
                continue
            if i + 1 < len(argv) and value_pred(argv[i + 1]):
                i += 2
                continue
        out.append(argv[i])
        i += 1
    return out


# ---- guest RAM ---------------------------------------------------------------

def read_ticks(fd):
    data = os.pread(fd, 16, GUEST_MAGIC_OFF)
    if data[:8] != GUEST_MAGIC:
        return None
    return int.from_bytes(data[8:16], "little")


def wait_guest_ticking(fd, timeout=30, what="guest"):
    """Waits until the test guest has booted and its tick counter moves."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        t = read_ticks(fd)
        if t is not None:
            if first is None:
                first = t
            elif t > first:
                return t
        time.sleep(0.05)
    raise BenchError(f"{what}: the guest's tick counter did not move within {timeout} s")


def dirty_ram(fd, size, skip=1 * MiB, pattern_byte=0xA5):
    """Makes every page of guest RAM non-zero, 64 MiB at a time, except the
    first MiB (real-mode IVT, BIOS data, the guest's code and stack, SeaBIOS)
    and pages the guest or the BIOS already wrote (any non-zero page is left
    as it is, so nothing the running guest uses is overwritten). Returns the
    bytes written."""
    zero_chunk = bytes(CHUNK)
    zero_page = bytes(PAGE)
    fill = bytes([pattern_byte]) * CHUNK
    written = 0
    off = skip
    while off < size:
        n = min(CHUNK, size - off)
        data = os.pread(fd, n, off)
        if data == zero_chunk[:n]:
            written += os.pwrite(fd, fill[:n], off)
        else:
            run = None
            for p in range(0, n, PAGE):
                is_zero = data[p:p + PAGE] == zero_page
                if is_zero and run is None:
                    run = p
                elif not is_zero and run is not None:
                    written += os.pwrite(fd, fill[:p - run], off + run)
                    run = None
            if run is not None:
                written += os.pwrite(fd, fill[:n - run], off + run)
        off += n
    return written


def log_tail(path, n=3):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.readlines()[-n:])
    except OSError:
        return ""


class Workdir:
    """A temporary folder removed at the end unless kept."""

    def __init__(self, prefix, keep=False):
        self.path = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
        self.keep = keep

    def cleanup(self):
        if self.keep:
            log(f"kept {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)
