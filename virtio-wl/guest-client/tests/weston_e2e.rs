//! End to end on the host: headless weston (desktop shell, pixman), qvm-wl-demo over
//! `--transport socket`, weston-screenshooter, qvm-wl-check. A missing weston or
//! weston-screenshooter fails the test, naming the package.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{demo, need, own_selection, start_xvfb, Reaper, Weston};

fn check(png: &Path, w: u32, h: u32, frame: u32) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qvm-wl-check"))
        .arg(png)
        .args(["--width", &w.to_string(), "--height", &h.to_string()])
        .args(["--frame", &frame.to_string()])
        .output()
        .unwrap()
}

/// Run the demo, screenshot while it holds its last frame, check, and wait for it.
fn run_demo(weston: &Weston, shooter: &Path, w: u32, h: u32, frames: u32, extra: &[&str]) {
    let mut cmd = weston.client(demo());
    cmd.args(["--transport", "socket", "--hold", "20"])
        .args(["--width", &w.to_string(), "--height", &h.to_string()])
        .args(["--frames", &frames.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut demo = Reaper(cmd.spawn().expect("spawn qvm-wl-demo"));
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hold = l.starts_with("QVM-WL-HOLD");
                lines.push(l);
                if hold {
                    break;
                }
            }
            Err(_) => {
                let out = demo.finish();
                panic!(
                    "demo never reached its hold: stdout {lines:?}\nstderr {out}\n{}",
                    weston.log()
                );
            }
        }
    }
    assert_eq!(lines[0], "QVM-WL-READY");
    assert_eq!(
        lines[1],
        format!("QVM-WL-HOLD frame={} secs=20", frames - 1)
    );

    let png = weston.screenshot(shooter);
    let ok = check(&png, w, h, frames - 1);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && stdout.starts_with("QVM-WL-CHECK ok origin=("),
        "check failed: {stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains(&format!("pixels={}", w * h)), "{stdout}");
    // The previous frame must not pass: the check really looks at the pixels.
    if frames > 1 {
        let bad = check(&png, w, h, frames - 2);
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stdout).starts_with("QVM-WL-CHECK mismatch"));
    }
    eprintln!("{stdout}");
    // The hold is long on purpose (slow CI); the screenshot is checked, so stop it now.
    let stderr = demo.finish();
    assert!(!stderr.contains("error"), "demo stderr: {stderr}");
}

#[test]
fn weston_screenshot_shows_every_pixel() {
    let (weston_bin, shooter) = (need("weston"), need("weston-screenshooter"));
    let weston = Weston::start(&weston_bin);
    run_demo(&weston, &shooter, 320, 240, 12, &[]);
    run_demo(
        &weston,
        &shooter,
        1000,
        700,
        3,
        &["--copy-path", "--title", "copy"],
    );
    run_demo(&weston, &shooter, 17, 9, 1, &[]);
    drop(weston.proc);
}

/// A full run to the end: exit status 0 and the DONE line with the frame count.
#[test]
fn weston_demo_runs_to_completion() {
    let weston_bin = need("weston");
    let weston = Weston::start(&weston_bin);
    let out = weston
        .client(demo())
        .args(["--transport", "socket", "--width", "64", "--height", "48"])
        .args(["--frames", "10", "--hold", "0.2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        weston.log()
    );
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("QVM-WL-DONE frames=10 secs="), "{stdout}");
    let fps: f64 = last.rsplit("fps=").next().unwrap().parse().unwrap();
    assert!(fps > 0.0, "{last}");
}

/// Headless weston has no wl_seat: the clipboard options fail cleanly.
#[test]
fn headless_weston_has_no_seat_for_the_clipboard() {
    let weston_bin = need("weston");
    let weston = Weston::start(&weston_bin);
    let out = weston
        .client(demo())
        .args(["--transport", "socket", "--frames", "1", "--get-selection"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no wl_seat"), "{stderr}");
}

/// One demo owns the selection, a second one reads it through a pipe.
#[test]
fn clipboard_roundtrip_between_two_clients() {
    let (weston_bin, xvfb) = (need("weston"), need("Xvfb"));
    let (_x, display) = start_xvfb(&xvfb);
    let weston = Weston::start_x11(&weston_bin, &display);
    let text = "qvm clipboard: héllo ✓";
    let (owner, _owner_stdout) = own_selection(weston.client(demo()), &weston, text);
    let out = weston
        .client(demo())
        .args(["--transport", "socket", "--frames", "1", "--get-selection"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reader failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("QVM-WL-SELECTION {text}")),
        "{stdout}"
    );
    drop(owner);
}
