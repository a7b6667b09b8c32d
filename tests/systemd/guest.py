#!/usr/bin/python3
# Runs inside the e2e container (copied to /var/lib/cprd-test): reads what the
# systemd end-to-end test checks, and prints it as one JSON line.
#   guest.py ram PID [VM]   the test guest's RAM block (tests/guest/README.md)
#                           read through the memfd /memfd:cprd:VM:ram0 that
#                           PID holds: {"fd","inode","magic","ticks","lines"}
#   guest.py qemus          the QEMU processes and the test's QEMU wrappers
#   guest.py cgroup PID     PID's cgroup path (the systemd hierarchy)
#   guest.py confinement PID  what PID inherited from the unit: its uid,
#                           no_new_privs, seccomp mode and number of filters,
#                           bounding and effective capabilities (by name),
#                           its mount namespace
#   guest.py bridge NAME    makes the bridge NAME (unless it exists) and
#                           brings it up, with the bridge ioctls
# Exit 1 (with {"error": ...}) when the thing is not there.
import fcntl
import json
import os
import socket
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


# capability(7) numbers 0-40, as /proc/PID/status counts them.
CAPS = ("chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap "
        "linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner "
        "sys_module sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice "
        "sys_resource sys_time sys_tty_config mknod lease audit_write audit_control setfcap "
        "mac_override mac_admin syslog wake_alarm block_suspend audit_read perfmon bpf "
        "checkpoint_restore").split()


def cap_names(mask):
    m = int(mask, 16)
    return ["cap_" + n for i, n in enumerate(CAPS) if m >> i & 1] + \
        ["cap_%d" % i for i in range(len(CAPS), 64) if m >> i & 1]


def confinement(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            st = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    except OSError as e:
        out({"error": f"pid {pid}: {e.strerror}"}, 1)
    st = {k: v.strip() for k, v in st.items()}
    try:
        mntns = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError as e:
        out({"error": f"pid {pid}: {e.strerror}"}, 1)
    out({"mntns": mntns, "uid": int(st["Uid"].split()[0]), "nnp": int(st.get("NoNewPrivs", -1)),
         "seccomp": int(st.get("Seccomp", -1)), "filters": int(st.get("Seccomp_filters", -1)),
         "capbnd": cap_names(st["CapBnd"]), "capeff": cap_names(st["CapEff"])})


SIOCBRADDBR, SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x89A0, 0x8913, 0x8914, 0x1


def bridge(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ifname = name.encode().ljust(16, b"\0")
    try:
        fcntl.ioctl(s, SIOCBRADDBR, ifname)
    except FileExistsError:
        pass
    flags = struct.unpack("H", fcntl.ioctl(s, SIOCGIFFLAGS, ifname + b"\0" * 24)[16:18])[0]
    fcntl.ioctl(s, SIOCSIFFLAGS, ifname + struct.pack("H", flags | IFF_UP) + b"\0" * 22)
    out({"bridge": name, "up": True})


if __name__ == "__main__":
    a = sys.argv[1:]
    if a and a[0] == "ram" and len(a) in (2, 3):
        ram(*a[1:])
    elif a == ["qemus"]:
        qemus()
    elif a and a[0] == "cgroup" and len(a) == 2:
        cgroup(a[1])
    elif a and a[0] == "confinement" and len(a) == 2:
        confinement(a[1])
    elif a and a[0] == "bridge" and len(a) == 2:
        bridge(a[1])
    print("usage: guest.py ram PID [VM] | qemus | cgroup PID | confinement PID | bridge NAME",
          file=sys.stderr)
    sys.exit(2)
