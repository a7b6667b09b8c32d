#!/usr/bin/python3
"""cprd's metrics (issue 14, item 4), scraped through a real node_exporter:
Debian's prometheus-node-exporter, run by this test on a loopback port with
only its textfile collector, reading cprd's runtime folder. After VMs were
created, started, stopped and upgraded (one upgrade committed, one rolled
back), the scrape must show the VMs by state (every state, 0 included),
each upgrade counted with its mode and outcome, the histograms' counts, the
last-upgrade gauge of the upgraded VM, and no textfile scrape error.
node_exporter is stopped by pid.

Run: /usr/bin/python3 test_metrics.py [MetricsTest.test_name ...]
"""

import os
import re
import socket
import stat
import subprocess
import time
import urllib.request

import cprdtest as T
from cprdtest import wait_until

NODE_EXPORTER = os.environ.get("CPRD_NODE_EXPORTER") or "/usr/bin/prometheus-node-exporter"
STATES = ["defined", "starting", "running", "paused", "stopping", "stopped", "crashed", "upgrading"]
# name{labels} value, as node_exporter prints its samples.
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset of (label, value)): float} of a scrape."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeExporter:
    """One node_exporter of this test's own, on 127.0.0.1, reading folder
    with its textfile collector and nothing else."""

    def __init__(self, folder, log_path):
        self.port = free_port()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [NODE_EXPORTER, "--web.listen-address=127.0.0.1:%d" % self.port,
             "--collector.disable-defaults", "--collector.textfile",
             "--collector.textfile.directory=" + folder],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, close_fds=True)
        wait_until(self._up, 20, what="node_exporter to answer on port %d" % self.port)

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError("node_exporter exited with %d" % self.proc.returncode)
        try:
            self.scrape_text()
            return True
        except OSError:
            return False

    def scrape_text(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=10) as r:
            return r.read().decode()

    def scrape(self):
        return parse(self.scrape_text())

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, T.signal.SIGTERM)
            try:
                self.proc.wait(10)
            except T.subprocess.TimeoutExpired:
                os.kill(self.proc.pid, T.signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


class MetricsTest(T.CprdTestCase):

    def setUp(self):
        if not os.access(NODE_EXPORTER, os.X_OK):
            self.skipTest("%s is missing; scripts/install-deps.sh installs prometheus-node-exporter"
                          % NODE_EXPORTER)
        super().setUp()
        self.prom = os.path.join(self.cprd.runtime_dir, "metrics.prom")
        self.exporter = NodeExporter(self.cprd.runtime_dir, os.path.join(self.tmp, "node_exporter.log"))
        self.addCleanup(self.exporter.stop)

    def value(self, samples, name, **labels):
        key = (name, frozenset(labels.items()))
        self.assertIn(key, samples, "no %s%s in the scrape: %s" % (
            name, labels, sorted(k for k in samples if k[0] == name)))
        return samples[key]

    def scrape_until(self, what, check):
        """Scrapes until check(samples) holds (cprd writes the file a moment
        after a change); returns the samples."""
        last = {}

        def ok():
            last["s"] = self.exporter.scrape()
            return check(last["s"])
        try:
            wait_until(ok, 10, what=what)
        except AssertionError:
            self.exporter_log_and_file()
            raise
        return last["s"]

    def exporter_log_and_file(self):
        with open(self.exporter.log.name, "rb") as f:
            T.log("---- node_exporter log ----\n" + f.read().decode("utf-8", "replace")[-3000:])
        try:
            with open(self.prom) as f:
                T.log("---- metrics.prom ----\n" + f.read())
        except OSError as e:
            T.log("---- metrics.prom: %s" % e)

    def assert_states(self, samples, expected):
        for s in STATES:
            self.assertEqual(self.value(samples, "cprd_vms", state=s), expected.get(s, 0), s)

    def test_scraped_through_node_exporter(self):
        t0 = time.time()
        # Written at start, with no VM: every state at 0.
        s = self.scrape_until("metrics.prom with cprd_vms",
                              lambda s: ("cprd_vms", frozenset({("state", "running")})) in s)
        self.assert_states(s, {})
        self.assertEqual(self.value(s, "node_textfile_scrape_error"), 0)
        st = os.stat(self.prom)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o644, "metrics.prom is for node_exporter's user too")

        self.create_started("m1")
        self.create_started("m2")
        self.create("m3")
        self.ok("stop", "m2", "--force")
        s = self.scrape_until("two VMs running, one stopped",
                              lambda s: s.get(("cprd_vms", frozenset({("state", "stopped")}))) == 1)
        self.assert_states(s, {"running": 1, "stopped": 1, "defined": 1})
        for mode in ("cpr-transfer", "local-migrate", "cpr-exec"):
            for outcome in ("committed", "rolled-back", "failed"):
                self.assertEqual(self.value(s, "cprd_upgrades_total", mode=mode, outcome=outcome), 0)
        self.assertEqual(self.value(s, "cprd_upgrade_pause_seconds_count"), 0)
        self.assertNotIn(("cprd_vm_last_upgrade_timestamp_seconds", frozenset({("vm", "m1")})), s)

        # One upgrade committed, one rolled back (the target exits at once).
        old_pid = self.status("m1")["pid"]
        r = self.ok("upgrade", "m1", "--qemu", T.QEMU10, "--mode", "cpr-transfer", "--json")
        self.assertEqual(r.json["outcome"], "committed", r.json)
        self.assertNotEqual(r.json["pid"], old_pid)
        bad = T.write_wrapper(os.path.join(self.tmp, "qemu-exit1"), "exit1")
        r = self.ctl("upgrade", "m1", "--qemu", bad, "--mode", "cpr-transfer", "--json")
        self.assertEqual((r.rc, r.json["outcome"]), (1, "rolled-back"), repr(r))
        record = self.status("m1")["upgrades"][0]
        self.assertEqual(record["outcome"], "committed", record)

        s = self.scrape_until("two upgrades counted", lambda s: s.get(
            ("cprd_upgrade_duration_seconds_count", frozenset())) == 2)
        self.assertEqual(self.value(s, "cprd_upgrades_total", mode="cpr-transfer", outcome="committed"), 1)
        self.assertEqual(self.value(s, "cprd_upgrades_total", mode="cpr-transfer", outcome="rolled-back"), 1)
        self.assertEqual(self.value(s, "cprd_upgrades_total", mode="local-migrate", outcome="committed"), 0)
        # Only the committed one paused its guest.
        self.assertEqual(self.value(s, "cprd_upgrade_pause_seconds_count"), 1)
        self.assertEqual(self.value(s, "cprd_upgrade_pause_seconds_bucket", le="+Inf"), 1)
        pause = self.value(s, "cprd_upgrade_pause_seconds_sum")
        self.assertAlmostEqual(pause, record["pauseMs"] / 1000, delta=0.0011)
        self.assertEqual(self.value(s, "cprd_upgrade_pause_seconds_bucket", le="10"), 1)
        self.assertEqual(self.value(s, "cprd_upgrade_duration_seconds_bucket", le="+Inf"), 2)
        self.assertGreater(self.value(s, "cprd_upgrade_duration_seconds_sum"), 0)
        self.assertEqual(self.value(s, "cprd_upgrades_running"), 0)
        self.assert_states(s, {"running": 1, "stopped": 1, "defined": 1})

        # The gauge: when m1's committed upgrade ended (its record's time
        # plus its total), in unix seconds; none for the others.
        last = self.value(s, "cprd_vm_last_upgrade_timestamp_seconds", vm="m1")
        from test_upgrade import rfc3339_ms
        ended = rfc3339_ms(record["time"]) / 1000 + record["totalMs"] / 1000
        self.assertAlmostEqual(last, ended, delta=0.01)
        self.assertTrue(t0 - 1 <= last <= time.time() + 1, (t0, last))
        for vm in ("m2", "m3"):
            self.assertNotIn(("cprd_vm_last_upgrade_timestamp_seconds", frozenset({("vm", vm)})), s)

        self.assertEqual(self.value(s, "node_textfile_scrape_error"), 0)
        self.assertGreater(self.value(s, "node_textfile_mtime_seconds", file=self.prom), t0 - 1)
        # Written through a temporary file renamed into place: none is left.
        self.assertEqual(sorted(f for f in os.listdir(self.cprd.runtime_dir) if "metrics" in f),
                         ["metrics.prom"])

        # A VM deleted is gone from the file too.
        self.ok("delete", "m3")
        s = self.scrape_until("m3 gone", lambda s: s.get(("cprd_vms", frozenset({("state", "defined")}))) == 0)
        self.assert_states(s, {"running": 1, "stopped": 1})

        # Changes that come together are written once: DeleteVM's event and
        # the VM's removal, CreateVM's addition and its event (cprd logs
        # each write at debug level with the changes it covered).
        def logged():
            w = [int(n) for n in re.findall(r"metrics\.prom written for (\d+) changes", self.cprd.read_log())]
            return w if w and w[-1] >= 2 else None
        # The line comes once the write returned, a moment after the rename.
        writes = wait_until(logged, 10, what="the write after DeleteVM in cprd's log")
        T.log("  %d writes for %d changes: %s" % (len(writes), sum(writes), writes))
        self.assertGreaterEqual(writes[-1], 2, writes)
        self.assertLess(len(writes), sum(writes), writes)


if __name__ == "__main__":
    T.main()
