//! QEMU-compatible pvpanic device (one I/O port, ACPI id `QEMU0001`).
//!
//! Linux's pvpanic driver writes PANICKED to the port from its panic notifier, before
//! `panic=-1` reboots the guest, so the VMM can tell a crash from a clean reboot.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

pub const PVPANIC_PORT: u64 = 0x505;
pub const PVPANIC_PORT_LEN: u64 = 1;
const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    exit: Arc<ExitSignal>,
}

impl PvPanic {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Capabilities: the events this device understands.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|v| v & PVPANIC_PANICKED != 0) {
            self.exit.trigger(GuestExit::Panic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_bit_reports_a_panic() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = PvPanic::new(exit.clone());
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(exit.reason(), None);
        d.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason(), Some(GuestExit::Panic));
    }
}
