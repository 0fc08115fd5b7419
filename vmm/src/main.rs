//! `qvm-vmm --config vm.toml`: boots one VM and exits when it stops.
//! `qvm-vmm --api-sock PATH [--config vm.toml]`: the same, driven through the REST API on PATH;
//! without `--config` the VM waits to be configured and started through the API.
//!
//! Exit codes: 0 the guest powered off or rebooted; 1 the VMM failed; 2 the config is wrong;
//! 3 the guest kernel panicked; 4 a vCPU faulted; 128+N stopped by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::{mpsc, Arc};

use std::time::Duration;

use clap::{Parser, Subcommand};
use qvm_api::{client, ApiServer, Method, ServerConfig};
use qvm_config::VmConfig;
use qvm_devices::GuestExit;
use qvm_vmm::control;
use qvm_vmm::handlers::VmmApi;
use qvm_vmm::landlock::{self, LandlockMode};
use qvm_vmm::seccomp::{self, SeccompLevel, ThreadKind};
use qvm_vmm::vm::{self, RunOptions, RunOutcome};

#[derive(Parser, Debug)]
#[command(
    name = "qvm-vmm",
    version,
    about = "qvm's KVM monitor: boots one VM from a TOML config or through its REST API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The VM's config file (see examples/ for one).
    #[arg(long, short = 'c', value_name = "vm.toml")]
    config: Option<PathBuf>,
    /// Serve the REST API on this unix socket (see api/openapi.yaml). With --config the VM
    /// starts at once; without, it waits for `PUT /actions {"action": "start"}`.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// seccomp filters per thread kind: enforce (a forbidden syscall stops the VMM with a line
    /// naming it), log (the kernel logs it, nothing stops), off.
    #[arg(long, value_enum, default_value = "enforce")]
    seccomp: SeccompLevel,
    /// Landlock: restrict the VMM to its VM's files (kernel, initrd, disks, console, socket
    /// directories, /dev/kvm, /dev/net/tun) where the kernel has Landlock; off: no ruleset.
    #[arg(long, value_enum, default_value = "on")]
    landlock: LandlockMode,
    /// Print the CLOCK_MONOTONIC time of the first KVM_RUN to stderr (for boot-time benches).
    #[arg(long)]
    report_boot_time: bool,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Drive a running `qvm-vmm --api-sock` (prints the reply body; exit 1 on an error reply).
    Ctl {
        /// The API socket.
        #[arg(long, value_name = "PATH")]
        api_sock: PathBuf,
        #[command(subcommand)]
        verb: Verb,
    },
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// GET a resource, e.g. `/vm`, `/metrics`, `/version`.
    Get { path: String },
    /// PUT a JSON body, e.g. `/vm/machine '{"vcpus": 2, "memory_mib": 512}'`.
    Put { path: String, json: String },
    /// DELETE a resource, e.g. `/vm/disks/data`.
    Delete { path: String },
    /// PUT /actions with this action: start, pause, resume, shutdown or stop.
    Action { action: String },
}

/// `qvm-vmm ctl`: one request, the body on stdout, errors on stderr.
fn ctl(sock: &std::path::Path, verb: Verb) -> ExitCode {
    let (method, path, body) = match verb {
        Verb::Get { path } => (Method::Get, path, None),
        Verb::Put { path, json } => (Method::Put, path, Some(json)),
        Verb::Delete { path } => (Method::Delete, path, None),
        Verb::Action { action } => (
            Method::Put,
            "/actions".to_string(),
            Some(serde_json::json!({ "action": action }).to_string()),
        ),
    };
    match client::call(
        sock,
        method,
        &path,
        body.as_deref(),
        Duration::from_secs(30),
    ) {
        Ok(r) if r.is_success() => {
            if !r.body.is_empty() {
                println!("{}", r.body.trim_end());
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!(
                "qvm-vmm ctl: {} {path}: HTTP {}: {}",
                method.as_str(),
                r.status,
                r.body.trim_end()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("qvm-vmm ctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Sub::Ctl { api_sock, verb }) = cli.command {
        return ctl(&api_sock, verb);
    }
    if cli.config.is_none() && cli.api_sock.is_none() {
        eprintln!("qvm-vmm: error: give --config vm.toml, --api-sock PATH, or both (see --help)");
        return ExitCode::from(2);
    }
    // Before any other thread exists: not dumpable, umask 077 (see hygiene.rs).
    if let Err(e) = qvm_vmm::hygiene::apply() {
        eprintln!("qvm-vmm: error: {e}");
        return ExitCode::from(1);
    }
    // Before any other thread exists: they all install their filters from these.
    if let Err(e) = seccomp::init(cli.seccomp) {
        eprintln!("qvm-vmm: error: {e}");
        return ExitCode::from(1);
    }
    qvm_devices::sandbox::set_worker_hook(|| seccomp::apply_or_exit(ThreadKind::Device));
    let cfg = match &cli.config {
        Some(path) => match load(path) {
            Ok(c) => Some(c),
            Err(code) => return code,
        },
        None => None,
    };
    // virtiofsd first (it sandboxes itself and must not inherit our ruleset), then Landlock,
    // before the VM is built and before any other thread exists (all inherit the ruleset).
    let mut virtiofsd = Vec::new();
    if let Some(c) = &cfg {
        virtiofsd = match vm::start_virtiofsd(c) {
            Ok(v) => v,
            Err(e) => return outcome(Err(e)),
        };
        if let Err(code) = restrict_files(cli.landlock, c, cli.api_sock.as_deref()) {
            return code;
        }
    }
    let opts = RunOptions {
        report_first_run: cli.report_boot_time,
    };
    let Some(sock) = &cli.api_sock else {
        // clap guarantees --config without --api-sock.
        let Some(cfg) = cfg else {
            return ExitCode::from(2);
        };
        return outcome(vm::run(&cfg, &opts, virtiofsd));
    };

    let (control, chan) = match control::channel() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qvm-vmm: error: cannot create the API channel: {e}");
            return ExitCode::from(1);
        }
    };
    let (start_tx, start_rx) = mpsc::channel();
    let autostart = cfg.clone();
    let api = Arc::new(VmmApi::new(cfg, start_tx, control));
    // With --config the VM starts now: say so before the first request can arrive, or a PUT
    // or start in between would be accepted and then ignored.
    if autostart.is_some() {
        api.set_running();
    }
    let mut server_cfg = ServerConfig::new(sock.clone());
    server_cfg.thread_hook = Some(|| seccomp::apply_or_exit(ThreadKind::Api));
    let server = match ApiServer::start(server_cfg, api.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qvm-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match autostart {
        Some(c) => c,
        None => {
            eprintln!(
                "qvm-vmm: waiting for the VM to be configured and started through {}",
                sock.display()
            );
            match start_rx.recv() {
                // The API threads started before the config existed and stay outside the
                // ruleset; the VM's own threads all start after this.
                Ok(c) => {
                    virtiofsd = match vm::start_virtiofsd(&c) {
                        Ok(v) => v,
                        Err(e) => return outcome(Err(e)),
                    };
                    match restrict_files(cli.landlock, &c, Some(sock)) {
                        Ok(()) => c,
                        Err(code) => return code,
                    }
                }
                Err(_) => {
                    eprintln!("qvm-vmm: error: the API server stopped before the VM was started");
                    return ExitCode::from(1);
                }
            }
        }
    };
    let result = vm::run_with_control(&cfg, &opts, Some(chan), virtiofsd);
    api.set_stopped(match &result {
        Ok(o) => format!("{o:?}"),
        Err(e) => e.to_string(),
    });
    server.stop();
    outcome(result)
}

/// Applies the Landlock ruleset for `cfg` (see landlock.rs); Err is the exit code.
fn restrict_files(
    mode: LandlockMode,
    cfg: &VmConfig,
    api_sock: Option<&std::path::Path>,
) -> Result<(), ExitCode> {
    let result = restrict_files_with(mode, cfg, api_sock);
    #[cfg(debug_assertions)]
    landlock::test_hook();
    result
}

fn restrict_files_with(
    mode: LandlockMode,
    cfg: &VmConfig,
    api_sock: Option<&std::path::Path>,
) -> Result<(), ExitCode> {
    if mode == LandlockMode::Off {
        return Ok(());
    }
    match landlock::apply(cfg, api_sock) {
        Ok(landlock::Outcome::Applied { abi, rules, scoped }) => {
            let scopes = if scoped != 0 {
                "; abstract unix sockets and signals scoped"
            } else {
                "; no scopes (they need ABI 6)"
            };
            eprintln!("qvm-vmm: landlock ABI {abi} applied: {rules} rules{scopes}");
            Ok(())
        }
        Ok(landlock::Outcome::Unsupported(why)) => {
            eprintln!("qvm-vmm: landlock unavailable, running without it: {why}");
            Ok(())
        }
        Err(e) => {
            eprintln!("qvm-vmm: error: {e} (or run with --landlock off)");
            Err(ExitCode::from(1))
        }
    }
}

/// Reads and checks a config file; Err is the exit code (the message is printed).
fn load(path: &std::path::Path) -> Result<VmConfig, ExitCode> {
    let cfg = VmConfig::from_file(path).map_err(|e| {
        eprintln!("qvm-vmm: error: {e}");
        ExitCode::from(2)
    })?;
    // A wrong kernel file is a config mistake: say so before touching KVM.
    if let Err(e) = qvm_config::boot::detect_format(&cfg.boot.kernel) {
        eprintln!("qvm-vmm: error: {e}");
        return Err(ExitCode::from(2));
    }
    Ok(cfg)
}

fn outcome(result: Result<RunOutcome, vm::VmError>) -> ExitCode {
    match result {
        Ok(RunOutcome::Guest(GuestExit::PowerOff)) => {
            eprintln!("qvm-vmm: guest powered off");
            ExitCode::SUCCESS
        }
        Ok(RunOutcome::Guest(GuestExit::Reset)) => {
            eprintln!("qvm-vmm: guest rebooted; stopping the VM");
            ExitCode::SUCCESS
        }
        Ok(RunOutcome::Guest(GuestExit::Panic)) => {
            eprintln!("qvm-vmm: guest kernel panicked (reported through pvpanic); see the console output above");
            ExitCode::from(3)
        }
        Ok(RunOutcome::Guest(GuestExit::VcpuFault)) => {
            eprintln!("qvm-vmm: a vCPU stopped on an error it cannot recover from");
            ExitCode::from(4)
        }
        Ok(RunOutcome::Stopped) => {
            eprintln!("qvm-vmm: stopped through the API");
            ExitCode::SUCCESS
        }
        Ok(RunOutcome::Signal(sig)) => {
            eprintln!("qvm-vmm: stopped by signal {sig}");
            ExitCode::from(128u8.saturating_add(sig as u8))
        }
        Err(e) => {
            eprintln!("qvm-vmm: error: {e}");
            ExitCode::from(if e.is_config_error() { 2 } else { 1 })
        }
    }
}
