//! Fuzzes the virtio-net receive path: the input becomes a descriptor table and an avail ring of
//! rx buffers in a small guest memory, and frames an in-memory tap returns (MRG_RXBUF on or
//! off, read errors). The input layout is documented at
//! `qvm_devices::virtio::net::fuzz::fuzz_net_rx`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::net::fuzz::{fuzz_backend, fuzz_memory, fuzz_net_rx};
use qvm_devices::virtio::net::{FakeTap, NetBackend};
use qvm_devices::virtio::GuestMemoryMmap;

struct State {
    mem: GuestMemoryMmap,
    backend: NetBackend<FakeTap>,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(|| {
        Mutex::new(State {
            mem: fuzz_memory(),
            backend: fuzz_backend(),
        })
    });
    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
    let State { mem, backend } = &mut *guard;
    fuzz_net_rx(backend, mem, data);
});
