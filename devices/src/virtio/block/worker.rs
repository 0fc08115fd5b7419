//! The virtio-blk worker thread: an `event_manager::EventManager` loop
//! ([`crate::virtio::run_event_loop`]) that serves the request queue on each kick and hands the
//! disk back when it stops.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{process_queue, Disk};
use crate::virtio::{drain_queue, signal_used, EmWorker, GuestMemoryMmap, Interrupt, Round};

const TOKEN_NOTIFY: u32 = 0;

/// What the thread owns while the device is active.
pub(super) struct Worker {
    pub(super) disk: Disk,
    pub(super) queue: Queue,
    pub(super) mem: GuestMemoryMmap,
    pub(super) notify: EventFd,
    pub(super) interrupt: Arc<dyn Interrupt>,
    pub(super) name: String,
}

impl Worker {
    /// Processes the queue until it is empty with notifications enabled, then interrupts the
    /// driver if it asked for it.
    fn handle_queue(&mut self) {
        let (disk, mem) = (&mut self.disk, &self.mem);
        let drain = drain_queue(&mut self.queue, mem, usize::MAX, |q| {
            Round::used(process_queue(disk, q, mem))
        });
        if drain.used && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            signal_used(self.interrupt.as_ref(), &self.name);
        }
    }
}

/// The worker thread's loop: returns the disk so a later activation can use it again.
impl EmWorker for Worker {
    type Output = Disk;
    const STOP_TOKEN: u32 = 1;

    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        // Chains made available before activation (or a kick that raced it), served before
        // the notify eventfd is watched.
        self.handle_queue();
        ops.add(Events::with_data(&self.notify, TOKEN_NOTIFY, EventSet::IN))
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == TOKEN_NOTIFY {
            // Drain the counter (a non-blocking ioeventfd may read EAGAIN: fine).
            let _ = self.notify.read();
            self.handle_queue();
        }
    }

    fn finish(self) -> Disk {
        self.disk
    }
}
