//! virtio-vsock (virtio 1.2, section 5.10) with a unix-socket host side, following
//! Firecracker's convention.
//!
//! Host side protocol, for a device created with `uds_path = /run/vm.vsock`:
//!
//! - host -> guest: connect to `/run/vm.vsock` and send `CONNECT <port>\n` (decimal u32, at
//!   most 32 bytes before the newline; a `\r` before it is tolerated). The device picks a host
//!   port (from 2^30 up) and asks the guest to accept. If the guest accepts, the device writes
//!   `OK <hostport>\n` and the socket then carries the stream. If the guest refuses, does not
//!   answer within 2 s, or the line is malformed (or not sent within 10 s), the socket is
//!   closed without a reply.
//! - guest -> host: a guest connecting to CID 2, port P is connected to the unix socket
//!   `/run/vm.vsock_P`; if nothing listens there the guest gets a reset (ECONNRESET).
//! - closing: the host closing its socket is seen by the guest as the peer shutting down both
//!   directions; the guest shutting down or closing is seen by the host as shutdown(2) of the
//!   matching direction, then close. A host peer that dies mid-stream resets the guest's
//!   connection.
//!
//! Layers, as in virtio-blk: [`muxer::Muxer`] holds the connections and does all the protocol
//! work, driven by plain calls (tests drive it without threads); [`Vsock`] is the
//! [`VirtioDevice`] (through [`VirtioDeviceBase`]) whose worker thread runs an
//! `event_manager::EventManager` ([`super::worker::run_event_loop`]) over the queue eventfds,
//! a stop eventfd, a timer, the listener and every connection socket.
//!
//! Flow control: the device never sends the guest more than its advertised credit; host
//! sockets whose guest side has no credit (or while the guest posts no rx buffers) are not
//! read, so the host peer sees backpressure. Guest data the host peer does not take at once
//! is buffered up to the 256 KiB per connection we advertise, which a well-behaved guest
//! cannot exceed; one that does is reset.

pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;
pub mod unix;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use self::muxer::{Muxer, Watcher, LISTENER_TOKEN};
use super::{
    drain_queue, signal_used, split_queues, ActivateError, Activation, EmWorker, GuestMemoryMmap,
    Interrupt, Round, VirtioCommon, VirtioDevice, VirtioDeviceBase, WorkerStop, WorkerThread,
    TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

/// Size (and maximum) of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const NUM_QUEUES: usize = 3;
/// Config space: `guest_cid`, le64.
pub const CONFIG_SIZE: usize = 8;

const VIRTIO_RING_F_EVENT_IDX_BIT: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

/// What the device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id: 3 to 4294967294.
    pub guest_cid: u64,
    /// The host listener; guest->host connections to port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

/// Why the device cannot be created. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock guest_cid {0} is reserved: use a value from 3 to 4294967294 (0-2 are the hypervisor, local and host; 4294967295 means any)")]
    InvalidCid(u64),
    #[error("vsock socket path {path:?} is {len} bytes; it must be 1 to {max} bytes so that `<path>_<port>` fits in a unix socket address: use a shorter path")]
    PathLength {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("vsock socket {path:?} is in use by a live listener (another VM?): stop it or choose another path")]
    InUse { path: PathBuf },
    #[error("vsock socket path {path:?} exists and is a {kind}, not a socket: remove it or choose another path")]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("the directory of vsock socket {path:?} does not exist: create it first")]
    NoDirectory { path: PathBuf },
    #[error("permission denied creating vsock socket {path:?}: make its directory writable for the VMM's user, or choose another path")]
    PermissionDenied { path: PathBuf },
    #[error("cannot {op} vsock socket {path:?}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

crate::virtio::device_stats! {
    /// Counters, updated by the worker and readable at any time.
    pub struct VsockStats / VsockStatsSnapshot {
        /// Packets written into the guest's rx buffers, and their payload bytes.
        rx_packets,
        rx_bytes,
        /// Well-formed packets from the guest (with its own CID), and RW payload bytes.
        tx_packets,
        tx_bytes,
        /// Connections that became established, and established ones closed since.
        connections_opened,
        connections_closed,
        /// RSTs sent to the guest.
        resets_sent,
        /// Packets ignored: wrong source CID, credit exceeded, RST replies that did not fit.
        dropped_packets,
        /// Chains that could not be parsed (either queue); they are returned with length 0.
        malformed_packets,
        /// Guest connects that found no listener at `<uds_path>_<port>` (or hit the limit).
        guest_connect_failures,
        /// Host connections closed at once because of the connection limit.
        host_connections_refused,
        /// Host connections closed for a malformed `CONNECT <port>` line.
        bad_connect_lines,
    }
}

// ---------------------------------------------------------------------------------------------
// The virtio device
// ---------------------------------------------------------------------------------------------

/// The virtio-vsock device.
pub struct Vsock {
    /// Named `virtio-vsock-<cid>`, also the worker thread's name; config space: `guest_cid`.
    common: VirtioCommon,
    /// Parked here while no worker runs; the worker owns it while active.
    muxer: Option<Muxer>,
    stats: Arc<VsockStats>,
    guest_cid: u64,
    uds_path: PathBuf,
    /// (dev, inode) of the socket file we bound, to remove it on drop only if still ours.
    socket_id: Option<(u64, u64)>,
    worker: Option<WorkerThread<Option<Muxer>>>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("active", &self.common.is_active())
            .finish()
    }
}

impl Vsock {
    /// Validates `cfg` and binds the host listener at `uds_path` (see [`VsockError`]).
    pub fn new(cfg: VsockConfig) -> Result<Vsock, VsockError> {
        let stats = Arc::new(VsockStats::default());
        let muxer = Muxer::new(&cfg, stats.clone())?;
        let socket_id = std::fs::symlink_metadata(&cfg.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        // guest_cid is read-only: config writes are ignored.
        let common = VirtioCommon::new(
            format!("virtio-vsock-{}", cfg.guest_cid),
            TYPE_VSOCK,
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX_BIT,
            &[QUEUE_SIZE; NUM_QUEUES],
        )
        .with_config(&cfg.guest_cid.to_le_bytes())
        .with_metrics(stats.clone());
        Ok(Vsock {
            common,
            muxer: Some(muxer),
            stats,
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path,
            socket_id,
            worker: None,
        })
    }

    /// Packet and connection counters (shared with the worker).
    pub fn stats(&self) -> &VsockStats {
        &self.stats
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &std::path::Path {
        &self.uds_path
    }

    /// The worker thread's name.
    pub fn name(&self) -> &str {
        self.common.name()
    }

    pub fn is_active(&self) -> bool {
        self.common.is_active()
    }
}

impl VirtioDeviceBase for Vsock {
    crate::virtio_common_accessors!(common);

    fn stop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        match worker.stop() {
            Some(Some(mut muxer)) => {
                // A reloaded driver starts from scratch: drop every connection.
                muxer.reset();
                self.muxer = Some(muxer);
            }
            Some(None) => eprintln!("{}: the worker lost the connection state", self.name()),
            // A panic, logged by WorkerThread::stop.
            None => {}
        }
    }

    fn start(&mut self, act: Activation) -> Result<(), ActivateError> {
        let ([rxq, txq, evq], notify) = split_queues(act.queues)?;
        let stop = WorkerStop::new().map_err(ActivateError::Worker)?;
        let timer = TimerFd::new().map_err(|e| ActivateError::Worker(e.into()))?;
        let Some(muxer) = self.muxer.take() else {
            return Err(ActivateError::Other(format!(
                "{}: the connection state was lost when an earlier worker died; recreate the device",
                self.common.name()
            )));
        };
        let worker = Worker {
            muxer,
            mem: act.mem,
            rxq,
            txq,
            _evq: evq,
            notify,
            timer,
            timer_armed_for: None,
            interrupt: act.interrupt,
            name: self.common.name().to_string(),
        };
        // If spawning fails the muxer (and the listener) is lost: only when the host is out
        // of threads.
        let thread = stop.spawn_event_loop(self.common.name(), worker);
        self.worker = Some(thread.map_err(ActivateError::Worker)?);
        Ok(())
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        drop(self.muxer.take());
        // Remove the socket file if it is still the one we bound.
        let ours = std::fs::symlink_metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The worker
// ---------------------------------------------------------------------------------------------

const TOKEN_RX: u32 = 0;
const TOKEN_TX: u32 = 1;
const TOKEN_EVENT: u32 = 2;
/// The stop fd's token ([`EmWorker::STOP_TOKEN`]; the muxer owns 8 and 16 up).
const TOKEN_STOP: u32 = 3;
const TOKEN_TIMER: u32 = 4;

/// The event manager's [`Watcher`].
struct OpsWatcher<'a, 'b>(&'a mut EventOps<'b>);

fn em_error(e: event_manager::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Watcher for OpsWatcher<'_, '_> {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.0
            .add(Events::with_data_raw(fd, token, events))
            .map_err(em_error)
    }

    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.0
            .modify(Events::with_data_raw(fd, token, events))
            .map_err(em_error)
    }

    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.0.remove(Events::empty_raw(fd)).map_err(em_error)
    }
}

struct Worker {
    muxer: Muxer,
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    /// Held, not used: no event is ever sent.
    _evq: Queue,
    notify: [EventFd; NUM_QUEUES],
    timer: TimerFd,
    timer_armed_for: Option<Instant>,
    interrupt: Arc<dyn Interrupt>,
    name: String,
}

impl Worker {
    /// Processes the tx queue until it is empty with notifications enabled.
    fn handle_tx(&mut self, now: Instant) -> bool {
        let (muxer, mem) = (&mut self.muxer, &self.mem);
        let drain = drain_queue(&mut self.txq, mem, usize::MAX, |q| {
            Round::used(muxer.process_tx(q, mem, now))
        });
        drain.used
    }

    /// After any event: deliver what is pending, update the watched sockets and the timer,
    /// interrupt the driver if it asked for it.
    fn service(&mut self, ops: &mut EventOps, used_tx: bool, timer_fired: bool) {
        let now = Instant::now();
        let mut used_rx = self.muxer.process_rx(&mut self.rxq, &self.mem, now);
        self.muxer.sync_interest(&mut OpsWatcher(ops));
        if self.muxer.has_rx_work() {
            // Registration failures reset connections; tell the guest now.
            used_rx |= self.muxer.process_rx(&mut self.rxq, &self.mem, now);
        }
        self.muxer.sync_interest(&mut OpsWatcher(ops));

        let next = self.muxer.next_deadline();
        if timer_fired || next != self.timer_armed_for {
            // Re-arming also clears a fired timer (it is never read).
            let dur = next.map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            if let Err(e) = self.timer.reset(dur, None) {
                eprintln!("{}: cannot arm the timer: {e}", self.name);
            }
            self.timer_armed_for = next;
        }

        let mut notify = false;
        if used_rx {
            notify |= self.rxq.needs_notification(&self.mem).unwrap_or(true);
        }
        if used_tx {
            notify |= self.txq.needs_notification(&self.mem).unwrap_or(true);
        }
        if notify {
            signal_used(self.interrupt.as_ref(), &self.name);
        }
    }
}

/// The worker thread's loop: returns the muxer so a later activation can use it again.
impl EmWorker for Worker {
    type Output = Muxer;
    const STOP_TOKEN: u32 = TOKEN_STOP;

    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        let fds: [(RawFd, u32); 4] = [
            (self.notify[RX_QUEUE].as_raw_fd(), TOKEN_RX),
            (self.notify[TX_QUEUE].as_raw_fd(), TOKEN_TX),
            (self.notify[EVENT_QUEUE].as_raw_fd(), TOKEN_EVENT),
            (self.timer.as_raw_fd(), TOKEN_TIMER),
        ];
        for (fd, token) in fds {
            ops.add(Events::with_data_raw(fd, token, EventSet::IN))?;
        }
        // Chains made available before activation (or a kick that raced it).
        let used_tx = self.handle_tx(Instant::now());
        self.service(ops, used_tx, false);
        Ok(())
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        let mut used_tx = false;
        let mut timer_fired = false;
        match events.data() {
            TOKEN_RX => {
                // More rx buffers: delivered below. (A non-blocking read may see EAGAIN.)
                let _ = self.notify[RX_QUEUE].read();
            }
            TOKEN_TX => {
                let _ = self.notify[TX_QUEUE].read();
                used_tx = self.handle_tx(now);
            }
            TOKEN_EVENT => {
                let _ = self.notify[EVENT_QUEUE].read();
            }
            TOKEN_TIMER => {
                timer_fired = true;
                self.muxer.expire(now);
            }
            LISTENER_TOKEN => self.muxer.accept_host_connections(now),
            token => self.muxer.handle_conn_event(token, events.event_set(), now),
        }
        self.service(ops, used_tx, timer_fired);
    }

    fn finish(self) -> Muxer {
        self.muxer
    }
}
