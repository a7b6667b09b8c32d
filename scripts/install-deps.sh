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
# Wait for another apt run (a parallel job) rather than fail on its lock.
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

HERE=$(cd "$(dirname "$0")" && pwd)

echo "install-deps: apt-get update"
apt-get update -q

# QEMU 10 (cpr-transfer) and python3-varlink come from bookworm-backports,
# from the same Debian archive that apt already uses.
BACKPORTS=/etc/apt/sources.list.d/cprd-bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	MIRROR=$("$HERE/debian-mirror.sh")
	cat >"$BACKPORTS" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	echo "install-deps: added bookworm-backports ($MIRROR); apt-get update"
	apt-get update -q
fi

BUILD_PKGS=(build-essential cmake pkg-config binutils
	libevent-dev libjson-c-dev libsystemd-dev libacl1-dev check linux-libc-dev)
TEST_PKGS=(varlink-go python3 socat procps iproute2 valgrind clang libclang-rt-14-dev
	systemd-container debootstrap dosfstools mtools syslinux syslinux-common cpio lz4)
# The Debian package (debian/, dpkg-buildpackage, lintian) and the bash
# completion's test (bash-completion's loader).
PKG_PKGS=(dpkg-dev debhelper devscripts lintian fakeroot bash-completion)

echo "install-deps: build and test packages"
apt-get install "${APT_OPTS[@]}" --no-install-recommends "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}" "${PKG_PKGS[@]}"

# The metrics test scrapes cprd's metrics.prom through a real node_exporter,
# and the Ansible test runs contrib/ansible's playbook. The test runs its own
# node_exporter on a loopback port: the package's postinst must not leave a
# system-wide one running (a policy-rc.d that refuses starts, for this
# install only), and a node_exporter this script installed stays disabled.
if ! dpkg-query -W -f '${Status}' prometheus-node-exporter 2>/dev/null | grep -q 'ok installed'; then
	echo "install-deps: prometheus-node-exporter (its service neither started nor enabled)"
	policy=/usr/sbin/policy-rc.d
	own_policy=false
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\n# cprd install-deps.sh: no service starts while it installs\nexit 101\n' >"$policy"
		chmod 0755 "$policy"
		own_policy=true
	fi
	apt-get install "${APT_OPTS[@]}" --no-install-recommends prometheus-node-exporter || {
		"$own_policy" && rm -f "$policy"
		exit 1
	}
	"$own_policy" && rm -f "$policy"
	if command -v systemctl >/dev/null; then
		systemctl disable prometheus-node-exporter.service >/dev/null 2>&1 || true
		if [ -d /run/systemd/system ]; then
			systemctl stop prometheus-node-exporter.service >/dev/null 2>&1 || true
		fi
	fi
fi
echo "install-deps: ansible"
apt-get install "${APT_OPTS[@]}" --no-install-recommends ansible

echo "install-deps: QEMU 10 and python3-varlink from bookworm-backports"
apt-get install "${APT_OPTS[@]}" --no-install-recommends -t bookworm-backports \
	qemu-system-x86 qemu-system-data qemu-utils python3-varlink

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

# QEMU 11.1 from Debian trixie-backports beside the installed 10.0, without a
# chroot at run time: its binary and every library it links (ldd inside a
# minimal trixie root made with debootstrap, kept in a cache for re-runs) are
# copied into $QEMU111_DIR/{bin,lib}, its modules into $QEMU111_DIR/modules,
# and a wrapper runs it through its own loader. It finds firmware in the
# host's /usr/share/qemu and /usr/share/seabios (the search path compiled
# into trixie's build, which -L help prints); the wrapper adds the NIC ROMs'
# folder of Debian 12's ipxe-qemu, which that path lacks.
# A folder with its stamp file is reused as it is; remove it to rebuild.
QEMU111_DIR=${QEMU111_DIR:-/opt/cprd/qemu-11.1}
TRIXIE_ROOT=${CPRD_TRIXIE_ROOT:-/var/cache/cprd-test/trixie}
MIRROR=$("$HERE/debian-mirror.sh")
QEMU111_STAMP=$QEMU111_DIR/.cprd-qemu-stamp

trixie_mounts=()
trixie_umount() {
	local i
	for ((i = ${#trixie_mounts[@]} - 1; i >= 0; i--)); do
		umount -l "${trixie_mounts[$i]}" 2>/dev/null || true
	done
	trixie_mounts=()
}
in_trixie() {
	chroot "$TRIXIE_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
		DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
}

# A minimal trixie root with trixie-backports in its sources. Debian 12's
# debian-archive-keyring already holds trixie's keys, and its debootstrap
# knows trixie.
make_trixie_root() {
	[ -f "$TRIXIE_ROOT/.cprd-trixie-stamp" ] && return 0
	local new=$TRIXIE_ROOT.new m
	for d in "$new" "$TRIXIE_ROOT"; do
		[ -e "$d" ] || continue
		echo "install-deps: removing the incomplete $d"
		for m in $(awk -v p="$d/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r); do
			umount -l "$m" || true
		done
		rm -rf --one-file-system "$d"
	done
	echo "install-deps: debootstrap trixie (minbase) into $new"
	if ! debootstrap --variant=minbase \
		--keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
		trixie "$new" "$MIRROR" >"$new.log" 2>&1; then
		tail -n 20 "$new.log" >&2
		echo "install-deps: debootstrap of trixie failed (see $new.log)" >&2
		exit 1
	fi
	mv "$new.log" "$new/var/log/cprd-debootstrap.log"
	cat >"$new/etc/apt/sources.list.d/trixie-backports.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	# Nothing may start services inside the root.
	printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
	chmod 0755 "$new/usr/sbin/policy-rc.d"
	date -u +%Y-%m-%dT%H:%M:%SZ >"$new/.cprd-trixie-stamp"
	mv -T "$new" "$TRIXIE_ROOT"
}

# Copies trixie-backports' QEMU 11.1 and what it links into $QEMU111_DIR.
build_qemu111() {
	local new=$QEMU111_DIR.new old=$QEMU111_DIR.old version lib
	make_trixie_root
	cp -L /etc/resolv.conf "$TRIXIE_ROOT/etc/resolv.conf" 2>/dev/null || true
	trap trixie_umount EXIT
	mount -t proc proc "$TRIXIE_ROOT/proc" && trixie_mounts+=("$TRIXIE_ROOT/proc")
	mount --bind /dev "$TRIXIE_ROOT/dev" && trixie_mounts+=("$TRIXIE_ROOT/dev")
	echo "install-deps: installing qemu-system-x86 from trixie-backports in $TRIXIE_ROOT"
	in_trixie apt-get -q update >/dev/null
	if ! in_trixie apt-get -y -q -o Dpkg::Use-Pty=0 install --no-install-recommends \
		-t trixie-backports qemu-system-x86 >"$TRIXIE_ROOT/var/log/cprd-qemu-install.log" 2>&1; then
		tail -n 20 "$TRIXIE_ROOT/var/log/cprd-qemu-install.log" >&2
		echo "install-deps: installing QEMU in the trixie root failed" >&2
		exit 1
	fi
	in_trixie apt-get -q clean
	# shellcheck disable=SC2016 # dpkg-query's format, not the shell's
	version=$(in_trixie dpkg-query -W -f '${Version}' qemu-system-x86)
	case $version in
	1:11.1*) ;;
	*)
		echo "install-deps: trixie-backports gave qemu-system-x86 $version, not 11.1" >&2
		exit 1
		;;
	esac

	rm -rf "$new"
	mkdir -p "$new/bin" "$new/lib" "$new/modules"
	cp "$TRIXIE_ROOT/usr/bin/qemu-system-x86_64" "$new/bin/"
	cp -a "$TRIXIE_ROOT/usr/lib/x86_64-linux-gnu/qemu/." "$new/modules/"
	# Every library the binary and its modules link, and the loader (ldd
	# prints it as a path of its own). A module whose library is not in the
	# root (a display QEMU's tests never use) just stays unloadable.
	for lib in $( (in_trixie ldd /usr/bin/qemu-system-x86_64 &&
		for m in "$new"/modules/*.so; do
			in_trixie ldd "/usr/lib/x86_64-linux-gnu/qemu/${m##*/}" || true
		done) | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
		cp -L "$TRIXIE_ROOT$lib" "$new/lib/"
	done
	if [ ! -f "$new/lib/ld-linux-x86-64.so.2" ]; then
		echo "install-deps: ldd named no ld-linux-x86-64.so.2 for QEMU 11.1" >&2
		exit 1
	fi
	trixie_umount
	trap - EXIT
	echo "qemu-system-x86 $version from trixie-backports" >"$new/.cprd-qemu-stamp"
	chown -R root:root "$new"
	chmod -R u=rwX,go=rX "$new"
	chmod 0755 "$new/lib/ld-linux-x86-64.so.2" "$new/bin/qemu-system-x86_64"
	rm -rf "$old"
	if [ -e "$QEMU111_DIR" ]; then mv -T "$QEMU111_DIR" "$old"; fi
	mv -T "$new" "$QEMU111_DIR"
	rm -rf "$old"
}

if [ ! -f "$QEMU111_STAMP" ] || [ ! -x "$QEMU111_DIR/bin/qemu-system-x86_64" ]; then
	mkdir -p "$(dirname "$TRIXIE_ROOT")"
	exec 8>"$TRIXIE_ROOT.lock"
	flock 8
	# Another run may have built it while this one waited for the lock.
	if [ ! -f "$QEMU111_STAMP" ] || [ ! -x "$QEMU111_DIR/bin/qemu-system-x86_64" ]; then
		build_qemu111
	fi
	exec 8>&-
fi
QEMU111_VERSION=$(sed -n 's/^qemu-system-x86 \([^ ]*\) .*/\1/p' "$QEMU111_STAMP")
echo "install-deps: QEMU 11.1 ($QEMU111_VERSION) in $QEMU111_DIR"
# The version goes into the wrapper, so the wrapper changes exactly when the
# binary under it does, and VMs on the older one look outdated.
WRAP111="$(dirname "$QEMU111_DIR")/qemu-system-x86_64-11.1"
cat >"$WRAP111.tmp" <<WRAPPER
#!/bin/sh
# QEMU $QEMU111_VERSION from Debian trixie-backports with the libraries it
# links, copied into $QEMU111_DIR by cprd's install-deps.sh.
export QEMU_MODULE_DIR=$QEMU111_DIR/modules
exec $QEMU111_DIR/lib/ld-linux-x86-64.so.2 --library-path $QEMU111_DIR/lib $QEMU111_DIR/bin/qemu-system-x86_64 -L /usr/lib/ipxe/qemu "\$@"
WRAPPER
chmod 0755 "$WRAP111.tmp"
if cmp -s "$WRAP111.tmp" "$WRAP111"; then
	rm -f "$WRAP111.tmp"
else
	mv "$WRAP111.tmp" "$WRAP111"
fi

echo "install-deps: done"
