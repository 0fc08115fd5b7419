//! How buffers reach the guest: the VMM maps host memory (a memfd we created, or a
//! compositor's shm fd) into the device's shared-memory window. The device never maps or
//! touches buffer memory itself.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Maps host memory (a memfd or a compositor's shm fd) into the guest-physical address space.
/// The VMM implements it with KVM memory slots inside the device's shared-memory window.
pub trait GuestMapper: Send + Sync {
    /// Maps the first `len` bytes (a page multiple) of `fd`, shared and read-write, into the guest.
    /// Returns the guest-physical address (page aligned, inside `window()`).
    fn map(&self, fd: BorrowedFd<'_>, len: u64) -> Result<u64, MapError>;
    /// Removes a mapping `map` returned.
    fn unmap(&self, gpa: u64) -> Result<(), MapError>;
    /// The shared-memory window (guest-physical base, length) = shm region 0.
    fn window(&self) -> (u64, u64);
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("no free space left in the virtio-wl shared-memory window for this buffer (the guest holds too much buffer memory: close buffers or enlarge the window)")]
    NoSpace,
    #[error("no free KVM memory slot for another virtio-wl buffer (the VM's slot limit is reached: close buffers)")]
    NoSlots,
    #[error("cannot mmap the buffer into the VMM: {0}")]
    Mmap(std::io::Error),
    #[error("KVM refused the buffer's memory slot: {0}")]
    Kvm(std::io::Error),
    #[error("guest-physical address {0:#x} is not a virtio-wl buffer mapping")]
    NotMapped(u64),
}

/// A [`GuestMapper`] for tests and fuzzing: hands out page-aligned addresses from a window
/// (first fit) without KVM or mmap. It keeps a duplicate of each mapped fd, so a test can
/// write "through the guest's mapping" with [`FakeMapper::write`].
#[derive(Debug)]
pub struct FakeMapper {
    base: u64,
    len: u64,
    /// gpa -> (len, the mapped file).
    maps: Mutex<BTreeMap<u64, (u64, OwnedFd)>>,
    /// Fail this many of the next `map` calls with NoSlots.
    fail_next: AtomicU64,
    map_calls: AtomicU64,
    unmap_calls: AtomicU64,
}

impl FakeMapper {
    /// A window at guest-physical `base` (page aligned) of `len` bytes.
    pub fn new(base: u64, len: u64) -> FakeMapper {
        FakeMapper {
            base,
            len,
            maps: Mutex::new(BTreeMap::new()),
            fail_next: AtomicU64::new(0),
            map_calls: AtomicU64::new(0),
            unmap_calls: AtomicU64::new(0),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, OwnedFd)>> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live mappings.
    pub fn mapped(&self) -> usize {
        self.maps().len()
    }

    /// Bytes mapped now.
    pub fn mapped_bytes(&self) -> u64 {
        self.maps().values().map(|(l, _)| l).sum()
    }

    /// The length of the mapping at `gpa`.
    pub fn len_at(&self, gpa: u64) -> Option<u64> {
        self.maps().get(&gpa).map(|(l, _)| *l)
    }

    pub fn map_calls(&self) -> u64 {
        self.map_calls.load(Ordering::Relaxed)
    }

    pub fn unmap_calls(&self) -> u64 {
        self.unmap_calls.load(Ordering::Relaxed)
    }

    /// Makes the next `n` `map` calls fail.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::Relaxed);
    }

    /// Reads `len` bytes at `offset` from the buffer mapped at `gpa`, as the guest would.
    pub fn read(&self, gpa: u64, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let maps = self.maps();
        let (_, fd) = maps
            .get(&gpa)
            .ok_or_else(|| std::io::Error::other(format!("{gpa:#x} is not mapped")))?;
        let mut buf = vec![0u8; len];
        let off = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: reads into a live buffer of `len` bytes from an fd we own.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, off) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Writes `data` at `offset` into the buffer mapped at `gpa`, as the guest would through
    /// its mapping (a pwrite on the mapped file: the same pages).
    pub fn write(&self, gpa: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let maps = self.maps();
        let (len, fd) = maps
            .get(&gpa)
            .ok_or_else(|| std::io::Error::other(format!("{gpa:#x} is not mapped")))?;
        if offset.saturating_add(data.len() as u64) > *len {
            return Err(std::io::Error::other("write past the mapping"));
        }
        let off = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        // SAFETY: writes from a valid buffer into an fd we own.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n as usize != data.len() {
            return Err(std::io::Error::other("short write"));
        }
        Ok(())
    }
}

impl GuestMapper for FakeMapper {
    fn map(&self, fd: BorrowedFd<'_>, len: u64) -> Result<u64, MapError> {
        self.map_calls.fetch_add(1, Ordering::Relaxed);
        if self
            .fail_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(MapError::NoSlots);
        }
        if len == 0 || !len.is_multiple_of(crate::protocol::PAGE_SIZE) {
            return Err(MapError::Mmap(std::io::Error::from_raw_os_error(
                libc::EINVAL,
            )));
        }
        let dup = fd.try_clone_to_owned().map_err(MapError::Mmap)?;
        let mut maps = self.maps();
        // First fit: the gap before each mapping, then the gap after the last.
        let mut at = self.base;
        for (&gpa, &(l, _)) in maps.iter() {
            if gpa.saturating_sub(at) >= len {
                break;
            }
            at = gpa + l;
        }
        let end = self.base.checked_add(self.len).ok_or(MapError::NoSpace)?;
        if at.checked_add(len).is_none_or(|e| e > end) {
            return Err(MapError::NoSpace);
        }
        maps.insert(at, (len, dup));
        Ok(at)
    }

    fn unmap(&self, gpa: u64) -> Result<(), MapError> {
        self.unmap_calls.fetch_add(1, Ordering::Relaxed);
        self.maps()
            .remove(&gpa)
            .map(|_| ())
            .ok_or(MapError::NotMapped(gpa))
    }

    fn window(&self) -> (u64, u64) {
        (self.base, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn first_fit_and_reuse() {
        let m = FakeMapper::new(0x1_0000_0000, 0x4000);
        let f = tempfile::tempfile().unwrap();
        let a = m.map(f.as_fd(), 0x1000).unwrap();
        let b = m.map(f.as_fd(), 0x2000).unwrap();
        assert_eq!((a, b), (0x1_0000_0000, 0x1_0000_1000));
        assert!(matches!(m.map(f.as_fd(), 0x2000), Err(MapError::NoSpace)));
        m.unmap(a).unwrap();
        assert_eq!(m.map(f.as_fd(), 0x1000).unwrap(), a);
        assert!(matches!(m.unmap(0x5), Err(MapError::NotMapped(5))));
        assert!(m.map(f.as_fd(), 100).is_err());
        m.fail_next(1);
        assert!(matches!(m.map(f.as_fd(), 0x1000), Err(MapError::NoSlots)));
        assert_eq!(m.map(f.as_fd(), 0x1000).unwrap(), 0x1_0000_3000);
    }
}
