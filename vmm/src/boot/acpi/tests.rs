//! Tests of the ACPI tables: each table parsed back (lengths, checksums, FADT and MADT fields),
//! the DSDT's AML encodings and devices, the refused configs, and iasl disassembling what we
//! build (where iasl is installed).

use super::*;

const BASE: u64 = 0xE0000;
const LIMIT: u64 = 0x100000;

fn config(num_cpus: u8) -> AcpiConfig {
    AcpiConfig {
        num_cpus,
        lapic_addr: 0xFEE0_0000,
        ioapic_id: num_cpus,
        ioapic_addr: 0xFEC0_0000,
        sleep_control_port: 0x3C0,
        sleep_status_port: 0x3C1,
        reset_port: 0x3C2,
        reset_value: 0x42,
        pvpanic_port: Some(0x505),
        power_button_irq: Some(3),
        serial_ports: vec![SerialPort {
            port: 0x3f8,
            irq: 4,
        }],
        mmio_devices: vec![
            MmioDevice {
                addr: 0xD000_0000,
                len: 0x1000,
                irq: 5,
            },
            MmioDevice {
                addr: 0x1_0000_0000,
                len: 0x1000,
                irq: 6,
            },
        ],
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// (address, bytes) of the table with this signature.
fn table<'a>(t: &'a AcpiTables, sig: &[u8]) -> (u64, &'a [u8]) {
    let (addr, bytes) = t
        .blobs
        .iter()
        .find(|(_, b)| b.starts_with(sig))
        .unwrap_or_else(|| panic!("no {:?} table", String::from_utf8_lossy(sig)));
    (*addr, bytes)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn layout_and_checksums() {
    let t = build(&config(2), BASE, LIMIT).unwrap();
    assert_eq!(t.rsdp_addr, BASE);
    assert_eq!(t.blobs.len(), 5);
    let mut prev_end = BASE;
    for (addr, bytes) in &t.blobs {
        assert_eq!(addr & 7, 0);
        assert!(*addr >= prev_end, "tables overlap");
        prev_end = addr + bytes.len() as u64;
        assert_eq!(sum(bytes), 0, "checksum of {:?}", &bytes[..4]);
        if !bytes.starts_with(b"RSD PTR ") {
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len());
            assert_eq!(&bytes[10..16], b"QVM   ");
            assert_eq!(&bytes[16..24], b"QVMVMM  ");
            assert_eq!(&bytes[28..32], b"QVMM");
        }
    }
    assert!(prev_end <= LIMIT);
}

#[test]
fn rsdp_and_xsdt() {
    let t = build(&config(1), BASE, LIMIT).unwrap();
    let (addr, rsdp) = &t.blobs[0];
    assert_eq!(*addr, t.rsdp_addr);
    assert_eq!(rsdp.len(), 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0);
    assert_eq!(sum(rsdp), 0);
    assert_eq!(&rsdp[9..15], b"QVM   ");
    assert_eq!(rsdp[15], 2);
    assert_eq!(u32_at(rsdp, 16), 0);
    assert_eq!(u32_at(rsdp, 20), 36);

    let (xsdt_addr, xsdt) = table(&t, b"XSDT");
    assert_eq!(u64_at(rsdp, 24), xsdt_addr);
    assert_eq!(xsdt.len(), 36 + 16);
    let (fadt_addr, _) = table(&t, b"FACP");
    let (madt_addr, _) = table(&t, b"APIC");
    assert_eq!(u64_at(xsdt, 36), fadt_addr);
    assert_eq!(u64_at(xsdt, 44), madt_addr);
}

#[test]
fn fadt_fields() {
    let cfg = config(4);
    let t = build(&cfg, BASE, LIMIT).unwrap();
    let (_, fadt) = table(&t, b"FACP");
    let (dsdt_addr, _) = table(&t, b"DSDT");
    assert_eq!(fadt.len(), 276);
    assert_eq!(fadt[8], 6);
    assert_eq!(u64_at(fadt, 140), dsdt_addr);
    assert_eq!(u64::from(u32_at(fadt, 40)), dsdt_addr);
    let flags = u32_at(fadt, 112);
    assert_eq!(flags, (1 << 20) | (1 << 10) | (1 << 5) | (1 << 4));
    assert_eq!(u16_at(fadt, 109), (1 << 2) | (1 << 5));
    assert_eq!(u16_at(fadt, 46), 0, "no SCI");
    // RESET_REG + RESET_VALUE
    assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
    assert_eq!(u64_at(fadt, 120), 0x3C2);
    assert_eq!(fadt[128], 0x42);
    // SLEEP_CONTROL_REG, SLEEP_STATUS_REG
    assert_eq!(&fadt[244..248], &[1, 8, 0, 1]);
    assert_eq!(u64_at(fadt, 248), 0x3C0);
    assert_eq!(&fadt[256..260], &[1, 8, 0, 1]);
    assert_eq!(u64_at(fadt, 260), 0x3C1);
    // No legacy PM blocks.
    assert!(fadt[56..92].iter().all(|b| *b == 0));
    assert!(fadt[148..244].iter().all(|b| *b == 0));
}

#[test]
fn madt_cpus() {
    for n in [1u8, 2, 8, 254] {
        let t = build(&config(n), BASE, LIMIT).unwrap();
        let (_, madt) = table(&t, b"APIC");
        assert_eq!(madt[8], 5);
        assert_eq!(u32_at(madt, 36), 0xFEE0_0000);
        assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
        let mut lapic_ids = Vec::new();
        let mut ioapics = Vec::new();
        let mut off = 44;
        while off < madt.len() {
            let (ty, len) = (madt[off], madt[off + 1] as usize);
            let e = &madt[off..off + len];
            match ty {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(e[2], e[3], "uid == apic id");
                    assert_eq!(u32_at(e, 4), 1, "enabled");
                    lapic_ids.push(e[3]);
                }
                1 => {
                    assert_eq!(len, 12);
                    ioapics.push((e[2], u32_at(e, 4), u32_at(e, 8)));
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            off += len;
        }
        assert_eq!(off, madt.len());
        assert_eq!(lapic_ids, (0..n).collect::<Vec<u8>>());
        assert_eq!(ioapics, vec![(n, 0xFEC0_0000, 0)]);
    }
}

#[test]
fn dsdt_s5() {
    let t = build(&config(1), BASE, LIMIT).unwrap();
    let (_, dsdt) = table(&t, b"DSDT");
    let at = find(dsdt, b"_S5_").expect("no _S5_");
    assert_eq!(dsdt[at - 2..at], [0x08, b'\\'], "Name(\\_S5_, ...)");
    // PackageOp, PkgLength, NumElements 4, BytePrefix 5, Zero, Zero, Zero
    assert_eq!(
        dsdt[at + 4..at + 12],
        [0x12, 7, 4, 0x0A, S5_SLP_TYP, 0, 0, 0]
    );
}

#[test]
fn dsdt_devices() {
    let t = build(&config(1), BASE, LIMIT).unwrap();
    let (_, dsdt) = table(&t, b"DSDT");
    assert!(find(dsdt, b"QEMU0001\0").is_some());
    assert!(find(dsdt, b"PEVT").is_some());
    assert!(find(dsdt, b"V000").is_some());
    assert!(find(dsdt, b"V001").is_some());
    // pvpanic: IO(Decode16, 0x505, 0x505, 1, 1)
    assert!(find(dsdt, &[0x47, 1, 0x05, 0x05, 0x05, 0x05, 1, 1]).is_some());
    // V000: Memory32Fixed(ReadWrite, 0xD0000000, 0x1000), Interrupt {5}, End
    let mut res = vec![0x86, 9, 0, 1, 0, 0, 0, 0xD0, 0, 0x10, 0, 0];
    res.extend_from_slice(&[0x89, 6, 0, 0x03, 1, 5, 0, 0, 0, 0x79, 0]);
    assert!(find(dsdt, &res).is_some());
    // V001 is above 4 GiB: QWordMemory.
    let q = aml::qword_memory(true, 0x1_0000_0000, 0x1000);
    assert_eq!(q.len(), 46);
    assert_eq!(u64_at(&q, 22), 0x1_0000_0FFF);
    assert!(find(dsdt, &q).is_some());
}

#[test]
fn errors() {
    assert_eq!(
        build(&config(0), BASE, LIMIT),
        Err(AcpiError::InvalidCpuCount(0))
    );
    assert_eq!(
        build(&config(255), BASE, LIMIT),
        Err(AcpiError::InvalidCpuCount(255))
    );
    assert!(matches!(
        build(&config(1), BASE, BASE + 200),
        Err(AcpiError::DoesNotFit { .. })
    ));
    // Exactly enough room is fine, one byte less is not.
    let t = build(&config(8), BASE, LIMIT).unwrap();
    let (addr, last) = t.blobs.last().unwrap();
    let end = addr + last.len() as u64;
    assert!(build(&config(8), BASE, end).is_ok());
    assert_eq!(
        build(&config(8), BASE, end - 1),
        Err(AcpiError::DoesNotFit {
            base: BASE,
            end,
            limit: end - 1
        })
    );
    assert_eq!(
        build(&config(1), BASE + 8, LIMIT),
        Err(AcpiError::MisalignedBase(BASE + 8))
    );
    assert!(matches!(
        build(&config(1), u64::MAX - 15, u64::MAX),
        Err(AcpiError::DoesNotFit { .. })
    ));
    let mut cfg = config(1);
    cfg.mmio_devices[1].irq = 24;
    assert_eq!(
        build(&cfg, BASE, LIMIT),
        Err(AcpiError::InvalidIrq { index: 1, irq: 24 })
    );
    cfg.mmio_devices[0].len = 0;
    assert!(matches!(
        build(&cfg, BASE, LIMIT),
        Err(AcpiError::InvalidMmioWindow { index: 0, .. })
    ));
}

#[test]
fn pkg_length_boundaries() {
    use aml::{encode_pkg_length_total as total, pkg_length};
    // Encodings of a total length value.
    assert_eq!(total(63), [0x3F]);
    assert_eq!(total(64), [0x40, 0x04]);
    assert_eq!(total(4095), [0x4F, 0xFF]);
    assert_eq!(total(4096), [0x80, 0x00, 0x01]);
    assert_eq!(total((1 << 20) - 1), [0x8F, 0xFF, 0xFF]);
    assert_eq!(total(1 << 20), [0xC0, 0x00, 0x00, 0x01]);
    // From a payload length (the PkgLength counts itself).
    assert_eq!(pkg_length(62), [63]); // total 63: one byte
    assert_eq!(pkg_length(63), [0x41, 0x04]); // 64 won't fit 1 byte -> 65
    assert_eq!(pkg_length(64), [0x42, 0x04]);
    assert_eq!(pkg_length(4093), [0x4F, 0xFF]); // total 4095
    assert_eq!(pkg_length(4094), [0x81, 0x00, 0x01]); // total 4097
    assert_eq!(pkg_length(4096), [0x83, 0x00, 0x01]);
    assert_eq!(pkg_length((1 << 20) - 4), [0x8F, 0xFF, 0xFF]);
    assert_eq!(pkg_length((1 << 20) - 3), [0xC1, 0x00, 0x00, 0x01]);
}

#[test]
fn aml_encodings() {
    assert_eq!(aml::integer(0), [0x00]);
    assert_eq!(aml::integer(1), [0x01]);
    assert_eq!(aml::integer(0xFF), [0x0A, 0xFF]);
    assert_eq!(aml::integer(0x100), [0x0B, 0x00, 0x01]);
    assert_eq!(aml::integer(0x1_0000), [0x0C, 0, 0, 1, 0]);
    assert_eq!(aml::integer(1 << 32), [0x0E, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(aml::string("AB"), [0x0D, b'A', b'B', 0]);
    assert_eq!(aml::name_string("_HID"), *b"_HID");
    assert_eq!(aml::name_string("\\_SB"), *b"\\_SB_");
    assert_eq!(aml::name_string("\\"), [b'\\', 0]);
    assert_eq!(aml::name_string("^A.B"), *b"^.A___B___");
    assert_eq!(aml::name_string("A.B.C"), *b"/\x03A___B___C___");
    assert_eq!(aml::buffer(&[7, 8]), [0x11, 5, 0x0A, 2, 7, 8]);
    assert_eq!(
        aml::device("FOO", &[]),
        [0x5B, 0x82, 5, b'F', b'O', b'O', b'_']
    );
    // A large package exercises the multi-byte PkgLength path.
    let big = aml::buffer(&[0u8; 5000]);
    assert_eq!(&big[..6], &[0x11, 0x8E, 0x38, 0x01, 0x0B, 0x88]);
    assert_eq!(big.len(), 1 + 3 + 3 + 5000);
}

/// `iasl` (ACPICA's compiler/disassembler) must be there: a test whose dependency is
/// missing fails, naming the package (scripts/install-deps.sh installs it).
fn need_iasl() {
    let found = std::process::Command::new("iasl")
        .arg("-v")
        .output()
        .is_ok();
    assert!(found, "iasl is not installed: apt-get install acpica-tools");
}

/// Runs `iasl args...` in `dir`, asserting success.
fn run_iasl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "iasl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qvm-acpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `iasl -d` on `bytes` and returns the disassembly.
fn iasl_disassemble(name: &str, bytes: &[u8]) -> String {
    let dir = scratch_dir(name);
    std::fs::write(dir.join(format!("{name}.aml")), bytes).unwrap();
    run_iasl(&dir, &["-d", &format!("{name}.aml")]);
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    dsl
}

#[test]
fn iasl_disassembles_dsdt() {
    need_iasl();
    let t = build(&config(2), BASE, LIMIT).unwrap();
    let (_, dsdt) = table(&t, b"DSDT");
    let dsl = iasl_disassemble("dsdt", dsdt);
    println!("{dsl}");
    for needle in [
        "QEMU0001",
        "LNRO0005",
        "_S5_",
        "Device (COM1)",
        "Name (_HID, EisaId (\"PNP0501\")",
        "0x03F8,",
        "Device (V000)",
        "Device (V001)",
        "Memory32Fixed (ReadWrite,",
        "QWordMemory (ResourceConsumer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "IO (Decode16,",
        "Device (PWRB)",
        "Name (_HID, EisaId (\"PNP0C0C\")",
        "Device (GED0)",
        "Name (_HID, \"ACPI0013\" /* Generic Event Device */)",
        "Method (_EVT, 1, NotSerialized)",
        "Notify (\\_SB.PWRB, 0x80)",
    ] {
        assert!(dsl.contains(needle), "{needle} missing from:\n{dsl}");
    }

    // Round trip: iasl, without optimizations, recompiles the disassembly
    // into exactly our AML (the header differs: compiler id, checksum).
    let dir = scratch_dir("dsdt-roundtrip");
    std::fs::write(dir.join("in.dsl"), &dsl).unwrap();
    run_iasl(&dir, &["-oa", "-p", "out", "in.dsl"]);
    let aml = std::fs::read(dir.join("out.aml")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        aml[36..],
        dsdt[36..],
        "iasl re-encodes the DSDT differently"
    );
}

#[test]
fn iasl_disassembles_data_tables() {
    need_iasl();
    let t = build(&config(2), BASE, LIMIT).unwrap();
    for (sig, name) in [(b"FACP", "facp"), (b"APIC", "apic"), (b"XSDT", "xsdt")] {
        let (_, bytes) = table(&t, sig);
        let dsl = iasl_disassemble(name, bytes);
        println!("{dsl}");
        assert!(!dsl.contains("**** Unknown"), "{dsl}");
        assert!(!dsl.contains("Invalid"), "{dsl}");
    }
}
