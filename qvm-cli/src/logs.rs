//! A VM's two logs in its runtime directory: `console.log`, the guest's serial console (the
//! VMM's stdout), and `vmm.log`, what qvm-vmm itself says (its stderr). The guest writes every
//! byte of the console, so qvm reads it with bounds (never more than [`MAX_READ`] at a time)
//! and shows it with control characters escaped, so a guest cannot drive the user's terminal
//! (Qubes' qvm-run filters escapes the same way). `vmm.log` is the trustworthy one: only the
//! VMM writes it.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The most qvm reads of a log at once.
pub const MAX_READ: u64 = 64 << 10;
/// Longest line quoted from a guest's console.
const MAX_LINE: usize = 200;
/// Lines before a failure marker quoted with it (what the guest said led to it).
const CONTEXT_LINES: usize = 3;

/// `s` with every control character but tab written as `\xNN`, cut to [`MAX_LINE`] characters
/// ([`qvm_agent::term::escaped`]).
pub fn sanitize(s: &str) -> String {
    qvm_agent::term::escaped(s, MAX_LINE)
}

/// Reads at most the last `max` bytes of `path` (nothing if it is missing).
fn read_end(path: &Path, max: u64) -> Vec<u8> {
    let Ok(mut f) = crate::runtime::open_regular(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

/// The last `n` lines of `path` (within its last [`MAX_READ`] bytes), sanitized.
pub fn tail(path: &Path, n: usize) -> String {
    let buf = read_end(path, MAX_READ);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .map(|l| sanitize(l.trim_end_matches('\r')))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What the guest's console has said so far about its boot and its agent (markers of our
/// initramfs's `init` and of `qvm-agent`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootProgress {
    /// `QVM-USERSPACE-READY`: the guest's init runs.
    pub userspace: bool,
    /// `QVM-AGENT-STARTING`: init is starting the agent (the apps image's set-up included).
    pub agent_starting: bool,
    /// `qvm-agent: listening on vsock port`: the agent is up.
    pub agent_listening: bool,
    /// `QVM-AGENT-FAILED: why`, with the lines before it: the agent will not come.
    pub agent_failed: Option<String>,
}

/// Follows a console log as it grows.
#[derive(Debug)]
pub struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    /// An unfinished last line.
    partial: Vec<u8>,
    recent: VecDeque<String>,
    pub progress: BootProgress,
}

impl ConsoleWatch {
    pub fn new(path: &Path) -> Self {
        ConsoleWatch {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            recent: VecDeque::new(),
            progress: BootProgress::default(),
        }
    }

    /// Reads what the console gained since the last call. A guest that writes more than
    /// [`MAX_READ`] in between is skipped over (its markers may be missed: its own loss); a
    /// console that shrank was truncated by a new boot and is read afresh.
    pub fn poll(&mut self) {
        let Ok(mut f) = crate::runtime::open_regular(&self.path) else {
            return;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            *self = ConsoleWatch::new(&self.path);
        }
        if len.saturating_sub(self.offset) > MAX_READ {
            self.offset = len - MAX_READ;
            self.partial.clear();
        }
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.take(MAX_READ).read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.line(line.trim_end_matches('\r'));
        }
        // A line longer than we would ever quote is cut here, so the buffer stays bounded.
        if self.partial.len() > MAX_READ as usize {
            self.partial.clear();
        }
    }

    fn line(&mut self, line: &str) {
        let p = &mut self.progress;
        if line.contains("QVM-USERSPACE-READY") {
            p.userspace = true;
        } else if line.contains("QVM-AGENT-STARTING") {
            p.agent_starting = true;
        } else if line.contains("qvm-agent: listening on vsock port") {
            p.agent_listening = true;
        } else if let Some(pos) = line.find("QVM-AGENT-FAILED:") {
            if p.agent_failed.is_none() {
                let why = line[pos + "QVM-AGENT-FAILED:".len()..].trim();
                let mut said: Vec<String> = self.recent.iter().cloned().collect();
                said.push(sanitize(why));
                p.agent_failed = Some(said.join(" / "));
            }
        }
        let line = line.trim();
        if !line.is_empty() {
            if self.recent.len() == CONTEXT_LINES {
                self.recent.pop_front();
            }
            self.recent.push_back(sanitize(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    /// An empty `console.log` in a new directory, which lives as long as the TempDir.
    fn console_log() -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let f = File::create(&p).unwrap();
        (dir, p, f)
    }

    #[test]
    fn sanitize_escapes_terminal_controls_and_cuts_long_lines() {
        assert_eq!(
            sanitize("ok\x1b]0;owned\x07 done"),
            "ok\\x1b]0;owned\\x07 done"
        );
        assert_eq!(sanitize("a\tb\rc"), "a\tb\\x0dc");
        let long = "x".repeat(500);
        assert_eq!(sanitize(&long).chars().count(), MAX_LINE + 1);
    }

    #[test]
    fn tail_reads_only_the_end_and_sanitizes() {
        let (dir, p, mut f) = console_log();
        // More than MAX_READ of noise before the end.
        for _ in 0..(2 * MAX_READ / 64) {
            f.write_all(&[b'n'; 63]).unwrap();
            f.write_all(b"\n").unwrap();
        }
        f.write_all(b"one\ntwo \x1b[2J\nthree\n").unwrap();
        assert_eq!(tail(&p, 2), "two \\x1b[2J\nthree");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn watch_follows_markers_and_quotes_why_the_agent_failed() {
        let (_dir, p, mut f) = console_log();
        let mut w = ConsoleWatch::new(&p);
        w.poll();
        assert_eq!(w.progress, BootProgress::default());
        f.write_all(b"[    1.0] kernel\nQVM-USERSPACE-READY nproc=1\nQVM-AGENT-STA")
            .unwrap();
        w.poll();
        assert!(w.progress.userspace && !w.progress.agent_starting);
        f.write_all(b"RTING\nqvm-enter-rootfs: cannot mount virtio-fs qvm-home on /root\n")
            .unwrap();
        f.write_all(b"QVM-AGENT-FAILED: cannot set up the apps image /dev/vdb\x1b[31m\n")
            .unwrap();
        w.poll();
        assert!(w.progress.agent_starting);
        assert_eq!(
            w.progress.agent_failed.as_deref(),
            Some(
                "QVM-USERSPACE-READY nproc=1 / QVM-AGENT-STARTING / qvm-enter-rootfs: cannot \
                 mount virtio-fs qvm-home on /root / cannot set up the apps image \
                 /dev/vdb\\x1b[31m"
            )
        );
        // A new boot truncates the console: read afresh.
        File::create(&p).unwrap();
        w.poll();
        assert_eq!(w.progress, BootProgress::default());
    }

    #[test]
    fn watch_skips_a_flood_but_stays_bounded() {
        let (_dir, p, mut f) = console_log();
        let mut w = ConsoleWatch::new(&p);
        // One endless line, then the agent's line.
        f.write_all(&vec![b'x'; 3 * MAX_READ as usize]).unwrap();
        w.poll();
        assert!(w.partial.len() <= MAX_READ as usize);
        f.write_all(b"\nqvm-agent: listening on vsock port 5000\n")
            .unwrap();
        w.poll();
        assert!(w.progress.agent_listening);
    }
}
