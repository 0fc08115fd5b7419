#!/usr/bin/env bash
# Builds a Debian bookworm root filesystem for application guests (weston-terminal, a GTK3 app)
# as a read-only ext4 image, cached outside the tree by a hash of this script and its package
# list. Guests boot our kernel + busybox initramfs and enter it from a qvm.mode=run script with
# `qvm-enter-rootfs /dev/vdb -- cmd args...` (guest/qvm-enter-rootfs): the image
# is attached as a read-only disk and never written, so every guest can share one file.
#
# debootstrap --variant=minbase, then apt-get install --no-install-recommends of $packages in a
# chroot (apt resolves the dependencies; Recommends would double the size), then docs, man
# pages, non-English locales and apt's caches and lists are stripped. Needs root, debootstrap
# and the network (the Debian mirror). Measured 2026-11-27: ~100 s on 2 cores, a 921 MiB image
# (sparse: 724 MiB used, 16k files); about half of it is what zenity 3.44 hard-depends on
# (libwebkit2gtk-4.1, javascriptcoregtk, gstreamer; ~365 MiB installed), weston alone pulls
# mesa's DRI drivers and LLVM.
#
# Usage: guest/build-debian-rootfs.sh   prints the path of rootfs.ext4 (last line)
# Env:   QVM_CACHE           cache root (default ~/.cache/qvm)
#        QVM_DEBIAN_MIRROR   the Debian mirror (default http://deb.debian.org/debian; not part
#                            of the cache key)
set -euo pipefail

# What the guest runs: weston-terminal (in weston), zenity (GTK3; libgtk-3-0 comes with it),
# fontconfig (fc-list, and the font cache built here rather than in every guest), a font and
# the XKB keymaps every Wayland client compiles its keymap from.
packages=(weston zenity fontconfig fonts-dejavu-core xkb-data)
suite=bookworm
mirror=${QVM_DEBIAN_MIRROR:-http://deb.debian.org/debian}

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
if ! command -v debootstrap >/dev/null; then
    echo "build-debian-rootfs: debootstrap is not installed; run: apt-get install debootstrap" >&2
    exit 1
fi
if [[ $(id -u) != 0 ]]; then
    echo "build-debian-rootfs: must run as root (debootstrap, chroot)" >&2
    exit 1
fi
key=$( { cat "$here/build-debian-rootfs.sh"; echo "$suite ${packages[*]}"; } | sha256sum | cut -c1-16)
out="$cache_root/debian-rootfs-$key"
name=rootfs.ext4
if [[ -f "$out/$name" ]]; then
    echo "$out/$name"
    exit 0
fi
# One build per key at a time (tests may ask concurrently): wait for a build that is already
# running, then use its result.
mkdir -p "$cache_root"
exec 9>"$out.lock"
flock 9
if [[ -f "$out/$name" ]]; then
    echo "$out/$name"
    exit 0
fi

tree="$out.tmp/tree"
# Unmounts whatever is still mounted under the tree (debootstrap's or our /proc), and removes
# the unfinished build only when nothing is: rm -rf must never walk into a mounted /proc or /dev.
cleanup() {
    local m
    for m in $(awk -v p="$tree/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    if awk -v p="$tree/" 'index($2, p) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        echo "build-debian-rootfs: mounts left under $tree; not removing it" >&2
        return
    fi
    rm -rf "$out.tmp"
}
trap cleanup EXIT
cleanup
mkdir -p "$tree"
start=$SECONDS
echo "build-debian-rootfs: debootstrap $suite (key $key) in $tree" >&2
debootstrap --variant=minbase --arch=amd64 "$suite" "$tree" "$mirror" >&2

# Never unpack docs, man pages or other languages' messages (copyrights stay), and start no
# services while installing.
cat >"$tree/etc/dpkg/dpkg.cfg.d/01-qvm-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-include=/usr/share/locale/en/*
path-include=/usr/share/locale/en_GB/*
path-exclude=/usr/share/help/*
path-include=/usr/share/help/C/*
EOF
cat >"$tree/etc/apt/apt.conf.d/01-qvm-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
printf '#!/bin/sh\nexit 101\n' >"$tree/usr/sbin/policy-rc.d"
chmod 0755 "$tree/usr/sbin/policy-rc.d"
cat >"$tree/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
EOF
cp /etc/resolv.conf "$tree/etc/resolv.conf"
mount -t proc proc "$tree/proc"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
chroot "$tree" apt-get update -qq >&2
chroot "$tree" apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
chroot "$tree" apt-get clean >&2
chroot "$tree" dpkg-query -W -f='${Installed-Size}\t${Package}\n' | sort -n | tail -n 12 | sed 's/^/  largest (KiB): /' >&2
umount "$tree/proc"

# Strip what a read-only application image never uses.
rm -f "$tree/usr/sbin/policy-rc.d" "$tree/etc/resolv.conf"
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/* "$tree"/var/cache/debconf/*-old \
    "$tree"/var/lib/dpkg/*-old "$tree"/usr/share/man/* "$tree"/usr/share/info/* \
    "$tree"/usr/share/lintian "$tree"/tmp/* "$tree"/var/tmp/*
find "$tree/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$tree/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$tree/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'en' ! -name 'en_GB' ! -name locale.alias \
    -exec rm -rf {} +
find "$tree/usr/share/help" -mindepth 1 -maxdepth 1 ! -name C -exec rm -rf {} + 2>/dev/null || true
find "$tree/var/log" -type f -delete
echo qvm-debian >"$tree/etc/hostname"
# fontconfig's cache is valid only while each font directory's mtime matches it to the
# nanosecond, and mkfs.ext4 -d keeps whole seconds: round those mtimes down and rebuild the
# cache, or every guest rescans the fonts into its (tmpfs) home on each start.
while IFS= read -r -d '' d; do
    touch -d "@$(stat -c %Y "$d")" "$d"
done < <(find "$tree/usr/share/fonts" "$tree/usr/local/share/fonts" -type d -print0 2>/dev/null)
chroot "$tree" fc-cache -f >&2

# content + 25% slack; inodes for every file + 25%. No journal: guests only mount it read-only.
used_mib=$(du -sx --block-size=1M "$tree" | cut -f1)
files=$(find "$tree" -xdev | wc -l)
size_mib=$((used_mib * 5 / 4 + 16))
mkfs.ext4 -q -F -L qvm-debian -m 0 -O ^has_journal -N $((files * 5 / 4 + 1024)) \
    -d "$tree" "$out.tmp/$name" "${size_mib}M" >&2
rm -rf "$tree"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-debian-rootfs: $out/$name: ${size_mib} MiB image, ${used_mib} MiB in $files files, built in $((SECONDS - start)) s" >&2
echo "$out/$name"
