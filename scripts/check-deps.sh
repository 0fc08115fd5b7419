#!/usr/bin/env bash
# Dependency hygiene (issue 16): the crates that only read a VM config must not link the VMM's
# KVM or HTTP stacks. qvm-jailer builds a jail from a vm.toml and execs qvm-vmm; qvm derives
# vm.toml files and talks to qvm-vmm over its API (so hyper, through qvm-api's client, is
# expected there). Both need qvm-config, not qvm-vmm. One line per violation says which crate
# reaches what, and through which workspace crates.
# Uses Cargo.lock only (no build, no network). Exit 1 if any rule is broken.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
# forbid CRATE DEP WHY: CRATE's normal (non-dev, non-build) dependency graph must not hold DEP.
forbid() {
    local krate=$1 dep=$2 why=$3 tree
    tree=$(cargo tree -q -p "$krate" -e normal --prefix none)
    if grep -q "^$dep v" <<<"$tree"; then
        # The workspace crates on the way in (the inverted tree, minus $krate itself).
        local via
        via=$(cargo tree -q -p "$krate" -e normal -i "$dep" --prefix none |
            grep -o '^qvm-[a-z-]*' | grep -vx "$krate" | sort -u | paste -sd, -) || true
        echo "check-deps: $krate depends on $dep (through ${via:-?}); $why" >&2
        status=1
    fi
}
config_only="of the VMM it needs only the VM config: depend on qvm-config, not qvm-vmm"
forbid qvm-jailer kvm-ioctls "$config_only"
forbid qvm-jailer hyper "$config_only"
forbid qvm-cli kvm-ioctls "$config_only"
[ $status -eq 0 ] && echo "check-deps: qvm-jailer reaches neither kvm-ioctls nor hyper; qvm-cli not kvm-ioctls"
exit $status
