//! Bad configs: each gets exactly one error line naming the key and the fix, and exit code 2,
//! before any VM is created (these run on the host, no KVM needed).

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use qvm_tests::fixtures::vmm_binary;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qvm-config-errors-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Runs qvm-vmm on `toml` and checks exit code 2 and a single stderr line containing `expect`.
fn expect_error(name: &str, toml: &str, expect: &str) {
    // Per-test file names: the tests run in parallel, and rewriting one shared kernel file
    // lets another test read it while it is still empty.
    let kernel = scratch(&format!("{name}.kernel.elf"));
    std::fs::write(&kernel, qvm_tests::fixtures::tiny_elf(&[0xf4])).unwrap();
    let text = scratch(&format!("{name}.notakernel"));
    std::fs::write(&text, "#!/bin/sh\necho I am not a kernel\n").unwrap();
    let toml = toml
        .replace("@KERNEL@", &kernel.display().to_string())
        .replace("@TEXT@", &text.display().to_string());
    let cfg = scratch(&format!("{name}.toml"));
    std::fs::write(&cfg, toml).unwrap();
    let out = Command::new(vmm_binary())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{name}: stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: want one line, got: {stderr}");
    assert!(lines[0].starts_with("qvm-vmm: error: "), "{name}: {stderr}");
    assert!(
        lines[0].contains(expect),
        "{name}: want {expect:?} in: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{name}: {stderr}");
}

const GOOD_BOOT: &str = "[boot]\nkernel = \"@KERNEL@\"\n";

#[test]
fn missing_config_file() {
    let out = Command::new(vmm_binary())
        .args(["--config", "/nonexistent/qvm/vm.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("cannot read config file /nonexistent/qvm/vm.toml: No such file"),
        "{e}"
    );
}

#[test]
fn toml_syntax_error_names_the_line() {
    expect_error("syntax", "[machine]\nmemory_mib = = 3\n", "syntax.toml:2: ");
}

#[test]
fn unknown_key() {
    expect_error(
        "unknown-key",
        &format!("[machine]\nmemory_mib = 64\nvcpu = 2\n{GOOD_BOOT}"),
        "unknown-key.toml:3: unknown field `vcpu`, expected `vcpus` or `memory_mib`",
    );
}

#[test]
fn unknown_section() {
    expect_error(
        "unknown-section",
        &format!("[machine]\nmemory_mib = 64\n{GOOD_BOOT}[gpu]\nx = 1\n"),
        "unknown field `gpu`",
    );
}

#[test]
fn missing_boot_section() {
    expect_error(
        "no-boot",
        "[machine]\nmemory_mib = 64\n",
        "missing field `boot`",
    );
}

#[test]
fn memory_of_wrong_type() {
    expect_error(
        "mem-type",
        &format!("[machine]\nmemory_mib = \"lots\"\n{GOOD_BOOT}"),
        "invalid type: string \"lots\", expected u64",
    );
}

#[test]
fn zero_memory() {
    expect_error(
        "zero-mem",
        &format!("[machine]\nmemory_mib = 0\n{GOOD_BOOT}"),
        "[machine] memory_mib = 0: too small, a guest needs at least 32; set memory_mib = 32 or more",
    );
}

#[test]
fn memory_beyond_host_ram() {
    expect_error(
        "huge-mem",
        &format!("[machine]\nmemory_mib = 1073741824\n{GOOD_BOOT}"),
        "[machine] memory_mib = 1073741824: more than this host's",
    );
}

#[test]
fn zero_vcpus() {
    expect_error(
        "zero-vcpus",
        &format!("[machine]\nvcpus = 0\nmemory_mib = 64\n{GOOD_BOOT}"),
        "[machine] vcpus = 0: a VM needs at least one vCPU",
    );
}

#[test]
fn too_many_vcpus() {
    expect_error(
        "many-vcpus",
        &format!("[machine]\nvcpus = 300\nmemory_mib = 64\n{GOOD_BOOT}"),
        "[machine] vcpus = 300: more than the 254 vCPUs qvm supports",
    );
}

#[test]
fn missing_kernel_file() {
    expect_error(
        "no-kernel",
        "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"does-not-exist/vmlinux\"\n",
        "[boot] kernel = \"",
    );
    expect_error(
        "no-kernel2",
        "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"does-not-exist/vmlinux\"\n",
        "does-not-exist/vmlinux\": no such file; fix the path",
    );
}

#[test]
fn missing_initrd_file() {
    expect_error(
        "no-initrd",
        "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"@KERNEL@\"\ninitrd = \"/nonexistent/initrd.cpio\"\n",
        "[boot] initrd = \"/nonexistent/initrd.cpio\": no such file",
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    expect_error(
        "not-kernel",
        "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"@TEXT@\"\n",
        "neither an ELF vmlinux nor a bzImage",
    );
}

#[test]
fn console_file_without_path() {
    expect_error(
        "console",
        &format!("[machine]\nmemory_mib = 64\n{GOOD_BOOT}[console]\nmode = \"file\"\n"),
        "[console] mode = \"file\" needs path = \"<file>\"",
    );
}

#[test]
fn console_mode_unknown() {
    expect_error(
        "console-mode",
        &format!("[machine]\nmemory_mib = 64\n{GOOD_BOOT}[console]\nmode = \"tty\"\n"),
        "unknown variant `tty`, expected one of `stdio`, `file`, `off`",
    );
}

#[test]
fn help_and_version_work() {
    let out = Command::new(vmm_binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config"));
    let out = Command::new(vmm_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("qvm-vmm 0.1.0"));
}

#[test]
fn missing_disk_image() {
    expect_error(
        "no-disk",
        &format!(
            "[machine]\nmemory_mib = 64\n{GOOD_BOOT}[[disk]]\npath = \"/nonexistent/disk.img\"\n"
        ),
        "[[disk]] #1 path = \"/nonexistent/disk.img\": no such file; create the image",
    );
}

#[test]
fn disk_id_too_long() {
    expect_error(
        "long-id",
        &format!("[machine]\nmemory_mib = 64\n{GOOD_BOOT}[[disk]]\npath = \"@KERNEL@\"\nid = \"abcdefghijklmnopqrstuvwxyz\"\n"),
        "[[disk]] #1 id = \"abcdefghijklmnopqrstuvwxyz\": longer than 20 bytes",
    );
}

#[test]
fn two_disks_on_one_image() {
    expect_error(
        "dup-disk",
        &format!("[machine]\nmemory_mib = 64\n{GOOD_BOOT}[[disk]]\npath = \"@KERNEL@\"\n[[disk]]\npath = \"@KERNEL@\"\n"),
        "[[disk]] #2 path = ",
    );
}

#[test]
fn unknown_disk_key() {
    expect_error(
        "disk-key",
        &format!("[machine]\nmemory_mib = 64\n{GOOD_BOOT}[[disk]]\npath = \"@KERNEL@\"\nreadonly = true\n"),
        "unknown field `readonly`, expected one of `path`, `read_only`, `id`, `direct_io`",
    );
}
