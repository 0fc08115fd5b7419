//! `[machine]`: vCPUs and guest RAM.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

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

impl MachineConfig {
    /// The vCPU count and the memory size. `host_mib` bounds memory (None: a host of unknown
    /// size, bounded by [`MAX_MEMORY_MIB`] alone); this reads nothing from the host.
    pub fn validate(&self, host_mib: Option<u64>) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::TooManyVcpus {
                got: self.vcpus,
                max: u64::from(MAX_VCPUS),
            });
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        let (host, of_host) = match host_mib {
            Some(h) if h <= MAX_MEMORY_MIB => (h, true),
            _ => (MAX_MEMORY_MIB, false),
        };
        if self.memory_mib > host {
            return Err(ConfigError::MemoryTooLarge {
                got: self.memory_mib,
                host,
                of_host,
            });
        }
        Ok(())
    }
}

/// This host's RAM in MiB, from /proc/meminfo (None if it cannot be read).
pub(crate) fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
