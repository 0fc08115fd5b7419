//! A hook every device worker thread calls first, before it touches a queue: the VMM sets it
//! to install its seccomp filter for device threads. Unset (tests, tools), it does nothing.

use std::sync::OnceLock;

static WORKER_HOOK: OnceLock<fn()> = OnceLock::new();

/// Sets the hook (once; later calls are ignored).
pub fn set_worker_hook(hook: fn()) {
    let _ = WORKER_HOOK.set(hook);
}

/// Called at the start of every device worker thread.
pub fn worker_started() {
    if let Some(hook) = WORKER_HOOK.get() {
        hook();
    }
}
