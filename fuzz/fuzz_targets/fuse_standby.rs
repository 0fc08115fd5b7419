//! Fuzzes what answers guest FUSE requests while virtiofsd is gone:
//! `vhost_user::fs::fuse_error_reply` (directly, or through `FuseStandby`, which also takes
//! hiprio chains) on arbitrary descriptor chains, checked against a plain model: the request
//! header is the first 16 bytes of the readable descriptors before the first writable one, the
//! reply (len 16, -errno, the request's unique) goes into the writable descriptors in order, and
//! anything missing or outside guest memory gives None.
//!
//! Input: byte 0 = control (bit 0: go through `FuseStandby::fail_request` on queue
//! `ctrl >> 1`, so 0 is hiprio, with ENOTCONN; else call `fuse_error_reply` with the errno
//! below); byte 1 = avail entries (mod 17); bytes 2-5 = errno (1 + u32 % 4095); then a ring (16
//! descriptors of 10 bytes and 16 head bytes, see `common::Ring::lay`); the rest is guest
//! memory from 0x1000 on.
#![no_main]

mod common;

use std::sync::{Mutex, OnceLock};

use common::{Input, Ring, RING_BYTES};
use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::vhost_user::fs::{
    fuse_error_reply, FuseStandby, FUSE_OUT_HEADER_SIZE, STANDBY_ERRNO,
};
use qvm_devices::virtio::vhost_user::StandbyResponder;
use qvm_devices::virtio::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};

static MEM: OnceLock<Mutex<GuestMemoryMmap>> = OnceLock::new();

/// What the model predicts for one chain, computed before the reply is written (a writable
/// buffer may overlap the request).
struct Expected {
    /// Where the reply's bytes go: (address, offset in the reply, length).
    parts: Vec<(GuestAddress, usize, usize)>,
    reply: Option<[u8; FUSE_OUT_HEADER_SIZE]>,
}

fn model(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, errno: i32) -> Expected {
    let mut header = [0u8; 16];
    let mut got = 0;
    let mut writable = Vec::new();
    let mut read_failed = false;
    for desc in chain {
        if desc.is_write_only() {
            writable.push((desc.addr(), desc.len() as usize));
        } else if writable.is_empty() && got < header.len() && !read_failed {
            let n = (desc.len() as usize).min(header.len() - got);
            if mem
                .read_slice(&mut header[got..got + n], desc.addr())
                .is_err()
            {
                read_failed = true;
            }
            got += n;
        }
    }
    let mut parts = Vec::new();
    if read_failed || got < header.len() {
        return Expected { parts, reply: None };
    }
    let mut reply = [0u8; FUSE_OUT_HEADER_SIZE];
    reply[0..4].copy_from_slice(&(FUSE_OUT_HEADER_SIZE as u32).to_le_bytes());
    reply[4..8].copy_from_slice(&errno.wrapping_neg().to_le_bytes());
    reply[8..16].copy_from_slice(&header[8..16]);
    let mut at = 0;
    for (addr, len) in writable {
        if at == reply.len() {
            break;
        }
        let n = len.min(reply.len() - at);
        // Readable iff writable: plain anonymous guest memory.
        let mut probe = [0u8; FUSE_OUT_HEADER_SIZE];
        if mem.read_slice(&mut probe[..n], addr).is_err() {
            return Expected { parts, reply: None };
        }
        parts.push((addr, at, n));
        at += n;
    }
    Expected {
        parts,
        reply: (at == reply.len()).then_some(reply),
    }
}

fn overlapping(parts: &[(GuestAddress, usize, usize)]) -> bool {
    parts.iter().enumerate().any(|(i, &(a, _, n))| {
        parts[i + 1..].iter().any(|&(b, _, m)| {
            let (a, b) = (a.0 as u128, b.0 as u128);
            a < b + m as u128 && b < a + n as u128
        })
    })
}

fn run(mem: &GuestMemoryMmap, data: &[u8]) {
    let mut input = Input::new(data);
    let ctrl = input.byte();
    let n_avail = input.byte();
    // Real errnos: fuse_error_reply negates it, and its only caller passes ENOTCONN.
    let errno = 1 + (input.u32() % 4095) as i32;
    let mut ring_input = Input::new(input.take(RING_BYTES));
    common::clear(mem);
    common::write_payload(mem, input.rest());
    let mut ring = Ring::lay(mem, &mut ring_input, 0, u16::from(n_avail));

    let standby = ctrl & 1 != 0;
    let queue = usize::from(ctrl >> 1);
    let errno = if standby { STANDBY_ERRNO } else { errno };
    while let Some(chain) = ring.queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        if standby && queue == 0 {
            // hiprio: FORGETs get no reply.
            assert_eq!(FuseStandby.fail_request(0, mem, chain), 0);
            continue;
        }
        let want = model(mem, chain.clone(), errno);
        let got = if standby {
            Some(FuseStandby.fail_request(queue, mem, chain)).filter(|&n| n != 0)
        } else {
            fuse_error_reply(mem, chain, errno)
        };
        assert_eq!(
            got,
            want.reply.map(|r| r.len() as u32),
            "chain {head}: reply length differs from the model"
        );
        if let Some(reply) = want.reply {
            if !overlapping(&want.parts) {
                for &(addr, at, n) in &want.parts {
                    let mut back = [0u8; FUSE_OUT_HEADER_SIZE];
                    mem.read_slice(&mut back[..n], addr)
                        .expect("checked by the model");
                    assert_eq!(back[..n], reply[at..at + n], "chain {head}: reply bytes");
                }
            }
        }
        let _ = ring.queue.add_used(mem, head, got.unwrap_or(0));
    }
    // A reply through an indirect table may rewrite the ring (see `Ring::avail_intact`).
    if ring.avail_intact(mem) {
        assert_eq!(ring.queue.next_avail(), ring.n_avail);
    }
}

fuzz_target!(|data: &[u8]| {
    let mem = MEM.get_or_init(|| Mutex::new(common::memory()));
    let guard = mem.lock().unwrap_or_else(|e| e.into_inner());
    run(&guard, data);
});
