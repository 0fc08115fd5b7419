//! What the guest kernel is told at entry: the Linux zero page (64-bit boot protocol) or the
//! PVH `hvm_start_info`, each with the memory map, command line, initrd and ACPI RSDP.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{self, MemEntry};
use super::BootError;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_MAX_ZEROPAGE: usize = 128;

/// Where the initrd was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdInfo {
    pub addr: u64,
    pub size: u64,
}

/// Everything both boot protocols describe.
pub struct BootInfo<'a> {
    pub mem_map: &'a [MemEntry],
    pub cmdline_len: usize,
    pub initrd: Option<InitrdInfo>,
    pub rsdp_addr: u64,
}

/// Builds the zero page. `hdr` is the bzImage's setup header, or None for an ELF vmlinux.
pub fn build_zero_page(
    info: &BootInfo,
    hdr: Option<setup_header>,
) -> Result<boot_params, BootError> {
    let mut params = boot_params::default();
    if let Some(h) = hdr {
        params.hdr = h;
    }
    let hdr = &mut params.hdr;
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    hdr.cmdline_size = info.cmdline_len as u32;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(initrd) = info.initrd {
        hdr.ramdisk_image = u32::try_from(initrd.addr).map_err(|_| BootError::InitrdTooHigh)?;
        hdr.ramdisk_size = u32::try_from(initrd.size).map_err(|_| BootError::InitrdTooBig)?;
    }
    params.acpi_rsdp_addr = info.rsdp_addr;
    if info.mem_map.len() > E820_MAX_ZEROPAGE {
        return Err(BootError::TooManyMemoryRanges);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(info.mem_map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = info.mem_map.len() as u8;
    Ok(params)
}

pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    mem.write_obj(*params, GuestAddress(layout::ZERO_PAGE_ADDR))
        .map_err(|_| BootError::WriteBootParams)
}

/// Writes the PVH start_info, module list and memory map.
pub fn write_pvh_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<(), BootError> {
    if info.mem_map.len() > layout::PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::TooManyMemoryRanges);
    }
    let w = |r: Result<(), vm_memory::GuestMemoryError>| r.map_err(|_| BootError::WriteBootParams);
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: info.rsdp_addr,
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: info.mem_map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = info.initrd {
        start.nr_modules = 1;
        start.modlist_paddr = layout::PVH_MODLIST_ADDR;
        w(mem.write_obj(
            hvm_modlist_entry {
                paddr: initrd.addr,
                size: initrd.size,
                ..Default::default()
            },
            GuestAddress(layout::PVH_MODLIST_ADDR),
        ))?;
    }
    for (i, e) in info.mem_map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        };
        let at =
            layout::PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        w(mem.write_obj(entry, GuestAddress(at)))?;
    }
    w(mem.write_obj(start, GuestAddress(layout::PVH_INFO_ADDR)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::memory_map;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    /// Boots with memory map `map`, a command line of `cmdline_len` bytes, an initrd at
    /// (address, size) and the RSDP at `rsdp_addr`.
    fn boot_info(
        map: &[MemEntry],
        cmdline_len: usize,
        initrd: Option<(u64, u64)>,
        rsdp_addr: u64,
    ) -> BootInfo<'_> {
        BootInfo {
            mem_map: map,
            cmdline_len,
            initrd: initrd.map(|(addr, size)| InitrdInfo { addr, size }),
            rsdp_addr,
        }
    }

    #[test]
    fn zero_page_for_elf_kernel() {
        let map = memory_map(64 << 20);
        let info = boot_info(&map, 20, Some((0x300_0000, 0x1234)), layout::ACPI_START);
        let p = build_zero_page(&info, None).unwrap();
        let (boot_flag, header, cmdline) = (p.hdr.boot_flag, p.hdr.header, p.hdr.cmd_line_ptr);
        assert_eq!(boot_flag, 0xaa55);
        assert_eq!(header, KERNEL_HDR_MAGIC);
        assert_eq!(cmdline, layout::CMDLINE_ADDR as u32);
        let (rd, rds, align) = (
            p.hdr.ramdisk_image,
            p.hdr.ramdisk_size,
            p.hdr.kernel_alignment,
        );
        assert_eq!((rd, rds), (0x300_0000, 0x1234));
        assert_eq!(align, KERNEL_MIN_ALIGNMENT_BYTES);
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, layout::ACPI_START);
        assert_eq!(p.e820_entries as usize, map.len());
        let last = p.e820_table[map.len() - 1];
        let (a, s, t) = (last.addr, last.size, last.r#type);
        assert_eq!(
            (a, s, t),
            (layout::HIMEM_START, (64 << 20) - layout::HIMEM_START, 1)
        );
        let m = mem();
        write_zero_page(&m, &p).unwrap();
        let back: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_ADDR)).unwrap();
        let flag = back.hdr.boot_flag;
        assert_eq!(flag, 0xaa55);
    }

    #[test]
    fn zero_page_keeps_bzimage_header_fields() {
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            loadflags: 1,
            ..Default::default()
        };
        let map = memory_map(64 << 20);
        let info = boot_info(&map, 1, None, 0);
        let p = build_zero_page(&info, Some(hdr)).unwrap();
        let (v, a, r) = (p.hdr.version, p.hdr.kernel_alignment, p.hdr.ramdisk_image);
        assert_eq!((v, a, r), (0x020f, 0x20_0000, 0));
    }

    #[test]
    fn initrd_above_4g_is_refused_for_the_zero_page() {
        let map = memory_map(64 << 20);
        let info = boot_info(&map, 1, Some((1 << 32, 1)), 0);
        assert!(matches!(
            build_zero_page(&info, None),
            Err(BootError::InitrdTooHigh)
        ));
    }

    #[test]
    fn pvh_start_info_and_memmap() {
        let m = mem();
        let map = memory_map(64 << 20);
        let info = boot_info(&map, 5, Some((0x200_0000, 4096)), layout::ACPI_START);
        write_pvh_info(&m, &info).unwrap();
        let s: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_ADDR)).unwrap();
        assert_eq!(s.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(s.memmap_entries as usize, map.len());
        assert_eq!(s.nr_modules, 1);
        assert_eq!(s.rsdp_paddr, layout::ACPI_START);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(s.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 4096));
        let e: hvm_memmap_table_entry = m
            .read_obj(GuestAddress(layout::PVH_MEMMAP_ADDR + 2 * 24))
            .unwrap();
        assert_eq!((e.addr, e.type_), (layout::HIMEM_START, 1));
        // The memory map must not run into the zero page / stack area.
        assert!(
            layout::PVH_MEMMAP_ADDR + (layout::PVH_MEMMAP_MAX_ENTRIES * 24) as u64
                <= layout::ZERO_PAGE_ADDR
        );
    }
}
