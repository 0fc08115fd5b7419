//! `qvm-vmm --config vm.toml`: boots one VM and exits when it stops.
//!
//! Exit codes: 0 the guest powered off or rebooted; 1 the VMM failed; 2 the config is wrong;
//! 3 the guest kernel panicked; 4 a vCPU faulted; 128+N stopped by signal N.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use qvm_devices::GuestExit;
use qvm_vmm::config::VmConfig;
use qvm_vmm::vm::{self, RunOptions, RunOutcome};

#[derive(Parser, Debug)]
#[command(
    name = "qvm-vmm",
    version,
    about = "qvm's KVM monitor: boots one VM from a TOML config"
)]
struct Cli {
    /// The VM's config file (see examples/ for one).
    #[arg(long, short = 'c', value_name = "vm.toml")]
    config: PathBuf,
    /// Print the CLOCK_MONOTONIC time of the first KVM_RUN to stderr (for boot-time benches).
    #[arg(long)]
    report_boot_time: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match VmConfig::from_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qvm-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    // A wrong kernel file is a config mistake: say so before touching KVM.
    if let Err(e) = qvm_vmm::boot::detect_format(&cfg.boot.kernel) {
        eprintln!("qvm-vmm: error: {e}");
        return ExitCode::from(2);
    }
    let opts = RunOptions {
        report_first_run: cli.report_boot_time,
    };
    match vm::run(&cfg, &opts) {
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
