//! Control of a running VM from another thread (the API): pause, resume, stop, status and
//! metrics. Commands travel over a channel and wake the VMM's event loop through an eventfd,
//! so the caller never touches the vCPUs or devices itself and never blocks a vCPU: the event
//! loop thread does the work and answers.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use qvm_devices::virtio::DeviceMetrics;
use serde_json::{json, Map, Value};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::vcpu::{self, VcpuShared};

/// How long pausing may take before we give up and let the vCPUs run on.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Pause,
    Resume,
    /// Stop the VM now (no guest shutdown).
    Stop,
    /// Press the ACPI power button; stop the VM if the guest has not powered off after this
    /// long.
    Shutdown(Duration),
    /// `{"state": "running"|"paused", ...}`.
    Status,
    /// Device counters and vCPU exits.
    Metrics,
    /// Let the guest read the host clipboard once (the virtio-wl policy's paste gate).
    AllowPaste,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is not running (it has stopped or is stopping)")]
    NotRunning,
    #[error("the VMM did not answer within {0:?}: it may be overloaded; try again")]
    Timeout(Duration),
    #[error("the vCPUs did not stop within {0:?}; the VM keeps running")]
    PauseFailed(Duration),
    #[error("the VM is paused: a paused guest cannot react to the power button; resume it first, or stop it")]
    Paused,
    #[error("{0}")]
    Kvm(String),
    #[error("this VM has no [wayland] device: there is no clipboard to allow a paste from")]
    NoWayland,
}

/// The paste permission of this process's virtio-wl device, set when the device is created
/// (`vm::wayland_device`); one VM per VMM process, so one gate. The controller arms it on
/// `AllowPaste`.
static PASTE_GATE: std::sync::Mutex<Option<qvm_virtio_wl::PasteGate>> = std::sync::Mutex::new(None);

pub(crate) fn set_paste_gate(gate: Option<qvm_virtio_wl::PasteGate>) {
    *PASTE_GATE.lock().unwrap_or_else(|e| e.into_inner()) = gate;
}

fn paste_gate() -> Option<qvm_virtio_wl::PasteGate> {
    PASTE_GATE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

pub type Reply = Result<Value, ControlError>;

/// The caller's end (share it behind an `Arc`; `call` takes `&self`).
#[derive(Debug)]
pub struct ControlSender {
    tx: Sender<(Command, SyncSender<Reply>)>,
    evt: EventFd,
}

impl ControlSender {
    /// Sends `cmd` to the VMM and waits up to `timeout` for the answer.
    pub fn call(&self, cmd: Command, timeout: Duration) -> Reply {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .send((cmd, reply_tx))
            .map_err(|_| ControlError::NotRunning)?;
        self.evt.write(1).map_err(|_| ControlError::NotRunning)?;
        match reply_rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ControlError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ControlError::NotRunning),
        }
    }
}

/// The VMM's end: handed to [`crate::vm::run_with_control`].
#[derive(Debug)]
pub struct ControlChannel {
    rx: Receiver<(Command, SyncSender<Reply>)>,
    evt: EventFd,
}

pub fn channel() -> std::io::Result<(ControlSender, ControlChannel)> {
    let evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let (tx, rx) = mpsc::channel();
    Ok((
        ControlSender {
            tx,
            evt: evt.try_clone()?,
        },
        ControlChannel { rx, evt },
    ))
}

/// The event-loop side: owns what pause/resume/metrics need.
pub(crate) struct Controller {
    chan: ControlChannel,
    vm: Arc<VmFd>,
    shared: Arc<VcpuShared>,
    threads: Vec<libc::pthread_t>,
    devices: Vec<(String, Arc<dyn DeviceMetrics>)>,
    /// The guest clock when it was paused (restored at resume, so paused time is not seen).
    clock: Option<kvm_clock_data>,
    started: Instant,
    paused_for: Duration,
    paused_at: Option<Instant>,
    /// Pressed by `Shutdown` (an irqfd on the GED's GSI).
    power_button: EventFd,
    /// Fires when a shutdown's grace time is over.
    shutdown_timer: Option<TimerFd>,
    shutdown_grace: Option<Duration>,
    pub stop_requested: bool,
}

impl Controller {
    pub(crate) fn new(
        chan: ControlChannel,
        vm: Arc<VmFd>,
        shared: Arc<VcpuShared>,
        threads: Vec<libc::pthread_t>,
        devices: Vec<(String, Arc<dyn DeviceMetrics>)>,
        power_button: EventFd,
    ) -> Self {
        let shutdown_timer = match TimerFd::new() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!(
                    "qvm-vmm: no timer for shutdown timeouts ({e}): shutdown will not force a stop"
                );
                None
            }
        };
        Controller {
            power_button,
            shutdown_timer,
            shutdown_grace: None,
            chan,
            vm,
            shared,
            threads,
            devices,
            clock: None,
            started: Instant::now(),
            paused_for: Duration::ZERO,
            paused_at: None,
            stop_requested: false,
        }
    }

    fn handle(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Pause => self.pause(),
            Command::Resume => self.resume(),
            Command::Stop => {
                self.stop_requested = true;
                Ok(Value::Null)
            }
            Command::Shutdown(grace) => self.shutdown(grace),
            Command::Status => Ok(self.status()),
            Command::Metrics => Ok(self.metrics()),
            Command::AllowPaste => {
                let gate = paste_gate().ok_or(ControlError::NoWayland)?;
                gate.allow(qvm_virtio_wl::PASTE_WINDOW);
                Ok(json!({"expires_s": qvm_virtio_wl::PASTE_WINDOW.as_secs()}))
            }
        }
    }

    fn pause(&mut self) -> Reply {
        if self.paused_at.is_some() {
            return Ok(Value::Null);
        }
        let gate = &self.shared.gate;
        gate.set_paused(true);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            for &t in &self.threads {
                vcpu::kick(t);
            }
            if gate.wait_parked(self.threads.len(), Duration::from_millis(5)) {
                break;
            }
            if Instant::now() > deadline || self.shared.stop.load(Ordering::Acquire) {
                gate.set_paused(false);
                return Err(ControlError::PauseFailed(PAUSE_TIMEOUT));
            }
        }
        // Every vCPU is parked: freeze the guest's clock (kvmclock) where it is.
        match self.vm.get_clock() {
            Ok(c) => self.clock = Some(c),
            Err(e) => eprintln!(
                "qvm-vmm: pause: KVM_GET_CLOCK failed ({e}); the guest will see the paused time"
            ),
        }
        self.paused_at = Some(Instant::now());
        Ok(Value::Null)
    }

    fn resume(&mut self) -> Reply {
        let Some(at) = self.paused_at.take() else {
            return Ok(Value::Null);
        };
        self.paused_for += at.elapsed();
        if let Some(mut c) = self.clock.take() {
            // KVM_SET_CLOCK takes no flags but KVM_CLOCK_REALTIME, which we do not use.
            c.flags = 0;
            if let Err(e) = self.vm.set_clock(&c) {
                eprintln!("qvm-vmm: resume: KVM_SET_CLOCK failed ({e}); the guest will see the paused time");
            }
        }
        self.shared.gate.set_paused(false);
        Ok(Value::Null)
    }

    fn shutdown(&mut self, grace: Duration) -> Reply {
        if self.paused_at.is_some() {
            return Err(ControlError::Paused);
        }
        self.power_button
            .write(1)
            .map_err(|e| ControlError::Kvm(format!("cannot press the power button: {e}")))?;
        eprintln!(
            "qvm-vmm: shutdown: pressed the ACPI power button; stopping the VM in {}s unless the guest powers off",
            grace.as_secs_f64()
        );
        if let Some(t) = self.shutdown_timer.as_mut() {
            // A second shutdown restarts the grace time (and presses again).
            if let Err(e) = t.reset(grace.max(Duration::from_millis(1)), None) {
                eprintln!("qvm-vmm: shutdown: cannot arm the timer ({e}); no forced stop");
            }
        }
        self.shutdown_grace = Some(grace);
        Ok(Value::Null)
    }

    fn status(&self) -> Value {
        let paused = self.paused_at.is_some();
        let mut paused_for = self.paused_for;
        if let Some(at) = self.paused_at {
            paused_for += at.elapsed();
        }
        json!({
            "state": if paused { "paused" } else { "running" },
            "vcpus": self.threads.len(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "paused_ms": paused_for.as_millis() as u64,
        })
    }

    fn metrics(&self) -> Value {
        let counters = |c: Vec<(&'static str, u64)>| {
            Value::Object(
                c.into_iter()
                    .map(|(k, v)| (k.to_string(), Value::from(v)))
                    .collect::<Map<_, _>>(),
            )
        };
        let devices: Map<String, Value> = self
            .devices
            .iter()
            .map(|(name, m)| (name.clone(), counters(m.counters())))
            .collect();
        let mut status = self.status();
        if let Value::Object(o) = &mut status {
            o.insert("vcpu_exits".into(), counters(self.shared.exits.counters()));
            o.insert("devices".into(), Value::Object(devices));
        }
        status
    }
}

impl MutEventSubscriber for Controller {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.chan.evt, EventSet::IN)) {
            eprintln!("qvm-vmm: cannot watch the API channel: {e:?}");
        }
        if let Some(t) = &self.shutdown_timer {
            if let Err(e) = ops.add(Events::new(t, EventSet::IN)) {
                eprintln!("qvm-vmm: cannot watch the shutdown timer: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if let Some(t) = self.shutdown_timer.as_mut() {
            if events.fd() == t.as_raw_fd() {
                let _ = t.wait();
                let grace = self.shutdown_grace.unwrap_or_default();
                eprintln!(
                    "qvm-vmm: shutdown: the guest did not power off within {}s; stopping the VM",
                    grace.as_secs_f64()
                );
                self.stop_requested = true;
                return;
            }
        }
        if events.fd() != self.chan.evt.as_raw_fd() {
            return;
        }
        let _ = self.chan.evt.read();
        while let Ok((cmd, reply)) = self.chan.rx.try_recv() {
            let r = self.handle(cmd);
            // The caller may have timed out and gone: nothing to do then.
            let _ = reply.try_send(r);
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Never leave vCPUs parked behind us.
        self.shared.gate.set_paused(false);
    }
}
