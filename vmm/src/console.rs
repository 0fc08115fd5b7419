//! The main thread's event loop pieces: guest console input from stdin, and the watcher that
//! ends the loop when the guest stops or the VMM is told to quit (SIGINT/SIGTERM/SIGHUP).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use qvm_devices::bus::lock;
use qvm_devices::legacy::{Serial, SerialInput};
use qvm_devices::ExitSignal;
use vmm_sys_util::eventfd::EventFd;

/// Feeds stdin to the guest's UART without losing bytes: when the UART FIFO is full, stdin
/// is taken off the epoll set until the guest has drained the FIFO.
pub struct ConsoleInput {
    stdin: RawFd,
    serial: Arc<Mutex<Serial>>,
    input: Arc<SerialInput>,
    pending: Vec<u8>,
    stdin_watched: bool,
    stdin_closed: bool,
}

impl ConsoleInput {
    pub fn new(stdin: RawFd, serial: Arc<Mutex<Serial>>, input: Arc<SerialInput>) -> Self {
        Self {
            stdin,
            serial,
            input,
            pending: Vec::new(),
            stdin_watched: false,
            stdin_closed: false,
        }
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = lock(&self.serial).enqueue_input(&self.pending);
        self.pending.drain(..n);
    }

    fn read_stdin(&mut self) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(self.stdin, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => self.stdin_closed = true,
            n if n > 0 => self.pending.extend_from_slice(&buf[..n as usize]),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::Interrupted
                {
                    eprintln!("qvm-vmm: console input closed: {e}");
                    self.stdin_closed = true;
                }
            }
        }
    }

    fn update_stdin_watch(&mut self, ops: &mut EventOps) {
        let want = !self.stdin_closed && self.pending.is_empty();
        let ev = Events::new_raw(self.stdin, EventSet::IN);
        if want && !self.stdin_watched {
            if ops.add(ev).is_ok() {
                self.stdin_watched = true;
            } else {
                // A regular file or /dev/null cannot be polled: treat it as no input.
                self.stdin_closed = true;
            }
        } else if !want && self.stdin_watched {
            let _ = ops.remove(ev);
            self.stdin_watched = false;
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.input.drained(), EventSet::IN));
        self.update_stdin_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input.drained().as_raw_fd() {
            let _ = self.input.drained().read();
        } else if events.fd() == self.stdin {
            if events.event_set().contains(EventSet::IN) {
                self.read_stdin();
            } else {
                // HUP/ERR without data.
                self.stdin_closed = true;
            }
        }
        self.flush_pending();
        self.update_stdin_watch(ops);
    }
}

/// Why the event loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Guest,
    Signal(i32),
    /// The API asked for a stop.
    Api,
}

static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(sig: libc::c_int) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; the buffer is a valid u64.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Watches the guest-exit eventfd and the termination-signal eventfd.
pub struct StopWatcher {
    exit: Arc<ExitSignal>,
    signal_evt: EventFd,
    pub cause: Option<StopCause>,
}

impl StopWatcher {
    /// Installs SIGINT/SIGTERM/SIGHUP handlers that wake the event loop for an orderly stop.
    pub fn new(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let signal_evt = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        SIGNAL_EVENT_FD.store(signal_evt.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that only does async-signal-safe work.
            let r = unsafe { libc::signal(sig, on_terminate as *const () as libc::sighandler_t) };
            if r == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Self {
            exit,
            signal_evt,
            cause: None,
        })
    }
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.exit.eventfd(), EventSet::IN));
        let _ = ops.add(Events::new(&self.signal_evt, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.exit.eventfd().as_raw_fd() {
            let _ = self.exit.eventfd().read();
            self.cause.get_or_insert(StopCause::Guest);
        } else if events.fd() == self.signal_evt.as_raw_fd() {
            let _ = self.signal_evt.read();
            self.cause
                .get_or_insert(StopCause::Signal(LAST_SIGNAL.load(Ordering::SeqCst)));
        }
    }
}

/// Puts a terminal on stdin into raw mode (keeping Ctrl-C as a signal to the VMM) and restores
/// it on drop.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    pub fn enable(fd: RawFd) -> Option<Self> {
        // SAFETY: isatty/tcgetattr/tcsetattr only read/write the termios struct we pass.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            raw.c_lflag |= libc::ISIG;
            raw.c_oflag |= libc::OPOST | libc::ONLCR;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(Self { fd, saved })
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes saved in enable().
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
