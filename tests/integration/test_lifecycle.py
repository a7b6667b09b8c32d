#!/usr/bin/python3
"""A VM's life in cprd (issue 3): create, start, what cprd holds, a QEMU
killed behind cprd's back, start again, stop (forced and graceful), delete
with nothing left behind; list, log, events and the exit codes.

Run: /usr/bin/python3 test_lifecycle.py [TestClass.test_name ...]
"""

import json
import re
import os
import signal
import subprocess
import threading
import time

import cprdtest as T
from cprdtest import wait_until


class Lifecycle(T.CprdTestCase):

    def check_running_vm(self, name, vm):
        """GetVM of a running VM agrees with /proc: pid, fds, memfd."""
        pid = vm["pid"]
        self.assertEqual(vm["state"], "running")
        self.assertTrue(T.pid_alive(pid), "QEMU pid %d is not running" % pid)
        self.assertEqual(T.proc_stat(pid)[1], self.cprd.pid, "QEMU pid %d is not cprd's child" % pid)
        self.assertEqual(os.path.realpath("/proc/%d/exe" % pid), os.path.realpath(T.QEMU10))
        self.assertTrue(vm["qemuVersion"].startswith("10.0."), vm["qemuVersion"])
        self.assertEqual(vm["qemu"], T.QEMU10)
        # Every fd GetVM names is in cprd's fd table; the ram one is the memfd.
        fds = self.cprd.fds()
        kinds = {f["kind"] for f in vm["fds"]}
        self.assertTrue({"ram", "console", "qmp"} <= kinds, vm["fds"])
        for f in vm["fds"]:
            self.assertIn(f["fd"], fds, "GetVM names fd %r, cprd has %s" % (f, fds))
            self.assertTrue(f["name"].startswith(name + "."), f)
        ram = [f for f in vm["fds"] if f["kind"] == "ram"]
        self.assertEqual(len(ram), 1, vm["fds"])
        self.assertTrue(fds[ram[0]["fd"]].startswith("/memfd:cprd:%s:ram0" % name), fds[ram[0]["fd"]])
        self.assertEqual(self.cprd.memfd(name), ram[0]["fd"])

    def test_lifecycle(self):
        """create, start, kill -9, start again, stop --force, delete: every
        fd, file and process cprd had for the VM is gone at the end."""
        c = self.cprd
        base_fds = wait_until(lambda: c.held_fds(), what="cprd's fds")
        self.assertIsNone(c.memfd("vm1"))

        r = self.ok("create", "vm1", "--memory", 64, "--qemu", T.QEMU10, "--machine", "pc",
                    "--accel", "tcg", "--disk", T.GUEST_IMAGE + ",readonly")
        self.assertIn("pc-i440fx-10.0", r.stdout)
        vm = self.status("vm1")
        self.assertEqual(vm["state"], "defined")
        self.assertEqual(vm["machine"], "pc-i440fx-10.0", "the pc alias is pinned at creation")
        self.assertEqual(vm["spec"]["machine"], "pc-i440fx-10.0")
        self.assertEqual(vm["spec"]["memory"], 64)
        self.assertEqual(vm["spec"]["disks"][0]["path"], T.GUEST_IMAGE)
        self.assertTrue(vm["spec"]["disks"][0]["readonly"])
        self.assertNotIn("pid", vm)
        self.assertTrue(os.path.isfile(os.path.join(c.vm_dir("vm1"), "vm.json")))
        self.wait_children([], what="the probe of create to be reaped")

        # Start: the guest runs on a QEMU that is cprd's child.
        started = self.start_vm("vm1")
        vm = self.status("vm1")
        self.assertEqual(vm["pid"], started["pid"])
        self.check_running_vm("vm1", vm)
        self.assertEqual(vm["machine"], "pc-i440fx-10.0")
        self.wait_children([vm["pid"]])

        # The counter in guest RAM, read through cprd's memfd, goes up, and
        # the console log grows.
        g1 = self.wait_guest_ticks("vm1", 1)
        self.assertEqual(g1[0], T.GUEST_MAGIC)
        wait_until(lambda: c.read_guest("vm1")[1] > g1[1], 10, what="the tick counter to increase")
        wait_until(lambda: "cprd-guest: booted" in c.console("vm1"), 10, what="the boot line on the console")
        size1 = len(c.console("vm1"))
        wait_until(lambda: len(c.console("vm1")) > size1, 10, what="the console log to grow")
        self.assert_console_continuous("vm1")
        g = self.wait_guest_ticks("vm1", 40)  # a bit over 2 s of guest time
        ticks_before_kill = g[1]
        ram_inode = c.memfd_inode("vm1")

        # kill -9 behind cprd's back: noticed, reported, RAM still held.
        pid = vm["pid"]
        self.assertIn("qemu", " ".join(T.cmdline(pid)))
        os.kill(pid, signal.SIGKILL)
        vm = self.wait_state("vm1", "crashed")
        self.assertNotIn("pid", vm)
        e = vm.get("lastExit")
        self.assertIsNotNone(e, vm)
        self.assertEqual(e["how"], "killed", e)
        self.assertEqual(e["signal"], "SIGKILL", e)
        self.assertFalse(e["requested"], e)
        self.assertIsInstance(e["stderr"], list)
        self.assertIsNotNone(c.memfd("vm1"), "guest RAM memfd released after a crash: %s" % c.fds())
        self.assertEqual(c.memfd_inode("vm1"), ram_inode, "the memfd was replaced after the crash")
        self.assertIn("ram", {f["kind"] for f in vm["fds"]})
        g = c.read_guest("vm1")
        self.assertEqual(g[0], T.GUEST_MAGIC, "guest RAM lost its contents after the crash")
        self.assertGreaterEqual(g[1], ticks_before_kill)
        self.wait_children([], what="the killed QEMU to be reaped")
        self.assertFalse(T.pid_exists(pid), "the killed QEMU %d is still in /proc" % pid)
        st = self.ok("status", "vm1").stdout
        self.assertIn("crashed", st)
        self.assertIn("SIGKILL", st)

        # Start again: the guest reboots, its counter starts over.
        started = self.start_vm("vm1")
        self.assertNotEqual(started["pid"], pid)
        vm = self.status("vm1")
        self.check_running_vm("vm1", vm)
        self.assertEqual(vm["lastExit"]["signal"], "SIGKILL", "lastExit is kept until the next exit")
        g = wait_until(lambda: (lambda g: g if g and g[0] == T.GUEST_MAGIC and g[1] < ticks_before_kill
                                else None)(c.read_guest("vm1")), 20,
                       what="the counter to restart after the reboot (was %d)" % ticks_before_kill)
        wait_until(lambda: c.read_guest("vm1")[1] > g[1], 10, what="the counter to count after the restart")
        wait_until(lambda: c.console("vm1").count("cprd-guest: booted") == 2, 10, what="a second boot line")
        self.wait_children([vm["pid"]])

        # Forced stop: QEMU quits, cprd lets go of the RAM and the console.
        pid = vm["pid"]
        r = self.ok("stop", "vm1", "--force", "--json")
        self.assertEqual(r.json["state"], "stopped", r)
        vm = self.status("vm1")
        self.assertEqual(vm["state"], "stopped")
        self.assertNotIn("pid", vm)
        self.assertTrue(vm["lastExit"]["requested"], vm["lastExit"])
        self.assertEqual(vm["fds"], [], "fds still held after stop: %s" % vm["fds"])
        self.assertIsNone(c.memfd("vm1"), "memfd still held after stop")
        self.wait_children([], what="the stopped QEMU to be reaped")
        self.assertFalse(T.pid_exists(pid))

        # Stopping a stopped VM is refused.
        r = self.ctl("stop", "vm1", "--force")
        self.assertEqual(r.rc, 1, repr(r))
        self.assertIn("stopped", r.stderr)

        # Delete: the state folder, fds and processes all go.
        r = self.ok("delete", "vm1")
        self.assertFalse(os.path.exists(c.vm_dir("vm1")), os.listdir(os.path.dirname(c.vm_dir("vm1"))))
        self.assertFalse(os.path.exists(os.path.join(c.runtime_dir, "vms", "vm1")))
        self.assertEqual(self.ok("list", "--json").json["vms"], [])
        r = self.ctl("status", "vm1")
        self.assertEqual(r.rc, 3, repr(r))
        self.wait_children([])
        try:
            wait_until(lambda: c.held_fds() == base_fds, 10, what="cprd's fds to be as before create")
        except AssertionError:
            now = c.held_fds()
            self.fail("fd leak: before create %s, after delete %s (extra %s)" %
                      (base_fds, now, {k: v for k, v in now.items() if base_fds.get(k) != v}))

    def test_stop_after_crash_releases_ram(self):
        """A crashed VM keeps its RAM until it is stopped on purpose."""
        self.create_started("cr", ticks=5)
        pid = self.status("cr")["pid"]
        os.kill(pid, signal.SIGKILL)
        self.wait_state("cr", "crashed")
        self.assertIsNotNone(self.cprd.memfd("cr"))
        r = self.ctl("upgrade", "cr", "--qemu", T.QEMU10)
        self.assertEqual(r.rc, 1, repr(r))
        self.assertIn("crashed", r.stderr)
        r = self.ok("stop", "cr", "--json")
        self.assertEqual(r.json["state"], "stopped", r)
        self.assertIsNone(self.cprd.memfd("cr"), "guest RAM still held after stopping a crashed VM")
        self.assertEqual(self.status("cr")["fds"], [])
        self.assertEqual(self.status("cr")["lastExit"]["signal"], "SIGKILL")
        self.wait_children([])
        self.ok("delete", "cr")
        self.assertFalse(os.path.exists(self.cprd.vm_dir("cr")))

    def test_graceful_stop_falls_back_to_quit(self):
        """The test guest ignores ACPI power-down: after --timeout cprd quits
        QEMU, and the stop still succeeds."""
        self.create_started("g1")
        pid = self.status("g1")["pid"]
        t0 = time.monotonic()
        r = self.ok("stop", "g1", "--timeout", 2, "--json")
        took = time.monotonic() - t0
        self.assertEqual(r.json["state"], "stopped", r)
        # It waited for the guest before quitting (not a forced stop).
        self.assertGreaterEqual(took, 1.5, "stop returned after %.1f s, before its --timeout 2" % took)
        vm = self.status("g1")
        self.assertEqual(vm["state"], "stopped")
        self.assertTrue(vm["lastExit"]["requested"], vm["lastExit"])
        self.assertEqual(vm["lastExit"]["how"], "exited", vm["lastExit"])
        self.wait_children([])
        self.assertFalse(T.pid_exists(pid))
        self.assertIsNone(self.cprd.memfd("g1"))
        # And it starts again from stopped.
        self.start_vm("g1")
        self.wait_guest_ticks("g1", 1)
        self.ok("stop", "g1", "--force")

    def test_list_and_logs(self):
        """cprctl list (table and JSON), log and log --qemu."""
        self.create("a1")
        self.create_started("b2")
        r = self.ok("list")
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].split()[:3] == ["NAME", "STATE", "QEMU"], r.stdout)
        rows = {l.split()[0]: l.split() for l in lines[1:]}
        self.assertEqual(set(rows), {"a1", "b2"}, r.stdout)
        self.assertEqual(rows["a1"][1], "defined")
        self.assertEqual(rows["b2"][1], "running")
        self.assertIn(str(self.status("b2")["pid"]), rows["b2"])
        vms = {v["name"]: v for v in self.ok("list", "--json").json["vms"]}
        self.assertEqual(vms["a1"]["state"], "defined")
        self.assertEqual(vms["b2"]["state"], "running")
        self.assertFalse(vms["b2"]["outdated"])

        wait_until(lambda: "line 2 counter" in self.cprd.console("b2"), 10, what="a second console line")
        r = self.ok("log", "b2")
        self.assertTrue(r.stdout.startswith("cprd-guest: booted\ncprd-guest: line 2 counter "), r.stdout)
        self.assertTrue(self.cprd.console("b2").startswith(r.stdout), "log differs from console.log")
        r = self.ok("log", "b2", "--json")
        self.assertTrue(r.json["data"].startswith("cprd-guest: booted\n"), r)
        self.assertEqual(r.json["offset"], len(r.json["data"].encode()))
        r = self.ok("log", "b2", "--tail", 10)
        self.assertEqual(len(r.stdout.encode()), 10, r)
        r = self.ok("log", "b2", "--tail", 0)
        self.assertEqual(r.stdout, "")
        size0 = len(self.cprd.console("b2").encode())
        r = self.ok("log", "b2", "--tail", 0, "--json")
        self.assertEqual(r.json["data"], "")
        self.assertTrue(size0 <= r.json["offset"] <= len(self.cprd.console("b2").encode()), r.json)

        # --follow --tail 0: only lines written after it started.
        before = self.cprd.console("b2")
        last = max(int(n) for n in re.findall(r"^cprd-guest: line (\d+) ", before, re.M))
        p = self.cprd.ctl_bg("log", "b2", "--follow", "--tail", 0)
        seen = ""
        while not re.search(r"^cprd-guest: line \d+ ", seen, re.M):
            line = p.stdout.readline()  # the guest writes a line about every second
            if not line:
                self.fail("cprctl log --follow ended: %s" % p.stderr.read())
            seen += line
        self.assertNotIn("booted", seen)
        n = int(re.search(r"^cprd-guest: line (\d+) ", seen, re.M).group(1))
        self.assertGreaterEqual(n, last, seen)
        T.kill_pid(p.pid, signal.SIGTERM)
        p.wait(10)
        r = self.ok("log", "b2", "--qemu")
        self.assertIn("cprd: starting " + T.QEMU10, r.stdout)
        self.assertIn("-machine pc-i440fx-10.0", r.stdout)
        r = self.ok("log", "a1")
        self.assertEqual(r.stdout, "")
        self.ok("stop", "b2", "--force")

    def test_events(self):
        """cprctl events --json streams state changes as they happen."""
        self.create_started("ev1")
        p = self.cprd.ctl_bg("events", "--json")
        events, lock = [], threading.Lock()

        def reader():
            for line in p.stdout:
                line = line.strip()
                if line:
                    with lock:
                        events.append(json.loads(line))
        t = threading.Thread(target=reader, daemon=True)
        t.start()

        def seen(pred):
            with lock:
                return [e for e in events if pred(e)]

        # The subscription is in place once a change shows up in it.
        n = [0]

        def sync():
            if seen(lambda e: e["type"] == "created" and e["vm"].startswith("sync")):
                return True
            n[0] += 1
            self.ok("create", "sync%d" % n[0], "--memory", 16, "--qemu", T.QEMU10, "--accel", "tcg")
            self.ok("delete", "sync%d" % n[0])
            time.sleep(0.1)
            return bool(seen(lambda e: e["type"] == "created" and e["vm"].startswith("sync")))
        wait_until(sync, 20, interval=0.1, what="cprctl events to report a created event")
        wait_until(lambda: seen(lambda e: e["type"] == "deleted"), 10, what="a deleted event")

        self.ok("stop", "ev1", "--force")
        self.start_vm("ev1")

        def states():
            return [e["state"] for e in seen(lambda e: e["vm"] == "ev1" and e["type"] == "state")]
        wait_until(lambda: states()[-1:] == ["running"], 10, what="ev1's state events up to running")
        # "started" follows the state change to running: the reader may not
        # have it yet.
        wait_until(lambda: seen(lambda e: e["vm"] == "ev1" and e["type"] == "started"), 10,
                   what="ev1's started event")
        st = states()
        for s in ("stopping", "stopped", "starting", "running"):
            self.assertIn(s, st, st)
        self.assertLess(st.index("stopping"), st.index("stopped"))
        self.assertLess(st.index("stopped"), st.index("starting"))
        self.assertLess(st.index("starting"), st.index("running"))
        types = {e["type"] for e in seen(lambda e: e["vm"] == "ev1")}
        self.assertTrue({"state", "stopped", "started"} <= types, types)
        for e in seen(lambda e: True):
            self.assertTrue({"time", "vm", "type", "state", "message"} <= set(e), e)
            self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

        # A subscriber that goes away does not disturb cprd.
        self.assertIsNone(p.poll(), "cprctl events ended by itself")
        T.kill_pid(p.pid, signal.SIGKILL)
        p.wait(10)
        self.ok("stop", "ev1", "--force")
        self.assertEqual(self.status("ev1")["state"], "stopped")

    def test_exit_codes(self):
        """3 for a VM that does not exist, 2 for invalid input, 1 for a
        refused operation."""
        self.create("x1")
        for args in (("status", "nope"), ("start", "nope"), ("stop", "nope"), ("stop", "nope", "--force"),
                     ("delete", "nope"), ("log", "nope"), ("log", "nope", "--qemu"),
                     ("upgrade", "nope", "--qemu", T.QEMU10)):
            with self.subTest(args=args):
                r = self.ctl(*args)
                self.assertEqual(r.rc, 3, repr(r))
                self.assertIn("nope", r.stderr)
        for args in (("create",), ("create", "y1", "--memory", "lots"), ("stop", "x1", "--timeout", "soon"),
                     ("status",), ("status", "x1", "x2"), ("no-such-command",), ("list", "--bogus"),
                     ("log", "x1", "--qemu", "--follow"), ("upgrade",), ("upgrade", "x1", "--mode", "magic"),
                     ("upgrade", "x1", "--qemu", "relative/qemu")):
            with self.subTest(args=args):
                r = self.ctl(*args)
                self.assertEqual(r.rc, 2, repr(r))
                self.assertNotEqual(r.stderr.strip(), "", repr(r))
        # Refused: not running.
        r = self.ctl("stop", "x1")
        self.assertEqual(r.rc, 1, repr(r))
        # cprd unreachable: 5.
        env = self.cprd.env()
        env["CPRD_ADDRESS"] = "unix:" + os.path.join(self.tmp, "no-such-socket")
        p = subprocess.run([T.CPRCTL, "list"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 5, p)
        self.assertEqual(self.status("x1")["state"], "defined")

    def test_help(self):
        """cprctl --help lists every command with its whole synopsis, the
        same one 'cprctl COMMAND --help' starts with."""
        top = self.ok("--help").stdout
        commands = re.findall(r"^  ([a-z]+) ", top.split("Commands:\n")[1].split("\n\n")[0], re.M)
        self.assertGreaterEqual(len(commands), 10, top)
        for cmd in commands:
            with self.subTest(command=cmd):
                r = self.ok(cmd, "--help")
                usage = r.stdout.splitlines()[0]
                self.assertTrue(usage.startswith("Usage: cprctl " + cmd), usage)
                synopsis = usage[len("Usage: cprctl "):].split(" | ")[0]
                self.assertIn("  " + synopsis, top)
        self.assertIn("  upgrade ", top)


if __name__ == "__main__":
    T.main(qemus=(T.QEMU10,))
