//! vCPU threads: each runs KVM_RUN and dispatches exits to the buses, nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use qvm_devices::{Bus, ExitSignal, GuestExit};

/// Shared by all vCPU threads.
pub struct VcpuShared {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitSignal>,
    pub stop: AtomicBool,
    /// Print the CLOCK_MONOTONIC time of the boot vCPU's first KVM_RUN to stderr.
    pub report_first_run: bool,
}

/// The signal used to knock a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler; KVM_RUN then returns EINTR when the signal arrives.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, which is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn spawn(id: u8, mut fd: VcpuFd, shared: Arc<VcpuShared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || run(id, &mut fd, &shared))
}

fn run(id: u8, fd: &mut VcpuFd, shared: &VcpuShared) {
    let mut first = id == 0 && shared.report_first_run;
    while !shared.stop.load(Ordering::Acquire) {
        if first {
            eprintln!("qvm-vmm: first KVM_RUN at monotonic_ns={}", monotonic_ns());
            first = false;
        }
        let outcome = match fd.run() {
            Ok(exit) => handle_exit(id, exit, shared),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => {
                eprintln!("qvm-vmm: vcpu{id}: KVM_RUN failed: {e}");
                Some(GuestExit::VcpuFault)
            }
        };
        if let Some(why) = outcome {
            shared.exit.trigger(why);
            break;
        }
    }
}

/// Returns Some when this exit ends the VM.
fn handle_exit(id: u8, exit: VcpuExit, s: &VcpuShared) -> Option<GuestExit> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !s.pio.read(u64::from(port), data) {
                data.fill(0xff); // nothing there: an open ISA bus reads all ones
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            s.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !s.mmio.read(addr, data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            s.mmio.write(addr, data);
            None
        }
        // With the in-kernel LAPIC, HLT only exits when the vCPU can never wake again.
        VcpuExit::Hlt => Some(GuestExit::PowerOff),
        // A triple fault: the last step of Linux's reboot fallbacks.
        VcpuExit::Shutdown => Some(GuestExit::Reset),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Some(GuestExit::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Some(GuestExit::Reset),
            KVM_SYSTEM_EVENT_CRASH => Some(GuestExit::Panic),
            other => {
                eprintln!("qvm-vmm: vcpu{id}: unknown system event {other}, stopping");
                Some(GuestExit::VcpuFault)
            }
        },
        VcpuExit::FailEntry(reason, cpu) => {
            eprintln!(
                "qvm-vmm: vcpu{id}: VM entry failed (hardware reason {reason:#x}, cpu {cpu})"
            );
            Some(GuestExit::VcpuFault)
        }
        VcpuExit::InternalError => {
            eprintln!("qvm-vmm: vcpu{id}: KVM internal error (emulation failure)");
            Some(GuestExit::VcpuFault)
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
        other => {
            eprintln!("qvm-vmm: vcpu{id}: unexpected exit {other:?}, stopping");
            Some(GuestExit::VcpuFault)
        }
    }
}

/// Stops and joins the vCPU threads: sets the stop flag and keeps kicking each thread out of
/// KVM_RUN until it has returned (a kick can land just before KVM_RUN starts, so one is not
/// enough). Returns the ids of threads that did not stop within `timeout`.
pub fn stop_all(
    shared: &VcpuShared,
    handles: Vec<JoinHandle<()>>,
    timeout: Duration,
) -> Vec<usize> {
    use std::os::unix::thread::JoinHandleExt;
    shared.stop.store(true, Ordering::Release);
    let deadline = Instant::now() + timeout;
    let mut stuck = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        while !h.is_finished() && Instant::now() < deadline {
            // SAFETY: the thread is alive (not finished and not joined), so its pthread_t is valid.
            unsafe { libc::pthread_kill(h.as_pthread_t(), kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            stuck.push(i);
        }
    }
    stuck
}
