//! Fuzzes the virtio-net receive path: the input becomes a descriptor table and an avail ring of
//! rx buffers in a small guest memory, and frames an in-memory tap returns (MRG_RXBUF on or
//! off, read errors). The input layout is documented at
//! `qvm_devices::virtio::net::fuzz::fuzz_net_rx`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::net::fuzz::NetFuzz;

static STATE: OnceLock<Mutex<NetFuzz>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(|| Mutex::new(NetFuzz::default()));
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.rx(data);
});
