//! Wayland messages as the proxy reads them: the header, and the arguments walked by the
//! message's signature from the protocol XML, with where each id sits for patching.

use super::MAX_MESSAGE;
use crate::proxy::xml::ArgType;

/// A little-endian cursor over one message's arguments.
pub(super) struct Args<'a> {
    pub(super) msg: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Args<'a> {
    pub(super) fn u32(&mut self) -> Option<u32> {
        let b = self.msg.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    }
    /// A string or array: returns its bytes (without padding) and moves past them.
    pub(super) fn blob(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let padded = len.checked_add(3)? & !3;
        let b = self.msg.get(self.pos..self.pos.checked_add(padded)?)?;
        self.pos += padded;
        Some(&b[..len])
    }
}

/// One argument of a message as it sits on the wire; `pos` is where its u32 (for a new id of a
/// dynamic interface, the id's u32) is, for patching.
pub(super) enum Wire<'a> {
    /// int, uint or fixed.
    Word {
        pos: usize,
        v: u32,
    },
    Str(&'a [u8]),
    Array,
    Object {
        pos: usize,
        id: u32,
    },
    /// `iface` is the interface's name: from the XML, or off the wire (`wl_registry.bind`).
    NewId {
        pos: usize,
        id: u32,
        iface: &'a str,
    },
    Fd,
}

/// Walks a message's arguments by its signature, shared by both directions (which differ only
/// in how they map ids). None: the message is too short for its signature. Also returns where
/// the arguments end.
pub(super) fn decode<'a>(msg: &'a [u8], sig: &'a [ArgType]) -> Option<(Vec<Wire<'a>>, usize)> {
    let mut a = Args { msg, pos: 8 };
    let mut out = Vec::with_capacity(sig.len());
    for arg in sig {
        let pos = a.pos;
        out.push(match arg {
            ArgType::Int | ArgType::Uint | ArgType::Fixed => Wire::Word { pos, v: a.u32()? },
            ArgType::Str => Wire::Str(a.blob()?),
            ArgType::Array => {
                a.blob()?;
                Wire::Array
            }
            ArgType::Object => Wire::Object { pos, id: a.u32()? },
            ArgType::NewId(named) => {
                let iface = match named {
                    Some(n) => n.as_str(),
                    None => {
                        let n = str_of(a.blob()?).unwrap_or_default();
                        let _version = a.u32()?;
                        n
                    }
                };
                let pos = a.pos;
                Wire::NewId {
                    pos,
                    id: a.u32()?,
                    iface,
                }
            }
            ArgType::Fd => Wire::Fd,
        });
    }
    Some((out, a.pos))
}

pub(super) fn str_of(b: &[u8]) -> Option<&str> {
    // Wayland strings carry their NUL.
    std::str::from_utf8(b.strip_suffix(&[0])?).ok()
}

pub(super) fn put_u32(buf: &mut [u8], pos: usize, v: u32) {
    buf[pos..pos + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Splits the next whole message off `buf`: (object, opcode, size) or None if incomplete.
pub(super) fn header(buf: &[u8]) -> Result<Option<(u32, u16, usize)>, String> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let obj = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let w = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let size = (w >> 16) as usize;
    if size < 8 || !size.is_multiple_of(4) || size > MAX_MESSAGE {
        return Err(format!("bad message size {size}"));
    }
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some((obj, (w & 0xffff) as u16, size)))
}
