# shellcheck shell=bash
# Fetching Debian packages for the test guests, once, into a cache: sourced
# by build.sh (the Linux test guest) and tests/vfio-lab/build-l1.sh (the
# VFIO lab's L1 guest). Bash; the caller has set -euo pipefail and defines
# die MESSAGE (exits) and note MESSAGE.
#
# The .debs are kept in $DEB_CACHE ($CPRD_TEST_DEB_CACHE, default
# /var/cache/cprd-test/debs), so a rebuild needs no network. If the version
# apt would install is not cached and cannot be downloaded (no network, not
# root), the newest cached one is used.

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
