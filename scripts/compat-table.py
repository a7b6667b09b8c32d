#!/usr/bin/python3
"""Writes docs/compatibility.md from the results of the ctest test `matrix`
(tests/integration/test_matrix.py): which QEMU upgrades cprd does, between
which releases, in which mode, with the guest's pause.

Regenerate the document (one command; as root, from a build in BUILD that
has the Linux test guest and QEMU 7.2, 10.0 and 11.1 from
scripts/install-deps.sh):

    scripts/compat-table.py --run BUILD

It runs `ctest --test-dir BUILD -L matrix` with CPRD_MATRIX_RESULTS set to
a temporary file, then renders that file. To render results of a run made
before (the test prints where it wrote them):

    scripts/compat-table.py RESULTS.json

Options: -o FILE writes elsewhere than docs/compatibility.md. Exits 1 when
a case did not do what the matrix expects (the document is written anyway,
and its table says which), 2 when there are no results to render.
Python 3 standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(SRC, "docs", "compatibility.md")
REGENERATE = "scripts/compat-table.py --run build"

VERSIONS = ["7.2", "10.0", "11.1"]
MODES = ["auto", "cpr-transfer", "local-migrate"]

# Evidence gathered by hand (2026-11-28, the binaries of this lab) for the
# one pair that cpr-transfer cannot do. It stays true after cprd refuses the
# pair in preflight, when no matrix run shows the failure any more.
EVIDENCE_111_TO_10 = r"""
### 11.1 -> 10.0 with cpr-transfer: QEMU 10.0 cannot read 11.1's CPR state

**What happens.** The new QEMU 10.0.2 reads the CPR state that the old
QEMU 11.1.3 sends on the cpr channel, fails, and exits before it has created
its main migration socket. Its log says only:

    qemu-system-x86_64: vmstate_load_state error -2

By hand, with the Linux guest created on 11.1.3 with `--machine
pc-i440fx-10.0` and cprd as of 2026-11-28 (before the preflight rule below),
`cpr-transfer` and `auto` (which chose cpr-transfer) rolled back, and
`local-migrate` committed:

    $ cprctl upgrade byhand --qemu /usr/bin/qemu-system-x86_64 --mode cpr-transfer
          2 ms  byhand  preflight: probing the new binary
        240 ms  byhand  preflight: target /usr/bin/qemu-system-x86_64 is QEMU 10.0.2; mode cpr-transfer
        248 ms  byhand  spawn-target: starting /usr/bin/qemu-system-x86_64 (QEMU 10.0.2) with the held fds
        300 ms  byhand  transfer: old QEMU pid 2746 sends device state (cpr-transfer)
        316 ms  byhand  rollback: the new QEMU pid 2981 exited with status 1 during transfer: qemu-system-x86_64: vmstate_load_state error -2; keeping the guest on QEMU 11.1.3 (pid 2746)
    cprctl: upgrade of byhand failed in transfer and was rolled back; the guest runs on its old QEMU as before: the new QEMU pid 2981 exited with status 1 during transfer: qemu-system-x86_64: vmstate_load_state error -2.
    $ cprctl upgrade byhand --qemu /usr/bin/qemu-system-x86_64
    (the same: preflight chose cpr-transfer, rollback, exit status 1)
    $ cprctl upgrade byhand --qemu /usr/bin/qemu-system-x86_64 --mode local-migrate
    ...
    byhand: upgraded in 212 ms (local-migrate, QEMU 11.1.3 -> 10.0.2, guest paused 7.8 ms), now pid 2990

(Depending on which it notices first, cprd may report the old QEMU's side
of the same failure instead: `migration failed: Failed to connect to
'.../main.sock': No such file or directory`.) The machine type is not the
cause: both QEMUs have `pc-i440fx-10.0`, and local-migrate between the same
two binaries on the same machine type commits.

**Why.** QEMU's tracing names the part of the stream that 10.0 rejects.
Without cprd: QEMU 11.1.3 with `-object
memory-backend-memfd,id=ram0,size=64M,share=on -machine
pc-i440fx-10.0,memory-backend=ram0,aux-ram-share=on`, QEMU 10.0.2 with the
same plus `-incoming unix:main.sock -incoming
'{"channel-type":"cpr","addr":{"transport":"socket","type":"unix","path":"cpr.sock"}}'
-trace 'vmstate_subsection_load*' -trace vmstate_load_state`, then
`migrate-set-parameters {"mode":"cpr-transfer"}` and `migrate` with both
channels on the 11.1 side. QEMU 10.0.2 prints:

    vmstate_load_state CprState v1
    vmstate_load_state cpr fd v1
    vmstate_subsection_load cpr fd
    vmstate_subsection_load_good cpr fd
    (the same for each fd that 11.1 hands over)
    vmstate_subsection_load CprState
    vmstate_subsection_load_bad CprState: CprState/vfio devices/(lookup)
    qemu-system-x86_64: vmstate_load_state error -2

Since QEMU 10.1 the `CprState` description (migration/cpr.c) has a
subsection, `CprState/vfio devices` (hw/vfio/cpr-iommufd.c, or an empty
stub in builds without iommufd), which has no `needed` function and so is
sent always, VFIO devices or not. QEMU 10.0's `CprState` has no subsection:
the lookup fails, `vmstate_subsection_load` returns -ENOENT (-2), and
`cpr_state_load` reports `vmstate_load_state error -2`. The binaries agree:
`strings` finds `CprState/vfio devices` in 11.1.3 and not in 10.0.2.
local-migrate does not use the CPR state (the device state goes over the
main channel), which is why it works for this pair.

**The rule.** cpr-transfer to a QEMU older than the running one is refused
in preflight, with a reason that names both versions, and `auto` chooses
local-migrate for such a pair; the matrix expects exactly that (issue 10).
The rule is wider than the cause: by QEMU's source every source >= 10.1
sends the subsection and only a 10.0 target rejects it, so a pair such as
11.1 -> 10.2 might work; this lab has no 10.1 or 10.2 to show it, and the
rule refuses it too.
"""

OTHER_PAIRS = """
### Pairs with QEMU 7.2

QEMU 7.2 has no cpr-transfer (it came with 10.0): cprd refuses
`--mode cpr-transfer` in preflight when either side is 7.2
(tests/integration/test_upgrade.py, `test_refusals_qemu72`), so the matrix
asks these pairs for `auto` and `local-migrate` only, and `auto` must choose
local-migrate. They include the downgrades 10.0 -> 7.2 and 11.1 -> 7.2, on
`pc-i440fx-7.2`.

### Machine types

A VM created with `pc` is pinned to the newest versioned type of the QEMU
it was created on: `pc-i440fx-7.2` on 7.2, `pc-i440fx-10.0` on 10.0,
`pc-i440fx-11.1` on 11.1. A QEMU that lacks the type cannot run the guest,
and cprd refuses such an upgrade in preflight with a reason that names the
type (10.0 and 7.2 lack `pc-i440fx-11.1`, 7.2 lacks `pc-i440fx-10.0`;
test_upgrade.py, `test_cpr_transfer_111_to_111` and `test_refusals_qemu72`). To
keep a way back to an older QEMU, create the VM with the type of the
oldest QEMU it may need (`cprctl create ... --machine pc-i440fx-10.0`); the
matrix does so.
"""


def suite_of(debian_version):
    if "~bpo12" in debian_version:
        return "bookworm-backports"
    if "~bpo13" in debian_version:
        return "trixie-backports"
    if "deb12u" in debian_version:
        return "Debian 12 (bookworm)"
    if "deb13u" in debian_version:
        return "Debian 13 (trixie)"
    return ""


def parse_version_line(line):
    """(QEMU version, Debian package version) from `QEMU emulator version
    10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)`."""
    m = re.match(r"QEMU emulator version (\S+)(?: \(Debian ([^)]+)\))?", line or "")
    return (m.group(1), m.group(2) or "") if m else ("?", "")


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def ms(v, digits):
    return ("%." + str(digits) + "f ms") % v if isinstance(v, (int, float)) else "-"


def case_key(c):
    def idx(seq, v):
        return seq.index(v) if v in seq else len(seq)
    return (idx(VERSIONS, c["from"]), idx(VERSIONS, c["to"]), idx(MODES, c["modeAsked"]))


def expected_text(c):
    e = c.get("expected") or {}
    if e.get("outcome") == "committed":
        return "committed (%s)" % e.get("mode")
    return e.get("outcome") or "?"


def render(res):
    cases = sorted(res.get("cases", []), key=case_key)
    qemu = res.get("qemu", {})
    host = res.get("host", {})
    guest = res.get("guest", {})
    date = res.get("started") or res.get("generated", "?")
    ok = sum(1 for c in cases if c.get("passed"))
    out = []
    w = out.append

    w("# Compatibility: which QEMU upgrades cprd does")
    w("")
    w("<!-- Generated by scripts/compat-table.py from a run of the ctest test `matrix`"
      " (tests/integration/test_matrix.py); edit those, not this file. -->")
    w("")
    w("cprd upgrades a running guest from one QEMU release to another in three modes:"
      " `cpr-transfer` (QEMU 10.0 or later on both sides), `local-migrate` (both QEMUs"
      " map the same guest RAM, with `x-ignore-shared`), which `auto` chooses between,"
      " and `cpr-exec` (QEMU 10.2 or later on both sides, the process executes the new"
      " binary in place; only asked for by name, for VMs created with `--allow-exec`)."
      " This page is the result of the test that tries every ordered pair of the QEMU"
      " releases below, same-version pairs included, in each mode the pair allows: `auto`"
      " and `local-migrate` always, `cpr-transfer` when both sides are 10.0 or later,"
      " `cpr-exec` for 11.1 -> 11.1 (and 10.0 -> 11.1, which it must refuse).")
    w("")
    w("## What was run")
    w("")
    w("| QEMU | Debian package | From | Binary |")
    w("|---|---|---|---|")
    for v in VERSIONS:
        q = qemu.get(v, {})
        ver, deb = parse_version_line(q.get("version"))
        w("| %s | `%s` | %s | `%s` |" % (cell(ver), cell(deb or "?"), cell(suite_of(deb) or "?"),
                                         cell(q.get("binary", "?"))))
    w("")
    kernel = (guest.get("kernel") or "").split(" ")[0]
    kdeb = re.search(r"Debian (\S+)", guest.get("kernel") or "")
    w("- **Guest:** the Linux test guest (`tests/guest/linux`, see tests/guest/README.md):"
      " Debian 12's kernel %s%s and busybox-static, %s MiB, %s vCPU, booted by SeaBIOS and"
      " syslinux from a virtio disk. About four times a second it writes an fsync'd record"
      " to a second virtio disk and then reports it on the serial console."
      % ("`%s`" % kernel if kernel else "6.1", " (%s)" % kdeb.group(1) if kdeb else "",
         guest.get("memoryMiB", "?"), guest.get("cpus", "?")))
    w("- **Machine types:** `pc-i440fx-7.2` when either side is 7.2 (a guest created on 7.2"
      " keeps it), else `pc-i440fx-10.0`: a type both QEMUs have.")
    load = ""
    if isinstance(host.get("loadAtStart"), (int, float)) and isinstance(host.get("loadAtEnd"), (int, float)):
        load = " Load average (1 min) %.1f at the start, %.1f at the end." % (
            host["loadAtStart"], host["loadAtEnd"])
    w("- **Host:** TCG (no KVM), %s cores, %s Linux %s. Run %s.%s"
      % (host.get("cpus", "?"), host.get("machine", ""), host.get("kernel", "?"), date, load))
    w("- **Each case:** a guest booted on the first QEMU writes a few records, then"
      " `cprctl upgrade VM --qemu SECOND --mode MODE --json`. *Committed* means the mode"
      " reported is the expected one, the guest runs on the new QEMU with the same RAM"
      " memfd, booted once, goes on writing, and once stopped its data disk holds every"
      " record it reported. *Refused* means preflight said no with a reason naming the"
      " cause and the VM was not touched. A failed transfer or a rollback never counts as"
      " a pass, and `auto` must never make one.")
    w("- **Pause:** from the old QEMU's STOP event to the new QEMU's RESUME event, by the"
      " timestamps in QEMU's own events. **Total:** the whole `cprctl upgrade`, as cprd"
      " measures it. Single runs on a busy 2-core machine: read them as orders of"
      " magnitude, not benchmarks (bench/README.md has those).")
    w("")
    w("## Results")
    w("")
    if res.get("casesFilter"):
        w("**Not the whole matrix:** only the cases matching `%s` (CPRD_MATRIX_CASES) were run."
          % cell(res["casesFilter"]))
        w("")
    w("%d of %d cases did what the matrix expects%s." % (
        ok, len(cases), "" if ok == len(cases) else
        " (the others are marked **no** in the last column)"))
    w("")
    w("| From | To | Mode asked | Outcome | Mode chosen | Pause | Total | As expected | Reason |")
    w("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        outcome = c.get("outcome") or "(none)"
        reason = ""
        if outcome != "committed":
            reason = c.get("reason") or c.get("problem") or ""
        if c.get("passed"):
            verdict = "yes"
        else:
            verdict = "**no**: expected %s" % expected_text(c)
            if outcome == "committed" and not reason:
                reason = c.get("problem") or ""
        w("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            c["from"], c["to"], c["modeAsked"], outcome, c.get("mode") or "-",
            ms(c.get("pauseMs"), 1), ms(c.get("totalMs"), 0), verdict, cell(reason)))
    w("")
    if isinstance(res.get("totalSeconds"), (int, float)):
        w("The whole matrix took %.0f s (%d guest boots)." % (
            res["totalSeconds"], sum(1 for c in cases if not c.get("reusedGuest"))))
        w("")
    w("## Pairs and evidence")
    w("")
    lm = [c for c in cases if c["modeAsked"] == "local-migrate"]
    lm_bad = ["%s -> %s" % (c["from"], c["to"]) for c in lm if c.get("outcome") != "committed"]
    cpr = [c for c in cases if c["modeAsked"] == "cpr-transfer"]
    cpr_ok = ["%s -> %s" % (c["from"], c["to"]) for c in cpr if c.get("outcome") == "committed"]
    cpr_bad = ["%s -> %s" % (c["from"], c["to"]) for c in cpr if c.get("outcome") != "committed"]
    if lm and not lm_bad:
        w("local-migrate committed for every pair, downgrades included, on a machine type"
          " both QEMUs have.")
        w("")
    elif lm:
        w("local-migrate did not commit for: %s." % ", ".join(lm_bad))
        w("")
    w("cpr-transfer committed for %s%s." % (", ".join(cpr_ok) or "no pair",
                                            "; not for %s" % ", ".join(cpr_bad) if cpr_bad else ""))
    w(EVIDENCE_111_TO_10.rstrip())
    w("")
    pair = {c["modeAsked"]: c for c in cases if c["from"] == "11.1" and c["to"] == "10.0"}
    ct, au = pair.get("cpr-transfer"), pair.get("auto")
    if ct and ct.get("outcome") == "refused" and au and au.get("outcome") == "committed":
        w("**In this run** cprd refused `--mode cpr-transfer` in preflight (%s) and `auto`"
          " chose %s, which committed (guest paused %s)." % (
              cell(ct.get("reason") or ""), au.get("mode"), ms(au.get("pauseMs"), 1)))
    elif ct or au:
        w("**In this run** cprd did not follow the rule yet: %s. Those rows are marked **no**"
          " until preflight refuses the pair." % "; ".join(
              "`%s` %s%s%s" % (c["modeAsked"], c.get("outcome"),
                               " in %s" % c["failedPhase"] if c.get("failedPhase") else "",
                               ": %s" % c["reason"] if c.get("reason") else "")
              for c in (ct, au) if c))
    w(OTHER_PAIRS.rstrip())
    w("")
    w("---")
    w("")
    w("Generated by `scripts/compat-table.py` from the results of the ctest test `matrix`"
      " (run %s). To regenerate, as root after building: `%s`." % (date, REGENERATE))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="?", help="the JSON that the matrix test wrote")
    ap.add_argument("--run", metavar="BUILD", help="run the matrix (ctest -L matrix) in BUILD first")
    ap.add_argument("-o", "--output", default=DOC, help="where to write (default docs/compatibility.md)")
    a = ap.parse_args()
    if bool(a.run) == bool(a.results):
        ap.error("give either --run BUILD or RESULTS.json")
    path = a.results
    if a.run:
        tmp = tempfile.mkdtemp(prefix="cprd-compat-")
        path = os.path.join(tmp, "results.json")
        env = dict(os.environ, CPRD_MATRIX_RESULTS=path)
        rc = subprocess.call(["ctest", "--test-dir", a.run, "-L", "matrix", "--output-on-failure"], env=env)
        print("compat-table: ctest exited %d; results in %s" % (rc, path), flush=True)
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        print("compat-table: cannot read results %s: %s" % (path, e), file=sys.stderr)
        return 2
    if not res.get("cases"):
        print("compat-table: %s holds no cases" % path, file=sys.stderr)
        return 2
    text = render(res)
    with open(a.output + ".tmp", "w") as f:
        f.write(text)
    os.replace(a.output + ".tmp", a.output)
    bad = [c for c in res["cases"] if not c.get("passed")]
    print("compat-table: wrote %s: %d cases, %d not as expected" % (a.output, len(res["cases"]), len(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
