//! Fuzzes the virtio-blk request parser and executor: the input becomes a descriptor table,
//! an avail ring and request payload in a small guest memory, served by a 64 KiB disk.
//! The input layout is documented at `qvm_devices::virtio::block::fuzz::fuzz_blk_request`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::block::fuzz::fuzz_blk_request;
use qvm_devices::virtio::block::{BlockConfig, Disk};
use qvm_devices::virtio::testing::fuzz::memory as fuzz_memory;
use qvm_devices::virtio::GuestMemoryMmap;

struct State {
    mem: GuestMemoryMmap,
    rw: Disk,
    ro: Disk,
}

/// A 64 KiB image, unlinked once open so nothing is left behind.
fn temp_disk(name: &str, read_only: bool) -> Disk {
    let path = std::env::temp_dir().join(format!("qvm-blk-fuzz-{}-{name}.img", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(64 * 1024))
        .expect("create the fuzz disk image");
    let disk = Disk::open(&BlockConfig {
        path: path.clone(),
        read_only,
        id: Some("fuzz".into()),
        direct_io: false,
    })
    .expect("open the fuzz disk image");
    let _ = std::fs::remove_file(&path);
    disk
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(|| {
        Mutex::new(State {
            mem: fuzz_memory(),
            rw: temp_disk("rw", false),
            ro: temp_disk("ro", true),
        })
    });
    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
    let State { mem, rw, ro } = &mut *guard;
    let disk = if data.last().is_some_and(|b| b & 1 == 1) {
        ro
    } else {
        rw
    };
    fuzz_blk_request(disk, mem, data);
});
