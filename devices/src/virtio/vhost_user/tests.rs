//! Tests against an in-process vhost-user backend (vhost-user-backend's daemon on a unix
//! socket in a temp dir), with memfd-backed guest memory. No root, no guest.

use std::fs::File;
use std::io;
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::{Listener, VhostUserProtocolFeatures};
use vhost_user_backend::{
    ShutdownHandle, VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestAddressSpace, GuestMemoryAtomic,
    GuestMemoryBackend, GuestMemoryRegion,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::fs::{config_space, CONFIG_SIZE};
use super::*;
use crate::virtio::testing::{wait_for, CountingInterrupt, SplitRing, TempDir};
use crate::virtio::{ActiveQueue, GuestMemoryMmap, VirtioDevice, TYPE_FS};

const MIB: u64 = 1 << 20;
/// Second memory region's guest address (the first is at 0).
const HIGH_GPA: u64 = 0x1000_0000;
const VIRTIO_F_NOTIFY_ON_EMPTY: u64 = 1 << 24;
const RING_SIZE: u16 = 256;

// ---------------------------------------------------------------------------------------------
// The mock backend
// ---------------------------------------------------------------------------------------------

/// What the backend saw.
#[derive(Debug, Default)]
struct Seen {
    /// (guest address, size, file offset) of every region of the last memory table.
    regions: Vec<(u64, u64, Option<u64>)>,
    /// Kicks per queue.
    kicks: Vec<usize>,
    /// (desc, avail, used, size) of a queue, in guest addresses, as of its last kick.
    rings: Vec<Option<(u64, u64, u64, u16)>>,
    /// The queue's next avail index (from SET_VRING_BASE) as of its last kick.
    next_avail: Vec<u16>,
    acked_features: u64,
}

struct MockBackend {
    queues: usize,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    seen: Arc<Mutex<Seen>>,
}

impl VhostUserBackendMut for MockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&mut self, features: u64) {
        self.seen.lock().unwrap().acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn update_memory(
        &mut self,
        mem: GuestMemoryAtomic<vm_memory::GuestMemoryMmap>,
    ) -> io::Result<()> {
        let mem = mem.memory();
        self.seen.lock().unwrap().regions = mem
            .iter()
            .map(|r| {
                (
                    r.start_addr().raw_value(),
                    r.len(),
                    r.file_offset().map(|f| f.start()),
                )
            })
            .collect();
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let i = usize::from(device_event);
        let Some(vring) = vrings.get(i) else {
            return Ok(());
        };
        {
            let state = vring.get_ref();
            let q = state.get_queue();
            let mut seen = self.seen.lock().unwrap();
            seen.kicks[i] += 1;
            seen.rings[i] = Some((q.desc_table(), q.avail_ring(), q.used_ring(), q.size()));
            seen.next_avail[i] = q.next_avail();
        }
        vring.signal_used_queue()
    }
}

const BACKEND_FEATURES: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_F_NOTIFY_ON_EMPTY
    | VHOST_USER_F_PROTOCOL_FEATURES;

fn full_protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::BACKEND_REQ
}

/// A backend daemon serving one connection on `path`.
struct TestBackend {
    seen: Arc<Mutex<Seen>>,
    shutdown: mpsc::Receiver<ShutdownHandle>,
    thread: Option<JoinHandle<()>>,
}

impl TestBackend {
    fn spawn(path: &Path, queues: usize, protocol: VhostUserProtocolFeatures) -> Self {
        Self::spawn_with(path, queues, BACKEND_FEATURES, protocol)
    }

    fn spawn_with(
        path: &Path,
        queues: usize,
        features: u64,
        protocol: VhostUserProtocolFeatures,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Seen {
            kicks: vec![0; queues],
            rings: vec![None; queues],
            next_avail: vec![0; queues],
            ..Default::default()
        }));
        let backend = MockBackend {
            queues,
            features,
            protocol,
            seen: seen.clone(),
        };
        // Bound here, so the frontend cannot connect before the daemon listens.
        let mut listener = Listener::new(path, true).unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut daemon = VhostUserDaemon::new(
                "qvm-test-backend".to_string(),
                Arc::new(RwLock::new(backend)),
                GuestMemoryAtomic::new(vm_memory::GuestMemoryMmap::new()),
            )
            .unwrap();
            if daemon.start(&mut listener).is_err() {
                return;
            }
            if let Some(h) = daemon.shutdown_handle() {
                let _ = tx.send(h);
            }
            // Err on a normal disconnect; either way the daemon is done.
            let _ = daemon.wait();
        });
        TestBackend {
            seen,
            shutdown: rx,
            thread: Some(thread),
        }
    }

    /// The backend dies: its connection goes away.
    fn kill(mut self) {
        let h = self
            .shutdown
            .recv_timeout(Duration::from_secs(10))
            .expect("backend never got a connection");
        h.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn kicks(&self, q: usize) -> usize {
        self.seen.lock().unwrap().kicks[q]
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The backend's socket in a test's temporary directory.
trait SocketDir {
    fn socket(&self) -> PathBuf;
}

impl SocketDir for TempDir {
    fn socket(&self) -> PathBuf {
        self.join("vhost.sock")
    }
}

/// Two 1 MiB regions (at 0 and at [`HIGH_GPA`]) backed by one memfd.
fn memfd_memory() -> GuestMemoryMmap {
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"qvm-vhost-user-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: the fd was just created and is owned by nobody else.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(2 * MIB).unwrap();
    GuestMemoryMmap::from_ranges_with_files([
        (
            GuestAddress(0),
            MIB as usize,
            Some(FileOffset::from_arc(file.clone(), 0)),
        ),
        (
            GuestAddress(HIGH_GPA),
            MIB as usize,
            Some(FileOffset::from_arc(file, MIB)),
        ),
    ])
    .unwrap()
}

/// The ring of queue `i`: queue 0 in the low region, the others in the high one.
fn ring(i: usize) -> SplitRing {
    let base = if i == 0 {
        0x1_0000
    } else {
        HIGH_GPA + 0x1_0000 * i as u64
    };
    SplitRing::new(base, RING_SIZE)
}

/// Ring addresses of queue `i`: (descriptor table, avail ring, used ring).
fn ring_addrs(i: usize) -> (u64, u64, u64) {
    let r = ring(i);
    (r.desc_table().0, r.avail_ring().0, r.used_ring().0)
}

fn set_addr(f: impl FnOnce(&mut Queue, Option<u32>, Option<u32>), q: &mut Queue, addr: u64) {
    f(q, Some(addr as u32), Some((addr >> 32) as u32));
}

/// Ready queues plus the notify eventfds we keep to kick them.
fn queues(n: usize) -> (Vec<ActiveQueue>, Vec<EventFd>) {
    let mut active = Vec::new();
    let mut kicks = Vec::new();
    for i in 0..n {
        let q = ring(i).queue();
        let kick = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        active.push(ActiveQueue {
            queue: q,
            notify: kick.try_clone().unwrap(),
        });
        kicks.push(kick);
    }
    (active, kicks)
}

fn fs_config(socket: &Path, tag: &str) -> VhostUserFsConfig {
    VhostUserFsConfig::new(socket, tag)
}

/// A virtio-fs device tagged `tag` on a backend with two queues and every protocol feature,
/// its socket in a fresh `qvm-vu-<name>` directory (keep it alive).
fn fs_on_a_backend(name: &str, tag: &str) -> (TempDir, TestBackend, VhostUserFs) {
    let dir = TempDir::new(&format!("qvm-vu-{name}"));
    let backend = TestBackend::spawn(&dir.socket(), 2, full_protocol());
    let fs = VhostUserFs::new(fs_config(&dir.socket(), tag)).unwrap();
    (dir, backend, fs)
}

fn new_interrupt() -> Arc<CountingInterrupt> {
    Arc::new(CountingInterrupt::default())
}

/// Kicks queue `q` and waits for the backend to see it and for the interrupt it causes.
fn kick_and_wait(
    fs: &VhostUserFs,
    backend: &TestBackend,
    irq: &CountingInterrupt,
    kicks: &[EventFd],
    q: usize,
) {
    let kicks_before = backend.kicks(q);
    let irqs_before = irq.0.load(Ordering::SeqCst);
    kicks[q].write(1).unwrap();
    wait_for("the backend to see the kick", || {
        backend.kicks(q) > kicks_before
    });
    wait_for("the interrupt", || {
        irq.0.load(Ordering::SeqCst) > irqs_before
    });
    assert!(fs.stats().snapshot().interrupts as usize > irqs_before);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn new_negotiates_and_exposes_the_tag() {
    let (_dir, backend, fs) = fs_on_a_backend("negotiate", "myfs");

    assert_eq!(fs.device_type(), TYPE_FS);
    assert_eq!(fs.queue_max_sizes(), &[1024, 1024]);
    // Backend's features, minus the vhost-user bit and what we do not drive.
    assert_eq!(
        fs.features(),
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_RING_F_INDIRECT_DESC
    );
    assert_eq!(
        fs.handle().protocol_features(),
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    );
    assert!(fs.handle().is_connected());
    assert_eq!(fs.stats().snapshot().connects, 1);

    let mut cfg = [0xffu8; CONFIG_SIZE];
    fs.read_config(0, &mut cfg);
    assert_eq!(&cfg[..4], b"myfs");
    assert!(cfg[4..36].iter().all(|&b| b == 0));
    assert_eq!(&cfg[36..], &1u32.to_le_bytes());
    let mut tail = [0xffu8; 8];
    fs.read_config(36, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0]);
    fs.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);

    drop(fs);
    backend.kill();
}

#[test]
fn config_space_with_more_request_queues_and_a_full_tag() {
    let tag = "a".repeat(36);
    let cfg = config_space(&tag, 4).unwrap();
    assert_eq!(&cfg[..36], tag.as_bytes());
    assert_eq!(&cfg[36..], &4u32.to_le_bytes());
}

#[test]
fn bad_configs_are_refused_with_a_fix() {
    let nowhere = Path::new("/nonexistent/qvm/vhost.sock");
    let e = VhostUserFs::new(fs_config(nowhere, "")).unwrap_err();
    assert!(matches!(e, FsError::EmptyTag), "{e}");
    let e = VhostUserFs::new(fs_config(nowhere, &"x".repeat(37))).unwrap_err();
    assert!(matches!(e, FsError::TagTooLong { len: 37, .. }), "{e}");
    assert!(e.to_string().contains("shorten"), "{e}");
    let mut cfg = fs_config(nowhere, "t");
    cfg.num_request_queues = 0;
    assert!(matches!(
        VhostUserFs::new(cfg).unwrap_err(),
        FsError::NoRequestQueues { .. }
    ));
    let mut cfg = fs_config(nowhere, "t");
    cfg.queue_size = 1000;
    assert!(matches!(
        VhostUserFs::new(cfg).unwrap_err(),
        FsError::BadQueueSize { size: 1000, .. }
    ));
    let e = VhostUserFs::new(fs_config(nowhere, "t")).unwrap_err();
    assert!(
        matches!(e, FsError::Backend(FrontendError::SocketNotFound { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/qvm/vhost.sock"), "{e}");
    assert!(e.to_string().contains("virtiofsd"), "{e}");
}

#[test]
fn a_backend_with_too_few_queues_is_refused() {
    let dir = TempDir::new("qvm-vu-few-queues");
    let _backend = TestBackend::spawn(&dir.socket(), 2, full_protocol());
    let mut cfg = fs_config(&dir.socket(), "t");
    cfg.num_request_queues = 2;
    let e = VhostUserFs::new(cfg).unwrap_err();
    assert!(
        matches!(
            e,
            FsError::Backend(FrontendError::TooFewQueues {
                backend: 2,
                wanted: 3,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn activate_shares_memory_and_rings_and_forwards_interrupts() {
    let (_dir, backend, mut fs) = fs_on_a_backend("activate", "share");
    fs.ack_features(fs.features());
    let mem = memfd_memory();
    let irq = new_interrupt();
    let (active, kicks) = queues(2);
    fs.activate(mem, irq.clone(), active).unwrap();
    assert!(fs.handle().is_active());

    {
        let seen = backend.seen.lock().unwrap();
        assert_eq!(
            seen.regions,
            vec![(0, MIB, Some(0)), (HIGH_GPA, MIB, Some(MIB))]
        );
        // The PROTOCOL_FEATURES bit goes back to the backend with the driver's features.
        assert_eq!(
            seen.acked_features,
            fs.features() | VHOST_USER_F_PROTOCOL_FEATURES
        );
    }

    for q in 0..2 {
        kick_and_wait(&fs, &backend, &irq, &kicks, q);
        // Our virtual addresses came back to guest addresses through the memory table.
        let (desc, avail, used) = ring_addrs(q);
        assert_eq!(
            backend.seen.lock().unwrap().rings[q],
            Some((desc, avail, used, RING_SIZE))
        );
    }
    assert_eq!(fs.stats().snapshot().activations, 1);
    assert_eq!(fs.stats().snapshot().backend_lost, 0);

    assert!(fs.reset());
    drop(fs);
    backend.kill();
}

#[test]
fn works_without_mq() {
    let dir = TempDir::new("qvm-vu-no-mq");
    // (vhost's backend side always adds REPLY_ACK.)
    let backend = TestBackend::spawn(&dir.socket(), 2, VhostUserProtocolFeatures::empty());
    let mut fs = VhostUserFs::new(fs_config(&dir.socket(), "t")).unwrap();
    assert_eq!(
        fs.handle().protocol_features(),
        VhostUserProtocolFeatures::REPLY_ACK
    );
    fs.ack_features(VIRTIO_F_VERSION_1);
    let irq = new_interrupt();
    let (active, kicks) = queues(2);
    fs.activate(memfd_memory(), irq.clone(), active).unwrap();
    kick_and_wait(&fs, &backend, &irq, &kicks, 1);
    assert!(fs.reset());
    drop(fs);
    backend.kill();
}

#[test]
fn works_without_protocol_features() {
    let dir = TempDir::new("qvm-vu-no-protocol");
    let features = BACKEND_FEATURES & !VHOST_USER_F_PROTOCOL_FEATURES;
    let backend = TestBackend::spawn_with(
        &dir.socket(),
        2,
        features,
        VhostUserProtocolFeatures::empty(),
    );
    let mut fs = VhostUserFs::new(fs_config(&dir.socket(), "t")).unwrap();
    assert_eq!(
        fs.handle().protocol_features(),
        VhostUserProtocolFeatures::empty()
    );
    fs.ack_features(fs.features());
    let irq = new_interrupt();
    let (active, kicks) = queues(2);
    // Rings start enabled here (no SET_VRING_ENABLE without protocol features).
    fs.activate(memfd_memory(), irq.clone(), active).unwrap();
    // No REPLY_ACK: the messages are fire-and-forget, the backend catches up.
    wait_for("SET_FEATURES", || {
        backend.seen.lock().unwrap().acked_features == fs.features()
    });
    kick_and_wait(&fs, &backend, &irq, &kicks, 0);
    kick_and_wait(&fs, &backend, &irq, &kicks, 1);
    assert!(fs.reset());
    drop(fs);
    backend.kill();
}

/// A backend without REPLY_ACK gets activation's messages fire-and-forget. The guest's first
/// request follows activation at once; if the backend has not yet read SET_VRING_CALL, the
/// interrupt for that request is lost. Activation must end only once the backend has read
/// everything (a GET_FEATURES round trip). A hand-written backend that records what it reads
/// and stalls before the activation messages shows it: when `activate` returns, both rings'
/// SET_VRING_CALL must be in. (This also was the cause of works_without_protocol_features
/// failing now and then.)
#[test]
fn activation_without_reply_ack_waits_until_the_backend_has_the_rings() {
    use std::io::{Read, Write};
    const GET_FEATURES: u32 = 1;
    const SET_OWNER: u32 = 3;
    const GET_VRING_BASE: u32 = 11;
    const SET_VRING_CALL: u32 = 13;
    let dir = TempDir::new("qvm-vu-no-reply-ack");
    let listener = std::os::unix::net::UnixListener::bind(dir.socket()).unwrap();
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let backend = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut handshake_done = false;
            loop {
                let mut hdr = [0u8; 12];
                if conn.read_exact(&mut hdr).is_err() {
                    return;
                }
                let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
                let (request, size) = (word(0), word(8) as usize);
                let mut body = vec![0u8; size];
                if conn.read_exact(&mut body).is_err() {
                    return;
                }
                seen.lock().unwrap().push(request);
                if request == GET_VRING_BASE {
                    // Teardown asks for each ring's base: {index, num}.
                    let mut reply = Vec::new();
                    reply.extend_from_slice(&GET_VRING_BASE.to_le_bytes());
                    reply.extend_from_slice(&0x5u32.to_le_bytes());
                    reply.extend_from_slice(&8u32.to_le_bytes());
                    reply.extend_from_slice(&body[..4]);
                    reply.extend_from_slice(&0u32.to_le_bytes());
                    conn.write_all(&reply).unwrap();
                }
                if request == GET_FEATURES {
                    // Version 1, REPLY; no VHOST_USER_F_PROTOCOL_FEATURES.
                    let features = BACKEND_FEATURES & !VHOST_USER_F_PROTOCOL_FEATURES;
                    let mut reply = Vec::new();
                    reply.extend_from_slice(&GET_FEATURES.to_le_bytes());
                    reply.extend_from_slice(&0x5u32.to_le_bytes());
                    reply.extend_from_slice(&8u32.to_le_bytes());
                    reply.extend_from_slice(&features.to_le_bytes());
                    conn.write_all(&reply).unwrap();
                }
                if request == SET_OWNER && !handshake_done {
                    // The handshake is over; stall before reading what activation sends.
                    handshake_done = true;
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        })
    };
    let mut fs = VhostUserFs::new(fs_config(&dir.socket(), "t")).unwrap();
    fs.ack_features(fs.features());
    let (active, _kicks) = queues(2);
    fs.activate(memfd_memory(), new_interrupt(), active)
        .unwrap();
    let calls = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|&&r| r == SET_VRING_CALL)
        .count();
    assert_eq!(
        calls, 2,
        "activate returned before the backend had both rings' call fds"
    );
    drop(fs);
    backend.join().unwrap();
}

#[test]
fn a_backend_without_version_1_is_refused() {
    let dir = TempDir::new("qvm-vu-legacy");
    let _backend = TestBackend::spawn_with(
        &dir.socket(),
        2,
        BACKEND_FEATURES & !VIRTIO_F_VERSION_1,
        full_protocol(),
    );
    let e = VhostUserFs::new(fs_config(&dir.socket(), "t")).unwrap_err();
    assert!(
        matches!(e, FsError::Backend(FrontendError::NoVersion1 { .. })),
        "{e}"
    );
}

#[test]
fn reset_stops_the_rings_and_activate_works_again() {
    let (_dir, backend, mut fs) = fs_on_a_backend("reset", "t");
    assert!(!fs.reset(), "not active yet");

    fs.ack_features(fs.features());
    let irq = new_interrupt();
    let (active, kicks) = queues(2);
    fs.activate(memfd_memory(), irq.clone(), active).unwrap();
    kick_and_wait(&fs, &backend, &irq, &kicks, 0);
    assert!(fs.reset());
    assert!(!fs.reset(), "already reset");
    assert!(!fs.handle().is_active());

    // A kick on the old eventfd no longer reaches the backend.
    let before = backend.kicks(0);
    kicks[0].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(backend.kicks(0), before);

    // The driver negotiates again and restarts the device.
    fs.ack_features(fs.features());
    let irq = new_interrupt();
    let (active, kicks) = queues(2);
    fs.activate(memfd_memory(), irq.clone(), active).unwrap();
    kick_and_wait(&fs, &backend, &irq, &kicks, 0);
    kick_and_wait(&fs, &backend, &irq, &kicks, 1);
    assert_eq!(fs.stats().snapshot().activations, 2);

    // Activating twice is refused without disturbing the running device.
    let (active, _) = queues(2);
    let e = fs
        .activate(memfd_memory(), irq.clone(), active)
        .unwrap_err();
    assert!(e.to_string().contains("already active"), "{e}");
    kick_and_wait(&fs, &backend, &irq, &kicks, 1);

    assert!(fs.reset());
    drop(fs);
    backend.kill();
}

#[test]
fn activate_checks_memory_and_queues() {
    let (_dir, backend, mut fs) = fs_on_a_backend("checks", "t");
    fs.ack_features(fs.features());

    let anon = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MIB as usize)]).unwrap();
    let (active, _) = queues(2);
    let e = fs.activate(anon, new_interrupt(), active).unwrap_err();
    assert!(matches!(e, ActivateError::Other(_)), "{e}");
    assert!(e.to_string().contains("shareable"), "{e}");

    let (active, _) = queues(1);
    let e = fs
        .activate(memfd_memory(), new_interrupt(), active)
        .unwrap_err();
    assert!(
        matches!(e, ActivateError::QueueCount { got: 1, want: 2 }),
        "{e}"
    );

    // A ring outside guest memory.
    let (mut active, _) = queues(2);
    set_addr(
        Queue::set_used_ring_address,
        &mut active[1].queue,
        HIGH_GPA + MIB - 8,
    );
    let e = fs
        .activate(memfd_memory(), new_interrupt(), active)
        .unwrap_err();
    assert!(matches!(e, ActivateError::BadQueue(1)), "{e}");

    // None of that hurt the connection.
    let irq = new_interrupt();
    let (active, kicks) = queues(2);
    fs.activate(memfd_memory(), irq.clone(), active).unwrap();
    kick_and_wait(&fs, &backend, &irq, &kicks, 0);
    assert!(fs.reset());
    drop(fs);
    backend.kill();
}

/// Puts a FUSE request (a 40-byte in header with `unique`, then a 64-byte writable buffer) in
/// descriptors 0 and 1 of queue `q` and makes it available at `slot`; avail idx = slot + 1.
fn post_fuse_request(mem: &GuestMemoryMmap, q: usize, slot: u16, unique: u64) {
    let desc = ring(q).desc_table().0;
    let (inbuf, outbuf) = (desc + 0x6000, desc + 0x7000);
    let mut header = [0u8; 40];
    header[0..4].copy_from_slice(&40u32.to_le_bytes());
    header[4..8].copy_from_slice(&1u32.to_le_bytes()); // FUSE_LOOKUP
    header[8..16].copy_from_slice(&unique.to_le_bytes());
    mem.write_slice(&header, GuestAddress(inbuf)).unwrap();
    mem.write_slice(&[0xaa; 64], GuestAddress(outbuf)).unwrap();
    // struct virtq_desc: addr, len, flags (NEXT = 1, WRITE = 2), next.
    let mut d = Vec::new();
    d.extend_from_slice(&inbuf.to_le_bytes());
    d.extend_from_slice(&40u32.to_le_bytes());
    d.extend_from_slice(&1u16.to_le_bytes());
    d.extend_from_slice(&1u16.to_le_bytes());
    d.extend_from_slice(&outbuf.to_le_bytes());
    d.extend_from_slice(&64u32.to_le_bytes());
    d.extend_from_slice(&2u16.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    mem.write_slice(&d, GuestAddress(desc)).unwrap();
    ring(q).set_avail(mem, slot, 0);
    ring(q).set_avail_idx(mem, slot.wrapping_add(1));
}

/// The used ring's idx of queue `q`.
fn used_idx(mem: &GuestMemoryMmap, q: usize) -> u16 {
    ring(q).used_idx(mem)
}

/// The FUSE reply header in queue `q`'s reply buffer: (len, error, unique).
fn fuse_reply(mem: &GuestMemoryMmap, q: usize) -> (u32, i32, u64) {
    let out = GuestAddress(ring_addrs(q).0 + 0x7000);
    let len: u32 = mem.read_obj(out).unwrap();
    let error: i32 = mem.read_obj(out.unchecked_add(4)).unwrap();
    let unique: u64 = mem.read_obj(out.unchecked_add(8)).unwrap();
    (len, error, unique)
}

/// The used element at `slot` of queue `q`: (id, len).
fn used_elem(mem: &GuestMemoryMmap, q: usize, slot: u16) -> (u32, u32) {
    let e = ring(q).used_elem(mem, slot);
    (e.id(), e.len())
}

#[test]
fn backend_death_fails_requests_with_enotconn_and_a_restarted_backend_takes_over() {
    let (dir, backend, mut fs) = fs_on_a_backend("death", "t");
    fs.ack_features(fs.features());
    let irq = new_interrupt();
    let mem = memfd_memory();
    let (active, kicks) = queues(2);
    fs.activate(mem.clone(), irq.clone(), active).unwrap();
    // A request the backend takes (sees the kick) but never answers: in flight when it dies.
    post_fuse_request(&mem, 1, 0, 0x1111);
    kick_and_wait(&fs, &backend, &irq, &kicks, 1);
    assert_eq!(used_idx(&mem, 1), 0);

    backend.kill();
    // The supervisor notices the hang-up on its own, logs once, counts it, and answers the
    // request the dead backend left behind with ENOTCONN.
    wait_for("the in-flight request to be failed", || {
        used_idx(&mem, 1) == 1
    });
    assert_eq!(fs.stats().snapshot().backend_lost, 1);
    assert!(!fs.handle().is_connected());
    assert_eq!(used_elem(&mem, 1, 0), (0, 16));
    assert_eq!(fuse_reply(&mem, 1), (16, -libc::ENOTCONN, 0x1111));

    // New requests while nobody listens fail too (the supervisor watches the kicks now).
    let irqs = irq.0.load(Ordering::SeqCst);
    post_fuse_request(&mem, 1, 1, 0x2222);
    kicks[1].write(1).unwrap();
    wait_for("the new request to be failed", || used_idx(&mem, 1) == 2);
    assert_eq!(fuse_reply(&mem, 1), (16, -libc::ENOTCONN, 0x2222));
    assert_eq!(used_elem(&mem, 1, 1), (0, 16));
    wait_for("the interrupt", || irq.0.load(Ordering::SeqCst) > irqs);
    assert_eq!(fs.stats().snapshot().failed_requests, 2);
    assert_eq!(fs.stats().snapshot().backend_lost, 1, "logged once");

    // The backend is restarted on the same socket: the supervisor hands it the rings at the
    // first request it has not answered, with no driver reset.
    let backend = TestBackend::spawn(&dir.socket(), 2, full_protocol());
    wait_for("the reconnect", || fs.handle().is_connected());
    assert_eq!(fs.stats().snapshot().connects, 2);
    kick_and_wait(&fs, &backend, &irq, &kicks, 1);
    assert_eq!(backend.seen.lock().unwrap().next_avail[1], 2);
    assert_eq!(fs.stats().snapshot().failed_requests, 2);
    assert!(fs.reset());
    drop(fs);
    backend.kill();
}

/// A virtio-fs device whose backend died before activation, activated (so in standby): the
/// temp dir (keep it alive), the device, its memory and the kick eventfds of its two queues.
fn standby_fs(name: &str) -> (TempDir, VhostUserFs, GuestMemoryMmap, Vec<EventFd>) {
    let (dir, backend, mut fs) = fs_on_a_backend(name, "t");
    backend.kill();
    // Dead before anything watched the socket: the first message fails, nothing panics, and
    // the guest gets errors instead of a device that never answers.
    fs.ack_features(fs.features());
    let mem = memfd_memory();
    let (active, kicks) = queues(2);
    fs.activate(mem.clone(), new_interrupt(), active).unwrap();
    (dir, fs, mem, kicks)
}

#[test]
fn activation_without_a_backend_comes_up_in_standby() {
    let (_dir, mut fs, mem, kicks) = standby_fs("early-death");
    assert_eq!(fs.stats().snapshot().backend_lost, 1);
    assert!(!fs.handle().is_connected());
    post_fuse_request(&mem, 1, 0, 0x3333);
    kicks[1].write(1).unwrap();
    wait_for("the request to be failed", || used_idx(&mem, 1) == 1);
    assert_eq!(fuse_reply(&mem, 1), (16, -libc::ENOTCONN, 0x3333));
    // hiprio requests (FORGETs) have no reply: completed empty.
    post_fuse_request(&mem, 0, 0, 0x4444);
    kicks[0].write(1).unwrap();
    wait_for("the hiprio request to be completed", || {
        used_idx(&mem, 0) == 1
    });
    assert_eq!(used_elem(&mem, 0, 0), (0, 0));
    assert!(fs.reset());
    assert!(!fs.reset());
}

#[test]
fn a_malformed_request_in_standby_is_completed_empty() {
    let (_dir, mut fs, mem, kicks) = standby_fs("malformed");
    // A header descriptor shorter than the FUSE header, and one pointing outside memory.
    let (desc, _, _) = ring_addrs(1);
    post_fuse_request(&mem, 1, 0, 0x5555);
    mem.write_obj(8u32, GuestAddress(desc + 8)).unwrap();
    kicks[1].write(1).unwrap();
    wait_for("the short request", || used_idx(&mem, 1) == 1);
    assert_eq!(used_elem(&mem, 1, 0), (0, 0));
    post_fuse_request(&mem, 1, 1, 0x6666);
    mem.write_obj(0xdead_0000_0000u64, GuestAddress(desc + 16))
        .unwrap();
    kicks[1].write(1).unwrap();
    wait_for("the bad-address request", || used_idx(&mem, 1) == 2);
    assert_eq!(used_elem(&mem, 1, 1), (0, 0));
    // A head index beyond the ring: skipped, the device keeps going.
    ring(1).set_avail(&mem, 2, 999);
    ring(1).set_avail_idx(&mem, 3);
    kicks[1].write(1).unwrap();
    post_fuse_request(&mem, 1, 3, 0x7777);
    kicks[1].write(1).unwrap();
    wait_for("the good request after the bad head", || {
        fuse_reply(&mem, 1).2 == 0x7777
    });
    assert!(fs.reset());
}

#[test]
fn a_guest_avail_index_far_ahead_does_not_spin_the_standby_thread() {
    let (_dir, mut fs, mem, kicks) = standby_fs("far-ahead");
    // avail.idx a full ring (and one) ahead: virtio-queue pops nothing, but says more came.
    ring(1).set_avail_idx(&mem, RING_SIZE + 1);
    kicks[1].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The supervisor must still answer its stop: reset joins it.
    let start = Instant::now();
    assert!(fs.reset());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "reset took {:?}",
        start.elapsed()
    );
}
