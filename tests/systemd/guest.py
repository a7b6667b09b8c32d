#!/usr/bin/python3
# Runs inside the e2e container (copied to /var/lib/cprd-test): reads what the
# systemd end-to-end test checks, and prints it as one JSON line.
#   guest.py ram PID [VM]   the test guest's RAM block (tests/guest/README.md)
#                           read through the memfd /memfd:cprd:VM:ram0 that
#                           PID holds: {"fd","inode","magic","ticks","lines"}
#   guest.py qemus          the QEMU processes and the test's QEMU wrappers
#   guest.py cgroup PID     PID's cgroup path (the systemd hierarchy)
# Exit 1 (with {"error": ...}) when the thing is not there.
import json
import os
import struct
import sys

RAM_BLOCK = 0x8000


def out(obj, rc=0):
    print(json.dumps(obj))
    sys.exit(rc)


def ram(pid, vm="vm1"):
    want = f"/memfd:cprd:{vm}:ram0"
    try:
        fds = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
    except OSError as e:
        out({"error": f"cannot list the fds of pid {pid}: {e.strerror}"}, 1)
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            link = os.readlink(path)
        except OSError:
            continue
        if link == want or link.startswith(want + " "):
            st = os.stat(path)
            with open(path, "rb") as f:
                f.seek(RAM_BLOCK)
                b = f.read(24)
            if len(b) < 24:
                out({"error": f"{want} is only {st.st_size} bytes"}, 1)
            ticks, lines = struct.unpack("<QQ", b[8:24])
            out({"fd": int(fd), "inode": st.st_ino, "size": st.st_size,
                 "magic": b[:8].decode("ascii", "replace"), "ticks": ticks, "lines": lines})
    out({"error": f"pid {pid} holds no {want}"}, 1)


def qemus():
    q, wrappers = [], []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if os.path.basename(exe.split(" (deleted)")[0]).startswith("qemu-system-"):
            q.append(int(d))
        elif any(b"qemu-slow" in a for a in cmd[:3]):
            wrappers.append(int(d))
    out({"qemu": sorted(q), "wrappers": sorted(wrappers)})


def cgroup(pid):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError as e:
        out({"error": f"pid {pid}: {e.strerror}"}, 1)
    named = unified = None
    for line in lines:
        hid, ctrl, path = line.split(":", 2)
        if ctrl == "name=systemd":
            named = path
        elif hid == "0" and ctrl == "":
            unified = path
    out({"path": named if named is not None else unified, "lines": lines})


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "ram" and len(a) in (2, 3):
        ram(*a[1:])
    elif a == ["qemus"]:
        qemus()
    elif a and a[0] == "cgroup" and len(a) == 2:
        cgroup(a[1])
    print(__doc__ or "usage: guest.py ram PID [VM] | qemus | cgroup PID", file=sys.stderr)
    sys.exit(2)
