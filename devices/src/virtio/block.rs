//! virtio-blk (virtio 1.2, section 5.2) over a raw image file or a host block device.
//!
//! The device is split in three layers so that everything a guest can influence is testable
//! and fuzzable without threads or KVM:
//!
//! - [`parse_request`] turns one descriptor chain into a validated [`Request`] (or a
//!   [`RequestError`] that says whether a status byte can still be written);
//! - [`Disk`] executes requests against the image with positional I/O straight between the
//!   file and guest memory ([`Disk::process_chain`]), and [`process_queue`] drains a queue;
//! - [`Block`] is the [`super::VirtioDevice`] (through [`VirtioDeviceBase`]): feature bits,
//!   config space, and the worker thread that runs an `event_manager::EventManager` watching
//!   the queue's notify eventfd ([`super::worker::run_event_loop`]).
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

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{
    drain_queue, signal_used, split_queues, ActivateError, Activation, EmWorker, GuestMemoryMmap,
    Interrupt, Round, VirtioCommon, VirtioDeviceBase, WorkerStop, WorkerThread, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

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

/// Counters, updated by the worker and readable at any time.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Descriptor chains taken from the queue.
    pub requests: AtomicU64,
    /// Bytes read from the disk into the guest (IN).
    pub bytes_read: AtomicU64,
    /// Bytes written from the guest to the disk (OUT).
    pub bytes_written: AtomicU64,
    /// Requests completed with a status other than OK.
    pub errors: AtomicU64,
    /// Chains returned with used length 0 because no status byte could be written (or dropped
    /// because their head index was out of range).
    pub invalid_chains: AtomicU64,
}

/// A plain copy of [`BlockStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub errors: u64,
    pub invalid_chains: u64,
}

impl BlockStats {
    pub fn snapshot(&self) -> BlockStatsSnapshot {
        BlockStatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            invalid_chains: self.invalid_chains.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------------------------

/// The request types we execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

/// One data buffer of a request, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request. Data buffers have the right direction for `kind`, are inside guest
/// memory and no larger than [`SIZE_MAX`]; the status byte is writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    pub data: Vec<DataBuf>,
    /// Sum of the data buffers' lengths.
    pub data_len: u64,
    /// Guest address of the status byte.
    pub status_addr: GuestAddress,
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestErrorKind {
    // Without a status byte: the chain goes back with used length 0.
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("descriptor chain does not end (loop, too long, bad next index or indirect table)")]
    UnterminatedChain,
    #[error("last descriptor is not device-writable: no status byte")]
    StatusNotWritable,
    #[error("status descriptor is empty")]
    StatusEmpty,
    #[error("status byte is outside guest memory")]
    StatusOutOfMemory,
    // With a status byte: IOERR (or UNSUPP).
    #[error("chain has no header descriptor")]
    MissingHeader,
    #[error("header descriptor is device-writable")]
    HeaderWritable,
    #[error("header descriptor is {0} bytes, shorter than 16")]
    HeaderTooShort(u32),
    #[error("header is outside guest memory")]
    HeaderOutOfMemory,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("data descriptor has the wrong direction for the request type")]
    DataDirection,
    #[error("data descriptor is outside guest memory")]
    DataOutOfMemory,
    #[error("data descriptor of {0} bytes exceeds size_max")]
    DataTooLarge(u32),
    #[error("{0} data descriptors exceed seg_max")]
    TooManySegments(usize),
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
    #[error("discard/write-zeroes data length {0} is not one 16-byte segment")]
    BadSegmentLength(u64),
}

/// A chain that cannot be executed. `status` is where the status byte goes, if the chain has
/// a usable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub status: Option<GuestAddress>,
}

impl RequestError {
    /// The virtio status to report for it.
    pub fn status_code(&self) -> u8 {
        match self.kind {
            RequestErrorKind::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    len == 0 || GuestMemoryBackend::check_range(mem, addr, len as usize)
}

/// Reads and validates the chain (virtio 1.2, 5.2.6). Never touches memory outside the chain's
/// buffers, and reads each descriptor once.
pub fn parse_request(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Request, RequestError> {
    let mem: &GuestMemoryMmap = chain.memory();
    let no_status = |kind| RequestError { kind, status: None };

    // Collect the chain, checking it ends with a descriptor without NEXT. The iterator stops
    // silently on loops (ttl), bad next indices, unreadable or nested indirect tables.
    let mut descs: Vec<Descriptor> = Vec::with_capacity(4);
    let mut terminated = false;
    for desc in chain.clone() {
        if descs.len() == MAX_CHAIN_LEN {
            return Err(no_status(RequestErrorKind::UnterminatedChain));
        }
        terminated = !desc.has_next();
        descs.push(desc);
    }
    let Some(last) = descs.last() else {
        return Err(no_status(RequestErrorKind::EmptyChain));
    };
    if !terminated {
        return Err(no_status(RequestErrorKind::UnterminatedChain));
    }

    // Status: the last byte of the last descriptor, which must be device-writable.
    if !last.is_write_only() {
        return Err(no_status(RequestErrorKind::StatusNotWritable));
    }
    if last.len() == 0 {
        return Err(no_status(RequestErrorKind::StatusEmpty));
    }
    let status_addr = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|a| in_memory(mem, *a, 1))
        .ok_or(no_status(RequestErrorKind::StatusOutOfMemory))?;
    let fail = |kind| RequestError {
        kind,
        status: Some(status_addr),
    };

    // Header.
    if descs.len() < 2 {
        return Err(fail(RequestErrorKind::MissingHeader));
    }
    let header = descs[0];
    if header.is_write_only() {
        return Err(fail(RequestErrorKind::HeaderWritable));
    }
    if header.len() < HEADER_SIZE {
        return Err(fail(RequestErrorKind::HeaderTooShort(header.len())));
    }
    let mut raw = [0u8; HEADER_SIZE as usize];
    if !in_memory(mem, header.addr(), HEADER_SIZE)
        || mem.read_slice(&mut raw, header.addr()).is_err()
    {
        return Err(fail(RequestErrorKind::HeaderOutOfMemory));
    }
    let req_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let (kind, device_writes) = match req_type {
        VIRTIO_BLK_T_IN => (RequestType::In, true),
        VIRTIO_BLK_T_OUT => (RequestType::Out, false),
        VIRTIO_BLK_T_FLUSH => (RequestType::Flush, false),
        VIRTIO_BLK_T_GET_ID => (RequestType::GetId, true),
        VIRTIO_BLK_T_DISCARD => (RequestType::Discard, false),
        VIRTIO_BLK_T_WRITE_ZEROES => (RequestType::WriteZeroes, false),
        other => return Err(fail(RequestErrorKind::Unsupported(other))),
    };

    // Data descriptors (FLUSH has none; any it carries are ignored, never touched).
    let data_descs = &descs[1..descs.len() - 1];
    let mut data = Vec::new();
    let mut data_len = 0u64;
    if kind != RequestType::Flush {
        data.reserve(data_descs.len());
        for d in data_descs {
            if d.is_write_only() != device_writes {
                return Err(fail(RequestErrorKind::DataDirection));
            }
            if d.len() > SIZE_MAX {
                return Err(fail(RequestErrorKind::DataTooLarge(d.len())));
            }
            if d.len() == 0 {
                continue;
            }
            if !in_memory(mem, d.addr(), d.len()) {
                return Err(fail(RequestErrorKind::DataOutOfMemory));
            }
            data.push(DataBuf {
                addr: d.addr(),
                len: d.len(),
            });
            data_len += u64::from(d.len());
        }
        if data.len() > SEG_MAX as usize {
            return Err(fail(RequestErrorKind::TooManySegments(data.len())));
        }
    }
    match kind {
        RequestType::In | RequestType::Out if data_len & (SECTOR_SIZE - 1) != 0 => {
            return Err(fail(RequestErrorKind::NotSectorMultiple(data_len)));
        }
        // max_discard_seg = max_write_zeroes_seg = 1.
        RequestType::Discard | RequestType::WriteZeroes if data_len != SEGMENT_SIZE => {
            return Err(fail(RequestErrorKind::BadSegmentLength(data_len)));
        }
        _ => {}
    }

    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status_addr,
    })
}

// ---------------------------------------------------------------------------------------------
// The disk and request execution
// ---------------------------------------------------------------------------------------------

/// Why an executed request failed (reported to the guest as a status code).
#[derive(Debug)]
enum ExecError {
    /// VIRTIO_BLK_S_IOERR.
    IoErr,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupp,
}

impl ExecError {
    fn code(&self) -> u8 {
        match self {
            ExecError::IoErr => VIRTIO_BLK_S_IOERR as u8,
            ExecError::Unsupp => VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// An open disk image and what the guest may do with it.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// Buffered descriptor next to an O_DIRECT `file`, for I/O the kernel refuses as unaligned.
    buffered: Option<File>,
    read_only: bool,
    nsectors: u64,
    id: [u8; ID_BYTES],
    stats: Arc<BlockStats>,
    /// fallocate modes found unsupported, so they are not tried again.
    no_punch_hole: bool,
    no_zero_range: bool,
}

fn describe_file_type(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

impl Disk {
    /// Opens the image as `cfg` says (see [`BlockError`] for what can go wrong).
    pub fn open(cfg: &BlockConfig) -> Result<Disk, BlockError> {
        let path = &cfg.path;
        let pb = || path.to_path_buf();
        let mut id = [0u8; ID_BYTES];
        if let Some(s) = &cfg.id {
            if s.len() > ID_BYTES {
                return Err(BlockError::IdTooLong {
                    path: pb(),
                    id: s.clone(),
                    len: s.len(),
                });
            }
            id[..s.len()].copy_from_slice(s.as_bytes());
        }

        // Check the type before opening: opening a FIFO would block.
        let meta = std::fs::metadata(path).map_err(|e| open_error(path, cfg, e, "inspect"))?;
        let ft = meta.file_type();
        if !ft.is_file() && !ft.is_block_device() {
            return Err(BlockError::NotADisk {
                path: pb(),
                kind: describe_file_type(ft),
            });
        }

        let open = |direct: bool| {
            let mut opts = OpenOptions::new();
            opts.read(true).write(!cfg.read_only);
            if direct {
                opts.custom_flags(libc::O_DIRECT);
            }
            opts.open(path)
        };
        let file = open(cfg.direct_io).map_err(|e| {
            if cfg.direct_io && e.raw_os_error() == Some(libc::EINVAL) {
                BlockError::DirectIoUnsupported { path: pb() }
            } else {
                open_error(path, cfg, e, "open")
            }
        })?;
        let buffered = if cfg.direct_io {
            Some(open(false).map_err(|e| open_error(path, cfg, e, "open"))?)
        } else {
            None
        };

        // Two writers on one image corrupt it: take an advisory lock like other VMMs do.
        let op = if cfg.read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(BlockError::Locked { path: pb() });
            }
            // Some file systems do not support locks: carry on without.
        }

        let size = (&file).seek(SeekFrom::End(0)).map_err(|e| BlockError::Io {
            path: pb(),
            op: "find the size of",
            source: e,
        })?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::UnalignedSize {
                path: pb(),
                size,
                padded: size.div_ceil(SECTOR_SIZE) * SECTOR_SIZE,
            });
        }

        Ok(Disk {
            file,
            buffered,
            read_only: cfg.read_only,
            nsectors: size / SECTOR_SIZE,
            id,
            stats: Arc::new(BlockStats::default()),
            no_punch_hole: false,
            no_zero_range: false,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.nsectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn stats(&self) -> &Arc<BlockStats> {
        &self.stats
    }

    /// Byte offset of `sector` if `[sector, sector + len bytes)` lies inside the disk.
    fn byte_range(&self, sector: u64, len: u64) -> Result<u64, ExecError> {
        let end_sector = len
            .div_ceil(SECTOR_SIZE)
            .checked_add(sector)
            .ok_or(ExecError::IoErr)?;
        if end_sector > self.nsectors {
            return Err(ExecError::IoErr);
        }
        // Cannot overflow: sector < nsectors = size / 512.
        Ok(sector << SECTOR_SHIFT)
    }

    /// Takes one chain to completion and returns the used length to report (0 when no status
    /// byte could be written).
    pub fn process_chain(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        BlockStats::bump(&self.stats.requests, 1);
        let (status_addr, code, written) = match parse_request(chain) {
            Ok(req) => {
                let (res, written) = self.execute(&req, mem);
                let code = match res {
                    Ok(()) => VIRTIO_BLK_S_OK as u8,
                    Err(e) => e.code(),
                };
                (req.status_addr, code, written)
            }
            Err(
                e @ RequestError {
                    status: Some(addr), ..
                },
            ) => (addr, e.status_code(), 0),
            Err(RequestError { status: None, .. }) => {
                BlockStats::bump(&self.stats.invalid_chains, 1);
                return 0;
            }
        };
        if code != VIRTIO_BLK_S_OK as u8 {
            BlockStats::bump(&self.stats.errors, 1);
        }
        if mem.write_obj(code, status_addr).is_err() {
            BlockStats::bump(&self.stats.invalid_chains, 1);
            return 0;
        }
        written.saturating_add(1)
    }

    /// Executes a validated request; returns the outcome and the number of data bytes written
    /// into guest memory (also on failure, for a partly done read).
    fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap) -> (Result<(), ExecError>, u32) {
        match req.kind {
            RequestType::In => {
                let mut written = 0u32;
                let res = self.read_to_guest(req, mem, &mut written);
                BlockStats::bump(&self.stats.bytes_read, u64::from(written));
                (res, written)
            }
            RequestType::Out => (self.write_from_guest(req, mem), 0),
            RequestType::Flush => (self.flush(), 0),
            RequestType::GetId => self.get_id(req, mem),
            RequestType::Discard | RequestType::WriteZeroes => (self.discard_or_zero(req, mem), 0),
        }
    }

    fn read_to_guest(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap,
        written: &mut u32,
    ) -> Result<(), ExecError> {
        let mut offset = self.byte_range(req.sector, req.data_len)?;
        for buf in &req.data {
            for slice in GuestMemoryBackend::get_slices(mem, buf.addr, buf.len as usize) {
                let slice = slice.map_err(|_| ExecError::IoErr)?;
                let mut done = 0usize;
                while done < slice.len() {
                    let part = slice.offset(done).map_err(|_| ExecError::IoErr)?;
                    let guard = part.ptr_guard_mut();
                    let n = self.positional_io(|fd| {
                        // SAFETY: the pointer and length describe a live guest-memory mapping
                        // (the VolatileSlice guarantees it) that the guest gave us to write.
                        unsafe {
                            libc::pread64(
                                fd,
                                guard.as_ptr().cast(),
                                part.len(),
                                offset as libc::off64_t,
                            )
                        }
                    });
                    let n = match n {
                        Ok(0) | Err(_) => return Err(ExecError::IoErr),
                        Ok(n) => n,
                    };
                    part.bitmap().mark_dirty(0, n);
                    done += n;
                    offset += n as u64;
                    *written = written.saturating_add(n as u32);
                }
            }
        }
        Ok(())
    }

    fn write_from_guest(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Result<(), ExecError> {
        if self.read_only {
            return Err(ExecError::IoErr);
        }
        let mut offset = self.byte_range(req.sector, req.data_len)?;
        for buf in &req.data {
            for slice in GuestMemoryBackend::get_slices(mem, buf.addr, buf.len as usize) {
                let slice = slice.map_err(|_| ExecError::IoErr)?;
                let mut done = 0usize;
                while done < slice.len() {
                    let part = slice.offset(done).map_err(|_| ExecError::IoErr)?;
                    let guard = part.ptr_guard();
                    let n = self.positional_io(|fd| {
                        // SAFETY: the pointer and length describe a live guest-memory mapping.
                        unsafe {
                            libc::pwrite64(
                                fd,
                                guard.as_ptr().cast(),
                                part.len(),
                                offset as libc::off64_t,
                            )
                        }
                    });
                    let n = match n {
                        Ok(0) | Err(_) => return Err(ExecError::IoErr),
                        Ok(n) => n,
                    };
                    done += n;
                    offset += n as u64;
                    BlockStats::bump(&self.stats.bytes_written, n as u64);
                }
            }
        }
        Ok(())
    }

    /// Runs one pread/pwrite, retrying EINTR, and retrying on the buffered descriptor when
    /// O_DIRECT refuses the buffer's alignment.
    fn positional_io(&self, mut op: impl FnMut(libc::c_int) -> libc::ssize_t) -> io::Result<usize> {
        let mut fd = self.file.as_raw_fd();
        loop {
            let r = op(fd);
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = io::Error::last_os_error();
            match (e.raw_os_error(), &self.buffered) {
                (Some(libc::EINTR), _) => continue,
                (Some(libc::EINVAL), Some(b)) if fd != b.as_raw_fd() => fd = b.as_raw_fd(),
                _ => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> Result<(), ExecError> {
        if self.read_only {
            return Ok(());
        }
        // SAFETY: fdatasync on a descriptor we own.
        if unsafe { libc::fdatasync(self.file.as_raw_fd()) } != 0 {
            return Err(ExecError::IoErr);
        }
        Ok(())
    }

    fn get_id(&mut self, req: &Request, mem: &GuestMemoryMmap) -> (Result<(), ExecError>, u32) {
        let mut done = 0usize;
        for buf in &req.data {
            if done == ID_BYTES {
                break;
            }
            let n = (buf.len as usize).min(ID_BYTES - done);
            if mem.write_slice(&self.id[done..done + n], buf.addr).is_err() {
                return (Err(ExecError::IoErr), done as u32);
            }
            done += n;
        }
        (Ok(()), done as u32)
    }

    fn discard_or_zero(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Result<(), ExecError> {
        if self.read_only {
            return Err(ExecError::IoErr);
        }
        // Gather the one 16-byte segment (it may straddle descriptors).
        let mut seg = [0u8; SEGMENT_SIZE as usize];
        let mut filled = 0usize;
        for buf in &req.data {
            let n = (buf.len as usize).min(seg.len() - filled);
            mem.read_slice(&mut seg[filled..filled + n], buf.addr)
                .map_err(|_| ExecError::IoErr)?;
            filled += n;
        }
        if filled != seg.len() {
            return Err(ExecError::IoErr);
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num_sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let discard = req.kind == RequestType::Discard;
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // virtio 1.2 5.2.6.2: unknown flags, and unmap on a discard, are UNSUPP.
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 || (discard && unmap) {
            return Err(ExecError::Unsupp);
        }
        let max = if discard {
            MAX_DISCARD_SECTORS
        } else {
            MAX_WRITE_ZEROES_SECTORS
        };
        if num_sectors > max {
            return Err(ExecError::IoErr);
        }
        let len = u64::from(num_sectors) << SECTOR_SHIFT;
        let offset = self.byte_range(sector, len)?;
        if len == 0 {
            return Ok(());
        }
        if discard {
            // Discard is advisory: a file system without hole punching just keeps the data.
            return match self.fallocate_mode(libc::FALLOC_FL_PUNCH_HOLE, offset, len) {
                Ok(()) => Ok(()),
                Err(e) if is_unsupported(&e) => Ok(()),
                Err(_) => Err(ExecError::IoErr),
            };
        }
        // WRITE_ZEROES: with UNMAP we may deallocate (punch a hole); otherwise keep the blocks
        // allocated (ZERO_RANGE). Fall back to writing zeros.
        if unmap {
            match self.fallocate_mode(libc::FALLOC_FL_PUNCH_HOLE, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if is_unsupported(&e) => {}
                Err(_) => return Err(ExecError::IoErr),
            }
        }
        match self.fallocate_mode(libc::FALLOC_FL_ZERO_RANGE, offset, len) {
            Ok(()) => return Ok(()),
            Err(e) if is_unsupported(&e) => {}
            Err(_) => return Err(ExecError::IoErr),
        }
        self.write_zeros(offset, len)
    }

    fn fallocate_mode(&mut self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let skip = match mode {
            libc::FALLOC_FL_PUNCH_HOLE => &mut self.no_punch_hole,
            _ => &mut self.no_zero_range,
        };
        if *skip {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        loop {
            // SAFETY: fallocate on a descriptor we own; no memory is passed.
            let r = unsafe {
                libc::fallocate64(
                    self.file.as_raw_fd(),
                    mode | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off64_t,
                    len as libc::off64_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) {
                *skip = true;
            }
            return Err(e);
        }
    }

    fn write_zeros(&mut self, mut offset: u64, len: u64) -> Result<(), ExecError> {
        let end = offset + len;
        while offset < end {
            let n = ((end - offset) as usize).min(ZEROS.len());
            let r = self.positional_io(|fd| {
                // SAFETY: ZEROS is a static buffer of at least n bytes.
                unsafe { libc::pwrite64(fd, ZEROS.as_ptr().cast(), n, offset as libc::off64_t) }
            });
            match r {
                Ok(0) | Err(_) => return Err(ExecError::IoErr),
                Ok(w) => offset += w as u64,
            }
        }
        Ok(())
    }
}

fn open_error(path: &Path, cfg: &BlockConfig, e: io::Error, op: &'static str) -> BlockError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => BlockError::NotFound { path },
        io::ErrorKind::PermissionDenied => BlockError::PermissionDenied {
            path,
            mode: if cfg.read_only {
                "read-only"
            } else {
                "read-write"
            },
            hint: if cfg.read_only {
                ""
            } else {
                ", or set read_only for this disk"
            },
        },
        _ if e.raw_os_error() == Some(libc::EROFS) => BlockError::ReadOnlyFileSystem { path },
        _ => BlockError::Io {
            path,
            op,
            source: e,
        },
    }
}

/// Takes every available chain (at most one queue's worth per call), executes it and puts it
/// on the used ring. Returns whether the used ring changed.
pub fn process_queue(disk: &mut Disk, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    let mut used = false;
    for _ in 0..queue.size() {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        if head >= queue.size() {
            // Nothing we could return it as: count it and move on.
            BlockStats::bump(&disk.stats.requests, 1);
            BlockStats::bump(&disk.stats.invalid_chains, 1);
            continue;
        }
        let len = disk.process_chain(chain, mem);
        if queue.add_used(mem, head, len).is_ok() {
            used = true;
        } else {
            // The used ring is not writable (the queue was checked at activation, so only a
            // harness can get here).
            BlockStats::bump(&disk.stats.invalid_chains, 1);
        }
    }
    used
}

// ---------------------------------------------------------------------------------------------
// The virtio device
// ---------------------------------------------------------------------------------------------

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
        f.debug_struct("Block")
            .field("name", &self.common.name())
            .field(
                "features",
                &format_args!("{:#x}", self.common.avail_features()),
            )
            .field("active", &self.common.is_active())
            .finish()
    }
}

impl Block {
    pub fn new(cfg: BlockConfig) -> Result<Block, BlockError> {
        let disk = Disk::open(&cfg)?;
        let stats = disk.stats.clone();
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
        .with_config(&build_config(disk.nsectors))
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
        let Some(disk) = self.disk.take() else {
            return Err(ActivateError::Other(format!(
                "{}: the disk was lost when an earlier worker died",
                self.common.name()
            )));
        };
        let stop = match WorkerStop::new() {
            Ok(stop) => stop,
            Err(e) => {
                self.disk = Some(disk);
                return Err(ActivateError::Worker(e));
            }
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

const TOKEN_NOTIFY: u32 = 0;

struct Worker {
    disk: Disk,
    queue: Queue,
    mem: GuestMemoryMmap,
    notify: EventFd,
    interrupt: Arc<dyn Interrupt>,
    name: String,
}

impl Worker {
    /// Processes the queue until it is empty with notifications enabled, then interrupts the
    /// driver if it asked for it.
    fn handle_queue(&mut self) {
        let (disk, mem) = (&mut self.disk, &self.mem);
        let drain = drain_queue(&mut self.queue, mem, usize::MAX, |q| {
            Round::used(process_queue(disk, q, mem))
        });
        if drain.used && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            signal_used(self.interrupt.as_ref(), &self.name);
        }
    }
}

/// The worker thread's loop: returns the disk so a later activation can use it again.
impl EmWorker for Worker {
    type Output = Disk;
    const STOP_TOKEN: u32 = 1;

    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        // Chains made available before activation (or a kick that raced it), served before
        // the notify eventfd is watched.
        self.handle_queue();
        ops.add(Events::with_data(&self.notify, TOKEN_NOTIFY, EventSet::IN))
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_NOTIFY {
            // Drain the counter (a non-blocking ioeventfd may read EAGAIN: fine).
            let _ = self.notify.read();
            self.handle_queue();
        }
    }

    fn finish(self) -> Disk {
        self.disk
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing harness (shared by fuzz/ and a PRNG-driven unit test)
// ---------------------------------------------------------------------------------------------

/// Queue size the harness uses.
pub const FUZZ_QUEUE_SIZE: u16 = 16;
const FUZZ_DESC_TABLE: u64 = 0;
const FUZZ_AVAIL: u64 = 0x100;
const FUZZ_USED: u64 = 0x200;
const FUZZ_PAYLOAD: u64 = 0x1000;

/// Guest memory of the harness: two adjacent regions (buffers may straddle them), a hole, and
/// a small third region.
pub fn fuzz_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(0x40000), 0x1000),
    ])
    .expect("harness guest memory")
}

/// Interprets `data` as a descriptor table, an avail ring and payload (headers, segments,
/// data) in `mem`, then runs [`process_queue`] over it and checks the invariants that hold
/// whatever the input: it terminates, does not panic, returns at most one used entry per
/// avail entry, and a second pass finds nothing new.
///
/// Input: byte 0 = number of avail entries (mod 17); 16 descriptors of 10 bytes (addr selector
/// u32, length selector u32, flags, next); one head index byte per avail entry; the rest is
/// copied to guest memory at 0x1000 (across the first two regions).
pub fn fuzz_blk_request(disk: &mut Disk, mem: &GuestMemoryMmap, data: &[u8]) {
    let mut input = data.iter().copied();
    let mut byte = || input.next().unwrap_or(0);

    // Clean slate for the rings and the payload area.
    let _ = mem.write_slice(&[0u8; 0x1000], GuestAddress(0));
    let mut at = FUZZ_PAYLOAD;
    while at < 0x20000 {
        let n = ((0x20000 - at) as usize).min(ZEROS.len());
        let _ = mem.write_slice(&ZEROS[..n], GuestAddress(at));
        at += n as u64;
    }
    let _ = mem.write_slice(&ZEROS[..0x1000], GuestAddress(0x40000));

    let n_avail = u16::from(byte()) % (FUZZ_QUEUE_SIZE + 1);
    let mut descs = [(0u32, 0u32, 0u8, 0u8); FUZZ_QUEUE_SIZE as usize];
    for d in descs.iter_mut() {
        let addr = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
        let len = u32::from_le_bytes([byte(), byte(), byte(), byte()]);
        *d = (addr, len, byte(), byte());
    }
    let heads: Vec<u16> = (0..n_avail).map(|_| u16::from(byte()) % 20).collect();
    let payload: Vec<u8> = data
        .iter()
        .copied()
        .skip(1 + 160 + n_avail as usize)
        .collect();

    for (i, &(addr_sel, len_sel, flags, next)) in descs.iter().enumerate() {
        let addr = match addr_sel >> 30 {
            0 | 1 => FUZZ_PAYLOAD + u64::from(addr_sel & 0x1_ffff),
            2 => 0x40000 + u64::from(addr_sel & 0x1fff),
            _ => u64::MAX - u64::from(addr_sel & 0xffff),
        };
        let len = match len_sel >> 30 {
            0 => len_sel & 0x1ff,
            1 => (len_sel & 0x1f) * 512,
            2 => len_sel & 0x3_ffff,
            _ => len_sel,
        };
        let desc = Descriptor::new(addr, len, u16::from(flags & 0x7), u16::from(next) % 20);
        let at = GuestAddress(FUZZ_DESC_TABLE + 16 * i as u64);
        let _ = mem.write_obj(desc, at);
    }
    for (i, h) in heads.iter().enumerate() {
        let _ = mem.write_obj(h.to_le(), GuestAddress(FUZZ_AVAIL + 4 + 2 * i as u64));
    }
    let _ = mem.write_obj(n_avail.to_le(), GuestAddress(FUZZ_AVAIL + 2));
    let room = (0x20000 - FUZZ_PAYLOAD) as usize;
    let _ = mem.write_slice(
        &payload[..payload.len().min(room)],
        GuestAddress(FUZZ_PAYLOAD),
    );

    let mut queue = Queue::new(FUZZ_QUEUE_SIZE).expect("queue");
    queue.set_size(FUZZ_QUEUE_SIZE);
    queue.set_desc_table_address(Some(FUZZ_DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(FUZZ_AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(FUZZ_USED as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(mem));

    process_queue(disk, &mut queue, mem);
    let used: u16 = mem
        .read_obj::<u16>(GuestAddress(FUZZ_USED + 2))
        .map(u16::from_le)
        .unwrap_or(0);
    assert!(used <= n_avail, "used {used} > avail {n_avail}");
    assert_eq!(queue.next_avail(), n_avail, "every avail entry consumed");
    assert!(
        !process_queue(disk, &mut queue, mem),
        "second pass found work"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{ActiveQueue, InterruptKind, VirtioDevice};
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const MEM_SIZE: usize = 8 << 20;
    const DISK_SIZE: u64 = 4 << 20;
    const NSECTORS: u64 = DISK_SIZE / SECTOR_SIZE;
    const HDR: u64 = 0x10_0000;
    const STATUS: u64 = 0x10_1000;
    const INDIRECT: u64 = 0x10_2000;
    const DATA: u64 = 0x20_0000;
    const DATA2: u64 = 0x40_0000;
    const R: u16 = 0;
    const W: u16 = VRING_DESC_F_WRITE as u16;
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    /// (address, length, flags) of one descriptor.
    type Desc = (u64, u32, u16);
    /// (sector, num_sectors, flags) of a discard/write-zeroes segment.
    type Segment = (u64, u32, u32);

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A temporary directory holding one image file, removed on drop.
    struct TempImage {
        dir: PathBuf,
        path: PathBuf,
    }

    impl TempImage {
        fn new(size: u64) -> TempImage {
            let dir = std::env::temp_dir().join(format!(
                "qvm-blk-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("disk.img");
            File::create(&path).unwrap().set_len(size).unwrap();
            TempImage { dir, path }
        }

        fn cfg(&self, read_only: bool) -> BlockConfig {
            BlockConfig {
                path: self.path.clone(),
                read_only,
                id: None,
                direct_io: false,
            }
        }

        fn contents(&self) -> Vec<u8> {
            let mut v = Vec::new();
            File::open(&self.path).unwrap().read_to_end(&mut v).unwrap();
            v
        }

        fn fill(&self, byte: u8) {
            let mut f = OpenOptions::new().write(true).open(&self.path).unwrap();
            f.write_all(&vec![byte; DISK_SIZE as usize]).unwrap();
            f.sync_all().unwrap();
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The driver side: builds chains in the mock queue and runs the device over them.
    struct Driver<'a> {
        mem: &'a GuestMemoryMmap,
        vq: MockSplitQueue<'a, GuestMemoryMmap>,
        queue: Queue,
        next_desc: u16,
        seen_used: u16,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Driver<'a> {
            let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
            let queue = vq.create_queue().unwrap();
            Driver {
                mem,
                vq,
                queue,
                next_desc: 0,
                seen_used: 0,
            }
        }

        fn alloc(&mut self, n: u16) -> u16 {
            if self.next_desc + n > QUEUE_SIZE {
                self.next_desc = 0;
            }
            let at = self.next_desc;
            self.next_desc += n;
            at
        }

        /// Adds raw descriptors (flags and next as given) at a fresh place of the table; the
        /// first one becomes an avail entry. `next` values are relative to that place.
        fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
            let at = self.alloc(descs.len() as u16);
            let raw: Vec<RawDescriptor> = descs
                .iter()
                .map(|&(a, l, f, n)| RawDescriptor::from(Descriptor::new(a, l, f, at + n)))
                .collect();
            // add_desc_chains starts a new avail entry after every descriptor without NEXT.
            self.vq.add_desc_chains(&raw[..1], at).unwrap();
            for (i, d) in raw.iter().enumerate().skip(1) {
                self.vq.desc_table().store(at + i as u16, *d).unwrap();
            }
            at
        }

        /// Adds a properly linked chain.
        fn add(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
            let n = descs.len();
            let linked: Vec<(u64, u32, u16, u16)> = descs
                .iter()
                .enumerate()
                .map(|(i, &(a, l, f))| {
                    if i + 1 < n {
                        (a, l, f | VRING_DESC_F_NEXT as u16, i as u16 + 1)
                    } else {
                        (a, l, f, 0)
                    }
                })
                .collect();
            self.add_raw(&linked)
        }

        /// Runs the device and returns the used elements added since the last call.
        fn run(&mut self, disk: &mut Disk) -> Vec<(u32, u32)> {
            process_queue(disk, &mut self.queue, self.mem);
            let used = self.vq.used().idx().load();
            let mut out = Vec::new();
            while self.seen_used != used {
                let e = self
                    .vq
                    .used()
                    .ring()
                    .ref_at((self.seen_used % QUEUE_SIZE) as usize)
                    .unwrap()
                    .load();
                out.push((e.id(), e.len()));
                self.seen_used = self.seen_used.wrapping_add(1);
            }
            out
        }

        /// Submits one chain and returns (used length, status byte at STATUS).
        fn submit(&mut self, disk: &mut Disk, descs: &[(u64, u32, u16)]) -> (u32, u8) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let head = self.add(descs);
            let used = self.run(disk);
            assert_eq!(used.len(), 1, "one chain in, one chain out");
            assert_eq!(used[0].0, u32::from(head));
            (used[0].1, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
        }

        /// A request with the header at HDR and a 1-byte status at STATUS.
        fn request(
            &mut self,
            disk: &mut Disk,
            req_type: u32,
            sector: u64,
            data: &[(u64, u32, u16)],
        ) -> (u32, u8) {
            write_header(self.mem, HDR, req_type, sector);
            let mut descs = vec![(HDR, HEADER_SIZE, R)];
            descs.extend_from_slice(data);
            descs.push((STATUS, 1, W));
            self.submit(disk, &descs)
        }

        /// A known-good read, to check the device still works after a bad request.
        fn assert_still_works(&mut self, disk: &mut Disk) {
            assert_eq!(
                self.request(disk, VIRTIO_BLK_T_IN, 1, &[(DATA2, 512, W)]),
                (513, OK)
            );
        }
    }

    fn write_header(mem: &GuestMemoryMmap, at: u64, req_type: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&req_type.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn write_segment(mem: &GuestMemoryMmap, at: u64, sector: u64, num: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&s, GuestAddress(at)).unwrap();
    }

    fn guest_bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn setup(read_only: bool) -> (TempImage, Disk, GuestMemoryMmap) {
        let img = TempImage::new(DISK_SIZE);
        let disk = Disk::open(&img.cfg(read_only)).unwrap();
        (img, disk, memory())
    }

    #[test]
    fn read_write_round_trip() {
        let (img, mut disk, mem) = setup(false);
        let mut drv = Driver::new(&mem);
        let data = pattern(4096, 7);
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_OUT, 10, &[(DATA, 4096, R)]),
            (1, OK)
        );
        assert_eq!(&img.contents()[10 * 512..10 * 512 + 4096], &data[..]);

        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_IN, 10, &[(DATA2, 4096, W)]),
            (4097, OK)
        );
        assert_eq!(guest_bytes(&mem, DATA2, 4096), data);

        // Data put in the file behind the device's back reads back through it.
        let other = pattern(1024, 99);
        let f = OpenOptions::new().write(true).open(&img.path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &other, 100 * 512).unwrap();
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_IN, 100, &[(DATA2, 1024, W)]),
            (1025, OK)
        );
        assert_eq!(guest_bytes(&mem, DATA2, 1024), other);

        // The last sector is reachable.
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_OUT, NSECTORS - 1, &[(DATA, 512, R)]),
            (1, OK)
        );
        let s = disk.stats().snapshot();
        assert_eq!(s.requests, 4);
        assert_eq!(s.bytes_written, 4096 + 512);
        assert_eq!(s.bytes_read, 4096 + 1024);
        assert_eq!(s.errors, 0);
    }

    #[test]
    fn multi_descriptor_requests() {
        let (img, mut disk, mem) = setup(false);
        let mut drv = Driver::new(&mem);
        let data = pattern(4096, 3);
        // Scatter the data over three buffers of different sizes.
        mem.write_slice(&data[..512], GuestAddress(DATA + 0x10000))
            .unwrap();
        mem.write_slice(&data[512..1536], GuestAddress(DATA))
            .unwrap();
        mem.write_slice(&data[1536..], GuestAddress(DATA + 0x30000))
            .unwrap();
        let out = [
            (DATA + 0x10000, 512, R),
            (DATA, 1024, R),
            (DATA + 0x30000, 2560, R),
        ];
        assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_OUT, 3, &out), (1, OK));
        assert_eq!(&img.contents()[3 * 512..3 * 512 + 4096], &data[..]);

        let inn = [(DATA2 + 0x8000, 2048, W), (DATA2, 2048, W)];
        assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_IN, 3, &inn), (4097, OK));
        assert_eq!(guest_bytes(&mem, DATA2 + 0x8000, 2048), &data[..2048]);
        assert_eq!(guest_bytes(&mem, DATA2, 2048), &data[2048..]);

        // Zero-length data descriptors are skipped.
        let inn = [(DATA2, 0, W), (DATA2, 512, W)];
        assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_IN, 3, &inn), (513, OK));
    }

    #[test]
    fn indirect_descriptors() {
        let (_img, mut disk, mem) = setup(false);
        let mut drv = Driver::new(&mem);
        let data = pattern(1024, 5);
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 20);
        let table = [
            Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
            Descriptor::new(DATA, 1024, VRING_DESC_F_NEXT as u16, 2),
            Descriptor::new(STATUS, 1, W, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
                .unwrap();
        }
        let indirect = VRING_DESC_F_INDIRECT as u16;
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        drv.add_raw(&[(INDIRECT, 48, indirect, 0)]);
        assert_eq!(drv.run(&mut disk)[0].1, 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_IN, 20, &[(DATA2, 1024, W)]),
            (1025, OK)
        );
        assert_eq!(guest_bytes(&mem, DATA2, 1024), data);

        // An indirect descriptor inside an indirect table is refused (len 0).
        mem.write_obj(
            Descriptor::new(INDIRECT, 48, VRING_DESC_F_NEXT as u16 | indirect, 2),
            GuestAddress(INDIRECT + 16),
        )
        .unwrap();
        drv.add_raw(&[(INDIRECT, 48, indirect, 0)]);
        assert_eq!(drv.run(&mut disk)[0].1, 0);
        assert_eq!(disk.stats().snapshot().invalid_chains, 1);
        drv.assert_still_works(&mut disk);
    }

    #[test]
    fn flush() {
        let (_img, mut disk, mem) = setup(false);
        let mut drv = Driver::new(&mem);
        assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
        // Data descriptors on a flush are ignored, never touched.
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_FLUSH, 0, &[(u64::MAX - 4, 100, W)]),
            (1, OK)
        );
    }

    #[test]
    fn get_id() {
        for id in ["abc", "01234567890123456789"] {
            let img = TempImage::new(DISK_SIZE);
            let mut cfg = img.cfg(false);
            cfg.id = Some(id.to_string());
            let mut disk = Disk::open(&cfg).unwrap();
            let mem = memory();
            let mut drv = Driver::new(&mem);
            mem.write_slice(&[0xee; 32], GuestAddress(DATA2)).unwrap();
            assert_eq!(
                drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA2, 20, W)]),
                (21, OK)
            );
            let mut want = id.as_bytes().to_vec();
            want.resize(20, 0);
            assert_eq!(guest_bytes(&mem, DATA2, 20), want);
            // Nothing past the buffer.
            assert_eq!(guest_bytes(&mem, DATA2 + 20, 12), vec![0xee; 12]);

            // A shorter buffer gets a prefix; a longer one only 20 bytes.
            assert_eq!(
                drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 2, W)]),
                (3, OK)
            );
            assert_eq!(
                drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 512, W)]),
                (21, OK)
            );
            // The id buffer must be device-writable.
            assert_eq!(
                drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, R)]),
                (1, IOERR)
            );
        }
        // No id: 20 NUL bytes.
        let (_img, mut disk, mem) = setup(false);
        let mut drv = Driver::new(&mem);
        mem.write_slice(&[0xee; 20], GuestAddress(DATA2)).unwrap();
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_GET_ID, 0, &[(DATA2, 20, W)]),
            (21, OK)
        );
        assert_eq!(guest_bytes(&mem, DATA2, 20), vec![0; 20]);
    }

    #[test]
    fn discard_and_write_zeroes() {
        let (img, mut disk, mem) = setup(false);
        img.fill(0xaa);
        let blocks_before = std::fs::metadata(&img.path).unwrap().blocks();
        let mut drv = Driver::new(&mem);
        let seg = |sector, num, flags| {
            write_segment(&mem, DATA, sector, num, flags);
        };

        seg(8, 256, 0);
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, R)]),
            (1, OK)
        );
        let c = img.contents();
        assert!(c[8 * 512..264 * 512].iter().all(|&b| b == 0));
        assert!(c[..8 * 512].iter().all(|&b| b == 0xaa));
        assert!(c[264 * 512..].iter().all(|&b| b == 0xaa));
        let blocks_after = std::fs::metadata(&img.path).unwrap().blocks();
        assert!(
            blocks_after < blocks_before,
            "{blocks_after} < {blocks_before}"
        );

        // WRITE_ZEROES without and with UNMAP.
        seg(1000, 3, 0);
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
            (1, OK)
        );
        seg(2000, 17, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
            (1, OK)
        );
        let c = img.contents();
        assert!(c[1000 * 512..1003 * 512].iter().all(|&b| b == 0));
        assert_eq!(c[999 * 512 + 511], 0xaa);
        assert_eq!(c[1003 * 512], 0xaa);
        assert!(c[2000 * 512..2017 * 512].iter().all(|&b| b == 0));
        assert_eq!(c[2017 * 512], 0xaa);

        // The write-zeroes fallback (pwrite of zeros) gives the same result.
        disk.no_punch_hole = true;
        disk.no_zero_range = true;
        seg(3000, 5, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, 16, R)]),
            (1, OK)
        );
        let c = img.contents();
        assert!(c[3000 * 512..3005 * 512].iter().all(|&b| b == 0));
        assert_eq!(c[3005 * 512], 0xaa);

        // The segment may straddle descriptors.
        write_segment(&mem, DATA2, 4000, 1, 0);
        mem.write_slice(
            &guest_bytes(&mem, DATA2 + 10, 6),
            GuestAddress(DATA + 0x100),
        )
        .unwrap();
        let split = [(DATA2, 10, R), (DATA + 0x100, 6, R)];
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_WRITE_ZEROES, 0, &split),
            (1, OK)
        );
        assert!(img.contents()[4000 * 512..4001 * 512]
            .iter()
            .all(|&b| b == 0));

        // Refusals: unmap on discard and unknown flags are UNSUPP; past the end, too many
        // sectors or segments, wrong direction are IOERR.
        let cases: [(u32, Segment, u32, u8); 6] = [
            (VIRTIO_BLK_T_DISCARD, (0, 1, 1), 16, UNSUPP),
            (VIRTIO_BLK_T_WRITE_ZEROES, (0, 1, 2), 16, UNSUPP),
            (VIRTIO_BLK_T_DISCARD, (NSECTORS - 1, 2, 0), 16, IOERR),
            (VIRTIO_BLK_T_WRITE_ZEROES, (u64::MAX, 1, 0), 16, IOERR),
            (VIRTIO_BLK_T_DISCARD, (0, 1, 0), 32, IOERR),
            (VIRTIO_BLK_T_WRITE_ZEROES, (0, 1, 0), 8, IOERR),
        ];
        let before = img.contents();
        for (t, (sector, num, flags), len, want) in cases {
            write_segment(&mem, DATA, sector, num, flags);
            write_segment(&mem, DATA + 16, 0, 1, 0);
            assert_eq!(
                drv.request(&mut disk, t, 0, &[(DATA, len, R)]),
                (1, want),
                "{t} {sector} {num} {flags} {len}"
            );
        }
        write_segment(&mem, DATA, 0, 1, 0);
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 16, W)]),
            (1, IOERR)
        );
        assert_eq!(img.contents(), before);
        drv.assert_still_works(&mut disk);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let img = TempImage::new(DISK_SIZE);
        img.fill(0x55);
        let before = img.contents();
        let block = Block::new(img.cfg(true)).unwrap();
        let f = block.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        drop(block);

        let mut disk = Disk::open(&img.cfg(true)).unwrap();
        assert!(disk.read_only());
        let mem = memory();
        let mut drv = Driver::new(&mem);
        mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_OUT, 0, &[(DATA, 4096, R)]),
            (1, IOERR)
        );
        write_segment(&mem, DATA2, 0, 8, 0);
        for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            assert_eq!(drv.request(&mut disk, t, 0, &[(DATA2, 16, R)]), (1, IOERR));
        }
        assert_eq!(drv.request(&mut disk, VIRTIO_BLK_T_FLUSH, 0, &[]), (1, OK));
        assert_eq!(
            drv.request(&mut disk, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]),
            (513, OK)
        );
        assert_eq!(guest_bytes(&mem, DATA, 512), vec![0x55; 512]);
        assert_eq!(img.contents(), before);
        assert_eq!(disk.stats().snapshot().errors, 3);
    }

    /// Each bad request gets its status (or len 0 without one), and a good request after it
    /// still works.
    #[test]
    fn hostile_requests() {
        let (img, mut disk, mem) = setup(false);
        img.fill(0x11);
        let before = img.contents();
        let mut drv = Driver::new(&mem);
        let mem_end = MEM_SIZE as u64;
        let t_in = VIRTIO_BLK_T_IN;
        let t_out = VIRTIO_BLK_T_OUT;

        // Header problems (status is fine): IOERR.
        write_header(&mem, HDR, t_in, 0);
        let bad_headers: [&[(u64, u32, u16)]; 5] = [
            &[(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)],
            &[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)],
            &[(mem_end - 8, 16, R), (DATA, 512, W), (STATUS, 1, W)],
            &[(u64::MAX - 7, 16, R), (DATA, 512, W), (STATUS, 1, W)],
            &[(STATUS, 1, W)],
        ];
        for chain in bad_headers {
            assert_eq!(drv.submit(&mut disk, chain), (1, IOERR), "{chain:?}");
            drv.assert_still_works(&mut disk);
        }

        // Request problems: (type, sector, data) -> status.
        let big = SIZE_MAX + 512;
        let cases: Vec<(u32, u64, Vec<Desc>, u8)> = vec![
            // data direction
            (t_in, 0, vec![(DATA, 512, R)], IOERR),
            (t_out, 0, vec![(DATA, 512, W)], IOERR),
            (t_in, 0, vec![(DATA, 512, W), (DATA2, 512, R)], IOERR),
            // beyond the end, and overflow
            (t_in, NSECTORS, vec![(DATA, 512, W)], IOERR),
            (t_in, NSECTORS - 1, vec![(DATA, 1024, W)], IOERR),
            (t_out, NSECTORS, vec![(DATA, 512, R)], IOERR),
            (t_in, u64::MAX, vec![(DATA, 512, W)], IOERR),
            (t_in, u64::MAX - 1, vec![(DATA, 1024, W)], IOERR),
            (t_out, u64::MAX >> 9, vec![(DATA, 512, R)], IOERR),
            (t_out, (u64::MAX >> 9) + 1, vec![(DATA, 512, R)], IOERR),
            // not a multiple of 512
            (t_in, 0, vec![(DATA, 100, W)], IOERR),
            (t_out, 0, vec![(DATA, 256, R), (DATA2, 512, R)], IOERR),
            // outside guest memory
            (t_in, 0, vec![(mem_end - 256, 512, W)], IOERR),
            (t_in, 0, vec![(mem_end, 512, W)], IOERR),
            (t_out, 0, vec![(u64::MAX - 255, 512, R)], IOERR),
            // larger than size_max
            (t_in, 0, vec![(DATA, big, W)], IOERR),
            (t_out, 0, vec![(DATA, big, R)], IOERR),
            // unsupported types
            (99, 0, vec![(DATA, 512, W)], UNSUPP),
            (VIRTIO_BLK_T_SCSI_CMD, 0, vec![], UNSUPP),
            (VIRTIO_BLK_T_SECURE_ERASE, 0, vec![(DATA, 16, R)], UNSUPP),
            (u32::MAX, 0, vec![(u64::MAX, 512, R)], UNSUPP),
        ];
        let mut errors = 0;
        for (t, sector, data, want) in cases {
            mem.write_slice(&[0x77; 1024], GuestAddress(DATA)).unwrap();
            assert_eq!(
                drv.request(&mut disk, t, sector, &data),
                (1, want),
                "type {t} sector {sector} data {data:?}"
            );
            errors += 1;
            // Failed reads do not write the guest's buffer either.
            assert_eq!(guest_bytes(&mem, DATA, 1024), vec![0x77; 1024]);
            drv.assert_still_works(&mut disk);
        }
        // size_max itself is fine.
        assert_eq!(
            drv.request(&mut disk, t_in, 0, &[(DATA, SIZE_MAX, W)]),
            (SIZE_MAX + 1, OK)
        );
        // Too many segments.
        let segs: Vec<(u64, u32, u16)> = (0..=SEG_MAX as u64)
            .map(|i| (DATA + 512 * i, 512, W))
            .collect();
        assert_eq!(drv.request(&mut disk, t_in, 0, &segs), (1, IOERR));
        errors += 1;
        drv.assert_still_works(&mut disk);

        // No status byte: used length 0, nothing written, counted.
        write_header(&mem, HDR, t_in, 0);
        let no_status: [&[(u64, u32, u16)]; 5] = [
            &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)],
            &[(HDR, 16, R), (DATA, 512, R)],
            &[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)],
            &[(HDR, 16, R), (DATA, 512, W), (mem_end, 1, W)],
            &[(HDR, 16, R), (DATA, 512, W), (u64::MAX, 2, W)],
        ];
        for (i, chain) in no_status.iter().enumerate() {
            mem.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
            assert_eq!(drv.submit(&mut disk, chain), (0, 0xff), "{chain:?}");
            assert_eq!(guest_bytes(&mem, DATA, 512), vec![0x77; 512]);
            assert_eq!(disk.stats().snapshot().invalid_chains, i as u64 + 1);
            drv.assert_still_works(&mut disk);
        }

        // A chain whose next pointers loop: 0 -> 1 -> 0.
        let next = VRING_DESC_F_NEXT as u16;
        drv.add_raw(&[(HDR, 16, next, 1), (STATUS, 1, W | next, 0)]);
        let used = drv.run(&mut disk);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, 0);
        // A chain that points at itself, and one whose next index is past the queue.
        drv.add_raw(&[(HDR, 16, next, 0)]);
        drv.add_raw(&[(HDR, 16, next, QUEUE_SIZE + 5)]);
        let used = drv.run(&mut disk);
        assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
        assert_eq!(disk.stats().snapshot().invalid_chains, 8);
        drv.assert_still_works(&mut disk);

        let s = disk.stats().snapshot();
        assert_eq!(s.errors, errors + 5);
        assert_eq!(img.contents(), before, "no bad request wrote the disk");
    }

    #[test]
    fn avail_head_out_of_range_is_skipped() {
        let (_img, mut disk, mem) = setup(false);
        let mut drv = Driver::new(&mem);
        // An avail entry naming descriptor 300 of a 256-entry table.
        let avail = drv.vq.avail_addr();
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        mem.write_obj(300u16, avail.unchecked_add(4 + 2 * u64::from(idx)))
            .unwrap();
        mem.write_obj(idx + 1, avail.unchecked_add(2)).unwrap();
        assert!(drv.run(&mut disk).is_empty());
        assert_eq!(disk.stats().snapshot().invalid_chains, 1);
        drv.assert_still_works(&mut disk);
    }

    #[test]
    fn config_space_layout() {
        use std::mem::offset_of;
        type C = virtio_blk_config;
        let img = TempImage::new(DISK_SIZE);
        let block = Block::new(img.cfg(false)).unwrap();
        let read32 = |off: usize| {
            let mut b = [0u8; 4];
            block.read_config(off as u64, &mut b);
            u32::from_le_bytes(b)
        };
        let mut cap = [0u8; 8];
        block.read_config(offset_of!(C, capacity) as u64, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), NSECTORS);
        assert_eq!(block.capacity_sectors(), NSECTORS);
        assert_eq!(read32(offset_of!(C, size_max)), SIZE_MAX);
        assert_eq!(read32(offset_of!(C, seg_max)), SEG_MAX);
        assert_eq!(read32(offset_of!(C, blk_size)), 512);
        assert_eq!(
            read32(offset_of!(C, max_discard_sectors)),
            MAX_DISCARD_SECTORS
        );
        assert_eq!(read32(offset_of!(C, max_discard_seg)), 1);
        assert_eq!(
            read32(offset_of!(C, discard_sector_alignment)),
            DISCARD_SECTOR_ALIGNMENT
        );
        assert_eq!(
            read32(offset_of!(C, max_write_zeroes_sectors)),
            MAX_WRITE_ZEROES_SECTORS
        );
        assert_eq!(read32(offset_of!(C, max_write_zeroes_seg)), 1);
        let mut b = [0u8; 1];
        block.read_config(offset_of!(C, write_zeroes_may_unmap) as u64, &mut b);
        assert_eq!(b[0], 1);
        assert_eq!(offset_of!(C, max_secure_erase_sectors), CONFIG_SIZE);
        // Partly and wholly out of range, and offsets that overflow.
        let mut b = [0xffu8; 8];
        block.read_config(CONFIG_SIZE as u64 - 4, &mut b);
        assert_eq!(b, [1, 0, 0, 0, 0, 0, 0, 0]);
        let mut b = [0xffu8; 4];
        block.read_config(u64::MAX - 1, &mut b);
        assert_eq!(b, [0; 4]);
        // Config writes are ignored.
        let mut block = block;
        block.write_config(0, &[1, 2, 3, 4]);
        assert_eq!(block.capacity_sectors(), NSECTORS);

        assert_eq!(block.device_type(), TYPE_BLOCK);
        assert_eq!(block.queue_max_sizes(), &[256]);
        let f = block.features();
        for bit in [
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_SIZE_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_RING_F_EVENT_IDX,
            32,
        ] {
            assert_ne!(f & (1 << bit), 0, "feature {bit}");
        }
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn open_errors_name_the_path_and_the_fix() {
        let img = TempImage::new(DISK_SIZE);
        let msg = |cfg: BlockConfig| Block::new(cfg).unwrap_err().to_string();

        let mut cfg = img.cfg(false);
        cfg.path = img.dir.join("missing.img");
        let m = msg(cfg);
        assert!(
            m.contains("missing.img") && m.contains("does not exist"),
            "{m}"
        );

        let mut cfg = img.cfg(false);
        cfg.path = img.dir.clone();
        let m = msg(cfg);
        assert!(m.contains("is a directory"), "{m}");

        let mut cfg = img.cfg(false);
        cfg.id = Some("x".repeat(21));
        let m = msg(cfg);
        assert!(m.contains("21 bytes") && m.contains("at most 20"), "{m}");

        let odd = img.dir.join("odd.img");
        File::create(&odd).unwrap().set_len(1000).unwrap();
        let mut cfg = img.cfg(false);
        cfg.path = odd;
        let m = msg(cfg);
        assert!(
            m.contains("odd.img") && m.contains("truncate -s 1024"),
            "{m}"
        );

        // Two writers on one image: the second is refused; readers share.
        let _first = Block::new(img.cfg(false)).unwrap();
        let m = msg(img.cfg(false));
        assert!(m.contains("locked"), "{m}");
        drop(_first);
        let _r1 = Block::new(img.cfg(true)).unwrap();
        let _r2 = Block::new(img.cfg(true)).unwrap();

        // A file we may not write (unless we are root, who may).
        let ro = img.dir.join("ro.img");
        File::create(&ro).unwrap().set_len(4096).unwrap();
        let mut perms = std::fs::metadata(&ro).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&ro, perms).unwrap();
        let mut cfg = img.cfg(false);
        cfg.path = ro;
        if let Err(e) = Block::new(cfg) {
            let m = e.to_string();
            assert!(
                m.contains("permission denied") && m.contains("read_only"),
                "{m}"
            );
        }
    }

    #[test]
    fn direct_io_with_unaligned_buffers() {
        let img = TempImage::new(DISK_SIZE);
        let mut cfg = img.cfg(false);
        cfg.direct_io = true;
        let mut disk = match Disk::open(&cfg) {
            Ok(d) => d,
            Err(BlockError::DirectIoUnsupported { .. }) => return, // e.g. tmpfs
            Err(e) => panic!("{e}"),
        };
        let mem = memory();
        let mut drv = Driver::new(&mem);
        let data = pattern(1536, 1);
        // 4 KiB aligned, then 512-aligned, then byte-aligned buffers.
        for (n, addr) in [DATA, DATA + 512, DATA + 3].into_iter().enumerate() {
            mem.write_slice(&data, GuestAddress(addr)).unwrap();
            let sector = 8 * n as u64;
            assert_eq!(
                drv.request(&mut disk, VIRTIO_BLK_T_OUT, sector, &[(addr, 1536, R)]),
                (1, OK)
            );
            assert_eq!(
                drv.request(&mut disk, VIRTIO_BLK_T_IN, sector, &[(DATA2 + 1, 1536, W)]),
                (1537, OK)
            );
            assert_eq!(guest_bytes(&mem, DATA2 + 1, 1536), data);
        }
        assert_eq!(&img.contents()[8 * 512..8 * 512 + 1536], &data[..]);
    }

    struct CountingInterrupt(AtomicUsize);

    impl Interrupt for CountingInterrupt {
        fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
            assert_eq!(kind, InterruptKind::Queue);
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn wait_for(mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn worker_thread_serves_kicks() {
        let img = TempImage::new(DISK_SIZE);
        let mut cfg = img.cfg(false);
        cfg.id = Some("worker-test".into());
        let mut block = Block::new(cfg).unwrap();
        assert_eq!(block.name(), "virtio-blk-worker-test");
        assert!(!block.reset(), "not active yet");
        block.ack_features(block.features());

        let mem = memory();
        let mut drv = Driver::new(&mem);
        let irq = Arc::new(CountingInterrupt(AtomicUsize::new(0)));
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();

        // Wrong queue count is refused.
        let err = block
            .activate(mem.clone(), irq.clone(), Vec::new())
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueCount { got: 0, want: 1 }));

        let queue = drv.vq.create_queue().unwrap();
        block
            .activate(
                mem.clone(),
                irq.clone(),
                vec![ActiveQueue {
                    queue,
                    notify: notify.try_clone().unwrap(),
                }],
            )
            .unwrap();
        assert!(block.is_active());

        let data = pattern(2048, 9);
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        write_header(&mem, HDR, VIRTIO_BLK_T_OUT, 40);
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        drv.add(&[(HDR, 16, R), (DATA, 2048, R), (STATUS, 1, W)]);
        notify.write(1).unwrap();
        wait_for(|| drv.vq.used().idx().load() == 1);
        wait_for(|| irq.0.load(Ordering::SeqCst) >= 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
        assert_eq!(&img.contents()[40 * 512..40 * 512 + 2048], &data[..]);

        // A second kick, for a read. With EVENT_IDX the driver asks for the next interrupt
        // by writing used_event (after the avail ring entries).
        let used_event = drv
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));
        mem.write_obj(1u16, used_event).unwrap();
        write_header(&mem, HDR + 0x100, VIRTIO_BLK_T_IN, 40);
        drv.add(&[(HDR + 0x100, 16, R), (DATA2, 2048, W), (STATUS + 1, 1, W)]);
        notify.write(1).unwrap();
        wait_for(|| drv.vq.used().idx().load() == 2);
        wait_for(|| irq.0.load(Ordering::SeqCst) >= 2);
        assert_eq!(guest_bytes(&mem, DATA2, 2048), data);
        let used = drv.vq.used().ring().ref_at(1).unwrap().load();
        assert_eq!(used.len(), 2049);

        // used_event left at 1: completing request 3 needs no interrupt.
        write_header(&mem, HDR + 0x200, VIRTIO_BLK_T_FLUSH, 0);
        drv.add(&[(HDR + 0x200, 16, R), (STATUS + 2, 1, W)]);
        notify.write(1).unwrap();
        wait_for(|| drv.vq.used().idx().load() == 3);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(irq.0.load(Ordering::SeqCst), 2);

        assert_eq!(block.stats().snapshot().requests, 3);
        assert!(block.reset());
        assert!(!block.is_active());
        assert!(!block.reset());

        // The disk came back: the device can be activated again, and drop stops it.
        let vq2 = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let queue = vq2.create_queue().unwrap();
        block
            .activate(
                mem.clone(),
                irq,
                vec![ActiveQueue {
                    queue,
                    notify: notify.try_clone().unwrap(),
                }],
            )
            .unwrap();
        drop(block);
    }

    /// xorshift64*, so the fuzz harness runs in every `cargo test`.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn fuzz_harness_on_random_inputs() {
        let img = TempImage::new(64 * 1024);
        let mut rw = Disk::open(&img.cfg(false)).unwrap();
        let img_ro = TempImage::new(64 * 1024);
        let mut ro = Disk::open(&img_ro.cfg(true)).unwrap();
        let mem = fuzz_memory();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for i in 0..3000 {
            let len = (rng.next() % 1200) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Bias towards plausible chains: small lengths, in-memory addresses, real types.
            for d in 0..16 {
                let base = 1 + 10 * d;
                if base + 10 > input.len() {
                    break;
                }
                if rng.next() & 3 != 0 {
                    input[base + 3] &= 0x3f; // payload address
                    input[base + 7] = [0x00, 0x40][(rng.next() % 2) as usize];
                    input[base + 9] = (d as u8 + 1) % 16;
                }
            }
            let payload = 1 + 160 + (input.first().copied().unwrap_or(0) % 17) as usize;
            let mut at = payload;
            while at + 16 <= input.len() {
                let types = [0u8, 1, 4, 8, 11, 13, 2, 77];
                input[at] = types[(rng.next() % 8) as usize];
                input[at + 1..at + 4].fill(0);
                input[at + 9..at + 16].fill(0);
                at += 16 * (1 + (rng.next() % 4) as usize);
            }
            let disk = if i % 5 == 0 { &mut ro } else { &mut rw };
            fuzz_blk_request(disk, &mem, &input);
        }
        let s = rw.stats().snapshot();
        assert!(s.requests > 1000, "{s:?}");
        // The generator must reach success, errors and invalid chains alike.
        assert!(s.errors > 0 && s.invalid_chains > 0, "{s:?}");
        assert!(s.requests > s.errors + s.invalid_chains, "{s:?}");
    }
}

crate::virtio::atomic_counters!(BlockStats {
    requests,
    bytes_read,
    bytes_written,
    errors,
    invalid_chains,
});
