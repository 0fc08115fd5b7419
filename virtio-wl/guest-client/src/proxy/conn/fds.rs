//! The fd paths of the proxy: duplicates, pipes whose bytes a thread copies across, the
//! keymap copied into a sealed memfd, and telling a virtio-wl allocation from other memory.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ProxyError;

pub(super) fn dup_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd gives a new fd we own.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Whether `fd` is a virtio-wl allocation (`/dev/wl0` vfd): its pages are host memory.
pub fn is_virtwl_vfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[virtwl_vfd]")
}

/// Copies `from` into `to` until end of file, in a thread (clipboard transfers).
pub(super) fn spawn_copy(from: OwnedFd, to: OwnedFd) {
    std::thread::spawn(move || {
        let mut from = std::fs::File::from(from);
        let mut to = std::fs::File::from(to);
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
}

/// The host's keymap (a vfd or, on a socket upstream, the compositor's read-only file) copied
/// into a local sealed memfd of `size` bytes, which clients may map as they like.
pub(super) fn copy_keymap(fd: &OwnedFd, size: usize) -> Result<OwnedFd, ProxyError> {
    if size == 0 || size > 16 << 20 {
        return Err(ProxyError::Host(format!("keymap of {size} bytes")));
    }
    // SAFETY: a read-only shared mapping of the received fd; checked for failure.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(ProxyError::Io(io::Error::other(format!(
            "mapping the keymap: {}",
            io::Error::last_os_error()
        ))));
    }
    // SAFETY: the mapping is `size` bytes, live until munmap below.
    let data = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) }.to_vec();
    // SAFETY: our mapping, unmapped once.
    unsafe { libc::munmap(ptr, size) };
    // SAFETY: literal name; new fd checked.
    let m = unsafe {
        libc::memfd_create(
            c"qvm-keymap".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if m < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: a new fd we own.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(m) });
    f.write_all(&data)?;
    // SAFETY: sealing our own memfd.
    unsafe {
        libc::fcntl(
            m,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
        )
    };
    Ok(OwnedFd::from(f))
}
