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

impl VsockConfig {
    /// `guest_cid` is not reserved, and `socket` fits a unix socket address with the
    /// `_<port>` suffix guest->host connections add.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_cid()?;
        self.validate_socket_len()
    }

    /// The directory `socket` goes in exists on this host.
    pub fn check_host(&self) -> Result<(), ConfigError> {
        let parent = self.socket.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent {
            if !dir.is_dir() {
                return Err(self.bad_socket(format!(
                    "the directory {} does not exist; create it or fix the path",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    fn validate_cid(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 || self.guest_cid >= u64::from(u32::MAX) {
            return Err(ConfigError::BadVsock {
                key: format!("guest_cid = {}", self.guest_cid),
                reason: "CIDs 0-2 and 4294967295 are reserved; use 3 or more".into(),
            });
        }
        Ok(())
    }

    fn validate_socket_len(&self) -> Result<(), ConfigError> {
        // sockaddr_un.sun_path is 108 bytes; guest->host sockets add "_<port>" (up to 11).
        if self.socket.as_os_str().len() > 107 - 11 {
            return Err(self.bad_socket(
                "too long for a unix socket path (at most 96 bytes); use a shorter path".into(),
            ));
        }
        Ok(())
    }

    fn bad_socket(&self, reason: String) -> ConfigError {
        ConfigError::BadVsock {
            key: format!("socket = {:?}", self.socket),
            reason,
        }
    }
}

impl VmConfig {
    /// In the order its faults were always reported: the cid, the socket's directory, the
    /// socket's length.
    pub(crate) fn validate_vsock(&self) -> Result<(), ConfigError> {
        let Some(v) = &self.vsock else { return Ok(()) };
        v.validate_cid()?;
        v.check_host()?;
        v.validate_socket_len()
    }
}
