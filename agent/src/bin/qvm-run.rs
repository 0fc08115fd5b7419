//! `qvm-run --vsock VM_SOCKET [--port N] -- COMMAND [ARG...]`: runs COMMAND in a VM through its
//! guest agent (`qvm-agent`, vsock port N, default 5000), with this process's stdin, stdout and
//! stderr, and exits with the command's exit status (127: it could not be started, 255: the
//! connection to the agent was lost).
//!
//! `--cid CID` instead of `--vsock` connects over the host's AF_VSOCK to (CID, port), for a VM
//! whose vsock is the kernel's vhost-vsock (QEMU's `vhost-vsock-device`, in the benches).

use std::io::{Read, Write};
use std::path::PathBuf;

use qvm_agent::frame::{self, read_frame, write_frame};
use qvm_agent::stream::{connect_through_vmm, VsockStream};

fn usage() -> ! {
    eprintln!("usage: qvm-run --vsock VM_SOCKET | --cid CID [--port N] -- COMMAND [ARG...]");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut uds: Option<PathBuf> = None;
    let mut cid: Option<u32> = None;
    let mut port = 5000u32;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--vsock" => uds = args.get(i + 1).map(PathBuf::from),
            "--cid" => {
                cid = Some(
                    args.get(i + 1)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--port" => {
                port = args
                    .get(i + 1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
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
    type Conn = (Box<dyn Read + Send>, Box<dyn Write + Send>);
    let conn: std::io::Result<Conn> = match (uds, cid) {
        (Some(uds), None) => connect_through_vmm(&uds, port)
            .map(|(r, w)| (Box::new(r) as Box<dyn Read + Send>, Box::new(w) as _)),
        (None, Some(cid)) => VsockStream::connect(cid, port).and_then(|s| {
            Ok((
                Box::new(s.try_clone()?) as Box<dyn Read + Send>,
                Box::new(s) as _,
            ))
        }),
        _ => usage(),
    };
    let (mut reader, mut writer) = match conn {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qvm-run: {e}");
            std::process::exit(255);
        }
    };
    let sent = command
        .iter()
        .try_for_each(|a| write_frame(&mut writer, frame::ARG, a.as_bytes()))
        .and_then(|_| write_frame(&mut writer, frame::END_ARGS, b""));
    if let Err(e) = sent {
        eprintln!("qvm-run: sending the command: {e}");
        std::process::exit(255);
    }
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
    loop {
        match read_frame(&mut reader) {
            Ok(Some((frame::STDOUT, d))) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&d).and_then(|_| o.flush());
            }
            Ok(Some((frame::STDERR, d))) => {
                let _ = std::io::stderr().write_all(&d);
            }
            Ok(Some((frame::EXIT, d))) if d.len() == 4 => {
                std::process::exit(i32::from_le_bytes([d[0], d[1], d[2], d[3]]));
            }
            Ok(Some((frame::FAILED, d))) => {
                eprintln!("qvm-run: {}", String::from_utf8_lossy(&d));
                std::process::exit(127);
            }
            Ok(Some(_)) => {
                eprintln!("qvm-run: the agent sent a frame this qvm-run does not know");
                std::process::exit(255);
            }
            Ok(None) | Err(_) => {
                eprintln!("qvm-run: the connection to the guest agent was lost");
                std::process::exit(255);
            }
        }
    }
}
