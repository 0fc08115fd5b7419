//! vhost-user frontend: the device model lives in another process (the backend, e.g.
//! virtiofsd) that we talk to over a unix socket with the vhost-user protocol
//! (<https://qemu-project.gitlab.io/qemu/interop/vhost-user.html>); the `vhost` crate's
//! [`Frontend`] encodes the messages.
//!
//! [`VhostUserHandle`] is the device-independent part, usable for any vhost-user device:
//!
//! - [`VhostUserHandle::new`] connects and does the handshake: GET_FEATURES, SET_OWNER and,
//!   when the backend offers VHOST_USER_F_PROTOCOL_FEATURES, GET/SET_PROTOCOL_FEATURES (MQ,
//!   REPLY_ACK and CONFIG when offered, whatever the device asks for) and GET_QUEUE_NUM.
//!   The virtio features offered to the driver are the backend's, minus
//!   VHOST_USER_F_PROTOCOL_FEATURES, masked by what the device supports.
//! - [`VhostUserHandle::activate`] hands the backend the guest memory (SET_MEM_TABLE; every
//!   region must be file backed, e.g. memfd, so the backend can map it), the features the
//!   driver acked (SET_FEATURES; the device on top keeps them in its [`super::VirtioCommon`],
//!   which also checks "already active" and the queue count first) and each ring:
//!   SET_VRING_NUM/BASE/ADDR (addresses are *our* virtual addresses, the backend translates
//!   them through the memory table), SET_VRING_KICK with the queue's notify eventfd (KVM's
//!   ioeventfd then kicks the backend directly, we never see queue notifications),
//!   SET_VRING_CALL with an eventfd of ours, and SET_VRING_ENABLE once protocol features are
//!   acked (rings start disabled then). A supervisor thread (plain epoll,
//!   [`super::worker::run_epoll_loop`]; module `supervisor`) turns the call eventfds into
//!   [`Interrupt::trigger`] and watches the socket for a hang-up.
//! - [`VhostUserHandle::reset`] joins the supervisor, then disables and stops every ring
//!   (SET_VRING_ENABLE 0, GET_VRING_BASE); activation works again afterwards.
//!
//! Backend death: any socket error, hang-up, or a reply that takes longer than
//! [`REPLY_TIMEOUT`] marks the backend as gone: one line on stderr naming the device and the
//! socket, a count in [`VhostUserStats::backend_lost`], never a panic. The VM keeps running and
//! the supervisor takes the rings over where the backend left them (at the used index: what the
//! backend took but never answered is answered now), watches the kick eventfds itself and
//! answers every request through the device's [`StandbyResponder`] (virtio-fs: a FUSE reply
//! with ENOTCONN), so the guest sees errors instead of hanging. Every [`RECONNECT_INTERVAL`] it
//! tries the socket again; when a backend answers (and offers every feature the driver acked)
//! the rings are handed to it at our avail index, with the same kick and call eventfds. An
//! activation while the backend is gone does the same: the device comes up in standby.
//!
//! Devices on top: [`fs`] (virtio-fs).

pub mod fs;
mod supervisor;
#[cfg(test)]
mod tests;

pub use fs::{FsError, VhostUserFs, VhostUserFsConfig};
pub use supervisor::RECONNECT_INTERVAL;

use std::fmt::Display;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use supervisor::{start_supervisor, SupervisorLoop};

use super::{bump, ActivateError, ActiveQueue, GuestMemoryMmap, Interrupt, WorkerThread};

/// How long the backend may take to answer one message before we give up on it (the vCPU
/// that activates or resets the device waits that long at most per message).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Virtio feature bit 30, VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, never offered to
/// the driver.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Most memory regions one SET_MEM_TABLE can carry (one fd each).
pub const MAX_MEM_REGIONS: usize = 8;

/// What to connect to and what the device on top needs.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// The backend's listening unix socket.
    pub socket: PathBuf,
    /// Names the device in messages, e.g. `virtio-fs "share"`.
    pub label: String,
    /// Number of virtqueues the device has.
    pub num_queues: usize,
    /// Virtio feature bits the device (and our transport) can offer; the driver is offered the
    /// backend's features masked by these.
    pub supported_features: u64,
    /// Protocol features to negotiate when the backend offers them.
    pub protocol_features: VhostUserProtocolFeatures,
}

/// Why the backend cannot be used. Each message names the device, the socket and what to do.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{label}: vhost-user socket {socket} does not exist: start the backend first (for virtio-fs: `virtiofsd --socket-path {socket} --shared-dir DIR`) or fix the path")]
    SocketNotFound { label: String, socket: PathBuf },
    #[error("{label}: nobody listens on vhost-user socket {socket} (the backend exited, or the socket file is stale): restart the backend")]
    ConnectionRefused { label: String, socket: PathBuf },
    #[error("{label}: permission denied connecting to vhost-user socket {socket}: run the backend as the same user as qvm, or fix the socket's permissions")]
    PermissionDenied { label: String, socket: PathBuf },
    #[error("{label}: cannot connect to vhost-user socket {socket}: {source}")]
    Connect {
        label: String,
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{label}: the vhost-user backend on {socket} failed {step}: {source}{hint}")]
    Protocol {
        label: String,
        socket: PathBuf,
        step: &'static str,
        #[source]
        source: vhost::Error,
        hint: &'static str,
    },
    #[error("{label}: the vhost-user backend on {socket} does not offer VIRTIO_F_VERSION_1 (features {features:#x}): qvm only drives modern virtio devices; use a newer backend")]
    NoVersion1 {
        label: String,
        socket: PathBuf,
        features: u64,
    },
    #[error("{label}: the vhost-user backend on {socket} supports {backend} queues, the device needs {wanted}: configure fewer queues or start the backend with more")]
    TooFewQueues {
        label: String,
        socket: PathBuf,
        backend: u64,
        wanted: usize,
    },
    #[error("{label}: the restarted vhost-user backend on {socket} lacks features {missing:#x} that the driver acked: restart it with the same options as before")]
    FeaturesLost {
        label: String,
        socket: PathBuf,
        missing: u64,
    },
}

crate::virtio::device_stats! {
    /// Counters, readable at any time (also while active).
    pub struct VhostUserStats / VhostUserStatsSnapshot {
        /// Successful handshakes (the first connection included).
        connects,
        /// Times the backend was found gone (socket error, hang-up, timeout).
        backend_lost,
        /// Successful activations.
        activations,
        /// Interrupts raised for the driver (backend calls forwarded, and standby answers).
        interrupts,
        /// Requests answered with an error by the VMM while the backend was gone.
        failed_requests,
        /// Interrupts that could not be raised.
        interrupt_errors,
    }
}

/// State shared with the forwarder thread.
struct Shared {
    label: String,
    socket: PathBuf,
    stats: Arc<VhostUserStats>,
    /// The current connection is dead (set once per connection).
    lost: AtomicBool,
}

impl Shared {
    /// Records that the backend is gone: logs one line and counts it, once per connection.
    fn backend_lost(&self, why: &dyn Display) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            bump(&self.stats.backend_lost, 1);
            eprintln!(
                "{}: vhost-user backend on {} is gone ({why}); the guest's requests fail until a backend listens on that socket again",
                self.label,
                self.socket.display()
            );
        }
    }
}

/// One live connection after the handshake.
struct Session {
    frontend: Frontend,
    /// A second handle on the socket, for the supervisor's hang-up watch.
    sock: UnixStream,
    /// GET_FEATURES answer.
    backend_features: u64,
    /// Protocol features acked; None when the backend does not do protocol features.
    protocol: Option<VhostUserProtocolFeatures>,
}

/// The connection, shared between the handle (activation, reset) and the supervisor thread
/// (which drops it when the backend dies and installs a new one when it is back).
type SharedSession = Arc<Mutex<Option<Session>>>;

fn lock(session: &SharedSession) -> MutexGuard<'_, Option<Session>> {
    // A panic while holding the lock leaves nothing half-written that matters here.
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the VMM answers on a ring while no backend serves it (the backend died, or has not
/// come back yet). The device on top knows the request format, e.g. a FUSE error reply.
pub trait StandbyResponder: Send + Sync {
    /// Answers one request from queue `queue` that no backend will serve; returns the number
    /// of bytes written into the chain's device-writable descriptors. The chain comes from
    /// the guest: everything in it must be checked, and a bad chain gets 0.
    fn fail_request(
        &self,
        queue: usize,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32;
}

/// The device-independent vhost-user frontend; see the module documentation.
pub struct VhostUserHandle {
    cfg: FrontendConfig,
    /// None once the backend is known to be gone (until a reconnect).
    session: SharedSession,
    /// Offered to the driver; fixed at [`VhostUserHandle::new`].
    features: u64,
    /// The supervisor thread, while active.
    active: Option<WorkerThread<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VhostUserHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserHandle")
            .field("socket", &self.cfg.socket)
            .field("label", &self.cfg.label)
            .field("features", &format_args!("{:#x}", self.features))
            .field("connected", &self.is_connected())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl VhostUserHandle {
    /// Connects to `cfg.socket` and negotiates; see the module documentation.
    pub fn new(cfg: FrontendConfig) -> Result<Self, FrontendError> {
        let shared = Arc::new(Shared {
            label: cfg.label.clone(),
            socket: cfg.socket.clone(),
            stats: Arc::new(VhostUserStats::default()),
            lost: AtomicBool::new(false),
        });
        let session = handshake(&cfg)?;
        bump(&shared.stats.connects, 1);
        if session.backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FrontendError::NoVersion1 {
                label: cfg.label.clone(),
                socket: cfg.socket.clone(),
                features: session.backend_features,
            });
        }
        let features =
            session.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES & cfg.supported_features;
        Ok(VhostUserHandle {
            cfg,
            session: Arc::new(Mutex::new(Some(session))),
            features,
            active: None,
            shared,
        })
    }

    /// Virtio features to offer the driver.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Names the device in messages, e.g. `virtio-fs "share"`.
    pub fn label(&self) -> &str {
        &self.cfg.label
    }

    /// Protocol features acked with the current backend (empty when it has none, or is gone).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        lock(&self.session)
            .as_ref()
            .and_then(|s| s.protocol)
            .unwrap_or_else(VhostUserProtocolFeatures::empty)
    }

    pub fn socket(&self) -> &Path {
        &self.cfg.socket
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether we hold a connection that is not known to be dead.
    pub fn is_connected(&self) -> bool {
        lock(&self.session).is_some() && !self.shared.lost.load(Ordering::SeqCst)
    }

    pub fn stats(&self) -> &VhostUserStats {
        &self.shared.stats
    }

    /// The counters, shareable (for the API's metrics).
    pub fn stats_arc(&self) -> Arc<VhostUserStats> {
        self.shared.stats.clone()
    }

    /// Hands memory, the driver's features (`acked`) and rings to the backend and starts the
    /// supervisor thread (interrupt forwarding, hang-up watch). When no backend can be reached,
    /// the device is activated anyway in standby: `responder` answers the guest's requests with
    /// errors and the supervisor reconnects once a backend listens on the socket again.
    ///
    /// The device on top has checked that it is not active and has `num_queues` queues
    /// ([`super::VirtioCommon`] with [`super::QueueCheck::CountOnly`]); the memory table, then
    /// each ring, are checked here, in that order.
    pub fn activate(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        interrupt: Arc<dyn Interrupt>,
        queues: Vec<ActiveQueue>,
        responder: Arc<dyn StandbyResponder>,
    ) -> Result<(), ActivateError> {
        let label = self.cfg.label.clone();
        let regions = memory_table(mem, &label)?;
        let rings = queues
            .iter()
            .enumerate()
            .map(|(i, q)| ring_config(mem, &q.queue, i))
            .collect::<Result<Vec<_>, _>>()?;
        let calls = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<io::Result<Vec<_>>>()
            .map_err(ActivateError::Worker)?;
        let bases: Vec<u16> = queues.iter().map(|q| q.queue.next_avail()).collect();
        let kicks: Vec<&EventFd> = queues.iter().map(|q| &q.notify).collect();
        let handover = Handover {
            acked,
            regions: &regions,
            rings: &rings,
            bases: &bases,
            kicks: &kicks,
            calls: &calls,
        };

        // A connection the supervisor saw hang up is as good as gone.
        if self.shared.lost.load(Ordering::SeqCst) {
            *lock(&self.session) = None;
        }
        let mut standby = false;
        let mut guard = lock(&self.session);
        if let Some(s) = guard.as_mut() {
            match setup(s, &handover) {
                Ok(()) => {}
                Err((step, e)) if is_disconnect(&e) => {
                    self.shared
                        .backend_lost(&format_args!("{step} failed: {e}"));
                    *guard = None;
                }
                Err((step, source)) => {
                    // The backend refused a request: leave no ring half set up.
                    drop(guard);
                    self.stop_rings();
                    return Err(ActivateError::Other(
                        FrontendError::Protocol {
                            label,
                            socket: self.cfg.socket.clone(),
                            step,
                            source,
                            hint: "",
                        }
                        .to_string(),
                    ));
                }
            }
        }
        if guard.is_none() {
            match connect_and_setup(&self.cfg, &handover) {
                Ok(s) => {
                    *guard = Some(s);
                    self.shared.lost.store(false, Ordering::SeqCst);
                    bump(&self.shared.stats.connects, 1);
                }
                Err(why) => {
                    self.shared.backend_lost(&why);
                    standby = true;
                }
            }
        }
        let sock = guard
            .as_ref()
            .map(|s| s.sock.try_clone())
            .transpose()
            .map_err(ActivateError::Worker);
        drop(guard);
        let sock = match sock {
            Ok(s) => s,
            Err(e) => {
                self.stop_rings();
                return Err(e);
            }
        };

        let state = SupervisorLoop {
            epoll: Epoll::new().map_err(ActivateError::Worker)?,
            rings,
            queues: queues.into_iter().map(|q| (q.queue, q.notify)).collect(),
            calls,
            sock,
            mem: mem.clone(),
            interrupt,
            responder,
            session: self.session.clone(),
            shared: self.shared.clone(),
            cfg: self.cfg.clone(),
            acked,
            standby: false,
            next_try: Instant::now(),
            warned_reconnect: false,
        };
        match start_supervisor(state, standby) {
            Ok(s) => self.active = Some(s),
            Err(e) => {
                self.stop_rings();
                return Err(ActivateError::Worker(e));
            }
        }
        bump(&self.shared.stats.activations, 1);
        Ok(())
    }

    /// Stops the supervisor, then the rings (the supervisor may be handing them to a new
    /// backend until it is joined). Returns false if the device was not active.
    pub fn reset(&mut self) -> bool {
        let Some(supervisor) = self.active.take() else {
            return false;
        };
        supervisor.stop();
        self.stop_rings();
        true
    }

    /// SET_VRING_ENABLE(false) and GET_VRING_BASE on every ring; gives up at the first socket
    /// error (the backend is gone then, nothing is left to stop).
    fn stop_rings(&mut self) {
        let mut guard = lock(&self.session);
        if self.shared.lost.load(Ordering::SeqCst) {
            *guard = None;
        }
        let Some(s) = guard.as_mut() else {
            return;
        };
        let mut failed = None;
        for i in 0..self.cfg.num_queues {
            if s.protocol.is_some() {
                if let Err(e) = s.frontend.set_vring_enable(i, false) {
                    failed = Some(("SET_VRING_ENABLE", e));
                    break;
                }
            }
            if let Err(e) = s.frontend.get_vring_base(i) {
                failed = Some(("GET_VRING_BASE", e));
                break;
            }
        }
        if let Some((step, e)) = failed {
            if is_disconnect(&e) {
                self.shared
                    .backend_lost(&format_args!("{step} failed: {e}"));
                *guard = None;
            } else {
                eprintln!(
                    "{}: vhost-user backend on {} refused {step} while stopping: {e}",
                    self.cfg.label,
                    self.cfg.socket.display()
                );
            }
        }
    }
}

impl Drop for VhostUserHandle {
    fn drop(&mut self) {
        self.reset();
    }
}

/// Why [`connect_and_setup`] failed.
enum SetupFailure {
    /// Nothing listens on the socket (yet): not worth a log line while waiting for it.
    Unreachable(String),
    /// Something answered but cannot take the device (wrong backend, lost features, refusal).
    Refused(String),
}

impl Display for SetupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupFailure::Unreachable(s) | SetupFailure::Refused(s) => f.write_str(s),
        }
    }
}

/// What a backend is handed at activation, and again when a restarted one takes over: the
/// memory table, the features the driver acked, and each ring with the index to start at,
/// its kick eventfd and its call eventfd.
struct Handover<'a> {
    acked: u64,
    regions: &'a [VhostUserMemoryRegionInfo],
    rings: &'a [VringConfigData],
    bases: &'a [u16],
    kicks: &'a [&'a EventFd],
    calls: &'a [EventFd],
}

/// A fresh connection with the rings handed over, or why not (for the log).
fn connect_and_setup(cfg: &FrontendConfig, h: &Handover) -> Result<Session, SetupFailure> {
    let mut s = handshake(cfg).map_err(|e| match e {
        FrontendError::SocketNotFound { .. } | FrontendError::ConnectionRefused { .. } => {
            SetupFailure::Unreachable(e.to_string())
        }
        e => SetupFailure::Refused(e.to_string()),
    })?;
    let missing = (h.acked | VIRTIO_F_VERSION_1) & !s.backend_features;
    if missing != 0 {
        return Err(SetupFailure::Refused(
            FrontendError::FeaturesLost {
                label: cfg.label.clone(),
                socket: cfg.socket.clone(),
                missing,
            }
            .to_string(),
        ));
    }
    setup(&mut s, h).map_err(|(step, e)| SetupFailure::Refused(format!("{step} failed: {e}")))?;
    Ok(s)
}

/// The activation messages, in the order QEMU sends them.
fn setup(s: &mut Session, h: &Handover) -> Result<(), (&'static str, vhost::Error)> {
    let fe = &mut s.frontend;
    fe.set_mem_table(h.regions)
        .map_err(|e| ("SET_MEM_TABLE", e))?;
    let mut features = h.acked;
    if s.protocol.is_some() {
        features |= VHOST_USER_F_PROTOCOL_FEATURES;
    }
    fe.set_features(features).map_err(|e| ("SET_FEATURES", e))?;
    for (i, (((ring, base), kick), call)) in h
        .rings
        .iter()
        .zip(h.bases)
        .zip(h.kicks)
        .zip(h.calls)
        .enumerate()
    {
        fe.set_vring_num(i, ring.queue_size)
            .map_err(|e| ("SET_VRING_NUM", e))?;
        fe.set_vring_base(i, *base)
            .map_err(|e| ("SET_VRING_BASE", e))?;
        fe.set_vring_addr(i, ring)
            .map_err(|e| ("SET_VRING_ADDR", e))?;
        fe.set_vring_kick(i, kick)
            .map_err(|e| ("SET_VRING_KICK", e))?;
        fe.set_vring_call(i, call)
            .map_err(|e| ("SET_VRING_CALL", e))?;
        if s.protocol.is_some() {
            fe.set_vring_enable(i, true)
                .map_err(|e| ("SET_VRING_ENABLE", e))?;
        }
    }
    // Without REPLY_ACK the messages above are fire-and-forget: the guest's first request,
    // right after activation, could reach the backend before its SET_VRING_CALL, and the
    // interrupt for it would be lost (a guest waiting on it hangs). GET_FEATURES is answered
    // by every backend, after everything sent before it, so activation ends only once the
    // backend has the rings (QEMU's enforce_reply does the same).
    let reply_ack = s
        .protocol
        .is_some_and(|p| p.contains(VhostUserProtocolFeatures::REPLY_ACK));
    if !reply_ack {
        fe.get_features().map_err(|e| ("GET_FEATURES (sync)", e))?;
    }
    Ok(())
}

const VIRTIO_F_VERSION_1: u64 = super::VIRTIO_F_VERSION_1;
/// Whether a vhost error means the connection is unusable (as opposed to the backend
/// refusing one request, or a check on our side).
fn is_disconnect(e: &vhost::Error) -> bool {
    use vhost::vhost_user::Error as E;
    match e {
        vhost::Error::VhostUserProtocol(e) => !matches!(
            e,
            E::BackendInternalError
                | E::InvalidParam
                | E::InactiveFeature(_)
                | E::InactiveOperation(_)
                | E::FeatureMismatch
        ),
        vhost::Error::IOError(_) => true,
        _ => false,
    }
}

fn connect(cfg: &FrontendConfig) -> Result<UnixStream, FrontendError> {
    let label = cfg.label.clone();
    let socket = cfg.socket.clone();
    let stream = UnixStream::connect(&cfg.socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => FrontendError::SocketNotFound { label, socket },
        io::ErrorKind::ConnectionRefused => FrontendError::ConnectionRefused { label, socket },
        io::ErrorKind::PermissionDenied => FrontendError::PermissionDenied { label, socket },
        _ => FrontendError::Connect {
            label,
            socket,
            source,
        },
    })?;
    let timeouts = stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)));
    timeouts.map_err(|source| FrontendError::Connect {
        label: cfg.label.clone(),
        socket: cfg.socket.clone(),
        source,
    })?;
    Ok(stream)
}

/// Connects and negotiates: GET_FEATURES, SET_OWNER, GET/SET_PROTOCOL_FEATURES, GET_QUEUE_NUM.
fn handshake(cfg: &FrontendConfig) -> Result<Session, FrontendError> {
    let stream = connect(cfg)?;
    let protocol_err = |step: &'static str, hint: &'static str| {
        move |source| FrontendError::Protocol {
            label: cfg.label.clone(),
            socket: cfg.socket.clone(),
            step,
            source,
            hint,
        }
    };
    let sock = stream
        .try_clone()
        .map_err(|source| FrontendError::Connect {
            label: cfg.label.clone(),
            socket: cfg.socket.clone(),
            source,
        })?;
    let mut frontend = Frontend::from_stream(stream, cfg.num_queues as u64);
    let not_vhost_user = " (is this a vhost-user socket, and not already used by another VMM?)";
    let backend_features = frontend
        .get_features()
        .map_err(protocol_err("GET_FEATURES", not_vhost_user))?;
    frontend
        .set_owner()
        .map_err(protocol_err("SET_OWNER", not_vhost_user))?;

    let mut protocol = None;
    if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = frontend
            .get_protocol_features()
            .map_err(protocol_err("GET_PROTOCOL_FEATURES", ""))?;
        let acked = offered & cfg.protocol_features;
        frontend
            .set_protocol_features(acked)
            .map_err(protocol_err("SET_PROTOCOL_FEATURES", ""))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every message that has no reply of its own is then acked by the backend, so a
            // request it refuses fails here instead of being silently ignored.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let backend = frontend
                .get_queue_num()
                .map_err(protocol_err("GET_QUEUE_NUM", ""))?;
            if backend < cfg.num_queues as u64 {
                return Err(FrontendError::TooFewQueues {
                    label: cfg.label.clone(),
                    socket: cfg.socket.clone(),
                    backend,
                    wanted: cfg.num_queues,
                });
            }
        }
        protocol = Some(acked);
    }
    Ok(Session {
        frontend,
        sock,
        backend_features,
        protocol,
    })
}

/// The SET_MEM_TABLE regions: every region of `mem` with the file (memfd) behind it.
fn memory_table(
    mem: &GuestMemoryMmap,
    label: &str,
) -> Result<Vec<VhostUserMemoryRegionInfo>, ActivateError> {
    if mem.num_regions() > MAX_MEM_REGIONS {
        return Err(ActivateError::Other(format!(
            "{label}: guest memory has {} regions, vhost-user can share at most {MAX_MEM_REGIONS}: use fewer memory regions",
            mem.num_regions()
        )));
    }
    let mut table = Vec::with_capacity(mem.num_regions());
    for region in mem.iter() {
        let gpa = region.start_addr().raw_value();
        let Some(file) = region.file_offset() else {
            return Err(ActivateError::Other(format!(
                "{label}: guest memory at {gpa:#x} is anonymous; vhost-user backends need shareable guest memory: back guest memory with a memfd (shared memory)"
            )));
        };
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| ActivateError::Other(format!("{label}: guest memory at {gpa:#x}: {e}")))?;
        table.push(VhostUserMemoryRegionInfo {
            guest_phys_addr: gpa,
            memory_size: region.len(),
            userspace_addr: host as u64,
            mmap_offset: file.start(),
            mmap_handle: file.file().as_raw_fd(),
        });
    }
    if table.is_empty() {
        return Err(ActivateError::Other(format!(
            "{label}: the VM has no guest memory to share"
        )));
    }
    Ok(table)
}

/// Our virtual address of `len` bytes at `addr`, which must lie inside one region (the
/// backend translates the start through the memory table and accesses the rest from there).
fn host_range(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let (region, off) = mem.to_region_addr(GuestAddress(addr))?;
    let last = off.checked_add(len.checked_sub(1)?)?;
    region.check_address(last)?;
    region.get_host_address(off).ok().map(|p| p as u64)
}

/// SET_VRING_ADDR data for one queue (virtio 1.2, 2.7: split ring sizes).
fn ring_config(
    mem: &GuestMemoryMmap,
    queue: &Queue,
    index: usize,
) -> Result<VringConfigData, ActivateError> {
    let size = u64::from(queue.size());
    let bad = || ActivateError::BadQueue(index);
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host_range(mem, queue.desc_table(), 16 * size).ok_or_else(bad)?,
        used_ring_addr: host_range(mem, queue.used_ring(), 6 + 8 * size).ok_or_else(bad)?,
        avail_ring_addr: host_range(mem, queue.avail_ring(), 6 + 2 * size).ok_or_else(bad)?,
        log_addr: None,
    })
}
