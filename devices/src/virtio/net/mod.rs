//! virtio-net (virtio 1.2, section 5.1) on a Linux tap device.
//!
//! Split like virtio-blk, one module per layer, so that everything a guest can influence is
//! testable and fuzzable without threads, KVM or root:
//!
//! - `backend`: [`NetBackend`] parses the chains and moves frames between the queues and any
//!   [`TapIo`]: [`NetBackend::process_tx`] and [`NetBackend::process_rx`] run over
//!   `&mut Queue` and guest memory and say what to wait for next;
//! - [`tap`], the I/O backend: [`Tap`] is the real tap (by name or inherited descriptor,
//!   offload probe), [`FakeTap`] an in-memory one;
//! - this module: [`Net`] is the [`VirtioDevice`] (through [`VirtioDeviceBase`]): features,
//!   config space, activation;
//! - `worker`: the device's thread, an `event_manager::EventManager`
//!   ([`super::worker::run_event_loop`]) over the two queue eventfds, a stop eventfd and the
//!   tap;
//! - `fuzz` (with the `test-utils` feature, and in tests): the harnesses the `net_tx` and
//!   `net_rx` fuzz targets and PRNG-driven unit tests share.
//!
//! Queues: receive (0) and transmit (1), 256 entries each; no control queue, no multiqueue.
//! Every frame carries a 12-byte `struct virtio_net_hdr_v1` (VERSION_1 drivers always use it).
//!
//! Transmit: a chain is the header plus the frame in driver-readable descriptors. It is
//! gathered and written to the tap in one call. Chains with a device-writable descriptor,
//! shorter than the header, longer than [`MAX_TX_LEN`], outside guest memory or that do not
//! end are returned with used length 0 and counted. When the tap would block, the frame is
//! kept and written first once the tap is writable again (nothing is lost, order is kept).
//!
//! Receive and backpressure: a frame is read from the tap into a pending buffer, then copied
//! into the guest's buffers. With MRG_RXBUF it may span several chains (`num_buffers` in the
//! first header says how many); without, one chain must hold all of it. When the guest has not
//! posted enough buffers the frame stays pending, the tap leaves the epoll set (no more reads,
//! no busy loop: the kernel queues, then drops, further frames), and the next rx kick
//! delivers the pending frame first. Chains taken from the ring stay reserved by the device
//! until a frame fills them, so waiting needs no rewinding of the ring and EVENT_IDX keeps
//! working. A frame is dropped (counted in `rx_too_big`) only when it cannot ever fit: without
//! MRG_RXBUF when it is larger than the next chain (the chain is kept for the next frame);
//! with MRG_RXBUF when the device holds a whole ring of chains and they are still too small.
//!
//! Hostile guests: every descriptor is checked (direction, length, inside guest memory); nothing
//! here panics on guest input.

mod backend;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz;
pub mod tap;
#[cfg(test)]
mod tests;
mod worker;

pub use backend::{NetBackend, RxOutcome, RxWait, TxOutcome};
pub use tap::{
    FakeTap, Tap, TapIo, TapSource, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO,
};

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::{
    split_queues, ActivateError, Activation, VirtioCommon, VirtioDevice, VirtioDeviceBase,
    WorkerStop, WorkerThread, TYPE_NET, VIRTIO_F_VERSION_1,
};
use worker::Worker;

/// Size (and maximum size) of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of `struct virtio_net_hdr_v1`, in front of every frame in both directions.
pub const VNET_HDR_LEN: usize = 12;
/// Longest transmit chain: a 64 KiB (GSO) frame with its Ethernet and virtio-net headers.
pub const MAX_TX_LEN: usize = 65562;
/// Size of the buffer a frame is read into from the tap; larger than any frame a tap gives.
pub const RX_READ_LEN: usize = 65562 + 4096;
/// Bytes of config space: mac, status, max_virtqueue_pairs.
pub const CONFIG_SIZE: usize = 10;
/// Longest chain accepted, also through an indirect table.
const MAX_CHAIN_LEN: usize = QUEUE_SIZE as usize;
/// Frames moved per `process_rx` call before other events get a turn.
const RX_BUDGET: usize = 256;
/// `process_tx` rounds per kick before other events get a turn.
const TX_ROUNDS: usize = 4;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Feature bits the device may offer (virtio 1.2, 5.1.3), as masks.
pub mod features {
    use super::*;

    const fn bit(b: u32) -> u64 {
        1 << b
    }
    pub const CSUM: u64 = bit(VIRTIO_NET_F_CSUM);
    pub const GUEST_CSUM: u64 = bit(VIRTIO_NET_F_GUEST_CSUM);
    pub const MAC: u64 = bit(VIRTIO_NET_F_MAC);
    pub const GUEST_TSO4: u64 = bit(VIRTIO_NET_F_GUEST_TSO4);
    pub const GUEST_TSO6: u64 = bit(VIRTIO_NET_F_GUEST_TSO6);
    pub const GUEST_ECN: u64 = bit(VIRTIO_NET_F_GUEST_ECN);
    pub const GUEST_UFO: u64 = bit(VIRTIO_NET_F_GUEST_UFO);
    pub const HOST_TSO4: u64 = bit(VIRTIO_NET_F_HOST_TSO4);
    pub const HOST_TSO6: u64 = bit(VIRTIO_NET_F_HOST_TSO6);
    pub const HOST_ECN: u64 = bit(VIRTIO_NET_F_HOST_ECN);
    pub const HOST_UFO: u64 = bit(VIRTIO_NET_F_HOST_UFO);
    pub const MRG_RXBUF: u64 = bit(VIRTIO_NET_F_MRG_RXBUF);
    pub const STATUS: u64 = bit(VIRTIO_NET_F_STATUS);
    pub const RING_INDIRECT_DESC: u64 = bit(VIRTIO_RING_F_INDIRECT_DESC);
    pub const RING_EVENT_IDX: u64 = bit(VIRTIO_RING_F_EVENT_IDX);
    pub const VERSION_1: u64 = super::VIRTIO_F_VERSION_1;
}

/// What to attach the device to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSource,
    /// The guest's MAC address (offered with VIRTIO_NET_F_MAC). None: the driver picks one.
    pub mac: Option<[u8; 6]>,
}

/// Why a network device cannot be set up. Each message names the tap and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("tap device name {name:?} is not valid: {why}")]
    InvalidName { name: String, why: String },
    #[error("tap device {name:?} does not exist: create it first with `ip tuntap add {name} mode tap user $USER` (and bring it up: `ip link set {name} up`)")]
    TapNotFound { name: String },
    #[error("tap device {name:?}: cannot open /dev/net/tun: {source}; {hint}")]
    TunOpen {
        name: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("tap device {name:?}: not allowed to attach to it (it belongs to another user or group): recreate it for this user with `ip tuntap del {name} mode tap && ip tuntap add {name} mode tap user $USER`")]
    TapPermission { name: String },
    #[error("tap device {name:?} is in use by another process (another VM?): stop that process, or give this VM its own tap (`ip tuntap add NEWNAME mode tap user $USER`)")]
    TapBusy { name: String },
    #[error("interface {name:?} is not a single-queue tap device (it is a tun device, a multi_queue tap, or another kind of interface): use a tap created with `ip tuntap add NAME mode tap user $USER`")]
    NotATap { name: String },
    #[error("tap fd {fd} {problem}")]
    BadFd { fd: RawFd, problem: String },
    #[error("tap device {name:?}: {op} failed: {source}")]
    Ioctl {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("MAC address {mac} is not a unicast address: use one whose first byte is even and that is not all zeros, e.g. 52:54:00:12:34:56")]
    InvalidMac { mac: String },
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

crate::virtio::device_stats! {
    /// Counters, updated by the worker and readable at any time. Byte counts are Ethernet frame
    /// bytes, without the virtio-net header.
    pub struct NetStats / NetStatsSnapshot {
        /// Frames delivered to the guest.
        rx_frames,
        rx_bytes,
        /// Frames written to the tap.
        tx_frames,
        tx_bytes,
        /// Times a frame read from the tap had to wait for rx buffers (it is kept, not dropped).
        rx_deferred,
        /// Frames dropped because the guest's buffers can never hold them.
        rx_too_big,
        /// Rx chains returned unused (readable descriptor, outside memory, no end, bad head).
        rx_invalid_chains,
        /// Tap read failures and frames shorter than the header.
        rx_errors,
        /// Tx chains dropped: device-writable descriptor, shorter than the header, longer than
        /// [`MAX_TX_LEN`], outside guest memory, no end, or bad head index.
        tx_malformed,
        /// Tap writes that would block (the frame is kept and written later).
        tx_deferred,
        /// Frames the tap refused (dropped).
        tx_errors,
        /// Frames still pending (either direction) when the device was reset.
        dropped_on_reset,
    }
}

/// The `TUN_F_*` offloads matching what the driver acked for the tap -> guest direction.
/// Inconsistent combinations (TSO without GUEST_CSUM, ECN without TSO) are left out.
pub fn tun_offloads_for(acked: u64) -> u32 {
    use features::*;
    if acked & GUEST_CSUM == 0 {
        return 0;
    }
    let mut f = TUN_F_CSUM;
    if acked & GUEST_TSO4 != 0 {
        f |= TUN_F_TSO4;
    }
    if acked & GUEST_TSO6 != 0 {
        f |= TUN_F_TSO6;
    }
    if acked & GUEST_ECN != 0 && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        f |= TUN_F_TSO_ECN;
    }
    if acked & GUEST_UFO != 0 {
        f |= TUN_F_UFO;
    }
    f
}

/// The feature bits offered for a tap supporting the `TUN_F_*` offloads `tun`.
pub fn features_for(tun: u32, mac: bool) -> u64 {
    use features::*;
    let mut f = VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX | MRG_RXBUF | STATUS;
    if mac {
        f |= MAC;
    }
    if tun & TUN_F_CSUM != 0 {
        f |= CSUM | GUEST_CSUM;
        if tun & TUN_F_TSO4 != 0 {
            f |= GUEST_TSO4 | HOST_TSO4;
        }
        if tun & TUN_F_TSO6 != 0 {
            f |= GUEST_TSO6 | HOST_TSO6;
        }
        if tun & TUN_F_TSO_ECN != 0 && tun & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            f |= GUEST_ECN | HOST_ECN;
        }
        if tun & TUN_F_UFO != 0 {
            f |= GUEST_UFO | HOST_UFO;
        }
    }
    f
}

/// The virtio-net device. `T` is the tap; [`Net::new`] opens a real one.
pub struct Net<T: TapIo + AsRawFd + Send + 'static = Tap> {
    /// Named `virtio-net-<tap>`, also the worker thread's name.
    common: VirtioCommon,
    /// Parked here while no worker runs; the worker owns it while active.
    backend: Option<NetBackend<T>>,
    stats: Arc<NetStats>,
    mac: Option<[u8; 6]>,
    offloads: u32,
    tap_name: String,
    worker: Option<WorkerThread<Option<NetBackend<T>>>>,
}

impl<T: TapIo + AsRawFd + Send + 'static> std::fmt::Debug for Net<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.debug_struct(f, "Net").finish()
    }
}

impl Net<Tap> {
    /// Opens the tap and builds the device (see [`NetError`] for what can go wrong).
    pub fn new(cfg: NetConfig) -> Result<Net<Tap>, NetError> {
        if let Some(mac) = &cfg.mac {
            check_mac(mac)?;
        }
        let tap = Tap::open(&cfg.tap)?;
        Net::with_tap(tap, cfg.mac)
    }
}

fn check_mac(mac: &[u8; 6]) -> Result<(), NetError> {
    if mac[0] & 1 != 0 || mac.iter().all(|&b| b == 0) {
        return Err(NetError::InvalidMac {
            mac: format_mac(mac),
        });
    }
    Ok(())
}

impl<T: TapIo + AsRawFd + Send + 'static> Net<T> {
    /// Builds the device over an open tap.
    pub fn with_tap(tap: T, mac: Option<[u8; 6]>) -> Result<Net<T>, NetError> {
        if let Some(mac) = &mac {
            check_mac(mac)?;
        }
        let offloads = tap.supported_offloads();
        let tap_name = tap.name().to_string();
        let backend = NetBackend::new(tap);
        let mut config = [0u8; CONFIG_SIZE];
        if let Some(mac) = &mac {
            config[0..6].copy_from_slice(mac);
        }
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let stats = backend.stats().clone();
        // The mac is read-only for VERSION_1 drivers; nothing else is writable.
        let common = VirtioCommon::new(
            format!("virtio-net-{tap_name}"),
            TYPE_NET,
            features_for(offloads, mac.is_some()),
            &[QUEUE_SIZE, QUEUE_SIZE],
        )
        .with_config(&config)
        .with_metrics(stats.clone());
        Ok(Net {
            common,
            backend: Some(backend),
            stats,
            mac,
            offloads,
            tap_name,
            worker: None,
        })
    }

    /// Frame counters (shared with the worker).
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// The worker thread's name.
    pub fn name(&self) -> &str {
        self.common.name()
    }

    /// The tap interface's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// `TUN_F_*` offloads the tap supports (the probe at open).
    pub fn tap_offloads(&self) -> u32 {
        self.offloads
    }

    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The features the driver accepted (0 before FEATURES_OK and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    pub fn is_active(&self) -> bool {
        self.common.is_active()
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> VirtioDeviceBase for Net<T> {
    crate::virtio_common_accessors!(common);

    fn stop(&mut self) {
        let worker = self.worker.take();
        if let Some(mut backend) = worker.and_then(WorkerThread::stop).flatten() {
            backend.reset_queues();
            // Until the next driver says what it accepts: plain frames only.
            let _ = backend.tap_mut().set_offloads(0);
            self.backend = Some(backend);
        }
    }

    fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
        let ([rx, tx], [rx_notify, tx_notify]) = split_queues(act.queues)?;
        // Before the tap is taken, so that a failure leaves it where it is.
        let stop = WorkerStop::new().map_err(ActivateError::Worker)?;
        let Some(mut backend) = self.backend.take() else {
            return Err(ActivateError::Other(format!(
                "{}: the tap was lost when an earlier worker died",
                self.common.name()
            )));
        };
        let acked = self.common.acked_features();
        backend.reset_queues();
        backend.set_mrg_rxbuf(acked & features::MRG_RXBUF != 0);
        let tun = tun_offloads_for(acked);
        if let Err(e) = backend.tap_mut().set_offloads(tun) {
            self.backend = Some(backend);
            return Err(ActivateError::Other(format!(
                "{}: tap {:?} refused the offloads the driver accepted (TUNSETOFFLOAD {tun:#x}): {e}",
                self.common.name(), self.tap_name
            )));
        }
        let worker = Worker {
            tap_fd: backend.tap().as_raw_fd(),
            backend,
            rx,
            tx,
            mem: act.mem,
            rx_notify,
            tx_notify,
            interrupt: act.interrupt,
            tap_events: EventSet::empty(),
            rx_paused: false,
            tx_blocked: false,
            tap_error: false,
            name: self.common.name().to_string(),
        };
        // The tap comes back through the join handle; if spawning fails the closure (and the
        // tap in it) is dropped: spawning only fails when the host is out of threads.
        let thread = stop.spawn_event_loop(self.common.name(), worker);
        self.worker = Some(thread.map_err(ActivateError::Worker)?);
        Ok(())
    }
}

impl<T: TapIo + AsRawFd + Send + 'static> Drop for Net<T> {
    fn drop(&mut self) {
        self.reset();
    }
}
