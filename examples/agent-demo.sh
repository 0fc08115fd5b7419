#!/usr/bin/env bash
# Boots examples/agent-vm.toml and, from the host side, runs commands in the guest over vsock
# with qvm-run (the launcher pattern: `qvm-run --vsock VM.vsock -- firefox`). Prepares what it
# needs like examples/run.sh; in the nested-KVM lab the whole demo runs inside the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != --inside ]]; then
    QVM_EXAMPLE_PREPARE_ONLY=1 examples/run.sh
    cargo build --release --quiet -p qvm-agent --bin qvm-run
    exec target/release/qvm-lab -- bash "$PWD/examples/agent-demo.sh" --inside
fi
sock=/tmp/qvm-agent-vm.vsock
run() { echo "host\$ qvm-run -- $*"; target/release/qvm-run --vsock "$sock" -- "$@"; }
target/release/qvm-vmm --config examples/agent-vm.toml </dev/null >/tmp/qvm-agent-vm.log 2>&1 &
vmm=$!
for _ in $(seq 300); do
    target/release/qvm-run --vsock "$sock" -- true 2>/dev/null && break
    kill -0 $vmm 2>/dev/null || { cat /tmp/qvm-agent-vm.log; exit 1; }
    sleep 0.2
done
run uname -sr
run sh -c 'echo "the guest has $(nproc) vCPU, root on $(awk '\''$2 == "/" {print $1}'\'' /proc/mounts)"'
echo "typed on the host" | run tr a-z A-Z
run sh -c 'exit 7' || echo "(exit status $? came back)"
run poweroff -f >/dev/null 2>&1 || true
wait $vmm && echo "qvm-vmm exited 0"
