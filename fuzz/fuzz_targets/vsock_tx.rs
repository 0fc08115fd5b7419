//! Fuzzes virtio-vsock's guest->host path: arbitrary tx descriptor chains are parsed by
//! `packet::read_tx_packet` (checked against a plain gather of the chain) and then handled by a
//! fresh `Muxer`, with replies written into arbitrary rx chains. The host side is real unix
//! sockets in a temporary directory: a listener at `<uds>_1024` (guest connects to port 1024
//! succeed; to any other port they find nothing and are reset), and optionally a host peer
//! that connects to `<uds>` with a `CONNECT` line taken from the input.
//!
//! Input (fixed layout; missing bytes read as 0):
//! - byte 0, control: bit 0 = a host peer connects first and sends the line below; bit 1 =
//!   host peers act between the two tx rounds (actions below); bit 2 = the watcher refuses
//!   every third registration;
//! - byte 1: tx avail entries (mod 17); byte 2: how many of them round 1 sees (the rest come
//!   in round 2); byte 3: rx avail entries (mod 17); byte 4: time that passes between the
//!   rounds, in 50 ms steps (deadlines are 2 s and 10 s);
//! - the tx ring, then the rx ring: 16 descriptors of 10 bytes (address selector u32, length
//!   selector u32, flags, next) and 16 head bytes each (see `common::Ring::lay`);
//! - 24 bytes: the host peer's `CONNECT` line, up to the first NUL (data after the newline
//!   is connection data);
//! - 4 bytes, one per host peer (the line's peer, then up to 3 accepted guest connections):
//!   bit 0 write 1 + (b >> 4) * 64 bytes, bit 1 shutdown(SHUT_WR), bit 2 close, bit 3 read
//!   what is there;
//! - 4 bytes: epoll events delivered to the first 4 watched connection sockets (bit 0 IN,
//!   1 OUT, 2 HUP, 3 ERR, 4 RDHUP);
//! - the rest: guest memory from 0x1000 on (headers and payload).
#![no_main]

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{Input, Ring, RING_BYTES};
use event_manager::EventSet;
use libfuzzer_sys::fuzz_target;
use qvm_devices::virtio::vsock::muxer::{Muxer, Watcher, LISTENER_TOKEN, MAX_CONNECTIONS};
use qvm_devices::virtio::vsock::packet::{
    read_tx_packet, Header, TxChainError, HEADER_SIZE, MAX_PKT_BUF_SIZE,
};
use qvm_devices::virtio::vsock::{VsockConfig, VsockStats};
use qvm_devices::virtio::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

const GUEST_CID: u64 = 3;
const LIVE_PORT: u32 = 1024;
const TX_RING: u64 = 0;
const RX_RING: u64 = 0x400;

struct State {
    mem: GuestMemoryMmap,
    uds: PathBuf,
    /// Listens at `<uds>_1024`: guest connects to port 1024 succeed.
    port_listener: UnixListener,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();
static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn init() -> Mutex<State> {
    // Directories of earlier runs that died (a crash skips atexit).
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("qvm-vsock-fuzz-"));
            if pid.is_some_and(|p| !Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("qvm-vsock-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the fuzz socket directory");
    let _ = DIR.set(dir.clone());
    // SAFETY: registers a plain function; libFuzzer leaves through exit().
    unsafe { libc::atexit(remove_dir) };
    let uds = dir.join("v.sock");
    let mut port_path = uds.as_os_str().to_owned();
    port_path.push(format!("_{LIVE_PORT}"));
    let port_listener = UnixListener::bind(&port_path).expect("bind the port listener");
    port_listener.set_nonblocking(true).expect("nonblocking");
    Mutex::new(State {
        mem: common::memory(),
        uds,
        port_listener,
    })
}

/// A watcher with epoll's rules (add of a watched fd, modify or remove of an unwatched one is
/// an error: the muxer's bookkeeping must never do that), optionally refusing registrations.
struct FakeWatcher {
    watched: BTreeMap<RawFd, (u32, EventSet)>,
    refuse_every: u32,
    calls: u32,
}

impl FakeWatcher {
    fn refuse(&mut self) -> bool {
        self.calls += 1;
        self.refuse_every != 0 && self.calls.is_multiple_of(self.refuse_every)
    }
}

impl Watcher for FakeWatcher {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        assert!(
            !self.watched.contains_key(&fd),
            "fd {fd} (token {token}) added twice"
        );
        if self.refuse() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.watched.insert(fd, (token, events));
        Ok(())
    }

    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        let Some(&(was, _)) = self.watched.get(&fd) else {
            panic!("modify of unwatched fd {fd} (token {token})");
        };
        assert_eq!(was, token, "fd {fd} changes token");
        if self.refuse() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.watched.insert(fd, (token, events));
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) -> std::io::Result<()> {
        assert!(
            self.watched.remove(&fd).is_some(),
            "remove of unwatched fd {fd}"
        );
        Ok(())
    }
}

/// Why a plain gather of a chain fails.
#[derive(Debug, PartialEq)]
enum Gather {
    WriteOnly,
    BadAddress,
    Short,
}

/// The first `n` bytes of a driver-to-device chain, read descriptor by descriptor.
fn gather<M: std::ops::Deref<Target = GuestMemoryMmap>>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
    n: usize,
) -> Result<Vec<u8>, Gather> {
    let mut out = Vec::with_capacity(n);
    for desc in chain {
        if out.len() == n {
            break;
        }
        if desc.is_write_only() {
            return Err(Gather::WriteOnly);
        }
        let take = (desc.len() as usize).min(n - out.len());
        let at = out.len();
        out.resize(at + take, 0);
        mem.read_slice(&mut out[at..], desc.addr())
            .map_err(|_| Gather::BadAddress)?;
    }
    if out.len() == n {
        Ok(out)
    } else {
        Err(Gather::Short)
    }
}

fn to_tx_error(g: Gather) -> TxChainError {
    match g {
        Gather::WriteOnly => TxChainError::WriteOnly,
        Gather::BadAddress => TxChainError::BadAddress,
        Gather::Short => TxChainError::TooShort,
    }
}

/// Checks `read_tx_packet` on every available chain of a copy of `queue`.
fn check_tx_parser(mem: &GuestMemoryMmap, queue: &Queue) {
    let mut copy = Queue::try_from(queue.state()).expect("queue state round-trips");
    let mut data = Vec::new();
    while let Some(chain) = copy.pop_descriptor_chain(mem) {
        let got = read_tx_packet(mem, &mut chain.clone(), &mut data);
        let want = gather(mem, chain.clone(), HEADER_SIZE)
            .map_err(to_tx_error)
            .and_then(|head| {
                let h = Header::from_bytes(head.as_slice().try_into().expect("header size"));
                if h.len > MAX_PKT_BUF_SIZE {
                    return Err(TxChainError::TooLong);
                }
                let all = gather(mem, chain, HEADER_SIZE + h.len as usize).map_err(to_tx_error)?;
                Ok((h, all[HEADER_SIZE..].to_vec()))
            });
        match (got, want) {
            (Ok(h), Ok((wh, wdata))) => {
                assert_eq!(h, wh);
                assert!(data == wdata, "payload differs from the gathered bytes");
            }
            (Err(e), Err(we)) => assert_eq!(e, we),
            (got, want) => panic!("read_tx_packet gave {got:?}, a plain gather {want:?}"),
        }
    }
}

fn events_from(bits: u8) -> EventSet {
    let mut e = EventSet::empty();
    for (bit, ev) in [
        (1, EventSet::IN),
        (2, EventSet::OUT),
        (4, EventSet::HANG_UP),
        (8, EventSet::ERROR),
        (16, EventSet::READ_HANG_UP),
    ] {
        if bits & bit != 0 {
            e |= ev;
        }
    }
    e
}

/// What the worker does after each event: deliver replies, update the watched sockets.
fn service(
    mux: &mut Muxer,
    rx: &mut Ring,
    mem: &GuestMemoryMmap,
    w: &mut FakeWatcher,
    now: Instant,
) {
    mux.process_rx(&mut rx.queue, mem, now);
    mux.sync_interest(w);
    if mux.has_rx_work() {
        mux.process_rx(&mut rx.queue, mem, now);
    }
    mux.sync_interest(w);
}

/// The worker's tx loop: until the queue is drained (at most a few rounds).
fn tx_round(mux: &mut Muxer, tx: &mut Ring, mem: &GuestMemoryMmap, now: Instant) {
    for _ in 0..3 {
        let before = tx.queue.next_avail();
        mux.process_tx(&mut tx.queue, mem, now);
        if tx.queue.next_avail() == before {
            break;
        }
    }
}

fn run(state: &State, data: &[u8]) {
    let mem = &state.mem;
    let mut input = Input::new(data);
    let ctrl = input.byte();
    let n_tx = input.byte();
    let split = input.byte();
    let n_rx = input.byte();
    let step = input.byte();
    let mut ring_input = Input::new(input.take(2 * RING_BYTES));
    let line = input.take(24);
    let line = &line[..line.iter().position(|&b| b == 0).unwrap_or(line.len())];
    let actions = input.take(4).to_vec();
    let events = input.take(4).to_vec();

    common::clear(mem);
    common::write_payload(mem, input.rest());
    let mut tx = Ring::lay(mem, &mut ring_input, TX_RING, u16::from(n_tx));
    let mut rx = Ring::lay(mem, &mut ring_input, RX_RING, u16::from(n_rx));
    let n_tx = tx.n_avail;
    let round1 = u16::from(split) % (n_tx + 1);

    check_tx_parser(mem, &tx.queue);

    let _ = std::fs::remove_file(&state.uds);
    let stats = Arc::new(VsockStats::default());
    let cfg = VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: state.uds.clone(),
    };
    let mut mux = Muxer::new(&cfg, stats.clone()).expect("muxer");
    let mut w = FakeWatcher {
        watched: BTreeMap::new(),
        refuse_every: if ctrl & 4 != 0 { 3 } else { 0 },
        calls: 0,
    };
    let now = Instant::now();
    mux.sync_interest(&mut w);

    let mut peers: Vec<UnixStream> = Vec::new();
    if ctrl & 1 != 0 {
        let mut host = UnixStream::connect(&state.uds).expect("connect to the muxer's listener");
        let _ = host.write_all(line);
        host.set_nonblocking(true).expect("nonblocking");
        peers.push(host);
        mux.accept_host_connections(now);
        mux.sync_interest(&mut w);
        let ready: Vec<u32> = w
            .watched
            .values()
            .map(|&(t, _)| t)
            .filter(|&t| t != LISTENER_TOKEN)
            .collect();
        for token in ready {
            mux.handle_conn_event(token, EventSet::IN, now);
        }
        service(&mut mux, &mut rx, mem, &mut w, now);
    }

    // Round 1.
    tx.publish(mem, round1);
    tx_round(&mut mux, &mut tx, mem, now);
    service(&mut mux, &mut rx, mem, &mut w, now);

    if ctrl & 2 != 0 {
        while peers.len() < 4 {
            match state.port_listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(true);
                    peers.push(s);
                }
                Err(_) => break,
            }
        }
        let mut keep = Vec::new();
        for (mut p, &a) in peers.drain(..).zip(actions.iter()) {
            if a & 1 != 0 {
                let chunk = [0x5au8; 1 + 15 * 64];
                let _ = p.write(&chunk[..1 + usize::from(a >> 4) * 64]);
            }
            if a & 2 != 0 {
                let _ = p.shutdown(Shutdown::Write);
            }
            if a & 8 != 0 {
                let mut buf = [0u8; 4096];
                loop {
                    match p.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            if a & 4 == 0 {
                keep.push(p);
            }
        }
        peers = keep;
        let watched: Vec<(u32, EventSet)> = w
            .watched
            .values()
            .copied()
            .filter(|&(t, _)| t != LISTENER_TOKEN)
            .collect();
        for (&(token, interest), &bits) in watched.iter().zip(events.iter()) {
            // What epoll could report: the interest, plus HUP and ERR always.
            let ev = events_from(bits) & (interest | EventSet::HANG_UP | EventSet::ERROR);
            if !ev.is_empty() {
                mux.handle_conn_event(token, ev, now);
            }
        }
        service(&mut mux, &mut rx, mem, &mut w, now);
    }

    let later = now + Duration::from_millis(50 * u64::from(step));
    mux.expire(later);
    service(&mut mux, &mut rx, mem, &mut w, later);

    // Round 2.
    tx.publish(mem, n_tx);
    tx_round(&mut mux, &mut tx, mem, later);
    // Replies go to rx buffers, and one reached through an indirect table may land on the tx
    // ring (see `Ring::avail_intact`); tx itself writes nothing, so this is the last chance.
    let tx_intact = tx.avail_intact(mem);
    service(&mut mux, &mut rx, mem, &mut w, later);

    // Every tx chain was taken, and every one with a valid head returned exactly once (the
    // device's count: the used ring in guest memory may have been overwritten).
    if tx_intact {
        assert_eq!(tx.queue.next_avail(), n_tx, "every tx entry consumed");
        assert_eq!(
            tx.queue.next_used(),
            n_tx - tx.bad_heads,
            "every tx chain used once"
        );
    } else {
        assert!(
            tx.queue.next_used() <= tx.queue.next_avail(),
            "more used than taken"
        );
    }
    // Replies fit the rx buffers' shape: empty (malformed) or a header and its payload.
    // (The device's counts: a reply may rewrite the rx ring itself, see `Ring::avail_intact`.)
    let rx_used = rx.queue.next_used();
    assert!(rx_used <= rx.queue.next_avail(), "rx used more than taken");
    assert!(
        rx_used <= rx.n_avail || !rx.avail_intact(mem),
        "rx used {rx_used} > avail {}",
        rx.n_avail
    );
    for (id, len) in rx.used_elems(mem).unwrap_or_default() {
        assert!(id < u32::from(common::QUEUE_SIZE), "rx used id {id}");
        assert!(
            len == 0 || (HEADER_SIZE as u32..=HEADER_SIZE as u32 + MAX_PKT_BUF_SIZE).contains(&len),
            "rx used len {len}"
        );
    }
    assert!(mux.connection_count() <= MAX_CONNECTIONS);
    let s = stats.snapshot();
    assert!(s.connections_closed <= s.connections_opened, "{s:?}");

    drop(mux);
    drop(peers);
    // Guest connects the port listener did not accept above.
    while state.port_listener.accept().is_ok() {}
}

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(init);
    let guard = state.lock().unwrap_or_else(|e| e.into_inner());
    run(&guard, data);
});
