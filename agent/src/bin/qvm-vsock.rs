//! `qvm-vsock`: moves checked data over vsock for tests and benches, on either side.
//!
//!   qvm-vsock serve vsock:PORT | unix:PATH | tcp:PORT
//!       per connection, one command line: `SINK` (read to the end, answer `GOT <len> <sum>`),
//!       `SOURCE <n> <seed>` (send n pattern bytes, then close) or `ECHO`.
//!   qvm-vsock client TARGET send N [SEED] | recv N [SEED] | parallel K N
//!       TARGET is vsock:CID:PORT (from a guest), vmm:SOCKET:PORT (from the host, through the
//!       VMM's unix socket), unix:PATH or tcp:HOST:PORT (the same checks over a network). Prints `SEND|RECV ok <len> <sum> <MB/s>` (or `bad`,
//!       exit 1); parallel runs K `send N` at once and prints `PARALLEL <ok>/<K>`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use qvm_agent::pattern::{expected, Checksum, Pattern};
use qvm_agent::stream::{connect_through_vmm, VsockListener, VsockStream};

/// One connected stream, whatever carries it.
struct Conn {
    reader: Box<dyn BufRead + Send>,
    writer: Box<dyn Write + Send>,
    shut: Box<dyn Fn() -> io::Result<()> + Send>,
}

fn from_vsock(s: VsockStream) -> io::Result<Conn> {
    let w = s.try_clone()?;
    let sh = s.try_clone()?;
    Ok(Conn {
        reader: Box::new(BufReader::new(s)),
        writer: Box::new(w),
        shut: Box::new(move || sh.shutdown_write()),
    })
}

fn from_unix(reader: Box<dyn BufRead + Send>, s: UnixStream) -> io::Result<Conn> {
    let sh = s.try_clone()?;
    Ok(Conn {
        reader,
        writer: Box::new(s),
        shut: Box::new(move || sh.shutdown(std::net::Shutdown::Write)),
    })
}

fn connect(target: &str) -> io::Result<Conn> {
    let parts: Vec<&str> = target.split(':').collect();
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad target {target:?}"),
        )
    };
    match parts.as_slice() {
        ["vsock", cid, port] => from_vsock(VsockStream::connect(
            cid.parse().map_err(|_| bad())?,
            port.parse().map_err(|_| bad())?,
        )?),
        ["vmm", path, port] => {
            let (r, w) = connect_through_vmm(Path::new(path), port.parse().map_err(|_| bad())?)?;
            from_unix(Box::new(r), w)
        }
        ["tcp", host, port] => {
            let s = std::net::TcpStream::connect((*host, port.parse::<u16>().map_err(|_| bad())?))?;
            let sh = s.try_clone()?;
            Ok(Conn {
                reader: Box::new(BufReader::new(s.try_clone()?)),
                writer: Box::new(s),
                shut: Box::new(move || sh.shutdown(std::net::Shutdown::Write)),
            })
        }
        ["unix", path] => {
            let s = UnixStream::connect(path)?;
            from_unix(Box::new(BufReader::new(s.try_clone()?)), s)
        }
        _ => Err(bad()),
    }
}

fn serve_one(mut c: Conn) -> io::Result<()> {
    let mut line = String::new();
    (&mut c.reader).take(80).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["SINK"] => {
            let sum = checksum_to_end(&mut c.reader)?;
            c.writer.write_all(format!("GOT {sum}\n").as_bytes())?;
        }
        ["SOURCE", n, seed] => {
            let n: u64 = n.parse().map_err(|_| io::ErrorKind::InvalidInput)?;
            let seed: u64 = seed.parse().map_err(|_| io::ErrorKind::InvalidInput)?;
            send_pattern(&mut c.writer, n, seed)?;
        }
        ["ECHO"] => {
            io::copy(&mut c.reader, &mut c.writer)?;
        }
        _ => c.writer.write_all(b"ERR unknown command\n")?,
    }
    (c.shut)()
}

/// Reads `r` to its end: the checksum of everything it gave.
fn checksum_to_end(r: &mut dyn Read) -> io::Result<String> {
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    Ok(sum.finish())
}

fn send_pattern(w: &mut dyn Write, n: u64, seed: u64) -> io::Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 256 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..k]);
        w.write_all(&buf[..k])?;
        left -= k as u64;
    }
    w.flush()
}

fn mbps(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / 1e6 / t.elapsed().as_secs_f64().max(1e-9)
}

fn client_send(target: &str, n: u64, seed: u64) -> io::Result<(bool, String)> {
    let mut c = connect(target)?;
    let t = Instant::now();
    c.writer.write_all(b"SINK\n")?;
    send_pattern(&mut c.writer, n, seed)?;
    (c.shut)()?;
    let mut line = String::new();
    c.reader.read_line(&mut line)?;
    let rate = mbps(n, t);
    let want = format!("GOT {}", expected(seed, n));
    let ok = line.trim() == want;
    Ok((
        ok,
        format!(
            "SEND {} {} {rate:.1}",
            if ok { "ok" } else { "bad" },
            line.trim()
        ),
    ))
}

fn client_recv(target: &str, n: u64, seed: u64) -> io::Result<(bool, String)> {
    let mut c = connect(target)?;
    let t = Instant::now();
    c.writer
        .write_all(format!("SOURCE {n} {seed}\n").as_bytes())?;
    let got = checksum_to_end(&mut c.reader)?;
    let rate = mbps(n, t);
    let ok = got == expected(seed, n);
    Ok((
        ok,
        format!("RECV {} {got} {rate:.1}", if ok { "ok" } else { "bad" }),
    ))
}

fn usage() -> ! {
    eprintln!("usage: qvm-vsock serve vsock:PORT|unix:PATH\n       qvm-vsock client TARGET send N [SEED] | recv N [SEED] | parallel K N");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let num = |s: Option<&&str>| s.and_then(|v| v.parse::<u64>().ok());
    match a.as_slice() {
        ["serve", spec] => serve(spec),
        ["client", target, "send", rest @ ..] => {
            let n = num(rest.first()).unwrap_or_else(|| usage());
            report(client_send(target, n, num(rest.get(1)).unwrap_or(1)));
        }
        ["client", target, "recv", rest @ ..] => {
            let n = num(rest.first()).unwrap_or_else(|| usage());
            report(client_recv(target, n, num(rest.get(1)).unwrap_or(1)));
        }
        ["client", target, "parallel", k, n] => {
            let (Ok(k), Ok(n)) = (k.parse::<u64>(), n.parse::<u64>()) else {
                usage()
            };
            let handles: Vec<_> = (0..k)
                .map(|i| {
                    let t = target.to_string();
                    std::thread::spawn(move || client_send(&t, n, i + 1))
                })
                .collect();
            let mut ok = 0;
            for h in handles {
                match h.join() {
                    Ok(Ok((true, _))) => ok += 1,
                    Ok(Ok((false, line))) => eprintln!("qvm-vsock: {line}"),
                    Ok(Err(e)) => eprintln!("qvm-vsock: {e}"),
                    Err(_) => eprintln!("qvm-vsock: a client thread panicked"),
                }
            }
            println!("PARALLEL {ok}/{k}");
            std::process::exit(if ok == k { 0 } else { 1 });
        }
        _ => usage(),
    }
}

fn report(r: io::Result<(bool, String)>) {
    match r {
        Ok((ok, line)) => {
            println!("{line}");
            std::process::exit(if ok { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("qvm-vsock: {e}");
            std::process::exit(1);
        }
    }
}

fn serve(spec: &str) -> ! {
    let spawn = |c: io::Result<Conn>| match c {
        Ok(c) => {
            std::thread::spawn(move || {
                if let Err(e) = serve_one(c) {
                    eprintln!("qvm-vsock: {e}");
                }
            });
        }
        Err(e) => eprintln!("qvm-vsock: accept: {e}"),
    };
    if let Some(port) = spec.strip_prefix("vsock:") {
        let l = VsockListener::bind(port.parse().unwrap_or_else(|_| usage())).unwrap_or_else(|e| {
            eprintln!("qvm-vsock: listen on vsock {port}: {e}");
            std::process::exit(1)
        });
        println!("LISTENING");
        loop {
            spawn(l.accept().and_then(from_vsock));
        }
    } else if let Some(port) = spec.strip_prefix("tcp:") {
        let l = std::net::TcpListener::bind((
            "0.0.0.0",
            port.parse::<u16>().unwrap_or_else(|_| usage()),
        ))
        .unwrap_or_else(|e| {
            eprintln!("qvm-vsock: listen on tcp {port}: {e}");
            std::process::exit(1)
        });
        println!("LISTENING");
        loop {
            spawn(l.accept().and_then(|(s, _)| {
                let sh = s.try_clone()?;
                Ok(Conn {
                    reader: Box::new(BufReader::new(s.try_clone()?)),
                    writer: Box::new(s),
                    shut: Box::new(move || sh.shutdown(std::net::Shutdown::Write)),
                })
            }));
        }
    } else if let Some(path) = spec.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).unwrap_or_else(|e| {
            eprintln!("qvm-vsock: listen on {path}: {e}");
            std::process::exit(1)
        });
        println!("LISTENING");
        loop {
            spawn(l.accept().and_then(|(s, _)| {
                let r = BufReader::new(s.try_clone()?);
                from_unix(Box::new(r), s)
            }));
        }
    }
    usage()
}
