#!/usr/bin/python3
"""contrib/ansible's playbook (issue 14, item 6), run by Debian's
ansible-playbook against this machine (-c local) with real cprds.

A guest is made outdated as apt would: it runs from a copy of QEMU in a
temporary folder, and another copy is renamed over it. Then:
  - localhost (inventory "localhost,"): the playbook succeeds, the outdated
    guest runs on a new QEMU pid and is no longer outdated, a guest that was
    not outdated is untouched, and the role reported the guest's result;
  - two hosts, one at a time (serial 1), each with its own cprd: the first
    host's upgrade fails (the new binary passes the probe and exits when it
    is started as the target), so the playbook fails, and the second host,
    outdated too, is never touched.
Each cprd is stopped by pid at the end (cprdtest).

Run: /usr/bin/python3 test_ansible.py [AnsibleTest.test_name ...]
"""

import json
import os
import shutil
import subprocess

import cprdtest as T

ANSIBLE_PLAYBOOK = os.environ.get("CPRD_ANSIBLE_PLAYBOOK") or "/usr/bin/ansible-playbook"
PLAYBOOK = os.path.join(T.SOURCE_DIR, "contrib", "ansible", "upgrade-outdated.yml")


class AnsibleTest(T.CprdTestCase):

    def setUp(self):
        if not os.access(ANSIBLE_PLAYBOOK, os.X_OK):
            self.skipTest("%s is missing; scripts/install-deps.sh installs ansible" % ANSIBLE_PLAYBOOK)
        super().setUp()

    def outdated_guest(self, cprd, name, replacement=None):
        """Starts name on cprd from a copy of QEMU 10 in a folder of its
        own, then renames another file over the copy (a copy of QEMU, or
        replacement): the guest is outdated. Returns (copy, pid)."""
        folder = os.path.join(self.tmp, "bin-" + name)
        os.makedirs(folder)
        copy = os.path.join(folder, "qemu-system-x86_64")
        shutil.copy2(T.QEMU10, copy)
        c = self.cprd
        self.cprd = cprd
        try:
            pid = self.create_started(name, qemu=copy)["pid"]
            new = copy + ".new"
            if replacement:
                shutil.copy2(replacement, new)
            else:
                shutil.copy2(T.QEMU10, new)
            os.rename(new, copy)
            outdated = [v["name"] for v in self.ok("list", "--outdated", "--json").json["vms"]]
            self.assertIn(name, outdated)
        finally:
            self.cprd = c
        return copy, pid

    def playbook(self, *args):
        """Runs the playbook with the json stdout callback; returns (rc,
        the parsed output, stderr)."""
        env = dict(os.environ)
        env.update({
            "ANSIBLE_STDOUT_CALLBACK": "json",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_HOME": os.path.join(self.tmp, "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": os.path.join(self.tmp, "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(self.tmp, "ansible-remote"),
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
        })
        argv = [ANSIBLE_PLAYBOOK, PLAYBOOK, "-c", "local", "-e", "cprd_cprctl=" + T.CPRCTL] + list(args)
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600,
                           stdin=subprocess.DEVNULL)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            raise AssertionError("ansible-playbook printed no JSON (rc %d):\n%s\n%s" %
                                 (p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
        return p.returncode, out, p.stderr

    @staticmethod
    def task_results(out, task, host):
        """What task did on host, over every play (batch) it ran in."""
        found = []
        for play in out["plays"]:
            for t in play["tasks"]:
                # The json callback names a role's task "ROLE : NAME".
                if t["task"]["name"] in (task, "cprd_upgrade : " + task) and host in t["hosts"]:
                    found.append(t["hosts"][host])
        return found

    def report_lines(self, out, host):
        """The role's report of each guest on host: the msgs of its loop."""
        lines = []
        for r in self.task_results(out, "Report each guest's result", host):
            lines += [i["msg"] for i in r.get("results", []) if "msg" in i]
        for l in lines:
            T.log("  %s reported: %s" % (host, l))
        return lines

    def test_syntax(self):
        p = subprocess.run([ANSIBLE_PLAYBOOK, "--syntax-check", "-i", "localhost,", PLAYBOOK],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_localhost_upgrade(self):
        copy, old_pid = self.outdated_guest(self.cprd, "od")
        fresh = self.create_started("fresh")["pid"]  # on the real path: not outdated

        rc, out, err = self.playbook("-i", "localhost,", "-e", "cprd_address=" + self.cprd.address)
        self.assertEqual(rc, 0, json.dumps(out["stats"]) + err[-2000:])
        self.assertEqual(out["stats"]["localhost"]["failures"], 0, out["stats"])
        self.assertGreaterEqual(out["stats"]["localhost"]["changed"], 1, out["stats"])

        vm = self.status("od")
        self.assertEqual(vm["state"], "running")
        self.assertNotEqual(vm["pid"], old_pid)
        self.assertFalse(vm["outdated"], vm)
        self.assertEqual(vm["qemu"], copy)
        self.assertEqual(vm["upgrades"][-1]["outcome"], "committed", vm["upgrades"])
        self.assertEqual(self.ok("list", "--outdated", "--json").json["vms"], [])
        self.wait_guest_ticks("od", self.wait_guest_ticks("od", 1)[1] + 1)
        # Only the outdated guest was touched.
        self.assertEqual(self.status("fresh")["pid"], fresh)
        self.assertEqual(self.status("fresh")["upgrades"], [])

        # The role reported the guest's outcome, mode and pause from cprctl's JSON.
        said = self.task_results(out, "Say which guests are outdated", "localhost")
        self.assertEqual([r["msg"] for r in said], ["1 outdated: od"], said)
        lines = self.report_lines(out, "localhost")
        self.assertEqual(len(lines), 1, lines)
        rec = vm["upgrades"][-1]
        self.assertTrue(lines[0].startswith("od: committed (%s)" % rec["mode"]), lines)
        self.assertIn("guest paused %s ms" % rec["pauseMs"], lines[0])

        # Run again: nothing is outdated, nothing changes, it succeeds.
        rc, out, err = self.playbook("-i", "localhost,", "-e", "cprd_address=" + self.cprd.address)
        self.assertEqual(rc, 0, err[-2000:])
        self.assertEqual(out["stats"]["localhost"]["changed"], 0, out["stats"])
        said = self.task_results(out, "Say which guests are outdated", "localhost")
        self.assertEqual([r["msg"] for r in said], ["0 outdated: none"], said)
        self.assertEqual(self.status("od")["pid"], vm["pid"])

    def test_failure_stops_the_rollout(self):
        # h1: its new binary passes the probe, then exits when started as
        # the upgrade's target, so the upgrade rolls back.
        bad = T.write_wrapper(os.path.join(self.tmp, "qemu-exit1"), "exit1")
        _, h1_pid = self.outdated_guest(self.cprd, "bad", replacement=bad)
        # h2: another cprd with an outdated guest that would upgrade fine.
        second = T.Cprd(os.path.join(self.tmp, "second"))
        os.makedirs(second.root)
        second.start()
        self.addCleanup(second.stop)
        _, h2_pid = self.outdated_guest(second, "good")

        inventory = os.path.join(self.tmp, "inventory.ini")
        with open(inventory, "w") as f:
            f.write("[cprd_hosts]\n"
                    "h1 ansible_connection=local cprd_address=%s\n"
                    "h2 ansible_connection=local cprd_address=%s\n" % (self.cprd.address, second.address))
        rc, out, err = self.playbook("-i", inventory, "-e", "cprd_hosts=cprd_hosts")
        self.assertNotEqual(rc, 0, json.dumps(out["stats"]))
        self.assertGreaterEqual(out["stats"]["h1"]["failures"], 1, out["stats"])

        # h1's guest rolled back onto its old QEMU and is still outdated.
        vm = self.status("bad")
        self.assertEqual((vm["state"], vm["pid"]), ("running", h1_pid), vm)
        self.assertTrue(vm["outdated"], vm)
        self.assertIn(vm["upgrades"][-1]["outcome"], ("rolled-back", "failed"), vm["upgrades"])
        # The failure was reported with the guest's outcome, and said so.
        lines = self.report_lines(out, "h1")
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("bad: rolled-back"), lines)
        failed = self.task_results(out, "Stop the rollout when an upgrade did not commit", "h1")
        self.assertTrue(failed and failed[0].get("failed"), failed)
        T.log("  h1 failed with: %s" % failed[0]["msg"])
        self.assertIn("bad rolled-back", failed[0]["msg"])

        # h2 was never reached: no task ran there, its guest is untouched.
        self.assertEqual(self.task_results(out, "Ask cprd which guests run a replaced QEMU binary", "h2"), [])
        self.assertNotIn("h2", {h for h, s in out["stats"].items() if s.get("ok") or s.get("changed")})
        c = self.cprd
        self.cprd = second
        try:
            vm = self.status("good")
            self.assertEqual((vm["state"], vm["pid"]), ("running", h2_pid), vm)
            self.assertTrue(vm["outdated"], vm)
            self.assertEqual(vm["upgrades"], [])
        finally:
            self.cprd = c


if __name__ == "__main__":
    T.main()
