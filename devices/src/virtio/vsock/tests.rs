//! virtio-vsock tests: the muxer driven directly over driver-side rings and a real epoll,
//! with real unix sockets in a temporary directory; and the device through its worker thread.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::EventSet;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::*;
use super::packet::*;
use super::unix::port_path;
use super::*;
use crate::virtio::testing::{self, pattern, wait_for, CountingInterrupt, Rng, TempDir, TestQueue};
use crate::virtio::ActiveQueue;

const CID: u64 = 3;
const MEM_SIZE: usize = 0x500_0000;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const EV_RING: u64 = 0x2_0000;
const RX_BUFS: u64 = 0x100_0000;
const TX_BUFS: u64 = 0x300_0000;
const SLOT: u64 = 0x2_0000;

/// The device's socket paths in a test's temporary directory.
trait SockDir {
    fn uds(&self) -> PathBuf;
    fn cfg(&self) -> VsockConfig;
}

impl SockDir for TempDir {
    fn uds(&self) -> PathBuf {
        self.join("v.sock")
    }

    fn cfg(&self) -> VsockConfig {
        VsockConfig {
            guest_cid: CID,
            uds_path: self.uds(),
        }
    }
}

fn memory() -> GuestMemoryMmap {
    testing::memory(MEM_SIZE)
}

/// A received packet.
#[derive(Debug, Clone)]
struct Pkt {
    hdr: Header,
    data: Vec<u8>,
}

/// One virtqueue as the vsock driver sees it: a [`TestQueue`] whose descriptor `i` has a
/// buffer slot of its own at `bufs + i * SLOT`, and the chains it posted (to decode packets).
struct VsockQueue {
    q: TestQueue,
    bufs: u64,
    chains: HashMap<u16, Vec<(u64, u32)>>,
}

impl VsockQueue {
    fn new(mem: &GuestMemoryMmap, ring: u64, bufs: u64) -> VsockQueue {
        VsockQueue {
            q: TestQueue::new(mem, ring, QUEUE_SIZE),
            bufs,
            chains: HashMap::new(),
        }
    }

    fn queue(&self) -> Queue {
        self.q.new_queue()
    }

    /// Where descriptor `i`'s buffer goes (slots do not overlap).
    fn slot(&self, i: u16) -> u64 {
        self.bufs + u64::from(i) * SLOT
    }

    /// Reserves `n` descriptors.
    fn alloc(&mut self, n: u16) -> u16 {
        self.q.alloc(n)
    }

    /// Makes a linked chain of (addr, len, flags) available at descriptors `at..`.
    fn publish(&mut self, at: u16, descs: &[(u64, u32, u16)]) {
        self.q.write_chain(at, descs);
        self.chains
            .insert(at, descs.iter().map(|&(a, l, _)| (a, l)).collect());
        self.q.publish(at);
    }

    /// Posts `n` rx buffers: a 44-byte header descriptor and a `data`-byte one, or (single)
    /// one descriptor for both.
    fn post_rx(&mut self, n: usize, data: u32, single: bool) {
        for _ in 0..n {
            if single {
                let at = self.alloc(1);
                let a = self.slot(at);
                self.publish(at, &[(a, HEADER_SIZE as u32 + data, W)]);
            } else {
                let at = self.alloc(2);
                let a = self.slot(at);
                self.publish(at, &[(a, HEADER_SIZE as u32, W), (a + 0x100, data, W)]);
            }
        }
    }

    /// Used entries since the last call: (head, len).
    fn used(&mut self) -> Vec<(u16, u32)> {
        let used = self.q.used().into_iter();
        used.map(|(id, len)| (id as u16, len)).collect()
    }

    /// Decodes the rx packets returned since the last call (empty buffers are skipped).
    fn packets(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        for (head, len) in self.used() {
            if len == 0 {
                continue;
            }
            let mut bytes = Vec::new();
            for &(addr, l) in self.chains.get(&head).unwrap() {
                let mut b = vec![0u8; l as usize];
                self.q.mem().read_slice(&mut b, GuestAddress(addr)).unwrap();
                bytes.extend(b);
            }
            bytes.truncate(len as usize);
            let hdr = Header::from_bytes(bytes[..HEADER_SIZE].try_into().unwrap());
            assert_eq!(len as usize, HEADER_SIZE + hdr.len as usize, "{hdr:?}");
            out.push(Pkt {
                hdr,
                data: bytes[HEADER_SIZE..].to_vec(),
            });
        }
        out
    }

    /// A tx packet the way Linux 6.x sends large payloads: the header in one descriptor
    /// (with the first `inline` payload bytes behind it), the rest over `pieces` descriptors.
    fn post_tx_split(&mut self, hdr: &Header, data: &[u8], inline: usize, pieces: usize) {
        let at = self.alloc(1 + pieces as u16);
        let a = self.slot(at);
        self.q
            .mem()
            .write_slice(&hdr.to_bytes(), GuestAddress(a))
            .unwrap();
        self.q
            .mem()
            .write_slice(&data[..inline], GuestAddress(a + HEADER_SIZE as u64))
            .unwrap();
        let mut descs = vec![(a, (HEADER_SIZE + inline) as u32, R)];
        let rest = &data[inline..];
        for (i, c) in rest.chunks(rest.len().div_ceil(pieces).max(1)).enumerate() {
            let b = self.slot(at + 1 + i as u16);
            self.q.mem().write_slice(c, GuestAddress(b)).unwrap();
            descs.push((b, c.len() as u32, R));
        }
        self.publish(at, &descs);
    }

    /// Makes a tx packet available: header descriptor plus a data descriptor if any.
    fn post_tx(&mut self, hdr: &Header, data: &[u8]) {
        let n = if data.is_empty() { 1 } else { 2 };
        let at = self.alloc(n);
        let a = self.slot(at);
        self.q
            .mem()
            .write_slice(&hdr.to_bytes(), GuestAddress(a))
            .unwrap();
        if data.is_empty() {
            self.publish(at, &[(a, HEADER_SIZE as u32, R)]);
        } else {
            self.q
                .mem()
                .write_slice(data, GuestAddress(a + 0x100))
                .unwrap();
            self.publish(
                at,
                &[
                    (a, HEADER_SIZE as u32, R),
                    (a + 0x100, data.len() as u32, R),
                ],
            );
        }
    }
}

/// A plain epoll standing in for the event manager.
struct TestEpoll(Epoll);

impl Watcher for TestEpoll {
    fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.0.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, token.into()),
        )
    }

    fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.0.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, token.into()),
        )
    }

    fn remove(&mut self, fd: RawFd) -> std::io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// The muxer with a driver on each side.
struct Harness<'a> {
    mem: &'a GuestMemoryMmap,
    rx: VsockQueue,
    rxq: Queue,
    tx: VsockQueue,
    txq: Queue,
    mux: Muxer,
    ep: TestEpoll,
    uds: PathBuf,
    now: Instant,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl<'a> Harness<'a> {
    fn new(mem: &'a GuestMemoryMmap, dir: &TempDir) -> Harness<'a> {
        let rx = VsockQueue::new(mem, RX_RING, RX_BUFS);
        let tx = VsockQueue::new(mem, TX_RING, TX_BUFS);
        let rxq = rx.queue();
        let txq = tx.queue();
        let mux = Muxer::new(&dir.cfg(), Arc::new(VsockStats::default())).unwrap();
        let mut h = Harness {
            mem,
            rx,
            rxq,
            tx,
            txq,
            mux,
            ep: TestEpoll(Epoll::new().unwrap()),
            uds: dir.uds(),
            now: Instant::now(),
        };
        h.mux.sync_interest(&mut h.ep);
        h
    }

    fn stats(&self) -> VsockStatsSnapshot {
        self.mux.stats().snapshot()
    }

    /// Delivers pending packets into rx buffers and updates the watched sockets.
    fn deliver(&mut self) {
        self.mux.process_rx(&mut self.rxq, self.mem, self.now);
        self.mux.sync_interest(&mut self.ep);
    }

    /// Runs the event loop until nothing is ready. Returns the number of events handled.
    fn pump(&mut self) -> usize {
        let mut total = 0;
        self.deliver();
        for _ in 0..100 {
            let mut evs = [EpollEvent::default(); 64];
            let n = self.ep.0.wait(0, &mut evs).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
            for ev in &evs[..n] {
                let token = ev.data() as u32;
                if token == LISTENER_TOKEN {
                    self.mux.accept_host_connections(self.now);
                } else {
                    self.mux.handle_conn_event(token, ev.event_set(), self.now);
                }
            }
            self.mux.sync_interest(&mut self.ep);
            self.deliver();
        }
        panic!("the event loop does not settle (busy loop?)");
    }

    /// Asserts that nothing is ready: no socket is watched for something we cannot act on.
    fn assert_quiet(&mut self) {
        let mut evs = [EpollEvent::default(); 8];
        let n = self.ep.0.wait(0, &mut evs).unwrap();
        assert_eq!(n, 0, "ready: {:?}", evs[0].event_set());
    }

    /// The guest sends one packet; the device handles it and answers what it can.
    fn send(&mut self, h: &Header, data: &[u8]) {
        let mut h = *h;
        h.len = data.len() as u32;
        self.tx.post_tx(&h, data);
        assert!(self.mux.process_tx(&mut self.txq, self.mem, self.now));
        assert_eq!(self.tx.used().len(), 1);
        self.deliver();
    }

    fn packets(&mut self) -> Vec<Pkt> {
        self.rx.packets()
    }

    /// Exactly one packet came, and it is `op`.
    fn expect_one(&mut self, op: u16) -> Pkt {
        let p = self.packets();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].hdr.op, op, "{:?}", p[0]);
        p[0].clone()
    }

    /// A host process connects and asks for guest port `port`; the guest accepts. Returns
    /// the host socket and the host port.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        self.pump();
        let req = self.expect_one(OP_REQUEST);
        assert_eq!(req.hdr.src_cid, HOST_CID);
        assert_eq!(req.hdr.dst_cid, CID);
        assert_eq!(req.hdr.dst_port, port);
        assert_eq!(req.hdr.type_, TYPE_STREAM);
        assert_eq!(req.hdr.buf_alloc, CONN_BUF_ALLOC);
        let hp = req.hdr.src_port;
        assert!(hp >= FIRST_HOST_PORT);
        self.send(&hdr(OP_RESPONSE, port, hp), &[]);
        let mut line = [0u8; 32];
        let ok = format!("OK {hp}\n");
        host.read_exact(&mut line[..ok.len()]).unwrap();
        assert_eq!(&line[..ok.len()], ok.as_bytes());
        (host, hp)
    }

    /// The guest connects from `guest_port` to host port `port`, where `listener` listens.
    fn guest_connect(&mut self, listener: &UnixListener, guest_port: u32, port: u32) -> UnixStream {
        self.send(&hdr(OP_REQUEST, guest_port, port), &[]);
        let resp = self.expect_one(OP_RESPONSE);
        assert_eq!(
            (resp.hdr.src_port, resp.hdr.dst_port, resp.hdr.dst_cid),
            (port, guest_port, CID)
        );
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(port_path(&self.uds, port)).unwrap()
    }

    /// All RW payload received, in order, checking every packet against `port`s.
    fn rw_data(pkts: &[Pkt]) -> Vec<u8> {
        pkts.iter()
            .filter(|p| p.hdr.op == OP_RW)
            .flat_map(|p| p.data.clone())
            .collect()
    }
}

fn read_available(s: &mut UnixStream, out: &mut Vec<u8>) {
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    s.set_nonblocking(false).unwrap();
}

/// The host socket was closed by the device.
fn assert_closed(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("socket still open: {other:?}"),
    }
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(16, 4096, false);
    let (mut host, hp) = h.host_connect(1234);
    assert_eq!(h.stats().connections_opened, 1);

    // Host -> guest.
    host.write_all(b"hello guest").unwrap();
    h.pump();
    let p = h.expect_one(OP_RW);
    assert_eq!(p.data, b"hello guest");
    assert_eq!(
        (p.hdr.src_port, p.hdr.dst_port, p.hdr.src_cid, p.hdr.dst_cid),
        (hp, 1234, HOST_CID, CID)
    );
    assert_eq!(p.hdr.buf_alloc, CONN_BUF_ALLOC);

    // Guest -> host.
    h.send(&hdr(OP_RW, 1234, hp), b"hello host");
    let mut b = [0u8; 10];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello host");
    // Our next header advertises what was forwarded.
    host.write_all(b"x").unwrap();
    h.pump();
    assert_eq!(h.expect_one(OP_RW).hdr.fwd_cnt, 10);

    // A CREDIT_REQUEST is answered.
    h.send(&hdr(OP_CREDIT_REQUEST, 1234, hp), &[]);
    assert_eq!(h.expect_one(OP_CREDIT_UPDATE).hdr.fwd_cnt, 10);
    h.assert_quiet();

    let s = h.stats();
    assert_eq!(s.rx_bytes, 12);
    assert_eq!(s.tx_bytes, 10);
    assert_eq!(s.malformed_packets + s.dropped_packets, 0);
}

#[test]
fn data_sent_right_after_the_connect_line_is_kept() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, true);
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 77\r\nearly bytes").unwrap();
    h.pump();
    let req = h.expect_one(OP_REQUEST);
    let hp = req.hdr.src_port;
    h.assert_quiet();
    h.send(&hdr(OP_RESPONSE, 77, hp), &[]);
    h.pump();
    let p = h.expect_one(OP_RW);
    assert_eq!(p.data, b"early bytes");
    let mut line = vec![0u8; format!("OK {hp}\n").len()];
    host.read_exact(&mut line).unwrap();
    assert_eq!(line, format!("OK {hp}\n").into_bytes());

    // A second connection gets another host port.
    let (_host2, hp2) = h.host_connect(77);
    assert_ne!(hp, hp2);
}

/// Another local user who can reach the VM's vsock socket (its mode loosened to 0666, as a
/// careless directory or caller might leave it) cannot reach the guest's services: the
/// connection is refused before its CONNECT line is read. The VMM's own user still can.
#[test]
fn another_user_cannot_reach_the_guest() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let mode = std::fs::metadata(&h.uds).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the socket is its user's only: {mode:o}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&h.uds, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(testing::connect_as(65534, &h.uds, b"CONNECT 5000\n"));
    h.pump();
    assert!(h.packets().is_empty(), "the guest heard of the connection");
    assert_eq!(h.stats().host_connections_refused, 1);
    h.host_connect(5000);
}

#[test]
fn malformed_connect_lines_close_the_socket() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let lines: [&[u8]; 6] = [
        b"CONNECT abc\n",
        b"HELLO 12\n",
        b"CONNECT 99999999999\n",
        b"CONNECT \xff1\n",
        b"CONNECT -1\n",
        b"CONNECT 1234567890123456789012345678901234567890",
    ];
    for (i, line) in lines.iter().enumerate() {
        let mut host = UnixStream::connect(&h.uds).unwrap();
        host.write_all(line).unwrap();
        h.pump();
        assert_closed(&mut host);
        assert_eq!(h.stats().bad_connect_lines, i as u64 + 1);
    }
    // A peer that goes away before its line is simply forgotten.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONN").unwrap();
    drop(host);
    h.pump();
    assert_eq!(h.mux.connection_count(), 0);
    // A peer that never finishes its line is dropped after a while.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 1").unwrap();
    h.pump();
    assert_eq!(h.mux.connection_count(), 1);
    h.mux.expire(h.now + HANDSHAKE_TIMEOUT);
    h.pump();
    assert_closed(&mut host);
    assert_eq!(h.mux.connection_count(), 0);
    assert!(h.packets().is_empty(), "the guest heard nothing");
    // And good ones still work.
    h.host_connect(5);
}

#[test]
fn guest_refusal_and_connect_timeout_close_the_host_socket() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);

    // The guest answers the REQUEST with RST.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    h.pump();
    let hp = h.expect_one(OP_REQUEST).hdr.src_port;
    h.send(&hdr(OP_RST, 9, hp), &[]);
    assert_closed(&mut host);
    assert!(h.packets().is_empty(), "no RST answers an RST");

    // The guest does not answer: closed after the timeout, and the guest gets an RST.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 10\n").unwrap();
    h.pump();
    let hp = h.expect_one(OP_REQUEST).hdr.src_port;
    let deadline = h.mux.next_deadline().unwrap();
    assert!(deadline <= h.now + CONNECT_TIMEOUT);
    h.mux.expire(h.now + Duration::from_millis(500));
    h.pump();
    assert!(h.packets().is_empty());
    h.mux.expire(h.now + CONNECT_TIMEOUT);
    h.pump();
    let rst = h.expect_one(OP_RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (hp, 10));
    assert_closed(&mut host);
    // A late RESPONSE is answered with RST.
    h.send(&hdr(OP_RESPONSE, 10, hp), &[]);
    h.expect_one(OP_RST);
    assert_eq!(h.mux.connection_count(), 0);
    assert_eq!(h.stats().connections_opened, 0);
}

#[test]
fn guest_initiated_connection_carries_data_both_ways() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let listener = h.listen(1025);
    let mut peer = h.guest_connect(&listener, 5000, 1025);

    h.send(&hdr(OP_RW, 5000, 1025), b"abc");
    let mut b = [0u8; 3];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");

    peer.write_all(b"xyz").unwrap();
    h.pump();
    let p = h.expect_one(OP_RW);
    assert_eq!(p.data, b"xyz");
    assert_eq!((p.hdr.src_port, p.hdr.dst_port), (1025, 5000));
    assert_eq!(h.stats().connections_opened, 1);
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    h.send(&hdr(OP_REQUEST, 5000, 4444), &[]);
    let rst = h.expect_one(OP_RST);
    assert_eq!(
        (
            rst.hdr.src_cid,
            rst.hdr.dst_cid,
            rst.hdr.src_port,
            rst.hdr.dst_port
        ),
        (HOST_CID, CID, 4444, 5000)
    );
    // A stale socket file (nobody listening) too.
    drop(h.listen(4445));
    h.send(&hdr(OP_REQUEST, 5000, 4445), &[]);
    h.expect_one(OP_RST);
    let s = h.stats();
    assert_eq!(s.guest_connect_failures, 2);
    assert_eq!(s.resets_sent, 2);
    assert_eq!(h.mux.connection_count(), 0);
}

#[test]
fn credit_limits_what_the_guest_gets() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(32, 4096, false);
    let listener = h.listen(80);
    let mut small = hdr(OP_REQUEST, 6000, 80);
    small.buf_alloc = 1000;
    h.send(&small, &[]);
    h.expect_one(OP_RESPONSE);
    let (mut peer, _) = listener.accept().unwrap();

    let data = pattern(5000, 3);
    peer.write_all(&data).unwrap();
    h.pump();
    let got = Harness::rw_data(&h.packets());
    assert_eq!(got.len(), 1000, "never more than the credit");
    // The socket is not watched while the guest has no credit: nothing spins.
    h.assert_quiet();

    // The guest consumed it: another 1000.
    let mut upd = hdr(OP_CREDIT_UPDATE, 6000, 80);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 1000;
    h.send(&upd, &[]);
    h.pump();
    let mut all = got;
    let more = Harness::rw_data(&h.packets());
    assert_eq!(more.len(), 1000);
    all.extend(more);
    h.assert_quiet();

    // Any header updates the credit: a bigger buffer lets the rest through.
    let mut upd = hdr(OP_CREDIT_UPDATE, 6000, 80);
    upd.buf_alloc = 64 * 1024;
    upd.fwd_cnt = 2000;
    h.send(&upd, &[]);
    h.pump();
    all.extend(Harness::rw_data(&h.packets()));
    assert_eq!(all, data);
    // Watched again, with nothing to read.
    h.assert_quiet();

    // A guest claiming more was consumed than was sent gets nothing (no wrap-around credit).
    let mut bogus = hdr(OP_CREDIT_UPDATE, 6000, 80);
    bogus.buf_alloc = 100;
    bogus.fwd_cnt = 6000;
    h.send(&bogus, &[]);
    peer.write_all(b"more").unwrap();
    h.pump();
    assert!(h.packets().is_empty());
    h.assert_quiet();
}

#[test]
fn no_rx_buffers_queues_control_packets_and_stops_reading() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    let listener = h.listen(81);

    // No rx buffers at all: REQUEST from the guest, data from the host.
    h.send(&hdr(OP_REQUEST, 7000, 81), &[]);
    let (mut peer, _) = listener.accept().unwrap();
    peer.write_all(b"data while starved").unwrap();
    h.pump();
    h.assert_quiet();
    // RSTs for unknown connections pile up to a bound.
    for port in 0..(MAX_PENDING_RESETS as u32 + 10) {
        h.send(&hdr(OP_RW, 10_000 + port, 9), b"?");
    }
    assert_eq!(h.stats().dropped_packets, 10);
    assert!(h.packets().is_empty());
    h.assert_quiet();

    // Buffers arrive (an rx kick): everything pending is delivered, RSTs first.
    h.rx.post_rx(MAX_PENDING_RESETS, 4096, true);
    h.pump();
    let p = h.packets();
    assert_eq!(p.len(), MAX_PENDING_RESETS);
    assert!(p.iter().all(|p| p.hdr.op == OP_RST));
    h.assert_quiet();
    h.rx.post_rx(4, 4096, true);
    h.pump();
    let p = h.packets();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].hdr.op, OP_RESPONSE);
    assert_eq!(p[1].data, b"data while starved");
    h.assert_quiet();
}

/// Byte `offset` of the test stream.
fn stream(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn slow_host_reader_is_buffered_and_credit_follows_forwarding() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(64, 4096, false);
    let listener = h.listen(82);
    let mut peer = h.guest_connect(&listener, 7001, 82);

    // A guest that sends exactly as much as its credit allows, to a host that reads nothing:
    // the kernel buffer fills, then ours, then the credit runs out. Nothing is refused.
    let mut sent = 0usize;
    let mut peer_fwd = 0u32;
    let mut stalled = false;
    for _ in 0..200 {
        for p in h.packets() {
            peer_fwd = peer_fwd.max(p.hdr.fwd_cnt);
        }
        let credit = CONN_BUF_ALLOC as usize - (sent - peer_fwd as usize);
        if credit == 0 {
            stalled = true;
            break;
        }
        let n = credit.min(MAX_PKT_BUF_SIZE as usize);
        h.send(&hdr(OP_RW, 7001, 82), &stream(sent, n));
        sent += n;
        h.pump();
    }
    assert!(
        stalled,
        "the credit must run out while the host reads nothing"
    );
    assert!(sent > CONN_BUF_ALLOC as usize);
    assert_eq!(h.stats().resets_sent, 0);
    // Waiting on the host: only the socket's writability is watched, and it is not ready.
    h.assert_quiet();

    // The host reads: the buffer is flushed and the guest hears about it.
    let mut got = Vec::new();
    for _ in 0..1000 {
        read_available(&mut peer, &mut got);
        h.pump();
        for p in h.packets() {
            peer_fwd = peer_fwd.max(p.hdr.fwd_cnt);
        }
        if got.len() == sent && sent - peer_fwd as usize <= CREDIT_UPDATE_THRESHOLD as usize {
            break;
        }
    }
    assert_eq!(got.len(), sent);
    assert!(got == stream(0, sent), "data intact and in order");
    assert!(sent - peer_fwd as usize <= CREDIT_UPDATE_THRESHOLD as usize);
    h.assert_quiet();
}

#[test]
fn guest_exceeding_credit_is_reset() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let listener = h.listen(83);
    let _peer = h.guest_connect(&listener, 7002, 83);
    let chunk = pattern(MAX_PKT_BUF_SIZE as usize, 1);
    let mut sent = 0;
    let mut reset = false;
    for _ in 0..64 {
        h.send(&hdr(OP_RW, 7002, 83), &chunk);
        sent += chunk.len();
        if h.packets().iter().any(|p| p.hdr.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert!(sent > CONN_BUF_ALLOC as usize);
    assert_eq!(h.mux.connection_count(), 0);
    assert_eq!(h.stats().resets_sent, 1);
    assert_eq!(h.stats().dropped_packets, 1);
}

#[test]
fn host_close_sends_shutdown_then_waits_for_rst() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(16, 4096, false);
    let listener = h.listen(84);

    // The guest answers with RST.
    let mut peer = h.guest_connect(&listener, 7003, 84);
    peer.write_all(b"last words").unwrap();
    drop(peer);
    h.pump();
    let p = h.packets();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].data, b"last words");
    assert_eq!(p[1].hdr.op, OP_SHUTDOWN);
    assert_eq!(p[1].hdr.flags, SHUTDOWN_SEND);
    h.assert_quiet();
    h.send(&hdr(OP_RST, 7003, 84), &[]);
    assert!(h.packets().is_empty());
    assert_eq!(h.mux.connection_count(), 0);

    // A half-close: the host shuts its sending side and waits for the answer, which may take
    // the guest longer than any timeout; the connection ends when the guest is done too.
    let (mut host, hp) = h.host_connect(85);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    h.pump();
    let sd = h.expect_one(OP_SHUTDOWN);
    assert_eq!(sd.hdr.flags, SHUTDOWN_SEND);
    h.mux.expire(h.now + SHUTDOWN_TIMEOUT * 10);
    h.pump();
    h.assert_quiet();
    h.send(&hdr(OP_RW, 85, hp), b"the answer");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"the answer");
    let mut done = hdr(OP_SHUTDOWN, 85, hp);
    done.flags = SHUTDOWN_SEND;
    h.send(&done, &[]);
    h.pump();
    let rst = h.expect_one(OP_RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (hp, 85));
    assert_eq!(h.mux.connection_count(), 0);
    assert_eq!(host.read(&mut got).unwrap(), 0, "the host sees EOF");
    let s = h.stats();
    assert_eq!((s.connections_opened, s.connections_closed), (2, 2));
}

#[test]
fn host_peer_dying_resets_only_its_connection() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(32, 4096, false);
    let listener = h.listen(86);
    let mut other = h.guest_connect(&listener, 1, 86);

    // Dies with unread data: the device sees ECONNRESET.
    let peer = h.guest_connect(&listener, 2, 86);
    h.send(&hdr(OP_RW, 2, 86), b"never read");
    drop(peer);
    h.pump();
    let rst = h.expect_one(OP_RST);
    assert_eq!(rst.hdr.dst_port, 2);

    // Closes, and the guest writes anyway: EPIPE.
    let peer = h.guest_connect(&listener, 3, 86);
    drop(peer);
    h.pump();
    h.expect_one(OP_SHUTDOWN);
    h.send(&hdr(OP_RW, 3, 86), b"too late");
    let rst = h.expect_one(OP_RST);
    assert_eq!(rst.hdr.dst_port, 3);

    // The first connection still works.
    h.send(&hdr(OP_RW, 1, 86), b"still here");
    let mut b = [0u8; 10];
    other.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still here");
    other.write_all(b"yes").unwrap();
    h.pump();
    assert_eq!(h.expect_one(OP_RW).data, b"yes");
    assert_eq!(h.mux.connection_count(), 1);
}

#[test]
fn guest_shutdown_reaches_the_host() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(16, 4096, false);
    let listener = h.listen(87);
    let mut peer = h.guest_connect(&listener, 8000, 87);

    // SEND: the host reads EOF and can still talk to the guest.
    h.send(&hdr(OP_RW, 8000, 87), b"bye");
    let mut sd = hdr(OP_SHUTDOWN, 8000, 87);
    sd.flags = SHUTDOWN_SEND;
    h.send(&sd, &[]);
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    peer.write_all(b"ok").unwrap();
    h.pump();
    assert_eq!(h.expect_one(OP_RW).data, b"ok");

    // RCV as well: both done, the connection closes with an RST to the guest.
    sd.flags = SHUTDOWN_RCV;
    h.send(&sd, &[]);
    let rst = h.expect_one(OP_RST);
    assert_eq!(rst.hdr.dst_port, 8000);
    assert_closed(&mut peer);
    assert_eq!(h.mux.connection_count(), 0);
}

#[test]
fn stray_and_unsupported_packets_get_rst() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(16, 4096, false);

    // Unknown connection.
    h.send(&hdr(OP_RW, 1, 2), b"x");
    h.expect_one(OP_RST);
    h.send(&hdr(OP_SHUTDOWN, 1, 2), &[]);
    h.expect_one(OP_RST);
    // An RST for an unknown connection is not answered.
    h.send(&hdr(OP_RST, 1, 2), &[]);
    assert!(h.packets().is_empty());
    // Seqpacket (type 2): RST of the same type, so the guest socket matches it.
    let mut seq = hdr(OP_REQUEST, 1, 2);
    seq.type_ = 2;
    h.send(&seq, &[]);
    let rst = h.expect_one(OP_RST);
    assert_eq!(rst.hdr.type_, 2);
    // Another destination CID: RST from that CID.
    let mut other = hdr(OP_REQUEST, 1, 2);
    other.dst_cid = 42;
    h.send(&other, &[]);
    assert_eq!(h.expect_one(OP_RST).hdr.src_cid, 42);
    // Unknown op.
    h.send(&hdr(99, 1, 2), &[]);
    h.expect_one(OP_RST);
    assert_eq!(h.stats().resets_sent, 5);
}

#[test]
fn wrong_source_cid_is_dropped() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let listener = h.listen(88);
    for cid in [0, 2, 4, u64::MAX] {
        let mut spoof = hdr(OP_REQUEST, 9000, 88);
        spoof.src_cid = cid;
        h.send(&spoof, &[]);
    }
    assert!(h.packets().is_empty());
    assert_eq!(h.mux.connection_count(), 0);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "no host connection was made");
    let s = h.stats();
    assert_eq!((s.dropped_packets, s.tx_packets), (4, 0));
}

#[test]
fn malformed_chains_are_counted_and_later_packets_work() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let listener = h.listen(89);

    let good = hdr(OP_REQUEST, 9100, 89);
    let mut rw = hdr(OP_RW, 9100, 89);
    rw.len = 100;
    let mut huge = hdr(OP_RW, 9100, 89);
    huge.len = MAX_PKT_BUF_SIZE + 1;
    let end = MEM_SIZE as u64;
    // (header, descriptors); addresses below 0x1000 are relative to the chain's slot.
    type Chain = (Header, Vec<(u64, u32, u16)>);
    let bad: Vec<Chain> = vec![
        // Short header.
        (good, vec![(0, 20, R)]),
        // Header in a device-writable descriptor.
        (good, vec![(0, HEADER_SIZE as u32, W)]),
        // Header outside guest memory.
        (good, vec![(end - 8, HEADER_SIZE as u32, R)]),
        (good, vec![(u64::MAX - 10, HEADER_SIZE as u32, R)]),
        // len larger than the data buffer.
        (rw, vec![(0, HEADER_SIZE as u32, R), (0x100, 50, R)]),
        // len but no data descriptor.
        (rw, vec![(0, HEADER_SIZE as u32, R)]),
        // Data in a device-writable descriptor.
        (rw, vec![(0, HEADER_SIZE as u32, R), (0x100, 100, W)]),
        // Data outside guest memory.
        (rw, vec![(0, HEADER_SIZE as u32, R), (end - 10, 100, R)]),
        // len above the maximum packet size.
        (huge, vec![(0, HEADER_SIZE as u32, R), (0x100, huge.len, R)]),
    ];
    for (i, (hd, descs)) in bad.iter().enumerate() {
        let at = h.tx.alloc(descs.len() as u16);
        let base = h.tx.slot(at);
        let rel = |a: u64| if a < 0x1000 { base + a } else { a };
        h.mem
            .write_slice(&hd.to_bytes(), GuestAddress(base))
            .unwrap();
        let descs: Vec<(u64, u32, u16)> = descs.iter().map(|&(a, l, f)| (rel(a), l, f)).collect();
        h.tx.publish(at, &descs);
        h.mux.process_tx(&mut h.txq, h.mem, h.now);
        assert_eq!(h.tx.used(), vec![(at, 0)], "chain {i} returned");
        assert_eq!(h.stats().malformed_packets, i as u64 + 1, "chain {i}");
    }
    h.deliver();
    assert!(h.packets().is_empty());

    // Bad rx buffers are returned empty; the packet goes into the next good one.
    h.rx = VsockQueue::new(h.mem, RX_RING + 0x8000, RX_BUFS + 0x80_0000);
    h.rxq = h.rx.queue();
    let at = h.rx.alloc(2);
    let a = h.rx.slot(at);
    h.rx.publish(at, &[(a, HEADER_SIZE as u32, R), (a + 0x100, 4096, W)]);
    let at2 = h.rx.alloc(1);
    let a2 = h.rx.slot(at2);
    h.rx.publish(at2, &[(a2, 10, W)]);
    h.rx.post_rx(2, 4096, false);
    let _peer = h.guest_connect(&listener, 9100, 89);
    assert_eq!(h.stats().malformed_packets, bad.len() as u64 + 2);
    assert_eq!(h.stats().connections_opened, 1);
}

#[test]
fn listener_creation_checks_the_path() {
    let dir = TempDir::new("qvm-vsock");
    let stats = || Arc::new(VsockStats::default());
    let msg = |cfg: VsockConfig| Muxer::new(&cfg, stats()).unwrap_err().to_string();

    let mut cfg = dir.cfg();
    cfg.guest_cid = 2;
    assert!(msg(cfg.clone()).contains("reserved"));
    cfg.guest_cid = u64::from(u32::MAX);
    assert!(msg(cfg).contains("reserved"));

    let mut cfg = dir.cfg();
    cfg.uds_path = dir.join("x".repeat(100));
    let m = msg(cfg);
    assert!(m.contains("shorter path"), "{m}");

    let mut cfg = dir.cfg();
    cfg.uds_path = dir.join("missing/v.sock");
    let m = msg(cfg);
    assert!(m.contains("does not exist"), "{m}");

    let mut cfg = dir.cfg();
    cfg.uds_path = dir.join("file");
    std::fs::write(&cfg.uds_path, b"").unwrap();
    let m = msg(cfg);
    assert!(m.contains("regular file"), "{m}");

    // A live listener is not stolen; a stale socket is replaced.
    let live = Muxer::new(&dir.cfg(), stats()).unwrap();
    let m = msg(dir.cfg());
    assert!(m.contains("in use"), "{m}");
    drop(live); // leaves the socket file behind
    assert!(dir.uds().exists());
    let mux = Muxer::new(&dir.cfg(), stats()).unwrap();
    assert_eq!(mux.guest_cid(), CID);
}

#[test]
fn config_space_and_features() {
    let dir = TempDir::new("qvm-vsock");
    let mut dev = Vsock::new(VsockConfig {
        guest_cid: 0x1234_5678,
        uds_path: dir.uds(),
    })
    .unwrap();
    assert_eq!(dev.device_type(), TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_ne!(dev.features() & VIRTIO_F_VERSION_1, 0);
    assert_ne!(dev.features() & (1 << VIRTIO_RING_F_EVENT_IDX), 0);
    let mut b = [0xffu8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1234_5678);
    let mut b = [0xffu8; 4];
    dev.read_config(4, &mut b);
    assert_eq!(b, [0; 4]);
    dev.read_config(6, &mut b);
    assert_eq!(b, [0; 4]);
    dev.read_config(u64::MAX - 1, &mut b);
    assert_eq!(b, [0; 4]);
    dev.write_config(0, &[9; 8]);
    assert_eq!(dev.guest_cid(), 0x1234_5678);
    assert!(!dev.reset(), "not active");
    // Dropping the device removes its socket file.
    drop(dev);
    assert!(!dir.uds().exists());
}

#[test]
fn random_guest_packets_do_not_break_the_device() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    let listener = h.listen(90);
    listener.set_nonblocking(true).unwrap();
    let mut peers = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..3000 {
        if h.rx.q.in_flight() < 8 && rng.one_in(4) {
            h.rx.post_rx(8, (rng.next() % 8192) as u32, rng.one_in(2));
        }
        let ops = [
            OP_REQUEST,
            OP_REQUEST,
            OP_RW,
            OP_RW,
            OP_RW,
            OP_RW,
            OP_CREDIT_UPDATE,
            OP_CREDIT_UPDATE,
            OP_CREDIT_REQUEST,
            OP_SHUTDOWN,
            OP_RST,
            OP_RESPONSE,
            0,
            42,
        ];
        let mut hd = hdr(
            ops[(rng.next() % ops.len() as u64) as usize],
            (rng.next() % 4) as u32,
            [90, 91, FIRST_HOST_PORT][(rng.next() % 3) as usize],
        );
        hd.flags = (rng.next() % 4) as u32;
        hd.buf_alloc = (rng.next() % 100_000) as u32;
        // A fwd_cnt beyond what was sent leaves no credit: mostly send 0.
        hd.fwd_cnt = if rng.one_in(8) {
            (rng.next() % 100_000) as u32
        } else {
            0
        };
        if rng.one_in(16) {
            hd.type_ = (rng.next() % 4) as u16;
        }
        let data = if hd.op == OP_RW {
            pattern((rng.next() % 3000) as usize, i as u8)
        } else {
            Vec::new()
        };
        hd.len = data.len() as u32;
        if rng.one_in(8) {
            hd.len = rng.next() as u32;
        }
        h.tx.post_tx(&hd, &data);
        h.mux.process_tx(&mut h.txq, h.mem, h.now);
        h.tx.used();
        while let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&pattern(100, 1));
            peers.push(s);
        }
        if !peers.is_empty() {
            let n = (rng.next() % peers.len() as u64) as usize;
            let _ = peers[n].write(&pattern((rng.next() % 5000) as usize, 2));
        }
        if rng.one_in(32) && !peers.is_empty() {
            peers.swap_remove((rng.next() % peers.len() as u64) as usize);
        }
        if rng.one_in(128) {
            h.now += Duration::from_secs(3);
            h.mux.expire(h.now);
        }
        h.pump();
        h.packets();
    }
    let s = h.stats();
    assert!(s.tx_packets > 1000 && s.rx_packets > 100, "{s:?}");
    assert!(
        s.rx_bytes > 0 && s.tx_bytes > 0 && s.connections_opened > 10,
        "{s:?}"
    );
    assert!(s.malformed_packets > 0 && s.resets_sent > 0, "{s:?}");
    // A clean connection still works.
    h.rx.post_rx(8, 4096, false);
    let (mut host, hp) = h.host_connect(4321);
    h.send(&hdr(OP_RW, 4321, hp), b"alive");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"alive");
}

// ---------------------------------------------------------------------------------------------
// The device and its worker thread
// ---------------------------------------------------------------------------------------------

/// The three queues of one activation and their kick eventfds.
struct Rings {
    rx: VsockQueue,
    tx: VsockQueue,
    ev: VsockQueue,
    kicks: Vec<EventFd>,
}

impl Rings {
    fn new(mem: &GuestMemoryMmap, base: u64) -> Rings {
        Rings {
            rx: VsockQueue::new(mem, base + RX_RING, RX_BUFS + base * 16),
            tx: VsockQueue::new(mem, base + TX_RING, TX_BUFS + base * 16),
            ev: VsockQueue::new(mem, base + EV_RING, TX_BUFS + 0x100_0000),
            kicks: (0..3)
                .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap())
                .collect(),
        }
    }

    fn active(&self) -> Vec<ActiveQueue> {
        [&self.rx, &self.tx, &self.ev]
            .iter()
            .zip(&self.kicks)
            .map(|(q, k)| ActiveQueue {
                queue: q.queue(),
                notify: k.try_clone().unwrap(),
            })
            .collect()
    }

    fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    /// Waits for the next rx packet.
    fn recv(&mut self) -> Pkt {
        let mut got = Vec::new();
        wait_for("an rx packet", || {
            got.extend(self.rx.packets());
            !got.is_empty()
        });
        assert_eq!(got.len(), 1, "{got:?}");
        got.remove(0)
    }

    fn send(&mut self, h: &Header, data: &[u8]) {
        let mut h = *h;
        h.len = data.len() as u32;
        self.tx.post_tx(&h, data);
        self.kick(TX_QUEUE);
        wait_for("the tx chain to be used", || !self.tx.used().is_empty());
    }
}

#[test]
fn worker_thread_serves_connections_across_reset() {
    let dir = TempDir::new("qvm-vsock");
    let mut dev = Vsock::new(dir.cfg()).unwrap();
    assert_eq!(dev.name(), "virtio-vsock-3");
    dev.ack_features(dev.features());
    let mem = memory();
    let irq = Arc::new(CountingInterrupt(AtomicUsize::new(0)));

    let err = dev
        .activate(mem.clone(), irq.clone(), Vec::new())
        .unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { got: 0, want: 3 }));

    let mut r = Rings::new(&mem, 0);
    dev.activate(mem.clone(), irq.clone(), r.active()).unwrap();
    assert!(dev.is_active());

    // Host -> guest, with a real kick for the rx buffers.
    let mut host = UnixStream::connect(dir.uds()).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    std::thread::sleep(Duration::from_millis(20));
    r.rx.post_rx(8, 4096, false);
    r.kick(RX_QUEUE);
    let req = r.recv();
    assert_eq!((req.hdr.op, req.hdr.dst_port), (OP_REQUEST, 52));
    let hp = req.hdr.src_port;
    wait_for("the first interrupt", || irq.0.load(Ordering::SeqCst) >= 1);
    r.send(&hdr(OP_RESPONSE, 52, hp), &[]);
    let ok = format!("OK {hp}\n");
    let mut line = vec![0u8; ok.len()];
    host.read_exact(&mut line).unwrap();
    assert_eq!(line, ok.as_bytes());
    host.write_all(b"ping").unwrap();
    let p = r.recv();
    assert_eq!((p.hdr.op, &p.data[..]), (OP_RW, &b"ping"[..]));
    r.send(&hdr(OP_RW, 52, hp), b"pong");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");

    // Reset: connections are closed, the listener stays.
    assert!(dev.reset());
    assert!(!dev.is_active());
    assert!(!dev.reset());
    assert_closed(&mut host);
    let s = dev.stats().snapshot();
    assert_eq!((s.connections_opened, s.connections_closed), (1, 1));

    // A reloaded driver: new rings, guest -> host this time.
    let listener = UnixListener::bind(port_path(&dir.uds(), 1024)).unwrap();
    let mut r = Rings::new(&mem, 0x4_0000);
    r.rx.post_rx(8, 4096, true);
    dev.activate(mem.clone(), irq.clone(), r.active()).unwrap();
    r.send(&hdr(OP_REQUEST, 3000, 1024), &[]);
    assert_eq!(r.recv().hdr.op, OP_RESPONSE);
    let (mut peer, _) = listener.accept().unwrap();
    r.send(&hdr(OP_RW, 3000, 1024), b"again");
    let mut b = [0u8; 5];
    peer.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"again");
    // A host peer closing is noticed by the worker too.
    drop(peer);
    assert_eq!(r.recv().hdr.op, OP_SHUTDOWN);
    // The guest finishes its side too: the worker closes the connection with an RST.
    let mut done = hdr(OP_SHUTDOWN, 3000, 1024);
    done.flags = SHUTDOWN_SEND;
    r.send(&done, &[]);
    assert_eq!(r.recv().hdr.op, OP_RST);

    drop(dev);
    assert!(!dir.uds().exists());
}

#[test]
fn tx_payload_split_over_descriptors_reaches_the_host_whole() {
    let dir = TempDir::new("qvm-vsock");
    let mem = memory();
    let mut h = Harness::new(&mem, &dir);
    h.rx.post_rx(8, 4096, false);
    let listener = h.listen(90);
    let mut peer = h.guest_connect(&listener, 7100, 90);

    // 64 KiB over four descriptors, 100 bytes of it behind the header.
    let data = pattern(64 * 1024, 9);
    let mut rw = hdr(OP_RW, 7100, 90);
    rw.len = data.len() as u32;
    h.tx.post_tx_split(&rw, &data, 100, 3);
    assert!(h.mux.process_tx(&mut h.txq, h.mem, h.now));
    assert_eq!(h.tx.used().len(), 1);
    h.deliver();
    let mut got = vec![0u8; data.len()];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(h.stats().malformed_packets, 0);

    // A header that claims more than its chain holds, and one over 64 KiB, are malformed.
    let mut short = hdr(OP_RW, 7100, 90);
    short.len = 5000;
    h.tx.post_tx_split(&short, &pattern(3000, 1), 0, 2);
    let mut long = hdr(OP_RW, 7100, 90);
    long.len = 64 * 1024 + 1;
    h.tx.post_tx_split(&long, &pattern(64 * 1024 + 1, 2), 0, 2);
    assert!(h.mux.process_tx(&mut h.txq, h.mem, h.now));
    assert_eq!(h.tx.used().len(), 2);
    assert_eq!(h.stats().malformed_packets, 2);

    // The connection still works.
    h.send(&rw, &data[..10]);
    let mut ten = [0u8; 10];
    peer.read_exact(&mut ten).unwrap();
    assert_eq!(&ten, &data[..10]);
}
