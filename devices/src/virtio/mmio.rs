//! The virtio-mmio transport (virtio 1.2, section 4.2), modern (version 2) register layout only.
//!
//! [`MmioTransport`] is the [`BusDevice`] the vCPUs see for one virtio device. It owns the
//! register state machine and the queues until the driver sets DRIVER_OK, then hands copies of
//! the queues (with clones of their notification eventfds) to [`VirtioDevice::activate`].
//!
//! Status policy: the driver must walk ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK one
//! step at a time, each write being the previous value plus the next bit (as Linux's
//! `virtio_add_status` does). Out-of-order writes are ignored (the status does not change and
//! nothing is flagged), so a driver reading the status back sees its step was refused. FAILED
//! may be added at any time; 0 resets. Once FAILED or DEVICE_NEEDS_RESET is set, only those
//! two writes are accepted.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::{VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    status, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, InterruptKind, VirtioDevice,
    VIRTIO_F_VERSION_1,
};
use crate::BusDevice;

/// Size of one virtio-mmio window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register: the VMM registers each of
/// [`MmioTransport::queue_evts`] as an ioeventfd at `base + NOTIFY_REG_OFFSET`, 4 bytes wide,
/// with the queue index (u32) as datamatch.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

/// "virt", little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Modern virtio-mmio.
pub const MMIO_VERSION: u32 = 2;
/// "QEMU", the vendor id most VMMs report.
pub const VENDOR_ID: u32 = 0x554D_4551;

/// Interrupt status bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

// Register offsets (virtio 1.2, 4.2.2).
const REG_MAGIC_VALUE: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = NOTIFY_REG_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_QUEUE_RESET: u64 = 0x0c0;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Device-specific config space starts here.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Feature bits the transport never offers, whatever the device says: packed rings
/// (virtio-queue only does split rings) and per-queue reset (QueueReset is not implemented).
const UNSUPPORTED_FEATURES: u64 = (1 << VIRTIO_F_RING_PACKED) | (1 << VIRTIO_F_RING_RESET);

/// The interrupt the device raises: the status bits the driver reads and acks through the
/// registers, plus the irqfd that injects the (edge) interrupt.
struct IrqState {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: EventFd,
}

impl Interrupt for IrqState {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue => INT_VRING,
            InterruptKind::Config => {
                // Bump first, so a driver re-reading the config after the interrupt sees it.
                self.config_generation.fetch_add(1, Ordering::AcqRel);
                INT_CONFIG
            }
        };
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.irq.write(1)
    }
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqState>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,

    device_status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    /// What the driver wrote to DriverFeatures (both pages), before masking.
    driver_features: u64,
    /// What was passed to `ack_features` at FEATURES_OK.
    acked_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    /// The device accepted `activate` and has not been reset since.
    active: bool,
}

impl MmioTransport {
    /// The device's counters (see [`VirtioDevice::metrics`]).
    pub fn metrics(&self) -> Option<Arc<dyn super::DeviceMetrics>> {
        self.device.metrics()
    }

    /// Wraps `device`. `irq` is written to raise the device's interrupt (the VMM registers it
    /// as a KVM irqfd). Fails if an eventfd cannot be created or the device reports a queue
    /// max size that is not a power of two in 1..=32768.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for (i, &max) in device.queue_max_sizes().iter().enumerate() {
            let q = Queue::new(max).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("virtio queue {i} max size {max}: {e}"),
                )
            })?;
            queues.push(q);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(IrqState {
                status: AtomicU32::new(0),
                config_generation: AtomicU32::new(0),
                irq,
            }),
            queues,
            queue_evts,
            device_status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            acked_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            active: false,
        })
    }

    /// One notification eventfd per queue, in queue order: register `queue_evts()[i]` as an
    /// ioeventfd at `base + NOTIFY_REG_OFFSET` with datamatch `i as u32`.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        self.device_status
    }

    /// Whether the device was activated (DRIVER_OK accepted) and not reset since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Resets the device and every register, as if the driver wrote 0 to Status. The VMM calls
    /// this when the VM stops so the device's worker is joined.
    pub fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        for q in &mut self.queues {
            q.reset();
        }
        // Drop notifications left over from the previous driver instance.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt.status.store(0, Ordering::Release);
        self.device_status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.shm_sel = 0;
    }

    fn offered_features(&self) -> u64 {
        self.device.features() & !UNSUPPORTED_FEATURES
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// The selected queue, if its registers may be written now: the device is not live yet
    /// and the queue is not enabled.
    fn programmable_queue(&mut self) -> Option<&mut Queue> {
        if self.device_live() {
            return None;
        }
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.ready())
    }

    /// DRIVER_OK was set (or the device is failed): the queue setup is frozen until a reset.
    fn device_live(&self) -> bool {
        self.device_status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET | status::FAILED) != 0
    }

    fn selected_shm(&self) -> Option<super::ShmRegion> {
        let id = u8::try_from(self.shm_sel).ok()?;
        self.device.shm_regions().into_iter().find(|r| r.id == id)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::Acquire),
            REG_STATUS => self.device_status,
            REG_SHM_LEN_LOW => self.selected_shm().map_or(u32::MAX, |r| r.len as u32),
            REG_SHM_LEN_HIGH => self
                .selected_shm()
                .map_or(u32::MAX, |r| (r.len >> 32) as u32),
            REG_SHM_BASE_LOW => self.selected_shm().map_or(0, |r| r.addr as u32),
            REG_SHM_BASE_HIGH => self.selected_shm().map_or(0, |r| (r.addr >> 32) as u32),
            REG_CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::Acquire),
            // VIRTIO_F_RING_RESET is never offered.
            REG_QUEUE_RESET => 0,
            // Write-only registers and holes.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            // Only between DRIVER and FEATURES_OK.
            REG_DRIVER_FEATURES if self.device_status == status::ACKNOWLEDGE | status::DRIVER => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.programmable_queue() {
                    // `set_size` refuses 0, non-powers of two and sizes above the max.
                    if let Ok(size) = u16::try_from(v) {
                        q.set_size(size);
                    }
                }
            }
            REG_QUEUE_READY if !self.device_live() => {
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::AcqRel);
            }
            REG_STATUS => self.write_status(v),
            REG_QUEUE_DESC_LOW => {
                if let Some(q) = self.programmable_queue() {
                    q.set_desc_table_address(Some(v), None);
                }
            }
            REG_QUEUE_DESC_HIGH => {
                if let Some(q) = self.programmable_queue() {
                    q.set_desc_table_address(None, Some(v));
                }
            }
            REG_QUEUE_DRIVER_LOW => {
                if let Some(q) = self.programmable_queue() {
                    q.set_avail_ring_address(Some(v), None);
                }
            }
            REG_QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.programmable_queue() {
                    q.set_avail_ring_address(None, Some(v));
                }
            }
            REG_QUEUE_DEVICE_LOW => {
                if let Some(q) = self.programmable_queue() {
                    q.set_used_ring_address(Some(v), None);
                }
            }
            REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.programmable_queue() {
                    q.set_used_ring_address(None, Some(v));
                }
            }
            REG_SHM_SEL => self.shm_sel = v,
            // VIRTIO_F_RING_RESET is never offered.
            REG_QUEUE_RESET => {}
            // Read-only registers, writes in the wrong state, and holes.
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        let cur = self.device_status;
        if v == 0 {
            self.reset();
            return;
        }
        if v == cur | FAILED {
            // The driver gave up; the device (if active) keeps running until reset.
            self.device_status = v;
            return;
        }
        if cur & (FAILED | DEVICE_NEEDS_RESET) != 0 {
            return;
        }
        const S1: u32 = ACKNOWLEDGE;
        const S2: u32 = ACKNOWLEDGE | DRIVER;
        const S3: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK;
        const S4: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;
        match (cur, v) {
            (0, S1) | (S1, S2) => self.device_status = v,
            (S2, S3) => {
                let acked = self.driver_features & self.offered_features();
                // A modern-only transport: a driver that did not accept VERSION_1 does not get
                // FEATURES_OK (it reads the status back and sees the refusal).
                if acked & VIRTIO_F_VERSION_1 != 0 {
                    self.device.ack_features(acked);
                    self.acked_features = acked;
                    self.device_status = v;
                }
            }
            (S3, S4) => {
                self.device_status = v;
                if let Err(e) = self.activate() {
                    eprintln!(
                        "virtio-mmio: cannot activate device type {}: {e}",
                        self.device.device_type()
                    );
                    self.device_status |= DEVICE_NEEDS_RESET;
                    let _ = self.interrupt.trigger(InterruptKind::Config);
                }
            }
            _ => {}
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut active = Vec::with_capacity(self.queues.len());
        for (i, (q, evt)) in self.queues.iter_mut().zip(&self.queue_evts).enumerate() {
            q.set_event_idx(event_idx);
            if !q.is_valid(&self.mem) {
                return Err(ActivateError::BadQueue(i));
            }
            // `Queue` is not `Clone`; its state round-trips. The transport keeps its copy so
            // the queue registers still read back after activation.
            let queue = Queue::try_from(q.state())
                .map_err(|e| ActivateError::Other(format!("queue {i}: {e}")))?;
            let notify = evt
                .try_clone()
                .map_err(|e| ActivateError::Other(format!("queue {i} eventfd: {e}")))?;
            active.push(ActiveQueue { queue, notify });
        }
        let interrupt: Arc<dyn Interrupt> = self.interrupt.clone();
        self.device.activate(self.mem.clone(), interrupt, active)?;
        self.active = true;
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_OFFSET {
            if offset < MMIO_LEN {
                self.device.read_config(offset - CONFIG_OFFSET, data);
            }
            return;
        }
        if data.len() == 4 && offset & 3 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if offset < MMIO_LEN {
                self.device.write_config(offset - CONFIG_OFFSET, data);
            }
            return;
        }
        if offset & 3 != 0 {
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let rec = self.rec.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(i))
                    .and_then(|o| rec.config.get(o))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut rec = self.rec.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                let slot = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(i))
                    .and_then(|o| rec.config.get_mut(o));
                if let Some(slot) = slot {
                    *slot = *b;
                }
            }
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
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
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
}
