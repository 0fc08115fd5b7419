//! qvm's KVM monitor: one VM per process, built from a `vm.toml`.

pub mod boot;
pub mod config;
pub mod console;
pub mod vcpu;
pub mod virtiofsd;
pub mod vm;
