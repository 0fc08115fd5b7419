//! virtio-net (virtio 1.2, section 5.1) on a Linux tap device.
//!
//! Split like virtio-blk, so that everything a guest can influence is testable and fuzzable
//! without threads, KVM or root:
//!
//! - [`NetBackend`] moves frames between the queues and any [`TapIo`]:
//!   [`NetBackend::process_tx`] and [`NetBackend::process_rx`] run over `&mut Queue` and guest
//!   memory and say what to wait for next;
//! - [`Tap`] (in [`tap`]) is the real tap (by name or inherited descriptor, offload probe);
//! - [`Net`] is the [`VirtioDevice`] (through [`VirtioDeviceBase`]): features, config
//!   space, and a worker thread running an `event_manager::EventManager`
//!   ([`super::worker::run_event_loop`]) over the two queue eventfds, a stop eventfd and the
//!   tap.
//!
//! Queues: receive (0) and transmit (1), 256 entries each; no control queue, no multiqueue.
//! Every frame carries a 12-byte `struct virtio_net_hdr_v1` (VERSION_1 drivers always use it).
//!
//! Transmit: a chain is the header plus the frame in driver-readable descriptors. It is
//! gathered and written to the tap in one call. Chains with a device-writable descriptor,
//! shorter than the header, longer than [`MAX_TX_LEN`], outside guest memory or that do not
//! end are returned with used length 0 and counted. When the tap would block, the frame is
//! kept and written first once the tap is writable again (nothing is lost, order is kept).
//!
//! Receive and backpressure: a frame is read from the tap into a pending buffer, then copied
//! into the guest's buffers. With MRG_RXBUF it may span several chains (`num_buffers` in the
//! first header says how many); without, one chain must hold all of it. When the guest has not
//! posted enough buffers the frame stays pending, the tap leaves the epoll set (no more reads,
//! no busy loop: the kernel queues, then drops, further frames), and the next rx kick
//! delivers the pending frame first. Chains taken from the ring stay reserved by the device
//! until a frame fills them, so waiting needs no rewinding of the ring and EVENT_IDX keeps
//! working. A frame is dropped (counted in `rx_too_big`) only when it cannot ever fit: without
//! MRG_RXBUF when it is larger than the next chain (the chain is kept for the next frame);
//! with MRG_RXBUF when the device holds a whole ring of chains and they are still too small.
//!
//! Hostile guests: every descriptor is checked (direction, length, inside guest memory); nothing
//! here panics on guest input.

pub mod tap;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

pub use tap::{
    FakeTap, Tap, TapIo, TapSource, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO,
};

use super::{
    drain_queue, signal_used, split_queues, ActivateError, Activation, DrainEnd, EmWorker,
    GuestMemoryMmap, Interrupt, Round, VirtioCommon, VirtioDevice, VirtioDeviceBase, WorkerStop,
    WorkerThread, TYPE_NET, VIRTIO_F_VERSION_1,
};

/// Size (and maximum size) of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of `struct virtio_net_hdr_v1`, in front of every frame in both directions.
pub const VNET_HDR_LEN: usize = 12;
/// Longest transmit chain: a 64 KiB (GSO) frame with its Ethernet and virtio-net headers.
pub const MAX_TX_LEN: usize = 65562;
/// Size of the buffer a frame is read into from the tap; larger than any frame a tap gives.
pub const RX_READ_LEN: usize = 65562 + 4096;
/// Bytes of config space: mac, status, max_virtqueue_pairs.
pub const CONFIG_SIZE: usize = 10;
/// Longest chain accepted, also through an indirect table.
const MAX_CHAIN_LEN: usize = QUEUE_SIZE as usize;
/// Frames moved per `process_rx` call before other events get a turn.
const RX_BUDGET: usize = 256;
/// `process_tx` rounds per kick before other events get a turn.
const TX_ROUNDS: usize = 4;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Feature bits the device may offer (virtio 1.2, 5.1.3), as masks.
pub mod features {
    use super::*;

    const fn bit(b: u32) -> u64 {
        1 << b
    }
    pub const CSUM: u64 = bit(VIRTIO_NET_F_CSUM);
    pub const GUEST_CSUM: u64 = bit(VIRTIO_NET_F_GUEST_CSUM);
    pub const MAC: u64 = bit(VIRTIO_NET_F_MAC);
    pub const GUEST_TSO4: u64 = bit(VIRTIO_NET_F_GUEST_TSO4);
    pub const GUEST_TSO6: u64 = bit(VIRTIO_NET_F_GUEST_TSO6);
    pub const GUEST_ECN: u64 = bit(VIRTIO_NET_F_GUEST_ECN);
    pub const GUEST_UFO: u64 = bit(VIRTIO_NET_F_GUEST_UFO);
    pub const HOST_TSO4: u64 = bit(VIRTIO_NET_F_HOST_TSO4);
    pub const HOST_TSO6: u64 = bit(VIRTIO_NET_F_HOST_TSO6);
    pub const HOST_ECN: u64 = bit(VIRTIO_NET_F_HOST_ECN);
    pub const HOST_UFO: u64 = bit(VIRTIO_NET_F_HOST_UFO);
    pub const MRG_RXBUF: u64 = bit(VIRTIO_NET_F_MRG_RXBUF);
    pub const STATUS: u64 = bit(VIRTIO_NET_F_STATUS);
    pub const RING_INDIRECT_DESC: u64 = bit(VIRTIO_RING_F_INDIRECT_DESC);
    pub const RING_EVENT_IDX: u64 = bit(VIRTIO_RING_F_EVENT_IDX);
    pub const VERSION_1: u64 = super::VIRTIO_F_VERSION_1;
}

/// What to attach the device to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSource,
    /// The guest's MAC address (offered with VIRTIO_NET_F_MAC). None: the driver picks one.
    pub mac: Option<[u8; 6]>,
}

/// Why a network device cannot be set up. Each message names the tap and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("tap device name {name:?} is not valid: {why}")]
    InvalidName { name: String, why: String },
    #[error("tap device {name:?} does not exist: create it first with `ip tuntap add {name} mode tap user $USER` (and bring it up: `ip link set {name} up`)")]
    TapNotFound { name: String },
    #[error("tap device {name:?}: cannot open /dev/net/tun: {source}; {hint}")]
    TunOpen {
        name: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("tap device {name:?}: not allowed to attach to it (it belongs to another user or group): recreate it for this user with `ip tuntap del {name} mode tap && ip tuntap add {name} mode tap user $USER`")]
    TapPermission { name: String },
    #[error("tap device {name:?} is in use by another process (another VM?): stop that process, or give this VM its own tap (`ip tuntap add NEWNAME mode tap user $USER`)")]
    TapBusy { name: String },
    #[error("interface {name:?} is not a single-queue tap device (it is a tun device, a multi_queue tap, or another kind of interface): use a tap created with `ip tuntap add NAME mode tap user $USER`")]
    NotATap { name: String },
    #[error("tap fd {fd} {problem}")]
    BadFd { fd: RawFd, problem: String },
    #[error("tap device {name:?}: {op} failed: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("MAC address {mac} is not a unicast address: use one whose first byte is even and that is not all zeros, e.g. 52:54:00:12:34:56")]
    InvalidMac { mac: String },
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Counters, updated by the worker and readable at any time. Byte counts are Ethernet frame
/// bytes, without the virtio-net header.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames written to the tap.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Times a frame read from the tap had to wait for rx buffers (it is kept, not dropped).
    pub rx_deferred: AtomicU64,
    /// Frames dropped because the guest's buffers can never hold them.
    pub rx_too_big: AtomicU64,
    /// Rx chains returned unused (readable descriptor, outside memory, no end, bad head).
    pub rx_invalid_chains: AtomicU64,
    /// Tap read failures and frames shorter than the header.
    pub rx_errors: AtomicU64,
    /// Tx chains dropped: device-writable descriptor, shorter than the header, longer than
    /// [`MAX_TX_LEN`], outside guest memory, no end, or bad head index.
    pub tx_malformed: AtomicU64,
    /// Tap writes that would block (the frame is kept and written later).
    pub tx_deferred: AtomicU64,
    /// Frames the tap refused (dropped).
    pub tx_errors: AtomicU64,
    /// Frames still pending (either direction) when the device was reset.
    pub dropped_on_reset: AtomicU64,
}

/// A plain copy of [`NetStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStatsSnapshot {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_deferred: u64,
    pub rx_too_big: u64,
    pub rx_invalid_chains: u64,
    pub rx_errors: u64,
    pub tx_malformed: u64,
    pub tx_deferred: u64,
    pub tx_errors: u64,
    pub dropped_on_reset: u64,
}

impl NetStats {
    pub fn snapshot(&self) -> NetStatsSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStatsSnapshot {
            rx_frames: l(&self.rx_frames),
            rx_bytes: l(&self.rx_bytes),
            tx_frames: l(&self.tx_frames),
            tx_bytes: l(&self.tx_bytes),
            rx_deferred: l(&self.rx_deferred),
            rx_too_big: l(&self.rx_too_big),
            rx_invalid_chains: l(&self.rx_invalid_chains),
            rx_errors: l(&self.rx_errors),
            tx_malformed: l(&self.tx_malformed),
            tx_deferred: l(&self.tx_deferred),
            tx_errors: l(&self.tx_errors),
            dropped_on_reset: l(&self.dropped_on_reset),
        }
    }

    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Frame processing
// ---------------------------------------------------------------------------------------------

/// What [`NetBackend::process_tx`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOutcome {
    /// Used entries were added to the tx queue.
    pub used: bool,
    /// The tap would block: a frame is kept; call again once the tap is writable.
    pub blocked: bool,
}

/// What the receive side waits for after [`NetBackend::process_rx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxWait {
    /// The tap has nothing to read: wait for it to become readable.
    TapEmpty,
    /// A frame is pending and the guest's buffers do not hold it: stop reading the tap and
    /// wait for an rx kick.
    NeedBuffers,
    /// The per-call budget ran out with more to do: call again.
    Budget,
    /// Reading the tap failed (e.g. the interface was deleted): stop reading it.
    TapError,
}

/// What [`NetBackend::process_rx`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxOutcome {
    /// Used entries were added to the rx queue.
    pub used: bool,
    pub wait: RxWait,
}

/// A validated rx chain the device holds until a frame fills it.
#[derive(Debug)]
struct RxChain {
    head: u16,
    bufs: Vec<(GuestAddress, u32)>,
    capacity: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Done,
    Dropped,
    WouldBlock,
}

enum Delivery {
    Done,
    TooBig,
    NoBuffers,
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// The tap plus the frames in flight between it and the queues.
pub struct NetBackend<T: TapIo> {
    tap: T,
    stats: Arc<NetStats>,
    mrg_rxbuf: bool,
    /// The frame being sent (header first) and its length.
    tx_buf: Box<[u8]>,
    tx_len: usize,
    /// Head of the chain whose frame is in `tx_buf`, waiting for the tap to take it.
    tx_pending: Option<u16>,
    tx_descs: Vec<Descriptor>,
    /// The frame read from the tap (header first), pending while `rx_len > 0`.
    rx_buf: Box<[u8]>,
    rx_len: usize,
    /// The pending frame has been counted in `rx_deferred`.
    rx_waiting: bool,
    /// Chains taken from the rx ring, not yet used, and their total capacity.
    rx_chains: VecDeque<RxChain>,
    rx_chains_cap: u64,
}

impl<T: TapIo> std::fmt::Debug for NetBackend<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("tap", &self.tap.name())
            .field("mrg_rxbuf", &self.mrg_rxbuf)
            .field("tx_pending", &self.tx_pending)
            .field("rx_pending", &self.rx_len)
            .field("rx_chains", &self.rx_chains.len())
            .finish()
    }
}

impl<T: TapIo> NetBackend<T> {
    pub fn new(tap: T) -> NetBackend<T> {
        NetBackend {
            tap,
            stats: Arc::new(NetStats::default()),
            mrg_rxbuf: false,
            tx_buf: vec![0u8; MAX_TX_LEN].into_boxed_slice(),
            tx_len: 0,
            tx_pending: None,
            tx_descs: Vec::with_capacity(8),
            rx_buf: vec![0u8; RX_READ_LEN].into_boxed_slice(),
            rx_len: 0,
            rx_waiting: false,
            rx_chains: VecDeque::new(),
            rx_chains_cap: 0,
        }
    }

    pub fn stats(&self) -> &Arc<NetStats> {
        &self.stats
    }

    pub fn tap(&self) -> &T {
        &self.tap
    }

    pub fn tap_mut(&mut self) -> &mut T {
        &mut self.tap
    }

    /// Whether received frames may span several chains (VIRTIO_NET_F_MRG_RXBUF acked).
    pub fn set_mrg_rxbuf(&mut self, on: bool) {
        self.mrg_rxbuf = on;
    }

    /// A frame read from the tap is waiting for rx buffers.
    pub fn rx_pending(&self) -> bool {
        self.rx_len > 0
    }

    /// A frame is waiting for the tap to become writable.
    pub fn tx_pending(&self) -> bool {
        self.tx_pending.is_some()
    }

    /// Forgets everything tied to the queues of a previous activation: reserved rx chains, and
    /// the frames pending in either direction (counted in `dropped_on_reset`).
    pub fn reset_queues(&mut self) {
        let dropped = u64::from(self.tx_pending.is_some()) + u64::from(self.rx_len > 0);
        NetStats::bump(&self.stats.dropped_on_reset, dropped);
        self.tx_pending = None;
        self.tx_len = 0;
        self.rx_len = 0;
        self.rx_waiting = false;
        self.rx_chains.clear();
        self.rx_chains_cap = 0;
    }

    // -- transmit ---------------------------------------------------------------------------

    /// Writes the pending frame, then frames from the tx queue (at most one queue's worth),
    /// to the tap. Stops when the tap would block, keeping that frame for the next call.
    pub fn process_tx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> TxOutcome {
        let mut out = TxOutcome::default();
        if let Some(head) = self.tx_pending {
            if self.send_frame() == Sent::WouldBlock {
                out.blocked = true;
                return out;
            }
            self.tx_pending = None;
            out.used |= queue.add_used(mem, head, 0).is_ok();
        }
        for _ in 0..queue.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            if head >= queue.size() {
                // Nothing we could return it as.
                NetStats::bump(&self.stats.tx_malformed, 1);
                continue;
            }
            if self.gather_tx(chain, mem).is_err() {
                NetStats::bump(&self.stats.tx_malformed, 1);
            } else if self.send_frame() == Sent::WouldBlock {
                self.tx_pending = Some(head);
                out.blocked = true;
                return out;
            }
            // The device writes nothing into a tx chain: used length 0.
            out.used |= queue.add_used(mem, head, 0).is_ok();
        }
        out
    }

    /// Validates the chain and copies header + frame into `tx_buf`.
    fn gather_tx(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<(), ()> {
        self.tx_descs.clear();
        let mut terminated = false;
        let mut total = 0usize;
        for desc in chain {
            if self.tx_descs.len() == MAX_CHAIN_LEN || desc.is_write_only() {
                return Err(());
            }
            terminated = !desc.has_next();
            total = total.saturating_add(desc.len() as usize);
            if total > MAX_TX_LEN || !in_memory(mem, desc.addr(), desc.len()) {
                return Err(());
            }
            self.tx_descs.push(desc);
        }
        if !terminated || total < VNET_HDR_LEN {
            return Err(());
        }
        let mut at = 0usize;
        for d in &self.tx_descs {
            let n = d.len() as usize;
            if n == 0 {
                continue;
            }
            let dst = self.tx_buf.get_mut(at..at + n).ok_or(())?;
            mem.read_slice(dst, d.addr()).map_err(|_| ())?;
            at += n;
        }
        self.tx_len = total;
        Ok(())
    }

    fn send_frame(&mut self) -> Sent {
        let frame = self.tx_buf.get(..self.tx_len).unwrap_or(&[]);
        match self.tap.write(frame) {
            Ok(_) => {
                NetStats::bump(&self.stats.tx_frames, 1);
                NetStats::bump(
                    &self.stats.tx_bytes,
                    frame.len().saturating_sub(VNET_HDR_LEN) as u64,
                );
                Sent::Done
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                NetStats::bump(&self.stats.tx_deferred, 1);
                Sent::WouldBlock
            }
            Err(_) => {
                NetStats::bump(&self.stats.tx_errors, 1);
                Sent::Dropped
            }
        }
    }

    // -- receive ----------------------------------------------------------------------------

    /// Delivers the pending frame, then reads and delivers frames from the tap until it is
    /// empty, the guest's buffers run out (the frame stays pending), or the budget is spent.
    pub fn process_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> RxOutcome {
        let mut used = false;
        for _ in 0..RX_BUDGET {
            if self.rx_len == 0 {
                if let Err(wait) = self.read_frame() {
                    match wait {
                        Some(wait) => return RxOutcome { used, wait },
                        None => continue,
                    }
                }
            }
            match self.deliver(queue, mem, &mut used) {
                Delivery::Done => {}
                Delivery::TooBig => {
                    NetStats::bump(&self.stats.rx_too_big, 1);
                    self.rx_len = 0;
                    self.rx_waiting = false;
                }
                Delivery::NoBuffers => {
                    if !self.rx_waiting {
                        self.rx_waiting = true;
                        NetStats::bump(&self.stats.rx_deferred, 1);
                    }
                    return RxOutcome {
                        used,
                        wait: RxWait::NeedBuffers,
                    };
                }
            }
        }
        RxOutcome {
            used,
            wait: RxWait::Budget,
        }
    }

    /// Reads one frame into `rx_buf`. Err(Some(wait)): stop; Err(None): a bad frame was
    /// dropped, read on.
    fn read_frame(&mut self) -> Result<(), Option<RxWait>> {
        match self.tap.read(&mut self.rx_buf) {
            // A datagram that filled the buffer may have been truncated.
            Ok(n) if n >= self.rx_buf.len() || (n > 0 && n < VNET_HDR_LEN) => {
                NetStats::bump(&self.stats.rx_errors, 1);
                Err(None)
            }
            Ok(n) if n > 0 => {
                self.rx_len = n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Some(RxWait::TapEmpty)),
            // End of file (not a tap thing, but a stand-in's peer can go away) or an error.
            _ => {
                NetStats::bump(&self.stats.rx_errors, 1);
                Err(Some(RxWait::TapError))
            }
        }
    }

    /// Copies the pending frame into reserved chains (reserving more as needed).
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, used: &mut bool) -> Delivery {
        let len = self.rx_len;
        if self.mrg_rxbuf {
            while self.rx_chains_cap < len as u64 {
                if self.rx_chains.len() >= usize::from(queue.size()) {
                    // A whole ring of buffers is too small: it can never fit.
                    return Delivery::TooBig;
                }
                if !self.reserve_chain(queue, mem, used) {
                    return Delivery::NoBuffers;
                }
            }
        } else {
            if self.rx_chains.is_empty() && !self.reserve_chain(queue, mem, used) {
                return Delivery::NoBuffers;
            }
            if self.rx_chains.front().map_or(0, |c| c.capacity) < len as u64 {
                // Keep the chain for the next frame.
                return Delivery::TooBig;
            }
        }

        // How many chains the frame takes (at least one, at most the reserved ones).
        let mut nchains = 0usize;
        let mut cap = 0u64;
        for c in &self.rx_chains {
            nchains += 1;
            cap += c.capacity;
            if cap >= len as u64 {
                break;
            }
        }
        let num_buffers = u16::try_from(nchains).unwrap_or(u16::MAX);
        if let Some(field) = self
            .rx_buf
            .get_mut(NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2)
        {
            field.copy_from_slice(&num_buffers.to_le_bytes());
        }
        let mut off = 0usize;
        for _ in 0..nchains {
            let Some(chain) = self.rx_chains.pop_front() else {
                break;
            };
            self.rx_chains_cap -= chain.capacity;
            let mut written = 0u32;
            for &(addr, seg_len) in &chain.bufs {
                if off >= len {
                    break;
                }
                let n = (seg_len as usize).min(len - off);
                let Some(src) = self.rx_buf.get(off..off + n) else {
                    break;
                };
                // Checked at reservation; guest memory does not shrink.
                if mem.write_slice(src, addr).is_err() {
                    NetStats::bump(&self.stats.rx_invalid_chains, 1);
                    break;
                }
                off += n;
                written += n as u32;
            }
            *used |= queue.add_used(mem, chain.head, written).is_ok();
        }
        NetStats::bump(&self.stats.rx_frames, 1);
        NetStats::bump(
            &self.stats.rx_bytes,
            len.saturating_sub(VNET_HDR_LEN) as u64,
        );
        self.rx_len = 0;
        self.rx_waiting = false;
        Delivery::Done
    }

    /// Takes the next valid chain off the rx ring into `rx_chains`; invalid ones go straight
    /// back with used length 0. False when the ring has no (valid) chain.
    fn reserve_chain(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, used: &mut bool) -> bool {
        for _ in 0..queue.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return false;
            };
            let head = chain.head_index();
            if head >= queue.size() {
                NetStats::bump(&self.stats.rx_invalid_chains, 1);
                continue;
            }
            match parse_rx_chain(chain, mem) {
                Some((bufs, capacity)) => {
                    self.rx_chains_cap += capacity;
                    self.rx_chains.push_back(RxChain {
                        head,
                        bufs,
                        capacity,
                    });
                    return true;
                }
                None => {
                    NetStats::bump(&self.stats.rx_invalid_chains, 1);
                    *used |= queue.add_used(mem, head, 0).is_ok();
                }
            }
        }
        false
    }
}

/// The device-writable buffers of an rx chain and their total length, or None if the chain is
/// unusable (readable descriptor, outside memory, does not end, no room at all).
fn parse_rx_chain(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
) -> Option<(Vec<(GuestAddress, u32)>, u64)> {
    let mut bufs = Vec::with_capacity(2);
    let mut terminated = false;
    let mut seen = 0usize;
    let mut capacity = 0u64;
    for desc in chain {
        seen += 1;
        if seen > MAX_CHAIN_LEN || !desc.is_write_only() || !in_memory(mem, desc.addr(), desc.len())
        {
            return None;
        }
        terminated = !desc.has_next();
        if desc.len() > 0 {
            bufs.push((desc.addr(), desc.len()));
            capacity += u64::from(desc.len());
        }
    }
    (terminated && capacity > 0).then_some((bufs, capacity))
}

// ---------------------------------------------------------------------------------------------
// The virtio device
// ---------------------------------------------------------------------------------------------

/// The `TUN_F_*` offloads matching what the driver acked for the tap -> guest direction.
/// Inconsistent combinations (TSO without GUEST_CSUM, ECN without TSO) are left out.
pub fn tun_offloads_for(acked: u64) -> u32 {
    use features::*;
    if acked & GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if acked & GUEST_TSO4 != 0 {
        f |= TUN_F_TSO4;
    }
    if acked & GUEST_TSO6 != 0 {
        f |= TUN_F_TSO6;
    }
    if acked & GUEST_ECN != 0 && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        f |= TUN_F_TSO_ECN;
    }
    if acked & GUEST_UFO != 0 {
        f |= TUN_F_UFO;
    }
    f
}

/// The feature bits offered for a tap supporting the `TUN_F_*` offloads `tun`.
pub fn features_for(tun: u32, mac: bool) -> u64 {
    use features::*;
    let mut f = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX | MRG_RXBUF | STATUS;
    if mac {
        f |= MAC;
    }
    if tun & TUN_F_CSUM != 0 {
        f |= CSUM | GUEST_CSUM;
        if tun & TUN_F_TSO4 != 0 {
            f |= GUEST_TSO4 | HOST_TSO4;
        }
        if tun & TUN_F_TSO6 != 0 {
            f |= GUEST_TSO6 | HOST_TSO6;
        }
        if tun & TUN_F_TSO_ECN != 0 && tun & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            f |= GUEST_ECN | HOST_ECN;
        }
        if tun & TUN_F_UFO != 0 {
            f |= GUEST_UFO | HOST_UFO;
        }
    }
    f
}

/// The virtio-net device. `T` is the tap; [`Net::new`] opens a real one.
pub struct Net<T: TapIo + AsRawFd + Send + 'static = Tap> {
    /// Named `virtio-net-<tap>`, also the worker thread's name.
    common: VirtioCommon,
    /// Parked here while no worker runs; the worker owns it while active.
    backend: Option<NetBackend<T>>,
    stats: Arc<NetStats>,
    mac: Option<[u8; 6]>,
    offloads: u32,
    tap_name: String,
    worker: Option<WorkerThread<Option<NetBackend<T>>>>,
}

impl<T: TapIo + AsRawFd + Send + 'static> std::fmt::Debug for Net<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.common.name())
            .field(
                "features",
                &format_args!("{:#x}", self.common.avail_features()),
            )
            .field("active", &self.common.is_active())
            .finish()
    }
}

impl Net<Tap> {
    /// Opens the tap and builds the device (see [`NetError`] for what can go wrong).
    pub fn new(cfg: NetConfig) -> Result<Net<Tap>, NetError> {
        if let Some(mac) = &cfg.mac {
            check_mac(mac)?;
        }
        let tap = Tap::open(&cfg.tap)?;
        Net::with_tap(tap, cfg.mac)
    }
}

fn check_mac(mac: &[u8; 6]) -> Result<(), NetError> {
    if mac[0] & 1 != 0 || mac.iter().all(|&b| b == 0) {
        return Err(NetError::InvalidMac {
            mac: format_mac(mac),
        });
    }
    Ok(())
}

impl<T: TapIo + AsRawFd + Send + 'static> Net<T> {
    /// Builds the device over an open tap.
    pub fn with_tap(tap: T, mac: Option<[u8; 6]>) -> Result<Net<T>, NetError> {
        if let Some(mac) = &mac {
            check_mac(mac)?;
        }
        let offloads = tap.supported_offloads();
        let tap_name = tap.name().to_string();
        let backend = NetBackend::new(tap);
        let mut config = [0u8; CONFIG_SIZE];
        if let Some(mac) = &mac {
            config[0..6].copy_from_slice(mac);
        }
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let stats = backend.stats.clone();
        // The mac is read-only for VERSION_1 drivers; nothing else is writable.
        let common = VirtioCommon::new(
            format!("virtio-net-{tap_name}"),
            TYPE_NET,
            features_for(offloads, mac.is_some()),
            &[QUEUE_SIZE, QUEUE_SIZE],
        )
        .with_config(&config)
        .with_metrics(stats.clone());
        Ok(Net {
            common,
            backend: Some(backend),
            stats,
            mac,
            offloads,
            tap_name,
            worker: None,
        })
    }

    /// Frame counters (shared with the worker).
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The worker thread's name.
    pub fn name(&self) -> &str {
        self.common.name()
    }

    /// The tap interface's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// `TUN_F_*` offloads the tap supports (the probe at open).
    pub fn tap_offloads(&self) -> u32 {
        self.offloads
    }

    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The features the driver accepted (0 before FEATURES_OK and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    pub fn is_active(&self) -> bool {
        self.common.is_active()
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> VirtioDeviceBase for Net<T> {
    crate::virtio_common_accessors!(common);

    fn stop(&mut self) {
        let worker = self.worker.take();
        if let Some(mut backend) = worker.and_then(WorkerThread::stop).flatten() {
            backend.reset_queues();
            // Until the next driver says what it accepts: plain frames only.
            let _ = backend.tap_mut().set_offloads(0);
            self.backend = Some(backend);
        }
    }

    fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
        let ([rx, tx], [rx_notify, tx_notify]) = split_queues(act.queues)?;
        let Some(mut backend) = self.backend.take() else {
            return Err(ActivateError::Other(format!(
                "{}: the tap was lost when an earlier worker died",
                self.common.name()
            )));
        };
        let acked = self.common.acked_features();
        backend.reset_queues();
        backend.set_mrg_rxbuf(acked & features::MRG_RXBUF != 0);
        let tun = tun_offloads_for(acked);
        if let Err(e) = backend.tap_mut().set_offloads(tun) {
            self.backend = Some(backend);
            return Err(ActivateError::Other(format!(
                "{}: tap {:?} refused the offloads the driver accepted (TUNSETOFFLOAD {tun:#x}): {e}",
                self.common.name(), self.tap_name
            )));
        }
        let stop = match WorkerStop::new() {
            Ok(stop) => stop,
            Err(e) => {
                self.backend = Some(backend);
                return Err(ActivateError::Worker(e));
            }
        };
        let worker = Worker {
            tap_fd: backend.tap().as_raw_fd(),
            backend,
            rx,
            tx,
            mem: act.mem,
            rx_notify,
            tx_notify,
            interrupt: act.interrupt,
            tap_events: EventSet::empty(),
            rx_paused: false,
            tx_blocked: false,
            tap_error: false,
            name: self.common.name().to_string(),
        };
        // The tap comes back through the join handle; if spawning fails the closure (and the
        // tap in it) is dropped: spawning only fails when the host is out of threads.
        let thread = stop.spawn_event_loop(self.common.name(), worker);
        self.worker = Some(thread.map_err(ActivateError::Worker)?);
        Ok(())
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> Drop for Net<T> {
    fn drop(&mut self) {
        self.reset();
    }
}

const TOKEN_RX_NOTIFY: u32 = 0;
const TOKEN_TX_NOTIFY: u32 = 1;
/// The stop fd's token ([`EmWorker::STOP_TOKEN`]).
const TOKEN_STOP: u32 = 2;
const TOKEN_TAP: u32 = 3;

struct Worker<T: TapIo> {
    backend: NetBackend<T>,
    rx: Queue,
    tx: Queue,
    mem: GuestMemoryMmap,
    rx_notify: EventFd,
    tx_notify: EventFd,
    interrupt: Arc<dyn Interrupt>,
    tap_fd: RawFd,
    /// What the tap is registered for in epoll (empty: not registered).
    tap_events: EventSet,
    /// Not reading the tap: a frame waits for rx buffers, or reading failed.
    rx_paused: bool,
    /// A frame waits for the tap to become writable.
    tx_blocked: bool,
    /// The tap reported an error condition (deleted interface): leave it alone until the
    /// guest kicks a queue.
    tap_error: bool,
    name: String,
}

impl<T: TapIo + AsRawFd> Worker<T> {
    fn signal(&mut self, rx: bool) {
        let q = if rx { &mut self.rx } else { &mut self.tx };
        if q.needs_notification(&self.mem).unwrap_or(true) {
            signal_used(self.interrupt.as_ref(), &self.name);
        }
    }

    fn handle_tx(&mut self, ops: &mut EventOps) {
        let (backend, mem) = (&mut self.backend, &self.mem);
        let drain = drain_queue(&mut self.tx, mem, TX_ROUNDS, |q| {
            let out = backend.process_tx(q, mem);
            Round {
                used: out.used,
                blocked: out.blocked,
            }
        });
        // Blocked: notifications stay off, the tap becoming writable resumes us.
        self.tx_blocked = drain.end == DrainEnd::Blocked;
        if drain.end == DrainEnd::Budget {
            // Let rx and the stop event have a turn; kick ourselves to come back.
            let _ = self.tx_notify.write(1);
        }
        if drain.used {
            self.signal(false);
        }
        self.update_tap_interest(ops);
    }

    fn handle_rx(&mut self, ops: &mut EventOps) {
        let backend = &mut self.backend;
        // Rx kicks are only needed while waiting for buffers.
        let _ = self.rx.disable_notification(&self.mem);
        let mut used = false;
        let mut idle_rounds = 0;
        loop {
            let before = self.rx.next_avail();
            let out = backend.process_rx(&mut self.rx, &self.mem);
            used |= out.used;
            match out.wait {
                RxWait::NeedBuffers => {
                    // Ask for a kick, then look again for buffers that raced with that.
                    let progressed = self.rx.next_avail() != before;
                    self.rx_paused = true;
                    match self.rx.enable_notification(&self.mem) {
                        Ok(true) => {
                            idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
                            if idle_rounds >= 2 {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                RxWait::TapError => {
                    if !self.rx_paused {
                        eprintln!(
                            "{}: reading tap {:?} failed; receive paused until the guest posts buffers",
                            self.name,
                            backend.tap().name()
                        );
                    }
                    self.rx_paused = true;
                    break;
                }
                RxWait::TapEmpty | RxWait::Budget => {
                    self.rx_paused = false;
                    break;
                }
            }
        }
        if used {
            self.signal(true);
        }
        self.update_tap_interest(ops);
    }

    /// Watches the tap for reading unless rx is paused, for writing while a frame waits.
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let mut want = EventSet::empty();
        if !self.tap_error {
            if !self.rx_paused {
                want |= EventSet::IN;
            }
            if self.tx_blocked {
                want |= EventSet::OUT;
            }
        }
        if want == self.tap_events {
            return;
        }
        let ev = |set| Events::with_data_raw(self.tap_fd, TOKEN_TAP, set);
        let res = if want.is_empty() {
            ops.remove(ev(self.tap_events))
        } else if self.tap_events.is_empty() {
            ops.add(ev(want))
        } else {
            ops.modify(ev(want))
        };
        match res {
            Ok(()) => self.tap_events = want,
            Err(e) => eprintln!("{}: cannot update the tap's epoll interest: {e}", self.name),
        }
    }
}

/// The worker thread's loop: returns the backend so a later activation can use the tap again.
impl<T: TapIo + AsRawFd + Send + 'static> EmWorker for Worker<T> {
    type Output = NetBackend<T>;
    const STOP_TOKEN: u32 = TOKEN_STOP;

    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        let rx = Events::with_data(&self.rx_notify, TOKEN_RX_NOTIFY, EventSet::IN);
        let tx = Events::with_data(&self.tx_notify, TOKEN_TX_NOTIFY, EventSet::IN);
        ops.add(rx).and_then(|()| ops.add(tx))?;
        // Chains made available before activation (or kicks that raced it), and the tap.
        self.handle_tx(ops);
        self.handle_rx(ops);
        Ok(())
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_RX_NOTIFY => {
                // Drain the counter (a non-blocking ioeventfd may read EAGAIN: fine).
                let _ = self.rx_notify.read();
                self.tap_error = false;
                self.handle_rx(ops);
            }
            TOKEN_TX_NOTIFY => {
                let _ = self.tx_notify.read();
                self.tap_error = false;
                self.handle_tx(ops);
            }
            TOKEN_TAP => {
                let set = events.event_set();
                if set.intersects(EventSet::OUT) && self.tx_blocked {
                    self.handle_tx(ops);
                }
                if set.intersects(EventSet::IN) && !self.rx_paused {
                    self.handle_rx(ops);
                }
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // A deleted interface: level-triggered, this would fire forever.
                    if !self.tap_error {
                        eprintln!(
                            "{}: the tap reports an error (deleted?); not watching it until the guest kicks a queue",
                            self.name
                        );
                    }
                    self.tap_error = true;
                    self.update_tap_interest(ops);
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> NetBackend<T> {
        self.backend
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing harness (shared by fuzz/ and PRNG-driven unit tests)
// ---------------------------------------------------------------------------------------------

/// Queue size the harness uses.
pub const FUZZ_QUEUE_SIZE: u16 = 16;
const FUZZ_DESC_TABLE: u64 = 0;
const FUZZ_AVAIL: u64 = 0x100;
const FUZZ_USED: u64 = 0x200;
const FUZZ_PAYLOAD: u64 = 0x1000;
const FUZZ_PAYLOAD_END: u64 = 0x20000;
/// Bytes of the harness header: control byte, avail count, 16 descriptors of 10 bytes.
const FUZZ_HEADER: usize = 2 + 160;

/// Guest memory of the harness: two adjacent regions (buffers may straddle them), a hole, and
/// a small third region.
pub fn fuzz_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(0x40000), 0x1000),
    ])
    .expect("harness guest memory")
}

/// A backend over a [`FakeTap`] for the harness (reused across inputs: it owns 130 KiB).
pub fn fuzz_backend() -> NetBackend<FakeTap> {
    NetBackend::new(FakeTap::default())
}

/// Lays out a queue from `data` (see [`fuzz_net_tx`] for the format). Returns the queue, the
/// control byte, the number of avail entries, how many of them name a head past the queue,
/// and the rest of the input.
fn fuzz_layout<'a>(mem: &GuestMemoryMmap, data: &'a [u8]) -> (Queue, u8, u16, u16, &'a [u8]) {
    let mut input = data.iter().copied();
    let mut byte = || input.next().unwrap_or(0);

    // Clean slate for the rings and the buffer areas.
    let zeros = [0u8; 0x1000];
    let mut at = 0;
    while at < FUZZ_PAYLOAD_END {
        let _ = mem.write_slice(&zeros, GuestAddress(at));
        at += zeros.len() as u64;
    }
    let _ = mem.write_slice(&zeros, GuestAddress(0x40000));

    let ctrl = byte();
    let n_avail = u16::from(byte()) % (FUZZ_QUEUE_SIZE + 1);
    for i in 0..u64::from(FUZZ_QUEUE_SIZE) {
        let addr_sel = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
        let len_sel = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
        let (flags, next) = (byte(), byte());
        let addr = match addr_sel >> 30 {
            0 | 1 => FUZZ_PAYLOAD + u64::from(addr_sel & 0x1_ffff),
            2 => 0x40000 + u64::from(addr_sel & 0x1fff),
            _ => u64::MAX - u64::from(addr_sel & 0xffff),
        };
        let len = match len_sel >> 30 {
            0 => len_sel & 0x7ff,
            1 => len_sel & 0x1f,
            2 => len_sel & 0x1_ffff,
            _ => len_sel,
        };
        let desc = Descriptor::new(addr, len, u16::from(flags & 0x7), u16::from(next) % 20);
        let _ = mem.write_obj(desc, GuestAddress(FUZZ_DESC_TABLE + 16 * i));
    }
    let mut bad_heads = 0;
    for i in 0..u64::from(n_avail) {
        let h = u16::from(byte()) % 20;
        bad_heads += u16::from(h >= FUZZ_QUEUE_SIZE);
        let _ = mem.write_obj(h.to_le(), GuestAddress(FUZZ_AVAIL + 4 + 2 * i));
    }
    let _ = mem.write_obj(n_avail.to_le(), GuestAddress(FUZZ_AVAIL + 2));
    let rest = data
        .get(FUZZ_HEADER + usize::from(n_avail)..)
        .unwrap_or(&[]);

    let mut queue = Queue::new(FUZZ_QUEUE_SIZE).expect("queue");
    queue.set_size(FUZZ_QUEUE_SIZE);
    queue.set_desc_table_address(Some(FUZZ_DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(FUZZ_AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(FUZZ_USED as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(mem));
    (queue, ctrl, n_avail, bad_heads, rest)
}

fn fuzz_used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj::<u16>(GuestAddress(FUZZ_USED + 2))
        .map(u16::from_le)
        .unwrap_or(0)
}

/// Interprets `data` as a tx queue and frames in `mem`, runs the transmit path against the
/// fake tap (whose writes may fail or block as `data` says) and checks the invariants that
/// hold whatever the input: no panic, it terminates, every chain is accounted for exactly once
/// (sent, dropped as malformed, or refused by the tap), frames reaching the tap are between
/// the header size and [`MAX_TX_LEN`], and nothing is lost to EAGAIN.
///
/// Input: byte 0 = write outcomes (2 bits per write for the first 4 writes: 0/1 ok, 2 EAGAIN,
/// 3 EIO); byte 1 = number of avail entries (mod 17); 16 descriptors of 10 bytes (addr selector
/// u32, length selector u32, flags, next); one head index byte per avail entry; the rest is
/// copied to guest memory at 0x1000 (across the first two regions).
pub fn fuzz_net_tx(backend: &mut NetBackend<FakeTap>, mem: &GuestMemoryMmap, data: &[u8]) {
    backend.reset_queues();
    backend.tap.tx.clear();
    backend.tap.write_results.clear();
    let (mut queue, ctrl, n_avail, bad_heads, payload) = fuzz_layout(mem, data);
    let room = (FUZZ_PAYLOAD_END - FUZZ_PAYLOAD) as usize;
    let _ = mem.write_slice(
        payload.get(..payload.len().min(room)).unwrap_or(&[]),
        GuestAddress(FUZZ_PAYLOAD),
    );
    for i in 0..4 {
        backend
            .tap
            .write_results
            .push_back(match (ctrl >> (2 * i)) & 3 {
                2 => libc::EAGAIN,
                3 => libc::EIO,
                _ => 0,
            });
    }

    let before = backend.stats.snapshot();
    let mut blocked = 0;
    loop {
        let out = backend.process_tx(&mut queue, mem);
        if !out.blocked {
            break;
        }
        blocked += 1;
        assert!(blocked <= 4, "blocked more often than EAGAIN was injected");
        assert!(backend.tx_pending());
    }
    assert!(!backend.tx_pending());
    assert!(
        !backend.process_tx(&mut queue, mem).used,
        "second pass found work"
    );
    let s = backend.stats.snapshot();
    let sent = s.tx_frames - before.tx_frames;
    let malformed = s.tx_malformed - before.tx_malformed;
    let refused = s.tx_errors - before.tx_errors;
    assert_eq!(queue.next_avail(), n_avail, "every avail entry consumed");
    assert_eq!(sent + malformed + refused, u64::from(n_avail));
    assert_eq!(sent, backend.tap.tx.len() as u64);
    assert_eq!(s.tx_deferred - before.tx_deferred, blocked);
    assert_eq!(
        u64::from(fuzz_used_idx(mem)),
        u64::from(n_avail - bad_heads),
        "every chain with a valid head returned once"
    );
    for f in &backend.tap.tx {
        assert!((VNET_HDR_LEN..=MAX_TX_LEN).contains(&f.len()));
    }
}

/// Like [`fuzz_net_tx`] for the receive path: the queue holds rx buffers, the rest of the input
/// is frames the fake tap returns (u16 length prefix mod 0x3000, then bytes; a length below
/// the header makes a runt). Bit 0 of byte 0 turns MRG_RXBUF on; bit 1 makes the tap fail a
/// read after the frames. Checks: no panic, it terminates, every frame read is delivered,
/// dropped (too big or runt) or still pending, and the used lengths add up to the delivered
/// bytes.
pub fn fuzz_net_rx(backend: &mut NetBackend<FakeTap>, mem: &GuestMemoryMmap, data: &[u8]) {
    backend.reset_queues();
    backend.tap.rx.clear();
    let (mut queue, ctrl, n_avail, _, mut rest) = fuzz_layout(mem, data);
    backend.set_mrg_rxbuf(ctrl & 1 != 0);
    while backend.tap.rx.len() < 8 {
        let [lo, hi, tail @ ..] = rest else {
            break;
        };
        let len = 1 + usize::from(u16::from_le_bytes([*lo, *hi]) % 0x3000);
        let body = tail.get(..len.min(tail.len())).unwrap_or(&[]);
        let mut frame = body.to_vec();
        frame.resize(len, 0x5a);
        backend.tap.push_rx(frame);
        rest = tail.get(body.len()..).unwrap_or(&[]);
    }
    let frames = backend.tap.rx.len() as u64;
    if ctrl & 2 != 0 {
        backend.tap.rx.push_back(Err(libc::EIO));
    }
    let before = backend.stats.snapshot();

    let mut rounds = 0;
    loop {
        let out = backend.process_rx(&mut queue, mem);
        rounds += 1;
        assert!(rounds <= 3, "the budget covers every frame");
        match out.wait {
            RxWait::Budget => continue,
            RxWait::NeedBuffers => assert!(backend.rx_pending()),
            RxWait::TapEmpty => {
                assert!(backend.tap.rx.is_empty() && !backend.rx_pending());
                assert!(ctrl & 2 == 0);
            }
            RxWait::TapError => {
                assert!(ctrl & 2 != 0 && backend.tap.rx.is_empty() && !backend.rx_pending())
            }
        }
        break;
    }
    let s = backend.stats.snapshot();
    let read = frames - backend.tap.rx_frames_left() as u64;
    let delivered = s.rx_frames - before.rx_frames;
    let read_failures = u64::from(ctrl & 2 != 0 && backend.tap.rx.is_empty());
    let dropped =
        (s.rx_too_big - before.rx_too_big) + (s.rx_errors - before.rx_errors) - read_failures;
    assert_eq!(
        delivered + dropped + u64::from(backend.rx_pending()),
        read,
        "every frame read is accounted for"
    );
    let used = fuzz_used_idx(mem);
    assert!(used <= n_avail);
    let mut used_bytes = 0u64;
    for i in 0..u64::from(used) {
        let len: u32 = mem
            .read_obj(GuestAddress(FUZZ_USED + 4 + 8 * i + 4))
            .unwrap_or(0);
        used_bytes += u64::from(u32::from_le(len));
    }
    let delivered_bytes = s.rx_bytes - before.rx_bytes + VNET_HDR_LEN as u64 * delivered;
    assert_eq!(used_bytes, delivered_bytes, "used lengths add up");
}

crate::virtio::atomic_counters!(NetStats {
    rx_frames,
    rx_bytes,
    tx_frames,
    tx_bytes,
    rx_deferred,
    rx_too_big,
    rx_invalid_chains,
    rx_errors,
    tx_malformed,
    tx_deferred,
    tx_errors,
    dropped_on_reset,
});
