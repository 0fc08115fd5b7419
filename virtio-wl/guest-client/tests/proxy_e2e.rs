//! qvm-wl-proxy on the host, between clients and a real weston (`--upstream socket:`): the
//! same relaying code that runs in the guest over /dev/wl0, with the pool mirroring, id
//! translation, keymap and clipboard paths exercised by real clients. A missing weston (or
//! Xvfb, xdotool, weston-terminal where needed) fails the test, naming the package.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{demo, need, own_selection, start_xvfb, wait_for_line, Reaper, Weston, SOCKET};

const GUEST_SOCKET: &str = "guest-0";

/// A running proxy: guest clients connect to `GUEST_SOCKET` in weston's runtime dir.
struct Proxy {
    proc: Reaper,
    lines: mpsc::Receiver<String>,
}

impl Proxy {
    fn start(weston: &Weston, extra: &[&str]) -> Proxy {
        let dir = weston.dir.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_qvm-wl-proxy"))
            .arg("--socket")
            .arg(dir.join(GUEST_SOCKET))
            .arg("--upstream")
            .arg(format!("socket:{}", dir.join(SOCKET).display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qvm-wl-proxy");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Proxy {
            proc: Reaper(child),
            lines: rx,
        };
        let ready = p.next_line(Duration::from_secs(10));
        assert!(ready.starts_with("QVM-WL-PROXY-READY "), "{ready}");
        p
    }

    fn next_line(&mut self, patience: Duration) -> String {
        self.lines
            .recv_timeout(patience)
            .unwrap_or_else(|_| panic!("qvm-wl-proxy printed nothing: {}", self.proc.finish()))
    }

    /// The stats line of the next client to leave, as key -> value.
    fn stats(&mut self) -> std::collections::HashMap<String, u64> {
        let l = self.next_line(Duration::from_secs(20));
        assert!(l.starts_with("QVM-WL-PROXY-STATS "), "{l}");
        l.split_whitespace()
            .skip(1)
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}

/// A client of the proxy (a guest app, as far as it knows).
fn guest_client(weston: &Weston, prog: &Path) -> Command {
    let mut c = weston.client(prog);
    c.env("WAYLAND_DISPLAY", GUEST_SOCKET);
    c
}

/// Runs the demo through the proxy to its hold, screenshots (weston directly) and checks
/// every pixel of the last frame.
fn demo_frames_check(weston: &Weston, shooter: &Path, w: u32, h: u32, frames: u32) {
    let mut d = Reaper(
        guest_client(weston, demo())
            .args(["--transport", "socket", "--hold", "20"])
            .args(["--width", &w.to_string(), "--height", &h.to_string()])
            .args(["--frames", &frames.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _stdout = wait_for_line(&mut d, weston, "demo through the proxy", |l| {
        l.starts_with("QVM-WL-HOLD")
    });
    let png = weston.screenshot(shooter);
    let out = Command::new(env!("CARGO_BIN_EXE_qvm-wl-check"))
        .arg(&png)
        .args(["--width", &w.to_string(), "--height", &h.to_string()])
        .args(["--frame", &(frames - 1).to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("pixels={}", w * h)),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.finish();
}

#[test]
fn proxy_relays_shm_frames_pixel_exact() {
    let (weston_bin, shooter) = (need("weston"), need("weston-screenshooter"));
    let weston = Weston::start(&weston_bin);
    let mut proxy = Proxy::start(&weston, &[]);
    demo_frames_check(&weston, &shooter, 320, 240, 12);
    let s = proxy.stats();
    // The demo's own pool (two buffers) is mirrored; every frame is copied once, and each
    // copy is at most one buffer (the demo damages the whole buffer every frame).
    assert_eq!(s["pools_mirrored"], 1, "{s:?}");
    assert_eq!(s["commits_copied"], 12, "{s:?}");
    assert_eq!(s["bytes_copied"], 12 * 320 * 240 * 4, "{s:?}");
    // weston's private globals are not in the proxy's protocol set: hidden.
    assert!(s["globals_hidden"] >= 2, "{s:?}");
    // Odd sizes and a single frame.
    demo_frames_check(&weston, &shooter, 17, 9, 1);
    proxy.stats();
}

/// weston-terminal, an unmodified libwayland/cairo app, through the proxy: it renders, gets
/// its keymap (copied by the proxy) and the text typed into weston's window reaches its shell.
#[test]
fn proxy_weston_terminal_takes_typed_text() {
    let (weston_bin, xvfb, xdotool, term) = (
        need("weston"),
        need("Xvfb"),
        need("xdotool"),
        need("weston-terminal"),
    );
    let (_x, display) = start_xvfb(&xvfb);
    let weston = Weston::start_x11(&weston_bin, &display);
    let _proto = weston.watch_protocol();
    let mut proxy = Proxy::start(&weston, &[]);
    let typed = weston.dir.path().join("typed");
    let mut t = Reaper(
        guest_client(&weston, &term)
            .env("SHELL", "/bin/sh")
            .env("HOME", weston.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let xdo = |args: &[&str]| {
        let out = Command::new(&xdotool)
            .env("DISPLAY", &display)
            .args(args)
            .output()
            .expect("run xdotool");
        assert!(
            out.status.success(),
            "xdotool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Pointer into weston's X window (Xvfb has no window manager: X focus follows it); then,
    // once weston has given the terminal keyboard focus, type one command line (a shell that
    // is not reading yet finds it in its pty).
    xdo(&["mousemove", "640", "400"]);
    weston.wait_keyboard_focus("Wayland Terminal", Duration::from_secs(120));
    xdo(&["type", "--delay", "15", "echo qvm-typed-$((6*7)) > typed\n"]);
    // The shell writes the file when it runs the line: wait for the whole line to land.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&typed).unwrap_or_default();
        if text.ends_with('\n') {
            break text;
        }
        if let Ok(Some(st)) = t.0.try_wait() {
            panic!(
                "weston-terminal exited ({st}): {}\n{}",
                t.finish(),
                weston.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the typed line never reached weston-terminal's shell ({text:?}): {}\n{}",
            t.finish(),
            weston.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(text, "qvm-typed-42\n");
    t.finish();
    let s = proxy.stats();
    assert!(
        s["pools_mirrored"] >= 1 && s["commits_copied"] >= 1,
        "{s:?}"
    );
}

/// The clipboard through the proxy, both ways, and a client that gets a null selection.
#[test]
fn proxy_clipboard_both_ways_and_null_selection() {
    let (weston_bin, xvfb) = (need("weston"), need("Xvfb"));
    let (_x, display) = start_xvfb(&xvfb);
    let weston = Weston::start_x11(&weston_bin, &display);
    let mut proxy = Proxy::start(&weston, &[]);
    let get = |through_proxy: bool| {
        let mut c = if through_proxy {
            guest_client(&weston, demo())
        } else {
            weston.client(demo())
        };
        let out = c
            .args(["--transport", "socket", "--frames", "1", "--get-selection"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // No selection yet: the guest client is told selection(null) and must survive it.
    let (_, stdout, stderr) = get(true);
    assert!(!stdout.contains("QVM-WL-SELECTION "), "{stdout}{stderr}");
    let null_stats = proxy.stats();
    assert_eq!(null_stats["commits_copied"], 1, "{null_stats:?}");

    for (owner_via_proxy, text) in [(true, "guest-to-host ✓"), (false, "host-to-guest é")] {
        let c = if owner_via_proxy {
            guest_client(&weston, demo())
        } else {
            weston.client(demo())
        };
        let (mut owner, _owner_stdout) = own_selection(c, &weston, text);
        let (code, stdout, stderr) = get(!owner_via_proxy);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(
            stdout
                .lines()
                .any(|l| l == format!("QVM-WL-SELECTION {text}")),
            "{stdout}{stderr}"
        );
        owner.finish();
        proxy.stats();
    }
}
