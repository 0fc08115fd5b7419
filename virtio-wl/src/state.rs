//! The device's protocol state: the vfd table, request execution, host events, and the queue
//! of messages waiting for in-queue buffers. Driven by plain calls (the worker, the tests and
//! the fuzz target all drive it the same way); it owns the epoll the worker waits on, so that
//! registering host fds stays next to the vfds they belong to.
//!
//! Zero copy: shared-memory vfds are fds handed to the mapper and to the compositor; this file
//! never maps, reads or writes buffer contents. The only bytes it moves are protocol bytes:
//! requests, responses, and Wayland messages between the guest and the compositor.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use qvm_devices::virtio::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use crate::chain::{read_out_chain, scatter, write_in_chain};
use crate::mapper::GuestMapper;
use crate::policy::{CtxPolicy, Rules, Violation};
use crate::protocol::*;
use crate::sys;
use crate::vfd::{PipeDir, Vfd, VfdKind};
use crate::{WlConfig, WlMetrics};

/// Epoll tokens of vfds: this bit plus the vfd id. (Lower values are the worker's.)
pub const VFD_TOKEN: u64 = 1 << 32;
/// How long a VFD_SEND may wait for the compositor (or a pipe reader) to take the bytes.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long NEW_CTX retries a listener whose backlog is full.
pub const CONNECT_PATIENCE: Duration = Duration::from_millis(500);
/// Messages logged per device activation before we go quiet (counters keep counting).
const LOG_BUDGET: u32 = 64;
/// The largest write-protected shm file from the compositor that is copied for the guest
/// (keymaps are tens of KiB).
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 20;

/// A message waiting for an in-queue buffer.
#[derive(Debug)]
struct InMsg {
    /// The vfd it is about (the ctx of a VFD_NEW/VFD_RECV, the vfd of a VFD_HUP).
    about: u32,
    /// For a VFD_NEW: the new host vfd it announces.
    announces: Option<u32>,
    bytes: Vec<u8>,
}

pub struct WlState {
    cfg: Arc<WlConfig>,
    mapper: Arc<dyn GuestMapper>,
    metrics: Arc<WlMetrics>,
    trans_flags: bool,
    send_fences: bool,
    use_shmem: bool,
    window: (u64, u64),
    vfds: BTreeMap<u32, Vfd>,
    next_host_id: u32,
    mapped: u64,
    pending: VecDeque<InMsg>,
    epoll: Epoll,
    /// Whether host fds are read now (watched in epoll).
    reading: bool,
    /// A vfd was added or hung up since the last `sync_interest`.
    dirty: bool,
    /// Bounded waits also end when this fd (the worker's stop eventfd) becomes readable.
    stop_fd: Option<RawFd>,
    send_timeout: Duration,
    log_budget: u32,
    /// The VM's policy, and each context's protocol state under it.
    rules: Option<Arc<Rules>>,
    policies: BTreeMap<u32, CtxPolicy>,
}

impl WlState {
    /// `acked`: the features the driver accepted.
    pub fn new(
        cfg: Arc<WlConfig>,
        mapper: Arc<dyn GuestMapper>,
        metrics: Arc<WlMetrics>,
        acked: u64,
    ) -> io::Result<WlState> {
        let window = mapper.window();
        let rules = cfg.policy.as_ref().map(|p| Arc::new(Rules::new(p)));
        Ok(WlState {
            rules,
            policies: BTreeMap::new(),
            cfg,
            mapper,
            metrics,
            trans_flags: acked & F_TRANS_FLAGS != 0,
            send_fences: acked & F_SEND_FENCES != 0,
            use_shmem: acked & F_USE_SHMEM != 0,
            window,
            vfds: BTreeMap::new(),
            next_host_id: HOST_ID_BASE,
            mapped: 0,
            pending: VecDeque::new(),
            epoll: Epoll::new()?,
            reading: true,
            dirty: false,
            stop_fd: None,
            send_timeout: SEND_TIMEOUT,
            log_budget: LOG_BUDGET,
        })
    }

    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    pub fn set_stop_fd(&mut self, fd: Option<RawFd>) {
        self.stop_fd = fd;
    }

    /// How many more messages may be logged (0: quiet, e.g. when fuzzing).
    pub fn set_log_budget(&mut self, n: u32) {
        self.log_budget = n;
    }

    /// How long a VFD_SEND waits for a full peer ([`SEND_TIMEOUT`] unless changed).
    pub fn set_send_timeout(&mut self, t: Duration) {
        self.send_timeout = t;
    }

    pub fn vfd_count(&self) -> usize {
        self.vfds.len()
    }

    pub fn vfd(&self, id: u32) -> Option<&Vfd> {
        self.vfds.get(&id)
    }

    pub fn vfd_ids(&self) -> Vec<u32> {
        self.vfds.keys().copied().collect()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// Whether host fds are being read (false while the guest is behind).
    pub fn reading(&self) -> bool {
        self.reading
    }

    fn log(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.log_budget > 0 {
            self.log_budget -= 1;
            eprintln!("virtio-wl: {msg}");
            if self.log_budget == 0 {
                eprintln!("virtio-wl: further messages are suppressed (see the device counters)");
            }
        }
    }

    fn count(&self, c: &std::sync::atomic::AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn update_gauges(&self) {
        self.metrics
            .vfds_open
            .store(self.vfds.len() as u64, Ordering::Relaxed);
        self.metrics
            .mapped_bytes
            .store(self.mapped, Ordering::Relaxed);
    }

    /// The page frame number the guest is told for a mapping at `gpa`: absolute, or an
    /// offset into shm region 0 with USE_SHMEM.
    fn pfn(&self, gpa: u64) -> u64 {
        if self.use_shmem {
            gpa.saturating_sub(self.window.0) >> PFN_SHIFT
        } else {
            gpa >> PFN_SHIFT
        }
    }

    // -----------------------------------------------------------------------------------------
    // Out queue
    // -----------------------------------------------------------------------------------------

    /// Serves every available out-queue chain; true if any was used.
    pub fn process_out(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let out = read_out_chain(mem, chain);
            let resp = match out.request {
                Ok(req) => self.execute(&req),
                Err(e) => {
                    self.count(&self.metrics.malformed, 1);
                    self.count(&self.metrics.errors, 1);
                    self.log(format_args!("malformed out-queue chain: {e}"));
                    Response::ERR
                }
            };
            // No writable descriptor: the chain is consumed with length 0.
            let len = scatter(mem, &out.writable, &resp.encode());
            if let Err(e) = q.add_used(mem, head, len) {
                self.log(format_args!("cannot return out-queue chain {head}: {e}"));
            }
            used = true;
        }
        used
    }

    /// Executes one request (its bytes gathered from the chain) and says what to answer.
    pub fn execute(&mut self, req: &[u8]) -> Response {
        self.count(&self.metrics.requests, 1);
        let resp = match parse_request(req, self.send_fences) {
            Ok(r) => self.dispatch(r),
            Err(e) => {
                self.log(format_args!("bad request: {e}"));
                Response::Code(e.response())
            }
        };
        if resp.is_error() {
            self.count(&self.metrics.errors, 1);
        }
        self.update_gauges();
        resp
    }

    fn dispatch(&mut self, req: Request<'_>) -> Response {
        match req {
            Request::New { id, flags, size } => self.new_alloc(id, flags, size),
            Request::Close { id } => self.close(id),
            Request::Send {
                id, entries, data, ..
            } => self.send(id, &entries, data),
            Request::NewCtx { id } => {
                let path = self.cfg.socket.clone();
                self.new_ctx(id, path.as_deref())
            }
            Request::NewCtxNamed { id, name } => {
                // "" is the default socket (as crosvm); otherwise a configured name.
                let path = if name.is_empty() {
                    self.cfg.socket.clone()
                } else {
                    self.cfg
                        .named
                        .iter()
                        .find(|(n, _)| n.as_bytes() == name)
                        .map(|(_, p)| p.clone())
                };
                if path.is_none() {
                    let shown = String::from_utf8_lossy(name).into_owned();
                    if let Err(r) = self.check_new_id(id) {
                        return r;
                    }
                    self.log(format_args!("NEW_CTX_NAMED: no socket named {shown:?}"));
                    return Response::ERR;
                }
                self.new_ctx(id, path.as_deref())
            }
            Request::NewPipe { id, flags } => self.new_pipe(id, flags),
            Request::Unsupported(ty) => {
                self.log(format_args!(
                    "unsupported command {ty:#x} (no dmabuf support)"
                ));
                Response::INVALID_CMD
            }
            Request::Unknown(ty) => {
                self.log(format_args!("unknown command {ty:#x}"));
                Response::INVALID_CMD
            }
        }
    }

    /// A guest-chosen id for a new vfd: 1..=0x7ff and free.
    fn check_new_id(&self, id: u32) -> Result<(), Response> {
        if id == 0 || id > GUEST_ID_MAX || self.vfds.contains_key(&id) {
            Err(Response::INVALID_ID)
        } else {
            Ok(())
        }
    }

    fn room_for_vfd(&self) -> Result<(), Response> {
        if self.vfds.len() >= self.cfg.max_vfds as usize {
            Err(Response::OUT_OF_MEMORY)
        } else {
            Ok(())
        }
    }

    /// Page-rounded size if `size` more bytes fit under the limit.
    fn room_for_bytes(&self, size: u64) -> Option<u64> {
        let rounded = page_round(size)?;
        if size == 0 || rounded > u64::from(u32::MAX) {
            return None;
        }
        (self.mapped.checked_add(rounded)? <= self.cfg.max_buffer_bytes).then_some(rounded)
    }

    /// Maps `fd` for the guest; checks the mapper kept its promise.
    fn map(&mut self, fd: &OwnedFd, len: u64) -> Option<u64> {
        match self.mapper.map(fd.as_fd(), len) {
            Ok(gpa) => {
                let (base, wlen) = self.window;
                let inside = gpa >= base
                    && gpa.is_multiple_of(PAGE_SIZE)
                    && gpa
                        .checked_add(len)
                        .is_some_and(|e| e <= base.saturating_add(wlen));
                if inside {
                    Some(gpa)
                } else {
                    self.log(format_args!(
                        "the mapper returned {gpa:#x}+{len:#x}, outside the window; refused"
                    ));
                    let _ = self.mapper.unmap(gpa);
                    None
                }
            }
            Err(e) => {
                self.log(format_args!("cannot map a {len}-byte buffer: {e}"));
                None
            }
        }
    }

    fn insert(&mut self, id: u32, vfd: Vfd) {
        if let Some((_, size)) = vfd.shm() {
            self.mapped += size;
        }
        if vfd.watch().is_some() {
            self.dirty = true;
        }
        self.vfds.insert(id, vfd);
    }

    fn new_alloc(&mut self, id: u32, flags: u32, size: u32) -> Response {
        if let Err(r) = self.check_new_id(id) {
            return r;
        }
        let allowed = if self.trans_flags {
            0
        } else {
            VFD_WRITE | VFD_MAP
        };
        if flags & !allowed != 0 {
            return Response::INVALID_FLAGS;
        }
        if let Err(r) = self.room_for_vfd() {
            return r;
        }
        let Some(rounded) = self.room_for_bytes(u64::from(size)) else {
            return Response::OUT_OF_MEMORY;
        };
        let fd = match sys::sealed_memfd(rounded) {
            Ok(fd) => fd,
            Err(e) => {
                self.log(format_args!("cannot create a {rounded}-byte memfd: {e}"));
                return Response::OUT_OF_MEMORY;
            }
        };
        let Some(gpa) = self.map(&fd, rounded) else {
            return Response::OUT_OF_MEMORY;
        };
        self.insert(
            id,
            Vfd::new(VfdKind::Shm {
                fd,
                gpa,
                size: rounded,
            }),
        );
        Response::VfdNew(VfdNew {
            id,
            flags,
            pfn: self.pfn(gpa),
            size: rounded as u32,
        })
    }

    fn new_ctx(&mut self, id: u32, path: Option<&Path>) -> Response {
        if let Err(r) = self.check_new_id(id) {
            return r;
        }
        if let Err(r) = self.room_for_vfd() {
            return r;
        }
        let Some(path) = path else {
            self.log(format_args!("NEW_CTX: no compositor socket is configured"));
            return Response::ERR;
        };
        let sock = match sys::connect_unix(path, CONNECT_PATIENCE) {
            Ok(s) => s,
            Err(e) => {
                self.log(format_args!("cannot connect to {}: {e}", path.display()));
                return Response::ERR;
            }
        };
        let vfd = Vfd::new(VfdKind::Ctx { sock });
        let flags = vfd.flags(self.trans_flags);
        self.insert(id, vfd);
        if let Some(r) = &self.rules {
            self.policies.insert(id, CtxPolicy::new(r.clone()));
        }
        Response::VfdNew(VfdNew {
            id,
            flags,
            pfn: 0,
            size: 0,
        })
    }

    fn new_pipe(&mut self, id: u32, flags: u32) -> Response {
        if let Err(r) = self.check_new_id(id) {
            return r;
        }
        let dir = match flags {
            VFD_READ => PipeDir::Read,
            VFD_WRITE => PipeDir::Write,
            _ => return Response::INVALID_FLAGS,
        };
        if let Err(r) = self.room_for_vfd() {
            return r;
        }
        let (r, w) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => {
                self.log(format_args!("cannot create a pipe: {e}"));
                return Response::ERR;
            }
        };
        let (local, remote) = match dir {
            PipeDir::Read => (r, w),
            PipeDir::Write => (w, r),
        };
        // Only our end is non-blocking; the compositor's end keeps its default.
        if let Err(e) = sys::set_nonblocking(local.as_fd()) {
            self.log(format_args!("cannot make a pipe non-blocking: {e}"));
            return Response::ERR;
        }
        self.insert(
            id,
            Vfd::new(VfdKind::Pipe {
                local,
                remote: Some(remote),
                dir,
            }),
        );
        Response::VfdNew(VfdNew {
            id,
            flags,
            pfn: 0,
            size: 0,
        })
    }

    fn close(&mut self, id: u32) -> Response {
        if !self.vfds.contains_key(&id) {
            return Response::INVALID_ID;
        }
        // Messages about it go too; host vfds they would have announced are closed.
        let mut orphans = Vec::new();
        self.pending.retain(|m| {
            if m.about == id || m.announces == Some(id) {
                orphans.extend(m.announces.filter(|&a| a != id));
                false
            } else {
                true
            }
        });
        self.remove_vfd(id);
        for o in orphans {
            self.remove_vfd(o);
        }
        Response::OK
    }

    /// Drops a vfd: out of epoll first (a dup elsewhere would keep the registration alive),
    /// then unmapped, then its fds closed.
    fn remove_vfd(&mut self, id: u32) {
        self.policies.remove(&id);
        let Some(mut vfd) = self.vfds.remove(&id) else {
            return;
        };
        self.unwatch(&mut vfd);
        if let Some((gpa, size)) = vfd.shm() {
            if let Err(e) = self.mapper.unmap(gpa) {
                self.log(format_args!("cannot unmap vfd {id:#x} at {gpa:#x}: {e}"));
            }
            self.mapped = self.mapped.saturating_sub(size);
        }
    }

    fn send(&mut self, id: u32, entries: &[SendEntry], data: &[u8]) -> Response {
        // Resolve the listed vfds to the fds that travel.
        let mut fds = Vec::with_capacity(entries.len());
        for e in entries {
            if e.kind != SEND_KIND_LOCAL {
                // virtgpu resources and fences: there is no virtio-gpu here.
                return Response::INVALID_TYPE;
            }
            let Some(vfd) = u32::try_from(e.id).ok().and_then(|i| self.vfds.get(&i)) else {
                return Response::INVALID_ID;
            };
            let Some(fd) = vfd.send_fd() else {
                return Response::INVALID_TYPE;
            };
            fds.push(fd);
        }
        let Some(target) = self.vfds.get(&id) else {
            return Response::INVALID_ID;
        };
        let result = match &target.kind {
            VfdKind::Ctx { sock } => {
                if data.is_empty() && !fds.is_empty() {
                    // fds travel with a byte on a stream socket.
                    return Response::ERR;
                }
                match self.policies.get_mut(&id) {
                    None => {
                        sys::send_all(sock.as_fd(), data, &fds, self.send_timeout, self.stop_fd)
                    }
                    Some(pol) => {
                        let mut out = Vec::with_capacity(data.len() + 64);
                        let r = pol.guest_to_compositor(data, &mut out, &self.metrics);
                        let r = r.and_then(|()| {
                            if pol.held_fds.len() + fds.len() > MAX_SEND_VFDS {
                                Err(Violation::Overflow("fds waiting for a partial message"))
                            } else {
                                Ok(())
                            }
                        });
                        if let Err(v) = r {
                            drop(fds);
                            self.violation(id, v);
                            return Response::ERR;
                        }
                        if out.is_empty() {
                            // Only part of a message: its fds wait for its bytes (they may
                            // arrive before the bytes, never after).
                            let mut held = Vec::with_capacity(fds.len());
                            for fd in &fds {
                                match fd.try_clone_to_owned() {
                                    Ok(f) => held.push(f),
                                    Err(e) => {
                                        self.log(format_args!("cannot keep an fd: {e}"));
                                        return Response::ERR;
                                    }
                                }
                            }
                            if let Some(pol) = self.policies.get_mut(&id) {
                                pol.held_fds.extend(held);
                            }
                            Ok(())
                        } else {
                            let held = std::mem::take(&mut pol.held_fds);
                            let all: Vec<_> = held
                                .iter()
                                .map(|f| f.as_fd())
                                .chain(fds.iter().copied())
                                .collect();
                            sys::send_all(sock.as_fd(), &out, &all, self.send_timeout, self.stop_fd)
                        }
                    }
                }
            }
            VfdKind::Pipe {
                local,
                dir: PipeDir::Write,
                ..
            } => {
                if !fds.is_empty() {
                    return Response::INVALID_TYPE;
                }
                sys::write_all(local.as_fd(), data, self.send_timeout, self.stop_fd)
            }
            _ => return Response::INVALID_TYPE,
        };
        let nfds = fds.len() as u64;
        drop(fds);
        if let Err(e) = result {
            self.log(format_args!("VFD_SEND to {id:#x} failed: {e}"));
            return Response::ERR;
        }
        self.count(&self.metrics.bytes_sent, data.len() as u64);
        self.count(&self.metrics.fds_sent, nfds);
        // The compositor has its own copy of each sent pipe end now: close ours, so that
        // EOF and hang-up reach the guest's end.
        for e in entries {
            let sent = u32::try_from(e.id).ok().and_then(|i| self.vfds.get_mut(&i));
            if let Some(Vfd {
                kind: VfdKind::Pipe { remote, .. },
                ..
            }) = sent
            {
                *remote = None;
            }
        }
        Response::OK
    }

    // -----------------------------------------------------------------------------------------
    // Host side
    // -----------------------------------------------------------------------------------------

    /// Handles epoll readiness of vfd `id`: at most one read, whose result is queued.
    pub fn handle_vfd_event(&mut self, id: u32) {
        let mut buf = [0u8; IN_BUFFER_SIZE];
        let outcome = match self.vfds.get(&id) {
            None => return,
            Some(vfd) if vfd.hup => return,
            Some(vfd) => read_vfd(vfd, &mut buf),
        };
        match outcome {
            Outcome::Nothing => {}
            Outcome::Hup => self.hang_up(id),
            Outcome::Failed(e) => {
                self.log(format_args!("vfd {id:#x}: read failed, hanging up: {e}"));
                self.hang_up(id);
            }
            Outcome::Truncated => {
                // More than 28 fds: the Wayland stream cannot be kept consistent. The fds
                // that did arrive were dropped (closed) in read_vfd.
                self.log(format_args!(
                    "ctx {id:#x}: the compositor sent more than {MAX_SEND_VFDS} fds in one message; hanging up"
                ));
                self.count(&self.metrics.errors, 1);
                self.hang_up(id);
            }
            Outcome::Data { len, fds } => {
                self.count(&self.metrics.bytes_received, len as u64);
                self.count(&self.metrics.fds_received, fds.len() as u64);
                let filtered = match self.policies.get_mut(&id) {
                    None => None,
                    Some(pol) => {
                        let mut out = Vec::with_capacity(len);
                        match pol.compositor_to_guest(&buf[..len], &mut out, &self.metrics) {
                            Ok(()) => Some(out),
                            Err(v) => {
                                drop(fds);
                                self.violation(id, v);
                                self.update_gauges();
                                return;
                            }
                        }
                    }
                };
                let mut ids = Vec::with_capacity(fds.len());
                for fd in fds {
                    if let Some(new) = self.adopt(id, fd) {
                        ids.push(new);
                    }
                }
                match filtered {
                    None => self.push(id, None, encode_recv(id, &ids, &buf[..len])),
                    Some(out) => self.push_filtered(id, ids, &out),
                }
            }
        }
        self.update_gauges();
    }

    /// Queues what the policy let through: fds go with the first whole bytes (held if there
    /// are none yet), bytes in VFD_RECVs that fit an in-queue buffer.
    fn push_filtered(&mut self, id: u32, ids: Vec<u32>, out: &[u8]) {
        let Some(pol) = self.policies.get_mut(&id) else {
            return;
        };
        pol.held_ids.extend(ids);
        if out.is_empty() {
            if pol.held_ids.len() > MAX_SEND_VFDS {
                self.violation(id, Violation::Overflow("fds waiting for a partial message"));
            }
            return;
        }
        let mut ids = std::mem::take(&mut pol.held_ids);
        if ids.len() > MAX_SEND_VFDS {
            self.violation(id, Violation::Overflow("fds waiting for a partial message"));
            return;
        }
        let mut rest = out;
        while !rest.is_empty() {
            let room = IN_BUFFER_SIZE - SEND_HDR_SIZE - 4 * ids.len();
            let (chunk, more) = rest.split_at(rest.len().min(room));
            self.push(id, None, encode_recv(id, &ids, chunk));
            ids.clear();
            rest = more;
        }
    }

    /// A context broke the policy: it is hung up (the compositor sees the client leave, the
    /// guest gets VFD_HUP), nothing more of it is forwarded.
    fn violation(&mut self, id: u32, v: Violation) {
        self.log(format_args!("ctx {id:#x}: {v}; hanging up"));
        self.count(&self.metrics.policy_hangups, 1);
        self.count(&self.metrics.errors, 1);
        self.policies.remove(&id);
        if let Some(Vfd {
            kind: VfdKind::Ctx { sock },
            ..
        }) = self.vfds.get(&id)
        {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        self.hang_up(id);
    }

    fn hang_up(&mut self, id: u32) {
        let Some(mut vfd) = self.vfds.remove(&id) else {
            return;
        };
        self.unwatch(&mut vfd);
        vfd.hup = true;
        self.vfds.insert(id, vfd);
        self.push(id, None, encode_hup(id));
    }

    fn push(&mut self, about: u32, announces: Option<u32>, bytes: Vec<u8>) {
        self.count(&self.metrics.in_messages, 1);
        self.pending.push_back(InMsg {
            about,
            announces,
            bytes,
        });
    }

    fn alloc_host_id(&mut self) -> u32 {
        loop {
            let id = self.next_host_id;
            self.next_host_id = id.checked_add(1).unwrap_or(HOST_ID_BASE);
            if !self.vfds.contains_key(&id) {
                return id;
            }
        }
    }

    /// Turns an fd the compositor sent on ctx `ctx` into a host vfd and queues its VFD_NEW;
    /// None (the fd closed) if it is of no use to the guest or over a limit.
    fn adopt(&mut self, ctx: u32, fd: OwnedFd) -> Option<u32> {
        if self.room_for_vfd().is_err() {
            let max = self.cfg.max_vfds;
            self.log(format_args!(
                "ctx {ctx:#x}: vfd limit ({max}) reached; dropping an fd from the compositor"
            ));
            self.count(&self.metrics.errors, 1);
            return None;
        }
        let kind = if let Some(size) = sys::seekable_size(fd.as_fd()) {
            let Some(rounded) = self.room_for_bytes(size) else {
                let max = self.cfg.max_buffer_bytes;
                self.log(format_args!(
                    "ctx {ctx:#x}: dropping a {size}-byte shm fd from the compositor (empty, or over the {max}-byte limit)"
                ));
                self.count(&self.metrics.errors, 1);
                return None;
            };
            // A write-protected file (a keymap, say) cannot back a writable guest mapping:
            // the guest gets a private copy of it (small ones only: such files are data
            // handed over once, not buffers).
            let fd = if sys::write_protected(fd.as_fd()) {
                if size > MAX_SNAPSHOT_BYTES {
                    self.log(format_args!(
                        "ctx {ctx:#x}: dropping a read-only {size}-byte shm fd from the compositor (copies are limited to {MAX_SNAPSHOT_BYTES} bytes)"
                    ));
                    self.count(&self.metrics.errors, 1);
                    return None;
                }
                match sys::snapshot_memfd(fd.as_fd(), size, rounded) {
                    Ok(copy) => copy,
                    Err(e) => {
                        self.log(format_args!(
                            "ctx {ctx:#x}: dropping a read-only shm fd from the compositor: copying it failed: {e}"
                        ));
                        self.count(&self.metrics.errors, 1);
                        return None;
                    }
                }
            } else {
                fd
            };
            let gpa = self.map(&fd, rounded)?;
            VfdKind::Shm {
                fd,
                gpa,
                size: rounded,
            }
        } else if sys::is_fifo(fd.as_fd()) {
            let dir = match sys::access_mode(fd.as_fd()) {
                Ok(libc::O_RDONLY) => PipeDir::Read,
                Ok(libc::O_WRONLY) => PipeDir::Write,
                _ => {
                    self.log(format_args!("ctx {ctx:#x}: dropping a read-write pipe fd"));
                    return None;
                }
            };
            // We are the only user of this end now (the compositor closes its copy).
            if let Err(e) = sys::set_nonblocking(fd.as_fd()) {
                self.log(format_args!("ctx {ctx:#x}: dropping a pipe fd: {e}"));
                return None;
            }
            VfdKind::Pipe {
                local: fd,
                remote: None,
                dir,
            }
        } else {
            self.log(format_args!(
                "ctx {ctx:#x}: dropping an fd that is neither shared memory nor a pipe"
            ));
            return None;
        };
        let id = self.alloc_host_id();
        let vfd = Vfd::new(kind);
        let (pfn, size) = vfd
            .shm()
            .map_or((0, 0), |(gpa, size)| (self.pfn(gpa), size as u32));
        let msg = VfdNew {
            id,
            flags: vfd.flags(self.trans_flags),
            pfn,
            size,
        };
        self.insert(id, vfd);
        self.push(ctx, Some(id), msg.encode(CMD_VFD_NEW));
        Some(id)
    }

    // -----------------------------------------------------------------------------------------
    // In queue
    // -----------------------------------------------------------------------------------------

    /// Whether the guest has posted in-queue buffers we have not used.
    pub fn in_buffers(q: &Queue, mem: &GuestMemoryMmap) -> bool {
        q.avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|i| i.0 != q.next_avail())
    }

    /// Takes the oldest message waiting for an in-queue buffer without a queue: for host-side
    /// harnesses (`qvm-wl-cost`); the worker uses [`WlState::deliver`].
    #[doc(hidden)]
    pub fn take_pending(&mut self) -> Option<Vec<u8>> {
        self.pending.pop_front().map(|m| m.bytes)
    }

    /// Moves pending messages into in-queue buffers, one per buffer; true if any was used.
    /// A buffer that cannot take the message (too small, readable, bad address) is returned
    /// empty and the message waits for the next.
    pub fn deliver(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(msg) = self.pending.front() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match write_in_chain(mem, chain, &msg.bytes) {
                Ok(n) => {
                    self.pending.pop_front();
                    n
                }
                Err(e) => {
                    self.count(&self.metrics.malformed, 1);
                    self.count(&self.metrics.errors, 1);
                    self.log(format_args!("unusable in-queue buffer: {e}"));
                    0
                }
            };
            if let Err(e) = q.add_used(mem, head, len) {
                self.log(format_args!("cannot return in-queue buffer {head}: {e}"));
            }
            used = true;
        }
        used
    }

    /// Reading host fds is allowed when nothing waits and the guest has buffers.
    pub fn may_read(&self, q: &Queue, mem: &GuestMemoryMmap) -> bool {
        self.pending.is_empty() && Self::in_buffers(q, mem)
    }

    /// Watches (or stops watching) every readable vfd: backpressure. While `read` is false
    /// nothing is read from the compositor, so it sees full sockets instead of the VMM
    /// buffering without bound.
    pub fn sync_interest(&mut self, read: bool) {
        if read == self.reading && !self.dirty {
            return;
        }
        if self.reading && !read {
            self.count(&self.metrics.in_queue_stalls, 1);
        }
        self.reading = read;
        self.dirty = false;
        let ids: Vec<u32> = self.vfds.keys().copied().collect();
        for id in ids {
            let Some(mut vfd) = self.vfds.remove(&id) else {
                continue;
            };
            let want = read && !vfd.hup && vfd.watch().is_some();
            if want && !vfd.watched {
                self.watch(id, &mut vfd);
            } else if !want && vfd.watched {
                self.unwatch(&mut vfd);
            }
            self.vfds.insert(id, vfd);
        }
    }

    fn watch(&mut self, id: u32, vfd: &mut Vfd) {
        let Some((fd, events)) = vfd.watch() else {
            return;
        };
        let ev = EpollEvent::new(events, VFD_TOKEN | u64::from(id));
        match self.epoll.ctl(ControlOperation::Add, fd.as_raw_fd(), ev) {
            Ok(()) => vfd.watched = true,
            Err(e) => {
                // Retried at the next change; the guest sees no data meanwhile.
                self.dirty = true;
                self.log(format_args!("cannot watch vfd {id:#x}: {e}"));
            }
        }
    }

    fn unwatch(&mut self, vfd: &mut Vfd) {
        if !vfd.watched {
            return;
        }
        if let Some((fd, _)) = vfd.watch() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                fd.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        vfd.watched = false;
    }

    /// Closes every vfd and unmaps every buffer (device reset).
    pub fn clear(&mut self) {
        self.pending.clear();
        for id in self.vfd_ids() {
            self.remove_vfd(id);
        }
        self.update_gauges();
    }
}

impl Drop for WlState {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What reading a vfd gave.
enum Outcome {
    Nothing,
    Hup,
    Failed(io::Error),
    Truncated,
    Data { len: usize, fds: Vec<OwnedFd> },
}

/// One read of a watched vfd into `buf` (no state change: the caller acts on the outcome).
fn read_vfd(vfd: &Vfd, buf: &mut [u8]) -> Outcome {
    match &vfd.kind {
        VfdKind::Ctx { sock } => match sys::recv_with_fds(sock.as_fd(), &mut buf[..MAX_RECV_BYTES])
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Nothing,
            Err(e) => Outcome::Failed(e),
            Ok(r) if r.len == 0 && r.fds.is_empty() => Outcome::Hup,
            Ok(r) if r.truncated => Outcome::Truncated,
            Ok(r) => Outcome::Data {
                len: r.len,
                fds: r.fds,
            },
        },
        VfdKind::Pipe {
            local,
            dir: PipeDir::Read,
            ..
        } => match sys::read_some(local.as_fd(), &mut buf[..MAX_PIPE_READ]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Nothing,
            Err(e) => Outcome::Failed(e),
            Ok(0) => Outcome::Hup,
            Ok(len) => Outcome::Data {
                len,
                fds: Vec::new(),
            },
        },
        // Only error/hang-up is watched; check it is real (the event may be stale).
        VfdKind::Pipe {
            local,
            dir: PipeDir::Write,
            ..
        } => {
            if sys::hung_up(local.as_fd()) {
                Outcome::Hup
            } else {
                Outcome::Nothing
            }
        }
        VfdKind::Shm { .. } => Outcome::Nothing,
    }
}
