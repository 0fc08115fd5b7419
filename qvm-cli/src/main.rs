//! `qvm`: the desktop front end. `qvm start|stop|status|list|run|copy|units|taps`, driven by the
//! domains file (default `~/.config/qvm/domains.toml`).
//!
//! Exit codes: 0 success (`run`: the command's own status), 1 an error (one line saying what
//! to fix), 2 bad usage or a bad domains file.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use qvm_agent::term;
use qvm_cli::agent::{self, AgentError, Input};
use qvm_cli::copy::{self, ConfirmError, HOST_SOURCE, MAX_COPY_BYTES};
use qvm_cli::domains::{Domain, Domains, DomainsError};
use qvm_cli::logs;
use qvm_cli::runtime::{runtime_root, VmPaths};
use qvm_cli::units;
use qvm_cli::vm::{self, LifecycleError, State};

#[derive(Parser, Debug)]
#[command(name = "qvm", version, about = "Run the desktop's VMs from the host")]
struct Cli {
    /// The domains file (default: ~/.config/qvm/domains.toml).
    #[arg(long, global = true, value_name = "PATH")]
    domains: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a VM (detached qvm-vmm; waits until its API answers).
    Start {
        vm: String,
        /// Seconds to wait for the API.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Stop a VM: ACPI shutdown, then stop, then kill; waits for the VMM to exit.
    Stop {
        vm: String,
        /// Seconds the guest gets to power off.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
    /// The state of one VM, or of all.
    Status { vm: Option<String> },
    /// All declared VMs and their state.
    List,
    /// Run a command in a VM through its guest agent (boots the VM first if needed).
    Run {
        vm: String,
        /// Seconds to wait for the VM's agent.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Pass the command's output to a terminal as it is. Without it, output to a terminal
        /// loses escape sequences and control characters, so a guest cannot drive the
        /// terminal (set its title, write the clipboard, type into it).
        #[arg(long)]
        raw: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Copy a host file (or, with --from, a VM's file) into ~/Incoming/<source>/ of a VM,
    /// after confirmation.
    Copy {
        /// Read the file from this VM instead of the host.
        #[arg(long, value_name = "VM")]
        from: Option<String>,
        /// The file (a host path, or a guest path with --from).
        file: String,
        /// The VM receiving it.
        vm: String,
        /// Confirm without asking (scripts).
        #[arg(long)]
        yes: bool,
        /// Seconds to wait for the VMs' agents.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Print the commands (for root) that create each VM's tap device.
    Taps {
        /// The tap owner for domains that are not jailed (default: $USER, else this uid).
        #[arg(long)]
        user: Option<String>,
    },
    /// Print (or with --write DIR, write) a systemd user unit qvm-<vm>.service per VM.
    Units {
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Domains(#[from] DomainsError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{vm}: {source}")]
    Agent {
        vm: String,
        #[source]
        source: Box<AgentError>,
    },
    #[error(transparent)]
    Confirm(#[from] ConfirmError),
    #[error("{path}: {reason}")]
    HostFile { path: PathBuf, reason: String },
    #[error("{path:?} has no file name to copy under; name a file")]
    NoName { path: String },
    #[error("{vm}: reading {path} failed with exit status {code}: {stderr}")]
    ReadFailed {
        vm: String,
        path: String,
        code: i32,
        stderr: String,
    },
    #[error("{vm}: storing the copy failed with exit status {code}: {stderr}")]
    StoreFailed {
        vm: String,
        code: i32,
        stderr: String,
    },
    #[error("cannot find the home directory: set HOME or pass --domains PATH")]
    NoHome,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copying a VM's file into the same VM: use `qvm run {0} -- cp ...`")]
    SameVm(String),
}

fn default_domains() -> Result<PathBuf, CliError> {
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or(CliError::NoHome)?).join(".config"),
    };
    Ok(config.join("qvm/domains.toml"))
}

struct Ctx {
    domains: Domains,
    root: PathBuf,
}

impl Ctx {
    fn paths(&self, d: &Domain) -> VmPaths {
        VmPaths::new(&self.root, &d.name)
    }
    fn get(&self, name: &str) -> Result<(&Domain, VmPaths), CliError> {
        let d = self.domains.get(name)?;
        Ok((d, self.paths(d)))
    }
    /// Boots `name` if needed and connects to its agent.
    fn session(&self, name: &str, timeout: Duration) -> Result<agent::Session, CliError> {
        let (d, paths) = self.get(name)?;
        let (pid, started) = vm::start(d, &paths, Duration::from_secs(30))?;
        if started {
            eprintln!("qvm: started {name} (pid {pid})");
        }
        let wait = agent::AgentWait {
            vm: name,
            vsock: &paths.vsock_sock(),
            console: &paths.console(),
            vmm_log: &paths.vmm_log(),
        };
        agent::wait_for_agent(&wait, timeout, || paths.live_pid().is_some())
            .map_err(|source| agent_error(name, source))
    }

    /// Runs `argv` in `name` (booted first if needed) with `input` as its stdin, keeping at
    /// most `max_out` bytes of its stdout.
    fn capture(
        &self,
        name: &str,
        timeout: Duration,
        argv: &[String],
        input: Vec<u8>,
        max_out: usize,
    ) -> Result<Captured, CliError> {
        let s = self.session(name, timeout)?.idle_deadline(copy::IDLE);
        let (mut out, mut err) = (Vec::new(), copy::Capped::new(copy::MAX_STDERR));
        let code = s
            .exec(argv, Input::Bytes(input), &mut out, &mut err, Some(max_out))
            .map_err(|source| agent_error(name, source))?;
        Ok(Captured {
            code,
            out,
            err: err.kept,
        })
    }
}

/// What a command run by [`Ctx::capture`] left: its exit status, stdout and stderr.
struct Captured {
    code: i32,
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Captured {
    /// Its stderr as one trimmed string for an error message, its controls escaped.
    fn stderr(&self) -> String {
        logs::sanitize(String::from_utf8_lossy(&self.err).trim())
    }
}

/// `vm`'s agent (or the wait for it) failed.
fn agent_error(vm: &str, source: impl Into<AgentError>) -> CliError {
    CliError::Agent {
        vm: vm.to_string(),
        source: Box::new(source.into()),
    }
}

fn status_line(d: &Domain, st: &State) -> String {
    let pid = match st {
        State::Running { pid, .. } | State::Unresponsive { pid } => pid.to_string(),
        State::Stopped { .. } => "-".into(),
    };
    let mut line = format!("{:<16} {:<12} {:<8} {}", d.name, st.word(), pid, d.label());
    if let State::Stopped { cleaned } = st {
        if !cleaned.is_empty() {
            line.push_str(&format!("  (removed {} stale file(s))", cleaned.len()));
        }
    }
    line
}

fn copy_cmd(
    ctx: &Ctx,
    from: Option<&str>,
    file: &str,
    target: &str,
    yes: bool,
    timeout: Duration,
) -> Result<(), CliError> {
    ctx.get(target)?;
    let name = copy::target_name(file).ok_or_else(|| CliError::NoName {
        path: file.to_string(),
    })?;
    let source = match from {
        Some(v) => {
            ctx.get(v)?;
            if v == target {
                return Err(CliError::SameVm(v.to_string()));
            }
            v
        }
        None => HOST_SOURCE,
    };
    let what = match from {
        Some(v) => format!("{v}:{file}"),
        None => format!("host file {file}"),
    };
    let stdin = std::io::stdin();
    copy::confirm(
        &format!("qvm: copy {what} into {target}:~/Incoming/{source}/{name}?"),
        yes,
        stdin.is_terminal(),
        &mut stdin.lock(),
        &mut std::io::stderr(),
    )?;
    let data = match from {
        None => {
            let path = PathBuf::from(file);
            let meta = std::fs::metadata(&path).map_err(|e| CliError::HostFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            if !meta.is_file() {
                return Err(CliError::HostFile {
                    path,
                    reason: "not a regular file; copy files one at a time".into(),
                });
            }
            if meta.len() > MAX_COPY_BYTES as u64 {
                return Err(CliError::HostFile {
                    path,
                    reason: format!("larger than {MAX_COPY_BYTES} bytes"),
                });
            }
            std::fs::read(&path).map_err(|source| CliError::Io { path, source })?
        }
        Some(v) => {
            let read = ctx.capture(
                v,
                timeout,
                &copy::read_command(file),
                Vec::new(),
                MAX_COPY_BYTES,
            )?;
            if read.code != 0 {
                return Err(CliError::ReadFailed {
                    vm: v.to_string(),
                    path: file.to_string(),
                    code: read.code,
                    stderr: read.stderr(),
                });
            }
            read.out
        }
    };
    let len = data.len();
    let store = ctx.capture(
        target,
        timeout,
        &copy::store_command(source, name),
        data,
        64 << 10,
    )?;
    if store.code != 0 {
        return Err(CliError::StoreFailed {
            vm: target.to_string(),
            code: store.code,
            stderr: store.stderr(),
        });
    }
    println!(
        "qvm: copied {len} bytes to {target}:{}",
        logs::sanitize(String::from_utf8_lossy(&store.out).trim())
    );
    Ok(())
}

fn real_main(cli: Cli) -> Result<ExitCode, CliError> {
    let path = match cli.domains {
        Some(p) => p,
        None => default_domains()?,
    };
    let root = runtime_root();
    qvm_cli::runtime::check_root_if_present(&root).map_err(LifecycleError::from)?;
    let ctx = Ctx {
        domains: Domains::load(&path)?,
        root,
    };
    match cli.command {
        Cmd::Start { vm: name, timeout } => {
            let (d, paths) = ctx.get(&name)?;
            let (pid, started) = vm::start(d, &paths, Duration::from_secs(timeout))?;
            if started {
                println!("{name}: started (pid {pid})");
            } else {
                println!("{name}: already running (pid {pid})");
            }
        }
        Cmd::Stop { vm: name, timeout } => {
            let (d, paths) = ctx.get(&name)?;
            if vm::stop(d, &paths, Duration::from_secs(timeout))? {
                println!("{name}: stopped");
            } else {
                println!("{name}: not running");
            }
        }
        Cmd::Status { vm: Some(name) } => {
            let (d, paths) = ctx.get(&name)?;
            println!("{}", status_line(d, &vm::status(&paths)));
        }
        Cmd::Status { vm: None } | Cmd::List => {
            println!("{:<16} {:<12} {:<8} LABEL", "NAME", "STATE", "PID");
            for d in &ctx.domains.vms {
                println!("{}", status_line(d, &vm::status(&ctx.paths(d))));
            }
        }
        Cmd::Run {
            vm: name,
            timeout,
            raw,
            command,
        } => {
            let s = ctx.session(&name, Duration::from_secs(timeout))?;
            let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
            let filter_out = !raw && stdout.is_terminal();
            let filter_err = !raw && stderr.is_terminal();
            let code = s
                .exec(
                    &command,
                    Input::Inherit,
                    &mut term::for_terminal(stdout.lock(), filter_out),
                    &mut term::for_terminal(stderr.lock(), filter_err),
                    None,
                )
                .map_err(|source| agent_error(&name, source))?;
            let _ = std::io::stdout().flush();
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
        }
        Cmd::Copy {
            from,
            file,
            vm: target,
            yes,
            timeout,
        } => copy_cmd(
            &ctx,
            from.as_deref(),
            &file,
            &target,
            yes,
            Duration::from_secs(timeout),
        )?,
        Cmd::Taps { user } => {
            let user = user
                .or_else(|| std::env::var("USER").ok())
                // SAFETY: getuid(2) cannot fail.
                .unwrap_or_else(|| unsafe { libc::getuid() }.to_string());
            print!("{}", units::tap_commands(&ctx.domains.vms, &user));
        }
        Cmd::Units { write } => {
            let qvm = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("qvm"));
            let domains = std::fs::canonicalize(&path).unwrap_or(path.clone());
            for d in &ctx.domains.vms {
                let text = units::unit(d, &ctx.paths(d), &qvm, &domains);
                match &write {
                    Some(dir) => {
                        let p = dir.join(units::unit_name(d));
                        std::fs::create_dir_all(dir)
                            .and_then(|_| std::fs::write(&p, text))
                            .map_err(|source| CliError::Io {
                                path: p.clone(),
                                source,
                            })?;
                        println!("{}", p.display());
                    }
                    None => println!("# {}\n{text}", units::unit_name(d)),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qvm: error: {e}");
            match e {
                CliError::Domains(_) | CliError::Lifecycle(LifecycleError::Domains(_)) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::from(1),
            }
        }
    }
}
