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
    /// In a child process (the settings are process-wide): after `apply`, the process is not
    /// dumpable, has no core limit, and creates files and sockets 0600.
    #[test]
    fn after_apply_nothing_is_for_others() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: fork in a test; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(0) };
            let ok = super::apply().is_ok()
                // SAFETY: prctl with integer arguments only.
                && unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) } == 0
                && std::fs::write(dir.path().join("f"), b"x").is_ok()
                && std::os::unix::net::UnixListener::bind(dir.path().join("s")).is_ok();
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        use std::os::unix::fs::PermissionsExt;
        for f in ["f", "s"] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f}: {mode:o}");
        }
    }
}
