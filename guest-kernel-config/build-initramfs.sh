#!/usr/bin/env bash
# Builds the qvm guest initramfs (busybox-static + guest-kernel-config/init) as an uncompressed
# newc cpio, cached outside the tree by a hash of its inputs.
#
# Usage: guest-kernel-config/build-initramfs.sh     prints the path of initramfs.cpio
# Env:   QVM_CACHE              cache root (default ~/.cache/qvm)
#        QVM_INITRAMFS_EXTRA    a directory whose contents are copied into the image root
#                               (our own static guest tools go there)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
busybox=/bin/busybox
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || [[ ! -x $busybox ]]; then
    echo "build-initramfs: busybox-static is not installed; run: apt-get install busybox-static" >&2
    exit 1
fi
extra=${QVM_INITRAMFS_EXTRA:-}
key=$( {
    cat "$here/init" "$here/build-initramfs.sh"
    sha256sum < "$busybox"
    if [[ -n "$extra" ]]; then (cd "$extra" && find . -type f -print0 | sort -z | xargs -0 sha256sum); fi
} | sha256sum | cut -c1-16)
out="$cache_root/guest-initramfs-$key"
if [[ -f "$out/initramfs.cpio" ]]; then
    echo "$out/initramfs.cpio"
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
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'export PS1="qvm-guest# " PATH=/bin:/sbin:/usr/bin:/usr/sbin' > "$root/etc/profile"
if [[ -n "$extra" ]]; then cp -a "$extra"/. "$root"/; fi
mkdir -p "$out.tmp"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --owner 0:0 --quiet) > "$out.tmp/initramfs.cpio"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out/initramfs.cpio"
