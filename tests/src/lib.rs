//! Test support for qvm: the "lab" that provides a real KVM for guest-booting tests.
pub mod fixtures;
pub mod lab;
pub mod util;
pub mod vm;
pub mod wayland;
