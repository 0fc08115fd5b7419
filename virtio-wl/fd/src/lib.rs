//! The fd plumbing both ends of virtio-wl share: bytes with fds over unix stream sockets
//! (SCM_RIGHTS) and close-on-exec pipes. The host device (`qvm-virtio-wl`, its `sys` module)
//! and the guest client (`qvm-wl-client`: the proxy's and the demo's socket transport) use
//! the same code for them. It depends on libc alone, so the guest binaries stay static and
//! small, and the guest client does not depend on the host device.
//!
//! Every fd this crate creates or receives is close-on-exec and owned (`OwnedFd`) from the
//! moment it exists. Syscalls: `sendmsg`, `recvmsg` (MSG_DONTWAIT | MSG_CMSG_CLOEXEC),
//! `pipe2` (O_CLOEXEC).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An `int` syscall result: the value, or the thread's errno.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A `ssize_t` syscall result: the byte count, or the thread's errno.
pub fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A pipe: (read end, write end), both close-on-exec and blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: pipe2 fills the array with two new fds on success.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The control buffer of one message: 256 bytes, 8-aligned as `cmsghdr` wants. Room for 60
/// fds on 64-bit Linux, more than either end passes (both stop at 28, as libwayland does).
type CmsgBuf = [u64; 32];

/// `CMSG_SPACE` of `fds` fds, if a [`CmsgBuf`] holds it.
fn cmsg_space(fds: usize) -> Option<usize> {
    let payload = libc::c_uint::try_from(fds.checked_mul(std::mem::size_of::<RawFd>())?).ok()?;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    (space <= std::mem::size_of::<CmsgBuf>()).then_some(space)
}

/// One `sendmsg` of `data` on the stream socket `sock`, with `fds` attached (SCM_RIGHTS) when
/// there are any, and `flags` (MSG_NOSIGNAL, MSG_DONTWAIT). Returns how many bytes went: the
/// fds travel with the first of them, so a caller sending the rest sends it without fds. An
/// interrupted call is retried; more fds than the control buffer holds is EINVAL.
pub fn send_with_fds<F: AsRawFd>(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[F],
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut cmsg: CmsgBuf = [0; 32];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space =
            cmsg_space(fds.len()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let payload = std::mem::size_of_val(fds) as libc::c_uint;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: CMSG_* compute offsets inside `cmsg`, which holds CMSG_SPACE(payload)
        // bytes (checked above); one header and the fds are written there.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            let p = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                p.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at live buffers (data, iov, cmsg) for the duration of the call.
        match cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// What one `recvmsg` gave.
#[derive(Debug)]
pub struct Received {
    pub len: usize,
    pub fds: Vec<OwnedFd>,
    /// The sender attached more fds than fit: those that arrived are in `fds` (owned, so they
    /// are closed when dropped), the rest were closed by the kernel.
    pub truncated: bool,
}

/// One non-blocking `recvmsg` (MSG_DONTWAIT | MSG_CMSG_CLOEXEC) of up to `buf.len()` bytes
/// and up to `max_fds` fds (at most what the control buffer holds: 60); more fds than that
/// come back `truncated`. WouldBlock when there is nothing to read; an interrupted call is
/// retried.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], max_fds: usize) -> io::Result<Received> {
    let space = cmsg_space(max_fds).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut cmsg: CmsgBuf = [0; 32];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let len = loop {
        // SAFETY: msg points at live buffers (buf, iov, cmsg) for the duration of the call.
        let r = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        match cvt_size(r) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs; we walk them
    // with the CMSG macros and take ownership of every SCM_RIGHTS fd exactly once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let bytes = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = data.add(i).read_unaligned();
                    if fd >= 0 {
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        len,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_and_fds_cross_and_stay_apart() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = pipe().unwrap();
        assert_eq!(
            send_with_fds(a.as_fd(), b"abc", &[w.as_fd()], 0).unwrap(),
            3
        );
        drop(w);
        let no_fds: &[RawFd] = &[];
        assert_eq!(send_with_fds(a.as_fd(), b"de", no_fds, 0).unwrap(), 2);
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf, 28).unwrap();
        // A message with fds is not merged with the next one.
        assert_eq!(
            (&buf[..got.len], got.fds.len(), got.truncated),
            (&b"abc"[..], 1, false)
        );
        std::fs::File::from(got.fds.into_iter().next().unwrap())
            .write_all(b"via the fd")
            .unwrap();
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "via the fd");
        let got = recv_with_fds(b.as_fd(), &mut buf, 28).unwrap();
        assert_eq!((&buf[..got.len], got.fds.len()), (&b"de"[..], 0));
        let e = recv_with_fds(b.as_fd(), &mut buf, 28).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn more_fds_than_asked_for_are_truncated_not_leaked() {
        let (a, b) = UnixStream::pair().unwrap();
        let ends: Vec<OwnedFd> = (0..3).map(|_| pipe().unwrap().0).collect();
        send_with_fds(a.as_fd(), b"x", &ends, 0).unwrap();
        let mut buf = [0u8; 4];
        let got = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!((got.len, got.fds.len(), got.truncated), (1, 2, true));
        // Beyond the control buffer: refused before any syscall.
        let many = vec![ends[0].as_raw_fd(); 61];
        let e = send_with_fds(a.as_fd(), b"x", &many, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(recv_with_fds(b.as_fd(), &mut buf, 61).is_err());
    }
}
