//! Address-range dispatch for port I/O and MMIO exits.

use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes inside its address range.
///
/// `offset` is relative to the start of the range the device was inserted at. `data` has the
/// length of the guest access (1, 2, 4 or 8 bytes, but a device must cope with any length).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length or wraps around")]
    InvalidRange { base: u64 },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
///
/// Built before the vCPUs start and shared read-only afterwards, so dispatch takes no bus-wide
/// lock: only the one device's mutex.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>, // sorted by base
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base })?;
        let pos = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev = pos > 0 && {
            let p = &self.entries[pos - 1];
            p.base + p.len > base
        };
        let overlaps_next = pos < self.entries.len() && self.entries[pos].base < end;
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(pos, Entry { base, len, device });
        Ok(())
    }

    /// Finds the device whose range holds the whole access `[addr, addr + size)`.
    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let pos = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(pos.checked_sub(1)?)?;
        let offset = addr - e.base;
        let end = offset.checked_add(size as u64)?;
        (end <= e.len).then_some((e, offset))
    }

    /// Dispatches a read; returns false (and leaves `data` untouched) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned mutex: a device that panicked on one thread
/// must not take every vCPU down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    fn echo() -> Arc<Mutex<Echo>> {
        Arc::new(Mutex::new(Echo { last: vec![] }))
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = echo();
        let b = echo();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 1).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fa, &mut d));
        assert_eq!(d[0], 2);
        assert!(bus.write(0x60, &[0xfe]));
        assert_eq!(b.lock().unwrap().last, vec![(0, vec![0xfe])]);
        assert!(a.lock().unwrap().last.is_empty());
    }

    #[test]
    fn misses_and_straddling_accesses_are_refused() {
        let mut bus = Bus::new();
        bus.insert(echo(), 0x100, 4).unwrap();
        let mut d = [0xaau8; 4];
        assert!(!bus.read(0xff, &mut d[..1]));
        assert!(!bus.read(0x104, &mut d[..1]));
        assert!(
            !bus.read(0x102, &mut d),
            "access crossing the end must miss"
        );
        assert!(!bus.write(u64::MAX, &[1, 2]), "wrapping access must miss");
        assert_eq!(d, [0xaa; 4]);
    }

    #[test]
    fn overlapping_and_empty_ranges_are_rejected() {
        let mut bus = Bus::new();
        bus.insert(echo(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(echo(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(echo(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(echo(), 0x200, 0),
            Err(BusError::InvalidRange { base: 0x200 })
        );
        assert_eq!(
            bus.insert(echo(), u64::MAX, 2),
            Err(BusError::InvalidRange { base: u64::MAX })
        );
        bus.insert(echo(), 0x110, 1).unwrap();
        bus.insert(echo(), 0xff, 1).unwrap();
    }
}
