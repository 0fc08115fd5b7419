//! virtio-blk request parsing (virtio 1.2, 5.2.6): one descriptor chain in, a validated
//! [`Request`] (or a [`RequestError`]) out. Reads only the chain's descriptors and its header;
//! never touches data buffers, so it is safe on any guest input.

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress};

use super::{HEADER_SIZE, MAX_CHAIN_LEN, SECTOR_SIZE, SEGMENT_SIZE, SEG_MAX, SIZE_MAX};
use crate::virtio::{in_memory, GuestMemoryMmap};

/// The request types we execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

/// One data buffer of a request, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuf {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated request. Data buffers have the right direction for `kind`, are inside guest
/// memory and no larger than [`SIZE_MAX`]; the status byte is writable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    pub data: Vec<DataBuf>,
    /// Sum of the data buffers' lengths.
    pub data_len: u64,
    /// Guest address of the status byte.
    pub status_addr: GuestAddress,
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestErrorKind {
    // Without a status byte: the chain goes back with used length 0.
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error("descriptor chain does not end (loop, too long, bad next index or indirect table)")]
    UnterminatedChain,
    #[error("last descriptor is not device-writable: no status byte")]
    StatusNotWritable,
    #[error("status descriptor is empty")]
    StatusEmpty,
    #[error("status byte is outside guest memory")]
    StatusOutOfMemory,
    // With a status byte: IOERR (or UNSUPP).
    #[error("chain has no header descriptor")]
    MissingHeader,
    #[error("header descriptor is device-writable")]
    HeaderWritable,
    #[error("header descriptor is {0} bytes, shorter than 16")]
    HeaderTooShort(u32),
    #[error("header is outside guest memory")]
    HeaderOutOfMemory,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("data descriptor has the wrong direction for the request type")]
    DataDirection,
    #[error("data descriptor is outside guest memory")]
    DataOutOfMemory,
    #[error("data descriptor of {0} bytes exceeds size_max")]
    DataTooLarge(u32),
    #[error("{0} data descriptors exceed seg_max")]
    TooManySegments(usize),
    #[error("data length {0} is not a multiple of 512")]
    NotSectorMultiple(u64),
    #[error("discard/write-zeroes data length {0} is not one 16-byte segment")]
    BadSegmentLength(u64),
}

/// A chain that cannot be executed. `status` is where the status byte goes, if the chain has
/// a usable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct RequestError {
    pub kind: RequestErrorKind,
    pub status: Option<GuestAddress>,
}

impl RequestError {
    /// The virtio status to report for it.
    pub fn status_code(&self) -> u8 {
        match self.kind {
            RequestErrorKind::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// Reads and validates the chain (virtio 1.2, 5.2.6). Never touches memory outside the chain's
/// buffers, and reads each descriptor once.
pub fn parse_request(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Request, RequestError> {
    let mem: &GuestMemoryMmap = chain.memory();
    let no_status = |kind| RequestError { kind, status: None };

    // Collect the chain, checking it ends with a descriptor without NEXT. The iterator stops
    // silently on loops (ttl), bad next indices, unreadable or nested indirect tables.
    let mut descs: Vec<Descriptor> = Vec::with_capacity(4);
    let mut terminated = false;
    for desc in chain.clone() {
        if descs.len() == MAX_CHAIN_LEN {
            return Err(no_status(RequestErrorKind::UnterminatedChain));
        }
        terminated = !desc.has_next();
        descs.push(desc);
    }
    let Some(last) = descs.last() else {
        return Err(no_status(RequestErrorKind::EmptyChain));
    };
    if !terminated {
        return Err(no_status(RequestErrorKind::UnterminatedChain));
    }

    // Status: the last byte of the last descriptor, which must be device-writable.
    if !last.is_write_only() {
        return Err(no_status(RequestErrorKind::StatusNotWritable));
    }
    if last.len() == 0 {
        return Err(no_status(RequestErrorKind::StatusEmpty));
    }
    let status_addr = last
        .addr()
        .checked_add(u64::from(last.len()) - 1)
        .filter(|a| in_memory(mem, *a, 1))
        .ok_or(no_status(RequestErrorKind::StatusOutOfMemory))?;
    let fail = |kind| RequestError {
        kind,
        status: Some(status_addr),
    };

    // Header.
    if descs.len() < 2 {
        return Err(fail(RequestErrorKind::MissingHeader));
    }
    let header = descs[0];
    if header.is_write_only() {
        return Err(fail(RequestErrorKind::HeaderWritable));
    }
    if header.len() < HEADER_SIZE {
        return Err(fail(RequestErrorKind::HeaderTooShort(header.len())));
    }
    let mut raw = [0u8; HEADER_SIZE as usize];
    if !in_memory(mem, header.addr(), HEADER_SIZE)
        || mem.read_slice(&mut raw, header.addr()).is_err()
    {
        return Err(fail(RequestErrorKind::HeaderOutOfMemory));
    }
    let req_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let (kind, device_writes) = match req_type {
        VIRTIO_BLK_T_IN => (RequestType::In, true),
        VIRTIO_BLK_T_OUT => (RequestType::Out, false),
        VIRTIO_BLK_T_FLUSH => (RequestType::Flush, false),
        VIRTIO_BLK_T_GET_ID => (RequestType::GetId, true),
        VIRTIO_BLK_T_DISCARD => (RequestType::Discard, false),
        VIRTIO_BLK_T_WRITE_ZEROES => (RequestType::WriteZeroes, false),
        other => return Err(fail(RequestErrorKind::Unsupported(other))),
    };

    // Data descriptors (FLUSH has none; any it carries are ignored, never touched).
    let data_descs = &descs[1..descs.len() - 1];
    let mut data = Vec::new();
    let mut data_len = 0u64;
    if kind != RequestType::Flush {
        data.reserve(data_descs.len());
        for d in data_descs {
            if d.is_write_only() != device_writes {
                return Err(fail(RequestErrorKind::DataDirection));
            }
            if d.len() > SIZE_MAX {
                return Err(fail(RequestErrorKind::DataTooLarge(d.len())));
            }
            if d.len() == 0 {
                continue;
            }
            if !in_memory(mem, d.addr(), d.len()) {
                return Err(fail(RequestErrorKind::DataOutOfMemory));
            }
            data.push(DataBuf {
                addr: d.addr(),
                len: d.len(),
            });
            data_len += u64::from(d.len());
        }
        if data.len() > SEG_MAX as usize {
            return Err(fail(RequestErrorKind::TooManySegments(data.len())));
        }
    }
    match kind {
        RequestType::In | RequestType::Out if data_len & (SECTOR_SIZE - 1) != 0 => {
            return Err(fail(RequestErrorKind::NotSectorMultiple(data_len)));
        }
        // max_discard_seg = max_write_zeroes_seg = 1.
        RequestType::Discard | RequestType::WriteZeroes if data_len != SEGMENT_SIZE => {
            return Err(fail(RequestErrorKind::BadSegmentLength(data_len)));
        }
        _ => {}
    }

    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status_addr,
    })
}
