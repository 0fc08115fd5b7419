//! Fuzzes the virtio-mmio transport: a sequence of register reads and writes (any offset, any
//! size) against an `MmioTransport` wrapping a small device with two queues, in real guest
//! memory, so that queue setup and DRIVER_OK activation happen with arbitrary queue sizes and
//! ring addresses. Once active, the device pops and completes chains from the rings the
//! transport handed it (whatever the guest memory holds) and raises interrupts.
//!
//! Checks, after every access: the status is one of the reachable values; the transport and
//! the device agree on whether the device is active; the device is never activated twice
//! without a reset, only with valid queues of allowed sizes, and only acks offered features;
//! the magic value always reads back. At the end a reset leaves nothing active.
//!
//! Input: byte 0 = device options (bit 0: activation fails; bit 1: it has a shared-memory
//! region; bits 2-3: queue max sizes [256, 16], [1, 2], [32768, 8] or [4, 4]); then operations
//! of 11 bytes: kind, offset (u16), value (u64), where kind bits 0-1 are the operation:
//! - 0 read, 1 write: kind bits 2-3 pick the size 1/2/4/8, or with bit 4 set bits 5-7 give an
//!   odd size 0-7; offsets from 0xf000 up mean `u64::MAX - (offset & 0xfff)`, others are
//!   `offset & 0x1fff` (the window is 0x1000); a write writes the value's first bytes;
//! - 2: writes the value to guest memory at `(offset * 8) % 0x20000` (rings and buffers);
//! - 3: kind bits 2-3: the device raises a queue interrupt, a config interrupt, processes
//!   its queues, or the VMM resets the transport.
#![no_main]

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::common::read_config_bytes;
use qvm_devices::virtio::mmio::{MmioTransport, CONFIG_OFFSET, MMIO_MAGIC_VALUE};
use qvm_devices::virtio::testing::write_config_bytes;
use qvm_devices::virtio::{
    status, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, InterruptKind, ShmRegion,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use qvm_devices::BusDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const EVENT_IDX: u64 = 1 << 29;
const INDIRECT_DESC: u64 = 1 << 28;
const RING_PACKED: u64 = 1 << 34;
const RING_RESET: u64 = 1 << 40;
const OFFERED: u64 =
    VIRTIO_F_VERSION_1 | EVENT_IDX | INDIRECT_DESC | RING_PACKED | RING_RESET | 1 | (1 << 63);
/// What the transport may pass on: it never offers packed rings or queue reset.
const ACKABLE: u64 = OFFERED & !(RING_PACKED | RING_RESET);

const REG_STATUS: u64 = 0x70;
const REG_QUEUE_SEL: u64 = 0x30;
const REG_QUEUE_READY: u64 = 0x44;

#[derive(Default)]
struct Shared {
    active: bool,
    fail_activate: bool,
    queues: Vec<Queue>,
    interrupt: Option<Arc<dyn Interrupt>>,
    mem: Option<GuestMemoryMmap>,
    config: [u8; 16],
}

struct Dummy {
    shared: Arc<Mutex<Shared>>,
    sizes: [u16; 2],
    shm: Vec<ShmRegion>,
}

fn lock(s: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn ack_features(&mut self, features: u64) {
        assert_eq!(
            features & !ACKABLE,
            0,
            "acked {features:#x}, offered {ACKABLE:#x}"
        );
        assert_ne!(
            features & VIRTIO_F_VERSION_1,
            0,
            "FEATURES_OK without VERSION_1"
        );
        assert!(!lock(&self.shared).active, "features acked while active");
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&lock(&self.shared).config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        write_config_bytes(&mut lock(&self.shared).config, offset, data);
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut s = lock(&self.shared);
        assert!(!s.active, "activated twice without a reset");
        assert_eq!(queues.len(), 2, "one ActiveQueue per queue");
        for (q, &max) in queues.iter().zip(&self.sizes) {
            let size = q.queue.size();
            assert!(
                q.queue.ready() && q.queue.is_valid(&mem),
                "activated with a bad queue"
            );
            assert!(
                size.is_power_of_two() && size <= max,
                "queue size {size}, max {max}"
            );
        }
        if s.fail_activate {
            return Err(ActivateError::Other("the fuzzer says no".into()));
        }
        s.active = true;
        s.queues = queues.into_iter().map(|q| q.queue).collect();
        s.interrupt = Some(interrupt);
        s.mem = Some(mem);
        drop(s);
        process(&self.shared);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        let mut s = lock(&self.shared);
        s.queues.clear();
        s.interrupt = None;
        s.mem = None;
        std::mem::replace(&mut s.active, false)
    }
    fn shm_regions(&self) -> Vec<ShmRegion> {
        self.shm.clone()
    }
}

/// What a device worker does with its queues: completes a few chains (reading or writing the
/// first bytes of every buffer), then interrupts the driver if it asked for it.
fn process(shared: &Mutex<Shared>) {
    let mut s = lock(shared);
    let Shared {
        queues,
        interrupt,
        mem: Some(mem),
        ..
    } = &mut *s
    else {
        return;
    };
    let mut notify = false;
    for q in queues.iter_mut() {
        let _ = q.disable_notification(mem);
        for _ in 0..4 {
            let Some(chain) = q.pop_descriptor_chain(&*mem) else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.take(64) {
                let n = (desc.len() as usize).min(8);
                if desc.is_write_only() {
                    if mem.write_slice(&[0xab; 8][..n], desc.addr()).is_ok() {
                        written += n as u32;
                    }
                } else {
                    let mut b = [0u8; 8];
                    let _ = mem.read_slice(&mut b[..n], desc.addr());
                }
            }
            if q.add_used(&*mem, head, written).is_ok() {
                notify |= q.needs_notification(&*mem).unwrap_or(true);
            }
        }
        let _ = q.enable_notification(mem);
    }
    if notify {
        if let Some(i) = interrupt {
            let _ = i.trigger(InterruptKind::Queue);
        }
    }
}

struct State {
    mem: GuestMemoryMmap,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn check(t: &mut MmioTransport, shared: &Mutex<Shared>) {
    use status::*;
    const S_OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK;
    let st = t.status() & !(FAILED | DEVICE_NEEDS_RESET);
    assert!(
        [0, ACKNOWLEDGE, ACKNOWLEDGE | DRIVER, S_OK, S_OK | DRIVER_OK].contains(&st),
        "status {:#x}",
        t.status()
    );
    let active = lock(shared).active;
    assert_eq!(t.is_active(), active, "transport and device disagree");
    if active {
        assert_eq!(t.status() & (DRIVER_OK | DEVICE_NEEDS_RESET), DRIVER_OK);
    }
    let mut magic = [0u8; 4];
    t.read(0, &mut magic);
    assert_eq!(u32::from_le_bytes(magic), MMIO_MAGIC_VALUE);
}

fn run(mem: &GuestMemoryMmap, data: &[u8]) {
    common::clear(mem);
    let opts = data.first().copied().unwrap_or(0);
    let shared = Arc::new(Mutex::new(Shared {
        fail_activate: opts & 1 != 0,
        ..Shared::default()
    }));
    let shm = if opts & 2 != 0 {
        vec![ShmRegion {
            id: 0,
            addr: 1 << 32,
            len: 1 << 20,
        }]
    } else {
        Vec::new()
    };
    let sizes = [[256, 16], [1, 2], [32768, 8], [4, 4]][usize::from(opts >> 2 & 3)];
    let dev = Dummy {
        shared: shared.clone(),
        sizes,
        shm,
    };
    let irq = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq).expect("transport");

    for op in data.get(1..).unwrap_or(&[]).chunks(11) {
        let mut input = common::Input::new(op);
        let kind = input.byte();
        let off = input.u16();
        let value = input.u64();
        let size = if kind & 0x10 != 0 {
            usize::from(kind >> 5)
        } else {
            [1, 2, 4, 8][usize::from(kind >> 2 & 3)]
        };
        let offset = if off >= 0xf000 {
            u64::MAX - u64::from(off & 0xfff)
        } else {
            u64::from(off & 0x1fff)
        };
        match kind & 3 {
            0 => {
                let mut buf = [0xeeu8; 8];
                t.read(offset, &mut buf[..size]);
                if offset >= CONFIG_OFFSET + 16
                    || (offset < CONFIG_OFFSET && (size != 4 || offset & 3 != 0))
                {
                    // Holes, out-of-window offsets and odd register accesses read as 0.
                    assert!(
                        buf[..size].iter().all(|&b| b == 0),
                        "{offset:#x}/{size}: {buf:?}"
                    );
                }
            }
            1 => t.write(offset, &value.to_le_bytes()[..size]),
            2 => {
                let _ = mem.write_obj(value, GuestAddress(u64::from(off) * 8 % 0x20000));
            }
            _ => match kind >> 2 & 3 {
                0 | 1 => {
                    let i = lock(&shared).interrupt.clone();
                    if let Some(i) = i {
                        let kind = if kind & 4 == 0 {
                            InterruptKind::Queue
                        } else {
                            InterruptKind::Config
                        };
                        let _ = i.trigger(kind);
                    }
                }
                2 => process(&shared),
                _ => t.reset(),
            },
        }
        check(&mut t, &shared);
    }

    // A reset always brings everything back.
    t.write(REG_STATUS, &0u32.to_le_bytes());
    assert_eq!(t.status(), 0);
    assert!(!t.is_active() && !lock(&shared).active);
    for q in 0..2u32 {
        t.write(REG_QUEUE_SEL, &q.to_le_bytes());
        let mut ready = [0xffu8; 4];
        t.read(REG_QUEUE_READY, &mut ready);
        assert_eq!(ready, [0; 4], "queue {q} still ready after reset");
    }
}

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(|| {
        Mutex::new(State {
            mem: common::memory(),
        })
    });
    let guard = state.lock().unwrap_or_else(|e| e.into_inner());
    run(&guard.mem, data);
});
