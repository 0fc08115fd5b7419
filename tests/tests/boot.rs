//! Real Linux guests booted by qvm-vmm: the project-built kernel (bzImage and ELF/PVH) with the
//! project-built busybox initramfs, in the nested-KVM lab (or directly on a hardware-KVM host).
//! Every test checks what the guest itself reported.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use qvm_tests::fixtures::{guest_initramfs, guest_kernel, vm_toml, vmm_binary, USERSPACE_MARKER};
use qvm_tests::lab::{self, CmdOutput};
use qvm_tests::util::vmm_apart;
use qvm_tests::vm::vmm_command;

/// Nested KVM under TCG is slow and the host is shared: generous, but bounded.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet";

#[derive(Clone, Copy)]
enum Kernel {
    BzImage,
    Vmlinux,
}

fn kernel_path(k: Kernel) -> &'static Path {
    let g = guest_kernel();
    match k {
        Kernel::BzImage => &g.bzimage,
        Kernel::Vmlinux => &g.vmlinux,
    }
}

/// Writes a VM config into the lab share (visible at the same path inside the lab).
fn config(name: &str, k: Kernel, vcpus: u8, mode: &str, extra: &str) -> PathBuf {
    let dir = lab::lab_share_dir();
    let path = dir.join(format!("{name}.toml"));
    let cmdline = format!("{CMDLINE} qvm.mode={mode}");
    let mut text = vm_toml(
        kernel_path(k),
        Some(guest_initramfs()),
        vcpus,
        256,
        &cmdline,
    );
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    path
}

/// Boots a VM in the lab with stdin from /dev/null; returns everything it printed and its code.
fn boot(name: &str, k: Kernel, vcpus: u8, mode: &str) -> CmdOutput {
    let cfg = config(name, k, vcpus, mode, "");
    let script = vmm_apart(&vmm_command(&cfg, 500));
    lab::run(&script, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn marker_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains(USERSPACE_MARKER))
        .unwrap_or_else(|| panic!("no userspace marker in:\n{out}"))
}

fn check_hello(name: &str, k: Kernel, vcpus: u8) {
    let r = boot(name, k, vcpus, "hello");
    assert_eq!(r.code, 0, "{name}: exit code; output:\n{}", r.output);
    let m = marker_line(&r.output);
    assert!(m.contains(&format!("nproc={vcpus} ")), "{name}: {m}");
    assert!(
        r.output.contains("Hello from a qvm guest: Linux 6.12"),
        "{}",
        r.output
    );
    assert!(
        r.output.contains(&format!("{vcpus} vCPU(s)")),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("qvm-vmm: guest powered off"),
        "{}",
        r.output
    );
}

#[test]
fn bzimage_boots_to_userspace_with_1_vcpu() {
    check_hello("bz-1", Kernel::BzImage, 1);
}

#[test]
fn bzimage_boots_to_userspace_with_2_vcpus() {
    check_hello("bz-2", Kernel::BzImage, 2);
}

#[test]
fn vmlinux_pvh_boots_to_userspace_with_1_vcpu() {
    check_hello("elf-1", Kernel::Vmlinux, 1);
}

#[test]
fn vmlinux_pvh_boots_to_userspace_with_2_vcpus() {
    check_hello("elf-2", Kernel::Vmlinux, 2);
}

#[test]
fn guest_reboot_stops_the_vmm_with_exit_0() {
    let r = boot("reboot", Kernel::Vmlinux, 1, "reboot");
    assert_eq!(r.code, 0, "{}", r.output);
    marker_line(&r.output);
    assert!(r.output.contains("qvm-vmm: guest rebooted"), "{}", r.output);
}

#[test]
fn guest_poweroff_stops_the_vmm_with_exit_0() {
    let r = boot("poweroff", Kernel::BzImage, 2, "poweroff");
    assert_eq!(r.code, 0, "{}", r.output);
    marker_line(&r.output);
    assert!(
        r.output.contains("qvm-vmm: guest powered off"),
        "{}",
        r.output
    );
}

#[test]
fn guest_panic_exits_nonzero_with_a_message() {
    let r = boot("panic", Kernel::Vmlinux, 1, "panic");
    assert_eq!(r.code, 3, "{}", r.output);
    assert!(r.output.contains("QVM-PANIC-NOW"), "{}", r.output);
    assert!(
        r.output.contains("Kernel panic - not syncing"),
        "{}",
        r.output
    );
    assert!(
        r.output.contains("qvm-vmm: guest kernel panicked"),
        "{}",
        r.output
    );
}

#[test]
fn console_can_go_to_a_file() {
    let log = lab::lab_share_dir().join("console-file.log");
    let _ = std::fs::remove_file(&log);
    let cfg = config(
        "console-file",
        Kernel::Vmlinux,
        1,
        "hello",
        &format!(
            "\n[console]\nmode = \"file\"\npath = {:?}\n",
            log.display().to_string()
        ),
    );
    let script = format!(
        "exec timeout 500 {} --config {} </dev/null",
        vmm_binary().display(),
        cfg.display()
    );
    let r = lab::run(&script, BOOT_TIMEOUT).unwrap();
    assert_eq!(r.code, 0, "{}", r.output);
    assert!(
        !r.output.contains(USERSPACE_MARKER),
        "console leaked to stdout: {}",
        r.output
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Hello from a qvm guest"), "{text}");
}

#[test]
fn serial_input_reaches_the_guest_shell() {
    let cfg = config("serial-input", Kernel::BzImage, 1, "shell", "");
    // Type into the guest's console only once its shell has said it is there, then check the
    // shell's answer (the arithmetic proves the guest evaluated what we typed).
    let script = format!(
        r#"set -u
# FIFOs cannot live on the 9p share: use the lab's (or host's) /tmp.
dir=$(mktemp -d) && cd "$dir" && mkfifo in.fifo
timeout 500 {vmm} --config {cfg} < in.fifo > out.log 2>vmm.log &
pid=$!
exec 3> in.fifo
wait_for() {{ i=0; while [ $i -lt 1200 ]; do grep -q "$1" out.log && return 0; kill -0 $pid 2>/dev/null || return 1; sleep 0.25; i=$((i+1)); done; return 1; }}
wait_for 'qvm guest shell' || {{ echo "NO SHELL"; cat out.log vmm.log; exit 90; }}
echo 'echo "typed-$((6*7))-ok"' >&3
wait_for 'typed-42-ok' || {{ echo "NO ANSWER"; cat out.log vmm.log; exit 91; }}
echo 'poweroff -f' >&3
wait $pid; rc=$?
cat out.log
echo "--- qvm-vmm"; cat vmm.log
rm -rf "$dir"
exit $rc
"#,
        vmm = vmm_binary().display(),
        cfg = cfg.display()
    );
    let r = lab::run(&script, BOOT_TIMEOUT).unwrap();
    assert_eq!(r.code, 0, "{}", r.output);
    assert!(r.output.contains("typed-42-ok"), "{}", r.output);
    assert!(
        r.output.contains("qvm-vmm: guest powered off"),
        "{}",
        r.output
    );
}
