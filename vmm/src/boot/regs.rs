//! vCPU state at the kernel entry point: GDT, identity page tables, segment/control registers,
//! general registers, FPU, boot MSRs and the LAPIC's LINT pins.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use super::BootError;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh,
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Packs a GDT descriptor from flags (G, D/B, L, AVL in bits 12..15 and P, DPL, S, type in 0..7),
/// base and limit, the way the CPU wants it.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The GDT for an entry mode: null, code (selector 0x08), data (0x10), TSS (0x18).
pub fn gdt(mode: EntryMode) -> [u64; 4] {
    let code = match mode {
        EntryMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, L=1
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),     // 32-bit code, D=1
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff), // flat data
        gdt_entry(0x808b, 0, 0xfffff), // TSS (busy)
    ]
}

/// The segment register KVM wants for a GDT entry.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT and an empty IDT, and for Linux64 the page tables identity-mapping the
/// first 1 GiB with 2 MiB pages (enough for the kernel, zero page and command line; the kernel
/// builds its own tables right away).
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), BootError> {
    let w = |r: Result<(), vm_memory::GuestMemoryError>| r.map_err(|_| BootError::WriteBootTables);
    for (i, e) in gdt(mode).iter().enumerate() {
        w(mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + 8 * i as u64)))?;
    }
    w(mem.write_obj(0u64, GuestAddress(layout::IDT_ADDR)))?;
    if mode == EntryMode::Linux64 {
        w(mem.write_obj(layout::PDPT_ADDR | 0x3, GuestAddress(layout::PML4_ADDR)))?;
        w(mem.write_obj(layout::PD_ADDR | 0x3, GuestAddress(layout::PDPT_ADDR)))?;
        for i in 0..512u64 {
            // present | writable | page size (2 MiB)
            w(mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PD_ADDR + i * 8)))?;
        }
    }
    Ok(())
}

/// Special registers for the entry mode, on top of what KVM reports for a fresh vCPU.
pub fn setup_sregs(sregs: &mut kvm_sregs, mode: EntryMode) {
    let table = gdt(mode);
    let code = segment(table[1], 0x08);
    let data = segment(table[2], 0x10);
    let tss = segment(table[3], 0x18);
    sregs.gdt.base = layout::GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = layout::IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match mode {
        EntryMode::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = layout::PML4_ADDR;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = layout::BOOT_STACK_TOP;
            regs.rbp = layout::BOOT_STACK_TOP;
            regs.rsi = layout::ZERO_PAGE_ADDR;
        }
        EntryMode::Pvh => regs.rbx = layout::PVH_INFO_ADDR,
    }
    regs
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

/// MSRs with defined boot values (the rest keep KVM's reset values).
pub fn boot_msrs() -> Result<Msrs, BootError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).map_err(|_| BootError::Msrs)
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(state: &kvm_lapic_state, off: usize) -> u32 {
    let b = &state.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(state: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        state.regs[off + i] = *b as _;
    }
}

/// LINT0 delivers the 8259's ExtINT, LINT1 delivers NMI, as a PC's BIOS leaves them.
pub fn setup_lint(state: &mut kvm_lapic_state) {
    let set_mode = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let l0 = lapic_reg(state, APIC_LVT0);
    set_lapic_reg(state, APIC_LVT0, set_mode(l0, APIC_MODE_EXTINT));
    let l1 = lapic_reg(state, APIC_LVT1);
    set_lapic_reg(state, APIC_LVT1, set_mode(l1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_known_encodings() {
        // Values every x86 VMM and the Linux boot code agree on.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn segments_decode_from_gdt() {
        let cs = segment(gdt(EntryMode::Linux64)[1], 0x08);
        assert_eq!(
            (cs.l, cs.db, cs.g, cs.type_, cs.present, cs.s),
            (1, 0, 1, 0xb, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(gdt(EntryMode::Pvh)[1], 0x08);
        assert_eq!((cs32.l, cs32.db), (0, 1));
    }

    #[test]
    fn long_mode_sregs_and_page_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem, EntryMode::Linux64).unwrap();
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, EntryMode::Linux64);
        assert_eq!(s.cr0 & X86_CR0_PG, X86_CR0_PG);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, layout::PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_ADDR)).unwrap();
        assert_eq!(pml4, layout::PDPT_ADDR | 3);
        let pde: u64 = mem
            .read_obj(GuestAddress(layout::PD_ADDR + 8 * 511))
            .unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(layout::GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn pvh_sregs_and_regs() {
        let mut s = kvm_sregs::default();
        setup_sregs(&mut s, EntryMode::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.efer, 0);
        let r = boot_regs(EntryMode::Pvh, 0x100_0000);
        assert_eq!((r.rip, r.rbx), (0x100_0000, layout::PVH_INFO_ADDR));
        let r = boot_regs(EntryMode::Linux64, 0x20_0200);
        assert_eq!(r.rsi, layout::ZERO_PAGE_ADDR);
    }

    #[test]
    fn lint_pins() {
        let mut st = kvm_lapic_state::default();
        set_lapic_reg(&mut st, APIC_LVT0, 0x0001_0000);
        setup_lint(&mut st);
        assert_eq!(lapic_reg(&st, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&st, APIC_LVT1), 0x0000_0400);
    }

    #[test]
    fn msrs_build() {
        assert_eq!(boot_msrs().unwrap().as_slice().len(), 11);
    }
}
