#!/bin/bash
# cprd under a real systemd: builds cprd's Debian package from this source
# tree, boots Debian 12 with systemd as PID 1 in a systemd-nspawn container,
# installs the package into it with apt-get and drives cprd with systemctl,
# checking that guests and the fds cprd holds outlive cprd, a package
# upgrade, and its removal.
#
# Usage (as root): tests/systemd/run-e2e.sh BUILD_DIR
# Environment:
#   CPRD_TEST_ROOTFS  the cached root file system (make-rootfs.sh builds it
#                     on first use; default /var/cache/cprd-test/rootfs-bookworm)
#   CPRD_TEST_KEEP=1  keep the per-run folder (logs, the container's tree)
#
# How: the cached tree is the lower layer of an overlayfs mount (a full copy
# where overlayfs is not available), so a run never changes the cache;
# `dpkg-buildpackage -b -us -uc` builds cprd_VERSION_ARCH.deb in a copy of
# the source tree, then once more with the version bumped (dch --local), and
# `apt-get install ./cprd_*.deb` inside the container installs the first and
# later upgrades to the second while a guest runs (nothing is cached between
# runs: a broken package build fails the run); procps is purged first, as a
# debootstrap minbase root lacks it; `systemd-nspawn -b` boots it in the background
# (private network, not registered with the host's machined: the host need
# not run systemd; the container's own machined is tested); commands
# run inside through nsenter into the container's PID 1 namespaces.
#
# Prints "PASS name", "FAIL name: why" or "SKIP name: why" per check, then
# "N passed, M failed, K skipped". Exit 0 all passed, 1 a check failed,
# 77 the container cannot run here (the reason is printed): never a pass.
# With CI=true a skip, of one check or of the whole run, is a failure
# unless tests/ci-skips.txt lists it.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../ci-skips.sh
. "$HERE/../ci-skips.sh"
AREA=systemd_e2e
ROOTFS=${CPRD_TEST_ROOTFS:-/var/cache/cprd-test/rootfs-bookworm}
VM=vm1
GUEST_DIR=/var/lib/cprd-test
QEMU=/usr/bin/qemu-system-x86_64
# QEMU 7.2 (Debian 12's) and 11.1, the #! wrappers scripts/install-deps.sh
# writes in /opt/cprd, which is bound read-only into the container: an
# upgrade from 7.2 by local-migrate and one by cpr-exec run under the unit.
QEMU72=/opt/cprd/qemu-system-x86_64-7.2
QEMU111=/opt/cprd/qemu-system-x86_64-11.1
BRIDGE=cprdbr0
QEMU_USER="cprd-qemu"
SLOW_SECONDS=8 # how long the wrapper QEMU waits before exec in the kill -9 test

PASSED=0 FAILED=0 SKIPPED=0
FAILED_NAMES=()
# Results of the checks made before the container is up wait in DEFERRED
# until it has booted: a run that then turns out to be a skip counts none.
DEFER=yes
DEFERRED=()
pass() {
	if [ "$DEFER" = yes ]; then DEFERRED+=("pass" "$1" "${2:-}"); return; fi
	PASSED=$((PASSED + 1))
	echo "PASS $1${2:+: $2}"
}
fail() {
	if [ "$DEFER" = yes ]; then DEFERRED+=("fail" "$1" "${2:-}"); return; fi
	FAILED=$((FAILED + 1))
	FAILED_NAMES+=("$1")
	echo "FAIL $1${2:+: $2}"
}
flush_deferred() {
	local i
	DEFER=no
	for ((i = 0; i < ${#DEFERRED[@]}; i += 3)); do
		"${DEFERRED[$i]}" "${DEFERRED[$((i + 1))]}" "${DEFERRED[$((i + 2))]}"
	done
	DEFERRED=()
}
# skip: tests/ci-skips.sh's, which calls the fail above.
note() { echo "# $*"; }
# check NAME COND-RESULT DETAIL: pass when the status is 0.
verdict() { if [ "$2" -eq 0 ]; then pass "$1" "$3"; else fail "$1" "$3"; fi; }
# ticks_kept BEFORE AFTER: both were read (integers) and the counter did not
# go back. A failed read is never a pass.
is_int() { [[ ${1:-} =~ ^[0-9]+$ ]]; }
ticks_kept() { is_int "${1:-}" && is_int "${2:-}" && [ "$2" -ge "$1" ]; }

skip_all() {
	local i
	for ((i = 0; i < ${#DEFERRED[@]}; i += 3)); do
		echo "# not counted (the container did not run): ${DEFERRED[$i]} ${DEFERRED[$((i + 1))]}: ${DEFERRED[$((i + 2))]}"
	done
	if ! ci_skip_allowed "$AREA" '*'; then
		echo "FAIL $AREA: skipped, and CI accepts only the skips in tests/ci-skips.txt: $*"
		echo "$PASSED passed, $((FAILED + 1)) failed, $SKIPPED skipped"
		exit 1
	fi
	echo "SKIP $AREA: $*"
	echo "$PASSED passed, $FAILED failed, $((SKIPPED + 1)) skipped"
	exit 77
}

if [ $# -ne 1 ]; then
	echo "usage: $0 BUILD_DIR" >&2
	exit 2
fi
BUILD=$(cd "$1" 2>/dev/null && pwd) || { echo "run-e2e: no build folder $1" >&2; exit 2; }
T0=$(date +%s)

# ---- can this machine run the container? -----------------------------------
[ "$(id -u)" -eq 0 ] || skip_all "needs root (systemd-nspawn, mounts)"
for tool in systemd-nspawn nsenter python3 mount timeout; do
	command -v "$tool" >/dev/null || skip_all "$tool is not installed (systemd-container, util-linux)"
done
for tool in dpkg-buildpackage dch lintian; do
	command -v "$tool" >/dev/null || skip_all "$tool is not installed (dpkg-dev, devscripts, lintian: scripts/install-deps.sh)"
done
[ -e "$BUILD/tests/guest/cprd-guest.img" ] || { echo "run-e2e: $BUILD/tests/guest/cprd-guest.img is not built" >&2; exit 1; }

"$HERE/make-rootfs.sh" "$ROOTFS"
rc=$?
[ $rc -eq 77 ] && skip_all "no root file system: make-rootfs.sh could not build one (see above)"
if [ $rc -ne 0 ]; then
	DEFER=no
	fail rootfs "make-rootfs.sh exited $rc"
	echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
	exit 1
fi
note "root file system $ROOTFS: $(grep -h '^qemu=' "$ROOTFS/.cprd-rootfs-stamp" | cut -d= -f2-)"

# ---- the per-run tree ------------------------------------------------------
RUN=$(mktemp -d /var/tmp/cprd-e2e.XXXXXX)
ROOT=$RUN/root
MACHINE=cprd-e2e-$$
NSPID=
CPID=
UPGRADE_CLIENT=
OVERLAY=no

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$UPGRADE_CLIENT" ]; then kill "$UPGRADE_CLIENT" 2>/dev/null; fi
	if [ -n "$NSPID" ] && kill -0 "$NSPID" 2>/dev/null; then
		[ -n "$CPID" ] && timeout 20 nsenter --target "$CPID" --all -- systemctl poweroff --no-block >/dev/null 2>&1
		for _ in $(seq 1 60); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.5; done
		if kill -0 "$NSPID" 2>/dev/null; then
			note "container did not power off in 30 s; terminating systemd-nspawn $NSPID"
			kill -TERM "$NSPID" 2>/dev/null
			for _ in $(seq 1 20); do kill -0 "$NSPID" 2>/dev/null || break; sleep 0.5; done
			kill -KILL "$NSPID" 2>/dev/null
		fi
		wait "$NSPID" 2>/dev/null
	fi
	if [ "$OVERLAY" = yes ]; then umount "$ROOT" 2>/dev/null || umount -l "$ROOT"; fi
	if [ -n "${CPRD_TEST_KEEP:-}" ]; then
		note "kept $RUN"
	else
		rm -rf --one-file-system "$RUN"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$RUN/upper" "$RUN/work" "$ROOT"
t=$(date +%s)
if mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$RUN/upper,workdir=$RUN/work" "$ROOT" 2>"$RUN/overlay.err"; then
	OVERLAY=yes
	note "per-run tree: overlayfs over the cache at $ROOT"
else
	note "overlayfs failed ($(tr -s '\n' ' ' <"$RUN/overlay.err")); copying the tree"
	cp -a --reflink=auto "$ROOTFS/." "$ROOT/" || skip_all "cannot copy $ROOTFS to $ROOT"
	note "per-run tree: a copy at $ROOT ($(($(date +%s) - t))s)"
fi

# ---- build the packages ----------------------------------------------------
# In a copy of the source tree (the files git knows, committed or not, or
# the whole tree without build folders when it is no git checkout), so the
# tree itself stays clean: dpkg-buildpackage puts the .debs in the copy's
# parent folder. Then once more, with the version bumped by dch --local and
# without the pre-clean (the same binaries, a newer package), for the
# upgrade under a running guest.
SRC=$(cd "$HERE/../.." && pwd)
PKG=$RUN/pkg
mkdir -p "$PKG/cprd" "$ROOT$GUEST_DIR/debs"
t=$(date +%s)
# The files git knows that are there (a deleted one is still in the index).
git_files() {
	local f
	git -C "$SRC" ls-files -z --cached --others --exclude-standard |
		while IFS= read -r -d '' f; do [ -f "$SRC/$f" ] && printf '%s\0' "$f"; done
}
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
	git_files | tar -C "$SRC" --null -T - -cf - | tar -C "$PKG/cprd" -xf -
else
	tar -C "$SRC" --exclude=./build --exclude='./build-*' --exclude='./obj-*' --exclude=./debian/cprd \
		--exclude=./debian/.debhelper -cf - . | tar -C "$PKG/cprd" -xf -
fi
DEB_BUILD_OPTIONS="parallel=$(nproc) noautodbgsym"
export DEB_BUILD_OPTIONS
# deb_build NAME [dpkg-buildpackage options]: build, and set DEB to the .deb.
deb_build() {
	local name=$1 deb
	shift
	DEB=
	if (cd "$PKG/cprd" && dpkg-buildpackage -b -us -uc "$@") >"$RUN/$name.log" 2>&1; then
		deb=$(sed -n "s|.*building package 'cprd' in '\.\./\(cprd_.*\.deb\)'.*|\1|p" "$RUN/$name.log")
		if [ -n "$deb" ] && [ -f "$PKG/$deb" ]; then
			DEB=$deb
			cp "$PKG/$deb" "$ROOT$GUEST_DIR/debs/"
			pass "$name" "dpkg-buildpackage -b -us -uc${*:+ $*} built $deb ($(dpkg-deb -f "$PKG/$deb" Version), $(($(date +%s) - t))s)"
			return 0
		fi
	fi
	fail "$name" "dpkg-buildpackage $* failed: $(grep -v '^ *$' "$RUN/$name.log" | tail -n 4 | tr '\n' ' ')"
	return 1
}
deb_build deb_build
DEB1=$DEB
if [ -n "$DEB1" ]; then
	# lintian: no errors (warnings are printed as notes).
	lintian --fail-on error "$PKG/${DEB1%.deb}.changes" >"$RUN/lintian.txt" 2>&1
	rc=$?
	grep -E '^[EWI]:' "$RUN/lintian.txt" | sed 's/^/# lintian: /'
	verdict deb_lintian "$rc" "lintian ${DEB1%.deb}.changes exited $rc: $(grep -c '^E:' "$RUN/lintian.txt") errors, $(grep -c '^W:' "$RUN/lintian.txt") warnings"
	t=$(date +%s)
	(cd "$PKG/cprd" && DEBEMAIL="cprd e2e <root@localhost>" dch --local +e2e "e2e: the next build, for the upgrade test") >"$RUN/dch.log" 2>&1
	deb_build deb_build_next -nc
	DEB2=$DEB
	[ "$DEB2" != "$DEB1" ] || { fail deb_next_version "the second build is $DEB2 again"; DEB2=; }
fi

mkdir -p "$ROOT$GUEST_DIR"
cp "$BUILD/tests/guest/cprd-guest.img" "$ROOT$GUEST_DIR/cprd-guest.img"
install -m 0755 "$HERE/guest.py" "$ROOT$GUEST_DIR/guest.py"
# A QEMU that waits before it becomes QEMU when it is an upgrade target
# (-incoming): a wide window to kill cprd in the middle of an upgrade. One
# process from start to end (no child), so the pid cprd knows is QEMU's.
cat >"$ROOT$GUEST_DIR/qemu-slow" <<EOF
#!/usr/bin/python3
import os, sys, time
if "-incoming" in sys.argv[1:]:
    time.sleep($SLOW_SECONDS)
os.execv("$QEMU", ["$QEMU"] + sys.argv[1:])
EOF
chmod 0755 "$ROOT$GUEST_DIR/qemu-slow"

# ---- boot ------------------------------------------------------------------
t_boot=$(date +%s)
# nspawn's own seccomp allow-list (systemd 252) lacks pidfd_getfd, which cprd
# uses on a real host to take guest RAM and the console back from QEMU when
# its fd store was emptied (systemctl stop). Allow it, as a host would.
# nspawn's bounding set also lacks CAP_IPC_LOCK, which cprd.service keeps
# (pinned VFIO DMA): add it, so that the container holds the unit's whole
# set and the check of what QEMU inherits is exact.
# nspawn's /dev lacks /dev/userfaultfd (a host with Linux >= 6.1 has it,
# root's 0600): bind it in, as live snapshots need it under the unit.
NSPAWN_EXTRA=()
if [ -x "$QEMU72" ] || [ -x "$QEMU111" ]; then NSPAWN_EXTRA+=(--bind-ro=/opt/cprd); fi
if [ -c /dev/userfaultfd ]; then NSPAWN_EXTRA+=(--bind=/dev/userfaultfd); fi
systemd-nspawn -q -b -D "$ROOT" --machine "$MACHINE" --register=no --keep-unit \
	--system-call-filter=pidfd_getfd --capability=CAP_IPC_LOCK "${NSPAWN_EXTRA[@]}" \
	--private-network --console=read-only </dev/null >"$RUN/boot.log" 2>&1 &
NSPID=$!
note "systemd-nspawn pid $NSPID, machine $MACHINE"

boot_tail() { tail -n 15 "$RUN/boot.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/#   /'; }
for _ in $(seq 1 300); do
	kill -0 "$NSPID" 2>/dev/null || break
	for c in $(ps -o pid= --ppid "$NSPID" 2>/dev/null); do
		if awk '/^NSpid:/ { exit !($NF == 1 && NF > 2) }' "/proc/$c/status" 2>/dev/null; then
			CPID=$c
			break
		fi
	done
	[ -n "$CPID" ] && break
	sleep 0.1
done
if [ -z "$CPID" ]; then
	boot_tail
	kill -0 "$NSPID" 2>/dev/null || { wait "$NSPID"; NSPID_RC=$?; NSPID=; }
	skip_all "systemd-nspawn did not start a container (exit ${NSPID_RC:-none}: $(sed 's/\x1b\[[0-9;]*m//g' "$RUN/boot.log" | grep -v '^ *$' | tail -n 1 | sed 's/^ *//'))"
fi

ENVI=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 TERM=dumb)
# cin [--timeout S] CMD...: run CMD inside the container.
cin() {
	local to=60
	if [ "$1" = --timeout ]; then to=$2; shift 2; fi
	nsenter --target "$CPID" --all -- "${ENVI[@]}" timeout -k 5 "$to" "$@"
}
cprctl() { cin --timeout 90 cprctl "$@"; }

state=
deadline=$(($(date +%s) + 180))
while [ "$(date +%s)" -lt "$deadline" ]; do
	state=$(cin --timeout $((deadline - $(date +%s) + 1)) systemctl is-system-running --wait 2>/dev/null)
	case $state in running | degraded) break ;; esac
	kill -0 "$NSPID" 2>/dev/null || break
	sleep 1
done
case $state in
running) note "container booted to 'running' in $(($(date +%s) - t_boot))s (PID 1 is pid $CPID on the host)" ;;
degraded)
	note "container booted to 'degraded' in $(($(date +%s) - t_boot))s; failed units:"
	cin systemctl --failed --no-legend | sed 's/^/#   /'
	;;
*)
	boot_tail
	skip_all "the container's systemd did not come up (state '${state:-none}')"
	;;
esac

flush_deferred

# ---- helpers for the checks ------------------------------------------------
# J EXPR: evaluate a Python expression on the JSON document on stdin (d);
# the last non-empty line is used when several JSON lines come.
J() {
	python3 -c '
import json, sys
text = sys.stdin.read().strip()
try:
    d = json.loads(text)
except ValueError:
    lines = [l for l in text.splitlines() if l.strip().startswith("{")]
    d = json.loads(lines[-1]) if lines else None
try:
    v = eval(sys.argv[1], {"d": d})
except Exception:
    v = None
print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))
' "$1"
}
main_pid() { cin systemctl show -p MainPID --value cprd.service; }
prop() { cin systemctl show -p "$2" --value "$1"; }
vm_status() { cprctl status "$VM" --json 2>/dev/null; }
ram() { cin "$GUEST_DIR/guest.py" ram "$1" "$VM" 2>/dev/null; }
console_lines() { cin sh -c "wc -l < /var/lib/cprd/vms/$VM/console.log" 2>/dev/null || echo 0; }
alive() { cin test -d "/proc/$1"; }
# wait_for SECONDS CMD...: until CMD succeeds.
wait_for() {
	local end=$(($(date +%s) + $1))
	shift
	while ! "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -ge "$end" ] && return 1
		sleep 0.5
	done
}
cprd_answers() { cprctl list >/dev/null 2>&1; }
# guest_progress NAME PID: the guest's tick counter (read through the memfd
# PID holds) goes up.
guest_progress() {
	local name=$1 pid=$2 a b t1 t2
	a=$(ram "$pid") || { fail "$name" "$(echo "$a" | J 'd["error"]')"; return 1; }
	sleep 2
	b=$(ram "$pid") || { fail "$name" "$(echo "$b" | J 'd["error"]')"; return 1; }
	t1=$(echo "$a" | J 'd["ticks"]')
	t2=$(echo "$b" | J 'd["ticks"]')
	if [ "$(echo "$b" | J 'd["magic"]')" = CPRDGST1 ] && [ "$t2" -gt "$t1" ]; then
		pass "$name" "ticks $t1 -> $t2 in 2 s (via pid $pid's memfd)"
	else
		fail "$name" "magic '$(echo "$b" | J 'd["magic"]')', ticks $t1 -> $t2 in 2 s"
		return 1
	fi
}
# console_progress NAME BEFORE: the console log grows past BEFORE lines.
console_progress() {
	local name=$1 before=$2 now
	for _ in $(seq 1 16); do
		now=$(console_lines)
		[ "$now" -gt "$before" ] && break
		sleep 0.5
	done
	verdict "$name" $(($now > $before ? 0 : 1)) "console.log lines $before -> $now"
}
# in_scope NAME PID: PID's cgroup is a scope under machine.slice, not cprd.service.
in_scope() {
	local name=$1 pid=$2 cg unit
	cg=$(cin "$GUEST_DIR/guest.py" cgroup "$pid" | J 'd.get("path")')
	unit=${cg##*/}
	if [[ "$cg" == */machine.slice/*.scope ]] && [[ "$cg" != *cprd.service* ]]; then
		if cin systemctl status --no-pager "$unit" >"$RUN/scope-status.txt" 2>&1; then
			pass "$name" "pid $pid in $cg; systemctl status $unit: $(grep -m1 'Active:' "$RUN/scope-status.txt" | sed 's/^ *//')"
		else
			fail "$name" "pid $pid in $cg but 'systemctl status $unit' fails"
		fi
		[ "$unit" = "cprd-vm-$VM.scope" ] || note "the scope is named $unit, not cprd-vm-$VM.scope"
	else
		fail "$name" "QEMU pid $pid is in cgroup '$cg', not in a scope under machine.slice"
	fi
}
status_field() { echo "$1" | J "$2"; }
# confined NAME PID [qemu]: PID runs under cprd.service's confinement: no new
# privileges, a seccomp filter, and as bounding set exactly the unit's
# CapabilityBoundingSet= (within the container's own set). A QEMU must carry
# more seccomp filters than cprd (systemd's, inherited, and its own
# -sandbox) and live in cprd's mount namespace (ProtectSystem= and the like),
# not PID 1's.
confined() {
	local name=$1 pid=$2 kind=${3:-cprd} line
	line=$(python3 -c '
import json, sys
kind, unit = sys.argv[1], set(sys.argv[2].split())
def load(a):
    try:
        return json.loads(a)
    except ValueError:
        return {"error": a or "no answer"}
p, cprd, init = (load(a) for a in sys.argv[3:6])
for who, d in (("pid", p), ("cprd", cprd), ("PID 1", init)):
    if "error" in d:
        print("1 cannot read the status of %s: %s" % (who, d["error"]))
        sys.exit()
want = sorted(unit & set(init["capbnd"]))
bad = []
if p["nnp"] != 1:
    bad.append("NoNewPrivs %d" % p["nnp"])
if p["seccomp"] != 2:
    bad.append("Seccomp %d" % p["seccomp"])
if sorted(p["capbnd"]) != want:
    bad.append("CapBnd %s, but the unit keeps %s" % (" ".join(p["capbnd"]), " ".join(want)))
if kind == "qemu" and not p["filters"] > cprd["filters"]:
    bad.append("%d seccomp filters, no more than cprd'"'"'s %d: no -sandbox of its own" % (p["filters"], cprd["filters"]))
if p["mntns"] != cprd["mntns"] or p["mntns"] == init["mntns"]:
    bad.append("mount namespace %s, cprd'"'"'s %s, PID 1'"'"'s %s" % (p["mntns"], cprd["mntns"], init["mntns"]))
lacking = sorted(unit - set(init["capbnd"]))
print("%d uid %d, NoNewPrivs %d, Seccomp %d with %d filters (cprd %d), CapBnd %s (%d capabilities%s), CapEff %s, cprd'"'"'s mount namespace%s" % (
    1 if bad else 0, p["uid"], p["nnp"], p["seccomp"], p["filters"], cprd["filters"],
    "=" if sorted(p["capbnd"]) == want else "!=", len(want),
    "; the container lacks " + " ".join(lacking) if lacking else "",
    " ".join(c[4:] for c in p["capeff"]) or "none", ": " + "; ".join(bad) if bad else ""))
' "$kind" "$(prop cprd.service CapabilityBoundingSet)" "$(cin "$GUEST_DIR/guest.py" confinement "$pid")" \
		"$(cin "$GUEST_DIR/guest.py" confinement "$(main_pid)")" "$(cin "$GUEST_DIR/guest.py" confinement 1)")
	verdict "$name" "${line%% *}" "$kind pid $pid: ${line#* }"
}
# tap_on_bridge NAME IFNAME: the tap cprd made is up on $BRIDGE.
tap_on_bridge() {
	local master
	master=$(cin readlink "/sys/class/net/$2/master" 2>/dev/null)
	verdict "$1" "$([ "${master##*/}" = "$BRIDGE" ] && echo 0 || echo 1)" "tap $2: master '${master##*/}' (want $BRIDGE)"
}

# ---- install the package ---------------------------------------------------
# A minimal root first: debootstrap --variant=minbase has no procps, so no
# /bin/kill (the cache has it for other reasons; nothing here needs it).
cin dpkg --purge procps >"$RUN/purge-procps.txt" 2>&1
verdict minbase_no_kill "$(cin test ! -e /bin/kill && echo 0 || echo 1)" "procps purged, /bin/kill $(cin test -e /bin/kill && echo is still there || echo is gone)"

# apt_install NAME DEB: apt-get install ./DEB inside, from $GUEST_DIR/debs;
# the container has no network, so every dependency must be installed
# already (it comes from Debian's mirrors when the cache is built).
apt_install() {
	cin --timeout 180 sh -c "cd $GUEST_DIR/debs && apt-get install -y -q -o Dpkg::Use-Pty=0 ./$2" >"$RUN/$1.txt" 2>&1
}
# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
pkg_version() { cin dpkg-query -W -f '${db:Status-Abbrev}${Version}' cprd 2>/dev/null; }
if [ -n "${DEB1:-}" ] && apt_install apt_install "$DEB1"; then
	pass apt_install "apt-get install ./$DEB1: $(pkg_version)"
else
	fail apt_install "apt-get install ./${DEB1:-(no package)} failed: $(grep -v '^ *$' "$RUN/apt_install.txt" 2>/dev/null | tail -n 4 | tr '\n' ' ')"
fi
# What the package holds, where Debian looks for it.
missing=
for f in /usr/sbin/cprd /usr/bin/cprctl /lib/systemd/system/cprd.service /lib/systemd/system/cprd.socket \
	/usr/lib/sysusers.d/cprd.conf /usr/share/man/man8/cprd.8.gz /usr/share/man/man1/cprctl.1.gz \
	/usr/share/bash-completion/completions/cprctl /usr/share/doc/cprd/copyright; do
	cin dpkg -S "$f" >/dev/null 2>&1 || missing="$missing $f"
done
verdict deb_files "$([ -z "$missing" ] && echo 0 || echo 1)" "${missing:+not in the package:}${missing:-cprd, cprctl, both units, the sysusers entry, both man pages, the bash completion, copyright: dpkg -S finds each}"
UNITDIR=$ROOT/usr/lib/systemd/system
for u in cprd.service cprd.socket; do
	[ -f "$UNITDIR/$u" ] || fail "install_$u" "$u is not in /usr/lib/systemd/system"
done
# The unit must start the binary that was installed.
exec_start=$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$UNITDIR/cprd.service" 2>/dev/null | head -n 1)
if [ -n "$exec_start" ] && [ -x "$ROOT$exec_start" ]; then
	pass unit_execstart "ExecStart=$exec_start is installed"
else
	fail unit_execstart "cprd.service runs '$exec_start', which the package did not install"
fi

# ---- the checks ------------------------------------------------------------
# sysusers: the postinst ran systemd-sysusers (dh_installsysusers).
if cin getent group cprd >/dev/null; then
	pass sysusers_group "group cprd (gid $(cin getent group cprd | cut -d: -f3))"
else
	fail sysusers_group "the postinst created no group cprd from /usr/lib/sysusers.d"
fi
# The postinst enabled both units and started the socket, not the service.
en=$(cin systemctl is-enabled cprd.socket cprd.service 2>&1 | tr '\n' ' ')
verdict postinst_enabled "$([ "$en" = "enabled enabled " ] && echo 0 || echo 1)" "systemctl is-enabled cprd.socket cprd.service: $en"
verdict postinst_socket "$([ "$(prop cprd.socket ActiveState)" = active ] && [ "$(prop cprd.service ActiveState)" = inactive ] && echo 0 || echo 1)" \
	"after the install cprd.socket is $(prop cprd.socket ActiveState), cprd.service $(prop cprd.service ActiveState)"

out=$(cin systemd-analyze verify /usr/lib/systemd/system/cprd.service /usr/lib/systemd/system/cprd.socket 2>&1)
rc=$?
echo "$out" | grep -v '^$' | sed 's/^/# verify: /'
if [ $rc -eq 0 ] && ! echo "$out" | grep -qiE 'error|failed|bad |invalid|unknown'; then
	pass analyze_verify "$(echo "$out" | grep -c .) lines of warnings"
else
	fail analyze_verify "systemd-analyze verify exited $rc (output above)"
fi

# What systemd thinks of the confinement (docs/reliability.md keeps the
# table of what stays unsafe and why): the score and every line marked ✗.
cin systemd-analyze security --no-pager cprd.service >"$RUN/security.txt" 2>&1
note "systemd-analyze security cprd.service: $(grep -o 'Overall exposure level.*' "$RUN/security.txt" || tail -n 1 "$RUN/security.txt")"
grep '✗' "$RUN/security.txt" | sed 's/  */ /g; s/^ */#   /'

if [ "$(prop cprd.socket ActiveState)" = active ]; then
	perms=$(cin stat -c '%a %G %F' /run/cprd/io.cprd.Manager 2>&1)
	verdict socket_start $([ "$perms" = "660 cprd socket" ] && echo 0 || echo 1) "/run/cprd/io.cprd.Manager: $perms"
else
	fail socket_start "cprd.socket is $(prop cprd.socket ActiveState) after the install"
	cin systemctl start cprd.socket
fi

out=$(cprctl list 2>&1)
rc=$?
if [ $rc -eq 0 ] && [ "$(prop cprd.service ActiveState)" = active ]; then
	pass socket_activation "cprctl list started cprd.service (main pid $(main_pid))"
else
	fail socket_activation "cprctl list exited $rc ($out); cprd.service is $(prop cprd.service ActiveState)"
	cin systemctl start cprd.service
fi
note "cprd.service: $(cin systemctl show -p Type -p NotifyAccess -p WatchdogUSec -p FileDescriptorStoreMax -p KillMode cprd.service | tr '\n' ' ')"

# A bridge in the container's own network namespace: vm1's NIC is a tap cprd
# makes (/dev/net/tun, CAP_NET_ADMIN) and puts on it (SIOCBRADDIF).
out=$(cin "$GUEST_DIR/guest.py" bridge "$BRIDGE" 2>&1)
verdict bridge $? "$out"
cprctl create "$VM" --memory 64 --qemu "$QEMU" --accel tcg --disk "$GUEST_DIR/cprd-guest.img,readonly" \
	--nic "bridge=$BRIDGE" >"$RUN/create.txt" 2>&1
rc_create=$?
cprctl start "$VM" >"$RUN/start.txt" 2>&1
rc_start=$?
st=$(vm_status)
QPID=$(status_field "$st" 'd["pid"]')
if [ $rc_create -eq 0 ] && [ $rc_start -eq 0 ] && [ "$(status_field "$st" 'd["state"]')" = running ] && [ -n "$QPID" ]; then
	pass vm_start "$VM runs, QEMU pid $QPID"
else
	fail vm_start "create exited $rc_create, start $rc_start: $(cat "$RUN/create.txt" "$RUN/start.txt" | tr '\n' ' ')"
fi
QPID=${QPID:-0}
CPRD=$(main_pid)
guest_progress guest_runs "$CPRD"
sleep 1
console_progress guest_console 0
in_scope qemu_scope "$QPID"
tap_on_bridge nic_tap "cprd-$VM-0"
# What QEMU inherits from the unit is what confines it.
confined confinement_cprd "$CPRD"
confined confinement_qemu "$QPID" qemu

# STATUS= must say how many VMs run: here the number in the clause that
# says "running" is 1. cprd may update it on a timer: wait up to 15 s.
running_count() {
	python3 -c '
import re, sys
for clause in re.split(r"[,;]", sys.argv[1]):
    if "running" in clause:
        m = re.search(r"\d+", clause)
        print(m.group(0) if m else "")
        break' "$1"
}
t=$(date +%s)
for _ in $(seq 1 30); do
	status_text=$(prop cprd.service StatusText)
	[ "$(running_count "$status_text")" = 1 ] && break
	sleep 0.5
done
if [ "$(running_count "$status_text")" = 1 ]; then
	pass status_text "STATUS=$status_text (after $(($(date +%s) - t))s)"
else
	fail status_text "StatusText '$status_text' does not say that 1 VM runs (waited 15 s)"
fi

# ---- systemctl restart -----------------------------------------------------
before=$(ram "$CPRD")
lines_before=$(console_lines)
ticks_before=$(echo "$before" | J 'd["ticks"]')
if cin systemctl restart cprd.service && wait_for 30 cprd_answers; then
	NEW=$(main_pid)
	verdict restart "$([ "$NEW" != "$CPRD" ] && [ "$NEW" != 0 ] && echo 0 || echo 1)" "cprd main pid $CPRD -> $NEW"
	CPRD=$NEW
else
	fail restart "systemctl restart cprd failed or cprd does not answer: $(prop cprd.service ActiveState)"
	CPRD=$(main_pid)
fi
verdict restart_qemu_alive "$(alive "$QPID" && echo 0 || echo 1)" "QEMU pid $QPID"
after=$(ram "$CPRD")
if [ -n "$after" ] && [ "$(echo "$after" | J 'd["magic"]')" = CPRDGST1 ] &&
	ticks_kept "$ticks_before" "$(echo "$after" | J 'd["ticks"]')" &&
	[ "$(echo "$after" | J 'd["inode"]')" = "$(ram "$QPID" | J 'd["inode"]')" ]; then
	pass restart_fdstore_memfd "new cprd $CPRD holds /memfd:cprd:$VM:ram0 (fd $(echo "$after" | J 'd["fd"]'), the same inode as QEMU's, ticks $ticks_before -> $(echo "$after" | J 'd["ticks"]'))"
else
	fail restart_fdstore_memfd "cprd $CPRD: ${after:-$(ram "$CPRD")}; QEMU's: $(ram "$QPID")"
fi
guest_progress restart_guest_counter "$QPID"
console_progress restart_guest_console "$lines_before"
st=$(vm_status)
if [ "$(status_field "$st" 'd["state"]')" = running ] && [ "$(status_field "$st" 'd["pid"]')" = "$QPID" ]; then
	pass restart_status "cprctl status: running, pid $QPID"
else
	fail restart_status "cprctl status after restart: state '$(status_field "$st" 'd["state"]')', pid '$(status_field "$st" 'd["pid"]')' (was $QPID)"
fi

# ---- an upgrade after the restart -----------------------------------------
# do_upgrade NAME [MODE [QEMU]]: upgrade $VM to QEMU ($QEMU) in MODE; it
# must commit in that mode and keep the guest. Without MODE cprctl sends
# none (auto), which must pick cpr-transfer between two QEMU 10.0. Only
# cpr-exec keeps the pid (QEMU execs the new binary itself).
do_upgrade() {
	local name=$1 mode=${2:-} bin=${3:-$QEMU} out rc outcome used st nq t ticks pid_ok=no
	ticks=$(ram "$QPID" | J 'd["ticks"]')
	out=$(cprctl upgrade "$VM" --qemu "$bin" ${mode:+--mode "$mode"} --json 2>"$RUN/$name.err")
	rc=$?
	echo "$out" >"$RUN/$name.jsonl"
	outcome=$(echo "$out" | J 'd.get("outcome")')
	used=$(echo "$out" | J 'd.get("mode")')
	st=$(vm_status)
	nq=$(status_field "$st" 'd["pid"]')
	if [ "$mode" = cpr-exec ]; then
		[ "$nq" = "$QPID" ] && pid_ok=yes
	else
		[ -n "$nq" ] && [ "$nq" != "$QPID" ] && pid_ok=yes
	fi
	if [ $rc -eq 0 ] && [ "$outcome" = committed ] && [ "$pid_ok" = yes ] &&
		[ "$used" = "${mode:-cpr-transfer}" ]; then
		t=$(ram "$nq" | J 'd["ticks"]')
		if ticks_kept "$ticks" "$t"; then
			pass "$name" "committed by $used, QEMU pid $QPID -> $nq, pause $(echo "$out" | J 'd.get("pauseMs")') ms, ticks $ticks -> $t (no reboot)"
		else
			fail "$name" "committed, but ticks went $ticks -> $t: the guest rebooted"
		fi
		QPID=$nq
	else
		fail "$name" "exit $rc, outcome '$outcome' by '$used', pid $QPID -> $nq: $(tail -n 2 "$RUN/$name.err" | tr '\n' ' ') $(echo "$out" | tail -n 1)"
		QPID=${nq:-$QPID}
		return 1
	fi
}
# custody NAME: cprd (main pid) holds the guest RAM memfd, the same file the
# running QEMU maps.
custody() {
	local name=$1 cprd q c
	cprd=$(main_pid)
	c=$(ram "$cprd")
	q=$(ram "$QPID")
	if [ -n "$c" ] && [ "$(echo "$c" | J 'd.get("inode")')" = "$(echo "$q" | J 'd.get("inode")')" ] &&
		[ "$(echo "$c" | J 'd.get("magic")')" = CPRDGST1 ]; then
		pass "$name" "cprd $cprd holds /memfd:cprd:$VM:ram0 as fd $(echo "$c" | J 'd["fd"]'), the file QEMU $QPID maps"
	else
		fail "$name" "cprd $cprd: ${c:-nothing}; QEMU $QPID: ${q:-nothing}"
	fi
}
# vm_running NAME: cprctl status says running on QEMU $QPID.
vm_running() {
	local st
	st=$(vm_status)
	if [ "$(status_field "$st" 'd["state"]')" = running ] && [ "$(status_field "$st" 'd["pid"]')" = "$QPID" ] && alive "$QPID"; then
		pass "$1" "$VM running on QEMU pid $QPID"
	else
		fail "$1" "state '$(status_field "$st" 'd["state"]')', pid '$(status_field "$st" 'd["pid"]')' (QEMU is $QPID)"
	fi
}

do_upgrade upgrade_after_restart && in_scope upgrade_qemu_scope "$QPID"
# The other mode, asked for by name: the target runs with -incoming defer.
do_upgrade upgrade_local_migrate local-migrate && in_scope local_migrate_qemu_scope "$QPID"
confined local_migrate_confinement "$QPID" qemu
guest_progress local_migrate_guest_counter "$QPID"

# ---- restart once more: custody of the upgraded VM --------------------------
if cin systemctl restart cprd.service && wait_for 30 cprd_answers; then
	custody upgrade_restart_custody
	vm_running upgrade_restart_status
else
	fail upgrade_restart_custody "systemctl restart cprd: $(prop cprd.service ActiveState)"
fi
CPRD=$(main_pid)

# ---- systemctl reload: re-exec in place -------------------------------------
restarts_before=$(prop cprd.service NRestarts)
rc=0
cin systemctl reload cprd.service || rc=$?
wait_for 30 cprd_answers
NEW=$(main_pid)
if [ $rc -eq 0 ] && [ "$NEW" = "$CPRD" ] && [ "$(prop cprd.service ActiveState)" = active ] &&
	[ "$(prop cprd.service NRestarts)" = "$restarts_before" ]; then
	pass reload_same_pid "systemctl reload kept main pid $CPRD"
else
	fail reload_same_pid "reload exited $rc; main pid $CPRD -> $NEW, $(prop cprd.service ActiveState), restarts $restarts_before -> $(prop cprd.service NRestarts)"
fi
CPRD=$NEW
if cin journalctl -u cprd.service --no-pager -o cat | grep -qiE 're-?exec'; then
	note "cprd logged: $(cin journalctl -u cprd.service --no-pager -o cat | grep -iE 're-?exec' | tail -n 1)"
fi
vm_running reload_guest
custody reload_custody
guest_progress reload_guest_counter "$QPID"
# QMP survived the re-exec if another upgrade works.
do_upgrade reload_upgrade

# ---- a package upgrade while the guest runs --------------------------------
# apt-get install of the next build: dpkg replaces /usr/sbin/cprd (a new
# inode), and the postinst reloads cprd, which re-executes the new file in
# the same process. Nothing is stopped or restarted: the same cprd pid, now
# running the new file, the same QEMU, the guest counting on.
exe_inode() { cin stat -L -c %i "/proc/$1/exe" 2>/dev/null; }
if [ -n "${DEB2:-}" ]; then
	CPRD=$(main_pid)
	exe_before=$(exe_inode "$CPRD")
	restarts_before=$(prop cprd.service NRestarts)
	ticks_before=$(ram "$QPID" | J 'd["ticks"]')
	lines_before=$(console_lines)
	t=$(cin date +%s)
	if apt_install apt_upgrade "$DEB2"; then
		pass apt_upgrade "apt-get install ./$DEB2: $(pkg_version) (was $(dpkg-deb -f "$PKG/$DEB1" Version))"
	else
		fail apt_upgrade "apt-get install ./$DEB2 failed: $(grep -v '^ *$' "$RUN/apt_upgrade.txt" | tail -n 4 | tr '\n' ' ')"
	fi
	grep '^cprd: ' "$RUN/apt_upgrade.txt" | sed 's/^/# postinst: /'
	wait_for 30 cprd_answers
	NEW=$(main_pid)
	exe_after=$(exe_inode "$NEW")
	file_inode=$(cin stat -c %i /usr/sbin/cprd)
	reexec=$(cin journalctl -u cprd.service --since "@$t" --no-pager -o cat | grep -c 're-executing')
	verdict pkg_upgrade_reexec "$([ "$NEW" = "$CPRD" ] && [ -n "$exe_after" ] && [ "$exe_after" = "$file_inode" ] &&
		[ "$exe_after" != "$exe_before" ] && [ "$reexec" -ge 1 ] && echo 0 || echo 1)" \
		"cprd pid $CPRD -> $NEW, its executable inode $exe_before -> $exe_after (the new /usr/sbin/cprd is $file_inode), $reexec 're-executing' lines in the journal"
	verdict pkg_upgrade_no_restart "$([ "$(prop cprd.service NRestarts)" = "$restarts_before" ] &&
		[ "$(prop cprd.service ActiveState)" = active ] && [ "$(prop cprd.socket ActiveState)" = active ] && echo 0 || echo 1)" \
		"restarts $restarts_before -> $(prop cprd.service NRestarts); cprd.service $(prop cprd.service ActiveState), cprd.socket $(prop cprd.socket ActiveState)"
	CPRD=$NEW
	vm_running pkg_upgrade_guest
	t2=$(ram "$QPID" | J 'd["ticks"]')
	verdict pkg_upgrade_guest_kept "$(ticks_kept "$ticks_before" "$t2" && echo 0 || echo 1)" "QEMU pid $QPID kept, ticks $ticks_before -> $t2 (no reboot)"
	guest_progress pkg_upgrade_guest_counter "$QPID"
	console_progress pkg_upgrade_guest_console "$lines_before"
	custody pkg_upgrade_custody
else
	fail apt_upgrade "no second package was built (see deb_build_next)"
fi

# ---- systemctl stop: the guest stays ----------------------------------------
lines_before=$(console_lines)
cin systemctl stop cprd.service 2>&1 | sed 's/^/# /'
verdict stop_service "$([ "$(prop cprd.service ActiveState)" != active ] && echo 0 || echo 1)" "cprd.service is $(prop cprd.service ActiveState), cprd.socket $(prop cprd.socket ActiveState)"
verdict stop_qemu_alive "$(alive "$QPID" && echo 0 || echo 1)" "QEMU pid $QPID after systemctl stop cprd"
guest_progress stop_guest_counter "$QPID"
# Socket activation brings cprd back, and it finds the guest again.
if wait_for 30 cprd_answers; then
	note "cprctl list re-activated cprd (pid $(main_pid))"
	vm_running stop_reattach
else
	fail stop_reattach "cprctl list did not re-activate cprd: $(prop cprd.service ActiveState)"
fi
custody stop_custody
console_progress stop_guest_console "$lines_before"
do_upgrade stop_upgrade
CPRD=$(main_pid)

# ---- the journal -----------------------------------------------------------
cin journalctl -u cprd.service "VM=$VM" -o json --no-pager >"$RUN/journal-vm.json" 2>&1
read -r n_vm n_phase phases <<<"$(python3 -c '
import json, sys
n = p = 0
ph = []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("VM") == sys.argv[2]:
        n += 1
        if "PHASE" in e:
            p += 1
            if e["PHASE"] not in ph:
                ph.append(e["PHASE"])
print(n, p, ",".join(ph) or "-")' "$RUN/journal-vm.json" "$VM")"
verdict journal_vm_field "$([ "${n_vm:-0}" -gt 0 ] && echo 0 || echo 1)" "journalctl -u cprd VM=$VM: ${n_vm:-0} entries"
verdict journal_phase_field "$([ "${n_phase:-0}" -gt 0 ] && echo 0 || echo 1)" "${n_phase:-0} of them with PHASE= ($phases)"

# ---- stop and delete -------------------------------------------------------
tap_on_bridge nic_tap_kept "cprd-$VM-0"
if cprctl stop "$VM" --force >"$RUN/stop.txt" 2>&1 && wait_for 30 sh -c "! nsenter --target $CPID --all -- test -d /proc/$QPID"; then
	pass vm_stop "QEMU pid $QPID exited"
else
	fail vm_stop "cprctl stop: $(tr '\n' ' ' <"$RUN/stop.txt")"
fi
if cprctl delete "$VM" >"$RUN/delete.txt" 2>&1; then
	pass vm_delete "$VM deleted"
else
	fail vm_delete "cprctl delete: $(tr '\n' ' ' <"$RUN/delete.txt")"
fi

# ---- kill -9 of cprd in the middle of an upgrade ----------------------------
# On a fresh VM, so that what went wrong above does not decide this.
VM=vm2
CPRD=$(main_pid)
cprctl create "$VM" --memory 64 --qemu "$QEMU" --accel tcg --disk "$GUEST_DIR/cprd-guest.img,readonly" >"$RUN/create2.txt" 2>&1 &&
	cprctl start "$VM" >>"$RUN/create2.txt" 2>&1
st=$(vm_status)
QPID=$(status_field "$st" 'd["pid"]')
if [ "$(status_field "$st" 'd["state"]')" = running ] && [ -n "$QPID" ]; then
	note "$VM runs, QEMU pid $QPID"
	sleep 2
else
	fail kill9_setup "$VM did not start: $(tr '\n' ' ' <"$RUN/create2.txt")"
	QPID=0
fi
hist_before=$(status_field "$st" 'len(d.get("upgrades") or [])')
ticks_before=$(ram "$QPID" | J 'd["ticks"]')
lines_before=$(console_lines)
nsenter --target "$CPID" --all -- "${ENVI[@]}" timeout 120 sh -c \
	"cprctl upgrade $VM --qemu $GUEST_DIR/qemu-slow --json >$GUEST_DIR/kill9-upgrade.jsonl 2>&1" &
UPGRADE_CLIENT=$!
# Wait until the target (the wrapper, sleeping before it becomes QEMU) is
# started and cprd is in spawn-target or transfer.
phase=
for _ in $(seq 1 80); do
	phase=$(cin tail -n 1 "$GUEST_DIR/kill9-upgrade.jsonl" 2>/dev/null | J 'd.get("phase") or d.get("outcome") or d.get("error")')
	case $phase in spawn* | transfer | resume) break ;; esac
	kill -0 "$UPGRADE_CLIENT" 2>/dev/null || break
	sleep 0.25
done
sleep 0.5
phase=$(cin tail -n 1 "$GUEST_DIR/kill9-upgrade.jsonl" 2>/dev/null | J 'd.get("phase") or d.get("outcome") or d.get("error")')
q=$(cin "$GUEST_DIR/guest.py" qemus)
KILLED=$(main_pid)
cin systemctl kill --kill-who=main --signal=SIGKILL cprd.service
case $phase in
spawn* | transfer | resume)
	pass kill9_in_flight "killed cprd $KILLED with SIGKILL in upgrade phase '$phase' (processes $q)"
	;;
*)
	fail kill9_in_flight "the upgrade was not under way when cprd $KILLED was killed: last line '$(cin tail -n 1 "$GUEST_DIR/kill9-upgrade.jsonl" 2>/dev/null)'"
	;;
esac
wait "$UPGRADE_CLIENT" 2>/dev/null
UPGRADE_CLIENT=
# Restart=on-failure may bring it back by itself; start it in any case.
sleep 1
cin systemctl start cprd.service
wait_for 30 cprd_answers
# Wait for the wrapper to have become QEMU or to be gone, and for cprd to
# settle the upgrade.
settled=no
for _ in $(seq 1 $((SLOW_SECONDS * 2 + 60))); do
	st=$(vm_status)
	w=$(cin "$GUEST_DIR/guest.py" qemus | J 'len(d["wrappers"])')
	s=$(status_field "$st" 'd["state"]')
	if [ "$w" = 0 ] && [ -n "$s" ] && [ "$s" != upgrading ]; then
		settled=yes
		break
	fi
	sleep 0.5
done
NEW=$(main_pid)
note "cprd after kill -9: main pid $KILLED -> $NEW; $VM '$(status_field "$st" 'd["state"]')', settled: $settled"
outcome=$(status_field "$st" '(d.get("upgrades") or [{}])[-1].get("outcome")')
hist_after=$(status_field "$st" 'len(d.get("upgrades") or [])')
if [ "$settled" = yes ] && is_int "$hist_before" && is_int "$hist_after" && [ "$hist_after" -gt "$hist_before" ] &&
	{ [ "$outcome" = committed ] || [ "$outcome" = rolled-back ]; }; then
	pass kill9_upgrade_resolved "the interrupted upgrade ended '$outcome': $(status_field "$st" '(d.get("upgrades") or [{}])[-1].get("reason")')"
else
	fail kill9_upgrade_resolved "settled: $settled; upgrade history $hist_before -> $hist_after entries, last outcome '$outcome'; state '$(status_field "$st" 'd["state"]')'"
fi
QPID2=$(status_field "$st" 'd["pid"]')
if [ "$(status_field "$st" 'd["state"]')" = running ] && [ -n "$QPID2" ] && alive "$QPID2"; then
	pass kill9_guest_running "$VM running on QEMU pid $QPID2 (was $QPID)"
	t=$(ram "$QPID2" | J 'd["ticks"]')
	verdict kill9_guest_kept "$(ticks_kept "$ticks_before" "$t" && echo 0 || echo 1)" "ticks '$ticks_before' before the upgrade, '$t' now (no reboot)"
	guest_progress kill9_guest_counter "$QPID2"
	console_progress kill9_guest_console "$lines_before"
	QPID=$QPID2
else
	fail kill9_guest_running "state '$(status_field "$st" 'd["state"]')', pid '$QPID2'"
fi
q=$(cin "$GUEST_DIR/guest.py" qemus)
nq=$(echo "$q" | J 'len(d["qemu"]) + len(d["wrappers"])')
verdict kill9_no_orphan "$([ "$nq" = 1 ] && [ "$(echo "$q" | J 'd["qemu"][0]')" = "$QPID" ] && echo 0 || echo 1)" "QEMU processes in the container: $q"
if [ -n "$QPID" ] && alive "$QPID"; then
	in_scope kill9_qemu_scope "$QPID"
fi

# ---- delete takes the fds out of the store ----------------------------------
cin systemctl restart cprd.service
wait_for 30 cprd_answers
CPRD=$(main_pid)
held_before=$(cin sh -c "ls -l /proc/$CPRD/fd | grep -c 'memfd:cprd:$VM:'")
cprctl stop "$VM" --force >/dev/null 2>&1
wait_for 30 sh -c "! nsenter --target $CPID --all -- test -d /proc/$QPID"
cprctl delete "$VM" >"$RUN/delete2.txt" 2>&1
cin systemctl restart cprd.service
wait_for 30 cprd_answers
CPRD=$(main_pid)
held_after=$(cin sh -c "ls -l /proc/$CPRD/fd | grep -c 'memfd:cprd:$VM:'")
if [ "${held_before:-0}" -gt 0 ] && [ "$held_after" = 0 ]; then
	pass delete_fdstore "$VM's memfd came back from the store before the delete, not after it"
else
	fail delete_fdstore "cprd held $held_before memfds of $VM after a restart before the delete, $held_after after it ($(tr '\n' ' ' <"$RUN/delete2.txt"))"
fi

# start_vm NAME ARGS...: create and start $VM with ARGS; sets QPID.
start_vm() {
	local name=$1 st
	shift
	cprctl create "$VM" --memory 64 --accel tcg --disk "$GUEST_DIR/cprd-guest.img,readonly" "$@" \
		>"$RUN/$name.txt" 2>&1 && cprctl start "$VM" >>"$RUN/$name.txt" 2>&1
	st=$(vm_status)
	QPID=$(status_field "$st" 'd["pid"]')
	if [ "$(status_field "$st" 'd["state"]')" = running ] && [ -n "$QPID" ]; then
		pass "$name" "$VM runs, QEMU pid $QPID (QEMU $(status_field "$st" 'd.get("qemuVersion")'))"
	else
		fail "$name" "$VM did not start: $(tr '\n' ' ' <"$RUN/$name.txt")"
		QPID=0
		return 1
	fi
}
# end_vm NAME: stop $VM at once and delete it.
end_vm() {
	if cprctl stop "$VM" --force >"$RUN/$1.txt" 2>&1 &&
		wait_for 30 sh -c "! nsenter --target $CPID --all -- test -d /proc/$QPID" &&
		cprctl delete "$VM" >>"$RUN/$1.txt" 2>&1; then
		pass "$1" "QEMU pid $QPID exited, $VM deleted"
	else
		fail "$1" "$(tr '\n' ' ' <"$RUN/$1.txt")"
	fi
}

# upgrade_and_end PREFIX COUNTER MODE QEMU: upgrades $VM in MODE to QEMU,
# checks that QEMU is confined as the unit says and the guest moves on
# (step COUNTER), then stops and deletes $VM.
upgrade_and_end() {
	do_upgrade "$1_upgrade" "$3" "$4" && confined "$1_confinement_after" "$QPID" qemu
	guest_progress "$2" "$QPID"
	end_vm "$1_stop"
}

# ---- from Debian 12's QEMU 7.2 to 10.0 under the unit ------------------------
# The upgrade an operator makes first: 7.2 has no CPR mode, so local-migrate.
VM=vm5
if cin test -x "$QEMU72"; then
	if start_vm old_start --qemu "$QEMU72"; then
		confined old_confinement "$QPID" qemu
		upgrade_and_end old old_guest_counter local-migrate "$QEMU"
	fi
else
	skip old_upgrade "no QEMU 7.2 at $QEMU72 on this host (scripts/install-deps.sh installs it)"
fi

# ---- cpr-exec under the unit ------------------------------------------------
# QEMU execs the new binary itself: the exec happens inside the unit's
# seccomp filter and with no_new_privs, and the binary is the #! wrapper of
# QEMU 11.1 (a shell that execs ld.so, which runs QEMU).
VM=vm3
if cin test -x "$QEMU111"; then
	if start_vm exec_start --qemu "$QEMU111" --allow-exec; then
		confined exec_confinement "$QPID" qemu
		guest_progress exec_guest_counter "$QPID"
		upgrade_and_end exec exec_guest_counter_after cpr-exec "$QEMU111"
	fi
else
	skip exec_upgrade "no QEMU 11.1 at $QEMU111 on this host (scripts/install-deps.sh installs it)"
fi

# ---- a live snapshot and a restore under the unit ---------------------------
# QEMU 10.0 makes its userfaultfd through /dev/userfaultfd (an ioctl), which
# SystemCallFilter=~userfaultfd does not block: the snapshot must work under
# the unit's seccomp filter, capabilities and ProtectSystem=, in the folder
# docs/operations.md names, and the restored guest count on from the saved
# value, also after a reload.
VM=snap1
SNAPDIR=/var/lib/cprd/snapshots
SNAP=$SNAPDIR/$VM.state
note "in the container: $(cin ls -l /dev/userfaultfd 2>&1)"
if ! cin test -c /dev/userfaultfd; then
	skip snapshot "no /dev/userfaultfd on this host (Linux >= 6.1 has it): QEMU would need the userfaultfd syscall, which the unit denies"
elif start_vm snap_start --qemu "$QEMU"; then
	cin mkdir -p -m 0700 "$SNAPDIR"
	t_before=$(ram "$QPID" | J 'd["ticks"]')
	cprctl snapshot "$VM" --to "$SNAP" --json >"$RUN/snapshot.txt" 2>&1
	rc=$?
	t_after=$(ram "$QPID" | J 'd["ticks"]')
	verdict snapshot "$([ $rc -eq 0 ] && [ -n "$(J 'd.get("bytes")' <"$RUN/snapshot.txt")" ] && echo 0 || echo 1)" \
		"exit $rc: $(J '"%s bytes, guest paused %s ms, %s MB/s, QEMU %s" % (d["bytes"], d.get("pauseMs"), d["mbPerSec"], d["qemuVersion"]) if d and "bytes" in d else d' <"$RUN/snapshot.txt" 2>/dev/null || tail -n 2 "$RUN/snapshot.txt")"
	modes=$(cin stat -c '%a %U' "$SNAP" "$SNAP.json" 2>&1 | tr '\n' ' ')
	verdict snapshot_files "$([ "$modes" = "600 root 600 root " ] && echo 0 || echo 1)" "$SNAP and .json: ${modes:-missing}"
	vm_running snapshot_guest_kept
	guest_progress snapshot_guest_counter "$QPID"
	# Long enough that a restore could not reach this value by itself.
	for _ in $(seq 1 40); do
		t_gone=$(ram "$QPID" | J 'd["ticks"]')
		is_int "$t_gone" && is_int "$t_after" && [ "$t_gone" -ge $((t_after + 90)) ] && break
		sleep 0.5
	done
	end_vm snapshot_vm_gone
	cprctl restore "$VM" --from "$SNAP" --json >"$RUN/restore.txt" 2>&1
	rc=$?
	st=$(vm_status)
	QPID=$(status_field "$st" 'd["pid"]')
	t0=$(ram "${QPID:-0}" | J 'd["ticks"]')
	# From the saved value: not from zero (a boot), not from where the first
	# QEMU stopped.
	ok=$([ $rc -eq 0 ] && [ "$(status_field "$st" 'd["state"]')" = running ] &&
		ticks_kept "$t_before" "$t0" && is_int "$t_gone" && [ "$t0" -lt "$t_gone" ] && echo 0 || echo 1)
	verdict restore "$ok" \
		"exit $rc, $VM $(status_field "$st" 'd["state"]') on QEMU pid ${QPID:-none}; ticks $t_before-$t_after at the snapshot, $t_gone when the first QEMU stopped, ${t0:-unread} after the restore: $(J '"%s bytes loaded in %s ms" % (d["bytes"], d["loadMs"]) if d and "bytes" in d else d' <"$RUN/restore.txt" 2>/dev/null)"
	if [ "$ok" -eq 0 ]; then
		guest_progress restore_guest_counter "$QPID"
		custody restore_custody
		CPRD=$(main_pid)
		cin systemctl reload cprd.service
		rc=$?
		wait_for 30 cprd_answers
		verdict restore_reload "$([ $rc -eq 0 ] && [ "$(main_pid)" = "$CPRD" ] && echo 0 || echo 1)" \
			"systemctl reload exited $rc; cprd main pid $CPRD -> $(main_pid)"
		vm_running restore_reload_guest
		custody restore_reload_custody
		guest_progress restore_reload_guest_counter "$QPID"
		end_vm restore_stop
	else
		cprctl stop "$VM" --force >/dev/null 2>&1
		cprctl delete "$VM" >/dev/null 2>&1
	fi
	cin rm -rf "$SNAPDIR"
fi

# ---- QEMU as another user (--qemu-user) -------------------------------------
# The paths the unit keeps most capabilities for: CAP_SETUID/SETGID (the
# drop), CAP_SYS_PTRACE (RAM, console and tap taken back from a QEMU of
# another uid), CAP_CHOWN, CAP_FOWNER and CAP_DAC_OVERRIDE (the VM's runtime
# folder and the upgrade's, which belong to QEMU's user). The option goes in
# a drop-in, as docs/operations.md says.
VM=vm4
cin useradd --system --no-create-home --shell /usr/sbin/nologin "$QEMU_USER" >/dev/null 2>&1
qemu_uid=$(cin id -u "$QEMU_USER")
qemu_gid=$(cin id -g "$QEMU_USER")
cin sh -c "mkdir -p /run/systemd/system/cprd.service.d &&
	printf '[Service]\nExecStart=\nExecStart=%s --qemu-user %s\n' '$exec_start' '$QEMU_USER' \
		>/run/systemd/system/cprd.service.d/e2e-qemu-user.conf" && cin systemctl daemon-reload
cin systemctl restart cprd.service
wait_for 30 cprd_answers
CPRD=$(main_pid)
if start_vm user_start --qemu "$QEMU" --nic "bridge=$BRIDGE"; then
	c=$(cin "$GUEST_DIR/guest.py" confinement "$QPID")
	verdict user_qemu_uid "$([ -n "$qemu_uid" ] && [ "$(echo "$c" | J 'd["uid"]')" = "$qemu_uid" ] &&
		[ "$(echo "$c" | J 'len(d["capeff"])')" = 0 ] && echo 0 || echo 1)" \
		"QEMU pid $QPID runs as uid $(echo "$c" | J 'd["uid"]') ($QEMU_USER is ${qemu_uid:-missing}), effective capabilities: $(echo "$c" | J '" ".join(d["capeff"]) or "none"')"
	confined user_confinement "$QPID" qemu
	# ProtectProc=invisible: in the unit's /proc, QEMU's user sees no process
	# of another user, cprd included; the container's own /proc shows them.
	seen=$(cin nsenter --target "$QPID" --mount --setuid "$qemu_uid" --setgid "$qemu_gid" \
		sh -c 'ls /proc | grep -c "^[0-9]*$"; test -e /proc/$0/status && echo visible' "$CPRD")
	all=$(cin setpriv --reuid "$qemu_uid" --regid "$qemu_gid" --clear-groups sh -c 'ls /proc | grep -c "^[0-9]*$"')
	verdict user_proc_invisible "$(is_int "${seen%%[!0-9]*}" && [[ "$seen" != *visible* ]] && is_int "$all" &&
		[ "${seen%%[!0-9]*}" -lt "$all" ] && echo 0 || echo 1)" \
		"as uid $qemu_uid in QEMU's mount namespace: $(echo "$seen" | head -n 1) processes, cprd $CPRD $([[ "$seen" == *visible* ]] && echo visible || echo invisible); in the container's: $all"
	tap_on_bridge user_nic_tap "cprd-$VM-0"
	do_upgrade user_upgrade
	# An emptied fd store: the RAM and console come back from a QEMU of
	# another uid by pidfd_getfd, QMP through the recovery socket in the
	# folder that belongs to QEMU's user.
	cin systemctl stop cprd.service >/dev/null 2>&1
	if wait_for 30 cprd_answers; then
		vm_running user_stop_reattach
		custody user_stop_custody
		do_upgrade user_upgrade_local_migrate local-migrate
		guest_progress user_guest_counter "$QPID"
	else
		fail user_stop_reattach "cprctl list did not re-activate cprd: $(prop cprd.service ActiveState)"
	fi
	end_vm user_stop
fi
cin rm -f /run/systemd/system/cprd.service.d/e2e-qemu-user.conf
cin systemctl daemon-reload

# ---- systemd-machined: machinectl sees each VM ------------------------------
# cprd registers each running VM with machined (class vm, leader = its QEMU,
# unit = its scope), follows the new QEMU after an upgrade, keeps the
# registration through a rollback and a restart of cprd, and unregisters
# the VM when it stops. machinectl is systemd-container's (make-rootfs.sh).
VM=vm6
# mshow PROPERTY: machined's PROPERTY of machine $VM ("" when there is none).
mshow() { cin machinectl show "$VM" -p "$1" --value 2>/dev/null; }
# machine_is NAME: machine $VM is registered with leader $QPID in its scope.
machine_is() {
	local leader unit class service
	leader=$(mshow Leader) unit=$(mshow Unit) class=$(mshow Class) service=$(mshow Service)
	verdict "$1" "$([ "$leader" = "$QPID" ] && [ "$unit" = "cprd-vm-$VM.scope" ] && [ "$class" = vm ] &&
		[ "$service" = cprd ] && echo 0 || echo 1)" \
		"machine $VM: leader '$leader' (QEMU pid $QPID), unit '$unit', class '$class', service '$service'"
}
if ! cin test -x /usr/bin/machinectl; then
	skip machined "no machinectl in the container: its root file system lacks systemd-container (make-rootfs.sh)"
elif start_vm machined_start --qemu "$QEMU" --nic "bridge=$BRIDGE"; then
	list=$(cin machinectl list --no-legend --no-pager 2>&1)
	verdict machined_list "$(echo "$list" | awk -v vm="$VM" '$1 == vm && $2 == "vm" { found = 1 } END { exit !found }' && echo 0 || echo 1)" \
		"machinectl list: $(echo "$list" | tr -s ' \n' ' ')"
	status=$(cin machinectl status --no-pager "$VM" 2>&1)
	verdict machined_status "$(echo "$status" | grep -q "Leader: $QPID " &&
		echo "$status" | grep -q "Unit: cprd-vm-$VM.scope" && echo "$status" | grep -q "class vm" && echo 0 || echo 1)" \
		"machinectl status $VM: $(echo "$status" | grep -E 'Leader:|Service:|Unit:|Iface:' | sed 's/^ *//' | tr '\n' ';')"
	machine_is machined_registered
	since=$(mshow TimestampMonotonic)
	# A rollback (the target never becomes QEMU within --timeout) leaves the
	# old QEMU and its registration as they were.
	out=$(cprctl upgrade "$VM" --qemu "$GUEST_DIR/qemu-slow" --timeout 2 --json 2>&1)
	verdict machined_rollback "$([ "$(echo "$out" | J 'd.get("outcome")')" = rolled-back ] &&
		[ "$(mshow Leader)" = "$QPID" ] && [ "$(mshow TimestampMonotonic)" = "$since" ] && echo 0 || echo 1)" \
		"upgrade outcome '$(echo "$out" | J 'd.get("outcome")')'; machine $VM: leader $(mshow Leader) (QEMU pid $QPID), registered at $(mshow TimestampMonotonic) (was $since)"
	if do_upgrade machined_upgrade; then
		machine_is machined_follows_upgrade
		n=$(cin machinectl list --no-legend --no-pager | awk -v vm="$VM" '$1 == vm' | wc -l)
		verdict machined_one_machine "$([ "$n" = 1 ] && echo 0 || echo 1)" "$n machines named $VM"
	fi
	# A restarted cprd finds its registration (same leader): it stays as is.
	since=$(mshow TimestampMonotonic)
	if cin systemctl restart cprd.service && wait_for 30 cprd_answers; then
		verdict machined_restart "$([ "$(mshow Leader)" = "$QPID" ] && [ "$(mshow TimestampMonotonic)" = "$since" ] && echo 0 || echo 1)" \
			"after systemctl restart cprd: leader $(mshow Leader) (QEMU pid $QPID), registered at $(mshow TimestampMonotonic) (was $since)"
	else
		fail machined_restart "systemctl restart cprd: $(prop cprd.service ActiveState)"
	fi
	guest_progress machined_guest_counter "$QPID"
	end_vm machined_stop
	verdict machined_gone "$(cin machinectl show "$VM" >/dev/null 2>&1 && echo 1 || echo 0)" \
		"after cprctl stop: $(cin machinectl show "$VM" -p Leader 2>&1 | head -n 1)"
	# cprd's journal says each step, with the VM's VM= field.
	said=$(cin journalctl -u cprd.service "VM=$VM" --no-pager -o cat | grep -E 'systemd-machined')
	verdict machined_journal "$([ "$(echo "$said" | grep -c "registered with systemd-machined as machine $VM")" -ge 2 ] &&
		echo "$said" | grep -q "machine $VM unregistered" && echo 0 || echo 1)" \
		"journalctl VM=$VM: $(echo "$said" | tr '\n' ';')"
	# A VM name that is no host name ('_') gets a mapped machine name.
	VM=web_6
	if start_vm machined_mapped_start --qemu "$QEMU"; then
		list=$(cin machinectl list --no-legend --no-pager 2>&1)
		mname=$(echo "$list" | awk '$2 == "vm" { print $1 }' | grep -E '^web-6-[a-z2-7]{5}$')
		unit=$([ -n "$mname" ] && cin machinectl show "$mname" -p Unit --value 2>/dev/null)
		leader=$([ -n "$mname" ] && cin machinectl show "$mname" -p Leader --value 2>/dev/null)
		verdict machined_mapped_name "$([ -n "$mname" ] && [ "$unit" = "cprd-vm-$VM.scope" ] && [ "$leader" = "$QPID" ] && echo 0 || echo 1)" \
			"VM $VM is machine '${mname:-none}', unit '$unit', leader '$leader' (QEMU pid $QPID); machinectl list: $(echo "$list" | tr -s ' \n' ' ')"
		end_vm machined_mapped_stop
	fi
	# Without machined (a host without systemd-container: no D-Bus service
	# file for it), VMs start and upgrade as before and cprd says so once.
	VM=vm7
	M1=/usr/share/dbus-1/system-services/org.freedesktop.machine1.service
	cin sh -c "systemctl stop systemd-machined.service && mv $M1 /run/machine1.service.off && systemctl reload dbus.service"
	cin systemctl restart cprd.service
	wait_for 30 cprd_answers
	CPRD=$(main_pid)
	if start_vm machined_absent_start --qemu "$QEMU"; then
		do_upgrade machined_absent_upgrade
		said=$(cin journalctl -u cprd.service "_PID=$CPRD" --no-pager -o cat | grep -E 'systemd-machined')
		verdict machined_absent "$([ "$(echo "$said" | grep -c 'systemd-machined is not available')" = 1 ] &&
			[ "$(echo "$said" | grep -c .)" = 1 ] && ! cin systemctl is-active -q systemd-machined.service && echo 0 || echo 1)" \
			"the journal of cprd $CPRD (restarted): $(echo "$said" | tr '\n' ';')"
		end_vm machined_absent_stop
	fi
	cin sh -c "mv /run/machine1.service.off $M1 && systemctl reload dbus.service"
fi

# ---- the watchdog ----------------------------------------------------------
# WatchdogSec=30s would need a long quiet wait: a drop-in makes it 4 s, and
# cprd must keep pinging (it reads WATCHDOG_USEC) for 12 s without being
# killed and restarted.
wd_unit=$(prop cprd.service WatchdogUSec)
cin sh -c 'mkdir -p /run/systemd/system/cprd.service.d &&
	printf "[Service]\nWatchdogSec=4s\n" >/run/systemd/system/cprd.service.d/e2e-watchdog.conf' &&
	cin systemctl daemon-reload
t=$(date +%s)
cin systemctl restart cprd.service
wait_for 30 cprd_answers
CPRD=$(main_pid)
restarts_before=$(prop cprd.service NRestarts)
sleep 12
timeouts=$(cin journalctl -u cprd.service --since "@$t" --no-pager -o cat | grep -ci 'watchdog timeout')
if [ "$(prop cprd.service WatchdogUSec)" = 4s ] && [ "$(main_pid)" = "$CPRD" ] &&
	[ "$(prop cprd.service ActiveState)" = active ] && [ "$timeouts" = 0 ] &&
	[ "$(prop cprd.service NRestarts)" = "$restarts_before" ]; then
	pass watchdog "WatchdogSec=4s (the unit says $wd_unit): cprd $CPRD kept pinging for 12 s"
else
	fail watchdog "WatchdogUSec=$(prop cprd.service WatchdogUSec): main pid $CPRD -> $(main_pid), $timeouts watchdog timeouts, restarts $restarts_before -> $(prop cprd.service NRestarts)"
fi
cin rm -f /run/systemd/system/cprd.service.d/e2e-watchdog.conf
cin systemctl daemon-reload

# ---- removing and purging the package with a guest running ------------------
# apt-get remove stops cprd.socket and cprd.service; the guest runs on in
# its scope and the prerm says so. A purge keeps /var/lib/cprd while a VM is
# defined there. Installed again, cprd takes the guest back (socket
# activation, custody from the QEMU itself: the stop emptied the fd store).
# Once the VM is deleted, a purge deletes the state.
VM=vm6
if [ -n "${DEB2:-}" ] && start_vm pkg_vm_start --qemu "$QEMU"; then
	cin --timeout 180 apt-get remove -y -q -o Dpkg::Use-Pty=0 cprd >"$RUN/apt_remove.txt" 2>&1
	rc=$?
	grep '^cprd: ' "$RUN/apt_remove.txt" | sed 's/^/# prerm: /'
	verdict apt_remove "$([ $rc -eq 0 ] && [ "$(pkg_version)" = "rc $(dpkg-deb -f "$PKG/$DEB2" Version)" ] && cin test ! -e /usr/sbin/cprd && echo 0 || echo 1)" \
		"apt-get remove cprd exited $rc; dpkg says '$(pkg_version)'; /usr/sbin/cprd $(cin test -e /usr/sbin/cprd && echo is still there || echo is gone)"
	verdict remove_stopped "$([ "$(prop cprd.service ActiveState)" = inactive ] && [ "$(prop cprd.socket ActiveState)" = inactive ] && echo 0 || echo 1)" \
		"cprd.service $(prop cprd.service ActiveState), cprd.socket $(prop cprd.socket ActiveState)"
	verdict remove_message "$(grep -q "^cprd: .*keep running.* $VM\." "$RUN/apt_remove.txt" && echo 0 || echo 1)" \
		"$(grep -m 1 '^cprd: ' "$RUN/apt_remove.txt" || echo "no message from the prerm")"
	verdict remove_qemu_alive "$(alive "$QPID" && echo 0 || echo 1)" "QEMU pid $QPID of $VM after apt-get remove cprd"
	guest_progress remove_guest_counter "$QPID"

	cin --timeout 180 apt-get purge -y -q -o Dpkg::Use-Pty=0 cprd >"$RUN/apt_purge.txt" 2>&1
	rc=$?
	grep '^cprd: ' "$RUN/apt_purge.txt" | sed 's/^/# postrm: /'
	verdict purge_keeps_state "$([ $rc -eq 0 ] && [ -z "$(pkg_version)" ] && cin test -f "/var/lib/cprd/vms/$VM/vm.json" &&
		grep -q "^cprd: purge keeps .* $VM\." "$RUN/apt_purge.txt" && echo 0 || echo 1)" \
		"apt-get purge exited $rc, dpkg says '$(pkg_version)', /var/lib/cprd/vms/$VM/vm.json $(cin test -f "/var/lib/cprd/vms/$VM/vm.json" && echo kept || echo gone): $(grep -m 1 '^cprd: ' "$RUN/apt_purge.txt")"
	guest_progress purge_guest_counter "$QPID"

	if apt_install apt_reinstall "$DEB2" && wait_for 30 cprd_answers; then
		pass apt_reinstall "apt-get install ./$DEB2 after the purge: $(pkg_version); cprd pid $(main_pid)"
		vm_running reinstall_takes_back
		custody reinstall_custody
	else
		fail apt_reinstall "$(grep -v '^ *$' "$RUN/apt_reinstall.txt" | tail -n 4 | tr '\n' ' ')"
	fi
	end_vm pkg_vm_stop
	cin --timeout 180 apt-get purge -y -q -o Dpkg::Use-Pty=0 cprd >"$RUN/apt_purge2.txt" 2>&1
	rc=$?
	verdict purge_deletes_state "$([ $rc -eq 0 ] && [ -z "$(pkg_version)" ] && cin test ! -e /var/lib/cprd && echo 0 || echo 1)" \
		"apt-get purge with no VM left exited $rc; /var/lib/cprd $(cin test -e /var/lib/cprd && echo is still there || echo is gone)"
else
	fail apt_remove "no VM to remove the package under (see above)"
fi

# ---- done ------------------------------------------------------------------
if [ $FAILED -gt 0 ]; then
	note "the last lines of cprd's journal:"
	cin journalctl -u cprd.service --no-pager -o short-monotonic -n 60 | sed 's/^/#   /'
	cin journalctl -u cprd.service --no-pager -o short-monotonic >"$RUN/cprd-journal.txt" 2>&1
fi
note "total $(($(date +%s) - T0))s"
[ $FAILED -gt 0 ] && note "failed: ${FAILED_NAMES[*]}"
echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
[ $FAILED -eq 0 ]
