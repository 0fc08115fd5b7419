//! qvm-wl-client: a tiny Wayland client that speaks the wire protocol itself, over
//! either the virtio-wl guest device (`/dev/wl0`) or an ordinary Wayland socket, plus
//! the host-side screenshot checker that verifies what it drew.
//!
//! * [`pattern`]: the pixel pattern shared by the demo and the checker.
//! * [`wire`]: Wayland wire-format encoding and decoding.
//! * [`transport`]: `/dev/wl0` and Unix-socket transports.
//! * [`demo`]: the `qvm-wl-demo` client logic.
//! * [`check`]: PNG decoding and the pattern search behind `qvm-wl-check`.
//! * [`proxy`]: `qvm-wl-proxy`, the guest Wayland socket relayed over virtio-wl.

pub mod check;
pub mod demo;
pub mod hostile;
pub mod pattern;
pub mod protocol;
pub mod proxy;
pub mod transport;
pub mod wire;

/// This process's CPU time so far, (user, system) in microseconds (the bench's figures).
pub fn cpu_us() -> (u64, u64) {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}
