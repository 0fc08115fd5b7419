//! The "lab": run shell scripts where a real KVM is available.
//!
//! On a host whose `/dev/kvm` is hardware KVM, [`run`] simply runs the script on the host
//! ([`Mode::Direct`]). On hosts whose `/dev/kvm` cannot boot Linux (the `kvm_pvm` software
//! hypervisor, see `/work/shared/KVM-LAB.md`), it boots one QEMU TCG "L1" VM per test process
//! (`-cpu max` exposes AMD SVM with NPT, so `kvm_amd` gives L1 a real `/dev/kvm`) and runs the
//! scripts inside it ([`Mode::Lab`]). L1 sees the whole host filesystem read-only at the same
//! paths (so `target/debug/qvm-vmm`, qemu, busybox ... run there unchanged) plus the read-write
//! [`lab_share_dir`], also at the same absolute path on both sides.
//!
//! Env: `QVM_LAB=1|0` forces lab/direct mode, `QVM_LAB_MEM` L1 memory in MiB (default 4096),
//! `QVM_LAB_SMP` L1 vCPUs (default 1, see [`DEFAULT_SMP`]), `QVM_LAB_BOOT_TIMEOUT` seconds to
//! wait for L1 (default 300), `QVM_LAB_DIR` root of the per-process directories
//! (default /var/tmp/qvm-lab), `QVM_CACHE` the image cache of `tests/lab/prepare-l1.sh`.
//!
//! Protocol: `run` writes `<base>/cmd/<id>.sh`, sends `run <id>\n` on L1's second serial port
//! (a unix socket on the host) and polls for `<id>.rc`; the L1 agent (`tests/lab/l1-init.sh`)
//! writes the combined stdout+stderr to `<id>.out` and then `CODE\n` to `<id>.rc` (one write).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// L1 vCPUs. Measured 2026-11-26 on the 2-core host (other builds running, so noisy):
/// `-smp 1 -accel tcg`: L1 ready in 10.8-12.7 s, nested QEMU microvm boot of the guest kernel
/// 8.7-10.8 s wall; `-smp 2 -accel tcg,thread=multi`: L1 ready in 11.0-18.5 s, the same microvm
/// boot 23.9-47.9 s, trivial `run` no faster. One vCPU wins (`QVM_LAB_SMP` overrides).
pub const DEFAULT_SMP: u32 = 1;
/// L1 memory in MiB unless `QVM_LAB_MEM` says otherwise.
pub const DEFAULT_MEM_MIB: u32 = 4096;
const READY_MARKER: &str = "QVM-LAB-READY";
const FAIL_MARKER: &str = "QVM-LAB-FAIL:";
const CONSOLE_TAIL_LINES: usize = 40;
/// L1 prints this with its uptime on the console every 60 s (`tests/lab/l1-init.sh`).
const HEARTBEAT: &str = "qvm-lab-hb ";
/// How long [`Lab::diagnose`] waits for L1's report.
const DIAG_WAIT: Duration = Duration::from_secs(40);
/// A command whose L1 printed no heartbeat for this long is stopped as [`LabError::L1Stuck`]
/// (four beats missed; L1 stays on time even while a nested guest keeps its vCPU busy), instead
/// of waiting out a timeout that may be most of an hour.
const L1_SILENCE: Duration = Duration::from_secs(240);
static L1_SILENCE_SECS: AtomicU64 = AtomicU64::new(L1_SILENCE.as_secs());

/// Sets how long L1 may go without a heartbeat before a command is stopped as
/// [`LabError::L1Stuck`] (default 240 s): for the harness's own test of that path.
pub fn set_l1_silence(d: Duration) {
    L1_SILENCE_SECS.store(d.as_secs(), Ordering::Relaxed);
}

/// Result of a script run by [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// stdout and stderr, interleaved as written.
    pub output: String,
    /// Exit code of the script (128+N when killed by signal N).
    pub code: i32,
}

/// Where [`run`] executes scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On this host: its `/dev/kvm` is hardware KVM.
    Direct,
    /// Inside the shared L1 QEMU TCG VM with nested SVM.
    Lab,
}

/// Errors of the lab harness. `Display` says what to fix.
#[derive(Debug, Clone)]
pub enum LabError {
    /// `tests/lab/prepare-l1.sh` failed or printed no directory.
    Prepare { detail: String, log_tail: String },
    /// qemu-system-x86_64 could not be started.
    Spawn { detail: String },
    /// L1 did not print its ready marker in time.
    BootTimeout { secs: u64, console_tail: String },
    /// L1 reported a set-up failure or exited while booting.
    BootFailed {
        detail: String,
        console_tail: String,
    },
    /// L1 exited while commands were running.
    L1Died {
        detail: String,
        console_tail: String,
    },
    /// The script did not finish in time (it has been killed).
    Timeout {
        secs: f64,
        id: String,
        partial_output: String,
        console_tail: String,
        /// What L1 was doing when the time ran out (`Lab::diagnose`); empty in direct mode.
        diagnosis: String,
    },
    /// L1 stopped printing its heartbeat while a command ran: L1's kernel (or QEMU's TCG under
    /// it) is stuck, so nothing the command does can finish. The command has been killed.
    L1Stuck {
        silent: u64,
        id: String,
        partial_output: String,
        console_tail: String,
        diagnosis: String,
    },
    /// Host-side I/O failure.
    Io { context: String, detail: String },
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Prepare { detail, log_tail } => write!(
                f,
                "lab: tests/lab/prepare-l1.sh failed ({detail}); it needs root, apt access and \
                 Debian bookworm with bookworm-security (or set QVM_LAB=0 on a hardware-KVM host). \
                 Its log ends with:\n{log_tail}"
            ),
            LabError::Spawn { detail } => write!(
                f,
                "lab: cannot start qemu-system-x86_64 ({detail}); install it: apt-get install qemu-system-x86"
            ),
            LabError::BootTimeout { secs, console_tail } => write!(
                f,
                "lab: L1 did not become ready within {secs} s (host overloaded? raise \
                 QVM_LAB_BOOT_TIMEOUT). L1 console ends with:\n{console_tail}"
            ),
            LabError::BootFailed { detail, console_tail } => write!(
                f,
                "lab: L1 failed to boot: {detail}. Check tests/lab/l1-init.sh and the L1 image \
                 (delete $QVM_CACHE/lab-l1-* to rebuild). L1 console ends with:\n{console_tail}"
            ),
            LabError::L1Died { detail, console_tail } => write!(
                f,
                "lab: the L1 VM died ({detail}); a previous command may have crashed or powered \
                 it off. L1 console ends with:\n{console_tail}"
            ),
            LabError::Timeout {
                secs,
                id,
                partial_output,
                console_tail,
                diagnosis,
            } => write!(
                f,
                "lab: command {id} timed out after {secs:.1} s and was killed (raise the timeout \
                 if L1 is just slow under TCG). Output so far:\n{partial_output}\n\
                 L1 console ends with:\n{console_tail}\n{diagnosis}"
            ),
            LabError::L1Stuck {
                silent,
                id,
                partial_output,
                console_tail,
                diagnosis,
            } => write!(
                f,
                "lab: L1 stopped while command {id} ran: no heartbeat for {silent} s, so its \
                 kernel (or QEMU's TCG under it) is stuck and nothing inside can finish; the \
                 command was stopped there rather than at its timeout. This is the lab, below \
                 anything the command runs: the report below says where L1's vCPU was. \
                 Output so far:\n{partial_output}\nL1 console ends with:\n{console_tail}\n\
                 {diagnosis}"
            ),
            LabError::Io { context, detail } => write!(f, "lab: {context}: {detail}"),
        }
    }
}

impl std::error::Error for LabError {}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let context = context.into();
    move |e| LabError::Io {
        context,
        detail: e.to_string(),
    }
}

/// Which mode [`run`] uses. `QVM_LAB=1` forces [`Mode::Lab`], `QVM_LAB=0` [`Mode::Direct`];
/// otherwise direct only if the CPU flags have vmx or svm, `/dev/kvm` exists and the
/// `kvm_pvm` module is not loaded.
pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("QVM_LAB").as_deref() {
        Ok("1") => Mode::Lab,
        Ok("0") => Mode::Direct,
        _ => {
            if host_has_hardware_kvm() {
                Mode::Direct
            } else {
                Mode::Lab
            }
        }
    })
}

fn host_has_hardware_kvm() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "vmx" || w == "svm"));
    virt && Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists()
}

/// Per-process directory `<QVM_LAB_DIR>/<pid>`: `share/` (= [`lab_share_dir`]), `cmd/`,
/// `work/` (cwd of scripts), `console.log`, `ctl.sock`, `qemu.pid`.
fn base_dir() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = std::env::var_os("QVM_LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/qvm-lab"));
        let _ = fs::create_dir_all(&root);
        clean_stale(&root);
        let base = root.join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&base);
        for sub in ["share", "cmd", "work"] {
            fs::create_dir_all(base.join(sub))
                .unwrap_or_else(|e| panic!("lab: cannot create {}: {e}", base.join(sub).display()));
        }
        base
    })
}

/// Removes directories of test processes that no longer exist (and kills their qemu, if any
/// survived).
fn clean_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        if let Some(qpid) = qemu_pid(&dir) {
            let cmdline = fs::read(format!("/proc/{qpid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(dir.to_str().unwrap_or("\0")) {
                // SAFETY: plain kill(2) of a qemu whose command line names our stale directory.
                unsafe { libc::kill(qpid, libc::SIGKILL) };
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// A directory writable by tests and visible at the same absolute path inside L1 (in direct
/// mode just a per-process directory on the host).
pub fn lab_share_dir() -> PathBuf {
    base_dir().join("share")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Runs `script` with `sh` (cwd: a scratch directory; env `QVM_LAB_SHARE` = [`lab_share_dir`])
/// in the lab or directly, see [`mode`]. Boots the shared L1 on first use. On timeout the
/// script's process group is killed.
///
/// In the lab, one script runs at a time: L1 has one vCPU (TCG), so two tests booting guests
/// side by side take no less time together, and each takes twice as long as its timings
/// assume, which is how a busy run starved tests into time-outs. Concurrent calls (libtest
/// runs tests on several threads) wait their turn; `timeout` counts from the script's start.
pub fn run(script: &str, timeout: Duration) -> Result<CmdOutput, LabError> {
    static TURN: Mutex<()> = Mutex::new(());
    let _turn = match mode() {
        Mode::Lab => Some(TURN.lock().unwrap_or_else(|e| e.into_inner())),
        Mode::Direct => None,
    };
    run_concurrent(script, timeout)
}

/// [`run`], panicking with the lab's error (which says what to fix, with the script's output
/// so far and L1's console) when the script could not be run to its end.
pub fn run_or_panic(script: &str, timeout: Duration) -> CmdOutput {
    run(script, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run`] without waiting for the other scripts: for the harness's own test of concurrent
/// runs, and for short commands that must overlap a running script.
pub fn run_concurrent(script: &str, timeout: Duration) -> Result<CmdOutput, LabError> {
    let id = format!("c{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let cmd_dir = base_dir().join("cmd");
    let sh = cmd_dir.join(format!("{id}.sh"));
    fs::write(&sh, script).map_err(io_err(format!("writing {}", sh.display())))?;
    match mode() {
        Mode::Direct => run_direct(&id, &sh, timeout),
        Mode::Lab => lab()?.run(&id, timeout),
    }
}

fn run_direct(id: &str, sh: &Path, timeout: Duration) -> Result<CmdOutput, LabError> {
    let out_path = sh.with_extension("out");
    let out =
        fs::File::create(&out_path).map_err(io_err(format!("creating {}", out_path.display())))?;
    let err = out.try_clone().map_err(io_err("dup"))?;
    let mut child = Command::new("sh")
        .arg(sh)
        .current_dir(base_dir().join("work"))
        .env("QVM_LAB_SHARE", lab_share_dir())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(io_err("spawning sh"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(io_err("waiting for sh"))? {
            let output = read_lossy(&out_path);
            return Ok(CmdOutput {
                output,
                code: exit_code(status),
            });
        }
        if start.elapsed() >= timeout {
            // SAFETY: kill(2) of the process group we created for this child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(LabError::Timeout {
                secs: timeout.as_secs_f64(),
                id: id.to_string(),
                partial_output: read_lossy(&out_path),
                console_tail: "(direct mode: no L1 console)".into(),
                diagnosis: String::new(),
            });
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
}

/// Last [`CONSOLE_TAIL_LINES`] lines of a log, with terminal escapes stripped, L1's heartbeats
/// left out but the last.
fn tail(p: &Path) -> String {
    let text = read_lossy(p);
    let text: String = strip_escapes(&text);
    let last_hb = text.lines().rfind(|l| l.starts_with(HEARTBEAT));
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(HEARTBEAT)).collect();
    lines.extend(last_hb);
    let from = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    let t = lines[from..].join("\n");
    if t.is_empty() {
        format!("({} is empty)", p.display())
    } else {
        t
    }
}

/// Whether L1 answered [`Lab::ask_report`]: a whole report, or the start of one (L1 runs, if
/// slowly: the report reads every task's stack with dash, one byte per read).
fn answered(report: &Result<String, Option<String>>) -> bool {
    match report {
        Ok(_) => true,
        Err(Some(partial)) => !partial.is_empty(),
        Err(None) => false,
    }
}

/// L1's last heartbeat line on its console (empty before the first).
fn last_heartbeat(console: &Path) -> String {
    let text = read_lossy(console);
    let line = text.lines().rfind(|l| l.contains(HEARTBEAT)).unwrap_or("");
    line[line.find(HEARTBEAT).unwrap_or(0)..].trim().to_string()
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            if it.peek() == Some(&'[') {
                it.next();
                while let Some(&n) = it.peek() {
                    it.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

struct Lab {
    base: PathBuf,
    /// The L1 kernel's text symbols, `<image dir>/kallsyms` (see [`Symbols`]).
    kallsyms: PathBuf,
    console: PathBuf,
    ctl: Mutex<UnixStream>,
    /// Set by the keeper thread when qemu exits.
    exited: Arc<Mutex<Option<String>>>,
    /// Set when a command found L1 stuck ([`LabError::L1Stuck`]): the next command first checks
    /// that L1 answers again instead of waiting out another silence.
    stuck: Mutex<Option<String>>,
}

fn lab() -> Result<&'static Lab, LabError> {
    static LAB: OnceLock<Result<Lab, LabError>> = OnceLock::new();
    LAB.get_or_init(boot_lab).as_ref().map_err(Clone::clone)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs `tests/lab/prepare-l1.sh`, returns the directory with `vmlinuz` and `initrd.cpio`.
fn prepare_l1(base: &Path) -> Result<PathBuf, LabError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/prepare-l1.sh");
    let log = base.join("prepare.log");
    let log_file = fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(log_file)
        .output()
        .map_err(|e| LabError::Prepare {
            detail: format!("cannot run {}: {e}", script.display()),
            log_tail: String::new(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().map(str::trim).unwrap_or("");
    if !out.status.success() || dir.is_empty() {
        return Err(LabError::Prepare {
            detail: format!("{}: {}", script.display(), out.status),
            log_tail: tail(&log),
        });
    }
    let dir = PathBuf::from(dir);
    if !dir.join("vmlinuz").is_file() || !dir.join("initrd.cpio").is_file() {
        return Err(LabError::Prepare {
            detail: format!("{} lacks vmlinuz or initrd.cpio", dir.display()),
            log_tail: tail(&log),
        });
    }
    Ok(dir)
}

fn boot_lab() -> Result<Lab, LabError> {
    let base = base_dir().to_path_buf();
    let image = prepare_l1(&base)?;
    let kallsyms = image.join("kallsyms");
    let console = base.join("console.log");
    let sock = base.join("ctl.sock");
    let smp = env_u64("QVM_LAB_SMP", DEFAULT_SMP as u64).max(1);
    let mem = env_u64("QVM_LAB_MEM", DEFAULT_MEM_MIB as u64);
    let accel = if smp > 1 { "tcg,thread=multi" } else { "tcg" };
    let base_s = base.to_str().ok_or_else(|| LabError::Io {
        context: "lab dir".into(),
        detail: "not UTF-8".into(),
    })?;
    if base_s.contains([' ', ',']) {
        return Err(LabError::Io {
            context: format!("lab dir {base_s}"),
            detail: "must not contain spaces or commas (set QVM_LAB_DIR)".into(),
        });
    }

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "q35",
        "-accel",
        accel,
        "-cpu",
        "max",
        "-smp",
        &smp.to_string(),
    ])
    .args([
        "-m",
        &mem.to_string(),
        "-nographic",
        "-nodefaults",
        "-monitor",
        &format!("unix:{base_s}/monitor.sock,server=on,wait=off"),
        // Names QEMU's threads ("CPU 0/TCG", ...) for the lab's report on a stuck L1.
        "-name",
        "qvm-lab,debug-threads=on",
        "-no-reboot",
    ])
    .args([
        "-chardev",
        &format!("file,id=con,path={}", console.display()),
        "-serial",
        "chardev:con",
    ])
    .args([
        "-chardev",
        &format!("socket,id=ctl,path={},server=on,wait=off", sock.display()),
    ])
    .args(["-serial", "chardev:ctl"])
    .arg("-kernel")
    .arg(image.join("vmlinuz"))
    .arg("-initrd")
    .arg(image.join("initrd.cpio"))
    .args([
        "-append",
        &format!(
            "console=ttyS0 panic=-1 quiet nokaslr qvm_share={base_s}{}{}",
            tmp_exposures(),
            if kallsyms.is_file() {
                ""
            } else {
                " qvm_kallsyms=1"
            }
        ),
    ])
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ])
    .args([
        "-virtfs",
        &format!("local,path={base_s},mount_tag=labshare,security_model=none,multidevs=remap"),
    ])
    .arg("-pidfile")
    .arg(base.join("qemu.pid"))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(base.join("qemu.stderr")).map_err(io_err("creating qemu.stderr"))?);
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // qemu dies with the thread that spawned it; that thread lives until qemu exits.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }

    // The keeper thread spawns qemu and waits for it. PR_SET_PDEATHSIG fires when the spawning
    // *thread* exits, so qemu must not be spawned from a (short-lived) test thread.
    let exited = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    {
        let exited = exited.clone();
        let stderr_path = base.join("qemu.stderr");
        thread::Builder::new()
            .name("qvm-lab-l1".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let status = child.wait();
                    let msg = format!(
                        "qemu exited: {}; qemu stderr: {}",
                        status
                            .map(|s| s.to_string())
                            .unwrap_or_else(|e| e.to_string()),
                        read_lossy(&stderr_path).trim()
                    );
                    *exited.lock().unwrap() = Some(msg);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(io_err("spawning the L1 keeper thread"))?;
    }
    rx.recv()
        .map_err(|_| LabError::Spawn {
            detail: "keeper thread died".into(),
        })?
        .map_err(|e| LabError::Spawn {
            detail: e.to_string(),
        })?;

    let boot_timeout = Duration::from_secs(env_u64("QVM_LAB_BOOT_TIMEOUT", 300));
    let start = Instant::now();
    loop {
        let text = read_lossy(&console);
        if text.contains(READY_MARKER) {
            break;
        }
        if let Some(pos) = text.find(FAIL_MARKER) {
            let reason = text[pos + FAIL_MARKER.len()..]
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            return Err(LabError::BootFailed {
                detail: reason,
                console_tail: tail(&console),
            });
        }
        if let Some(msg) = exited.lock().unwrap().clone() {
            return Err(LabError::BootFailed {
                detail: msg,
                console_tail: tail(&console),
            });
        }
        if start.elapsed() > boot_timeout {
            kill_qemu(&base);
            return Err(LabError::BootTimeout {
                secs: boot_timeout.as_secs(),
                console_tail: tail(&console),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    if std::env::var_os("QVM_LAB_VERBOSE").is_some() {
        eprintln!(
            "lab: L1 ready in {:.1} s ({base_s})",
            start.elapsed().as_secs_f64()
        );
    }
    let ctl =
        UnixStream::connect(&sock).map_err(io_err(format!("connecting to {}", sock.display())))?;
    Ok(Lab {
        base,
        kallsyms,
        console,
        ctl: Mutex::new(ctl),
        exited,
        stuck: Mutex::new(None),
    })
}

/// The pid in a lab directory's `qemu.pid` (QEMU's `-pidfile`).
fn qemu_pid(base: &Path) -> Option<i32> {
    fs::read_to_string(base.join("qemu.pid"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn kill_qemu(base: &Path) {
    if let Some(pid) = qemu_pid(base) {
        // SAFETY: kill(2) of the qemu we started (its pidfile).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Lab {
    fn send(&self, line: &str) -> Result<(), LabError> {
        let mut ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        ctl.write_all(line.as_bytes())
            .map_err(io_err("writing to the L1 control socket"))
    }

    fn run(&self, id: &str, timeout: Duration) -> Result<CmdOutput, LabError> {
        let cmd = self.base.join("cmd");
        let rc_path = cmd.join(format!("{id}.rc"));
        let out_path = cmd.join(format!("{id}.out"));
        let was_stuck = self.stuck.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(when) = was_stuck {
            if !answered(&self.ask_report(DIAG_WAIT)) {
                return Err(LabError::L1Died {
                    detail: format!("L1 got stuck during {when} and still does not answer"),
                    console_tail: tail(&self.console),
                });
            }
            *self.stuck.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.send(&format!("run {id}\n"))?;
        let start = Instant::now();
        let mut poll = Duration::from_millis(2);
        // The last heartbeat seen, and since when.
        let mut beat = (last_heartbeat(&self.console), Instant::now());
        let mut next_beat_check = Instant::now() + Duration::from_secs(5);
        loop {
            // The agent writes "CODE\n" with one write(2); until the newline is there the file
            // may still be empty.
            let rc = fs::read_to_string(&rc_path).unwrap_or_default();
            if rc.ends_with('\n') {
                let code = rc.trim().parse().map_err(|_| LabError::Io {
                    context: format!("parsing {}", rc_path.display()),
                    detail: format!("{rc:?} is not an exit code"),
                })?;
                self.keep_kallsyms();
                return Ok(CmdOutput {
                    output: read_lossy(&out_path),
                    code,
                });
            }
            if let Some(msg) = self.exited.lock().unwrap().clone() {
                return Err(LabError::L1Died {
                    detail: msg,
                    console_tail: tail(&self.console),
                });
            }
            if Instant::now() >= next_beat_check {
                next_beat_check = Instant::now() + Duration::from_secs(5);
                let last = last_heartbeat(&self.console);
                if last != beat.0 {
                    beat = (last, Instant::now());
                } else if beat.1.elapsed().as_secs() >= L1_SILENCE_SECS.load(Ordering::Relaxed) {
                    let silent = beat.1.elapsed().as_secs();
                    let console_tail = tail(&self.console);
                    let (diagnosis, answered) = self.diagnose();
                    if answered {
                        // L1 runs (it reported); only its heartbeat is gone. Not a freeze.
                        eprintln!(
                            "lab: L1's heartbeat stopped but L1 answered; command {id} goes \
                             on.\n{diagnosis}"
                        );
                        beat.1 = Instant::now();
                        continue;
                    }
                    let _ = self.send(&format!("kill {id}\n"));
                    *self.stuck.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("command {id}"));
                    return Err(LabError::L1Stuck {
                        silent,
                        id: id.to_string(),
                        partial_output: read_lossy(&out_path),
                        console_tail,
                        diagnosis,
                    });
                }
            }
            if start.elapsed() >= timeout {
                // The tail first: the report that follows would push it out of view.
                let console_tail = tail(&self.console);
                let (diagnosis, _) = self.diagnose();
                let _ = self.send(&format!("kill {id}\n"));
                return Err(LabError::Timeout {
                    secs: timeout.as_secs_f64(),
                    id: id.to_string(),
                    partial_output: read_lossy(&out_path),
                    console_tail,
                    diagnosis,
                });
            }
            thread::sleep(poll);
            poll = (poll * 2).min(Duration::from_millis(20));
        }
    }
}

impl Lab {
    /// What L1 is doing, for a command that ran out of time: L1's own report (`diag` on the
    /// control port: its tasks and their kernel stacks, interrupts, timers, whether 9p answers)
    /// and, from QEMU's monitor, where L1's vCPU is (three samples of its registers, with the L1
    /// kernel's symbol for RIP, and its local APIC). When L1 does not answer, the monitor's view
    /// is all there is: then L1 itself is stuck, below anything a test runs. Also says whether
    /// L1 answered.
    fn diagnose(&self) -> (String, bool) {
        let mut out = String::from("--- what L1 was doing ---\n");
        let report = self.ask_report(DIAG_WAIT);
        let answered = answered(&report);
        match report {
            Ok(r) => {
                out.push_str(&r);
                out.push('\n');
            }
            Err(None) => out.push_str("(cannot ask L1: its control socket is gone)\n"),
            Err(Some(partial)) if !partial.is_empty() => out.push_str(&format!(
                "L1 began its report but did not finish it within {} s: L1 runs, but slowly, or \
                 the report itself blocked (its last line says where):\n{partial}\n",
                DIAG_WAIT.as_secs()
            )),
            Err(Some(_)) => out.push_str(&format!(
                "L1 did not report within {} s of being asked on its control port: L1's own \
                 kernel is stuck (its heartbeat, the last qvm-lab-hb line above, says since \
                 when).\n",
                DIAG_WAIT.as_secs()
            )),
        }
        out.push_str(&self.monitor_view());
        (out, answered)
    }

    /// Asks L1 for its `diag` report and waits up to `wait` for it. `Err(Some(partial))`: no
    /// whole report in time (what it printed so far); `Err(None)`: could not ask.
    fn ask_report(&self, wait: Duration) -> Result<String, Option<String>> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!("d{}", NEXT.fetch_add(1, Ordering::Relaxed));
        // With the newline, d1 does not match d10.
        let begin = format!("QVM-LAB-DIAG-BEGIN {id}\n");
        let end = format!("QVM-LAB-DIAG-END {id}\n");
        self.send(&format!("diag {id}\n")).map_err(|_| None)?;
        let start = Instant::now();
        loop {
            let text = strip_escapes(&read_lossy(&self.console));
            match (text.rfind(&begin), text.rfind(&end)) {
                (Some(b), Some(e)) if b < e => return Ok(text[b..e + end.len()].to_string()),
                (b, _) if start.elapsed() >= wait => {
                    return Err(Some(b.map(|b| text[b..].to_string()).unwrap_or_default()))
                }
                _ => thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Keeps the kallsyms the first L1 of an image wrote to the lab directory beside the image.
    fn keep_kallsyms(&self) {
        let written = self.base.join("l1-kallsyms");
        if self.kallsyms.is_file() || !written.is_file() {
            return;
        }
        let tmp = self
            .kallsyms
            .with_extension(format!("tmp.{}", std::process::id()));
        if fs::copy(&written, &tmp).is_ok() && fs::rename(&tmp, &self.kallsyms).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// L1's vCPU as QEMU's monitor sees it (see [`Lab::diagnose`]).
    fn monitor_view(&self) -> String {
        let threads = self.qemu_threads();
        let sock = self.base.join("monitor.sock");
        let mut m = match Monitor::connect(&sock) {
            Ok(m) => m,
            Err(e) => return format!("{threads}(QEMU monitor {}: {e})\n", sock.display()),
        };
        self.keep_kallsyms();
        let syms = Symbols::load(&self.kallsyms, &self.base.join("l1-modules"));
        let mut out = String::from("QEMU monitor, L1's vCPU:\n");
        for i in 0..3 {
            if i > 0 {
                thread::sleep(Duration::from_secs(1));
            }
            match m.cmd("info registers") {
                Ok(regs) => {
                    let rip = regs
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("RIP="))
                        .and_then(|v| u64::from_str_radix(v, 16).ok());
                    let line = regs.lines().find(|l| l.starts_with("RIP=")).unwrap_or("");
                    out.push_str(&format!(
                        "  sample {}: {line}  <{}>\n",
                        i + 1,
                        rip.map(|r| syms.name(r)).unwrap_or_default()
                    ));
                    if i == 2 {
                        out.push_str(&regs);
                    }
                }
                Err(e) => out.push_str(&format!("  info registers: {e}\n")),
            }
        }
        match m.cmd("info lapic") {
            Ok(l) => out.push_str(&format!("info lapic:\n{l}")),
            Err(e) => out.push_str(&format!("  info lapic: {e}\n")),
        }
        threads + &out
    }

    /// QEMU's own threads on the host: state and CPU share over one second (a TCG vCPU thread
    /// at 100% is L1 spinning; near 0% is L1 halted, waiting for an interrupt).
    fn qemu_threads(&self) -> String {
        let Some(pid) = qemu_pid(&self.base) else {
            return "(no qemu.pid)\n".into();
        };
        // (tid, comm, state, utime+stime in ticks)
        let sample = || -> Vec<(String, String, String, u64)> {
            let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
                return Vec::new();
            };
            dir.flatten()
                .filter_map(|t| {
                    let stat = fs::read_to_string(t.path().join("stat")).ok()?;
                    let (head, rest) = stat.rsplit_once(") ")?;
                    let comm = head.split_once(" (")?.1.to_string();
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                    let tid = t.file_name().to_string_lossy().into_owned();
                    Some((tid, comm, f.first()?.to_string(), ticks))
                })
                .collect()
        };
        let a = sample();
        thread::sleep(Duration::from_secs(1));
        let b = sample();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let mut out = format!("QEMU (pid {pid}) threads on the host, CPU over 1 s:\n");
        for (tid, comm, state, ticks) in &b {
            let before = a
                .iter()
                .find(|x| &x.0 == tid)
                .map(|x| x.3)
                .unwrap_or(*ticks);
            out.push_str(&format!(
                "  {tid} {comm} {state} {}%\n",
                ticks.saturating_sub(before) * 100 / hz
            ));
        }
        out
    }
}

/// QEMU's human monitor on a unix socket: one command at a time, the answer ends at the prompt.
struct Monitor {
    stream: UnixStream,
}

impl Monitor {
    const PROMPT: &'static str = "(qemu) ";

    fn connect(path: &Path) -> io::Result<Monitor> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut m = Monitor { stream };
        m.read_to_prompt()?;
        Ok(m)
    }

    fn read_to_prompt(&mut self) -> io::Result<String> {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.ends_with(Self::PROMPT.as_bytes()) {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "monitor closed",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > 1 << 20 {
                return Err(io::Error::other("monitor answer over 1 MiB"));
            }
        }
        buf.truncate(buf.len() - Self::PROMPT.len());
        Ok(strip_escapes(&String::from_utf8_lossy(&buf)))
    }

    /// The answer to `command`, without the echoed command line.
    fn cmd(&mut self, command: &str) -> io::Result<String> {
        self.stream.write_all(format!("{command}\n").as_bytes())?;
        let answer = self.read_to_prompt()?;
        Ok(answer
            .split_once('\n')
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_default())
    }
}

/// Names L1 kernel addresses: the text symbols of L1's kernel and modules (Debian's `System.map`
/// is a placeholder, so the first L1 booted from an image writes its `/proc/kallsyms` to the
/// lab directory, and the host keeps it beside the image: L1 boots `nokaslr`, so it holds for every
/// boot), and the module areas L1 wrote to `l1-modules` at start (its `/proc/modules`).
struct Symbols {
    kernel: Vec<(u64, String)>,
    modules: Vec<(u64, u64, String)>,
}

impl Symbols {
    fn load(kallsyms: &Path, modules: &Path) -> Symbols {
        let mut kernel: Vec<(u64, String)> = read_lossy(kallsyms)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let addr = u64::from_str_radix(w.next()?, 16).ok()?;
                let kind = w.next()?;
                let name = w.next()?;
                let module = w.next().unwrap_or("");
                (matches!(kind, "T" | "t") && addr != 0).then(|| (addr, format!("{name}{module}")))
            })
            .collect();
        kernel.sort_unstable();
        let modules = read_lossy(modules)
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let size = w.get(1)?.parse().ok()?;
                let addr = u64::from_str_radix(w.get(5)?.strip_prefix("0x")?, 16).ok()?;
                Some((addr, size, w[0].to_string()))
            })
            .collect();
        Symbols { kernel, modules }
    }

    fn name(&self, addr: u64) -> String {
        if let Some((base, _, m)) = self.modules.iter().find(|(base, size, _)| {
            addr >= *base && base.checked_add(*size).is_some_and(|e| addr < e)
        }) {
            return format!("module {m}+{:#x}", addr - base);
        }
        if self.kernel.is_empty() {
            return "L1's symbols are not known yet: its first boot is still writing them".into();
        }
        let i = self.kernel.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).and_then(|i| self.kernel.get(i)) {
            Some((a, n)) if addr - a < 1 << 20 => format!("{n}+{:#x}", addr - a),
            _ => "not in L1's kernel or modules: a nested guest's address?".into(),
        }
    }
}

/// Sends `command` to the lab L1's QEMU monitor and returns the answer: for the harness's own
/// tests of what a timeout reports when L1 is frozen (`stop`, `cont`). Lab mode only.
pub fn l1_monitor(command: &str) -> Result<String, LabError> {
    let lab = lab()?;
    let sock = lab.base.join("monitor.sock");
    Monitor::connect(&sock)
        .and_then(|mut m| m.cmd(command))
        .map_err(io_err(format!("QEMU monitor {}", sock.display())))
}

/// ` qvm_expose=a,b` for host directories under /tmp that the lab must see (L1 mounts a fresh
/// tmpfs on /tmp): this workspace, the target directory of the running binary, the image cache.
fn tmp_exposures() -> String {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        dirs.push(ws.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test> or target/<profile>/<bin>: expose target/.
        if let Some(t) = exe
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "target"))
        {
            dirs.push(t.to_path_buf());
        }
    }
    if let Some(c) = std::env::var_os("QVM_CACHE") {
        dirs.push(PathBuf::from(c));
    }
    let list: Vec<String> = dirs
        .into_iter()
        .filter_map(|d| d.canonicalize().ok())
        .filter(|d| d.starts_with("/tmp/"))
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.contains([',', ' ', '"', '\\']))
        .collect();
    if list.is_empty() {
        String::new()
    } else {
        format!(" qvm_expose={}", list.join(","))
    }
}

/// The uid of the ordinary user that tests about what a user (not root) gets run as.
pub const USER_UID: u32 = 4300;

/// The uid of a second ordinary user, for "another local user" in tests.
pub const OTHER_UID: u32 = 4301;

/// Shell that runs `script` as the ordinary user [`USER_UID`] (see [`as_uid`]).
pub fn as_user(script: &str) -> String {
    as_uid(USER_UID, script)
}

/// Shell that runs `script` as `uid` (gid the same; of supplementary groups only /dev/kvm's,
/// which is how a desktop user reaches KVM on a hardware host; no capabilities; a clean
/// environment with its own `HOME` and `XDG_RUNTIME_DIR=/run/user/<uid>`), after root has made
/// that runtime directory and, in the lab (a throwaway L1 whose /dev/kvm has no group), given
/// [`USER_UID`] /dev/kvm. The lab runs scripts as root: a test about what an ordinary user
/// gets must go through this.
pub fn as_uid(uid: u32, script: &str) -> String {
    format!(
        r#"set -e
install -d -m 0700 -o {uid} -g {uid} /run/user/{uid} /tmp/home-{uid}
[ -z "${{QVM_IN_LAB:-}}" ] || chown {u} /dev/kvm
kvm_gid=$(stat -c %g /dev/kvm)
# Never root's group: an ordinary user is not in it.
if [ "$kvm_gid" = 0 ]; then groups=--clear-groups; else groups=--groups=$kvm_gid; fi
set +e
exec setpriv --reuid={uid} --regid={uid} $groups \
  --inh-caps=-all --bounding-set=-all \
  env -i HOME=/tmp/home-{uid} XDG_RUNTIME_DIR=/run/user/{uid} PATH="$PATH" LANG=C.UTF-8 \
  sh -c {script}
"#,
        u = USER_UID,
        script = shell_quote(script)
    )
}

/// Single-quotes `s` for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The reference QEMU command line (a shell command string) booting `kernel` with `initrd` in a
/// microvm on KVM, console on stdout. Benchmarks compare qvm against it.
pub fn qemu_microvm_boot_cmd(kernel: &Path, initrd: &Path, cmdline: &str) -> String {
    format!(
        "qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256 -nographic -no-reboot \
         -kernel {} -initrd {} -append {}",
        shell_quote(&kernel.to_string_lossy()),
        shell_quote(&initrd.to_string_lossy()),
        shell_quote(cmdline)
    )
}
