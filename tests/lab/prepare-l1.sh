#!/usr/bin/env bash
# Prepares the "lab" L1 VM: a Debian generic kernel plus a busybox initramfs whose /init
# (tests/lab/l1-init.sh) loads kvm_amd, mounts the host root over 9p, switches root to it and runs
# the command agent. See /work/shared/KVM-LAB.md for why the lab exists.
#
# Usage: tests/lab/prepare-l1.sh     prints (last stdout line) a directory holding
#                                    vmlinuz and initrd.cpio
# Env:   QVM_CACHE   cache root (default ~/.cache/qvm)
#
# The result is cached in $QVM_CACHE/lab-l1-<hash>; the hash covers this script, l1-init.sh,
# the kernel package (its name carries the version) and busybox version; a second run is instant.
# On a fresh Debian bookworm machine (root, apt reachable) it installs what it needs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${QVM_CACHE:-$HOME/.cache/qvm}
kver=6.12.117+deb12-amd64
kpkg=linux-image-$kver
# Modules loaded at L1 boot, in this order after dependency resolution.
required_mods=(netfs 9pnet 9pnet_virtio 9p irqbypass kvm ccp kvm-amd)
# Extras for later work (networking, vsock); a missing one is only a warning.
optional_mods=(tun veth bridge vhost_net vhost_vsock)

log() { echo "prepare-l1: $*" >&2; }

apt_updated=0
apt_update_once() {
    if [[ $apt_updated == 0 ]]; then
        log "apt-get update"
        apt-get update -qq >&2
        apt_updated=1
    fi
}
apt_install() {
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >&2 || {
        apt_update_once
        apt-get install -y -qq --no-install-recommends "$@" >&2
    }
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in qemu-system-x86 busybox-static kmod cpio xz-utils; do
    installed "$p" || missing+=("$p")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || { log "missing packages ${missing[*]}; run as root or: apt-get install ${missing[*]}"; exit 1; }
    apt_install "${missing[@]}"
fi

bbv=$(dpkg-query -W -f='${Version}' busybox-static)
# The package name carries the kernel version (6.12.117+deb12); keying on it rather than on the
# apt revision keeps the cached path free of a slow apt-cache lookup (~1.5 s).
key=$( { cat "$here/prepare-l1.sh" "$here/l1-init.sh"; echo "$kpkg busybox-static $bbv"; } | sha256sum | cut -c1-16)
out="$cache_root/lab-l1-$key"
if [[ -f $out/vmlinuz && -f $out/initrd.cpio ]]; then
    echo "$out"
    exit 0
fi

kernel_version() { apt-cache show --no-all-versions "$kpkg" 2>/dev/null | awk '/^Version:/ {print $2; exit}'; }
kv=$(kernel_version || true)
if [[ -z $kv ]]; then
    apt_update_once
    kv=$(kernel_version || true)
fi
[[ -n $kv ]] || { log "apt does not know $kpkg; add bookworm-security to the apt sources (deb http://deb.debian.org/debian-security bookworm-security main)"; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/qvm-lab-l1.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building L1 image ($kpkg $kv, key $key) in $work"
chmod 755 "$work"   # lets apt download as _apt without a warning
cd "$work"
if ! apt-get download -qq "$kpkg=$kv" >&2; then
    apt_update_once
    apt-get download -qq "$kpkg=$kv" >&2
fi
dpkg -x ./"$kpkg"_*.deb kroot
moddir=kroot/lib/modules/$kver
[[ -f kroot/boot/vmlinuz-$kver && -d $moddir ]] || { log "unexpected layout of $kpkg"; exit 1; }

# name -> decompressed .ko path (module names use '_' and '-' interchangeably)
declare -A mod_file
mkdir -p ko
find_mod() {
    local name=$1 alt f
    [[ -n ${mod_file[$name]:-} ]] && { echo "${mod_file[$name]}"; return 0; }
    alt=${name//_/-}
    f=$(find "$moddir/kernel" \( -name "$name.ko*" -o -name "$alt.ko*" -o -name "${name//-/_}.ko*" \) | head -n1)
    [[ -n $f ]] || return 1
    local base; base=$(basename "$f"); base=${base%%.ko*}
    case $f in
        *.xz) xz -dc "$f" > "ko/$base.ko" ;;
        *.zst) zstd -qdc "$f" > "ko/$base.ko" ;;
        *) cp "$f" "ko/$base.ko" ;;
    esac
    mod_file[$name]=ko/$base.ko
    echo "ko/$base.ko"
}

declare -A seen
order=()
resolve() { # name kind
    local name=$1 kind=$2 f deps d
    [[ -n ${seen[$name]:-} ]] && return 0
    f=$(find_mod "$name") || { if [[ $kind == required ]]; then log "module $name not found in $kpkg"; exit 1; else log "warning: optional module $name not found"; return 0; fi; }
    seen[$name]=1
    deps=$(modinfo -F depends "$f")
    for d in ${deps//,/ }; do resolve "$d" "$kind"; done
    order+=("$(basename "$f" .ko) $kind")
}
for m in "${required_mods[@]}"; do resolve "$m" required; done
for m in "${optional_mods[@]}"; do resolve "$m" optional; done

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,host,tmp,etc,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] && continue
    ln -s busybox "$root/bin/$applet"
done
cp ko/*.ko "$root/lib/modules/"
printf '%s\n' "${order[@]}" > "$root/etc/qvm-lab-modules"
install -m 0755 "$here/l1-init.sh" "$root/init"
mknod "$root/dev/console" c 5 1
mknod "$root/dev/null" c 1 3
log "modules: $(cut -d' ' -f1 "$root/etc/qvm-lab-modules" | tr '\n' ' ')"

mkdir -p "$out.tmp.$$"
cp "kroot/boot/vmlinuz-$kver" "$out.tmp.$$/vmlinuz"
echo "$kpkg $kv" > "$out.tmp.$$/version"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out.tmp.$$/initrd.cpio"
rm -rf "$out"
mv "$out.tmp.$$" "$out"
log "done: $out"
echo "$out"
