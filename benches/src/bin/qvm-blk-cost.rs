//! Host-side CPU cost of our virtio-blk device per request, with no guest: fills a split
//! virtqueue in plain guest memory with `N` 4 KiB requests (header, data, status chains, as
//! the Linux driver builds them) and runs `process_queue` over them, a queue's worth at a time.
//!
//! Run it under `valgrind --tool=callgrind` with two values of N: the difference in collected
//! instructions divided by the difference in N is the cost of one request in user space (the
//! pread/pwrite itself is kernel time, which callgrind does not count). `qvm-bench` does this.
//!
//! Usage: qvm-blk-cost <read|write|flush> <N> <image>

use std::process::ExitCode;

use qvm_devices::virtio::block::{process_queue, BlockConfig, Disk};
use qvm_devices::virtio::testing::SplitRing;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QUEUE_SIZE: u16 = 256;
const CHAINS: u16 = QUEUE_SIZE / 3;
/// The ring at guest address 0: descriptor table, avail ring at 0x1000, used ring at 0x2000.
const RING: SplitRing = SplitRing::new(0, QUEUE_SIZE);
const HEADERS: u64 = 0x4000;
const STATUS: u64 = 0x6000;
const DATA: u64 = 0x10_0000;
const BLOCK: u32 = 4096;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

fn desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    RING.set_desc(mem, i, Descriptor::new(addr, len, flags, next));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(n), Some(image)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<u64>().ok()),
        args.get(3),
    ) else {
        eprintln!("usage: qvm-blk-cost <read|write|flush> <N> <image>");
        return ExitCode::from(2);
    };
    let req_type: u32 = match kind.as_str() {
        "read" => 0,
        "write" => 1,
        "flush" => 4,
        _ => {
            eprintln!("qvm-blk-cost: unknown request kind {kind:?}");
            return ExitCode::from(2);
        }
    };
    let mut disk = match Disk::open(&BlockConfig {
        path: image.into(),
        read_only: false,
        id: None,
        direct_io: false,
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("qvm-blk-cost: {e}");
            return ExitCode::from(1);
        }
    };
    let sectors = std::fs::metadata(image).map(|m| m.len() / 512).unwrap_or(0);
    if sectors < 8 * u64::from(CHAINS) {
        eprintln!("qvm-blk-cost: {image} is too small; use at least 1 MiB");
        return ExitCode::from(1);
    }
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("bench memory");

    // Fixed chains: chain c is descriptors 3c (header), 3c+1 (data), 3c+2 (status).
    for c in 0..CHAINS {
        let d = c * 3;
        let header = HEADERS + u64::from(c) * 16;
        desc(&mem, d, header, 16, VIRTQ_DESC_F_NEXT, d + 1);
        if req_type == 4 {
            desc(&mem, d + 1, STATUS + u64::from(c), 1, VIRTQ_DESC_F_WRITE, 0);
        } else {
            let data_flags = VIRTQ_DESC_F_NEXT | if req_type == 0 { VIRTQ_DESC_F_WRITE } else { 0 };
            desc(
                &mem,
                d + 1,
                DATA + u64::from(c) * u64::from(BLOCK),
                BLOCK,
                data_flags,
                d + 2,
            );
            desc(&mem, d + 2, STATUS + u64::from(c), 1, VIRTQ_DESC_F_WRITE, 0);
        }
    }
    let mut queue = RING.queue();

    let mut done = 0u64;
    let mut avail_idx = 0u16;
    let mut sector = 0u64;
    let mut bad = 0usize;
    while done < n {
        let batch = (n - done).min(u64::from(CHAINS)) as u16;
        for c in 0..batch {
            let header = HEADERS + u64::from(c) * 16;
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&req_type.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(header)).expect("header");
            mem.write_obj(0xffu8, GuestAddress(STATUS + u64::from(c)))
                .expect("status");
            sector = (sector + 8) % (sectors - 8);
            RING.set_avail(&mem, avail_idx, c * 3);
            avail_idx = avail_idx.wrapping_add(1);
        }
        RING.set_avail_idx(&mem, avail_idx);
        process_queue(&mut disk, &mut queue, &mem);
        done += u64::from(batch);
        bad += (0..batch)
            .filter(|c| {
                mem.read_obj::<u8>(GuestAddress(STATUS + u64::from(*c)))
                    .ok()
                    != Some(0)
            })
            .count();
    }
    let used = RING.used_idx(&mem);
    if used != avail_idx || bad != 0 {
        eprintln!("qvm-blk-cost: used idx {used}, avail idx {avail_idx}, {bad} failed statuses");
        return ExitCode::from(1);
    }
    println!("{n} {kind} requests done");
    ExitCode::SUCCESS
}
