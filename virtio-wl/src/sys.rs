//! Thin, safe wrappers over the syscalls the worker uses (listed in the crate docs): memfds,
//! pipes, unix sockets with SCM_RIGHTS, and bounded waits. Every fd this module creates or
//! receives is close-on-exec and owned (`OwnedFd`) from the moment it exists. Pipes and the
//! SCM_RIGHTS messages themselves are `qvm-wl-fd`'s, the code the guest client uses too.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qvm_wl_fd::{cvt, cvt_size};
pub use qvm_wl_fd::{pipe, Received};

use crate::protocol::MAX_SEND_VFDS;

/// A memfd of `size` bytes (a page multiple), sealed so that nobody (neither we nor the
/// compositor it is sent to) can shrink it under the guest's mapping, grow it past what was
/// accounted, or add other seals.
pub fn sealed_memfd(size: u64) -> io::Result<OwnedFd> {
    let name = c"qvm-wl";
    // SAFETY: a valid C string; the returned fd is new and ours.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscalls on an fd we own.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    // SAFETY: F_ADD_SEALS on the same fd.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// The seals of a memfd (tests).
pub fn seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GET_SEALS only reads.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a valid fd.
    let fl = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    if fl & libc::O_NONBLOCK == 0 {
        // SAFETY: F_SETFL with the flags just read plus O_NONBLOCK.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// The access mode (`O_RDONLY`, `O_WRONLY` or `O_RDWR`) of an open file.
pub fn access_mode(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL only reads.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })? & libc::O_ACCMODE)
}

/// Whether `fd` is a FIFO (a pipe).
pub fn is_fifo(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: stat is plain old data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into the struct we own.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
}

/// The size of a seekable file (lseek to the end, then back where it was); None if it cannot
/// seek (pipes, sockets).
pub fn seekable_size(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: lseek on a valid fd; the position is restored.
    unsafe {
        let cur = libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR);
        if cur < 0 {
            return None;
        }
        let end = libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END);
        libc::lseek(fd.as_raw_fd(), cur, libc::SEEK_SET);
        u64::try_from(end).ok()
    }
}

/// Whether the compositor's shm fd cannot be mapped writable: opened read-only, or sealed
/// against writes (weston's keymaps are sealed memfds). Such a file is given to the guest as
/// a copy (see [`snapshot_memfd`]).
pub fn write_protected(fd: BorrowedFd<'_>) -> bool {
    const F_SEAL_FUTURE_WRITE: libc::c_int = 0x0010;
    if matches!(access_mode(fd), Ok(libc::O_RDONLY)) {
        return true;
    }
    seals(fd).is_ok_and(|s| s & (libc::F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0)
}

/// A [`sealed_memfd`] of `rounded` bytes holding the first `size` bytes of `src` (read from
/// offset 0 with lseek + read, which every device filter allows; the position is restored).
pub fn snapshot_memfd(src: BorrowedFd<'_>, size: u64, rounded: u64) -> io::Result<OwnedFd> {
    // Its seals keep the size fixed; writing within it is still allowed.
    let dst = sealed_memfd(rounded)?;
    // SAFETY: plain lseek calls on an fd we hold.
    let cur = unsafe { libc::lseek(src.as_raw_fd(), 0, libc::SEEK_CUR) };
    // SAFETY: as above.
    if unsafe { libc::lseek(src.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut left = size as usize;
    let mut buf = vec![0u8; left.min(64 * 1024)];
    let result = (|| {
        while left > 0 {
            let want = left.min(buf.len());
            let n = read_some(src, &mut buf[..want])?;
            if n == 0 {
                break; // shorter than announced: the rest stays zero
            }
            write_all(
                std::os::fd::AsFd::as_fd(&dst),
                &buf[..n],
                Duration::from_secs(1),
                None,
            )?;
            left -= n;
        }
        Ok::<(), io::Error>(())
    })();
    // SAFETY: restores the compositor's file position.
    unsafe { libc::lseek(src.as_raw_fd(), cur.max(0), libc::SEEK_SET) };
    result.map(|()| dst)
}

/// Connects a new non-blocking, close-on-exec unix stream socket to `path`. A listener whose
/// backlog is full makes connect fail with EAGAIN: retried for up to `patience`.
pub fn connect_unix(path: &Path, patience: Duration) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket() returns a new fd.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let deadline = Instant::now() + patience;
    loop {
        // SAFETY: addr is a valid sockaddr_un of the given size.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(UnixStream::from(fd));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => return Err(e),
        }
    }
}

/// What a bounded wait ended with.
fn wait_writable(fd: RawFd, deadline: Instant, stop: Option<RawFd>) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not take the data within the send timeout",
            ));
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
        // SAFETY: polls two valid pollfd structs (fd -1 is ignored by poll).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the device is stopping",
            ));
        }
        if fds[0].revents != 0 {
            return Ok(());
        }
    }
}

/// Sends all of `data` on a stream socket, `fds` attached to the first byte, without blocking
/// for longer than `timeout` (nor past a readable `stop` eventfd). `data` must not be empty
/// when `fds` is not (fds need a byte to travel with).
pub fn send_all(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
    stop: Option<RawFd>,
) -> io::Result<()> {
    if fds.len() > MAX_SEND_VFDS || (data.is_empty() && !fds.is_empty()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    write_within(sock, data.len(), timeout, stop, |sent| {
        let fds = if sent == 0 { fds } else { &[] };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        qvm_wl_fd::send_with_fds(sock, &data[sent..], fds, flags)
    })
}

/// Writes all of `data` to a non-blocking pipe within `timeout` (see [`send_all`]).
pub fn write_all(
    fd: BorrowedFd<'_>,
    data: &[u8],
    timeout: Duration,
    stop: Option<RawFd>,
) -> io::Result<()> {
    write_within(fd, data.len(), timeout, stop, |done| {
        let rest = &data[done..];
        // SAFETY: writes from a live buffer.
        cvt_size(unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) })
    })
}

/// Writes `len` bytes to the non-blocking `fd` by calls of `write(done)`, each writing from
/// offset `done` and saying how much it took; an interrupted call is repeated, and when `fd`
/// is full we wait for it to drain, until `timeout` from now (or a readable `stop`).
fn write_within(
    fd: BorrowedFd<'_>,
    len: usize,
    timeout: Duration,
    stop: Option<RawFd>,
    mut write: impl FnMut(usize) -> io::Result<usize>,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut done = 0;
    while done < len {
        match write(done) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_writable(fd.as_raw_fd(), deadline, stop)?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One non-blocking `recvmsg` of up to `buf.len()` bytes and up to 28 fds (MSG_CMSG_CLOEXEC);
/// more fds than that come back `truncated`. WouldBlock when there is nothing to read.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    qvm_wl_fd::recv_with_fds(sock, buf, MAX_SEND_VFDS)
}

/// One non-blocking read.
pub fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads into a live buffer.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Whether `fd` reports hang-up or error right now (poll with no wait).
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd without waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}
