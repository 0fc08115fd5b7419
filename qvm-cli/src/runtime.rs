//! The per-user runtime directory: `$XDG_RUNTIME_DIR/qvm/<vm>/` (else `/run/user/$UID/qvm`,
//! else `/tmp/qvm-$UID`) holding each VM's derived `vm.toml`, `api.sock`, `vsock.sock`,
//! `console.log` (the guest's console), `vmm.log` (qvm-vmm's own messages) and `pid`; and
//! telling running, stopped and stale VMs apart.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The runtime root from the environment's values (pure, for tests): `xdg` is
/// `$XDG_RUNTIME_DIR`, `run_user_exists` whether `/run/user/$UID` exists.
pub fn runtime_root_from(xdg: Option<&Path>, uid: u32, run_user_exists: bool) -> PathBuf {
    match xdg {
        Some(x) if x.is_absolute() => x.join("qvm"),
        _ if run_user_exists => PathBuf::from(format!("/run/user/{uid}/qvm")),
        _ => PathBuf::from(format!("/tmp/qvm-{uid}")),
    }
}

/// This user's runtime root (`QVM_RUNTIME_DIR` overrides everything).
pub fn runtime_root() -> PathBuf {
    if let Some(d) = std::env::var_os("QVM_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    let run_user = Path::new(&format!("/run/user/{uid}")).is_dir();
    runtime_root_from(xdg.as_deref(), uid, run_user)
}

/// The files of one VM in the runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(root: &Path, name: &str) -> Self {
        VmPaths {
            dir: root.join(name),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("vm.toml")
    }
    pub fn api_sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    pub fn vsock_sock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }
    /// The guest's serial console (the VMM's stdout): guest-controlled text.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// What qvm-vmm (or qvm-jailer) says: its stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The pid in the pid file, if any.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|p| *p > 0)
    }

    /// Whether `pid` is a live (not zombie) qvm-vmm serving this VM's API socket.
    pub fn is_our_vmm(&self, pid: i32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let sock = self.api_sock();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)) == sock);
        ours && !is_zombie(pid)
    }

    /// The live VMM's pid, if there is one.
    pub fn live_pid(&self) -> Option<i32> {
        self.pid().filter(|p| self.is_our_vmm(*p))
    }

    /// Leftovers of a VM whose VMM is gone: sockets and the pid file. Returns what it removed.
    pub fn clean_stale(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let mut candidates = vec![self.api_sock(), self.vsock_sock(), self.pid_file()];
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                // Guest->host vsock listeners (`vsock.sock_<port>`) and virtiofsd sockets.
                if n.starts_with("vsock.sock_") || (n.starts_with("fs-") && n.ends_with(".sock")) {
                    candidates.push(e.path());
                }
            }
        }
        for p in candidates {
            if std::fs::symlink_metadata(&p).is_ok() && std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
        removed
    }
}

/// `/proc/<pid>/stat` says Z (or X): exited, not yet reaped.
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_none_or(|s| s == "Z" || s == "X")
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_prefers_xdg_then_run_user_then_tmp() {
        assert_eq!(
            runtime_root_from(Some(Path::new("/run/user/1000")), 1000, true),
            PathBuf::from("/run/user/1000/qvm")
        );
        assert_eq!(
            runtime_root_from(Some(Path::new("relative")), 1000, true),
            PathBuf::from("/run/user/1000/qvm")
        );
        assert_eq!(
            runtime_root_from(None, 1000, true),
            PathBuf::from("/run/user/1000/qvm")
        );
        assert_eq!(
            runtime_root_from(None, 1000, false),
            PathBuf::from("/tmp/qvm-1000")
        );
    }

    #[test]
    fn vm_paths_live_in_the_vm_dir() {
        let p = VmPaths::new(Path::new("/r/qvm"), "work");
        assert_eq!(p.config(), PathBuf::from("/r/qvm/work/vm.toml"));
        assert_eq!(p.api_sock(), PathBuf::from("/r/qvm/work/api.sock"));
        assert_eq!(p.vsock_sock(), PathBuf::from("/r/qvm/work/vsock.sock"));
        assert_eq!(p.console(), PathBuf::from("/r/qvm/work/console.log"));
        assert_eq!(p.vmm_log(), PathBuf::from("/r/qvm/work/vmm.log"));
        assert_eq!(p.pid_file(), PathBuf::from("/r/qvm/work/pid"));
    }

    #[test]
    fn stale_files_are_detected_and_removed() {
        let t = tempfile::tempdir().unwrap();
        let p = VmPaths::new(t.path(), "a");
        std::fs::create_dir_all(&p.dir).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(p.api_sock()).unwrap();
        std::fs::write(p.pid_file(), "999999999\n").unwrap();
        std::fs::write(p.dir.join("vsock.sock_1024"), "").unwrap();
        std::fs::write(p.config(), "keep").unwrap();
        assert_eq!(p.live_pid(), None);
        let removed = p.clean_stale();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(p.config().exists());
        assert!(!p.api_sock().exists());
    }

    #[test]
    fn our_own_process_is_not_a_vmm() {
        let t = tempfile::tempdir().unwrap();
        let p = VmPaths::new(t.path(), "a");
        assert!(!p.is_our_vmm(std::process::id() as i32));
        assert!(alive(std::process::id() as i32));
    }
}
