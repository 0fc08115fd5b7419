//! virtio-wl, host side: the Wayland device of ChromeOS/crosvm (device type 63), so that guest
//! Wayland clients (through the guest's `virtio_wl` driver and `/dev/wl0`) talk to the host
//! compositor, with buffers that are host memory mapped into the guest: no per-frame copy.
//!
//! - [`VirtioWl`] is the [`qvm_devices::virtio::VirtioDevice`]; [`VirtioWl::new`] takes a
//!   [`WlConfig`] (compositor socket paths, limits) and a [`GuestMapper`], which the VMM
//!   implements with KVM memory slots inside the shared-memory window (shm region 0).
//! - [`protocol`] is the wire format, [`state::WlState`] the vfd table and protocol engine,
//!   `device.rs` the device and its worker thread, [`mapper`] the mapping interface.
//! - [`policy`] is the per-VM Wayland policy the engine applies to every context when
//!   [`WlConfig::policy`] is set: window titles and app ids tagged with the VM's name, globals
//!   outside an allowlist hidden (a bind of one hangs the context up), the host clipboard gated
//!   behind a one-shot [`PasteGate`].
//!
//! Zero copy: shared-memory vfds (memfds we create, shm fds the compositor sends) only ever
//! pass through as fds: to the mapper (into the guest) and to the compositor (SCM_RIGHTS).
//! The device never maps or reads buffer contents; only protocol bytes (commands and Wayland
//! messages) travel through the virtqueues.
//!
//! Deviation from the brief, for compatibility: SEND_FENCES changes the id entries of
//! `SEND_FOREIGN_ID` only (16-byte `{kind, pad, u64 id}` instead of 8-byte `{kind, id}`); plain
//! `VFD_SEND` always lists u32 ids, which is what the ChromeOS driver sends (and crosvm reads)
//! with SEND_FENCES acked. Kind 0 (local) entries work in both; virtgpu kinds get INVALID_TYPE.
//!
//! # Syscalls of the worker thread (for its seccomp filter)
//!
//! Besides what every worker needs (memory allocation: mmap/munmap/mremap/madvise/brk; futex;
//! clock_gettime; write to stderr; exit), the virtio-wl worker uses:
//! - `epoll_create1` (at activation, in the vCPU thread), `epoll_ctl`, `epoll_wait`/`epoll_pwait`;
//!   `read`/`write` on eventfds;
//! - `memfd_create` (MFD_CLOEXEC | MFD_ALLOW_SEALING), `ftruncate`, `fcntl` (F_ADD_SEALS,
//!   F_GET_SEALS, F_GETFL, F_SETFL);
//! - `socket` (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC), `connect`,
//!   `sendmsg` (MSG_DONTWAIT | MSG_NOSIGNAL, SCM_RIGHTS), `recvmsg` (MSG_DONTWAIT |
//!   MSG_CMSG_CLOEXEC), `close`;
//! - `pipe2` (O_CLOEXEC), `read`, `write`;
//! - `lseek`, `fstat` (glibc may issue it as `newfstatat`);
//! - `poll` (glibc may issue `ppoll`) for bounded waits, `nanosleep`/`clock_nanosleep` when a
//!   compositor's listen backlog is full;
//! - whatever the VMM's [`GuestMapper`] does in `map`/`unmap` (mmap of the fd with
//!   PROT_READ | PROT_WRITE, MAP_SHARED; munmap; `ioctl(KVM_SET_USER_MEMORY_REGION)`), which
//!   runs in this thread.

pub mod chain;
mod device;
pub mod mapper;
pub mod policy;
pub mod protocol;
pub mod state;
pub mod sys;
#[cfg(test)]
mod test_msgs;
#[cfg(test)]
mod tests;
pub mod vfd;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;

pub use device::VirtioWl;
pub use mapper::{FakeMapper, GuestMapper, MapError};
pub use policy::{Clipboard, PasteGate, WlPolicy, DEFAULT_ALLOWED_GLOBALS, PASTE_WINDOW};

/// Size (and maximum) of each queue.
pub const QUEUE_SIZE: u16 = 256;
pub const IN_QUEUE: usize = 0;
pub const OUT_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 2;

/// What the device connects to and how much it lets the guest hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WlConfig {
    /// The compositor's socket for NEW_CTX (e.g. `$XDG_RUNTIME_DIR/wayland-0`); None: NEW_CTX
    /// is answered ERR.
    pub socket: Option<PathBuf>,
    /// Sockets for NEW_CTX_NAMED, by name (1 to 31 bytes, no NUL).
    pub named: Vec<(String, PathBuf)>,
    /// Total shared memory (page-rounded) the guest's vfds may map, ours and the compositor's.
    pub max_buffer_bytes: u64,
    /// Open vfds of every kind.
    pub max_vfds: u32,
    /// The VM's Wayland policy (titles tagged, globals filtered, clipboard gated; see
    /// [`policy`]). None: contexts carry bytes untouched (the transport alone, as in the
    /// device's own tests and the fuzz target); the VMM always sets one.
    pub policy: Option<WlPolicy>,
}

impl Default for WlConfig {
    fn default() -> WlConfig {
        WlConfig {
            socket: None,
            named: Vec::new(),
            max_buffer_bytes: 512 << 20,
            max_vfds: 256,
            policy: None,
        }
    }
}

/// Why the device cannot be created. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum WlError {
    #[error("virtio-wl socket path {0:?} is {1} bytes: a unix socket path must be 1 to 107 bytes without NUL; use a shorter path")]
    SocketPath(PathBuf, usize),
    #[error("virtio-wl socket name {0:?} must be 1 to 31 bytes without NUL (the guest sends it in a 32-byte field)")]
    SocketName(String),
    #[error("virtio-wl socket name {0:?} is given twice")]
    DuplicateName(String),
    #[error("virtio-wl max_vfds must be at least 1")]
    MaxVfds,
    #[error("virtio-wl max_buffer_bytes ({0}) must be at least one page (4096)")]
    MaxBufferBytes(u64),
    #[error("virtio-wl VM name {0:?} must be 1 to 32 printable characters without ']' (it labels window titles as [name])")]
    PolicyName(String),
    #[error("the virtio-wl shared-memory window ({base:#x}, {len:#x} bytes) must be page aligned and not empty")]
    Window { base: u64, len: u64 },
}

/// Counters, updated by the worker and readable at any time (`DeviceMetrics`).
#[derive(Debug, Default)]
pub struct WlMetrics {
    /// Out-queue requests executed, and those answered with an error code.
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// Chains that could not be used (either queue).
    pub malformed: AtomicU64,
    /// Guest -> compositor bytes and fds (VFD_SEND), compositor -> guest ones (VFD_RECV).
    pub bytes_sent: AtomicU64,
    pub fds_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub fds_received: AtomicU64,
    /// Messages queued for the in queue (VFD_NEW, VFD_RECV, VFD_HUP).
    pub in_messages: AtomicU64,
    /// Times reading from the compositor stopped because the guest was behind.
    pub in_queue_stalls: AtomicU64,
    /// Gauges: open vfds, and bytes of shared memory mapped into the guest.
    pub vfds_open: AtomicU64,
    pub mapped_bytes: AtomicU64,
    /// Policy: contexts hung up for a violation (malformed stream, refused bind, a hidden
    /// offer touched), binds of hidden or unknown globals, globals hidden from the guest,
    /// titles and app ids tagged, host selections the guest got as null, pastes let through.
    pub policy_hangups: AtomicU64,
    pub binds_refused: AtomicU64,
    pub globals_hidden: AtomicU64,
    pub titles_tagged: AtomicU64,
    pub selections_gated: AtomicU64,
    pub pastes_allowed: AtomicU64,
}

qvm_devices::virtio::atomic_counters!(WlMetrics {
    requests,
    errors,
    malformed,
    bytes_sent,
    fds_sent,
    bytes_received,
    fds_received,
    in_messages,
    in_queue_stalls,
    vfds_open,
    mapped_bytes,
    policy_hangups,
    binds_refused,
    globals_hidden,
    titles_tagged,
    selections_gated,
    pastes_allowed,
});
