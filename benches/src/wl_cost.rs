//! README section (8), `--skip-wl-cost`: on the host with no guest, the instructions our
//! virtio-wl device spends per committed frame: `qvm-wl-cost` (`src/bin`) under callgrind,
//! counting only `qvm_virtio_wl::*`, against a headless weston, at two frame counts; 1 MiB
//! frames beside 31.6 MiB frames (zero copy: the ratio stays near 1).

use std::process::Command;

use crate::common::start_host_weston;

/// virtio-wl's host CPU per committed frame, deterministic: `qvm-wl-cost` (the guest's demo
/// client on the device's protocol engine in-process, talking to a headless weston started
/// here) under callgrind, counting only the device's instructions (`qvm_virtio_wl::*`), at two
/// frame counts; at 1 MiB and 31.6 MiB frames. Equal counts mean no per-frame work scales with
/// the buffer: nothing in the device touches pixels.
pub fn bench() -> Result<(), String> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Err("valgrind is not installed (apt-get install valgrind)".into());
    }
    if Command::new("weston").arg("--version").output().is_err() {
        return Err("weston is not installed (apt-get install weston)".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let cost = exe.with_file_name("qvm-wl-cost");
    if !cost.exists() {
        return Err(format!(
            "{} is missing: cargo build --release -p qvm-benches",
            cost.display()
        ));
    }
    let rt = std::env::temp_dir().join(format!("qvm-wl-cost-{}", std::process::id()));
    let mut weston = start_host_weston(&rt, "wl-cost", 3840, 2160)?;
    let collected = |w: u32, h: u32, frames: u32| -> Result<f64, String> {
        let out = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--toggle-collect=qvm_virtio_wl::*",
            ])
            .arg(&cost)
            .args([w.to_string(), h.to_string(), frames.to_string()])
            .env("XDG_RUNTIME_DIR", &rt)
            .env("WAYLAND_DISPLAY", "wl-cost")
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("qvm-wl-cost {w}x{h} {frames} failed: {err}"));
        }
        err.lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no 'Collected' line from callgrind: {err}"))
    };
    let (few, many) = (3u32, 13u32);
    let mut per_frame = Vec::new();
    let mut result = Ok(());
    for (w, h) in [(512u32, 512u32), (3840, 2160)] {
        match collected(w, h, few).and_then(|a| Ok((a, collected(w, h, many)?))) {
            Ok((a, b)) => per_frame.push((w, h, (b - a) / f64::from(many - few))),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = weston.kill();
    let _ = weston.wait();
    let _ = std::fs::remove_dir_all(&rt);
    result?;
    println!("\nvirtio-wl device cost per committed frame on the host (callgrind, device instructions only)");
    println!("| frame | buffer | instructions per frame |");
    println!("|---|---|---|");
    for (w, h, n) in &per_frame {
        println!(
            "| {w}x{h} | {:.1} MiB | {n:.0} |",
            f64::from(w * h * 4) / 1048576.0
        );
    }
    if let [(_, _, small), (_, _, big)] = per_frame[..] {
        println!(
            "zero copy: 31.6 MiB frames / 1 MiB frames = {:.3} (target < 1.5)",
            big / small
        );
    }
    Ok(())
}
