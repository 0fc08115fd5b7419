//! Device worker threads: the one place that spawns them, stops them and runs their loops.
//!
//! - [`WorkerStop`] is the stop eventfd of a worker about to start; [`WorkerStop::spawn`] is
//!   the only way a device starts a thread, and the thread's first call is
//!   [`crate::sandbox::worker_started`] (the VMM installs the device threads' seccomp filter
//!   there, before the thread touches a queue).
//! - [`WorkerThread::stop`] writes the stop eventfd, *then* joins, and hands back what the
//!   thread returned (the backend a later activation reuses); a panic is logged, never
//!   propagated.
//! - Two loop flavours: [`run_event_loop`] runs an `event_manager::EventManager` over an
//!   [`EmWorker`] (block, net, vsock: u32 tokens, subscriber-style), [`run_epoll_loop`] waits
//!   on an epoll an [`EpollWorker`] owns (virtio-wl, whose state owns the epoll; the
//!   vhost-user supervisor, which needs a timeout). Both stop at their stop token and drop the
//!   worker inside the thread.
//! - [`drain_queue`] serves a queue until it is empty with notifications on, and gives up on an
//!   avail index that keeps saying "more" without anything to pop (block, vsock tx, net tx).
//!
//! Nothing here spawns from inside a worker: the device seccomp filter has no thread creation.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{Epoll, EpollEvent};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMemoryMmap, Interrupt, InterruptKind};

/// The stop eventfd of a worker about to start (both ends non-blocking: a full counter still
/// wakes the worker).
#[derive(Debug)]
pub struct WorkerStop {
    /// Kept by the [`WorkerThread`], written to stop.
    handle: EventFd,
    /// Handed to the thread as a [`StopFd`].
    worker: EventFd,
}

/// The worker's end of the stop eventfd, given to the thread body. It owns the fd the loop
/// (or a worker's epoll, or its bounded waits) watches, so it must outlive every user of the
/// raw fd: the loops drop the worker first.
#[derive(Debug)]
pub struct StopFd {
    fd: EventFd,
    name: Arc<str>,
}

impl StopFd {
    /// The thread's name (the prefix of the loops' log lines).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for StopFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl WorkerStop {
    pub fn new() -> io::Result<WorkerStop> {
        let worker = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let handle = worker.try_clone()?;
        Ok(WorkerStop { handle, worker })
    }

    /// The worker's end, to register in an epoll the device owns before spawning (so that a
    /// failure is still an activation error).
    pub fn worker_fd(&self) -> &EventFd {
        &self.worker
    }

    /// Spawns thread `name`, whose first call is [`crate::sandbox::worker_started`], then
    /// `body`. If spawning fails, `body` and everything it captured is dropped.
    pub fn spawn<R, F>(self, name: &str, body: F) -> io::Result<WorkerThread<R>>
    where
        R: Send + 'static,
        F: FnOnce(StopFd) -> R + Send + 'static,
    {
        let name: Arc<str> = Arc::from(name);
        let stop = StopFd {
            fd: self.worker,
            name: name.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                crate::sandbox::worker_started();
                body(stop)
            })?;
        Ok(WorkerThread {
            name,
            stop: self.handle,
            thread: Some(thread),
        })
    }

    /// Spawns thread `name` running `worker` in [`run_event_loop`].
    pub fn spawn_event_loop<W: EmWorker>(
        self,
        name: &str,
        worker: W,
    ) -> io::Result<WorkerThread<Option<W::Output>>> {
        self.spawn(name, move |stop| run_event_loop(worker, stop))
    }
}

/// A running worker thread returning `R`.
#[derive(Debug)]
pub struct WorkerThread<R> {
    name: Arc<str>,
    stop: EventFd,
    thread: Option<JoinHandle<R>>,
}

impl<R> WorkerThread<R> {
    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the stop eventfd, then joins the thread: what it returned, or None if it
    /// panicked (logged as `<name>: worker thread panicked`).
    pub fn stop(mut self) -> Option<R> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<R> {
        let thread = self.thread.take()?;
        // A full non-blocking eventfd still wakes the worker; ignore the error.
        let _ = self.stop.write(1);
        match thread.join() {
            Ok(r) => Some(r),
            Err(_) => {
                eprintln!("{}: worker thread panicked", self.name);
                None
            }
        }
    }
}

impl<R> Drop for WorkerThread<R> {
    /// Stops and joins the thread as [`WorkerThread::stop`] does, dropping what it returned: a
    /// device dropped while active stops its worker this way (a device that must do more on
    /// drop, e.g. clear its tap's offloads, implements Drop and resets itself).
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Raises the queue interrupt; a failure is logged as `<name>: cannot raise the queue
/// interrupt: ...` (the driver then only sees the used ring when it polls).
pub fn signal_used(interrupt: &dyn Interrupt, name: &str) {
    if let Err(e) = interrupt.trigger(InterruptKind::Queue) {
        eprintln!("{name}: cannot raise the queue interrupt: {e}");
    }
}

/// What one round of [`drain_queue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Used entries were added.
    pub used: bool,
    /// The device cannot go on now (net: the tap would block): the drain ends and leaves
    /// notifications off, the device resumes on its own event.
    pub blocked: bool,
}

impl Round {
    /// A round that was not blocked; `used` says whether it added used entries.
    pub fn used(used: bool) -> Round {
        Round {
            used,
            blocked: false,
        }
    }
}

/// How [`drain_queue`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Empty with notifications on: the next kick resumes.
    Empty,
    /// Two rounds in a row popped nothing while notifications said more was there: a broken
    /// (hostile) avail index says that forever, so the drain gives up until the next kick.
    Idle,
    /// A round was blocked; notifications stay off.
    Blocked,
    /// `max_rounds` rounds found more every time: the caller lets other events have a turn
    /// (and kicks itself to come back).
    Budget,
}

/// What [`drain_queue`] did: whether any round added used entries, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub used: bool,
    pub end: DrainEnd,
}

/// Serves `queue` round by round until it is empty with notifications enabled. Each round
/// disables notifications, lets `round` pop and serve what is available, then enables them
/// again (which also says whether more arrived meanwhile). The guard every device needs
/// against a guest: an avail index that makes "more arrived" true without anything to pop
/// ends the drain at the second such round in a row ([`DrainEnd::Idle`]).
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    max_rounds: usize,
    mut round: impl FnMut(&mut Queue) -> Round,
) -> Drain {
    let mut used = false;
    let mut idle_rounds = 0;
    let mut rounds = 0;
    loop {
        let _ = queue.disable_notification(mem);
        let before = queue.next_avail();
        let r = round(queue);
        used |= r.used;
        if r.blocked {
            return Drain {
                used,
                end: DrainEnd::Blocked,
            };
        }
        let progressed = queue.next_avail() != before;
        let end = match queue.enable_notification(mem) {
            Ok(true) => {
                // More arrived (or the avail index is broken).
                idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
                rounds += 1;
                if idle_rounds >= 2 {
                    DrainEnd::Idle
                } else if rounds >= max_rounds {
                    DrainEnd::Budget
                } else {
                    continue;
                }
            }
            _ => DrainEnd::Empty,
        };
        return Drain { used, end };
    }
}

/// A worker run by [`run_event_loop`]. The loop registers the stop fd under
/// [`EmWorker::STOP_TOKEN`] and stops on it; the worker sees every other event.
pub trait EmWorker: Send + 'static {
    /// What the thread returns (what a later activation reuses).
    type Output: Send + 'static;
    /// The stop fd's token: must not collide with any of the worker's.
    const STOP_TOKEN: u32;
    /// Registers the worker's fds (the stop fd is already registered) and may serve what is
    /// already pending. An error is logged as `<name>: cannot watch the device eventfds: ...`
    /// and the worker stops.
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error>;
    /// Every event but the stop token.
    fn process(&mut self, events: Events, ops: &mut EventOps);
    /// What the thread returns once the loop is done.
    fn finish(self) -> Self::Output;
}

/// The subscriber [`run_event_loop`] gives the event manager: the worker plus the stop fd.
struct EmLoop<W: EmWorker> {
    worker: W,
    stop: StopFd,
    stopping: bool,
}

impl<W: EmWorker> MutEventSubscriber for EmLoop<W> {
    fn init(&mut self, ops: &mut EventOps) {
        let stop = Events::with_data(&self.stop, W::STOP_TOKEN, EventSet::IN);
        if let Err(e) = ops.add(stop).and_then(|()| self.worker.init(ops)) {
            eprintln!("{}: cannot watch the device eventfds: {e}", self.stop.name);
            // Without its fds the worker would wait forever (or nobody could stop it).
            self.stopping = true;
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == W::STOP_TOKEN {
            self.stopping = true;
        } else {
            self.worker.process(events, ops);
        }
    }
}

/// Runs `worker` in an event manager until the stop fd fires (or the loop fails), then
/// returns [`EmWorker::finish`]; None only if the event manager lost the worker (it cannot).
pub fn run_event_loop<W: EmWorker>(worker: W, stop: StopFd) -> Option<W::Output> {
    let name = stop.name.clone();
    let mut em = match EventManager::<EmLoop<W>>::new() {
        Ok(em) => em,
        Err(e) => {
            eprintln!("{name}: cannot create the event manager: {e}");
            return Some(worker.finish());
        }
    };
    let id = em.add_subscriber(EmLoop {
        worker,
        stop,
        stopping: false,
    });
    loop {
        match em.subscriber_mut(id) {
            Ok(s) if !s.stopping => {}
            _ => break,
        }
        if let Err(e) = em.run() {
            eprintln!("{name}: event loop failed: {e}");
            break;
        }
    }
    em.remove_subscriber(id).ok().map(|s| s.worker.finish())
}

/// A worker run by [`run_epoll_loop`]: it owns the epoll and registered the stop fd in it
/// under [`EpollWorker::STOP_TOKEN`] itself (before spawning, see [`WorkerStop::worker_fd`]).
pub trait EpollWorker: Send + 'static {
    /// The stop fd's token: must not collide with any of the worker's.
    const STOP_TOKEN: u64;
    fn epoll(&self) -> &Epoll;
    /// Events taken per wait.
    fn max_events(&self) -> usize {
        64
    }
    /// The timeout of the next wait, in ms (-1: none).
    fn timeout_ms(&self) -> i32 {
        -1
    }
    /// One event of a batch, in order; the loop returns at the stop token without the rest.
    fn event(&mut self, ev: &EpollEvent);
    /// After every wait that did not stop, also one that timed out.
    fn after_events(&mut self) {}
}

/// Waits on the worker's epoll until the stop token (retrying EINTR; another wait error is
/// logged as `<name>: epoll_wait failed, stopping: ...`). Drops the worker before `stop`, so
/// no one holds the stop fd's number once it is closed.
pub fn run_epoll_loop<W: EpollWorker>(mut worker: W, stop: StopFd) {
    let mut events = vec![EpollEvent::default(); worker.max_events()];
    'wait: loop {
        let n = match worker.epoll().wait(worker.timeout_ms(), &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("{}: epoll_wait failed, stopping: {e}", stop.name);
                break;
            }
        };
        for ev in events.iter().take(n) {
            if ev.data() == W::STOP_TOKEN {
                break 'wait;
            }
            worker.event(ev);
        }
        worker.after_events();
    }
    drop(worker);
    drop(stop);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::sync::Mutex;
    use std::time::Duration;
    use vmm_sys_util::epoll::{ControlOperation, EventSet as EpollSet};

    /// Names of the threads that called the worker hook, in order.
    static HOOKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn hook() {
        let name = std::thread::current().name().unwrap_or("").to_string();
        HOOKED.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    }

    fn hooked(name: &str) -> bool {
        HOOKED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|n| n == name)
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn finished<R>(t: &WorkerThread<R>) -> bool {
        t.thread.as_ref().is_some_and(|h| h.is_finished())
    }

    #[test]
    fn spawn_calls_the_sandbox_hook_first_and_stop_returns_the_value() {
        crate::sandbox::set_worker_hook(hook);
        let stop = WorkerStop::new().unwrap();
        let t = stop
            .spawn("test-hooked-worker", |stop: StopFd| {
                // The hook ran before the body, on this thread.
                let first = hooked("test-hooked-worker");
                assert_eq!(stop.name(), "test-hooked-worker");
                // Wait for the stop write (the fd is non-blocking: poll it).
                while stop.fd.read().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                (first, std::thread::current().name().map(str::to_string))
            })
            .unwrap();
        assert_eq!(t.name(), "test-hooked-worker");
        let (first, name) = t.stop().expect("no panic");
        assert!(first, "the hook ran before the body");
        assert_eq!(name.as_deref(), Some("test-hooked-worker"));
    }

    #[test]
    fn a_panicking_worker_stops_as_none() {
        let t = WorkerStop::new()
            .unwrap()
            .spawn("test-panicking-worker", |_stop| -> u32 {
                // Unwinds like a panic, without the panic hook (no message, no backtrace to
                // symbolize while other tests run).
                std::panic::resume_unwind(Box::new("on purpose"))
            })
            .unwrap();
        assert_eq!(t.stop(), None);
    }

    #[test]
    fn dropping_a_worker_thread_stops_and_joins_it() {
        let (tx, rx) = mpsc::channel();
        let t = WorkerStop::new()
            .unwrap()
            .spawn("test-dropped-worker", move |stop| {
                while stop.fd.read().is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                tx.send(()).unwrap();
            })
            .unwrap();
        drop(t);
        // Joined in drop: the body has finished.
        assert!(rx.try_recv().is_ok());
    }

    /// An event-manager worker over one eventfd: counts its events.
    struct Counter {
        kick: EventFd,
        served_in_init: bool,
        events: usize,
        fail_init: bool,
        /// Tells the test each event was handled.
        seen: mpsc::Sender<usize>,
    }

    impl EmWorker for Counter {
        type Output = (bool, usize);
        const STOP_TOKEN: u32 = 7;
        fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
            if self.fail_init {
                return Err(event_manager::Error::InvalidId);
            }
            ops.add(Events::with_data(&self.kick, 0, EventSet::IN))?;
            self.served_in_init = true;
            Ok(())
        }
        fn process(&mut self, events: Events, _ops: &mut EventOps) {
            assert_eq!(events.data(), 0, "the stop token never reaches the worker");
            let _ = self.kick.read();
            self.events += 1;
            let _ = self.seen.send(self.events);
        }
        fn finish(self) -> (bool, usize) {
            (self.served_in_init, self.events)
        }
    }

    #[test]
    fn the_event_loop_serves_until_its_stop_token_and_returns_finish() {
        let kick = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        let (seen_tx, seen) = mpsc::channel();
        let w = Counter {
            kick: kick.try_clone().unwrap(),
            served_in_init: false,
            events: 0,
            fail_init: false,
            seen: seen_tx,
        };
        let t = WorkerStop::new()
            .unwrap()
            .spawn("test-em-worker", move |stop| run_event_loop(w, stop))
            .unwrap();
        for i in 1..=3 {
            kick.write(1).unwrap();
            assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok(i));
        }
        assert_eq!(t.stop(), Some(Some((true, 3))));
    }

    #[test]
    fn an_event_loop_whose_init_fails_stops_at_once() {
        let (seen_tx, _seen) = mpsc::channel();
        let w = Counter {
            kick: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
            served_in_init: false,
            events: 0,
            fail_init: true,
            seen: seen_tx,
        };
        let stop = WorkerStop::new().unwrap();
        let fd = stop.worker_fd().try_clone().unwrap();
        let t = stop
            .spawn("test-em-failing", move |stop| run_event_loop(w, stop))
            .unwrap();
        // The thread ends without a stop write.
        wait_until("the loop stops", || finished(&t));
        assert!(fd.read().is_err(), "nobody wrote the stop fd");
        assert_eq!(t.stop(), Some(Some((false, 0))));
    }

    /// An epoll worker over two eventfds that records the order of what it saw.
    struct Recorder {
        epoll: Epoll,
        kicks: Vec<EventFd>,
        log: Arc<Mutex<Vec<String>>>,
        dropped: Arc<AtomicUsize>,
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl EpollWorker for Recorder {
        const STOP_TOKEN: u64 = 100;
        fn epoll(&self) -> &Epoll {
            &self.epoll
        }
        fn timeout_ms(&self) -> i32 {
            10
        }
        fn event(&mut self, ev: &EpollEvent) {
            let i = ev.data() as usize;
            let _ = self.kicks[i].read();
            self.log.lock().unwrap().push(format!("event {i}"));
        }
        fn after_events(&mut self) {
            let mut log = self.log.lock().unwrap();
            if log.last().map(String::as_str) != Some("after") {
                log.push("after".into());
            }
        }
    }

    #[test]
    fn the_epoll_loop_stops_mid_batch_and_drops_the_worker_in_the_thread() {
        let epoll = Epoll::new().unwrap();
        let stop = WorkerStop::new().unwrap();
        let kicks: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap())
            .collect();
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EpollSet::IN, token),
                )
                .unwrap()
        };
        add(kicks[0].as_raw_fd(), 0);
        add(kicks[1].as_raw_fd(), 1);
        add(stop.worker_fd().as_raw_fd(), Recorder::STOP_TOKEN);
        // epoll reports ready fds in the order they became ready: kick 0, stop, kick 1, all
        // in the first batch.
        kicks[0].write(1).unwrap();
        stop.worker_fd().write(1).unwrap();
        kicks[1].write(1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(AtomicUsize::new(0));
        let w = Recorder {
            epoll,
            kicks: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            log: log.clone(),
            dropped: dropped.clone(),
        };
        let t = stop
            .spawn("test-epoll-worker", move |stop| run_epoll_loop(w, stop))
            .unwrap();
        // The thread ends by itself (the stop fd was written before it started).
        wait_until("the loop stops", || finished(&t));
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "dropped in the thread");
        assert_eq!(t.stop(), Some(()));
        assert_eq!(*log.lock().unwrap(), ["event 0"]);
        assert_eq!(kicks[1].read().unwrap(), 1, "kick 1 was never handled");
    }

    #[test]
    fn the_epoll_loop_calls_after_events_on_timeouts_too() {
        let epoll = Epoll::new().unwrap();
        let stop = WorkerStop::new().unwrap();
        epoll
            .ctl(
                ControlOperation::Add,
                stop.worker_fd().as_raw_fd(),
                EpollEvent::new(EpollSet::IN, Recorder::STOP_TOKEN),
            )
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let w = Recorder {
            epoll,
            kicks: Vec::new(),
            log: log.clone(),
            dropped: Arc::new(AtomicUsize::new(0)),
        };
        let t = stop
            .spawn("test-epoll-timeout", move |stop| run_epoll_loop(w, stop))
            .unwrap();
        wait_until("a timeout round", || !log.lock().unwrap().is_empty());
        assert_eq!(t.stop(), Some(()));
        assert_eq!(*log.lock().unwrap(), ["after"]);
    }

    /// Runs [`drain_queue`] over a 16-entry queue in fresh memory whose avail index is
    /// `avail_idx`. No descriptors: `round(call, queue, set_avail_idx)` moves `next_avail`
    /// itself (only the avail index matters to the drain). Returns the result, the number of
    /// rounds, the queue and the memory.
    fn drain_with(
        avail_idx: u16,
        max_rounds: usize,
        mut round: impl FnMut(usize, &mut Queue, &dyn Fn(u16)) -> Round,
    ) -> (Drain, usize, Queue, GuestMemoryMmap) {
        let mem = crate::virtio::testing::memory(0x10000);
        let ring = crate::virtio::testing::SplitRing::new(0, 16);
        let mut q = ring.queue();
        let set_avail = |idx: u16| ring.set_avail_idx(&mem, idx);
        set_avail(avail_idx);
        let mut calls = 0;
        let d = drain_queue(&mut q, &mem, max_rounds, |q| {
            calls += 1;
            round(calls, q, &set_avail)
        });
        (d, calls, q, mem)
    }

    #[test]
    fn drain_queue_serves_until_empty_also_what_arrives_meanwhile() {
        let (d, calls, _, _) = drain_with(3, usize::MAX, |call, q, set_avail| {
            if call == 1 {
                // The driver posts two more while the first three are served.
                set_avail(5);
            }
            q.set_next_avail(if call == 1 { 3 } else { 5 });
            Round::used(true)
        });
        assert_eq!(calls, 2);
        assert_eq!(
            d,
            Drain {
                used: true,
                end: DrainEnd::Empty
            }
        );
    }

    #[test]
    fn drain_queue_gives_up_on_an_avail_index_that_pops_nothing() {
        // Far more than a ring ahead: nothing can be popped, and "more" is always true.
        let (d, calls, _, _) = drain_with(1000, usize::MAX, |_, _, _| Round::used(false));
        assert_eq!((calls, d.end, d.used), (2, DrainEnd::Idle, false));

        // Progress resets the count: idle, progress, idle, idle.
        let (d, calls, _, _) = drain_with(1000, usize::MAX, |call, q, _| {
            if call == 2 {
                q.set_next_avail(1);
            }
            Round::used(call == 2)
        });
        assert_eq!((calls, d.end, d.used), (4, DrainEnd::Idle, true));
    }

    #[test]
    fn drain_queue_stops_when_blocked_or_out_of_rounds() {
        use vm_memory::{Bytes, GuestAddress};
        let blocked = Round {
            used: true,
            blocked: true,
        };
        let (d, calls, q, mem) = drain_with(10, usize::MAX, |_, _, _| blocked);
        assert_eq!((calls, d.end, d.used), (1, DrainEnd::Blocked, true));
        // Notifications stay off (VRING_USED_F_NO_NOTIFY in the used ring's flags).
        let flags: u16 = mem.read_obj(GuestAddress(q.used_ring())).unwrap();
        assert_eq!(u16::from_le(flags) & 1, 1);

        let (d, calls, q, _) = drain_with(10, 3, |_, q, _| {
            q.set_next_avail(q.next_avail() + 1);
            Round::used(true)
        });
        assert_eq!((calls, d.end, q.next_avail()), (3, DrainEnd::Budget, 3));
    }

    #[test]
    fn signal_used_raises_a_queue_interrupt() {
        struct Once(AtomicUsize);
        impl Interrupt for Once {
            fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
                assert_eq!(kind, InterruptKind::Queue);
                if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::other("gone"))
                }
            }
        }
        let irq = Once(AtomicUsize::new(0));
        signal_used(&irq, "test");
        // A failure is only logged.
        signal_used(&irq, "test");
        assert_eq!(irq.0.load(Ordering::SeqCst), 2);
    }
}
