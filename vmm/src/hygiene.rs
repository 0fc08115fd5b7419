//! What the VMM process keeps to itself, set once at start-up before any thread exists:
//!
//! - **Not dumpable** (`PR_SET_DUMPABLE` 0) and no core file (`RLIMIT_CORE` 0): a crash leaves
//!   no core holding guest RAM, and other processes of the same user cannot ptrace the VMM,
//!   read `/proc/<pid>/mem` or `environ`, or open its descriptors through `/proc/<pid>/fd`
//!   (one of which is the guest RAM memfd). Only root (CAP_SYS_PTRACE) still can.
//! - **umask 077**: every file and unix socket the VMM creates (the API socket, the vsock
//!   sockets, a console file) is its user's alone, whatever umask it was started with.
//!
//! The guest RAM memfd itself is sealed against shrinking and growing (`vm.rs`), so a
//! vhost-user backend it is shared with cannot truncate it under the VMM (which would take the
//! VMM down with SIGBUS).

/// Applies the above to this process. Errors name the step; none is expected on Linux.
pub fn apply() -> std::io::Result<()> {
    let fail = |what: &str| {
        let e = std::io::Error::last_os_error();
        std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(fail("prctl(PR_SET_DUMPABLE, 0)"));
    }
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(fail("setrlimit(RLIMIT_CORE, 0)"));
    }
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    /// In a forked child (the settings are process-wide), which makes only raw syscalls on
    /// data prepared before the fork (the test harness has other threads): after `apply`, the
    /// process is not dumpable, and creates files and sockets 0600 although its umask was 0.
    #[test]
    fn after_apply_nothing_is_for_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::ffi::CString::new(dir.path().join("f").as_os_str().as_bytes()).unwrap();
        // SAFETY: sockaddr_un is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let sock = dir.path().join("s");
        for (d, s) in addr.sun_path.iter_mut().zip(sock.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: the child makes only raw syscalls on data prepared above, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw syscalls on valid data in the forked child.
            unsafe {
                libc::umask(0);
                let ok = super::apply().is_ok()
                    && libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
                    && libc::open(file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666) >= 0
                    && {
                        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                        fd >= 0
                            && libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0
                    };
                libc::_exit(if ok { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        for f in ["f", "s"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f}: {mode:o}");
        }
    }
}
