#!/usr/bin/python3
"""The VFIO lab (docs/vfio-lab.md): runs scenarios in an L1 Linux guest that
has emulated PCI devices behind an emulated IOMMU, where QEMU 11.1 (and
cprd, when given) assign them to an L2 guest through vfio-pci.

  run-lab.py [OPTIONS] [SCENARIO...]

SCENARIO is a name from tests/vfio-lab/scenarios (NAME.sh), or `plain`
(plain-cpr edu-dma), `cprd` (cprd-smoke cprd-upgrade cprd-refuse-edu) or
`all` (the default). Each scenario boots L1 afresh under QEMU 10.0 (TCG):

  -M q35,kernel-irqchip=split -device intel-iommu,intremap=on -m 2048 -smp 2
  kernel: build-l1.sh's, with intel_iommu=on lab.scenario=NAME
  pci-testdev and edu, each behind a pcie-root-port of its own (so that
      L1 can reset each one alone, as vfio-pci does when a device is
      opened or released: see docs/vfio-lab.md)
  9p share `payload` (read-only): scenarios/, l2/cprd-guest-pci.img,
      bin/cprd and bin/cprctl, and root/ (the libraries they link, at their
      paths on this host) when cprd is given
  9p share `out` (read-write): what the scenario keeps (logs)

L1's /init binds both devices to vfio-pci, runs scenarios/NAME.sh and
powers off. This script reads L1's console: "LAB: CHECK PASS|FAIL ...",
"LAB: FIGURE KEY VALUE", "LAB: END rc=N". A scenario passes when it ends
with rc=0, with at least one check and none failed.

Scenarios named cprd-* run the cprd and cprctl given (--cprd, --cprctl;
default: this tree's build). cprd-upgrade and cprd-refuse-edu need a
cprctl whose `create` knows `--device` (issue 11); with an older one they
are skipped, and a skip fails in CI (tests/ci-skips.txt).

Everything is kept in the results folder (--results, emptied first; default
a new /tmp/cprd-vfio-lab-XXXXXX): per scenario l1-console.log, l0-qemu.log and
out/ (the L2 serial log, L2 QEMUs' stderr, cprd's log).

Ends with "N passed, M failed[, K skipped]", one count per scenario.
Exit status 0 when none failed.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
import ci_skips  # noqa: E402

AREA = "vfio_lab"
GROUPS = {
    "plain": ["plain-cpr", "edu-dma"],
    "cprd": ["cprd-smoke", "cprd-upgrade", "cprd-refuse-edu", "cprd-target-dies"],
}
GROUPS["all"] = GROUPS["plain"] + GROUPS["cprd"]
# Scenarios that run cprd (any scenario named cprd-* does), and those of
# them that need issue 11's `cprctl create --device`.
NEEDS_DEVICES = {"cprd-upgrade", "cprd-refuse-edu", "cprd-target-dies"}


def needs_cprd(name):
    return name.startswith("cprd")
LAB_RE = re.compile(r"LAB: (.*)$")
MARKER = ".cprd-vfio-lab-results"


def log(msg):
    print(msg, flush=True)


def default(env, path):
    return os.environ.get(env) or os.path.join(SOURCE_DIR, path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    p.add_argument("--l1-dir", default=os.environ.get("CPRD_LAB_L1_DIR") or "/var/tmp/cprd-vfio-lab/l1",
                   help="where build-l1.sh builds L1 (it is run first: it does nothing when up to date)")
    p.add_argument("--no-build", action="store_true", help="use --l1-dir as it is")
    p.add_argument("--guest-image", default=default("CPRD_GUEST_PCI_IMAGE", "build/tests/guest/cprd-guest-pci.img"),
                   help="the L2 guest (cprd-guest-pci.img)")
    p.add_argument("--cprd", default=default("CPRD_BIN", "build/daemon/cprd"),
                   help="the cprd to run in L1 (cprd scenarios)")
    p.add_argument("--cprctl", default=default("CPRCTL_BIN", "build/client/cprctl"),
                   help="the cprctl to run in L1 (cprd scenarios)")
    p.add_argument("--qemu", default=os.environ.get("CPRD_QEMU10") or "/usr/bin/qemu-system-x86_64",
                   help="L0's QEMU, which runs L1")
    p.add_argument("--scenario-dir", action="append", default=[],
                   help="more scenario scripts (NAME.sh); they may source /payload/scenarios/lib.sh")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("CPRD_LAB_TIMEOUT") or 900),
                   help="seconds for one scenario, L1's boot included (default 900)")
    p.add_argument("--results", help="keep everything here (default: a new /tmp/cprd-vfio-lab-XXXXXX)")
    p.add_argument("--no-skip", action="store_true",
                   help="run the device scenarios even when cprctl seems not to know --device")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    return p.parse_args(argv)


def scenario_dirs(args):
    return [os.path.join(HERE, "scenarios")] + args.scenario_dir


def known_scenarios(args):
    out = {}
    for d in scenario_dirs(args):
        for f in sorted(os.listdir(d)):
            if f.endswith(".sh") and f != "lib.sh":
                out.setdefault(f[:-3], os.path.join(d, f))
    return out


def wanted(args, known):
    names = []
    for s in args.scenarios or ["all"]:
        for n in GROUPS.get(s, [s]):
            if n not in known:
                sys.exit("run-lab: no scenario %s (known: %s)" % (n, " ".join(sorted(known))))
            if n not in names:
                names.append(n)
    return names


# ---- the payload -------------------------------------------------------------------

def linked_libraries(binary):
    """The files a dynamically linked binary needs, the loader included, as
    ldd resolves them on this host."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            i = parts.index("=>")
            if i + 1 < len(parts) and parts[i + 1].startswith("/"):
                libs.append(parts[i + 1])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def copy_into_root(root, path):
    """Copies the file path names (links followed) to root + path: the
    loader looks for a library by the name ldd printed."""
    dest = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.copyfile(os.path.realpath(path), dest)
    os.chmod(dest, 0o755)


def make_payload(args, names, where):
    """The folder L1 mounts as /payload."""
    pay = os.path.join(where, "payload")
    os.makedirs(os.path.join(pay, "scenarios"))
    os.makedirs(os.path.join(pay, "l2"))
    for d in reversed(scenario_dirs(args)):
        for f in os.listdir(d):
            if f.endswith(".sh"):
                shutil.copy2(os.path.join(d, f), os.path.join(pay, "scenarios", f))
    shutil.copy2(args.guest_image, os.path.join(pay, "l2", "cprd-guest-pci.img"))
    if any(needs_cprd(n) for n in names):
        os.makedirs(os.path.join(pay, "bin"))
        root = os.path.join(pay, "root")
        for b, name in ((args.cprd, "cprd"), (args.cprctl, "cprctl")):
            shutil.copy2(b, os.path.join(pay, "bin", name))
            os.chmod(os.path.join(pay, "bin", name), 0o755)
            for lib in linked_libraries(b):
                copy_into_root(root, lib)
    # cprd checks that a binary and the folders above it are root's and
    # not writable by others: so are these.
    for dirpath, dirnames, filenames in os.walk(pay):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chmod(p, os.stat(p).st_mode & 0o755)
    return pay


def cprctl_knows_devices(cprctl):
    try:
        r = subprocess.run([cprctl, "create", "--help"], capture_output=True, text=True, timeout=10)
    except OSError:
        return False
    return "--device" in r.stdout + r.stderr


# ---- one scenario: one L1 boot -------------------------------------------------------

class Run:
    def __init__(self, name):
        self.name = name
        self.checks = []  # (ok, text)
        self.figures = {}
        self.rc = None
        self.boot_s = None  # wall time until L1's init said READY
        self.total_s = None
        self.problem = None

    @property
    def passed(self):
        return (self.problem is None and self.rc == 0 and self.checks
                and all(ok for ok, _ in self.checks))


def l0_command(args, name, pay, out, console):
    # no_timer_check: under TCG on a busy host the kernel's check that the
    # timer interrupt comes through the (remapped) IO-APIC can fail and
    # panic the boot ("timer doesn't work through Interrupt-remapped IO-APIC").
    kernel_args = "console=ttyS0 intel_iommu=on no_timer_check panic=-1 quiet lab.scenario=" + name
    return [
        args.qemu, "-name", "cprd-vfio-lab-l1", "-accel", "tcg",
        "-M", "q35,kernel-irqchip=split", "-device", "intel-iommu,intremap=on",
        "-m", "2048", "-smp", "2",
        "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
        "-serial", "file:" + console,
        "-kernel", os.path.join(args.l1_dir, "l1.vmlinuz"),
        "-initrd", os.path.join(args.l1_dir, "l1.initrd"),
        "-append", kernel_args,
        "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
        "-device", "pci-testdev,bus=rp1",
        "-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
        "-device", "edu,bus=rp2",
        "-fsdev", "local,id=payload,path=%s,security_model=none,readonly=on" % pay,
        "-device", "virtio-9p-pci,fsdev=payload,mount_tag=payload",
        "-fsdev", "local,id=out,path=%s,security_model=none" % out,
        "-device", "virtio-9p-pci,fsdev=out,mount_tag=out",
    ]


def run_scenario(args, name, pay, where):
    r = Run(name)
    sdir = os.path.join(where, name)
    out = os.path.join(sdir, "out")
    os.makedirs(out)
    console = os.path.join(sdir, "l1-console.log")
    open(console, "w").close()
    cmd = l0_command(args, name, pay, out, console)
    with open(os.path.join(sdir, "l0-command.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    log("== %s: booting L1" % name)
    t0 = time.monotonic()
    with open(os.path.join(sdir, "l0-qemu.log"), "w") as qlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qlog, stderr=subprocess.STDOUT)
    try:
        with open(console, "rb") as f:
            partial = b""
            while True:
                chunk = f.read()
                if chunk:
                    partial += chunk
                    *lines, partial = partial.split(b"\n")
                    for raw in lines:
                        handle_line(r, raw.decode("utf-8", "replace").rstrip("\r"), t0)
                    if r.rc is not None:
                        break
                    continue
                if proc.poll() is not None:
                    if r.rc is None:
                        r.problem = "L0's QEMU exited (status %s) before the scenario ended; see %s" % (
                            proc.returncode, os.path.join(sdir, "l0-qemu.log"))
                    break
                if time.monotonic() - t0 > args.timeout:
                    r.problem = "timed out after %.0f s" % args.timeout
                    break
                time.sleep(0.2)
    finally:
        # L1 powers itself off after END: give it a moment. Otherwise (a
        # timeout, an error here) stop L0's QEMU by its pid now.
        try:
            proc.wait(timeout=30 if r.rc is not None else 0.1)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    r.total_s = time.monotonic() - t0
    if r.problem:
        with open(console, "rb") as f:
            panic = [l for l in f.read().decode("utf-8", "replace").splitlines() if "Kernel panic" in l]
        if panic:
            r.problem += "; L1: " + panic[0].strip()
    return r


def handle_line(r, line, t0):
    m = LAB_RE.search(line)
    if not m:
        return
    text = m.group(1)
    if text.startswith("READY"):
        r.boot_s = time.monotonic() - t0
        log("   L1 ready after %.1f s: %s" % (r.boot_s, text[len("READY "):]))
    elif text.startswith("CHECK PASS ") or text.startswith("CHECK FAIL "):
        ok = text.startswith("CHECK PASS ")
        r.checks.append((ok, text[len("CHECK PASS "):]))
        log("   %s %s" % ("ok  " if ok else "FAIL", text[len("CHECK PASS "):]))
    elif text.startswith("FIGURE "):
        parts = text.split(None, 2)
        if len(parts) == 3:
            r.figures[parts[1]] = parts[2]
    elif text.startswith("END rc="):
        r.rc = int(re.match(r"END rc=(\d+)", text).group(1))
    elif text.startswith("FAIL init:"):
        r.problem = text
        log("   " + text)
    elif text.startswith("NOTE "):
        log("   note: " + text[len("NOTE "):])


def results_folder(path):
    """A new temporary folder, or path emptied: a folder this script made
    before (it holds MARKER), or one that does not exist yet."""
    if not path:
        where = tempfile.mkdtemp(prefix="cprd-vfio-lab-", dir="/tmp")
    else:
        where = os.path.abspath(path)
        if os.path.exists(where):
            if not os.path.exists(os.path.join(where, MARKER)) and os.listdir(where):
                sys.exit("run-lab: %s exists and is not a results folder of run-lab.py" % where)
            shutil.rmtree(where)
        os.makedirs(where)
    os.chmod(where, 0o755)
    open(os.path.join(where, MARKER), "w").close()
    return where


# ---- main --------------------------------------------------------------------------------

def main(argv):
    args = parse_args(argv)
    known = known_scenarios(args)
    if args.list:
        for n, p in sorted(known.items()):
            log("%-18s %s" % (n, p))
        return 0
    names = wanted(args, known)
    if os.geteuid() != 0:
        log("run-lab: run this as root (L0's 9p shares and cprd in L1 need it)")
        return 1
    for p, what in ((args.qemu, "L0's QEMU"), ("/opt/cprd/qemu-11.1/bin/qemu-system-x86_64", "QEMU 11.1")):
        if not os.access(p, os.X_OK):
            ci_skips.skip_all(AREA, "%s (%s) is missing; scripts/install-deps.sh installs it" % (what, p))
    if not os.path.isfile(args.guest_image):
        log("run-lab: no L2 guest image %s; build the project first (cmake --build build) "
            "or pass --guest-image" % args.guest_image)
        return 1

    skipped = {}
    cprd_wanted = [n for n in names if needs_cprd(n)]
    if cprd_wanted:
        if not (os.access(args.cprd, os.X_OK) and os.access(args.cprctl, os.X_OK)):
            why = "no cprd/cprctl at %s and %s (build them, or pass --cprd and --cprctl)" % (
                args.cprd, args.cprctl)
            for n in cprd_wanted:
                skipped[n] = why
        elif not args.no_skip and not cprctl_knows_devices(args.cprctl):
            for n in cprd_wanted:
                if n in NEEDS_DEVICES:
                    skipped[n] = ("%s has no 'create --device': the daemon side of issue 11 "
                                  "(devices, custody kind vfio) is not in this build" % args.cprctl)

    if not args.no_build:
        log("run-lab: build-l1.sh %s" % args.l1_dir)
        t = time.monotonic()
        b = subprocess.run([os.path.join(HERE, "build-l1.sh"), args.l1_dir])
        if b.returncode != 0:
            log("run-lab: build-l1.sh failed")
            return 1
        log("run-lab: L1 ready to boot (%.1f s)" % (time.monotonic() - t))

    where = results_folder(args.results)
    pay = make_payload(args, [n for n in names if n not in skipped], where)
    log("run-lab: results in %s" % where)

    passed = failed = skips = 0
    runs = []
    t_all = time.monotonic()
    for n in names:
        if n in skipped:
            status, text = ci_skips.skip(AREA, n, skipped[n])
            log("== %s: %s %s" % (n, status, text))
            if status == "SKIP":
                skips += 1
            else:
                failed += 1
            continue
        r = run_scenario(args, n, pay, where)
        runs.append(r)
        if r.problem:
            log("   problem: " + r.problem)
        log("== %s: %s (%d checks, %d failed; L1 boot %s s, run %.1f s)" % (
            n, "PASS" if r.passed else "FAIL", len(r.checks), sum(1 for ok, _ in r.checks if not ok),
            "%.1f" % r.boot_s if r.boot_s is not None else "?", r.total_s))
        for k, v in r.figures.items():
            log("   figure %s: %s" % (k, v))
        if r.passed:
            passed += 1
        else:
            failed += 1
    log("run-lab: all scenarios took %.1f s; results in %s" % (time.monotonic() - t_all, where))
    log("%d passed, %d failed%s" % (passed, failed, ", %d skipped" % skips if skips else ""))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
