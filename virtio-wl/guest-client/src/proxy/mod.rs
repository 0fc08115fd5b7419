//! `qvm-wl-proxy`: the guest's Wayland compositor socket. Unmodified guest apps connect to
//! `$XDG_RUNTIME_DIR/wayland-0` as to any compositor; each connection is relayed to the host
//! compositor over its own virtio-wl context (see [`conn`] for what is translated and how),
//! in its own forked process so that one misbehaving client cannot take the others down.

pub mod conn;
pub mod shm;
pub mod xml;

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

pub use conn::{Conn, Options, ProxyError, Stats};
use xml::Protocols;

use crate::transport::{SocketTransport, Transport, Wl0Transport};

/// Where client connections are relayed to.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// The virtio-wl device (the product): one context per client, optionally named.
    Wl0 { ctx_name: Option<String> },
    /// A host compositor's socket (tests and the bench on the host).
    Socket(PathBuf),
}

impl Upstream {
    pub fn connect(&self) -> io::Result<Box<dyn Transport>> {
        Ok(match self {
            Upstream::Wl0 { ctx_name } => Box::new(Wl0Transport::open(ctx_name.as_deref())?),
            Upstream::Socket(path) => {
                let s = UnixStream::connect(path).map_err(|e| {
                    io::Error::new(e.kind(), format!("connect {}: {e}", path.display()))
                })?;
                Box::new(SocketTransport::from_stream(s))
            }
        })
    }
}

/// Binds the listening socket at `path` (a stale socket file is replaced).
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("remove {}: {e}", path.display()),
            ))
        }
    }
    UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", path.display())))
}

/// Relays one client until it or the compositor closes; returns its counters and how it
/// ended.
pub fn relay(
    protos: &Protocols,
    opts: Options,
    client: UnixStream,
    upstream: &Upstream,
) -> (Stats, Result<(), ProxyError>) {
    let up = match upstream.connect() {
        Ok(u) => u,
        Err(e) => return (Stats::default(), Err(e.into())),
    };
    let mut conn = match Conn::new(
        protos,
        opts,
        Box::new(SocketTransport::from_stream(client)),
        up,
    ) {
        Ok(c) => c,
        Err(e) => return (Stats::default(), Err(e)),
    };
    let r = conn.run();
    (conn.stats, r)
}

/// Accepts clients forever, each in a forked child.
pub fn serve(
    listener: UnixListener,
    protos: &Protocols,
    opts: Options,
    upstream: &Upstream,
) -> io::Result<()> {
    // Children are reaped by the kernel.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    loop {
        let (client, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // SAFETY: the proxy is single-threaded here (relay threads only exist in children).
        match unsafe { libc::fork() } {
            -1 => eprintln!("qvm-wl-proxy: fork: {}", io::Error::last_os_error()),
            0 => {
                drop(listener);
                let (stats, r) = relay(protos, opts, client, upstream);
                let code = match r {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("qvm-wl-proxy: client connection ended: {e}");
                        1
                    }
                };
                print_stats(&stats);
                // SAFETY: leaving the child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            _ => drop(client),
        }
    }
}

/// One line per finished client, for tests and the bench.
pub fn print_stats(s: &Stats) {
    let (user_us, sys_us) = crate::cpu_us();
    println!(
        "QVM-WL-PROXY-STATS requests={} events={} commits_copied={} bytes_copied={} bytes_copied_after_warmup={} pools_mirrored={} pools_passed_through={} globals_hidden={} user_us={} sys_us={}",
        s.requests,
        s.events,
        s.commits_copied,
        s.bytes_copied,
        s.bytes_copied_after_warmup,
        s.pools_mirrored,
        s.pools_passed_through,
        s.globals_hidden,
        user_us,
        sys_us
    );
}
