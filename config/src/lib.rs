//! qvm-config: what one VM is made of, as `vm.toml` (TOML) and as the REST API's bodies
//! (the same types in JSON).
//!
//! Parsing is strict (unknown keys are errors) and every check produces one line that names the
//! key and says how to fix it; `qvm-vmm` prints it and exits with code 2.

pub mod boot;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Smallest guest RAM we accept: the kernel is loaded at 16 MiB and needs room above it.
pub const MIN_MEMORY_MIB: u64 = 32;
/// 1 TiB: beyond this the e820 map and our page-table set-up are untested.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// xAPIC ids are 8 bits and 0xff is broadcast; the IOAPIC takes one more id.
pub const MAX_VCPUS: u8 = 254;
/// Linux's x86 COMMAND_LINE_SIZE.
pub const MAX_CMDLINE_LEN: usize = 2048;
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

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

/// Named Wayland contexts (NEW_CTX_NAMED) are named by at most 31 bytes (a 32-byte C string).
pub const MAX_WL_NAME_LEN: usize = 31;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WaylandConfig {
    /// The compositor socket a guest's new Wayland context connects to. A bare name such as
    /// `wayland-0` is taken in `$XDG_RUNTIME_DIR` (as `WAYLAND_DISPLAY` is); a relative path
    /// is relative to the config file. None: only named contexts work.
    pub socket: Option<PathBuf>,
    /// More sockets the guest may connect to by name (`NEW_CTX_NAMED`).
    #[serde(default)]
    pub named: Vec<NamedWaylandSocket>,
    /// Host memory the guest's buffers may use in total (shared memory it allocates and what the
    /// compositor sends it), in MiB.
    #[serde(default = "default_wl_buffer_mib")]
    pub max_buffer_mib: u64,
    /// Open virtio-wl objects (buffers, contexts, pipes) at once.
    #[serde(default = "default_wl_vfds")]
    pub max_vfds: u32,
    /// The VM's label on the host desktop: window titles become `[name] title` and app ids
    /// `qvm.name.app_id`. 1 to 32 printable characters without `]`. Default: the config
    /// file's name without `.toml` (when that is a valid label), else `vm`.
    pub name: Option<String>,
    /// Wayland globals the guest may see and bind on top of the built-in allowlist (core,
    /// xdg-shell and the usual app extensions; screen capture, input injection, clipboard
    /// managers, layer shell and the like are hidden unless named here).
    #[serde(default)]
    pub allow_globals: Vec<String>,
    /// `gated` (default): the guest only reads the host clipboard after the host allows one
    /// paste (`PUT /actions {"action": "allow_paste"}`); `open`: always.
    #[serde(default)]
    pub clipboard: WaylandClipboard,
}

/// Whether a guest reads the host clipboard freely.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WaylandClipboard {
    #[default]
    Gated,
    Open,
}

/// The label a VM's windows get when `[wayland] name` is not set.
pub const DEFAULT_WL_VM_NAME: &str = "vm";
/// Longest interface name in `allow_globals`.
pub const MAX_WL_GLOBAL_LEN: usize = 64;

/// Whether `name` can label a VM's windows (1 to 32 printable characters, no `]`).
///
/// The same rule as `qvm_virtio_wl::WlPolicy::valid_name`, copied so that this crate does not
/// depend on a device crate; qvm-vmm links both and has a test that they agree.
pub fn valid_wl_vm_name(name: &str) -> bool {
    let n = name.chars().count();
    (1..=32).contains(&n) && !name.contains(']') && !name.chars().any(char::is_control)
}

/// Whether `g` looks like a Wayland interface name (a C identifier).
pub fn valid_wl_global(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= MAX_WL_GLOBAL_LEN
        && g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !g.as_bytes()[0].is_ascii_digit()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamedWaylandSocket {
    pub name: String,
    pub socket: PathBuf,
}

/// `[wayland] max_buffer_mib` when not set.
pub const DEFAULT_WL_BUFFER_MIB: u64 = 512;
/// `[wayland] max_vfds` when not set.
pub const DEFAULT_WL_VFDS: u32 = 256;

fn default_wl_buffer_mib() -> u64 {
    DEFAULT_WL_BUFFER_MIB
}
fn default_wl_vfds() -> u32 {
    DEFAULT_WL_VFDS
}
pub const MAX_WL_BUFFER_MIB: u64 = 64 << 10;
pub const MAX_WL_VFDS: u32 = 4096;

/// virtio-fs tags are at most 36 bytes (the config space field).
pub const MAX_FS_TAG_LEN: usize = 36;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// What the guest mounts: `mount -t virtiofs <tag> /mnt`.
    pub tag: String,
    /// The vhost-user socket of virtiofsd. Without `shared_dir`, a virtiofsd someone else started
    /// listens there; with it, qvm-vmm starts virtiofsd on this path itself.
    pub socket: PathBuf,
    /// The host directory to share: qvm-vmm starts and stops virtiofsd for it.
    pub shared_dir: Option<PathBuf>,
    /// With `shared_dir`: the guest may not write (virtiofsd --readonly).
    #[serde(default)]
    pub read_only: bool,
    /// With `shared_dir`: the virtiofsd binary (default: `virtiofsd` on PATH, or the one
    /// scripts/install-virtiofsd.sh built, via the QVM_VIRTIOFSD environment variable).
    pub virtiofsd: Option<PathBuf>,
}

/// virtio-mmio devices get GSIs 5..=23 of the 24-pin IOAPIC.
pub const MAX_VIRTIO_DEVICES: usize = 19;
pub const MAX_NETS: usize = 8;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
pub const MAX_TAP_NAME_LEN: usize = 15;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// A tap device created beforehand (`ip tuntap add NAME mode tap user USER`).
    pub tap: Option<String>,
    /// Or an open tap file descriptor this process inherited.
    pub fd: Option<i32>,
    /// The guest's MAC address, `52:54:00:12:34:56`; none: the guest picks a random one.
    pub mac: Option<String>,
}

impl NetConfig {
    /// The MAC as bytes (validate() has checked it parses).
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(|m| parse_mac(m).ok())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more.
    pub guest_cid: u64,
    /// The host side: a unix socket the VMM listens on (host->guest: connect and send
    /// `CONNECT <port>\n`); guest->host connections to port P go to `<socket>_<P>`.
    pub socket: PathBuf,
}

fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err("not a MAC address like 52:54:00:12:34:56");
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err("not a MAC address like 52:54:00:12:34:56");
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| "not a MAC address like 52:54:00:12:34:56")?;
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast address; the first byte must be even (e.g. 52:54:00:...)");
    }
    if mac == [0; 6] {
        return Err("all zeros; pick a locally administered address such as 52:54:00:12:34:56");
    }
    Ok(mac)
}

/// Longest serial number virtio-blk's GET_ID can return.
pub const MAX_DISK_ID_LEN: usize = 20;
/// Devices get GSIs 5..=23 of the 24-pin IOAPIC.
pub const MAX_DISKS: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// A raw disk image (or block device).
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Serial number the guest sees (/sys/block/vdX/serial), at most 20 bytes.
    pub id: Option<String>,
    /// Open with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct_io: bool,
}

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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// An ELF `vmlinux` (PVH entry if it has one, else the 64-bit entry) or a `bzImage`.
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleMode {
    /// Guest serial output to our stdout, our stdin to the guest.
    #[default]
    Stdio,
    /// Guest serial output appended to `path`; no input.
    File,
    /// Serial port present, output discarded.
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub mode: ConsoleMode,
    pub path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("[machine] memory_mib = {0}: too small, a guest needs at least {MIN_MEMORY_MIB}; set memory_mib = {MIN_MEMORY_MIB} or more")]
    MemoryTooSmall(u64),
    #[error(
        "[machine] memory_mib = {got}: more than this host's {host} MiB of RAM; lower memory_mib"
    )]
    MemoryTooLarge { got: u64, host: u64 },
    #[error("[machine] vcpus = 0: a VM needs at least one vCPU; set vcpus = 1 or more")]
    NoVcpus,
    #[error("[machine] vcpus = {got}: more than the {max} vCPUs qvm supports; lower vcpus")]
    TooManyVcpus { got: u64, max: u64 },
    #[error("[boot] {key} = {path:?}: {reason}")]
    BadFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("[boot] cmdline is {0} bytes; Linux takes at most {MAX_CMDLINE_LEN}, shorten it")]
    CmdlineTooLong(usize),
    #[error("[boot] cmdline contains a NUL or non-ASCII character; use plain ASCII")]
    CmdlineNotAscii,
    #[error("[console] mode = \"file\" needs path = \"<file>\" for the guest's output")]
    ConsoleFileWithoutPath,
    #[error("[console] path is only used with mode = \"file\"; remove it or set mode = \"file\"")]
    ConsolePathWithoutFile,
    #[error("[[disk]] #{} path = {path:?}: {reason}", .index + 1)]
    BadDisk {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("[[disk]] #{} id = {id:?}: {reason}", .index + 1)]
    BadDiskId {
        index: usize,
        id: String,
        reason: String,
    },
    #[error("{0} [[disk]] entries; qvm supports at most {MAX_DISKS}")]
    TooManyDisks(usize),
    #[error("{0} [[net]] entries; qvm supports at most {MAX_NETS}")]
    TooManyNets(usize),
    #[error("{0} virtio devices ([[disk]], [[net]], [vsock], [[fs]] and [wayland] together); qvm supports at most {MAX_VIRTIO_DEVICES}")]
    TooManyDevices(usize),
    #[error("[[net]] #{}: {reason}", .index + 1)]
    BadNet { index: usize, reason: String },
    #[error("[[fs]] #{}: {reason}", .index + 1)]
    BadFs { index: usize, reason: String },
    #[error("[vsock] {key}: {reason}")]
    BadVsock { key: String, reason: String },
    #[error("[wayland] {key}: {reason}")]
    BadWayland { key: String, reason: String },
    /// [`VmConfig::to_toml`] failed (a path that is not UTF-8); the serializer's message.
    #[error("{0}")]
    Serialize(String),
}

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
        let mut cfg: VmConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_path_buf(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
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
            let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
            let wl_resolve = |p: &mut PathBuf| match &runtime {
                Some(dir) if p.components().count() == 1 && p.is_relative() => *p = dir.join(&*p),
                _ => resolve(p),
            };
            if let Some(s) = w.socket.as_mut() {
                wl_resolve(s);
            }
            for n in &mut w.named {
                wl_resolve(&mut n.socket);
            }
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

    /// [`VmConfig::validate`] against this host's memory.
    pub fn validate_here(&self) -> Result<(), ConfigError> {
        self.validate(host_memory_mib())
    }

    /// Checks values and referenced files. `host_mib` bounds guest memory (None: unknown host).
    pub fn validate(&self, host_mib: Option<u64>) -> Result<(), ConfigError> {
        let m = &self.machine;
        if m.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if m.vcpus > u64::from(MAX_VCPUS) {
            return Err(ConfigError::TooManyVcpus {
                got: m.vcpus,
                max: u64::from(MAX_VCPUS),
            });
        }
        if m.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(m.memory_mib));
        }
        if let Some(host) = host_mib
            .or(Some(MAX_MEMORY_MIB))
            .map(|h| h.min(MAX_MEMORY_MIB))
        {
            if m.memory_mib > host {
                return Err(ConfigError::MemoryTooLarge {
                    got: m.memory_mib,
                    host,
                });
            }
        }
        check_file("kernel", &self.boot.kernel)?;
        if let Some(initrd) = &self.boot.initrd {
            check_file("initrd", initrd)?;
        }
        if self.boot.cmdline.len() >= MAX_CMDLINE_LEN {
            return Err(ConfigError::CmdlineTooLong(self.boot.cmdline.len()));
        }
        if !self.boot.cmdline.bytes().all(|b| b.is_ascii() && b != 0) {
            return Err(ConfigError::CmdlineNotAscii);
        }
        self.validate_disks()?;
        self.validate_nets()?;
        self.validate_vsock()?;
        self.validate_fs()?;
        self.validate_wayland()?;
        let devices = self.virtio_device_count();
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        match (self.console.mode, &self.console.path) {
            (ConsoleMode::File, None) => return Err(ConfigError::ConsoleFileWithoutPath),
            (ConsoleMode::Stdio | ConsoleMode::Off, Some(_)) => {
                return Err(ConfigError::ConsolePathWithoutFile)
            }
            _ => {}
        }
        Ok(())
    }

    fn validate_disks(&self) -> Result<(), ConfigError> {
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        for (index, d) in self.disks.iter().enumerate() {
            let bad = |reason: String| ConfigError::BadDisk {
                index,
                path: d.path.clone(),
                reason,
            };
            let meta = std::fs::metadata(&d.path).map_err(|e| {
                bad(if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file; create the image (e.g. truncate -s 1G disk.img) or fix the path"
                        .to_string()
                } else {
                    format!("cannot access it: {e}")
                })
            })?;
            use std::os::unix::fs::FileTypeExt;
            if !meta.is_file() && !meta.file_type().is_block_device() {
                return Err(bad("not a regular file or block device".to_string()));
            }
            if let Some(dup) = self.disks[..index].iter().position(|o| o.path == d.path) {
                return Err(bad(format!(
                    "the same image as [[disk]] #{}; two disks must not share an image",
                    dup + 1
                )));
            }
            if let Some(id) = &d.id {
                let bad_id = |reason: &str| ConfigError::BadDiskId {
                    index,
                    id: id.clone(),
                    reason: reason.to_string(),
                };
                if id.len() > MAX_DISK_ID_LEN {
                    return Err(bad_id("longer than 20 bytes; shorten it"));
                }
                if !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad_id("use printable ASCII without spaces"));
                }
                if self.disks[..index]
                    .iter()
                    .any(|o| o.id.as_deref() == Some(id.as_str()))
                {
                    return Err(bad_id("another disk has the same id; ids must be unique"));
                }
            }
        }
        Ok(())
    }

    fn validate_nets(&self) -> Result<(), ConfigError> {
        if self.nets.len() > MAX_NETS {
            return Err(ConfigError::TooManyNets(self.nets.len()));
        }
        for (index, n) in self.nets.iter().enumerate() {
            let bad = |reason: String| ConfigError::BadNet { index, reason };
            match (&n.tap, n.fd) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad(
                        "set exactly one of tap = \"<name>\" (a tap device created beforehand) \
                         or fd = <n> (an inherited tap descriptor)"
                            .into(),
                    ))
                }
                (Some(name), None) => {
                    if name.is_empty()
                        || name.len() > MAX_TAP_NAME_LEN
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        return Err(bad(format!(
                            "tap = {name:?}: not an interface name (1-{MAX_TAP_NAME_LEN} letters, \
                             digits, '-', '_' or '.')"
                        )));
                    }
                    if let Some(dup) = self.nets[..index]
                        .iter()
                        .position(|o| o.tap.as_deref() == Some(name.as_str()))
                    {
                        return Err(bad(format!(
                            "tap = {name:?}: [[net]] #{} uses it already; give each interface its own tap",
                            dup + 1
                        )));
                    }
                }
                (None, Some(fd)) => {
                    // SAFETY: F_GETFD only reads the descriptor's flags.
                    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                        return Err(bad(format!(
                            "fd = {fd}: not an open file descriptor this process inherited \
                             (stdio 0-2 are not allowed)"
                        )));
                    }
                }
            }
            if let Some(mac) = &n.mac {
                parse_mac(mac).map_err(|r| bad(format!("mac = {mac:?}: {r}")))?;
                if self.nets[..index]
                    .iter()
                    .any(|o| o.mac_bytes() == n.mac_bytes())
                {
                    return Err(bad(format!(
                        "mac = {mac:?}: another interface has the same MAC"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_fs(&self) -> Result<(), ConfigError> {
        for (index, f) in self.filesystems.iter().enumerate() {
            let bad = |reason: String| ConfigError::BadFs { index, reason };
            if f.tag.is_empty() || f.tag.len() > MAX_FS_TAG_LEN || f.tag.contains('\0') {
                return Err(bad(format!(
                    "tag = {:?}: use 1 to {MAX_FS_TAG_LEN} bytes (it is what the guest mounts)",
                    f.tag
                )));
            }
            if self.filesystems[..index].iter().any(|o| o.tag == f.tag) {
                return Err(bad(format!(
                    "tag = {:?}: another [[fs]] has it; tags must be unique",
                    f.tag
                )));
            }
            if self.filesystems[..index]
                .iter()
                .any(|o| o.socket == f.socket)
            {
                return Err(bad(format!(
                    "socket = {:?}: another [[fs]] uses it; each share needs its own virtiofsd socket",
                    f.socket
                )));
            }
            match &f.shared_dir {
                Some(dir) => {
                    if !dir.is_dir() {
                        return Err(bad(format!(
                            "shared_dir = {dir:?}: not a directory; create it or fix the path"
                        )));
                    }
                    if let Some(parent) = f.socket.parent().filter(|p| !p.as_os_str().is_empty()) {
                        if !parent.is_dir() {
                            return Err(bad(format!(
                                "socket = {:?}: the directory {} does not exist",
                                f.socket,
                                parent.display()
                            )));
                        }
                    }
                }
                None => {
                    if f.read_only || f.virtiofsd.is_some() {
                        return Err(bad(
                            "read_only and virtiofsd only apply when qvm-vmm starts virtiofsd: \
                             add shared_dir = \"<dir>\" or start virtiofsd with --readonly yourself"
                                .into(),
                        ));
                    }
                    use std::os::unix::fs::FileTypeExt;
                    let is_socket = std::fs::metadata(&f.socket)
                        .map(|m| m.file_type().is_socket())
                        .unwrap_or(false);
                    if !is_socket {
                        return Err(bad(format!(
                            "socket = {:?}: no virtiofsd listens there; start one \
                             (virtiofsd --socket-path {} --shared-dir DIR) or set shared_dir so \
                             qvm-vmm starts it",
                            f.socket,
                            f.socket.display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_vsock(&self) -> Result<(), ConfigError> {
        let Some(v) = &self.vsock else { return Ok(()) };
        if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::BadVsock {
                key: format!("guest_cid = {}", v.guest_cid),
                reason: "CIDs 0-2 and 4294967295 are reserved; use 3 or more".into(),
            });
        }
        let bad = |reason: String| ConfigError::BadVsock {
            key: format!("socket = {:?}", v.socket),
            reason,
        };
        let parent = v.socket.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent {
            if !dir.is_dir() {
                return Err(bad(format!(
                    "the directory {} does not exist; create it or fix the path",
                    dir.display()
                )));
            }
        }
        // sockaddr_un.sun_path is 108 bytes; guest->host sockets add "_<port>" (up to 11).
        if v.socket.as_os_str().len() > 107 - 11 {
            return Err(bad(
                "too long for a unix socket path (at most 96 bytes); use a shorter path".into(),
            ));
        }
        Ok(())
    }

    fn validate_wayland(&self) -> Result<(), ConfigError> {
        let Some(w) = &self.wayland else {
            return Ok(());
        };
        let bad = |key: String, reason: &str| ConfigError::BadWayland {
            key,
            reason: reason.to_string(),
        };
        if w.max_buffer_mib == 0 || w.max_buffer_mib > MAX_WL_BUFFER_MIB {
            return Err(bad(
                format!("max_buffer_mib = {}", w.max_buffer_mib),
                &format!("must be 1 to {MAX_WL_BUFFER_MIB}"),
            ));
        }
        if w.max_vfds == 0 || w.max_vfds > MAX_WL_VFDS {
            return Err(bad(
                format!("max_vfds = {}", w.max_vfds),
                &format!("must be 1 to {MAX_WL_VFDS}"),
            ));
        }
        let check_socket = |key: String, p: &Path| {
            if p.as_os_str().len() > 107 {
                return Err(bad(
                    key,
                    "too long for a unix socket path (at most 107 bytes)",
                ));
            }
            Ok(())
        };
        if let Some(s) = &w.socket {
            check_socket(format!("socket = {s:?}"), s)?;
        }
        if let Some(n) = &w.name {
            if !valid_wl_vm_name(n) {
                return Err(bad(
                    format!("name = {n:?}"),
                    "use 1 to 32 printable characters without ']'",
                ));
            }
        }
        for g in &w.allow_globals {
            if !valid_wl_global(g) {
                return Err(bad(
                    format!("allow_globals = [{g:?}]"),
                    &format!(
                        "not a Wayland interface name (letters, digits and _, at most {MAX_WL_GLOBAL_LEN})"
                    ),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, n) in w.named.iter().enumerate() {
            let key = format!("named #{} name = {:?}", i + 1, n.name);
            if n.name.is_empty() || n.name.len() > MAX_WL_NAME_LEN {
                return Err(bad(key, &format!("must be 1 to {MAX_WL_NAME_LEN} bytes")));
            }
            if !n.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(key, "use printable ASCII without spaces"));
            }
            if !seen.insert(n.name.as_str()) {
                return Err(bad(key, "named twice; names must be unique"));
            }
            check_socket(
                format!("named #{} socket = {:?}", i + 1, n.socket),
                &n.socket,
            )?;
        }
        if w.socket.is_none() && w.named.is_empty() {
            return Err(bad(
                "socket".into(),
                "no compositor socket: set socket = \"wayland-0\" (or [[wayland.named]] entries)",
            ));
        }
        Ok(())
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

fn check_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError::BadFile {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        bad(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "no such file; fix the path (relative paths are relative to the config file)"
                    .to_string()
            }
            _ => format!("cannot access it: {e}"),
        })
    })?;
    if !meta.is_file() {
        return Err(bad("not a regular file".to_string()));
    }
    if meta.len() == 0 {
        return Err(bad("the file is empty".to_string()));
    }
    std::fs::File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    Ok(())
}

fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<VmConfig, ConfigError> {
        VmConfig::parse(text, Path::new("vm.toml"), Path::new("/base"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"k/vmlinux\"\n").unwrap();
        assert_eq!(c.machine.vcpus, 1);
        assert_eq!(c.boot.kernel, PathBuf::from("/base/k/vmlinux"));
        assert_eq!(c.boot.cmdline, DEFAULT_CMDLINE);
        assert_eq!(c.console.mode, ConsoleMode::Stdio);
        assert_eq!(c.memory_bytes(), 128 << 20);
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let e = parse("[machine]\nmemory_mib = 128\nvcpu = 2\n[boot]\nkernel = \"k\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("vm.toml:3: unknown field `vcpu`"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn value_checks() {
        let mut c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"/bin/sh\"\n").unwrap();
        c.validate(Some(1024)).unwrap();
        c.machine.memory_mib = 4096;
        assert!(matches!(
            c.validate(Some(1024)),
            Err(ConfigError::MemoryTooLarge { .. })
        ));
        c.machine.memory_mib = 0;
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::MemoryTooSmall(0))
        ));
        c.machine.memory_mib = 64;
        c.machine.vcpus = 0;
        assert!(matches!(c.validate(None), Err(ConfigError::NoVcpus)));
        c.machine.vcpus = 255;
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::TooManyVcpus { .. })
        ));
        c.machine.vcpus = 2;
        c.boot.cmdline = "x".repeat(MAX_CMDLINE_LEN);
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::CmdlineTooLong(_))
        ));
        c.boot.cmdline = "console=ttyS0 é".into();
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::CmdlineNotAscii)
        ));
        c.boot.cmdline = DEFAULT_CMDLINE.into();
        c.console.mode = ConsoleMode::File;
        assert!(matches!(
            c.validate(None),
            Err(ConfigError::ConsoleFileWithoutPath)
        ));
        c.boot.kernel = "/nonexistent/vmlinux".into();
        let e = c.validate(None).unwrap_err().to_string();
        assert!(
            e.starts_with("[boot] kernel = \"/nonexistent/vmlinux\": no such file"),
            "{e}"
        );
    }

    fn with(extra: &str) -> Result<(), String> {
        let c = parse(&format!(
            "[machine]\nmemory_mib = 128\n[boot]\nkernel = \"/bin/sh\"\n{extra}"
        ))
        .map_err(|e| e.to_string())?;
        c.validate(Some(1024)).map_err(|e| e.to_string())
    }

    #[test]
    fn net_checks() {
        with("[[net]]\ntap = \"tap0\"\nmac = \"52:54:00:12:34:56\"\n").unwrap();
        let e = with("[[net]]\nmac = \"52:54:00:12:34:56\"\n").unwrap_err();
        assert!(e.starts_with("[[net]] #1: set exactly one of tap"), "{e}");
        let e = with("[[net]]\ntap = \"a-very-long-tap-name\"\n").unwrap_err();
        assert!(e.contains("not an interface name"), "{e}");
        let e = with("[[net]]\ntap = \"t0\"\nmac = \"53:54:00:12:34:56\"\n").unwrap_err();
        assert!(e.contains("multicast"), "{e}");
        let e = with("[[net]]\ntap = \"t0\"\nmac = \"52:54:00:12:34\"\n").unwrap_err();
        assert!(e.contains("not a MAC address like"), "{e}");
        let e = with("[[net]]\ntap = \"t0\"\n[[net]]\ntap = \"t0\"\n").unwrap_err();
        assert!(
            e.starts_with("[[net]] #2: tap = \"t0\": [[net]] #1 uses it"),
            "{e}"
        );
        let e = with("[[net]]\nfd = 1000\n").unwrap_err();
        assert!(e.contains("fd = 1000: not an open file descriptor"), "{e}");
    }

    #[test]
    fn vsock_checks() {
        with("[vsock]\nguest_cid = 3\nsocket = \"/tmp/vm.vsock\"\n").unwrap();
        let e = with("[vsock]\nguest_cid = 2\nsocket = \"/tmp/vm.vsock\"\n").unwrap_err();
        assert!(e.starts_with("[vsock] guest_cid = 2: CIDs 0-2"), "{e}");
        let e = with("[vsock]\nguest_cid = 3\nsocket = \"/nonexistent/dir/v.sock\"\n").unwrap_err();
        assert!(
            e.contains("the directory /nonexistent/dir does not exist"),
            "{e}"
        );
        let c = parse("[machine]\nmemory_mib = 128\n[boot]\nkernel = \"k\"\n[vsock]\nguest_cid = 3\nsocket = \"v.sock\"\n").unwrap();
        assert_eq!(c.vsock.unwrap().socket, PathBuf::from("/base/v.sock"));
    }

    #[test]
    fn fs_checks() {
        let e = with("[[fs]]\ntag = \"\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/tmp\"\n")
            .unwrap_err();
        assert!(
            e.starts_with("[[fs]] #1: tag = \"\": use 1 to 36 bytes"),
            "{e}"
        );
        with("[[fs]]\ntag = \"home\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/tmp\"\nread_only = true\n").unwrap();
        let e = with("[[fs]]\ntag = \"a\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/tmp\"\n[[fs]]\ntag = \"a\"\nsocket = \"/tmp/y.sock\"\nshared_dir = \"/tmp\"\n").unwrap_err();
        assert!(e.contains("tags must be unique"), "{e}");
        let e = with("[[fs]]\ntag = \"a\"\nsocket = \"/nonexistent/x.sock\"\n").unwrap_err();
        assert!(e.contains("no virtiofsd listens there"), "{e}");
        let e = with(
            "[[fs]]\ntag = \"a\"\nsocket = \"/tmp/x.sock\"\nshared_dir = \"/nonexistent/dir\"\n",
        )
        .unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn wayland_policy_keys_and_the_name_default() {
        let base = "[machine]\nmemory_mib = 64\n[boot]\nkernel = \"/bin/sh\"\n[wayland]\nsocket = \"/w\"\n";
        let at = |file: &str, extra: &str| {
            VmConfig::parse(&format!("{base}{extra}"), Path::new(file), Path::new("/b"))
                .and_then(|c| c.validate(None).map(|_| c))
                .map(|c| c.wayland.unwrap())
        };
        let w = at("/etc/qvm/work.toml", "").unwrap();
        assert_eq!(w.name.as_deref(), Some("work"));
        assert!(w.allow_globals.is_empty());
        assert_eq!(w.clipboard, WaylandClipboard::Gated);
        // A file name that cannot label windows leaves the default ("vm") to the device.
        assert_eq!(at("/x/a]b.toml", "").unwrap().name, None);
        let w = at(
            "vm.toml",
            "name = \"banking\"\nallow_globals = [\"weston_screenshooter\"]\nclipboard = \"open\"\n",
        )
        .unwrap();
        assert_eq!(w.name.as_deref(), Some("banking"));
        assert_eq!(w.allow_globals, ["weston_screenshooter"]);
        assert_eq!(w.clipboard, WaylandClipboard::Open);
        for bad in [
            "name = \"\"",
            "name = \"a]\"",
            "name = \"123456789012345678901234567890123\"",
            "allow_globals = [\"a b\"]",
            "clipboard = \"shared\"",
        ] {
            assert!(at("vm.toml", bad).is_err(), "{bad}");
        }
    }
}
