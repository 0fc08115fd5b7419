//! virtio-wl's buffers in the guest: each host buffer (a memfd the guest allocated, or a shared
//! memory fd the compositor sent) is mapped into this process once and given to KVM as its own
//! memory slot inside the device's shared-memory window, above guest RAM. The guest maps those
//! guest-physical pages into its client; the compositor maps the same fd: nobody copies pixels.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use qvm_virtio_wl::mapper::{GuestMapper, MapError};

const PAGE: u64 = 4096;

/// KVM memory slots below this are guest RAM's (it uses at most two).
pub const FIRST_SLOT: u32 = 8;

struct Mapping {
    slot: u32,
    len: u64,
    /// Where it is mapped in this process (an address, kept as an integer so the map is Send).
    host: usize,
}

struct State {
    free_slots: Vec<u32>,
    /// Guest-physical address -> mapping, ordered, so free space is found between entries.
    maps: BTreeMap<u64, Mapping>,
}

pub struct KvmMapper {
    vm: Arc<VmFd>,
    base: u64,
    len: u64,
    state: Mutex<State>,
}

impl KvmMapper {
    /// A window of `len` bytes at guest-physical `base` (both page aligned), using KVM slots
    /// `FIRST_SLOT..slots_end`.
    pub fn new(vm: Arc<VmFd>, base: u64, len: u64, slots_end: u32) -> Self {
        // Popped from the end: lowest slot first.
        let free_slots = (FIRST_SLOT..slots_end.max(FIRST_SLOT)).rev().collect();
        KvmMapper {
            vm,
            base,
            len,
            state: Mutex::new(State {
                free_slots,
                maps: BTreeMap::new(),
            }),
        }
    }

    /// The lowest free guest-physical range of `len` bytes in the window (first fit).
    fn find_space(&self, maps: &BTreeMap<u64, Mapping>, len: u64) -> Option<u64> {
        let end = self.base.checked_add(self.len)?;
        let mut at = self.base;
        for (&gpa, m) in maps {
            if gpa.checked_sub(at)? >= len {
                return Some(at);
            }
            at = gpa + m.len;
        }
        (end.checked_sub(at)? >= len).then_some(at)
    }

    fn set_slot(&self, slot: u32, gpa: u64, len: u64, host: u64) -> Result<(), MapError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: with len > 0, `host..host+len` is a mapping this mapper made and keeps until
        // the slot is deleted again (len 0), which happens before the munmap.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| MapError::Kvm(std::io::Error::from_raw_os_error(e.errno())))
    }
}

impl GuestMapper for KvmMapper {
    fn map(&self, fd: BorrowedFd<'_>, len: u64) -> Result<u64, MapError> {
        if len == 0 || !len.is_multiple_of(PAGE) || len > self.len {
            return Err(MapError::NoSpace);
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gpa = self.find_space(&st.maps, len).ok_or(MapError::NoSpace)?;
        let slot = st.free_slots.pop().ok_or(MapError::NoSlots)?;
        let size = usize::try_from(len).map_err(|_| MapError::NoSpace)?;
        // SAFETY: a fresh shared mapping of a caller's fd; the result is checked.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            st.free_slots.push(slot);
            return Err(MapError::Mmap(std::io::Error::last_os_error()));
        }
        if let Err(e) = self.set_slot(slot, gpa, len, host as u64) {
            // SAFETY: the mapping just made, not given to anyone.
            unsafe { libc::munmap(host, size) };
            st.free_slots.push(slot);
            return Err(e);
        }
        st.maps.insert(
            gpa,
            Mapping {
                slot,
                len,
                host: host as usize,
            },
        );
        Ok(gpa)
    }

    fn unmap(&self, gpa: u64) -> Result<(), MapError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let m = st.maps.remove(&gpa).ok_or(MapError::NotMapped(gpa))?;
        // The guest must lose the pages before this process unmaps them.
        let res = self.set_slot(m.slot, gpa, 0, 0);
        if res.is_ok() {
            // SAFETY: the mapping `map` made; KVM no longer refers to it.
            unsafe { libc::munmap(m.host as *mut libc::c_void, m.len as usize) };
            st.free_slots.push(m.slot);
        }
        res
    }

    fn window(&self) -> (u64, u64) {
        (self.base, self.len)
    }
}

impl Drop for KvmMapper {
    fn drop(&mut self) {
        // The VM is going away (the device holding us is dropped after the vCPUs stopped):
        // delete the slots, then the mappings.
        let maps =
            std::mem::take(&mut self.state.get_mut().unwrap_or_else(|p| p.into_inner()).maps);
        for (gpa, m) in maps {
            if self.set_slot(m.slot, gpa, 0, 0).is_ok() {
                // SAFETY: as in unmap.
                unsafe { libc::munmap(m.host as *mut libc::c_void, m.len as usize) };
            }
        }
    }
}

/// The guest-physical window for virtio-wl buffers: the first 1 GiB boundary above guest RAM
/// (and above the 32-bit MMIO gap), sized for twice the buffer limit so fragmentation never
/// makes an allowed allocation fail.
pub fn window(mem_size: u64, max_buffer_bytes: u64) -> (u64, u64) {
    const GIB: u64 = 1 << 30;
    let ram_end = crate::boot::layout::ram_ranges(mem_size)
        .iter()
        .map(|(a, s)| a + s)
        .max()
        .unwrap_or(0)
        .max(crate::boot::layout::MMIO_GAP_END);
    let base = ram_end.div_ceil(GIB) * GIB;
    let len = (max_buffer_bytes.saturating_mul(2)).div_ceil(GIB).max(1) * GIB;
    (base, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_sits_above_ram_and_the_gap() {
        assert_eq!(window(256 << 20, 512 << 20), (4 << 30, 1 << 30));
        // 4 GiB of RAM: 3 GiB low, 1 GiB from 4 GiB, so the window starts at 5 GiB.
        assert_eq!(window(4 << 30, 512 << 20), (5 << 30, 1 << 30));
        assert_eq!(window(256 << 20, 3 << 30).1, 6 << 30);
    }
}
