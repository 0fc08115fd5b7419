//! `[[fs]]`: virtio-fs shares, served by virtiofsd over vhost-user.

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

impl VmConfig {
    pub(crate) fn validate_fs(&self) -> Result<(), ConfigError> {
        for (index, f) in self.filesystems.iter().enumerate() {
            let bad = |reason: String| ConfigError::BadFs { index, reason };
            if f.tag.is_empty() || f.tag.len() > MAX_FS_TAG_LEN || f.tag.contains('\0') {
                return Err(bad(format!(
                    "tag = {:?}: use 1 to {MAX_FS_TAG_LEN} bytes (it is what the guest mounts)",
                    f.tag
                )));
            }
            if self.filesystems[..index].iter().any(|o| o.tag == f.tag) {
                return Err(bad(format!(
                    "tag = {:?}: another [[fs]] has it; tags must be unique",
                    f.tag
                )));
            }
            if self.filesystems[..index]
                .iter()
                .any(|o| o.socket == f.socket)
            {
                return Err(bad(format!(
                    "socket = {:?}: another [[fs]] uses it; each share needs its own virtiofsd socket",
                    f.socket
                )));
            }
            match &f.shared_dir {
                Some(dir) => {
                    if !dir.is_dir() {
                        return Err(bad(format!(
                            "shared_dir = {dir:?}: not a directory; create it or fix the path"
                        )));
                    }
                    if let Some(parent) = f.socket.parent().filter(|p| !p.as_os_str().is_empty()) {
                        if !parent.is_dir() {
                            return Err(bad(format!(
                                "socket = {:?}: the directory {} does not exist",
                                f.socket,
                                parent.display()
                            )));
                        }
                    }
                }
                None => {
                    if f.read_only || f.virtiofsd.is_some() {
                        return Err(bad(
                            "read_only and virtiofsd only apply when qvm-vmm starts virtiofsd: \
                             add shared_dir = \"<dir>\" or start virtiofsd with --readonly yourself"
                                .into(),
                        ));
                    }
                    use std::os::unix::fs::FileTypeExt;
                    let is_socket = std::fs::metadata(&f.socket)
                        .map(|m| m.file_type().is_socket())
                        .unwrap_or(false);
                    if !is_socket {
                        return Err(bad(format!(
                            "socket = {:?}: no virtiofsd listens there; start one \
                             (virtiofsd --socket-path {} --shared-dir DIR) or set shared_dir so \
                             qvm-vmm starts it",
                            f.socket,
                            f.socket.display()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}
