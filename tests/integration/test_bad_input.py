#!/usr/bin/python3
"""Bad input to cprd (issue 3): every refusal is a clear error that names
the field, with the right exit code (2 invalid input, 1 failed, 3 no such
VM), and changes nothing: the state folder, the list of VMs and cprd's child
processes are as before, and no QEMU was started.

Run: /usr/bin/python3 test_bad_input.py [TestClass.test_name ...]
"""

import json
import os

import cprdtest as T
from cprdtest import wait_until


class Refusing(T.CprdTestCase):
    """What the test classes below share: a refusal that changed nothing."""

    def snapshot(self):
        """What a refused request must leave as it was. Logs of a running
        VM grow by themselves: only their existence counts."""
        tree = {}
        for k, v in T.tree_snapshot(self.cprd.state_dir).items():
            tree[k] = (v[0],) if k.endswith(".log") else v
        vms = self.ok("list", "--json").json["vms"]
        listed = sorted((v["name"], v["state"], v.get("pid")) for v in vms)
        # metrics.prom is rewritten a moment after each change, so also
        # after the changes made just before the refusal.
        run = {k: v for k, v in T.tree_snapshot(self.cprd.runtime_dir).items() if k != "metrics.prom"}
        return {"state dir": tree, "runtime dir": run, "list": listed}

    def refused(self, args, rc, *words, same_children=None):
        """Runs cprctl args; checks its exit code, that stderr has every one
        of words, and that nothing changed."""
        before = self.snapshot()
        children = set(self.cprd.children()) if same_children is None else set(same_children)
        started_before = self.cprd.read_log().count("started QEMU")
        fds = self.cprd.held_fds()
        r = self.ctl(*args)
        self.assertEqual(r.rc, rc, repr(r))
        for w in words:
            self.assertIn(w, r.stderr, repr(r))
        self.assertEqual(r.stdout.strip(), "", "a refusal printed on stdout: %r" % r)
        self.wait_children(children, what="cprd's children to be as before (no process left)")
        self.assertEqual(self.snapshot(), before, "a refused request changed something: %r" % r)
        try:
            wait_until(lambda: self.cprd.held_fds() == fds, 10, what="cprd's fds to be as before")
        except AssertionError:
            self.fail("fd leak after a refusal: before %s, after %s (%r)" % (fds, self.cprd.held_fds(), r))
        self.assertEqual(self.cprd.read_log().count("started QEMU"), started_before,
                         "a refused request started a QEMU")
        return r

    def create_args(self, name, memory=64, qemu=None, disk=None, machine=None):
        a = ["create", name, "--memory", memory, "--qemu", qemu or T.QEMU10, "--accel", "tcg"]
        if machine:
            a += ["--machine", machine]
        a += ["--disk", disk or (T.GUEST_IMAGE + ",readonly")]
        return a

    def spec_file(self, name, spec):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(spec if isinstance(spec, str) else json.dumps(spec))
        return path


class BadInput(Refusing):

    def test_names(self):
        for name in ("a/b", "..", ".", "a b", "x" * 65, "", "vm\u00e9", "../x", "a\\b"):
            with self.subTest(name=name):
                self.refused(self.create_args(name), 2, "name")
        # 64 characters is the longest name allowed.
        long = "n" * 64
        self.ok(*self.create_args(long))
        self.assertTrue(os.path.isdir(self.cprd.vm_dir(long)))
        self.ok("delete", long)
        self.assertFalse(os.path.exists(self.cprd.vm_dir(long)))

    def test_memory(self):
        for mem, words in ((0, ("memory", "at least 16")), (-1, ("memory",)), (15, ("memory", "at least 16")),
                           (100000000, ("memory", "host"))):
            with self.subTest(memory=mem):
                self.refused(self.create_args("m1", memory=mem), 2, *words)
        self.refused(self.create_args("m1", memory="64M"), 2, "--memory")

    def test_other_fields(self):
        cases = [
            (["create", "o1", "--memory", 64, "--qemu", T.QEMU10, "--cpus", 0], ("cpus",)),
            (["create", "o1", "--memory", 64, "--qemu", T.QEMU10, "--cpus", 1000], ("cpus",)),
            (["create", "o1", "--memory", 64, "--qemu", T.QEMU10, "--accel", "xen"], ("accel",)),
            (["create", "o1", "--memory", 64, "--qemu", T.QEMU10, "--disk", T.GUEST_IMAGE + ",format=vmdk"],
             ("disks[0].format",)),
            (["create", "o1", "--memory", 64, "--qemu", T.QEMU10, "--machine", "pc,accel=kvm"], ("machine",)),
            (["create", "o1", "--memory", 64], ("qemu", "missing")),
            (["create", "o1", "--qemu", T.QEMU10], ("memory", "missing")),
        ]
        for args, words in cases:
            with self.subTest(args=args):
                self.refused(args, 2, *words)

    def test_disks(self):
        missing = os.path.join(self.tmp, "no-such-disk.img")
        self.refused(self.create_args("d1", disk=missing), 2, "disks[0].path", "does not exist")
        self.refused(self.create_args("d1", disk="relative/disk.img"), 2, "disks[0].path", "absolute")
        self.refused(self.create_args("d1", disk=self.tmp), 2, "disks[0].path")
        # The second disk is named by its index.
        self.refused(self.create_args("d1") + ["--disk", missing], 2, "disks[1].path")

    def test_qemu_binaries(self):
        self.refused(self.create_args("q1", qemu="qemu-system-x86_64"), 2, "qemu", "absolute")
        self.refused(self.create_args("q1", qemu="/nonexistent/qemu-system-x86_64"), 2, "qemu", "does not exist")
        plain = os.path.join(self.tmp, "not-executable")
        with open(plain, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(plain, 0o644)
        self.refused(self.create_args("q1", qemu=plain), 2, "qemu", "not executable")
        self.refused(self.create_args("q1", qemu=self.tmp), 2, "qemu")
        # Runs, but is not QEMU: refused by the probe (which is reaped).
        self.refused(self.create_args("q1", qemu="/bin/true"), 1, "/bin/true", "cannot be used as QEMU")
        self.refused(self.create_args("q1", qemu="/bin/false"), 1, "/bin/false")

    def test_machine_types(self):
        self.refused(self.create_args("mt1", machine="no-such-machine"), 2, "machine", "no-such-machine")
        self.refused(self.create_args("mt1", machine="pc-i440fx-1.0.99"), 2, "machine")
        # q35 and a versioned type are fine.
        self.ok(*self.create_args("mt2", machine="q35"))
        self.assertTrue(self.status("mt2")["machine"].startswith("pc-q35-10."), self.status("mt2")["machine"])
        self.ok(*self.create_args("mt3", machine="pc-i440fx-7.2"))
        self.assertEqual(self.status("mt3")["machine"], "pc-i440fx-7.2")

    def test_duplicate_name(self):
        self.ok(*self.create_args("dup"))
        with open(os.path.join(self.cprd.vm_dir("dup"), "vm.json")) as f:
            stored = f.read()
        self.refused(self.create_args("dup", memory=128), 2, "dup", "exists")
        with open(os.path.join(self.cprd.vm_dir("dup"), "vm.json")) as f:
            self.assertEqual(f.read(), stored)
        self.assertEqual(self.status("dup")["spec"]["memory"], 64)

    def test_duplicate_name_at_once(self):
        """Two creates of one name at the same time: one wins, the other
        gets VMExists (the name is taken while the binary is probed)."""
        for i in range(3):
            name = "race%d" % i
            procs = [self.cprd.ctl_bg(*self.create_args(name, memory=64 + 16 * k)) for k in range(2)]
            outs = [p.communicate(timeout=60) for p in procs]
            rcs = sorted(p.returncode for p in procs)
            self.assertEqual(rcs, [0, 2], outs)
            loser = [o for p, o in zip(procs, outs) if p.returncode == 2][0]
            self.assertIn("exists", loser[1])
            self.assertEqual(self.status(name)["state"], "defined")
            self.assertEqual(sorted(os.listdir(self.cprd.vm_dir(name))), ["vm.json"])
        self.wait_children([])

    def test_delete_running(self):
        self.create_started("run1")
        pid = self.status("run1")["pid"]
        self.refused(["delete", "run1"], 1, "run1", "running", same_children=[pid])
        vm = self.status("run1")
        self.assertEqual((vm["state"], vm["pid"]), ("running", pid))
        self.assertTrue(T.pid_alive(pid))
        g = self.guest("run1")
        wait_until(lambda: self.cprd.read_guest("run1")[1] > g[1], 10, what="the guest to keep counting")
        # Starting a running VM is refused too.
        self.refused(["start", "run1"], 1, "run1", "running", same_children=[pid])
        self.ok("stop", "run1", "--force")

    def test_no_such_vm(self):
        self.ok(*self.create_args("exists"))
        for args in (["delete", "nope"], ["start", "nope"], ["stop", "nope"], ["status", "nope"],
                     ["log", "nope"]):
            with self.subTest(args=args):
                self.refused(args, 3, "nope")

    def test_spec_files(self):
        good = {"name": "f0", "memory": 64, "qemu": T.QEMU10, "accel": "tcg", "machine": "pc",
                "disks": [{"path": T.GUEST_IMAGE, "readonly": True}]}
        cases = [
            ("unknown field", dict(good, bogus=1), ("bogus", "not a known field")),
            ("unknown disk field", dict(good, disks=[{"path": T.GUEST_IMAGE, "size": 5}]),
             ("disks[0].size", "not a known field")),
            ("memory as a string", dict(good, memory="64"), ("memory", "integer")),
            ("memory as a float", dict(good, memory=64.5), ("memory", "integer")),
            ("cpus as a bool", dict(good, cpus=True), ("cpus", "integer")),
            ("name as a number", dict(good, name=5), ("name", "string")),
            ("qemu as a list", dict(good, qemu=[T.QEMU10]), ("qemu", "string")),
            ("hugepages as a string", dict(good, hugepages="yes"), ("hugepages",)),
            ("disks as an object", dict(good, disks={"path": T.GUEST_IMAGE}), ("disks", "array")),
            ("readonly as a string", dict(good, disks=[{"path": T.GUEST_IMAGE, "readonly": "on"}]),
             ("disks[0].readonly",)),
            ("a disk path with a comma", dict(good, disks=[{"path": T.GUEST_IMAGE + ",if=ide"}]),
             ("disks[0].path",)),
            ("a device by path", dict(good, devices=[{"path": "/dev/vfio/devices/vfio0"}]),
             ("devices[0].path", "not a known field")),
            ("a device without pci", dict(good, devices=[{}]), ("devices[0].pci", "missing")),
            ("a device as a string", dict(good, devices=["0000:00:03.0"]), ("devices[0]", "object")),
            ("missing memory", {k: v for k, v in good.items() if k != "memory"}, ("memory", "missing")),
        ]
        for what, spec, words in cases:
            with self.subTest(what):
                path = self.spec_file("spec.json", spec)
                self.refused(["create", "-f", path], 2, *words)
        for what, text in (("not JSON", "{name: f0"), ("an array", "[1, 2]"), ("empty", "")):
            with self.subTest(what):
                path = self.spec_file("bad.json", text)
                self.refused(["create", "-f", path], 2, "bad.json")
        self.refused(["create", "-f", os.path.join(self.tmp, "missing.json")], 2, "missing.json")
        # The good one is accepted, from the file alone and with a name.
        path = self.spec_file("good.json", good)
        self.ok("create", "-f", path)
        self.assertEqual(self.status("f0")["spec"]["memory"], 64)
        self.ok("create", "f1", "-f", path)
        self.assertEqual(self.status("f1")["machine"], "pc-i440fx-10.0")

    # ---- assigned devices (issue 11): this host has no VFIO device, so
    # every device is refused before anything is made -------------------------

    @staticmethod
    def host_pci_devices():
        """This host's PCI devices, each with the driver it is bound to ("" for none)."""
        found = []
        root = "/sys/bus/pci/devices"
        for addr in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            link = os.path.join(root, addr, "driver")
            found.append((addr, os.path.basename(os.readlink(link)) if os.path.islink(link) else ""))
        return found

    def test_device_syntax(self):
        """cprctl's own syntax (exit 2, naming --device), then cprd's
        (InvalidSpec naming the field)."""
        base = self.create_args("v1")
        for arg in ("0000:00:03.0", "pci=", "host=0000:00:03.0", "pci=0000:00:03.0,x-vga=on"):
            with self.subTest(arg=arg):
                self.refused(base + ["--device", arg], 2, "--device", "pci=DDDD:BB:DD.F")
        for addr in ("00:03.0", "0000:00:03", "0000:00:20.0", "0000:00:03.8", "0000:00:0g.0"):
            with self.subTest(addr=addr):
                self.refused(base + ["--device", "pci=" + addr], 2, "invalid VM spec", "devices[0].pci",
                             "DDDD:BB:DD.F", addr)
        self.refused(base + ["--device", "pci=0000:ff:1f.7", "--device", "pci=0000:FF:1F.7"], 2,
                     "devices[1].pci", "0000:ff:1f.7", "devices[0] names already")
        nine = sum((["--device", "pci=0000:0%d:00.0" % i] for i in range(1, 10)), [])
        self.refused(base + nine, 2, "devices", "at most 8")

    def test_device_unavailable(self):
        """A device the host cannot give: DeviceUnavailable (exit 1) naming
        the device and the cause, and no VM is made."""
        self.refused(self.create_args("v1") + ["--device", "pci=0000:ff:1f.7"], 1,
                     "device 0000:ff:1f.7 cannot be assigned", "no PCI device 0000:ff:1f.7", "lspci -D")
        # The second of two is named too.
        self.refused(self.create_args("v1") + ["--device", "pci=0000:fe:00.0", "--device", "pci=0000:ff:1f.7"],
                     1, "device 0000:fe:00.0")
        # Real devices of this host, bound to another driver or to none:
        # the error names the driver and how to rebind, and cprd rebinds
        # nothing (the driver is the same after).
        tried = 0
        for addr, driver in self.host_pci_devices():
            if driver == "vfio-pci" or (driver and tried & 1) or (not driver and tried & 2):
                continue
            tried |= 1 if driver else 2
            with self.subTest(device=addr, driver=driver):
                words = (["bound to %s, not to vfio-pci" % driver, "/sys/bus/pci/drivers/%s/unbind" % driver]
                         if driver else ["bound to no driver"])
                self.refused(self.create_args("v1") + ["--device", "pci=" + addr], 1, "device " + addr,
                             "driver_override", "drivers_probe", *words)
                self.assertEqual(dict(self.host_pci_devices())[addr], driver)
        if not tried:
            T.log("test_device_unavailable: this host has no PCI device to try as bound")

    def test_device_at_start(self):
        """A stored spec whose device the host cannot give (it went away or
        was rebound since create): StartVM is refused the same way, before
        any QEMU runs, and the spec stays as it was."""
        self.ok(*self.create_args("v2"))
        self.cprd.proc.send_signal(T.signal.SIGTERM)
        self.cprd.proc.wait(30)
        path = os.path.join(self.cprd.vm_dir("v2"), "vm.json")
        with open(path) as f:
            stored = json.load(f)
        stored["spec"]["devices"] = [{"pci": "0000:ff:1f.7"}]
        with open(path, "w") as f:
            json.dump(stored, f)
        self.cprd.start()
        self.assertEqual(self.status("v2")["spec"]["devices"], [{"pci": "0000:ff:1f.7"}])
        started = self.cprd.read_log().count("started QEMU")
        r = self.ctl("start", "v2")
        self.assertEqual(r.rc, 1, repr(r))
        for w in ("device 0000:ff:1f.7 cannot be assigned", "no PCI device 0000:ff:1f.7"):
            self.assertIn(w, r.stderr, repr(r))
        self.assertEqual(self.cprd.read_log().count("started QEMU"), started)
        self.wait_children([])
        vm = self.status("v2")
        self.assertNotIn("pid", vm)
        self.assertEqual(vm["fds"], [])
        with open(path) as f:
            self.assertEqual(json.load(f)["spec"], stored["spec"])


class Nics(Refusing):
    """NICs in a spec (issue 12), with cprd in a network namespace of the
    test's own whose bridge br0 exists: refusals name nics[N] and the field,
    a bad --nic is refused by cprctl itself, and a MAC left out is derived
    and stored with the spec."""

    netlab = True

    def test_lab(self):
        """cprd runs in the lab's namespace, where br0 has the host end of
        the lab network and no port yet; the host has no such bridge."""
        mine = os.stat("/proc/self/ns/net").st_ino
        cprds = os.stat("/proc/%d/ns/net" % self.cprd.pid).st_ino
        self.assertEqual(cprds, os.stat("/run/netns/" + self.net.name).st_ino)
        self.assertNotEqual(cprds, mine)
        links = self.net.links()
        self.assertEqual(links[self.net.BRIDGE]["linkinfo"]["info_kind"], "bridge", links)
        self.assertEqual(self.net.ports(), {})
        r = self.net.run("ip", "-j", "addr", "show", "dev", self.net.BRIDGE)
        self.assertIn('"local":"%s","prefixlen":24' % self.net.HOST_ADDR, r.stdout)

    def test_nic_refused(self):
        a = self.create_args("n1")
        mac = "52:54:00:12:34:56"
        for nic, words in (("br0", ("--nic", "KEY=VALUE")),
                           ("", ("--nic", "bridge=BR")),
                           ("bridge=br0,model=e1000", ("unknown NIC option 'model'",)),
                           ("mac=" + mac, ("names no bridge",)),
                           ("bridge=br0,bridge=br1", ("bridge twice",)),
                           ("bridge=", ("bridge needs a value",)),
                           ("bridge=a/b", ("nics[0].bridge", "not an interface name")),
                           ("bridge=br0,mac=52:54:00:12:34", ("nics[0].mac", "hex digits")),
                           ("bridge=br0,mac=01:00:5e:00:00:01", ("nics[0].mac", "multicast")),
                           ("bridge=br0,mac=00:00:00:00:00:00", ("nics[0].mac", "all zeros"))):
            with self.subTest(nic=nic):
                self.refused(a + ["--nic", nic], 2, *words)
        self.refused(a + ["--nic", "bridge=br0,mac=" + mac, "--nic", "bridge=br0,mac=" + mac.upper()], 2,
                     "nics[1].mac", "nics[0]'s already")
        self.refused(a + ["--nic", "bridge=br0"] * 9, 2, "nics", "too many NICs")
        path = self.spec_file("nics.json", {"name": "n1", "memory": 64, "qemu": T.QEMU10,
                                            "nics": {"bridge": "br0"}})
        self.refused(["create", "-f", path], 2, "nics", "array")

    def test_nic_mac_derived_and_stored(self):
        self.ok(*self.create_args("n2") + ["--nic", "bridge=br0", "--nic", "bridge=br0,mac=52:54:00:AA:bb:CC"])
        nics = self.status("n2")["spec"]["nics"]
        self.assertEqual(len(nics), 2, nics)
        self.assertEqual(nics[1], {"bridge": "br0", "mac": "52:54:00:aa:bb:cc"})
        derived = nics[0]["mac"]
        self.assertRegex(derived, r"^52:54:00:[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$")
        self.assertEqual(int(derived[-2:], 16) & 7, 0, "index 0 in the low bits")
        # Stored, not derived again on every read.
        with open(os.path.join(self.cprd.vm_dir("n2"), "vm.json")) as f:
            self.assertIn('"mac":"%s"' % derived, f.read().replace(" ", ""))
        # The same name gets the same MAC again.
        self.ok("delete", "n2")
        self.ok(*self.create_args("n2") + ["--nic", "bridge=br0"])
        self.assertEqual(self.status("n2")["spec"]["nics"][0]["mac"], derived)

    def test_missing_bridge_refused(self):
        """A bridge that does not exist, at create and (removed since) at
        start: InvalidSpec naming nics[N].bridge; no tap is left behind."""
        self.refused(self.create_args("n3") + ["--nic", "bridge=br0", "--nic", "bridge=br9"], 2,
                     "nics[1].bridge", "bridge br9 does not exist")
        self.net.run("ip", "link", "add", "br9", "type", "bridge")
        self.ok(*self.create_args("n3") + ["--nic", "bridge=br0", "--nic", "bridge=br9"])
        self.assertEqual(self.net.run("ip", "link", "del", "br9").returncode, 0)
        self.refused(["start", "n3"], 2, "nics[1].bridge", "bridge br9 does not exist")
        self.assertEqual(self.net.ports(), {}, "a refused start left a tap")
        self.assertEqual([n["held"] for n in self.status("n3")["nics"]], [False, False])

    def test_tap_held_while_running(self):
        """A started VM's NICs: one tap each on its bridge, up, named in
        GetVM and held (kind tap); stopping the VM removes them, and a new
        start makes them again."""
        self.ok(*self.create_args("n4") + ["--nic", "bridge=br0", "--nic", "bridge=br0"])
        self.assertEqual(self.status("n4")["nics"][0]["held"], False)
        self.start_vm("n4")
        vm = self.status("n4")
        taps = [n["tap"] for n in vm["nics"]]
        self.assertEqual(taps, ["cprd-n4-0", "cprd-n4-1"], vm["nics"])
        self.assertEqual([n["held"] for n in vm["nics"]], [True, True])
        held = sorted(f["name"] for f in vm["fds"] if f["kind"] == "tap")
        self.assertEqual(held, ["n4.tap0", "n4.tap1"], vm["fds"])
        ports = self.net.ports()
        self.assertEqual(sorted(ports), taps, ports)
        for t in taps:
            self.assertIn("UP", ports[t]["flags"], ports[t])
            self.assertEqual(ports[t]["linkinfo"]["info_kind"], "tun", ports[t])
        # QEMU has the very taps cprd holds.
        qemu_taps = [l for l in (os.readlink("/proc/%d/fd/%s" % (vm["pid"], fd))
                                 for fd in os.listdir("/proc/%d/fd" % vm["pid"])) if l == "/dev/net/tun"]
        self.assertEqual(len(qemu_taps), 2, "QEMU holds %d tun fds" % len(qemu_taps))
        self.ok("stop", "n4", "--force")
        self.wait_state("n4", "stopped")
        wait_until(lambda: self.net.ports() == {}, 10, what="the taps to go with the stop")
        self.assertEqual([n["held"] for n in self.status("n4")["nics"]], [False, False])
        self.start_vm("n4")
        self.assertEqual(sorted(self.net.ports()), taps)
        # A crash keeps them (the VM's custody), a delete does not.
        T.kill_pid(self.status("n4")["pid"], T.signal.SIGKILL)
        self.wait_state("n4", "crashed")
        self.assertEqual(sorted(self.net.ports()), taps)
        self.ok("stop", "n4")
        self.ok("delete", "n4")
        wait_until(lambda: self.net.ports() == {}, 10, what="the taps to go with the delete")



if __name__ == "__main__":
    T.main(qemus=(T.QEMU10,))
