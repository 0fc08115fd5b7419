#!/usr/bin/env bash
# Installs the Debian packages qvm's build, example and tests need (idempotent).
set -euo pipefail
pkgs=(
    linux-source-6.12 bc flex bison libelf-dev libssl-dev cpio xz-utils kmod   # guest kernel
    busybox-static                                                            # guest + lab userspace
    qemu-system-x86                                                           # lab L1, bench peer
    acpica-tools                                                              # iasl checks our ACPI tables
    e2fsprogs file                                                            # disk images, debugfs
    debootstrap                                                               # Debian application image (build-debian-rootfs.sh)
    valgrind                                                                  # blk cost bench
    build-essential                                                           # libFuzzer (cargo fuzz)
    libseccomp-dev libcap-ng-dev                                              # building virtiofsd
    python3-venv                                                              # api-conformance.sh (schemathesis)
    weston xvfb                                                               # virtio-wl: a real compositor (headless; x11 backend for the clipboard)
    xdotool                                                                   # typing into weston (x11 backend) for the Wayland app tests
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
command -v cargo >/dev/null || { echo "install-deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || {
    echo "install-deps: installing cargo-fuzz" >&2
    cargo install --locked --quiet cargo-fuzz
}
