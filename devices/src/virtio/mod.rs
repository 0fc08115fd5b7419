//! Virtio devices and the virtio-mmio transport.
//!
//! A device is a [`VirtioDevice`] to the transport: it says what it offers (type, features,
//! queue sizes, config space) and, once the driver has set it up, is
//! [`VirtioDevice::activate`]d with the guest memory, its queues with their notification
//! eventfds (clones: the transport keeps the originals), and an [`Interrupt`] to signal the
//! driver. Activation starts the device's own worker thread; the vCPU threads never do device
//! work. [`VirtioDevice::reset`] stops and joins that thread and drops the queues, so a driver
//! reload can activate the device again.
//!
//! Every device here (and virtio-wl, in its own crate) gets [`VirtioDevice`] from one place:
//! it holds a [`VirtioCommon`] (features, config bytes, activation checks, active or not) and
//! implements the small [`VirtioDeviceBase`] ([`common`]). Its thread is started by
//! [`WorkerStop::spawn`], the only place that starts device threads (it installs their seccomp
//! filter first), and runs one of two loops ([`worker`]): an `event_manager::EventManager`
//! (block, net, vsock) or a plain epoll the worker owns (virtio-wl, the vhost-user supervisor).
//!
//! The transport ([`mmio::MmioTransport`]) owns the register state machine and the queues
//! until activation; it is the only [`crate::BusDevice`] the vCPUs see.
//!
//! Tests, the fuzz harnesses and the benches build their rings with `testing` (in tests, and
//! with the `test-utils` feature).

pub mod block;
pub mod common;
pub mod mmio;
pub mod net;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vhost_user;
pub mod vsock;
pub mod worker;

pub use common::{split_queues, Activation, QueueCheck, VirtioCommon, VirtioDeviceBase};
pub use worker::{
    drain_queue, run_epoll_loop, run_event_loop, signal_used, Drain, DrainEnd, EmWorker,
    EpollWorker, Round, StopFd, WorkerStop, WorkerThread,
};

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as the devices see it (cheap to clone: the regions are shared).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Device type ids (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;
/// crosvm's virtio-wl id.
pub const TYPE_WL: u32 = 63;

/// VIRTIO_F_VERSION_1: every qvm device is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// What an interrupt tells the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// A queue's used ring changed (interrupt status bit 0).
    Queue,
    /// The config space changed (interrupt status bit 1).
    Config,
}

/// How a device raises its interrupt; the transport implements it (status bits + irqfd).
pub trait Interrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}

/// A shared-memory region the device exposes (virtio 1.2, 2.10), e.g. virtio-wl's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRegion {
    pub id: u8,
    /// Guest-physical base address.
    pub addr: u64,
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("queue {0} is not valid in guest memory")]
    BadQueue(usize),
    #[error("cannot start the device worker: {0}")]
    Worker(std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// A queue handed to the device at activation, with the eventfd the guest's QueueNotify writes
/// signal (an ioeventfd, or the transport itself when a notify was not caught by KVM). The
/// eventfd is a clone: the transport keeps the original for the VM's lifetime.
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

pub trait VirtioDevice: Send {
    /// The virtio device id (`TYPE_*`).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers (must include [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;

    /// The features the driver accepted (always a subset of [`VirtioDevice::features`]; the
    /// transport masks it) when it sets FEATURES_OK.
    fn ack_features(&mut self, features: u64);

    /// Reads device config space at `offset`. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device config space; read-only or out-of-range bytes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device: called once the driver sets DRIVER_OK.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;

    /// Stops the device (driver wrote 0 to status, or the VM stops): stops and joins the
    /// worker, drops the queues. Returns false if it was not active. Must not block for long.
    fn reset(&mut self) -> bool;

    /// Shared-memory regions (most devices have none).
    fn shm_regions(&self) -> Vec<ShmRegion> {
        Vec::new()
    }

    /// The device's counters, readable from any thread at any time (for the API's metrics).
    fn metrics(&self) -> Option<Arc<dyn DeviceMetrics>> {
        None
    }
}

/// A device's counters as (name, value) pairs, e.g. `("bytes_read", 4096)`.
pub trait DeviceMetrics: Send + Sync {
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// Implements [`DeviceMetrics`] for a struct of `AtomicU64` counters, naming each by its field
/// (in the order given). Exported for devices in other crates (virtio-wl).
#[macro_export]
macro_rules! atomic_counters {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::virtio::DeviceMetrics for $ty {
            fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(std::sync::atomic::Ordering::Relaxed))),*]
            }
        }
    };
}
pub use crate::atomic_counters;

/// Defines a device's counters once: the struct of `AtomicU64`s (updated by the worker,
/// readable from any thread at any time), its plain copy with `snapshot()`, and
/// [`DeviceMetrics`] naming each counter by its field (in the order given):
///
/// ```text
/// device_stats! {
///     /// Counters of the thing.
///     pub struct ThingStats / ThingStatsSnapshot {
///         /// Requests taken.
///         requests,
///         errors,
///     }
/// }
/// ```
macro_rules! device_stats {
    (
        $(#[$meta:meta])*
        pub struct $name:ident / $snapshot:ident {
            $( $(#[$field_meta:meta])* $field:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: std::sync::atomic::AtomicU64, )*
        }

        #[doc = concat!("A plain copy of [`", stringify!($name), "`].")]
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $snapshot {
            $( pub $field: u64, )*
        }

        impl $name {
            pub fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(std::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }

        $crate::virtio::atomic_counters!($name { $($field),* });
    };
}
pub(crate) use device_stats;

/// Adds `by` to a device counter (relaxed: the counters order nothing, they are only read).
/// Whether a guest buffer of `len` bytes at `addr` lies wholly inside guest memory (an empty
/// one always does: nothing of it is touched).
pub(crate) fn in_memory(mem: &GuestMemoryMmap, addr: vm_memory::GuestAddress, len: u32) -> bool {
    len == 0 || vm_memory::GuestMemoryBackend::check_range(mem, addr, len as usize)
}

pub(crate) fn bump(counter: &std::sync::atomic::AtomicU64, by: u64) {
    counter.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
}
