//! Just enough of the i8042 keyboard controller for the guest to reboot the machine.
//!
//! Linux's reboot path (`reboot=k`, and the fallback after ACPI reset) pulses the CPU reset
//! line by writing 0xFE to the command port. Everything else reads as an idle controller.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

/// Data port 0x60 is offset 0, command/status port 0x64 is offset 4. Port 0x61 in between
/// belongs to KVM's in-kernel PIT (speaker), so it never reaches this device.
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
const CMD_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the guest never waits on us.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == CMD_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.trigger(GuestExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset_and_nothing_else_does() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut d = I8042::new(exit.clone());
        d.write(0, &[CMD_RESET_CPU]);
        d.write(CMD_OFFSET, &[0xaa]);
        d.write(CMD_OFFSET, &[]);
        assert_eq!(exit.reason(), None);
        let mut s = [0xffu8];
        d.read(CMD_OFFSET, &mut s);
        assert_eq!(s, [0]);
        d.write(CMD_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(GuestExit::Reset));
    }
}
