//! Wayland wire format: `u32 object id; u32 (size << 16) | opcode; args…`, all
//! native-endian 32-bit words. Strings are `u32 len (incl. NUL)` + bytes padded to 4,
//! arrays `u32 len` + bytes padded to 4; fds travel out of band.

use std::fmt;
use std::os::fd::RawFd;

/// Size of a message header in bytes.
pub const HEADER_LEN: usize = 8;
/// libwayland refuses messages larger than this.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// A decoding error: the peer sent something that is not a well-formed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed wayland message: {}", self.0)
    }
}

impl std::error::Error for WireError {}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// An outgoing request under construction.
#[derive(Debug, Clone)]
pub struct Message {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
}

impl Message {
    pub fn new(object: u32, opcode: u16) -> Self {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(&object.to_ne_bytes());
        bytes.extend_from_slice(&u32::from(opcode).to_ne_bytes());
        Message {
            bytes,
            fds: Vec::new(),
        }
    }

    pub fn uint(mut self, v: u32) -> Self {
        self.bytes.extend_from_slice(&v.to_ne_bytes());
        self
    }

    pub fn int(self, v: i32) -> Self {
        self.uint(v as u32)
    }

    /// An object or new_id argument.
    pub fn object(self, id: u32) -> Self {
        self.uint(id)
    }

    pub fn string(mut self, s: &str) -> Self {
        let len = s.len() + 1;
        self.bytes.extend_from_slice(&(len as u32).to_ne_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.resize(self.bytes.len() + pad4(len) - s.len(), 0);
        self
    }

    pub fn array(mut self, a: &[u8]) -> Self {
        self.bytes
            .extend_from_slice(&(a.len() as u32).to_ne_bytes());
        self.bytes.extend_from_slice(a);
        self.bytes
            .resize(self.bytes.len() + pad4(a.len()) - a.len(), 0);
        self
    }

    /// An fd argument: carried out of band; the caller keeps it open until flushed.
    pub fn fd(mut self, fd: RawFd) -> Self {
        self.fds.push(fd);
        self
    }

    /// Finish the message: patch the size into the header.
    pub fn finish(mut self) -> (Vec<u8>, Vec<RawFd>) {
        let size = self.bytes.len() as u32;
        let op = ne_u32(&self.bytes[4..8]);
        self.bytes[4..8].copy_from_slice(&((size << 16) | (op & 0xffff)).to_ne_bytes());
        (self.bytes, self.fds)
    }
}

/// A received event: header fields plus the raw argument bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub object: u32,
    pub opcode: u16,
    pub args: Vec<u8>,
}

impl Event {
    pub fn reader(&self) -> ArgReader<'_> {
        ArgReader {
            data: &self.args,
            pos: 0,
        }
    }
}

/// Split one complete message off the front of `buf`, if it holds one.
pub fn take_message(buf: &mut Vec<u8>) -> Result<Option<Event>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let object = ne_u32(&buf[0..4]);
    let word = ne_u32(&buf[4..8]);
    let size = (word >> 16) as usize;
    if size < HEADER_LEN || size & 3 != 0 {
        return Err(WireError(format!(
            "object {object} opcode {} has bad size {size}",
            word & 0xffff
        )));
    }
    if buf.len() < size {
        return Ok(None);
    }
    let args = buf[HEADER_LEN..size].to_vec();
    buf.drain(..size);
    Ok(Some(Event {
        object,
        opcode: (word & 0xffff) as u16,
        args,
    }))
}

/// Sequential reader over an event's arguments.
pub struct ArgReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> ArgReader<'a> {
    pub fn uint(&mut self) -> Result<u32, WireError> {
        let b = self
            .data
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| WireError("argument past end of message".into()))?;
        self.pos += 4;
        Ok(ne_u32(b))
    }

    pub fn int(&mut self) -> Result<i32, WireError> {
        self.uint().map(|v| v as i32)
    }

    pub fn array(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.uint()? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| pad4(e) <= self.data.len())
            .ok_or_else(|| WireError(format!("array/string of {len} bytes past end")))?;
        let a = &self.data[self.pos..end];
        self.pos = pad4(end);
        Ok(a)
    }

    /// A string argument; `None` for a null string (length 0).
    pub fn string(&mut self) -> Result<Option<String>, WireError> {
        let a = self.array()?;
        match a.split_last() {
            None => Ok(None),
            Some((0, s)) => Ok(Some(String::from_utf8_lossy(s).into_owned())),
            Some(_) => Err(WireError("string without NUL terminator".into())),
        }
    }
}

/// The native-endian `u32` in the first 4 bytes of `b` (callers have checked there are 4).
fn ne_u32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_header_and_args() {
        let (b, fds) = Message::new(7, 3)
            .uint(0xdead_beef)
            .int(-2)
            .string("xdg_wm_base")
            .array(&[1, 2, 3, 4, 5])
            .fd(9)
            .finish();
        assert_eq!(fds, vec![9]);
        // 8 header + 4 + 4 + (4 + 12) + (4 + 8) = 44
        assert_eq!(b.len(), 44);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(b[4..8].try_into().unwrap()),
            (44 << 16) | 3
        );
        assert_eq!(u32::from_ne_bytes(b[16..20].try_into().unwrap()), 12);
        assert_eq!(&b[20..32], b"xdg_wm_base\0");
    }

    #[test]
    fn string_padding_exact_multiple() {
        // "abc" + NUL = 4 bytes: no extra padding.
        let (b, _) = Message::new(1, 0).string("abc").finish();
        assert_eq!(b.len(), 16);
        let (b, _) = Message::new(1, 0).string("").finish();
        assert_eq!(b.len(), 16);
    }

    #[test]
    fn decode_roundtrip_and_partial() {
        let (m1, _) = Message::new(2, 0).uint(5).string("wl_shm").uint(1).finish();
        let (m2, _) = Message::new(3, 0).uint(42).finish();
        let all: Vec<u8> = m1.iter().chain(m2.iter()).copied().collect();
        // Feed byte by byte: a message only comes out once complete.
        let mut buf = Vec::new();
        let mut events = Vec::new();
        for &byte in &all {
            buf.push(byte);
            while let Some(ev) = take_message(&mut buf).unwrap() {
                events.push(ev);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(events.len(), 2);
        let mut r = events[0].reader();
        assert_eq!(events[0].object, 2);
        assert_eq!(r.uint().unwrap(), 5);
        assert_eq!(r.string().unwrap().as_deref(), Some("wl_shm"));
        assert_eq!(r.uint().unwrap(), 1);
        assert!(r.uint().is_err());
        assert_eq!(events[1].reader().uint().unwrap(), 42);
    }

    #[test]
    fn decode_rejects_bad_size_and_overlong_array() {
        let mut buf = vec![1, 0, 0, 0, 0, 0, 4, 0];
        assert!(take_message(&mut buf).is_err());
        let (m, _) = Message::new(1, 0).uint(100).finish();
        let ev = {
            let mut b = m;
            take_message(&mut b).unwrap().unwrap()
        };
        assert!(ev.reader().array().is_err());
        let (m, _) = Message::new(1, 0).uint(0).finish();
        let ev = {
            let mut b = m;
            take_message(&mut b).unwrap().unwrap()
        };
        assert_eq!(ev.reader().string().unwrap(), None);
    }
}
