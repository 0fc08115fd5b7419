#!/usr/bin/env bash
# The main job: installs what is needed, builds qvm-vmm, the guest kernel and initramfs
# (cached in ~/.cache/qvm), and boots examples/hello-vm.toml on the serial console. On a host
# whose /dev/kvm cannot boot Linux it runs inside the nested-KVM lab (see tests/lab/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
kernel_dir=$(guest/build-kernel.sh | tail -n1)
rootfs=$(guest/build-initramfs.sh --rootfs | tail -n1)
mkdir -p examples/guest
ln -sfn "$kernel_dir/vmlinux" examples/guest/vmlinux
ln -sfn "$kernel_dir/bzImage" examples/guest/bzImage
# The guest writes to its root: give it a fresh copy of the cached image.
cp --sparse=always "$rootfs" examples/guest/rootfs.ext4
cargo build --release --quiet -p qvm-vmm -p qvm-tests --bin qvm-vmm --bin qvm-lab
[[ -n "${QVM_EXAMPLE_PREPARE_ONLY:-}" ]] && exit 0
exec target/release/qvm-lab -- "$PWD/target/release/qvm-vmm" --config "$PWD/examples/${1:-hello-vm}.toml"
