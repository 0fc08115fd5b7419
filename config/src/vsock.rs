//! `[vsock]`: the host<->guest vsock device.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, VmConfig};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more.
    pub guest_cid: u64,
    /// The host side: a unix socket the VMM listens on (host->guest: connect and send
    /// `CONNECT <port>\n`); guest->host connections to port P go to `<socket>_<P>`.
    pub socket: PathBuf,
}

impl VmConfig {
    pub(crate) fn validate_vsock(&self) -> Result<(), ConfigError> {
        let Some(v) = &self.vsock else { return Ok(()) };
        if v.guest_cid < 3 || v.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::BadVsock {
                key: format!("guest_cid = {}", v.guest_cid),
                reason: "CIDs 0-2 and 4294967295 are reserved; use 3 or more".into(),
            });
        }
        let bad = |reason: String| ConfigError::BadVsock {
            key: format!("socket = {:?}", v.socket),
            reason,
        };
        let parent = v.socket.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent {
            if !dir.is_dir() {
                return Err(bad(format!(
                    "the directory {} does not exist; create it or fix the path",
                    dir.display()
                )));
            }
        }
        // sockaddr_un.sun_path is 108 bytes; guest->host sockets add "_<port>" (up to 11).
        if v.socket.as_os_str().len() > 107 - 11 {
            return Err(bad(
                "too long for a unix socket path (at most 96 bytes); use a shorter path".into(),
            ));
        }
        Ok(())
    }
}
