//! CPUID for each vCPU: what KVM supports, with this vCPU's APIC id and a topology of
//! `n` single-threaded cores in one package, and the hypervisor bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const EXT_ECX_CMP_LEGACY: u32 = 1 << 1;
const EXT_ECX_TOPOEXT: u32 = 1 << 22;

const TOPO_LEVEL_SMT: u32 = 1;
const TOPO_LEVEL_CORE: u32 = 2;

/// Bits needed to number `n` cores (the APIC id shift of the core level).
fn core_shift(n: u8) -> u32 {
    (u32::from(n).max(1)).next_power_of_two().trailing_zeros()
}

/// Rewrites `cpuid` (KVM_GET_SUPPORTED_CPUID output) for vCPU `id` of `n`.
pub fn filter(cpuid: &CpuId, id: u8, n: u8) -> Result<CpuId, vmm_sys_util::fam::Error> {
    let apic_id = u32::from(id);
    let count = u32::from(n);
    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(cpuid.as_slice().len() + 2);
    for e in cpuid.as_slice() {
        let mut e = *e;
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1. EAX[25:14]: threads sharing the cache - 1;
                // caches from level 3 up are shared by all cores, lower ones are per core.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            // Rebuilt below with this vCPU's x2APIC id.
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => continue,
            LEAF_EXT_FEATURES => {
                // No TOPOEXT: Linux then takes the core count from leaf 0x8000_0008 on AMD.
                e.ecx &= !EXT_ECX_TOPOEXT;
                if n > 1 {
                    e.ecx |= EXT_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !EXT_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZE_IDS => {
                // ECX[15:12] APIC id size, ECX[7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (core_shift(n) << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC_ID => {
                e.eax = apic_id;
                e.ebx = apic_id; // core id; one thread per core
                e.ecx = 0;
            }
            _ => {}
        }
        out.push(e);
    }
    if cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == LEAF_EXT_TOPOLOGY)
    {
        let topo = |index: u32, shift: u32, cpus: u32, level: u32| kvm_cpuid_entry2 {
            function: LEAF_EXT_TOPOLOGY,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: shift,
            ebx: cpus,
            ecx: (level << 8) | index,
            edx: apic_id,
            ..Default::default()
        };
        out.push(topo(0, 0, 1, TOPO_LEVEL_SMT));
        out.push(topo(1, core_shift(n), count, TOPO_LEVEL_CORE));
        out.push(topo(2, 0, 0, 0));
    }
    CpuId::from_entries(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0x1234_5678,
            ebx: 0x0000_0800,
            ecx: 0xffff_ffff,
            edx: 0,
            ..Default::default()
        }
    }

    fn host() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0),
            entry(LEAF_FEATURES, 0),
            kvm_cpuid_entry2 {
                eax: 3 << 5 | 0x123,
                ..entry(LEAF_CACHE_PARAMS, 3)
            },
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_EXT_FEATURES, 0),
            entry(LEAF_AMD_SIZE_IDS, 0),
            entry(LEAF_AMD_EXT_APIC_ID, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn apic_id_and_counts_per_vcpu() {
        let c = filter(&host(), 3, 4).unwrap();
        let l1 = find(&c, LEAF_FEATURES, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let l4 = find(&c, LEAF_CACHE_PARAMS, 3);
        assert_eq!(l4.eax >> 26, 3);
        assert_eq!((l4.eax >> 14) & 0xfff, 3);
        assert_eq!(l4.eax & 0x3fff, (3 << 5) | 0x123);
    }

    #[test]
    fn extended_topology_is_rebuilt() {
        let c = filter(&host(), 2, 3).unwrap();
        let t: Vec<_> = c
            .as_slice()
            .iter()
            .filter(|e| e.function == LEAF_EXT_TOPOLOGY)
            .collect();
        assert_eq!(t.len(), 3);
        let smt = find(&c, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, (1 << 8), 2));
        let core = find(&c, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!(
            (core.eax, core.ebx, core.ecx, core.edx),
            (2, 3, (2 << 8) | 1, 2)
        );
        assert_eq!(find(&c, LEAF_EXT_TOPOLOGY, 2).ecx, 2);
    }

    #[test]
    fn amd_leaves() {
        let c = filter(&host(), 1, 2).unwrap();
        assert_eq!(find(&c, LEAF_EXT_FEATURES, 0).ecx & EXT_ECX_TOPOEXT, 0);
        let s = find(&c, LEAF_AMD_SIZE_IDS, 0);
        assert_eq!((s.ecx >> 12) & 0xf, 1);
        assert_eq!(s.ecx & 0xff, 1);
        assert_eq!(find(&c, LEAF_AMD_EXT_APIC_ID, 0).eax, 1);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let c = filter(&host(), 0, 1).unwrap();
        assert_eq!(find(&c, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&c, LEAF_AMD_SIZE_IDS, 0).ecx & 0xff, 0);
        assert_eq!(core_shift(1), 0);
        assert_eq!(core_shift(2), 1);
        assert_eq!(core_shift(5), 3);
    }
}
