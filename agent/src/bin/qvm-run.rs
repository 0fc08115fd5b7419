//! `qvm-run --vsock VM_SOCKET [--port N] -- COMMAND [ARG...]`: runs COMMAND in a VM through its
//! guest agent (`qvm-agent`, vsock port N, default 5000), with this process's stdin, stdout and
//! stderr, and exits with the command's exit status (127: it could not be started, 255: the
//! connection to the agent was lost).
//!
//! Output to a terminal loses escape sequences and control characters ([`qvm_agent::term`]),
//! so the guest cannot drive the terminal; `--raw` passes it as it is.
//!
//! `--wait SECS` retries the connection that long while the guest still boots. `--cid CID`
//! instead of `--vsock` connects over the host's AF_VSOCK to (CID, port), for a VM whose vsock
//! is the kernel's vhost-vsock (QEMU's `vhost-vsock-device`, in the benches). The protocol is
//! `qvm_agent::client`, which `qvm run` uses too.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use qvm_agent::client::{ClientError, Input, Session, AGENT_PORT};
use qvm_agent::term;

fn usage() -> ! {
    eprintln!(
        "usage: qvm-run --vsock VM_SOCKET [--wait SECS] | --cid CID [--port N] [--raw] -- COMMAND [ARG...]"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut uds: Option<PathBuf> = None;
    let mut cid: Option<u32> = None;
    let mut port = AGENT_PORT;
    let mut wait = Duration::ZERO;
    let mut raw = false;
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--raw" => {
                raw = true;
                i += 1;
                continue;
            }
            "--vsock" => uds = Some(PathBuf::from(value())),
            "--cid" => cid = Some(value().parse().unwrap_or_else(|_| usage())),
            "--port" => port = value().parse().unwrap_or_else(|_| usage()),
            "--wait" => {
                let secs: f64 = value().parse().unwrap_or_else(|_| usage());
                wait = Duration::try_from_secs_f64(secs).unwrap_or_else(|_| usage());
            }
            "--" => break,
            _ => usage(),
        }
        i += 2;
    }
    let command = args.get(i + 1..).unwrap_or_default();
    if command.is_empty() {
        usage()
    }
    let session = match (uds, cid) {
        (Some(uds), None) => Session::through_vmm_waiting(&uds, port, wait),
        (None, Some(cid)) => Session::over_vsock(cid, port),
        _ => usage(),
    };
    let session = session.unwrap_or_else(|e| {
        eprintln!("qvm-run: {e}");
        std::process::exit(255);
    });
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (filter_out, filter_err) = (!raw && stdout.is_terminal(), !raw && stderr.is_terminal());
    let code = session.exec(
        command,
        Input::Inherit,
        &mut term::for_terminal(stdout.lock(), filter_out),
        &mut term::for_terminal(stderr.lock(), filter_err),
        None,
    );
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("qvm-run: {e}");
            std::process::exit(match e {
                ClientError::Failed(_) => 127,
                _ => 255,
            });
        }
    }
}
