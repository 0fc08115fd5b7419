//! What every qvm virtio device shares: [`VirtioCommon`] (type, offered and acked features,
//! queue sizes, read-only config space, shared-memory regions, metrics, whether the device
//! runs) and [`VirtioDeviceBase`], the small trait a device implements to get
//! [`VirtioDevice`] from one blanket implementation.
//!
//! The blanket implementation is where the rules every device used to repeat now live once:
//! acked features are masked by the offered ones; config reads zero-fill what lies past the
//! config space (also at offsets that overflow); config writes are ignored unless the device
//! says otherwise; activation is refused while active, then with the wrong number of queues,
//! then (with [`QueueCheck::Validate`]) with a queue that is not valid in guest memory, in
//! queue order; a reset of a device that is not active changes nothing (the acked features
//! stay), a reset of an active one stops it and forgets the acked features.
//!
//! The transport (`mmio`) checks the queues too before it activates a device; the checks here
//! are for every other caller (unit tests drive devices directly) and cost nothing.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateError, ActiveQueue, DeviceMetrics, GuestMemoryMmap, Interrupt, ShmRegion, VirtioDevice,
};

/// VIRTIO_RING_F_EVENT_IDX as a feature mask.
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// How activation checks the queues before [`VirtioDeviceBase::start`] sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueCheck {
    /// In queue order: `is_valid` in guest memory (else [`ActivateError::BadQueue`] with the
    /// queue's index), then `set_event_idx` as the driver acked VIRTIO_RING_F_EVENT_IDX.
    Validate,
    /// The count only: the device checks the queues itself, in its own order (vhost-user
    /// checks the memory table before the rings).
    CountOnly,
}

/// The state every virtio device holds (Cloud Hypervisor calls it `VirtioCommon`). The
/// queues and the interrupt are not here: they move into the device's worker at activation
/// and die with it.
pub struct VirtioCommon {
    /// Names the device in messages ("already active"), usually also its thread's name.
    name: String,
    device_type: u32,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: Vec<u16>,
    queue_check: QueueCheck,
    /// Read-only config space, little-endian, built by the device.
    config: Vec<u8>,
    shm: Vec<ShmRegion>,
    metrics: Option<Arc<dyn DeviceMetrics>>,
    /// [`VirtioDeviceBase::start`] succeeded and [`VirtioDeviceBase::stop`] has not run since.
    active: bool,
}

impl std::fmt::Debug for VirtioCommon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioCommon")
            .field("name", &self.name)
            .field("device_type", &self.device_type)
            .field("features", &format_args!("{:#x}", self.avail_features))
            .field("acked", &format_args!("{:#x}", self.acked_features))
            .field("queue_sizes", &self.queue_sizes)
            .field("active", &self.active)
            .finish()
    }
}

impl VirtioCommon {
    /// A device of type `device_type` (`TYPE_*`) offering `features`, with one queue per entry
    /// of `queue_sizes` (each its maximum size). No config space, no shared memory, no metrics,
    /// queues checked with [`QueueCheck::Validate`] until the `with_*` methods say otherwise.
    pub fn new(
        name: impl Into<String>,
        device_type: u32,
        features: u64,
        queue_sizes: &[u16],
    ) -> Self {
        VirtioCommon {
            name: name.into(),
            device_type,
            avail_features: features,
            acked_features: 0,
            queue_sizes: queue_sizes.to_vec(),
            queue_check: QueueCheck::Validate,
            config: Vec::new(),
            shm: Vec::new(),
            metrics: None,
            active: false,
        }
    }

    /// The config space the driver reads (a copy of `bytes`).
    pub fn with_config(mut self, bytes: &[u8]) -> Self {
        self.config = bytes.to_vec();
        self
    }

    /// The counters [`VirtioDevice::metrics`] returns.
    pub fn with_metrics(mut self, metrics: Arc<dyn DeviceMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The shared-memory regions [`VirtioDevice::shm_regions`] returns.
    pub fn with_shm(mut self, regions: Vec<ShmRegion>) -> Self {
        self.shm = regions;
        self
    }

    /// How activation checks the queues (default [`QueueCheck::Validate`]).
    pub fn with_queue_check(mut self, check: QueueCheck) -> Self {
        self.queue_check = check;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn device_type(&self) -> u32 {
        self.device_type
    }

    pub fn queue_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// The features offered to the driver.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// The features the driver accepted: 0 before FEATURES_OK and after a reset of an active
    /// device.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver acked every bit of `mask`.
    pub fn acked(&self, mask: u64) -> bool {
        self.acked_features & mask == mask
    }

    /// Records the driver's features, masked by the offered ones.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Whether the device was started and not stopped since.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Begins a device's `Debug` output with what every device shows: its name, the features
    /// it offers and whether it is active. The device adds its own fields, then finishes.
    pub fn debug_struct<'a, 'b: 'a>(
        &self,
        f: &'a mut std::fmt::Formatter<'b>,
        device: &str,
    ) -> std::fmt::DebugStruct<'a, 'b> {
        let mut d = f.debug_struct(device);
        d.field("name", &self.name)
            .field("features", &format_args!("{:#x}", self.avail_features))
            .field("active", &self.active);
        d
    }

    /// The config space.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The config space, for a device whose config changes (it then raises
    /// `InterruptKind::Config`).
    pub fn config_mut(&mut self) -> &mut [u8] {
        &mut self.config
    }

    /// Reads `data.len()` bytes of config space at `offset`; bytes past its end, and at
    /// offsets that overflow, read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    /// "Already active", then the queue count, then (with [`QueueCheck::Validate`]) each
    /// queue's validity and its event index setting, in queue order.
    pub fn check_activation(
        &self,
        mem: &GuestMemoryMmap,
        queues: &mut [ActiveQueue],
    ) -> Result<(), ActivateError> {
        if self.active {
            return Err(ActivateError::Other(format!(
                "{} is already active",
                self.name
            )));
        }
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: self.queue_sizes.len(),
            });
        }
        if self.queue_check == QueueCheck::Validate {
            let event_idx = self.acked(EVENT_IDX);
            for (i, q) in queues.iter_mut().enumerate() {
                if !q.queue.is_valid(mem) {
                    return Err(ActivateError::BadQueue(i));
                }
                q.queue.set_event_idx(event_idx);
            }
        }
        Ok(())
    }
}

/// Reads `data.len()` bytes of `config` at `offset` into `data`; what lies past the end of
/// `config` (or at an offset that overflows) reads as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset).ok().and_then(|o| config.get(o..)) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// Checked queues as fixed arrays, in queue order: the queues and their notify eventfds.
/// [`ActivateError::QueueCount`] if there are not exactly `N`.
pub fn split_queues<const N: usize>(
    queues: Vec<ActiveQueue>,
) -> Result<([Queue; N], [EventFd; N]), ActivateError> {
    let got = queues.len();
    let (qs, fds): (Vec<Queue>, Vec<EventFd>) =
        queues.into_iter().map(|q| (q.queue, q.notify)).unzip();
    match (<[Queue; N]>::try_from(qs), <[EventFd; N]>::try_from(fds)) {
        (Ok(qs), Ok(fds)) => Ok((qs, fds)),
        _ => Err(ActivateError::QueueCount { got, want: N }),
    }
}

/// What [`VirtioDeviceBase::start`] is given: [`VirtioDevice::activate`]'s arguments, once the
/// queues passed [`VirtioCommon::check_activation`].
pub struct Activation {
    /// Guest memory (cheap to clone: the regions are shared).
    pub mem: GuestMemoryMmap,
    /// How the device signals the driver.
    pub interrupt: Arc<dyn Interrupt>,
    /// One per entry of the device's queue sizes, in order.
    pub queues: Vec<ActiveQueue>,
}

/// The device side of [`VirtioDevice`]: a device holds a [`VirtioCommon`], says how it starts
/// and stops, and gets [`VirtioDevice`] from the blanket implementation. The method names
/// differ from [`VirtioDevice`]'s, so calls stay unambiguous with both traits in scope.
pub trait VirtioDeviceBase: Send {
    /// The device's [`VirtioCommon`] (both accessors: [`crate::virtio_common_accessors!`]).
    fn common(&self) -> &VirtioCommon;
    fn common_mut(&mut self) -> &mut VirtioCommon;

    /// Stops the device: stops and joins its worker, then keeps what the worker gives back for
    /// the next activation. Only called while active.
    fn stop(&mut self);

    /// Starts the device. On error the device must be as it was (or say in its error what it
    /// lost), and nothing may fail after its worker thread is spawned: spawning is the last
    /// fallible step.
    fn start(&mut self, act: Activation) -> Result<(), ActivateError>;

    /// A config write from the driver. Default: ignored (every qvm config space is read-only).
    fn write_config_bytes(&mut self, _offset: u64, _data: &[u8]) {}
}

/// Implements [`VirtioDeviceBase::common`] and [`VirtioDeviceBase::common_mut`] over the named
/// field, inside an `impl VirtioDeviceBase for ...` block: `virtio_common_accessors!(common);`.
#[macro_export]
macro_rules! virtio_common_accessors {
    ($field:ident) => {
        fn common(&self) -> &$crate::virtio::VirtioCommon {
            &self.$field
        }

        fn common_mut(&mut self) -> &mut $crate::virtio::VirtioCommon {
            &mut self.$field
        }
    };
}

impl<T: VirtioDeviceBase> VirtioDevice for T {
    fn device_type(&self) -> u32 {
        self.common().device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.common().queue_sizes
    }

    fn features(&self) -> u64 {
        self.common().avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.common_mut().ack_features(features);
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.common().read_config(offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.write_config_bytes(offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        mut queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.common().check_activation(&mem, &mut queues)?;
        self.start(Activation {
            mem,
            interrupt,
            queues,
        })?;
        self.common_mut().active = true;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        // Not active: nothing to stop, and the acked features stay.
        if !self.common().active {
            return false;
        }
        self.stop();
        let common = self.common_mut();
        common.active = false;
        common.acked_features = 0;
        true
    }

    fn shm_regions(&self) -> Vec<ShmRegion> {
        self.common().shm.clone()
    }

    fn metrics(&self) -> Option<Arc<dyn DeviceMetrics>> {
        self.common().metrics.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{self, SplitRing};
    use crate::virtio::{InterruptKind, VIRTIO_F_VERSION_1};
    use std::sync::atomic::{AtomicU64, Ordering};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const RING_BASE: u64 = 0x1000;

    struct NoInterrupt;
    impl Interrupt for NoInterrupt {
        fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Counters {
        starts: AtomicU64,
    }
    impl DeviceMetrics for Counters {
        fn counters(&self) -> Vec<(&'static str, u64)> {
            vec![("starts", self.starts.load(Ordering::Relaxed))]
        }
    }

    /// A device whose start and stop only count (and can be told to fail).
    struct Fake {
        common: VirtioCommon,
        counters: Arc<Counters>,
        fail_start: bool,
        stops: usize,
        /// Event index setting of each queue start() saw.
        event_idx: Vec<bool>,
    }

    impl Fake {
        /// A fake with `queues` queues whose driver acked `acked`.
        fn new(queues: usize, check: QueueCheck, acked: u64) -> Fake {
            let counters = Arc::new(Counters::default());
            let mut fake = Fake {
                common: VirtioCommon::new(
                    "fake-dev",
                    99,
                    VIRTIO_F_VERSION_1 | EVENT_IDX | 1,
                    &vec![16; queues],
                )
                .with_config(&[1, 2, 3, 4])
                .with_metrics(counters.clone())
                .with_shm(vec![ShmRegion {
                    id: 0,
                    addr: 0x1_0000_0000,
                    len: 0x1000,
                }])
                .with_queue_check(check),
                counters,
                fail_start: false,
                stops: 0,
                event_idx: Vec::new(),
            };
            fake.ack_features(acked);
            fake
        }
    }

    impl VirtioDeviceBase for Fake {
        crate::virtio_common_accessors!(common);

        fn stop(&mut self) {
            self.stops += 1;
        }

        fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
            if self.fail_start {
                return Err(ActivateError::Other("told to fail".into()));
            }
            let queues = act.queues.iter();
            self.event_idx = queues.map(|q| q.queue.event_idx_enabled()).collect();
            self.counters.starts.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn memory() -> GuestMemoryMmap {
        testing::memory(0x10000)
    }

    /// `n` ready queues of 16 entries in [`memory`]; queue `bad` (if any) has its used ring
    /// outside it.
    fn queues(n: usize, bad: Option<usize>) -> Vec<ActiveQueue> {
        (0..n)
            .map(|i| {
                let base = RING_BASE + 0x1000 * i as u64;
                let mut q = SplitRing::new(base, 16).queue();
                if Some(i) == bad {
                    q.set_used_ring_address(Some(0x10_0000), Some(0));
                }
                ActiveQueue {
                    queue: q,
                    notify: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
                }
            })
            .collect()
    }

    fn irq() -> Arc<dyn Interrupt> {
        Arc::new(NoInterrupt)
    }

    #[test]
    fn config_reads_zero_fill_past_the_end_and_on_overflow() {
        let dev = Fake::new(1, QueueCheck::Validate, 0);
        let mut buf = [0xff; 6];
        dev.read_config(0, &mut buf);
        assert_eq!(buf, [1, 2, 3, 4, 0, 0]);
        let mut buf = [0xff; 2];
        dev.read_config(3, &mut buf);
        assert_eq!(buf, [4, 0]);
        for offset in [4, 5, 1 << 40, u64::MAX - 1, u64::MAX] {
            let mut buf = [0xff; 4];
            dev.read_config(offset, &mut buf);
            assert_eq!(buf, [0; 4], "offset {offset:#x}");
        }
        let mut empty = [];
        dev.read_config(2, &mut empty);

        // Writes are ignored by default.
        let mut dev = dev;
        dev.write_config(0, &[9, 9]);
        let mut buf = [0; 4];
        dev.read_config(0, &mut buf);
        assert_eq!(buf, [1, 2, 3, 4]);

        // No config space at all reads as zeros.
        let bare = VirtioCommon::new("bare", 1, 0, &[1]);
        let mut buf = [0xff; 3];
        bare.read_config(0, &mut buf);
        assert_eq!(buf, [0; 3]);
    }

    #[test]
    fn the_blanket_impl_reports_what_common_holds() {
        let dev = Fake::new(2, QueueCheck::Validate, 0);
        assert_eq!(dev.device_type(), 99);
        assert_eq!(dev.queue_max_sizes(), &[16, 16]);
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | EVENT_IDX | 1);
        assert_eq!(dev.shm_regions().len(), 1);
        let m = dev.metrics().expect("metrics");
        assert_eq!(m.counters(), vec![("starts", 0)]);
        assert_eq!(dev.common().name(), "fake-dev");
        let bare = VirtioCommon::new("bare", 1, 0, &[]);
        assert!(bare.metrics.is_none() && bare.shm.is_empty() && bare.config().is_empty());
    }

    #[test]
    fn acked_features_are_masked_by_the_offered_ones() {
        let mut dev = Fake::new(1, QueueCheck::Validate, u64::MAX);
        assert_eq!(dev.common().acked_features(), dev.features());
        dev.ack_features(1 | (1 << 5));
        assert_eq!(dev.common().acked_features(), 1);
        assert!(dev.common().acked(1));
        assert!(!dev.common().acked(1 | EVENT_IDX));
    }

    #[test]
    fn activation_checks_in_order_and_sets_event_idx() {
        let mem = memory();
        let mut dev = Fake::new(2, QueueCheck::Validate, VIRTIO_F_VERSION_1 | EVENT_IDX);

        // Count before validity: a bad queue in a short list is a count error.
        let e = dev.activate(mem.clone(), irq(), queues(1, Some(0)));
        assert!(matches!(
            e,
            Err(ActivateError::QueueCount { got: 1, want: 2 })
        ));
        let e = dev.activate(mem.clone(), irq(), queues(2, Some(1)));
        assert!(matches!(e, Err(ActivateError::BadQueue(1))));
        let e = dev.activate(mem.clone(), irq(), queues(2, Some(0)));
        assert!(matches!(e, Err(ActivateError::BadQueue(0))));
        assert!(!dev.common().is_active());

        dev.activate(mem.clone(), irq(), queues(2, None)).unwrap();
        assert!(dev.common().is_active());
        assert_eq!(dev.event_idx, [true, true]);

        // Already active comes first, whatever the queues.
        let e = dev
            .activate(mem.clone(), irq(), queues(0, None))
            .unwrap_err();
        assert!(matches!(e, ActivateError::Other(_)));
        assert_eq!(e.to_string(), "fake-dev is already active");

        // Without EVENT_IDX acked the queues get it off.
        assert!(dev.reset());
        dev.ack_features(VIRTIO_F_VERSION_1);
        let mut qs = queues(2, None);
        qs[1].queue.set_event_idx(true);
        dev.activate(mem, irq(), qs).unwrap();
        assert_eq!(dev.event_idx, [false, false]);
    }

    #[test]
    fn count_only_leaves_the_queues_to_the_device() {
        let mem = memory();
        let mut dev = Fake::new(2, QueueCheck::CountOnly, EVENT_IDX);
        let e = dev.activate(mem.clone(), irq(), queues(3, None));
        assert!(matches!(
            e,
            Err(ActivateError::QueueCount { got: 3, want: 2 })
        ));
        // An invalid queue reaches start(), and event_idx is left as it was.
        dev.activate(mem, irq(), queues(2, Some(1))).unwrap();
        assert_eq!(dev.event_idx, [false, false]);
    }

    #[test]
    fn a_failed_start_leaves_the_device_inactive() {
        let mem = memory();
        let mut dev = Fake::new(1, QueueCheck::Validate, VIRTIO_F_VERSION_1);
        dev.fail_start = true;
        let e = dev
            .activate(mem.clone(), irq(), queues(1, None))
            .unwrap_err();
        assert_eq!(e.to_string(), "told to fail");
        assert!(!dev.common().is_active());
        // Reset of an inactive device: false, stop() not called, acked features kept.
        assert!(!dev.reset());
        assert_eq!(dev.stops, 0);
        assert_eq!(dev.common().acked_features(), VIRTIO_F_VERSION_1);

        dev.fail_start = false;
        dev.activate(mem, irq(), queues(1, None)).unwrap();
        assert_eq!(dev.counters.starts.load(Ordering::Relaxed), 1);
        assert!(dev.reset());
        assert_eq!(dev.stops, 1);
        assert_eq!(dev.common().acked_features(), 0);
        assert!(!dev.common().is_active());
        assert!(!dev.reset());
        assert_eq!(dev.stops, 1);
    }

    #[test]
    fn split_queues_checks_the_count() {
        let (qs, fds) = split_queues::<2>(queues(2, None)).unwrap();
        assert_eq!(qs[1].desc_table(), RING_BASE + 0x1000);
        assert_eq!(fds.len(), 2);
        let e = split_queues::<3>(queues(2, None)).unwrap_err();
        assert!(matches!(e, ActivateError::QueueCount { got: 2, want: 3 }));
    }

    #[test]
    fn read_config_bytes_matches_a_byte_by_byte_read() {
        let config: Vec<u8> = (1..=10).collect();
        let offsets = [0, 1, 5, 9, 10, 11, 200, u64::MAX - 3, u64::MAX];
        for offset in offsets {
            for len in 0..14 {
                let mut got = vec![0xaa; len];
                read_config_bytes(&config, offset, &mut got);
                let want: Vec<u8> = (0..len as u64)
                    .map(|i| {
                        offset
                            .checked_add(i)
                            .and_then(|o| usize::try_from(o).ok())
                            .and_then(|o| config.get(o).copied())
                            .unwrap_or(0)
                    })
                    .collect();
                assert_eq!(got, want, "offset {offset:#x} len {len}");
            }
        }
    }
}
