//! One guest client's connection: its messages relayed to the host compositor (through a
//! virtio-wl context) and back, with object ids translated and fds carried across.
//!
//! Ids: the proxy creates host objects of its own (a larger pool twin when a client pool
//! grows), so the host's id space is the proxy's. Every object argument is translated; new
//! client objects get the next free host id, and ids return to the free list when the host's
//! `wl_display.delete_id` for them arrives. Server-created ids (>= 0xff000000) are the same on
//! both sides.
//!
//! Fds, per message (the protocol XML says which carry one):
//! * `wl_shm.create_pool`: the pool is mirrored into a host allocation ([`super::shm`]);
//!   an fd that already is a virtio-wl allocation is passed through, no copy.
//! * `*.receive` (clipboard, client gives a pipe's write end): a host pipe is made and its
//!   bytes copied into the client's pipe by a relay thread.
//! * `*.send` events (the host compositor gives a write end): the client gets a local pipe's
//!   write end, a relay thread copies into the host's.
//! * `wl_keyboard.keymap`: the host's keymap is copied into a local sealed memfd.
//!
//! Anything else with an fd, an unknown object or a malformed message ends the connection.
//!
//! This file holds the connection's state and its poll loop; `conn/requests.rs` relays the
//! client's requests, `conn/events.rs` the compositor's events, `conn/decode.rs` walks a
//! message's arguments by its signature and `conn/fds.rs` holds the fd paths (pipe copies,
//! the keymap copy).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::shm::{Buffer, Pool, SurfaceDamage};
use super::xml::Protocols;
use crate::transport::Transport;

mod decode;
mod events;
mod fds;
mod requests;
#[cfg(test)]
mod tests;

pub use fds::is_virtwl_vfd;

/// First server-allocated id (libwayland's WL_SERVER_ID_START).
const SERVER_ID_START: u32 = 0xff00_0000;
/// The most bytes one upstream send carries (the virtio-wl device takes 4 KiB buffers; the
/// driver splits larger ones, so keep whole messages within one).
const UPSTREAM_CHUNK: usize = 4096;
/// Commits not counted in [`Stats::bytes_copied_after_warmup`].
pub const WARMUP_COMMITS: u64 = 4;
/// Wayland's largest message.
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("client protocol error: {0}")]
    Client(String),
    #[error("host compositor sent something the proxy cannot relay: {0}")]
    Host(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn client_err<T>(s: impl Into<String>) -> Result<T, ProxyError> {
    Err(ProxyError::Client(s.into()))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Copy whole buffers at each commit instead of the damage (for comparison).
    pub copy_whole: bool,
    pub verbose: bool,
}

/// Counters for one connection (printed when it ends; the bench reads them).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub requests: u64,
    pub events: u64,
    pub commits_copied: u64,
    pub bytes_copied: u64,
    /// Bytes copied by commits after the first [`WARMUP_COMMITS`] of the connection (the
    /// first uses of each buffer are whole copies): the steady state the bench reports.
    pub bytes_copied_after_warmup: u64,
    pub pools_mirrored: u64,
    pub pools_passed_through: u64,
    pub globals_hidden: u64,
}

struct Obj {
    iface: usize,
    /// The client's id for it; None = an object of the proxy's own (an old pool twin).
    client: Option<u32>,
}

pub struct Conn<'p> {
    protos: &'p Protocols,
    opts: Options,
    client: Box<dyn Transport>,
    up: Box<dyn Transport>,
    /// host id -> object
    objs: HashMap<u32, Obj>,
    /// client id -> host id
    c2h: HashMap<u32, u32>,
    host_next: u32,
    host_free: Vec<u32>,
    /// Registry names hidden from the client.
    hidden: HashSet<u32>,
    /// Registry names announced to the client.
    announced: HashSet<u32>,
    pools: HashMap<u32, Pool>,
    buffers: HashMap<u32, Buffer>,
    surfaces: HashMap<u32, SurfaceDamage>,
    /// wp_viewport client id -> surface client id
    viewports: HashMap<u32, u32>,
    cin: Vec<u8>,
    cfds: VecDeque<OwnedFd>,
    uin: Vec<u8>,
    ufds: VecDeque<OwnedFd>,
    pub stats: Stats,
}

/// Messages and fds waiting to go out on one side, flushed in chunks of whole messages.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Outbox {
    /// Sends what is queued, if anything, on `t` (the fds with the bytes) and empties the box.
    fn flush(&mut self, t: &mut dyn Transport) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let fds: Vec<RawFd> = self.fds.iter().map(|f| f.as_raw_fd()).collect();
        t.send(&self.bytes, &fds)?;
        self.bytes.clear();
        self.fds.clear();
        Ok(())
    }
}

impl<'p> Conn<'p> {
    pub fn new(
        protos: &'p Protocols,
        opts: Options,
        client: Box<dyn Transport>,
        up: Box<dyn Transport>,
    ) -> Result<Self, ProxyError> {
        let iface_display = protos
            .lookup("wl_display")
            .ok_or_else(|| ProxyError::Host("no wl_display in the protocol set".into()))?;
        let mut c = Conn {
            protos,
            opts,
            client,
            up,
            objs: HashMap::new(),
            c2h: HashMap::new(),
            host_next: 2,
            host_free: Vec::new(),
            hidden: HashSet::new(),
            announced: HashSet::new(),
            pools: HashMap::new(),
            buffers: HashMap::new(),
            surfaces: HashMap::new(),
            viewports: HashMap::new(),
            cin: Vec::new(),
            cfds: VecDeque::new(),
            uin: Vec::new(),
            ufds: VecDeque::new(),
            stats: Stats::default(),
        };
        c.map_object(1, 1, iface_display);
        Ok(c)
    }

    /// Records that the client's object `client` is the host's object `host`, of interface
    /// `iface`: a new object, or a pool the proxy moved to a new host id.
    fn map_object(&mut self, client: u32, host: u32, iface: usize) {
        self.objs.insert(
            host,
            Obj {
                iface,
                client: Some(client),
            },
        );
        self.c2h.insert(client, host);
    }

    /// Relays until either side closes. Ok(()) on a clean close.
    pub fn run(&mut self) -> Result<(), ProxyError> {
        loop {
            let mut pfd = [
                libc::pollfd {
                    fd: self.client.poll_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.up.poll_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two live pollfds.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if pfd[0].revents != 0 {
                match self.client.recv(&mut self.cin, &mut self.cfds) {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    // A client that dies mid-stream has simply left.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                self.pump_requests()?;
            }
            if pfd[1].revents != 0 {
                if !self.up.recv(&mut self.uin, &mut self.ufds)? {
                    return Err(ProxyError::Host(
                        "the host compositor closed the connection".into(),
                    ));
                }
                self.pump_events()?;
            }
        }
    }

    fn alloc_host_id(&mut self) -> u32 {
        self.host_free.pop().unwrap_or_else(|| {
            let id = self.host_next;
            self.host_next += 1;
            id
        })
    }
}
