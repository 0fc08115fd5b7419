//! `[machine]`: vCPUs and guest RAM.

use serde::{Deserialize, Serialize};

/// Smallest guest RAM we accept: the kernel is loaded at 16 MiB and needs room above it.
pub const MIN_MEMORY_MIB: u64 = 32;
/// 1 TiB: beyond this the e820 map and our page-table set-up are untested.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// xAPIC ids are 8 bits and 0xff is broadcast; the IOAPIC takes one more id.
pub const MAX_VCPUS: u8 = 254;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    #[serde(default = "default_vcpus")]
    pub vcpus: u64,
    pub memory_mib: u64,
}

fn default_vcpus() -> u64 {
    1
}

/// This host's RAM in MiB, from /proc/meminfo (None if it cannot be read).
pub(crate) fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
