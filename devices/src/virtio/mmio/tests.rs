//! virtio-mmio transport tests: register accesses against a recording dummy device, the
//! driver's init sequence, activation and reset, and random accesses.

use super::*;
use crate::virtio::common::read_config_bytes;
use crate::virtio::testing::write_config_bytes;
use crate::virtio::ShmRegion;
use std::sync::Mutex;
use vm_memory::GuestAddress;

const MEM_SIZE: usize = 4 << 20;
const DUMMY_FEATURES: u64 = VIRTIO_F_VERSION_1 | (1 << 5) | (1 << 40) | (1 << 34);

#[derive(Default)]
struct Record {
    acked: Vec<u64>,
    activations: Vec<Vec<ActiveQueue>>,
    interrupt: Option<Arc<dyn Interrupt>>,
    resets: usize,
    config: [u8; 16],
}

struct Dummy {
    rec: Arc<Mutex<Record>>,
    shm: Vec<ShmRegion>,
    active: bool,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        super::super::TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 64]
    }
    fn features(&self) -> u64 {
        DUMMY_FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.rec.lock().unwrap().acked.push(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.rec.lock().unwrap().config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        write_config_bytes(&mut self.rec.lock().unwrap().config, offset, data);
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        assert!(!self.active, "activated twice without reset");
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: 2,
            });
        }
        let mut rec = self.rec.lock().unwrap();
        rec.activations.push(queues);
        rec.interrupt = Some(interrupt);
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.rec.lock().unwrap().resets += 1;
        std::mem::replace(&mut self.active, false)
    }
    fn shm_regions(&self) -> Vec<ShmRegion> {
        self.shm.clone()
    }
}

struct Fixture {
    t: MmioTransport,
    rec: Arc<Mutex<Record>>,
    irq: EventFd,
}

fn fixture_with_shm(shm: Vec<ShmRegion>) -> Fixture {
    let rec = Arc::new(Mutex::new(Record::default()));
    {
        let mut r = rec.lock().unwrap();
        for (i, b) in r.config.iter_mut().enumerate() {
            *b = i as u8 + 0x10;
        }
    }
    let dev = Dummy {
        rec: rec.clone(),
        shm,
        active: false,
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
    let t = MmioTransport::new(Box::new(dev), mem, irq.try_clone().unwrap()).unwrap();
    Fixture { t, rec, irq }
}

fn fixture() -> Fixture {
    fixture_with_shm(Vec::new())
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn queue_addrs(i: u64) -> (u64, u64, u64) {
    let desc = 0x10_0000 + i * 0x1_0000;
    (desc, desc + 0x4000, desc + 0x8000)
}

fn program_queue(t: &mut MmioTransport, i: u32, size: u32, (d, a, u): (u64, u64, u64)) {
    wr(t, REG_QUEUE_SEL, i);
    wr(t, REG_QUEUE_NUM, size);
    wr(t, REG_QUEUE_DESC_LOW, d as u32);
    wr(t, REG_QUEUE_DESC_HIGH, (d >> 32) as u32);
    wr(t, REG_QUEUE_DRIVER_LOW, a as u32);
    wr(t, REG_QUEUE_DRIVER_HIGH, (a >> 32) as u32);
    wr(t, REG_QUEUE_DEVICE_LOW, u as u32);
    wr(t, REG_QUEUE_DEVICE_HIGH, (u >> 32) as u32);
    wr(t, REG_QUEUE_READY, 1);
}

/// Drives the device to FEATURES_OK, accepting `features`.
fn negotiate(t: &mut MmioTransport, features: u64) {
    use status::*;
    wr(t, REG_STATUS, ACKNOWLEDGE);
    wr(t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, features as u32);
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, REG_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

const S_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

/// The driver's init sequence, without checking it worked.
fn init_steps(t: &mut MmioTransport) {
    negotiate(t, VIRTIO_F_VERSION_1);
    program_queue(t, 0, 128, queue_addrs(0));
    program_queue(t, 1, 64, queue_addrs(1));
    wr(t, REG_STATUS, S_OK | status::DRIVER_OK);
}

fn full_init(t: &mut MmioTransport) {
    assert_eq!(rd(t, REG_STATUS), 0, "init must start from a reset device");
    init_steps(t);
    assert_eq!(rd(t, REG_STATUS), S_OK | status::DRIVER_OK);
}

#[test]
fn identification_registers() {
    let mut f = fixture();
    assert_eq!(rd(&mut f.t, REG_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut f.t, REG_VERSION), 2);
    assert_eq!(rd(&mut f.t, REG_DEVICE_ID), super::super::TYPE_BLOCK);
    assert_eq!(rd(&mut f.t, REG_VENDOR_ID), VENDOR_ID);
    assert_eq!(f.t.queue_evts().len(), 2);
    // Write-only registers read 0; read-only registers ignore writes.
    wr(&mut f.t, REG_MAGIC_VALUE, 0);
    assert_eq!(rd(&mut f.t, REG_MAGIC_VALUE), 0x7472_6976);
    wr(&mut f.t, REG_QUEUE_SEL, 1);
    assert_eq!(rd(&mut f.t, REG_QUEUE_SEL), 0);
    assert_eq!(rd(&mut f.t, REG_QUEUE_NUM_MAX), 64);
    wr(&mut f.t, REG_QUEUE_SEL, 0);
    assert_eq!(rd(&mut f.t, REG_QUEUE_NUM_MAX), 256);
    wr(&mut f.t, REG_QUEUE_SEL, 2);
    assert_eq!(rd(&mut f.t, REG_QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&mut f.t, REG_QUEUE_READY), 0);
    assert_eq!(rd(&mut f.t, REG_QUEUE_RESET), 0);
}

#[test]
fn feature_pages_and_negotiation() {
    let mut f = fixture();
    let offered = DUMMY_FEATURES & !UNSUPPORTED_FEATURES;
    wr(&mut f.t, REG_DEVICE_FEATURES_SEL, 0);
    assert_eq!(rd(&mut f.t, REG_DEVICE_FEATURES), offered as u32);
    assert_eq!(rd(&mut f.t, REG_DEVICE_FEATURES), 1 << 5);
    wr(&mut f.t, REG_DEVICE_FEATURES_SEL, 1);
    assert_eq!(rd(&mut f.t, REG_DEVICE_FEATURES), (offered >> 32) as u32);
    assert_eq!(rd(&mut f.t, REG_DEVICE_FEATURES), 1, "no RING_RESET/PACKED");
    wr(&mut f.t, REG_DEVICE_FEATURES_SEL, 7);
    assert_eq!(rd(&mut f.t, REG_DEVICE_FEATURES), 0);

    // Features written before DRIVER are ignored.
    wr(&mut f.t, REG_DRIVER_FEATURES, 0xffff_ffff);
    // The driver asks for more than offered: masked.
    negotiate(&mut f.t, u64::MAX);
    assert_eq!(rd(&mut f.t, REG_STATUS), S_OK);
    assert_eq!(f.rec.lock().unwrap().acked, vec![offered]);
    // Feature writes after FEATURES_OK are ignored.
    wr(&mut f.t, REG_DRIVER_FEATURES_SEL, 0);
    wr(&mut f.t, REG_DRIVER_FEATURES, 0);
    assert_eq!(f.t.acked_features, offered);
    assert_eq!(rd(&mut f.t, REG_DRIVER_FEATURES), 0, "write-only");
}

#[test]
fn features_ok_refused_without_version_1() {
    use status::*;
    let mut f = fixture();
    negotiate(&mut f.t, 1 << 5);
    assert_eq!(rd(&mut f.t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    assert!(f.rec.lock().unwrap().acked.is_empty());
    // DRIVER_OK cannot skip FEATURES_OK.
    wr(&mut f.t, REG_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(rd(&mut f.t, REG_STATUS), ACKNOWLEDGE | DRIVER);
    // The driver gives up.
    wr(&mut f.t, REG_STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(rd(&mut f.t, REG_STATUS), ACKNOWLEDGE | DRIVER | FAILED);
    assert!(f.rec.lock().unwrap().activations.is_empty());
}

#[test]
fn status_ordering_is_enforced() {
    use status::*;
    let mut f = fixture();
    wr(&mut f.t, REG_STATUS, DRIVER);
    assert_eq!(rd(&mut f.t, REG_STATUS), 0);
    wr(&mut f.t, REG_STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(rd(&mut f.t, REG_STATUS), 0);
    wr(&mut f.t, REG_STATUS, ACKNOWLEDGE);
    wr(&mut f.t, REG_STATUS, ACKNOWLEDGE | DRIVER_OK);
    assert_eq!(rd(&mut f.t, REG_STATUS), ACKNOWLEDGE);
    wr(&mut f.t, REG_STATUS, DEVICE_NEEDS_RESET | ACKNOWLEDGE);
    assert_eq!(rd(&mut f.t, REG_STATUS), ACKNOWLEDGE);
}

#[test]
fn full_init_activates_with_programmed_queues() {
    let mut f = fixture();
    full_init(&mut f.t);
    assert_eq!(rd(&mut f.t, REG_STATUS), S_OK | status::DRIVER_OK);
    assert!(f.t.is_active());
    let rec = f.rec.lock().unwrap();
    assert_eq!(rec.acked, vec![VIRTIO_F_VERSION_1]);
    assert_eq!(rec.activations.len(), 1);
    let qs = &rec.activations[0];
    assert_eq!(qs.len(), 2);
    for (i, (aq, size)) in qs.iter().zip([128u16, 64]).enumerate() {
        let (d, a, u) = queue_addrs(i as u64);
        assert_eq!(aq.queue.size(), size);
        assert_eq!(aq.queue.max_size(), [256, 64][i]);
        assert!(aq.queue.ready());
        assert_eq!(aq.queue.desc_table(), d);
        assert_eq!(aq.queue.avail_ring(), a);
        assert_eq!(aq.queue.used_ring(), u);
        assert!(!aq.queue.event_idx_enabled());
        // The device's eventfd is a clone of the transport's.
        f.t.queue_evts()[i].write(1 + i as u64).unwrap();
        assert_eq!(aq.notify.read().unwrap(), 1 + i as u64);
    }
}

#[test]
fn queue_registers_locked_when_ready_or_live() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    wr(&mut f.t, REG_QUEUE_SEL, 1);
    wr(&mut f.t, REG_QUEUE_NUM, 48); // not a power of two
    wr(&mut f.t, REG_QUEUE_NUM, 128); // above max
    wr(&mut f.t, REG_QUEUE_NUM, 0);
    assert_eq!(f.t.queues[1].size(), 64);
    wr(&mut f.t, REG_QUEUE_DESC_LOW, 0x1001); // misaligned: refused by the queue
    assert_eq!(f.t.queues[1].desc_table(), 0);
    program_queue(&mut f.t, 1, 32, queue_addrs(1));
    assert_eq!(rd(&mut f.t, REG_QUEUE_READY), 1);
    wr(&mut f.t, REG_QUEUE_NUM, 16);
    wr(&mut f.t, REG_QUEUE_DESC_LOW, 0x20_0000);
    assert_eq!(f.t.queues[1].size(), 32);
    assert_eq!(f.t.queues[1].desc_table(), queue_addrs(1).0);
    program_queue(&mut f.t, 0, 256, queue_addrs(0));
    wr(&mut f.t, REG_STATUS, S_OK | status::DRIVER_OK);
    assert!(f.t.is_active());
    // After DRIVER_OK, neither ready nor the addresses change.
    wr(&mut f.t, REG_QUEUE_READY, 0);
    assert_eq!(rd(&mut f.t, REG_QUEUE_READY), 1);
    assert_eq!(f.t.queues[1].size(), 32);
}

#[test]
fn event_idx_is_passed_to_the_queues() {
    let rec = Arc::new(Mutex::new(Record::default()));
    struct EvIdx(Dummy);
    impl VirtioDevice for EvIdx {
        fn device_type(&self) -> u32 {
            self.0.device_type()
        }
        fn queue_max_sizes(&self) -> &[u16] {
            self.0.queue_max_sizes()
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX)
        }
        fn ack_features(&mut self, f: u64) {
            self.0.ack_features(f)
        }
        fn read_config(&self, o: u64, d: &mut [u8]) {
            self.0.read_config(o, d)
        }
        fn write_config(&mut self, o: u64, d: &[u8]) {
            self.0.write_config(o, d)
        }
        fn activate(
            &mut self,
            m: GuestMemoryMmap,
            i: Arc<dyn Interrupt>,
            q: Vec<ActiveQueue>,
        ) -> Result<(), ActivateError> {
            self.0.activate(m, i, q)
        }
        fn reset(&mut self) -> bool {
            self.0.reset()
        }
    }
    let dev = EvIdx(Dummy {
        rec: rec.clone(),
        shm: vec![],
        active: false,
    });
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem, EventFd::new(0).unwrap()).unwrap();
    negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << VIRTIO_RING_F_EVENT_IDX));
    program_queue(&mut t, 0, 128, queue_addrs(0));
    program_queue(&mut t, 1, 64, queue_addrs(1));
    wr(&mut t, REG_STATUS, S_OK | status::DRIVER_OK);
    let rec = rec.lock().unwrap();
    assert!(rec.activations[0]
        .iter()
        .all(|q| q.queue.event_idx_enabled()));
}

#[test]
fn invalid_queue_sets_device_needs_reset() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    program_queue(&mut f.t, 0, 128, queue_addrs(0));
    // Queue 1's used ring lies outside guest memory.
    let (d, a, _) = queue_addrs(1);
    program_queue(&mut f.t, 1, 64, (d, a, MEM_SIZE as u64 - 0x10));
    let gen = rd(&mut f.t, REG_CONFIG_GENERATION);
    wr(&mut f.t, REG_STATUS, S_OK | status::DRIVER_OK);
    let st = rd(&mut f.t, REG_STATUS);
    assert_ne!(st & status::DEVICE_NEEDS_RESET, 0);
    assert!(!f.t.is_active());
    assert!(f.rec.lock().unwrap().activations.is_empty());
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(rd(&mut f.t, REG_CONFIG_GENERATION), gen.wrapping_add(1));
    assert_eq!(f.irq.read().unwrap(), 1);
    // Only a reset (or FAILED) is accepted now.
    wr(&mut f.t, REG_STATUS, status::ACKNOWLEDGE);
    assert_eq!(rd(&mut f.t, REG_STATUS), st);

    // A queue the driver never enabled is refused too.
    wr(&mut f.t, REG_STATUS, 0);
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    program_queue(&mut f.t, 0, 128, queue_addrs(0));
    wr(&mut f.t, REG_STATUS, S_OK | status::DRIVER_OK);
    assert_ne!(rd(&mut f.t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert!(f.rec.lock().unwrap().activations.is_empty());
}

#[test]
fn reset_allows_a_second_activation() {
    let mut f = fixture();
    full_init(&mut f.t);
    assert!(f.t.is_active());
    let int = f.rec.lock().unwrap().interrupt.clone().unwrap();
    int.trigger(InterruptKind::Queue).unwrap();
    f.t.queue_evts()[0].write(5).unwrap();
    wr(&mut f.t, REG_QUEUE_SEL, 1);
    wr(&mut f.t, REG_STATUS, 0);
    assert_eq!(f.rec.lock().unwrap().resets, 1);
    assert!(!f.t.is_active());
    assert_eq!(rd(&mut f.t, REG_STATUS), 0);
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), 0);
    assert_eq!(
        rd(&mut f.t, REG_QUEUE_READY),
        0,
        "queue_sel back to 0, not ready"
    );
    assert_eq!(f.t.queues[0].size(), 256);
    assert_eq!(f.t.queues[0].desc_table(), 0);
    assert!(f.t.queue_evts()[0].read().is_err(), "stale notify drained");
    assert_eq!(f.t.acked_features, 0);

    full_init(&mut f.t);
    assert!(f.t.is_active());
    let rec = f.rec.lock().unwrap();
    assert_eq!(rec.activations.len(), 2);
    assert_eq!(rec.acked.len(), 2);
    assert_eq!(rec.activations[1][0].queue.size(), 128);
    f.t.queue_evts()[1].write(1).unwrap();
    assert_eq!(rec.activations[1][1].notify.read().unwrap(), 1);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    full_init(&mut f.t);
    let int = f.rec.lock().unwrap().interrupt.clone().unwrap();
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), 0);
    int.trigger(InterruptKind::Queue).unwrap();
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), INT_VRING);
    assert_eq!(f.irq.read().unwrap(), 1);
    let gen = rd(&mut f.t, REG_CONFIG_GENERATION);
    int.trigger(InterruptKind::Config).unwrap();
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
    assert_eq!(rd(&mut f.t, REG_CONFIG_GENERATION), gen + 1);
    assert_eq!(f.irq.read().unwrap(), 1);
    wr(&mut f.t, REG_INTERRUPT_ACK, INT_VRING);
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_ACK), 0, "write-only");
    wr(&mut f.t, REG_INTERRUPT_ACK, INT_CONFIG);
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), 0);
    // Writes to InterruptStatus do nothing.
    int.trigger(InterruptKind::Queue).unwrap();
    wr(&mut f.t, REG_INTERRUPT_STATUS, 0);
    assert_eq!(rd(&mut f.t, REG_INTERRUPT_STATUS), INT_VRING);
}

#[test]
fn config_space_accesses() {
    let mut f = fixture();
    for len in [1usize, 2, 4, 8] {
        for off in [0u64, 3, 8] {
            let mut d = vec![0xaa; len];
            f.t.read(CONFIG_OFFSET + off, &mut d);
            let want: Vec<u8> = (0..len as u64)
                .map(|i| {
                    if off + i < 16 {
                        (off + i) as u8 + 0x10
                    } else {
                        0
                    }
                })
                .collect();
            assert_eq!(d, want, "len {len} off {off}");
        }
    }
    // Partly and fully out of range.
    let mut d = [0xaau8; 4];
    f.t.read(CONFIG_OFFSET + 14, &mut d);
    assert_eq!(d, [0x1e, 0x1f, 0, 0]);
    let mut d = [0xaau8; 8];
    f.t.read(CONFIG_OFFSET + 0x40, &mut d);
    assert_eq!(d, [0; 8]);
    let mut d = [0xaau8; 8];
    f.t.read(MMIO_LEN - 1, &mut d);
    assert_eq!(d, [0; 8]);
    f.t.read(MMIO_LEN + 0x100, &mut d);
    assert_eq!(d, [0; 8]);
    f.t.read(u64::MAX, &mut d);
    assert_eq!(d, [0; 8]);

    f.t.write(CONFIG_OFFSET + 2, &[0xc0]);
    f.t.write(CONFIG_OFFSET + 4, &[1, 2]);
    f.t.write(CONFIG_OFFSET + 8, &0xdead_beefu32.to_le_bytes());
    f.t.write(CONFIG_OFFSET + 12, &u64::MAX.to_le_bytes()); // half out of range
    f.t.write(CONFIG_OFFSET + 0x800, &[9; 8]);
    f.t.write(u64::MAX, &[9; 8]);
    let mut d = [0u8; 16];
    f.t.read(CONFIG_OFFSET, &mut d);
    assert_eq!(
        d,
        [
            0x10, 0x11, 0xc0, 0x13, 1, 2, 0x16, 0x17, 0xef, 0xbe, 0xad, 0xde, 0xff, 0xff, 0xff,
            0xff
        ]
    );
    let mut q = [0u8; 8];
    f.t.read(CONFIG_OFFSET + 8, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0xffff_ffff_dead_beef);
}

#[test]
fn shm_registers() {
    let region = ShmRegion {
        id: 1,
        addr: 0x1_2000_0000,
        len: 0x3_4000_0000,
    };
    let mut f = fixture_with_shm(vec![region]);
    wr(&mut f.t, REG_SHM_SEL, 1);
    assert_eq!(rd(&mut f.t, REG_SHM_LEN_LOW), 0x4000_0000);
    assert_eq!(rd(&mut f.t, REG_SHM_LEN_HIGH), 3);
    assert_eq!(rd(&mut f.t, REG_SHM_BASE_LOW), 0x2000_0000);
    assert_eq!(rd(&mut f.t, REG_SHM_BASE_HIGH), 1);
    assert_eq!(rd(&mut f.t, REG_SHM_SEL), 0, "write-only");
    for sel in [0u32, 2, 0x101, u32::MAX] {
        wr(&mut f.t, REG_SHM_SEL, sel);
        assert_eq!(rd(&mut f.t, REG_SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&mut f.t, REG_SHM_LEN_HIGH), u32::MAX);
    }

    let mut f = fixture();
    wr(&mut f.t, REG_SHM_SEL, 0);
    assert_eq!(rd(&mut f.t, REG_SHM_LEN_LOW), u32::MAX);
    assert_eq!(rd(&mut f.t, REG_SHM_LEN_HIGH), u32::MAX);
    assert_eq!(rd(&mut f.t, REG_SHM_BASE_LOW), 0);
}

#[test]
fn odd_accesses_are_harmless() {
    let mut f = fixture();
    let mut d = [0xaau8; 4];
    f.t.read(REG_MAGIC_VALUE + 1, &mut d);
    assert_eq!(d, [0; 4], "misaligned");
    for len in [0usize, 1, 2, 3, 5, 8, 16] {
        let mut d = vec![0xaau8; len];
        f.t.read(REG_MAGIC_VALUE, &mut d);
        assert!(d.iter().all(|&b| b == 0), "len {len}");
        f.t.write(REG_STATUS, &vec![1u8; len]);
        assert_eq!(rd(&mut f.t, REG_STATUS), 0);
    }
    f.t.write(REG_STATUS + 2, &[1, 0, 0, 0]);
    assert_eq!(rd(&mut f.t, REG_STATUS), 0);
    // Holes.
    for off in [0x018u64, 0x03c, 0x0c4, 0x0f8] {
        wr(&mut f.t, off, 0xffff_ffff);
        assert_eq!(rd(&mut f.t, off), 0);
    }
    wr(&mut f.t, REG_QUEUE_RESET, 1);
    assert_eq!(rd(&mut f.t, REG_QUEUE_RESET), 0);
}

#[test]
fn queue_notify_through_the_bus() {
    let mut f = fixture();
    wr(&mut f.t, REG_QUEUE_NOTIFY, 1);
    wr(&mut f.t, REG_QUEUE_NOTIFY, 1);
    assert_eq!(f.t.queue_evts()[1].read().unwrap(), 2);
    assert!(f.t.queue_evts()[0].read().is_err());
    wr(&mut f.t, REG_QUEUE_NOTIFY, 2);
    wr(&mut f.t, REG_QUEUE_NOTIFY, u32::MAX);
    assert!(f.t.queue_evts()[0].read().is_err());
    assert!(f.t.queue_evts()[1].read().is_err());

    full_init(&mut f.t);
    wr(&mut f.t, REG_QUEUE_NOTIFY, 0);
    let rec = f.rec.lock().unwrap();
    assert_eq!(rec.activations[0][0].notify.read().unwrap(), 1);
}

#[test]
fn bad_queue_max_size_is_an_error() {
    struct Bad;
    impl VirtioDevice for Bad {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[256, 100]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn ack_features(&mut self, _: u64) {}
        fn read_config(&self, _: u64, _: &mut [u8]) {}
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<dyn Interrupt>,
            _: Vec<ActiveQueue>,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) -> bool {
            false
        }
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    assert!(MmioTransport::new(Box::new(Bad), mem, EventFd::new(0).unwrap()).is_err());
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn random_accesses_never_panic() {
    use status::*;
    let mut f = fixture_with_shm(vec![ShmRegion {
        id: 0,
        addr: 1 << 32,
        len: 1 << 20,
    }]);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let regs = [
        REG_DEVICE_FEATURES_SEL,
        REG_DRIVER_FEATURES,
        REG_DRIVER_FEATURES_SEL,
        REG_QUEUE_SEL,
        REG_QUEUE_NUM,
        REG_QUEUE_READY,
        REG_QUEUE_NOTIFY,
        REG_INTERRUPT_ACK,
        REG_STATUS,
        REG_QUEUE_DESC_LOW,
        REG_QUEUE_DESC_HIGH,
        REG_QUEUE_DRIVER_LOW,
        REG_QUEUE_DRIVER_HIGH,
        REG_QUEUE_DEVICE_LOW,
        REG_QUEUE_DEVICE_HIGH,
        REG_SHM_SEL,
        REG_QUEUE_RESET,
    ];
    let values = [
        0u32,
        1,
        2,
        3,
        16,
        64,
        0x10_0000,
        0x10_8000,
        ACKNOWLEDGE,
        ACKNOWLEDGE | DRIVER,
        S_OK,
        S_OK | DRIVER_OK,
        u32::MAX,
    ];
    let mut activations = 0;
    for _ in 0..20_000 {
        let r = rng.next();
        // Now and then a well-behaved driver (re)initialises, possibly from a messy state,
        // so the random accesses also hit a live device.
        match r % 300 {
            0 => {
                wr(&mut f.t, REG_STATUS, 0);
                full_init(&mut f.t);
                assert!(f.t.is_active());
            }
            1 => init_steps(&mut f.t),
            _ => {}
        }
        let off = match r % 4 {
            0 => rng.next() % (MMIO_LEN + 0x10),
            _ => regs[(rng.next() % regs.len() as u64) as usize],
        };
        let v = if rng.next() & 1 == 0 {
            values[(rng.next() % values.len() as u64) as usize]
        } else {
            rng.next() as u32
        };
        let len = if rng.next() & 3 == 0 {
            (rng.next() % 10) as usize
        } else {
            4
        };
        let bytes = u64::from(v).to_le_bytes();
        let mut buf = [0u8; 16];
        match (r >> 8) % 3 {
            0 => f.t.read(off, &mut buf[..len]),
            _ => f.t.write(off, &bytes[..len.min(8)]),
        }
        if f.t.is_active() {
            activations += 1;
        }
        // Invariants: the status is one of the reachable values.
        let st = f.t.status() & !(FAILED | DEVICE_NEEDS_RESET);
        assert!(
            [0, ACKNOWLEDGE, ACKNOWLEDGE | DRIVER, S_OK, S_OK | DRIVER_OK].contains(&st),
            "status {st:#x}"
        );
        if f.t.is_active() {
            assert_eq!(f.t.status() & (DRIVER_OK | DEVICE_NEEDS_RESET), DRIVER_OK);
        }
    }
    assert!(activations > 0, "the loop never got the device running");
    let acts = f.rec.lock().unwrap().activations.len();
    let resets = f.rec.lock().unwrap().resets;
    assert!(
        acts > 0 && resets > 0,
        "{acts} activations, {resets} resets"
    );
    // The transport is still usable: a clean driver gets the device up.
    wr(&mut f.t, REG_STATUS, 0);
    full_init(&mut f.t);
    assert!(f.t.is_active());
    assert_eq!(rd(&mut f.t, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
}
