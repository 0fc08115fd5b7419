//! Commands in a guest through its agent (`qvm-agent` on vsock port 5000), on the frames of the
//! `qvm-agent` crate: what `qvm-run` does, as a library call.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qvm_agent::frame::{self, read_frame, write_frame};
use qvm_agent::stream::connect_through_vmm;

/// The agent's vsock port.
pub const AGENT_PORT: u32 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the guest agent of {vm} did not answer on vsock port {AGENT_PORT} within {secs} s (last error: {last}); does its cmdline say qvm.mode=agent, and does its image have qvm-agent? See {console}")]
    NotReady {
        vm: String,
        secs: u64,
        last: String,
        console: PathBuf,
    },
    #[error("sending the command to the guest agent: {0}")]
    Send(#[source] std::io::Error),
    #[error("the guest could not start the command: {0}")]
    Failed(String),
    #[error("the connection to the guest agent was lost")]
    Lost,
    #[error("the guest agent sent a frame this qvm does not know ({0:#x})")]
    Protocol(u8),
    #[error("the guest's output is larger than {limit} bytes; copy smaller files")]
    TooLarge { limit: usize },
    #[error("writing the command's output: {0}")]
    Output(#[source] std::io::Error),
}

/// A connection to a guest agent.
pub struct Session {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Connects to the agent behind `vsock`, retrying until `timeout` (the guest may still boot).
pub fn wait_for_agent(
    vm: &str,
    vsock: &Path,
    console: &Path,
    timeout: Duration,
    still_running: impl Fn() -> bool,
) -> Result<Session, AgentError> {
    let start = Instant::now();
    loop {
        let last = match connect_through_vmm(vsock, AGENT_PORT) {
            Ok((reader, writer)) => return Ok(Session { reader, writer }),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout || !still_running() {
            return Err(AgentError::NotReady {
                vm: vm.to_string(),
                secs: timeout.as_secs(),
                last,
                console: console.to_path_buf(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the command's stdin comes from.
pub enum Input {
    /// This process's stdin, relayed until it ends.
    Inherit,
    /// These bytes, then end of input.
    Bytes(Vec<u8>),
}

impl Session {
    /// Runs `argv` in the guest; stdout and stderr go to `out` and `err`. Returns the command's
    /// exit status. `limit` bounds the stdout bytes accepted (None: unbounded).
    pub fn exec(
        mut self,
        argv: &[String],
        input: Input,
        out: &mut dyn Write,
        err: &mut dyn Write,
        limit: Option<usize>,
    ) -> Result<i32, AgentError> {
        argv.iter()
            .try_for_each(|a| write_frame(&mut self.writer, frame::ARG, a.as_bytes()))
            .and_then(|_| write_frame(&mut self.writer, frame::END_ARGS, b""))
            .map_err(AgentError::Send)?;
        let mut writer = self.writer;
        match input {
            Input::Bytes(data) => {
                // From a thread: the guest may fill its stdout before it reads all of stdin.
                std::thread::spawn(move || {
                    for chunk in data.chunks(frame::MAX_PAYLOAD / 2) {
                        if write_frame(&mut writer, frame::STDIN, chunk).is_err() {
                            return;
                        }
                    }
                    let _ = write_frame(&mut writer, frame::STDIN_CLOSED, b"");
                });
            }
            Input::Inherit => {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut stdin = std::io::stdin().lock();
                    loop {
                        match stdin.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if write_frame(&mut writer, frame::STDIN, &buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = write_frame(&mut writer, frame::STDIN_CLOSED, b"");
                });
            }
        }
        let mut got = 0usize;
        loop {
            match read_frame(&mut self.reader) {
                Ok(Some((frame::STDOUT, d))) => {
                    got += d.len();
                    if let Some(limit) = limit {
                        if got > limit {
                            return Err(AgentError::TooLarge { limit });
                        }
                    }
                    out.write_all(&d)
                        .and_then(|_| out.flush())
                        .map_err(AgentError::Output)?;
                }
                Ok(Some((frame::STDERR, d))) => {
                    let _ = err.write_all(&d);
                }
                Ok(Some((frame::EXIT, d))) => {
                    let code: [u8; 4] = d.as_slice().try_into().map_err(|_| AgentError::Lost)?;
                    return Ok(i32::from_le_bytes(code));
                }
                Ok(Some((frame::FAILED, d))) => {
                    return Err(AgentError::Failed(String::from_utf8_lossy(&d).into_owned()))
                }
                Ok(Some((kind, _))) => return Err(AgentError::Protocol(kind)),
                Ok(None) | Err(_) => return Err(AgentError::Lost),
            }
        }
    }
}
