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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::shm::{self, Buffer, ClientMap, Pool, Rect, SurfaceDamage};
use super::xml::{ArgType, Protocols};
use crate::transport::{Transport, MAX_FDS};

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

/// A little-endian cursor over one message's arguments.
struct Args<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Args<'a> {
    fn u32(&mut self) -> Option<u32> {
        let b = self.msg.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    }
    /// A string or array: returns its bytes (without padding) and moves past them.
    fn blob(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let padded = len.checked_add(3)? & !3;
        let b = self.msg.get(self.pos..self.pos.checked_add(padded)?)?;
        self.pos += padded;
        Some(&b[..len])
    }
}

/// One argument of a message as it sits on the wire; `pos` is where its u32 (for a new id of a
/// dynamic interface, the id's u32) is, for patching.
enum Wire<'a> {
    /// int, uint or fixed.
    Word {
        pos: usize,
        v: u32,
    },
    Str(&'a [u8]),
    Array,
    Object {
        pos: usize,
        id: u32,
    },
    /// `iface` is the interface's name: from the XML, or off the wire (`wl_registry.bind`).
    NewId {
        pos: usize,
        id: u32,
        iface: &'a str,
    },
    Fd,
}

/// Walks a message's arguments by its signature, shared by both directions (which differ only
/// in how they map ids). None: the message is too short for its signature. Also returns where
/// the arguments end.
fn decode<'a>(msg: &'a [u8], sig: &'a [ArgType]) -> Option<(Vec<Wire<'a>>, usize)> {
    let mut a = Args { msg, pos: 8 };
    let mut out = Vec::with_capacity(sig.len());
    for arg in sig {
        let pos = a.pos;
        out.push(match arg {
            ArgType::Int | ArgType::Uint | ArgType::Fixed => Wire::Word { pos, v: a.u32()? },
            ArgType::Str => Wire::Str(a.blob()?),
            ArgType::Array => {
                a.blob()?;
                Wire::Array
            }
            ArgType::Object => Wire::Object { pos, id: a.u32()? },
            ArgType::NewId(named) => {
                let iface = match named {
                    Some(n) => n.as_str(),
                    None => {
                        let n = str_of(a.blob()?).unwrap_or_default();
                        let _version = a.u32()?;
                        n
                    }
                };
                let pos = a.pos;
                Wire::NewId {
                    pos,
                    id: a.u32()?,
                    iface,
                }
            }
            ArgType::Fd => Wire::Fd,
        });
    }
    Some((out, a.pos))
}

fn str_of(b: &[u8]) -> Option<&str> {
    // Wayland strings carry their NUL.
    std::str::from_utf8(b.strip_suffix(&[0])?).ok()
}

fn put_u32(buf: &mut [u8], pos: usize, v: u32) {
    buf[pos..pos + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Splits the next whole message off `buf`: (object, opcode, size) or None if incomplete.
fn header(buf: &[u8]) -> Result<Option<(u32, u16, usize)>, String> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let obj = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let w = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let size = (w >> 16) as usize;
    if size < 8 || !size.is_multiple_of(4) || size > MAX_MESSAGE {
        return Err(format!("bad message size {size}"));
    }
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((obj, (w & 0xffff) as u16, size)))
}

/// Messages and fds waiting to go out on one side, flushed in chunks of whole messages.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
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
        c.objs.insert(
            1,
            Obj {
                iface: iface_display,
                client: Some(1),
            },
        );
        c.c2h.insert(1, 1);
        Ok(c)
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

    // -------------------------------------------------------------------------------------
    // client -> host
    // -------------------------------------------------------------------------------------

    fn pump_requests(&mut self) -> Result<(), ProxyError> {
        let mut out = Outbox::default();
        let mut off = 0;
        loop {
            let rest = &self.cin[off..];
            let Some((obj, op, size)) = header(rest).map_err(ProxyError::Client)? else {
                break;
            };
            let msg = rest[..size].to_vec();
            if !self.request(obj, op, msg, &mut out)? {
                break; // its fds have not arrived yet
            }
            off += size;
            self.stats.requests += 1;
        }
        self.cin.drain(..off);
        self.flush_up(&mut out)
    }

    fn flush_up(&mut self, out: &mut Outbox) -> Result<(), ProxyError> {
        if out.bytes.is_empty() {
            return Ok(());
        }
        let fds: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
        self.up.send(&out.bytes, &fds)?;
        out.bytes.clear();
        out.fds.clear();
        Ok(())
    }

    /// Queues a message for upstream, flushing first if it would not fit in the chunk.
    fn queue_up(
        &mut self,
        out: &mut Outbox,
        msg: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), ProxyError> {
        if out.bytes.len() + msg.len() > UPSTREAM_CHUNK || out.fds.len() + fds.len() > MAX_FDS {
            self.flush_up(out)?;
        }
        out.bytes.extend_from_slice(msg);
        out.fds.extend(fds);
        Ok(())
    }

    /// Handles one request; Ok(false) if it must wait for more fds.
    fn request(
        &mut self,
        cobj: u32,
        op: u16,
        mut msg: Vec<u8>,
        out: &mut Outbox,
    ) -> Result<bool, ProxyError> {
        let Some(&hobj) = self.c2h.get(&cobj) else {
            return client_err(format!("request to unknown object {cobj}"));
        };
        let Some(obj) = self.objs.get(&hobj) else {
            return client_err(format!("request to unknown object {cobj}"));
        };
        let iface = obj.iface;
        let protos = self.protos;
        let spec = protos.get(iface);
        let Some(m) = spec.requests.get(op as usize) else {
            return client_err(format!("{}: no request {op}", spec.name));
        };
        if self.cfds.len() < m.fd_count() {
            return Ok(false);
        }
        put_u32(&mut msg, 0, hobj);
        let mut fds_in: Vec<OwnedFd> = Vec::new();
        // Decoded values the special cases below need.
        let mut uints: Vec<u32> = Vec::new();
        let mut new_ids: Vec<(u32, u32)> = Vec::new(); // (client, host)
        let mut objects: Vec<u32> = Vec::new(); // client ids of object args
        let mut patches: Vec<(usize, u32)> = Vec::new();
        {
            let Some((wire, end)) = decode(&msg, &m.args) else {
                return client_err(format!("{}.{}: message too short", spec.name, m.name));
            };
            if end != msg.len() {
                return client_err(format!(
                    "{}.{}: {} stray bytes",
                    spec.name,
                    m.name,
                    msg.len() - end
                ));
            }
            for w in wire {
                match w {
                    Wire::Word { v, .. } => uints.push(v),
                    Wire::Str(_) | Wire::Array => {}
                    Wire::Object { pos, id } => {
                        objects.push(id);
                        if id != 0 {
                            let Some(&h) = self.c2h.get(&id) else {
                                return client_err(format!(
                                    "{}.{}: unknown object {id}",
                                    spec.name, m.name
                                ));
                            };
                            patches.push((pos, h));
                        }
                    }
                    Wire::NewId { pos, id, iface } => {
                        if id == 0 || id >= SERVER_ID_START || self.c2h.contains_key(&id) {
                            return client_err(format!(
                                "{}.{}: bad new id {id}",
                                spec.name, m.name
                            ));
                        }
                        let Some(new_iface) = protos.lookup(iface) else {
                            return client_err(format!(
                                "{}.{}: interface {iface} is not relayed",
                                spec.name, m.name
                            ));
                        };
                        let h = self.alloc_host_id();
                        self.c2h.insert(id, h);
                        self.objs.insert(
                            h,
                            Obj {
                                iface: new_iface,
                                client: Some(id),
                            },
                        );
                        patches.push((pos, h));
                        new_ids.push((id, h));
                    }
                    Wire::Fd => {
                        // Checked above: enough fds are queued.
                        if let Some(fd) = self.cfds.pop_front() {
                            fds_in.push(fd);
                        }
                    }
                }
            }
        }
        for (pos, v) in patches {
            put_u32(&mut msg, pos, v);
        }
        let name = (spec.name.as_str(), m.name.as_str());
        // The new object's client id, for requests that create one.
        let new_cid = new_ids.first().map(|n| n.0).unwrap_or(0);
        let fds_out = match name {
            ("wl_registry", "bind") => {
                let gname = uints.first().copied().unwrap_or(0);
                if !self.announced.contains(&gname) {
                    return client_err(format!("bind of global {gname}, which was not announced"));
                }
                Vec::new()
            }
            ("wl_shm", "create_pool") => {
                let cid = new_cid;
                let size = uints.first().copied().unwrap_or(0) as i32;
                let fd = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Client("create_pool without fd".into()))?;
                vec![self.create_pool(hobj, cid, fd, size)?]
            }
            ("wl_shm_pool", "resize") => {
                let size = uints.first().copied().unwrap_or(0) as i32;
                if self.resize_pool(cobj, size, out)? {
                    // The proxy replaced the host pool with a larger one: nothing to forward.
                    return Ok(true);
                }
                Vec::new()
            }
            ("wl_shm_pool", "create_buffer") => {
                let cid = new_cid;
                if let Some(pool) = self.pools.get(&cobj) {
                    let [offset, width, height, stride, format] = uints[..] else {
                        return client_err("create_buffer: bad arguments");
                    };
                    let b = Buffer {
                        client: pool.client.clone(),
                        twin: pool.twin.clone(),
                        offset: offset as i32 as usize,
                        width: width as i32,
                        height: height as i32,
                        stride: stride as i32 as usize,
                        bpp: shm::bytes_per_pixel(format),
                    };
                    // Out-of-bounds buffers are forwarded: the compositor reports the error.
                    if (offset as i32) >= 0 && (stride as i32) >= 0 {
                        self.buffers.insert(cid, b);
                    }
                }
                Vec::new()
            }
            ("wl_shm_pool", "destroy") => {
                self.pools.remove(&cobj);
                Vec::new()
            }
            ("wl_buffer", "destroy") => {
                self.buffers.remove(&cobj);
                for s in self.surfaces.values_mut() {
                    s.forget_buffer(cobj);
                }
                Vec::new()
            }
            ("wl_compositor", "create_surface") => {
                self.surfaces.insert(new_cid, SurfaceDamage::new());
                Vec::new()
            }
            ("wl_surface", _) => {
                self.surface_request(cobj, m.name.as_str(), &objects, &uints);
                Vec::new()
            }
            ("wp_viewporter", "get_viewport") => {
                let surface = objects.first().copied().unwrap_or(0);
                self.viewports.insert(new_cid, surface);
                if let Some(s) = self.surfaces.get_mut(&surface) {
                    s.has_viewport = true;
                }
                Vec::new()
            }
            ("wp_viewport", "destroy") => {
                if let Some(surface) = self.viewports.remove(&cobj) {
                    if let Some(s) = self.surfaces.get_mut(&surface) {
                        s.has_viewport = false;
                    }
                }
                Vec::new()
            }
            ("wl_data_offer", "receive") | ("zwp_primary_selection_offer_v1", "receive") => {
                let fd = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Client("receive without fd".into()))?;
                vec![self.receive_pipe(fd)?]
            }
            _ => {
                if !fds_in.is_empty() {
                    return client_err(format!(
                        "{}.{} carries an fd the proxy cannot relay",
                        name.0, name.1
                    ));
                }
                Vec::new()
            }
        };
        let is_commit = name == ("wl_surface", "commit");
        if is_commit {
            self.commit(cobj);
        }
        self.queue_up(out, &msg, fds_out)?;
        Ok(true)
    }

    fn surface_request(&mut self, cobj: u32, req: &str, objects: &[u32], uints: &[u32]) {
        let Some(s) = self.surfaces.get_mut(&cobj) else {
            return;
        };
        let rect = |u: &[u32]| -> Option<Rect> {
            let [x, y, w, h] = u[..] else { return None };
            Some(Rect {
                x: x as i32,
                y: y as i32,
                w: w as i32,
                h: h as i32,
            })
        };
        match req {
            "attach" => {
                let b = objects.first().copied().unwrap_or(0);
                s.pending_attach = Some((b != 0).then_some(b));
            }
            "damage" => s.surface_damage.extend(rect(uints)),
            "damage_buffer" => s.buffer_damage.extend(rect(uints)),
            "set_buffer_scale" => s.pending_scale = uints.first().map(|v| *v as i32),
            "set_buffer_transform" => s.pending_transform = uints.first().map(|v| *v as i32),
            "destroy" => {
                self.surfaces.remove(&cobj);
            }
            _ => {}
        }
    }

    /// At a surface commit: copy what the client damaged into the attached buffer's twin.
    fn commit(&mut self, surface: u32) {
        let Some(s) = self.surfaces.get_mut(&surface) else {
            return;
        };
        let buffers = &self.buffers;
        let Some((buf, region)) = s.commit(|b| buffers.contains_key(&b), self.opts.copy_whole)
        else {
            return;
        };
        if let Some(b) = self.buffers.get(&buf) {
            let n = b.copy(&region) as u64;
            self.stats.bytes_copied += n;
            self.stats.commits_copied += 1;
            if self.stats.commits_copied > WARMUP_COMMITS {
                self.stats.bytes_copied_after_warmup += n;
            }
        }
    }

    /// wl_shm.create_pool: returns the fd to send in the client's fd's place.
    fn create_pool(
        &mut self,
        shm_host: u32,
        cid: u32,
        fd: OwnedFd,
        size: i32,
    ) -> Result<OwnedFd, ProxyError> {
        if is_virtwl_vfd(&fd) {
            // Host memory already: the compositor reads it directly.
            self.stats.pools_passed_through += 1;
            return Ok(fd);
        }
        let Ok(size) = usize::try_from(size) else {
            return client_err(format!("create_pool with size {size}"));
        };
        let client = ClientMap::new(fd, size)
            .map_err(|e| ProxyError::Client(format!("create_pool: {e}")))?;
        let twin = self.up.alloc(size)?;
        let send = dup_fd(twin.fd())?;
        self.pools.insert(
            cid,
            Pool {
                shm_host,
                client: Rc::new(RefCell::new(client)),
                twin: Rc::new(RefCell::new(twin)),
            },
        );
        self.stats.pools_mirrored += 1;
        Ok(send)
    }

    /// wl_shm_pool.resize of a mirrored pool. Ok(true) if the proxy replaced the host pool
    /// (the twin is too small to grow in place).
    fn resize_pool(&mut self, cobj: u32, size: i32, out: &mut Outbox) -> Result<bool, ProxyError> {
        let Some(pool) = self.pools.get(&cobj) else {
            return Ok(false);
        };
        let Ok(size) = usize::try_from(size) else {
            return client_err(format!("resize to {size}"));
        };
        if size < pool.client.borrow().len() {
            return client_err("wl_shm_pool.resize cannot shrink a pool");
        }
        // Buffers made before keep the old mapping (their Rc); new ones get the new one.
        let fd = dup_fd(pool.client.borrow().raw_fd())?;
        let client =
            ClientMap::new(fd, size).map_err(|e| ProxyError::Client(format!("resize: {e}")))?;
        let shm_host = pool.shm_host;
        let fits = size <= pool.twin.borrow().len();
        if fits {
            let twin = pool.twin.clone();
            self.pools.insert(
                cobj,
                Pool {
                    shm_host,
                    client: Rc::new(RefCell::new(client)),
                    twin,
                },
            );
            return Ok(false);
        }
        // A new twin and a new host pool in the old one's place; the old host pool is
        // destroyed (its buffers live on in the compositor).
        let twin = self.up.alloc(size)?;
        let send = dup_fd(twin.fd())?;
        let Some(&old_host) = self.c2h.get(&cobj) else {
            return client_err("resize of an unknown pool");
        };
        let Some(iface) = self.objs.get(&old_host).map(|o| o.iface) else {
            return client_err("resize of an unknown pool");
        };
        let new_host = self.alloc_host_id();
        self.objs.insert(
            old_host,
            Obj {
                iface,
                client: None,
            },
        );
        self.objs.insert(
            new_host,
            Obj {
                iface,
                client: Some(cobj),
            },
        );
        self.c2h.insert(cobj, new_host);
        // wl_shm.create_pool(new_host, fd, size), then wl_shm_pool.destroy(old_host).
        let mut create = Vec::with_capacity(16);
        create.extend_from_slice(&shm_host.to_ne_bytes());
        create.extend_from_slice(&(16u32 << 16).to_ne_bytes());
        create.extend_from_slice(&new_host.to_ne_bytes());
        create.extend_from_slice(&(size as u32).to_ne_bytes());
        self.queue_up(out, &create, vec![send])?;
        let mut destroy = Vec::with_capacity(8);
        destroy.extend_from_slice(&old_host.to_ne_bytes());
        destroy.extend_from_slice(&((8u32 << 16) | 1).to_ne_bytes());
        self.queue_up(out, &destroy, Vec::new())?;
        self.pools.insert(
            cobj,
            Pool {
                shm_host,
                client: Rc::new(RefCell::new(client)),
                twin: Rc::new(RefCell::new(twin)),
            },
        );
        Ok(true)
    }

    /// `*.receive(mime, fd)`: the host compositor writes into a host pipe; a relay thread
    /// copies into the client's write end. Returns the fd to send upstream.
    fn receive_pipe(&mut self, client_w: OwnedFd) -> Result<OwnedFd, ProxyError> {
        let ends = self.up.pipe_read()?;
        let send = dup_fd(ends.fd_to_send())?;
        let local = ends.local;
        drop(ends.remote);
        spawn_copy(local, client_w);
        Ok(send)
    }

    // -------------------------------------------------------------------------------------
    // host -> client
    // -------------------------------------------------------------------------------------

    fn pump_events(&mut self) -> Result<(), ProxyError> {
        let mut out = Outbox::default();
        let mut off = 0;
        loop {
            let rest = &self.uin[off..];
            let Some((obj, op, size)) = header(rest).map_err(ProxyError::Host)? else {
                break;
            };
            let msg = rest[..size].to_vec();
            if !self.event(obj, op, msg, &mut out)? {
                break;
            }
            off += size;
            self.stats.events += 1;
            if out.fds.len() + 2 >= MAX_FDS {
                let fds: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
                self.client.send(&out.bytes, &fds)?;
                out = Outbox::default();
            }
        }
        self.uin.drain(..off);
        if !out.bytes.is_empty() {
            let fds: Vec<RawFd> = out.fds.iter().map(|f| f.as_raw_fd()).collect();
            self.client.send(&out.bytes, &fds)?;
        }
        Ok(())
    }

    /// Handles one event; Ok(false) if its fds have not arrived yet.
    fn event(
        &mut self,
        hobj: u32,
        op: u16,
        mut msg: Vec<u8>,
        out: &mut Outbox,
    ) -> Result<bool, ProxyError> {
        let protos = self.protos;
        let Some(obj) = self.objs.get(&hobj) else {
            // An object the proxy never saw: nothing the client could take it for.
            if self.opts.verbose {
                eprintln!("qvm-wl-proxy: dropping an event for unknown object {hobj}");
            }
            return Ok(true);
        };
        let spec = protos.get(obj.iface);
        let Some(m) = spec.events.get(op as usize) else {
            return Err(ProxyError::Host(format!("{}: no event {op}", spec.name)));
        };
        if self.ufds.len() < m.fd_count() {
            return Ok(false);
        }
        let mut fds_in: Vec<OwnedFd> = (0..m.fd_count())
            .filter_map(|_| self.ufds.pop_front())
            .collect();
        let Some(cobj) = obj.client else {
            // For one of the proxy's own objects (an old pool twin): swallowed.
            return Ok(true);
        };
        put_u32(&mut msg, 0, cobj);
        let mut uints: Vec<u32> = Vec::new();
        let mut strings: Vec<String> = Vec::new();
        let mut uint_pos: Vec<usize> = Vec::new();
        let mut patches: Vec<(usize, u32)> = Vec::new();
        {
            let Some((wire, _)) = decode(&msg, &m.args) else {
                return Err(ProxyError::Host(format!(
                    "{}.{}: message too short",
                    spec.name, m.name
                )));
            };
            for w in wire {
                match w {
                    Wire::Word { pos, v } => {
                        uint_pos.push(pos);
                        uints.push(v);
                    }
                    Wire::Str(b) => strings.push(str_of(b).unwrap_or_default().to_string()),
                    Wire::Array | Wire::Fd => {}
                    Wire::Object { pos, id } => {
                        if id != 0 {
                            match self.objs.get(&id).and_then(|o| o.client) {
                                Some(c) => patches.push((pos, c)),
                                // An object the client cannot know: the event is meaningless
                                // to it (e.g. about a proxy-internal object).
                                None => return Ok(true),
                            }
                        }
                    }
                    Wire::NewId { id, iface, .. } => {
                        let Some(iface) = protos.lookup(iface) else {
                            return Err(ProxyError::Host(format!(
                                "{}.{}: new object of unknown interface",
                                spec.name, m.name
                            )));
                        };
                        if id < SERVER_ID_START {
                            return Err(ProxyError::Host(format!(
                                "{}.{}: new id {id} not server-allocated",
                                spec.name, m.name
                            )));
                        }
                        self.objs.insert(
                            id,
                            Obj {
                                iface,
                                client: Some(id),
                            },
                        );
                        self.c2h.insert(id, id);
                    }
                }
            }
        }
        for (pos, v) in patches {
            put_u32(&mut msg, pos, v);
        }
        let name = (spec.name.as_str(), m.name.as_str());
        let mut fds_out: Vec<OwnedFd> = Vec::new();
        match name {
            ("wl_display", "delete_id") => {
                let host = uints.first().copied().unwrap_or(0);
                let Some(o) = self.objs.remove(&host) else {
                    return Ok(true);
                };
                self.host_free.push(host);
                let Some(c) = o.client else {
                    return Ok(true); // the proxy's own object
                };
                if self.c2h.get(&c) == Some(&host) {
                    self.c2h.remove(&c);
                }
                if let Some(&pos) = uint_pos.first() {
                    put_u32(&mut msg, pos, c);
                }
            }
            ("wl_registry", "global") => {
                let gname = uints.first().copied().unwrap_or(0);
                let version = uints.get(1).copied().unwrap_or(0);
                let iface = strings.first().map(String::as_str).unwrap_or("");
                match protos.lookup(iface) {
                    Some(i) => {
                        // Pass the host's version through, capped at what the proxy's XML
                        // describes (newer messages could carry fds it cannot find).
                        let ours = protos.get(i).version;
                        if let (true, Some(&pos)) = (version > ours, uint_pos.get(1)) {
                            put_u32(&mut msg, pos, ours);
                        }
                        self.announced.insert(gname);
                    }
                    None => {
                        if self.opts.verbose {
                            eprintln!("qvm-wl-proxy: hiding global {iface} v{version} (not in the proxy's protocol set)");
                        }
                        self.hidden.insert(gname);
                        self.stats.globals_hidden += 1;
                        return Ok(true);
                    }
                }
            }
            ("wl_registry", "global_remove") => {
                let gname = uints.first().copied().unwrap_or(0);
                if self.hidden.remove(&gname) {
                    return Ok(true);
                }
                self.announced.remove(&gname);
            }
            ("wl_keyboard", "keymap") => {
                let size = uints.get(1).copied().unwrap_or(0) as usize;
                let fd = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Host("keymap without fd".into()))?;
                fds_out.push(copy_keymap(&fd, size)?);
            }
            ("wl_data_source", "send") | ("zwp_primary_selection_source_v1", "send") => {
                let host_w = fds_in
                    .pop()
                    .ok_or_else(|| ProxyError::Host("send without fd".into()))?;
                let (r, w) = local_pipe()?;
                spawn_copy(r, host_w);
                fds_out.push(w);
            }
            _ => {
                if !fds_in.is_empty() {
                    return Err(ProxyError::Host(format!(
                        "{}.{} carries an fd the proxy cannot relay",
                        name.0, name.1
                    )));
                }
            }
        }
        if name.0 == "wl_display" && name.1 == "error" && self.opts.verbose {
            eprintln!(
                "qvm-wl-proxy: compositor error for the client: {:?}",
                strings.first()
            );
        }
        out.bytes.extend_from_slice(&msg);
        out.fds.extend(fds_out);
        Ok(true)
    }
}

fn dup_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd gives a new fd we own.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a new fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Whether `fd` is a virtio-wl allocation (`/dev/wl0` vfd): its pages are host memory.
pub fn is_virtwl_vfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[virtwl_vfd]")
}

fn local_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [-1; 2];
    // SAFETY: p has room for two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

/// Copies `from` into `to` until end of file, in a thread (clipboard transfers).
fn spawn_copy(from: OwnedFd, to: OwnedFd) {
    std::thread::spawn(move || {
        let mut from = std::fs::File::from(from);
        let mut to = std::fs::File::from(to);
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
}

/// The host's keymap (a vfd or, on a socket upstream, the compositor's read-only file) copied
/// into a local sealed memfd of `size` bytes, which clients may map as they like.
fn copy_keymap(fd: &OwnedFd, size: usize) -> Result<OwnedFd, ProxyError> {
    if size == 0 || size > 16 << 20 {
        return Err(ProxyError::Host(format!("keymap of {size} bytes")));
    }
    // SAFETY: a read-only shared mapping of the received fd; checked for failure.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(ProxyError::Io(io::Error::other(format!(
            "mapping the keymap: {}",
            io::Error::last_os_error()
        ))));
    }
    // SAFETY: the mapping is `size` bytes, live until munmap below.
    let data = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), size) }.to_vec();
    // SAFETY: our mapping, unmapped once.
    unsafe { libc::munmap(ptr, size) };
    // SAFETY: literal name; new fd checked.
    let m = unsafe {
        libc::memfd_create(
            c"qvm-keymap".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if m < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: a new fd we own.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(m) });
    f.write_all(&data)?;
    // SAFETY: sealing our own memfd.
    unsafe {
        libc::fcntl(
            m,
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
        )
    };
    Ok(OwnedFd::from(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::SocketTransport;
    use std::os::unix::net::UnixStream;

    /// A tiny deterministic generator (no extra crates).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
    }

    fn msg(obj: u32, op: u16, args: &[u32]) -> Vec<u8> {
        let size = 8 + 4 * args.len() as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&obj.to_ne_bytes());
        v.extend_from_slice(&((size << 16) | u32::from(op)).to_ne_bytes());
        for a in args {
            v.extend_from_slice(&a.to_ne_bytes());
        }
        v
    }

    /// Relays between an app's socket and a compositor's (both socket pairs) until one ends.
    fn relay(protos: &Protocols, app: UnixStream, comp: UnixStream) -> Result<(), ProxyError> {
        Conn::new(
            protos,
            Options::default(),
            Box::new(SocketTransport::from_stream(app)),
            Box::new(SocketTransport::from_stream(comp)),
        )
        .unwrap()
        .run()
    }

    /// Hostile streams from both sides end the connection with an error or cleanly, never a
    /// panic: random bytes, and plausible messages with random ids, opcodes and arguments.
    #[test]
    fn hostile_streams_never_panic() {
        let protos = Protocols::builtin().unwrap();
        let mut rng = Rng(7);
        for round in 0..300 {
            let (c_app, c_proxy) = UnixStream::pair().unwrap();
            let (u_proxy, u_comp) = UnixStream::pair().unwrap();
            let mut bytes_c = Vec::new();
            let mut bytes_u = Vec::new();
            // A sane start: get_registry, then noise.
            bytes_c.extend(msg(1, 1, &[2]));
            for _ in 0..(rng.next() % 20) {
                let obj = rng.next() % 6;
                let op = (rng.next() % 4) as u16;
                let args: Vec<u32> = (0..rng.next() % 6).map(|_| rng.next() % 8).collect();
                if round % 3 == 0 {
                    bytes_c.extend((0..rng.next() % 40).map(|_| rng.next() as u8));
                } else {
                    bytes_c.extend(msg(obj, op, &args));
                }
                let ev: Vec<u32> = (0..rng.next() % 6).map(|_| rng.next() % 8).collect();
                bytes_u.extend(msg(rng.next() % 4, (rng.next() % 3) as u16, &ev));
            }
            let protos = &protos;
            std::thread::scope(|s| {
                let h = s.spawn(move || {
                    let _ = relay(protos, c_proxy, u_proxy);
                });
                let mut c_app = c_app;
                let mut u_comp = u_comp;
                let _ = c_app.write_all(&bytes_c);
                let _ = u_comp.write_all(&bytes_u);
                drop(c_app);
                drop(u_comp);
                h.join().expect("the proxy connection panicked");
            });
        }
    }

    /// One end of a scripted conversation: the app in front of the proxy, or the compositor
    /// behind it.
    struct Peer {
        t: SocketTransport,
        buf: Vec<u8>,
        fds: VecDeque<OwnedFd>,
    }

    /// An argument for [`wire`].
    enum A<'a> {
        U(u32),
        S(&'a str),
    }

    /// A message with string arguments (NUL-terminated, padded).
    fn wire(obj: u32, op: u16, args: &[A]) -> Vec<u8> {
        let mut body = Vec::new();
        for a in args {
            match a {
                A::U(v) => body.extend_from_slice(&v.to_ne_bytes()),
                A::S(s) => {
                    body.extend_from_slice(&(s.len() as u32 + 1).to_ne_bytes());
                    body.extend_from_slice(s.as_bytes());
                    body.push(0);
                    while body.len() % 4 != 0 {
                        body.push(0);
                    }
                }
            }
        }
        let mut v = obj.to_ne_bytes().to_vec();
        v.extend_from_slice(&(((8 + body.len() as u32) << 16) | u32::from(op)).to_ne_bytes());
        v.extend(body);
        v
    }

    /// Reads a message's arguments in order.
    struct Rd<'a>(Args<'a>);
    impl Rd<'_> {
        fn u(&mut self) -> u32 {
            self.0.u32().expect("a u32 argument")
        }
        fn s(&mut self) -> String {
            str_of(self.0.blob().expect("a string argument"))
                .expect("a NUL-terminated string")
                .to_string()
        }
    }

    impl Peer {
        fn new(sock: UnixStream) -> Peer {
            Peer {
                t: SocketTransport::from_stream(sock),
                buf: Vec::new(),
                fds: VecDeque::new(),
            }
        }

        fn send(&mut self, m: &[u8], fds: &[RawFd]) {
            self.t.send(m, fds).expect("send");
        }

        /// The next whole message: (object, opcode, the message), waiting up to 10 s.
        fn next(&mut self) -> (u32, u16, Vec<u8>) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                if let Some((obj, op, size)) = header(&self.buf).expect("a sane header") {
                    let m: Vec<u8> = self.buf.drain(..size).collect();
                    return (obj, op, m);
                }
                assert!(std::time::Instant::now() < deadline, "no message in 10 s");
                let mut pfd = libc::pollfd {
                    fd: self.t.poll_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 100) };
                assert!(
                    self.t.recv(&mut self.buf, &mut self.fds).expect("recv"),
                    "the proxy hung up"
                );
            }
        }

        /// Skips messages until one for `op` (on `obj`, if given) comes; returns it.
        fn until(&mut self, obj: Option<u32>, op: u16) -> (u32, Vec<u8>) {
            loop {
                let (o, p, m) = self.next();
                if p == op && obj.is_none_or(|want| want == o) {
                    return (o, m);
                }
            }
        }
    }

    fn args(m: &[u8]) -> Rd<'_> {
        Rd(Args { msg: m, pos: 8 })
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        local_pipe().unwrap()
    }

    /// Primary selection both ways through the proxy, scripted on both sides (weston 10, the
    /// compositor of the end-to-end tests, offers no primary selection): the guest app's source
    /// is read by the host through the fd the host sends, and the host's offer is read by the
    /// app through the fd the app sends; ids are translated on the way.
    #[test]
    fn primary_selection_both_ways() {
        const MGR: &str = "zwp_primary_selection_device_manager_v1";
        let protos = Protocols::builtin().unwrap();
        let (c_app, c_proxy) = UnixStream::pair().unwrap();
        let (u_proxy, u_comp) = UnixStream::pair().unwrap();
        let protos = &protos;
        std::thread::scope(|sc| {
            let h = sc.spawn(move || relay(protos, c_proxy, u_proxy));
            let (mut app, mut comp) = (Peer::new(c_app), Peer::new(u_comp));
            // Registry: a seat and the primary selection manager.
            app.send(&wire(1, 1, &[A::U(2)]), &[]);
            let (_, m) = comp.until(Some(1), 1);
            let h_reg = args(&m).u();
            comp.send(&wire(h_reg, 0, &[A::U(1), A::S("wl_seat"), A::U(7)]), &[]);
            comp.send(&wire(h_reg, 0, &[A::U(2), A::S(MGR), A::U(1)]), &[]);
            let (_, m) = app.until(Some(2), 0);
            assert_eq!(args(&m).u(), 1);
            let (_, m) = app.until(Some(2), 0);
            let mut a = args(&m);
            assert_eq!((a.u(), a.s()), (2, MGR.to_string()));
            // Bind both, make a source offering text/plain, a device, and set the selection.
            app.send(
                &wire(2, 0, &[A::U(1), A::S("wl_seat"), A::U(7), A::U(3)]),
                &[],
            );
            app.send(&wire(2, 0, &[A::U(2), A::S(MGR), A::U(1), A::U(4)]), &[]);
            app.send(&wire(4, 0, &[A::U(5)]), &[]); // create_source
            app.send(&wire(5, 0, &[A::S("text/plain")]), &[]); // offer
            app.send(&wire(4, 1, &[A::U(6), A::U(3)]), &[]); // get_device(seat)
            app.send(&wire(6, 0, &[A::U(5), A::U(77)]), &[]); // set_selection
            let (_, m) = comp.until(Some(h_reg), 0);
            let mut a = args(&m);
            let (_, _, _, h_seat) = (a.u(), a.s(), a.u(), a.u());
            let (_, m) = comp.until(Some(h_reg), 0);
            let mut a = args(&m);
            let (_, _, _, h_mgr) = (a.u(), a.s(), a.u(), a.u());
            let (_, m) = comp.until(Some(h_mgr), 0);
            let h_src = args(&m).u();
            let (_, m) = comp.until(Some(h_src), 0);
            assert_eq!(args(&m).s(), "text/plain");
            let (_, m) = comp.until(Some(h_mgr), 1);
            let mut a = args(&m);
            let h_dev = a.u();
            assert_eq!(a.u(), h_seat, "get_device names the host's seat");
            let (_, m) = comp.until(Some(h_dev), 0);
            let mut a = args(&m);
            assert_eq!(
                (a.u(), a.u()),
                (h_src, 77),
                "set_selection names the host's source"
            );

            // Guest -> host: the host asks the guest's source for its data.
            let (r, w) = pipe();
            comp.send(&wire(h_src, 0, &[A::S("text/plain")]), &[w.as_raw_fd()]);
            drop(w);
            let (_, m) = app.until(Some(5), 0);
            assert_eq!(args(&m).s(), "text/plain");
            let fd = app.fds.pop_front().expect("send carries an fd");
            std::fs::File::from(fd).write_all(b"from-guest").unwrap();
            assert_eq!(read_all(r), "from-guest");

            // Host -> guest: a host offer becomes the selection; the app receives it.
            let offer = SERVER_ID_START + 1;
            comp.send(&wire(h_dev, 0, &[A::U(offer)]), &[]); // data_offer
            comp.send(&wire(offer, 0, &[A::S("text/plain")]), &[]); // offer.offer
            comp.send(&wire(h_dev, 1, &[A::U(offer)]), &[]); // selection
            let (_, m) = app.until(Some(6), 0);
            assert_eq!(args(&m).u(), offer);
            let (_, m) = app.until(Some(offer), 0);
            assert_eq!(args(&m).s(), "text/plain");
            let (_, m) = app.until(Some(6), 1);
            assert_eq!(args(&m).u(), offer);
            let (r, w) = pipe();
            app.send(&wire(offer, 0, &[A::S("text/plain")]), &[w.as_raw_fd()]);
            drop(w);
            let (_, m) = comp.until(Some(offer), 0);
            assert_eq!(args(&m).s(), "text/plain");
            let fd = comp.fds.pop_front().expect("receive carries an fd");
            std::fs::File::from(fd).write_all(b"from-host").unwrap();
            assert_eq!(read_all(r), "from-host");

            drop(app);
            drop(comp);
            let _ = h.join().expect("the proxy connection panicked");
        });
    }
}
