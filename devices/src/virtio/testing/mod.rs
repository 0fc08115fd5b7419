//! Test helpers for virtqueues and devices: one place for what the device tests, the fuzz
//! harnesses (`block::fuzz`, `net::fuzz` and the `fuzz/` targets) and the benches
//! (`qvm-blk-cost`) all need. Built for this crate's tests and with the `test-utils` feature.
//!
//! - [`SplitRing`]: where a split virtqueue's three parts lie in guest memory (one layout for
//!   every user) and reading or writing them as a driver does;
//! - [`TestQueue`]: a driver for tests: builds chains, makes them available, reads back what
//!   the device used; it holds the device's [`Queue`](virtio_queue::Queue) over the same ring;
//! - [`fuzz`]: fuzz bytes into rings: the harness memory, an input reader, buffer selectors;
//! - what every device test needs: [`memory`], [`pattern`], [`guest_bytes`], [`TempDir`],
//!   [`CountingInterrupt`], [`wait_for`], [`Rng`], [`write_config_bytes`].
//!
//! Everything here panics on misuse (a ring outside guest memory, a temporary directory that
//! cannot be made): it only ever runs in tests, fuzzers and benches.

pub mod fuzz;
mod ring;

pub use ring::{SplitRing, TestQueue};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::{GuestMemoryMmap, Interrupt, InterruptKind};

/// One region of `size` bytes at guest address 0.
pub fn memory(size: usize) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("test guest memory")
}

/// `len` bytes that differ from one offset to the next and from one `seed` to another.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The `len` bytes of guest memory at `at`.
pub fn guest_bytes(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at))
        .expect("guest bytes inside test memory");
    v
}

/// Connects to the unix socket `path` as `uid` (from a forked child that drops to it: the
/// caller must be root), writes `bytes` and exits; whether the connect succeeded. The
/// connection stays in the listener's backlog, with the child's credentials.
pub fn connect_as(uid: u32, path: &Path, bytes: &[u8]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "connecting as another uid needs root (CI runs as root)"
    );
    // Everything the child needs, built before fork (the child must not allocate).
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the child makes only raw syscalls on data prepared above, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw syscalls on valid data in the forked child.
        unsafe {
            let dropped = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(uid) == 0
                && libc::setuid(uid) == 0;
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let ok = dropped
                && fd >= 0
                && libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) == 0
                && libc::write(fd, bytes.as_ptr().cast(), bytes.len()) >= 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// A fresh directory `<temp dir>/<prefix>-<pid>-<n>`, removed with everything in it on drop.
/// Keep prefixes short when sockets go in it: a unix socket path has at most 107 bytes.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `data` into `config` at `offset`, the counterpart of
/// [`crate::virtio::common::read_config_bytes`] for test devices with a writable config
/// space: what lies past the end of `config` (or at an offset that overflows) is ignored.
pub fn write_config_bytes(config: &mut [u8], offset: u64, data: &[u8]) {
    let Some(dst) = usize::try_from(offset)
        .ok()
        .and_then(|o| config.get_mut(o..))
    else {
        return;
    };
    let n = dst.len().min(data.len());
    dst[..n].copy_from_slice(&data[..n]);
}

/// An [`Interrupt`] that counts queue interrupts (and fails the test on a config interrupt).
#[derive(Debug, Default)]
pub struct CountingInterrupt(pub AtomicUsize);

impl Interrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        assert_eq!(kind, InterruptKind::Queue);
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Polls `cond` every millisecond until it holds; fails the test after 10 s, naming `what`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// xorshift64*: reproducible pseudo-random inputs, so harnesses run in every `cargo test`.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next draw. (Not an `Iterator`: the stream never ends, an `Option` would only be
    /// unwrapped.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True once in `n` draws on average.
    // `is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next() % n == 0
    }
}
