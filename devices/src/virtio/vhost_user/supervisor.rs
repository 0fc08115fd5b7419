//! The supervisor thread of an active vhost-user device: it forwards the backend's call
//! eventfds as interrupts and watches the socket for a hang-up; while the backend is gone
//! (standby) it serves the rings itself through the device's [`StandbyResponder`] and tries the
//! socket again every [`RECONNECT_INTERVAL`], handing the rings to a backend that answers.

use std::fmt::Display;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::VringConfigData;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    connect_and_setup, lock, memory_table, FrontendConfig, Handover, SetupFailure, Shared,
    SharedSession, StandbyResponder,
};
use crate::virtio::{
    bump, run_epoll_loop, EpollWorker, GuestMemoryMmap, Interrupt, InterruptKind, WorkerStop,
    WorkerThread,
};

const TOKEN_STOP: u64 = u64::MAX;
const TOKEN_SOCKET: u64 = u64::MAX - 1;
/// Kick eventfd of queue i: `TOKEN_KICK + i` (calls are plain `i`).
const TOKEN_KICK: u64 = 1 << 32;

/// How often a standby device tries to reach its backend again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the supervisor thread of an active device (thread `vhost-user <label>`), after
/// registering everything it watches, and in standby after taking the rings over.
pub(super) fn start_supervisor(
    mut state: SupervisorLoop,
    standby: bool,
) -> io::Result<WorkerThread<()>> {
    let stop = WorkerStop::new()?;
    state.epoll.ctl(
        ControlOperation::Add,
        stop.worker_fd().as_raw_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_STOP),
    )?;
    for (i, call) in state.calls.iter().enumerate() {
        state.epoll.ctl(
            ControlOperation::Add,
            call.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    if let Some(sock) = &state.sock {
        watch_hang_up(&state.epoll, sock)?;
    }
    if standby {
        state.enter_standby()?;
    }
    let name = format!("vhost-user {}", state.shared.label);
    stop.spawn(&name, move |stop| run_epoll_loop(state, stop))
}

fn watch_hang_up(epoll: &Epoll, sock: &UnixStream) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        sock.as_raw_fd(),
        EpollEvent::new(
            EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
            TOKEN_SOCKET,
        ),
    )
}

/// The supervisor: forwards the backend's calls as interrupts, watches the socket, and while
/// the backend is gone serves the rings itself (every request answered with an error by the
/// device's [`StandbyResponder`]) and tries to reconnect every [`RECONNECT_INTERVAL`].
pub(super) struct SupervisorLoop {
    pub(super) epoll: Epoll,
    pub(super) rings: Vec<VringConfigData>,
    /// Each queue with its kick eventfd (KVM's ioeventfd; the backend's SET_VRING_KICK fd).
    pub(super) queues: Vec<(Queue, EventFd)>,
    pub(super) calls: Vec<EventFd>,
    pub(super) sock: Option<UnixStream>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<dyn Interrupt>,
    pub(super) responder: Arc<dyn StandbyResponder>,
    pub(super) session: SharedSession,
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: FrontendConfig,
    pub(super) acked: u64,
    pub(super) standby: bool,
    pub(super) next_try: Instant,
    /// A failed reconnect is logged once per standby period.
    pub(super) warned_reconnect: bool,
}

/// The supervisor thread's loop ([`run_epoll_loop`]; it stops at [`TOKEN_STOP`]).
impl EpollWorker for SupervisorLoop {
    const STOP_TOKEN: u64 = TOKEN_STOP;

    fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    fn max_events(&self) -> usize {
        2 * self.calls.len() + 2
    }

    /// In standby, until the next reconnect attempt.
    fn timeout_ms(&self) -> i32 {
        if self.standby {
            let left = self.next_try.saturating_duration_since(Instant::now());
            i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
        } else {
            -1
        }
    }

    fn event(&mut self, ev: &EpollEvent) {
        match ev.data() {
            TOKEN_SOCKET => {
                self.shared.backend_lost(&"the socket hung up");
                if let Err(e) = self.enter_standby() {
                    eprintln!(
                        "{}: cannot serve the rings while the backend is gone: {e}",
                        self.shared.label
                    );
                }
            }
            t if t >= TOKEN_KICK => {
                if let Some(i) = usize::try_from(t - TOKEN_KICK)
                    .ok()
                    .filter(|&i| i < self.queues.len())
                {
                    let _ = self.queues[i].1.read();
                    if self.standby {
                        self.fail_queue(i);
                    }
                }
            }
            i => self.forward(i),
        }
    }

    /// After every wait, also one that timed out: time to try the socket again?
    fn after_events(&mut self) {
        if self.standby && Instant::now() >= self.next_try {
            self.try_reconnect();
            self.next_try = Instant::now() + RECONNECT_INTERVAL;
        }
    }
}

impl SupervisorLoop {
    fn forward(&self, index: u64) {
        let Some(call) = usize::try_from(index).ok().and_then(|i| self.calls.get(i)) else {
            return;
        };
        // Non-blocking: consumes the count (EAGAIN if a racing read took it; still forward).
        let _ = call.read();
        self.raise();
    }

    fn raise(&self) {
        let stats = &self.shared.stats;
        match self.interrupt.trigger(InterruptKind::Queue) {
            Ok(()) => bump(&stats.interrupts, 1),
            Err(_) => bump(&stats.interrupt_errors, 1),
        }
    }

    /// The backend is gone: drop the connection, take the rings over where the backend left
    /// them, answer what is pending, and watch the kicks ourselves.
    fn enter_standby(&mut self) -> io::Result<()> {
        *lock(&self.session) = None;
        if let Some(sock) = self.sock.take() {
            // Level-triggered: stop watching, or the hang-up spins the loop.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                sock.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        if self.standby {
            return Ok(());
        }
        self.standby = true;
        self.warned_reconnect = false;
        self.next_try = Instant::now() + RECONNECT_INTERVAL;
        for i in 0..self.queues.len() {
            // What the backend consumed but never completed is lost with it: restart at the
            // used index, so every request not yet answered is answered now (this assumes the
            // backend completed in order, as virtiofsd without a thread pool does).
            let (q, kick) = &mut self.queues[i];
            if let Ok(used) = q.used_idx(&self.mem, Ordering::Acquire) {
                q.set_next_avail(used.0);
                q.set_next_used(used.0);
            }
            self.epoll.ctl(
                ControlOperation::Add,
                kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_KICK + i as u64),
            )?;
            self.fail_queue(i);
        }
        Ok(())
    }

    /// Answers every available request on queue `i` with the device's error reply.
    fn fail_queue(&mut self, i: usize) {
        let mem = &self.mem;
        let (q, _) = &mut self.queues[i];
        let mut used = false;
        loop {
            let _ = q.disable_notification(mem);
            let mut progressed = false;
            for _ in 0..q.size() {
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    break;
                };
                progressed = true;
                let head = chain.head_index();
                let len = self.responder.fail_request(i, mem, chain);
                if q.add_used(mem, head, len).is_ok() {
                    used = true;
                    bump(&self.shared.stats.failed_requests, 1);
                }
            }
            // Re-arms the notification (avail_event with EVENT_IDX); true if more arrived. A
            // guest can make that true forever (an avail index more than a ring ahead, which
            // pops nothing): go on only while chains come off the ring.
            match q.enable_notification(mem) {
                Ok(true) if progressed => continue,
                _ => break,
            }
        }
        if used && q.needs_notification(mem).unwrap_or(true) {
            self.raise();
        }
    }

    /// Hands the rings to a backend listening on the socket again, if there is one.
    fn try_reconnect(&mut self) {
        let regions = match memory_table(&self.mem, &self.cfg.label) {
            Ok(r) => r,
            Err(e) => return self.warn_reconnect(&e),
        };
        let bases: Vec<u16> = self.queues.iter().map(|(q, _)| q.next_avail()).collect();
        let kicks: Vec<&EventFd> = self.queues.iter().map(|(_, k)| k).collect();
        let handover = Handover {
            acked: self.acked,
            regions: &regions,
            rings: &self.rings,
            bases: &bases,
            kicks: &kicks,
            calls: &self.calls,
        };
        let session = match connect_and_setup(&self.cfg, &handover) {
            Ok(s) => s,
            Err(SetupFailure::Unreachable(_)) => return,
            Err(SetupFailure::Refused(why)) => return self.warn_reconnect(&why),
        };
        let sock = match session.sock.try_clone() {
            Ok(s) => s,
            Err(e) => return self.warn_reconnect(&e),
        };
        if let Err(e) = watch_hang_up(&self.epoll, &sock) {
            return self.warn_reconnect(&e);
        }
        for (_, kick) in &self.queues {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                kick.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        *lock(&self.session) = Some(session);
        self.sock = Some(sock);
        self.standby = false;
        self.shared.lost.store(false, Ordering::SeqCst);
        bump(&self.shared.stats.connects, 1);
        eprintln!(
            "{}: vhost-user backend on {} is back; the rings are handed to it at the requests it has not seen (its state is new: a virtio-fs guest must mount the share again)",
            self.shared.label,
            self.cfg.socket.display()
        );
        // Anything the guest posted since our last look is the backend's now: make it look.
        for (_, kick) in &self.queues {
            let _ = kick.write(1);
        }
    }

    fn warn_reconnect(&mut self, why: &dyn Display) {
        if !self.warned_reconnect {
            self.warned_reconnect = true;
            eprintln!(
                "{}: something listens on {} but cannot take the device over ({why}); retrying every {}s",
                self.shared.label,
                self.cfg.socket.display(),
                RECONNECT_INTERVAL.as_secs()
            );
        }
    }
}
