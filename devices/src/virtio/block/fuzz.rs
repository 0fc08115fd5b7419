//! The virtio-blk fuzz harness, shared by the `blk_request` fuzz target and a PRNG-driven unit
//! test: the input becomes a descriptor table, an avail ring and request payload in a small
//! guest memory, run through [`process_queue`] with invariant checks.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::disk::ZEROS;
use super::{process_queue, Disk};
use crate::virtio::GuestMemoryMmap;

/// Queue size the harness uses.
pub const FUZZ_QUEUE_SIZE: u16 = 16;
const FUZZ_DESC_TABLE: u64 = 0;
const FUZZ_AVAIL: u64 = 0x100;
const FUZZ_USED: u64 = 0x200;
const FUZZ_PAYLOAD: u64 = 0x1000;

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

/// Interprets `data` as a descriptor table, an avail ring and payload (headers, segments,
/// data) in `mem`, then runs [`process_queue`] over it and checks the invariants that hold
/// whatever the input: it terminates, does not panic, returns at most one used entry per
/// avail entry, and a second pass finds nothing new.
///
/// Input: byte 0 = number of avail entries (mod 17); 16 descriptors of 10 bytes (addr selector
/// u32, length selector u32, flags, next); one head index byte per avail entry; the rest is
/// copied to guest memory at 0x1000 (across the first two regions).
pub fn fuzz_blk_request(disk: &mut Disk, mem: &GuestMemoryMmap, data: &[u8]) {
    let mut input = data.iter().copied();
    let mut byte = || input.next().unwrap_or(0);

    // Clean slate for the rings and the payload area.
    let _ = mem.write_slice(&[0u8; 0x1000], GuestAddress(0));
    let mut at = FUZZ_PAYLOAD;
    while at < 0x20000 {
        let n = ((0x20000 - at) as usize).min(ZEROS.len());
        let _ = mem.write_slice(&ZEROS[..n], GuestAddress(at));
        at += n as u64;
    }
    let _ = mem.write_slice(&ZEROS[..0x1000], GuestAddress(0x40000));

    let n_avail = u16::from(byte()) % (FUZZ_QUEUE_SIZE + 1);
    let mut descs = [(0u32, 0u32, 0u8, 0u8); FUZZ_QUEUE_SIZE as usize];
    for d in descs.iter_mut() {
        let addr = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
        let len = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
        *d = (addr, len, byte(), byte());
    }
    let heads: Vec<u16> = (0..n_avail).map(|_| u16::from(byte()) % 20).collect();
    let payload: Vec<u8> = data
        .iter()
        .copied()
        .skip(1 + 160 + n_avail as usize)
        .collect();

    for (i, &(addr_sel, len_sel, flags, next)) in descs.iter().enumerate() {
        let addr = match addr_sel >> 30 {
            0 | 1 => FUZZ_PAYLOAD + u64::from(addr_sel & 0x1_ffff),
            2 => 0x40000 + u64::from(addr_sel & 0x1fff),
            _ => u64::MAX - u64::from(addr_sel & 0xffff),
        };
        let len = match len_sel >> 30 {
            0 => len_sel & 0x1ff,
            1 => (len_sel & 0x1f) * 512,
            2 => len_sel & 0x3_ffff,
            _ => len_sel,
        };
        let desc = Descriptor::new(addr, len, u16::from(flags & 0x7), u16::from(next) % 20);
        let at = GuestAddress(FUZZ_DESC_TABLE + 16 * i as u64);
        let _ = mem.write_obj(desc, at);
    }
    for (i, h) in heads.iter().enumerate() {
        let _ = mem.write_obj(h.to_le(), GuestAddress(FUZZ_AVAIL + 4 + 2 * i as u64));
    }
    let _ = mem.write_obj(n_avail.to_le(), GuestAddress(FUZZ_AVAIL + 2));
    let room = (0x20000 - FUZZ_PAYLOAD) as usize;
    let _ = mem.write_slice(
        &payload[..payload.len().min(room)],
        GuestAddress(FUZZ_PAYLOAD),
    );

    let mut queue = Queue::new(FUZZ_QUEUE_SIZE).expect("queue");
    queue.set_size(FUZZ_QUEUE_SIZE);
    queue.set_desc_table_address(Some(FUZZ_DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(FUZZ_AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(FUZZ_USED as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(mem));

    process_queue(disk, &mut queue, mem);
    let used: u16 = mem
        .read_obj::<u16>(GuestAddress(FUZZ_USED + 2))
        .map(u16::from_le)
        .unwrap_or(0);
    assert!(used <= n_avail, "used {used} > avail {n_avail}");
    assert_eq!(queue.next_avail(), n_avail, "every avail entry consumed");
    assert!(
        !process_queue(disk, &mut queue, mem),
        "second pass found work"
    );
}
