//! What kind of kernel image `[boot] kernel` names, judged by its magic numbers: the one
//! config check that reads the file's contents. qvm-vmm makes it before it touches KVM, the
//! API at start, and qvm-jailer before it builds the jail.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

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
