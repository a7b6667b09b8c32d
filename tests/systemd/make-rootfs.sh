#!/bin/bash
# Builds, once, the Debian 12 (bookworm) root file system that the systemd
# end-to-end test boots with systemd-nspawn. Later calls reuse it.
#
# Usage (as root): tests/systemd/make-rootfs.sh [DIR]
#   DIR  default $CPRD_TEST_ROOTFS or /var/cache/cprd-test/rootfs-bookworm
# Environment:
#   CPRD_TEST_MIRROR   Debian mirror (default: the one apt uses for bookworm,
#                      see scripts/debian-mirror.sh)
#
# What is in it: debootstrap --variant=minbase plus what cprd needs at run
# time (systemd as PID 1, dbus, libevent, json-c, libsystemd, python3 to read
# the guest's counter, procps, man-db for systemd-analyze verify's check of
# Documentation=, systemd-container for machined), and QEMU 10 (qemu-system-x86 from
# bookworm-backports, installed inside with --no-install-recommends; Debian
# 12's own QEMU 7.2 has no CPR modes). cprd itself is not in it: the test
# installs the build into a per-run copy.
#
# The tree is built under DIR.new and renamed to DIR only when complete, with
# a stamp file DIR/.cprd-rootfs-stamp naming the recipe version. A DIR
# without that stamp (an interrupted build), or with an older recipe, is
# thrown away and built again. A lock keeps two runs from building at once.
# Exit status: 0 ready, 77 cannot be built on this machine (not root, no
# debootstrap, no network to the mirror), 1 other errors.
set -euo pipefail

# Bump when the recipe below changes: older caches are then rebuilt.
RECIPE=3
SUITE=bookworm
ROOTFS=${1:-${CPRD_TEST_ROOTFS:-/var/cache/cprd-test/rootfs-bookworm}}
STAMP_NAME=.cprd-rootfs-stamp
# man-db: systemd-analyze verify runs man for each Documentation=man: entry.
# systemd-container: systemd-machined and machinectl, which cprd registers
# its VMs with.
PACKAGES=systemd,systemd-sysv,dbus,libevent-core-2.1-7,libjson-c5,libsystemd0,python3,procps,man-db,systemd-container

say() { echo "make-rootfs: $*" >&2; }
cannot() { say "cannot build the root file system: $*"; exit 77; }
MIRROR=$("$(dirname "$0")/../../scripts/debian-mirror.sh") || cannot "no Debian mirror known to apt"

[ "$(id -u)" -eq 0 ] || cannot "needs root (debootstrap, chroot, mounts)"
command -v debootstrap >/dev/null || cannot "debootstrap is not installed (apt-get install debootstrap)"
command -v flock >/dev/null || cannot "flock (util-linux) is missing"

stamp_ok() {
	[ -f "$ROOTFS/$STAMP_NAME" ] && grep -qx "recipe=$RECIPE" "$ROOTFS/$STAMP_NAME"
}

if stamp_ok; then
	say "reusing $ROOTFS"
	exit 0
fi

mkdir -p "$(dirname "$ROOTFS")"
exec 9>"$ROOTFS.lock"
say "waiting for the lock $ROOTFS.lock"
flock 9
if stamp_ok; then # another run built it while we waited
	say "reusing $ROOTFS"
	exit 0
fi

NEW=$ROOTFS.new
MOUNTS=()
cleanup() {
	local i
	for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
		umount -l "${MOUNTS[$i]}" 2>/dev/null || true
	done
	MOUNTS=()
}
trap 'cleanup' EXIT

# An interrupted build leaves DIR.new or a DIR without a stamp: start over.
for d in "$NEW" "$ROOTFS"; do
	if [ -e "$d" ]; then
		say "removing the incomplete or outdated $d"
		# Never follow mounts a crashed run may have left inside.
		for m in $(awk -v p="$d/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r); do
			umount -l "$m" || true
		done
		rm -rf --one-file-system "$d"
	fi
done

start=$(date +%s)
say "debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR into $NEW"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$NEW" "$MIRROR" >"$NEW.log" 2>&1; then
	tail -n 20 "$NEW.log" >&2 || true
	if grep -qiE 'Failed getting release file|Could not resolve|Temporary failure|Connection (refused|timed out)|Network is unreachable' "$NEW.log"; then
		cannot "debootstrap could not reach $MIRROR (see $NEW.log)"
	fi
	say "debootstrap failed (see $NEW.log)"
	exit 1
fi
mv "$NEW.log" "$NEW/var/log/cprd-debootstrap.log"
say "debootstrap done in $(($(date +%s) - start))s"

# QEMU 10 from bookworm-backports, installed in a chroot with /proc and /dev.
cat >"$NEW/etc/apt/sources.list.d/bookworm-backports.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# Nothing may start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$NEW/usr/sbin/policy-rc.d"
chmod 0755 "$NEW/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$NEW/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$NEW/proc" && MOUNTS+=("$NEW/proc")
mount --bind /dev "$NEW/dev" && MOUNTS+=("$NEW/dev")
mount -t sysfs sysfs "$NEW/sys" && MOUNTS+=("$NEW/sys")

in_root() { chroot "$NEW" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

say "installing qemu-system-x86 from bookworm-backports inside"
in_root apt-get -q update >/dev/null
in_root apt-get -y -q -o Dpkg::Use-Pty=0 install --no-install-recommends \
	-t bookworm-backports qemu-system-x86 >"$NEW/var/log/cprd-qemu-install.log" 2>&1 || {
	tail -n 20 "$NEW/var/log/cprd-qemu-install.log" >&2
	say "installing QEMU failed"
	exit 1
}
in_root apt-get -q clean
cleanup
rm -f "$NEW/usr/sbin/policy-rc.d"
rm -rf "$NEW"/var/lib/apt/lists/*_Packages "$NEW"/var/lib/apt/lists/*_Translation-*

# Boot settings for a container driven only through nsenter:
# - no prompts on the first boot, no gettys to wait for;
# - units that cannot work in a container without devices are masked so the
#   system reaches "running" rather than "degraded".
for u in systemd-firstboot.service console-getty.service getty@.service \
	serial-getty@.service systemd-networkd-wait-online.service \
	e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer \
	dpkg-db-backup.timer; do
	ln -sf /dev/null "$NEW/etc/systemd/system/$u"
done
echo cprd-e2e >"$NEW/etc/hostname"
# Journals live in /run: nothing persists between runs anyway.
mkdir -p "$NEW/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$NEW/etc/systemd/journald.conf.d/cprd-e2e.conf"

qemu_version=$(chroot "$NEW" /usr/bin/qemu-system-x86_64 --version | head -n 1)
{
	echo "recipe=$RECIPE"
	echo "suite=$SUITE"
	echo "mirror=$MIRROR"
	echo "packages=$PACKAGES,qemu-system-x86/bookworm-backports"
	echo "qemu=$qemu_version"
	echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - start))s"
} >"$NEW/$STAMP_NAME.tmp"
mv "$NEW/$STAMP_NAME.tmp" "$NEW/$STAMP_NAME"
mv -T "$NEW" "$ROOTFS"
say "ready: $ROOTFS ($qemu_version, $(du -sm --one-file-system "$ROOTFS" | cut -f1) MiB, $(($(date +%s) - start))s)"
