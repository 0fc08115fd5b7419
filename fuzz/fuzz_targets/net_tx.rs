//! Fuzzes the virtio-net transmit path: the input becomes a descriptor table, an avail ring
//! and frame bytes in a small guest memory, sent to an in-memory tap whose writes may block
//! (EAGAIN) or fail. The input layout is documented at
//! `qvm_devices::virtio::net::fuzz::fuzz_net_tx`.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::net::fuzz::{fuzz_backend, fuzz_memory, fuzz_net_tx};
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
    fuzz_net_tx(backend, mem, data);
});
