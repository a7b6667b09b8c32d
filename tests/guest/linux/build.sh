#!/bin/bash
# Builds cprd's Linux test guest from Debian 12's own packages:
#
#   build.sh OUTDIR
#
# writes OUTDIR/cprd-linux.img, a FAT boot disk with syslinux, Debian's
# kernel (linux-image-6.1.*-amd64, the version linux-image-amd64 names) and
# an initramfs of busybox-static and nine modules (virtio, virtio-blk,
# virtio-net) whose /init is ./init (next to this script), with
# ./cprd-net as /bin/cprd-net. SeaBIOS boots the disk from virtio-blk; the
# kernel talks on ttyS0. See ../README.md.
#
# The .debs are kept in $CPRD_TEST_DEB_CACHE (default
# /var/cache/cprd-test/debs), so a rebuild needs no network; debs.sh has
# that and the other steps shared with the VFIO lab's build-l1.sh. A stamp
# (OUTDIR/cprd-linux.stamp) holds a digest of everything the image is made
# of: when nothing changed, the script does nothing.
#
# Needs: dpkg, apt (for the first download, as root), cpio, gzip,
# dosfstools (mkfs.vfat), mtools (mcopy), syslinux and syslinux-common
# (scripts/install-deps.sh installs them).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD_TAG=cprd-linux-guest
# shellcheck source=tests/guest/linux/debs.sh
. "$HERE/debs.sh"

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
OUT=$1
IMG=$OUT/cprd-linux.img
STAMP=$OUT/cprd-linux.stamp
# In the order init loads them: virtio_net needs net_failover, which needs
# failover (their modinfo "depends=").
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk
	failover net_failover virtio_net"
APPLETS="sh mount insmod sleep sha256sum dd blockdev head cat printf echo ip nc awk ping"
CMDLINE="console=ttyS0 quiet"
SYSLINUX_BIOS=/usr/lib/syslinux/modules/bios

need_tools "dosfstools mtools syslinux syslinux-common cpio" \
	dpkg-deb tar cpio gzip mkfs.vfat mcopy syslinux sha256sum flock
[ -f $SYSLINUX_BIOS/ldlinux.c32 ] || die "$SYSLINUX_BIOS/ldlinux.c32 is missing; install syslinux-common"

build_lock "$OUT" cprd-linux

# ---- the packages -------------------------------------------------------------

KDEB=$(deb_fetch "$(deb_kernel_package)")
BDEB=$(deb_fetch busybox-static)
kpkg=$(dpkg-deb -f "$KDEB" Package)

# ---- up to date? --------------------------------------------------------------

syslinux_ver=$(dpkg-query -W -f '${Version}' syslinux syslinux-common 2>/dev/null || true)
key=$( {
	echo "cmdline $CMDLINE"
	echo "modules $MODULES"
	echo "applets $APPLETS"
	echo "syslinux $syslinux_ver"
	sha256sum "$HERE/build.sh" "$HERE/debs.sh" "$HERE/init" "$HERE/cprd-net" | cut -d' ' -f1
	echo "$(basename "$KDEB") $(stat -c %s "$KDEB")"
	echo "$(basename "$BDEB") $(stat -c %s "$BDEB")"
} | sha256sum | cut -d' ' -f1)
exit_if_current "$STAMP" "$key" "$IMG"

# ---- the initramfs ------------------------------------------------------------

note "building $IMG from $(basename "$KDEB") and $(basename "$BDEB")"
build_workdir "$OUT" cprd-linux

R=$WORK/root
mkdir -p "$R"/{bin,dev,proc,sys,tmp,lib/modules}
deb_unpack "$KDEB" "$BDEB" "$MODULES" "$R"
install -m 0755 "$HERE/init" "$R/init"
install -m 0755 "$HERE/cprd-net" "$R/bin/cprd-net"
for a in $APPLETS; do
	ln -s busybox "$R/bin/$a"
done
cpio_root "$R" | gzip -9 -n >"$WORK/initrd.gz"

# ---- the boot disk --------------------------------------------------------------

cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT cprd
PROMPT 0
TIMEOUT 0
LABEL cprd
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND $CMDLINE
EOF
touch -d @$SOURCE_DATE_EPOCH "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg"
# 32 MiB: the kernel (about 8 MiB), the initramfs, syslinux; a FAT16 volume.
mkfs.vfat -C --invariant -n CPRDLINUX -i 43505244 "$WORK/disk.img" 32768 >/dev/null
syslinux --install "$WORK/disk.img"
mcopy -m -i "$WORK/disk.img" "$WORK/syslinux.cfg" "$WORK/vmlinuz" "$WORK/initrd.gz" ::
chmod 0644 "$WORK/disk.img"

mv -f "$WORK/vmlinuz" "$OUT/cprd-linux.vmlinuz"
mv -f "$WORK/initrd.gz" "$OUT/cprd-linux.initrd.gz"
mv -f "$WORK/disk.img" "$IMG"
echo "$key" >"$STAMP"
note "wrote $IMG ($kpkg $(dpkg-deb -f "$KDEB" Version), busybox $(dpkg-deb -f "$BDEB" Version))"
