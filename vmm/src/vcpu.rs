//! vCPU threads: each runs KVM_RUN and dispatches exits to the buses, nothing else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
    /// Where vCPU threads park while the VM is paused.
    pub gate: PauseGate,
    pub exits: ExitCounters,
}

/// VM exits by kind, summed over the vCPUs.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    /// KVM_RUN interrupted by a signal (kicks for pause and stop).
    pub interrupted: AtomicU64,
    pub other: AtomicU64,
}

impl ExitCounters {
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("io", self.io.load(Ordering::Relaxed)),
            ("mmio", self.mmio.load(Ordering::Relaxed)),
            ("interrupted", self.interrupted.load(Ordering::Relaxed)),
            ("other", self.other.load(Ordering::Relaxed)),
        ]
    }
}

/// Pausing: the controller sets `paused` and kicks every vCPU out of KVM_RUN; each parks here
/// before its next KVM_RUN until resumed (or stopped).
#[derive(Debug, Default)]
pub struct PauseGate {
    state: Mutex<GateState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    parked: usize,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a vCPU thread between KVM_RUNs.
    fn park_if_paused(&self, stop: &AtomicBool) {
        let mut st = self.lock();
        if !st.paused {
            return;
        }
        st.parked += 1;
        self.cv.notify_all();
        while st.paused && !stop.load(Ordering::Acquire) {
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.parked -= 1;
    }

    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.cv.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Waits up to `timeout` for `n` vCPUs to be parked.
    pub fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .cv
            .wait_timeout_while(st, timeout, |st| st.parked < n)
            .unwrap_or_else(|e| e.into_inner());
        st.parked >= n
    }

    /// Wakes parked threads (used on stop: they see the stop flag and return).
    pub fn wake_all(&self) {
        let _guard = self.lock();
        self.cv.notify_all();
    }
}

/// Kicks the thread out of KVM_RUN (it returns EINTR).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller passes the pthread_t of a vCPU thread that has not been joined.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
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
    crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Vcpu);
    let mut first = id == 0 && shared.report_first_run;
    while !shared.stop.load(Ordering::Acquire) {
        shared.gate.park_if_paused(&shared.stop);
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        if first {
            eprintln!("qvm-vmm: first KVM_RUN at monotonic_ns={}", monotonic_ns());
            first = false;
        }
        let outcome = match fd.run() {
            Ok(exit) => handle_exit(id, exit, shared),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                shared.exits.interrupted.fetch_add(1, Ordering::Relaxed);
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
    let counter = match exit {
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => &s.exits.io,
        VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &s.exits.mmio,
        _ => &s.exits.other,
    };
    counter.fetch_add(1, Ordering::Relaxed);
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
    shared.gate.wake_all();
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
