//! What the integration tests and benches boot: our `qvm-vmm` binary, the project-built guest
//! kernel and initramfs, hand-made tiny guests, and VM config files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// target/<profile>/ of the running test or bench binary.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// `pub fn $name() -> PathBuf`: the path of binary `$bin` of package `$package`, built (once
/// per test process) in this test binary's profile if it is missing: cargo does not build
/// another package's binaries for our tests.
macro_rules! workspace_binaries {
    ($($(#[$doc:meta])* $name:ident = $package:literal / $bin:literal;)*) => {$(
        $(#[$doc])*
        pub fn $name() -> PathBuf {
            static BIN: OnceLock<PathBuf> = OnceLock::new();
            BIN.get_or_init(|| workspace_binary($package, $bin)).clone()
        }
    )*};
}

workspace_binaries! {
    /// The `qvm-vmm` binary.
    vmm_binary = "qvm-vmm" / "qvm-vmm";
    /// The host build of `qvm-run` (runs commands in a guest through its agent).
    qvm_run_binary = "qvm-agent" / "qvm-run";
    /// The host build of `qvm` (the desktop front end, qvm-cli).
    qvm_cli_binary = "qvm-cli" / "qvm";
    /// The host build of `qvm-jailer`.
    qvm_jailer_binary = "qvm-jailer" / "qvm-jailer";
    /// The host build of `qvm-vsock` (checked transfers over vsock, unix sockets and TCP).
    qvm_vsock_binary = "qvm-agent" / "qvm-vsock";
    /// The host build of `qvm-wl-check` (finds the guest's test pattern in a compositor
    /// screenshot and checks it pixel by pixel).
    qvm_wl_check_binary = "qvm-wl-client" / "qvm-wl-check";
    /// The host build of `qvm-wl-demo` (a Wayland client; `--transport socket` on the host).
    qvm_wl_demo_binary = "qvm-wl-client" / "qvm-wl-demo";
    /// The host build of `qvm-wl-proxy` (`--upstream socket:PATH` relays to a host compositor).
    qvm_wl_proxy_binary = "qvm-wl-client" / "qvm-wl-proxy";
}

/// Builds `bin` of `package` in this test binary's profile and returns its path.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let dir = target_profile_dir();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace())
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let st = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo build for {bin}: {e}"));
    assert!(st.success(), "building {bin} failed");
    let path = dir.join(bin);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

fn run_script(script: &str) -> PathBuf {
    let path = workspace().join("guest").join(script);
    let out = Command::new(&path)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

/// The project-built guest kernel (built and cached on first use, ~8 minutes cold).
pub struct GuestKernel {
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
}

pub fn guest_kernel() -> &'static GuestKernel {
    static K: OnceLock<GuestKernel> = OnceLock::new();
    K.get_or_init(|| {
        let dir = run_script("build-kernel.sh");
        GuestKernel {
            bzimage: dir.join("bzImage"),
            vmlinux: dir.join("vmlinux"),
        }
    })
}

/// The project-built busybox initramfs whose /init obeys `qvm.mode=`.
pub fn guest_initramfs() -> &'static Path {
    static I: OnceLock<PathBuf> = OnceLock::new();
    I.get_or_init(|| run_script("build-initramfs.sh"))
}

/// The Debian bookworm application image (weston, zenity; read-only ext4, built and cached on
/// first use, ~2 minutes cold). Attach it read-only and enter it from a `qvm.mode=run` script
/// with `qvm-enter-rootfs /dev/vdX -- cmd args...`.
pub fn debian_rootfs() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| run_script("build-debian-rootfs.sh"))
}

/// virtiofsd (built from source into `~/.cache/qvm` by `scripts/install-virtiofsd.sh` on first
/// use), for `[[fs]] virtiofsd =` or `QVM_VIRTIOFSD`.
pub fn virtiofsd_binary() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let script = workspace().join("scripts/install-virtiofsd.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "install-virtiofsd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// The marker the guest's /init prints once userspace runs.
pub const USERSPACE_MARKER: &str = "QVM-USERSPACE-READY";

/// A VM config file's text.
pub fn vm_toml(
    kernel: &Path,
    initrd: Option<&Path>,
    vcpus: u8,
    memory_mib: u32,
    cmdline: &str,
) -> String {
    let mut s = format!(
        "[machine]\nvcpus = {vcpus}\nmemory_mib = {memory_mib}\n\n[boot]\nkernel = {:?}\ncmdline = {:?}\n",
        kernel.display().to_string(),
        cmdline
    );
    if let Some(i) = initrd {
        s.push_str(&format!("initrd = {:?}\n", i.display().to_string()));
    }
    s
}

/// x86-64 machine code for tiny guests, entered in long mode by qvm's ELF 64-bit entry.
pub mod tiny {
    /// `out dx, al` of each byte of `text` to COM1.
    pub fn print(text: &str) -> Vec<u8> {
        let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
        for b in text.bytes() {
            c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
        }
        c
    }
    /// Write `value` to I/O port `port`.
    pub fn outb(port: u16, value: u8) -> Vec<u8> {
        let p = port.to_le_bytes();
        vec![0x66, 0xba, p[0], p[1], 0xb0, value, 0xee]
    }
    /// ACPI S5 through the sleep control register.
    pub fn acpi_poweroff() -> Vec<u8> {
        outb(0x600, (5 << 2) | (1 << 5))
    }
    /// Halt with interrupts off, forever (the vCPU sleeps in KVM).
    pub fn halt_forever() -> Vec<u8> {
        vec![0xfa, 0xf4, 0xeb, 0xfc] // cli; hlt; jmp -4
    }
}

/// An ELF64 executable with one PT_LOAD segment at 1 MiB holding `code`, entry at its start;
/// no PVH note, so qvm enters it in 64-bit long mode.
pub fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const ENTRY: u64 = 0x10_0000;
    const OFFSET: u64 = 0x1000;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&ENTRY.to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for v in [
        OFFSET,
        ENTRY,
        ENTRY,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(OFFSET as usize, 0);
    f.extend_from_slice(code);
    f
}

/// The project-built ext4 root filesystem (same tree as the initramfs). Shared and cached:
/// use [`private_copy`] before booting a guest on it, guests write to their root.
pub fn guest_rootfs() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let path = workspace().join("guest/build-initramfs.sh");
        let out = Command::new(&path)
            .arg("--rootfs")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "build-initramfs.sh --rootfs failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
    })
}

/// Copies `src` to `dst` keeping holes (images are mostly empty).
pub fn private_copy(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()
        .expect("run cp");
    assert!(
        st.success(),
        "cp {} {} failed",
        src.display(),
        dst.display()
    );
}

/// A sparse raw image of `size` bytes.
pub fn sparse_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
}

/// A raw disk holding a shell script for the guest's `qvm.mode=run` (padded with zeros to a
/// sector multiple; the script's last command must be `exit`, so the zeros are never parsed).
pub fn script_disk(path: &Path, script: &str) {
    let mut bytes = script.as_bytes().to_vec();
    bytes.extend_from_slice(b"\nexit $?\n");
    let len = bytes.len().div_ceil(4096) * 4096;
    bytes.resize(len, 0);
    std::fs::write(path, bytes).expect("write script disk");
}

/// A `[[disk]]` table for a VM config.
pub fn disk_toml(path: &Path, read_only: bool, id: Option<&str>) -> String {
    let mut s = format!(
        "\n[[disk]]\npath = {:?}\nread_only = {read_only}\n",
        path.display().to_string()
    );
    if let Some(id) = id {
        s.push_str(&format!("id = {id:?}\n"));
    }
    s
}
