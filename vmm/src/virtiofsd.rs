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

/// A running virtiofsd. The VMM never signals it (no filter allows a signal to another
/// process): it ends when the VMM disconnects at the VM's end, and its parent-death signal
/// ends it when the VMM's main thread exits.
pub struct Virtiofsd {
    child: Child,
}

/// How long the VMM waits at the VM's end for a virtiofsd to exit after the disconnect; one
/// that does not is killed by its parent-death signal when the VMM exits.
const EXIT_WAIT: Duration = Duration::from_secs(2);

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
        // Its namespace sandbox (the default) and its own seccomp filter: it parses the guest's
        // FUSE traffic. Unprivileged, it makes a user namespace mapping our uid and gid to
        // themselves; a host that forbids that makes it exit, and the VM is refused with its
        // message. The one exception, said in one line: inside qvm-jailer's jail (no /proc,
        // so no new proc mount is allowed), the jail's namespaces and uid are its sandbox.
        let sandbox = if Path::new("/proc/self").exists() {
            "--sandbox=namespace"
        } else {
            eprintln!(
                "qvm-vmm: virtiofsd for {} runs in this jail's sandbox (no /proc here for its own)",
                dir.display()
            );
            "--sandbox=none"
        };
        cmd.args([sandbox, "--seccomp=kill"]);
        if fs.read_only {
            cmd.arg("--readonly");
        }
        // virtiofsd parses guest traffic: it inherits none of our descriptors (guest RAM,
        // KVM, disks, sockets), whatever a library forgot to mark close-on-exec. Marked, not
        // closed, so the exec error pipe of `spawn` still works; kernels before 5.11 lack the
        // flag, and then our own descriptors are close-on-exec anyway.
        // SAFETY: getpid cannot fail.
        let vmm = unsafe { libc::getpid() };
        // SAFETY: the closure makes raw syscalls only (async-signal-safe) in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                // Nothing outlives the VMM, even one killed with SIGKILL; if it already died
                // (before the prctl), stop here.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != vmm {
                    libc::_exit(1);
                }
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
        Ok(Virtiofsd { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // The VM's devices are gone, so its vhost-user connection is closed and it exits.
        let start = Instant::now();
        while start.elapsed() < EXIT_WAIT {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        eprintln!(
            "qvm-vmm: virtiofsd (pid {}) did not exit; it ends with this process",
            self.child.id()
        );
    }
}
