//! Starting and stopping virtiofsd for `[[fs]]` entries with `shared_dir`.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qvm_config::FsConfig;

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    #[error(
        "cannot start virtiofsd ({bin}): {source}; install it (scripts/install-virtiofsd.sh) and \
         set virtiofsd = \"<path>\" in [[fs]] or QVM_VIRTIOFSD"
    )]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("virtiofsd for {dir} exited ({status}) before listening on {socket}; run it by hand to see why")]
    Exited {
        dir: PathBuf,
        socket: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("virtiofsd for {dir} did not create {socket} within 10 s")]
    Timeout { dir: PathBuf, socket: PathBuf },
}

/// A virtiofsd we started; dropping it stops it and removes its socket.
pub struct Virtiofsd {
    child: Child,
    /// Stops it at the end: the main thread's filter allows signals only through pidfds,
    /// so a compromised VMM cannot signal any other process of its user.
    pidfd: std::os::fd::OwnedFd,
    socket: PathBuf,
}

/// The virtiofsd binary for `fs`: its `virtiofsd` key, else $QVM_VIRTIOFSD, else PATH.
fn binary(fs: &FsConfig) -> PathBuf {
    fs.virtiofsd
        .clone()
        .or_else(|| std::env::var_os("QVM_VIRTIOFSD").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("virtiofsd"))
}

fn is_socket(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

impl Virtiofsd {
    /// Starts virtiofsd for `fs` (which has a shared_dir) and waits for its socket.
    pub fn start(fs: &FsConfig, dir: &Path) -> Result<Virtiofsd, VirtiofsdError> {
        let bin = binary(fs);
        let _ = std::fs::remove_file(&fs.socket);
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--socket-path={}", fs.socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            .args(["--cache=auto", "--log-level=error"])
            .stdin(Stdio::null());
        // Always its namespace sandbox (the default) and its own seccomp filter: it parses the
        // guest's FUSE traffic. Unprivileged, it makes a user namespace mapping our uid and
        // gid to themselves; a host that forbids that makes it exit, and the VM is refused
        // with its message (never a silent --sandbox=none).
        cmd.args(["--sandbox=namespace", "--seccomp=kill"]);
        if fs.read_only {
            cmd.arg("--readonly");
        }
        // virtiofsd parses guest traffic: it inherits none of our descriptors (guest RAM,
        // KVM, disks, sockets), whatever a library forgot to mark close-on-exec. Marked, not
        // closed, so the exec error pipe of `spawn` still works; kernels before 5.11 lack the
        // flag, and then our own descriptors are close-on-exec anyway.
        // SAFETY: the closure makes two raw syscalls (async-signal-safe) in the forked child.
        unsafe {
            cmd.pre_exec(|| {
                // Nothing outlives the VMM, even one killed with SIGKILL.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
                libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| VirtiofsdError::Spawn {
            bin: bin.clone(),
            source,
        })?;
        let start = Instant::now();
        while !is_socket(&fs.socket) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VirtiofsdError::Exited {
                    dir: dir.to_path_buf(),
                    socket: fs.socket.clone(),
                    status,
                });
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VirtiofsdError::Timeout {
                    dir: dir.to_path_buf(),
                    socket: fs.socket.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: pidfd_open of our own child, which we have not reaped; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if fd < 0 {
            let source = std::io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(VirtiofsdError::Spawn {
                bin: bin.clone(),
                source: std::io::Error::new(
                    source.kind(),
                    format!("pidfd_open (Linux 5.3 or later): {source}"),
                ),
            });
        }
        // SAFETY: a new descriptor nothing else owns.
        let pidfd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        Ok(Virtiofsd {
            child,
            pidfd,
            socket: fs.socket.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
