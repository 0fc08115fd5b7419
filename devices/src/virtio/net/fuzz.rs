//! The virtio-net fuzz harnesses, shared by the `net_tx` and `net_rx` fuzz targets and
//! PRNG-driven unit tests: the input becomes a descriptor table, an avail ring and frames in a
//! small guest memory, run through [`NetBackend`] over a [`FakeTap`] with invariant checks.
//! [`NetFuzz`] holds what they reuse from one input to the next.

use virtio_queue::{Queue, QueueT};

use super::{FakeTap, NetBackend, RxWait, MAX_TX_LEN, VNET_HDR_LEN};
use crate::virtio::testing::fuzz::{self as harness, Input, QUEUE_SIZE};
use crate::virtio::testing::SplitRing;
use crate::virtio::GuestMemoryMmap;

/// The ring both harnesses lay out, at guest address 0.
const RING: SplitRing = SplitRing::new(0, QUEUE_SIZE);

/// What the net harnesses keep from one input to the next: the harness memory
/// ([`harness::memory`]) and a backend over a [`FakeTap`] (it owns 130 KiB of buffers).
pub struct NetFuzz {
    pub mem: GuestMemoryMmap,
    pub backend: NetBackend<FakeTap>,
}

impl Default for NetFuzz {
    fn default() -> Self {
        NetFuzz {
            mem: harness::memory(),
            backend: NetBackend::new(FakeTap::default()),
        }
    }
}

impl NetFuzz {
    /// [`fuzz_net_tx`] over this state.
    pub fn tx(&mut self, data: &[u8]) {
        fuzz_net_tx(&mut self.backend, &self.mem, data);
    }

    /// [`fuzz_net_rx`] over this state.
    pub fn rx(&mut self, data: &[u8]) {
        fuzz_net_rx(&mut self.backend, &self.mem, data);
    }
}

/// A buffer length from a selector: small (splits the header), tiny, up to 128 KiB, anything.
fn net_len(sel: u32) -> u32 {
    match sel >> 30 {
        0 => sel & 0x7ff,
        1 => sel & 0x1f,
        2 => sel & 0x1_ffff,
        _ => sel,
    }
}

/// Lays out [`RING`] from `data` (see [`fuzz_net_tx`] for the format). Returns the queue, the
/// control byte, the number of avail entries, how many of them name a head past the queue,
/// and the rest of the input.
fn fuzz_layout<'a>(mem: &GuestMemoryMmap, data: &'a [u8]) -> (Queue, u8, u16, u16, &'a [u8]) {
    let mut input = Input::new(data);

    // Clean slate for the rings and the buffer areas.
    harness::clear(mem);

    let ctrl = input.byte();
    let n_avail = u16::from(input.byte()) % (QUEUE_SIZE + 1);
    for i in 0..QUEUE_SIZE {
        RING.set_desc(mem, i, harness::descriptor(&mut input, net_len));
    }
    let mut bad_heads = 0;
    for i in 0..n_avail {
        let h = u16::from(input.byte()) % 20;
        bad_heads += u16::from(h >= QUEUE_SIZE);
        RING.set_avail(mem, i, h);
    }
    RING.set_avail_idx(mem, n_avail);
    let rest = input.rest();

    let queue = RING.queue();
    assert!(queue.is_valid(mem));
    (queue, ctrl, n_avail, bad_heads, rest)
}

fn fuzz_used_idx(mem: &GuestMemoryMmap) -> u16 {
    RING.used_idx(mem)
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
    harness::write_payload(mem, payload);
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
    for i in 0..used {
        used_bytes += u64::from(RING.used_elem(mem, i).len());
    }
    let delivered_bytes = s.rx_bytes - before.rx_bytes + VNET_HDR_LEN as u64 * delivered;
    assert_eq!(used_bytes, delivered_bytes, "used lengths add up");
}
