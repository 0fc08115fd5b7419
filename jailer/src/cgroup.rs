//! cgroup v2: `<base>/<id>` with memory.max, pids.max and (optionally) cpu.max, the
//! controllers enabled in every ancestor's `cgroup.subtree_control` from the hierarchy's root
//! down. The jailer moves itself in before it forks, so the VMM and everything it starts is
//! counted from its first instruction. [`Cgroup`] removes the directory when dropped (the
//! jailer moves itself back to where it came from first).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::JailError;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub struct Limits {
    pub memory_max: u64,
    pub pids_max: u64,
    pub cpu_max: Option<String>,
}

/// A cgroup this jailer created; removed on drop.
pub struct Cgroup {
    pub dir: PathBuf,
    /// The cgroup we were in before (`/proc/self/cgroup`), under the hierarchy's root.
    origin: Option<PathBuf>,
}

fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; c is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC
    }
}

fn write(path: &Path, value: &str) -> Result<(), JailError> {
    fs::write(path, value).map_err(|e| JailError::Cgroup {
        path: path.to_path_buf(),
        reason: format!("writing {value:?}: {e}"),
    })
}

/// The controllers these limits need.
fn controllers(l: &Limits) -> Vec<&'static str> {
    let mut c = vec!["memory", "pids"];
    if l.cpu_max.is_some() {
        c.push("cpu");
    }
    c
}

impl Cgroup {
    /// Creates `<base>/<id>` with `limits`. Fails if it exists (is VM `id` running?).
    pub fn create(base: &Path, id: &str, limits: &Limits) -> Result<Cgroup, JailError> {
        let user = |reason: String| JailError::bad_path("--cgroup-base", base, reason);
        // The hierarchy's root: the topmost ancestor on the cgroup2 filesystem.
        let existing = base
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        if !is_cgroup2(existing) {
            return Err(user(format!(
                "{} is not on a cgroup v2 filesystem; mount one (mount -t cgroup2 none \
                 /sys/fs/cgroup) or pass --cgroup-base <dir on cgroup2>",
                existing.display()
            )));
        }
        let root = base
            .ancestors()
            .filter(|a| is_cgroup2(a))
            .last()
            .unwrap_or(existing)
            .to_path_buf();
        let wanted = controllers(limits);
        let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        for c in &wanted {
            if !available.split_whitespace().any(|a| a == *c) {
                return Err(user(format!(
                    "the {c} controller is not available in {} (it offers: {}); it may be \
                     bound to a cgroup v1 hierarchy",
                    root.display(),
                    available.trim()
                )));
            }
        }
        fs::create_dir_all(base).map_err(|e| user(format!("cannot create it: {e}")))?;
        // Enable the controllers from the root down to base, so base's children get them.
        let rel = base.strip_prefix(&root).unwrap_or(Path::new(""));
        let mut dir = root.clone();
        let mut chain = vec![dir.clone()];
        for c in rel.components() {
            dir.push(c);
            chain.push(dir.clone());
        }
        for d in &chain {
            let ctl = d.join("cgroup.subtree_control");
            let on = fs::read_to_string(&ctl).unwrap_or_default();
            let missing: Vec<String> = wanted
                .iter()
                .filter(|c| !on.split_whitespace().any(|o| o == **c))
                .map(|c| format!("+{c}"))
                .collect();
            if !missing.is_empty() {
                write(&ctl, &missing.join(" "))?;
            }
        }
        let dir = base.join(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(user(format!(
                    "{} exists: is VM {id:?} running? If not, remove it (rmdir {})",
                    dir.display(),
                    dir.display()
                )))
            }
            Err(e) => return Err(user(format!("cannot create {}: {e}", dir.display()))),
        }
        let origin = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
            })
            .map(|p| root.join(p.trim_start_matches('/')));
        let cg = Cgroup { dir, origin };
        write(&cg.dir.join("memory.max"), &limits.memory_max.to_string())?;
        // No swapping the guest out behind the limit's back, where the kernel allows setting it.
        let _ = fs::write(cg.dir.join("memory.swap.max"), "0");
        write(&cg.dir.join("pids.max"), &limits.pids_max.to_string())?;
        if let Some(cpu) = &limits.cpu_max {
            write(&cg.dir.join("cpu.max"), cpu)?;
        }
        Ok(cg)
    }

    /// Moves the calling process (and the children it will have) into the cgroup.
    pub fn enter(&self) -> Result<(), JailError> {
        write(
            &self.dir.join("cgroup.procs"),
            &std::process::id().to_string(),
        )
    }

    /// After the VM stopped: one line per limit it ran into (pids.max refused a fork, the
    /// OOM killer ran at memory.max).
    pub fn report(&self) {
        let count = |file: &str, key: &str| -> u64 {
            fs::read_to_string(self.dir.join(file))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let max = |file: &str| {
            fs::read_to_string(self.dir.join(file))
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let pids = count("pids.events", "max ");
        if pids > 0 {
            eprintln!(
                "qvm-jailer: the VM hit its pids limit (pids.max {}) {pids} time(s): forks failed with EAGAIN",
                max("pids.max")
            );
        }
        let oom = count("memory.events", "oom_kill ");
        if oom > 0 {
            eprintln!(
                "qvm-jailer: the OOM killer ran {oom} time(s) at the VM's memory limit (memory.max {})",
                max("memory.max")
            );
        }
    }

    /// Moves us back out (so the directory can be removed) and removes it, retrying while the
    /// jail's last tasks are still exiting.
    pub fn remove(&self) {
        if let Some(o) = &self.origin {
            let _ = fs::write(o.join("cgroup.procs"), std::process::id().to_string());
        }
        // Whatever the VM left (a virtiofsd that outlived the VMM) dies with it (Linux 5.14+;
        // older kernels: the rmdir below fails while processes remain, and says so).
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..100 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        eprintln!(
            "qvm-jailer: warning: could not remove cgroup {}; remove it with rmdir",
            self.dir.display()
        );
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}
