//! qvm's emulated devices.
//!
//! Every device is a [`bus::BusDevice`] placed on the port-I/O or MMIO [`bus::Bus`] that the
//! vCPU threads dispatch exits to. Devices never trust the access they are given: a guest may
//! touch any offset with any size, and gets "all ones" or a dropped write, never a panic.

pub mod bus;
pub mod exit;
pub mod legacy;
pub mod sandbox;

pub use bus::{Bus, BusDevice, BusError};
pub use exit::{ExitSignal, GuestExit};
pub mod virtio;
