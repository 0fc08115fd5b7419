//! Fuzzes virtio-wl's guest->host path: arbitrary out-queue chains are gathered and executed
//! by a fresh `qvm_virtio_wl::state::WlState` (FakeMapper, no compositor socket: NEW_CTX is
//! answered ERR, everything else runs for real: memfds, pipes, sends into pipes), then every
//! watched vfd gets an event and pending messages go into arbitrary in-queue chains.
//!
//! Input (fixed layout; missing bytes read as 0):
//! - byte 0: acked features (bits 1-3: TRANS_FLAGS, SEND_FENCES, USE_SHMEM);
//! - byte 1: out avail entries (mod 17); byte 2: in avail entries (mod 17);
//! - the out ring, then the in ring: 16 descriptors of 10 bytes (address selector u32, length
//!   selector u32, flags, next) and 16 head bytes each (see `common::Ring::lay`);
//! - the rest: guest memory from 0x1000 on (requests).
//!
//! Checks: every out chain is consumed and every valid head used once (while the guest did not
//! rewrite its avail ring through a reply, see `Ring::avail_intact`); in-queue buffers are used
//! at most once; the mapper and the state agree on what is mapped, within the limits; dropping
//! the state unmaps everything.
#![no_main]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Input, Ring, RING_BYTES};
use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::GuestMemoryMmap;
use qvm_virtio_wl::state::WlState;
use qvm_virtio_wl::{FakeMapper, WlConfig, WlMetrics};
use virtio_queue::QueueT;

const OUT_RING: u64 = 0;
const IN_RING: u64 = 0x400;
const WINDOW: (u64, u64) = (0x1_0000_0000, 0x40_0000);
const MAX_BYTES: u64 = 0x20_0000;
const MAX_VFDS: u32 = 12;

struct State {
    mem: GuestMemoryMmap,
    mapper: Arc<FakeMapper>,
    cfg: Arc<WlConfig>,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn init() -> Mutex<State> {
    Mutex::new(State {
        mem: common::memory(),
        mapper: Arc::new(FakeMapper::new(WINDOW.0, WINDOW.1)),
        cfg: Arc::new(WlConfig {
            socket: None,
            named: Vec::new(),
            max_buffer_bytes: MAX_BYTES,
            max_vfds: MAX_VFDS,
            // No compositor socket here, so no context: the policy is fuzzed by its own
            // target-free tests (virtio-wl/src/policy/tests.rs).
            policy: None,
        }),
    })
}

fn run(st: &State, data: &[u8]) {
    let mem = &st.mem;
    let mut input = Input::new(data);
    let acked = u64::from(input.byte() & 0x0e);
    let n_out = input.byte();
    let n_in = input.byte();
    let mut ring_input = Input::new(input.take(2 * RING_BYTES));
    common::clear(mem);
    common::write_payload(mem, input.rest());
    let mut out = Ring::lay(mem, &mut ring_input, OUT_RING, u16::from(n_out));
    let mut inr = Ring::lay(mem, &mut ring_input, IN_RING, u16::from(n_in));

    let metrics = Arc::new(WlMetrics::default());
    let mut state = WlState::new(st.cfg.clone(), st.mapper.clone(), metrics, acked)
        .expect("create the state (epoll)");
    // A pipe nobody reads fills up: fail at once instead of waiting.
    state.set_send_timeout(Duration::ZERO);
    state.set_log_budget(0);

    state.process_out(&mut out.queue, mem);
    let used = out.queue.next_used();
    if out.avail_intact(mem) {
        assert_eq!(
            out.queue.next_avail(),
            out.n_avail,
            "every out entry consumed"
        );
        // The device's own count: the used ring in guest memory may have been overwritten too.
        assert_eq!(
            used,
            out.n_avail - out.bad_heads,
            "every out chain used once"
        );
    } else {
        // A reply rewrote the avail ring (see `Ring::avail_intact`): no panic, no overrun.
        assert!(used <= out.queue.next_avail(), "more used than taken");
    }
    // Used elements are not checked here: read back from guest memory they are only what the
    // device wrote if no reply landed on them (a reply aliasing the used ring put the ERR code
    // 0x1100 in a length field in CI once), and no test on memory alone can tell.

    for id in state.vfd_ids() {
        state.handle_vfd_event(id);
    }
    state.deliver(&mut inr.queue, mem);
    // In-queue buffers are used at most once (checked against what the device took, since a
    // message may rewrite the in ring itself).
    assert!(inr.queue.next_used() <= inr.queue.next_avail());
    if inr.avail_intact(mem) {
        assert!(inr.queue.next_used() <= inr.n_avail);
    }

    assert!(state.vfd_count() <= MAX_VFDS as usize);
    assert!(state.mapped_bytes() <= MAX_BYTES);
    assert_eq!(st.mapper.mapped_bytes(), state.mapped_bytes());
    drop(state);
    assert_eq!(
        st.mapper.mapped(),
        0,
        "dropping the state unmaps everything"
    );
}

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(init);
    let guard = state.lock().unwrap_or_else(|e| e.into_inner());
    run(&guard, data);
});
