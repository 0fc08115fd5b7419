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

#[cfg(test)]
mod tests;

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
            queue_evts.push(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
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

    /// Applies a queue register write to the selected queue, if its registers may be written
    /// now: the device is not live yet and the queue is not enabled. Otherwise the write is
    /// dropped.
    fn program_queue(&mut self, write: impl FnOnce(&mut Queue)) {
        if self.device_live() {
            return;
        }
        let queue = self.queues.get_mut(self.queue_sel as usize);
        if let Some(q) = queue.filter(|q| !q.ready()) {
            write(q);
        }
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
            REG_QUEUE_NUM => self.program_queue(|q| {
                // `set_size` refuses 0, non-powers of two and sizes above the max.
                if let Ok(size) = u16::try_from(v) {
                    q.set_size(size);
                }
            }),
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
            REG_QUEUE_DESC_LOW => self.program_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.program_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_DRIVER_LOW => self.program_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_DRIVER_HIGH => {
                self.program_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            REG_QUEUE_DEVICE_LOW => self.program_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_DEVICE_HIGH => self.program_queue(|q| q.set_used_ring_address(None, Some(v))),
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
