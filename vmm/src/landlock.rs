//! Landlock: a second wall inside qvm-vmm, under the jailer's (or in place of one). After the
//! config is read and before the VM is built, the main thread restricts itself (and every
//! thread it starts later) to the files this VM needs:
//!
//! - read: the kernel, the initrd, read-only disks;
//! - read and write: read-write disks, the console file, /dev/kvm, /dev/net/tun (with device
//!   ioctls where the kernel controls them, Landlock ABI 5);
//! - create and remove sockets: the vsock socket's directory, the API socket's directory.
//!
//! Everything else is denied (reads included). Shared libraries need no rule: they are mapped
//! before main. Connecting to existing unix sockets (vhost-user, Wayland compositors, vsock
//! forwards) is not governed by Landlock's file-system rights, so those need none either.
//!
//! The O_PATH descriptor of each rule's path stays open (see `apply`). Raw syscalls, no crate. Best effort: a kernel without Landlock (ENOSYS, or EOPNOTSUPP when
//! it is built but not enabled in `lsm=`) gets one line on stderr and the VM runs anyway.
//! `[[fs]]` entries with `shared_dir` make qvm-vmm start virtiofsd: it is started before the
//! ruleset applies (it execs and sandboxes itself in its own namespaces), so every VM gets
//! Landlock, shares included, with no right on the share. Where the kernel has Landlock ABI 6,
//! the ruleset is also scoped: the VMM cannot connect to abstract unix sockets (a new network
//! namespace's job otherwise: the session bus, X11's, a compositor's) or signal processes
//! outside its domain. One line on stderr says which ABI applied.
//!
//! seccomp: the main thread's filter is installed late (vm.rs, just before the event loop),
//! and no other thread exists yet when this runs, so the landlock syscalls are in no filter.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use qvm_config::{ConsoleMode, VmConfig};

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

pub const EXECUTE: u64 = 1 << 0;
pub const WRITE_FILE: u64 = 1 << 1;
pub const READ_FILE: u64 = 1 << 2;
pub const READ_DIR: u64 = 1 << 3;
pub const REMOVE_FILE: u64 = 1 << 5;
pub const MAKE_SOCK: u64 = 1 << 9;
pub const IOCTL_DEV: u64 = 1 << 15;
/// Rights that apply to files (not directories).
const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | IOCTL_DEV;

/// Every file-system right Landlock ABI `abi` knows: all of them are handled (denied unless a
/// rule allows them).
pub fn handled_fs(abi: i64) -> u64 {
    let mut h = (1u64 << 13) - 1; // ABI 1: EXECUTE ..= MAKE_SYM
    if abi >= 2 {
        h |= 1 << 13; // REFER
    }
    if abi >= 3 {
        h |= 1 << 14; // TRUNCATE
    }
    if abi >= 5 {
        h |= IOCTL_DEV;
    }
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LandlockMode {
    /// No Landlock ruleset.
    Off,
    /// Restrict the VMM to its VM's files where the kernel has Landlock.
    On,
}

/// One rule: `access` on `path` (and beneath it, for a directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub access: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The ruleset is in force.
    Applied { abi: i64, rules: usize, scoped: u64 },
    /// The kernel has no Landlock; the reason is printed.
    Unsupported(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock: {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn last(what: impl Into<String>) -> LandlockError {
    LandlockError::Sys {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The rules VM `cfg` needs (`api_sock`: the REST API socket, if any). Pure: no file access.
pub fn rules(cfg: &VmConfig, api_sock: Option<&Path>) -> Vec<Rule> {
    let mut r = Vec::new();
    let mut add = |path: &Path, access: u64| {
        r.push(Rule {
            path: path.to_path_buf(),
            access,
        })
    };
    add(&cfg.boot.kernel, READ_FILE);
    if let Some(i) = &cfg.boot.initrd {
        add(i, READ_FILE);
    }
    for d in &cfg.disks {
        let rw = if d.read_only { 0 } else { WRITE_FILE };
        add(&d.path, READ_FILE | rw | IOCTL_DEV);
    }
    if cfg.console.mode == ConsoleMode::File {
        if let Some(p) = &cfg.console.path {
            add(p, WRITE_FILE);
        }
    }
    add(Path::new("/dev/kvm"), READ_FILE | WRITE_FILE | IOCTL_DEV);
    if !cfg.nets.is_empty() {
        add(
            Path::new("/dev/net/tun"),
            READ_FILE | WRITE_FILE | IOCTL_DEV,
        );
    }
    if let Some(v) = &cfg.vsock {
        add(&parent_dir(&v.socket), MAKE_SOCK | REMOVE_FILE);
    }
    if let Some(s) = api_sock {
        add(&parent_dir(s), MAKE_SOCK | REMOVE_FILE);
    }
    // virtiofsd runs outside the ruleset and makes its own socket; the VMM only connects to
    // it (not a Landlock right), and removes a stale one before the ruleset, at start.
    r
}

/// Landlock ABI 6's scopes: abstract unix sockets and signals stay inside the domain.
pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
pub const SCOPE_SIGNAL: u64 = 1 << 1;

/// The scopes ABI `abi` can apply (the VMM signals no process but its own threads).
pub fn scopes(abi: i64) -> u64 {
    if abi < 6 {
        return 0;
    }
    SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
}

fn abi_version() -> Result<i64, std::io::Error> {
    // SAFETY: the version query takes no attribute (NULL, 0).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// `struct landlock_ruleset_attr`; the kernel takes a prefix of it (its size says which ABI
/// the caller speaks: 8 bytes up to ABI 3, 16 with network rights (4), 24 with scopes (6)).
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

struct Fd(i32);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

/// Applies the ruleset for `cfg` to the calling thread and the threads it starts from now on.
/// Call from the main thread before any other thread exists.
pub fn apply(cfg: &VmConfig, api_sock: Option<&Path>) -> Result<Outcome, LandlockError> {
    let abi = match abi_version() {
        Ok(v) => v,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP)) => {
            return Ok(Outcome::Unsupported(format!(
                "this kernel has no Landlock ({e}); add landlock to its lsm= list"
            )))
        }
        Err(e) => {
            return Err(LandlockError::Sys {
                what: "query the ABI version".into(),
                source: e,
            })
        }
    };
    // A console file the VMM will create: make it now, so the rule can name it and the
    // ruleset need not allow creating files in its directory.
    if cfg.console.mode == ConsoleMode::File {
        if let Some(p) = &cfg.console.path {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p);
        }
    }
    let handled = handled_fs(abi);
    let scoped = scopes(abi);
    let attr = RulesetAttr {
        handled_access_fs: handled,
        handled_access_net: 0,
        scoped,
    };
    // The prefix this kernel knows: a larger size with fields it does not know is refused
    // unless they are zero, and older kernels want the old size.
    let size = if scoped != 0 {
        std::mem::size_of::<RulesetAttr>()
    } else {
        std::mem::size_of::<u64>()
    };
    // SAFETY: a valid attribute struct, of which the kernel reads `size` bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size,
            0u32,
        )
    };
    if fd < 0 {
        return Err(last("create the ruleset"));
    }
    let ruleset = Fd(fd as i32);
    let mut added = 0;
    for rule in rules(cfg, api_sock) {
        let Ok(c) = CString::new(rule.path.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: a valid C string; O_PATH opens without reading.
        let pfd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if pfd < 0 {
            // Missing: the VMM reports it with its own error when it gets there.
            continue;
        }
        let pfd = Fd(pfd);
        let is_dir = std::fs::metadata(&rule.path).is_ok_and(|m| m.is_dir());
        let mut access = rule.access & handled;
        if !is_dir {
            access &= FILE_RIGHTS;
        }
        if access == 0 {
            continue;
        }
        let beneath = PathBeneathAttr {
            allowed_access: access,
            parent_fd: pfd.0,
        };
        // SAFETY: a valid rule attribute for RULE_PATH_BENEATH.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.0,
                RULE_PATH_BENEATH,
                &beneath as *const PathBeneathAttr,
                0u32,
            )
        };
        if r < 0 {
            return Err(last(format!("add a rule for {}", rule.path.display())));
        }
        // Keep it open for the process's life: a rule holds on to the inode only while the
        // inode lives, and file systems that drop unused dentries at once (9p without cache,
        // as in the lab) would otherwise give the VMM a new inode, outside the rule, on its
        // next open. A handful of O_PATH descriptors.
        std::mem::forget(pfd);
        added += 1;
    }
    // SAFETY: prctl with integer arguments; restrict_self requires no_new_privs.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last("PR_SET_NO_NEW_PRIVS"));
    }
    // SAFETY: restricts the calling thread with the ruleset we built.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.0, 0u32) } != 0 {
        return Err(last("restrict_self"));
    }
    Ok(Outcome::Applied {
        abi,
        rules: added,
        scoped,
    })
}

/// Test builds only: `QVM_TEST_LANDLOCK=<path>` opens `path` for reading right after the
/// ruleset is applied (or would have been, with `--landlock off`: the control) and says what
/// happened (a file outside the VM's must give EACCES).
#[cfg(debug_assertions)]
pub fn test_hook() {
    let Ok(path) = std::env::var("QVM_TEST_LANDLOCK") else {
        return;
    };
    match std::fs::File::open(&path) {
        Ok(_) => eprintln!("qvm-vmm: test hook: landlock: open {path} succeeded: NOT stopped"),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            eprintln!("qvm-vmm: test hook: landlock: open {path} failed: EACCES ({e})")
        }
        Err(e) => eprintln!("qvm-vmm: test hook: landlock: open {path} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> VmConfig {
        VmConfig::parse(
            &format!("[machine]\nmemory_mib = 64\n[boot]\nkernel = \"k\"\ninitrd = \"i\"\n{extra}"),
            Path::new("vm.toml"),
            Path::new("/vm"),
        )
        .unwrap()
    }

    fn access(r: &[Rule], p: &str) -> Option<u64> {
        r.iter().find(|x| x.path == Path::new(p)).map(|x| x.access)
    }

    #[test]
    fn rules_follow_the_config() {
        let c = cfg(
            "[[disk]]\npath = \"ro.img\"\nread_only = true\n[[disk]]\npath = \"rw.img\"\n\
             [console]\nmode = \"file\"\npath = \"con.log\"\n\
             [vsock]\nguest_cid = 3\nsocket = \"/run/vm/v.sock\"\n[[net]]\ntap = \"t0\"\n",
        );
        let r = rules(&c, Some(Path::new("/run/api/a.sock")));
        assert_eq!(access(&r, "/vm/k"), Some(READ_FILE));
        assert_eq!(access(&r, "/vm/i"), Some(READ_FILE));
        assert_eq!(access(&r, "/vm/ro.img"), Some(READ_FILE | IOCTL_DEV));
        assert_eq!(
            access(&r, "/vm/rw.img"),
            Some(READ_FILE | WRITE_FILE | IOCTL_DEV)
        );
        assert_eq!(access(&r, "/vm/con.log"), Some(WRITE_FILE));
        assert!(access(&r, "/dev/kvm").is_some());
        assert!(access(&r, "/dev/net/tun").is_some());
        assert_eq!(access(&r, "/run/vm"), Some(MAKE_SOCK | REMOVE_FILE));
        assert_eq!(access(&r, "/run/api"), Some(MAKE_SOCK | REMOVE_FILE));
        // Nothing else: no directory of the VM's files, no /etc, no libraries.
        assert_eq!(r.len(), 9, "{r:#?}");
        let plain = rules(&cfg(""), None);
        assert!(access(&plain, "/dev/net/tun").is_none());
        assert_eq!(plain.len(), 3);
    }

    #[test]
    fn handled_rights_grow_with_the_abi() {
        assert_eq!(handled_fs(1), 0x1fff);
        assert_eq!(handled_fs(3), 0x7fff);
        assert_eq!(handled_fs(5), 0xffff);
    }

    /// A VM with a share keeps Landlock: virtiofsd is started before it, and the VMM gets
    /// nothing of the share, neither its directory nor its socket's.
    #[test]
    fn a_share_keeps_landlock_and_gets_nothing_of_the_share() {
        let c = cfg("[[fs]]\ntag = \"h\"\nsocket = \"/run/vm/fs.sock\"\nshared_dir = \"/srv\"\n");
        let r = rules(&c, None);
        assert_eq!(access(&r, "/run/vm"), None);
        assert_eq!(access(&r, "/srv"), None);
        assert_eq!(scopes(5), 0);
        assert_eq!(scopes(6), SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL);
    }
}
