//! How paths in a config are made absolute. One set of rules for `vm.toml`, the REST API and
//! the vm.toml files `qvm` derives:
//! - in `vm.toml`, a relative path is relative to the file's directory ([`resolve_relative`]),
//!   so an example VM works from any working directory; API bodies are taken as the VMM
//!   process sees them (no base);
//! - a Wayland socket given as a bare name (`wayland-0`, as `WAYLAND_DISPLAY` names it) is in
//!   `$XDG_RUNTIME_DIR` ([`resolve_bare_socket`]), everywhere.

use std::path::{Path, PathBuf};

/// `$XDG_RUNTIME_DIR` as this process has it: None when unset, an empty path when set empty
/// (which leaves a bare name as it is). The API filters out the empty value itself.
pub fn xdg_runtime_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
}

/// A relative `p` becomes `base/p`; an absolute one stays.
pub fn resolve_relative(p: &mut PathBuf, base: &Path) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Whether `p` is a bare name: relative, one component (`wayland-0`, not `sub/wayland-0`).
pub fn is_bare_name(p: &Path) -> bool {
    p.is_relative() && p.components().count() == 1
}

/// A bare socket name becomes `runtime/name`; any other path stays. Returns whether it did.
/// Resolving twice changes nothing (the result is not bare, unless `runtime` is empty).
pub fn resolve_bare_socket(p: &mut PathBuf, runtime: &Path) -> bool {
    if is_bare_name(p) {
        *p = runtime.join(&*p);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WaylandConfig;

    #[test]
    fn bare_names_relative_paths_and_absolute_ones() {
        let mut p = PathBuf::from("k/vmlinux");
        resolve_relative(&mut p, Path::new("/etc/qvm"));
        assert_eq!(p, PathBuf::from("/etc/qvm/k/vmlinux"));
        resolve_relative(&mut p, Path::new("/elsewhere"));
        assert_eq!(p, PathBuf::from("/etc/qvm/k/vmlinux"));
        for (bare, yes) in [
            ("wayland-0", true),
            ("sub/w", false),
            ("/w", false),
            ("./w", false),
        ] {
            assert_eq!(is_bare_name(Path::new(bare)), yes, "{bare}");
        }
        let mut p = PathBuf::from("wayland-0");
        assert!(resolve_bare_socket(&mut p, Path::new("/run/user/1000")));
        assert_eq!(p, PathBuf::from("/run/user/1000/wayland-0"));
        assert!(!resolve_bare_socket(&mut p, Path::new("/x")));
        // An empty runtime dir leaves the name bare (vm.toml with XDG_RUNTIME_DIR="").
        let mut p = PathBuf::from("wayland-0");
        assert!(resolve_bare_socket(&mut p, Path::new("")));
        assert_eq!(p, PathBuf::from("wayland-0"));
    }

    #[test]
    fn wayland_sockets_with_and_without_a_base() {
        let w: WaylandConfig =
            toml::from_str("socket = \"wayland-0\"\n[[named]]\nname = \"a\"\nsocket = \"sub/s\"\n")
                .unwrap();
        let run = Path::new("/run/user/1000");
        let sockets = |w: &WaylandConfig| (w.socket.clone().unwrap(), w.named[0].socket.clone());
        // vm.toml: bare names in the runtime dir, other relative paths next to the file.
        let mut file = w.clone();
        file.resolve_sockets(Some(run), Some(Path::new("/etc/qvm")));
        assert_eq!(
            sockets(&file),
            ("/run/user/1000/wayland-0".into(), "/etc/qvm/sub/s".into())
        );
        // Without a runtime dir, a bare name is relative to the file too.
        let mut file = w.clone();
        file.resolve_sockets(None, Some(Path::new("/etc/qvm")));
        assert_eq!(
            sockets(&file),
            ("/etc/qvm/wayland-0".into(), "/etc/qvm/sub/s".into())
        );
        // The API: no base, so only bare names move.
        let mut api = w.clone();
        api.resolve_sockets(Some(run), None);
        assert_eq!(
            sockets(&api),
            ("/run/user/1000/wayland-0".into(), "sub/s".into())
        );
        let mut api = w.clone();
        api.resolve_sockets(None, None);
        assert_eq!(api, w);
    }
}
