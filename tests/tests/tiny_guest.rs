//! Hand-made tiny guests run directly on this host's /dev/kvm (a few instructions each, so even
//! a software KVM runs them): every way a guest can stop maps to the right exit code, the 64-bit
//! ELF entry path works, and a signal stops the VM in an orderly way.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures::{tiny, tiny_elf, vm_toml, vmm_binary};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn write_guest(name: &str, code: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qvm-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&elf, tiny_elf(code)).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, vm_toml(&elf, None, 1, 64, "console=ttyS0")).unwrap();
    cfg
}

fn run_guest(name: &str, code: &[u8]) -> Run {
    let cfg = write_guest(name, code);
    let out = Command::new(vmm_binary())
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn acpi_poweroff_exits_zero() {
    let r = run_guest(
        "poweroff",
        &[tiny::print("hello\n"), tiny::acpi_poweroff()].concat(),
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout, "hello\n");
    assert!(r.stderr.contains("guest powered off"), "{}", r.stderr);
}

#[test]
fn i8042_reset_exits_zero() {
    let r = run_guest("i8042", &tiny::outb(0x64, 0xfe));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("guest rebooted"), "{}", r.stderr);
}

#[test]
fn acpi_reset_register_exits_zero() {
    let r = run_guest("acpi-reset", &tiny::outb(0x602, 1));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("guest rebooted"), "{}", r.stderr);
}

#[test]
fn triple_fault_is_a_reset() {
    // ud2 with a one-entry IDT: #UD -> #GP -> double fault -> triple fault.
    let r = run_guest("triple", &[0x0f, 0x0b]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("guest rebooted"), "{}", r.stderr);
}

#[test]
fn pvpanic_exits_nonzero_with_a_message() {
    let r = run_guest(
        "pvpanic",
        &[tiny::outb(0x505, 1), tiny::outb(0x64, 0xfe)].concat(),
    );
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("guest kernel panicked"), "{}", r.stderr);
}

#[test]
fn unknown_ports_read_all_ones_and_do_not_stop_the_guest() {
    // in al, 0x80 (nothing there); out 0x3f8, al -> prints 0xff; then power off.
    let code = [
        vec![0xe4, 0x80],
        vec![0x66, 0xba, 0xf8, 0x03, 0xee],
        tiny::acpi_poweroff(),
    ]
    .concat();
    let out = Command::new(vmm_binary())
        .arg("--config")
        .arg(write_guest("open-bus", &code))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, vec![0xff]);
}

#[test]
fn sigterm_stops_a_halted_guest_and_joins_vcpus() {
    let cfg = write_guest(
        "halt",
        &[tiny::print("up\n"), tiny::halt_forever()].concat(),
    );
    let mut child = Command::new(vmm_binary())
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 3];
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"up\n");
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "qvm-vmm did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
    assert!(!err.contains("did not stop"), "{err}");
}

/// A guest that floods its console must not fill the host's disk (or the session's runtime
/// directory, a tmpfs, where qvm keeps console.log): with `[console] limit_mib = 1`, a guest
/// that writes 1.25 MiB leaves a log of 1 MiB and one line saying the rest was dropped; the
/// VMM runs on and the guest's power-off still ends it cleanly.
#[test]
fn a_guest_flooding_its_console_stops_at_the_limit() {
    const FLOOD: u32 = 5 << 18;
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    code.push(0xb9); // mov ecx, FLOOD
    code.extend_from_slice(&FLOOD.to_le_bytes());
    code.extend_from_slice(&[0xb0, b'x', 0xee, 0xff, 0xc9, 0x75, 0xf9]); // al='x'; out; dec ecx; jnz
    code.extend(tiny::print("QVM-FLOOD-END\n"));
    code.extend(tiny::acpi_poweroff());
    let cfg = write_guest("flood", &code);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[console]\nlimit_mib = 1\n");
    std::fs::write(&cfg, text).unwrap();
    let log = cfg.with_extension("console.log");
    let start = Instant::now();
    let out = Command::new(vmm_binary())
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let written = std::fs::read(&log).unwrap();
    let xs = written.iter().take_while(|&&b| b == b'x').count();
    assert_eq!(xs, 1 << 20, "{} bytes in the log", written.len());
    let rest = String::from_utf8_lossy(&written[xs..]);
    assert!(rest.contains("reached its limit of 1 MiB"), "{rest}");
    assert!(!rest.contains("QVM-FLOOD-END"), "{rest}");
    assert!(written.len() < (1 << 20) + 200, "{} bytes", written.len());
    assert!(stderr.contains("limit_mib"), "{stderr}");
    eprintln!(
        "flood of {FLOOD} bytes: {:.1} s",
        start.elapsed().as_secs_f64()
    );
}
