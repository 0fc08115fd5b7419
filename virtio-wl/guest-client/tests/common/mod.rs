//! Shared by the host end-to-end tests: a weston to talk to (headless, or x11 inside Xvfb),
//! child reaping, PATH lookup, and the demo's runs whose output the tests wait on.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Lines};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

pub const SOCKET: &str = "qvm-wl-e2e";

/// Animations off (so the screenshot is never mid-fade), no panel, no lock screen: the one
/// weston.ini the lab tests and benches use too (`qvm_tests::wayland::WESTON_INI`).
pub const WESTON_INI: &str = include_str!("../../../../tests/assets/weston.ini");

/// The qvm-wl-demo binary of this build.
pub fn demo() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_qvm-wl-demo"))
}

pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// `prog` on PATH, or a failed test naming the Debian package to install: a test whose
/// dependency is missing fails, it does not pass as skipped (scripts/install-deps.sh installs
/// them all).
pub fn need(prog: &str) -> PathBuf {
    let package = match prog {
        "Xvfb" => "xvfb",
        "xdotool" => "xdotool",
        "weston-debug" | "weston-screenshooter" | "weston-terminal" | "weston" => "weston",
        _ => prog,
    };
    which(prog).unwrap_or_else(|| {
        panic!(
            "{prog} is not on PATH: install the Debian package {package} (scripts/install-deps.sh)"
        )
    })
}

/// Kills and reaps the child when dropped, also on panic.
pub struct Reaper(pub Child);

impl Reaper {
    /// Kill (if still running), reap, and return what it wrote to a piped stderr.
    pub fn finish(&mut self) -> String {
        if let Ok(None) = self.0.try_wait() {
            // SIGTERM first so weston shuts down and reaps its helper clients
            // (weston-desktop-shell, weston-keyboard); SIGKILL if it does not.
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
        let mut s = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Reads the child's piped stdout until a line `done` accepts. A child whose output ends
/// first fails the test: "`what` failed", its stderr and weston's log. Returns the rest of
/// its stdout, to keep while the child runs (a closed pipe would fail its next line).
pub fn wait_for_line(
    child: &mut Reaper,
    weston: &Weston,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Lines<BufReader<ChildStdout>> {
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if done(&l) => return lines,
            Some(Ok(_)) => {}
            _ => panic!("{what} failed: {}\n{}", child.finish(), weston.log()),
        }
    }
}

/// Runs `demo` (a [`demo()`] command for a compositor) owning the clipboard selection `text`
/// for 30 s; returns once it has set it, with the rest of its stdout (see [`wait_for_line`]).
pub fn own_selection(
    mut demo: Command,
    weston: &Weston,
    text: &str,
) -> (Reaper, Lines<BufReader<ChildStdout>>) {
    let mut owner = Reaper(
        demo.args(["--transport", "socket", "--frames", "1", "--hold", "30"])
            .args(["--set-selection", text])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = wait_for_line(&mut owner, weston, "selection owner", |l| {
        l == "QVM-WL-SELECTION-SET"
    });
    (owner, lines)
}

pub struct Weston {
    pub dir: tempfile::TempDir,
    pub proc: Reaper,
}

impl Weston {
    /// Headless backend: no input devices, so no wl_seat.
    pub fn start(weston: &Path) -> Weston {
        Self::start_with(weston, &["--backend=headless-backend.so"], None)
    }

    /// X11 backend inside an Xvfb on `x_display`: it has a wl_seat (pointer + keyboard).
    pub fn start_x11(weston: &Path, x_display: &str) -> Weston {
        Self::start_with(weston, &["--backend=x11-backend.so"], Some(x_display))
    }

    pub fn start_with(weston: &Path, backend: &[&str], x_display: Option<&str>) -> Weston {
        let dir = tempfile::Builder::new()
            .prefix("qvm-wl-e2e")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let ini = dir.path().join("weston.ini");
        std::fs::write(&ini, WESTON_INI).unwrap();
        let log = std::fs::File::create(dir.path().join("weston.log")).unwrap();
        let mut cmd = Command::new(weston);
        cmd.env_remove("DISPLAY");
        if let Some(d) = x_display {
            cmd.env("DISPLAY", d);
        }
        let child = cmd
            .arg(format!("--config={}", ini.display()))
            .args(backend)
            .args([
                &format!("--socket={SOCKET}"),
                "--width=1280",
                "--height=800",
                "--use-pixman",
                "--debug",
                "--idle-time=0",
            ])
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn weston");
        let mut w = Weston {
            dir,
            proc: Reaper(child),
        };
        let sock = w.dir.path().join(SOCKET);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if let Ok(Some(st)) = w.proc.0.try_wait() {
                panic!("weston exited early ({st}):\n{}", w.log());
            }
            assert!(
                Instant::now() < deadline,
                "weston socket never appeared:\n{}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        w
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weston.log")).unwrap_or_default()
    }

    /// Starts `weston-debug proto` (weston runs with `--debug`): weston's protocol log, in
    /// `proto.log` of its directory, until the returned child is dropped.
    pub fn watch_protocol(&self) -> Reaper {
        let log = std::fs::File::create(self.dir.path().join("proto.log")).unwrap();
        let r = Reaper(
            self.client(&need("weston-debug"))
                .arg("proto")
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn weston-debug"),
        );
        // It logs from its bind on; a client started before that would be missed.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(self.dir.path().join("proto.log")).map_or(0, |m| m.len()) == 0 {
            assert!(
                Instant::now() < deadline,
                "weston-debug proto logged nothing"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// Waits until weston has given keyboard focus to the client whose toplevel set the title
    /// `title` (see [`keyboard_focused`]); needs [`Weston::watch_protocol`] running. Typing
    /// before that loses keys to a window not yet mapped; after it, one try reaches the app.
    pub fn wait_keyboard_focus(&self, title: &str, patience: Duration) {
        let deadline = Instant::now() + patience;
        let path = self.dir.path().join("proto.log");
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if keyboard_focused(&log, title) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weston never gave keyboard focus to {title:?} within {patience:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn client(&self, prog: &Path) -> Command {
        let mut c = Command::new(prog);
        c.env("XDG_RUNTIME_DIR", self.dir.path())
            .env("WAYLAND_DISPLAY", SOCKET)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Take a screenshot; returns the PNG's path.
    pub fn screenshot(&self, screenshooter: &Path) -> PathBuf {
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "png") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let out = self.client(screenshooter).output().unwrap();
        assert!(
            out.status.success(),
            "weston-screenshooter failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "png"))
            .expect("screenshooter wrote no png")
    }
}

/// Start Xvfb on a display it picks itself (-displayfd); returns it and ":N".
pub fn start_xvfb(xvfb: &Path) -> (Reaper, String) {
    let mut child = Reaper(
        Command::new(xvfb)
            .args([
                "-displayfd",
                "1",
                "-nolisten",
                "tcp",
                "-screen",
                "0",
                "1024x768x24",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn Xvfb"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let n: u32 = line.trim().parse().expect("Xvfb -displayfd output");
    (child, format!(":{n}"))
}

/// Whether weston's protocol log shows keyboard focus given to the client that set the title
/// `title`: `client 0x... rq xdg_toplevel@N.set_title("TITLE")` and, for the same client,
/// `client 0x... ev wl_keyboard@M.enter(`.
pub fn keyboard_focused(log: &str, title: &str) -> bool {
    let set_title = format!(".set_title({title:?})");
    let client = |l: &str| -> Option<String> {
        let rest = l.split("] client ").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    };
    let Some(c) = log
        .lines()
        .find(|l| l.contains(" rq ") && l.contains(&set_title))
        .and_then(client)
    else {
        return false;
    };
    let enter = format!("client {c} ev wl_keyboard@");
    log.lines()
        .any(|l| l.contains(&enter) && l.contains(".enter("))
}

#[test]
fn keyboard_focus_is_read_from_weston_s_protocol_log() {
    let log = r#"[12:13:50.404][proto] client 0x55aa rq xdg_toplevel@17.set_title("Wayland Terminal")
[12:13:50.405][proto] client 0x77bb ev wl_keyboard@9.enter(2, wl_surface@3, array)
[12:13:50.427][proto] client 0x55aa ev wl_keyboard@19.keymap(1, fd 28, 64434)"#;
    assert!(!keyboard_focused(log, "Wayland Terminal"));
    let log = format!(
        "{log}\n[12:13:50.427][proto] client 0x55aa ev wl_keyboard@19.enter(3, wl_surface@15, array)"
    );
    assert!(keyboard_focused(&log, "Wayland Terminal"));
    assert!(!keyboard_focused(&log, "Other"));
}
