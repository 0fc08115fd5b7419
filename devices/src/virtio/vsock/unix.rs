//! The host side's unix sockets: binding the listener (replacing a stale socket file),
//! non-blocking connects to `<uds_path>_<port>`, sends that never raise SIGPIPE, and the
//! `CONNECT <port>` line a host peer opens with.

use std::io::{self, ErrorKind};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::VsockError;

/// The uid of the process at the other end of `sock` (SO_PEERCRED: who connected, not who
/// holds the socket now).
pub fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: ucred is plain old data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Non-blocking connect to a unix socket. Unix stream connects complete at once; a full
/// backlog gives EAGAIN instead of blocking.
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: creates a descriptor; no memory is passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    loop {
        // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
        let r = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                len as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(stream);
        }
        let e = io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// send(2) of `len` bytes at `ptr`, never blocking and without SIGPIPE.
///
/// # Safety
///
/// `ptr` must be valid for reads of `len` bytes for the duration of the call.
unsafe fn send_raw(fd: RawFd, ptr: *const u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees that ptr is valid for reads of len bytes.
    let r = unsafe { libc::send(fd, ptr.cast(), len, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// send(2) without SIGPIPE.
pub(super) fn send_bytes(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid slice for reads of its length.
    unsafe { send_raw(fd, buf.as_ptr(), buf.len()) }
}

/// send(2) of guest memory without SIGPIPE.
pub(super) fn send_volatile<B: BitmapSlice>(
    fd: RawFd,
    buf: &VolatileSlice<'_, B>,
) -> io::Result<usize> {
    let guard = buf.ptr_guard();
    // SAFETY: the VolatileSlice guarantees the pointer is valid for reads of its length, and
    // the guard keeps it so during the call.
    unsafe { send_raw(fd, guard.as_ptr(), buf.len()) }
}

/// Parses `CONNECT <port>` (an optional trailing `\r` is accepted). `None` when malformed.
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let port = line.strip_prefix(b"CONNECT ")?;
    if port.is_empty() || port.len() > 10 || !port.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(port).ok()?.parse().ok()
}

/// `<uds_path>_<port>`, where guest-initiated connections to `port` go.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut s = uds_path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Longest `uds_path` such that `<uds_path>_<port>` fits in `sockaddr_un.sun_path`.
pub const MAX_UDS_PATH_LEN: usize = 107 - 11;

/// Binds the host listener at `path`: a stale socket (nobody accepting) is replaced, a live
/// one or any other file is an error.
pub fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    let len = path.as_os_str().len();
    if len == 0 || len > MAX_UDS_PATH_LEN {
        return Err(VsockError::PathLength {
            path: path.to_path_buf(),
            len,
            max: MAX_UDS_PATH_LEN,
        });
    }
    let io_err = |op: &'static str, source: io::Error| VsockError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            let ft = meta.file_type();
            if !ft.is_socket() {
                let kind = if ft.is_dir() {
                    "directory"
                } else if ft.is_file() {
                    "regular file"
                } else if ft.is_symlink() {
                    "symbolic link"
                } else {
                    "special file"
                };
                return Err(VsockError::NotASocket {
                    path: path.to_path_buf(),
                    kind,
                });
            }
            // Non-blocking: a live listener with a full backlog must not hang us.
            match connect_nonblocking(path) {
                Ok(_) => {
                    return Err(VsockError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Err(VsockError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(|e| io_err("remove the stale", e))?;
                }
                Err(e) => return Err(io_err("probe the existing", e)),
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspect", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => VsockError::NoDirectory {
            path: path.to_path_buf(),
        },
        ErrorKind::PermissionDenied => VsockError::PermissionDenied {
            path: path.to_path_buf(),
        },
        _ => io_err("bind", e),
    })?;
    // Only the VMM's user may reach the guest's services (the VMM's umask 077 already made it
    // so; a library user's umask may not have).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io_err("restrict", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", e))?;
    Ok(listener)
}
