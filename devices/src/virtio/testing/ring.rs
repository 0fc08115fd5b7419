//! Split virtqueues as a driver builds them (virtio 1.2, 2.7): [`SplitRing`] places the three
//! parts and reads or writes them; [`TestQueue`] adds what a test's driver keeps (which
//! descriptors are taken, how many chains it made available, which used entries it has seen).

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::{Descriptor, VirtqUsedElem};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::virtio::GuestMemoryMmap;

/// Where one split virtqueue of `size` entries lies: the descriptor table at `base`, the
/// available ring `16 * size` bytes after it and the used ring `16 * size` bytes after that.
/// Each part gets the descriptor table's size, more than the rings need, so no part overlaps
/// another whatever the size, and the whole takes `48 * size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitRing {
    base: u64,
    size: u16,
}

// `#[inline]` throughout: `qvm-blk-cost` counts instructions per request, and it makes each
// request available through these (across the crate boundary).
impl SplitRing {
    /// `size` must be a power of two (virtio's rule for split rings) and `base` 16-aligned.
    #[inline]
    pub const fn new(base: u64, size: u16) -> SplitRing {
        assert!(
            size.is_power_of_two(),
            "a split ring's size is a power of two"
        );
        assert!(base & 0xf == 0, "a descriptor table is 16-byte aligned");
        SplitRing { base, size }
    }

    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    #[inline]
    pub fn desc_table(&self) -> GuestAddress {
        GuestAddress(self.base)
    }

    #[inline]
    pub fn avail_ring(&self) -> GuestAddress {
        GuestAddress(self.base + 16 * u64::from(self.size))
    }

    #[inline]
    pub fn used_ring(&self) -> GuestAddress {
        GuestAddress(self.base + 32 * u64::from(self.size))
    }

    /// The `used_event` field behind the avail ring's entries: a driver that acked
    /// VIRTIO_RING_F_EVENT_IDX writes there the used index it wants an interrupt for.
    #[inline]
    pub fn used_event(&self) -> GuestAddress {
        self.avail_ring()
            .unchecked_add(4 + 2 * u64::from(self.size))
    }

    /// A ready device-side queue over this ring, as a driver's register writes would leave it.
    #[inline]
    pub fn queue(&self) -> Queue {
        // The low and high halves of an address, as the driver writes them.
        let halves = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        let (lo, hi) = halves(self.desc_table());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = halves(self.avail_ring());
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = halves(self.used_ring());
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Writes descriptor `index` of the table.
    #[inline]
    pub fn set_desc(&self, mem: &GuestMemoryMmap, index: u16, desc: Descriptor) {
        let at = self.desc_table().unchecked_add(16 * u64::from(index));
        mem.write_obj(desc, at)
            .expect("descriptor table in guest memory");
    }

    /// Writes entry `slot` (modulo the size) of the avail ring: the head of a chain.
    #[inline]
    pub fn set_avail(&self, mem: &GuestMemoryMmap, slot: u16, head: u16) {
        let at = self
            .avail_ring()
            .unchecked_add(4 + 2 * u64::from(slot % self.size));
        mem.write_obj(head.to_le(), at)
            .expect("avail ring in guest memory");
    }

    /// Sets the avail ring's index: the entries before it are the device's to take.
    #[inline]
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        let at = self.avail_ring().unchecked_add(2);
        mem.write_obj(idx.to_le(), at)
            .expect("avail ring in guest memory");
    }

    /// The used ring's index: how many entries the device has used so far (wrapping).
    #[inline]
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        let at = self.used_ring().unchecked_add(2);
        u16::from_le(mem.read_obj(at).expect("used ring in guest memory"))
    }

    /// Entry `slot` (modulo the size) of the used ring.
    #[inline]
    pub fn used_elem(&self, mem: &GuestMemoryMmap, slot: u16) -> VirtqUsedElem {
        let at = self
            .used_ring()
            .unchecked_add(4 + 8 * u64::from(slot % self.size));
        mem.read_obj(at).expect("used ring in guest memory")
    }
}

/// One virtqueue as a test's driver sees it, over a [`SplitRing`]: descriptors are taken in
/// table order (wrapping to 0 at the end), every chain added is made available at once, and
/// [`TestQueue::used`] returns what the device used since the last look. Nothing is written
/// until a chain is added: a ring in fresh guest memory starts empty.
#[derive(Debug)]
pub struct TestQueue {
    /// The device's side of the ring, for tests that run a device's queue processing
    /// directly; an activation takes a fresh one ([`TestQueue::new_queue`]).
    pub queue: Queue,
    ring: SplitRing,
    mem: GuestMemoryMmap,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
}

impl TestQueue {
    /// A queue of `size` entries at `base` in `mem` (see [`SplitRing`] for the layout).
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> TestQueue {
        let ring = SplitRing::new(base, size);
        TestQueue {
            queue: ring.queue(),
            ring,
            mem: mem.clone(),
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
        }
    }

    pub fn ring(&self) -> SplitRing {
        self.ring
    }

    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// A fresh device-side queue over the ring, e.g. to activate a device with.
    pub fn new_queue(&self) -> Queue {
        self.ring.queue()
    }

    /// The first of the `n` descriptors the next chain of `n` gets (see [`TestQueue::alloc`]).
    pub fn next_head_for(&self, n: u16) -> u16 {
        if self.next_desc + n > self.ring.size() {
            0
        } else {
            self.next_desc
        }
    }

    /// Takes `n` consecutive descriptors; starts again at 0 when they would pass the end.
    pub fn alloc(&mut self, n: u16) -> u16 {
        let at = self.next_head_for(n);
        self.next_desc = at + n;
        at
    }

    /// Writes `descs` (address, length, flags) linked in order at descriptors `at..`: NEXT is
    /// added to every flag but the last one's.
    pub fn write_chain(&self, at: u16, descs: &[(u64, u32, u16)]) {
        let n = descs.len();
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let desc = if usize::from(i) + 1 < n {
                Descriptor::new(addr, len, flags | VRING_DESC_F_NEXT as u16, at + i + 1)
            } else {
                Descriptor::new(addr, len, flags, 0)
            };
            self.ring.set_desc(&self.mem, at + i, desc);
        }
    }

    /// Makes `head` available: the next avail entry, then the avail index. Any value goes,
    /// also one past the table.
    pub fn publish(&mut self, head: u16) {
        self.ring.set_avail(&self.mem, self.avail_idx, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.ring.set_avail_idx(&self.mem, self.avail_idx);
    }

    /// Adds a properly linked chain of (address, length, flags) and makes it available.
    /// Returns its head.
    pub fn add(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let at = self.alloc(descs.len() as u16);
        self.write_chain(at, descs);
        self.publish(at);
        at
    }

    /// Adds descriptors (address, length, flags, next) as given, `next` relative to the
    /// first one, at fresh places of the table, and makes the first one available. Returns
    /// its index.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let at = self.alloc(descs.len() as u16);
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let desc = Descriptor::new(addr, len, flags, at + next);
            self.ring.set_desc(&self.mem, at + i as u16, desc);
        }
        self.publish(at);
        at
    }

    /// Chains made available and not yet seen used ([`TestQueue::used`]).
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.seen_used)
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.ring.used_idx(&self.mem)
    }

    /// Entry `slot` of the used ring.
    pub fn used_elem(&self, slot: u16) -> VirtqUsedElem {
        self.ring.used_elem(&self.mem, slot)
    }

    /// The used entries (head, length) the device added since the last call.
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let used = self.used_idx();
        let mut out = Vec::new();
        while self.seen_used != used {
            let e = self.used_elem(self.seen_used);
            out.push((e.id(), e.len()));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }
}
