//! Streams over AF_VSOCK (guest side) and over the VMM's unix socket (host side).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The host's CID as a guest sees it.
pub const HOST_CID: u32 = 2;

/// A connected vsock stream (a socket fd used through `File`'s read/write).
pub struct VsockStream(File);

impl VsockStream {
    pub fn connect(cid: u32, port: u32) -> io::Result<VsockStream> {
        let fd = vsock_socket_at(cid, port, libc::connect)?;
        Ok(VsockStream(File::from(fd)))
    }

    pub fn try_clone(&self) -> io::Result<VsockStream> {
        Ok(VsockStream(self.0.try_clone()?))
    }

    /// Like [`UnixStream::set_read_timeout`] (SO_RCVTIMEO).
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let tv = match timeout {
            None => libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            Some(t) => libc::timeval {
                tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                // At least 1 us: zero would mean "no timeout".
                tv_usec: libc::suseconds_t::from(t.subsec_micros().max(u32::from(t.is_zero()))),
            },
        };
        // SAFETY: setsockopt on a socket we own with a timeval of the size we pass.
        let r = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn shutdown_write(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain syscall on a socket we own.
        if unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening vsock socket on `port` (any CID).
pub struct VsockListener(OwnedFd);

impl VsockListener {
    pub fn bind(port: u32) -> io::Result<VsockListener> {
        let fd = vsock_socket_at(libc::VMADDR_CID_ANY, port, libc::bind)?;
        // SAFETY: plain syscall on a socket we own.
        if unsafe { libc::listen(fd_raw(&fd), 128) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(VsockListener(fd))
    }

    pub fn accept(&self) -> io::Result<VsockStream> {
        // SAFETY: accept with no peer address out-parameters.
        let fd = unsafe {
            libc::accept4(
                fd_raw(&self.0),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(VsockStream(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }
}

fn fd_raw(fd: &OwnedFd) -> libc::c_int {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new vsock socket, connected to or bound at (`op`: `libc::connect` or `libc::bind`) `cid`
/// and `port`.
fn vsock_socket_at(
    cid: u32,
    port: u32,
    op: unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int,
) -> io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = sockaddr(cid, port);
    // SAFETY: fd is a socket we own; addr is a valid sockaddr_vm of the size we pass, and op
    // (connect or bind) only reads it.
    let r = unsafe {
        op(
            fd_raw(&fd),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

/// Connects to guest port `port` through the VMM's vsock unix socket `uds`: sends
/// `CONNECT <port>\n` and waits for `OK <hostport>\n`. The returned reader may hold bytes the
/// guest sent right after the handshake, so use it (not a fresh clone) for reading.
pub fn connect_through_vmm(
    uds: &Path,
    port: u32,
) -> io::Result<(BufReader<UnixStream>, UnixStream)> {
    let mut s = UnixStream::connect(uds).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the VM's vsock socket {}: {e}",
                uds.display()
            ),
        )
    })?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut r = BufReader::new(s.try_clone()?);
    // The VMM answers with one short line, once the guest has accepted: a reader that never
    // ends it is not a VMM, and a guest that never accepts (or a VMM that trickles the line)
    // must not hold the caller longer than the deadline, counted for the whole line.
    let deadline = std::time::Instant::now() + crate::client::HANDSHAKE_DEADLINE;
    let timed_out = || {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the VM did not answer a connection to vsock port {port} within {} s",
                crate::client::HANDSHAKE_DEADLINE.as_secs()
            ),
        )
    };
    let mut raw = Vec::new();
    while raw.len() < 64 && raw.last() != Some(&b'\n') {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| *d >= std::time::Duration::from_millis(1))
            .ok_or_else(timed_out)?;
        s.set_read_timeout(Some(left))?;
        let mut b = [0u8; 1];
        match r.read(&mut b) {
            Ok(0) => break,
            Ok(_) => raw.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out())
            }
            Err(e) => return Err(e),
        }
    }
    s.set_read_timeout(None)?;
    let line = String::from_utf8_lossy(&raw).into_owned();
    if !line.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "the guest refused vsock port {port} (is the service running in the VM?){}",
                if line.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::term::escaped(line.trim(), 64))
                }
            ),
        ));
    }
    Ok((r, s))
}
