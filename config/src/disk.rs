//! `[[disk]]`: virtio-blk disks.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, VmConfig};

/// Longest serial number virtio-blk's GET_ID can return.
pub const MAX_DISK_ID_LEN: usize = 20;
/// Devices get GSIs 5..=23 of the 24-pin IOAPIC.
pub const MAX_DISKS: usize = 16;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// A raw disk image (or block device).
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    /// Serial number the guest sees (/sys/block/vdX/serial), at most 20 bytes.
    pub id: Option<String>,
    /// Open with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct_io: bool,
}

impl VmConfig {
    pub(crate) fn validate_disks(&self) -> Result<(), ConfigError> {
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        for (index, d) in self.disks.iter().enumerate() {
            let bad = |reason: String| ConfigError::BadDisk {
                index,
                path: d.path.clone(),
                reason,
            };
            let meta = std::fs::metadata(&d.path).map_err(|e| {
                bad(if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file; create the image (e.g. truncate -s 1G disk.img) or fix the path"
                        .to_string()
                } else {
                    format!("cannot access it: {e}")
                })
            })?;
            use std::os::unix::fs::FileTypeExt;
            if !meta.is_file() && !meta.file_type().is_block_device() {
                return Err(bad("not a regular file or block device".to_string()));
            }
            if let Some(dup) = self.disks[..index].iter().position(|o| o.path == d.path) {
                return Err(bad(format!(
                    "the same image as [[disk]] #{}; two disks must not share an image",
                    dup + 1
                )));
            }
            if let Some(id) = &d.id {
                let bad_id = |reason: &str| ConfigError::BadDiskId {
                    index,
                    id: id.clone(),
                    reason: reason.to_string(),
                };
                if id.len() > MAX_DISK_ID_LEN {
                    return Err(bad_id("longer than 20 bytes; shorten it"));
                }
                if !id.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad_id("use printable ASCII without spaces"));
                }
                if self.disks[..index]
                    .iter()
                    .any(|o| o.id.as_deref() == Some(id.as_str()))
                {
                    return Err(bad_id("another disk has the same id; ids must be unique"));
                }
            }
        }
        Ok(())
    }
}
