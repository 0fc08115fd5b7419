//! qvm-config: what one VM is made of, as `vm.toml` (TOML) and as the REST API's bodies
//! (the same types in JSON).
//!
//! Parsing is strict (unknown keys are errors) and every check produces one line that names the
//! key and says how to fix it; `qvm-vmm` prints it and exits with code 2.

pub mod boot;
pub mod console;
pub mod disk;
mod error;
pub mod fs;
pub mod machine;
pub mod net;
pub mod paths;
pub mod vsock;
pub mod wayland;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use boot::{BootConfig, DEFAULT_CMDLINE, MAX_CMDLINE_LEN};
pub use console::{ConsoleConfig, ConsoleMode, MAX_LIMIT_MIB as MAX_CONSOLE_LIMIT_MIB};
pub use disk::{DiskConfig, MAX_DISKS, MAX_DISK_ID_LEN};
pub use error::{toml_error_at, ConfigError, Section};
pub use fs::{FsConfig, MAX_FS_TAG_LEN};
pub use machine::{MachineConfig, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
pub use net::{NetConfig, MAX_NETS, MAX_TAP_NAME_LEN};
pub use vsock::VsockConfig;
pub use wayland::{
    valid_wl_global, valid_wl_vm_name, NamedWaylandSocket, WaylandClipboard, WaylandConfig,
    DEFAULT_WL_BUFFER_MIB, DEFAULT_WL_VFDS, DEFAULT_WL_VM_NAME, MAX_WL_BUFFER_MIB,
    MAX_WL_GLOBAL_LEN, MAX_WL_NAME_LEN, MAX_WL_VFDS,
};

use machine::host_memory_mib;
use paths::{resolve_relative, xdg_runtime_dir};

/// One VM: the root of `vm.toml` and the body of `PUT /vm/config`. Each field is a section,
/// defined (with its limits and checks) in the module of the same name.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub machine: MachineConfig,
    pub boot: BootConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-blk disks, in order: the first is /dev/vda in the guest.
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces on tap devices, in order: eth0, eth1, ...
    #[serde(default, rename = "net")]
    pub nets: Vec<NetConfig>,
    /// The host<->guest vsock device (at most one).
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares served by virtiofsd over vhost-user.
    #[serde(default, rename = "fs")]
    pub filesystems: Vec<FsConfig>,
    /// The virtio-wl device: guest windows on the host's Wayland compositor.
    pub wayland: Option<WaylandConfig>,
}

/// virtio-mmio devices get GSIs 5..=23 of the 24-pin IOAPIC.
pub const MAX_VIRTIO_DEVICES: usize = 19;

impl VmConfig {
    /// Reads, parses and validates a config file. Relative paths inside it are taken relative to
    /// the file's directory, so an example VM works from any working directory.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let cfg = Self::parse(&text, path, base)?;
        cfg.validate(host_memory_mib())?;
        Ok(cfg)
    }

    /// Parses TOML text; `name` is used in error messages, `base` resolves relative paths.
    pub fn parse(text: &str, name: &Path, base: &Path) -> Result<Self, ConfigError> {
        let mut cfg: VmConfig = toml::from_str(text).map_err(|e| {
            let (line, message) = toml_error_at(text, &e);
            ConfigError::Parse {
                path: name.to_path_buf(),
                line,
                message,
            }
        })?;
        let resolve = |p: &mut PathBuf| resolve_relative(p, base);
        resolve(&mut cfg.boot.kernel);
        if let Some(p) = cfg.boot.initrd.as_mut() {
            resolve(p);
        }
        if let Some(p) = cfg.console.path.as_mut() {
            resolve(p);
        }
        for d in &mut cfg.disks {
            resolve(&mut d.path);
        }
        if let Some(v) = cfg.vsock.as_mut() {
            resolve(&mut v.socket);
        }
        if let Some(w) = cfg.wayland.as_mut() {
            w.resolve_sockets(xdg_runtime_dir().as_deref(), Some(base));
            if w.name.is_none() {
                // vm.toml's own name labels the VM's windows (when it is a valid label).
                w.name = name
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|s| valid_wl_vm_name(s))
                    .map(String::from);
            }
        }
        for f in &mut cfg.filesystems {
            resolve(&mut f.socket);
            if let Some(d) = f.shared_dir.as_mut() {
                resolve(d);
            }
            if let Some(b) = f.virtiofsd.as_mut() {
                // A bare program name is looked up on PATH, not next to the config.
                if b.components().count() > 1 {
                    resolve(b);
                }
            }
        }
        Ok(cfg)
    }

    /// The config as `vm.toml` text, which [`VmConfig::parse`] reads back unchanged (its
    /// relative paths have been resolved, so resolving them again changes nothing).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// The checks `PUT /vm/config` makes: every section's own `validate()` and the list
    /// lengths, nothing that looks at the host (files, fds, its RAM: memory is bounded by
    /// [`MAX_MEMORY_MIB`] alone) and nothing that spans entries (duplicates, the device
    /// total); [`VmConfig::validate`] makes those at start. The order is the API's: machine,
    /// boot, console, list lengths, disks, nets, vsock, fs, wayland.
    pub fn validate_values(&self) -> Result<(), ConfigError> {
        self.machine.validate(None)?;
        self.boot.validate()?;
        self.console.validate()?;
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        if self.nets.len() > MAX_NETS {
            return Err(ConfigError::TooManyNets(self.nets.len()));
        }
        if self.filesystems.len() > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyFs(self.filesystems.len()));
        }
        for (i, d) in self.disks.iter().enumerate() {
            d.validate(i)?;
        }
        for (i, n) in self.nets.iter().enumerate() {
            n.validate(i)?;
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        for (i, f) in self.filesystems.iter().enumerate() {
            f.validate(i)?;
        }
        if let Some(w) = &self.wayland {
            w.validate()?;
        }
        Ok(())
    }

    /// [`VmConfig::validate`] against this host's memory.
    pub fn validate_here(&self) -> Result<(), ConfigError> {
        self.validate(host_memory_mib())
    }

    /// Checks values and referenced files. `host_mib` bounds guest memory (None: unknown host).
    ///
    /// Each section's own `validate()` (values) and `check_host()`/`check_files()` (what it
    /// names on this host), and the rules that span entries (no image, tap, MAC, tag or socket
    /// twice; the device total), in one fixed order, so a config with several faults always
    /// reports the same one first.
    pub fn validate(&self, host_mib: Option<u64>) -> Result<(), ConfigError> {
        self.machine.validate(host_mib)?;
        self.boot.check_files()?;
        self.boot.validate()?;
        self.validate_disks()?;
        self.validate_nets()?;
        self.validate_vsock()?;
        self.validate_fs()?;
        if let Some(w) = &self.wayland {
            w.validate()?;
        }
        let devices = self.virtio_device_count();
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        self.console.validate()
    }

    /// Number of virtio devices (their mmio slots are 0..n): disks, nets, vsock, fs, wayland.
    pub fn virtio_device_count(&self) -> usize {
        self.disks.len()
            + self.nets.len()
            + usize::from(self.vsock.is_some())
            + self.filesystems.len()
            + usize::from(self.wayland.is_some())
    }

    pub fn vcpus(&self) -> u8 {
        // validate() bounds vcpus to 1..=MAX_VCPUS.
        u8::try_from(self.machine.vcpus).unwrap_or(MAX_VCPUS)
    }

    pub fn memory_bytes(&self) -> u64 {
        self.machine.memory_mib << 20
    }
}

/// A config type (the whole [`VmConfig`] or one section) from a JSON value, as the REST API
/// receives it. Paths are taken as they are: nothing is resolved against a base directory.
#[cfg(feature = "json")]
pub fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_json::from_value(value).map_err(|e| ConfigError::Json(e.to_string()))
}

#[cfg(test)]
mod tests;
