//! The virtio-blk fuzz harness, shared by the `blk_request` fuzz target and a PRNG-driven unit
//! test: the input becomes a descriptor table, an avail ring and request payload in a small
//! guest memory, run through [`process_queue`] with invariant checks.

use virtio_queue::QueueT;

use super::{process_queue, Disk};
use crate::virtio::testing::fuzz::{self as harness, Input, QUEUE_SIZE};
use crate::virtio::testing::SplitRing;
use crate::virtio::GuestMemoryMmap;

/// A data length from a selector: up to a sector (splits headers and segments), whole
/// sectors, up to 256 KiB, or anything.
fn blk_len(sel: u32) -> u32 {
    match sel >> 30 {
        0 => sel & 0x1ff,
        1 => (sel & 0x1f) * 512,
        2 => sel & 0x3_ffff,
        _ => sel,
    }
}

/// Interprets `data` as a descriptor table, an avail ring and payload (headers, segments,
/// data) in `mem` (the harness memory, [`harness::memory`]), then runs [`process_queue`] over
/// it and checks the invariants that hold whatever the input: it terminates, does not panic,
/// returns at most one used entry per avail entry, and a second pass finds nothing new.
///
/// Input: byte 0 = number of avail entries (mod 17); 16 descriptors of 10 bytes (addr selector
/// u32, length selector u32, flags, next; see [`harness::descriptor`]); one head index byte
/// per avail entry; the rest is copied to guest memory at 0x1000 (across the first two
/// regions).
pub fn fuzz_blk_request(disk: &mut Disk, mem: &GuestMemoryMmap, data: &[u8]) {
    let mut input = Input::new(data);
    let ring = SplitRing::new(0, QUEUE_SIZE);

    // Clean slate for the rings and the payload area.
    harness::clear(mem);

    let n_avail = u16::from(input.byte()) % (QUEUE_SIZE + 1);
    for i in 0..QUEUE_SIZE {
        ring.set_desc(mem, i, harness::descriptor(&mut input, blk_len));
    }
    for i in 0..n_avail {
        ring.set_avail(mem, i, u16::from(input.byte()) % 20);
    }
    ring.set_avail_idx(mem, n_avail);
    harness::write_payload(mem, input.rest());

    let mut queue = ring.queue();
    assert!(queue.is_valid(mem));

    process_queue(disk, &mut queue, mem);
    let used = ring.used_idx(mem);
    assert!(used <= n_avail, "used {used} > avail {n_avail}");
    assert_eq!(queue.next_avail(), n_avail, "every avail entry consumed");
    assert!(
        !process_queue(disk, &mut queue, mem),
        "second pass found work"
    );
}
