//! `qvm`: the desktop's VMs declared once in a domains file and used from the host (start,
//! stop, status, list, run a command in a VM, copy files into a VM after confirmation,
//! systemd user units). See README.md, "The qvm desktop".

pub mod agent;
pub mod copy;
pub mod domains;
pub mod logs;
pub mod runtime;
pub mod units;
pub mod vm;

#[cfg(test)]
mod tests;
