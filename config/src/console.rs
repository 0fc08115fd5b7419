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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default)]
    pub mode: ConsoleMode,
    pub path: Option<PathBuf>,
}

impl ConsoleConfig {
    /// `path` is given with `mode = "file"`, and only then.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.mode, &self.path) {
            (ConsoleMode::File, None) => Err(ConfigError::ConsoleFileWithoutPath),
            (ConsoleMode::Stdio | ConsoleMode::Off, Some(_)) => {
                Err(ConfigError::ConsolePathWithoutFile)
            }
            _ => Ok(()),
        }
    }
}
