//! `[[disk]]`: virtio-blk disks.

use std::os::unix::fs::FileTypeExt;
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

impl DiskConfig {
    /// `id`: at most [`MAX_DISK_ID_LEN`] bytes of printable ASCII. `index` (from 0) numbers the
    /// entry in the message.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        if let Some(id) = &self.id {
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
        }
        Ok(())
    }

    /// `path` is a regular file or a block device on this host.
    pub fn check_host(&self, index: usize) -> Result<(), ConfigError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| {
            self.bad(
                index,
                if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file; create the image (e.g. truncate -s 1G disk.img) or fix the path"
                        .to_string()
                } else {
                    format!("cannot access it: {e}")
                },
            )
        })?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(self.bad(index, "not a regular file or block device".to_string()));
        }
        Ok(())
    }

    fn bad(&self, index: usize, reason: String) -> ConfigError {
        ConfigError::BadDisk {
            index,
            path: self.path.clone(),
            reason,
        }
    }
}

impl VmConfig {
    /// The list: its length, each entry ([`DiskConfig::check_host`], then
    /// [`DiskConfig::validate`]), and no image or id twice.
    pub(crate) fn validate_disks(&self) -> Result<(), ConfigError> {
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        for (index, d) in self.disks.iter().enumerate() {
            d.check_host(index)?;
            if let Some(dup) = self.disks[..index].iter().position(|o| o.path == d.path) {
                return Err(d.bad(
                    index,
                    format!(
                        "the same image as [[disk]] #{}; two disks must not share an image",
                        dup + 1
                    ),
                ));
            }
            d.validate(index)?;
            if let Some(id) = &d.id {
                if self.disks[..index]
                    .iter()
                    .any(|o| o.id.as_deref() == Some(id.as_str()))
                {
                    return Err(ConfigError::BadDiskId {
                        index,
                        id: id.clone(),
                        reason: "another disk has the same id; ids must be unique".to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
