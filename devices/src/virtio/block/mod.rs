//! virtio-blk (virtio 1.2, section 5.2) over a raw image file or a host block device.
//!
//! The device is split in layers, one module each, so that everything a guest can influence
//! is testable and fuzzable without threads or KVM:
//!
//! - `request`: [`parse_request`] turns one descriptor chain into a validated [`Request`] (or
//!   a [`RequestError`] that says whether a status byte can still be written);
//! - `disk`, the I/O backend: [`Disk`] executes requests against the image with positional
//!   I/O straight between the file and guest memory ([`Disk::process_chain`]), and
//!   [`process_queue`] drains a queue;
//! - this module: [`Block`] is the [`super::VirtioDevice`] (through [`VirtioDeviceBase`]):
//!   feature bits, config space, activation;
//! - `worker`: the device's thread, an `event_manager::EventManager` watching the queue's
//!   notify eventfd ([`super::worker::run_event_loop`]);
//! - `fuzz` (with the `test-utils` feature, and in tests): the harness the `blk_request` fuzz
//!   target and a PRNG-driven unit test share.
//!
//! Hostile guests: every descriptor is checked (direction, length, inside guest memory), a chain
//! that does not end (loop, longer than the queue, broken indirect table) is returned with used
//! length 0, and sector arithmetic is overflow-checked. Nothing here panics on guest input.
//!
//! Layout accepted: the header (type, reserved, sector) in the first descriptor (driver-readable,
//! at least 16 bytes), data in the descriptors in between, and the status byte in the last
//! descriptor (device-writable, at least 1 byte; the status is its *last* byte, which is where
//! virtio puts it whatever the framing; drivers use a 1-byte descriptor).
//!
//! Image size: an image whose size is not a multiple of 512 is refused with a message that says
//! how to pad it (rounding down would silently hide the tail from the guest).

mod disk;
#[cfg(any(test, feature = "test-utils"))]
pub mod fuzz;
mod request;
#[cfg(test)]
mod tests;
mod worker;

pub use disk::{process_queue, Disk};
pub use request::{parse_request, DataBuf, Request, RequestError, RequestErrorKind, RequestType};

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::{
    split_queues, ActivateError, Activation, VirtioCommon, VirtioDeviceBase, WorkerStop,
    WorkerThread, TYPE_BLOCK, VIRTIO_F_VERSION_1,
};
use worker::Worker;

/// Sector size of the virtio-blk protocol (and the block size we report).
pub const SECTOR_SIZE: u64 = 512;
const SECTOR_SHIFT: u32 = 9;
/// Maximum (and offered) size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Maximum number of data segments in a request (config `seg_max`).
pub const SEG_MAX: u32 = 128;
/// Maximum size of one data descriptor (config `size_max`); larger ones fail with IOERR.
pub const SIZE_MAX: u32 = 1 << 20;
/// Config `max_discard_sectors` / `max_write_zeroes_sectors` (one segment, just under 4 GiB).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX >> SECTOR_SHIFT;
/// Config `max_write_zeroes_sectors`.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = u32::MAX >> SECTOR_SHIFT;
/// Config `discard_sector_alignment`, in sectors (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Size of the request header (`struct virtio_blk_outhdr`).
pub const HEADER_SIZE: u32 = 16;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_SIZE: u64 = 16;
/// Bytes of config space we implement (up to and including `unused1`, virtio 1.2 5.2.4).
pub const CONFIG_SIZE: usize = 60;
/// Longest chain accepted, also through an indirect table (a driver must not exceed the
/// queue size).
const MAX_CHAIN_LEN: usize = QUEUE_SIZE as usize;

const VIRTIO_RING_F_EVENT_IDX_BIT: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// What to open and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image file or host block device.
    pub path: PathBuf,
    /// Open read-only and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Answer to GET_ID (at most 20 bytes; shorter ids are NUL padded). None: 20 NUL bytes.
    pub id: Option<String>,
    /// Open with O_DIRECT (bypass the host page cache). Needs a file system that supports it;
    /// guest buffers that are not suitably aligned are served through a buffered descriptor.
    pub direct_io: bool,
}

/// Why a disk cannot be opened. Each message names the path and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk image {path} does not exist: check the path, or create an image (e.g. `truncate -s 1G {path}`)")]
    NotFound { path: PathBuf },
    #[error("disk image {path} is a {kind}, not a regular file or block device: point the disk at an image file or a block device")]
    NotADisk { path: PathBuf, kind: &'static str },
    #[error(
        "permission denied opening disk image {path} {mode}: fix its permissions or owner{hint}"
    )]
    PermissionDenied {
        path: PathBuf,
        mode: &'static str,
        hint: &'static str,
    },
    #[error("disk image {path} is on a read-only file system: set read_only for this disk")]
    ReadOnlyFileSystem { path: PathBuf },
    #[error(
        "disk id {id:?} for {path} is {len} bytes; virtio-blk ids are at most 20 bytes: shorten it"
    )]
    IdTooLong {
        path: PathBuf,
        id: String,
        len: usize,
    },
    #[error("disk image {path} is {size} bytes, not a multiple of 512: pad it to {padded} bytes (`truncate -s {padded} {path}`)")]
    UnalignedSize {
        path: PathBuf,
        size: u64,
        padded: u64,
    },
    #[error("the file system of disk image {path} does not support O_DIRECT: turn direct_io off for this disk")]
    DirectIoUnsupported { path: PathBuf },
    #[error("disk image {path} is locked by another process (another VM?): stop it, or open the image read-only in both")]
    Locked { path: PathBuf },
    #[error("cannot {op} disk image {path}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

crate::virtio::device_stats! {
    /// Counters, updated by the worker and readable at any time.
    pub struct BlockStats / BlockStatsSnapshot {
        /// Descriptor chains taken from the queue.
        requests,
        /// Bytes read from the disk into the guest (IN).
        bytes_read,
        /// Bytes written from the guest to the disk (OUT).
        bytes_written,
        /// Requests completed with a status other than OK.
        errors,
        /// Chains returned with used length 0 because no status byte could be written (or dropped
        /// because their head index was out of range).
        invalid_chains,
    }
}

static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

/// The virtio-blk device.
pub struct Block {
    /// Named `virtio-blk-<id or index>`, also the worker thread's name.
    common: VirtioCommon,
    /// Parked here while no worker runs; the worker owns it while active.
    disk: Option<Disk>,
    stats: Arc<BlockStats>,
    /// Stopped and joined by a reset, or when the device is dropped (WorkerThread's Drop).
    worker: Option<WorkerThread<Option<Disk>>>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.common.debug_struct(f, "Block").finish()
    }
}

impl Block {
    pub fn new(cfg: BlockConfig) -> Result<Block, BlockError> {
        let disk = Disk::open(&cfg)?;
        let stats = disk.stats().clone();
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        let suffix = match &cfg.id {
            Some(id) if !id.is_empty() => id
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                .collect(),
            _ => index.to_string(),
        };

        let bit = |b: u32| 1u64 << b;
        let mut features = VIRTIO_F_VERSION_1
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | VIRTIO_RING_F_EVENT_IDX_BIT
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if cfg.read_only {
            features |= bit(VIRTIO_BLK_F_RO);
        } else {
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }

        // Nothing in the config space is writable (CONFIG_WCE is not offered).
        let common = VirtioCommon::new(
            format!("virtio-blk-{suffix}"),
            TYPE_BLOCK,
            features,
            &[QUEUE_SIZE],
        )
        .with_config(&build_config(disk.capacity_sectors()))
        .with_metrics(stats.clone());
        Ok(Block {
            common,
            disk: Some(disk),
            stats,
            worker: None,
        })
    }

    /// Request counters (shared with the worker).
    pub fn stats(&self) -> &BlockStats {
        &self.stats
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        let capacity = self.common.config().get(0..8);
        u64::from_le_bytes(capacity.and_then(|b| b.try_into().ok()).unwrap_or_default())
    }

    /// The worker thread's name.
    pub fn name(&self) -> &str {
        self.common.name()
    }

    pub fn is_active(&self) -> bool {
        self.common.is_active()
    }
}

/// Config space (virtio 1.2, 5.2.4), little-endian.
fn build_config(nsectors: u64) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &nsectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
                                     // 16: geometry (not offered)
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
                                                  // 24: topology (not offered); 32: writeback (CONFIG_WCE not offered)
    put(34, &1u16.to_le_bytes()); // num_queues
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &1u32.to_le_bytes()); // max_discard_seg
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDeviceBase for Block {
    crate::virtio_common_accessors!(common);

    fn stop(&mut self) {
        if let Some(disk) = self.worker.take().and_then(WorkerThread::stop) {
            self.disk = disk;
        }
    }

    fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
        let ([queue], [notify]) = split_queues(act.queues)?;
        // Before the disk is taken, so that a failure leaves it where it is.
        let stop = WorkerStop::new().map_err(ActivateError::Worker)?;
        let Some(disk) = self.disk.take() else {
            return Err(ActivateError::Other(format!(
                "{}: the disk was lost when an earlier worker died",
                self.common.name()
            )));
        };
        let worker = Worker {
            disk,
            queue,
            mem: act.mem,
            notify,
            interrupt: act.interrupt,
            name: self.common.name().to_string(),
        };
        // The disk comes back through the join handle; if spawning fails the closure (and the
        // disk in it) is dropped, so reopening would be needed: spawning only fails when the
        // host is out of threads.
        let thread = stop.spawn_event_loop(self.common.name(), worker);
        self.worker = Some(thread.map_err(ActivateError::Worker)?);
        Ok(())
    }
}
