//! The per-user runtime directory: `$XDG_RUNTIME_DIR/qvm/<vm>/` (else `/run/user/$UID/qvm`,
//! else `/tmp/qvm-$UID`, for root `/run/qvm`; root takes `$XDG_RUNTIME_DIR` only if it is
//! root's, not a user's kept by `sudo -E`) holding each VM's derived `vm.toml`,
//! `api.sock`, `vsock.sock`, `console.log` (the guest's console), `vmm.log` (qvm-vmm's own
//! messages) and `pid`; and telling running, stopped and stale VMs apart.
//!
//! Another local user controls every path in /tmp, and a jailed VMM (another uid) owns its
//! VM's directory. So the root is used only if it is a real directory (not a symbolic link)
//! owned by us and closed to group and others ([`prepare_root`]), and every file qvm writes
//! there is made afresh with `O_EXCL | O_NOFOLLOW` and chowned through its descriptor
//! ([`create_private`]): a planted link is replaced, never followed. (Root under `sudo` used
//! `/tmp/qvm-0`, accepted it from anyone, and followed links in it.)

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where root's VMs live when root has no runtime directory of its own: not under /tmp.
pub const ROOT_RUNTIME_DIR: &str = "/run/qvm";

/// The runtime root from the environment's values (pure, for tests): `xdg` is
/// `$XDG_RUNTIME_DIR` (for root: only if [`roots_own`]), `run_user_exists` whether
/// `/run/user/$UID` exists.
pub fn runtime_root_from(xdg: Option<&Path>, uid: u32, run_user_exists: bool) -> PathBuf {
    match xdg {
        Some(x) if x.is_absolute() => x.join("qvm"),
        _ if run_user_exists => PathBuf::from(format!("/run/user/{uid}/qvm")),
        _ if uid == 0 => PathBuf::from(ROOT_RUNTIME_DIR),
        _ => PathBuf::from(format!("/tmp/qvm-{uid}")),
    }
}

/// Whether `dir` is a directory (not a link) of root's that no one else may write: the only
/// kind of `$XDG_RUNTIME_DIR` root works in. A user's (`sudo -E` keeps it) is theirs to swap
/// under root's feet.
pub fn roots_own(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0)
}

/// Why a runtime directory is not safe to use.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}; qvm will not use it (remove it, or set QVM_RUNTIME_DIR to a directory only you can write)")]
pub struct UnsafeDir {
    pub path: PathBuf,
    pub why: String,
}

/// Checks that `path` (just created or found) is a directory, not a link to one, owned by one
/// of `owners`, and closed to group and others.
pub fn check_private_dir(path: &Path, owners: &[u32]) -> Result<(), UnsafeDir> {
    let bad = |why: String| UnsafeDir {
        path: path.to_path_buf(),
        why,
    };
    let m = std::fs::symlink_metadata(path).map_err(|e| bad(e.to_string()))?;
    if m.file_type().is_symlink() {
        return Err(bad("it is a symbolic link".into()));
    }
    if !m.is_dir() {
        return Err(bad("it is not a directory".into()));
    }
    if !owners.contains(&m.uid()) {
        return Err(bad(format!("it belongs to uid {}, not to you", m.uid())));
    }
    if m.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "its mode {:o} lets other users in (qvm makes it 0700)",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Checks that no one but root and us can change what `root`'s parent directories resolve
/// to: each (after links are resolved) belongs to root or to us, and is not writable by
/// group or others unless sticky (as /tmp, where others cannot rename what is ours). A
/// runtime root made by root inside a user's directory could be swapped for a link after the
/// check, and every later step would follow it.
pub fn check_ancestors(root: &Path) -> Result<(), UnsafeDir> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let parent = root.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent).map_err(|e| UnsafeDir {
        path: root.to_path_buf(),
        why: format!("cannot resolve its parent: {e}"),
    })?;
    for dir in parent.ancestors() {
        let m = std::fs::metadata(dir).map_err(|e| UnsafeDir {
            path: root.to_path_buf(),
            why: format!("cannot inspect {}: {e}", dir.display()),
        })?;
        let owner_ok = m.uid() == 0 || m.uid() == me;
        let sticky = m.mode() & 0o1000 != 0;
        if !owner_ok || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(UnsafeDir {
                path: root.to_path_buf(),
                why: format!(
                    "{} above it belongs to uid {} (mode {:o}): someone else could swap what is \
                     below it",
                    dir.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ),
            });
        }
    }
    Ok(())
}

/// Makes the runtime root `root` (0700; its parents as needed) unless it exists, then checks
/// it is ours alone ([`check_private_dir`], [`check_ancestors`]).
pub fn prepare_root(root: &Path) -> Result<(), UnsafeDir> {
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root);
    if let Err(e) = made {
        return Err(UnsafeDir {
            path: root.to_path_buf(),
            why: format!("cannot create it: {e}"),
        });
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    check_ancestors(root)?;
    check_private_dir(root, &[me])
}

/// Creates `path` afresh for writing, mode 0600: whatever is there (a stale file, or a link
/// someone planted) is removed first, and the new file is opened with `O_EXCL | O_NOFOLLOW`,
/// so a link planted in between fails the open instead of being followed. `owner` (uid, gid)
/// is given the file through its descriptor.
pub fn create_private(path: &Path, owner: Option<(u32, u32)>) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    Ok(f)
}

/// Opens `path` for reading only if it is a regular file, not through a link, and without
/// blocking on a FIFO: a jailed VMM owns its VM's directory and could leave a FIFO, a link
/// to a root-only file or to /dev/zero where qvm reads its pid or logs.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(f)
}

/// If the runtime root `root` exists, checks it is ours alone ([`check_private_dir`]): even
/// `qvm status` must not read pid files or talk to sockets someone else planted.
pub fn check_root_if_present(root: &Path) -> Result<(), UnsafeDir> {
    if std::fs::symlink_metadata(root).is_err() {
        return Ok(());
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    check_ancestors(root)?;
    check_private_dir(root, &[me])
}

/// Gives the directory `path` (not a link) to `uid`:`gid` through its descriptor.
pub fn chown_dir(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    std::os::unix::fs::fchown(&d, Some(uid), Some(gid))
}

/// This user's runtime root (`QVM_RUNTIME_DIR` overrides everything).
pub fn runtime_root() -> PathBuf {
    if let Some(d) = std::env::var_os("QVM_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: getuid(2) cannot fail.
    let uid = unsafe { libc::getuid() };
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|x| uid != 0 || roots_own(x));
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
        let mut s = String::new();
        open_regular(&self.pid_file())
            .ok()?
            .take(32)
            .read_to_string(&mut s)
            .ok()?;
        s.trim().parse().ok().filter(|p| *p > 0)
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
    fn root_works_in_run_qvm_not_tmp_nor_a_user_s_runtime_dir() {
        assert_eq!(
            runtime_root_from(None, 0, false),
            PathBuf::from(ROOT_RUNTIME_DIR)
        );
        let t = tempfile::tempdir().unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(roots_own(t.path()), me == 0);
        let theirs = t.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
        assert!(!roots_own(&theirs));
        let link = t.path().join("link");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        assert!(!roots_own(&link));
    }

    /// What another local user (or a jailed VMM) plants where qvm is about to work: a runtime
    /// root that is a link, that is theirs, or that is open to them.
    #[test]
    fn a_runtime_root_someone_else_planted_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let ours = t.path().join("ours");
        prepare_root(&ours).unwrap();
        let mode = std::fs::metadata(&ours).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&ours, &link).unwrap();
        let e = prepare_root(&link).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains("QVM_RUNTIME_DIR"),
            "{e}"
        );
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_root(&open).unwrap_err().to_string();
        assert!(e.contains("mode 777 lets other users in"), "{e}");
        assert!(check_private_dir(&ours, &[me + 1])
            .unwrap_err()
            .to_string()
            .contains(&format!("belongs to uid {me}")));
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(prepare_root(&file).is_err());
        // Inside a directory someone else owns (or may write), even a root made by us could
        // be swapped for a link after the check.
        let theirs = t.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(me + 1000), None).unwrap();
        let e = prepare_root(&theirs.join("qvm")).unwrap_err().to_string();
        assert!(e.contains("above it belongs to uid"), "{e}");
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(prepare_root(&shared.join("qvm")).is_err());
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_root(&shared.join("qvm")).unwrap();
    }

    #[test]
    fn a_planted_link_is_replaced_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let log = t.path().join("console.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let mut f = create_private(&log, None).unwrap();
        std::io::Write::write_all(&mut f, b"guest output").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!std::fs::symlink_metadata(&log)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "guest output");
        // A directory link is not followed by chown_dir either.
        let dir = t.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let dlink = t.path().join("dlink");
        std::os::unix::fs::symlink(&dir, &dlink).unwrap();
        assert!(chown_dir(&dlink, 0, 0).is_err());
    }

    /// What a jailed VMM (which owns its VM's directory) could leave where qvm reads its pid:
    /// a FIFO (qvm would block holding the VM's lock), a link to /dev/zero (endless) or to a
    /// root-only file.
    #[test]
    fn a_pid_file_that_is_not_a_plain_file_is_no_pid() {
        let t = tempfile::tempdir().unwrap();
        let p = VmPaths::new(t.path(), "a");
        std::fs::create_dir_all(&p.dir).unwrap();
        std::fs::write(p.pid_file(), "123\n").unwrap();
        assert_eq!(p.pid(), Some(123));
        std::fs::remove_file(p.pid_file()).unwrap();
        std::os::unix::fs::symlink("/dev/zero", p.pid_file()).unwrap();
        assert_eq!(p.pid(), None);
        std::fs::remove_file(p.pid_file()).unwrap();
        let fifo = std::ffi::CString::new(p.pid_file().as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(p.pid(), None);
        std::fs::remove_file(p.pid_file()).unwrap();
        std::fs::write(p.dir.join("real"), "456\n").unwrap();
        std::os::unix::fs::symlink(p.dir.join("real"), p.pid_file()).unwrap();
        assert_eq!(p.pid(), None);
    }

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
