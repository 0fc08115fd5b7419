//! Helpers several benches share: the median and range of samples, the project's initramfs
//! with a bench script added, and a headless weston for the host-side Wayland benches.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qvm_tests::fixtures;

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn minmax(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// The project's initramfs with `script` added as `/<name>` (cached by content like any
/// initramfs), for a guest booted with `qvm.mode=run qvm.script=/<name>`.
pub fn initramfs_with_script(name: &str, script: &str) -> Result<std::path::PathBuf, String> {
    let extra = std::env::temp_dir().join(format!("qvm-bench-extra-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&extra).map_err(|e| e.to_string())?;
    std::fs::write(extra.join(name), script).map_err(|e| e.to_string())?;
    let out = Command::new(fixtures::workspace().join("guest-kernel-config/build-initramfs.sh"))
        .env("QVM_INITRAMFS_EXTRA", &extra)
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&extra);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(std::path::PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim(),
    ))
}

/// A headless weston (pixman, animations off) on `rt/socket` for the host-side benches,
/// started with `rt` as its private XDG_RUNTIME_DIR (created 0700) and waited for.
pub fn start_host_weston(
    rt: &Path,
    socket: &str,
    width: u32,
    height: u32,
) -> Result<std::process::Child, String> {
    std::fs::create_dir_all(rt).map_err(|e| format!("create {}: {e}", rt.display()))?;
    let _ = Command::new("chmod").arg("700").arg(rt).status();
    let ini = rt.join("weston.ini");
    std::fs::write(&ini, qvm_tests::wayland::WESTON_INI).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(rt.join("weston.log")).map_err(|e| e.to_string())?;
    let mut weston = Command::new("weston")
        .arg(format!("--config={}", ini.display()))
        .args([
            "--backend=headless-backend.so".to_string(),
            format!("--socket={socket}"),
            format!("--width={width}"),
            format!("--height={height}"),
            "--use-pixman".to_string(),
            "--idle-time=0".to_string(),
        ])
        .env("XDG_RUNTIME_DIR", rt)
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start weston: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt.join(socket).exists() {
        let exited = weston.try_wait().map_err(|e| e.to_string())?;
        if exited.is_some() || Instant::now() >= deadline {
            let _ = weston.kill();
            let _ = weston.wait();
            let log = std::fs::read_to_string(rt.join("weston.log")).unwrap_or_default();
            return Err(format!("weston never opened {socket}: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(weston)
}
