//! `[wayland]`: the virtio-wl device, guest windows on the host's Wayland compositor, and the
//! policy that labels them (name, allowed globals, clipboard).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::{resolve_bare_socket, resolve_relative};
use crate::ConfigError;

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

impl WaylandConfig {
    /// Makes the socket paths (`socket` and each named one) the ones that will be used: a bare
    /// name goes in `runtime` (`$XDG_RUNTIME_DIR`) when there is one; any other relative path
    /// (and a bare name without `runtime`) is taken relative to `base` (the config file's
    /// directory) when there is one, else left as it is.
    pub fn resolve_sockets(&mut self, runtime: Option<&Path>, base: Option<&Path>) {
        let resolve = |p: &mut PathBuf| {
            if let Some(dir) = runtime {
                if resolve_bare_socket(p, dir) {
                    return;
                }
            }
            if let Some(base) = base {
                resolve_relative(p, base);
            }
        };
        if let Some(s) = self.socket.as_mut() {
            resolve(s);
        }
        for n in &mut self.named {
            resolve(&mut n.socket);
        }
    }

    /// Every rule of the section (none of them looks at the host): the limits, the socket
    /// paths' length, the VM name, the globals, the named sockets, and at least one socket.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = self;
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
}
