//! The host end of virtio-net: a Linux tap device that carries a virtio-net header in front of
//! every frame.
//!
//! [`Tap`] opens an existing tap by name through `/dev/net/tun` (qvm runs unprivileged; an
//! admin creates the tap beforehand with `ip tuntap add NAME mode tap user USER`), or adopts
//! an already-open tap descriptor inherited from a parent process. Either way the descriptor
//! is non-blocking, reads and writes one frame per call with a 12-byte
//! `struct virtio_net_hdr_v1` in front (IFF_VNET_HDR + TUNSETVNETHDRSZ), and its offloads are
//! probed once (TUNSETOFFLOAD) so the device offers only what this kernel can do.
//!
//! [`TapIo`] is the little the device needs from a tap; tests and the fuzzers use
//! [`FakeTap`], an in-memory stand-in.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

use super::{NetError, VNET_HDR_LEN};

/// TUNSETOFFLOAD bits (linux/if_tun.h): what the reader of the tap accepts.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
pub const TUN_F_UFO: u32 = 0x10;

/// Offload sets tried at open, most capable first. The kernel refuses (EINVAL) any bit it does
/// not know, and TSO without CSUM.
const OFFLOAD_PROBES: [u32; 6] = [
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM | TUN_F_TSO4,
    TUN_F_CSUM,
    0,
];

/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// An existing tap interface, attached through `/dev/net/tun`.
    Name(String),
    /// An open descriptor of `/dev/net/tun` already attached to a tap with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (e.g. passed down by a privileged parent). qvm works on
    /// a duplicate and leaves this descriptor to the caller; note that the duplicate shares the
    /// file status flags, so the descriptor becomes non-blocking.
    Fd(RawFd),
}

/// What the device needs from a tap. `read` and `write` move exactly one frame, virtio-net
/// header first, and fail with [`io::ErrorKind::WouldBlock`] instead of blocking.
pub trait TapIo {
    /// Reads one frame into `buf`; `WouldBlock` when none is queued.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame; `WouldBlock` when the tap cannot take it now (retry later).
    fn write(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// The `TUN_F_*` offloads the tap supports (probed at open).
    fn supported_offloads(&self) -> u32 {
        0
    }
    /// Tells the tap which `TUN_F_*` offloads its reader (the guest) accepts.
    fn set_offloads(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
    /// The interface name, for messages.
    fn name(&self) -> &str {
        "tap"
    }
}

/// An open tap device, non-blocking, with 12-byte virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

pub(super) fn ifreq_with_name(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (arrays, integers, a union of those and pointers); all
    // zeros is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(MAX_IFNAME_LEN))
    {
        *dst = src as libc::c_char;
    }
    ifr
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks a name the way the kernel's `dev_valid_name` does, with a reason for the user.
fn check_name(name: &str) -> Result<(), NetError> {
    let bad = |why: String| {
        Err(NetError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty".into());
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad(format!(
            "it is {} bytes, interface names are at most {MAX_IFNAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return bad("it is not a valid interface name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || *c == '\0' || c.is_whitespace())
    {
        return bad(format!("interface names cannot contain {c:?}"));
    }
    Ok(())
}

impl Tap {
    /// Opens the tap `source` names (see [`NetError`] for what can go wrong and what to do).
    pub fn open(source: &TapSource) -> Result<Tap, NetError> {
        match source {
            TapSource::Name(name) => Tap::open_named(name),
            TapSource::Fd(fd) => Tap::from_fd(*fd),
        }
    }

    /// Attaches to the existing tap interface `name`.
    pub fn open_named(name: &str) -> Result<Tap, NetError> {
        check_name(name)?;
        let cname = CString::new(name).map_err(|_| NetError::InvalidName {
            name: name.to_string(),
            why: "interface names cannot contain NUL".into(),
        })?;
        // As root TUNSETIFF would quietly create a fresh, unconfigured tap: insist that the
        // admin made it (and tell an unprivileged user what to run).
        // SAFETY: a NUL-terminated string that outlives the call.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
            return Err(NetError::TapNotFound {
                name: name.to_string(),
            });
        }

        let path = c"/dev/net/tun";
        // SAFETY: a NUL-terminated path; the returned descriptor is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = last_err();
            let hint = match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                    "load the tun module (`modprobe tun`), or create the node (`mknod /dev/net/tun c 10 200`)"
                }
                Some(libc::EACCES) | Some(libc::EPERM) => {
                    "give this user read-write access to it (it is normally mode 0666: `chmod 0666 /dev/net/tun`)"
                }
                _ => "check that the tun driver works on this host",
            };
            return Err(NetError::TunOpen {
                name: name.to_string(),
                source: e,
                hint,
            });
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };

        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we pass, which lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
            let e = last_err();
            let name = name.to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => NetError::TapPermission { name },
                Some(libc::EBUSY) => NetError::TapBusy { name },
                Some(libc::EINVAL) => NetError::NotATap { name },
                _ => NetError::Ioctl {
                    name,
                    op: "attaching (TUNSETIFF)",
                    source: e,
                },
            });
        }
        Tap::finish(file, ifreq_name(&ifr))
    }

    /// Adopts an inherited descriptor (see [`TapSource::Fd`]).
    pub fn from_fd(fd: RawFd) -> Result<Tap, NetError> {
        let bad = |problem: String| NetError::BadFd { fd, problem };
        // SAFETY: F_GETFD only inspects the descriptor table.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(bad(
                "is not an open file descriptor: check the number the parent passed, and that \
                 it was not opened close-on-exec"
                    .into(),
            ));
        }
        // SAFETY: ifreq is plain old data; TUNGETIFF writes into it.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes the ifreq we pass, which lives across the call; on a
        // descriptor that is not a tun it fails without touching memory.
        if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut ifr) } < 0 {
            let e = last_err();
            return Err(bad(if e.raw_os_error() == Some(libc::EBADFD) {
                "is /dev/net/tun but not attached to an interface: attach it (TUNSETIFF with \
                 IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) before passing it"
                    .into()
            } else {
                format!(
                    "is not a tun/tap descriptor (TUNGETIFF: {e}): pass an open /dev/net/tun \
                     descriptor attached to a tap"
                )
            }));
        }
        let name = ifreq_name(&ifr);
        // SAFETY: TUNGETIFF filled the flags member of the union.
        let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
        if flags & libc::IFF_TAP == 0 {
            return Err(bad(format!(
                "is attached to {name:?}, a tun (layer 3) device: virtio-net needs a tap \
                 (`ip tuntap add NAME mode tap`)"
            )));
        }
        for (flag, what) in [
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ] {
            if flags & flag == 0 {
                return Err(bad(format!(
                    "(tap {name:?}) was attached without {what}: attach it with IFF_TAP | \
                     IFF_NO_PI | IFF_VNET_HDR"
                )));
            }
        }
        // Our own descriptor, so the caller's stays theirs.
        // SAFETY: duplicating a descriptor we checked is open.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(NetError::Ioctl {
                name,
                op: "duplicating the descriptor (F_DUPFD_CLOEXEC)",
                source: last_err(),
            });
        }
        // SAFETY: dup is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(dup) };
        // SAFETY: fcntl on our own descriptor; no memory is passed.
        let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let set_nonblocking = || {
            // SAFETY: fcntl on our own descriptor with the flags just read; no memory is passed.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) }
        };
        if fl < 0 || set_nonblocking() < 0 {
            return Err(NetError::Ioctl {
                name,
                op: "making the descriptor non-blocking (F_SETFL)",
                source: last_err(),
            });
        }
        Tap::finish(file, name)
    }

    /// Header size and offload probe, common to both ways of opening.
    fn finish(file: File, name: String) -> Result<Tap, NetError> {
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(NetError::Ioctl {
                name,
                op: "setting the 12-byte virtio-net header (TUNSETVNETHDRSZ)",
                source: last_err(),
            });
        }
        let mut tap = Tap {
            file,
            name,
            offloads: 0,
        };
        tap.offloads = OFFLOAD_PROBES
            .iter()
            .copied()
            .find(|&f| tap.set_offloads(f).is_ok())
            .unwrap_or(0);
        // Until a driver says what it accepts, the tap hands over plain, checksummed frames.
        tap.set_offloads(0).map_err(|e| NetError::Ioctl {
            name: tap.name.clone(),
            op: "clearing the offloads (TUNSETOFFLOAD)",
            source: e,
        })?;
        Ok(tap)
    }

    /// The interface name.
    pub fn if_name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn retry_eintr(mut op: impl FnMut() -> libc::ssize_t) -> io::Result<usize> {
    loop {
        let r = op();
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = last_err();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl TapIo for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        retry_eintr(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<usize> {
        let fd = self.file.as_raw_fd();
        // SAFETY: the kernel reads at most frame.len() bytes from frame.
        retry_eintr(|| unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) })
    }

    fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if r < 0 {
            return Err(last_err());
        }
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// An in-memory tap for tests and fuzzing: reads come from `rx`, writes land in `tx`.
#[derive(Debug, Default, Clone)]
pub struct FakeTap {
    /// What the next reads return, in order: a frame (header first), or `Err(errno)` for a
    /// failing read. `WouldBlock` once empty.
    pub rx: VecDeque<Result<Vec<u8>, i32>>,
    /// Frames written, in order.
    pub tx: Vec<Vec<u8>>,
    /// Outcomes of the next writes, one per write: 0 succeeds, anything else is the errno the
    /// write fails with (`libc::EAGAIN` for a full tap). Empty: writes succeed.
    pub write_results: VecDeque<i32>,
    /// What [`TapIo::supported_offloads`] reports.
    pub offloads: u32,
    /// The last [`TapIo::set_offloads`] argument.
    pub offloads_set: Option<u32>,
}

impl FakeTap {
    /// Queues a frame for reading.
    pub fn push_rx(&mut self, frame: Vec<u8>) {
        self.rx.push_back(Ok(frame));
    }

    /// Frames (not errors) still queued for reading.
    pub fn rx_frames_left(&self) -> usize {
        self.rx.iter().filter(|r| r.is_ok()).count()
    }
}

impl TapIo for FakeTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.rx.pop_front() {
            None => Err(io::ErrorKind::WouldBlock.into()),
            Some(Err(errno)) => Err(io::Error::from_raw_os_error(errno)),
            Some(Ok(frame)) => {
                // Like a datagram: a short buffer truncates.
                let n = frame.len().min(buf.len());
                buf[..n].copy_from_slice(&frame[..n]);
                Ok(n)
            }
        }
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<usize> {
        match self.write_results.pop_front() {
            Some(errno) if errno != 0 => Err(io::Error::from_raw_os_error(errno)),
            _ => {
                self.tx.push(frame.to_vec());
                Ok(frame.len())
            }
        }
    }

    fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        self.offloads_set = Some(flags);
        Ok(())
    }

    fn name(&self) -> &str {
        "fake"
    }
}
