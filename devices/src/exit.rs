//! How devices tell the VMM that the guest wants to stop.

use std::sync::Mutex;
use vmm_sys_util::eventfd::EventFd;

/// Why a guest stopped running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5 (poweroff) or a KVM shutdown system event.
    PowerOff,
    /// i8042 reset, ACPI reset register, triple fault: the guest asked to reboot.
    Reset,
    /// The guest kernel announced a panic through the pvpanic device.
    Panic,
    /// A vCPU hit something KVM or the VMM cannot handle (entry failure, emulation error).
    VcpuFault,
}

/// The first guest exit reason wins; later ones (a reset that follows a panic) are ignored.
pub struct ExitSignal {
    reason: Mutex<Option<GuestExit>>,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    pub fn trigger(&self, why: GuestExit) {
        let mut r = crate::bus::lock(&self.reason);
        if r.is_none() {
            *r = Some(why);
        }
        // The counter cannot overflow in practice; a failure here means the fd is gone and the
        // VMM is already tearing down.
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<GuestExit> {
        *crate::bus::lock(&self.reason)
    }

    /// Readable once any exit was triggered; for the event loop.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_fd_becomes_readable() {
        let s = ExitSignal::new().unwrap();
        assert_eq!(s.reason(), None);
        s.trigger(GuestExit::Panic);
        s.trigger(GuestExit::Reset);
        assert_eq!(s.reason(), Some(GuestExit::Panic));
        assert_eq!(s.eventfd().read().unwrap(), 2);
    }
}
