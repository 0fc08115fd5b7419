#!/usr/bin/env bash
# The main job: installs what is needed, builds qvm-vmm, the guest kernel and initramfs
# (cached in ~/.cache/qvm), and boots examples/hello-vm.toml on the serial console. On a host
# whose /dev/kvm cannot boot Linux it runs inside the nested-KVM lab (see tests/lab/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
kernel_dir=$(guest-kernel-config/build-kernel.sh | tail -n1)
initramfs=$(guest-kernel-config/build-initramfs.sh | tail -n1)
mkdir -p examples/guest
ln -sfn "$kernel_dir/vmlinux" examples/guest/vmlinux
ln -sfn "$kernel_dir/bzImage" examples/guest/bzImage
ln -sfn "$initramfs" examples/guest/initramfs.cpio
cargo build --release --quiet -p qvm-vmm -p qvm-tests --bin qvm-vmm --bin qvm-lab
exec target/release/qvm-lab -- "$PWD/target/release/qvm-vmm" --config "$PWD/examples/${1:-hello-vm}.toml"
