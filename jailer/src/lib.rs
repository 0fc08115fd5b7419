//! `qvm-jailer`: starts one `qvm-vmm` so that a compromised VMM holds almost nothing. In order:
//! check the arguments and the VM's config and collect every host path the VM needs
//! ([`paths`]); close inherited fds and clear the environment; create the VM's cgroup v2 with
//! its limits and move in ([`cgroup`]); new mount/pid/ipc/uts namespaces (and optionally join
//! a network namespace), fork so the VMM is pid 1 of its pid namespace, build a tmpfs root
//! with exactly those paths bound at their own paths and `pivot_root` into it; rlimits, drop to
//! the VM's uid/gid with no capabilities and no_new_privs, and exec qvm-vmm ([`jail`]).

pub mod cgroup;
pub mod error;
pub mod jail;
pub mod limits;
pub mod paths;

pub use error::JailError;
