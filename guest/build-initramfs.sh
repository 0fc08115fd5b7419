#!/usr/bin/env bash
# Builds the qvm guest initramfs (busybox-static + guest/init) as an uncompressed
# newc cpio, cached outside the tree by a hash of its inputs.
#
# Usage: guest/build-initramfs.sh            prints the path of initramfs.cpio
#        guest/build-initramfs.sh --rootfs   the same tree as an ext4 image
#                                                          (rootfs.ext4, 64 MiB; boot it with
#                                                          root=/dev/vda rw init=/init). Copy it
#                                                          before booting: guests write to it.
# Env:   QVM_CACHE              cache root (default ~/.cache/qvm)
#        QVM_INITRAMFS_EXTRA    a directory whose contents are copied into the image root
#                               (our own static guest tools go there)
#        QVM_WL_MODULE          the virtio-wl driver to put in /lib/modules/virtio_wl.ko (default:
#                               what build-wl-module.sh builds; `none`: no driver in the image)
set -euo pipefail
format=cpio
[[ "${1:-}" == --rootfs ]] && format=ext4

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
busybox=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || [[ ! -x $busybox ]]; then
    echo "build-initramfs: busybox-static is not installed; run: apt-get install busybox-static" >&2
    exit 1
fi
extra=${QVM_INITRAMFS_EXTRA:-}
# Our static guest tools (qvm-agent for qvm-run, qvm-vsock for tests and benches, qvm-wl-demo
# for the virtio-wl tests and bench, qvm-wl-proxy: the Wayland socket of guest applications).
workspace=$(cd "$here/.." && pwd)
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --manifest-path "$workspace/Cargo.toml" \
    -p qvm-agent --bin qvm-agent --bin qvm-vsock -p qvm-wl-client --bin qvm-wl-demo --bin qvm-wl-proxy --target "$target" >&2
tools=("$workspace/target/$target/release/qvm-agent" "$workspace/target/$target/release/qvm-vsock"
       "$workspace/target/$target/release/qvm-wl-demo" "$workspace/target/$target/release/qvm-wl-proxy")
# The virtio-wl guest driver, built against the guest kernel; /init loads it.
wl_module=${QVM_WL_MODULE:-}
if [[ -z "$wl_module" ]]; then
    wl_module=$("$here/build-wl-module.sh" | tail -n1)
fi
if [[ "$wl_module" != none && ! -f "$wl_module" ]]; then
    echo "build-initramfs: virtio-wl module $wl_module not found" >&2
    exit 1
fi
key=$( {
    echo "$format"
    cat "$here/init" "$here/qvm-enter-rootfs" "$here/build-initramfs.sh"
    sha256sum < "$busybox"
    sha256sum "${tools[@]}" | cut -d' ' -f1
    if [[ "$wl_module" == none ]]; then echo "no wl module"; else sha256sum < "$wl_module"; fi
    if [[ -n "$extra" ]]; then (cd "$extra" && find . -type f -print0 | sort -z | xargs -0 sha256sum); fi
} | sha256sum | cut -c1-16)
name=initramfs.cpio
[[ $format == ext4 ]] && name=rootfs.ext4
out="$cache_root/guest-$format-$key"
if [[ -f "$out/$name" ]]; then
    echo "$out/$name"
    exit 0
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/qvm-initramfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root}
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ "$applet" == busybox ]] && continue
    ln -sf busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "${tools[@]}" "$root/bin/"
# Enters the Debian application image (build-debian-rootfs.sh) on a disk: qvm-enter-rootfs
# /dev/vdb -- cmd args...
install -m 0755 "$here/qvm-enter-rootfs" "$root/bin/qvm-enter-rootfs"
if [[ "$wl_module" != none ]]; then
    install -D -m 0644 "$wl_module" "$root/lib/modules/virtio_wl.ko"
fi
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'export PS1="qvm-guest# " PATH=/bin:/sbin:/usr/bin:/usr/sbin' > "$root/etc/profile"
if [[ -n "$extra" ]]; then cp -a "$extra"/. "$root"/; fi
mkdir -p "$out.tmp"
if [[ $format == cpio ]]; then
    (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --owner 0:0 --quiet) > "$out.tmp/$name"
else
    mkdir -p "$root/mnt"
    mkfs.ext4 -q -F -L qvm-root -d "$root" "$out.tmp/$name" 64M >&2
fi
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out/$name"
