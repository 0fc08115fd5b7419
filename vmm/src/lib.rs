//! qvm's KVM monitor: one VM per process, built from a `vm.toml`.

pub mod api;
pub mod boot;
/// The VM config lives in its own crate (`qvm-config`), which the jailer and `qvm` use without
/// linking the VMM; this keeps `crate::config::…` and `qvm_vmm::config::…` working.
pub use qvm_config as config;
pub mod console;
pub mod control;
pub mod landlock;
pub mod seccomp;
pub mod vcpu;
pub mod virtiofsd;
pub mod vm;
pub mod wl_mapper;
