//! `[console]`: where the guest's serial console goes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleMode {
    /// Guest serial output to our stdout, our stdin to the guest.
    #[default]
    Stdio,
    /// Guest serial output appended to `path`; no input.
    File,
    /// Serial port present, output discarded.
    Off,
}

/// The default of [`ConsoleConfig::limit_mib`].
pub const DEFAULT_LIMIT_MIB: u32 = 16;
/// The largest [`ConsoleConfig::limit_mib`].
pub const MAX_LIMIT_MIB: u32 = 64 << 10;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub mode: ConsoleMode,
    pub path: Option<PathBuf>,
    /// The most a console log file (our stdout or `path`, when it is a regular file) grows
    /// to, in MiB: the guest writes every byte of it, and a guest that floods its console
    /// must not fill the host's disk or the session's runtime directory. Output past it is
    /// dropped, after one line saying so.
    #[serde(default = "default_limit_mib")]
    pub limit_mib: u32,
}

fn default_limit_mib() -> u32 {
    DEFAULT_LIMIT_MIB
}

impl Default for ConsoleConfig {
    fn default() -> ConsoleConfig {
        ConsoleConfig {
            mode: ConsoleMode::default(),
            path: None,
            limit_mib: DEFAULT_LIMIT_MIB,
        }
    }
}

impl ConsoleConfig {
    /// `path` is given with `mode = "file"`, and only then; `limit_mib` is 1 to
    /// [`MAX_LIMIT_MIB`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_LIMIT_MIB).contains(&self.limit_mib) {
            return Err(ConfigError::ConsoleLimit(self.limit_mib));
        }
        match (self.mode, &self.path) {
            (ConsoleMode::File, None) => Err(ConfigError::ConsoleFileWithoutPath),
            (ConsoleMode::Stdio | ConsoleMode::Off, Some(_)) => {
                Err(ConfigError::ConsolePathWithoutFile)
            }
            _ => Ok(()),
        }
    }

    /// [`ConsoleConfig::limit_mib`] in bytes.
    pub fn limit_bytes(&self) -> u64 {
        u64::from(self.limit_mib) << 20
    }
}
