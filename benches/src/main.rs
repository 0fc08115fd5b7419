//! `qvm-bench`: qvm's numbers, each printed beside a peer measured in the same run: QEMU
//! microvm where QEMU has the same device, otherwise qvm's other path (copy beside zero copy,
//! whole-frame beside damage-only copies). One module per bench, numbered as in the README's
//! "Benchmarks" section; this file parses the flags and runs them in this order:
//!
//! | module | README | leave out with | measures |
//! |---|---|---|---|
//! | [`host`] | (1) | `--skip-host` | exec to first KVM_RUN, RSS, on this host's /dev/kvm |
//! | [`blk_cost`] | (4) | `--skip-blk-cost` | virtio-blk instructions per request (callgrind) |
//! | [`blk`] | (3) | `--skip-blk` | in-guest virtio-blk MB/s and IOPS (lab) |
//! | [`net`] | (5) | `--skip-net` | TCP and vsock MB/s both ways (lab) |
//! | [`fs`] | (6) | `--skip-fs` | in-guest virtio-fs MB/s and files/s (lab) |
//! | [`wl_cost`] | (8) | `--skip-wl-cost` | virtio-wl instructions per frame (callgrind) |
//! | [`wl_proxy_host`] | (10) | `--skip-wl-proxy-host` | `qvm-wl-proxy` CPU per frame, no VM |
//! | [`wl`] | (7), (10) | `--skip-wl` | virtio-wl fps and CPU per frame (lab) |
//! | [`desktop`] | (9) | `--skip-desktop` | `qvm run -- true` cold and warm (lab) |
//! | [`boot`] | (2) | `--skip-lab` | exec to guest userspace (lab) |
//!
//! [`common`] holds what several of them use. The helper binaries in `src/bin` run elsewhere:
//! `qvm-guest-io` in the blk bench's guest, `qvm-blk-cost` and `qvm-wl-cost` under callgrind.
//!
//! Usage: qvm-bench [--runs N] [--skip-lab] [--skip-host] [--skip-blk] [--skip-blk-cost] [--skip-net]
//!              [--skip-fs] [--skip-wl] [--wl-proxy-only] [--skip-wl-cost] [--skip-wl-proxy-host]
//!              [--skip-desktop]

mod blk;
mod blk_cost;
mod boot;
mod common;
mod desktop;
mod fs;
mod host;
mod net;
mod wl;
mod wl_cost;
mod wl_proxy_host;

/// A bench to run: the flag that leaves it out, its name in the failure line, the bench.
type Entry<'a> = (&'a str, &'a str, &'a dyn Fn() -> Result<(), String>);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let skip = |f: &str| args.iter().any(|a| a == f);
    let proxy_only = skip("--wl-proxy-only");
    let benches: [Entry; 10] = [
        ("--skip-host", "host bench", &|| host::bench(runs.max(10))),
        ("--skip-blk-cost", "blk cost bench", &blk_cost::bench),
        ("--skip-blk", "blk bench", &|| blk::bench(runs)),
        ("--skip-net", "net bench", &|| net::bench(runs)),
        ("--skip-fs", "fs bench", &|| fs::bench(runs)),
        ("--skip-wl-cost", "wl cost bench", &wl_cost::bench),
        ("--skip-wl-proxy-host", "wl proxy host bench", &|| {
            wl_proxy_host::bench(runs.min(5))
        }),
        ("--skip-wl", "wl bench", &|| {
            wl::bench(runs.min(3), proxy_only)
        }),
        ("--skip-desktop", "desktop bench", &|| {
            desktop::bench(runs.min(5))
        }),
        ("--skip-lab", "lab boot bench", &|| boot::bench(runs)),
    ];
    let mut failed = false;
    for (flag, name, bench) in benches {
        if skip(flag) {
            continue;
        }
        if let Err(e) = bench() {
            eprintln!("{name} failed: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
