//! Descriptor chains: gathering a request's bytes and scattering replies.
//!
//! Only protocol bytes go through here (commands, responses, Wayland messages); buffer
//! contents never travel through the queues.

use std::ops::Deref;

use qvm_devices::virtio::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use crate::protocol::MAX_REQUEST_SIZE;

/// Why a chain is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("a device-readable descriptor follows a device-writable one")]
    BadShape,
    #[error("the request is longer than {MAX_REQUEST_SIZE} bytes")]
    TooLong,
    #[error("the request has no device-readable bytes")]
    Empty,
    #[error("a descriptor points outside guest memory")]
    BadAddress,
    #[error("an in-queue buffer has device-readable descriptors")]
    NotWritable,
    #[error("the in-queue buffer ({have} bytes) is too small for a {need}-byte message")]
    TooSmall { have: u64, need: usize },
}

/// An out-queue chain: the request bytes (or why there are none), and where to answer.
pub struct OutChain {
    pub request: Result<Vec<u8>, ChainError>,
    pub writable: Vec<(GuestAddress, u32)>,
}

/// Walks a chain: readable descriptors first (gathered, up to [`MAX_REQUEST_SIZE`] bytes),
/// then writable ones (where the response goes).
pub fn read_out_chain<M: Deref<Target = GuestMemoryMmap> + Clone>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> OutChain {
    let mut readable: Vec<(GuestAddress, u32)> = Vec::new();
    let mut writable = Vec::new();
    let mut error = None;
    let mut total: u64 = 0;
    for desc in chain {
        if desc.is_write_only() {
            writable.push((desc.addr(), desc.len()));
        } else if !writable.is_empty() {
            error.get_or_insert(ChainError::BadShape);
        } else {
            total += u64::from(desc.len());
            readable.push((desc.addr(), desc.len()));
        }
    }
    if total > MAX_REQUEST_SIZE as u64 {
        error.get_or_insert(ChainError::TooLong);
    }
    if total == 0 {
        error.get_or_insert(ChainError::Empty);
    }
    let request = match error {
        Some(e) => Err(e),
        None => {
            let mut buf = vec![0u8; total as usize];
            let mut at = 0usize;
            let mut res = Ok(());
            for (addr, len) in readable {
                let end = at + len as usize;
                if mem.read_slice(&mut buf[at..end], addr).is_err() {
                    res = Err(ChainError::BadAddress);
                    break;
                }
                at = end;
            }
            res.map(|()| buf)
        }
    };
    OutChain { request, writable }
}

/// Writes `bytes` across `writable`, as far as they go; returns the bytes written.
pub fn scatter(mem: &GuestMemoryMmap, writable: &[(GuestAddress, u32)], bytes: &[u8]) -> u32 {
    let mut done = 0usize;
    for &(addr, len) in writable {
        if done == bytes.len() {
            break;
        }
        let n = (len as usize).min(bytes.len() - done);
        if mem.write_slice(&bytes[done..done + n], addr).is_err() {
            break;
        }
        done += n;
    }
    done as u32
}

/// Writes one in-queue message into a buffer chain: all of it, or nothing useful (Err).
pub fn write_in_chain<M: Deref<Target = GuestMemoryMmap> + Clone>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    bytes: &[u8],
) -> Result<u32, ChainError> {
    let mut writable = Vec::new();
    let mut have: u64 = 0;
    for desc in chain {
        if !desc.is_write_only() {
            return Err(ChainError::NotWritable);
        }
        have += u64::from(desc.len());
        writable.push((desc.addr(), desc.len()));
    }
    if have < bytes.len() as u64 {
        return Err(ChainError::TooSmall {
            have,
            need: bytes.len(),
        });
    }
    let n = scatter(mem, &writable, bytes);
    if n as usize == bytes.len() {
        Ok(n)
    } else {
        Err(ChainError::BadAddress)
    }
}
