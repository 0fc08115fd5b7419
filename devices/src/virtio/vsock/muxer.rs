//! The processing layer of virtio-vsock: connections between guest ports and host unix
//! sockets, driven without threads.
//!
//! A [`Muxer`] owns the host listener and every connection. The caller (the device worker, or
//! a test) feeds it events: descriptor chains from the tx queue ([`Muxer::process_tx`]),
//! readiness of the listener ([`Muxer::accept_host_connections`]) and of connection sockets
//! ([`Muxer::handle_conn_event`]), and the passing of time ([`Muxer::expire`]). Whatever the
//! guest must be told is queued inside the muxer and written into rx buffers by
//! [`Muxer::process_rx`] when the guest has posted some. After each event the caller lets
//! the muxer update which sockets it wants watched ([`Muxer::sync_interest`], through a
//! [`Watcher`]): a socket is only watched for what the muxer can act on now, so nothing
//! spins when the guest has no rx buffers or no credit.
//!
//! Connection lifecycle (`State`):
//! - host-initiated: `HostHandshake` (reading `CONNECT <port>\n`) -> `Connecting` (REQUEST
//!   queued, waiting for the guest's RESPONSE) -> `Established`;
//! - guest-initiated: `Established` at once (RESPONSE queued) when `<uds>_<port>` accepts;
//! - the host peer sent EOF: `PeerClosed` (SHUTDOWN SEND queued; the guest may still send
//!   until it shuts down its side or resets);
//! - dead but the guest must hear about it: `Resetting` (socket closed, RST queued).
//!
//! Nothing the guest or a host peer sends can make this code panic: headers are copied once,
//! counters wrap, every lookup is checked.

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

use super::packet::*;
use super::{VsockConfig, VsockError, VsockStats};
use crate::virtio::GuestMemoryMmap;

/// Largest payload of one packet, either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;
/// Receive buffer we advertise per connection (`buf_alloc`): guest data the host peer has not
/// read yet is kept up to this much.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// A CREDIT_UPDATE goes to the guest once this much was forwarded since the last header.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;
/// Connections (in any state, host handshakes included) at once; more are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// RSTs answering packets for unknown connections, kept while the guest posts no rx
/// buffers; beyond that they are dropped (and counted).
pub const MAX_PENDING_RESETS: usize = 256;
/// Longest `CONNECT <port>` line (without the newline).
pub const MAX_CONNECT_LINE: usize = 32;
/// Host ports of host-initiated connections are allocated from here up.
pub const FIRST_HOST_PORT: u32 = 1 << 30;
/// How long the guest has to answer a host-initiated REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a SHUTDOWN we wait for the other side to finish before an RST.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a host peer has to send its `CONNECT <port>\n` line.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Event token of the listener; connection tokens start at [`FIRST_CONN_TOKEN`]; tokens
/// below are free for the caller (queue eventfds, timers).
pub const LISTENER_TOKEN: u32 = 8;
pub const FIRST_CONN_TOKEN: u32 = 16;
/// Connections accepted per listener event (the listener stays readable if more wait).
const ACCEPT_BATCH: usize = 32;
/// After accept fails for lack of descriptors, the listener rests this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

// Control packets a connection owes the guest.
const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_CREDIT_UPDATE: u8 = 4;
const P_SHUTDOWN: u8 = 8;

/// Where sockets are watched: the worker's event manager, a plain epoll in tests.
pub trait Watcher {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()>;
    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()>;
    fn remove(&mut self, fd: RawFd) -> io::Result<()>;
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    HostHandshake,
    Connecting,
    Established,
    PeerClosed,
    Resetting,
}

struct Conn {
    socket: Option<UnixStream>,
    state: State,
    /// None until a host handshake names the guest port.
    key: Option<ConnKey>,
    /// The guest has seen a packet of this connection (so it must get an RST when it dies).
    announced: bool,
    /// Reached Established (counted in `connections_opened`).
    counted_open: bool,
    pending: u8,
    in_rx_queue: bool,
    dirty: bool,
    /// What the watcher watches now (empty: not registered).
    registered: EventSet,
    deadline: Option<Instant>,
    line: Vec<u8>,
    // Host -> guest.
    /// The socket reported readable and was not read dry since.
    host_readable: bool,
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    // Guest -> host.
    tx_buf: VecDeque<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    guest_shut_rcv: bool,
    guest_shut_send: bool,
    host_write_shut: bool,
}

impl Conn {
    fn new(socket: UnixStream, state: State) -> Conn {
        Conn {
            socket: Some(socket),
            state,
            key: None,
            announced: false,
            counted_open: false,
            pending: 0,
            in_rx_queue: false,
            dirty: false,
            registered: EventSet::empty(),
            deadline: None,
            line: Vec::new(),
            host_readable: false,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            guest_shut_rcv: false,
            guest_shut_send: false,
            host_write_shut: false,
        }
    }

    /// Bytes the guest can still take (virtio 1.2, 5.10.6.3).
    fn credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.guest_shut_rcv
            && self.credit() > 0
    }

    fn has_rx_work(&self) -> bool {
        self.state == State::Resetting || self.pending != 0 || self.can_send_data()
    }

    fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        match self.state {
            State::HostHandshake => e = EventSet::IN,
            State::Connecting | State::Resetting => {}
            State::Established | State::PeerClosed => {
                if self.state == State::Established && !self.host_readable && !self.guest_shut_rcv {
                    e |= EventSet::IN;
                }
                if !self.tx_buf.is_empty() {
                    e |= EventSet::OUT;
                }
            }
        }
        if self.socket.is_none() {
            e = EventSet::empty();
        }
        e
    }
}

/// Non-blocking connect to a unix socket. Unix stream connects complete at once; a full
/// backlog gives EAGAIN instead of blocking.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
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

/// send(2) without SIGPIPE.
fn send_bytes(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a valid slice for reads of its length.
    let r = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// send(2) of guest memory without SIGPIPE.
fn send_volatile<B: BitmapSlice>(fd: RawFd, buf: &VolatileSlice<'_, B>) -> io::Result<usize> {
    let guard = buf.ptr_guard();
    // SAFETY: the VolatileSlice guarantees the pointer is valid for reads of its length.
    let r = unsafe {
        libc::send(
            fd,
            guard.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Why a tx chain is not a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum TxChainError {
    /// A device-writable descriptor in a driver-to-device chain.
    WriteOnly,
    /// Fewer bytes than the header plus its `len` field.
    TooShort,
    /// `len` above [`MAX_PKT_BUF_SIZE`].
    TooLong,
    /// A buffer outside guest memory.
    BadAddress,
}

/// Reads one guest packet from a tx chain: the header from its first bytes and the payload
/// (the header's `len` bytes) into `data`, wherever the driver put them. Linux 6.x splits large
/// payloads over several descriptors (non-linear skbs), which the virtio-vsock crate's parser
/// refuses, so this gathers them itself.
pub fn read_tx_packet<M: std::ops::Deref<Target = GuestMemoryMmap>>(
    mem: &GuestMemoryMmap,
    chain: &mut virtio_queue::DescriptorChain<M>,
    data: &mut Vec<u8>,
) -> Result<Header, TxChainError> {
    use vm_memory::{Bytes, GuestAddress};
    let mut head = [0u8; HEADER_SIZE];
    let mut head_got = 0usize;
    let mut hdr: Option<Header> = None;
    data.clear();
    for desc in chain.by_ref() {
        if desc.is_write_only() {
            return Err(TxChainError::WriteOnly);
        }
        let mut addr = desc.addr().0;
        let mut left = desc.len() as usize;
        if head_got < HEADER_SIZE {
            let n = left.min(HEADER_SIZE - head_got);
            mem.read_slice(&mut head[head_got..head_got + n], GuestAddress(addr))
                .map_err(|_| TxChainError::BadAddress)?;
            head_got += n;
            left -= n;
            addr = addr.checked_add(n as u64).ok_or(TxChainError::BadAddress)?;
            if head_got == HEADER_SIZE {
                let h = Header::from_bytes(&head);
                if h.len > MAX_PKT_BUF_SIZE {
                    return Err(TxChainError::TooLong);
                }
                data.reserve(h.len as usize);
                hdr = Some(h);
            }
        }
        let Some(h) = hdr.as_ref() else { continue };
        let want = (h.len as usize).saturating_sub(data.len()).min(left);
        if want > 0 {
            let at = data.len();
            data.resize(at + want, 0);
            mem.read_slice(&mut data[at..], GuestAddress(addr))
                .map_err(|_| TxChainError::BadAddress)?;
        }
        if data.len() == h.len as usize {
            break;
        }
    }
    match hdr {
        Some(h) if data.len() == h.len as usize => Ok(h),
        _ => Err(TxChainError::TooShort),
    }
}

fn volatile_to_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
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
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("configure", e))?;
    Ok(listener)
}

/// All connections of one device and the host listener.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_registered: bool,
    listener_dirty: bool,
    /// Accepting is paused (out of descriptors) until then.
    accept_paused_until: Option<Instant>,
    conns: HashMap<u32, Conn>,
    by_key: HashMap<ConnKey, u32>,
    /// Connections that owe the guest a packet, in service order.
    rx_ready: VecDeque<u32>,
    /// Payload of the tx packet being handled (reused: one allocation per device).
    tx_scratch: Vec<u8>,
    /// RSTs answering packets that belong to no connection.
    resets: VecDeque<Header>,
    dirty: Vec<u32>,
    /// Closed sockets waiting to be unwatched (and whether they are watched).
    closed: Vec<(UnixStream, bool)>,
    next_token: u32,
    next_host_port: u32,
    stats: Arc<VsockStats>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Muxer {
    /// Validates `cfg` and binds the listener.
    pub fn new(cfg: &VsockConfig, stats: Arc<VsockStats>) -> Result<Muxer, VsockError> {
        if cfg.guest_cid < 3 || cfg.guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(cfg.guest_cid));
        }
        let listener = bind_listener(&cfg.uds_path)?;
        Ok(Muxer {
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            listener,
            listener_registered: false,
            listener_dirty: true,
            accept_paused_until: None,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            rx_ready: VecDeque::new(),
            tx_scratch: Vec::new(),
            resets: VecDeque::new(),
            dirty: Vec::new(),
            closed: Vec::new(),
            next_token: FIRST_CONN_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            stats,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn stats(&self) -> &Arc<VsockStats> {
        &self.stats
    }

    /// Connections in any state.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether something waits for an rx buffer.
    pub fn has_rx_work(&self) -> bool {
        !self.resets.is_empty() || !self.rx_ready.is_empty()
    }

    /// Closes every connection and forgets pending packets (device reset). The watcher the
    /// sockets were registered with is assumed gone.
    pub fn reset(&mut self) {
        for conn in self.conns.values() {
            if conn.counted_open && conn.socket.is_some() {
                bump(&self.stats.connections_closed, 1);
            }
        }
        self.conns.clear();
        self.by_key.clear();
        self.rx_ready.clear();
        self.resets.clear();
        self.dirty.clear();
        self.closed.clear();
        self.listener_registered = false;
        self.listener_dirty = true;
        self.accept_paused_until = None;
    }

    /// The earliest time [`Muxer::expire`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min()
    }

    /// Acts on the deadlines that passed: handshakes and connects that took too long, and
    /// shutdowns the other side did not finish.
    pub fn expire(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.listener_dirty = true;
        }
        let expired: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            // RST is only sent if the guest knows about the connection.
            self.kill(token, true);
        }
    }

    /// Lets `watcher` watch what each socket can be acted on for now.
    pub fn sync_interest(&mut self, watcher: &mut dyn Watcher) {
        self.unwatch_closed(watcher);
        if self.listener_dirty {
            self.listener_dirty = false;
            let want = self.accept_paused_until.is_none();
            let fd = self.listener.as_raw_fd();
            let res = match (self.listener_registered, want) {
                (false, true) => watcher.add(fd, LISTENER_TOKEN, EventSet::IN),
                (true, false) => watcher.remove(fd),
                _ => Ok(()),
            };
            match res {
                Ok(()) => self.listener_registered = want,
                Err(e) => eprintln!("virtio-vsock: cannot watch the host socket listener: {e}"),
            }
        }
        let mut failed = Vec::new();
        for token in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.dirty = false;
            let Some(fd) = conn.socket.as_ref().map(|s| s.as_raw_fd()) else {
                continue;
            };
            let want = conn.interest();
            let have = conn.registered;
            let res = if want == have {
                Ok(())
            } else if have.is_empty() {
                watcher.add(fd, token, want)
            } else if want.is_empty() {
                watcher.remove(fd)
            } else {
                watcher.modify(fd, token, want)
            };
            match res {
                Ok(()) => conn.registered = want,
                Err(_) => failed.push(token),
            }
        }
        for token in failed {
            self.kill(token, true);
        }
        self.unwatch_closed(watcher);
    }

    fn unwatch_closed(&mut self, watcher: &mut dyn Watcher) {
        for (sock, registered) in self.closed.drain(..) {
            if registered {
                let _ = watcher.remove(sock.as_raw_fd());
            }
            drop(sock);
        }
    }

    fn touch(&mut self, token: u32) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(token);
            }
        }
    }

    fn enqueue_rx(&mut self, token: u32) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if !conn.in_rx_queue && conn.has_rx_work() {
                conn.in_rx_queue = true;
                self.rx_ready.push_back(token);
            }
        }
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = if t == u32::MAX {
                FIRST_CONN_TOKEN
            } else {
                t + 1
            };
            if !self.conns.contains_key(&t) {
                return t;
            }
        }
    }

    fn alloc_host_port(&mut self) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = if p == u32::MAX {
                FIRST_HOST_PORT
            } else {
                p + 1
            };
            if !self.by_key.keys().any(|k| k.local_port == p) {
                return p;
            }
        }
    }

    /// Closes the connection's socket. With `rst`, a guest that knows the connection gets an
    /// RST before it is forgotten; otherwise it is forgotten now.
    fn kill(&mut self, token: u32, rst: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Some(sock) = conn.socket.take() {
            self.closed.push((sock, !conn.registered.is_empty()));
            conn.registered = EventSet::empty();
            if conn.counted_open {
                bump(&self.stats.connections_closed, 1);
            }
        }
        conn.tx_buf = VecDeque::new();
        conn.line = Vec::new();
        conn.deadline = None;
        conn.pending = 0;
        if rst && conn.announced {
            conn.state = State::Resetting;
            self.enqueue_rx(token);
        } else {
            self.remove(token);
        }
    }

    fn remove(&mut self, token: u32) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if let Some(key) = conn.key {
            if self.by_key.get(&key) == Some(&token) {
                self.by_key.remove(&key);
            }
        }
        if let Some(sock) = conn.socket.take() {
            self.closed.push((sock, !conn.registered.is_empty()));
            if conn.counted_open {
                bump(&self.stats.connections_closed, 1);
            }
        }
    }

    fn queue_reset_reply(&mut self, hdr: &Header) {
        if self.resets.len() >= MAX_PENDING_RESETS {
            bump(&self.stats.dropped_packets, 1);
            return;
        }
        self.resets.push_back(Header {
            src_cid: hdr.dst_cid,
            dst_cid: hdr.src_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: hdr.type_,
            op: OP_RST,
            ..Header::default()
        });
    }

    // -----------------------------------------------------------------------------------------
    // Host side
    // -----------------------------------------------------------------------------------------

    /// Accepts waiting host connections (the listener was readable).
    pub fn accept_host_connections(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    if self.conns.len() >= MAX_CONNECTIONS || sock.set_nonblocking(true).is_err() {
                        bump(&self.stats.host_connections_refused, 1);
                        continue;
                    }
                    let token = self.alloc_token();
                    let mut conn = Conn::new(sock, State::HostHandshake);
                    conn.deadline = Some(now + HANDSHAKE_TIMEOUT);
                    self.conns.insert(token, conn);
                    self.touch(token);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE/ENOBUFS): the connection stays in the
                    // backlog and the listener stays readable; rest instead of spinning.
                    eprintln!("virtio-vsock: cannot accept host connections: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    self.listener_dirty = true;
                    break;
                }
            }
        }
    }

    /// A connection socket is ready (`token` as registered with the watcher).
    pub fn handle_conn_event(&mut self, token: u32, events: EventSet, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.socket.is_none() {
            return;
        }
        let armed = conn.registered;
        let trouble = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        match conn.state {
            State::HostHandshake => {
                if events.intersects(EventSet::IN) || trouble {
                    self.read_connect_line(token, now);
                }
            }
            State::Established | State::PeerClosed => {
                if !conn.tx_buf.is_empty() && (events.contains(EventSet::OUT) || trouble) {
                    self.flush(token, now);
                }
                if let Some(conn) = self.conns.get_mut(&token) {
                    let readable = events.intersects(EventSet::IN | EventSet::READ_HANG_UP);
                    if conn.state == State::Established
                        && conn.socket.is_some()
                        && armed.contains(EventSet::IN)
                        && (readable || trouble)
                    {
                        conn.host_readable = true;
                        self.enqueue_rx(token);
                    }
                }
            }
            State::Connecting | State::Resetting => {}
        }
        self.touch(token);
    }

    fn read_connect_line(&mut self, token: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Conn {
            socket: Some(sock),
            line,
            ..
        } = conn
        else {
            return;
        };
        // One byte at a time: whatever follows the newline is connection data.
        let mut byte = [0u8; 1];
        let port = loop {
            match (&*sock).read(&mut byte) {
                Ok(0) => {
                    // The peer gave up before naming a port.
                    self.kill(token, false);
                    return;
                }
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(line),
                Ok(_) => {
                    line.push(byte[0]);
                    if line.len() > MAX_CONNECT_LINE {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.kill(token, false);
                    return;
                }
            }
        };
        let Some(port) = port else {
            bump(&self.stats.bad_connect_lines, 1);
            self.kill(token, false);
            return;
        };
        let local_port = self.alloc_host_port();
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.line = Vec::new();
        conn.key = Some(key);
        conn.state = State::Connecting;
        conn.pending |= P_REQUEST;
        conn.deadline = Some(now + CONNECT_TIMEOUT);
        self.by_key.insert(key, token);
        self.enqueue_rx(token);
    }

    /// Writes buffered guest data to the host socket.
    fn flush(&mut self, token: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let Some(fd) = conn.socket.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let mut failed = false;
        while !conn.tx_buf.is_empty() {
            let (front, _) = conn.tx_buf.as_slices();
            match send_bytes(fd, front) {
                Ok(0) => break,
                Ok(n) => {
                    conn.tx_buf.drain(..n.min(conn.tx_buf.len()));
                    conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.kill(token, true);
            return;
        }
        self.after_forward(token, now);
    }

    /// After guest data reached the host: credit update, and pending shutdowns.
    fn after_forward(&mut self, token: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.fwd_cnt.wrapping_sub(conn.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            conn.pending |= P_CREDIT_UPDATE;
        }
        if conn.tx_buf.is_empty() && conn.guest_shut_send && !conn.host_write_shut {
            conn.host_write_shut = true;
            if let Some(s) = conn.socket.as_ref() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        let host_done = conn.state == State::PeerClosed;
        if (conn.guest_shut_rcv || host_done) && conn.guest_shut_send {
            if conn.tx_buf.is_empty() {
                self.kill(token, true);
                return;
            }
            if conn.deadline.is_none() {
                conn.deadline = Some(now + SHUTDOWN_TIMEOUT);
            }
        }
        self.enqueue_rx(token);
    }

    // -----------------------------------------------------------------------------------------
    // Guest -> host (tx queue)
    // -----------------------------------------------------------------------------------------

    /// Takes every available tx chain (at most one queue's worth) and acts on its packet.
    /// Returns whether the used ring changed.
    pub fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, now: Instant) -> bool {
        let mut used = false;
        for _ in 0..queue.size() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match read_tx_packet(mem, &mut chain, &mut self.tx_scratch) {
                Ok(hdr) => {
                    let len = (hdr.len as usize).min(self.tx_scratch.len());
                    let mut data = std::mem::take(&mut self.tx_scratch);
                    {
                        let slice = VolatileSlice::from(&mut data[..len]);
                        self.handle_guest_packet(&hdr, (len > 0).then_some(&slice), now);
                    }
                    self.tx_scratch = data;
                }
                Err(_) => bump(&self.stats.malformed_packets, 1),
            }
            match queue.add_used(mem, head, 0) {
                Ok(()) => used = true,
                Err(_) => bump(&self.stats.malformed_packets, 1),
            }
        }
        used
    }

    /// Acts on one packet from the guest.
    pub fn handle_guest_packet<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
        now: Instant,
    ) {
        if hdr.src_cid != self.guest_cid {
            bump(&self.stats.dropped_packets, 1);
            return;
        }
        bump(&self.stats.tx_packets, 1);
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM || !known_op(hdr.op) {
            if hdr.op != OP_RST {
                self.queue_reset_reply(hdr);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(&token) = self.by_key.get(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.queue_reset_reply(hdr),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.state == State::Resetting {
            if hdr.op == OP_RST {
                // It knows: no need to tell it.
                self.remove(token);
            }
            return;
        }
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        let state = conn.state;
        match (hdr.op, state) {
            (OP_RST, _) => self.kill(token, false),
            (OP_RESPONSE, State::Connecting) => self.host_connect_accepted(token),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => conn.pending |= P_CREDIT_UPDATE,
            (OP_SHUTDOWN, State::Established | State::PeerClosed) => {
                self.guest_shutdown(token, hdr.flags, now)
            }
            (OP_RW, State::Established | State::PeerClosed) => {
                self.guest_data(token, hdr.len, data, now)
            }
            // REQUEST or RESPONSE on a live connection, data before the handshake is done.
            _ => self.kill(token, true),
        }
        self.enqueue_rx(token);
        self.touch(token);
    }

    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            bump(&self.stats.guest_connect_failures, 1);
            self.queue_reset_reply(hdr);
            return;
        }
        let path = port_path(&self.uds_path, hdr.dst_port);
        let sock = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(_) => {
                bump(&self.stats.guest_connect_failures, 1);
                self.queue_reset_reply(hdr);
                return;
            }
        };
        let token = self.alloc_token();
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let mut conn = Conn::new(sock, State::Established);
        conn.key = Some(key);
        conn.announced = true;
        conn.counted_open = true;
        conn.pending = P_RESPONSE;
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        bump(&self.stats.connections_opened, 1);
        self.conns.insert(token, conn);
        self.by_key.insert(key, token);
        self.enqueue_rx(token);
        self.touch(token);
    }

    /// The guest accepted a host-initiated connection: tell the host peer.
    fn host_connect_accepted(&mut self, token: u32) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let (Some(sock), Some(key)) = (conn.socket.as_ref(), conn.key) else {
            return;
        };
        let reply = format!("OK {}\n", key.local_port);
        // Nothing was written to this socket yet: a short line always fits its buffer.
        let ok =
            matches!(send_bytes(sock.as_raw_fd(), reply.as_bytes()), Ok(n) if n == reply.len());
        if !ok {
            self.kill(token, true);
            return;
        }
        conn.state = State::Established;
        conn.deadline = None;
        conn.counted_open = true;
        bump(&self.stats.connections_opened, 1);
    }

    fn guest_shutdown(&mut self, token: u32, flags: u32, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if flags & SHUTDOWN_RCV != 0 && !conn.guest_shut_rcv {
            conn.guest_shut_rcv = true;
            if let Some(s) = conn.socket.as_ref() {
                let _ = s.shutdown(Shutdown::Read);
            }
        }
        if flags & SHUTDOWN_SEND != 0 {
            conn.guest_shut_send = true;
        }
        self.after_forward(token, now);
    }

    fn guest_data<B: BitmapSlice>(
        &mut self,
        token: u32,
        len: u32,
        data: Option<&VolatileSlice<'_, B>>,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.guest_shut_send {
            // Data after the guest said it would send no more.
            self.kill(token, true);
            return;
        }
        let (Some(data), Some(fd)) = (data, conn.socket.as_ref().map(|s| s.as_raw_fd())) else {
            return;
        };
        // from_tx_virtq_chain made the slice exactly `len` long; be sure anyway.
        let len = (len as usize).min(data.len());
        bump(&self.stats.tx_bytes, len as u64);
        let mut written = 0usize;
        if conn.tx_buf.is_empty() {
            while written < len {
                let part = match data.subslice(written, len - written) {
                    Ok(p) => p,
                    Err(_) => break,
                };
                match send_volatile(fd, &part) {
                    Ok(0) => break,
                    Ok(n) => {
                        written += n;
                        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.kill(token, true);
                        return;
                    }
                }
            }
        }
        let rest = len - written;
        if rest > 0 {
            if conn.tx_buf.len() + rest > CONN_BUF_ALLOC as usize {
                // The guest sent more than the credit we gave it.
                bump(&self.stats.dropped_packets, 1);
                self.kill(token, true);
                return;
            }
            let mut tmp = vec![0u8; rest];
            let copied = data
                .subslice(written, rest)
                .map(|s| s.copy_to(&mut tmp[..]))
                .unwrap_or(0);
            tmp.truncate(copied);
            conn.tx_buf.extend(tmp);
        }
        self.after_forward(token, now);
    }

    // -----------------------------------------------------------------------------------------
    // Host -> guest (rx queue)
    // -----------------------------------------------------------------------------------------

    /// Writes pending packets into the guest's rx buffers until either runs out. Returns
    /// whether the used ring changed. When the guest has posted no buffers, the work stays
    /// queued (host sockets are not read meanwhile) until the next call.
    pub fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, now: Instant) -> bool {
        let mut used = false;
        let mut idle_rounds = 0;
        while self.has_rx_work() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                // Out of buffers: ask for a kick when the driver adds some. A broken avail
                // index makes this say "more" forever without anything to pop.
                match queue.enable_notification(mem) {
                    Ok(true) if idle_rounds < 2 => {
                        idle_rounds += 1;
                        continue;
                    }
                    _ => break,
                }
            };
            idle_rounds = 0;
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_BUF_SIZE) {
                Ok(mut pkt) if pkt.data_slice().is_some() => match self.fill_rx(&mut pkt, now) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all (a socket read came back empty).
                        queue.go_to_previous_position();
                        break;
                    }
                },
                _ => {
                    // Malformed, or no room for data: the guest gets the buffer back empty.
                    bump(&self.stats.malformed_packets, 1);
                    0
                }
            };
            match queue.add_used(mem, head, len) {
                Ok(()) => used = true,
                Err(_) => bump(&self.stats.malformed_packets, 1),
            }
        }
        used
    }

    /// Writes the next pending packet into `pkt`; returns the used length.
    fn fill_rx<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        _now: Instant,
    ) -> Option<u32> {
        if let Some(hdr) = self.resets.pop_front() {
            return self.emit(pkt, &hdr);
        }
        // Each connection is tried at most once per packet.
        for _ in 0..self.rx_ready.len() {
            let token = self.rx_ready.pop_front()?;
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            if !conn.in_rx_queue {
                continue;
            }
            conn.in_rx_queue = false;
            let out = self.produce(token, pkt);
            self.enqueue_rx(token);
            self.touch(token);
            if out.is_some() {
                return out;
            }
        }
        None
    }

    fn emit<B: BitmapSlice>(&self, pkt: &mut VsockPacket<'_, B>, hdr: &Header) -> Option<u32> {
        if pkt.set_header_from_raw(&hdr.to_bytes()).is_err() {
            bump(&self.stats.malformed_packets, 1);
            return Some(0);
        }
        bump(&self.stats.rx_packets, 1);
        bump(&self.stats.rx_bytes, u64::from(hdr.len));
        if hdr.op == OP_RST {
            bump(&self.stats.resets_sent, 1);
        }
        Some(HEADER_SIZE as u32 + hdr.len)
    }

    /// The next packet connection `token` owes the guest, written into `pkt`.
    fn produce<B: BitmapSlice>(&mut self, token: u32, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&token)?;
        let key = conn.key?;
        let mut hdr = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            type_: TYPE_STREAM,
            buf_alloc: CONN_BUF_ALLOC,
            ..Header::default()
        };

        if conn.state != State::Resetting {
            if conn.pending & P_REQUEST != 0 {
                conn.pending &= !P_REQUEST;
                conn.announced = true;
                hdr.op = OP_REQUEST;
            } else if conn.pending & P_RESPONSE != 0 {
                conn.pending &= !P_RESPONSE;
                hdr.op = OP_RESPONSE;
            } else if conn.can_send_data() {
                let cap = pkt
                    .data_slice()
                    .map(|d| d.len())
                    .unwrap_or(0)
                    .min(conn.credit() as usize)
                    .min(MAX_PKT_BUF_SIZE as usize);
                let read = match (pkt.data_slice(), conn.socket.as_ref()) {
                    (Some(d), Some(mut sock)) if cap > 0 => loop {
                        let mut part = match d.subslice(0, cap) {
                            Ok(p) => p,
                            Err(e) => break Err(volatile_to_io(e)),
                        };
                        match sock.read_volatile(&mut part).map_err(volatile_to_io) {
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            r => break r,
                        }
                    },
                    _ => Err(io::Error::from(ErrorKind::WouldBlock)),
                };
                match read {
                    Ok(0) => {
                        // The host peer will send no more (it may still read: a half-close
                        // such as shutdown(SHUT_WR) waits for an answer). Tell the guest; the
                        // connection ends when the guest is done sending too, or resets.
                        conn.host_readable = false;
                        conn.state = State::PeerClosed;
                        conn.pending |= P_SHUTDOWN;
                    }
                    Ok(n) => {
                        hdr.op = OP_RW;
                        hdr.len = n as u32;
                        conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => conn.host_readable = false,
                    Err(_) => {
                        // The host peer died mid-stream.
                        self.kill(token, true);
                    }
                }
            }
        }

        // `kill` may have removed the connection or turned it into Resetting.
        let conn = self.conns.get_mut(&token)?;
        if conn.state == State::Resetting {
            hdr.op = OP_RST;
            hdr.len = 0;
            self.remove(token);
            return self.emit(pkt, &hdr);
        }
        if hdr.op == 0 {
            if conn.pending & P_CREDIT_UPDATE != 0 {
                hdr.op = OP_CREDIT_UPDATE;
            } else if conn.pending & P_SHUTDOWN != 0 {
                conn.pending &= !P_SHUTDOWN;
                hdr.op = OP_SHUTDOWN;
                hdr.flags = SHUTDOWN_SEND;
            } else {
                return None;
            }
        }
        // Every header carries our credit.
        conn.pending &= !P_CREDIT_UPDATE;
        hdr.fwd_cnt = conn.fwd_cnt;
        conn.last_fwd_cnt_sent = conn.fwd_cnt;
        self.emit(pkt, &hdr)
    }
}
