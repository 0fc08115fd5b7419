//! `[[net]]`: virtio-net interfaces on tap devices.

use serde::{Deserialize, Serialize};

use crate::{ConfigError, VmConfig};

pub const MAX_NETS: usize = 8;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
pub const MAX_TAP_NAME_LEN: usize = 15;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// A tap device created beforehand (`ip tuntap add NAME mode tap user USER`).
    pub tap: Option<String>,
    /// Or an open tap file descriptor this process inherited.
    pub fd: Option<i32>,
    /// The guest's MAC address, `52:54:00:12:34:56`; none: the guest picks a random one.
    pub mac: Option<String>,
}

impl NetConfig {
    /// The MAC as bytes (validate() has checked it parses).
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        self.mac.as_deref().and_then(|m| parse_mac(m).ok())
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return Err("not a MAC address like 52:54:00:12:34:56");
    }
    for (b, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err("not a MAC address like 52:54:00:12:34:56");
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| "not a MAC address like 52:54:00:12:34:56")?;
    }
    if mac[0] & 1 != 0 {
        return Err("a multicast address; the first byte must be even (e.g. 52:54:00:...)");
    }
    if mac == [0; 6] {
        return Err("all zeros; pick a locally administered address such as 52:54:00:12:34:56");
    }
    Ok(mac)
}

impl VmConfig {
    pub(crate) fn validate_nets(&self) -> Result<(), ConfigError> {
        if self.nets.len() > MAX_NETS {
            return Err(ConfigError::TooManyNets(self.nets.len()));
        }
        for (index, n) in self.nets.iter().enumerate() {
            let bad = |reason: String| ConfigError::BadNet { index, reason };
            match (&n.tap, n.fd) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad(
                        "set exactly one of tap = \"<name>\" (a tap device created beforehand) \
                         or fd = <n> (an inherited tap descriptor)"
                            .into(),
                    ))
                }
                (Some(name), None) => {
                    if name.is_empty()
                        || name.len() > MAX_TAP_NAME_LEN
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                    {
                        return Err(bad(format!(
                            "tap = {name:?}: not an interface name (1-{MAX_TAP_NAME_LEN} letters, \
                             digits, '-', '_' or '.')"
                        )));
                    }
                    if let Some(dup) = self.nets[..index]
                        .iter()
                        .position(|o| o.tap.as_deref() == Some(name.as_str()))
                    {
                        return Err(bad(format!(
                            "tap = {name:?}: [[net]] #{} uses it already; give each interface its own tap",
                            dup + 1
                        )));
                    }
                }
                (None, Some(fd)) => {
                    // SAFETY: F_GETFD only reads the descriptor's flags.
                    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                        return Err(bad(format!(
                            "fd = {fd}: not an open file descriptor this process inherited \
                             (stdio 0-2 are not allowed)"
                        )));
                    }
                }
            }
            if let Some(mac) = &n.mac {
                parse_mac(mac).map_err(|r| bad(format!("mac = {mac:?}: {r}")))?;
                if self.nets[..index]
                    .iter()
                    .any(|o| o.mac_bytes() == n.mac_bytes())
                {
                    return Err(bad(format!(
                        "mac = {mac:?}: another interface has the same MAC"
                    )));
                }
            }
        }
        Ok(())
    }
}
