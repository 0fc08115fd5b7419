//! ACPI tables for the guest: RSDP, XSDT, FADT, MADT and a hand-encoded DSDT.
//!
//! The platform is "hardware-reduced" ACPI (FADT flag HW_REDUCED_ACPI): no PM1
//! blocks, no GPEs, no SCI. Power-off goes through the FADT sleep control
//! register, reset through RESET_REG. Every byte layout below follows the ACPI
//! 6.x specification (section numbers refer to ACPI 6.5).
//!
//! # IRQ 0 and interrupt source overrides
//!
//! The MADT deliberately carries no Interrupt Source Override entries:
//!
//! * KVM's default GSI routing (used until KVM_SET_GSI_ROUTING is called) maps
//!   GSI i to I/O APIC pin i (and, for i < 16, to PIC pin i). The in-kernel
//!   PIT injects GSI 0, so the PIT reaches I/O APIC pin 0, not pin 2 as on
//!   real chipsets. An "IRQ0 -> GSI 2" override (what QEMU's tables carry,
//!   because QEMU installs its own routing) would therefore be wrong here.
//! * Linux (arch/x86/kernel/acpi/boot.c) without overrides fills in identity
//!   mappings for ISA IRQs (`mp_config_acpi_legacy_irqs`: "Use the default
//!   configuration for the IRQs 0-15. Unless overridden by (MADT) interrupt
//!   source override entries"), i.e. ISA IRQ n -> GSI n, matching KVM.
//! * Moreover, on a hardware-reduced platform Linux runs
//!   `acpi_generic_reduced_hw_init`, which installs the null legacy PIC
//!   (`nr_legacy_irqs() == 0`) and skips the PIT timer setup, and it does not
//!   invent an override for the SCI (`!acpi_gbl_reduced_hardware` check). So
//!   the legacy-IRQ mapping is moot anyway and every device interrupt is a
//!   plain GSI == I/O APIC pin, which is what the DSDT's Interrupt()
//!   descriptors announce.

use thiserror::Error;

/// What the DSDT's `\_S5` package says. To power off, the guest writes
/// `(S5_SLP_TYP << 2) | (1 << 5)` (SLP_TYP | SLP_EN) to the sleep control port.
pub const S5_SLP_TYP: u8 = 5;

/// Number of pins of KVM's in-kernel I/O APIC (KVM_IOAPIC_NUM_PINS).
pub const IOAPIC_NUM_PINS: u32 = 24;

/// Largest number of MMIO devices the DSDT names can express ("V000".."VFFF").
pub const MAX_MMIO_DEVICES: usize = 0x1000;

const OEM_ID: [u8; 6] = *b"QVM   ";
const OEM_TABLE_ID: [u8; 8] = *b"QVMVMM  ";
const OEM_REVISION: u32 = 1;
const CREATOR_ID: [u8; 4] = *b"QVMM";
const CREATOR_REVISION: u32 = 1;

const RSDP_LEN: usize = 36;
const SDT_HEADER_LEN: usize = 36;
const FADT_LEN: usize = 276;
const TABLE_ALIGN: u64 = 8;

/// FADT flags (ACPI 6.5 table 5.10).
pub const FADT_F_PWR_BUTTON: u32 = 1 << 4;
pub const FADT_F_SLP_BUTTON: u32 = 1 << 5;
pub const FADT_F_RESET_REG_SUP: u32 = 1 << 10;
pub const FADT_F_HW_REDUCED_ACPI: u32 = 1 << 20;

/// IA-PC boot architecture flags (ACPI 6.5 table 5.11).
pub const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
pub const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT flag: the system also has a PC-AT-compatible dual 8259 setup.
pub const MADT_PCAT_COMPAT: u32 = 1;

/// Generic Address Structure address space id for system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// Generic Address Structure access size: byte access.
const GAS_ACCESS_BYTE: u8 = 1;

/// Inputs of [`build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs, 1..=254; their APIC ids are 0..num_cpus.
    pub num_cpus: u8,
    /// Local APIC base address (0xFEE0_0000).
    pub lapic_addr: u32,
    /// I/O APIC id (the lead passes `num_cpus`).
    pub ioapic_id: u8,
    /// I/O APIC base address (0xFEC0_0000).
    pub ioapic_addr: u32,
    /// Hardware-reduced ACPI sleep control register (I/O port, 8 bit).
    pub sleep_control_port: u16,
    /// Sleep status register (I/O port, 8 bit).
    pub sleep_status_port: u16,
    /// FADT RESET_REG (I/O port, 8 bit).
    pub reset_port: u16,
    /// Value the guest writes to `reset_port` to reset.
    pub reset_value: u8,
    /// QEMU-compatible pvpanic device (_HID "QEMU0001"), one I/O port.
    pub pvpanic_port: Option<u16>,
    /// 16550 UARTs described as PNP0501 devices with their I/O range and GSI. In
    /// hardware-reduced mode Linux has no legacy ISA IRQs, so a UART's interrupt only works if
    /// ACPI names it.
    pub serial_ports: Vec<SerialPort>,
    /// virtio-mmio devices announced in the DSDT (_HID "LNRO0005").
    pub mmio_devices: Vec<MmioDevice>,
    /// A power button (PNP0C0C) signalled through a Generic Event Device (ACPI0013) on this
    /// (edge-triggered) GSI: hardware-reduced ACPI has no fixed power button. Each interrupt
    /// is a press: the GED's `_EVT` notifies the button (0x80), Linux reports KEY_POWER.
    pub power_button_irq: Option<u32>,
}

/// A legacy UART: its 8 I/O ports start at `port`, its interrupt is GSI `irq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialPort {
    pub port: u16,
    pub irq: u32,
}

/// One virtio-mmio device window and its (edge-triggered) GSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    pub addr: u64,
    pub len: u64,
    pub irq: u32,
}

/// The built tables: where the RSDP is, and what to write where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    pub rsdp_addr: u64,
    /// (guest-physical address, bytes) for RSDP, XSDT, FADT, MADT, DSDT, in that order.
    pub blobs: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("invalid vCPU count {0}: ACPI tables support 1..=254")]
    InvalidCpuCount(u8),
    #[error("ACPI base address {0:#x} is not 16-byte aligned")]
    MisalignedBase(u64),
    #[error("ACPI tables need [{base:#x}, {end:#x}) but the region ends at {limit:#x}")]
    DoesNotFit { base: u64, end: u64, limit: u64 },
    #[error("too many virtio-mmio devices: {0} (at most {MAX_MMIO_DEVICES})")]
    TooManyDevices(usize),
    #[error("virtio-mmio device {index} has an invalid window {addr:#x}+{len:#x}")]
    InvalidMmioWindow { index: usize, addr: u64, len: u64 },
    #[error(
        "virtio-mmio device {index} uses GSI {irq}, but the I/O APIC has {IOAPIC_NUM_PINS} pins"
    )]
    InvalidIrq { index: usize, irq: u32 },
}

/// Builds RSDP (at `base`), XSDT, FADT, MADT and DSDT, each 8-byte aligned,
/// all inside `[base, limit)`.
pub fn build(cfg: &AcpiConfig, base: u64, limit: u64) -> Result<AcpiTables, AcpiError> {
    if cfg.num_cpus == 0 || cfg.num_cpus > 254 {
        return Err(AcpiError::InvalidCpuCount(cfg.num_cpus));
    }
    // Linux's BIOS-area scan only looks at 16-byte boundaries.
    if base & 0xF != 0 {
        return Err(AcpiError::MisalignedBase(base));
    }
    if cfg.mmio_devices.len() > MAX_MMIO_DEVICES {
        return Err(AcpiError::TooManyDevices(cfg.mmio_devices.len()));
    }
    for (index, dev) in cfg.mmio_devices.iter().enumerate() {
        if dev.len == 0 || dev.addr.checked_add(dev.len - 1).is_none() {
            return Err(AcpiError::InvalidMmioWindow {
                index,
                addr: dev.addr,
                len: dev.len,
            });
        }
        if dev.irq >= IOAPIC_NUM_PINS {
            return Err(AcpiError::InvalidIrq {
                index,
                irq: dev.irq,
            });
        }
    }

    for com in &cfg.serial_ports {
        if com.irq >= IOAPIC_NUM_PINS {
            return Err(AcpiError::InvalidIrq {
                index: 0,
                irq: com.irq,
            });
        }
    }

    // DSDT and MADT contain no addresses of other tables: build them first,
    // then lay everything out and build the tables that point at others.
    let dsdt = build_dsdt(cfg);
    let madt = build_madt(cfg);
    let xsdt_len = SDT_HEADER_LEN + 2 * 8;

    let too_big = |end: u64| AcpiError::DoesNotFit { base, end, limit };
    let place = |at: u64, len: usize| -> Result<(u64, u64), AcpiError> {
        let start = at
            .checked_add(TABLE_ALIGN - 1)
            .map(|a| a & !(TABLE_ALIGN - 1))
            .ok_or(too_big(u64::MAX))?;
        let end = start.checked_add(len as u64).ok_or(too_big(u64::MAX))?;
        Ok((start, end))
    };
    let (rsdp_addr, end) = place(base, RSDP_LEN)?;
    let (xsdt_addr, end) = place(end, xsdt_len)?;
    let (fadt_addr, end) = place(end, FADT_LEN)?;
    let (madt_addr, end) = place(end, madt.len())?;
    let (dsdt_addr, end) = place(end, dsdt.len())?;
    if end > limit {
        return Err(too_big(end));
    }

    let fadt = build_fadt(cfg, dsdt_addr);
    let xsdt = build_xsdt(&[fadt_addr, madt_addr]);
    let rsdp = build_rsdp(xsdt_addr);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    debug_assert_eq!(fadt.len(), FADT_LEN);

    Ok(AcpiTables {
        rsdp_addr,
        blobs: vec![
            (rsdp_addr, rsdp),
            (xsdt_addr, xsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (dsdt_addr, dsdt),
        ],
    })
}

/// The byte that makes `bytes` (with the checksum byte itself still 0) sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// RSDP, ACPI 2.0+ form (ACPI 6.5 section 5.2.5.3).
fn build_rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(RSDP_LEN);
    b.extend_from_slice(b"RSD PTR "); // 0: signature
    b.push(0); // 8: checksum of the first 20 bytes
    b.extend_from_slice(&OEM_ID); // 9: OEM id
    b.push(2); // 15: revision (2 = ACPI 2.0+)
    b.extend_from_slice(&0u32.to_le_bytes()); // 16: RSDT address (none)
    b.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes()); // 20: length
    b.extend_from_slice(&xsdt_addr.to_le_bytes()); // 24: XSDT address
    b.push(0); // 32: extended checksum (whole table)
    b.extend_from_slice(&[0; 3]); // 33: reserved
    b[8] = checksum(&b[..20]);
    b[32] = checksum(&b);
    b
}

/// Common system description table header (ACPI 6.5 section 5.2.6);
/// length and checksum are filled in by [`finish_sdt`].
fn sdt_header(signature: &[u8; 4], revision: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(SDT_HEADER_LEN);
    b.extend_from_slice(signature); // 0
    b.extend_from_slice(&0u32.to_le_bytes()); // 4: length
    b.push(revision); // 8
    b.push(0); // 9: checksum
    b.extend_from_slice(&OEM_ID); // 10
    b.extend_from_slice(&OEM_TABLE_ID); // 16
    b.extend_from_slice(&OEM_REVISION.to_le_bytes()); // 24
    b.extend_from_slice(&CREATOR_ID); // 28
    b.extend_from_slice(&CREATOR_REVISION.to_le_bytes()); // 32
    b
}

fn finish_sdt(mut b: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(b.len()).expect("ACPI table larger than 4 GiB");
    b[4..8].copy_from_slice(&len.to_le_bytes());
    b[9] = 0;
    b[9] = checksum(&b);
    b
}

/// XSDT (ACPI 6.5 section 5.2.8): 64-bit pointers to the other tables.
fn build_xsdt(entries: &[u64]) -> Vec<u8> {
    let mut b = sdt_header(b"XSDT", 1);
    for e in entries {
        b.extend_from_slice(&e.to_le_bytes());
    }
    finish_sdt(b)
}

/// Generic Address Structure (ACPI 6.5 section 5.2.3.2) for an 8-bit I/O port.
fn gas_io8(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO; // address space id
    g[1] = 8; // register bit width
    g[2] = 0; // register bit offset
    g[3] = GAS_ACCESS_BYTE; // access size
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// FADT revision 6 (ACPI 6.5 section 5.2.9, table 5.9), 276 bytes.
fn build_fadt(cfg: &AcpiConfig, dsdt_addr: u64) -> Vec<u8> {
    let mut b = sdt_header(b"FACP", 6);
    b.resize(FADT_LEN, 0);
    // 36: FIRMWARE_CTRL = 0 (no FACS; optional on hardware-reduced platforms).
    // 40: DSDT (32-bit), only if the DSDT is below 4 GiB; X_DSDT is authoritative.
    let dsdt32 = u32::try_from(dsdt_addr).unwrap_or(0);
    b[40..44].copy_from_slice(&dsdt32.to_le_bytes());
    // 45: Preferred_PM_Profile = 0 (unspecified). 46: SCI_INT = 0 (no SCI).
    // 48..109: SMI_CMD, PM1/PM2/PM_TMR/GPE blocks, C-state latencies: all 0,
    // as required on a hardware-reduced platform.
    // 109: IAPC_BOOT_ARCH. Bit 1 (8042) clear: no i8042 controller.
    let iapc = IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT;
    b[109..111].copy_from_slice(&iapc.to_le_bytes());
    // 112: flags.
    let flags =
        FADT_F_PWR_BUTTON | FADT_F_SLP_BUTTON | FADT_F_RESET_REG_SUP | FADT_F_HW_REDUCED_ACPI;
    b[112..116].copy_from_slice(&flags.to_le_bytes());
    // 116: RESET_REG, 128: RESET_VALUE.
    b[116..128].copy_from_slice(&gas_io8(cfg.reset_port));
    b[128] = cfg.reset_value;
    // 129: ARM_BOOT_ARCH = 0. 131: FADT minor version (ACPI 6.5).
    b[131] = 5;
    // 132: X_FIRMWARE_CTRL = 0. 140: X_DSDT.
    b[140..148].copy_from_slice(&dsdt_addr.to_le_bytes());
    // 148..244: X_PM1a_EVT .. X_GPE1 blocks: all zero.
    // 244: SLEEP_CONTROL_REG, 256: SLEEP_STATUS_REG.
    b[244..256].copy_from_slice(&gas_io8(cfg.sleep_control_port));
    b[256..268].copy_from_slice(&gas_io8(cfg.sleep_status_port));
    // 268: hypervisor vendor identity.
    b[268..276].copy_from_slice(b"QVMVMM\0\0");
    finish_sdt(b)
}

/// MADT (ACPI 6.5 section 5.2.12), revision 5.
fn build_madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = sdt_header(b"APIC", 5);
    b.extend_from_slice(&cfg.lapic_addr.to_le_bytes()); // 36: local APIC address
    b.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes()); // 40: flags
    for id in 0..cfg.num_cpus {
        // Processor Local APIC structure (type 0, 8 bytes).
        b.push(0); // type
        b.push(8); // length
        b.push(id); // ACPI processor UID
        b.push(id); // APIC id
        b.extend_from_slice(&1u32.to_le_bytes()); // flags: enabled
    }
    // I/O APIC structure (type 1, 12 bytes).
    b.push(1); // type
    b.push(12); // length
    b.push(cfg.ioapic_id);
    b.push(0); // reserved
    b.extend_from_slice(&cfg.ioapic_addr.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // global system interrupt base
                                              // No interrupt source overrides: see the module documentation.
    finish_sdt(b)
}

/// DSDT (ACPI 6.5 section 5.2.11.1), revision 2 (64-bit AML integers).
fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut b = sdt_header(b"DSDT", 2);

    // Name (\_S5, Package () { S5_SLP_TYP, 0, 0, 0 })
    b.extend(aml::name(
        "\\_S5_",
        &aml::package(&[
            aml::integer(S5_SLP_TYP.into()),
            aml::integer(0),
            aml::integer(0),
            aml::integer(0),
        ]),
    ));

    let mut sb = Vec::new();
    for (i, com) in cfg.serial_ports.iter().enumerate() {
        let mut dev = Vec::new();
        // EisaId ("PNP0501"): 16550A-compatible COM port.
        dev.extend(aml::name("_HID", &aml::integer(0x0105_D041)));
        dev.extend(aml::name("_UID", &aml::integer(i as u64)));
        dev.extend(aml::name(
            "_CRS",
            &aml::resource_template(&[
                aml::io16(com.port, com.port, 1, 8),
                aml::interrupt(true, true, false, false, com.irq),
            ]),
        ));
        sb.extend(aml::device(&format!("COM{}", i + 1), &dev));
    }
    if let Some(port) = cfg.pvpanic_port {
        let mut dev = Vec::new();
        dev.extend(aml::name("_HID", &aml::string("QEMU0001")));
        dev.extend(aml::name("_STA", &aml::integer(0xF)));
        dev.extend(aml::name(
            "_CRS",
            &aml::resource_template(&[aml::io16(port, port, 1, 1)]),
        ));
        sb.extend(aml::device("PEVT", &dev));
    }
    for (i, d) in cfg.mmio_devices.iter().enumerate() {
        let window = match u32::try_from(d.addr).ok().zip(u32::try_from(d.len).ok()) {
            // Memory32Fixed needs the whole window below 4 GiB.
            Some((addr, len)) if u32::try_from(d.addr + d.len - 1).is_ok() => {
                aml::memory32_fixed(true, addr, len)
            }
            _ => aml::qword_memory(true, d.addr, d.len),
        };
        let mut dev = Vec::new();
        dev.extend(aml::name("_HID", &aml::string("LNRO0005")));
        dev.extend(aml::name("_UID", &aml::integer(i as u64)));
        dev.extend(aml::name(
            "_CRS",
            &aml::resource_template(&[
                window,
                // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { irq }
                aml::interrupt(true, true, false, false, d.irq),
            ]),
        ));
        sb.extend(aml::device(&format!("V{i:03X}"), &dev));
    }
    if let Some(irq) = cfg.power_button_irq {
        let mut pwrb = Vec::new();
        // EisaId ("PNP0C0C"): power button device.
        pwrb.extend(aml::name("_HID", &aml::integer(0x0C0C_D041)));
        pwrb.extend(aml::name("_UID", &aml::integer(0)));
        sb.extend(aml::device("PWRB", &pwrb));
        let mut ged = Vec::new();
        ged.extend(aml::name("_HID", &aml::string("ACPI0013")));
        ged.extend(aml::name("_UID", &aml::integer(0)));
        ged.extend(aml::name(
            "_CRS",
            &aml::resource_template(&[aml::interrupt(true, true, false, false, irq)]),
        ));
        // Method (_EVT, 1) { Notify (\_SB.PWRB, 0x80) }: the only event is a press.
        ged.extend(aml::method("_EVT", 1, &aml::notify("\\_SB_.PWRB", 0x80)));
        sb.extend(aml::device("GED0", &ged));
    }
    b.extend(aml::scope("\\_SB_", &sb));
    finish_sdt(b)
}

/// Hand-written AML encoders (ACPI 6.5 chapter 20) and resource descriptors
/// (ACPI 6.5 section 6.4).
mod aml {
    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const BYTE_PREFIX: u8 = 0x0A;
    const WORD_PREFIX: u8 = 0x0B;
    const DWORD_PREFIX: u8 = 0x0C;
    const STRING_PREFIX: u8 = 0x0D;
    const QWORD_PREFIX: u8 = 0x0E;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const DUAL_NAME_PREFIX: u8 = 0x2E;
    const MULTI_NAME_PREFIX: u8 = 0x2F;
    const EXT_OP_PREFIX: u8 = 0x5B;
    const DEVICE_OP: u8 = 0x82;
    const ROOT_CHAR: u8 = b'\\';
    const PARENT_PREFIX_CHAR: u8 = b'^';

    /// Encodes a PkgLength whose value is `total`, the number of bytes of the
    /// package including the PkgLength encoding itself (1 to 4 bytes).
    pub fn encode_pkg_length_total(total: usize) -> Vec<u8> {
        if total < 1 << 6 {
            vec![total as u8]
        } else if total < 1 << 12 {
            vec![(1 << 6) | (total & 0xF) as u8, (total >> 4) as u8]
        } else if total < 1 << 20 {
            vec![
                (2 << 6) | (total & 0xF) as u8,
                (total >> 4) as u8,
                (total >> 12) as u8,
            ]
        } else {
            assert!(total < 1 << 28, "AML package too large: {total} bytes");
            vec![
                (3 << 6) | (total & 0xF) as u8,
                (total >> 4) as u8,
                (total >> 12) as u8,
                (total >> 20) as u8,
            ]
        }
    }

    /// PkgLength for a package whose contents after the PkgLength are
    /// `payload_len` bytes long.
    pub fn pkg_length(payload_len: usize) -> Vec<u8> {
        // Pick the shortest form whose own size still fits.
        (1..=4)
            .map(|n| payload_len + n)
            .find(|&total| encode_pkg_length_total(total).len() == total - payload_len)
            .map(encode_pkg_length_total)
            .expect("AML package too large")
    }

    /// `op` (one or more bytes), PkgLength, then `payload`.
    fn with_pkg_length(op: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut b = op.to_vec();
        b.extend(pkg_length(payload.len()));
        b.extend_from_slice(payload);
        b
    }

    /// A NameSeg: 1 to 4 characters, padded with '_'.
    pub fn name_seg(seg: &str) -> [u8; 4] {
        let bytes = seg.as_bytes();
        assert!(
            (1..=4).contains(&bytes.len())
                && (bytes[0].is_ascii_uppercase() || bytes[0] == b'_')
                && bytes
                    .iter()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_'),
            "invalid AML NameSeg {seg:?}"
        );
        let mut out = [b'_'; 4];
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    /// A NameString such as `_HID`, `\_SB_`, `\_SB_.PCI0.S00_` or `^FOO`.
    pub fn name_string(path: &str) -> Vec<u8> {
        let mut b = Vec::new();
        let mut rest = path;
        if let Some(r) = rest.strip_prefix('\\') {
            b.push(ROOT_CHAR);
            rest = r;
        } else {
            while let Some(r) = rest.strip_prefix('^') {
                b.push(PARENT_PREFIX_CHAR);
                rest = r;
            }
        }
        let segs: Vec<[u8; 4]> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').map(name_seg).collect()
        };
        match segs.len() {
            0 => b.push(0), // NullName
            1 => {}
            2 => b.push(DUAL_NAME_PREFIX),
            n => {
                b.push(MULTI_NAME_PREFIX);
                b.push(u8::try_from(n).expect("too many NameSegs"));
            }
        }
        for s in segs {
            b.extend_from_slice(&s);
        }
        b
    }

    /// The shortest integer encoding of `v`.
    pub fn integer(v: u64) -> Vec<u8> {
        match v {
            0 => vec![ZERO_OP],
            1 => vec![ONE_OP],
            2..=0xFF => vec![BYTE_PREFIX, v as u8],
            0x100..=0xFFFF => {
                let mut b = vec![WORD_PREFIX];
                b.extend_from_slice(&(v as u16).to_le_bytes());
                b
            }
            0x1_0000..=0xFFFF_FFFF => {
                let mut b = vec![DWORD_PREFIX];
                b.extend_from_slice(&(v as u32).to_le_bytes());
                b
            }
            _ => {
                let mut b = vec![QWORD_PREFIX];
                b.extend_from_slice(&v.to_le_bytes());
                b
            }
        }
    }

    /// A String: ASCII characters without NUL, NUL-terminated.
    pub fn string(s: &str) -> Vec<u8> {
        assert!(
            s.bytes().all(|c| (0x01..=0x7F).contains(&c)),
            "invalid AML string {s:?}"
        );
        let mut b = vec![STRING_PREFIX];
        b.extend_from_slice(s.as_bytes());
        b.push(0);
        b
    }

    /// Buffer (size) { bytes }
    pub fn buffer(bytes: &[u8]) -> Vec<u8> {
        let mut payload = integer(bytes.len() as u64);
        payload.extend_from_slice(bytes);
        with_pkg_length(&[BUFFER_OP], &payload)
    }

    /// Package () { elements }, each element already encoded.
    pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![u8::try_from(elements.len()).expect("package too long")];
        for e in elements {
            payload.extend_from_slice(e);
        }
        with_pkg_length(&[PACKAGE_OP], &payload)
    }

    /// Name (path, value)
    pub fn name(path: &str, value: &[u8]) -> Vec<u8> {
        let mut b = vec![NAME_OP];
        b.extend(name_string(path));
        b.extend_from_slice(value);
        b
    }

    /// Scope (path) { body }
    pub fn scope(path: &str, body: &[u8]) -> Vec<u8> {
        let mut payload = name_string(path);
        payload.extend_from_slice(body);
        with_pkg_length(&[SCOPE_OP], &payload)
    }

    /// Device (path) { body }
    pub fn device(path: &str, body: &[u8]) -> Vec<u8> {
        let mut payload = name_string(path);
        payload.extend_from_slice(body);
        with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &payload)
    }

    /// ResourceTemplate () { descriptors }: a Buffer ending with the End Tag
    /// (small item 0x0F, length 1 -> 0x79) and checksum 0 ("treat as valid").
    pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes: Vec<u8> = descriptors.concat();
        bytes.extend_from_slice(&[0x79, 0x00]);
        buffer(&bytes)
    }

    /// IO (Decode16, min, max, align, len): I/O port descriptor
    /// (ACPI 6.5 section 6.4.2.5, small item 0x08, length 7 -> 0x47).
    pub fn io16(min: u16, max: u16, align: u8, len: u8) -> Vec<u8> {
        let mut b = vec![0x47, 0x01]; // information: 16-bit decode
        b.extend_from_slice(&min.to_le_bytes());
        b.extend_from_slice(&max.to_le_bytes());
        b.push(align);
        b.push(len);
        b
    }

    /// Memory32Fixed (ReadWrite/ReadOnly, base, len)
    /// (ACPI 6.5 section 6.4.3.4, large item 0x06 -> 0x86, length 9).
    pub fn memory32_fixed(read_write: bool, base: u32, len: u32) -> Vec<u8> {
        let mut b = vec![0x86, 9, 0, u8::from(read_write)];
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    /// QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed,
    /// NonCacheable, ReadWrite/ReadOnly, 0, base, base + len - 1, 0, len)
    /// (ACPI 6.5 section 6.4.3.5.1, large item 0x0A -> 0x8A, length 43).
    pub fn qword_memory(read_write: bool, base: u64, len: u64) -> Vec<u8> {
        let mut b = vec![0x8A, 43, 0];
        b.push(0); // resource type: memory range
        b.push((1 << 3) | (1 << 2) | 1); // general flags: _MAF, _MIF, consumer
        b.push(u8::from(read_write)); // type-specific: _RW, _MEM = non-cacheable
        b.extend_from_slice(&0u64.to_le_bytes()); // _GRA
        b.extend_from_slice(&base.to_le_bytes()); // _MIN
        b.extend_from_slice(&(base + (len - 1)).to_le_bytes()); // _MAX
        b.extend_from_slice(&0u64.to_le_bytes()); // _TRA
        b.extend_from_slice(&len.to_le_bytes()); // _LEN
        b
    }

    /// Method (name, args) { body }, not serialized (ACPI 6.5 section 20.2.5.2, MethodOp 0x14).
    pub fn method(name: &str, args: u8, body: &[u8]) -> Vec<u8> {
        let mut payload = name_string(name);
        payload.push(args & 7);
        payload.extend_from_slice(body);
        with_pkg_length(&[0x14], &payload)
    }

    /// Notify (object, value) (ACPI 6.5 section 20.2.5.3, NotifyOp 0x86).
    pub fn notify(path: &str, value: u64) -> Vec<u8> {
        let mut b = vec![0x86];
        b.extend(name_string(path));
        b.extend(integer(value));
        b
    }

    /// Interrupt (ResourceConsumer/Producer, Edge/Level, ActiveLow/High,
    /// Shared/Exclusive) { irq }: extended interrupt descriptor
    /// (ACPI 6.5 section 6.4.3.6, large item 0x09 -> 0x89).
    pub fn interrupt(
        consumer: bool,
        edge: bool,
        active_low: bool,
        shared: bool,
        irq: u32,
    ) -> Vec<u8> {
        let flags = u8::from(consumer)
            | (u8::from(edge) << 1)
            | (u8::from(active_low) << 2)
            | (u8::from(shared) << 3);
        let mut b = vec![0x89, 6, 0, flags, 1]; // length 6, one interrupt
        b.extend_from_slice(&irq.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests;
