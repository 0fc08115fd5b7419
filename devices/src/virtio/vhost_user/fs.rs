//! virtio-fs (virtio 1.2, section 5.11) through a vhost-user backend (virtiofsd).
//!
//! Queues: hiprio (0) and `num_request_queues` request queues. The config space (tag and
//! number of request queues) is ours, built from [`VhostUserFsConfig`]; the backend's is not
//! consulted. No DAX window (no shared-memory region), no notification queue.
//!
//! While virtiofsd is gone, [`FuseStandby`] answers every request on a request queue with a
//! FUSE error reply (ENOTCONN, what a FUSE mount whose daemon died returns), and completes
//! hiprio requests (FORGETs, which have no reply) empty.

use std::path::PathBuf;
use std::sync::Arc;

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

use super::{FrontendConfig, FrontendError, StandbyResponder, VhostUserHandle, VhostUserStats};
use crate::virtio::{
    ActivateError, Activation, GuestMemoryMmap, QueueCheck, VirtioCommon, VirtioDeviceBase,
    TYPE_FS, VIRTIO_F_VERSION_1,
};

/// Longest tag (virtio 1.2, 5.11.4: 36 bytes, NUL padded, not NUL terminated when full).
pub const TAG_LEN: usize = 36;
/// Bytes of config space: tag + le32 num_request_queues.
pub const CONFIG_SIZE: usize = TAG_LEN + 4;
/// Default (and virtiofsd's maximum) queue size.
pub const DEFAULT_QUEUE_SIZE: u16 = 1024;
/// Largest split-ring queue.
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// vhost-user's limit on rings per device, hiprio included.
pub const MAX_QUEUES: usize = 0x100;

/// Virtio features we can drive through a backend.
const SUPPORTED_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// One virtio-fs device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserFsConfig {
    /// virtiofsd's `--socket-path`.
    pub socket: PathBuf,
    /// What the guest mounts (`mount -t virtiofs TAG /mnt`), 1 to 36 bytes.
    pub tag: String,
    /// Request queues besides hiprio (at least 1).
    pub num_request_queues: u16,
    /// Size of every queue (a power of two, at most 32768; virtiofsd handles up to 1024).
    pub queue_size: u16,
}

impl VhostUserFsConfig {
    /// A config with the defaults: one request queue of 1024 entries.
    pub fn new(socket: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        VhostUserFsConfig {
            socket: socket.into(),
            tag: tag.into(),
            num_request_queues: 1,
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }
}

impl Default for VhostUserFsConfig {
    fn default() -> Self {
        Self::new(PathBuf::new(), String::new())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag is empty: give the share a tag (1 to 36 bytes) to mount it by")]
    EmptyTag,
    #[error("virtio-fs tag {tag:?} is {len} bytes; tags are at most 36 bytes: shorten it")]
    TagTooLong { tag: String, len: usize },
    #[error("virtio-fs {tag:?}: num_request_queues is 0: use at least 1")]
    NoRequestQueues { tag: String },
    #[error("virtio-fs {tag:?}: {num} request queues is too many for vhost-user: use at most {max}", max = MAX_QUEUES - 1)]
    TooManyQueues { tag: String, num: u16 },
    #[error("virtio-fs {tag:?}: queue_size {size} is not a power of two between 1 and 32768: use e.g. 1024")]
    BadQueueSize { tag: String, size: u16 },
    #[error(transparent)]
    Backend(#[from] FrontendError),
}

/// The virtio-fs device: config space here, everything else in the backend.
#[derive(Debug)]
pub struct VhostUserFs {
    /// Named by the handle's label; offers the backend's features; config: tag and
    /// num_request_queues (read-only). Queues are checked by count only: the handle checks
    /// the memory table before the rings.
    common: VirtioCommon,
    handle: VhostUserHandle,
    tag: String,
}

impl VhostUserFs {
    /// Checks the config, connects to the backend and negotiates.
    pub fn new(cfg: VhostUserFsConfig) -> Result<Self, FsError> {
        let config = config_space(&cfg.tag, cfg.num_request_queues)?;
        let tag = cfg.tag.clone();
        if cfg.queue_size == 0
            || !cfg.queue_size.is_power_of_two()
            || cfg.queue_size > MAX_QUEUE_SIZE
        {
            return Err(FsError::BadQueueSize {
                tag,
                size: cfg.queue_size,
            });
        }
        let num_queues = usize::from(cfg.num_request_queues) + 1;
        if num_queues > MAX_QUEUES {
            return Err(FsError::TooManyQueues {
                tag,
                num: cfg.num_request_queues,
            });
        }
        let handle = VhostUserHandle::new(FrontendConfig {
            socket: cfg.socket,
            label: format!("virtio-fs {tag:?}"),
            num_queues,
            supported_features: SUPPORTED_FEATURES,
            protocol_features: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG,
        })?;
        let common = VirtioCommon::new(
            handle.label(),
            TYPE_FS,
            handle.features(),
            &vec![cfg.queue_size; num_queues],
        )
        .with_config(&config)
        .with_metrics(handle.stats_arc())
        .with_queue_check(QueueCheck::CountOnly);
        Ok(VhostUserFs {
            common,
            handle,
            tag,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The generic frontend (protocol features, connection state).
    pub fn handle(&self) -> &VhostUserHandle {
        &self.handle
    }

    pub fn stats(&self) -> &VhostUserStats {
        self.handle.stats()
    }
}

/// The config space for `tag` (checked) and `num_request_queues` (checked).
pub fn config_space(tag: &str, num_request_queues: u16) -> Result<[u8; CONFIG_SIZE], FsError> {
    if tag.is_empty() {
        return Err(FsError::EmptyTag);
    }
    if tag.len() > TAG_LEN {
        return Err(FsError::TagTooLong {
            tag: tag.to_string(),
            len: tag.len(),
        });
    }
    if num_request_queues == 0 {
        return Err(FsError::NoRequestQueues {
            tag: tag.to_string(),
        });
    }
    let mut config = [0u8; CONFIG_SIZE];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&u32::from(num_request_queues).to_le_bytes());
    Ok(config)
}

impl VirtioDeviceBase for VhostUserFs {
    crate::virtio_common_accessors!(common);

    fn stop(&mut self) {
        self.handle.reset();
    }

    fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
        let acked = self.common.acked_features();
        let responder = Arc::new(FuseStandby);
        self.handle
            .activate(&act.mem, acked, act.interrupt, act.queues, responder)
    }
}

/// Bytes of `struct fuse_in_header` we need: len, opcode, unique.
const FUSE_IN_HEADER_PREFIX: usize = 16;
/// `struct fuse_out_header`: len (u32), error (i32, a negated errno), unique (u64).
pub const FUSE_OUT_HEADER_SIZE: usize = 16;
/// What a FUSE mount whose daemon died returns: "Transport endpoint is not connected".
pub const STANDBY_ERRNO: i32 = libc::ENOTCONN;

/// Answers FUSE requests while no virtiofsd serves the device; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuseStandby;

impl StandbyResponder for FuseStandby {
    fn fail_request(
        &self,
        queue: usize,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        if queue == 0 {
            // hiprio: FORGET and BATCH_FORGET, which the driver expects no reply to.
            return 0;
        }
        fuse_error_reply(mem, chain, STANDBY_ERRNO).unwrap_or(0)
    }
}

/// Writes a `fuse_out_header` with `-errno` for the request in `chain` into its writable
/// descriptors. None if the chain has no complete request header or no room for the reply
/// (a guest bug: the request is completed empty then).
pub fn fuse_error_reply(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    errno: i32,
) -> Option<u32> {
    let mut header = [0u8; FUSE_IN_HEADER_PREFIX];
    let mut got = 0;
    let mut out = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            out.push((desc.addr(), desc.len()));
        } else if got < header.len() && out.is_empty() {
            let n = (desc.len() as usize).min(header.len() - got);
            mem.read_slice(&mut header[got..got + n], desc.addr())
                .ok()?;
            got += n;
        }
    }
    if got < header.len() {
        return None;
    }
    let mut reply = [0u8; FUSE_OUT_HEADER_SIZE];
    reply[0..4].copy_from_slice(&(FUSE_OUT_HEADER_SIZE as u32).to_le_bytes());
    reply[4..8].copy_from_slice(&errno.wrapping_neg().to_le_bytes());
    reply[8..16].copy_from_slice(&header[8..16]);
    let mut written = 0;
    for (addr, len) in out {
        if written == reply.len() {
            break;
        }
        let n = (len as usize).min(reply.len() - written);
        mem.write_slice(&reply[written..written + n], addr).ok()?;
        written += n;
    }
    (written == reply.len()).then_some(written as u32)
}
