//! The frame-processing layer of virtio-net: [`NetBackend`] validates the guest's chains
//! (transmit: driver-readable header and frame; receive: device-writable buffers) and moves
//! frames between the queues and a [`TapIo`], keeping what the tap or the guest cannot take
//! yet. No threads: the worker, the tests and the fuzz harnesses call it directly.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{
    NetStats, TapIo, MAX_CHAIN_LEN, MAX_TX_LEN, NUM_BUFFERS_OFFSET, RX_BUDGET, RX_READ_LEN,
    VNET_HDR_LEN,
};
use crate::virtio::{bump, in_memory, GuestMemoryMmap};

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

/// The tap plus the frames in flight between it and the queues.
pub struct NetBackend<T: TapIo> {
    pub(super) tap: T,
    pub(super) stats: Arc<NetStats>,
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
        bump(&self.stats.dropped_on_reset, dropped);
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
                bump(&self.stats.tx_malformed, 1);
                continue;
            }
            if self.gather_tx(chain, mem).is_err() {
                bump(&self.stats.tx_malformed, 1);
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
                bump(&self.stats.tx_frames, 1);
                bump(
                    &self.stats.tx_bytes,
                    frame.len().saturating_sub(VNET_HDR_LEN) as u64,
                );
                Sent::Done
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bump(&self.stats.tx_deferred, 1);
                Sent::WouldBlock
            }
            Err(_) => {
                bump(&self.stats.tx_errors, 1);
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
                    bump(&self.stats.rx_too_big, 1);
                    self.rx_len = 0;
                    self.rx_waiting = false;
                }
                Delivery::NoBuffers => {
                    if !self.rx_waiting {
                        self.rx_waiting = true;
                        bump(&self.stats.rx_deferred, 1);
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
                bump(&self.stats.rx_errors, 1);
                Err(None)
            }
            Ok(n) if n > 0 => {
                self.rx_len = n;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Some(RxWait::TapEmpty)),
            // End of file (not a tap thing, but a stand-in's peer can go away) or an error.
            _ => {
                bump(&self.stats.rx_errors, 1);
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
                    bump(&self.stats.rx_invalid_chains, 1);
                    break;
                }
                off += n;
                written += n as u32;
            }
            *used |= queue.add_used(mem, chain.head, written).is_ok();
        }
        bump(&self.stats.rx_frames, 1);
        bump(
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
                bump(&self.stats.rx_invalid_chains, 1);
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
                    bump(&self.stats.rx_invalid_chains, 1);
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
