//! The device's protocol state: the vfd table, request execution, host events, and the queue
//! of messages waiting for in-queue buffers. Driven by plain calls (the worker, the tests and
//! the fuzz target all drive it the same way); it owns the epoll the worker waits on, so that
//! registering host fds stays next to the vfds they belong to.
//!
//! Zero copy: shared-memory vfds are fds handed to the mapper and to the compositor; this module
//! never maps, reads or writes buffer contents. The only bytes it moves are protocol bytes:
//! requests, responses, and Wayland messages between the guest and the compositor.
//!
//! This file holds the state, the vfd table and the in queue (messages handed to the guest's
//! buffers); `state/requests.rs` executes the out queue's requests, `state/host.rs` turns what
//! the compositor and pipes deliver into messages for the guest.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use qvm_devices::virtio::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use crate::chain::write_in_chain;
use crate::mapper::GuestMapper;
use crate::policy::{CtxPolicy, Rules, Violation};
use crate::protocol::*;
use crate::vfd::{Vfd, VfdKind};
use crate::{WlConfig, WlMetrics};

mod host;
mod requests;

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
    // The vfd table: limits, mappings, hang-ups
    // -----------------------------------------------------------------------------------------

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

    fn alloc_host_id(&mut self) -> u32 {
        loop {
            let id = self.next_host_id;
            self.next_host_id = id.checked_add(1).unwrap_or(HOST_ID_BASE);
            if !self.vfds.contains_key(&id) {
                return id;
            }
        }
    }

    fn push(&mut self, about: u32, announces: Option<u32>, bytes: Vec<u8>) {
        self.count(&self.metrics.in_messages, 1);
        self.pending.push_back(InMsg {
            about,
            announces,
            bytes,
        });
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

    /// Closes every vfd and unmaps every buffer (device reset).
    pub fn clear(&mut self) {
        self.pending.clear();
        for id in self.vfd_ids() {
            self.remove_vfd(id);
        }
        self.update_gauges();
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
}

impl Drop for WlState {
    fn drop(&mut self) {
        self.clear();
    }
}
