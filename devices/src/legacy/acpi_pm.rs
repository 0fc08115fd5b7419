//! Hardware-reduced ACPI power management registers: the FADT's sleep control, sleep status
//! and reset registers, all 8-bit I/O ports in one small block.
//!
//! Linux powers off by writing `(SLP_TYP << 2) | SLP_EN` to the sleep control register, where
//! SLP_TYP comes from the DSDT's `\_S5` package; it reboots by writing the FADT's reset value
//! to the reset register.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

pub const ACPI_PM_PORT: u64 = 0x600;
pub const ACPI_PM_PORT_LEN: u64 = 3;
pub const SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT as u16;
pub const SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT as u16 + 1;
pub const RESET_PORT: u16 = ACPI_PM_PORT as u16 + 2;
pub const RESET_VALUE: u8 = 0x01;
/// The sleep type the DSDT's `\_S5` package announces.
pub const S5_SLP_TYP: u8 = 5;

const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
/// WAK_STS in the sleep status register: always "awake".
const WAK_STS: u8 = 1 << 7;

pub struct AcpiPm {
    exit: Arc<ExitSignal>,
}

impl AcpiPm {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == u64::from(SLEEP_STATUS_PORT) - ACPI_PM_PORT {
            if let Some(b) = data.first_mut() {
                *b = WAK_STS;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset + ACPI_PM_PORT {
            p if p == u64::from(SLEEP_CONTROL_PORT) => {
                let typ = (v >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if v & SLP_EN != 0 && typ == S5_SLP_TYP {
                    self.exit.trigger(GuestExit::PowerOff);
                }
            }
            p if p == u64::from(RESET_PORT) && v == RESET_VALUE => {
                self.exit.trigger(GuestExit::Reset)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (AcpiPm, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut d, exit) = dev();
        d.write(0, &[(S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(exit.reason(), Some(GuestExit::PowerOff));
    }

    #[test]
    fn other_sleep_states_and_missing_slp_en_do_nothing() {
        let (mut d, exit) = dev();
        d.write(0, &[S5_SLP_TYP << 2]);
        d.write(0, &[(3 << 2) | SLP_EN]);
        d.write(0, &[]);
        d.write(2, &[0x02]);
        assert_eq!(exit.reason(), None);
        let mut s = [0u8];
        d.read(1, &mut s);
        assert_eq!(s[0], WAK_STS);
    }

    #[test]
    fn reset_register_resets() {
        let (mut d, exit) = dev();
        d.write(2, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(GuestExit::Reset));
    }
}
