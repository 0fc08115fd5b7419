//! [`ConfigError`]: every way a config can be wrong, each one line that names the key and says
//! how to fix it.

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
    #[error(
        "[machine] memory_mib = {got}: more than this host's {host} MiB of RAM; lower memory_mib"
    )]
    MemoryTooLarge { got: u64, host: u64 },
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
    #[error("[boot] cmdline is {0} bytes; Linux takes at most {MAX_CMDLINE_LEN}, shorten it")]
    CmdlineTooLong(usize),
    #[error("[boot] cmdline contains a NUL or non-ASCII character; use plain ASCII")]
    CmdlineNotAscii,
    #[error("[console] mode = \"file\" needs path = \"<file>\" for the guest's output")]
    ConsoleFileWithoutPath,
    #[error("[console] path is only used with mode = \"file\"; remove it or set mode = \"file\"")]
    ConsolePathWithoutFile,
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
    /// [`VmConfig::to_toml`] failed (a path that is not UTF-8); the serializer's message.
    #[error("{0}")]
    Serialize(String),
}
