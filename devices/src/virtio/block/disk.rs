//! The I/O backend of virtio-blk: [`Disk`], an open image file or block device, executes
//! validated requests with positional I/O straight between the file and guest memory, and
//! [`process_queue`] takes a queue's chains through it to the used ring.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::request::{parse_request, Request, RequestError, RequestType};
use super::{
    BlockConfig, BlockError, BlockStats, ID_BYTES, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS,
    SECTOR_SHIFT, SECTOR_SIZE, SEGMENT_SIZE,
};
use crate::virtio::{bump, GuestMemoryMmap};

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

/// Which way [`Disk::transfer`] moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// IN: from the disk into guest memory.
    ToGuest,
    /// OUT: from guest memory to the disk.
    FromGuest,
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
    pub(super) no_punch_hole: bool,
    pub(super) no_zero_range: bool,
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
        bump(&self.stats.requests, 1);
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
                bump(&self.stats.invalid_chains, 1);
                return 0;
            }
        };
        if code != VIRTIO_BLK_S_OK as u8 {
            bump(&self.stats.errors, 1);
        }
        if mem.write_obj(code, status_addr).is_err() {
            bump(&self.stats.invalid_chains, 1);
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
                let res = self.transfer(req, mem, Direction::ToGuest, &mut written);
                bump(&self.stats.bytes_read, u64::from(written));
                (res, written)
            }
            RequestType::Out if self.read_only => (Err(ExecError::IoErr), 0),
            RequestType::Out => {
                let mut read = 0u32;
                let res = self.transfer(req, mem, Direction::FromGuest, &mut read);
                bump(&self.stats.bytes_written, u64::from(read));
                (res, 0)
            }
            RequestType::Flush => (self.flush(), 0),
            RequestType::GetId => self.get_id(req, mem),
            RequestType::Discard | RequestType::WriteZeroes => (self.discard_or_zero(req, mem), 0),
        }
    }

    /// Moves an IN or OUT request's data between its guest buffers and the disk from its
    /// sector on, with positional I/O straight on guest memory, piece by piece as the kernel
    /// takes it. `moved` counts the bytes done, also when a later piece fails.
    fn transfer(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap,
        dir: Direction,
        moved: &mut u32,
    ) -> Result<(), ExecError> {
        let mut offset = self.byte_range(req.sector, req.data_len)?;
        for buf in &req.data {
            for slice in GuestMemoryBackend::get_slices(mem, buf.addr, buf.len as usize) {
                let slice = slice.map_err(|_| ExecError::IoErr)?;
                let mut done = 0usize;
                while done < slice.len() {
                    let part = slice.offset(done).map_err(|_| ExecError::IoErr)?;
                    let n = match dir {
                        Direction::ToGuest => {
                            let guard = part.ptr_guard_mut();
                            self.positional_io(|fd| {
                                // SAFETY: the pointer and length describe a live guest-memory
                                // mapping (the VolatileSlice guarantees it) that the guest
                                // gave us to write.
                                unsafe {
                                    libc::pread64(
                                        fd,
                                        guard.as_ptr().cast(),
                                        part.len(),
                                        offset as libc::off64_t,
                                    )
                                }
                            })
                        }
                        Direction::FromGuest => {
                            let guard = part.ptr_guard();
                            self.positional_io(|fd| {
                                // SAFETY: the pointer and length describe a live guest-memory
                                // mapping.
                                unsafe {
                                    libc::pwrite64(
                                        fd,
                                        guard.as_ptr().cast(),
                                        part.len(),
                                        offset as libc::off64_t,
                                    )
                                }
                            })
                        }
                    };
                    let n = match n {
                        Ok(0) | Err(_) => return Err(ExecError::IoErr),
                        Ok(n) => n,
                    };
                    if dir == Direction::ToGuest {
                        part.bitmap().mark_dirty(0, n);
                    }
                    done += n;
                    offset += n as u64;
                    *moved = moved.saturating_add(n as u32);
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
            bump(&disk.stats.requests, 1);
            bump(&disk.stats.invalid_chains, 1);
            continue;
        }
        let len = disk.process_chain(chain, mem);
        if queue.add_used(mem, head, len).is_ok() {
            used = true;
        } else {
            // The used ring is not writable (the queue was checked at activation, so only a
            // harness can get here).
            bump(&disk.stats.invalid_chains, 1);
        }
    }
    used
}
