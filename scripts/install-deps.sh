#!/bin/bash
# Installs everything cprd needs to build, run and test on Debian 12.
# Idempotent: safe to run again; it only adds what is missing.
# Usage: scripts/install-deps.sh [--runtime-only]
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: run this as root (it calls apt-get)" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

# QEMU 10 (cpr-transfer) and python3-varlink come from bookworm-backports.
BACKPORTS=/etc/apt/sources.list.d/cprd-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	cat >"$BACKPORTS" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

echo "install-deps: apt-get update"
apt-get update -q

BUILD_PKGS=(build-essential cmake pkg-config binutils
	libevent-dev libjson-c-dev libsystemd-dev check linux-libc-dev)
TEST_PKGS=(varlink-go python3 socat procps valgrind clang libclang-rt-14-dev
	systemd-container debootstrap)

echo "install-deps: build and test packages"
apt-get install "${APT_OPTS[@]}" --no-install-recommends "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"

echo "install-deps: QEMU 10 and python3-varlink from bookworm-backports"
apt-get install "${APT_OPTS[@]}" --no-install-recommends -t bookworm-backports \
	qemu-system-x86 qemu-system-data python3-varlink

# QEMU 7.2 (Debian 12's own release) unpacked beside the installed one,
# never installed over it: the upgrade tests and the demo go 7.2 -> 10.
QEMU72_DIR=${QEMU72_DIR:-/opt/cprd/qemu-7.2}
if [ ! -x "$QEMU72_DIR/usr/bin/qemu-system-x86_64" ]; then
	echo "install-deps: unpacking Debian 12's QEMU 7.2 into $QEMU72_DIR"
	tmp=$(mktemp -d)
	(
		cd "$tmp"
		for p in qemu-system-x86 qemu-system-common qemu-system-data; do
			v=$(apt-cache madison "$p" | awk '$3 ~ /^1:7\.2/ {print $3; exit}')
			if [ -z "$v" ]; then
				echo "install-deps: no 7.2 version of $p in apt's lists" >&2
				exit 1
			fi
			apt-get download -q "$p=$v"
		done
		mkdir -p "$QEMU72_DIR"
		for d in ./*.deb; do dpkg -x "$d" "$QEMU72_DIR"; done
	)
	rm -rf "$tmp"
fi
# A small wrapper so the 7.2 binary finds its modules and firmware.
mkdir -p "$(dirname "$QEMU72_DIR")"
WRAP="$(dirname "$QEMU72_DIR")/qemu-system-x86_64-7.2"
cat >"$WRAP.tmp" <<WRAPPER
#!/bin/sh
# QEMU 7.2 from Debian 12, unpacked in $QEMU72_DIR by cprd's install-deps.sh.
export QEMU_MODULE_DIR=$QEMU72_DIR/usr/lib/x86_64-linux-gnu/qemu
exec $QEMU72_DIR/usr/bin/qemu-system-x86_64 -L $QEMU72_DIR/usr/share/qemu -L /usr/share/seabios -L /usr/share/qemu "\$@"
WRAPPER
chmod 0755 "$WRAP.tmp"
# Replace it only when it changed: a new file would make every VM running on
# it look outdated (cprctl list --outdated).
if cmp -s "$WRAP.tmp" "$WRAP"; then
	rm -f "$WRAP.tmp"
else
	mv "$WRAP.tmp" "$WRAP"
fi

echo "install-deps: done"
