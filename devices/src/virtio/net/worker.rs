//! The virtio-net worker thread: an `event_manager::EventManager` loop
//! ([`crate::virtio::run_event_loop`]) over the two queue eventfds, the stop eventfd and the
//! tap, which it watches only for what it can act on (no reads while a frame waits for rx
//! buffers, writes only while a frame waits for the tap). It hands the backend back when it
//! stops.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{NetBackend, RxWait, TapIo, TX_ROUNDS};
use crate::virtio::{
    drain_queue, signal_used, DrainEnd, EmWorker, GuestMemoryMmap, Interrupt, Round,
};

const TOKEN_RX_NOTIFY: u32 = 0;
const TOKEN_TX_NOTIFY: u32 = 1;
/// The stop fd's token ([`EmWorker::STOP_TOKEN`]).
const TOKEN_STOP: u32 = 2;
const TOKEN_TAP: u32 = 3;

/// What the thread owns while the device is active.
pub(super) struct Worker<T: TapIo> {
    pub(super) backend: NetBackend<T>,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx_notify: EventFd,
    pub(super) tx_notify: EventFd,
    pub(super) interrupt: Arc<dyn Interrupt>,
    pub(super) tap_fd: RawFd,
    /// What the tap is registered for in epoll (empty: not registered).
    pub(super) tap_events: EventSet,
    /// Not reading the tap: a frame waits for rx buffers, or reading failed.
    pub(super) rx_paused: bool,
    /// A frame waits for the tap to become writable.
    pub(super) tx_blocked: bool,
    /// The tap reported an error condition (deleted interface): leave it alone until the
    /// guest kicks a queue.
    pub(super) tap_error: bool,
    pub(super) name: String,
}

impl<T: TapIo + AsRawFd> Worker<T> {
    fn signal(&mut self, rx: bool) {
        let q = if rx { &mut self.rx } else { &mut self.tx };
        if q.needs_notification(&self.mem).unwrap_or(true) {
            signal_used(self.interrupt.as_ref(), &self.name);
        }
    }

    fn handle_tx(&mut self, ops: &mut EventOps) {
        let (backend, mem) = (&mut self.backend, &self.mem);
        let drain = drain_queue(&mut self.tx, mem, TX_ROUNDS, |q| {
            let out = backend.process_tx(q, mem);
            Round {
                used: out.used,
                blocked: out.blocked,
            }
        });
        // Blocked: notifications stay off, the tap becoming writable resumes us.
        self.tx_blocked = drain.end == DrainEnd::Blocked;
        if drain.end == DrainEnd::Budget {
            // Let rx and the stop event have a turn; kick ourselves to come back.
            let _ = self.tx_notify.write(1);
        }
        if drain.used {
            self.signal(false);
        }
        self.update_tap_interest(ops);
    }

    fn handle_rx(&mut self, ops: &mut EventOps) {
        let backend = &mut self.backend;
        // Rx kicks are only needed while waiting for buffers.
        let _ = self.rx.disable_notification(&self.mem);
        let mut used = false;
        let mut idle_rounds = 0;
        loop {
            let before = self.rx.next_avail();
            let out = backend.process_rx(&mut self.rx, &self.mem);
            used |= out.used;
            match out.wait {
                RxWait::NeedBuffers => {
                    // Ask for a kick, then look again for buffers that raced with that.
                    let progressed = self.rx.next_avail() != before;
                    self.rx_paused = true;
                    match self.rx.enable_notification(&self.mem) {
                        Ok(true) => {
                            idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
                            if idle_rounds >= 2 {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                RxWait::TapError => {
                    if !self.rx_paused {
                        eprintln!(
                            "{}: reading tap {:?} failed; receive paused until the guest posts buffers",
                            self.name,
                            backend.tap().name()
                        );
                    }
                    self.rx_paused = true;
                    break;
                }
                RxWait::TapEmpty | RxWait::Budget => {
                    self.rx_paused = false;
                    break;
                }
            }
        }
        if used {
            self.signal(true);
        }
        self.update_tap_interest(ops);
    }

    /// Watches the tap for reading unless rx is paused, for writing while a frame waits.
    fn update_tap_interest(&mut self, ops: &mut EventOps) {
        let mut want = EventSet::empty();
        if !self.tap_error {
            if !self.rx_paused {
                want |= EventSet::IN;
            }
            if self.tx_blocked {
                want |= EventSet::OUT;
            }
        }
        if want == self.tap_events {
            return;
        }
        let ev = |set| Events::with_data_raw(self.tap_fd, TOKEN_TAP, set);
        let res = if want.is_empty() {
            ops.remove(ev(self.tap_events))
        } else if self.tap_events.is_empty() {
            ops.add(ev(want))
        } else {
            ops.modify(ev(want))
        };
        match res {
            Ok(()) => self.tap_events = want,
            Err(e) => eprintln!("{}: cannot update the tap's epoll interest: {e}", self.name),
        }
    }
}

/// The worker thread's loop: returns the backend so a later activation can use the tap again.
impl<T: TapIo + AsRawFd + Send + 'static> EmWorker for Worker<T> {
    type Output = NetBackend<T>;
    const STOP_TOKEN: u32 = TOKEN_STOP;

    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        let rx = Events::with_data(&self.rx_notify, TOKEN_RX_NOTIFY, EventSet::IN);
        let tx = Events::with_data(&self.tx_notify, TOKEN_TX_NOTIFY, EventSet::IN);
        ops.add(rx).and_then(|()| ops.add(tx))?;
        // Chains made available before activation (or kicks that raced it), and the tap.
        self.handle_tx(ops);
        self.handle_rx(ops);
        Ok(())
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_RX_NOTIFY => {
                // Drain the counter (a non-blocking ioeventfd may read EAGAIN: fine).
                let _ = self.rx_notify.read();
                self.tap_error = false;
                self.handle_rx(ops);
            }
            TOKEN_TX_NOTIFY => {
                let _ = self.tx_notify.read();
                self.tap_error = false;
                self.handle_tx(ops);
            }
            TOKEN_TAP => {
                let set = events.event_set();
                if set.intersects(EventSet::OUT) && self.tx_blocked {
                    self.handle_tx(ops);
                }
                if set.intersects(EventSet::IN) && !self.rx_paused {
                    self.handle_rx(ops);
                }
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // A deleted interface: level-triggered, this would fire forever.
                    if !self.tap_error {
                        eprintln!(
                            "{}: the tap reports an error (deleted?); not watching it until the guest kicks a queue",
                            self.name
                        );
                    }
                    self.tap_error = true;
                    self.update_tap_interest(ops);
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> NetBackend<T> {
        self.backend
    }
}
