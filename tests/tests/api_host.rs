//! The REST API of a real `qvm-vmm --api-sock` process, on this host's /dev/kvm, with a tiny
//! guest that loops on port I/O (so even a software KVM runs it): configure through the API,
//! start, pause (the exits stop), resume (they go on), stop; bad requests at every stage get a
//! clear 4xx and the VM keeps running. `qvm-vmm ctl` is the client.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures::{tiny_elf, vm_toml, vmm_binary};
use serde_json::Value;

/// `out 0x80, al; jmp -4`: an I/O exit per iteration, forever.
const IO_LOOP: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfc];

struct Vmm {
    child: Child,
    sock: PathBuf,
    dir: PathBuf,
}

impl Vmm {
    fn start(name: &str, config: Option<&Path>) -> Vmm {
        let dir = std::env::temp_dir().join(format!("qvm-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let mut cmd = Command::new(vmm_binary());
        cmd.arg("--api-sock").arg(&sock);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("vmm.log")).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !sock.exists() {
            let log = || std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "qvm-vmm exited ({status}) before serving its API: {}",
                    log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no API socket after 10 s: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Vmm { child, sock, dir }
    }

    /// `qvm-vmm ctl ARGS`: (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(vmm_binary())
            .arg("ctl")
            .arg("--api-sock")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctl(args);
        assert!(ok, "ctl {args:?} failed: {err}");
        out
    }

    /// Runs a request that must fail with `status`; returns the error text.
    fn fails(&self, args: &[&str], status: u16) -> String {
        let (ok, out, err) = self.ctl(args);
        assert!(!ok, "ctl {args:?} should fail, got {out}");
        assert!(
            err.contains(&format!("HTTP {status}:")),
            "ctl {args:?}: want HTTP {status}, got {err}"
        );
        err
    }

    fn json(&self, path: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", path])).unwrap()
    }

    fn io_exits(&self) -> u64 {
        let m = self.json("/metrics");
        m["vcpu_exits"]["io"]
            .as_u64()
            .unwrap_or_else(|| panic!("{m}"))
    }

    fn wait(mut self, within: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("vmm.log")).unwrap_or_default();
                assert!(!self.sock.exists(), "the API socket was left behind");
                return (status.code(), log);
            }
            if start.elapsed() > within {
                let _ = self.child.kill();
                panic!("qvm-vmm did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kernel(dir: &Path) -> PathBuf {
    let k = dir.join("loop.elf");
    std::fs::write(&k, tiny_elf(&IO_LOOP)).unwrap();
    k
}

/// Waits until the io exit count moves (the guest runs).
fn runs(vmm: &Vmm) -> bool {
    let a = vmm.io_exits();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        if vmm.io_exits() > a {
            return true;
        }
    }
    false
}

#[test]
fn configure_start_pause_resume_stop_through_the_api() {
    let vmm = Vmm::start("life", None);
    let k = kernel(&vmm.dir);
    let v = vmm.json("/vm");
    assert_eq!(v["state"], "not_configured", "{v}");
    let ver = vmm.json("/version");
    assert_eq!(ver["version"], env!("CARGO_PKG_VERSION"), "{ver}");

    // Nothing to start yet: the error says what to PUT.
    let e = vmm.fails(&["action", "start"], 400);
    assert!(e.contains("PUT /vm/machine"), "{e}");
    // Field checks are the config file's: unknown keys and bad values are refused by name.
    let e = vmm.fails(
        &["put", "/vm/machine", r#"{"vcpus": 2, "memory_mb": 64}"#],
        400,
    );
    assert!(e.contains("memory_mb"), "{e}");
    vmm.fails(
        &[
            "put",
            "/vm/machine",
            r#"{"vcpus": "two", "memory_mib": 64}"#,
        ],
        400,
    );
    vmm.fails(&["put", "/vm/machine", "{not json"], 400);
    vmm.ok(&["put", "/vm/machine", r#"{"vcpus": 2, "memory_mib": 64}"#]);
    let boot = serde_json::json!({ "kernel": k, "cmdline": "console=ttyS0" }).to_string();
    vmm.ok(&["put", "/vm/boot", &boot]);
    vmm.ok(&["put", "/vm/console", r#"{"mode": "off"}"#]);
    // A disk that does not exist is accepted as a draft but refused at start, by name.
    let disk = serde_json::json!({ "path": vmm.dir.join("missing.img") }).to_string();
    vmm.ok(&["put", "/vm/disks/data", &disk]);
    let e = vmm.fails(&["action", "start"], 400);
    assert!(e.contains("missing.img"), "{e}");
    vmm.ok(&["delete", "/vm/disks/data"]);
    vmm.fails(&["delete", "/vm/disks/data"], 404);
    vmm.fails(&["action", "pause"], 409);
    let v = vmm.json("/vm");
    assert_eq!(v["state"], "configured", "{v}");
    assert_eq!(v["config"]["machine"]["vcpus"], 2, "{v}");

    vmm.ok(&["action", "start"]);
    assert!(runs(&vmm), "the guest does not run after start");
    let v = vmm.json("/vm");
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["vcpus"], 2, "{v}");
    vmm.fails(&["action", "start"], 409);
    let e = vmm.fails(
        &["put", "/vm/machine", r#"{"vcpus": 1, "memory_mib": 64}"#],
        400,
    );
    assert!(e.contains("cannot change"), "{e}");
    vmm.fails(&["action", "reboot"], 400);

    // Paused: every vCPU is parked, so the guest makes no more exits.
    vmm.ok(&["action", "pause"]);
    let v = vmm.json("/vm");
    assert_eq!(v["state"], "paused", "{v}");
    let a = vmm.io_exits();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vmm.io_exits(), a, "the guest ran while paused");
    vmm.ok(&["action", "pause"]); // idempotent
    vmm.ok(&["action", "resume"]);
    assert!(runs(&vmm), "the guest does not run after resume");
    let v = vmm.json("/vm");
    assert_eq!(v["state"], "running", "{v}");
    assert!(v["paused_ms"].as_u64().unwrap() >= 500, "{v}");

    vmm.ok(&["action", "stop"]);
    let (code, log) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped through the API"), "{log}");
}

#[test]
fn with_a_config_file_the_vm_starts_at_once_and_stops_paused() {
    let dir = std::env::temp_dir().join(format!("qvm-api-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vm.toml");
    let mut text = vm_toml(&kernel(&dir), None, 1, 64, "console=ttyS0");
    text.push_str("\n[console]\nmode = \"off\"\n");
    std::fs::write(&cfg, text).unwrap();
    let vmm = Vmm::start("cfg", Some(&cfg));
    assert!(runs(&vmm), "the guest did not start from --config");
    let v = vmm.json("/vm");
    assert_eq!(v["config"]["machine"]["memory_mib"], 64, "{v}");
    // Stopping a paused VM must not leave parked vCPU threads behind.
    vmm.ok(&["action", "pause"]);
    vmm.ok(&["action", "stop"]);
    let (code, log) = vmm.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctl_reports_a_missing_socket() {
    let out = Command::new(vmm_binary())
        .args(["ctl", "--api-sock", "/nonexistent/api.sock", "get", "/vm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

#[test]
fn neither_config_nor_api_socket_is_a_usage_error() {
    let out = Command::new(vmm_binary()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-sock"), "{err}");
}

#[test]
fn shutdown_presses_the_power_button_then_stops_a_guest_that_ignores_it() {
    let dir = std::env::temp_dir().join(format!("qvm-api-sd-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("vm.toml");
    let mut text = vm_toml(&kernel(&dir), None, 1, 64, "console=ttyS0");
    text.push_str("\n[console]\nmode = \"off\"\n");
    std::fs::write(&cfg, text).unwrap();
    let vmm = Vmm::start("shutdown", Some(&cfg));
    assert!(runs(&vmm));
    vmm.fails(
        &[
            "put",
            "/actions",
            r#"{"action": "shutdown", "timeout_s": -1}"#,
        ],
        400,
    );
    vmm.fails(
        &["put", "/actions", r#"{"action": "pause", "timeout_s": 1}"#],
        400,
    );
    // A paused guest cannot see the button.
    vmm.ok(&["action", "pause"]);
    let e = vmm.fails(&["put", "/actions", r#"{"action": "shutdown"}"#], 409);
    assert!(e.contains("resume"), "{e}");
    vmm.ok(&["action", "resume"]);
    // This guest has no ACPI driver: after the grace time the VM is stopped anyway.
    let start = Instant::now();
    vmm.ok(&[
        "put",
        "/actions",
        r#"{"action": "shutdown", "timeout_s": 1}"#,
    ]);
    let (code, log) = vmm.wait(Duration::from_secs(10));
    assert!(start.elapsed() >= Duration::from_millis(900), "{log}");
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("pressed the ACPI power button"), "{log}");
    assert!(log.contains("did not power off within 1s"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
