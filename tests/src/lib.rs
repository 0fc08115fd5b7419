//! Test support for qvm: the "lab" that provides a real KVM for guest-booting tests.

// TODO(issue 16): the tests owner removes these (found when the workspace lints came in).
#![allow(clippy::unwrap_used)]

pub mod fixtures;
pub mod lab;
pub mod util;
pub mod vm;
pub mod wayland;
