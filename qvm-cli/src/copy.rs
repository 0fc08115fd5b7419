//! `qvm copy`: host-mediated copies into `~/Incoming/<source>/` of a VM, only after the host
//! user confirms. The guest never starts a copy: the host reads the source (a host file, or
//! a VM's file through its agent with `cat`) and writes it through the target's agent.

use std::io::{BufRead, Write};

/// The source name of files copied from the host.
pub const HOST_SOURCE: &str = "dom0";
/// Largest file `qvm copy` moves (it holds the file in memory).
pub const MAX_COPY_BYTES: usize = 256 << 20;
/// The guest-side exit code of "the file is already there".
pub const EXISTS_CODE: i32 = 17;
/// Most of a guest command's stderr `qvm copy` keeps (for its error message).
pub const MAX_STDERR: usize = 64 << 10;
/// A VM that sends nothing for this long while a copy runs ends the copy.
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// A writer that keeps the first `max` bytes written to it and drops the rest: what a guest
/// sends that we only show in a message must not grow without bound.
pub struct Capped {
    pub kept: Vec<u8>,
    max: usize,
}

impl Capped {
    pub fn new(max: usize) -> Capped {
        Capped {
            kept: Vec::new(),
            max,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.max.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfirmError {
    #[error("copying needs confirmation and stdin is not a terminal: pass --yes to confirm from a script")]
    NotATerminal,
    #[error("copy cancelled: not confirmed")]
    Declined,
    #[error("cannot read the answer: {0}")]
    Read(String),
}

/// Asks `prompt` unless `yes`; `tty` says whether `input` is a terminal. Only `y` or `yes`
/// (any case) confirms.
pub fn confirm(
    prompt: &str,
    yes: bool,
    tty: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), ConfirmError> {
    if yes {
        return Ok(());
    }
    if !tty {
        return Err(ConfirmError::NotATerminal);
    }
    let _ = write!(out, "{prompt} [y/N] ");
    let _ = out.flush();
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| ConfirmError::Read(e.to_string()))?;
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(ConfirmError::Declined),
    }
}

/// The file name a copy of `path` gets: its last component, if that is a plain name.
pub fn target_name(path: &str) -> Option<&str> {
    let name = path.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != ".." && !name.contains('\0')).then_some(name)
}

/// The guest command that stores stdin as `~/Incoming/<source>/<name>` (guest HOME, else
/// /root): written to a hidden part file and renamed, refusing to overwrite (exit
/// [`EXISTS_CODE`]). Names travel as arguments, never through the shell's parser.
pub fn store_command(source: &str, name: &str) -> Vec<String> {
    let script = format!(
        "set -e; d=\"${{HOME:-/root}}\"; [ \"$d\" = / ] && d=/root; d=\"$d/Incoming/$1\"; \
         mkdir -p \"$d\"; [ -e \"$d/$2\" ] && {{ echo \"$d/$2 already exists\" >&2; exit {EXISTS_CODE}; }}; \
         cat > \"$d/.$2.part\"; mv \"$d/.$2.part\" \"$d/$2\"; echo \"$d/$2\""
    );
    vec![
        "sh".into(),
        "-c".into(),
        script,
        "qvm-copy".into(),
        source.into(),
        name.into(),
    ]
}

/// The guest command that prints a file of the source VM.
pub fn read_command(path: &str) -> Vec<String> {
    vec!["cat".into(), "--".into(), path.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(yes: bool, tty: bool, answer: &str) -> Result<(), ConfirmError> {
        let mut input = std::io::Cursor::new(answer.as_bytes().to_vec());
        let mut out = Vec::new();
        confirm("Copy?", yes, tty, &mut input, &mut out)
    }

    #[test]
    fn yes_confirms_without_asking() {
        assert_eq!(ask(true, false, ""), Ok(()));
    }

    #[test]
    fn no_terminal_needs_yes() {
        assert_eq!(ask(false, false, "y\n"), Err(ConfirmError::NotATerminal));
    }

    #[test]
    fn only_y_or_yes_confirms() {
        assert_eq!(ask(false, true, "y\n"), Ok(()));
        assert_eq!(ask(false, true, "YES\n"), Ok(()));
        assert_eq!(ask(false, true, "\n"), Err(ConfirmError::Declined));
        assert_eq!(ask(false, true, "n\n"), Err(ConfirmError::Declined));
        assert_eq!(ask(false, true, ""), Err(ConfirmError::Declined));
        assert_eq!(
            ask(false, true, "yes please\n"),
            Err(ConfirmError::Declined)
        );
    }

    #[test]
    fn target_names() {
        assert_eq!(target_name("/etc/hostname"), Some("hostname"));
        assert_eq!(target_name("notes.txt"), Some("notes.txt"));
        assert_eq!(target_name("/root/dir/"), Some("dir"));
        assert_eq!(target_name("/"), None);
        assert_eq!(target_name(".."), None);
        assert_eq!(target_name("a/."), None);
    }

    #[test]
    fn store_command_passes_names_as_arguments() {
        let c = store_command("a", "x; rm -rf /");
        assert_eq!(c[0], "sh");
        assert_eq!(c[4], "a");
        assert_eq!(c[5], "x; rm -rf /");
        assert!(!c[2].contains("rm -rf"));
    }

    #[test]
    fn capped_keeps_only_the_start() {
        let mut c = Capped::new(5);
        c.write_all(b"abc").unwrap();
        c.write_all(b"defgh").unwrap();
        c.write_all(&vec![b'x'; 1 << 20]).unwrap();
        assert_eq!(c.kept, b"abcde");
    }
}
