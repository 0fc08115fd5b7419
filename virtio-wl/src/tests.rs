//! virtio-wl tests: `WlState` driven over MockSplitQueue rings with a FakeMapper and real unix
//! sockets in a temporary directory standing in for the compositor; and the device through its
//! worker thread.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qvm_devices::virtio::{
    ActiveQueue, GuestMemoryMmap, Interrupt, InterruptKind, VirtioDevice, TYPE_WL,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::protocol::*;
use crate::state::{WlState, VFD_TOKEN};
use crate::test_msgs::{bind, global, msg as wl, string_arg as wl_string, words as wl_words};
use crate::*;

const MEM_SIZE: usize = 0x100_0000;
const OUT_RING: u64 = 0;
const IN_RING: u64 = 0x1_0000;
const OUT_BUFS: u64 = 0x10_0000;
const IN_BUFS: u64 = 0x80_0000;
const BUF_AREA: u64 = 0x70_0000;
const WINDOW: (u64, u64) = (0x1_0000_0000, 0x100_0000);
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const ALL: u64 = F_TRANS_FLAGS | F_SEND_FENCES;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One split ring as the driver sees it. Created with MockSplitQueue; the used ring is moved
/// 8 KiB past the ring base (the mock's overlaps the avail ring beyond ~126 entries).
struct Ring {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    seen_used: u16,
    bufs: u64,
    next_buf: u64,
}

impl Ring {
    fn new(mem: &GuestMemoryMmap, base: u64, bufs: u64) -> (Ring, Queue) {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        let used = GuestAddress(base + 0x2000);
        q.try_set_used_ring_address(used).unwrap();
        mem.write_obj(0u32, used).unwrap();
        let ring = Ring {
            desc: vq.desc_table_addr(),
            avail: vq.avail_addr(),
            used,
            next_desc: 0,
            avail_idx: 0,
            seen_used: 0,
            bufs,
            next_buf: 0,
        };
        (ring, q)
    }

    /// A buffer address for `len` bytes (the area wraps; tests use little of it at a time).
    fn buf(&mut self, len: u64) -> u64 {
        let len = (len + 0xfff) & !0xfff;
        if self.next_buf + len > BUF_AREA {
            self.next_buf = 0;
        }
        let at = self.bufs + self.next_buf;
        self.next_buf += len;
        at
    }

    /// Makes a chain of (addr, len, write) available; returns its head.
    fn publish(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > QUEUE_SIZE {
            self.next_desc = 0;
        }
        let at = self.next_desc;
        self.next_desc += n;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let i = i as u16;
            let mut flags = if w { WRITE } else { 0 };
            let mut next = 0;
            if i + 1 < n {
                flags |= NEXT;
                next = at + i + 1;
            }
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            mem.write_obj(d, self.desc.unchecked_add(16 * u64::from(at + i)))
                .unwrap();
        }
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(at, self.avail.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, self.avail.unchecked_add(2))
            .unwrap();
        at
    }

    /// Used entries since the last call: (head, len).
    fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(self.used.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.seen_used != idx {
            let at = self
                .used
                .unchecked_add(4 + 8 * u64::from(self.seen_used % QUEUE_SIZE));
            let id: u32 = mem.read_obj(at).unwrap();
            let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id as u16, len));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        out
    }

    /// The address of descriptor `i`'s buffer.
    fn desc_addr(&self, mem: &GuestMemoryMmap, i: u16) -> u64 {
        mem.read_obj(self.desc.unchecked_add(16 * u64::from(i)))
            .unwrap()
    }
}

struct H {
    mem: GuestMemoryMmap,
    out: Ring,
    outq: Queue,
    inr: Ring,
    inq: Queue,
    state: WlState,
    mapper: Arc<FakeMapper>,
    metrics: Arc<WlMetrics>,
    dir: tempfile::TempDir,
}

impl H {
    /// `cfg` gets the temporary directory; `acked` the features.
    fn new(cfg: impl FnOnce(&Path) -> WlConfig, acked: u64) -> H {
        let dir = tempfile::tempdir().unwrap();
        let mem = memory();
        let (out, outq) = Ring::new(&mem, OUT_RING, OUT_BUFS);
        let (inr, inq) = Ring::new(&mem, IN_RING, IN_BUFS);
        let mapper = Arc::new(FakeMapper::new(WINDOW.0, WINDOW.1));
        let metrics = Arc::new(WlMetrics::default());
        let state = WlState::new(
            Arc::new(cfg(dir.path())),
            mapper.clone(),
            metrics.clone(),
            acked,
        )
        .unwrap();
        H {
            mem,
            out,
            outq,
            inr,
            inq,
            state,
            mapper,
            metrics,
            dir,
        }
    }

    fn plain(acked: u64) -> H {
        H::new(|_| WlConfig::default(), acked)
    }

    /// A compositor listening at `<dir>/wayland-0` (the configured socket).
    fn with_compositor(acked: u64) -> (H, UnixListener) {
        let h = H::new(
            |d| WlConfig {
                socket: Some(d.join("wayland-0")),
                named: vec![("other".into(), d.join("other"))],
                ..Default::default()
            },
            acked,
        );
        let l = UnixListener::bind(h.dir.path().join("wayland-0")).unwrap();
        (h, l)
    }

    /// A device with context 1 connected to a compositor: returns the compositor's end.
    fn with_ctx(acked: u64) -> (H, UnixStream) {
        let (mut h, l) = H::with_compositor(acked);
        h.new_vfd(&req_ctx(1));
        let c = accept(&l);
        (h, c)
    }

    /// Sends a request in one readable descriptor with a 256-byte writable one; returns the
    /// response bytes.
    fn request(&mut self, req: &[u8]) -> Vec<u8> {
        let a = self.out.buf(req.len() as u64 + 256);
        self.mem.write_slice(req, GuestAddress(a)).unwrap();
        let r = a + ((req.len() as u64 + 15) & !15);
        self.chain(&[(a, req.len() as u32, false), (r, 256, true)])
    }

    /// Publishes a chain, processes the out queue, and reads the response from the chain's
    /// first writable descriptor.
    fn chain(&mut self, descs: &[(u64, u32, bool)]) -> Vec<u8> {
        let head = self.out.publish(&self.mem, descs);
        assert!(self.state.process_out(&mut self.outq, &self.mem));
        let used = self.out.used(&self.mem);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].0, head);
        let len = used[0].1 as usize;
        let Some(&(addr, _, _)) = descs.iter().find(|d| d.2) else {
            assert_eq!(len, 0);
            return Vec::new();
        };
        let mut resp = vec![0u8; len];
        self.mem.read_slice(&mut resp, GuestAddress(addr)).unwrap();
        resp
    }

    fn code(&mut self, req: &[u8]) -> u32 {
        let r = self.request(req);
        u32::from_le_bytes(r[..4].try_into().unwrap())
    }

    fn new_vfd(&mut self, req: &[u8]) -> VfdNew {
        let r = self.request(req);
        let (ty, n) = VfdNew::decode(&r).unwrap_or_else(|| panic!("response {r:?}"));
        assert_eq!(ty, RESP_VFD_NEW, "response {:#x}", ty);
        assert_eq!(r.len(), VFD_NEW_SIZE);
        n
    }

    /// Posts `n` 4096-byte in-queue buffers.
    fn post_in(&mut self, n: usize) {
        for _ in 0..n {
            let a = self.inr.buf(4096);
            self.inr.publish(&self.mem, &[(a, 4096, true)]);
        }
    }

    /// What the worker does for a while: host events, delivery, backpressure.
    fn pump(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let read = self.state.may_read(&self.inq, &self.mem);
            self.state.sync_interest(read);
            let n = self.state.epoll().wait(10, &mut events).unwrap();
            for ev in &events[..n] {
                assert!(ev.data() & VFD_TOKEN != 0);
                if self.state.may_read(&self.inq, &self.mem) {
                    self.state.handle_vfd_event(ev.data() as u32);
                    self.state.deliver(&mut self.inq, &self.mem);
                }
                assert!(self.state.pending() <= MAX_SEND_VFDS + 2);
            }
            self.state.deliver(&mut self.inq, &self.mem);
            if Instant::now() >= deadline {
                break;
            }
        }
        let read = self.state.may_read(&self.inq, &self.mem);
        self.state.sync_interest(read);
    }

    /// Messages the device put in in-queue buffers since the last call.
    fn in_msgs(&mut self) -> Vec<Vec<u8>> {
        self.inr
            .used(&self.mem)
            .into_iter()
            .map(|(head, len)| {
                let addr = self.inr.desc_addr(&self.mem, head);
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                b
            })
            .collect()
    }

    /// Pumps until `n` in-queue messages arrived (or 2 s).
    fn wait_msgs(&mut self, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < n && Instant::now() < deadline {
            self.pump(10);
            got.extend(self.in_msgs());
        }
        got
    }
}

fn req_new(id: u32, flags: u32, size: u32) -> Vec<u8> {
    VfdNew {
        id,
        flags,
        pfn: 0,
        size,
    }
    .encode(CMD_VFD_NEW)
}

fn req_vfd(ty: u32, id: u32) -> Vec<u8> {
    let mut b = hdr(ty);
    b.extend_from_slice(&id.to_le_bytes());
    b
}

fn req_ctx(id: u32) -> Vec<u8> {
    VfdNew {
        id,
        ..Default::default()
    }
    .encode(CMD_VFD_NEW_CTX)
}

fn req_named(id: u32, name: &[u8]) -> Vec<u8> {
    let mut b = VfdNew {
        id,
        ..Default::default()
    }
    .encode(CMD_VFD_NEW_CTX_NAMED);
    b[28..28 + name.len()].copy_from_slice(name);
    b
}

fn req_pipe(id: u32, flags: u32) -> Vec<u8> {
    VfdNew {
        id,
        flags,
        ..Default::default()
    }
    .encode(CMD_VFD_NEW_PIPE)
}

fn req_send(id: u32, ids: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = encode_recv(id, ids, data);
    b[..4].copy_from_slice(&CMD_VFD_SEND.to_le_bytes());
    b
}

/// SEND_FOREIGN_ID with (kind, id) entries, 16 bytes each (`v2`) or 8.
fn req_foreign(id: u32, entries: &[(u32, u64)], v2: bool, data: &[u8]) -> Vec<u8> {
    let mut b = hdr(CMD_VFD_SEND_FOREIGN_ID);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for &(kind, id) in entries {
        b.extend_from_slice(&kind.to_le_bytes());
        if v2 {
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes());
        } else {
            b.extend_from_slice(&(id as u32).to_le_bytes());
        }
    }
    b.extend_from_slice(data);
    b
}

fn accept(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(false).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// The compositor receives one message: bytes and fds.
fn comp_recv(s: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match sys::recv_with_fds(s.as_fd(), &mut buf) {
            Ok(r) => {
                assert!(!r.truncated);
                return (buf[..r.len].to_vec(), r.fds);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("compositor recv: {e}"),
        }
    }
}

fn comp_send(s: &UnixStream, data: &[u8], fds: &[&dyn AsFd]) {
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    sys::send_all(s.as_fd(), data, &fds, Duration::from_secs(1), None).unwrap();
}

fn recv_msg(m: &[u8]) -> (u32, Vec<u32>, Vec<u8>) {
    let word = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap());
    assert_eq!(word(0), CMD_VFD_RECV, "not a VFD_RECV: {m:?}");
    let n = word(12) as usize;
    let ids = (0..n).map(|i| word(16 + 4 * i)).collect();
    (word(8), ids, m[16 + 4 * n..].to_vec())
}

fn hup_msg(m: &[u8]) -> u32 {
    assert_eq!(m.len(), 12);
    assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), CMD_VFD_HUP);
    u32::from_le_bytes(m[8..12].try_into().unwrap())
}

fn new_msg(m: &[u8]) -> VfdNew {
    assert_eq!(m.len(), VFD_NEW_SIZE);
    let (ty, n) = VfdNew::decode(m).unwrap();
    assert_eq!(ty, CMD_VFD_NEW);
    n
}

// ---------------------------------------------------------------------------------------------
// VFD_NEW / VFD_CLOSE
// ---------------------------------------------------------------------------------------------

#[test]
fn new_maps_a_rounded_memfd_and_close_unmaps_it() {
    let mut h = H::plain(ALL);
    let n = h.new_vfd(&req_new(1, 0, 100));
    assert_eq!((n.id, n.flags, n.size), (1, 0, 4096));
    // Absolute pfn without USE_SHMEM.
    assert_eq!(n.pfn, WINDOW.0 >> 12);
    assert_eq!(h.mapper.mapped(), 1);
    assert_eq!(h.mapper.len_at(WINDOW.0), Some(4096));
    let n2 = h.new_vfd(&req_new(2, 0, 8193));
    assert_eq!((n2.size, n2.pfn), (12288, (WINDOW.0 >> 12) + 1));
    assert_eq!(h.state.mapped_bytes(), 16384);
    assert_eq!(h.metrics.mapped_bytes.load(Ordering::Relaxed), 16384);
    assert_eq!(h.metrics.vfds_open.load(Ordering::Relaxed), 2);

    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 1)), RESP_OK);
    assert_eq!(h.mapper.mapped(), 1);
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 1)), RESP_INVALID_ID);
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 77)), RESP_INVALID_ID);
    // The freed space is reused.
    assert_eq!(h.new_vfd(&req_new(1, 0, 4096)).pfn, WINDOW.0 >> 12);
    assert_eq!(h.metrics.requests.load(Ordering::Relaxed), 6);
    assert_eq!(h.metrics.errors.load(Ordering::Relaxed), 2);
}

#[test]
fn new_rejects_bad_and_duplicate_ids() {
    let mut h = H::plain(ALL);
    for id in [0, 0x800, 0x4000_0000, u32::MAX] {
        assert_eq!(h.code(&req_new(id, 0, 4096)), RESP_INVALID_ID, "id {id:#x}");
    }
    h.new_vfd(&req_new(0x7ff, 0, 4096));
    assert_eq!(h.code(&req_new(0x7ff, 0, 4096)), RESP_INVALID_ID);
    assert_eq!(h.mapper.mapped(), 1);
}

#[test]
fn new_limits_are_out_of_memory() {
    let mut h = H::new(
        |_| WlConfig {
            max_buffer_bytes: 3 * 4096,
            max_vfds: 3,
            ..Default::default()
        },
        ALL,
    );
    assert_eq!(h.code(&req_new(1, 0, 0)), RESP_OUT_OF_MEMORY);
    assert_eq!(h.code(&req_new(1, 0, u32::MAX)), RESP_OUT_OF_MEMORY);
    assert_eq!(h.code(&req_new(1, 0, 0xffff_f001)), RESP_OUT_OF_MEMORY);
    h.new_vfd(&req_new(1, 0, 8192));
    assert_eq!(h.code(&req_new(2, 0, 8192)), RESP_OUT_OF_MEMORY);
    h.new_vfd(&req_new(2, 0, 4096));
    // Bytes exhausted; then vfds.
    assert_eq!(h.code(&req_new(3, 0, 1)), RESP_OUT_OF_MEMORY);
    assert_eq!(h.code(&req_pipe(3, VFD_READ)), RESP_OK + 1); // VFD_NEW
    assert_eq!(h.code(&req_pipe(4, VFD_READ)), RESP_OUT_OF_MEMORY);
    // Map failures.
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 1)), RESP_OK);
    h.mapper.fail_next(1);
    assert_eq!(h.code(&req_new(1, 0, 4096)), RESP_OUT_OF_MEMORY);
    h.new_vfd(&req_new(1, 0, 4096));
    assert_eq!(h.state.vfd_count(), 3);
}

#[test]
fn new_flags() {
    let mut h = H::plain(ALL);
    assert_eq!(h.code(&req_new(1, VFD_WRITE, 4096)), RESP_INVALID_FLAGS);
    // Legacy flags without TRANS_FLAGS are echoed.
    let mut h = H::plain(0);
    let n = h.new_vfd(&req_new(1, VFD_WRITE | VFD_MAP, 4096));
    assert_eq!(n.flags, VFD_WRITE | VFD_MAP);
    assert_eq!(h.code(&req_new(2, 0x10, 4096)), RESP_INVALID_FLAGS);
}

#[test]
fn use_shmem_pfns_are_window_offsets() {
    let mut h = H::plain(ALL | F_USE_SHMEM);
    assert_eq!(h.new_vfd(&req_new(1, 0, 4096)).pfn, 0);
    assert_eq!(h.new_vfd(&req_new(2, 0, 4096 * 3)).pfn, 1);
    assert_eq!(h.new_vfd(&req_new(3, 0, 1)).pfn, 4);
}

// ---------------------------------------------------------------------------------------------
// NEW_CTX / NEW_CTX_NAMED
// ---------------------------------------------------------------------------------------------

#[test]
fn new_ctx_without_socket_is_err() {
    let mut h = H::plain(ALL);
    assert_eq!(h.code(&req_ctx(1)), RESP_ERR);
    assert_eq!(h.state.vfd_count(), 0);
}

#[test]
fn new_ctx_connects() {
    let (mut h, l) = H::with_compositor(ALL);
    let n = h.new_vfd(&req_ctx(1));
    assert_eq!(
        (n.id, n.flags, n.pfn, n.size),
        (1, VFD_READ | VFD_WRITE, 0, 0)
    );
    let _c = accept(&l);
    assert_eq!(h.code(&req_ctx(1)), RESP_INVALID_ID);
    assert_eq!(h.code(&req_ctx(0x800)), RESP_INVALID_ID);
    // Legacy flags.
    let (mut h, l) = H::with_compositor(0);
    assert_eq!(h.new_vfd(&req_ctx(1)).flags, VFD_CONTROL);
    let _c = accept(&l);
}

#[test]
fn new_ctx_with_nobody_listening_is_err() {
    let (mut h, l) = H::with_compositor(ALL);
    drop(l);
    assert_eq!(h.code(&req_ctx(1)), RESP_ERR);
}

#[test]
fn new_ctx_named() {
    let (mut h, _l) = H::with_compositor(ALL);
    let other = UnixListener::bind(h.dir.path().join("other")).unwrap();
    assert_eq!(h.new_vfd(&req_named(1, b"other\0")).id, 1);
    let _c = accept(&other);
    // Unknown name: ERR (like a missing socket); no NUL in 32 bytes: INVALID_TYPE.
    assert_eq!(h.code(&req_named(2, b"nope\0")), RESP_ERR);
    assert_eq!(h.code(&req_named(2, &[b'x'; 32])), RESP_INVALID_TYPE);
    // "" is the default socket.
    assert_eq!(h.new_vfd(&req_named(2, b"\0")).id, 2);
    // Short requests (no room for the name) are ERR.
    assert_eq!(h.code(&req_named(3, b"other\0")[..40]), RESP_ERR);
    assert_eq!(h.state.vfd_count(), 2);
}

// ---------------------------------------------------------------------------------------------
// VFD_SEND
// ---------------------------------------------------------------------------------------------

#[test]
fn send_shm_passes_the_memfd_itself() {
    let (mut h, c) = H::with_ctx(ALL);
    let n = h.new_vfd(&req_new(2, 0, 5000));
    let gpa = n.pfn << 12;
    // The guest draws through its mapping...
    h.mapper.write(gpa, 100, b"pixels").unwrap();
    assert_eq!(h.code(&req_send(1, &[2], b"wl_shm.create_pool")), RESP_OK);
    let (data, fds) = comp_recv(&c);
    assert_eq!(data, b"wl_shm.create_pool");
    assert_eq!(fds.len(), 1);
    // ...and the compositor sees it in the same memory: no copy.
    let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
    let mut all = Vec::new();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 8192);
    assert_eq!(&all[100..106], b"pixels");
    // Sealed: it cannot shrink (or grow) under the guest's mapping.
    let seals = sys::seals(f.as_fd()).unwrap();
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
    assert_ne!(seals & libc::F_SEAL_GROW, 0);
    assert!(f.set_len(4096).is_err());
    assert!(f.set_len(1 << 20).is_err());
    assert_eq!(h.metrics.fds_sent.load(Ordering::Relaxed), 1);
    assert_eq!(h.metrics.bytes_sent.load(Ordering::Relaxed), 18);
}

#[test]
fn send_errors() {
    let (mut h, _c) = H::with_ctx(ALL);
    h.new_vfd(&req_new(2, 0, 4096));
    h.new_vfd(&req_pipe(3, VFD_READ));
    h.new_vfd(&req_pipe(4, VFD_WRITE));
    assert_eq!(h.code(&req_send(9, &[], b"x")), RESP_INVALID_ID);
    assert_eq!(h.code(&req_send(1, &[9], b"x")), RESP_INVALID_ID);
    // Only ctxs and guest-written pipes take bytes.
    assert_eq!(h.code(&req_send(2, &[], b"x")), RESP_INVALID_TYPE);
    assert_eq!(h.code(&req_send(3, &[], b"x")), RESP_INVALID_TYPE);
    assert_eq!(h.code(&req_send(4, &[2], b"x")), RESP_INVALID_TYPE);
    // fds need a byte to travel with.
    assert_eq!(h.code(&req_send(1, &[2], b"")), RESP_ERR);
    // A pipe end goes once.
    assert_eq!(h.code(&req_send(1, &[3], b"x")), RESP_OK);
    assert_eq!(h.code(&req_send(1, &[3], b"x")), RESP_INVALID_TYPE);
    // Too many ids.
    let mut b = req_send(1, &[], b"x");
    b[12..16].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(h.code(&b), RESP_ERR);
}

#[test]
fn send_to_a_full_compositor_gives_up() {
    let (mut h, _c) = H::with_ctx(ALL); // the compositor never reads
    let chunk = vec![0x55u8; 60 * 1024];
    let start = Instant::now();
    let mut codes = Vec::new();
    for _ in 0..64 {
        let c = h.code(&req_send(1, &[], &chunk));
        codes.push(c);
        if c != RESP_OK {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&RESP_ERR), "{codes:x?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn send_fences_changes_only_foreign_id_entries() {
    for acked in [F_TRANS_FLAGS, ALL] {
        let v2 = acked & F_SEND_FENCES != 0;
        let (mut h, c) = H::with_ctx(acked);
        h.new_vfd(&req_new(2, 0, 4096));
        // Plain VFD_SEND: u32 ids whatever the features (the Linux driver's format).
        assert_eq!(h.code(&req_send(1, &[2], b"a")), RESP_OK);
        assert_eq!(comp_recv(&c).1.len(), 1);
        // SEND_FOREIGN_ID, local kind.
        assert_eq!(
            h.code(&req_foreign(1, &[(SEND_KIND_LOCAL, 2)], v2, b"b")),
            RESP_OK
        );
        let (data, fds) = comp_recv(&c);
        assert_eq!((data.as_slice(), fds.len()), (&b"b"[..], 1));
        // virtgpu kinds (and unknown ones): no virtio-gpu here.
        for kind in [
            SEND_KIND_VIRTGPU,
            SEND_KIND_VIRTGPU_FENCE,
            SEND_KIND_VIRTGPU_SIGNALED_FENCE,
            7,
        ] {
            assert_eq!(
                h.code(&req_foreign(1, &[(kind, 2)], v2, b"c")),
                RESP_INVALID_TYPE
            );
        }
        if v2 {
            // A 64-bit id that is not a vfd.
            assert_eq!(
                h.code(&req_foreign(1, &[(0, 0x1_0000_0002)], true, b"d")),
                RESP_INVALID_ID
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pipes
// ---------------------------------------------------------------------------------------------

#[test]
fn pipe_flags() {
    let mut h = H::plain(ALL);
    for f in [0, VFD_READ | VFD_WRITE, VFD_FENCE, 4] {
        assert_eq!(h.code(&req_pipe(1, f)), RESP_INVALID_FLAGS, "flags {f}");
    }
    assert_eq!(h.new_vfd(&req_pipe(1, VFD_READ)).flags, VFD_READ);
    assert_eq!(h.new_vfd(&req_pipe(2, VFD_WRITE)).flags, VFD_WRITE);
    assert_eq!(h.code(&req_pipe(2, VFD_WRITE)), RESP_INVALID_ID);
}

#[test]
fn guest_read_pipe_forwards_bytes_then_hup() {
    let (mut h, c) = H::with_ctx(ALL);
    h.new_vfd(&req_pipe(5, VFD_READ));
    assert_eq!(h.code(&req_send(1, &[5], b"receive")), RESP_OK);
    let (_, mut fds) = comp_recv(&c);
    let mut w = std::fs::File::from(fds.remove(0));
    assert_eq!(sys::access_mode(w.as_fd()).unwrap(), libc::O_WRONLY);
    h.post_in(8);
    w.write_all(b"clipboard text").unwrap();
    let m = h.wait_msgs(1);
    assert_eq!(recv_msg(&m[0]), (5, vec![], b"clipboard text".to_vec()));
    // The host closed its copy of the write end when it was sent: the compositor closing
    // its copy is EOF.
    drop(w);
    let m = h.wait_msgs(1);
    assert_eq!(hup_msg(&m[0]), 5);
    assert!(h.state.vfd(5).unwrap().hup);
    // Nothing more for it.
    h.pump(30);
    assert!(h.in_msgs().is_empty());
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 5)), RESP_OK);
}

#[test]
fn guest_write_pipe_writes_then_hup() {
    let (mut h, c) = H::with_ctx(ALL);
    h.new_vfd(&req_pipe(6, VFD_WRITE));
    assert_eq!(h.code(&req_send(1, &[6], b"send")), RESP_OK);
    let (_, mut fds) = comp_recv(&c);
    let mut r = std::fs::File::from(fds.remove(0));
    assert_eq!(sys::access_mode(r.as_fd()).unwrap(), libc::O_RDONLY);
    assert_eq!(h.code(&req_send(6, &[], b"dropped data")), RESP_OK);
    let mut buf = [0u8; 12];
    r.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"dropped data");
    h.post_in(4);
    h.pump(30);
    assert!(h.in_msgs().is_empty());
    // The reader goes away: the guest's write end hangs up.
    drop(r);
    let m = h.wait_msgs(1);
    assert_eq!(hup_msg(&m[0]), 6);
    assert_eq!(h.code(&req_send(6, &[], b"more")), RESP_ERR);
}

// ---------------------------------------------------------------------------------------------
// Compositor -> guest
// ---------------------------------------------------------------------------------------------

#[test]
fn compositor_bytes_and_fds_become_vfd_new_then_recv() {
    let (mut h, c) = H::with_ctx(ALL);
    h.post_in(8);
    // A keymap-like shm file (not a page multiple), a pipe write end (data_source.send),
    // a pipe read end, and a socket (not usable: dropped).
    let shm = tempfile::tempfile().unwrap();
    shm.set_len(5000).unwrap();
    let (pr, pw) = sys::pipe().unwrap();
    let (pr2, pw2) = sys::pipe().unwrap();
    let (s1, _s2) = UnixStream::pair().unwrap();
    comp_send(&c, b"wl_keyboard.keymap", &[&shm, &pw, &pr2, &s1]);
    drop((pw, pr2, s1));
    let m = h.wait_msgs(4);
    assert_eq!(m.len(), 4, "{m:?}");
    let a = new_msg(&m[0]);
    assert_eq!((a.id, a.flags, a.size), (HOST_ID_BASE, 0, 8192));
    assert_eq!(a.pfn, WINDOW.0 >> 12);
    let b = new_msg(&m[1]);
    assert_eq!(
        (b.id, b.flags, b.pfn, b.size),
        (HOST_ID_BASE + 1, VFD_WRITE, 0, 0)
    );
    let b2 = new_msg(&m[2]);
    assert_eq!((b2.id, b2.flags), (HOST_ID_BASE + 2, VFD_READ));
    assert_eq!(
        recv_msg(&m[3]),
        (
            1,
            vec![HOST_ID_BASE, HOST_ID_BASE + 1, HOST_ID_BASE + 2],
            b"wl_keyboard.keymap".to_vec()
        )
    );
    assert_eq!(h.mapper.len_at(WINDOW.0), Some(8192));
    assert_eq!(h.metrics.fds_received.load(Ordering::Relaxed), 4);

    // The guest writes into the received write end; the compositor reads it.
    assert_eq!(h.code(&req_send(HOST_ID_BASE + 1, &[], b"paste")), RESP_OK);
    let mut buf = [0u8; 5];
    let mut pr = std::fs::File::from(pr);
    pr.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"paste");
    // The received read end delivers what the compositor writes.
    std::fs::File::from(pw2).write_all(b"dnd").unwrap();
    let m = h.wait_msgs(2);
    assert_eq!(recv_msg(&m[0]), (HOST_ID_BASE + 2, vec![], b"dnd".to_vec()));
    assert_eq!(hup_msg(&m[1]), HOST_ID_BASE + 2);
    // Host vfds close like any other.
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, HOST_ID_BASE)), RESP_OK);
    assert_eq!(h.mapper.mapped(), 0);

    // The compositor hangs up.
    drop(c);
    let m = h.wait_msgs(1);
    assert_eq!(hup_msg(&m[0]), 1);
}

#[test]
fn write_protected_compositor_shm_reaches_the_guest_as_a_copy() {
    let (mut h, c) = H::with_ctx(ALL);
    h.post_in(8);
    // weston's keymaps: a memfd sealed against writes (cannot back a writable mapping), and
    // a file opened read-only.
    let keymap = {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"km".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: a fresh memfd that nothing else owns.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(b"xkb_keymap { sealed };").unwrap();
        assert_eq!(
            // SAFETY: F_ADD_SEALS on the memfd we own.
            unsafe {
                libc::fcntl(
                    fd,
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK,
                )
            },
            0
        );
        f
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    std::fs::write(&path, b"read-only data").unwrap();
    let ro = std::fs::File::open(&path).unwrap();
    comp_send(&c, b"wl_keyboard.keymap", &[&keymap, &ro]);
    let m = h.wait_msgs(3);
    assert_eq!(m.len(), 3, "{m:?}");
    let a = new_msg(&m[0]);
    let b = new_msg(&m[1]);
    assert_eq!(
        (a.id, a.size, b.id, b.size),
        (HOST_ID_BASE, 4096, HOST_ID_BASE + 1, 4096)
    );
    let gpa_a = a.pfn << 12;
    let gpa_b = b.pfn << 12;
    assert_eq!(
        h.mapper.read(gpa_a, 0, 22).unwrap(),
        b"xkb_keymap { sealed };"
    );
    assert_eq!(h.mapper.read(gpa_b, 0, 14).unwrap(), b"read-only data");
    // The guest's copy is its own: writing it leaves the compositor's file alone.
    h.mapper.write(gpa_b, 0, b"XXXX").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"read-only data");
    assert_eq!(
        recv_msg(&m[2]),
        (
            1,
            vec![HOST_ID_BASE, HOST_ID_BASE + 1],
            b"wl_keyboard.keymap".to_vec()
        )
    );
}

#[test]
fn compositor_fds_over_the_limits_are_dropped() {
    let mut h = H::new(
        |d| WlConfig {
            socket: Some(d.join("wayland-0")),
            max_buffer_bytes: 8192,
            max_vfds: 3,
            ..Default::default()
        },
        ALL,
    );
    let l = UnixListener::bind(h.dir.path().join("wayland-0")).unwrap();
    h.new_vfd(&req_ctx(1));
    let c = accept(&l);
    h.post_in(8);
    let big = tempfile::tempfile().unwrap();
    big.set_len(3 * 4096).unwrap();
    let small = tempfile::tempfile().unwrap();
    small.set_len(10).unwrap();
    let empty = tempfile::tempfile().unwrap();
    let (pr, pw) = sys::pipe().unwrap();
    let (pr2, _pw2) = sys::pipe().unwrap();
    // big: over the bytes; small: fits; empty: useless; pr: fits (3rd vfd); pr2: over count.
    comp_send(&c, b"x", &[&big, &small, &empty, &pr, &pr2]);
    drop(pr);
    let m = h.wait_msgs(3);
    assert_eq!(m.len(), 3);
    assert_eq!(new_msg(&m[0]).size, 4096);
    assert_eq!(new_msg(&m[1]).flags, VFD_READ);
    assert_eq!(recv_msg(&m[2]).1, vec![HOST_ID_BASE, HOST_ID_BASE + 1]);
    assert_eq!(h.state.vfd_count(), 3);
    // The dropped read end is closed: writing to pw2 would... (pr2 was ours too) -- the kept
    // one is open: pw still has a reader.
    assert!(std::fs::File::from(pw).write_all(b"z").is_ok());
}

#[test]
fn more_than_28_fds_hang_up_the_ctx_without_leaking() {
    let (mut h, c) = H::with_ctx(ALL);
    h.post_in(32);
    let (pr, pw) = sys::pipe().unwrap();
    let dups: Vec<OwnedFd> = (0..40).map(|_| pw.try_clone().unwrap()).collect();
    let refs: Vec<&dyn AsFd> = dups.iter().map(|d| d as &dyn AsFd).collect();
    // 28 fds in one message are fine.
    comp_send(&c, b"a", &refs[..28]);
    let m = h.wait_msgs(29);
    assert_eq!(m.len(), 29);
    assert_eq!(recv_msg(&m[28]).1.len(), 28);
    for id in HOST_ID_BASE..HOST_ID_BASE + 28 {
        assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, id)), RESP_OK);
    }
    // 40 at once, with a raw sendmsg.
    raw_send_fds(&c, &dups);
    drop(dups);
    drop(pw);
    h.post_in(4);
    let m = h.wait_msgs(1);
    assert_eq!(hup_msg(&m[0]), 1);
    // Every write end is closed (ours, the device's): the read end sees EOF.
    let mut f = std::fs::File::from(pr);
    let mut buf = [0u8; 1];
    assert_eq!(f.read(&mut buf).unwrap(), 0);
}

/// Sends one byte with `fds` attached, past the device's own 28-fd check.
fn raw_send_fds(s: &UnixStream, fds: &[OwnedFd]) {
    assert_eq!(
        qvm_wl_fd::send_with_fds(s.as_fd(), b"x", fds, 0).unwrap(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------------------------

#[test]
fn no_in_buffers_means_no_reading() {
    let (mut h, mut c) = H::with_ctx(ALL);
    c.set_nonblocking(true).unwrap();
    // No in buffers: the device does not read; the compositor's socket fills up.
    let chunk = [0x42u8; 4096];
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        h.pump(1);
        match c.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "the socket never filled up");
    }
    assert!(!h.state.reading());
    assert_eq!(h.state.pending(), 0);
    assert_eq!(h.metrics.bytes_received.load(Ordering::Relaxed), 0);
    assert!(h.metrics.in_queue_stalls.load(Ordering::Relaxed) >= 1);
    // The guest posts 5 buffers: exactly 5 messages arrive, then reading stops again.
    h.post_in(5);
    h.pump(50);
    let m = h.in_msgs();
    assert_eq!(m.len(), 5);
    assert!(!h.state.reading());
    assert!(h.state.pending() <= 1);
    let mut got: usize = m.iter().map(|m| recv_msg(m).2.len()).sum();
    // Then everything, buffer by buffer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while got < written {
        assert!(Instant::now() < deadline, "got {got} of {written}");
        h.post_in(16);
        h.pump(5);
        for m in h.in_msgs() {
            let (id, ids, data) = recv_msg(&m);
            assert_eq!((id, ids.len()), (1, 0));
            assert!(data.len() <= MAX_RECV_BYTES);
            assert!(data.iter().all(|&b| b == 0x42));
            got += data.len();
        }
    }
    assert_eq!(got, written);
}

#[test]
fn unusable_in_buffers_are_returned_empty() {
    let (mut h, c) = H::with_ctx(ALL);
    // Too small, readable, outside memory: each is returned with length 0; the message waits.
    let a = h.inr.buf(4096);
    h.inr.publish(&h.mem, &[(a, 8, true)]);
    h.inr.publish(&h.mem, &[(a, 4096, false)]);
    h.inr.publish(&h.mem, &[(0xffff_0000_0000, 4096, true)]);
    comp_send(&c, b"hello", &[]);
    h.pump(50);
    assert_eq!(h.inr.used(&h.mem), [(0, 0), (1, 0), (2, 0)]);
    assert_eq!(h.state.pending(), 1);
    assert!(h.metrics.malformed.load(Ordering::Relaxed) >= 3);
    h.post_in(1);
    let m = h.wait_msgs(1);
    assert_eq!(recv_msg(&m[0]).2, b"hello");
}

#[test]
fn close_drops_pending_messages_and_unannounced_vfds() {
    let (mut h, c) = H::with_ctx(ALL);
    h.post_in(1);
    let shm = tempfile::tempfile().unwrap();
    shm.set_len(4096).unwrap();
    comp_send(&c, b"m", &[&shm, &shm]);
    // One buffer: the first VFD_NEW is delivered, the second and the RECV wait.
    let m = h.wait_msgs(1);
    assert_eq!(new_msg(&m[0]).id, HOST_ID_BASE);
    assert_eq!(h.state.pending(), 2);
    assert_eq!(h.mapper.mapped(), 2);
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 1)), RESP_OK);
    assert_eq!(h.state.pending(), 0);
    // The announced one stays until the guest closes it; the other is gone.
    assert_eq!(h.state.vfd_ids(), [HOST_ID_BASE]);
    assert_eq!(h.mapper.mapped(), 1);
}

// ---------------------------------------------------------------------------------------------
// Malformed chains and commands
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_chains_get_errors_not_panics() {
    let mut h = H::plain(ALL);
    // Short.
    assert_eq!(h.code(&[0, 1, 0]), RESP_ERR);
    assert_eq!(h.code(&req_new(1, 0, 4096)[..20]), RESP_ERR);
    // No writable descriptor: consumed with length 0.
    let a = h.out.buf(64);
    h.mem
        .write_slice(&req_new(1, 0, 4096), GuestAddress(a))
        .unwrap();
    assert!(h.chain(&[(a, 64, false)]).is_empty());
    // (It was executed nevertheless.)
    assert_eq!(h.state.vfd_count(), 1);
    // Request outside guest memory.
    let r = h.out.buf(256);
    let resp = h.chain(&[(0xffff_0000_0000, 64, false), (r, 256, true)]);
    assert_eq!(resp, hdr(RESP_ERR));
    let resp = h.chain(&[(MEM_SIZE as u64 - 8, 64, false), (r, 256, true)]);
    assert_eq!(resp, hdr(RESP_ERR));
    // Response outside guest memory: used with length 0.
    let a = h.out.buf(64);
    h.mem
        .write_slice(&req_vfd(CMD_VFD_CLOSE, 1), GuestAddress(a))
        .unwrap();
    assert!(h
        .chain(&[(a, 12, false), (0xffff_0000_0000, 256, true)])
        .is_empty());
    // Readable after writable.
    let resp = h.chain(&[(a, 12, false), (r, 256, true), (a, 12, false)]);
    assert_eq!(resp, hdr(RESP_ERR));
    // Only writable.
    assert_eq!(h.chain(&[(r, 256, true)]), hdr(RESP_ERR));
    // Too long (over 64 KiB in two descriptors).
    let resp = h.chain(&[(a, 0x8000, false), (a, 0x8001, false), (r, 256, true)]);
    assert_eq!(resp, hdr(RESP_ERR));
    // vfd_count 1000.
    let mut b = req_send(1, &[], b"x");
    b[12..16].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(h.code(&b), RESP_ERR);
    // Commands: unknown, dmabuf, host-to-guest ones.
    for ty in [
        0,
        7,
        CMD_VFD_RECV,
        CMD_VFD_HUP,
        CMD_VFD_NEW_DMABUF,
        CMD_VFD_DMABUF_SYNC,
        RESP_OK,
    ] {
        let mut b = hdr(ty);
        b.resize(64, 0);
        assert_eq!(h.code(&b), RESP_INVALID_CMD, "type {ty:#x}");
    }
    // A gathered request: header and body in separate descriptors, response in two.
    let req = req_new(2, 0, 4096);
    let a = h.out.buf(64);
    h.mem.write_slice(&req, GuestAddress(a)).unwrap();
    let r = h.out.buf(256);
    let head = h.out.publish(
        &h.mem,
        &[
            (a, 5, false),
            (a + 5, 59, false),
            (r, 30, true),
            (r + 0x100, 34, true),
        ],
    );
    assert!(h.state.process_out(&mut h.outq, &h.mem));
    assert_eq!(h.out.used(&h.mem), [(head, 64)]);
    let mut resp = vec![0u8; 64];
    h.mem.read_slice(&mut resp[..30], GuestAddress(r)).unwrap();
    h.mem
        .read_slice(&mut resp[30..], GuestAddress(r + 0x100))
        .unwrap();
    assert_eq!(VfdNew::decode(&resp).unwrap().1.id, 2);
    assert!(h.metrics.malformed.load(Ordering::Relaxed) >= 5);
}

// ---------------------------------------------------------------------------------------------
// The device
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct CountingInterrupt(AtomicU64);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        assert_eq!(kind, InterruptKind::Queue);
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn device_config_and_validation() {
    let m = Arc::new(FakeMapper::new(WINDOW.0, WINDOW.1));
    let d = VirtioWl::new(WlConfig::default(), m.clone()).unwrap();
    assert_eq!(d.device_type(), TYPE_WL);
    assert_eq!(d.queue_max_sizes(), [256, 256]);
    assert_eq!(
        d.features(),
        VIRTIO_F_VERSION_1 | F_TRANS_FLAGS | F_SEND_FENCES | F_USE_SHMEM
    );
    assert_eq!(
        d.shm_regions(),
        [qvm_devices::virtio::ShmRegion {
            id: 0,
            addr: WINDOW.0,
            len: WINDOW.1
        }]
    );
    let mut cfg = [0xffu8; 4];
    d.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 4]);
    let names = d.metrics().unwrap().counters();
    assert!(names.iter().any(|(n, _)| *n == "mapped_bytes"));

    let bad = |cfg: WlConfig| VirtioWl::new(cfg, m.clone()).is_err();
    assert!(bad(WlConfig {
        socket: Some(PathBuf::from("/".repeat(108))),
        ..Default::default()
    }));
    assert!(bad(WlConfig {
        named: vec![("x".repeat(32), "/a".into())],
        ..Default::default()
    }));
    assert!(bad(WlConfig {
        named: vec![("a".into(), "/a".into()), ("a".into(), "/b".into())],
        ..Default::default()
    }));
    assert!(bad(WlConfig {
        max_vfds: 0,
        ..Default::default()
    }));
    assert!(VirtioWl::new(
        WlConfig::default(),
        Arc::new(FakeMapper::new(0x1001, 0x1000))
    )
    .is_err());
}

#[test]
fn device_serves_requests_and_reset_closes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wayland-0");
    let l = UnixListener::bind(&sock).unwrap();
    let mapper = Arc::new(FakeMapper::new(WINDOW.0, WINDOW.1));
    let mut d = VirtioWl::new(
        WlConfig {
            socket: Some(sock),
            ..Default::default()
        },
        mapper.clone(),
    )
    .unwrap();
    d.ack_features(ALL | F_USE_SHMEM | (1 << 40));
    let mem = memory();
    let irq = Arc::new(CountingInterrupt::default());
    for round in 0..2 {
        let (mut out, outq) = Ring::new(&mem, OUT_RING, OUT_BUFS);
        let (mut inr, inq) = Ring::new(&mem, IN_RING, IN_BUFS);
        let kicks = [
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
        ];
        // A request made available before activation is served at start.
        let put = |out: &mut Ring, req: &[u8]| {
            let a = out.buf(256);
            mem.write_slice(req, GuestAddress(a)).unwrap();
            out.publish(&mem, &[(a, req.len() as u32, false), (a + 128, 128, true)]);
        };
        put(&mut out, &req_new(1, 0, 4096));
        let queues = vec![
            ActiveQueue {
                queue: inq,
                notify: kicks[0].try_clone().unwrap(),
            },
            ActiveQueue {
                queue: outq,
                notify: kicks[1].try_clone().unwrap(),
            },
        ];
        d.activate(mem.clone(), irq.clone(), queues).unwrap();
        assert!(d.is_active());
        wait_for("the first response", || out.used(&mem).len() == 1);
        put(&mut out, &req_ctx(2));
        put(&mut out, &req_pipe(3, VFD_READ));
        kicks[1].write(1).unwrap();
        let mut used = 0;
        wait_for("two more responses", || {
            used += out.used(&mem).len();
            used == 2
        });
        let c = accept(&l);
        assert_eq!(mapper.mapped(), 1);
        // Compositor -> guest through the worker.
        let a = inr.buf(4096);
        inr.publish(&mem, &[(a, 4096, true)]);
        kicks[0].write(1).unwrap();
        comp_send(&c, b"ping", &[]);
        wait_for("a VFD_RECV", || inr.used(&mem).len() == 1);
        let mut m = vec![0u8; 20];
        mem.read_slice(&mut m, GuestAddress(a)).unwrap();
        assert_eq!(recv_msg(&m), (2, vec![], b"ping".to_vec()));
        assert!(irq.0.load(Ordering::SeqCst) >= 3);
        assert_eq!(d.stats().vfds_open.load(Ordering::Relaxed), 3);

        assert!(d.reset());
        assert!(!d.reset());
        assert_eq!(mapper.mapped(), 0, "round {round}");
        // The ctx socket is closed: the compositor sees EOF.
        let mut c = c;
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0);
        d.ack_features(ALL);
    }
}

// ---------------------------------------------------------------------------------------------
// The Wayland policy, through the device state
// ---------------------------------------------------------------------------------------------

/// `wl_registry.global` on the registry the device tests' client gets (id 2).
fn wl_global(name: u32, iface: &str, version: u32) -> Vec<u8> {
    global(2, name, iface, version)
}

/// `wl_registry.bind` on registry 2.
fn wl_bind(name: u32, iface: &str, version: u32, id: u32) -> Vec<u8> {
    bind(2, name, iface, version, id)
}

impl H {
    /// A compositor and a VM named "work" with the default policy.
    fn with_policy(clipboard: Clipboard) -> (H, UnixListener, PasteGate) {
        let gate = PasteGate::default();
        let g = gate.clone();
        let h = H::new(
            move |d| WlConfig {
                socket: Some(d.join("wayland-0")),
                policy: Some(WlPolicy {
                    name: "work".into(),
                    allow_globals: Vec::new(),
                    clipboard,
                    paste: g,
                }),
                ..Default::default()
            },
            ALL,
        );
        let l = UnixListener::bind(h.dir.path().join("wayland-0")).unwrap();
        (h, l, gate)
    }

    /// Bytes of the VFD_RECVs among `msgs` for ctx 1, concatenated.
    fn recv_bytes(msgs: &[Vec<u8>]) -> Vec<u8> {
        msgs.iter()
            .filter(|m| m[..4] == CMD_VFD_RECV.to_le_bytes())
            .flat_map(|m| recv_msg(m).2)
            .collect()
    }

    /// Pumps until the guest got `n` bytes of VFD_RECV (or 2 s).
    fn wait_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < n && Instant::now() < deadline {
            self.pump(10);
            got.extend(H::recv_bytes(&self.in_msgs()));
        }
        got
    }
}

/// get_registry(2), then the compositor announces weston_screenshooter (hidden) and
/// wl_compositor, wl_data_device_manager, wl_seat, xdg_wm_base (shown); returns the
/// compositor's end.
fn policy_session(h: &mut H, l: &UnixListener) -> UnixStream {
    h.new_vfd(&req_ctx(1));
    let c = accept(l);
    h.post_in(16);
    assert_eq!(
        h.code(&req_send(1, &[], &wl(1, 1, &wl_words(&[2])))),
        RESP_OK
    );
    assert_eq!(comp_recv(&c).0, wl(1, 1, &wl_words(&[2])));
    let mut ev = wl_global(1, "wl_compositor", 5);
    ev.extend(wl_global(2, "weston_screenshooter", 1));
    ev.extend(wl_global(3, "wl_data_device_manager", 3));
    ev.extend(wl_global(4, "wl_seat", 7));
    ev.extend(wl_global(5, "xdg_wm_base", 3));
    comp_send(&c, &ev, &[]);
    let shown = ev.len() - wl_global(2, "weston_screenshooter", 1).len();
    let got = h.wait_bytes(shown);
    let mut want = wl_global(1, "wl_compositor", 5);
    want.extend(wl_global(3, "wl_data_device_manager", 3));
    want.extend(wl_global(4, "wl_seat", 7));
    want.extend(wl_global(5, "xdg_wm_base", 3));
    assert_eq!(got, want);
    c
}

#[test]
fn policy_hides_globals_and_tags_titles_across_sends_with_fds() {
    let (mut h, l, _) = H::with_policy(Clipboard::Gated);
    let c = policy_session(&mut h, &l);
    assert_eq!(h.metrics.globals_hidden.load(Ordering::Relaxed), 1);
    // bind xdg_wm_base as 3, get_xdg_surface(4, surface 10), get_toplevel(5), set_title.
    let mut up = wl_bind(5, "xdg_wm_base", 3, 3);
    up.extend(wl(3, 2, &wl_words(&[4, 10])));
    up.extend(wl(4, 1, &wl_words(&[5])));
    up.extend(wl(5, 2, &wl_string("hello")));
    // Split inside the title message; the memfd rides with the first half.
    let n = h.new_vfd(&req_new(7, 0, 4096));
    let _ = n;
    let cut = up.len() - 6;
    assert_eq!(h.code(&req_send(1, &[7], &up[..cut])), RESP_OK);
    let (first, fds) = comp_recv(&c);
    assert_eq!(
        fds.len(),
        1,
        "the fd travels with the whole messages before the cut"
    );
    assert_eq!(h.code(&req_send(1, &[], &up[cut..])), RESP_OK);
    let (second, _) = comp_recv(&c);
    let mut want = wl_bind(5, "xdg_wm_base", 3, 3);
    want.extend(wl(3, 2, &wl_words(&[4, 10])));
    want.extend(wl(4, 1, &wl_words(&[5])));
    want.extend(wl(5, 2, &wl_string("[work] hello")));
    assert_eq!([first, second].concat(), want);
    // set_app_id.
    assert_eq!(
        h.code(&req_send(1, &[], &wl(5, 3, &wl_string("org.demo")))),
        RESP_OK
    );
    assert_eq!(comp_recv(&c).0, wl(5, 3, &wl_string("qvm.work.org.demo")));
    // A partial message alone holds its fd until its bytes are whole.
    let msg = wl(20, 0, &wl_words(&[1, 2, 3]));
    assert_eq!(h.code(&req_send(1, &[7], &msg[..4])), RESP_OK);
    assert_eq!(h.code(&req_send(1, &[], &msg[4..])), RESP_OK);
    let (data, fds) = comp_recv(&c);
    assert_eq!((data, fds.len()), (msg, 1));
    assert_eq!(h.metrics.titles_tagged.load(Ordering::Relaxed), 2);
}

#[test]
fn policy_refuses_a_bind_of_a_hidden_global_and_hangs_up() {
    let (mut h, l, _) = H::with_policy(Clipboard::Gated);
    let c = policy_session(&mut h, &l);
    let before = h.metrics.bytes_sent.load(Ordering::Relaxed);
    let r = h.code(&req_send(1, &[], &wl_bind(2, "weston_screenshooter", 1, 3)));
    assert_eq!(r, RESP_ERR);
    // Nothing reached the compositor; it sees the client leave.
    let mut buf = [0u8; 64];
    let mut cc = &c;
    assert_eq!(cc.read(&mut buf).unwrap(), 0);
    assert_eq!(h.metrics.bytes_sent.load(Ordering::Relaxed), before);
    let m = h.wait_msgs(1);
    assert_eq!(hup_msg(&m[0]), 1);
    assert_eq!(h.metrics.binds_refused.load(Ordering::Relaxed), 1);
    assert_eq!(h.metrics.policy_hangups.load(Ordering::Relaxed), 1);
    // The guest's next send fails; a new context works.
    assert_eq!(
        h.code(&req_send(1, &[], &wl(1, 0, &wl_words(&[9])))),
        RESP_ERR
    );
    assert_eq!(h.code(&req_vfd(CMD_VFD_CLOSE, 1)), RESP_OK);
    h.new_vfd(&req_ctx(2));
    let c2 = accept(&l);
    assert_eq!(
        h.code(&req_send(2, &[], &wl(1, 1, &wl_words(&[2])))),
        RESP_OK
    );
    assert_eq!(comp_recv(&c2).0, wl(1, 1, &wl_words(&[2])));
    // A never-announced name is refused too.
    assert_eq!(
        h.code(&req_send(2, &[], &wl_bind(77, "wl_shm", 1, 3))),
        RESP_ERR
    );
    assert_eq!(h.metrics.binds_refused.load(Ordering::Relaxed), 2);
}

#[test]
fn policy_hangs_up_malformed_streams_both_ways() {
    for bad in [
        wl_words(&[0, 8 << 16]),
        wl_words(&[3, 4 << 16]),
        wl_words(&[3, (9 << 16) | 1, 0]),
    ] {
        let (mut h, l, _) = H::with_policy(Clipboard::Gated);
        let _c = policy_session(&mut h, &l);
        assert_eq!(h.code(&req_send(1, &[], &bad)), RESP_ERR);
        let m = h.wait_msgs(1);
        assert_eq!(hup_msg(&m[0]), 1);
        // From the compositor.
        let (mut h, l, _) = H::with_policy(Clipboard::Gated);
        let c = policy_session(&mut h, &l);
        comp_send(&c, &bad, &[]);
        let m = h.wait_msgs(1);
        assert_eq!(hup_msg(&m[0]), 1, "{bad:?}");
        assert_eq!(h.metrics.policy_hangups.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn policy_gates_the_host_selection_until_a_paste_is_allowed() {
    let (mut h, l, gate) = H::with_policy(Clipboard::Gated);
    let c = policy_session(&mut h, &l);
    // bind wl_data_device_manager as 3, wl_seat as 4, get_data_device(5, seat 4).
    let mut up = wl_bind(3, "wl_data_device_manager", 3, 3);
    up.extend(wl_bind(4, "wl_seat", 7, 4));
    up.extend(wl(3, 1, &wl_words(&[5, 4])));
    assert_eq!(h.code(&req_send(1, &[], &up)), RESP_OK);
    assert_eq!(comp_recv(&c).0, up);
    let selection = |offer: u32| {
        let mut e = wl(5, 0, &wl_words(&[offer]));
        e.extend(wl(offer, 0, &wl_string("text/plain")));
        e.extend(wl(5, 5, &wl_words(&[offer])));
        e
    };
    // Default: null.
    comp_send(&c, &selection(0xff00_0001), &[]);
    assert_eq!(h.wait_bytes(12), wl(5, 5, &wl_words(&[0])));
    // Allowed once: the whole offer.
    gate.allow(PASTE_WINDOW);
    comp_send(&c, &selection(0xff00_0002), &[]);
    let s = selection(0xff00_0002);
    assert_eq!(h.wait_bytes(s.len()), s);
    // Then null again.
    comp_send(&c, &selection(0xff00_0003), &[]);
    assert_eq!(h.wait_bytes(12), wl(5, 5, &wl_words(&[0])));
    assert_eq!(h.metrics.selections_gated.load(Ordering::Relaxed), 2);
    assert_eq!(h.metrics.pastes_allowed.load(Ordering::Relaxed), 1);
    // The guest's own selection (create_data_source 6, offer, set_selection) passes; the
    // superseded hidden offer is destroyed in front of it.
    let mut own = wl(3, 0, &wl_words(&[6]));
    own.extend(wl(6, 0, &wl_string("text/plain")));
    own.extend(wl(5, 1, &wl_words(&[6, 1])));
    assert_eq!(h.code(&req_send(1, &[], &own)), RESP_OK);
    let (got, _) = comp_recv(&c);
    assert_eq!(got, [wl(0xff00_0001, 2, &[]), own].concat());
}
