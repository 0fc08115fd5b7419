//! Argument parsing and the limits a VM gets: `--id`, `--memory-max`, `--pids-max`,
//! `--cpu-max`, `--rlimit-nofile`, with their defaults derived from the VM's config.

use qvm_config::VmConfig;

use crate::error::JailError;

const MIB: u64 = 1 << 20;

/// What the VMM process needs besides guest RAM, charged to the same cgroup: its heap, the
/// stacks of its threads, KVM's page tables and vCPU state, and the page cache its disk I/O
/// brings in (reclaimable, but charged). Measured: a 1-vCPU VM with a disk peaks at ~20 MiB
/// RSS besides guest memory; 64 MiB leaves room. virtio-wl buffers (host memory shared with
/// the guest and the compositor) come on top: `[wayland] max_buffer_mib`.
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// `--memory-max`: `auto` or a byte count (with an optional K/M/G, KiB/MiB/GiB suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMax {
    Auto,
    Bytes(u64),
}

pub fn parse_memory_max(s: &str) -> Result<MemoryMax, JailError> {
    let bad = |reason: &str| JailError::BadMemoryMax {
        given: s.to_string(),
        reason: reason.to_string(),
    };
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(MemoryMax::Auto);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(bad(
            "use `auto` or a size in bytes such as 402653184, 384M or 1G",
        ));
    }
    let n: u64 = num.parse().map_err(|_| bad("the number is too large"))?;
    let mult = match suffix.trim() {
        "" => 1,
        "K" | "k" | "KiB" | "KB" => 1 << 10,
        "M" | "m" | "MiB" | "MB" => 1 << 20,
        "G" | "g" | "GiB" | "GB" => 1 << 30,
        _ => return Err(bad("unknown unit; use K, M or G (powers of 1024)")),
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| bad("the size is too large"))?;
    if bytes == 0 {
        return Err(bad("zero bytes; use `auto` or a size such as 384M"));
    }
    Ok(MemoryMax::Bytes(bytes))
}

/// Bytes as `N MiB` (or KiB, or bytes) for messages.
pub fn fmt_size(bytes: u64) -> String {
    if bytes & (MIB - 1) == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes & 1023 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// The memory overhead this VM gets on top of its guest RAM, in bytes.
pub fn overhead_bytes(cfg: &VmConfig) -> u64 {
    let wl = cfg.wayland.as_ref().map_or(0, |w| w.max_buffer_mib);
    (VMM_OVERHEAD_MIB + wl) * MIB
}

/// memory.max for this VM: `auto` is guest memory + overhead; an explicit value below that is
/// refused (the VM would be OOM-killed as soon as the guest touches its RAM).
pub fn memory_limit(cfg: &VmConfig, m: MemoryMax) -> Result<u64, JailError> {
    let guest = cfg.memory_bytes();
    let overhead = overhead_bytes(cfg);
    let needed = guest + overhead;
    match m {
        MemoryMax::Auto => Ok(needed),
        MemoryMax::Bytes(b) if b < needed => Err(JailError::MemoryTooSmall {
            limit: fmt_size(b),
            guest: fmt_size(guest),
            overhead: fmt_size(overhead),
            needed: fmt_size(needed),
        }),
        MemoryMax::Bytes(b) => Ok(b),
    }
}

/// Tasks (threads count) the VMM needs at least: main, one per vCPU, one worker per device,
/// the API server, plus slack.
pub fn min_pids(cfg: &VmConfig) -> u64 {
    4 + u64::from(cfg.vcpus()) + cfg.virtio_device_count() as u64
}

/// The default pids.max: generous for the VMM's own threads and virtiofsd's thread pools, far
/// below what a fork bomb needs to hurt the host.
pub fn default_pids(cfg: &VmConfig) -> u64 {
    64 + 2 * (u64::from(cfg.vcpus()) + cfg.virtio_device_count() as u64)
        + 32 * cfg.filesystems.len() as u64
}

pub fn pids_limit(cfg: &VmConfig, given: Option<u64>) -> Result<u64, JailError> {
    match given {
        None => Ok(default_pids(cfg)),
        Some(n) if n < min_pids(cfg) => Err(JailError::PidsTooSmall(n, min_pids(cfg))),
        Some(n) => Ok(n),
    }
}

/// `--cpu-max "QUOTA PERIOD"` (microseconds, QUOTA may be `max`), checked and returned in
/// cgroup v2's `cpu.max` format.
pub fn parse_cpu_max(s: &str) -> Result<String, JailError> {
    let bad = |reason: &str| JailError::BadCpuMax {
        given: s.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = s.split_whitespace().collect();
    let (quota, period) = match parts.as_slice() {
        [q] => (*q, "100000"),
        [q, p] => (*q, *p),
        _ => {
            return Err(bad(
                "use \"QUOTA PERIOD\" in microseconds, e.g. \"50000 100000\" for half a CPU",
            ))
        }
    };
    let period: u64 = period
        .parse()
        .map_err(|_| bad("PERIOD is not a number of microseconds"))?;
    if !(1000..=1_000_000).contains(&period) {
        return Err(bad("PERIOD must be 1000 to 1000000 microseconds"));
    }
    if quota != "max" {
        let q: u64 = quota
            .parse()
            .map_err(|_| bad("QUOTA is not a number of microseconds or `max`"))?;
        if q < 1000 {
            return Err(bad("QUOTA must be at least 1000 microseconds (or `max`)"));
        }
    }
    Ok(format!("{quota} {period}"))
}

pub fn check_id(id: &str) -> Result<(), JailError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(JailError::BadId(id.to_string()))
    }
}

/// RLIMIT_NOFILE default: room for the devices' eventfds and disks, and virtio-wl's objects.
pub fn default_nofile(cfg: &VmConfig) -> u64 {
    1024 + cfg
        .wayland
        .as_ref()
        .map_or(0, |w| 2 * u64::from(w.max_vfds))
}

pub fn check_nofile(n: u64) -> Result<u64, JailError> {
    if (64..=1_048_576).contains(&n) {
        Ok(n)
    } else {
        Err(JailError::BadNofile(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(mem: u64, extra: &str) -> VmConfig {
        VmConfig::parse(
            &format!("[machine]\nmemory_mib = {mem}\n[boot]\nkernel = \"/k\"\n{extra}"),
            Path::new("vm.toml"),
            Path::new("/"),
        )
        .unwrap()
    }

    #[test]
    fn memory_max_parses_units_and_auto() {
        assert_eq!(parse_memory_max("auto").unwrap(), MemoryMax::Auto);
        assert_eq!(parse_memory_max("4096").unwrap(), MemoryMax::Bytes(4096));
        assert_eq!(parse_memory_max("64M").unwrap(), MemoryMax::Bytes(64 << 20));
        assert_eq!(parse_memory_max("1GiB").unwrap(), MemoryMax::Bytes(1 << 30));
        assert_eq!(parse_memory_max("8k").unwrap(), MemoryMax::Bytes(8192));
        for bad in [
            "",
            "M",
            "-5",
            "12X",
            "0",
            "99999999999999999999",
            "20000000000G",
        ] {
            let e = parse_memory_max(bad).unwrap_err().to_string();
            assert!(e.starts_with("--memory-max"), "{bad}: {e}");
        }
    }

    #[test]
    fn memory_below_guest_plus_overhead_is_refused_with_the_numbers() {
        let c = cfg(256, "");
        assert_eq!(
            memory_limit(&c, MemoryMax::Auto).unwrap(),
            (256 + VMM_OVERHEAD_MIB) << 20
        );
        let e = memory_limit(&c, MemoryMax::Bytes(64 << 20))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--memory-max 64 MiB is less than the VM's 256 MiB of guest memory plus 64 MiB \
             overhead; use at least 320 MiB or --memory-max auto"
        );
        assert!(memory_limit(&c, MemoryMax::Bytes(319 << 20)).is_err());
        assert_eq!(
            memory_limit(&c, MemoryMax::Bytes(320 << 20)).unwrap(),
            320 << 20
        );
        // virtio-wl buffers count too.
        let w = cfg(
            128,
            "[wayland]\nsocket = \"/run/wl\"\nmax_buffer_mib = 100\n",
        );
        assert_eq!(overhead_bytes(&w), (64 + 100) << 20);
        assert_eq!(fmt_size(1536), "1536 bytes");
        assert_eq!(fmt_size(3 << 10), "3 KiB");
    }

    #[test]
    fn cpu_max_checks() {
        assert_eq!(parse_cpu_max("50000 100000").unwrap(), "50000 100000");
        assert_eq!(parse_cpu_max("max 100000").unwrap(), "max 100000");
        assert_eq!(parse_cpu_max("20000").unwrap(), "20000 100000");
        for bad in ["", "a b", "500 100000", "50000 10", "1 2 3", "50000 x"] {
            assert!(parse_cpu_max(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_and_pids_and_nofile() {
        for ok in ["vm1", "work-browser_2", "A"] {
            check_id(ok).unwrap();
        }
        for bad in ["", "../x", "a/b", "a b", "-x", &"x".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        let c = cfg(128, "");
        assert_eq!(pids_limit(&c, None).unwrap(), 66);
        assert_eq!(pids_limit(&c, Some(16)).unwrap(), 16);
        let e = pids_limit(&c, Some(2)).unwrap_err().to_string();
        assert!(e.contains("at least 5 tasks"), "{e}");
        assert_eq!(default_nofile(&c), 1024);
        assert!(check_nofile(10).is_err());
        assert_eq!(check_nofile(4096).unwrap(), 4096);
    }
}
