//! The jail itself: namespaces, the root filesystem, privileges. Everything here runs in the
//! jailer's child, which is pid 1 of a new pid namespace, single-threaded, and ends in execve.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::JailError;
use crate::paths::{JailPath, Plan};

fn cstr(p: impl AsRef<OsStr>) -> CString {
    // Paths come from the config and the file system: no NULs inside.
    CString::new(p.as_ref().as_bytes()).unwrap_or_default()
}

fn check(ret: libc::c_int, what: impl FnOnce() -> String) -> Result<(), JailError> {
    if ret == 0 {
        Ok(())
    } else {
        Err(JailError::last(what()))
    }
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let src_c = src.map(cstr);
    let target_c = cstr(target);
    let fs_c = fstype.map(cstr);
    let data_c = data.map(cstr);
    // SAFETY: every pointer is a valid C string or null.
    let r = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            target_c.as_ptr(),
            fs_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr() as *const libc::c_void),
        )
    };
    check(r, || {
        format!(
            "mount {} on {} (flags {flags:#x})",
            src.map_or("-".into(), |s| s.display().to_string()),
            target.display()
        )
    })
}

/// A new pid namespace for the caller's children (its next child is pid 1 there); with
/// `netns`, the caller joins that network namespace first. The caller itself stays in the
/// host's mount namespace, so it can clean up after the VM.
pub fn unshare_pid(netns: Option<&fs::File>) -> Result<(), JailError> {
    if let Some(f) = netns {
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a file descriptor we own.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        check(r, || "setns into the --netns network namespace".into())?;
    }
    // SAFETY: unshare has no memory-safety preconditions; we are single-threaded.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
        "unshare(CLONE_NEWPID)".into()
    })
}

/// In the child (pid 1 of the new pid namespace): its own mount, ipc and uts namespaces.
pub fn unshare_rest() -> Result<(), JailError> {
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    // SAFETY: unshare has no memory-safety preconditions; we are single-threaded.
    check(unsafe { libc::unshare(flags) }, || {
        "unshare(CLONE_NEWNS|CLONE_NEWIPC|CLONE_NEWUTS)".into()
    })
}

/// `root` inside the jail's root directory for `p` (absolute).
fn inside(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Creates the mount point for `m` under `root` (a directory or an empty file) unless it
/// exists (inside a directory bound earlier, it does).
fn mount_point(root: &Path, m: &JailPath, dir: bool) -> Result<PathBuf, JailError> {
    let t = inside(root, &m.path);
    if t.symlink_metadata().is_ok() {
        return Ok(t);
    }
    let parent = t.parent().unwrap_or(root);
    fs::create_dir_all(parent).map_err(JailError::sys(format!("mkdir {}", parent.display())))?;
    if dir {
        fs::create_dir(&t).map_err(JailError::sys(format!("mkdir {}", t.display())))?;
    } else {
        fs::File::create(&t).map_err(JailError::sys(format!("create {}", t.display())))?;
    }
    Ok(t)
}

/// Binds `m` at its own path under `root`, read-only unless it is writable; never setuid,
/// device nodes only where the source is one (a block device as a disk).
fn bind(root: &Path, m: &JailPath) -> Result<(), JailError> {
    let src = fs::canonicalize(&m.path)
        .map_err(|e| JailError::bad_path(&m.what, &m.path, e.to_string()))?;
    let meta = fs::metadata(&src).map_err(JailError::sys(format!("stat {}", src.display())))?;
    let target = mount_point(root, m, meta.is_dir())?;
    mount(Some(&src), &target, None, libc::MS_BIND, None)?;
    let ft = meta.file_type();
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
    if !(ft.is_block_device() || ft.is_char_device()) {
        flags |= libc::MS_NODEV;
    }
    if !m.writable {
        flags |= libc::MS_RDONLY;
    }
    // Executables must stay executable; everything else may not be.
    if !(m.force_ro && meta.is_file()) {
        flags |= libc::MS_NOEXEC;
    }
    mount(None, &target, None, flags, None)
}

/// Device nodes the VMM may open: (path, mode, owned by the VM).
fn devices(plan: &Plan) -> Vec<(&'static str, u32, bool)> {
    let mut d = vec![
        ("/dev/kvm", 0o600, true),
        ("/dev/null", 0o666, false),
        ("/dev/urandom", 0o444, false),
    ];
    if plan.tun {
        d.push(("/dev/net/tun", 0o600, true));
    }
    d
}

/// Builds the jail's root at `root` (an existing empty directory): a tmpfs with exactly
/// `plan`'s paths bound at their own paths, the device nodes, then read-only.
pub fn build_root(root: &Path, plan: &Plan, uid: u32, gid: u32) -> Result<(), JailError> {
    // Nothing we mount from here on propagates back to the host's namespace.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID,
        Some("mode=0755,size=1m,nr_inodes=4096"),
    )?;
    for d in &plan.dirs {
        let t = inside(root, d);
        fs::create_dir_all(&t).map_err(JailError::sys(format!("mkdir {}", t.display())))?;
    }
    for m in &plan.mounts {
        bind(root, m)?;
    }
    for (dev, mode, own) in devices(plan) {
        let host = fs::metadata(dev).map_err(|e| {
            JailError::bad_path(
                "device",
                dev,
                format!("{e}; load its module (kvm_intel/kvm_amd, tun)"),
            )
        })?;
        let t = inside(root, Path::new(dev));
        if let Some(p) = t.parent() {
            fs::create_dir_all(p).map_err(JailError::sys(format!("mkdir {}", p.display())))?;
        }
        let c = cstr(&t);
        // SAFETY: valid C string; mknod creates a character device with the host's numbers.
        let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | mode, host.rdev()) } == 0;
        if made {
            // mknod applies the umask: set the mode exactly.
            // SAFETY: valid C string.
            check(unsafe { libc::chmod(c.as_ptr(), mode) }, || {
                format!("chmod {dev}")
            })?;
            if own {
                // SAFETY: valid C string.
                check(unsafe { libc::chown(c.as_ptr(), uid, gid) }, || {
                    format!("chown {dev}")
                })?;
            }
        } else {
            // No mknod (e.g. a user namespace): bind the host's node.
            fs::File::create(&t).map_err(JailError::sys(format!("create {}", t.display())))?;
            mount(Some(Path::new(dev)), &t, None, libc::MS_BIND, None)?;
            mount(
                None,
                &t,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC,
                None,
            )?;
        }
    }
    // The tmpfs itself: nothing may be created in it once the VMM runs.
    mount(
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID,
        Some("mode=0755"),
    )
}

/// pivot_root into `root` and detach the old root: nothing outside the jail stays reachable.
pub fn enter_root(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(JailError::sys(format!("chdir {}", root.display())))?;
    let dot = cstr(".");
    // SAFETY: pivot_root(".", ".") stacks the old root on the new one; both valid C strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    check(r as libc::c_int, || {
        format!("pivot_root into {}", root.display())
    })?;
    // SAFETY: detaches the old root, now mounted on top of "."; `dot` is a valid C string.
    let r = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check(r, || "unmount the old root".into())?;
    std::env::set_current_dir("/").map_err(JailError::sys("chdir /"))
}

pub fn set_hostname(id: &str) {
    let name = format!("qvm-{id}");
    // SAFETY: a valid buffer and its length; failure only leaves the host's name.
    unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) };
}

pub struct Rlimits {
    pub nofile: u64,
}

/// RLIMIT_NOFILE, no core dumps (guest memory would end up in them), no file size limit (disk
/// images). Not RLIMIT_NPROC: it counts every task of the uid host-wide, so the cgroup's
/// pids.max is the limit that holds per VM.
pub fn set_rlimits(r: &Rlimits) -> Result<(), JailError> {
    for (res, val, name) in [
        (libc::RLIMIT_NOFILE, r.nofile, "RLIMIT_NOFILE"),
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
        (libc::RLIMIT_FSIZE, libc::RLIM_INFINITY, "RLIMIT_FSIZE"),
    ] {
        let lim = libc::rlimit {
            rlim_cur: val,
            rlim_max: val,
        };
        // SAFETY: a valid rlimit struct.
        check(unsafe { libc::setrlimit(res, &lim) }, || {
            format!("setrlimit {name} {val}")
        })?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> Result<[CapData; 2], JailError> {
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a 2-element data array, as version 3 requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    check(r as libc::c_int, || "capget".into())?;
    Ok(d)
}

/// Drops to `uid`/`gid` with no supplementary groups and no capabilities at all: bounding set
/// and ambient set emptied while we still may, then the ids, then the inheritable set;
/// verified with capget. Then no_new_privs, so nothing the VMM runs can gain any.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability ends the loop.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailError::Sys {
                what: format!("drop capability {cap} from the bounding set"),
                source: e,
            });
        }
    }
    // SAFETY: prctl with integer arguments.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(r, || "clear the ambient capabilities".into())?;
    // SAFETY: an empty group list.
    check(unsafe { libc::setgroups(0, std::ptr::null()) }, || {
        "setgroups([])".into()
    })?;
    // SAFETY: plain id changes.
    check(unsafe { libc::setresgid(gid, gid, gid) }, || {
        format!("setresgid {gid}")
    })?;
    // SAFETY: plain id changes; with a non-zero uid the kernel clears permitted and effective.
    check(unsafe { libc::setresuid(uid, uid, uid) }, || {
        format!("setresuid {uid}")
    })?;
    let mut h = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let d = [CapData::default(); 2];
    // SAFETY: header and a 2-element data array, as version 3 requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    check(r as libc::c_int, || "capset (clear all)".into())?;
    let now = capget()?;
    if now
        .iter()
        .any(|c| c.effective | c.permitted | c.inheritable != 0)
    {
        return Err(JailError::CapsLeft(format!(
            "eff {:#x}{:08x} prm {:#x}{:08x}",
            now[1].effective, now[0].effective, now[1].permitted, now[0].permitted
        )));
    }
    // SAFETY: getuid/geteuid have no preconditions.
    if unsafe { libc::getuid() != uid || libc::geteuid() != uid || libc::getegid() != gid } {
        return Err(JailError::last("the uid/gid change did not take"));
    }
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        || "PR_SET_NO_NEW_PRIVS".into(),
    )
}

/// The VMM dies with the jailer, even one killed with SIGKILL (`PR_SET_PDEATHSIG`, set after
/// the uid change, which clears it). `alive` is the read end of a pipe whose write end only
/// the jailer holds: if it already died before the prctl, the pipe says so and we stop here.
pub fn die_with_parent(alive: libc::c_int) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check(r, || "PR_SET_PDEATHSIG".into())?;
    let mut pfd = libc::pollfd {
        fd: alive,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n != 0 {
        return Err(JailError::last(
            "the jailer died before the VM started (its pipe closed)",
        ));
    }
    Ok(())
}

/// After the drop: can the VM's uid use each path as it must? One line per problem, naming
/// the fix (the jailer does not chown the admin's files; see the README).
pub fn check_access(plan: &Plan, exec: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let test = |p: &Path, mode: libc::c_int| {
        let c = cstr(p);
        // SAFETY: valid C string.
        unsafe { libc::access(c.as_ptr(), mode) == 0 }
    };
    let fix = |p: &Path, w: bool| {
        format!(
            "give it to the VM: chown {uid}:{gid} {} (or chmod it {} for group {gid})",
            p.display(),
            if w { "g+rw" } else { "g+r" }
        )
    };
    for m in &plan.mounts {
        let (mode, access) = match (m.dir, m.writable) {
            (true, true) => (libc::R_OK | libc::W_OK | libc::X_OK, "write into"),
            (true, false) => (libc::R_OK | libc::X_OK, "read"),
            (false, true) => (libc::R_OK | libc::W_OK, "write"),
            (false, false) => (libc::R_OK, "read"),
        };
        let is_socket = fs::metadata(&m.path).is_ok_and(|md| md.file_type().is_socket());
        let mode = if is_socket { libc::W_OK } else { mode };
        if !test(&m.path, mode) {
            return Err(JailError::Access {
                uid,
                access: if is_socket { "connect to" } else { access },
                path: m.path.clone(),
                what: m.what.clone(),
                fix: fix(&m.path, m.writable || is_socket),
            });
        }
    }
    if !test(exec, libc::X_OK) {
        return Err(JailError::Access {
            uid,
            access: "execute",
            path: exec.to_path_buf(),
            what: "--exec-file".into(),
            fix: "chmod a+rx it".into(),
        });
    }
    Ok(())
}

/// Creates a missing console file owned by the VM (files we create ourselves are the only ones
/// the jailer chowns).
pub fn create_owned_file(p: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(p)
        .map_err(JailError::sys(format!("create {}", p.display())))?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
        .map_err(JailError::sys(format!("chown {}", p.display())))
}

/// Replaces the process with `exec`: argv and a cleared environment with only `env`.
pub fn exec(exec: &Path, args: &[String], env: &[(String, String)]) -> JailError {
    let path = cstr(exec);
    let argv_c: Vec<CString> = std::iter::once(path.clone())
        .chain(
            args.iter()
                .map(|a| CString::new(a.as_str()).unwrap_or_default()),
        )
        .collect();
    let env_c: Vec<CString> = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).unwrap_or_default())
        .collect();
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    JailError::last(format!("execve {}", exec.display()))
}
