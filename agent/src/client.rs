//! The host's side of the agent protocol, one client for `qvm-run` and `qvm run`: a
//! [`Session`] sends one command (its arguments as `ARG` frames, then `END_ARGS`), relays stdin
//! (`STDIN`, `STDIN_CLOSED`), stdout and stderr, and returns the command's exit status.
//!
//! Everything the guest sends is hostile: frames are bounded by [`frame::read_frame`], an
//! unknown frame or a malformed exit status ends the session with an error, the stdout a
//! caller keeps in memory can be bounded (`limit`), and waits have deadlines: the VMM's
//! handshake ([`HANDSHAKE_DEADLINE`]), each frame once it has begun ([`FRAME_DEADLINE`]), and,
//! where the caller asks ([`Session::idle_deadline`]), the time between frames.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::frame::{self, read_frame, write_frame};
use crate::stream::{connect_through_vmm, VsockStream};

/// The guest agent's usual vsock port.
pub const AGENT_PORT: u32 = 5000;
/// How long a frame may take to arrive once its first byte has: the agent writes each frame
/// whole, so only a guest that stalls on purpose (or a dead one) takes longer.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(30);
/// How long the VMM may take to answer `CONNECT <port>` (it waits for the guest to accept).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(30);

/// Why a session failed. Each message says what happened from the host's point of view.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sending the command to the guest agent: {0}")]
    Send(#[source] std::io::Error),
    #[error("the guest could not start the command: {0}")]
    Failed(String),
    #[error("the connection to the guest agent was lost")]
    Lost,
    #[error("the guest agent sent a frame this client does not know ({0:#x})")]
    Protocol(u8),
    #[error("the guest's output is larger than {limit} bytes; copy smaller files")]
    TooLarge { limit: usize },
    #[error("writing the command's output: {0}")]
    Output(#[source] std::io::Error),
    #[error("the guest agent stopped in the middle of a message for {} s", .0.as_secs())]
    Stalled(Duration),
    #[error("the guest sent nothing for {} s", .0.as_secs())]
    Idle(Duration),
}

/// A stream whose reads can be given a deadline (a socket).
pub trait TimedRead: Read + Send {
    /// Like [`UnixStream::set_read_timeout`]: a read blocked longer fails with `WouldBlock`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedRead for UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, timeout)
    }
}

impl TimedRead for BufReader<UnixStream> {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.get_ref().set_read_timeout(timeout)
    }
}

impl TimedRead for VsockStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        VsockStream::set_read_timeout(self, timeout)
    }
}

/// Reads one frame's bytes under its deadlines: the first byte by `idle` (None: no limit),
/// the rest within `frame` of the first.
struct Deadlines<'a> {
    r: &'a mut dyn TimedRead,
    idle: Option<Instant>,
    frame: Duration,
    started: Option<Instant>,
}

impl Read for Deadlines<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = match self.started {
            Some(t) => Some(t + self.frame),
            None => self.idle,
        };
        let timeout = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                // A zero timeout would mean "none" to the kernel (and std refuses it).
                Some(left) if left >= Duration::from_millis(1) => Some(left),
                _ => return Err(io::ErrorKind::TimedOut.into()),
            },
        };
        self.r.set_read_timeout(timeout)?;
        match self.r.read(buf) {
            Ok(n) => {
                if n > 0 && self.started.is_none() {
                    self.started = Some(Instant::now());
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            Err(e) => Err(e),
        }
    }
}

/// Where the command's stdin comes from.
pub enum Input {
    /// This process's stdin, relayed until it ends.
    Inherit,
    /// These bytes, then end of input.
    Bytes(Vec<u8>),
}

/// A connection to a guest agent, ready for one command.
pub struct Session {
    reader: Box<dyn TimedRead>,
    writer: Box<dyn Write + Send>,
    /// The longest wait between two frames (None: a command may stay silent as long as it runs).
    idle: Option<Duration>,
    /// How long one frame may take once begun ([`FRAME_DEADLINE`]; shorter in tests).
    frame: Duration,
}

impl Session {
    /// Connects to guest port `port` through the VMM's vsock unix socket `uds`.
    pub fn through_vmm(uds: &Path, port: u32) -> std::io::Result<Session> {
        let (reader, writer): (BufReader<UnixStream>, UnixStream) = connect_through_vmm(uds, port)?;
        Ok(Session {
            reader: Box::new(reader),
            writer: Box::new(writer),
            idle: None,
            frame: FRAME_DEADLINE,
        })
    }

    /// Connects to (`cid`, `port`) over the host's AF_VSOCK (a VM on the kernel's vhost-vsock).
    pub fn over_vsock(cid: u32, port: u32) -> std::io::Result<Session> {
        let s = VsockStream::connect(cid, port)?;
        Ok(Session {
            reader: Box::new(s.try_clone()?),
            writer: Box::new(s),
            idle: None,
            frame: FRAME_DEADLINE,
        })
    }

    /// [`Session::through_vmm`], retried every 200 ms until it succeeds or `wait` has passed
    /// (a guest that is still booting refuses the port); the last error otherwise.
    pub fn through_vmm_waiting(uds: &Path, port: u32, wait: Duration) -> std::io::Result<Session> {
        let start = Instant::now();
        loop {
            match Session::through_vmm(uds, port) {
                Ok(s) => return Ok(s),
                Err(e) if start.elapsed() >= wait => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Ends the command's session with [`ClientError::Idle`] when the guest sends nothing for
    /// `idle` (for non-interactive commands: a copy's `cat`).
    pub fn idle_deadline(mut self, idle: Duration) -> Session {
        self.idle = Some(idle);
        self
    }

    /// Runs `argv` in the guest; stdout and stderr go to `out` and `err`. Returns the command's
    /// exit status. `limit` bounds the stdout bytes accepted (None: unbounded).
    pub fn exec(
        mut self,
        argv: &[String],
        input: Input,
        out: &mut dyn Write,
        err: &mut dyn Write,
        limit: Option<usize>,
    ) -> Result<i32, ClientError> {
        argv.iter()
            .try_for_each(|a| write_frame(&mut self.writer, frame::ARG, a.as_bytes()))
            .and_then(|_| write_frame(&mut self.writer, frame::END_ARGS, b""))
            .map_err(ClientError::Send)?;
        let mut writer = self.writer;
        // From a thread: the guest may fill its stdout before it reads all of stdin.
        std::thread::spawn(move || {
            let send = |writer: &mut Box<dyn Write + Send>, data: &[u8]| {
                write_frame(writer, frame::STDIN, data).is_ok()
            };
            match input {
                Input::Bytes(data) => {
                    for chunk in data.chunks(frame::MAX_PAYLOAD / 2) {
                        if !send(&mut writer, chunk) {
                            return;
                        }
                    }
                }
                Input::Inherit => {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut stdin = std::io::stdin().lock();
                    loop {
                        match stdin.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if !send(&mut writer, &buf[..n]) {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            let _ = write_frame(&mut writer, frame::STDIN_CLOSED, b"");
        });
        let mut got = 0usize;
        // The idle deadline runs from the last stdout data: a guest that sends only empty or
        // stderr frames does not keep a copy alive.
        let mut progress = Instant::now();
        loop {
            let mut r = Deadlines {
                r: &mut *self.reader,
                idle: self.idle.map(|d| progress + d),
                frame: self.frame,
                started: None,
            };
            let next = read_frame(&mut r);
            let started = r.started.is_some();
            match next {
                Ok(Some((frame::STDOUT, d))) => {
                    if !d.is_empty() {
                        progress = Instant::now();
                    }
                    got += d.len();
                    if let Some(limit) = limit {
                        if got > limit {
                            return Err(ClientError::TooLarge { limit });
                        }
                    }
                    out.write_all(&d)
                        .and_then(|_| out.flush())
                        .map_err(ClientError::Output)?;
                }
                Ok(Some((frame::STDERR, d))) => {
                    let _ = err.write_all(&d);
                }
                Ok(Some((frame::EXIT, d))) => {
                    let code: [u8; 4] = d.as_slice().try_into().map_err(|_| ClientError::Lost)?;
                    return Ok(i32::from_le_bytes(code));
                }
                Ok(Some((frame::FAILED, d))) => {
                    // The guest's words, quoted in our error: escaped, and cut short.
                    return Err(ClientError::Failed(crate::term::escaped(
                        &String::from_utf8_lossy(&d),
                        500,
                    )));
                }
                Ok(Some((kind, _))) => return Err(ClientError::Protocol(kind)),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(match (started, self.idle) {
                        (false, Some(idle)) => ClientError::Idle(idle),
                        _ => ClientError::Stalled(self.frame),
                    })
                }
                Ok(None) | Err(_) => return Err(ClientError::Lost),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// A session whose agent is `agent`, run on a thread against the other end of a socket
    /// pair; it gets the frames the client sent before `END_ARGS`.
    fn against(agent: impl FnOnce(&mut UnixStream, Vec<Vec<u8>>) + Send + 'static) -> Session {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            let mut args = Vec::new();
            while let Ok(Some((kind, data))) = read_frame(&mut theirs) {
                if kind == frame::END_ARGS {
                    break;
                }
                args.push(data);
            }
            agent(&mut theirs, args);
        });
        Session {
            reader: Box::new(ours.try_clone().unwrap()),
            writer: Box::new(ours),
            idle: None,
            frame: FRAME_DEADLINE,
        }
    }

    fn run(s: Session, limit: Option<usize>) -> (Result<i32, ClientError>, Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let argv = vec!["echo".to_string(), "hi".to_string()];
        let r = s.exec(
            &argv,
            Input::Bytes(b"in".to_vec()),
            &mut out,
            &mut err,
            limit,
        );
        (r, out, err)
    }

    #[test]
    fn a_command_s_output_and_status_come_back() {
        let s = against(|a, args| {
            assert_eq!(args, vec![b"echo".to_vec(), b"hi".to_vec()]);
            write_frame(a, frame::STDOUT, b"hi\n").unwrap();
            write_frame(a, frame::STDERR, b"warn\n").unwrap();
            write_frame(a, frame::EXIT, &3i32.to_le_bytes()).unwrap();
        });
        let (r, out, err) = run(s, None);
        assert_eq!(r.unwrap(), 3);
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"hi\n"[..], &b"warn\n"[..])
        );
    }

    #[test]
    fn a_hostile_agent_gets_an_error_not_a_hang_or_a_panic() {
        let cases: Vec<(u8, Vec<u8>, &str)> = vec![
            (
                frame::FAILED,
                b"no such program".to_vec(),
                "could not start",
            ),
            (b'?', b"x".to_vec(), "does not know (0x3f)"),
            (frame::EXIT, vec![1, 2], "was lost"),
        ];
        for (kind, data, want) in cases {
            let s = against(move |a, _| {
                write_frame(a, kind, &data).unwrap();
            });
            let e = run(s, None).0.unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        // The agent goes away mid-command.
        let s = against(|a, _| {
            write_frame(a, frame::STDOUT, b"partial").unwrap();
        });
        assert!(matches!(run(s, None).0, Err(ClientError::Lost)));
        // More stdout than the caller keeps.
        let s = against(|a, _| {
            for _ in 0..4 {
                write_frame(a, frame::STDOUT, &[b'x'; 1000]).unwrap();
            }
            let _ = write_frame(a, frame::EXIT, &0i32.to_le_bytes());
        });
        let (r, out, _) = run(s, Some(2500));
        assert!(matches!(r, Err(ClientError::TooLarge { limit: 2500 })));
        assert!(out.len() <= 2500);
    }

    #[test]
    fn a_guest_that_stalls_mid_frame_or_goes_silent_meets_a_deadline() {
        // Half a frame header, then nothing, with the connection held open.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut s = against(move |a, _| {
            a.write_all(&[frame::STDOUT, 200]).unwrap();
            let _ = rx.recv();
        });
        s.frame = Duration::from_millis(300);
        let start = Instant::now();
        let r = run(s, None).0;
        assert!(matches!(r, Err(ClientError::Stalled(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(tx);
        // A guest that trickles a frame a byte at a time, each in time for a per-read timeout,
        // still meets the frame's deadline.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut s = against(move |a, _| {
            a.write_all(&[frame::STDOUT, 100, 0, 0, 0]).unwrap();
            for _ in 0..100 {
                if a.write_all(b"x").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = rx.recv();
        });
        s.frame = Duration::from_millis(500);
        let r = run(s, None).0;
        assert!(matches!(r, Err(ClientError::Stalled(_))), "{r:?}");
        drop(tx);
        // Silence between frames: only when the caller asked for an idle deadline.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let s = against(move |a, _| {
            write_frame(a, frame::STDOUT, b"x").unwrap();
            let _ = rx.recv();
        })
        .idle_deadline(Duration::from_millis(300));
        let (r, out, _) = run(s, None);
        assert!(matches!(r, Err(ClientError::Idle(_))), "{r:?}");
        assert_eq!(out, b"x");
        drop(tx);
        // Frames that carry nothing of the output do not reset it.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let s = against(move |a, _| {
            for _ in 0..40 {
                if write_frame(a, frame::STDERR, b".").is_err()
                    || write_frame(a, frame::STDOUT, b"").is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = rx.recv();
        })
        .idle_deadline(Duration::from_millis(300));
        let start = Instant::now();
        let r = run(s, None).0;
        assert!(matches!(r, Err(ClientError::Idle(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(1500));
        drop(tx);
    }

    #[test]
    fn a_command_may_stay_silent_without_an_idle_deadline() {
        let s = against(|a, _| {
            std::thread::sleep(Duration::from_millis(600));
            write_frame(a, frame::EXIT, &0i32.to_le_bytes()).unwrap();
        });
        let mut s = s;
        s.frame = Duration::from_millis(300);
        assert_eq!(run(s, None).0.unwrap(), 0);
    }
}
