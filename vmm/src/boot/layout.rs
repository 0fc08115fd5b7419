//! Guest-physical memory layout of a qvm x86_64 VM.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_7000  zero page (Linux boot params)
//! 0x0000_0520  IDT (empty)              0x0000_8ff0  boot stack top
//! 0x0000_6000  PVH start_info + memmap  0x0000_9000  PML4, PDPT at +0x1000, PD at +0x2000
//! 0x0002_0000  kernel command line      0x0009_fc00  EBDA start: RAM ends here in low memory
//! 0x000e_0000  ACPI tables (RSDP first) 0x0010_0000  high RAM: kernel, then initrd at the top
//! 0xc000_0000  MMIO gap (devices, IOAPIC, LAPIC) up to 4 GiB; RAM continues above 4 GiB
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 64;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x10_0000;
pub const HIMEM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM on Intel needs three pages for the TSS and one for the identity map, below 4 GiB and
/// outside RAM.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// The guest RAM ranges for a VM of `mem_size` bytes: low RAM up to the MMIO gap, the rest
/// above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// One e820 / PVH memory map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: MemKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemKind {
    Ram = 1,
    Reserved = 2,
}

/// The memory map the guest is told about: RAM below the EBDA, the ACPI/BIOS area reserved,
/// then high RAM. Everything outside `ram_ranges` (the MMIO gap) is simply absent.
pub fn memory_map(mem_size: u64) -> Vec<MemEntry> {
    let mut map = vec![
        MemEntry {
            addr: 0,
            size: EBDA_START,
            kind: MemKind::Ram,
        },
        MemEntry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: MemKind::Reserved,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (low, end) = (start.max(HIMEM_START), start + size);
        if end > low {
            map.push(MemEntry {
                addr: low,
                size: end - low,
                kind: MemKind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_is_one_range() {
        assert_eq!(ram_ranges(512 << 20), vec![(0, 512 << 20)]);
    }

    #[test]
    fn big_vm_skips_the_mmio_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        let total: u64 = r.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn e820_for_small_vm() {
        let m = memory_map(256 << 20);
        assert_eq!(
            m,
            vec![
                MemEntry {
                    addr: 0,
                    size: EBDA_START,
                    kind: MemKind::Ram
                },
                MemEntry {
                    addr: ACPI_START,
                    size: ACPI_END - ACPI_START,
                    kind: MemKind::Reserved
                },
                MemEntry {
                    addr: HIMEM_START,
                    size: (256 << 20) - HIMEM_START,
                    kind: MemKind::Ram
                },
            ]
        );
    }

    #[test]
    fn e820_for_big_vm_has_high_ram_above_4g() {
        let m = memory_map(6 << 30);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[2],
            MemEntry {
                addr: HIMEM_START,
                size: MMIO_GAP_START - HIMEM_START,
                kind: MemKind::Ram
            }
        );
        assert_eq!(
            m[3],
            MemEntry {
                addr: MMIO_GAP_END,
                size: (6 << 30) - MMIO_GAP_START,
                kind: MemKind::Ram
            }
        );
        // No RAM entry may overlap the MMIO gap.
        assert!(m
            .iter()
            .all(|e| e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END));
    }
}

/// virtio-mmio device windows: one page each from here, in the MMIO gap.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSIs for virtio-mmio devices: 5.. (COM1 has 4; the IOAPIC has 24 pins).
pub const VIRTIO_FIRST_GSI: u32 = 5;
/// The ACPI power button's Generic Event Device interrupt (COM2's ISA IRQ, unused here).
pub const POWER_BUTTON_GSI: u32 = 3;

/// Address and GSI of the `index`-th virtio-mmio device.
pub fn virtio_mmio_slot(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        VIRTIO_FIRST_GSI + index as u32,
    )
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn virtio_slots_stay_in_the_gap_and_below_the_ioapic_pins() {
        let (a0, g0) = virtio_mmio_slot(0);
        assert_eq!((a0, g0), (0xd000_0000, 5));
        let (a, g) = virtio_mmio_slot(qvm_config::MAX_VIRTIO_DEVICES - 1);
        assert!(a + VIRTIO_MMIO_SIZE <= u64::from(IOAPIC_ADDR));
        assert!(a >= MMIO_GAP_START);
        assert!(g < 24);
    }
}
