//! Byte + fd transports to the compositor.
//!
//! * [`Wl0Transport`]: the product path, the virtio-wl guest driver's `/dev/wl0`
//!   (context vfd with SEND/RECV ioctls, allocations and pipes are vfds too).
//! * [`SocketTransport`]: an ordinary `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY` Unix socket
//!   with SCM_RIGHTS (`qvm-wl-fd`, the code the host device uses too); allocations are
//!   memfds, pipes are pipe2 pairs.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use qvm_wl_fd::cvt;

/// Most fds one message may carry (virtio-wl limit; libwayland's is the same).
pub const MAX_FDS: usize = 28;

/// A shared-memory allocation, mapped read-write and shared.
pub struct Alloc {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

impl Alloc {
    /// Map `len` bytes of `fd` shared, read-write.
    pub fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of an fd we own; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Alloc {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Size of the allocation (page-rounded on wl0).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len is our live mapping; &mut self gives exclusive access on our side
        // (the compositor may read concurrently, which is the point of shared memory).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Alloc {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping exactly once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A pipe for the clipboard: `local` is read here; `remote` is sent to the compositor.
/// On wl0 one vfd is both (the host keeps the other end), so `remote` is `None` and
/// `local` is what gets sent.
pub struct PipeEnds {
    pub local: OwnedFd,
    pub remote: Option<OwnedFd>,
}

impl PipeEnds {
    /// The fd to put into the request.
    pub fn fd_to_send(&self) -> RawFd {
        self.remote.as_ref().unwrap_or(&self.local).as_raw_fd()
    }
}

pub trait Transport {
    fn name(&self) -> &'static str;
    /// Send `data` (whole messages) with `fds` attached to it.
    fn send(&mut self, data: &[u8], fds: &[RawFd]) -> io::Result<()>;
    /// Receive what is available (call after poll says readable), appending bytes to
    /// `data` and received fds to `fds`. Returns `false` on end of stream.
    fn recv(&mut self, data: &mut Vec<u8>, fds: &mut VecDeque<OwnedFd>) -> io::Result<bool>;
    /// The fd to poll for POLLIN.
    fn poll_fd(&self) -> RawFd;
    /// Allocate `size` bytes of memory the compositor can map (size may be rounded up).
    fn alloc(&mut self, size: usize) -> io::Result<Alloc>;
    /// A pipe whose write side goes to the compositor.
    fn pipe_read(&mut self) -> io::Result<PipeEnds>;
}

fn page_round(n: usize) -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    n.div_ceil(page) * page
}

// ---------------------------------------------------------------------------------------
// /dev/wl0
// ---------------------------------------------------------------------------------------

pub mod wl0 {
    //! The guest driver ABI (ChromeOS `virtwl.h`).

    pub const DEV_PATH: &str = "/dev/wl0";

    pub const VIRTWL_IOCTL_NEW: u32 = 0xC030_7700;
    pub const VIRTWL_IOCTL_SEND: u32 = 0x8074_7701;
    pub const VIRTWL_IOCTL_RECV: u32 = 0x4074_7702;
    pub const VIRTWL_IOCTL_DMABUF_SYNC: u32 = 0x8004_7703;

    pub const NEW_CTX: u32 = 0;
    pub const NEW_ALLOC: u32 = 1;
    pub const NEW_PIPE_READ: u32 = 2;
    pub const NEW_PIPE_WRITE: u32 = 3;
    pub const NEW_DMABUF: u32 = 4;
    pub const NEW_CTX_NAMED: u32 = 5;

    pub const SEND_MAX_ALLOCS: usize = 28;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Dmabuf {
        pub width: u32,
        pub height: u32,
        pub format: u32,
        pub stride: [u32; 3],
        pub offset: [u32; 3],
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub union NewArgs {
        pub size: u32,
        pub dmabuf: Dmabuf,
        pub name: [u8; 32],
    }

    /// `struct virtwl_ioctl_new`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct IoctlNew {
        pub type_: u32,
        pub fd: i32,
        pub flags: u32,
        pub u: NewArgs,
    }

    impl IoctlNew {
        pub fn new(type_: u32) -> Self {
            IoctlNew {
                type_,
                fd: -1,
                flags: 0,
                u: NewArgs {
                    dmabuf: Dmabuf::default(),
                },
            }
        }
    }

    /// Header of `struct virtwl_ioctl_txn`; `len` bytes of data follow it.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct IoctlTxn {
        pub fds: [i32; SEND_MAX_ALLOCS],
        pub len: u32,
    }

    /// `_IOC(dir, 'w', nr, size)` as Linux encodes it on x86/arm.
    pub const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
        (dir << 30) | ((size as u32) << 16) | ((b'w' as u32) << 8) | nr
    }
}

/// The virtio-wl guest device.
pub struct Wl0Transport {
    dev: OwnedFd,
    ctx: OwnedFd,
    /// RECV buffer: txn header + data, u64-aligned.
    recv_buf: Vec<u64>,
}

/// How much one RECV asks for (the device's in-buffers are 4096 bytes).
const WL0_RECV_CAP: usize = 16384;

fn ioctl_ptr<T>(fd: RawFd, req: u32, arg: *mut T) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live, correctly sized argument for `req`.
    cvt(unsafe { libc::ioctl(fd, req as _, arg) }).map(|_| ())
}

impl Wl0Transport {
    /// Open `/dev/wl0` and create a context (named if `ctx_name` is given).
    pub fn open(ctx_name: Option<&str>) -> io::Result<Self> {
        Self::open_path(wl0::DEV_PATH, ctx_name)
    }

    pub fn open_path(path: &str, ctx_name: Option<&str>) -> io::Result<Self> {
        let cpath =
            CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: cpath is a valid C string.
        let dev = cvt(unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
            .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
        // SAFETY: a fresh fd we own.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        let mut new = match ctx_name {
            None => wl0::IoctlNew::new(wl0::NEW_CTX),
            Some(name) => {
                if name.len() >= 32 || name.contains('\0') {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "context name must be under 32 bytes",
                    ));
                }
                let mut n = wl0::IoctlNew::new(wl0::NEW_CTX_NAMED);
                let mut buf = [0u8; 32];
                buf[..name.len()].copy_from_slice(name.as_bytes());
                n.u.name = buf;
                n
            }
        };
        ioctl_ptr(dev.as_raw_fd(), wl0::VIRTWL_IOCTL_NEW, &mut new)
            .map_err(|e| io::Error::new(e.kind(), format!("VIRTWL_IOCTL_NEW(ctx): {e}")))?;
        // SAFETY: the driver returned a new fd in `fd`.
        let ctx = unsafe { OwnedFd::from_raw_fd(new.fd) };
        Ok(Wl0Transport {
            dev,
            ctx,
            recv_buf: vec![0; (std::mem::size_of::<wl0::IoctlTxn>() + WL0_RECV_CAP).div_ceil(8)],
        })
    }

    fn new_vfd(&self, mut new: wl0::IoctlNew, what: &str) -> io::Result<(OwnedFd, wl0::IoctlNew)> {
        ioctl_ptr(self.dev.as_raw_fd(), wl0::VIRTWL_IOCTL_NEW, &mut new)
            .map_err(|e| io::Error::new(e.kind(), format!("VIRTWL_IOCTL_NEW({what}): {e}")))?;
        // SAFETY: the driver returned a new fd in `fd`.
        Ok((unsafe { OwnedFd::from_raw_fd(new.fd) }, new))
    }
}

/// Serialize a txn header plus data into `buf` (reused).
fn encode_txn(buf: &mut Vec<u8>, fds: &[RawFd], data: &[u8]) {
    let hdr = std::mem::size_of::<wl0::IoctlTxn>();
    buf.clear();
    buf.resize(hdr + data.len(), 0);
    for i in 0..wl0::SEND_MAX_ALLOCS {
        let fd = fds.get(i).copied().unwrap_or(-1);
        buf[i * 4..i * 4 + 4].copy_from_slice(&fd.to_ne_bytes());
    }
    buf[hdr - 4..hdr].copy_from_slice(&(data.len() as u32).to_ne_bytes());
    buf[hdr..].copy_from_slice(data);
}

impl Transport for Wl0Transport {
    fn name(&self) -> &'static str {
        "wl0"
    }

    fn send(&mut self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > wl0::SEND_MAX_ALLOCS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
        }
        // The txn is variable-length: u64-align the buffer for the driver's benefit.
        let mut buf = Vec::new();
        encode_txn(&mut buf, fds, data);
        let mut aligned = vec![0u64; buf.len().div_ceil(8)];
        // SAFETY: `aligned` has at least buf.len() bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), aligned.as_mut_ptr().cast(), buf.len())
        };
        ioctl_ptr(
            self.ctx.as_raw_fd(),
            wl0::VIRTWL_IOCTL_SEND,
            aligned.as_mut_ptr(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("VIRTWL_IOCTL_SEND: {e}")))
    }

    fn recv(&mut self, data: &mut Vec<u8>, fds: &mut VecDeque<OwnedFd>) -> io::Result<bool> {
        let hdr = std::mem::size_of::<wl0::IoctlTxn>();
        let txn_ptr = self.recv_buf.as_mut_ptr().cast::<wl0::IoctlTxn>();
        // SAFETY: recv_buf is u64-aligned and larger than the header.
        unsafe {
            txn_ptr.write(wl0::IoctlTxn {
                fds: [-1; wl0::SEND_MAX_ALLOCS],
                len: WL0_RECV_CAP as u32,
            })
        };
        ioctl_ptr(self.ctx.as_raw_fd(), wl0::VIRTWL_IOCTL_RECV, txn_ptr)
            .map_err(|e| io::Error::new(e.kind(), format!("VIRTWL_IOCTL_RECV: {e}")))?;
        // SAFETY: the header is initialised (written above, updated by the driver).
        let txn = unsafe { txn_ptr.read() };
        let len = txn.len as usize;
        if len > WL0_RECV_CAP {
            return Err(io::Error::other(format!(
                "VIRTWL_IOCTL_RECV returned len {len} > capacity {WL0_RECV_CAP}"
            )));
        }
        let mut got_fd = false;
        for &fd in txn.fds.iter().filter(|&&fd| fd >= 0) {
            // SAFETY: the driver installed a new fd for us.
            fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
            got_fd = true;
        }
        // SAFETY: recv_buf holds hdr + WL0_RECV_CAP bytes and len <= WL0_RECV_CAP.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.recv_buf.as_ptr().cast::<u8>(), hdr + len) };
        data.extend_from_slice(&bytes[hdr..]);
        Ok(len > 0 || got_fd)
    }

    fn poll_fd(&self) -> RawFd {
        self.ctx.as_raw_fd()
    }

    fn alloc(&mut self, size: usize) -> io::Result<Alloc> {
        wl0_alloc(&self.dev, size)
    }

    fn pipe_read(&mut self) -> io::Result<PipeEnds> {
        let (fd, _) = self.new_vfd(wl0::IoctlNew::new(wl0::NEW_PIPE_READ), "pipe_read")?;
        Ok(PipeEnds {
            local: fd,
            remote: None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Unix socket
// ---------------------------------------------------------------------------------------

/// A plain Wayland socket connection.
pub struct SocketTransport {
    sock: UnixStream,
    /// Allocate buffers from /dev/wl0 instead of memfds.
    wl0_alloc: Option<Wl0Allocator>,
}

/// Shared-memory allocations from /dev/wl0 without a context.
pub struct Wl0Allocator {
    dev: OwnedFd,
}

impl Wl0Allocator {
    pub fn open() -> io::Result<Self> {
        let path = wl0::DEV_PATH;
        let cpath =
            CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: cpath is a valid C string.
        let dev = cvt(unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })
            .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))?;
        // SAFETY: a fresh fd we own.
        let dev = unsafe { OwnedFd::from_raw_fd(dev) };
        Ok(Wl0Allocator { dev })
    }

    pub fn alloc(&self, size: usize) -> io::Result<Alloc> {
        wl0_alloc(&self.dev, size)
    }
}

/// VIRTWL_IOCTL_NEW(ALLOC) on an open /dev/wl0, mapped.
fn wl0_alloc(dev: &OwnedFd, size: usize) -> io::Result<Alloc> {
    let size32 = u32::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "allocation too large"))?;
    let mut new = wl0::IoctlNew::new(wl0::NEW_ALLOC);
    new.u = wl0::NewArgs { size: size32 };
    ioctl_ptr(dev.as_raw_fd(), wl0::VIRTWL_IOCTL_NEW, &mut new)
        .map_err(|e| io::Error::new(e.kind(), format!("VIRTWL_IOCTL_NEW(alloc): {e}")))?;
    // SAFETY: the driver returned a new fd in `fd`.
    let fd = unsafe { OwnedFd::from_raw_fd(new.fd) };
    // SAFETY: the driver wrote back `size` (page-rounded).
    let got = unsafe { new.u.size } as usize;
    if got < size {
        return Err(io::Error::other(format!(
            "wl0 allocation of {size} bytes came back with size {got}"
        )));
    }
    Alloc::map(fd, got)
}

/// `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY` (or an absolute `$WAYLAND_DISPLAY`).
pub fn wayland_socket_path() -> io::Result<PathBuf> {
    let display = std::env::var_os("WAYLAND_DISPLAY").unwrap_or_else(|| "wayland-0".into());
    let display = PathBuf::from(display);
    if display.is_absolute() {
        return Ok(display);
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "XDG_RUNTIME_DIR is not set"))?;
    Ok(PathBuf::from(dir).join(display))
}

impl SocketTransport {
    pub fn connect_env() -> io::Result<Self> {
        let path = wayland_socket_path()?;
        let sock = UnixStream::connect(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("connect {}: {e}", path.display())))?;
        Ok(SocketTransport::from_stream(sock))
    }

    pub fn from_stream(sock: UnixStream) -> Self {
        SocketTransport {
            sock,
            wl0_alloc: None,
        }
    }
}

/// The most fds one receive takes: all a 256-byte control buffer holds, more than one
/// message may carry ([`MAX_FDS`]); a peer's surplus waits in the queue with the others.
const RECV_MAX_FDS: usize = 60;

impl Transport for SocketTransport {
    fn name(&self) -> &'static str {
        "socket"
    }

    fn send(&mut self, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
        }
        let mut off = 0;
        while off < data.len() {
            let fds = if off == 0 { fds } else { &[] };
            off +=
                qvm_wl_fd::send_with_fds(self.sock.as_fd(), &data[off..], fds, libc::MSG_NOSIGNAL)?;
        }
        Ok(())
    }

    fn recv(&mut self, data: &mut Vec<u8>, fds: &mut VecDeque<OwnedFd>) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let r = match qvm_wl_fd::recv_with_fds(self.sock.as_fd(), &mut buf, RECV_MAX_FDS) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        };
        fds.extend(r.fds);
        if r.truncated {
            return Err(io::Error::other(
                "recvmsg: control data truncated (fds lost)",
            ));
        }
        data.extend_from_slice(&buf[..r.len]);
        Ok(r.len > 0)
    }

    fn poll_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn alloc(&mut self, size: usize) -> io::Result<Alloc> {
        if let Some(a) = &self.wl0_alloc {
            return a.alloc(size);
        }
        let size = page_round(size);
        // SAFETY: a literal C string; flags are valid.
        let fd = cvt(unsafe { libc::memfd_create(c"qvm-wl-demo".as_ptr(), libc::MFD_CLOEXEC) })?;
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: plain syscall on our fd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })?;
        Alloc::map(fd, size)
    }

    fn pipe_read(&mut self) -> io::Result<PipeEnds> {
        let (local, remote) = qvm_wl_fd::pipe()?;
        Ok(PipeEnds {
            local,
            remote: Some(remote),
        })
    }
}

/// Pick the transport: explicit choice, else wl0 when `/dev/wl0` exists.
pub fn open(kind: Option<&str>, ctx_name: Option<&str>) -> io::Result<Box<dyn Transport>> {
    let kind = match kind {
        Some(k) => k,
        None if std::path::Path::new(wl0::DEV_PATH).exists() => "wl0",
        None => "socket",
    };
    match kind {
        "wl0" => Ok(Box::new(Wl0Transport::open(ctx_name)?)),
        "socket" => {
            if ctx_name.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--ctx-name only applies to --transport wl0",
                ));
            }
            Ok(Box::new(SocketTransport::connect_env()?))
        }
        // An ordinary socket client (through the guest's qvm-wl-proxy) whose buffers are
        // /dev/wl0 allocations: the proxy passes those through without copying.
        "socket+wl0" => {
            let mut t = SocketTransport::connect_env()?;
            t.wl0_alloc = Some(Wl0Allocator::open()?);
            Ok(Box::new(t))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown transport {other:?} (wl0|socket|socket+wl0)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, size_of};

    #[test]
    fn abi_sizes_match_ioctl_numbers() {
        assert_eq!(size_of::<wl0::Dmabuf>(), 36);
        assert_eq!(size_of::<wl0::NewArgs>(), 36);
        assert_eq!(size_of::<wl0::IoctlNew>(), 48);
        assert_eq!(align_of::<wl0::IoctlNew>(), 4);
        assert_eq!(size_of::<wl0::IoctlTxn>(), 0x74);
        const R: u32 = 2;
        const W: u32 = 1;
        assert_eq!(
            wl0::ioc(R | W, 0, size_of::<wl0::IoctlNew>()),
            wl0::VIRTWL_IOCTL_NEW
        );
        // The historical direction bits are swapped (SEND is _IOR, RECV is _IOW).
        assert_eq!(
            wl0::ioc(R, 1, size_of::<wl0::IoctlTxn>()),
            wl0::VIRTWL_IOCTL_SEND
        );
        assert_eq!(
            wl0::ioc(W, 2, size_of::<wl0::IoctlTxn>()),
            wl0::VIRTWL_IOCTL_RECV
        );
        assert_eq!(wl0::ioc(R, 3, 4), wl0::VIRTWL_IOCTL_DMABUF_SYNC);
    }

    #[test]
    fn abi_field_offsets() {
        let n = wl0::IoctlNew::new(wl0::NEW_ALLOC);
        let base = &n as *const _ as usize;
        assert_eq!(&n.type_ as *const _ as usize - base, 0);
        assert_eq!(&n.fd as *const _ as usize - base, 4);
        assert_eq!(&n.flags as *const _ as usize - base, 8);
        assert_eq!(&n.u as *const _ as usize - base, 12);
        let t = wl0::IoctlTxn {
            fds: [-1; 28],
            len: 0,
        };
        assert_eq!(&t.len as *const _ as usize - &t as *const _ as usize, 112);
    }

    #[test]
    fn txn_encoding() {
        let mut buf = Vec::new();
        encode_txn(&mut buf, &[5, 6], b"hello");
        assert_eq!(buf.len(), 0x74 + 5);
        assert_eq!(i32::from_ne_bytes(buf[0..4].try_into().unwrap()), 5);
        assert_eq!(i32::from_ne_bytes(buf[4..8].try_into().unwrap()), 6);
        assert_eq!(i32::from_ne_bytes(buf[8..12].try_into().unwrap()), -1);
        assert_eq!(i32::from_ne_bytes(buf[108..112].try_into().unwrap()), -1);
        assert_eq!(u32::from_ne_bytes(buf[112..116].try_into().unwrap()), 5);
        assert_eq!(&buf[116..], b"hello");
    }

    #[test]
    fn socket_transport_passes_bytes_and_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut ta = SocketTransport::from_stream(a);
        let mut tb = SocketTransport::from_stream(b);
        let mut alloc = ta.alloc(100).unwrap();
        assert_eq!(alloc.len(), page_round(100));
        alloc.as_mut_slice()[..4].copy_from_slice(b"qvm!");
        ta.send(b"abcdefgh", &[alloc.fd()]).unwrap();
        let mut data = Vec::new();
        let mut fds = VecDeque::new();
        assert!(tb.recv(&mut data, &mut fds).unwrap());
        assert_eq!(data, b"abcdefgh");
        assert_eq!(fds.len(), 1);
        let peer = Alloc::map(fds.pop_front().unwrap(), 4096).unwrap();
        // SAFETY: reading our own test mapping.
        let first = unsafe { std::slice::from_raw_parts(peer.ptr, 4) };
        assert_eq!(first, b"qvm!");
        drop(ta);
        assert!(!tb.recv(&mut data, &mut fds).unwrap());
    }

    #[test]
    fn socket_pipe_read_has_two_ends() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut t = SocketTransport::from_stream(a);
        let p = t.pipe_read().unwrap();
        assert_ne!(p.fd_to_send(), p.local.as_raw_fd());
    }
}
