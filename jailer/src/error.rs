//! The jailer's errors: each one line that names what to fix. User errors (a wrong argument,
//! config or file permission) exit with 2, failures of the host (a syscall that should work)
//! with 1.

use std::path::PathBuf;

use qvm_config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("--id {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ - (it names the cgroup and the jail directory)")]
    BadId(String),
    #[error(
        "--{0} 0: a jailed VM must not run as root; give each VM its own unprivileged uid and gid"
    )]
    RootId(&'static str),
    #[error("--memory-max {given:?}: {reason}")]
    BadMemoryMax { given: String, reason: String },
    #[error("--memory-max {limit} is less than the VM's {guest} of guest memory plus {overhead} overhead; use at least {needed} or --memory-max auto")]
    MemoryTooSmall {
        limit: String,
        guest: String,
        overhead: String,
        needed: String,
    },
    #[error("--pids-max {0}: the VMM needs at least {1} tasks (its threads count); raise it")]
    PidsTooSmall(u64, u64),
    #[error("--cpu-max {given:?}: {reason}")]
    BadCpuMax { given: String, reason: String },
    #[error("--rlimit-nofile {0}: use 64 to 1048576")]
    BadNofile(u64),
    /// A path given in an argument or the config (`what`: `--netns`, `[boot] kernel`, ...)
    /// that will not do, and why.
    #[error("{what} {path:?}: {reason}")]
    BadPath {
        what: String,
        path: PathBuf,
        reason: String,
    },
    #[error("[[net]] #{index} fd = {fd}: the jailer closes inherited file descriptors; use tap = \"NAME\" (created with `ip tuntap add NAME mode tap user <uid>`)")]
    NetFd { index: usize, fd: i32 },
    #[error("ldd {exe:?}: {reason}")]
    Ldd { exe: PathBuf, reason: String },
    #[error("cgroup {path:?}: {reason}")]
    Cgroup { path: PathBuf, reason: String },
    #[error("uid {uid} cannot {access} {path:?} ({what}); {fix}")]
    Access {
        uid: u32,
        access: &'static str,
        path: PathBuf,
        what: String,
        fix: String,
    },
    #[error(
        "the jailer must run as root (it creates namespaces and cgroups, then drops to --uid)"
    )]
    NotRoot,
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("capabilities still held after dropping them ({0}); refusing to start the VMM")]
    CapsLeft(String),
}

impl JailError {
    /// 2 for what the caller can fix in arguments, config or file permissions; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            JailError::Sys { .. } | JailError::Cgroup { .. } | JailError::CapsLeft(_) => 1,
            _ => 2,
        }
    }

    /// A [`JailError::BadPath`].
    pub fn bad_path(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
        reason: impl Into<String>,
    ) -> JailError {
        JailError::BadPath {
            what: what.into(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A failed syscall: `what` says what was being done.
    pub fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
        let what = what.into();
        move |source| JailError::Sys { what, source }
    }

    /// The last OS error as a [`JailError::Sys`].
    pub fn last(what: impl Into<String>) -> JailError {
        JailError::Sys {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}
