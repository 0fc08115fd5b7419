//! The virtio-net fuzz harnesses, shared by the `net_tx` and `net_rx` fuzz targets and
//! PRNG-driven unit tests: the input becomes a descriptor table, an avail ring and frames in a
//! small guest memory, run through [`NetBackend`] over a [`FakeTap`] with invariant checks.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{FakeTap, NetBackend, RxWait, MAX_TX_LEN, VNET_HDR_LEN};
use crate::virtio::GuestMemoryMmap;

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
