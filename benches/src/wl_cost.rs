//! README section (8), `--skip-wl-cost`: on the host with no guest, the instructions our
//! virtio-wl device spends per committed frame: `qvm-wl-cost` (`src/bin`) under callgrind,
//! counting only `qvm_virtio_wl::*`, against a headless weston, at two frame counts; 1 MiB
//! frames beside 31.6 MiB frames (zero copy: the ratio stays near 1).

use crate::common::{
    callgrind, collected, helper_binary, per_unit, require_tool, start_host_weston, stop, table,
};

/// virtio-wl's host CPU per committed frame, deterministic: `qvm-wl-cost` (the guest's demo
/// client on the device's protocol engine in-process, talking to a headless weston started
/// here) under callgrind, counting only the device's instructions (`qvm_virtio_wl::*`), at two
/// frame counts; at 1 MiB and 31.6 MiB frames. Equal counts mean no per-frame work scales with
/// the buffer: nothing in the device touches pixels.
pub fn bench() -> Result<(), String> {
    require_tool("valgrind")?;
    require_tool("weston")?;
    let cost = helper_binary("qvm-wl-cost")?;
    let rt = std::env::temp_dir().join(format!("qvm-wl-cost-{}", std::process::id()));
    let mut weston = start_host_weston(&rt, "wl-cost", 3840, 2160)?;
    let instructions = |w: u32, h: u32, frames: u32| -> Result<[f64; 1], String> {
        let mut cmd = callgrind(&["--toggle-collect=qvm_virtio_wl::*"]);
        cmd.arg(&cost)
            .args([w.to_string(), h.to_string(), frames.to_string()])
            .env("XDG_RUNTIME_DIR", &rt)
            .env("WAYLAND_DISPLAY", "wl-cost");
        Ok([collected(cmd, &format!("qvm-wl-cost {w}x{h} {frames}"))?])
    };
    // (width, height, instructions per frame); the first failure stops the bench.
    let per_frame: Result<Vec<(u32, u32, f64)>, String> = [(512u32, 512u32), (3840, 2160)]
        .into_iter()
        .map(|(w, h)| Ok((w, h, per_unit(3, 13, |n| instructions(w, h, n))?[0])))
        .collect();
    stop(&mut weston);
    let _ = std::fs::remove_dir_all(&rt);
    let per_frame = per_frame?;
    table(
        "virtio-wl device cost per committed frame on the host (callgrind, device instructions only)",
        "| frame | buffer | instructions per frame |",
    );
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
