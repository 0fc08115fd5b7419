//! The virtio-wl wire format: constants, request parsing and message encoding.
//!
//! Everything here is plain byte handling with no I/O, so the parser can be unit-tested and
//! fuzzed in isolation. All integers are little-endian. Requests come from the guest and are
//! untrusted: [`parse_request`] never panics and never trusts a count or a length it has not
//! checked against the bytes it was given.

use std::fmt;

/// Feature bits (besides VIRTIO_F_VERSION_1).
pub const F_TRANS_FLAGS: u64 = 1 << 1;
pub const F_SEND_FENCES: u64 = 1 << 2;
pub const F_USE_SHMEM: u64 = 1 << 3;

/// Guest -> host commands (out queue) and host -> guest messages (in queue).
pub const CMD_VFD_NEW: u32 = 0x100;
pub const CMD_VFD_CLOSE: u32 = 0x101;
pub const CMD_VFD_SEND: u32 = 0x102;
pub const CMD_VFD_RECV: u32 = 0x103;
pub const CMD_VFD_NEW_CTX: u32 = 0x104;
pub const CMD_VFD_NEW_PIPE: u32 = 0x105;
pub const CMD_VFD_HUP: u32 = 0x106;
pub const CMD_VFD_NEW_DMABUF: u32 = 0x107;
pub const CMD_VFD_DMABUF_SYNC: u32 = 0x108;
pub const CMD_VFD_SEND_FOREIGN_ID: u32 = 0x109;
pub const CMD_VFD_NEW_CTX_NAMED: u32 = 0x10a;

/// Responses.
pub const RESP_OK: u32 = 0x1000;
pub const RESP_VFD_NEW: u32 = 0x1001;
pub const RESP_VFD_NEW_DMABUF: u32 = 0x1002;
pub const RESP_ERR: u32 = 0x1100;
pub const RESP_OUT_OF_MEMORY: u32 = 0x1101;
pub const RESP_INVALID_ID: u32 = 0x1102;
pub const RESP_INVALID_TYPE: u32 = 0x1103;
pub const RESP_INVALID_FLAGS: u32 = 0x1104;
pub const RESP_INVALID_CMD: u32 = 0x1105;

/// vfd flags with TRANS_FLAGS.
pub const VFD_WRITE: u32 = 0x1;
pub const VFD_READ: u32 = 0x2;
pub const VFD_FENCE: u32 = 0x8;
/// Legacy (no TRANS_FLAGS) flags: mappable shared memory, and a Wayland connection.
pub const VFD_MAP: u32 = 0x2;
pub const VFD_CONTROL: u32 = 0x4;

/// `SEND_FOREIGN_ID` entry kinds.
pub const SEND_KIND_LOCAL: u32 = 0;
pub const SEND_KIND_VIRTGPU: u32 = 1;
pub const SEND_KIND_VIRTGPU_FENCE: u32 = 2;
pub const SEND_KIND_VIRTGPU_SIGNALED_FENCE: u32 = 3;

/// At most this many vfds travel with one message (libwayland's limit).
pub const MAX_SEND_VFDS: usize = 28;
/// Guest-allocated vfd ids are 1..=GUEST_ID_MAX; host-allocated ones start at HOST_ID_BASE.
pub const GUEST_ID_MAX: u32 = 0x7ff;
pub const HOST_ID_BASE: u32 = 0x4000_0000;
/// The size of every buffer the guest driver posts on the in queue (one message each).
pub const IN_BUFFER_SIZE: usize = 4096;
/// The largest out-queue request we accept (the Linux driver sends at most one page).
pub const MAX_REQUEST_SIZE: usize = 64 * 1024;
pub const PAGE_SIZE: u64 = 4096;
pub const PFN_SHIFT: u32 = 12;

/// `struct virtio_wl_ctrl_hdr`.
pub const HDR_SIZE: usize = 8;
/// `struct virtio_wl_ctrl_vfd` (CLOSE, HUP, NEW_CTX).
pub const VFD_SIZE: usize = 12;
/// `struct virtio_wl_ctrl_vfd_send` / `_recv` without the ids.
pub const SEND_HDR_SIZE: usize = 16;
/// `struct virtio_wl_ctrl_vfd_new`: hdr, id, flags, pfn (u64 at 16), size (at 24), then a
/// 36-byte union (dmabuf description, or `name[32]` for NEW_CTX_NAMED at 28).
pub const VFD_NEW_SIZE: usize = 64;
const NAME_OFFSET: usize = 28;
pub const NAME_LEN: usize = 32;
/// Bytes of a VFD_RECV that fit one in-queue buffer after the header and 28 ids.
pub const MAX_RECV_BYTES: usize = IN_BUFFER_SIZE - SEND_HDR_SIZE - 4 * MAX_SEND_VFDS;
/// Bytes of a pipe read that fit one in-queue buffer (no ids).
pub const MAX_PIPE_READ: usize = IN_BUFFER_SIZE - SEND_HDR_SIZE;

/// One vfd listed in a send: `kind` is [`SEND_KIND_LOCAL`] for plain VFD_SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendEntry {
    pub kind: u32,
    pub id: u64,
}

/// A parsed out-queue request. `data` and `name` borrow the request bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    New {
        id: u32,
        flags: u32,
        size: u32,
    },
    Close {
        id: u32,
    },
    /// VFD_SEND (`foreign` false: u32 ids) or SEND_FOREIGN_ID (`foreign` true: 8-byte
    /// `{kind, id}` entries, or 16-byte `{kind, pad, u64 id}` ones once SEND_FENCES is acked).
    Send {
        id: u32,
        entries: Vec<SendEntry>,
        data: &'a [u8],
        foreign: bool,
    },
    NewCtx {
        id: u32,
    },
    /// The name without its terminating NUL.
    NewCtxNamed {
        id: u32,
        name: &'a [u8],
    },
    NewPipe {
        id: u32,
        flags: u32,
    },
    /// A known command we do not implement (dmabuf): answered INVALID_CMD.
    Unsupported(u32),
    /// Not a command at all: answered INVALID_CMD.
    Unknown(u32),
}

/// Why a request could not be parsed, and what the guest is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request of {got} bytes is shorter than the {want} its command needs")]
    Short { got: usize, want: usize },
    #[error("vfd_count {0} is over the limit of {MAX_SEND_VFDS}")]
    TooManyVfds(u32),
    #[error("the context name is not NUL-terminated within {NAME_LEN} bytes")]
    UnterminatedName,
}

impl ParseError {
    /// The response code for this error: malformed framing is ERR (ENODEV in the guest); a
    /// name without its NUL is INVALID_TYPE (EINVAL), the guest's argument was wrong.
    pub fn response(self) -> u32 {
        match self {
            ParseError::Short { .. } | ParseError::TooManyVfds(_) => RESP_ERR,
            ParseError::UnterminatedName => RESP_INVALID_TYPE,
        }
    }
}

fn need(buf: &[u8], want: usize) -> Result<(), ParseError> {
    if buf.len() < want {
        Err(ParseError::Short {
            got: buf.len(),
            want,
        })
    } else {
        Ok(())
    }
}

/// Reads a u32 at `at`; the caller checked the length.
fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = buf.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

/// Parses one out-queue request. `send_fences`: SEND_FENCES was acked (changes the entry size
/// of SEND_FOREIGN_ID only: plain VFD_SEND always lists u32 ids, as the Linux driver sends).
pub fn parse_request(buf: &[u8], send_fences: bool) -> Result<Request<'_>, ParseError> {
    need(buf, HDR_SIZE)?;
    let ty = u32_at(buf, 0);
    match ty {
        CMD_VFD_NEW => {
            need(buf, 28)?;
            Ok(Request::New {
                id: u32_at(buf, 8),
                flags: u32_at(buf, 12),
                size: u32_at(buf, 24),
            })
        }
        CMD_VFD_CLOSE => {
            need(buf, VFD_SIZE)?;
            Ok(Request::Close { id: u32_at(buf, 8) })
        }
        CMD_VFD_NEW_CTX => {
            need(buf, VFD_SIZE)?;
            Ok(Request::NewCtx { id: u32_at(buf, 8) })
        }
        CMD_VFD_NEW_PIPE => {
            need(buf, 16)?;
            Ok(Request::NewPipe {
                id: u32_at(buf, 8),
                flags: u32_at(buf, 12),
            })
        }
        CMD_VFD_NEW_CTX_NAMED => {
            need(buf, NAME_OFFSET + NAME_LEN)?;
            let raw = &buf[NAME_OFFSET..NAME_OFFSET + NAME_LEN];
            let end = raw
                .iter()
                .position(|&b| b == 0)
                .ok_or(ParseError::UnterminatedName)?;
            Ok(Request::NewCtxNamed {
                id: u32_at(buf, 8),
                name: &raw[..end],
            })
        }
        CMD_VFD_SEND | CMD_VFD_SEND_FOREIGN_ID => {
            need(buf, SEND_HDR_SIZE)?;
            let id = u32_at(buf, 8);
            let count = u32_at(buf, 12);
            if count as usize > MAX_SEND_VFDS {
                return Err(ParseError::TooManyVfds(count));
            }
            let foreign = ty == CMD_VFD_SEND_FOREIGN_ID;
            let entry = match (foreign, send_fences) {
                (false, _) => 4,
                (true, false) => 8,
                (true, true) => 16,
            };
            let ids_end = SEND_HDR_SIZE + count as usize * entry;
            need(buf, ids_end)?;
            let entries = (0..count as usize)
                .map(|i| {
                    let at = SEND_HDR_SIZE + i * entry;
                    match entry {
                        4 => SendEntry {
                            kind: SEND_KIND_LOCAL,
                            id: u64::from(u32_at(buf, at)),
                        },
                        8 => SendEntry {
                            kind: u32_at(buf, at),
                            id: u64::from(u32_at(buf, at + 4)),
                        },
                        _ => SendEntry {
                            kind: u32_at(buf, at),
                            id: u64_at(buf, at + 8),
                        },
                    }
                })
                .collect();
            Ok(Request::Send {
                id,
                entries,
                data: &buf[ids_end..],
                foreign,
            })
        }
        CMD_VFD_NEW_DMABUF | CMD_VFD_DMABUF_SYNC => Ok(Request::Unsupported(ty)),
        other => Ok(Request::Unknown(other)),
    }
}

/// A response to an out-queue request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// OK or one of the error codes: a bare header.
    Code(u32),
    /// RESP_VFD_NEW with the new vfd.
    VfdNew(VfdNew),
}

impl Response {
    pub const OK: Response = Response::Code(RESP_OK);
    pub const ERR: Response = Response::Code(RESP_ERR);
    pub const OUT_OF_MEMORY: Response = Response::Code(RESP_OUT_OF_MEMORY);
    pub const INVALID_ID: Response = Response::Code(RESP_INVALID_ID);
    pub const INVALID_TYPE: Response = Response::Code(RESP_INVALID_TYPE);
    pub const INVALID_FLAGS: Response = Response::Code(RESP_INVALID_FLAGS);
    pub const INVALID_CMD: Response = Response::Code(RESP_INVALID_CMD);

    /// The response type field.
    pub fn code(&self) -> u32 {
        match self {
            Response::Code(c) => *c,
            Response::VfdNew(_) => RESP_VFD_NEW,
        }
    }

    pub fn is_error(&self) -> bool {
        self.code() >= RESP_ERR
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Code(c) => hdr(*c),
            Response::VfdNew(n) => n.encode(RESP_VFD_NEW),
        }
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.code() {
            RESP_OK => "OK",
            RESP_VFD_NEW => "VFD_NEW",
            RESP_ERR => "ERR",
            RESP_OUT_OF_MEMORY => "OUT_OF_MEMORY",
            RESP_INVALID_ID => "INVALID_ID",
            RESP_INVALID_TYPE => "INVALID_TYPE",
            RESP_INVALID_FLAGS => "INVALID_FLAGS",
            RESP_INVALID_CMD => "INVALID_CMD",
            _ => "?",
        };
        write!(f, "{name}")
    }
}

/// The fields of a `virtio_wl_ctrl_vfd_new` the host fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VfdNew {
    pub id: u32,
    pub flags: u32,
    pub pfn: u64,
    pub size: u32,
}

impl VfdNew {
    /// 64 bytes: `ty` is RESP_VFD_NEW (an answer) or CMD_VFD_NEW (an in-queue announcement).
    pub fn encode(&self, ty: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(VFD_NEW_SIZE);
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.pfn.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.resize(VFD_NEW_SIZE, 0);
        b
    }

    /// Decodes the host-filled fields of a 64-byte vfd_new (tests, the fuzz target).
    pub fn decode(buf: &[u8]) -> Option<(u32, VfdNew)> {
        if buf.len() < 28 {
            return None;
        }
        Some((
            u32_at(buf, 0),
            VfdNew {
                id: u32_at(buf, 8),
                flags: u32_at(buf, 12),
                pfn: u64_at(buf, 16),
                size: u32_at(buf, 24),
            },
        ))
    }
}

/// A bare header.
pub fn hdr(ty: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HDR_SIZE);
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// VFD_RECV: `{hdr; vfd_id; vfd_count}`, then u32 ids, then the bytes. (Always u32 ids: the
/// Linux driver reads them so whatever the features.)
pub fn encode_recv(vfd_id: u32, ids: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(SEND_HDR_SIZE + 4 * ids.len() + data.len());
    b.extend_from_slice(&CMD_VFD_RECV.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&vfd_id.to_le_bytes());
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b.extend_from_slice(data);
    b
}

/// VFD_HUP: `{hdr; vfd_id}`.
pub fn encode_hup(vfd_id: u32) -> Vec<u8> {
    let mut b = hdr(CMD_VFD_HUP);
    b.extend_from_slice(&vfd_id.to_le_bytes());
    b
}

/// Rounds `size` up to a page multiple (None on overflow).
pub fn page_round(size: u64) -> Option<u64> {
    size.checked_add(PAGE_SIZE - 1)
        .map(|s| s & !(PAGE_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(ty: u32, id: u32, count: u32, ids: &[u8], data: &[u8]) -> Vec<u8> {
        let mut b = hdr(ty);
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(ids);
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn short_requests_are_errors() {
        assert_eq!(
            parse_request(&[0; 4], false),
            Err(ParseError::Short { got: 4, want: 8 })
        );
        let mut close = hdr(CMD_VFD_CLOSE);
        assert!(parse_request(&close, false).is_err());
        close.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(parse_request(&close, false), Ok(Request::Close { id: 7 }));
    }

    #[test]
    fn send_entry_formats() {
        let b = send(CMD_VFD_SEND, 3, 2, &[5, 0, 0, 0, 6, 0, 0, 0], b"hi");
        // SEND_FENCES does not change plain VFD_SEND.
        for fences in [false, true] {
            let Ok(Request::Send {
                id,
                entries,
                data,
                foreign,
            }) = parse_request(&b, fences)
            else {
                panic!("parse");
            };
            assert_eq!((id, data, foreign), (3, &b"hi"[..], false));
            assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), [5, 6]);
        }
        let mut v2 = Vec::new();
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(&0u32.to_le_bytes());
        v2.extend_from_slice(&0x1_0000_0009u64.to_le_bytes());
        let b = send(CMD_VFD_SEND_FOREIGN_ID, 3, 1, &v2, b"x");
        let Ok(Request::Send { entries, data, .. }) = parse_request(&b, true) else {
            panic!("parse");
        };
        assert_eq!(
            entries,
            [SendEntry {
                kind: 2,
                id: 0x1_0000_0009
            }]
        );
        assert_eq!(data, b"x");
        // Without SEND_FENCES the same bytes are two 8-byte entries... of which only one
        // is listed: kind 2, id 0; the rest is data.
        let Ok(Request::Send { entries, data, .. }) = parse_request(&b, false) else {
            panic!("parse");
        };
        assert_eq!(entries, [SendEntry { kind: 2, id: 0 }]);
        assert_eq!(data.len(), 9);
    }

    #[test]
    fn vfd_count_is_bounded_and_checked() {
        let b = send(CMD_VFD_SEND, 1, 1000, &[], &[]);
        assert_eq!(parse_request(&b, false), Err(ParseError::TooManyVfds(1000)));
        let b = send(CMD_VFD_SEND, 1, 28, &[0; 4 * 27], &[]);
        assert!(matches!(
            parse_request(&b, false),
            Err(ParseError::Short { .. })
        ));
    }

    #[test]
    fn names() {
        let mut b = VfdNew {
            id: 1,
            ..Default::default()
        }
        .encode(CMD_VFD_NEW_CTX_NAMED);
        b[28..28 + 4].copy_from_slice(b"abc\0");
        assert_eq!(
            parse_request(&b, false),
            Ok(Request::NewCtxNamed {
                id: 1,
                name: b"abc"
            })
        );
        b[28..60].fill(b'x');
        assert_eq!(parse_request(&b, false), Err(ParseError::UnterminatedName));
        assert_eq!(ParseError::UnterminatedName.response(), RESP_INVALID_TYPE);
    }

    #[test]
    fn encodings() {
        let n = VfdNew {
            id: 0x4000_0000,
            flags: VFD_READ,
            pfn: 0x1234,
            size: 8192,
        };
        let b = n.encode(CMD_VFD_NEW);
        assert_eq!(b.len(), VFD_NEW_SIZE);
        assert_eq!(VfdNew::decode(&b), Some((CMD_VFD_NEW, n)));
        let r = encode_recv(9, &[1, 2], b"abc");
        assert_eq!(r.len(), 16 + 8 + 3);
        assert_eq!(encode_hup(5), [6, 1, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(page_round(1), Some(4096));
        assert_eq!(page_round(u64::MAX), None);
        assert_eq!(MAX_RECV_BYTES, 3968);
    }
}
