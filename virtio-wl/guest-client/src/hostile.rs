//! `qvm-wl-demo --hostile`: a guest program that misuses /dev/wl0 the ways a compromised guest
//! would (huge and zero sizes, unknown and unterminated context names, unsupported types, more
//! objects and more memory than the VM's limits, foreign fds in a SEND, an invalid request
//! to the compositor). Each case prints `QVM-WL-HOSTILE <case> <outcome>`; the lab test checks the
//! outcomes and that the VMM and its device still serve a normal client afterwards.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::transport::wl0::{self, IoctlNew, IoctlTxn};

fn new(dev: RawFd, mut arg: IoctlNew) -> io::Result<OwnedFd> {
    // SAFETY: `arg` is a live `virtwl_ioctl_new`, the size the ioctl number encodes.
    let r = unsafe { libc::ioctl(dev, wl0::VIRTWL_IOCTL_NEW as _, &mut arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the driver returned a new fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(arg.fd) })
}

fn alloc(dev: RawFd, size: u32) -> io::Result<OwnedFd> {
    let mut a = IoctlNew::new(wl0::NEW_ALLOC);
    a.u.size = size;
    new(dev, a)
}

fn named(dev: RawFd, name: [u8; 32]) -> io::Result<OwnedFd> {
    let mut a = IoctlNew::new(wl0::NEW_CTX_NAMED);
    a.u.name = name;
    new(dev, a)
}

/// SEND `data` with `fds` (rest -1) on vfd `fd`.
fn send(fd: RawFd, fds: &[RawFd], data: &[u8]) -> io::Result<()> {
    let hdr = std::mem::size_of::<IoctlTxn>();
    let mut buf = vec![0u64; (hdr + data.len()).div_ceil(8)];
    let mut txn = IoctlTxn {
        fds: [-1; wl0::SEND_MAX_ALLOCS],
        len: data.len() as u32,
    };
    txn.fds[..fds.len()].copy_from_slice(fds);
    // SAFETY: `buf` holds hdr + data bytes; IoctlTxn is plain old data.
    unsafe {
        let p = buf.as_mut_ptr() as *mut u8;
        std::ptr::write_unaligned(p as *mut IoctlTxn, txn);
        std::ptr::copy_nonoverlapping(data.as_ptr(), p.add(hdr), data.len());
    }
    // SAFETY: `buf` is the txn the ioctl reads (header + len bytes).
    let r = unsafe { libc::ioctl(fd, wl0::VIRTWL_IOCTL_SEND as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn outcome<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("err={}", e.raw_os_error().unwrap_or(0)),
    }
}

fn report(case: &str, what: String) {
    println!("QVM-WL-HOSTILE {case} {what}");
}

/// Allocates `size`-byte buffers until the device refuses one (or 100,000 succeed), reports
/// `case` as `count=<held> <how the last ended>`, then frees them all.
fn fill(dev: RawFd, case: &str, size: u32) {
    let mut held = Vec::new();
    let last = loop {
        match alloc(dev, size) {
            Ok(fd) if held.len() < 100_000 => held.push(fd),
            Ok(_) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    report(case, format!("count={} {}", held.len(), outcome(&last)));
}

/// Runs every case; errors opening the device are the only failure.
pub fn run() -> io::Result<()> {
    let path = std::ffi::CString::new(wl0::DEV_PATH).map_err(io::Error::other)?;
    // SAFETY: a valid C string; the fd is checked.
    let dev = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let dev_fd = unsafe { OwnedFd::from_raw_fd(dev) };
    let dev = dev_fd.as_raw_fd();

    report("huge-alloc", outcome(&alloc(dev, 0xffff_f000)));
    report("zero-alloc", outcome(&alloc(dev, 0)));
    let mut name = [0u8; 32];
    name[..18].copy_from_slice(b"no-such-compositor");
    report("unknown-named", outcome(&named(dev, name)));
    report("unterminated-name", outcome(&named(dev, [b'A'; 32])));
    report("dmabuf", outcome(&new(dev, IoctlNew::new(wl0::NEW_DMABUF))));
    report("bad-type", outcome(&new(dev, IoctlNew::new(99))));

    // As many small buffers as the VM allows: the limit answers, not the host.
    fill(dev, "vfd-limit", 4096);
    // Memory: 4 MiB buffers until the VM's buffer limit answers.
    fill(dev, "buffer-limit", 4 << 20);

    // A context to the compositor: a foreign fd (stdin) in a SEND, then an invalid request.
    match new(dev, IoctlNew::new(wl0::NEW_CTX)) {
        Ok(ctx) => {
            report(
                "send-foreign-fd",
                outcome(&send(ctx.as_raw_fd(), &[0], b"xxxx")),
            );
            // A complete message for a request wl_display does not have (opcode 99).
            let mut garbage = 1u32.to_le_bytes().to_vec();
            garbage.extend_from_slice(&((8u32 << 16) | 99).to_le_bytes());
            report(
                "send-garbage",
                outcome(&send(ctx.as_raw_fd(), &[], &garbage)),
            );
            // The compositor answers with wl_display.error and drops the client: the guest
            // sees it readable (the error, then the hang-up).
            let mut pfd = libc::pollfd {
                fd: ctx.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 20_000) };
            report(
                "compositor-reaction",
                format!("poll={n} revents={:#x}", pfd.revents),
            );
        }
        Err(e) => report("ctx", format!("err={}", e.raw_os_error().unwrap_or(0))),
    }
    Ok(())
}
