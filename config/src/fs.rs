//! `[[fs]]`: virtio-fs shares, served by virtiofsd over vhost-user.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, VmConfig};

/// virtio-fs tags are at most 36 bytes (the config space field).
pub const MAX_FS_TAG_LEN: usize = 36;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// What the guest mounts: `mount -t virtiofs <tag> /mnt`.
    pub tag: String,
    /// The vhost-user socket of virtiofsd. Without `shared_dir`, a virtiofsd someone else started
    /// listens there; with it, qvm-vmm starts virtiofsd on this path itself.
    pub socket: PathBuf,
    /// The host directory to share: qvm-vmm starts and stops virtiofsd for it.
    pub shared_dir: Option<PathBuf>,
    /// With `shared_dir`: the guest may not write (virtiofsd --readonly).
    #[serde(default)]
    pub read_only: bool,
    /// With `shared_dir`: the virtiofsd binary (default: `virtiofsd` on PATH, or the one
    /// scripts/install-virtiofsd.sh built, via the QVM_VIRTIOFSD environment variable).
    pub virtiofsd: Option<PathBuf>,
}

impl FsConfig {
    /// `tag`: 1 to [`MAX_FS_TAG_LEN`] bytes without NUL. `index` (from 0) numbers the entry in
    /// the message.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG_LEN || self.tag.contains('\0') {
            return Err(bad(
                index,
                format!(
                    "tag = {:?}: use 1 to {MAX_FS_TAG_LEN} bytes (it is what the guest mounts)",
                    self.tag
                ),
            ));
        }
        Ok(())
    }

    /// On this host: with `shared_dir`, that it is a directory and the socket's directory
    /// exists (qvm-vmm starts virtiofsd there); without it, that a virtiofsd listens on
    /// `socket`.
    pub fn check_host(&self, index: usize) -> Result<(), ConfigError> {
        match &self.shared_dir {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(bad(
                        index,
                        format!("shared_dir = {dir:?}: not a directory; create it or fix the path"),
                    ));
                }
                if let Some(parent) = self.socket.parent().filter(|p| !p.as_os_str().is_empty()) {
                    if !parent.is_dir() {
                        return Err(bad(
                            index,
                            format!(
                                "socket = {:?}: the directory {} does not exist",
                                self.socket,
                                parent.display()
                            ),
                        ));
                    }
                }
            }
            None => {
                let is_socket = std::fs::metadata(&self.socket)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false);
                if !is_socket {
                    return Err(bad(
                        index,
                        format!(
                            "socket = {:?}: no virtiofsd listens there; start one \
                             (virtiofsd --socket-path {} --shared-dir DIR) or set shared_dir so \
                             qvm-vmm starts it",
                            self.socket,
                            self.socket.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `read_only` and `virtiofsd` only with `shared_dir` (they configure the virtiofsd
    /// qvm-vmm starts). Checked with the whole config, not on `PUT /vm/fs/{tag}`.
    fn validate_managed(&self, index: usize) -> Result<(), ConfigError> {
        if self.shared_dir.is_none() && (self.read_only || self.virtiofsd.is_some()) {
            return Err(bad(
                index,
                "read_only and virtiofsd only apply when qvm-vmm starts virtiofsd: \
                 add shared_dir = \"<dir>\" or start virtiofsd with --readonly yourself"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn bad(index: usize, reason: String) -> ConfigError {
    ConfigError::BadFs { index, reason }
}

impl VmConfig {
    /// Each entry ([`FsConfig::validate`], no tag or socket twice, then
    /// [`FsConfig::check_host`]). Their number counts in the device total only.
    pub(crate) fn validate_fs(&self) -> Result<(), ConfigError> {
        for (index, f) in self.filesystems.iter().enumerate() {
            f.validate(index)?;
            if self.filesystems[..index].iter().any(|o| o.tag == f.tag) {
                return Err(bad(
                    index,
                    format!(
                        "tag = {:?}: another [[fs]] has it; tags must be unique",
                        f.tag
                    ),
                ));
            }
            if self.filesystems[..index]
                .iter()
                .any(|o| o.socket == f.socket)
            {
                return Err(bad(
                    index,
                    format!(
                        "socket = {:?}: another [[fs]] uses it; each share needs its own virtiofsd socket",
                        f.socket
                    ),
                ));
            }
            f.validate_managed(index)?;
            f.check_host(index)?;
        }
        Ok(())
    }
}
