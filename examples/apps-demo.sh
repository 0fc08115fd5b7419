#!/usr/bin/env bash
# Boots examples/apps-vm.toml: weston-terminal from the Debian image in a VM, on the host's
# Wayland desktop through virtio-wl and the guest's qvm-wl-proxy (issue 7).
#   * With hardware KVM and a Wayland session ($WAYLAND_DISPLAY), the terminal opens on your
#     desktop; type into it, close it, and the VM powers off.
#   * Where /dev/kvm cannot boot Linux, it runs in the nested-KVM lab against a headless weston
#     there, and saves a screenshot of that weston's screen (the path is printed).
# Prepares what it needs like examples/run.sh; the Debian image is built once (~2 minutes) and
# cached in ~/.cache/qvm.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != --inside ]]; then
    QVM_EXAMPLE_PREPARE_ONLY=1 examples/run.sh
    ln -sfn "$(guest/build-initramfs.sh | tail -n1)" examples/guest/initramfs.cpio
    ln -sfn "$(guest/build-debian-rootfs.sh | tail -n1)" examples/guest/debian.ext4
    # The guest's script (a raw disk: the script, then zeros; init runs it).
    script='qvm-enter-rootfs /dev/vdb -- sh -c "qvm-wl-proxy >/tmp/proxy.log 2>&1 & sleep 1; echo QVM-APPS-STARTED; weston-terminal; echo QVM-APPS-CLOSED"
exit $?
'
    printf '%s' "$script" >examples/guest/apps-script.img
    truncate -s 4096 examples/guest/apps-script.img
    exec target/release/qvm-lab -- bash "$PWD/examples/apps-demo.sh" --inside
fi

vmm=$PWD/target/release/qvm-vmm
config=$PWD/examples/apps-vm.toml
if [[ -n "${WAYLAND_DISPLAY:-}" && -S "${XDG_RUNTIME_DIR:-/nonexistent}/$WAYLAND_DISPLAY" ]]; then
    # Your desktop: the config names "wayland-0" in $XDG_RUNTIME_DIR; point that at yours.
    rt=$(mktemp -d /tmp/qvm-apps.XXXXXX)
    chmod 700 "$rt"
    ln -s "$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY" "$rt/wayland-0"
    echo "qvm: weston-terminal from the VM opens on your desktop; close it to stop the VM"
    XDG_RUNTIME_DIR=$rt "$vmm" --config "$config"
    status=$?
    rm -rf "$rt"
    exit $status
fi

# No desktop here (the lab): a headless weston, a screenshot once the terminal is up.
rt=/tmp/qvm-apps-rt
rm -rf "$rt"; mkdir -p "$rt"; chmod 700 "$rt"
export XDG_RUNTIME_DIR=$rt
printf '[core]\nidle-time=0\n[shell]\nstartup-animation=none\nanimation=none\npanel-position=none\nlocking=false\n' >"$rt/weston.ini"
weston --config="$rt/weston.ini" --backend=headless-backend.so --socket=wayland-0 --width=1024 \
    --height=640 --use-pixman --debug --idle-time=0 >"$rt/weston.log" 2>&1 &
weston=$!
for _ in $(seq 300); do [[ -S $rt/wayland-0 ]] && break; sleep 0.1; done
WAYLAND_DISPLAY=wayland-0 weston-debug proto >"$rt/proto.log" 2>&1 &
proto=$!
"$vmm" --config "$config" </dev/null >"$rt/vmm.log" 2>&1 &
pid=$!
echo "qvm: booting the VM; waiting for weston-terminal"
for _ in $(seq 600); do
    grep -q QVM-APPS-STARTED "$rt/vmm.log" && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.5
done
sleep 30   # weston-terminal starts in a few seconds on hardware, slower under TCG
out=${QVM_LAB_SHARE:-/tmp}/apps-screenshot.png
(cd "$rt" && WAYLAND_DISPLAY=wayland-0 weston-screenshooter >/dev/null 2>&1 && mv wayland-screenshot-*.png "$out") &&
    echo "qvm: screenshot of the host's weston with the VM's terminal: $out"
grep -o 'set_title("[^"]*")' "$rt/proto.log" | sort -u | sed 's/^/qvm: window title seen by weston: /' || true
kill $pid 2>/dev/null; wait $pid 2>/dev/null || true
kill $proto $weston 2>/dev/null || true
grep -E 'QVM-|qvm-' "$rt/vmm.log" | tail -n 5
