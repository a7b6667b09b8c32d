#!/usr/bin/python3
# Drives our Varlink test server with python3-varlink, a client written by
# other people: its CLI (info, help, call, call --more, an error), its
# library (Interface parsing, Client calls) and a raw socket for pipelining.
# Usage: python_client.py VL-TEST-SERVER MANAGER-IDL. Exit 77: skipped
# (python3-varlink missing); with CI=true that fails instead (tests/ci_skips.py).
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from checks import Checks, expect  # noqa: E402

PYTHON = "/usr/bin/python3"  # Debian's, which has python3-varlink
TIMEOUT = 20  # seconds for any one step
AREA = "varlink_python_client"  # the ctest test

checks = Checks(AREA)
check = checks.check

try:
    import varlink
except ImportError as e:
    checks.skip_all("python3-varlink is not installed for %s (%s): apt-get install python3-varlink"
                    % (sys.executable, e))
    sys.exit(checks.finish())


def cli(*args):
    p = subprocess.run([PYTHON, "-m", "varlink.cli", *args], capture_output=True,
                       text=True, timeout=TIMEOUT)
    return p.returncode, p.stdout, p.stderr


def start_server(binary, path):
    p = subprocess.Popen([binary, path], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{binary} exited with {p.returncode}")
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(path)
                return p
            except OSError:
                pass
        time.sleep(0.02)
    p.kill()
    raise RuntimeError(f"{binary} did not listen on {path} in time")


def stop_server(p):
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def recv_messages(sock, n):
    """Reads n NUL-terminated messages from a raw socket."""
    buf = b""
    out = []
    while len(out) < n:
        while b"\0" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed after {len(out)} replies")
            buf += chunk
        msg, buf = buf.split(b"\0", 1)
        out.append(json.loads(msg))
    return out


def run_checks(path, manager_idl):
    addr = "unix:" + path

    def info():
        rc, out, err = cli("info", addr)
        expect(rc == 0, f"exit {rc}: {err}")
        for iface in ("org.varlink.service", "org.varlink.certification", "io.cprd.Test"):
            expect(any(line.strip() == iface for line in out.splitlines()),
                   f"{iface} not listed in: {out!r}")
        expect("Vendor: cprd project" in out, f"no vendor in {out!r}")

    def help_parses():
        rc, out, err = cli("help", addr + "/io.cprd.Test")
        expect(rc == 0, f"exit {rc}: {err}")
        iface = varlink.Interface(out.strip() + "\n")
        expect(iface.name == "io.cprd.Test", f"name {iface.name}")
        for m in ("Echo", "Count", "Sleep", "Fail", "Note", "Stats", "Big", "Unimplemented",
                  "TestError"):
            expect(m in iface.members, f"{m} missing from the parsed IDL")

    def help_service():
        rc, out, err = cli("help", addr + "/org.varlink.service")
        expect(rc == 0, f"exit {rc}: {err}")
        iface = varlink.Interface(out)
        expect("GetInterfaceDescription" in iface.members, "service IDL incomplete")

    def manager_idl_parses():
        with open(manager_idl, encoding="utf-8") as f:
            iface = varlink.Interface(f.read())
        expect(iface.name == "io.cprd.Manager", f"name {iface.name}")
        expect(any(isinstance(m, varlink.scanner._Method) for m in iface.members.values()),
               "no methods in io.cprd.Manager")

    def call():
        rc, out, err = cli("call", addr + "/io.cprd.Test.Echo", '{"text":"hi"}')
        expect(rc == 0, f"exit {rc}: {err}")
        expect(json.loads(out) == {"text": "hi"}, f"reply {out!r}")

    def call_more():
        rc, out, err = cli("call", "--more", addr + "/io.cprd.Test.Count", '{"count":3}')
        expect(rc == 0, f"exit {rc}: {err}")
        # The CLI prints each reply as an indented JSON object.
        dec = json.JSONDecoder()
        replies, i = [], 0
        while True:
            while i < len(out) and out[i].isspace():
                i += 1
            if i >= len(out):
                break
            obj, i = dec.raw_decode(out, i)
            replies.append(obj)
        expect(replies == [{"number": 1}, {"number": 2}, {"number": 3}], f"replies {replies}")

    def call_error():
        rc, out, err = cli("call", addr + "/io.cprd.Test.Fail", '{"reason":"on purpose"}')
        expect(rc == 0, f"the CLI exits 0 on a Varlink error, got {rc}")  # it prints to stderr
        expect("io.cprd.Test.TestError" in err, f"stderr {err!r}")
        expect("on purpose" in err, f"stderr {err!r}")

    def call_unknown_method():
        rc, out, err = cli("call", addr + "/io.cprd.Test.Nope", "{}")
        expect("org.varlink.service.MethodNotFound" in err, f"stderr {err!r}")

    def library_call():
        with varlink.Client(address=addr) as client, client.open("io.cprd.Test") as con:
            expect(con.Echo("library") == {"text": "library"}, "Echo")
            stats = con.Stats()
            expect(stats["uid"] == os.getuid(), f"uid {stats}")
            expect(stats["pid"] == os.getpid(), f"pid {stats}")

    def library_more():
        with varlink.Client(address=addr) as client, client.open("io.cprd.Test") as con:
            got = [r["number"] for r in con.Count(5, _more=True)]
            expect(got == [1, 2, 3, 4, 5], f"got {got}")
            # The connection is usable after the stream ended.
            expect(con.Echo("after") == {"text": "after"}, "Echo after the stream")

    def library_error():
        with varlink.Client(address=addr) as client, client.open("io.cprd.Test") as con:
            try:
                con.Fail("lib")
            except varlink.VarlinkError as e:
                expect(e.error() == "io.cprd.Test.TestError", f"error {e.error()}")
                expect(e.parameters() == {"reason": "lib"}, f"parameters {e.parameters()}")
            else:
                raise AssertionError("Fail did not fail")

    def library_oneway():
        with varlink.Client(address=addr) as client, client.open("io.cprd.Test") as con:
            before = con.Stats()["notes"]
            con.Note("one", _oneway=True)
            # No reply comes for the oneway call, so the next reply is Stats'.
            after = con.Stats()["notes"]
            expect(after == before + 1, f"notes {before} -> {after}")

    def pipelined():
        reqs = b"".join(
            json.dumps({"method": "io.cprd.Test.Echo", "parameters": {"text": t}}).encode() + b"\0"
            for t in ("a", "b", "c"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(path)
            s.sendall(reqs)  # one send: the server sees them together
            replies = recv_messages(s, 3)
        texts = [r.get("parameters", {}).get("text") for r in replies]
        expect(texts == ["a", "b", "c"], f"replies {replies}")
        for r in replies:
            expect(set(r) == {"parameters"}, f"unexpected keys in {r}")

    def pipelined_mixed():
        # A stream, an error and a call queued behind each other.
        reqs = b"".join(json.dumps(m).encode() + b"\0" for m in (
            {"method": "io.cprd.Test.Count", "parameters": {"count": 2}, "more": True},
            {"method": "io.cprd.Test.Fail", "parameters": {}},
            {"method": "io.cprd.Test.Echo", "parameters": {"text": "z"}},
        ))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(path)
            s.sendall(reqs)
            replies = recv_messages(s, 4)
        expect(replies[0] == {"parameters": {"number": 1}, "continues": True}, f"{replies[0]}")
        expect(replies[1] == {"parameters": {"number": 2}}, f"{replies[1]}")
        expect(replies[2].get("error") == "io.cprd.Test.TestError", f"{replies[2]}")
        expect(replies[3] == {"parameters": {"text": "z"}}, f"{replies[3]}")

    check("cli info lists the interfaces", info)
    check("cli help io.cprd.Test returns our IDL and it parses", help_parses)
    check("cli help org.varlink.service parses", help_service)
    check("io.cprd.Manager.varlink parses", manager_idl_parses)
    check("cli call Echo", call)
    check("cli call --more Count", call_more)
    check("cli call Fail reports TestError on stderr", call_error)
    check("cli call unknown method reports MethodNotFound", call_unknown_method)
    check("library call Echo and Stats", library_call)
    check("library more call Count", library_more)
    check("library error reply", library_error)
    check("library oneway Note", library_oneway)
    check("raw socket: three pipelined Echo calls answered in order", pipelined)
    check("raw socket: pipelined stream, error and call", pipelined_mixed)


def main():
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} VL-TEST-SERVER MANAGER-IDL", file=sys.stderr)
        return 2
    binary, manager_idl = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="cprd-pyvarlink-")
    server = None
    try:
        path = os.path.join(tmp, "test.sock")
        server = start_server(binary, path)
        run_checks(path, manager_idl)
        check("server still running", lambda: expect(server.poll() is None, "it exited"))
    except Exception as e:
        checks.fail("setup", f"{type(e).__name__}: {e}")
    finally:
        if server:
            stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
