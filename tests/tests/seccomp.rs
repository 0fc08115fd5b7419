//! The seccomp wall must fail loudly if it has a hole: a test-build hook
//! (`QVM_TEST_FORBIDDEN=<kind>:<syscall>`) makes one thread of each kind attempt a forbidden
//! syscall right after installing its filter; the VMM must die with status 159 and a line
//! naming the thread kind and the syscall. Opening a file is refused instead (EACCES, the VMM
//! goes on; see vmm/src/seccomp.rs), since libraries open files lazily. main, vcpu and api
//! threads run a tiny guest on this host's KVM; device threads need a real driver, so that
//! case boots a Linux guest in the lab.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use qvm_tests::fixtures::{tiny_elf, vm_toml, vmm_binary};
use qvm_tests::lab;
use qvm_tests::util::vmm_foreground;
use qvm_tests::vm::{vmm_command, ScriptVm};

/// `out 0x80, al; jmp -4`.
const IO_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];

fn tiny_config(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qvm-seccomp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let k = dir.join("loop.elf");
    std::fs::write(&k, tiny_elf(&IO_LOOP)).unwrap();
    let cfg = dir.join("vm.toml");
    let mut text = vm_toml(&k, None, 1, 64, "console=ttyS0");
    text.push_str("\n[console]\nmode = \"off\"\n");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Runs the tiny guest with the hook set until the VMM exits, or until its stderr has `until`
/// (then it is killed; the code is None); returns (exit code, stderr).
fn run_with_hook(
    name: &str,
    hook: &str,
    extra: &[&str],
    until: Option<&str>,
) -> (Option<i32>, String) {
    let cfg = tiny_config(name);
    let sock = cfg.with_file_name("api.sock");
    let err_path = cfg.with_file_name("stderr");
    let err_file = std::fs::File::create(&err_path).unwrap();
    let mut child = Command::new(vmm_binary())
        .arg("--config")
        .arg(&cfg)
        .arg("--api-sock")
        .arg(&sock)
        .args(extra)
        .env("QVM_TEST_FORBIDDEN", hook)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let read_err = || std::fs::read_to_string(&err_path).unwrap_or_default();
    // 30 s: the tiny guest needs well under a second even on a busy host.
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if until.is_some_and(|u| read_err().contains(u)) {
            // Still running after it said so: give a late kill a moment to show.
            std::thread::sleep(Duration::from_millis(500));
            if let Some(s) = child.try_wait().unwrap() {
                break s.code();
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{hook}: the VMM kept running: {}", read_err());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = read_err();
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
    (code, err)
}

fn check_killed(kind: &str, what: &str, syscall: &str) {
    let (code, err) = run_with_hook(
        &format!("{kind}-{what}"),
        &format!("{kind}:{what}"),
        &[],
        None,
    );
    assert_eq!(code, Some(159), "{kind}:{what}: {err}");
    assert!(
        err.contains(&format!(
            "a {kind} thread made the forbidden syscall {syscall} ("
        )),
        "{kind}:{what}: {err}"
    );
    assert!(!err.contains("was NOT stopped"), "{err}");
}

/// The thread's open of /etc/shadow fails with EACCES and the VMM keeps running.
fn check_open_refused(kind: &str) {
    let refused = "shadow was refused: Permission denied";
    let (code, err) = run_with_hook(
        &format!("{kind}-shadow"),
        &format!("{kind}:shadow"),
        &[],
        Some(refused),
    );
    assert!(err.contains(refused), "{kind}: {err}");
    assert_eq!(
        code, None,
        "{kind}: the VMM exited after a refused open: {err}"
    );
    assert!(!err.contains("was NOT stopped"), "{err}");
}

#[test]
fn main_thread_cannot_exec_open_files_or_signal_others() {
    check_killed("main", "execve", "execve");
    check_open_refused("main");
    // It stops its virtiofsd through pidfds; kill(2) to any process is forbidden.
    check_killed("main", "kill", "kill");
}

#[test]
fn vcpu_threads_cannot_open_files_or_ptrace() {
    check_open_refused("vcpu");
    check_killed("vcpu", "ptrace", "ptrace");
}

#[test]
fn api_threads_cannot_exec_or_use_inet_sockets() {
    check_killed("api", "inet", "socket");
    check_killed("api", "execve", "execve");
}

#[test]
fn with_seccomp_off_the_hook_goes_through() {
    // The control: proves the hook really makes the syscall the filters stop.
    let cfg = tiny_config("off");
    let mut child = Command::new(vmm_binary())
        .arg("--config")
        .arg(&cfg)
        .args(["--seccomp", "off"])
        .env("QVM_TEST_FORBIDDEN", "main:ptrace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ptrace was NOT stopped"), "{err}");
    let _ = std::fs::remove_dir_all(cfg.parent().unwrap());
}

#[test]
fn device_threads_cannot_exec() {
    let cfg = ScriptVm::new("seccomp", "echo GUEST-UP\nsleep 30\n").write();
    let sh = vmm_foreground(&format!(
        "QVM_TEST_FORBIDDEN=device:execve {}",
        vmm_command(&cfg, 300)
    ));
    let r = lab::run_or_panic(&sh, Duration::from_secs(600));
    let out = &r.output;
    assert!(out.contains("VMM-EXIT 159"), "{out}");
    assert!(
        out.contains("a device thread made the forbidden syscall execve ("),
        "{out}"
    );
}
