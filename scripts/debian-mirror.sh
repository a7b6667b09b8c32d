#!/bin/bash
# Prints the Debian archive this machine's apt already uses for Debian 12
# (the URI of its "bookworm ... main" source, without the trailing slash),
# so that debootstrap and the added backports sources fetch from the same
# place as apt does. $CPRD_TEST_MIRROR overrides it. Needs apt's lists
# (apt-get update) to be in place.
set -euo pipefail
if [ -n "${CPRD_TEST_MIRROR:-}" ]; then
	echo "${CPRD_TEST_MIRROR%/}"
	exit 0
fi
# shellcheck disable=SC2016 # apt's format, not the shell's
uri=$(apt-get indextargets --format '$(RELEASE) $(COMPONENT) $(REPO_URI)' 'Created-By: Packages' 2>/dev/null |
	awk '$1 == "bookworm" && $2 == "main" {print $3; exit}')
if [ -z "$uri" ]; then
	echo "debian-mirror: apt has no 'bookworm main' source (run apt-get update, or set CPRD_TEST_MIRROR)" >&2
	exit 1
fi
echo "${uri%/}"
