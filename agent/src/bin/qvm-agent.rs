//! `qvm-agent [--port N]`: the guest side of `qvm-run`. Listens on vsock port N (default 5000)
//! and, for each connection, runs the command the host sends, relaying stdin, stdout, stderr
//! and the exit status (see `qvm_agent::frame`). One thread per session.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use qvm_agent::frame::{self, read_frame, write_frame};
use qvm_agent::stream::{VsockListener, VsockStream};

const DEFAULT_PORT: u32 = 5000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port = match args.get(1).map(String::as_str) {
        None => DEFAULT_PORT,
        Some("--port") => match args.get(2).and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => usage(),
        },
        Some(_) => usage(),
    };
    let listener = match VsockListener::bind(port) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qvm-agent: cannot listen on vsock port {port}: {e} (is the VM's vsock device there?)");
            std::process::exit(1);
        }
    };
    eprintln!("qvm-agent: listening on vsock port {port}");
    loop {
        match listener.accept() {
            Ok(conn) => {
                std::thread::spawn(move || {
                    if let Err(e) = session(conn) {
                        eprintln!("qvm-agent: session: {e}");
                    }
                });
            }
            Err(e) => eprintln!("qvm-agent: accept: {e}"),
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: qvm-agent [--port N]");
    std::process::exit(2);
}

fn session(mut conn: VsockStream) -> std::io::Result<()> {
    let mut argv: Vec<String> = Vec::new();
    loop {
        match read_frame(&mut conn)? {
            Some((frame::ARG, a)) if argv.len() < frame::MAX_ARGS => {
                argv.push(String::from_utf8_lossy(&a).into_owned());
            }
            Some((frame::END_ARGS, _)) => break,
            Some((kind, _)) => {
                let msg = format!("unexpected frame {:?} before the command", kind as char);
                return write_frame(&mut conn, frame::FAILED, msg.as_bytes());
            }
            None => return Ok(()),
        }
    }
    let Some((prog, rest)) = argv.split_first() else {
        return write_frame(&mut conn, frame::FAILED, b"no command given");
    };
    let mut child = match Command::new(prog)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot run {prog:?} in the guest: {e}");
            return write_frame(&mut conn, frame::FAILED, msg.as_bytes());
        }
    };
    let out = Arc::new(Mutex::new(conn.try_clone()?));
    let mut pumps = Vec::new();
    let mut sources: Vec<(Box<dyn Read + Send>, u8)> = Vec::new();
    if let Some(s) = child.stdout.take() {
        sources.push((Box::new(s), frame::STDOUT));
    }
    if let Some(s) = child.stderr.take() {
        sources.push((Box::new(s), frame::STDERR));
    }
    for (mut src, kind) in sources {
        let out = out.clone();
        pumps.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match src.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let Ok(mut w) = out.lock() else { break };
                        if write_frame(&mut *w, kind, &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    // Host stdin -> child stdin, until the host closes it (or goes away).
    let mut stdin = child.stdin.take();
    std::thread::spawn(move || {
        while let Ok(Some((kind, data))) = read_frame(&mut conn) {
            match kind {
                frame::STDIN => {
                    if let Some(s) = stdin.as_mut() {
                        if s.write_all(&data).is_err() {
                            stdin = None;
                        }
                    }
                }
                frame::STDIN_CLOSED => stdin = None,
                _ => break,
            }
        }
    });
    for p in pumps {
        let _ = p.join();
    }
    let status = child.wait()?;
    let code = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    let mut w = out
        .lock()
        .map_err(|_| std::io::Error::other("output lock poisoned"))?;
    write_frame(&mut *w, frame::EXIT, &code.to_le_bytes())?;
    w.shutdown_write()
}
