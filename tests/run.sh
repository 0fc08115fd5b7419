#!/usr/bin/env bash
# Runs all of qvm's checks and tests: formatting, clippy, unit tests, and the integration tests
# that boot real guests (in the nested-KVM lab when this host's /dev/kvm cannot boot Linux).
# Installs what it needs; the guest kernel (~8 min) and lab image are cached in ~/.cache/qvm.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "== guest kernel, initramfs and lab image (cached by input hash)"
guest-kernel-config/build-kernel.sh
guest-kernel-config/build-initramfs.sh
tests/lab/prepare-l1.sh | tail -n1
echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo build --workspace --all-targets --quiet
cargo test --workspace
