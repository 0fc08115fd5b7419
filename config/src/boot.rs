//! `[boot]`: the kernel, its initrd and command line. The files must exist and be readable
//! ([`BootConfig::check_files`]); what kind of kernel image `kernel` names is judged by its magic numbers
//! ([`detect_format`]), the one config check that reads a file's contents. qvm-vmm makes that
//! one before it touches KVM, the API at start, and qvm-jailer before it builds the jail.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Linux's x86 COMMAND_LINE_SIZE.
pub const MAX_CMDLINE_LEN: usize = 2048;
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// An ELF `vmlinux` (PVH entry if it has one, else the 64-bit entry) or a `bzImage`.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

impl BootConfig {
    /// The command line (its length and characters); no files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(self.cmdline.len()));
        }
        if !self.cmdline.bytes().all(|b| b.is_ascii() && b != 0) {
            return Err(ConfigError::CmdlineNotAscii);
        }
        Ok(())
    }

    /// The kernel and the initrd are readable, non-empty regular files (on this host).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        check_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_file("initrd", initrd)?;
        }
        Ok(())
    }
}

/// Checks that `path` (`[boot] key`) is a readable, non-empty regular file.
fn check_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadFile {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such file; fix the path (relative paths are relative to the config file)"
                    .to_string()
            }
            _ => format!("cannot access it: {e}"),
        })
    })?;
    if !meta.is_file() {
        return Err(bad("not a regular file".to_string()));
    }
    if meta.len() == 0 {
        return Err(bad("the file is empty".to_string()));
    }
    std::fs::File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    Ok(())
}

/// What the kernel image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Why `[boot] kernel` is not a kernel qvm can boot.
#[derive(Debug, thiserror::Error)]
pub enum KernelFormatError {
    #[error("[boot] kernel = {0:?}: cannot read it: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("[boot] kernel = {0:?}: neither an ELF vmlinux nor a bzImage; point it at arch/x86/boot/bzImage or vmlinux")]
    NotAKernel(PathBuf),
}

/// Reads the start of `path` and says whether it is an ELF `vmlinux` or a `bzImage`.
pub fn detect_format(path: &Path) -> Result<KernelFormat, KernelFormatError> {
    let mut f = File::open(path).map_err(|e| KernelFormatError::Read(path.into(), e))?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut f, &mut head).map_err(|e| KernelFormatError::Read(path.into(), e))?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(KernelFormatError::NotAKernel(path.into()))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
