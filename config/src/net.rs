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

    /// Exactly one of `tap` (a valid interface name) and `fd` (3 or more), and a `mac` written
    /// like a MAC address. `index` (from 0) numbers the entry in the message. Whether the fd is
    /// open is [`NetConfig::check_host`]'s; whether the MAC is unicast and not all zeros is
    /// checked with the whole config.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        self.validate_backend(index)?;
        self.validate_mac_syntax(index)
    }

    /// `fd`, if given, is open in this process.
    pub fn check_host(&self, index: usize) -> Result<(), ConfigError> {
        if let Some(fd) = self.fd {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(bad_fd(index, fd));
            }
        }
        Ok(())
    }

    fn validate_backend(&self, index: usize) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadNet { index, reason };
        match (&self.tap, self.fd) {
            (Some(_), Some(_)) | (None, None) => Err(bad(
                "set exactly one of tap = \"<name>\" (a tap device created beforehand) \
                 or fd = <n> (an inherited tap descriptor)"
                    .into(),
            )),
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
                Ok(())
            }
            (None, Some(fd)) if fd < 3 => Err(bad_fd(index, fd)),
            (None, Some(_)) => Ok(()),
        }
    }

    fn validate_mac_syntax(&self, index: usize) -> Result<(), ConfigError> {
        match &self.mac {
            Some(mac) => mac_syntax(mac)
                .map(|_| ())
                .map_err(|r| mac_error(index, mac, r)),
            None => Ok(()),
        }
    }
}

/// One message for an fd below 3 and an fd that is not open.
fn bad_fd(index: usize, fd: i32) -> ConfigError {
    ConfigError::BadNet {
        index,
        reason: format!(
            "fd = {fd}: not an open file descriptor this process inherited \
             (stdio 0-2 are not allowed)"
        ),
    }
}

fn mac_error(index: usize, mac: &str, reason: &str) -> ConfigError {
    ConfigError::BadNet {
        index,
        reason: format!("mac = {mac:?}: {reason}"),
    }
}

/// Six two-digit hex bytes separated by colons.
fn mac_syntax(s: &str) -> Result<[u8; 6], &'static str> {
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
    Ok(mac)
}

/// [`mac_syntax`], and an address a NIC can have (unicast, not all zeros).
fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let mac = mac_syntax(s)?;
    if mac[0] & 1 != 0 {
        return Err("a multicast address; the first byte must be even (e.g. 52:54:00:...)");
    }
    if mac == [0; 6] {
        return Err("all zeros; pick a locally administered address such as 52:54:00:12:34:56");
    }
    Ok(mac)
}

impl VmConfig {
    /// The list: its length and each entry, in the order a single entry's faults were always
    /// reported (tap or fd, the same tap twice, fd open, MAC written right, MAC usable, the
    /// same MAC twice).
    pub(crate) fn validate_nets(&self) -> Result<(), ConfigError> {
        if self.nets.len() > MAX_NETS {
            return Err(ConfigError::TooManyNets(self.nets.len()));
        }
        for (index, n) in self.nets.iter().enumerate() {
            n.validate_backend(index)?;
            if let Some(name) = &n.tap {
                if let Some(dup) = self.nets[..index]
                    .iter()
                    .position(|o| o.tap.as_deref() == Some(name.as_str()))
                {
                    return Err(ConfigError::BadNet {
                        index,
                        reason: format!(
                            "tap = {name:?}: [[net]] #{} uses it already; give each interface its own tap",
                            dup + 1
                        ),
                    });
                }
            }
            n.check_host(index)?;
            if let Some(mac) = &n.mac {
                n.validate_mac_syntax(index)?;
                parse_mac(mac).map_err(|r| mac_error(index, mac, r))?;
                if self.nets[..index]
                    .iter()
                    .any(|o| o.mac_bytes() == n.mac_bytes())
                {
                    return Err(mac_error(index, mac, "another interface has the same MAC"));
                }
            }
        }
        Ok(())
    }
}
