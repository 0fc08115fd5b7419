//! Fuzz bytes into rings: what the device fuzz harnesses (`block::fuzz`, `net::fuzz`) and the
//! `fuzz/` targets share. Each harness keeps its own input format (their corpora depend on
//! it); the pieces here are the same for all.
//!
//! Guest memory: two adjacent 64 KiB regions at 0 (buffers may straddle them), a hole, and a
//! 4 KiB region at [`THIRD_REGION`]. Rings of [`QUEUE_SIZE`] entries live in the first 4 KiB
//! ([`super::SplitRing`] at a 0x400-aligned base: descriptor table, avail ring at +0x100, used
//! ring at +0x200); buffers point into [`PAYLOAD`]..0x21000 (the last 4 KiB is past the end of
//! memory), the third region (straddling its end) or near `u64::MAX` ([`buf_addr`]).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::GuestMemoryMmap;

/// Size of every fuzzed queue.
pub const QUEUE_SIZE: u16 = 16;
/// Bytes of input per descriptor ([`descriptor`]): address selector (u32), length selector
/// (u32), flags, next.
pub const DESC_BYTES: usize = 10;
/// Where buffer payload copied from the input starts, and where the memory cleared for each
/// input ends.
pub const PAYLOAD: u64 = 0x1000;
pub const PAYLOAD_END: u64 = 0x20000;
/// The small region past the hole.
pub const THIRD_REGION: u64 = 0x40000;

/// The harness guest memory (see the module documentation).
pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(0x10000), 0x10000),
        (GuestAddress(THIRD_REGION), 0x1000),
    ])
    .expect("fuzz guest memory")
}

/// Zeroes the rings and buffer areas: a clean slate for the next input.
pub fn clear(mem: &GuestMemoryMmap) {
    static ZEROS: [u8; 0x1000] = [0; 0x1000];
    let mut at = 0;
    while at < PAYLOAD_END {
        let _ = mem.write_slice(&ZEROS, GuestAddress(at));
        at += ZEROS.len() as u64;
    }
    let _ = mem.write_slice(&ZEROS, GuestAddress(THIRD_REGION));
}

/// Copies `bytes` to guest memory at [`PAYLOAD`] (as much as fits before [`PAYLOAD_END`]).
pub fn write_payload(mem: &GuestMemoryMmap, bytes: &[u8]) {
    let room = (PAYLOAD_END - PAYLOAD) as usize;
    let _ = mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(PAYLOAD));
}

/// Reads the input as a stream of fixed-size fields; past the end everything reads as 0.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// The next `n` bytes (fewer at the end of the input); always advances by `n`.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = self.pos.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }

    /// Whatever follows.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }
}

/// A guest buffer address from a selector: mostly inside the payload area, sometimes in the
/// small third region (straddling its end), sometimes where `addr + len` overflows.
pub fn buf_addr(sel: u32) -> u64 {
    match sel >> 30 {
        0 | 1 => PAYLOAD + u64::from(sel & 0x1_ffff),
        2 => THIRD_REGION + u64::from(sel & 0x1fff),
        _ => u64::MAX - u64::from(sel & 0xffff),
    }
}

/// One descriptor from [`DESC_BYTES`] of input: the address from its selector ([`buf_addr`]),
/// the length from its selector through `len_of` (each device picks the lengths that matter
/// to it), flags & 7 (NEXT, WRITE, INDIRECT) and next % 20 (past the table now and then).
pub fn descriptor(input: &mut Input, len_of: impl Fn(u32) -> u32) -> Descriptor {
    let addr = buf_addr(input.u32());
    let len = len_of(input.u32());
    let (flags, next) = (input.byte(), input.byte());
    Descriptor::new(addr, len, u16::from(flags & 0x7), u16::from(next) % 20)
}
