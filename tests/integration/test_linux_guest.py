#!/usr/bin/python3
"""A real Linux guest across QEMU upgrades (issue 10, item 4): Debian 12's
kernel and busybox (tests/guest/linux) boot from a virtio disk, then write
one fsync'd record a few times a second to a second virtio disk and report
each on the serial console. The VM is upgraded while the guest writes:
QEMU 10.0 -> 10.0 with cpr-transfer twice, and (a test of its own, skipped
and failed in CI without QEMU 7.2) 7.2 -> 10.0 with local-migrate.

After the upgrades the console shows exactly one boot, the records go on
after each upgrade, every record is reported with the RAM pattern intact,
and once the VM is stopped the data disk holds every record the guest
reported, contiguous from 0, each with its checksum and the one boot id:
none lost. Each run also shows that this disk check catches a lost and a
corrupted record (on a copy of the disk's bytes).

GuestNetwork checks the guest's network on a plain QEMU in a network
namespace of the test's own (no cprd): what the NIC tests build on.

Record and console formats: tests/guest/README.md ("The Linux guest").

Run: /usr/bin/python3 test_linux_guest.py [LinuxGuest.test_name ...]
"""

import hashlib
import os
import re
import subprocess
import time
import unittest

import cprdtest as T
from cprdtest import wait_until

LINUX_IMAGE = T._default("CPRD_LINUX_GUEST_IMAGE",
                         os.path.join(T.SOURCE_DIR, "build/tests/guest/linux/cprd-linux.img"))
HAVE_72 = T.qemu_usable(T.QEMU72)
NEED_72 = "QEMU 7.2 (%s) is missing" % T.QEMU72
HAVE_111 = T.qemu_usable(T.QEMU111)
NEED_111 = "QEMU 11.1 (%s) is missing" % T.QEMU111

MEMORY_MIB = 256
DATA_DISK_BYTES = 16 << 20   # 32768 records, over two hours of them
SECTOR = 512
REC_MAGIC = "CPRDREC1"
# Under TCG the guest boots in about 10 s; a busy 2-core host, or the
# sanitizer stage's slower cprd, may take a few times that.
BOOT_TIMEOUT = 120 * T.SLOWDOWN
# Records the guest must report after each upgrade (about 4 a second).
RECORDS_AFTER_UPGRADE = 8

BOOT_RE = re.compile(r"cprd-linux: boot ([0-9a-f-]{36})")
REC_RE = re.compile(r"cprd-linux: rec (\d+) ram (\S+)")
NET_RE = re.compile(r"cprd-linux: net eth0 (\S+)")


# ---- the guest's formats ------------------------------------------------------

def console_report(text):
    """Parses the guest's console log: (boot ids, reported records as
    [(n, ram)], other cprd-linux lines). Only complete lines count (the last
    may still be being written); the tty ends lines with \\r\\n. The line
    of a NIC brought up is neither (net_lines has it); one that failed is
    another line."""
    boots, recs, other = [], [], []
    for line in text.split("\n")[:-1]:
        line = line.rstrip("\r")
        if NET_RE.fullmatch(line):
            continue
        m = BOOT_RE.fullmatch(line)
        if m:
            boots.append(m.group(1))
            continue
        m = REC_RE.fullmatch(line)
        if m:
            recs.append((int(m.group(1)), m.group(2)))
            continue
        if "cprd-linux:" in line:
            other.append(line)
    return boots, recs, other


def net_lines(text):
    """The addresses of the guest's "net eth0 ADDR" lines."""
    return [m.group(1) for m in (NET_RE.fullmatch(l.rstrip("\r")) for l in text.split("\n")[:-1]) if m]


def parse_record(sector):
    """(n, boot id, ram) of one 512-byte record, or None for an all-zero
    sector; raises ValueError naming what is wrong with a bad one."""
    if sector == bytes(len(sector)):
        return None
    text, nl, pad = sector.partition(b"\n")
    if not nl or pad != bytes(len(pad)):
        raise ValueError("not one line padded with zeros: %r" % sector[:160])
    fields = text.decode("ascii").split(" ")
    if len(fields) != 5 or fields[0] != REC_MAGIC:
        raise ValueError("not a %s record: %r" % (REC_MAGIC, text))
    body = " ".join(fields[:4])
    if hashlib.sha256(body.encode()).hexdigest() != fields[4]:
        raise ValueError("bad checksum: %r" % text)
    return int(fields[1]), fields[2], fields[3]


def disk_problems(data, boot_id, last):
    """What is wrong with the data disk's bytes for a guest of boot boot_id
    that reported records 0..last: each must be at its sector, intact, of
    that boot, with the RAM pattern ok. After them at most one more record
    (written, not yet reported when the VM stopped), then zeros. Returns a
    list of problems, empty when none."""
    problems = []
    for n in range(last + 1):
        try:
            rec = parse_record(data[n * SECTOR:(n + 1) * SECTOR])
        except ValueError as e:
            problems.append("record %d: %s" % (n, e))
            continue
        if rec is None:
            problems.append("record %d: missing (zero sector), though the guest reported it" % n)
        elif rec != (n, boot_id, "ok"):
            problems.append("record %d: holds %r, expected (%d, %r, 'ok')" % (n, rec, n, boot_id))
    extra = data[(last + 1) * SECTOR:]
    try:
        rec = parse_record(extra[:SECTOR])
        if rec is not None and rec != (last + 1, boot_id, "ok"):
            problems.append("record %d (unreported): holds %r" % (last + 1, rec))
    except ValueError as e:
        problems.append("record %d (unreported): %s" % (last + 1, e))
    rest = extra[SECTOR:]
    if rest != bytes(len(rest)):
        first = next(i for i, b in enumerate(rest) if b)
        problems.append("data after the last record, at sector %d" % (last + 2 + first // SECTOR))
    return problems


# ---- the test -------------------------------------------------------------------

class LinuxGuestCase(T.CprdTestCase):
    """What a test with the Linux guest needs, without tests of its own
    (test_matrix.py uses it too): booting the guest, reading its console,
    an upgrade to 10.0, and the final check of its console and data disk."""

    def report(self, name):
        return console_report(self.cprd.console(name))

    def last_reported(self, name):
        recs = self.report(name)[1]
        return recs[-1][0] if recs else -1

    def boot(self, name, qemu, machine="pc", extra=()):
        """Creates and starts the VM with a fresh data disk of its own; waits
        for the boot line and the first records. Returns (boot id, data disk
        path, seconds to the boot line)."""
        data = os.path.join(self.tmp, "%s-data.img" % name)
        with open(data, "wb") as f:
            f.truncate(DATA_DISK_BYTES)
        self.ok("create", name, "--memory", MEMORY_MIB, "--qemu", qemu, "--machine", machine,
                "--accel", "tcg", "--disk", LINUX_IMAGE + ",readonly", "--disk", data, *extra)
        t0 = time.monotonic()
        self.start_vm(name)
        boots = wait_until(lambda: self.report(name)[0], BOOT_TIMEOUT, interval=0.2,
                           what="%s's boot line on the console" % name)
        booted = time.monotonic() - t0
        T.log("    %s: booted in %.1f s, boot id %s" % (name, booted, boots[0]))
        wait_until(lambda: self.last_reported(name) >= 3, 30 * T.SLOWDOWN, interval=0.1,
                   what="%s's first records" % name)
        return boots[0], data, booted

    def upgrade(self, name, qemu, mode, from_version):
        """One upgrade while the guest writes; then the records must go on."""
        vm = self.status(name)
        before = self.last_reported(name)
        r = self.ok("upgrade", name, "--qemu", qemu, "--mode", mode, "--json", timeout=180)
        res = r.json
        self.assertEqual(res["outcome"], "committed", res)
        self.assertEqual(res["mode"], mode, res)
        self.assertTrue(res["fromVersion"].startswith(from_version), res)
        self.assertTrue(res["toVersion"].startswith("10.0"), res)
        self.assertNotEqual(res["pid"], vm["pid"], "the QEMU pid did not change")
        at = self.last_reported(name)
        wait_until(lambda: self.last_reported(name) >= at + RECORDS_AFTER_UPGRADE, 30 * T.SLOWDOWN,
                   interval=0.1, what="%d more records after the upgrade (the last was %d)" %
                   (RECORDS_AFTER_UPGRADE, at))
        T.log("    %s: %s %s -> %s, pause %.1f ms, total %.0f ms; records %d..%d reported around it" %
              (name, mode, res["fromVersion"], res["toVersion"], res["pauseMs"], res["totalMs"],
               before, self.last_reported(name)))
        return res

    def check_all(self, name, boot_id, data, upgrades):
        """The console and, once the VM is stopped, the data disk."""
        self.assertEqual(self.status(name)["state"], "running")
        self.ok("stop", name, "--force")
        self.wait_state(name, "stopped")
        boots, recs, other = self.report(name)
        self.assertEqual(boots, [boot_id], "the guest booted more than once: %s" % boots)
        self.assertEqual(other, [], "the guest said something unexpected")
        self.assertEqual([n for n, _ in recs], list(range(len(recs))),
                         "the reported record numbers are not 0, 1, 2, ...")
        bad_ram = [(n, ram) for n, ram in recs if ram != "ok"]
        self.assertEqual(bad_ram, [], "the guest found its RAM pattern changed")
        last = recs[-1][0]
        with open(data, "rb") as f:
            disk = f.read()
        self.assertEqual(len(disk), DATA_DISK_BYTES)
        problems = disk_problems(disk, boot_id, last)
        self.assertEqual(problems, [], "the data disk lacks records the guest reported")
        T.log("    %s: one boot, %d upgrade%s, records 0..%d reported and all on the data disk" %
              (name, upgrades, "" if upgrades == 1 else "s", last))
        self.assert_check_catches(disk, boot_id, last)

    def assert_check_catches(self, disk, boot_id, last):
        """The disk check is no formality: on copies of the disk's bytes it
        finds a record lost, one corrupted, and one from another boot."""
        n = last // 2
        lost = bytearray(disk)
        lost[n * SECTOR:(n + 1) * SECTOR] = bytes(SECTOR)
        corrupt = bytearray(disk)
        i = n * SECTOR + len(REC_MAGIC) + 1   # the first digit of the sequence number
        corrupt[i] ^= 0x01
        for what, copy, bid in (("lost", lost, boot_id), ("corrupted", corrupt, boot_id),
                                ("other boot", disk, "0" * 36)):
            self.assertTrue(disk_problems(bytes(copy), bid, last),
                            "the disk check missed a %s record %d" % (what, n))


class LinuxGuest(LinuxGuestCase):

    def test_cpr_transfer_10_to_10_twice(self):
        boot_id, data, _ = self.boot("lin", T.QEMU10)
        for _ in range(2):
            self.upgrade("lin", T.QEMU10, "cpr-transfer", "10.0")
        self.check_all("lin", boot_id, data, 2)

    @unittest.skipUnless(HAVE_72, NEED_72)
    def test_local_migrate_72_to_10(self):
        boot_id, data, _ = self.boot("lin72", T.QEMU72)
        vm = self.status("lin72")
        self.assertEqual(vm["machine"], "pc-i440fx-7.2", "pc on QEMU 7.2 is pinned to pc-i440fx-7.2")
        self.assertTrue(vm["qemuVersion"].startswith("7.2."), vm)
        self.upgrade("lin72", T.QEMU10, "local-migrate", "7.2")
        self.assertEqual(self.status("lin72")["machine"], "pc-i440fx-7.2")
        self.check_all("lin72", boot_id, data, 1)


class GuestNetwork(T.CprdTestCase):
    """The guest's network (tests/guest/README.md, "The network") on a plain
    QEMU 10.0, no cprd, in the test's own network namespace (NetLab): a tap
    on the lab bridge as QEMU's fd 3, as cprd will hand it over. eth0 comes
    up with the lab address; a ping every 10 ms loses nothing while a TCP
    stream from the guest and one to it deliver every byte; the records go
    on. What cprd's NIC tests build on."""

    netlab = True

    def test_network(self):
        data = os.path.join(self.tmp, "data.img")
        with open(data, "wb") as f:
            f.truncate(DATA_DISK_BYTES)
        console = os.path.join(self.tmp, "console.log")
        open(console, "w").close()
        q = self.net.popen_with_tap("cprdt-tap0", [
            T.QEMU10, "-accel", "tcg", "-machine", "pc", "-m", "%dM" % MEMORY_MIB, "-nodefaults",
            "-display", "none", "-serial", "file:" + console,
            "-drive", "file=%s,format=raw,if=virtio,readonly=on" % LINUX_IMAGE,
            "-drive", "file=%s,format=raw,if=virtio" % data,
            "-netdev", "tap,id=net0,fd=3",
            "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,romfile="],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def text():
            with open(console, "rb") as f:
                return f.read().decode("utf-8", "replace")

        def booted():
            if q.poll() is not None:
                raise AssertionError("QEMU exited with %d: %s" % (q.returncode, q.stderr.read()))
            return console_report(text())[0]
        wait_until(booted, BOOT_TIMEOUT, interval=0.2, what="the guest's boot line")
        self.assertEqual(net_lines(text()), ["%s/%d" % (self.net.GUEST_ADDR, self.net.PREFIX)])
        self.assertEqual(self.net.ports()["cprdt-tap0"]["master"], self.net.BRIDGE)

        ping = self.net.ping()
        stream = self.net.stream(20000, every=2000, pause=0.05).result(240)
        sink = self.net.sink(4 << 20, pause=0.01).result(240)
        ping.stop()
        ping = ping.result()
        T.log("    ping every 10 ms: %(sent)d sent, %(lost)d lost, longest gap %(max_gap_ms)s ms, "
              "rtt median %(median_rtt_ms)s ms max %(max_rtt_ms)s ms" % ping)
        T.log("    stream from the guest: %(bytes)d bytes, %(lines)d lines in %(seconds)s s; "
              "to the guest: " % stream + "%(bytes)d bytes in %(seconds)s s" % sink)
        self.assertEqual((stream["lines"], stream["end"], stream["first_bad"], stream["reset"],
                          stream["error"]), (20000, True, None, False, None), stream)
        self.assertEqual(stream["bytes"], 20000 * 64 + len("cprd-net end 20000\n"))
        self.assertEqual((sink["match"], sink["reset"], sink["error"]), (True, False, None), sink)
        self.assertGreater(ping["sent"], 100, ping)
        self.assertEqual(ping["lost"], 0, ping)
        boots, recs, other = console_report(text())
        self.assertEqual((len(boots), other), (1, []))
        self.assertGreater(len(recs), 3)


class NicUpgrades(LinuxGuestCase):
    """Issue 12: a guest's connections survive upgrades. cprd runs in the
    test's own network namespace (NetLab) and makes the guest's NIC's tap on
    the lab bridge. While the guest's NIC is pinged every 10 ms and streams
    a counted TCP stream to the lab, the VM is upgraded several times in
    both modes (and across QEMU releases), and cprd is restarted in the
    middle (no fd store: the tap comes back from QEMU). Each upgrade may
    cost at most one ping; the stream keeps its connection (no reset) and
    delivers every byte; the taps cprd holds are the same device
    throughout; and, as everywhere, the guest booted once and its disk
    holds every record it reported."""

    netlab = True

    def boot_with_nic(self, name, qemu, machine):
        r = self.boot(name, qemu, machine=machine, extra=("--nic", "bridge=" + self.net.BRIDGE))
        wait_until(lambda: net_lines(self.cprd.console(name)), 60 * T.SLOWDOWN, interval=0.2,
                   what="%s's NIC to come up" % name)
        self.assertEqual(net_lines(self.cprd.console(name)), ["%s/%d" % (self.net.GUEST_ADDR, self.net.PREFIX)])
        return r

    def tap_ifindex(self, name):
        """The tap's interface index: a new device would get a new one."""
        tap = self.status(name)["nics"][0]["tap"]
        return self.net.links()[tap]["ifindex"]

    def nic_upgrade(self, name, qemu, mode):
        vm = self.status(name)
        r = self.ok("upgrade", name, "--qemu", qemu, "--mode", mode, "--json", timeout=180).json
        self.assertEqual((r["outcome"], r["mode"]), ("committed", mode), r)
        self.assertNotEqual(r["pid"], vm["pid"])
        at = self.last_reported(name)
        wait_until(lambda: self.last_reported(name) >= at + 3, 30 * T.SLOWDOWN, interval=0.1,
                   what="records after the upgrade")
        T.log("    %s: %s %s -> %s, pause %.1f ms" % (name, mode, r["fromVersion"], r["toVersion"], r["pauseMs"]))
        return r

    def restart_cprd(self, name):
        pid = self.status(name)["pid"]
        self.cprd.proc.send_signal(T.signal.SIGTERM)
        self.cprd.proc.wait(30)
        self.cprd.start()
        wait_until(lambda: self.status(name)["state"] == "running", 30, what="%s running after the restart" % name)
        vm = self.status(name)
        self.assertEqual(vm["pid"], pid)
        self.assertEqual([n["held"] for n in vm["nics"]], [True], vm["nics"])
        T.log("    %s: cprd restarted (no fd store); the tap came back from QEMU pid %d" % (name, pid))

    def run_steps(self, name, steps, lines=15000):
        """Does steps (("upgrade", qemu, mode) or ("restart",)) while a ping
        and a TCP stream run; checks the network across them: each step
        costs at most one ping (one sent from its start to the next step's),
        none is lost outside them, and the stream delivers every
        byte without a reset."""
        ifindex = self.tap_ifindex(name)
        ping = self.net.ping()
        # Paced at about a thousand lines a second: it outlasts the steps.
        stream = self.net.stream(lines, every=100, pause=0.1, stall=60 * T.SLOWDOWN)
        starts = []
        for step in steps:
            starts.append(time.monotonic())
            if step[0] == "restart":
                self.restart_cprd(name)
            else:
                self.nic_upgrade(name, step[1], step[2])
            self.assertEqual(self.tap_ifindex(name), ifindex, "the tap is another device now")
        steps_end = time.monotonic()
        # A step's window: from its start to the next step's, the last one's
        # to a second after it ended (a late reply still counts).
        windows = [(step, a, b) for step, a, b in zip(steps, starts, starts[1:] + [steps_end + 1.0])]
        st = stream.result(600)
        ping.stop()
        p = ping.result()
        T.log("    %s: ping every 10 ms: %d sent, %d lost %s, longest gap %s ms; stream %d bytes in %s s, "
              "longest gap %s ms" % (name, p["sent"], p["lost"], p["lost_runs"], p["max_gap_ms"], st["bytes"],
                                     st["seconds"], st["max_gap_ms"]))
        self.assertEqual((st["lines"], st["end"], st["first_bad"], st["reset"], st["error"]),
                         (lines, True, None, False, None), st)
        self.assertEqual(st["bytes"], lines * 64 + len("cprd-net end %d\n" % lines))
        self.assertGreater(st["seconds"], steps_end - starts[0], "the stream ended before the steps did")
        unexplained = list(p["lost_at"])
        for step, a, b in windows:
            mine = [t for t in p["lost_at"] if a <= t <= b]
            T.log("    %s: %s lost %d ping%s" % (name, " ".join(str(x) for x in step).replace(T.QEMU10, "10.0")
                                                 .replace(T.QEMU111, "11.1"), len(mine), "" if len(mine) == 1 else "s"))
            self.assertLessEqual(len(mine), 1, "%s lost %d pings: %s" % (step, len(mine), p))
            unexplained = [t for t in unexplained if t not in mine]
        self.assertEqual(unexplained, [], "pings lost outside the steps: %s" % p)
        return p, st

    @unittest.skipUnless(HAVE_111, NEED_111)
    def test_nic_across_upgrades_and_restart(self):
        name = "net1"
        # A machine type 10.0 and 11.1 both have.
        boot_id, data, _ = self.boot_with_nic(name, T.QEMU10, "pc-i440fx-10.0")
        steps = [("upgrade", T.QEMU10, "cpr-transfer"), ("upgrade", T.QEMU10, "local-migrate"),
                 ("restart",), ("upgrade", T.QEMU111, "cpr-transfer"),
                 ("upgrade", T.QEMU111, "local-migrate"), ("upgrade", T.QEMU10, "local-migrate")]
        self.run_steps(name, steps)
        self.check_all(name, boot_id, data, sum(1 for s in steps if s[0] == "upgrade"))

    @unittest.skipUnless(HAVE_72, NEED_72)
    def test_nic_72_to_10(self):
        name = "net72"
        boot_id, data, _ = self.boot_with_nic(name, T.QEMU72, "pc")
        self.assertEqual(self.status(name)["machine"], "pc-i440fx-7.2")
        self.run_steps(name, [("upgrade", T.QEMU10, "local-migrate"), ("upgrade", T.QEMU10, "cpr-transfer")])
        self.check_all(name, boot_id, data, 2)


if __name__ == "__main__":
    if not os.path.exists(LINUX_IMAGE):
        print("cannot find the Linux test guest %s; build the project first (target "
              "cprd-linux-guest) or set CPRD_LINUX_GUEST_IMAGE" % LINUX_IMAGE, flush=True)
        raise SystemExit(1)
    T.main(qemus=(T.QEMU10,))
