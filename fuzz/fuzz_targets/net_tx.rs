//! Fuzzes the virtio-net transmit path: the input becomes a descriptor table, an avail ring
//! and frame bytes in a small guest memory, sent to an in-memory tap whose writes may block
//! (EAGAIN) or fail. The input layout is documented at
//! `qvm_devices::virtio::net::fuzz::fuzz_net_tx`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::net::fuzz::NetFuzz;

static STATE: OnceLock<Mutex<NetFuzz>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(|| Mutex::new(NetFuzz::default()));
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.tx(data);
});
