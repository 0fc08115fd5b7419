//! Test support for qvm: the "lab" that provides a real KVM for guest-booting tests.

// Test code: an unwrap here is a test failure that says what failed. clippy's
// allow-unwrap-in-tests covers #[test] functions only, not the helpers a test crate has.
#![allow(clippy::unwrap_used)]

pub mod fixtures;
pub mod lab;
pub mod util;
pub mod vm;
pub mod wayland;
