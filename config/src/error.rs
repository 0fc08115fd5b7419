//! [`ConfigError`]: every way a config can be wrong, each one line that names the key and says
//! how to fix it, and the [`Section`] it is about.
//!
//! The message is written for `vm.toml` (`[[disk]] #2 id = ...`). The REST API, where a section
//! is its own resource, shows the same message without that header
//! ([`ConfigError::detail`]) after its own name for the section ([`Section::api_name`]).

use std::path::PathBuf;

use crate::{MAX_CMDLINE_LEN, MAX_DISKS, MAX_NETS, MAX_VIRTIO_DEVICES, MIN_MEMORY_MIB};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("[machine] memory_mib = {0}: too small, a guest needs at least {MIN_MEMORY_MIB}; set memory_mib = {MIN_MEMORY_MIB} or more")]
    MemoryTooSmall(u64),
    #[error("[machine] memory_mib = {got}: more than {}; lower memory_mib", memory_bound(*.host, *.of_host))]
    MemoryTooLarge {
        got: u64,
        /// The bound in MiB: this host's RAM, or qvm's own limit ([`crate::MAX_MEMORY_MIB`]).
        host: u64,
        /// Whether `host` is this host's RAM (the API, which does not look at the host, and
        /// hosts with more RAM than qvm supports are bounded by qvm's limit instead).
        of_host: bool,
    },
    #[error("[machine] vcpus = 0: a VM needs at least one vCPU; set vcpus = 1 or more")]
    NoVcpus,
    #[error("[machine] vcpus = {got}: more than the {max} vCPUs qvm supports; lower vcpus")]
    TooManyVcpus { got: u64, max: u64 },
    #[error("[boot] {key} = {path:?}: {reason}")]
    BadFile {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("[boot] cmdline is {0} bytes; Linux takes at most {max}, shorten it", max = MAX_CMDLINE_LEN - 1)]
    CmdlineTooLong(usize),
    #[error("[boot] cmdline contains a NUL or non-ASCII character; use plain ASCII")]
    CmdlineNotAscii,
    #[error("[console] mode = \"file\" needs path = \"<file>\" for the guest's output")]
    ConsoleFileWithoutPath,
    #[error("[console] path is only used with mode = \"file\"; remove it or set mode = \"file\"")]
    ConsolePathWithoutFile,
    #[error("[console] limit_mib = {0}: give 1 to {max} (MiB a console log may grow to)", max = crate::console::MAX_LIMIT_MIB)]
    ConsoleLimit(u32),
    #[error("[[disk]] #{} path = {path:?}: {reason}", .index + 1)]
    BadDisk {
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("[[disk]] #{} id = {id:?}: {reason}", .index + 1)]
    BadDiskId {
        index: usize,
        id: String,
        reason: String,
    },
    #[error("{0} [[disk]] entries; qvm supports at most {MAX_DISKS}")]
    TooManyDisks(usize),
    #[error("{0} [[net]] entries; qvm supports at most {MAX_NETS}")]
    TooManyNets(usize),
    #[error("{0} virtio devices ([[disk]], [[net]], [vsock], [[fs]] and [wayland] together); qvm supports at most {MAX_VIRTIO_DEVICES}")]
    TooManyDevices(usize),
    #[error("[[net]] #{}: {reason}", .index + 1)]
    BadNet { index: usize, reason: String },
    #[error("[[fs]] #{}: {reason}", .index + 1)]
    BadFs { index: usize, reason: String },
    #[error("[vsock] {key}: {reason}")]
    BadVsock { key: String, reason: String },
    #[error("[wayland] {key}: {reason}")]
    BadWayland { key: String, reason: String },
    /// [`crate::VmConfig::to_toml`] failed (a path that is not UTF-8); the serializer's message.
    #[error("{0}")]
    Serialize(String),
    /// A JSON body does not fit the schema (`crate::from_json`); serde_json's message.
    #[error("{0}")]
    Json(String),
    /// More `[[fs]]` entries than there are virtio devices: what `PUT /vm/config` refuses
    /// ([`crate::VmConfig::validate_values`]); a file gets [`ConfigError::TooManyDevices`].
    #[error("{0} [[fs]] entries; qvm supports at most {MAX_VIRTIO_DEVICES} virtio devices in all")]
    TooManyFs(usize),
}

/// The part of a config an error is about; `index` counts list entries from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Machine,
    Boot,
    Console,
    Disk(usize),
    Net(usize),
    Vsock,
    Fs(usize),
    Wayland,
}

impl Section {
    /// The section's key in `vm.toml` (`disk` for `[[disk]]`), and an entry's index in a list.
    fn key(&self) -> (&'static str, Option<usize>) {
        match *self {
            Section::Machine => ("machine", None),
            Section::Boot => ("boot", None),
            Section::Console => ("console", None),
            Section::Disk(i) => ("disk", Some(i)),
            Section::Net(i) => ("net", Some(i)),
            Section::Vsock => ("vsock", None),
            Section::Fs(i) => ("fs", Some(i)),
            Section::Wayland => ("wayland", None),
        }
    }

    /// How a `vm.toml` message starts: `[machine] `, `[[disk]] #2 `, `[[net]] #2: `, ...
    /// (a disk's messages go on with its key, `path = ...`; net's and fs's with a reason).
    pub fn file_header(&self) -> String {
        match (self.key(), self) {
            ((key, None), _) => format!("[{key}] "),
            ((key, Some(i)), Section::Disk(_)) => format!("[[{key}]] #{} ", i + 1),
            ((key, Some(i)), _) => format!("[[{key}]] #{}: ", i + 1),
        }
    }

    /// The section's name in API messages: `machine`, `disk #2`, `net #2`, `wayland`, ...
    pub fn api_name(&self) -> String {
        match self.key() {
            (key, None) => key.into(),
            (key, Some(i)) => format!("{key} #{}", i + 1),
        }
    }
}

impl ConfigError {
    /// The section the error is about; None for errors about the file or the config as a
    /// whole (reading, syntax, JSON, list lengths, the device total).
    pub fn section(&self) -> Option<Section> {
        use ConfigError as E;
        match self {
            E::Read { .. }
            | E::Parse { .. }
            | E::Serialize(_)
            | E::Json(_)
            | E::TooManyFs(_)
            | E::TooManyDisks(_)
            | E::TooManyNets(_)
            | E::TooManyDevices(_) => None,
            E::MemoryTooSmall(_)
            | E::MemoryTooLarge { .. }
            | E::NoVcpus
            | E::TooManyVcpus { .. } => Some(Section::Machine),
            E::BadFile { .. } | E::CmdlineTooLong(_) | E::CmdlineNotAscii => Some(Section::Boot),
            E::ConsoleFileWithoutPath | E::ConsolePathWithoutFile | E::ConsoleLimit(_) => {
                Some(Section::Console)
            }
            E::BadDisk { index, .. } | E::BadDiskId { index, .. } => Some(Section::Disk(*index)),
            E::BadNet { index, .. } => Some(Section::Net(*index)),
            E::BadFs { index, .. } => Some(Section::Fs(*index)),
            E::BadVsock { .. } => Some(Section::Vsock),
            E::BadWayland { .. } => Some(Section::Wayland),
        }
    }

    /// The message without its `vm.toml` section header (`memory_mib = 8: too small, ...`
    /// rather than `[machine] memory_mib = 8: ...`); the whole message when it has none.
    pub fn detail(&self) -> String {
        let message = self.to_string();
        match self.section() {
            Some(section) => match message.strip_prefix(&section.file_header()) {
                Some(rest) => rest.to_string(),
                None => message,
            },
            None => message,
        }
    }
}

/// Where TOML `text` went wrong, for a `path:line: message` error ([`ConfigError::Parse`], and
/// qvm's domains file): the line the error's span starts on, from 1 (1 when it has no span),
/// and toml's message on one line.
pub fn toml_error_at(text: &str, e: &toml::de::Error) -> (usize, String) {
    let line = e.span().map_or(1, |s| {
        let before = &text.as_bytes()[..s.start.min(text.len())];
        before.iter().filter(|&&b| b == b'\n').count() + 1
    });
    (line, e.message().trim().replace('\n', " "))
}

/// What bounds guest memory, for [`ConfigError::MemoryTooLarge`].
fn memory_bound(mib: u64, of_host: bool) -> String {
    if of_host {
        format!("this host's {mib} MiB of RAM")
    } else {
        format!("the {mib} MiB qvm supports")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant. The match below has no `_` arm, so a new variant does not
    /// compile until it is added here (and so checked by the test).
    fn every_variant() -> Vec<ConfigError> {
        use ConfigError as E;
        let all = vec![
            E::Read {
                path: "vm.toml".into(),
                source: std::io::ErrorKind::NotFound.into(),
            },
            E::Parse {
                path: "vm.toml".into(),
                line: 3,
                message: "unknown field".into(),
            },
            E::MemoryTooSmall(8),
            E::MemoryTooLarge {
                got: 9,
                host: 8,
                of_host: true,
            },
            E::NoVcpus,
            E::TooManyVcpus { got: 300, max: 254 },
            E::BadFile {
                key: "kernel",
                path: "k".into(),
                reason: "no such file".into(),
            },
            E::CmdlineTooLong(4000),
            E::CmdlineNotAscii,
            E::ConsoleFileWithoutPath,
            E::ConsolePathWithoutFile,
            E::ConsoleLimit(0),
            E::BadDisk {
                index: 1,
                path: "d".into(),
                reason: "r".into(),
            },
            E::BadDiskId {
                index: 1,
                id: "i".into(),
                reason: "r".into(),
            },
            E::TooManyDisks(17),
            E::TooManyNets(9),
            E::TooManyDevices(20),
            E::BadNet {
                index: 1,
                reason: "r".into(),
            },
            E::BadFs {
                index: 1,
                reason: "r".into(),
            },
            E::BadVsock {
                key: "k".into(),
                reason: "r".into(),
            },
            E::BadWayland {
                key: "k".into(),
                reason: "r".into(),
            },
            E::Serialize("s".into()),
            E::Json("j".into()),
            E::TooManyFs(20),
        ];
        for e in &all {
            match e {
                E::Read { .. }
                | E::Parse { .. }
                | E::MemoryTooSmall(_)
                | E::MemoryTooLarge { .. }
                | E::NoVcpus
                | E::TooManyVcpus { .. }
                | E::BadFile { .. }
                | E::CmdlineTooLong(_)
                | E::CmdlineNotAscii
                | E::ConsoleFileWithoutPath
                | E::ConsolePathWithoutFile
                | E::ConsoleLimit(_)
                | E::BadDisk { .. }
                | E::BadDiskId { .. }
                | E::TooManyDisks(_)
                | E::TooManyNets(_)
                | E::TooManyDevices(_)
                | E::BadNet { .. }
                | E::BadFs { .. }
                | E::BadVsock { .. }
                | E::BadWayland { .. }
                | E::Serialize(_)
                | E::Json(_)
                | E::TooManyFs(_) => {}
            }
        }
        all
    }

    /// detail() strips the header by text: every message of a section must start with it.
    #[test]
    fn every_section_message_starts_with_its_header() {
        for e in every_variant() {
            let message = e.to_string();
            match e.section() {
                Some(s) => {
                    assert!(message.starts_with(&s.file_header()), "{e:?}: {message}");
                    assert_eq!(format!("{}{}", s.file_header(), e.detail()), message);
                    assert!(!e.detail().is_empty(), "{e:?}");
                }
                None => assert_eq!(e.detail(), message),
            }
        }
    }

    #[test]
    fn toml_errors_name_their_line_on_one_line() {
        let text = "a = 1\n# \u{e9}t\u{e9}\nb = ?\n";
        let e = toml::from_str::<toml::Value>(text).unwrap_err();
        let (line, message) = toml_error_at(text, &e);
        assert_eq!(line, 3, "{message}");
        assert!(!message.is_empty() && !message.contains('\n'), "{message}");
    }

    #[test]
    fn api_names_follow_the_resource_names() {
        assert_eq!(Section::Disk(1).api_name(), "disk #2");
        assert_eq!(Section::Net(0).api_name(), "net #1");
        assert_eq!(Section::Fs(2).api_name(), "fs #3");
        assert_eq!(Section::Wayland.api_name(), "wayland");
        let e = ConfigError::BadWayland {
            key: "max_vfds = 0".into(),
            reason: "must be 1 to 4096".into(),
        };
        assert_eq!(e.detail(), "max_vfds = 0: must be 1 to 4096");
    }
}
