//! qvm-wl-proxy: the guest's Wayland socket, relayed to the host compositor over virtio-wl.
//!
//! ```text
//! qvm-wl-proxy [--socket NAME|PATH] [--upstream wl0|socket:PATH] [--ctx-name NAME]
//!              [--copy damage|whole] [--verbose]
//! ```
//! `--socket` defaults to `wayland-0` in `$XDG_RUNTIME_DIR`. Prints `QVM-WL-PROXY-READY
//! <path>` once clients can connect, and `QVM-WL-PROXY-STATS ...` as each client leaves.

use std::path::PathBuf;

use qvm_wl_client::proxy::{self, xml::Protocols, Options, Upstream};

fn usage(msg: &str) -> ! {
    eprintln!("qvm-wl-proxy: {msg}");
    eprintln!("usage: qvm-wl-proxy [--socket NAME|PATH] [--upstream wl0|socket:PATH] [--ctx-name NAME] [--copy damage|whole] [--verbose]");
    std::process::exit(2);
}

fn main() {
    let mut socket = String::from("wayland-0");
    let mut upstream: Option<String> = None;
    let mut ctx_name: Option<String> = None;
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |what: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{what} needs a value")))
        };
        match a.as_str() {
            "--socket" => socket = val("--socket"),
            "--upstream" => upstream = Some(val("--upstream")),
            "--ctx-name" => ctx_name = Some(val("--ctx-name")),
            "--copy" => match val("--copy").as_str() {
                "damage" => opts.copy_whole = false,
                "whole" => opts.copy_whole = true,
                other => usage(&format!("--copy {other}: use damage or whole")),
            },
            "--verbose" => opts.verbose = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let upstream = match upstream.as_deref() {
        None | Some("wl0") => Upstream::Wl0 { ctx_name },
        Some(s) => match s.strip_prefix("socket:") {
            Some(p) => Upstream::Socket(PathBuf::from(p)),
            None => usage(&format!("--upstream {s}: use wl0 or socket:PATH")),
        },
    };
    let path = if socket.contains('/') {
        PathBuf::from(&socket)
    } else {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) => PathBuf::from(d).join(&socket),
            None => usage("XDG_RUNTIME_DIR is not set (or give --socket an absolute path)"),
        }
    };
    let protos = match Protocols::builtin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("qvm-wl-proxy: {e}");
            std::process::exit(1);
        }
    };
    let listener = match proxy::listen(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("qvm-wl-proxy: {e}");
            std::process::exit(1);
        }
    };
    println!("QVM-WL-PROXY-READY {}", path.display());
    if let Err(e) = proxy::serve(listener, &protos, opts, &upstream) {
        eprintln!("qvm-wl-proxy: {e}");
        std::process::exit(1);
    }
}
