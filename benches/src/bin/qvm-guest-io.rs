//! `qvm-guest-io DEVICE MODE BLOCK_SIZE SECONDS`: a tiny static disk benchmark that runs inside
//! guests (their busybox userspace has no fio). MODE is seqread, seqwrite, randread or
//! randwrite; I/O is O_DIRECT with one request in flight (queue depth 1), so it measures the
//! virtio-blk request round trip. Prints `RESULT <mode> <bs> <MB/s> <IOPS> <ios>`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!(
            "usage: qvm-guest-io DEVICE seqread|seqwrite|randread|randwrite BLOCK_SIZE SECONDS"
        );
        std::process::exit(2);
    }
    let (dev, mode) = (&args[1], args[2].as_str());
    let bs: usize = args[3].parse().expect("block size");
    let secs: f64 = args[4].parse().expect("seconds");
    let write = mode.ends_with("write");
    let random = mode.starts_with("rand");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {dev}: {e}"));
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let size = if size == 0 {
        // A block device: its size is where it ends.
        use std::io::Seek;
        (&file).seek(std::io::SeekFrom::End(0)).expect("seek end")
    } else {
        size
    };
    let blocks = size / bs as u64;
    assert!(blocks > 0, "{dev} is smaller than one block");
    let layout = Layout::from_size_align(bs, 4096).expect("layout");
    // SAFETY: layout has non-zero size; freed below with the same layout.
    let ptr = unsafe { alloc_zeroed(layout) };
    assert!(!ptr.is_null());
    // SAFETY: ptr points to bs zeroed bytes we own.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, bs) };
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let (mut ios, mut block) = (0u64, 0u64);
    let deadline = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        let b = if random {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % blocks
        } else {
            block = (block + 1) % blocks;
            block
        };
        let off = b * bs as u64;
        let r = if write {
            file.write_at(buf, off)
        } else {
            file.read_at(buf, off)
        };
        match r {
            Ok(n) if n == bs => ios += 1,
            Ok(n) => panic!("short I/O: {n} of {bs} at {off}"),
            Err(e) => panic!("I/O error at {off}: {e}"),
        }
    }
    let el = t0.elapsed().as_secs_f64();
    // SAFETY: allocated above with this layout.
    unsafe { dealloc(ptr, layout) };
    println!(
        "RESULT {mode} {bs} {:.1} {:.0} {ios}",
        ios as f64 * bs as f64 / el / 1e6,
        ios as f64 / el
    );
}
