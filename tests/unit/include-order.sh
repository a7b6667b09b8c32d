#!/bin/sh
# The include order of proto/ and daemon/, from the bottom up (see
# docs/design.md, "Layers"): a file may include the headers of its own layer
# and of the layers below, never one above; and no two modules of a layer
# include each other's headers. Fails naming each include that goes against
# it, and each file the table below does not place.
# Usage: include-order.sh SOURCE_DIR
set -eu
src=${1:?usage: include-order.sh SOURCE_DIR}

# The layer of a module (a file's name without .c or .h).
layer() {
	case "$1" in
	client|idl|log|macro|message|server|server-internal|service|subscribers|varlink) echo 0 ;; # proto/
	util) echo 1 ;;
	binary|binwatch|cmdline|cpr-relay|metrics|custody|custody-console|custody-qmp|custody-ram|custody-tap|custody-vfio|disk-grant|disk-overlay|migration|mode|mode-cpr-transfer|pause-slots|mode-local-migrate|mode-cpr-exec|probe|qemu|qemu-record|qmp|spec|systemd|tap|upgrade-journal|users|vfio|machined|snapshot-file) echo 2 ;;
	vm) echo 3 ;;
	manager) echo 4 ;;
	attach|outdated|snapshot|upgrade) echo 5 ;;
	api|api-internal|api-upgrade|api-snapshot) echo 6 ;;
	main) echo 7 ;;
	*) echo none ;;
	esac
}

fail=0
files=0 bad_files=0
edges=$(mktemp)
trap 'rm -f "$edges"' EXIT

for f in "$src"/proto/*.c "$src"/proto/*.h "$src"/daemon/*.c "$src"/daemon/*.h; do
	[ -e "$f" ] || continue
	mod=$(basename "$f"); mod=${mod%.[ch]}
	files=$((files + 1))
	before=$fail fail=0
	from=$(layer "$mod")
	if [ "$from" = none ]; then
		echo "include-order: ${f#"$src"/} is in no layer; add $mod to tests/unit/include-order.sh and docs/design.md"
		fail=1 bad_files=$((bad_files + 1))
		continue
	fi
	for h in $(sed -n 's/^#[[:space:]]*include[[:space:]]*"\([^"]*\)\.h".*/\1/p' "$f"); do
		[ "$h" = "$mod" ] && continue
		to=$(layer "$h")
		if [ "$to" = none ]; then
			echo "include-order: ${f#"$src"/} includes $h.h, which is in no layer"
			fail=1
		elif [ "$to" -gt "$from" ]; then
			echo "include-order: ${f#"$src"/} (layer $from) includes $h.h of a higher layer ($to)"
			fail=1
		elif [ "$to" -eq "$from" ]; then
			echo "$mod $h" >>"$edges"
		fi
	done
	[ "$fail" -eq 0 ] || bad_files=$((bad_files + 1))
	[ "$before" -eq 0 ] || fail=1
done

# Within a layer: no two modules that include each other.
while read -r a b; do
	if grep -qx "$b $a" "$edges"; then
		echo "include-order: $a and $b include each other's headers"
		fail=1
	fi
done <"$edges"

[ "$fail" -eq 0 ] && echo "include-order: proto/ and daemon/ include only their own layer and the ones below"
# Counted per file (a pair that includes each other counts as a failure more).
cycles=$(while read -r a b; do grep -qx "$b $a" "$edges" && echo x; done <"$edges" | wc -l)
echo "$((files - bad_files)) passed, $((bad_files + cycles)) failed"
exit "$fail"
