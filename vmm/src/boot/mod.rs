//! Putting a Linux kernel, its initrd and command line into guest memory, with the boot
//! protocol data (zero page or PVH start_info), ACPI tables and entry-point CPU state.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod params;
pub mod regs;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use params::{BootInfo, InitrdInfo};
// The kernel-format check is a config check (the jailer makes it too), so it lives in
// qvm-config; the loader makes it again before loading.
use qvm_config::boot::{detect_format, KernelFormat, KernelFormatError};
pub use regs::EntryMode;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("[boot] kernel = {0:?}: cannot read it: {1}")]
    ReadKernel(PathBuf, std::io::Error),
    /// `[boot] kernel` cannot be read or is not an ELF vmlinux or a bzImage.
    #[error(transparent)]
    Kernel(#[from] KernelFormatError),
    #[error(
        "[boot] kernel = {path:?}: cannot load it ({reason}); is memory_mib large enough for it?"
    )]
    LoadKernel { path: PathBuf, reason: String },
    #[error("[boot] initrd = {0:?}: cannot read it: {1}")]
    ReadInitrd(PathBuf, std::io::Error),
    #[error("[boot] initrd = {path:?}: {size} bytes do not fit in guest RAM above the kernel; raise memory_mib")]
    InitrdDoesNotFit { path: PathBuf, size: u64 },
    #[error("initrd placed above 4 GiB, which the boot protocol cannot describe")]
    InitrdTooHigh,
    #[error("initrd larger than 4 GiB, which the boot protocol cannot describe")]
    InitrdTooBig,
    #[error("cannot write the kernel command line into guest memory")]
    WriteCmdline,
    #[error("cannot write boot parameters into guest memory")]
    WriteBootParams,
    #[error("cannot write GDT/page tables into guest memory")]
    WriteBootTables,
    #[error("the memory map has too many entries for the boot protocol")]
    TooManyMemoryRanges,
    #[error("cannot build the boot MSR list")]
    Msrs,
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("cannot write ACPI tables into guest memory")]
    WriteAcpi,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub mode: EntryMode,
    pub addr: u64,
}

pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_size: u64,
    pub acpi: acpi::AcpiConfig,
}

/// Loads everything the guest needs into `mem` and returns the boot vCPU's entry point.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec) -> Result<Entry, BootError> {
    let format = detect_format(spec.kernel)?;
    let mut kf =
        File::open(spec.kernel).map_err(|e| BootError::ReadKernel(spec.kernel.into(), e))?;
    let load_err = |e: linux_loader::loader::Error| BootError::LoadKernel {
        path: spec.kernel.into(),
        reason: e.to_string(),
    };
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let (entry, setup_header, kernel_end, initrd_max) = match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut kf, highmem).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => Entry {
                    mode: EntryMode::Pvh,
                    addr: a.0,
                },
                _ => Entry {
                    mode: EntryMode::Linux64,
                    addr: r.kernel_load.0,
                },
            };
            (entry, None, r.kernel_end, u64::from(u32::MAX))
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut kf, highmem).map_err(load_err)?;
            let hdr = r.setup_header;
            let max = hdr
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|m| *m != 0)
                .unwrap_or(0x37ff_ffff);
            // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
            let entry = Entry {
                mode: EntryMode::Linux64,
                addr: r.kernel_load.0 + 0x200,
            };
            (entry, hdr, r.kernel_end, max)
        }
    };

    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(
            mem,
            path,
            spec.mem_size,
            kernel_end,
            initrd_max,
        )?),
        None => None,
    };

    let mut cmdline = spec.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(layout::CMDLINE_ADDR))
        .map_err(|_| BootError::WriteCmdline)?;

    let tables = acpi::build(&spec.acpi, layout::ACPI_START, layout::ACPI_END)?;
    for (addr, blob) in &tables.blobs {
        mem.write_slice(blob, GuestAddress(*addr))
            .map_err(|_| BootError::WriteAcpi)?;
    }

    let map = layout::memory_map(spec.mem_size);
    let info = BootInfo {
        mem_map: &map,
        cmdline_len: spec.cmdline.len(),
        initrd,
        rsdp_addr: tables.rsdp_addr,
    };
    match entry.mode {
        EntryMode::Linux64 => {
            let zp = params::build_zero_page(&info, setup_header)?;
            params::write_zero_page(mem, &zp)?;
        }
        EntryMode::Pvh => params::write_pvh_info(mem, &info)?,
    }
    regs::write_boot_tables(mem, entry.mode)?;
    Ok(entry)
}

/// Puts the initrd at the top of low RAM (page aligned, below `max_addr` and the MMIO gap),
/// where the kernel will not decompress over it.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
    max_addr: u64,
) -> Result<InitrdInfo, BootError> {
    let mut f = File::open(path).map_err(|e| BootError::ReadInitrd(path.into(), e))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(|e| BootError::ReadInitrd(path.into(), e))?;
    f.rewind()
        .map_err(|e| BootError::ReadInitrd(path.into(), e))?;
    let too_big = || BootError::InitrdDoesNotFit {
        path: path.into(),
        size,
    };
    let top = mem_size
        .min(layout::MMIO_GAP_START)
        .min(max_addr.saturating_add(1));
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.max(layout::HIMEM_START) {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)
        .map_err(|e| BootError::ReadInitrd(path.into(), std::io::Error::other(e.to_string())))?;
    Ok(InitrdInfo { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmpfile(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("qvm-boot-test-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn format_detection() {
        let elf = tmpfile("elf", b"\x7fELF\x02\x01\x01");
        assert_eq!(detect_format(&elf).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz = tmpfile("bz", &bz);
        assert_eq!(detect_format(&bz).unwrap(), KernelFormat::BzImage);
        let junk = tmpfile("junk", b"#!/bin/sh\necho not a kernel\n");
        let e = detect_format(&junk).unwrap_err().to_string();
        assert!(e.contains("neither an ELF vmlinux nor a bzImage"), "{e}");
        for p in [elf, bz, junk] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn initrd_goes_to_the_top_of_ram_page_aligned() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let rd = tmpfile("initrd", &[0x5a; 5000]);
        let info = load_initrd(&mem, &rd, 64 << 20, 0x200_0000, u64::from(u32::MAX)).unwrap();
        assert_eq!(info.size, 5000);
        assert_eq!(info.addr % 4096, 0);
        assert!(info.addr + 5000 <= 64 << 20 && info.addr + 5000 + 4096 > 64 << 20);
        let b: u8 = mem.read_obj(GuestAddress(info.addr + 4999)).unwrap();
        assert_eq!(b, 0x5a);
        // Would overlap the kernel: refused with a message naming the file.
        let e = load_initrd(&mem, &rd, 64 << 20, 64 << 20, u64::from(u32::MAX)).unwrap_err();
        assert!(e.to_string().contains("raise memory_mib"), "{e}");
        std::fs::remove_file(rd).unwrap();
    }
}
