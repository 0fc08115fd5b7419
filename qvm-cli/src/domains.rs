//! The domains file: every VM of the desktop declared once, and each VM's `vm.toml` derived
//! from it into the per-user runtime directory.
//!
//! ```toml
//! [[vm]]
//! name = "work"                  # [a-z0-9][a-z0-9_-]*, at most 32 bytes
//! label = "blue"                 # colour/label shown by `qvm list` (optional)
//! memory_mib = 512
//! vcpus = 1                      # optional, default 1
//! kernel = "/var/lib/qvm/vmlinux"
//! initrd = "/var/lib/qvm/initramfs.cpio"   # optional
//! cmdline = "console=ttyS0 reboot=k panic=-1 qvm.mode=agent"   # optional
//! disks = [{ path = "work.img", read_only = false, id = "work" }]   # vm.toml [[disk]]
//! tap = "qvm-work"               # optional: one [[net]] on this tap
//! mac = "52:54:00:00:00:01"      # optional, with tap
//! shares = [{ tag = "home", path = "/home/me/work", read_only = false }]   # virtio-fs
//! wayland = { socket = "wayland-0", clipboard = "gated" }   # optional
//! apps = { image = "debian-rootfs.ext4", home = "/home/me/qvm/work" }   # optional, see [`Apps`]
//! cid = 3                        # optional vsock guest cid (default: 3 + position in file)
//! jail = { uid = 2001, gid = 2001 }   # optional: start through qvm-jailer (as root)
//! ```
//! Relative paths are relative to the domains file.

use std::path::{Path, PathBuf};

use qvm_config::{
    paths, toml_error_at, BootConfig, ConfigError, ConsoleConfig, DiskConfig, FsConfig,
    MachineConfig, NetConfig, VmConfig, VsockConfig, WaylandClipboard, WaylandConfig,
    DEFAULT_CMDLINE, DEFAULT_WL_BUFFER_MIB, DEFAULT_WL_VFDS,
};
use serde::Deserialize;

use crate::runtime::VmPaths;

/// Longest VM name (it names directories, sockets and systemd units).
pub const MAX_NAME_LEN: usize = 32;
/// The first vsock guest cid handed out (0-2 are reserved).
pub const FIRST_CID: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum DomainsError {
    #[error("cannot read the domains file {path}: {source} (create it or pass --domains PATH)")]
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
    #[error("{path}: no [[vm]] declared; add one with name, memory_mib and kernel")]
    Empty { path: PathBuf },
    #[error("[[vm]] name = {name:?}: use 1 to {MAX_NAME_LEN} characters of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    BadName { name: String },
    #[error("[[vm]] name = {name:?} is declared twice; VM names must be unique")]
    DuplicateName { name: String },
    #[error(
        "[[vm]] {name}: cid = {cid} is also used by {other}; give each VM its own cid (3 or more)"
    )]
    DuplicateCid {
        name: String,
        other: String,
        cid: u64,
    },
    #[error("[[vm]] {name}: cid = {cid}: vsock guest cids start at {FIRST_CID}")]
    BadCid { name: String, cid: u64 },
    #[error("[[vm]] {name}: mac is set without tap; add tap = \"<device>\" or drop mac")]
    MacWithoutTap { name: String },
    #[error("[[vm]] {name}: shares tag {tag:?} is used twice; give each share its own tag")]
    DuplicateShare { name: String, tag: String },
    #[error("no VM named {name:?} in {path}; declared: {known}")]
    UnknownVm {
        name: String,
        path: PathBuf,
        known: String,
    },
    #[error(
        "[[vm]] {name}: jail uid and gid must not be 0; give the VM its own unprivileged uid/gid"
    )]
    JailRoot { name: String },
    #[error("[[vm]] {name}: shares tag {tag:?} is reserved for apps.home; rename the share")]
    ReservedShare { name: String, tag: String },
    #[error("[[vm]] {name}: disk id {id:?} is reserved for apps.image; rename the disk")]
    ReservedDisk { name: String, id: String },
    #[error("[[vm]] {name}: {source}")]
    Vm {
        name: String,
        #[source]
        source: ConfigError,
    },
}

/// One shared host directory (virtio-fs; qvm-vmm starts virtiofsd for it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Share {
    /// What the guest mounts: `mount -t virtiofs <tag> /mnt`.
    pub tag: String,
    /// The host directory.
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

/// The Wayland policy of one VM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Wayland {
    /// The host compositor socket (a bare name is taken in `$XDG_RUNTIME_DIR`).
    #[serde(default = "default_wl_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub clipboard: WaylandClipboard,
    /// Extra Wayland globals the guest may bind.
    #[serde(default)]
    pub allow_globals: Vec<String>,
}

fn default_wl_socket() -> PathBuf {
    PathBuf::from("wayland-0")
}

/// The disk id (virtio-blk serial) of [`Apps::image`]; the guest's init finds the image by it.
pub const APPS_DISK_ID: &str = "qvm-apps";
/// The virtio-fs tag of [`Apps::home`].
pub const APPS_HOME_TAG: &str = "qvm-home";

/// Applications from an image (`guest/build-debian-rootfs.sh`'s): the agent and
/// everything `qvm run` starts live in it, with `qvm-wl-proxy` as their Wayland compositor.
/// Derived into a read-only disk with id [`APPS_DISK_ID`] after `disks`, and `qvm.apps=` on the
/// command line (the VM must run `qvm.mode=agent`, the default).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Apps {
    /// The application image (ext4), attached read-only: one image serves every VM.
    pub image: PathBuf,
    /// A host directory that becomes the apps' home (`/root`), shared read-write over
    /// virtio-fs (tag [`APPS_HOME_TAG`]), so settings and files outlive the VM. Without it, home
    /// is a tmpfs and is lost at power-off.
    pub home: Option<PathBuf>,
}

/// Run the VM through `qvm-jailer` (as root): its own uid/gid, namespaces, cgroup.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Jail {
    /// The VM's own uid and gid (not 0); it must be able to read the kernel, initrd and disks.
    pub uid: u32,
    pub gid: u32,
    /// qvm-jailer's `--jail-base` (default: its own, /srv/qvm/jail).
    pub jail_base: Option<PathBuf>,
    /// qvm-jailer's `--cgroup-base` (default: its own, /sys/fs/cgroup/qvm).
    pub cgroup_base: Option<PathBuf>,
}

/// One `[[vm]]` of the domains file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    #[serde(default, alias = "colour", alias = "color")]
    pub label: Option<String>,
    pub memory_mib: u64,
    #[serde(default = "default_vcpus")]
    pub vcpus: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    pub tap: Option<String>,
    pub mac: Option<String>,
    #[serde(default)]
    pub shares: Vec<Share>,
    pub wayland: Option<Wayland>,
    /// Applications from an image (see [`Apps`]).
    pub apps: Option<Apps>,
    pub cid: Option<u64>,
    /// Start this VM jailed (see [`Jail`]).
    pub jail: Option<Jail>,
}

fn default_vcpus() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainsToml {
    #[serde(default)]
    vm: Vec<Domain>,
}

/// The parsed domains file.
#[derive(Debug, Clone)]
pub struct Domains {
    pub path: PathBuf,
    pub vms: Vec<Domain>,
}

/// Whether `name` can name a VM.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

impl Domains {
    /// Reads and parses `path` (structure only: [`Domains::vm_config`] checks each VM).
    pub fn load(path: &Path) -> Result<Self, DomainsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DomainsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses TOML text; relative paths are resolved against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, DomainsError> {
        let parsed: DomainsToml = toml::from_str(text).map_err(|e| {
            let (line, message) = toml_error_at(text, &e);
            DomainsError::Parse {
                path: path.to_path_buf(),
                line,
                message,
            }
        })?;
        if parsed.vm.is_empty() {
            return Err(DomainsError::Empty {
                path: path.to_path_buf(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| paths::resolve_relative(p, base);
        let mut vms = parsed.vm;
        let mut cids: Vec<(u64, String)> = Vec::new();
        for (i, d) in vms.iter_mut().enumerate() {
            if !valid_name(&d.name) {
                return Err(DomainsError::BadName {
                    name: d.name.clone(),
                });
            }
            resolve(&mut d.kernel);
            if let Some(p) = d.initrd.as_mut() {
                resolve(p);
            }
            for disk in &mut d.disks {
                resolve(&mut disk.path);
            }
            for s in &mut d.shares {
                resolve(&mut s.path);
            }
            if let Some(a) = d.apps.as_mut() {
                resolve(&mut a.image);
                if let Some(h) = a.home.as_mut() {
                    resolve(h);
                }
                if let Some(s) = d.shares.iter().find(|s| s.tag == APPS_HOME_TAG) {
                    return Err(DomainsError::ReservedShare {
                        name: d.name.clone(),
                        tag: s.tag.clone(),
                    });
                }
                if let Some(id) = d
                    .disks
                    .iter()
                    .filter_map(|k| k.id.as_deref())
                    .find(|id| *id == APPS_DISK_ID)
                {
                    return Err(DomainsError::ReservedDisk {
                        name: d.name.clone(),
                        id: id.to_string(),
                    });
                }
            }
            let cid = d.cid.unwrap_or(FIRST_CID + i as u64);
            if cid < FIRST_CID {
                return Err(DomainsError::BadCid {
                    name: d.name.clone(),
                    cid,
                });
            }
            if let Some((_, other)) = cids.iter().find(|(c, _)| *c == cid) {
                return Err(DomainsError::DuplicateCid {
                    name: d.name.clone(),
                    other: other.clone(),
                    cid,
                });
            }
            cids.push((cid, d.name.clone()));
            d.cid = Some(cid);
            if d.mac.is_some() && d.tap.is_none() {
                return Err(DomainsError::MacWithoutTap {
                    name: d.name.clone(),
                });
            }
            if d.jail.as_ref().is_some_and(|j| j.uid == 0 || j.gid == 0) {
                return Err(DomainsError::JailRoot {
                    name: d.name.clone(),
                });
            }
            for (j, s) in d.shares.iter().enumerate() {
                if d.shares[..j].iter().any(|o| o.tag == s.tag) {
                    return Err(DomainsError::DuplicateShare {
                        name: d.name.clone(),
                        tag: s.tag.clone(),
                    });
                }
            }
        }
        for (i, d) in vms.iter().enumerate() {
            if vms[..i].iter().any(|o| o.name == d.name) {
                return Err(DomainsError::DuplicateName {
                    name: d.name.clone(),
                });
            }
        }
        Ok(Domains {
            path: path.to_path_buf(),
            vms,
        })
    }

    /// The VM named `name`.
    pub fn get(&self, name: &str) -> Result<&Domain, DomainsError> {
        self.vms
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| DomainsError::UnknownVm {
                name: name.to_string(),
                path: self.path.clone(),
                known: self
                    .vms
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl Domain {
    /// The VM's `vm.toml` contents (not yet validated: see [`Domain::checked_config`]).
    pub fn vm_config(&self, paths: &VmPaths) -> VmConfig {
        let mut cmdline = self
            .cmdline
            .clone()
            .unwrap_or_else(|| format!("{DEFAULT_CMDLINE} qvm.mode=agent"));
        let mut disks = self.disks.clone();
        // The apps' home is one more share, under a reserved tag.
        let mut home = None;
        if let Some(a) = &self.apps {
            disks.push(DiskConfig {
                path: a.image.clone(),
                read_only: true,
                id: Some(APPS_DISK_ID.to_string()),
                direct_io: false,
            });
            cmdline.push_str(&format!(" qvm.apps=id:{APPS_DISK_ID}"));
            if let Some(path) = &a.home {
                home = Some(Share {
                    tag: APPS_HOME_TAG.to_string(),
                    path: path.clone(),
                    read_only: false,
                });
                cmdline.push_str(&format!(" qvm.home={APPS_HOME_TAG}"));
            }
        }
        let filesystems = self
            .shares
            .iter()
            .chain(&home)
            .map(|s| FsConfig {
                tag: s.tag.clone(),
                socket: paths.dir.join(format!("fs-{}.sock", s.tag)),
                shared_dir: Some(s.path.clone()),
                read_only: s.read_only,
                virtiofsd: None,
            })
            .collect();
        VmConfig {
            machine: MachineConfig {
                vcpus: self.vcpus,
                memory_mib: self.memory_mib,
            },
            boot: BootConfig {
                kernel: self.kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline,
            },
            // qvm-vmm's stdout goes to console.log (see `qvm start`).
            console: ConsoleConfig::default(),
            disks,
            nets: self
                .tap
                .iter()
                .map(|t| NetConfig {
                    tap: Some(t.clone()),
                    fd: None,
                    mac: self.mac.clone(),
                })
                .collect(),
            vsock: Some(VsockConfig {
                guest_cid: self.cid.unwrap_or(FIRST_CID),
                socket: paths.vsock_sock(),
            }),
            filesystems,
            wayland: self.wayland.as_ref().map(|w| WaylandConfig {
                socket: Some(resolve_wl_socket(&w.socket)),
                named: Vec::new(),
                max_buffer_mib: DEFAULT_WL_BUFFER_MIB,
                max_vfds: DEFAULT_WL_VFDS,
                name: Some(self.name.clone()),
                allow_globals: w.allow_globals.clone(),
                clipboard: w.clipboard,
            }),
        }
    }

    /// [`Domain::vm_config`], checked by qvm-vmm's own validation (files exist, limits).
    pub fn checked_config(&self, paths: &VmPaths) -> Result<VmConfig, DomainsError> {
        let cfg = self.vm_config(paths);
        cfg.validate_here().map_err(|source| DomainsError::Vm {
            name: self.name.clone(),
            source,
        })?;
        Ok(cfg)
    }

    /// The label shown in listings.
    pub fn label(&self) -> &str {
        self.label.as_deref().unwrap_or("-")
    }
}

/// A bare socket name is taken in `$XDG_RUNTIME_DIR`, as `WAYLAND_DISPLAY` is (and as
/// qvm-vmm takes it in a vm.toml).
fn resolve_wl_socket(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    if let Some(dir) = paths::xdg_runtime_dir() {
        paths::resolve_bare_socket(&mut p, &dir);
    }
    p
}

/// The text of a derived `vm.toml`.
pub fn to_toml(cfg: &VmConfig) -> String {
    let body = cfg
        .to_toml()
        .unwrap_or_else(|e| format!("# cannot serialize: {e}\n"));
    format!("# Derived by `qvm` from the domains file; edit that file, not this one.\n{body}")
}
