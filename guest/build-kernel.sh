#!/usr/bin/env bash
# Builds the qvm guest kernel (vmlinux + bzImage) from Debian's linux-source-6.12 package.
#
# The result is cached outside the tree, keyed by a hash of the config fragment, this script
# and the exact source package version, so a second run is instant and a fresh machine
# still builds it (about 8 minutes on 2 cores).
#
# Usage: guest/build-kernel.sh        prints the cache directory holding
#                                      vmlinux, bzImage, .config and build/
#                                      (what out-of-tree module builds need:
#                                      make -C <dir>/build M=<module dir> modules)
# Env:   QVM_CACHE   cache root (default ~/.cache/qvm)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
src_pkg=linux-source-6.12
tarball=/usr/src/linux-source-6.12.tar.xz

if ! dpkg-query -W -f='${Status}' "$src_pkg" 2>/dev/null | grep -q 'install ok installed'; then
    echo "build-kernel: $src_pkg is not installed; run: apt-get install $src_pkg" >&2
    exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg")
key=$( { cat "$here/qvm-guest.config" "$here/build-kernel.sh"; echo "$src_version"; } | sha256sum | cut -c1-16)
out="$cache_root/guest-kernel-$key"

if [[ -f "$out/vmlinux" && -f "$out/bzImage" ]]; then
    echo "$out"
    exit 0
fi
# One build per key at a time (tests and build-wl-module.sh may ask concurrently): wait for a
# build that is already running, then use its result.
mkdir -p "$cache_root"
exec 9>"$out.lock"
flock 9
if [[ -f "$out/vmlinux" && -f "$out/bzImage" ]]; then
    echo "$out"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/qvm-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-kernel: building guest kernel ($src_pkg $src_version, key $key) in $work" >&2
tar -C "$work" -xf "$tarball"
cd "$work"/linux-source-6.12

make -s tinyconfig >&2
opts=()
while read -r line; do
    line=${line%%#*}
    [[ -z "${line// }" ]] && continue
    name=${line%%=*}; name=${name#CONFIG_}; val=${line#*=}
    case "$val" in
        y) opts+=(-e "$name") ;;
        m) opts+=(-m "$name") ;;
        n) opts+=(-d "$name") ;;
        *) opts+=(--set-val "$name" "$val") ;;
    esac
done < "$here/qvm-guest.config"
scripts/config "${opts[@]}"
make -s olddefconfig >&2

# Every requested option must have survived olddefconfig (a missing dependency silently drops one).
missing=0
while read -r line; do
    line=${line%%#*}
    [[ -z "${line// }" ]] && continue
    name=${line%%=*}; val=${line#*=}
    if [[ "$val" == n ]]; then
        grep -q "^$name=" .config && { echo "build-kernel: $name still set" >&2; missing=1; }
    elif ! grep -q "^$name=$val\$" .config; then
        echo "build-kernel: $name=$val did not survive olddefconfig (missing dependency?)" >&2
        missing=1
    fi
done < "$here/qvm-guest.config"
[[ $missing == 0 ]] || exit 1

make -j"$(nproc)" vmlinux bzImage modules >&2
mkdir -p "$out.tmp"
cp vmlinux arch/x86/boot/bzImage .config "$out.tmp"/
# Headers, generated files, Module.symvers and host tools (modpost, objtool) for external
# modules (virtio-wl/guest/driver): the same tree Debian's linux-headers packages ship.
srctree=. objtree=. SRCARCH=x86 ARCH=x86 CC=gcc HOSTCC=gcc MAKE=make \
    scripts/package/install-extmod-build "$out.tmp/build" >&2
cp .config "$out.tmp/build/.config"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
