//! Host<->guest plumbing over virtio-vsock, shared by the tools in `src/bin`:
//!
//! - `qvm-agent` runs in a guest (started by the example init) and runs commands for the host;
//! - `qvm-run` is the host side: `qvm-run --vsock VM.vsock -- firefox` runs `firefox` in the VM,
//!   with its stdin, stdout, stderr and exit status carried over one vsock stream;
//! - `qvm-vsock` moves data for tests and benches.
//!
//! The host reaches a guest port through the VMM's unix socket (`CONNECT <port>\n`, answered
//! `OK <hostport>\n`); a guest reaches host port P at `<socket>_<P>`. [`client`] is the one host
//! client of the agent protocol (qvm-run and `qvm run`); [`term`] keeps a guest's output from
//! driving the host's terminal. Only libc and thiserror (compile time only), so the guest
//! binaries link statically.

pub mod client;
pub mod frame;
pub mod pattern;
pub mod stream;
pub mod term;
