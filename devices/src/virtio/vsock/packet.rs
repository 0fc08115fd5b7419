//! The vsock packet header (virtio 1.2, 5.10.6) as a plain value, the protocol constants, and
//! the parsing of the guest's tx chains ([`read_tx_packet`]).
//!
//! Rx chains are parsed with `virtio_vsock::packet::VsockPacket`; the header is copied out once
//! ([`Header::from_packet`]) so that nothing the guest changes afterwards is seen, and written
//! back in one piece ([`Header::to_bytes`]).

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;

use crate::virtio::GuestMemoryMmap;

/// Largest payload of one packet, either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;

/// The host's context id.
pub const HOST_CID: u64 = 2;

/// `type` of a stream socket (the only type we support).
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more data...
pub const SHUTDOWN_RCV: u32 = 1;
/// ...will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Size of the header in guest memory.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// A vsock packet header (`struct virtio_vsock_hdr`), native endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The header `VsockPacket` read (once) from the chain.
    pub fn from_packet<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Header {
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// The little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire format.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Whether `op` is one of the operations of virtio 1.2.
pub fn known_op(op: u16) -> bool {
    (OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op)
}

/// The name of an operation, for messages.
pub fn op_name(op: u16) -> &'static str {
    match op {
        OP_REQUEST => "REQUEST",
        OP_RESPONSE => "RESPONSE",
        OP_RST => "RST",
        OP_SHUTDOWN => "SHUTDOWN",
        OP_RW => "RW",
        OP_CREDIT_UPDATE => "CREDIT_UPDATE",
        OP_CREDIT_REQUEST => "CREDIT_REQUEST",
        _ => "unknown",
    }
}

/// Why a tx chain is not a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum TxChainError {
    /// A device-writable descriptor in a driver-to-device chain.
    WriteOnly,
    /// Fewer bytes than the header plus its `len` field.
    TooShort,
    /// `len` above [`MAX_PKT_BUF_SIZE`].
    TooLong,
    /// A buffer outside guest memory.
    BadAddress,
}

/// Reads one guest packet from a tx chain: the header from its first bytes and the payload
/// (the header's `len` bytes) into `data`, wherever the driver put them. Linux 6.x splits large
/// payloads over several descriptors (non-linear skbs), which the virtio-vsock crate's parser
/// refuses, so this gathers them itself.
pub fn read_tx_packet<M: std::ops::Deref<Target = GuestMemoryMmap>>(
    mem: &GuestMemoryMmap,
    chain: &mut virtio_queue::DescriptorChain<M>,
    data: &mut Vec<u8>,
) -> Result<Header, TxChainError> {
    use vm_memory::{Bytes, GuestAddress};
    let mut head = [0u8; HEADER_SIZE];
    let mut head_got = 0usize;
    let mut hdr: Option<Header> = None;
    data.clear();
    for desc in chain.by_ref() {
        if desc.is_write_only() {
            return Err(TxChainError::WriteOnly);
        }
        let mut addr = desc.addr().0;
        let mut left = desc.len() as usize;
        if head_got < HEADER_SIZE {
            let n = left.min(HEADER_SIZE - head_got);
            mem.read_slice(&mut head[head_got..head_got + n], GuestAddress(addr))
                .map_err(|_| TxChainError::BadAddress)?;
            head_got += n;
            left -= n;
            addr = addr.checked_add(n as u64).ok_or(TxChainError::BadAddress)?;
            if head_got == HEADER_SIZE {
                let h = Header::from_bytes(&head);
                if h.len > MAX_PKT_BUF_SIZE {
                    return Err(TxChainError::TooLong);
                }
                data.reserve(h.len as usize);
                hdr = Some(h);
            }
        }
        let Some(h) = hdr.as_ref() else { continue };
        let want = (h.len as usize).saturating_sub(data.len()).min(left);
        if want > 0 {
            let at = data.len();
            data.resize(at + want, 0);
            mem.read_slice(&mut data[at..], GuestAddress(addr))
                .map_err(|_| TxChainError::BadAddress)?;
        }
        if data.len() == h.len as usize {
            break;
        }
    }
    match hdr {
        Some(h) if data.len() == h.len as usize => Ok(h),
        _ => Err(TxChainError::TooShort),
    }
}
