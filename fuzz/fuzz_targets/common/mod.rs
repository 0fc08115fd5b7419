//! Shared pieces of the fuzz targets: a fixed-layout input reader and split rings laid out in a
//! small guest memory from fuzz bytes.
//!
//! Guest memory (like the blk/net harnesses): two adjacent 64 KiB regions at 0 (buffers may
//! straddle them), a hole, and a 4 KiB region at 0x40000. Rings live in the first 4 KiB
//! (each ring takes 0x400: descriptor table, avail ring at +0x100, used ring at +0x200);
//! buffers point into 0x1000..0x21000 (the last 4 KiB is past the end of memory), the third
//! region (straddling its end) or near `u64::MAX`.
#![allow(dead_code)]

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of every fuzzed queue.
pub const QUEUE_SIZE: u16 = 16;
/// Bytes of input per descriptor: address selector (u32), length selector (u32), flags, next.
pub const DESC_BYTES: usize = 10;
/// Bytes of input per ring: the descriptors plus one head byte per avail slot.
pub const RING_BYTES: usize = QUEUE_SIZE as usize * (DESC_BYTES + 1);
/// Where buffer payload copied from the input starts, and where memory we clear ends.
pub const PAYLOAD: u64 = 0x1000;
pub const PAYLOAD_END: u64 = 0x20000;
pub const THIRD_REGION: u64 = 0x40000;

pub fn memory() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(THIRD_REGION), 0x1000),
    ])
    .expect("fuzz guest memory")
}

/// Zeroes the rings and buffer areas.
pub fn clear(mem: &GuestMemoryMmap<()>) {
    static ZEROS: [u8; 0x1000] = [0; 0x1000];
    let mut at = 0;
    while at < PAYLOAD_END {
        let _ = mem.write_slice(&ZEROS, GuestAddress(at));
        at += ZEROS.len() as u64;
    }
    let _ = mem.write_slice(&ZEROS, GuestAddress(THIRD_REGION));
}

/// Copies `bytes` to guest memory at [`PAYLOAD`] (as much as fits before [`PAYLOAD_END`]).
pub fn write_payload(mem: &GuestMemoryMmap<()>, bytes: &[u8]) {
    let room = (PAYLOAD_END - PAYLOAD) as usize;
    let _ = mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(PAYLOAD));
}

/// Reads the input as a stream of fixed-size fields; past the end everything reads as 0.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// The next `n` bytes (fewer at the end of the input); always advances by `n`.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = self.pos.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }

    /// Whatever follows.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }
}

/// A guest buffer address from a selector: mostly inside the payload area, sometimes in the
/// small third region (straddling its end), sometimes where `addr + len` overflows.
pub fn buf_addr(sel: u32) -> u64 {
    match sel >> 30 {
        0 | 1 => PAYLOAD + u64::from(sel & 0x1_ffff),
        2 => THIRD_REGION + u64::from(sel & 0x1fff),
        _ => u64::MAX - u64::from(sel & 0xffff),
    }
}

/// A buffer length from a selector: small (splits headers), medium, large, or anything.
pub fn buf_len(sel: u32) -> u32 {
    match sel >> 30 {
        0 => sel & 0x7ff,
        1 => sel & 0x3f,
        2 => sel & 0x1_ffff,
        _ => sel,
    }
}

/// One split ring laid out in guest memory at `base`.
pub struct Ring {
    pub base: u64,
    pub queue: Queue,
    /// Avail entries published.
    pub n_avail: u16,
    /// How many of them name a head index past the queue.
    pub bad_heads: u16,
    /// The avail ring's head entries as laid out (to tell whether the device overwrote them).
    laid_heads: Vec<u8>,
}

impl Ring {
    /// Lays out a ring at `base` (< 0x1000, 0x400 aligned) from [`RING_BYTES`] of input:
    /// 16 descriptors (address selector, length selector, flags & 7, next % 20), then 16 head
    /// bytes (% 20) of which the first `n_avail` are published.
    pub fn lay(mem: &GuestMemoryMmap<()>, input: &mut Input, base: u64, n_avail: u16) -> Ring {
        let n_avail = n_avail % (QUEUE_SIZE + 1);
        for i in 0..u64::from(QUEUE_SIZE) {
            let addr = buf_addr(input.u32());
            let len = buf_len(input.u32());
            let (flags, next) = (input.byte(), input.byte());
            let desc = Descriptor::new(addr, len, u16::from(flags & 0x7), u16::from(next) % 20);
            let _ = mem.write_obj(RawDescriptor::from(desc), GuestAddress(base + 16 * i));
        }
        let mut bad_heads = 0;
        for i in 0..u64::from(QUEUE_SIZE) {
            let h = u16::from(input.byte()) % 20;
            if i < u64::from(n_avail) {
                bad_heads += u16::from(h >= QUEUE_SIZE);
                let _ = mem.write_obj(h.to_le(), GuestAddress(base + 0x100 + 4 + 2 * i));
            }
        }
        let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
        queue.set_size(QUEUE_SIZE);
        queue.set_desc_table_address(Some(base as u32), Some(0));
        queue.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        queue.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        let mut ring = Ring {
            base,
            queue,
            n_avail: 0,
            bad_heads,
            laid_heads: Vec::new(),
        };
        ring.laid_heads = ring.avail_heads(mem);
        ring.publish(mem, n_avail);
        ring
    }

    fn avail_heads(&self, mem: &GuestMemoryMmap<()>) -> Vec<u8> {
        let mut heads = vec![0u8; 2 * usize::from(QUEUE_SIZE)];
        let _ = mem.read_slice(&mut heads, GuestAddress(self.base + 0x100 + 4));
        heads
    }

    /// Whether guest memory still holds the avail ring as published: the index and every head.
    ///
    /// A device writes replies wherever a writable descriptor points, and an indirect table's
    /// entries are arbitrary addresses, so a reply can land on the rings themselves: the guest
    /// rewrote its own avail ring. The device then rightly stops early (a lower index), reads
    /// heads that were not published, or takes more entries (a higher one). Harnesses expect
    /// "every entry consumed, every valid head used once" only while this holds; a guest that
    /// rewrites the ring and puts it back between two reads is not told apart.
    pub fn avail_intact(&self, mem: &GuestMemoryMmap<()>) -> bool {
        let idx = mem
            .read_obj::<u16>(GuestAddress(self.base + 0x100 + 2))
            .map(u16::from_le);
        idx.ok() == Some(self.n_avail) && self.avail_heads(mem) == self.laid_heads
    }

    /// Sets the avail index (the driver makes the first `n` entries available).
    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, n: u16) {
        self.n_avail = n;
        let _ = mem.write_obj(n.to_le(), GuestAddress(self.base + 0x100 + 2));
    }

    /// The used index the device wrote.
    pub fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.base + 0x200 + 2))
            .map(u16::from_le)
            .unwrap_or(0)
    }

    /// The used elements (id, len) the device wrote, or None when guest memory no longer shows
    /// the device's used index (a reply overwrote the used ring, see [`Ring::avail_intact`]).
    pub fn used_elems(&self, mem: &GuestMemoryMmap<()>) -> Option<Vec<(u32, u32)>> {
        let used = self.queue.next_used();
        (self.used_idx(mem) == used).then(|| (0..used).map(|i| self.used_elem(mem, i)).collect())
    }

    /// Used element `i`: (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap<()>, i: u16) -> (u32, u32) {
        let at = self.base + 0x200 + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        (u32::from_le(id), u32::from_le(len))
    }
}
