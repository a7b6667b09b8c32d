# shellcheck shell=bash
# What the two test guests built from Debian packages share: sourced by
# build.sh (the Linux test guest) and tests/vfio-lab/build-l1.sh (the VFIO
# lab's L1 guest), which set -euo pipefail and BUILD_TAG (the prefix of
# their messages) first. Bash.
#
# The .debs are kept in $DEB_CACHE ($CPRD_TEST_DEB_CACHE, default
# /var/cache/cprd-test/debs), so a rebuild needs no network. If the version
# apt would install is not cached and cannot be downloaded (no network, not
# root), the newest cached one is used.

export LC_ALL=C
export SOURCE_DATE_EPOCH=946684800	# 2000-01-01, for every file in the images

die() {
	echo "$BUILD_TAG: error: $*" >&2
	exit 1
}
note() { echo "$BUILD_TAG: $*"; }

# need_tools PACKAGES TOOL...: dies naming PACKAGES when a TOOL is missing.
need_tools() {
	local pkgs=$1 tool
	shift
	for tool in "$@"; do
		command -v "$tool" >/dev/null ||
			die "$tool is missing; run scripts/install-deps.sh (packages $pkgs)"
	done
}

# build_lock OUT NAME: makes OUT and holds OUT/.NAME.lock until the script
# exits (fd 9), so two builds into OUT take turns.
build_lock() {
	mkdir -p "$1"
	exec 9>"$1/.$2.lock"
	flock 9
}

# exit_if_current STAMP KEY FILE...: the script ends here when every FILE
# is there and STAMP holds KEY (the digest of the build's inputs).
exit_if_current() {
	local stamp=$1 key=$2 f
	shift 2
	for f in "$@"; do
		[ -f "$f" ] || return 0
	done
	[ "$(cat "$stamp" 2>/dev/null)" = "$key" ] || return 0
	note "$1 is up to date"
	exit 0
}

# build_workdir OUT NAME: sets WORK to a new folder in OUT, removed when the
# script exits (the results are moved out of it at the end).
build_workdir() {
	WORK=$(mktemp -d "$1/.$2.XXXXXX")
	trap 'rm -rf "$WORK"' EXIT
}

DEB_CACHE=${CPRD_TEST_DEB_CACHE:-/var/cache/cprd-test/debs}

# deb_candidate PACKAGE: the version apt would install, or nothing.
deb_candidate() {
	apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v '(none)' || true
}

# deb_newest_cached PATTERN: the cached .deb of the highest version matching
# the glob PATTERN (package part of the name), or nothing.
deb_newest_cached() {
	local best='' bestver='' f v
	for f in "$DEB_CACHE"/$1_*_amd64.deb; do
		[ -f "$f" ] || continue
		v=$(dpkg-deb -f "$f" Version) || continue
		if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$bestver"; then
			best=$f bestver=$v
		fi
	done
	echo "$best"
}

# deb_fetch PACKAGE: prints the path of PACKAGE's .deb in the cache,
# downloading the candidate version when the cache lacks it; without
# network (or root) falls back to the newest cached copy.
deb_fetch() {
	local pkg=$1 ver f dl
	ver=$(deb_candidate "$pkg")
	if [ -n "$ver" ]; then
		f=$DEB_CACHE/${pkg}_${ver//:/%3a}_amd64.deb
		if [ -f "$f" ]; then
			echo "$f"
			return
		fi
		if [ "$(id -u)" = 0 ]; then
			mkdir -p "$DEB_CACHE"
			note "downloading $pkg $ver into $DEB_CACHE" >&2
			# Into a folder of its own, then renamed: a build running
			# beside this one never reads a half-written .deb.
			dl=$(mktemp -d "$DEB_CACHE/.download.XXXXXX")
			if (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) &&
				[ -f "$dl/$(basename "$f")" ]; then
				mv -f "$dl/$(basename "$f")" "$f"
				rm -rf "$dl"
				echo "$f"
				return
			fi
			rm -rf "$dl"
			note "apt-get download $pkg=$ver failed (no network?)" >&2
		else
			note "$pkg $ver is not in $DEB_CACHE and only root may download it there" >&2
		fi
	fi
	f=$(deb_newest_cached "$pkg")
	if [ -n "$f" ]; then
		note "using the cached $(basename "$f")" >&2
		echo "$f"
		return
	fi
	die "no .deb of $pkg in $DEB_CACHE, and it cannot be downloaded now: run this once as root with access to Debian's mirrors (apt-get update first), or set CPRD_TEST_DEB_CACHE to a folder that has it"
}

# deb_kernel_package: the linux-image-6.1.*-amd64 package that
# linux-image-amd64 names, or with no apt lists the newest cached one.
deb_kernel_package() {
	local dep kpkg='' f
	if dep=$(apt-cache depends linux-image-amd64 2>/dev/null); then
		kpkg=$(echo "$dep" | sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n1)
	fi
	if [ -z "$kpkg" ]; then
		# No apt lists (or a metapackage that names no 6.1 kernel): the
		# newest 6.1 kernel in the cache.
		f=$(deb_newest_cached 'linux-image-6.1.*-amd64')
		[ -n "$f" ] || die "apt-cache names no linux-image-6.1.*-amd64 for linux-image-amd64 and $DEB_CACHE has none; run apt-get update (as root)"
		kpkg=$(dpkg-deb -f "$f" Package)
	fi
	echo "$kpkg"
}

# deb_unpack KDEB BDEB MODULES ROOT: from the kernel's and busybox-static's
# .debs, the kernel to $WORK/vmlinuz, busybox to ROOT/bin/busybox and each
# module of the list MODULES to ROOT/lib/modules/M.ko; sets KVER.
deb_unpack() {
	local kdeb=$1 bdeb=$2 modules=$3 root=$4 m f members
	KVER=$(dpkg-deb -f "$kdeb" Package)
	KVER=${KVER#linux-image-}
	members=("./boot/vmlinuz-$KVER")
	for m in $modules; do
		# drivers/*/, fs/*/, net/*/: * matches / here.
		members+=("./lib/modules/$KVER/kernel/*/$m.ko")
	done
	mkdir "$WORK/deb"
	dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$WORK/deb" --wildcards "${members[@]}"
	dpkg-deb --fsys-tarfile "$bdeb" | tar -x -C "$WORK/deb" ./bin/busybox
	mkdir -p "$root/bin" "$root/lib/modules"
	install -m 0755 "$WORK/deb/bin/busybox" "$root/bin/busybox"
	for m in $modules; do
		f=$(find "$WORK/deb/lib/modules/$KVER" -name "$m.ko")
		[ -n "$f" ] || die "$m.ko is not in $(basename "$kdeb")"
		install -m 0644 "$f" "$root/lib/modules/$m.ko"
	done
	install -m 0644 "$WORK/deb/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
}

# cpio_root ROOT: ROOT as a cpio (newc) archive on stdout, the same bytes
# for the same files: fixed timestamps, owner root, sorted names.
cpio_root() {
	find "$1" -exec touch -h -d @"$SOURCE_DATE_EPOCH" {} +
	(cd "$1" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible)
}
