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
//!
//! This module holds the connections and the host side's events; the guest -> host path (the
//! tx queue) is in `tx`, the host -> guest path (the rx queue) in `rx`, the socket plumbing in
//! [`super::unix`].

mod rx;
mod tx;

use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::packet::*;
use super::unix::{bind_listener, parse_connect_line, peer_uid, send_bytes};
use super::{VsockConfig, VsockError, VsockStats};
use crate::virtio::bump;

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

/// The first number from `*next` on that is not `taken`, counting on from `first` after
/// `u32::MAX`; `*next` moves past it.
fn next_free(next: &mut u32, first: u32, taken: impl Fn(u32) -> bool) -> u32 {
    loop {
        let n = *next;
        *next = if n == u32::MAX { first } else { n + 1 };
        if !taken(n) {
            return n;
        }
    }
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

/// All connections of one device and the host listener.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// The uid that owns the listener (this VMM's user): it and root may connect.
    owner: u32,
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
        // This VMM's user (our euid: the socket's path could be swapped after bind).
        // SAFETY: geteuid cannot fail.
        let owner = unsafe { libc::geteuid() };
        Ok(Muxer {
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            listener,
            owner,
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
        next_free(&mut self.next_token, FIRST_CONN_TOKEN, |t| {
            self.conns.contains_key(&t)
        })
    }

    fn alloc_host_port(&mut self) -> u32 {
        next_free(&mut self.next_host_port, FIRST_HOST_PORT, |p| {
            self.by_key.keys().any(|k| k.local_port == p)
        })
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
                    // The socket is 0600 (the VMM's umask), but a loosened mode or directory
                    // must not let another user reach the guest's services: the peer's
                    // credentials decide.
                    let owner = self.owner;
                    let allowed = peer_uid(&sock).is_ok_and(|uid| uid == owner || uid == 0);
                    if !allowed
                        || self.conns.len() >= MAX_CONNECTIONS
                        || sock.set_nonblocking(true).is_err()
                    {
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
}
