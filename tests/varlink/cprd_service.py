#!/usr/bin/python3
# cprd's own socket (not the test server) answering org.varlink.service to
# clients written by other people:
#  - python3-varlink, CLI and library: GetInfo (vendor, product, version,
#    the interfaces), GetInterfaceDescription of io.cprd.Manager and of
#    org.varlink.service (each parses with python3-varlink's own parser),
#    InterfaceNotFound for an interface cprd does not have;
#  - varlink-go: Debian's package ships no generic client, only its
#    certification program and code generators. So its client library
#    talks to cprd through varlink-go-certification -client (through a
#    relay here that records both directions: its first call, Start of
#    org.varlink.certification, must get cprd's InterfaceNotFound), and its
#    IDL parser (varlink-go-interface-generator) must accept the
#    descriptions cprd serves.
# Starts the real cprd as root in a temporary folder, stops it by pid with
# SIGTERM and checks that it exits 0.
# Usage: cprd_service.py CPRD MANAGER-IDL. Ends with "N passed, M failed[,
# K skipped]"; exit 77 when a client is missing (each such check prints
# SKIP), which with CI=true fails instead unless tests/ci-skips.txt allows it.
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import Checks, expect  # noqa: E402

AREA = "varlink_cprd_service"  # the ctest test
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-varlink
# CPRD_VARLINK_GO: another path for varlink-go-certification (to see the
# skips); the generator is looked for beside it.
GO_CERT = os.environ.get("CPRD_VARLINK_GO") or "/usr/bin/varlink-go-certification"
GO_IDL = os.path.join(os.path.dirname(GO_CERT), "varlink-go-interface-generator")
SLOWDOWN = float(os.environ.get("CPRD_TEST_SLOWDOWN") or 1)
TIMEOUT = 20 * SLOWDOWN  # seconds for any one step; only catches a hang
INTERFACES = ("org.varlink.service", "io.cprd.Manager")
UNKNOWN = "io.cprd.NoSuchInterface"

checks = Checks(AREA)
check = checks.check

try:
    import varlink
    no_python_varlink = None
except ImportError as e:
    no_python_varlink = ("python3-varlink is not installed for %s (%s): apt-get install python3-varlink"
                         % (sys.executable, e))


# ---- cprd ----------------------------------------------------------------------

def start_cprd(binary, root):
    sock = os.path.join(root, "run", "io.cprd.Manager")
    log = open(os.path.join(root, "cprd.log"), "wb")
    proc = subprocess.Popen([binary, "--state-dir", os.path.join(root, "state"),
                             "--runtime-dir", os.path.join(root, "run")],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True)
    log.close()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("cprd exited with %d at start" % proc.returncode)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(sock)
            return proc, sock
        except OSError:
            time.sleep(0.02)
    stop_by_pid(proc, signal.SIGKILL)
    raise RuntimeError("cprd did not listen on %s in %.0f s" % (sock, TIMEOUT))


def stop_by_pid(proc, sig):
    """Sends sig to proc (by its pid, never by name); returns its exit status,
    or None when it did not exit in time (then it is killed)."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=10 * SLOWDOWN)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def read_log(root):
    try:
        with open(os.path.join(root, "cprd.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# ---- the wire, without any Varlink library ---------------------------------------

def messages(data):
    """The NUL-terminated messages in data, parsed; fails on a bad one."""
    parts = data.split(b"\0")
    expect(parts[-1] == b"", "bytes after the last NUL: %r" % parts[-1][:100])
    return [json.loads(p) for p in parts[:-1]]


def raw_call(path, method, params):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(path)
        s.sendall(json.dumps({"method": method, "parameters": params}).encode() + b"\0")
        buf = b""
        while not buf.endswith(b"\0"):
            chunk = s.recv(65536)
            expect(chunk, "cprd closed the connection without a reply to %s" % method)
            buf += chunk
    (reply,) = messages(buf)
    return reply


class Relay:
    """Listens on a socket and passes one connection's bytes to and from
    cprd's, keeping what each side sent."""

    def __init__(self, listen_path, target_path):
        self.sent = {"client": b"", "server": b""}
        self.target = target_path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(listen_path)
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.connect(self.target)
        peer = {conn: (up, "client"), up: (conn, "server")}
        with conn, up:
            while True:
                ready, _, _ = select.select(list(peer), [], [], TIMEOUT)
                if not ready:
                    return
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    other, who = peer[s]
                    self.sent[who] += data
                    other.sendall(data)

    def close(self):
        self.thread.join(TIMEOUT)
        self.listener.close()


# ---- python3-varlink ---------------------------------------------------------------

def cli(*args):
    """The CLI exits 0 on most failures, so callers read its output."""
    p = subprocess.run([PYTHON, "-m", "varlink.cli", *args], capture_output=True, text=True,
                       timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def python_checks(addr, version, manager_idl):
    def cli_info():
        rc, out, err = cli("info", addr)
        expect(rc == 0, "exit %d: %s" % (rc, err))
        expect("Vendor: cprd" in out.splitlines(), "no 'Vendor: cprd' in %r" % out)
        expect("Product: cprd" in out.splitlines(), "no 'Product: cprd' in %r" % out)
        expect("Version: %s" % version in out.splitlines(), "no 'Version: %s' in %r" % (version, out))
        listed = [line.strip() for line in out.split("Interfaces:", 1)[-1].splitlines() if line.strip()]
        for iface in INTERFACES:
            expect(iface in listed, "%s not listed in %r" % (iface, out))

    def lib_get_info():
        with varlink.Client(address=addr) as client, client.open("org.varlink.service") as con:
            info = con.GetInfo()
        expect(set(info) == {"vendor", "product", "version", "url", "interfaces"}, "fields %s" % info)
        expect(info["vendor"] == "cprd" and info["product"] == "cprd", "vendor/product %s" % info)
        expect(info["version"] == version, "version %r, cprd --version says %r" % (info["version"], version))
        expect(isinstance(info["url"], str) and info["url"], "url %r" % info["url"])
        ifaces = info["interfaces"]
        expect(sorted(ifaces) == sorted(INTERFACES), "interfaces %s" % ifaces)

    def lib_description(name, members):
        with varlink.Client(address=addr) as client, client.open("org.varlink.service") as con:
            desc = con.GetInterfaceDescription(name)["description"]
        expect(re.search(r"^interface %s$" % re.escape(name), desc, re.M), "no 'interface %s' line" % name)
        iface = varlink.Interface(desc)  # python3-varlink's parser
        expect(iface.name == name, "parsed name %r" % iface.name)
        for m in members:
            expect(m in iface.members, "%s missing from the parsed description" % m)
        return desc

    def lib_manager():
        desc = lib_description("io.cprd.Manager", ("ListVMs", "GetVM", "Upgrade", "NoSuchVM", "VM"))
        with open(manager_idl, encoding="utf-8") as f:
            expect(desc == f.read(), "cprd serves a description other than %s" % manager_idl)

    def lib_service():
        lib_description("org.varlink.service", ("GetInfo", "GetInterfaceDescription", "InterfaceNotFound",
                                                "MethodNotFound", "MethodNotImplemented",
                                                "InvalidParameter"))

    def lib_unknown():
        with varlink.Client(address=addr) as client, client.open("org.varlink.service") as con:
            try:
                con.GetInterfaceDescription(UNKNOWN)
            except varlink.VarlinkError as e:
                expect(e.error() == "org.varlink.service.InterfaceNotFound", "error %s" % e.error())
                expect(e.parameters() == {"interface": UNKNOWN}, "parameters %s" % e.parameters())
            else:
                raise AssertionError("GetInterfaceDescription(%s) did not fail" % UNKNOWN)

    def cli_help_manager():
        rc, out, err = cli("help", addr + "/io.cprd.Manager")
        expect(rc == 0 and not err, "exit %d: %s" % (rc, err))
        expect(varlink.Interface(out).name == "io.cprd.Manager", "parsed name")

    def cli_unknown():
        rc, out, err = cli("call", addr + "/org.varlink.service.GetInterfaceDescription",
                           json.dumps({"interface": UNKNOWN}))
        expect("org.varlink.service.InterfaceNotFound" in err and UNKNOWN in err, "stderr %r" % err)

    check("python_cli_info", cli_info)
    check("python_get_info", lib_get_info)
    check("python_description_manager", lib_manager)
    check("python_description_service", lib_service)
    check("python_unknown_interface", lib_unknown)
    check("python_cli_help_manager", cli_help_manager)
    check("python_cli_unknown_interface", cli_unknown)


# ---- varlink-go --------------------------------------------------------------------

def go_checks(path, tmp):
    def go_client():
        relay = Relay(os.path.join(tmp, "relay.sock"), path)
        p = subprocess.run([GO_CERT, "-client", "-varlink", "unix:" + os.path.join(tmp, "relay.sock")],
                           capture_output=True, text=True, timeout=TIMEOUT)
        relay.close()
        out = (p.stdout + p.stderr).strip()
        calls, replies = messages(relay.sent["client"]), messages(relay.sent["server"])
        print("  varlink-go sent %s; cprd answered %s" % (calls, replies), flush=True)
        expect(len(calls) == 1 and calls[0].get("method") == "org.varlink.certification.Start",
               "varlink-go's calls %s" % calls)
        expect(replies == [{"error": "org.varlink.service.InterfaceNotFound",
                            "parameters": {"interface": "org.varlink.certification"}}],
               "cprd's replies %s" % replies)
        # Its reaction to an error reply; "Failed to connect" would be its
        # reaction to the socket.
        expect(out == "Start() failed", "varlink-go-certification printed %r" % out)

    def go_parses(name):
        reply = raw_call(path, "org.varlink.service.GetInterfaceDescription", {"interface": name})
        desc = reply["parameters"]["description"]
        folder = os.path.join(tmp, name)
        os.mkdir(folder)
        note = ""
        if name != name.lower():
            # varlink-go 0.4.0 (Debian 12) takes only lowercase interface
            # names ("unknown keyword ''"); upstream fixed it in f8902ef
            # (2021, after 0.4.0). The rest of the text goes through as is.
            desc = re.sub(r"^interface %s$" % re.escape(name), "interface " + name.lower(), desc,
                          count=1, flags=re.M)
            note = " (interface name lowered for varlink-go 0.4.0)"
        src = os.path.join(folder, name.lower() + ".varlink")
        with open(src, "w", encoding="utf-8") as f:
            f.write(desc)
        p = subprocess.run([GO_IDL, src], capture_output=True, text=True, timeout=TIMEOUT)
        expect(p.returncode == 0, "varlink-go-interface-generator: exit %d: %s%s" %
               (p.returncode, (p.stdout + p.stderr).strip(), note))
        gen = os.path.join(folder, name.lower().replace(".", "") + ".go")
        expect(os.path.exists(gen), "no %s generated" % gen)
        with open(gen, encoding="utf-8") as f:
            code = f.read()
        # Every method, as varlink-go's parser read it, in a call it generated.
        methods = re.findall(r"^method\s+(\w+)", desc, re.M)
        expect(methods, "no methods in the description of %s" % name)
        for m in methods:
            expect('"%s.%s"' % (name.lower(), m) in code, "no call of %s.%s generated" % (name.lower(), m))
        if note:
            print("  %s%s" % (name, note), flush=True)

    check("go_client_gets_interface_not_found", go_client)
    check("go_parses_description_manager", go_parses, "io.cprd.Manager")
    check("go_parses_description_service", go_parses, "org.varlink.service")


GO_CHECKS = ("go_client_gets_interface_not_found", "go_parses_description_manager",
             "go_parses_description_service")
PYTHON_CHECKS = ("python_cli_info", "python_get_info", "python_description_manager",
                 "python_description_service", "python_unknown_interface", "python_cli_help_manager",
                 "python_cli_unknown_interface")


def main():
    if len(sys.argv) != 3:
        print("usage: %s CPRD MANAGER-IDL" % sys.argv[0], file=sys.stderr)
        return 2
    binary, manager_idl = sys.argv[1], sys.argv[2]
    if os.geteuid() != 0:
        checks.fail("root", "cprd is a privileged daemon: run this test as root")
        return checks.finish()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=TIMEOUT).stdout.strip().split()[-1]
    missing_go = [b for b in (GO_CERT, GO_IDL) if not os.access(b, os.X_OK)]

    tmp = tempfile.mkdtemp(prefix="cprd-varlink-service-")
    proc = None
    try:
        proc, path = start_cprd(binary, tmp)
        if no_python_varlink:
            for name in PYTHON_CHECKS:
                checks.skip(name, no_python_varlink)
        else:
            python_checks("unix:" + path, version, manager_idl)
        if missing_go:
            for name in GO_CHECKS:
                checks.skip(name, "%s missing (apt-get install varlink-go)" % " and ".join(missing_go))
        else:
            go_checks(path, tmp)
        check("cprd_still_running", lambda: expect(proc.poll() is None, "it exited with %s" % proc.returncode))

        def exits_0():
            rc = stop_by_pid(proc, signal.SIGTERM)
            expect(rc is not None, "still running %.0f s after SIGTERM (killed)" % (10 * SLOWDOWN))
            expect(rc == 0, "exit status %d on SIGTERM" % rc)

        check("cprd_exits_0_on_sigterm", exits_0)
    except Exception as e:
        checks.fail("setup", "%s: %s" % (type(e).__name__, e))
    finally:
        if proc and proc.poll() is None:
            stop_by_pid(proc, signal.SIGKILL)
        if checks.failed:
            print("cprd's log:\n" + read_log(tmp), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
