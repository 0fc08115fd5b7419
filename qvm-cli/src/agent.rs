//! Reaching a VM's guest agent (`qvm-agent` on vsock port 5000) for `qvm run` and `qvm copy`:
//! waiting for it while the guest boots, and saying why when it will not come. The session
//! itself is `qvm_agent::client`, the one client `qvm-run` uses too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use qvm_agent::client::{ClientError, Input, Session, AGENT_PORT};

use crate::logs::ConsoleWatch;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the guest agent of {vm} will not start; the guest's console says: {why} (see {console})"
    )]
    AgentFailed {
        vm: String,
        why: String,
        console: PathBuf,
    },
    #[error("{vm} stopped after {secs:.1} s, before its agent answered{guest}; {vmm_said}\n(the guest's console: {console})")]
    VmStopped {
        vm: String,
        secs: f64,
        /// What the guest's console last said about the agent, if anything.
        guest: String,
        /// Where the VMM's log is and how it ends.
        vmm_said: String,
        console: PathBuf,
    },
    #[error("{vm} is still booting: its init has not started after {secs} s (a slow or busy host: raise --timeout; or a kernel stuck at boot: see {console})")]
    StillBooting {
        vm: String,
        secs: u64,
        console: PathBuf,
    },
    #[error("{vm} booted, but no agent started listening within {secs} s{starting}; does its cmdline say qvm.mode=agent, and does its image have qvm-agent? See {console}")]
    NoAgent {
        vm: String,
        secs: u64,
        starting: &'static str,
        console: PathBuf,
    },
    #[error("the guest agent of {vm} listens, but did not answer on vsock port {AGENT_PORT} within {secs} s (last error: {last}); see {console}")]
    NotAnswering {
        vm: String,
        secs: u64,
        last: String,
        console: PathBuf,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Where a VM's agent is reached and what tells how its boot goes.
pub struct AgentWait<'a> {
    pub vm: &'a str,
    /// The VMM's vsock socket.
    pub vsock: &'a Path,
    /// The guest's console log (markers of its init, see [`crate::logs::BootProgress`]).
    pub console: &'a Path,
    /// The VMM's own log.
    pub vmm_log: &'a Path,
}

/// Connects to the agent, retrying until `timeout` while the guest boots. Gives up at once,
/// saying why, when the VMM exits or the guest's console says the agent will not start; at
/// the timeout it says whether the guest was still booting, booted without an agent, or has
/// an agent that does not answer.
pub fn wait_for_agent(
    w: &AgentWait,
    timeout: Duration,
    still_running: impl Fn() -> bool,
) -> Result<Session, AgentError> {
    let start = Instant::now();
    let mut watch = ConsoleWatch::new(w.console);
    let vm = w.vm.to_string();
    let console = w.console.to_path_buf();
    loop {
        let last = match Session::through_vmm(w.vsock, AGENT_PORT) {
            Ok(session) => return Ok(session),
            Err(e) => e.to_string(),
        };
        watch.poll();
        let p = &watch.progress;
        if let Some(why) = &p.agent_failed {
            return Err(AgentError::AgentFailed {
                vm,
                why: why.clone(),
                console,
            });
        }
        if !still_running() {
            // What the guest managed to say before the end.
            watch.poll();
            let p = &watch.progress;
            let guest = if let Some(why) = &p.agent_failed {
                format!(" (the guest said its agent failed: {why})")
            } else if !p.userspace {
                " (the guest had not reached its init)".to_string()
            } else {
                String::new()
            };
            return Err(AgentError::VmStopped {
                vm,
                secs: start.elapsed().as_secs_f64(),
                guest,
                vmm_said: format!(
                    "qvm-vmm's log ({}) ends with:\n{}",
                    w.vmm_log.display(),
                    crate::logs::tail(w.vmm_log, 5)
                ),
                console,
            });
        }
        if start.elapsed() >= timeout {
            let secs = timeout.as_secs();
            return Err(if !p.userspace {
                AgentError::StillBooting { vm, secs, console }
            } else if p.agent_listening {
                AgentError::NotAnswering {
                    vm,
                    secs,
                    last,
                    console,
                }
            } else {
                AgentError::NoAgent {
                    vm,
                    secs,
                    starting: if p.agent_starting {
                        " (its init is still starting it)"
                    } else {
                        ""
                    },
                    console,
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait against a VM with no vsock socket and the given console and VMM log.
    fn wait(console: &str, vmm_log: &str, running: bool, timeout_ms: u64) -> AgentError {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("console.log");
        let v = dir.path().join("vmm.log");
        std::fs::write(&c, console).unwrap();
        std::fs::write(&v, vmm_log).unwrap();
        let w = AgentWait {
            vm: "work",
            vsock: &dir.path().join("vsock.sock"),
            console: &c,
            vmm_log: &v,
        };
        match wait_for_agent(&w, Duration::from_millis(timeout_ms), || running) {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_guest_that_says_its_agent_failed_ends_the_wait_at_once() {
        let start = Instant::now();
        let e = wait(
            "QVM-USERSPACE-READY\nQVM-AGENT-STARTING\nqvm-enter-rootfs: cannot mount virtio-fs \
             qvm-home on /root\nQVM-AGENT-FAILED: cannot set up the apps image /dev/vdb\n",
            "",
            true,
            60_000,
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, AgentError::AgentFailed { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("will not start"), "{msg}");
        assert!(msg.contains("cannot mount virtio-fs qvm-home"), "{msg}");
    }

    #[test]
    fn a_dead_vmm_is_named_with_its_own_last_words_and_the_real_time() {
        let e = wait(
            "QVM-USERSPACE-READY\n",
            "qvm-vmm: seccomp: a device thread made the forbidden syscall ptrace (#101); stopping\n",
            false,
            120_000,
        );
        let msg = e.to_string();
        let AgentError::VmStopped { secs, .. } = e else {
            panic!("{msg}")
        };
        assert!(secs < 5.0, "{msg}");
        assert!(msg.contains("forbidden syscall ptrace"), "{msg}");
        assert!(!msg.contains("120"), "{msg}");
    }

    #[test]
    fn the_timeout_says_booting_no_agent_or_not_answering() {
        let e = wait("[    0.5] Linux version 6.12\n", "", true, 300);
        assert!(matches!(e, AgentError::StillBooting { .. }), "{e}");
        assert!(e.to_string().contains("still booting"), "{e}");
        let e = wait("QVM-USERSPACE-READY\nQVM-AGENT-STARTING\n", "", true, 300);
        assert!(matches!(e, AgentError::NoAgent { .. }), "{e}");
        assert!(e.to_string().contains("still starting it"), "{e}");
        let e = wait(
            "QVM-USERSPACE-READY\nqvm-agent: listening on vsock port 5000\n",
            "",
            true,
            300,
        );
        assert!(matches!(e, AgentError::NotAnswering { .. }), "{e}");
    }
}
