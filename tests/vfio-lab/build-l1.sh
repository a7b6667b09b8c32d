#!/bin/bash
# Builds the VFIO lab's L1 guest (see docs/vfio-lab.md):
#
#   build-l1.sh OUT_DIR
#
# writes OUT_DIR/l1.vmlinuz (Debian 12's kernel, linux-image-6.1.*-amd64 as
# tests/guest/linux gets it) and OUT_DIR/l1.initrd (cpio newc, lz4) for
# direct kernel boot. The initramfs holds busybox-static, the modules for
# virtio, 9p and VFIO, labtool (built static from labtool.c), QEMU 11.1 (the
# folder /opt/cprd/qemu-11.1 that scripts/install-deps.sh makes, with its
# loader and the libraries its binary links, at the same path and with the
# same wrapper /opt/cprd/qemu-system-x86_64-11.1 as on the host) and the
# firmware that QEMU loads for a pc guest; its /init is ./l1-init.
#
# What changes from run to run (cprd, cprctl, the L2 guest image, the
# scenario scripts) is not in here: run-lab.py shares it with L1 over 9p.
#
# A stamp (OUT_DIR/l1.stamp) holds a digest of every input (these scripts,
# labtool.c, the .debs, every QEMU and firmware file): when none changed, a
# rerun does nothing. Timestamps are fixed, so the same inputs give the same
# files.
#
# Needs: dpkg, apt (for the first download, as root), cpio, lz4, gcc with
# a static libc (libc6-dev). scripts/install-deps.sh installs them.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_LINUX=$(cd "$HERE/../guest/linux" && pwd)
BUILD_TAG=vfio-lab-l1
# shellcheck source=tests/guest/linux/debs.sh
. "$GUEST_LINUX/debs.sh"

[ $# -eq 1 ] || die "usage: $0 OUT_DIR"
OUT=$1
QEMU_DIR=${CPRD_LAB_QEMU111_DIR:-/opt/cprd/qemu-11.1}
CC=${CC:-cc}

# In l1-init's loading order: virtio and 9p (the payload), then VFIO.
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
	netfs fscache 9pnet 9pnet_virtio 9p
	irqbypass vfio_virqfd vfio vfio_iommu_type1 vfio-pci-core vfio-pci"
# What QEMU 11.1 opens for a pc guest (checked with strace), and what
# direct kernel boot would add; the search path compiled into it.
FIRMWARE="/usr/share/seabios/bios-256k.bin /usr/share/seabios/bios.bin
	/usr/share/qemu/kvmvapic.bin /usr/share/qemu/linuxboot_dma.bin
	/usr/share/qemu/multiboot_dma.bin"

need_tools "cpio lz4 build-essential" dpkg-deb tar cpio lz4 sha256sum flock "$CC"
if [ ! -x "$QEMU_DIR/bin/qemu-system-x86_64" ] || [ ! -x "$QEMU_DIR/lib/ld-linux-x86-64.so.2" ]; then
	die "no QEMU 11.1 in $QEMU_DIR; run scripts/install-deps.sh (it builds that folder)"
fi
for f in $FIRMWARE; do
	[ -f "$f" ] || die "$f is missing; install seabios and qemu-system-data"
done

build_lock "$OUT" l1
KDEB=$(deb_fetch "$(deb_kernel_package)")
BDEB=$(deb_fetch busybox-static)

# The libraries the QEMU binary links, as its own loader finds them.
qemu_libs() {
	"$QEMU_DIR/lib/ld-linux-x86-64.so.2" --library-path "$QEMU_DIR/lib" \
		--list "$QEMU_DIR/bin/qemu-system-x86_64" |
		awk '$2 == "=>" && $3 ~ /\// {print $3}' | sed "s|^lib/|$QEMU_DIR/lib/|" | sort -u
}
QEMU_LIBS=$(qemu_libs)
[ -n "$QEMU_LIBS" ] || die "the loader in $QEMU_DIR/lib lists no libraries for QEMU"

# ---- up to date? --------------------------------------------------------------

key=$( {
	echo "modules $MODULES"
	echo "cc $("$CC" --version | head -n1)"
	sha256sum "$HERE/build-l1.sh" "$HERE/l1-init" "$HERE/labtool.c" "$GUEST_LINUX/debs.sh" | cut -d' ' -f1
	echo "$(basename "$KDEB") $(stat -c %s "$KDEB")"
	echo "$(basename "$BDEB") $(stat -c %s "$BDEB")"
	# shellcheck disable=SC2086 # lists of paths
	sha256sum "$QEMU_DIR/bin/qemu-system-x86_64" $QEMU_LIBS "$QEMU_DIR/lib/ld-linux-x86-64.so.2" $FIRMWARE
} | sha256sum | cut -d' ' -f1)
exit_if_current "$OUT/l1.stamp" "$key" "$OUT/l1.initrd" "$OUT/l1.vmlinuz"

note "building $OUT/l1.initrd from $(basename "$KDEB"), $(basename "$BDEB") and $QEMU_DIR"
build_workdir "$OUT" l1

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,run,lib/modules,payload,out,usr/share/qemu,usr/share/seabios}
deb_unpack "$KDEB" "$BDEB" "$MODULES" "$R"
install -m 0755 "$HERE/l1-init" "$R/init"
for a in $("$R/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -s busybox "$R/bin/$a"
done
"$CC" -std=gnu11 -O2 -Wall -Wextra -Werror -static -o "$R/bin/labtool" "$HERE/labtool.c"

# QEMU 11.1 at the path it has on the host, with a wrapper of the same name.
Q=$R/opt/cprd/qemu-11.1
mkdir -p "$Q/bin" "$Q/lib"
install -m 0755 "$QEMU_DIR/bin/qemu-system-x86_64" "$Q/bin/"
for lib in $QEMU_LIBS; do
	install -m 0644 "$lib" "$Q/lib/"
done
# After the libraries: the loader lists itself among them.
install -m 0755 "$QEMU_DIR/lib/ld-linux-x86-64.so.2" "$Q/lib/"
cat >"$R/opt/cprd/qemu-system-x86_64-11.1" <<'EOF'
#!/bin/sh
# QEMU 11.1 from Debian trixie-backports with the libraries it links
# (the VFIO lab's L1 guest; tests/vfio-lab/build-l1.sh).
exec /opt/cprd/qemu-11.1/lib/ld-linux-x86-64.so.2 --library-path /opt/cprd/qemu-11.1/lib /opt/cprd/qemu-11.1/bin/qemu-system-x86_64 "$@"
EOF
chmod 0755 "$R/opt/cprd/qemu-system-x86_64-11.1"
for f in $FIRMWARE; do
	install -m 0644 "$(readlink -f "$f")" "$R$f"
done
"$QEMU_DIR/lib/ld-linux-x86-64.so.2" --library-path "$QEMU_DIR/lib" \
	"$QEMU_DIR/bin/qemu-system-x86_64" --version | head -n1 >"$R/opt/cprd/qemu-11.1/VERSION"

cpio_root "$R" | lz4 -q -9 -l >"$WORK/initrd"

mv -f "$WORK/vmlinuz" "$OUT/l1.vmlinuz"
mv -f "$WORK/initrd" "$OUT/l1.initrd"
echo "$key" >"$OUT/l1.stamp"
note "wrote $OUT/l1.vmlinuz and $OUT/l1.initrd ($(du -h "$OUT/l1.initrd" | cut -f1); $(dpkg-deb -f "$KDEB" Package) $(dpkg-deb -f "$KDEB" Version), busybox $(dpkg-deb -f "$BDEB" Version), $(cat "$R/opt/cprd/qemu-11.1/VERSION"))"
