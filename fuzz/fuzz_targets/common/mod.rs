//! Shared pieces of the `vsock_tx`, `fuse_standby`, `wl_out` and `mmio_registers` targets: the
//! harness memory, input reader and buffer selectors of `qvm_devices::virtio::testing::fuzz`,
//! and [`Ring`], a split ring laid out from fuzz bytes in one format for all of them.
//!
//! Rings live in the first 4 KiB, 0x400 apart (each a `SplitRing` of [`QUEUE_SIZE`]:
//! descriptor table, avail ring at +0x100, used ring at +0x200); buffers point into
//! 0x1000..0x21000 (the last 4 KiB is past the end of memory), the small third region
//! (straddling its end) or near `u64::MAX`.
// Each target uses a different part.
#![allow(dead_code, unused_imports)]

pub use qvm_devices::virtio::testing::fuzz::{
    clear, memory, write_payload, Input, DESC_BYTES, QUEUE_SIZE,
};

use qvm_devices::virtio::testing::fuzz::descriptor;
use qvm_devices::virtio::testing::SplitRing;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

/// Bytes of input per ring: the descriptors plus one head byte per avail slot.
pub const RING_BYTES: usize = QUEUE_SIZE as usize * (DESC_BYTES + 1);

/// A buffer length from a selector: small (splits headers), tiny, large, or anything.
pub fn buf_len(sel: u32) -> u32 {
    match sel >> 30 {
        0 => sel & 0x7ff,
        1 => sel & 0x3f,
        2 => sel & 0x1_ffff,
        _ => sel,
    }
}

/// One split ring laid out in guest memory from fuzz bytes.
pub struct Ring {
    ring: SplitRing,
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
        let ring = SplitRing::new(base, QUEUE_SIZE);
        for i in 0..QUEUE_SIZE {
            ring.set_desc(mem, i, descriptor(input, buf_len));
        }
        let mut bad_heads = 0;
        for i in 0..QUEUE_SIZE {
            let h = u16::from(input.byte()) % 20;
            if i < n_avail {
                bad_heads += u16::from(h >= QUEUE_SIZE);
                ring.set_avail(mem, i, h);
            }
        }
        let queue = ring.queue();
        assert!(queue.is_valid(mem));
        let mut ring = Ring {
            ring,
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
        let _ = mem.read_slice(&mut heads, self.ring.avail_ring().unchecked_add(4));
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
            .read_obj::<u16>(self.ring.avail_ring().unchecked_add(2))
            .map(u16::from_le);
        idx.ok() == Some(self.n_avail) && self.avail_heads(mem) == self.laid_heads
    }

    /// Sets the avail index (the driver makes the first `n` entries available).
    pub fn publish(&mut self, mem: &GuestMemoryMmap<()>, n: u16) {
        self.n_avail = n;
        self.ring.set_avail_idx(mem, n);
    }

    /// The used index the device wrote.
    pub fn used_idx(&self, mem: &GuestMemoryMmap<()>) -> u16 {
        self.ring.used_idx(mem)
    }

    /// The used elements (id, len) the device wrote, or None when guest memory no longer shows
    /// the device's used index (a reply overwrote the used ring, see [`Ring::avail_intact`]).
    pub fn used_elems(&self, mem: &GuestMemoryMmap<()>) -> Option<Vec<(u32, u32)>> {
        let used = self.queue.next_used();
        (self.used_idx(mem) == used).then(|| (0..used).map(|i| self.used_elem(mem, i)).collect())
    }

    /// Used element `i`: (id, len).
    pub fn used_elem(&self, mem: &GuestMemoryMmap<()>, i: u16) -> (u32, u32) {
        let e = self.ring.used_elem(mem, i);
        (e.id(), e.len())
    }
}
