//! A VM's lifecycle: starting, stopping and asking after one VM, one detached `qvm-vmm` per VM
//! with its API socket and pid file in the VM's runtime directory.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qvm_api::{client, Method};

use crate::domains::{to_toml, Domain, DomainsError};
use crate::runtime::{
    alive, check_private_dir, chown_dir, create_private, prepare_root, UnsafeDir, VmPaths,
};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Domains(#[from] DomainsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {vmm}: {source} (install qvm-vmm/qvm-jailer on PATH or set QVM_VMM/QVM_JAILER)")]
    Spawn {
        vmm: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{vm}: qvm-vmm exited while starting; {vmm_log} ends with:\n{tail}")]
    StartFailed {
        vm: String,
        vmm_log: PathBuf,
        tail: String,
    },
    #[error("{vm}: the API socket {sock} did not answer within {secs} s; see {vmm_log}")]
    StartTimeout {
        vm: String,
        sock: PathBuf,
        secs: u64,
        vmm_log: PathBuf,
    },
    #[error("{vm}: qvm-vmm (pid {pid}) is still running after shutdown, stop and SIGKILL")]
    WontDie { vm: String, pid: i32 },
    #[error(transparent)]
    UnsafeDir(#[from] UnsafeDir),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LifecycleError + '_ {
    move |source| LifecycleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `qvm status` reports for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The VMM lives and its API answered with this state (`running`, `paused`, ...).
    Running { pid: i32, state: String },
    /// The VMM lives but its API does not answer (starting, or wedged).
    Unresponsive { pid: i32 },
    /// No VMM; `cleaned` lists stale files removed on the way.
    Stopped { cleaned: Vec<PathBuf> },
}

impl State {
    pub fn is_running(&self) -> bool {
        !matches!(self, State::Stopped { .. })
    }
    pub fn word(&self) -> String {
        match self {
            State::Running { state, .. } => state.clone(),
            State::Unresponsive { .. } => "unresponsive".into(),
            State::Stopped { .. } => "stopped".into(),
        }
    }
}

fn api_state(paths: &VmPaths, timeout: Duration) -> Option<String> {
    let r = client::call(&paths.api_sock(), Method::Get, "/vm", None, timeout).ok()?;
    if !r.is_success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    // The VMM's word, shown in `qvm status`: escaped like anything read from a VM's files.
    Some(qvm_agent::term::escaped(
        v["state"].as_str().unwrap_or("running"),
        32,
    ))
}

/// The VM's state; stale sockets and pid files of a dead VMM are removed.
pub fn status(paths: &VmPaths) -> State {
    match paths.live_pid() {
        Some(pid) => match api_state(paths, Duration::from_secs(5)) {
            Some(state) => State::Running { pid, state },
            None => State::Unresponsive { pid },
        },
        None => State::Stopped {
            cleaned: paths.clean_stale(),
        },
    }
}

/// The qvm-vmm binary: `$QVM_VMM`, else next to this executable, else on PATH.
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QVM_VMM") {
        return PathBuf::from(p);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("qvm-vmm")))
        .filter(|p| p.is_file())
    {
        return sibling;
    }
    PathBuf::from("qvm-vmm")
}

/// The qvm-jailer binary: `$QVM_JAILER`, else next to this executable, else on PATH.
pub fn jailer_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QVM_JAILER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("qvm-jailer")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("qvm-jailer"))
}

/// The command that runs the VM: `qvm-vmm --config C --api-sock S`, or through qvm-jailer
/// when the domain says `jail`.
pub fn vmm_command(
    d: &Domain,
    paths: &VmPaths,
    config: &Path,
) -> (PathBuf, Vec<std::ffi::OsString>) {
    let sock = paths.api_sock();
    match &d.jail {
        None => (
            vmm_binary(),
            vec![
                "--config".into(),
                config.into(),
                "--api-sock".into(),
                sock.into(),
            ],
        ),
        Some(j) => {
            let mut args: Vec<std::ffi::OsString> = vec![
                "--id".into(),
                d.name.clone().into(),
                "--uid".into(),
                j.uid.to_string().into(),
                "--gid".into(),
                j.gid.to_string().into(),
            ];
            if let Some(b) = &j.jail_base {
                args.extend(["--jail-base".into(), b.into()]);
            }
            if let Some(b) = &j.cgroup_base {
                args.extend(["--cgroup-base".into(), b.into()]);
            }
            if std::env::var_os("QVM_VMM").is_some() || vmm_binary().is_absolute() {
                args.extend(["--exec-file".into(), vmm_binary().into()]);
            }
            args.extend([
                "--config".into(),
                config.into(),
                "--".into(),
                "--api-sock".into(),
                sock.into(),
            ]);
            (jailer_binary(), args)
        }
    }
}

/// Last `n` lines of a file.
/// Writes the VM's derived `vm.toml` (after qvm-vmm's validation) and returns its path.
pub fn write_config(d: &Domain, paths: &VmPaths) -> Result<PathBuf, LifecycleError> {
    // The root is ours alone; the VM's directory is ours, or the jail's once chowned.
    prepare_root(paths.dir.parent().unwrap_or(Path::new("/")))?;
    match std::fs::DirBuilder::new().mode(0o700).create(&paths.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(&paths.dir)(e)),
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let owners: Vec<u32> = std::iter::once(me)
        .chain(d.jail.as_ref().map(|j| j.uid))
        .collect();
    check_private_dir(&paths.dir, &owners)?;
    let jail_owner = d.jail.as_ref().map(|j| (j.uid, j.gid));
    // The apps' home is created on first use (private to its owner, the jail's uid if jailed).
    if let Some(home) = d.apps.as_ref().and_then(|a| a.home.as_ref()) {
        if std::fs::symlink_metadata(home).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(home)
                .map_err(io(home))?;
            if let Some((uid, gid)) = jail_owner {
                chown_dir(home, uid, gid).map_err(io(home))?;
            }
        }
    }
    let cfg = d.checked_config(paths)?;
    let path = paths.config();
    // The jailed VMM reads its config and makes its sockets in the VM's directory; it owns
    // that directory, so whatever it left there is replaced, never followed.
    let mut f = create_private(&path, jail_owner).map_err(io(&path))?;
    std::io::Write::write_all(&mut f, to_toml(&cfg).as_bytes()).map_err(io(&path))?;
    if let Some((uid, gid)) = jail_owner {
        chown_dir(&paths.dir, uid, gid).map_err(io(&paths.dir))?;
    }
    Ok(path)
}

/// Serializes `qvm start`/`stop` of one VM (two `qvm run` on a stopped VM boot it once): an
/// exclusive flock on `<root>/.<vm>.lock`, outside the VM's directory (a jailed VM owns that).
fn lock(paths: &VmPaths) -> Result<std::fs::File, LifecycleError> {
    let root = paths.dir.parent().unwrap_or(Path::new("/"));
    prepare_root(root)?;
    let name = paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = root.join(format!(".{name}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock(2) on a descriptor we own; released when the file is dropped.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(LifecycleError::Io {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(f)
}

/// Starts the VM unless it runs; waits until its API answers. Returns the VMM's pid and
/// whether this call started it.
pub fn start(
    d: &Domain,
    paths: &VmPaths,
    timeout: Duration,
) -> Result<(i32, bool), LifecycleError> {
    let _lock = lock(paths)?;
    match status(paths) {
        State::Running { pid, .. } => return Ok((pid, false)),
        State::Unresponsive { pid } => {
            wait_api(d, paths, pid, timeout)?;
            return Ok((pid, false));
        }
        State::Stopped { .. } => {}
    }
    let config = write_config(d, paths)?;
    // A fresh pair of logs per boot: the guest's console, and the VMM's own messages.
    let new_log = |p: PathBuf| create_private(&p, None).map_err(io(&p));
    let console = new_log(paths.console())?;
    let vmm_log = new_log(paths.vmm_log())?;
    let (vmm, args) = vmm_command(d, paths, &config);
    let mut cmd = Command::new(&vmm);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(vmm_log);
    // SAFETY: setsid(2) is async-signal-safe; it detaches the VMM from our terminal and
    // process group so it outlives this command and its signals.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LifecycleError::Spawn {
        vmm: vmm.clone(),
        source,
    })?;
    let pid = child.id() as i32;
    let pid_file = paths.pid_file();
    create_private(&pid_file, None)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{pid}\n").as_bytes()))
        .map_err(io(&pid_file))?;
    // Reap it if it exits while we still run (`qvm run` stays around).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    wait_api(d, paths, pid, timeout)?;
    Ok((pid, true))
}

fn wait_api(
    d: &Domain,
    paths: &VmPaths,
    pid: i32,
    timeout: Duration,
) -> Result<(), LifecycleError> {
    let start = Instant::now();
    loop {
        if !alive(pid) {
            paths.clean_stale();
            return Err(LifecycleError::StartFailed {
                vm: d.name.clone(),
                vmm_log: paths.vmm_log(),
                tail: crate::logs::tail(&paths.vmm_log(), 10),
            });
        }
        if api_state(paths, Duration::from_secs(2)).is_some() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(LifecycleError::StartTimeout {
                vm: d.name.clone(),
                sock: paths.api_sock(),
                secs: timeout.as_secs(),
                vmm_log: paths.vmm_log(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

fn action(paths: &VmPaths, body: &str) {
    let _ = client::call(
        &paths.api_sock(),
        Method::Put,
        "/actions",
        Some(body),
        Duration::from_secs(10),
    );
}

/// Stops the VM: `shutdown` (ACPI power button; the VMM stops the VM itself after `grace`),
/// then `stop`, then SIGKILL; waits for the VMM to exit and removes its sockets. Returns
/// false if it was not running.
pub fn stop(d: &Domain, paths: &VmPaths, grace: Duration) -> Result<bool, LifecycleError> {
    let _lock = lock(paths)?;
    let Some(pid) = paths.live_pid() else {
        paths.clean_stale();
        return Ok(false);
    };
    action(
        paths,
        &serde_json::json!({"action": "shutdown", "timeout_s": grace.as_secs_f64()}).to_string(),
    );
    if !wait_exit(pid, grace + Duration::from_secs(5)) {
        action(paths, r#"{"action": "stop"}"#);
        if !wait_exit(pid, Duration::from_secs(5)) && paths.is_our_vmm(pid) {
            // SAFETY: kill(2) of the VMM whose command line names this VM's API socket.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if !wait_exit(pid, Duration::from_secs(5)) {
                return Err(LifecycleError::WontDie {
                    vm: d.name.clone(),
                    pid,
                });
            }
        }
    }
    paths.clean_stale();
    Ok(true)
}
