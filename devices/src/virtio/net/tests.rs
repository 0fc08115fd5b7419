//! virtio-net tests: the backend driven directly over driver-side rings and a [`FakeTap`], the
//! device through its worker thread over a socketpair standing in for the tap, a real tap (root
//! only), and the fuzz harnesses on random inputs.

use super::fuzz::NetFuzz;
use super::*;
use crate::virtio::testing::{
    self, guest_bytes, pattern, wait_for, CountingInterrupt, Rng, TestQueue,
};
use crate::virtio::{ActiveQueue, GuestMemoryMmap};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 8 << 20;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
/// Buffers live at 1 MiB and above (the rings sit low).
const BUF: u64 = 0x10_0000;
const BUF2: u64 = 0x40_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn memory() -> GuestMemoryMmap {
    testing::memory(MEM_SIZE)
}

/// A frame as the tap or the driver hands it over: 12-byte header, then `len` bytes. The
/// header's num_buffers holds garbage the device must overwrite on receive.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    f[10] = 0xee;
    f[11] = 0xee;
    f.extend(pattern(len, seed));
    f
}

/// `f` with num_buffers set as the guest must see it.
fn with_num_buffers(f: &[u8], n: u16) -> Vec<u8> {
    let mut f = f.to_vec();
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

/// Memory, a backend over a [`FakeTap`] and a tx ring.
fn tx_setup() -> (GuestMemoryMmap, NetBackend<FakeTap>, TestQueue) {
    let mem = memory();
    let tx = TestQueue::new(&mem, TX_RING, QUEUE_SIZE);
    (mem, NetBackend::new(FakeTap::default()), tx)
}

/// Memory, a backend over a [`FakeTap`] with MRG_RXBUF as `mrg_rxbuf` says, and an rx ring.
fn rx_setup(mrg_rxbuf: bool) -> (GuestMemoryMmap, NetBackend<FakeTap>, TestQueue) {
    let mem = memory();
    let mut b = NetBackend::new(FakeTap::default());
    b.set_mrg_rxbuf(mrg_rxbuf);
    let rx = TestQueue::new(&mem, RX_RING, QUEUE_SIZE);
    (mem, b, rx)
}

// ---------------------------------------------------------------------------------------------
// Transmit
// ---------------------------------------------------------------------------------------------

/// Submits one tx chain with the frame `f` written at `at` (possibly split over descriptors
/// as `descs` says) and returns the used entries.
fn send(
    b: &mut NetBackend<FakeTap>,
    tx: &mut TestQueue,
    descs: &[(u64, u32, u16)],
) -> Vec<(u32, u32)> {
    tx.add(descs);
    let mem = tx.mem().clone();
    b.process_tx(&mut tx.queue, &mem);
    tx.used()
}

/// A known-good frame goes through (after a bad chain).
fn assert_tx_works(b: &mut NetBackend<FakeTap>, tx: &mut TestQueue, mem: &GuestMemoryMmap) {
    let f = frame(60, 0x42);
    mem.write_slice(&f, GuestAddress(BUF2)).unwrap();
    let sent_before = b.tap().tx.len();
    let head = tx.next_head_for(1);
    assert_eq!(
        send(b, tx, &[(BUF2, f.len() as u32, R)]),
        vec![(u32::from(head), 0)]
    );
    assert_eq!(b.tap().tx.len(), sent_before + 1);
    assert_eq!(b.tap().tx.last().unwrap(), &f);
}

#[test]
fn tx_frame_reaches_the_tap_with_its_header() {
    let (mem, mut b, mut tx) = tx_setup();
    let f = frame(100, 1);
    // Split inside the header, and over a zero-length descriptor.
    mem.write_slice(&f[..8], GuestAddress(BUF)).unwrap();
    mem.write_slice(&f[8..], GuestAddress(BUF + 0x1000))
        .unwrap();
    let head = tx.add(&[(BUF, 8, R), (BUF2, 0, R), (BUF + 0x1000, 104, R)]);
    let out = b.process_tx(&mut tx.queue, &mem);
    assert_eq!(
        out,
        TxOutcome {
            used: true,
            blocked: false
        }
    );
    assert_eq!(tx.used(), vec![(u32::from(head), 0)]);
    assert_eq!(b.tap().tx, vec![f]);
    let s = b.stats().snapshot();
    assert_eq!((s.tx_frames, s.tx_bytes), (1, 100));
    // Nothing more to do.
    assert_eq!(b.process_tx(&mut tx.queue, &mem), TxOutcome::default());
}

#[test]
fn tx_indirect_chain() {
    let (mem, mut b, mut tx) = tx_setup();
    let f = frame(300, 2);
    mem.write_slice(&f[..12], GuestAddress(BUF)).unwrap();
    mem.write_slice(&f[12..], GuestAddress(BUF + 0x100))
        .unwrap();
    let table = BUF2 + 0x1_0000;
    mem.write_obj(Descriptor::new(BUF, 12, NEXT, 1), GuestAddress(table))
        .unwrap();
    mem.write_obj(
        Descriptor::new(BUF + 0x100, 300, 0, 0),
        GuestAddress(table + 16),
    )
    .unwrap();
    tx.add_raw(&[(table, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
    b.process_tx(&mut tx.queue, &mem);
    assert_eq!(tx.used().len(), 1);
    assert_eq!(b.tap().tx, vec![f]);
}

#[test]
fn bad_tx_chains_are_dropped_and_counted() {
    let (mem, mut b, mut tx) = tx_setup();
    let mem_end = MEM_SIZE as u64;
    let max = MAX_TX_LEN as u32;
    mem.write_slice(&frame(200, 3), GuestAddress(BUF)).unwrap();

    let bad: Vec<Vec<(u64, u32, u16)>> = vec![
        // shorter than the header
        vec![(BUF, 8, R)],
        vec![(BUF, 4, R), (BUF + 16, 4, R), (BUF + 32, 0, R)],
        vec![(BUF, 0, R)],
        // longer than 64 KiB + headers
        vec![(BUF, max + 1, R)],
        vec![(BUF, 40000, R), (BUF + 0x1_0000, 30000, R)],
        vec![(BUF, u32::MAX, R), (BUF, u32::MAX, R)],
        // device-writable descriptors
        vec![(BUF, 12, R), (BUF + 0x1000, 100, W)],
        vec![(BUF, 112, W)],
        // outside guest memory
        vec![(mem_end - 8, 64, R)],
        vec![(mem_end, 64, R)],
        vec![(BUF, 12, R), (u64::MAX - 7, 64, R)],
    ];
    for (i, chain) in bad.iter().enumerate() {
        let head = tx.next_head_for(chain.len() as u16);
        assert_eq!(
            send(&mut b, &mut tx, chain),
            vec![(u32::from(head), 0)],
            "{chain:?}"
        );
        assert_eq!(b.stats().snapshot().tx_malformed, i as u64 + 1);
        assert!(b.tap().tx.len() <= i, "nothing bad reached the tap");
        assert_tx_works(&mut b, &mut tx, &mem);
    }
    let mut malformed = bad.len() as u64;

    // Chains that do not end: 0 -> 1 -> 0, a self loop, a next index past the queue.
    tx.add_raw(&[(BUF, 12, NEXT, 1), (BUF + 0x100, 20, NEXT, 0)]);
    tx.add_raw(&[(BUF, 64, NEXT, 0)]);
    tx.add_raw(&[(BUF, 64, NEXT, QUEUE_SIZE + 5)]);
    b.process_tx(&mut tx.queue, &mem);
    assert_eq!(
        tx.used().iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0, 0, 0]
    );
    malformed += 3;
    // An avail entry naming descriptor 300 of a 256-entry table: nothing to return.
    tx.publish(300);
    b.process_tx(&mut tx.queue, &mem);
    assert!(tx.used().is_empty());
    malformed += 1;
    assert_eq!(b.stats().snapshot().tx_malformed, malformed);
    assert_tx_works(&mut b, &mut tx, &mem);

    // The limits themselves are fine: exactly the header, exactly MAX_TX_LEN.
    assert_eq!(send(&mut b, &mut tx, &[(BUF, 12, R)])[0].1, 0);
    assert_eq!(b.tap().tx.last().unwrap().len(), 12);
    assert_eq!(send(&mut b, &mut tx, &[(BUF, max, R)])[0].1, 0);
    assert_eq!(b.tap().tx.last().unwrap().len(), MAX_TX_LEN);
    let s = b.stats().snapshot();
    assert_eq!(s.tx_malformed, malformed);
    assert_eq!(s.tx_frames, b.tap().tx.len() as u64);
}

#[test]
fn tx_eagain_keeps_the_frame_and_other_errors_drop_it() {
    let (mem, mut b, mut tx) = tx_setup();
    let (f1, f2) = (frame(100, 1), frame(200, 2));
    mem.write_slice(&f1, GuestAddress(BUF)).unwrap();
    mem.write_slice(&f2, GuestAddress(BUF + 0x1000)).unwrap();
    b.tap_mut().write_results = [libc::EAGAIN, libc::EAGAIN].into();
    let h1 = tx.add(&[(BUF, f1.len() as u32, R)]);
    let h2 = tx.add(&[(BUF + 0x1000, f2.len() as u32, R)]);

    for _ in 0..2 {
        let out = b.process_tx(&mut tx.queue, &mem);
        assert_eq!(
            out,
            TxOutcome {
                used: false,
                blocked: true
            }
        );
        assert!(b.tx_pending());
        assert!(tx.used().is_empty());
        assert!(b.tap().tx.is_empty());
    }
    // The guest may scribble over the buffer once the frame was taken: the copy is sent.
    mem.write_slice(&[0u8; 100], GuestAddress(BUF)).unwrap();
    let out = b.process_tx(&mut tx.queue, &mem);
    assert_eq!(
        out,
        TxOutcome {
            used: true,
            blocked: false
        }
    );
    assert_eq!(tx.used(), vec![(u32::from(h1), 0), (u32::from(h2), 0)]);
    assert_eq!(b.tap().tx, vec![f1.clone(), f2.clone()]);
    let s = b.stats().snapshot();
    assert_eq!((s.tx_deferred, s.tx_frames, s.tx_errors), (2, 2, 0));

    // EIO: that frame is dropped (and returned), the next goes through.
    b.tap_mut().write_results = [libc::EIO].into();
    mem.write_slice(&f1, GuestAddress(BUF)).unwrap();
    tx.add(&[(BUF, f1.len() as u32, R)]);
    tx.add(&[(BUF + 0x1000, f2.len() as u32, R)]);
    b.process_tx(&mut tx.queue, &mem);
    assert_eq!(tx.used().len(), 2);
    assert_eq!(b.tap().tx.len(), 3);
    assert_eq!(b.tap().tx[2], f2);
    let s = b.stats().snapshot();
    assert_eq!((s.tx_errors, s.tx_frames, s.tx_bytes), (1, 3, 500));

    // A reset forgets a blocked frame (its chain belongs to the old queue).
    b.tap_mut().write_results = [libc::EAGAIN].into();
    tx.add(&[(BUF, f1.len() as u32, R)]);
    assert!(b.process_tx(&mut tx.queue, &mem).blocked);
    b.reset_queues();
    assert!(!b.tx_pending());
    assert_eq!(b.stats().snapshot().dropped_on_reset, 1);
}

// ---------------------------------------------------------------------------------------------
// Receive
// ---------------------------------------------------------------------------------------------

#[test]
fn rx_with_mrg_rxbuf_spans_chains_and_sets_num_buffers() {
    let (mem, mut b, mut rx) = rx_setup(true);
    let heads: Vec<u16> = (0..3)
        .map(|i| rx.add(&[(BUF + 0x1000 * i, 1000, W)]))
        .collect();
    let f = frame(2488, 7);
    b.tap_mut().push_rx(f.clone());
    let out = b.process_rx(&mut rx.queue, &mem);
    assert_eq!(
        out,
        RxOutcome {
            used: true,
            wait: RxWait::TapEmpty
        }
    );
    let lens: Vec<(u32, u32)> = heads
        .iter()
        .zip([1000, 1000, 500])
        .map(|(&h, l)| (u32::from(h), l))
        .collect();
    assert_eq!(rx.used(), lens);
    let mut got = guest_bytes(&mem, BUF, 1000);
    got.extend(guest_bytes(&mem, BUF + 0x1000, 1000));
    got.extend(guest_bytes(&mem, BUF + 0x2000, 500));
    assert_eq!(got, with_num_buffers(&f, 3));
    let s = b.stats().snapshot();
    assert_eq!((s.rx_frames, s.rx_bytes), (1, 2488));

    // Small frames take one chain each; a chain of several descriptors is filled in order;
    // a chain left over stays in the ring for the next frame.
    rx.add(&[
        (BUF2, 10, W),
        (BUF2 + 0x100, 0, W),
        (BUF2 + 0x1000, 4000, W),
    ]);
    let h2 = rx.add(&[(BUF2 + 0x2000, 4000, W)]);
    let small = frame(500, 8);
    b.tap_mut().push_rx(small.clone());
    b.process_rx(&mut rx.queue, &mem);
    assert_eq!(rx.used()[0].1, 512);
    let mut got = guest_bytes(&mem, BUF2, 10);
    got.extend(guest_bytes(&mem, BUF2 + 0x1000, 502));
    assert_eq!(got, with_num_buffers(&small, 1));
    b.tap_mut().push_rx(frame(40, 9));
    b.process_rx(&mut rx.queue, &mem);
    assert_eq!(rx.used(), vec![(u32::from(h2), 52)]);
}

#[test]
fn rx_without_mrg_rxbuf_uses_one_chain_per_frame() {
    let (mem, mut b, mut rx) = rx_setup(false);
    let h = rx.add(&[(BUF, 12, W), (BUF + 0x1000, 2000, W)]);
    let f = frame(1000, 4);
    b.tap_mut().push_rx(f.clone());
    b.process_rx(&mut rx.queue, &mem);
    assert_eq!(rx.used(), vec![(u32::from(h), 1012)]);
    let mut got = guest_bytes(&mem, BUF, 12);
    got.extend(guest_bytes(&mem, BUF + 0x1000, 1000));
    assert_eq!(got, with_num_buffers(&f, 1));
}

#[test]
fn rx_without_buffers_keeps_the_frame_pending_and_loses_nothing() {
    for mrg in [true, false] {
        let (mem, mut b, mut rx) = rx_setup(mrg);
        let (a, c) = (frame(100, 1), frame(200, 2));
        b.tap_mut().push_rx(a.clone());
        b.tap_mut().push_rx(c.clone());
        for _ in 0..3 {
            let out = b.process_rx(&mut rx.queue, &mem);
            assert_eq!(
                out,
                RxOutcome {
                    used: false,
                    wait: RxWait::NeedBuffers
                }
            );
            assert!(b.rx_pending());
            // Only the first frame was read: the rest stays in the tap.
            assert_eq!(b.tap().rx_frames_left(), 1);
        }
        assert_eq!(
            b.stats().snapshot().rx_deferred,
            1,
            "counted once per frame"
        );

        let h1 = rx.add(&[(BUF, 2048, W)]);
        let h2 = rx.add(&[(BUF + 0x1000, 2048, W)]);
        let out = b.process_rx(&mut rx.queue, &mem);
        assert_eq!(out.wait, RxWait::TapEmpty);
        assert_eq!(rx.used(), vec![(u32::from(h1), 112), (u32::from(h2), 212)]);
        assert_eq!(guest_bytes(&mem, BUF, 112), with_num_buffers(&a, 1));
        assert_eq!(
            guest_bytes(&mem, BUF + 0x1000, 212),
            with_num_buffers(&c, 1)
        );
        let s = b.stats().snapshot();
        assert_eq!((s.rx_frames, s.rx_deferred, s.rx_too_big), (2, 1, 0));
    }
}

#[test]
fn rx_with_mrg_rxbuf_waits_for_enough_buffers() {
    let (mem, mut b, mut rx) = rx_setup(true);
    let h1 = rx.add(&[(BUF, 2048, W)]);
    let f = frame(3000, 5);
    b.tap_mut().push_rx(f.clone());
    assert_eq!(b.process_rx(&mut rx.queue, &mem).wait, RxWait::NeedBuffers);
    // The chain is held by the device, not returned.
    assert!(rx.used().is_empty());
    let h2 = rx.add(&[(BUF + 0x1000, 2048, W)]);
    assert_eq!(b.process_rx(&mut rx.queue, &mem).wait, RxWait::TapEmpty);
    assert_eq!(
        rx.used(),
        vec![(u32::from(h1), 2048), (u32::from(h2), 3012 - 2048)]
    );
    let mut got = guest_bytes(&mem, BUF, 2048);
    got.extend(guest_bytes(&mem, BUF + 0x1000, 3012 - 2048));
    assert_eq!(got, with_num_buffers(&f, 2));
}

#[test]
fn rx_frame_bigger_than_every_buffer_is_dropped() {
    // Without MRG_RXBUF: larger than the next chain. The chain serves the next frame.
    let (mem, mut b, mut rx) = rx_setup(false);
    let h = rx.add(&[(BUF, 512, W)]);
    b.tap_mut().push_rx(frame(1000, 1));
    let small = frame(300, 2);
    b.tap_mut().push_rx(small.clone());
    let out = b.process_rx(&mut rx.queue, &mem);
    assert_eq!(out.wait, RxWait::TapEmpty);
    assert_eq!(rx.used(), vec![(u32::from(h), 312)]);
    assert_eq!(guest_bytes(&mem, BUF, 312), with_num_buffers(&small, 1));
    let s = b.stats().snapshot();
    assert_eq!((s.rx_too_big, s.rx_frames), (1, 1));

    // With MRG_RXBUF: a whole ring of small buffers (256 x 64 bytes) is still too small.
    let (mem, mut b, mut rx) = rx_setup(true);
    let heads: Vec<u16> = (0..u64::from(QUEUE_SIZE))
        .map(|i| rx.add(&[(BUF + 64 * i, 64, W)]))
        .collect();
    b.tap_mut().push_rx(frame(20000, 3));
    let small = frame(100, 4);
    b.tap_mut().push_rx(small.clone());
    assert_eq!(b.process_rx(&mut rx.queue, &mem).wait, RxWait::TapEmpty);
    assert_eq!(
        rx.used(),
        vec![(u32::from(heads[0]), 64), (u32::from(heads[1]), 48)]
    );
    let mut got = guest_bytes(&mem, BUF, 64);
    got.extend(guest_bytes(&mem, BUF + 64, 48));
    assert_eq!(got, with_num_buffers(&small, 2));
    let s = b.stats().snapshot();
    assert_eq!((s.rx_too_big, s.rx_frames, s.rx_deferred), (1, 1, 0));
}

#[test]
fn bad_rx_chains_are_returned_unused() {
    let (mem, mut b, mut rx) = rx_setup(true);
    let mem_end = MEM_SIZE as u64;
    let bad = [
        rx.add(&[(BUF, 2048, R)]),
        rx.add(&[(BUF, 12, W), (BUF + 0x100, 2048, R)]),
        rx.add(&[(mem_end - 100, 2048, W)]),
        rx.add(&[(u64::MAX - 10, 2048, W)]),
        rx.add(&[(BUF, 0, W)]),
        rx.add_raw(&[(BUF, 100, W | NEXT, 0)]),
    ];
    rx.publish(300);
    let good = rx.add(&[(BUF2, 2048, W)]);
    let f = frame(500, 6);
    b.tap_mut().push_rx(f.clone());
    b.process_rx(&mut rx.queue, &mem);
    let mut want: Vec<(u32, u32)> = bad.iter().map(|&h| (u32::from(h), 0)).collect();
    want.push((u32::from(good), 512));
    assert_eq!(rx.used(), want);
    assert_eq!(guest_bytes(&mem, BUF2, 512), with_num_buffers(&f, 1));
    assert_eq!(b.stats().snapshot().rx_invalid_chains, 7);
}

#[test]
fn rx_tap_errors_and_runts() {
    let (mem, mut b, mut rx) = rx_setup(false);
    rx.add(&[(BUF, 2048, W)]);
    let f = frame(64, 1);
    b.tap_mut().push_rx(vec![1, 2, 3, 4, 5]);
    b.tap_mut().rx.push_back(Err(libc::EIO));
    b.tap_mut().push_rx(f.clone());
    let out = b.process_rx(&mut rx.queue, &mem);
    assert_eq!(
        out,
        RxOutcome {
            used: false,
            wait: RxWait::TapError
        }
    );
    assert_eq!(b.stats().snapshot().rx_errors, 2);
    let out = b.process_rx(&mut rx.queue, &mem);
    assert_eq!(out.wait, RxWait::TapEmpty);
    assert_eq!(rx.used()[0].1, 76);
    assert_eq!(guest_bytes(&mem, BUF, 76), with_num_buffers(&f, 1));
}

#[test]
fn rx_budget_bounds_one_call() {
    let (mem, mut b, mut rx) = rx_setup(true);
    for i in 0..u64::from(QUEUE_SIZE) {
        rx.add(&[(BUF + 0x100 * i, 0x100, W)]);
    }
    for i in 0..300 {
        b.tap_mut().push_rx(frame(20, i as u8));
    }
    let out = b.process_rx(&mut rx.queue, &mem);
    assert_eq!(out.wait, RxWait::Budget);
    assert_eq!(rx.used().len(), 256);
    assert_eq!(b.process_rx(&mut rx.queue, &mem).wait, RxWait::NeedBuffers);
}

// ---------------------------------------------------------------------------------------------
// Features, config space, errors
// ---------------------------------------------------------------------------------------------

#[test]
fn features_follow_the_tap_offloads() {
    use features::*;
    let base = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX | MRG_RXBUF | STATUS;
    assert_eq!(features_for(0, false), base);
    assert_eq!(features_for(0, true), base | MAC);
    let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_UFO;
    let offloads = CSUM
        | GUEST_CSUM
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | GUEST_UFO
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | HOST_UFO;
    assert_eq!(features_for(all, false), base | offloads);
    let no_ufo = features_for(all & !TUN_F_UFO, false);
    assert_eq!(no_ufo & (GUEST_UFO | HOST_UFO), 0);
    assert_eq!(no_ufo & GUEST_TSO6, GUEST_TSO6);
    assert_eq!(features_for(TUN_F_CSUM, false), base | CSUM | GUEST_CSUM);

    // What the driver acked for the guest direction becomes TUNSETOFFLOAD.
    assert_eq!(tun_offloads_for(base | offloads), all);
    assert_eq!(tun_offloads_for(base | CSUM | HOST_TSO4), 0);
    assert_eq!(
        tun_offloads_for(GUEST_CSUM | GUEST_TSO6),
        TUN_F_CSUM | TUN_F_TSO6
    );
    // Inconsistent acks are trimmed: TSO needs GUEST_CSUM, ECN needs TSO.
    assert_eq!(tun_offloads_for(GUEST_TSO4 | GUEST_ECN), 0);
    assert_eq!(tun_offloads_for(GUEST_CSUM | GUEST_ECN), TUN_F_CSUM);
}

#[test]
fn config_space_and_mac() {
    let tap = SocketTap::pair().0;
    let net = Net::with_tap(tap, Some(MAC)).unwrap();
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    assert_eq!(net.name(), "virtio-net-socktap");
    let mut cfg = [0xffu8; 16];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(&cfg[6..8], &[1, 0], "link up");
    assert_eq!(&cfg[8..10], &[1, 0], "max_virtqueue_pairs");
    assert_eq!(&cfg[10..], &[0; 6]);
    let mut b = [0xffu8; 2];
    net.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0, 0]);
    net.read_config(6, &mut b);
    assert_eq!(b, [1, 0]);
    assert_ne!(net.features() & features::MAC, 0);

    let net = Net::with_tap(SocketTap::pair().0, None).unwrap();
    assert_eq!(net.features() & features::MAC, 0);

    for bad in [[0x01, 0, 0, 0, 0, 1], [0; 6], [0xff; 6]] {
        let e = Net::with_tap(SocketTap::pair().0, Some(bad)).unwrap_err();
        assert!(matches!(e, NetError::InvalidMac { .. }));
        assert!(e.to_string().contains("first byte is even"), "{e}");
    }
    assert_eq!(format_mac(&MAC), "52:54:00:12:34:56");
}

#[test]
fn tap_name_errors_say_what_to_do() {
    let e = Tap::open_named("qvm-no-such-tap").unwrap_err();
    assert!(matches!(e, NetError::TapNotFound { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("ip tuntap add qvm-no-such-tap mode tap user $USER"),
        "{msg}"
    );
    for name in ["", "a-name-longer-than-15", "a/b", "a b", "..", "x:y"] {
        let e = Tap::open_named(name).unwrap_err();
        assert!(matches!(e, NetError::InvalidName { .. }), "{name:?}: {e}");
    }
    // Not a descriptor, not a tap.
    let e = Tap::from_fd(1 << 20).unwrap_err();
    assert!(e.to_string().contains("not an open file descriptor"), "{e}");
    let (a, _b) = UnixDatagram::pair().unwrap();
    let e = Tap::from_fd(a.as_raw_fd()).unwrap_err();
    assert!(e.to_string().contains("not a tun/tap descriptor"), "{e}");
    let e = Net::new(NetConfig {
        tap: TapSource::Name("qvm-no-such-tap".into()),
        mac: Some(MAC),
    })
    .unwrap_err();
    assert!(matches!(e, NetError::TapNotFound { .. }));
}

// ---------------------------------------------------------------------------------------------
// The device with its worker thread, over a socketpair standing in for the tap
// ---------------------------------------------------------------------------------------------

/// One end of a seqpacket socketpair: one frame per read/write, non-blocking, EAGAIN when the
/// peer's queue is full, epoll-able like a tap.
struct SocketTap {
    sock: UnixDatagram,
    reads: Arc<AtomicUsize>,
    offloads_set: Arc<Mutex<Vec<u32>>>,
}

impl SocketTap {
    /// (the tap, the host side peer).
    fn pair() -> (SocketTap, UnixDatagram) {
        use std::os::fd::FromRawFd;
        // SOCK_SEQPACKET: datagrams, and EOF once shut down (like a read error on a tap).
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into fds, which we then own.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (a, b) = unsafe {
            (
                UnixDatagram::from_raw_fd(fds[0]),
                UnixDatagram::from_raw_fd(fds[1]),
            )
        };
        a.set_nonblocking(true).unwrap();
        (
            SocketTap {
                sock: a,
                reads: Arc::new(AtomicUsize::new(0)),
                offloads_set: Arc::new(Mutex::new(Vec::new())),
            },
            b,
        )
    }
}

impl TapIo for SocketTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.sock.recv(buf)
    }
    fn write(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.sock.send(frame)
    }
    fn supported_offloads(&self) -> u32 {
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    }
    fn set_offloads(&mut self, flags: u32) -> io::Result<()> {
        self.offloads_set.lock().unwrap().push(flags);
        Ok(())
    }
    fn name(&self) -> &str {
        "socktap"
    }
}

impl AsRawFd for SocketTap {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

fn set_sndbuf(fd: RawFd, bytes: libc::c_int) {
    // SAFETY: setsockopt reads one int from the pointer.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// Memory, an rx and a tx ring in it, and an eventfd to kick each: what activating the device
/// takes (through [`active_queues`]).
fn rings() -> (GuestMemoryMmap, TestQueue, TestQueue, EventFd, EventFd) {
    let mem = memory();
    let rx = TestQueue::new(&mem, RX_RING, QUEUE_SIZE);
    let tx = TestQueue::new(&mem, TX_RING, QUEUE_SIZE);
    let kick = || EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
    (mem, rx, tx, kick(), kick())
}

fn active_queues(
    rx: &TestQueue,
    tx: &TestQueue,
    rx_notify: &EventFd,
    tx_notify: &EventFd,
) -> Vec<ActiveQueue> {
    vec![
        ActiveQueue {
            queue: rx.new_queue(),
            notify: rx_notify.try_clone().unwrap(),
        },
        ActiveQueue {
            queue: tx.new_queue(),
            notify: tx_notify.try_clone().unwrap(),
        },
    ]
}

#[test]
fn worker_moves_frames_with_backpressure_both_ways() {
    let (tap, peer) = SocketTap::pair();
    set_sndbuf(tap.sock.as_raw_fd(), 8192);
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reads = tap.reads.clone();
    let offloads_set = tap.offloads_set.clone();
    let mut net = Net::with_tap(tap, Some(MAC)).unwrap();
    assert!(!net.reset(), "not active yet");
    net.ack_features(net.features());
    assert_eq!(
        net.acked_features() & features::GUEST_TSO4,
        features::GUEST_TSO4
    );

    let (mem, mut rx, mut tx, rx_notify, tx_notify) = rings();
    let irq = Arc::new(CountingInterrupt(AtomicUsize::new(0)));

    let err = net
        .activate(mem.clone(), irq.clone(), Vec::new())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { got: 0, want: 2 }));
    net.activate(
        mem.clone(),
        irq.clone(),
        active_queues(&rx, &tx, &rx_notify, &tx_notify),
    )
    .unwrap();
    assert!(net.is_active());
    assert_eq!(
        offloads_set.lock().unwrap().last(),
        Some(&(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6))
    );

    // Guest -> tap.
    let f = frame(1000, 1);
    mem.write_slice(&f, GuestAddress(BUF2)).unwrap();
    tx.add(&[(BUF2, f.len() as u32, R)]);
    tx_notify.write(1).unwrap();
    let mut buf = vec![0u8; RX_READ_LEN];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    wait_for("tx used", || tx.used_idx() == 1);
    wait_for("tx interrupt", || irq.0.load(Ordering::SeqCst) >= 1);

    // Tap -> guest, with buffers posted.
    rx.add(&[(BUF, 2048, W)]);
    rx.add(&[(BUF + 0x1000, 2048, W)]);
    rx_notify.write(1).unwrap();
    let a = frame(300, 2);
    peer.send(&a).unwrap();
    wait_for("rx used", || rx.used_idx() == 1);
    assert_eq!(guest_bytes(&mem, BUF, 312), with_num_buffers(&a, 1));
    let b1 = frame(400, 3);
    peer.send(&b1).unwrap();
    wait_for("rx used", || rx.used_idx() == 2);

    // No buffers left: the worker reads one frame, keeps it, and stops reading the tap.
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(500 + i, 10 + i as u8)).collect();
    for f in &frames {
        peer.send(f).unwrap();
    }
    wait_for("rx deferred", || net.stats().snapshot().rx_deferred == 1);
    let r0 = reads.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(reads.load(Ordering::SeqCst), r0, "no reads while waiting");
    assert_eq!(net.stats().snapshot().rx_frames, 2);
    // Buffers and a kick: all three arrive, in order.
    for i in 0..3u64 {
        rx.add(&[(BUF + 0x1_0000 + 0x1000 * i, 2048, W)]);
    }
    rx_notify.write(1).unwrap();
    wait_for("pending frames", || rx.used_idx() == 5);
    let used = rx.used();
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(used[2 + i].1 as usize, f.len());
        let at = BUF + 0x1_0000 + 0x1000 * i as u64;
        assert_eq!(guest_bytes(&mem, at, f.len()), with_num_buffers(f, 1));
    }

    // The tap fills up (the peer does not read): frames wait, none is lost or reordered.
    let n_frames = 64u64;
    let sent: Vec<Vec<u8>> = (0..n_frames).map(|i| frame(1000, i as u8)).collect();
    for (i, f) in sent.iter().enumerate() {
        let at = BUF2 + 0x1_0000 + 0x1000 * i as u64;
        mem.write_slice(f, GuestAddress(at)).unwrap();
        tx.add(&[(at, f.len() as u32, R)]);
    }
    tx_notify.write(1).unwrap();
    wait_for("tx deferred", || net.stats().snapshot().tx_deferred >= 1);
    for f in &sent {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &f[..]);
    }
    wait_for("all tx used", || tx.used_idx() == 1 + n_frames as u16);
    let s = net.stats().snapshot();
    assert_eq!(s.tx_frames, 1 + n_frames);
    assert_eq!((s.tx_errors, s.tx_malformed), (0, 0));

    // Reset hands the tap back (offloads cleared); a second activation works.
    assert!(net.reset());
    assert!(!net.is_active());
    assert_eq!(net.acked_features(), 0);
    assert_eq!(offloads_set.lock().unwrap().last(), Some(&0));
    net.ack_features(features::VERSION_1);
    let rx2 = TestQueue::new(&mem, 0x3_0000, 16);
    let mut tx2 = TestQueue::new(&mem, 0x3_8000, 16);
    net.activate(
        mem.clone(),
        irq,
        active_queues(&rx2, &tx2, &rx_notify, &tx_notify),
    )
    .unwrap();
    assert_eq!(offloads_set.lock().unwrap().last(), Some(&0));
    mem.write_slice(&f, GuestAddress(BUF2)).unwrap();
    tx2.add(&[(BUF2, f.len() as u32, R)]);
    tx_notify.write(1).unwrap();
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    wait_for("tx used after re-activation", || tx2.used_idx() == 1);
    drop(net);
}

#[test]
fn worker_stops_watching_a_broken_tap() {
    let (tap, _peer) = SocketTap::pair();
    let reads = tap.reads.clone();
    let sock = tap.sock.try_clone().unwrap();
    // A shut-down socket is readable (EOF) and hung up forever, like a deleted tap is in
    // error: level-triggered, the worker must not spin on it. Broken before activation, so
    // the worker's first read is the failing one (shut down after it, the worker could read
    // once more, with nothing to read, before seeing the hang-up: that raced the count).
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    let mut net = Net::with_tap(tap, None).unwrap();
    net.ack_features(net.features());
    let (mem, rx, tx, rx_notify, tx_notify) = rings();
    let irq = Arc::new(CountingInterrupt(AtomicUsize::new(0)));
    net.activate(
        mem.clone(),
        irq,
        active_queues(&rx, &tx, &rx_notify, &tx_notify),
    )
    .unwrap();
    wait_for("the failed read", || net.stats().snapshot().rx_errors == 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    // A kick retries once.
    rx_notify.write(1).unwrap();
    wait_for("the retry", || net.stats().snapshot().rx_errors == 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    assert!(net.reset());
}

// ---------------------------------------------------------------------------------------------
// A real tap (root and /dev/net/tun needed: without them the test fails, saying so)
// ---------------------------------------------------------------------------------------------

struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["tuntap", "del", &self.0, "mode", "tap"])
            .status();
    }
}

fn create_tap(name: &str) -> TapGuard {
    match std::process::Command::new("ip")
        .args(["tuntap", "add", name, "mode", "tap"])
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => TapGuard(name.to_string()),
        other => panic!(
            "`ip tuntap add {name} mode tap` failed: {other:?}; this test needs root and \
             /dev/net/tun (tests/run.sh runs as root)"
        ),
    }
}

fn describe_offloads(f: u32) -> String {
    let names = [
        (TUN_F_CSUM, "CSUM"),
        (TUN_F_TSO4, "TSO4"),
        (TUN_F_TSO6, "TSO6"),
        (TUN_F_TSO_ECN, "TSO_ECN"),
        (TUN_F_UFO, "UFO"),
    ];
    names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// A raw AF_PACKET socket bound to one interface.
struct PacketSocket(std::os::fd::OwnedFd);

impl PacketSocket {
    fn bind(ifindex: u32) -> PacketSocket {
        use std::os::fd::FromRawFd;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(proto)) };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: fd is ours.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = proto;
        sa.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads sizeof(sockaddr_ll) bytes from sa.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: setsockopt reads a timeval.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        PacketSocket(fd)
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: send reads frame.len() bytes.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "{}", io::Error::last_os_error());
    }

    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: recv writes at most buf.len() bytes.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n >= 0).then_some(n as usize)
    }
}

/// An Ethernet frame with the local experimental ethertype 0x88b5.
fn ether_frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst);
    f.extend(src);
    f.extend([0x88, 0xb5]);
    f.extend(pattern(len, seed));
    f
}

#[test]
fn real_tap_offload_probe_errors_and_traffic() {
    let name = format!("qvmt{}", std::process::id() % 1_000_000);
    let _guard = create_tap(&name);
    let tap = Tap::open_named(&name)
        .unwrap_or_else(|e| panic!("opening the tap {name} we just created: {e}"));
    let offloads = tap.supported_offloads();
    eprintln!("tap {name}: offloads {}", describe_offloads(offloads));
    assert_ne!(offloads & TUN_F_CSUM, 0, "every tap does checksum offload");
    assert_eq!(tap.if_name(), name);

    // Attached once only; other misuse gets a message.
    let e = Tap::open_named(&name).unwrap_err();
    assert!(matches!(e, NetError::TapBusy { .. }), "{e}");
    let e = Tap::open_named("lo").unwrap_err();
    assert!(matches!(e, NetError::NotATap { .. }), "{e}");
    // The same tap through an inherited descriptor (a duplicate).
    let dup = Tap::from_fd(tap.as_raw_fd()).unwrap();
    assert_eq!(dup.if_name(), name);
    assert_eq!(dup.supported_offloads(), offloads);
    drop(dup);
    // A /dev/net/tun descriptor not attached, and one attached without IFF_VNET_HDR.
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    let e = Tap::from_fd(tun.as_raw_fd()).unwrap_err();
    assert!(e.to_string().contains("not attached"), "{e}");
    let mut ifr = tap::ifreq_with_name(&format!("{name}b"));
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    assert_eq!(
        // SAFETY: TUNSETIFF on our descriptor with a live ifreq (creates a transient tap).
        unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) },
        0
    );
    let e = Tap::from_fd(tun.as_raw_fd()).unwrap_err();
    assert!(e.to_string().contains("without IFF_VNET_HDR"), "{e}");
    drop(tun);
    drop(tap);

    // Traffic through the kernel: a packet socket on the tap sees what the guest sends and
    // sends what the guest receives.
    let mut net = Net::new(NetConfig {
        tap: TapSource::Name(name.clone()),
        mac: Some(MAC),
    })
    .unwrap();
    assert_eq!(net.tap_offloads(), offloads);
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    let up = std::process::Command::new("ip")
        .args(["link", "set", &name, "up"])
        .status()
        .unwrap();
    assert!(up.success());
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    let sock = PacketSocket::bind(ifindex);

    net.ack_features(net.features());
    let (mem, mut rx, mut tx, rx_notify, tx_notify) = rings();
    let irq = Arc::new(CountingInterrupt(AtomicUsize::new(0)));
    net.activate(
        mem.clone(),
        irq,
        active_queues(&rx, &tx, &rx_notify, &tx_notify),
    )
    .unwrap();

    // Guest -> host.
    let out = ether_frame([0xff; 6], MAC, 200, 1);
    let mut with_hdr = vec![0u8; VNET_HDR_LEN];
    with_hdr.extend(&out);
    mem.write_slice(&with_hdr, GuestAddress(BUF2)).unwrap();
    tx.add(&[(BUF2, with_hdr.len() as u32, R)]);
    tx_notify.write(1).unwrap();
    let mut buf = vec![0u8; 4096];
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "guest frame never arrived"
        );
        if let Some(n) = sock.recv(&mut buf) {
            if buf[..n] == out[..] {
                break;
            }
        }
    }
    wait_for("tx counted", || net.stats().snapshot().tx_frames == 1);

    // Host -> guest.
    for i in 0..8u64 {
        rx.add(&[(BUF + 0x1000 * i, 2048, W)]);
    }
    rx_notify.write(1).unwrap();
    let inn = ether_frame(MAC, [0x52, 0x54, 0, 0, 0, 1], 300, 2);
    sock.send(&inn);
    let start = Instant::now();
    'wait: loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "host frame never arrived"
        );
        for (head, len) in rx.used() {
            let got = guest_bytes(&mem, BUF + 0x1000 * u64::from(head), len as usize);
            if got.get(VNET_HDR_LEN..) == Some(&inn[..]) {
                assert_eq!(&got[10..12], &[1, 0], "num_buffers");
                break 'wait;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(net.reset());
}

// ---------------------------------------------------------------------------------------------
// The fuzz harnesses, on pseudo-random inputs
// ---------------------------------------------------------------------------------------------

/// Random input biased towards plausible chains: in-memory addresses, linked descriptors,
/// small lengths, the write flag as `write` says.
fn biased_input(rng: &mut Rng, write: bool) -> Vec<u8> {
    let len = 162 + (rng.next() % 1500) as usize;
    let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    for d in 0..16 {
        let base = 2 + 10 * d;
        if rng.next() & 3 != 0 {
            input[base + 3] &= 0x3f; // payload address
            input[base + 7] = [0x00, 0x40, 0x00][(rng.next() % 3) as usize];
            let w = if write { 2 } else { 0 };
            input[base + 8] = match rng.next() % 3 {
                0 => w,
                _ => w | 1,
            };
            if rng.next() & 7 == 0 {
                input[base + 8] ^= 2;
            }
            input[base + 9] = (d as u8 + 1) % 16;
        }
    }
    input
}

#[test]
fn fuzz_harnesses_on_random_inputs() {
    let mut f = NetFuzz::default();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..3000 {
        let input = biased_input(&mut rng, false);
        f.tx(&input);
    }
    let s = f.backend.stats().snapshot();
    assert!(s.tx_frames > 500 && s.tx_malformed > 500, "{s:?}");
    assert!(s.tx_deferred > 0 && s.tx_errors > 0, "{s:?}");

    let mut f = NetFuzz::default();
    for _ in 0..3000 {
        let mut input = biased_input(&mut rng, true);
        // Frame lengths that fit the buffers now and then.
        let at = 2 + 160 + usize::from(input[1]) % 17;
        if at + 2 <= input.len() && rng.next() & 1 == 0 {
            input[at + 1] = 0;
        }
        f.rx(&input);
    }
    let s = f.backend.stats().snapshot();
    assert!(s.rx_frames > 300, "{s:?}");
    assert!(s.rx_deferred > 0 && s.rx_too_big > 0, "{s:?}");
    assert!(s.rx_invalid_chains > 0 && s.rx_errors > 0, "{s:?}");
}
