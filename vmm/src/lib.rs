//! qvm's KVM monitor: one VM per process, built from a `vm.toml` (read and checked by the
//! `qvm-config` crate).

pub mod boot;
pub mod console;
pub mod control;
pub mod handlers;
pub mod hygiene;
pub mod landlock;
pub mod seccomp;
pub mod vcpu;
pub mod virtiofsd;
pub mod vm;
pub mod wl_mapper;
