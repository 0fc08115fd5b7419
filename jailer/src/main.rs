//! `qvm-jailer --id ID --uid N --gid N --config vm.toml [-- qvm-vmm args]`: runs one VM's
//! qvm-vmm in a jail (see the crate docs and README's "Jailed VMs").
//!
//! Exit codes: 2 a wrong argument, config or file permission (one line says which); 1 the host
//! failed us; otherwise the VMM's own exit code (128+N if signal N stopped it).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use clap::Parser;
use qvm_config::VmConfig;
use qvm_jailer::cgroup::{Cgroup, Limits};
use qvm_jailer::jail::{self, Rlimits};
use qvm_jailer::limits;
use qvm_jailer::paths::{self, Plan};
use qvm_jailer::JailError;

#[derive(Parser, Debug)]
#[command(
    name = "qvm-jailer",
    version,
    about = "Runs one VM's qvm-vmm jailed: own namespaces, a root with only the VM's files, cgroup v2 limits, an unprivileged uid"
)]
struct Cli {
    /// The VM's name: its cgroup is <cgroup-base>/<id>, its jail <jail-base>/<id>/root.
    #[arg(long)]
    id: String,
    /// The VM's own uid (not 0); it must be able to read (and write) the VM's files.
    #[arg(long)]
    uid: u32,
    /// The VM's own gid (not 0).
    #[arg(long)]
    gid: u32,
    /// The program to run (default: qvm-vmm next to qvm-jailer).
    #[arg(long, value_name = "PATH")]
    exec_file: Option<PathBuf>,
    #[arg(long, value_name = "DIR", default_value = "/srv/qvm/jail")]
    jail_base: PathBuf,
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup/qvm")]
    cgroup_base: PathBuf,
    /// memory.max: `auto` (guest memory + 64 MiB + virtio-wl buffers) or bytes (K/M/G
    /// suffixes); less than auto is refused.
    #[arg(long, value_name = "BYTES|auto", default_value = "auto")]
    memory_max: String,
    /// pids.max (threads count; default 64 + 2 per vCPU and device, + 32 per virtio-fs).
    #[arg(long, value_name = "N")]
    pids_max: Option<u64>,
    /// cpu.max, "QUOTA PERIOD" in microseconds (e.g. "50000 100000" for half a CPU).
    #[arg(long, value_name = "QUOTA PERIOD", allow_hyphen_values = true)]
    cpu_max: Option<String>,
    /// Join this network namespace (e.g. /run/netns/vm1, from `ip netns add vm1`) first.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// RLIMIT_NOFILE (default 1024, + 2 per virtio-wl object).
    #[arg(long, value_name = "N")]
    rlimit_nofile: Option<u64>,
    /// The VM's config file; the VMM gets it as `--config` (at the same path, read-only).
    #[arg(long, short = 'c', value_name = "vm.toml")]
    config: PathBuf,
    /// More qvm-vmm arguments, after `--`.
    #[arg(last = true, value_name = "QVM-VMM ARGS")]
    vmm_args: Vec<String>,
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our child.
        unsafe { libc::kill(pid, sig) };
    }
}

fn main() -> ExitCode {
    #[cfg(debug_assertions)]
    if let Some(code) = test_fork_bomb() {
        return code;
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qvm-jailer: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

struct Checked {
    cli: Cli,
    config: PathBuf,
    exec: PathBuf,
    plan: Plan,
    limits: Limits,
    nofile: u64,
}

/// Step 1: everything that can be checked before touching the system.
fn check(cli: Cli) -> Result<Checked, JailError> {
    limits::check_id(&cli.id)?;
    if cli.uid == 0 {
        return Err(JailError::RootId("uid"));
    }
    if cli.gid == 0 {
        return Err(JailError::RootId("gid"));
    }
    let mem = limits::parse_memory_max(&cli.memory_max)?;
    let cpu_max = cli
        .cpu_max
        .as_deref()
        .map(limits::parse_cpu_max)
        .transpose()?;
    // Absolute, so the paths the config resolves are the ones the jail gets.
    let config = std::fs::canonicalize(&cli.config)
        .map_err(|e| JailError::bad_path("--config", &cli.config, e.to_string()))?;
    let cfg = VmConfig::from_file(&config)?;
    qvm_config::boot::detect_format(&cfg.boot.kernel)
        .map_err(|e| JailError::bad_path("[boot] kernel", &cfg.boot.kernel, e.to_string()))?;
    let memory_max = limits::memory_limit(&cfg, mem)?;
    let pids_max = limits::pids_limit(&cfg, cli.pids_max)?;
    let nofile = limits::check_nofile(
        cli.rlimit_nofile
            .unwrap_or_else(|| limits::default_nofile(&cfg)),
    )?;
    let exec = match &cli.exec_file {
        Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("qvm-vmm")))
            .unwrap_or_else(|| PathBuf::from("/usr/bin/qvm-vmm")),
    };
    let exec_ok = std::fs::metadata(&exec)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !exec_ok {
        return Err(JailError::bad_path(
            "--exec-file",
            exec,
            "not an executable file; build qvm-vmm or pass --exec-file",
        ));
    }
    if let Some(ns) = &cli.netns {
        if !ns.exists() {
            return Err(JailError::bad_path(
                "--netns",
                ns,
                "no such file; create it with `ip netns add NAME`",
            ));
        }
    }
    let plan = paths::collect(
        &cfg,
        &config,
        &exec,
        &cli.vmm_args,
        &|k| std::env::var(k).ok(),
        &paths::libraries_as(cli.uid, cli.gid),
    )?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    Ok(Checked {
        cli,
        config,
        exec,
        plan,
        limits: Limits {
            memory_max,
            pids_max,
            cpu_max,
        },
        nofile,
    })
}

fn run(cli: Cli) -> Result<ExitCode, JailError> {
    let c = check(cli)?;
    let (uid, gid) = (c.cli.uid, c.cli.gid);

    // Step 2: nothing inherited goes further than stdio; the environment is rebuilt from
    // scratch for the VMM (plan.env).
    // SAFETY: close_range on fds we do not use (the standard streams stay).
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        return Err(JailError::last("close_range(3, ~0)"));
    }
    let vars: Vec<OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    for k in vars {
        // Single-threaded: nothing reads the environment concurrently.
        std::env::remove_var(k);
    }
    for m in c
        .plan
        .mounts
        .iter()
        .filter(|m| m.create && !m.path.exists())
    {
        jail::create_owned_file(&m.path, uid, gid)?;
    }

    // Step 3: the cgroup, entered before the fork so every task of the VM counts.
    let cg = Cgroup::create(&c.cli.cgroup_base, &c.cli.id, &c.limits)?;
    let jail_dir = c.cli.jail_base.join(&c.cli.id);
    let root = jail_dir.join("root");
    std::fs::create_dir_all(&root).map_err(|e| {
        JailError::bad_path(
            "--jail-base",
            &c.cli.jail_base,
            format!("cannot create {}: {e}", root.display()),
        )
    })?;
    let _ = std::fs::set_permissions(&jail_dir, std::fs::Permissions::from_mode(0o700));
    let cleanup_dirs = || {
        let _ = std::fs::remove_dir(&root);
        let _ = std::fs::remove_dir(&jail_dir);
    };
    if std::fs::read_dir(&root)
        .map(|mut d| d.next().is_some())
        .unwrap_or(true)
    {
        return Err(JailError::bad_path(
            "--jail-base",
            &root,
            "is not an empty directory: is this VM running already?",
        ));
    }
    let result = (|| {
        cg.enter()?;
        // Step 4: namespaces; the child is pid 1 of the new pid namespace.
        let netns = c
            .cli
            .netns
            .as_ref()
            .map(|p| {
                std::fs::File::open(p).map_err(|e| JailError::bad_path("--netns", p, e.to_string()))
            })
            .transpose()?;
        jail::unshare_pid(netns.as_ref())?;
        drop(netns);
        // The child learns through this pipe whether we still live (see die_with_parent);
        // both ends close on exec.
        let mut alive = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        if unsafe { libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(JailError::last("pipe2"));
        }
        // SAFETY: single-threaded; the child only runs our code and then execs or _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(JailError::last("fork"));
        }
        if pid == 0 {
            // SAFETY: the write end is ours to close in the child.
            unsafe { libc::close(alive[1]) };
            let e = child(&c, &root, alive[0]);
            eprintln!("qvm-jailer: error: {e}");
            // SAFETY: _exit skips the parent's destructors (the cgroup stays the parent's).
            unsafe { libc::_exit(i32::from(e.exit_code())) };
        }
        // SAFETY: the read end is the child's; our write end stays open until we exit.
        unsafe { libc::close(alive[0]) };
        Ok(parent(pid, &c.cli.id, &cg))
    })();
    cleanup_dirs();
    drop(cg);
    result
}

/// The parent: forwards SIGTERM/SIGINT/SIGHUP to the VMM and exits with its status.
fn parent(pid: libc::pid_t, id: &str, cg: &Cgroup) -> ExitCode {
    CHILD.store(pid, Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a handler that only calls kill(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    eprintln!(
        "qvm-jailer: VM {id} runs as pid {pid} in cgroup {}",
        cg.dir.display()
    );
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            eprintln!(
                "qvm-jailer: error: waitpid: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(1);
        }
    }
    cg.report();
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::from(128u8.saturating_add(libc::WTERMSIG(status) as u8))
    }
}

/// The child, pid 1 in its namespaces: builds the root, drops everything, execs; `alive` is
/// the read end of the jailer's liveness pipe.
fn child(c: &Checked, root: &Path, alive: libc::c_int) -> JailError {
    let r = (|| {
        jail::unshare_rest()?;
        jail::set_hostname(&c.cli.id);
        jail::build_root(root, &c.plan, c.cli.uid, c.cli.gid)?;
        jail::enter_root(root)?;
        jail::set_rlimits(&Rlimits { nofile: c.nofile })?;
        jail::drop_privileges(c.cli.uid, c.cli.gid)?;
        jail::die_with_parent(alive)?;
        jail::check_access(&c.plan, &c.exec, c.cli.uid, c.cli.gid)?;
        Ok::<(), JailError>(())
    })();
    if let Err(e) = r {
        return e;
    }
    let mut args = vec!["--config".to_string(), c.config.display().to_string()];
    args.extend(c.cli.vmm_args.iter().cloned());
    jail::exec(&c.exec, &args, &c.plan.env)
}

/// Debug builds: `qvm-jailer [--config X] --test-fork-bomb N` (as the jail's --exec-file, with
/// `-- --test-fork-bomb N`) forks up to N sleeping children and reports the first fork that
/// fails; it exits 0 if that was EAGAIN (the pids limit), 1 if all N succeeded. Bounded: the
/// children sleep at most 60 s and are killed when it is done.
#[cfg(debug_assertions)]
fn test_fork_bomb() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    let pos = args.iter().position(|a| a == "--test-fork-bomb")?;
    if args[..pos].iter().any(|a| a == "--") {
        return None;
    }
    let n: usize = args
        .get(pos + 1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut kids = Vec::new();
    let mut failed = None;
    for i in 0..n {
        // SAFETY: the child only sleeps and _exits.
        match unsafe { libc::fork() } {
            // SAFETY: sleep and _exit, both async-signal-safe, in the forked child.
            0 => unsafe {
                libc::sleep(60);
                libc::_exit(0);
            },
            -1 => {
                let e = std::io::Error::last_os_error();
                failed = Some((i + 1, e));
                break;
            }
            pid => kids.push(pid),
        }
    }
    println!(
        "fork bomb: pid {} forked {} children",
        std::process::id(),
        kids.len()
    );
    let code = match &failed {
        Some((i, e)) => {
            let name = if e.raw_os_error() == Some(libc::EAGAIN) {
                "EAGAIN"
            } else {
                "not EAGAIN"
            };
            println!("fork bomb: fork #{i} failed: {name} ({e})");
            u8::from(e.raw_os_error() != Some(libc::EAGAIN))
        }
        None => {
            println!("fork bomb: all {n} forks succeeded: NOT stopped");
            1
        }
    };
    for &k in &kids {
        // SAFETY: our own children.
        unsafe {
            libc::kill(k, libc::SIGKILL);
            libc::waitpid(k, std::ptr::null_mut(), 0);
        }
    }
    Some(ExitCode::from(code))
}
