#!/usr/bin/env bash
# Builds the virtio-wl guest driver (virtio-wl/guest/driver) as virtio_wl.ko, warning-free
# (W=1, -Werror), against the qvm guest kernel from build-kernel.sh (which builds it first if
# needed). The module is cached outside the tree, keyed by a hash of the kernel, the driver
# sources and this script.
#
# Usage: guest/build-wl-module.sh             prints the path of virtio_wl.ko
#        guest/build-wl-module.sh --debian-headers [DIR]
#                                  the same against Debian's linux-headers-* (DIR: a headers
#                                  tree; default: the running kernel's, else the newest
#                                  /usr/src/linux-headers-*-amd64)
# Env:   QVM_CACHE   cache root (default ~/.cache/qvm)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
driver=$(cd "$here/../virtio-wl/guest/driver" && pwd)
sources=("$driver/virtio_wl.c" "$driver/virtio_wl.h" "$driver/Kbuild")

if [[ "${1:-}" == --debian-headers ]]; then
    kdir=${2:-}
    if [[ -z "$kdir" ]]; then
        if [[ -f "/lib/modules/$(uname -r)/build/Makefile" ]]; then
            kdir=/lib/modules/$(uname -r)/build
        else
            kdir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
        fi
    fi
    if [[ -z "$kdir" || ! -f "$kdir/Makefile" ]]; then
        echo "build-wl-module: no Debian kernel headers found; install linux-headers-<version>-amd64 or pass DIR" >&2
        exit 1
    fi
    kdir=$(cd "$kdir" && pwd -P)
    kernel_id="debian $kdir $(cat "$kdir/include/config/kernel.release" 2>/dev/null || true) $(sha256sum < "$kdir/Module.symvers" 2>/dev/null || true)"
    name=virtio-wl-module-debian
else
    kernel_dir=$("$here/build-kernel.sh" | tail -n1)
    kdir=$kernel_dir/build
    if [[ ! -f "$kdir/Makefile" ]]; then
        echo "build-wl-module: $kdir is missing (kernel cache from an older build-kernel.sh?)" >&2
        exit 1
    fi
    kernel_id="qvm $(basename "$kernel_dir")"
    name=virtio-wl-module
fi

key=$( {
    echo "$kernel_id"
    cat "${sources[@]}" "$here/build-wl-module.sh"
} | sha256sum | cut -c1-16)
out="$cache_root/$name-$key"
if [[ -f "$out/virtio_wl.ko" ]]; then
    echo "$out/virtio_wl.ko"
    exit 0
fi

# Build in a scratch copy: the source tree stays clean (and may be read-only).
work=$(mktemp -d "${TMPDIR:-/tmp}/qvm-wl-module.XXXXXX")
tmp=
trap 'rm -rf "$work" ${tmp:+"$tmp"}' EXIT
cp "${sources[@]}" "$work"/
echo "build-wl-module: building virtio_wl.ko against $kdir (key $key)" >&2
make -s -C "$kdir" M="$work" W=1 KCFLAGS=-Werror modules >&2
mkdir -p "$cache_root"
tmp=$(mktemp -d "$cache_root/.$name-$key.XXXXXX")
chmod 0755 "$tmp"
cp "$work/virtio_wl.ko" "$tmp/"
# A concurrent run may have won the race: its identical result stays (trap removes ours).
mv -T "$tmp" "$out" 2>/dev/null && tmp=
echo "$out/virtio_wl.ko"
